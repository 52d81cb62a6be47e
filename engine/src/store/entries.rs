//! Entry records: every verdict, durable before the gate hears it.
//!
//! The pipeline's commit thread owns one [`EntryWriter`] and hands it batches; each batch is
//! one transaction (group commit), so its cost is one WAL fsync however many records it holds.
//! `(gate, seq)` is unique: a retried event that raced its original is not recorded twice.

use std::path::{Path, PathBuf};

use gatewarden_protocol::{
    CheckKind, Decision, Direction, GateId, MarketId, Mode, Outcome, SubjectId, UnixMillis,
    Verdict, ZoneId,
};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;

use super::codes::{self, Named};
use super::schema::{self, Role};
use super::{Store, StoreError, from_sql_u64, sql_time, to_sql_u64};

/// What kind of request an event made: its [`Mode`] without the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeKind {
    /// 1:1 verification with a credential.
    Verify,
    /// 1:N identification by face.
    Identify,
    /// Daily staff sign-in.
    SignIn,
}

impl ModeKind {
    /// Stable snake-case name (`sign_in`), as stored and printed.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Identify => "identify",
            Self::SignIn => "sign_in",
        }
    }

    /// The mode with this [`name`](Self::name), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        <Self as Named>::from_label(name)
    }
}

impl From<&Mode> for ModeKind {
    fn from(mode: &Mode) -> Self {
        match mode {
            Mode::Verify { .. } => Self::Verify,
            Mode::Identify => Self::Identify,
            Mode::SignIn { .. } => Self::SignIn,
        }
    }
}

/// A keyed 128-bit digest of everything an event carried ([`Store::event_fingerprint`]): two
/// events with the same `(gate, seq)` are the same event only if their fingerprints are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventFingerprint(pub [u8; 16]);

/// What the entry log holds for one `(gate, seq)`: enough to answer a retry, and to tell a
/// retry from a different event under a reused key.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEntry {
    /// The recorded verdict, marked `replayed`.
    pub verdict: Verdict,
    /// The event's fingerprint; `None` for entries recorded before schema version 2.
    pub fingerprint: Option<EventFingerprint>,
    /// When the gate captured the person.
    pub captured_at: UnixMillis,
    /// What the event asked for.
    pub mode: ModeKind,
}

/// One verdict to record, with where and how the event happened.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryRecord {
    /// The verdict, checks included; its `gate` and `seq` are the record's key.
    pub verdict: Verdict,
    /// The gate's market.
    pub market: MarketId,
    /// The gate's zone.
    pub zone: ZoneId,
    /// What the event asked for.
    pub mode: ModeKind,
    /// Entering or leaving.
    pub direction: Direction,
    /// When the gate captured the person.
    pub captured_at: UnixMillis,
    /// The event's fingerprint, stored so that a retry can be told from a reused key.
    pub fingerprint: EventFingerprint,
}

/// What [`EntryWriter::commit`] did with one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitOutcome {
    /// The `(gate, seq)` was already recorded; the stored record was kept.
    Duplicate,
    /// The record is now durable.
    Inserted,
}

/// A recorded entry as the queries return it: the indexed facts of one verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntryRow {
    /// The gate.
    pub gate: GateId,
    /// The event's sequence number at that gate.
    pub seq: u64,
    /// The gate's market.
    pub market: MarketId,
    /// The gate's zone.
    pub zone: ZoneId,
    /// Whom the verdict was about, if known.
    pub subject: Option<SubjectId>,
    /// Admit, deny or escalate.
    #[serde(serialize_with = "codes::ser")]
    pub decision: Decision,
    /// What the event asked for.
    pub mode: ModeKind,
    /// Entering or leaving.
    #[serde(serialize_with = "codes::ser")]
    pub direction: Direction,
    /// The face score, if a face was matched.
    pub score: Option<f32>,
    /// When the gate captured the person.
    pub captured_at: UnixMillis,
    /// When the engine decided (the time the queries order and filter by).
    pub decided_at: UnixMillis,
    /// The checks that failed, in policy order.
    #[serde(serialize_with = "codes::ser_list")]
    pub failed: Vec<CheckKind>,
}

/// The columns [`Store::entry_from_row`] reads, in its order.
pub(super) const ENTRY_COLUMNS: &str = "gate, seq, market, zone, subject, decision, mode, direction, score, captured_at, \
     decided_at, failed";

const INSERT: &str = "INSERT INTO entries (gate, seq, market, zone, subject, decision, mode,
                                           direction, score, captured_at, decided_at, failed,
                                           verdict, fingerprint)
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                      ON CONFLICT (gate, seq) DO NOTHING";

/// The group-commit writer of entry records. Owns its own connection; `Send`, not shared.
pub struct EntryWriter {
    conn: Connection,
    db: PathBuf,
    /// Reused encoding buffers: the verdict JSON and the failing-check list.
    verdict_buf: Vec<u8>,
    failed_buf: Vec<u8>,
}

impl std::fmt::Debug for EntryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryWriter")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl EntryWriter {
    fn open(db: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            conn: schema::open_connection(db, Role::EntryWriter)?,
            db: db.to_owned(),
            verdict_buf: Vec::with_capacity(1024),
            failed_buf: Vec::with_capacity(64),
        })
    }

    /// Records a batch in one transaction with `synchronous=FULL`: when this returns `Ok`,
    /// every record is durable. A `(gate, seq)` already recorded (earlier, or earlier in the
    /// same batch) is not inserted and comes back as [`CommitOutcome::Duplicate`]. Outcomes
    /// are in the order of `records`.
    ///
    /// # Errors
    /// SQLite failures (disk full, I/O error, busy past the timeout) or an unencodable
    /// verdict; then nothing of the batch is recorded.
    pub fn commit(&mut self, records: &[EntryRecord]) -> Result<Vec<CommitOutcome>, StoreError> {
        let db = &self.db;
        let sql = |e| StoreError::from_sqlite(db, "committing entry records", e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let mut outcomes = Vec::with_capacity(records.len());
        {
            let mut stmt = tx.prepare_cached(INSERT).map_err(sql)?;
            for r in records {
                let v = &r.verdict;
                let encode = |source| StoreError::Encode {
                    gate: v.gate,
                    seq: v.seq,
                    source,
                };
                self.verdict_buf.clear();
                serde_json::to_writer(&mut self.verdict_buf, v).map_err(encode)?;
                self.failed_buf.clear();
                let failed: Vec<&str> = failed_checks(v).map(CheckKind::name).collect();
                serde_json::to_writer(&mut self.failed_buf, &failed).map_err(encode)?;
                // serde_json writes UTF-8, so these borrow the buffers (no copy).
                let failed = String::from_utf8_lossy(&self.failed_buf);
                let verdict = String::from_utf8_lossy(&self.verdict_buf);
                let n = stmt
                    .execute(params![
                        v.gate.0,
                        to_sql_u64(v.seq),
                        r.market.0,
                        r.zone.0,
                        v.subject.map(|s| to_sql_u64(s.0)),
                        v.decision.name(),
                        r.mode.name(),
                        r.direction.name(),
                        v.score.map(f64::from),
                        sql_time(r.captured_at),
                        sql_time(v.decided_at),
                        &*failed,
                        &*verdict,
                        &r.fingerprint.0[..],
                    ])
                    .map_err(sql)?;
                outcomes.push(if n == 0 {
                    CommitOutcome::Duplicate
                } else {
                    CommitOutcome::Inserted
                });
            }
        }
        tx.commit().map_err(sql)?;
        Ok(outcomes)
    }
}

fn failed_checks(v: &Verdict) -> impl Iterator<Item = CheckKind> + '_ {
    v.checks
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| c.kind)
}

impl Store {
    /// A new entry writer with its own connection, for the pipeline's commit thread.
    ///
    /// # Errors
    /// SQLite failures opening the connection.
    pub fn entry_writer(&self) -> Result<EntryWriter, StoreError> {
        EntryWriter::open(&self.db_path)
    }

    /// The verdict recorded for `(gate, seq)`, marked `replayed`, or `None` if there is none.
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] if the stored verdict does not decode.
    pub fn verdict_for(&self, gate: GateId, seq: u64) -> Result<Option<Verdict>, StoreError> {
        Ok(self.recorded_entry(gate, seq)?.map(|r| r.verdict))
    }

    /// What the entry log holds for `(gate, seq)`, or `None` if nothing is recorded.
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] if the stored record does not decode.
    pub fn recorded_entry(
        &self,
        gate: GateId,
        seq: u64,
    ) -> Result<Option<RecordedEntry>, StoreError> {
        type Raw = (String, Option<Vec<u8>>, i64, String);
        let conn = self.readers.get()?;
        let raw: Option<Raw> = conn
            .prepare_cached(
                "SELECT verdict, fingerprint, captured_at, mode FROM entries
                 WHERE gate = ?1 AND seq = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![gate.0, to_sql_u64(seq)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            })
            .map_err(|e| self.sql_err("reading a recorded entry", e))?;
        let Some((json, fingerprint, captured_at, mode)) = raw else {
            return Ok(None);
        };
        let bad = |what: String| self.corrupt(format!("the entry of gate {gate} seq {seq} {what}"));
        let mut verdict: Verdict =
            serde_json::from_str(&json).map_err(|e| bad(format!("does not decode: {e}")))?;
        verdict.replayed = true;
        let fingerprint = fingerprint
            .map(|bytes| {
                <[u8; 16]>::try_from(bytes.as_slice())
                    .map(EventFingerprint)
                    .map_err(|_| bad(format!("has a {}-byte fingerprint", bytes.len())))
            })
            .transpose()?;
        let mode =
            ModeKind::from_name(&mode).ok_or_else(|| bad(format!("has unknown mode {mode:?}")))?;
        Ok(Some(RecordedEntry {
            verdict,
            fingerprint,
            captured_at: UnixMillis(captured_at.max(0) as u64),
            mode,
        }))
    }

    /// The keyed fingerprint of an event's canonical bytes (the pipeline builds the bytes).
    pub fn event_fingerprint(&self, canonical: &[u8]) -> EventFingerprint {
        EventFingerprint(self.key.fingerprint(canonical))
    }

    /// The highest recorded `seq` of every gate that has entries. The pipeline loads it at
    /// start-up so that a gate's new events need no replay lookup.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn max_seq_per_gate(&self) -> Result<Vec<(GateId, u64)>, StoreError> {
        let conn = self.readers.get()?;
        let mut stmt = conn
            .prepare_cached("SELECT gate, MAX(seq) FROM entries GROUP BY gate")
            .map_err(|e| self.sql_err("reading the highest seq per gate", e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.sql_err("reading the highest seq per gate", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (gate, seq) =
                row.map_err(|e| self.sql_err("reading the highest seq per gate", e))?;
            out.push((GateId(gate), from_sql_u64(seq)));
        }
        Ok(out)
    }

    /// Calls `f` for every entry decided at or after `since`, in decision order. The pipeline
    /// uses it at start-up to rebuild today's counters (occupancy, frequency, sign-ins).
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] for a row gatewarden could not have written.
    pub fn for_each_entry_since(
        &self,
        since: UnixMillis,
        mut f: impl FnMut(&EntryRow),
    ) -> Result<(), StoreError> {
        let conn = self.readers.get()?;
        let sql = |e| self.sql_err("reading entries", e);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE decided_at >= ?1 ORDER BY decided_at, id"
            ))
            .map_err(sql)?;
        let mut rows = stmt.query([sql_time(since)]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            f(&self.entry_from_row(row)?);
        }
        Ok(())
    }

    /// Decodes a row selected with [`ENTRY_COLUMNS`].
    pub(super) fn entry_from_row(&self, row: &Row<'_>) -> Result<EntryRow, StoreError> {
        let sql = |e| self.sql_err("reading an entry", e);
        let failed_json = self.text_column(row, 11)?;
        let bad = |detail: String| self.corrupt(format!("failed checks {failed_json:?}: {detail}"));
        let names: Vec<&str> = serde_json::from_str(failed_json).map_err(|e| bad(e.to_string()))?;
        let failed = names
            .into_iter()
            .map(|n| CheckKind::from_label(n).ok_or_else(|| bad(format!("unknown check {n:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let time = |idx| -> Result<UnixMillis, StoreError> {
            Ok(UnixMillis(
                row.get::<_, i64>(idx).map_err(sql)?.max(0) as u64
            ))
        };
        Ok(EntryRow {
            gate: GateId(row.get(0).map_err(sql)?),
            seq: from_sql_u64(row.get(1).map_err(sql)?),
            market: MarketId(row.get(2).map_err(sql)?),
            zone: ZoneId(row.get(3).map_err(sql)?),
            subject: row
                .get::<_, Option<i64>>(4)
                .map_err(sql)?
                .map(|s| SubjectId(from_sql_u64(s))),
            decision: self.code_column(row, 5, "decision")?,
            mode: self.code_column(row, 6, "mode")?,
            direction: self.code_column(row, 7, "direction")?,
            score: row.get::<_, Option<f64>>(8).map_err(sql)?.map(|s| s as f32),
            captured_at: time(9)?,
            decided_at: time(10)?,
            failed,
        })
    }

    fn text_column<'r>(&self, row: &'r Row<'_>, idx: usize) -> Result<&'r str, StoreError> {
        row.get_ref(idx)
            .and_then(|v| Ok(v.as_str()?))
            .map_err(|e| self.sql_err("reading an entry", e))
    }

    fn code_column<T: Named>(
        &self,
        row: &Row<'_>,
        idx: usize,
        what: &str,
    ) -> Result<T, StoreError> {
        let s = self.text_column(row, idx)?;
        T::from_label(s).ok_or_else(|| self.corrupt(format!("unknown {what} {s:?} in an entry")))
    }
}

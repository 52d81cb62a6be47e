//! Entry records: every verdict, durable before the gate hears it.
//!
//! The pipeline's commit thread owns one [`EntryWriter`](super::EntryWriter) and hands it
//! batches; each batch is one transaction per day partition (group commit), so its cost is one
//! WAL fsync however many records it holds. `(gate, seq)` is unique within a day partition;
//! across days the pipeline's exactly-once (with the seq directory) keeps a key recorded once. Where the records live and how they are encoded is the
//! `history` module's business; this one holds the record types and reads them back.

use gatewarden_protocol::{
    Check, CheckKind, Decision, Direction, GateId, MarketId, Mode, Outcome, SubjectId, UnixMillis,
    Verdict, ZoneId,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::codes::{self, Named};
use super::history::partition::{Day, Partition};
use super::history::record;
use super::history::writer::SqliteEntryWriter;
use super::schema::Role;
use super::{SqliteStore, StoreError, from_sql_u64, sql_time, to_sql_u64};
use crate::policy::PolicyVersion;

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

/// A keyed 128-bit digest of everything an event carried
/// ([`Store::event_fingerprint`](super::Store::event_fingerprint)): two events with the same
/// `(gate, seq)` are the same event only if their fingerprints are equal.
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
    /// The gate's market when the entry was recorded.
    pub market: MarketId,
    /// The version of the policy that decided; `None` for entries recorded before versions
    /// were.
    pub policy: Option<PolicyVersion>,
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
    /// The version of the policy that decided (`None` when no policy did, e.g. an entry moved
    /// from an older store).
    pub policy: Option<PolicyVersion>,
}

impl RecordedEntry {
    /// A recorded entry from a decoded row: its indexed facts, its body and its stored
    /// fingerprint (both backends read them alike).
    pub(super) fn from_parts(
        entry: EntryRow,
        body: record::Body,
        fingerprint: Option<EventFingerprint>,
    ) -> Self {
        Self {
            verdict: Verdict {
                gate: entry.gate,
                seq: entry.seq,
                decision: entry.decision,
                subject: entry.subject,
                score: entry.score,
                checks: body.checks,
                display: body.display,
                decided_at: entry.decided_at,
                replayed: true,
            },
            fingerprint,
            captured_at: entry.captured_at,
            mode: entry.mode,
            market: entry.market,
            policy: body.policy.map(PolicyVersion::from_stored),
        }
    }
}

/// What [`EntryWriter::commit`](super::EntryWriter::commit) did with one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitOutcome {
    /// The `(gate, seq)` was already recorded; the stored record was kept.
    Duplicate,
    /// The record is now durable.
    Inserted,
}

/// Where a reading of a day file's passages stopped: its last row, by id, and by the
/// `(gate, seq)` that row holds, so that a file replaced since is noticed
/// ([`SqliteStore::passage_mark_holds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PassageMark {
    /// The row id.
    pub(crate) id: i64,
    /// The row's gate, as stored.
    pub(crate) gate: i64,
    /// The row's seq, as stored.
    pub(crate) seq: i64,
}

/// The [`PassageMark`] of every day file read so far, by UTC day.
pub(crate) type PassageMarks = std::collections::BTreeMap<Day, PassageMark>;

/// An admitted passage of a known person: all that today's tallies are rebuilt from
/// (`pipeline::tally`). Read from the indexed columns alone, without decoding record bodies,
/// so a restart late in a busy day does not decode the whole day's records before it listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Passage {
    /// Who passed.
    pub subject: SubjectId,
    /// Where.
    pub market: MarketId,
    /// What the event asked for.
    pub mode: ModeKind,
    /// Entering or leaving.
    pub direction: Direction,
    /// When the engine decided.
    pub at: UnixMillis,
}

impl Passage {
    /// The query of the passages decided at or after its first parameter, reading `source`
    /// with `since` as that parameter, and with `markets` (if any) as a parameter holding an
    /// array of markets to keep, in the order they were decided (time, then id). The columns
    /// are those [`Passage::from_columns`] takes, in order. PostgreSQL's: it prunes the day
    /// partitions of `entries` by the time condition. SQLite reads its day files by row id
    /// instead ([`SqliteStore::for_each_passage_after`]).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn query(source: &str, since: &str, markets: Option<&str>) -> String {
        let only = markets.map_or(String::new(), |m| format!(" AND market = ANY({m})"));
        format!(
            "SELECT subject, market, mode, direction, decided_at FROM {source}
             WHERE decided_at >= {since} AND decision = {admit} AND subject IS NOT NULL{only}
             ORDER BY decided_at, id",
            admit = Decision::Admit.code()
        )
    }

    /// A passage from the columns of [`Passage::query`]; the reason for a code no version
    /// of gatewarden writes.
    pub(crate) fn from_columns(
        subject: i64,
        market: MarketId,
        mode: i64,
        direction: i64,
        decided_at: i64,
    ) -> Result<Self, String> {
        let mode = u8::try_from(mode)
            .ok()
            .and_then(ModeKind::from_code)
            .ok_or_else(|| format!("unknown mode code {mode} in an entry"))?;
        let direction = u8::try_from(direction)
            .ok()
            .and_then(Direction::from_code)
            .ok_or_else(|| format!("unknown direction code {direction} in an entry"))?;
        Ok(Self {
            subject: SubjectId(from_sql_u64(subject)),
            market,
            mode,
            direction,
            at: UnixMillis(decided_at.max(0) as u64),
        })
    }
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

/// The columns [`SqliteStore::entry_from_row`] reads, in its order.
pub(super) const ENTRY_COLUMNS: &str = "gate, seq, market, zone, subject, decision, mode, direction, score, captured_at, \
     decided_at, body";

/// The columns `SqliteStore::recorded_from_row` reads after [`ENTRY_COLUMNS`].
const RECORD_COLUMNS: &str = "fingerprint";

impl SqliteStore {
    /// A new entry writer with its own connections, for the pipeline's commit thread.
    ///
    /// # Errors
    /// None today; kept fallible so that a writer can open its files eagerly.
    pub(crate) fn entry_writer(&self) -> Result<SqliteEntryWriter, StoreError> {
        Ok(SqliteEntryWriter::new(
            self.history.clone(),
            Role::EntryWriter,
        ))
    }

    /// A writer for loading past entries in bulk (the history generator): its transactions
    /// are not synced one by one, so nothing it writes is durable until
    /// [`EntryWriter::finish`](super::EntryWriter::finish) returns. Never use it for live events.
    pub(crate) fn bulk_entry_loader(&self) -> SqliteEntryWriter {
        SqliteEntryWriter::new(self.history.clone(), Role::BulkLoader)
    }

    /// What the entry log holds for `(gate, seq)`, or `None` if nothing is recorded. Reads
    /// only the partitions whose range of the gate's seqs holds `seq`.
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] if the stored record does not decode.
    pub(crate) fn recorded_entry(
        &self,
        gate: GateId,
        seq: u64,
    ) -> Result<Option<RecordedEntry>, StoreError> {
        for day in self.history.seqs.days_holding(gate, seq) {
            let Some(part) = self.history.get(day) else {
                continue; // pruned meanwhile
            };
            let conn = part.readers.get()?;
            let sql = |e| StoreError::from_sqlite(&part.path, "reading a recorded entry", e);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS}, {RECORD_COLUMNS} FROM entries
                     WHERE gate = ?1 AND seq = ?2"
                ))
                .map_err(sql)?;
            let mut rows = stmt.query(params![gate.0, to_sql_u64(seq)]).map_err(sql)?;
            if let Some(row) = rows.next().map_err(sql)? {
                return self.recorded_from_row(&part, &conn, row).map(Some);
            }
        }
        Ok(None)
    }

    /// The keyed fingerprint of an event's canonical bytes (the pipeline builds the bytes).
    pub(crate) fn event_fingerprint(&self, canonical: &[u8]) -> EventFingerprint {
        EventFingerprint(self.key.fingerprint(canonical))
    }

    /// The highest recorded `seq` of every gate that has entries. The pipeline loads it at
    /// start-up so that a gate's new events need no replay lookup.
    ///
    /// # Errors
    /// None today (the seq directory is in memory); kept fallible for the callers' sake.
    pub(crate) fn max_seq_per_gate(&self) -> Result<Vec<(GateId, u64)>, StoreError> {
        Ok(self.history.seqs.max_per_gate())
    }

    /// Calls `f` for every entry decided at or after `since`, in decision order, each record
    /// decoded whole (the start-up rebuild of today's counters reads only the indexed
    /// columns, `for_each_passage_since`).
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] for a row gatewarden could not have written.
    pub(crate) fn for_each_entry_since(
        &self,
        since: UnixMillis,
        mut f: impl FnMut(&EntryRow),
    ) -> Result<(), StoreError> {
        for part in self.history.in_range(since, UnixMillis(u64::MAX)) {
            let conn = part.readers.get()?;
            let sql = |e| StoreError::from_sqlite(&part.path, "reading entries", e);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM entries WHERE decided_at >= ?1
                     ORDER BY decided_at, id"
                ))
                .map_err(sql)?;
            let mut rows = stmt.query([sql_time(since)]).map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                f(&self.entry_from_row(&part, &conn, row)?);
            }
        }
        Ok(())
    }

    /// Streams the [`Passage`]s decided at or after `since`, day by day, and within a day in
    /// the order they were recorded: [`SqliteStore::for_each_passage_after`] from no marks.
    pub(crate) fn for_each_passage_since(
        &self,
        since: UnixMillis,
        f: impl FnMut(&Passage),
    ) -> Result<(), StoreError> {
        self.for_each_passage_after(since, &mut PassageMarks::new(), f)
    }

    /// Streams the [`Passage`]s decided at or after `since` and recorded after `marks`, day
    /// file by day file, each in the order its rows were recorded, and moves each file's mark
    /// to its last row. So a reader that keeps its marks reads each row once however often it
    /// asks (the committed counters, which catch up every few seconds).
    ///
    /// Each file is read by row id: `id` is the row id, which SQLite assigns in commit order
    /// (every writer, the bulk loaders too, holds the file's write lock), and no row of a day
    /// file is ever deleted (retention deletes whole files), so the rows after a mark are
    /// exactly those committed after it. Reading them is a range of the table's own B-tree,
    /// `NOT INDEXED`: no sort and no index. (No index of a day file leads with the time: with
    /// the time condition alone, the planner walked another index and fetched every row by its
    /// own descent, three quarters of a late restart's start-up, measured, and a sort by time
    /// spilled to temporary files.) The file `since` falls inside is read whole the first
    /// time: most of its rows are before `since` (with the default UTC+8, it holds the local
    /// day's first eight hours), and the condition skips them.
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] for a row gatewarden could not have
    /// written. `f` may have seen some of a file's passages by then, and that file's mark has
    /// not moved: a caller that keeps counting from these marks must start over.
    pub(crate) fn for_each_passage_after(
        &self,
        since: UnixMillis,
        marks: &mut PassageMarks,
        mut f: impl FnMut(&Passage),
    ) -> Result<(), StoreError> {
        for part in self.history.in_range(since, UnixMillis(u64::MAX)) {
            let conn = part.readers.get()?;
            let sql = |e| StoreError::from_sqlite(&part.path, "reading passages", e);
            let last = conn
                .prepare_cached("SELECT id, gate, seq FROM entries ORDER BY id DESC LIMIT 1")
                .and_then(|mut stmt| {
                    stmt.query_row([], |row| {
                        Ok(PassageMark {
                            id: row.get(0)?,
                            gate: row.get(1)?,
                            seq: row.get(2)?,
                        })
                    })
                    .optional()
                })
                .map_err(sql)?;
            let after = marks.get(&part.day).map_or(0, |m| m.id);
            let Some(last) = last.filter(|last| last.id > after) else {
                continue;
            };
            // Bounded by the last row found above: a row committed meanwhile is after the new
            // mark, and is read next time.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT subject, market, mode, direction, decided_at FROM entries NOT INDEXED
                     WHERE id > ?1 AND id <= ?2 AND decided_at >= ?3 AND decision = ?4
                       AND subject IS NOT NULL
                     ORDER BY id",
                )
                .map_err(sql)?;
            let admit = i64::from(Decision::Admit.code());
            let mut rows = stmt
                .query(params![after, last.id, sql_time(since), admit])
                .map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                let passage = Passage::from_columns(
                    row.get(0).map_err(sql)?,
                    MarketId(row.get(1).map_err(sql)?),
                    row.get(2).map_err(sql)?,
                    row.get(3).map_err(sql)?,
                    row.get(4).map_err(sql)?,
                )
                .map_err(|detail| StoreError::Corrupt {
                    path: part.path.clone(),
                    detail,
                })?;
                f(&passage);
            }
            marks.insert(part.day, last);
        }
        Ok(())
    }

    /// Whether day file `day` still holds `mark`'s row: the same `(gate, seq)` at its id. A
    /// file replaced since the mark was taken (restored from a backup, or another store's)
    /// fails this, and so does a file that is gone.
    ///
    /// # Errors
    /// SQLite failures.
    pub(crate) fn passage_mark_holds(
        &self,
        day: Day,
        mark: &PassageMark,
    ) -> Result<bool, StoreError> {
        let Some(part) = self.history.get(day) else {
            return Ok(false);
        };
        let conn = part.readers.get()?;
        let found: Option<(i64, i64)> = conn
            .prepare_cached("SELECT gate, seq FROM entries WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([mark.id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(|e| StoreError::from_sqlite(&part.path, "reading a passage mark", e))?;
        Ok(found == Some((mark.gate, mark.seq)))
    }

    /// Decodes a row selected with [`ENTRY_COLUMNS`] from `part` through `conn`.
    pub(super) fn entry_from_row(
        &self,
        part: &Partition,
        conn: &Connection,
        row: &Row<'_>,
    ) -> Result<EntryRow, StoreError> {
        let (entry, body) = self.decode_row(part, conn, row)?;
        Ok(EntryRow {
            failed: failed_checks(&body.checks).collect(),
            ..entry
        })
    }

    fn recorded_from_row(
        &self,
        part: &Partition,
        conn: &Connection,
        row: &Row<'_>,
    ) -> Result<RecordedEntry, StoreError> {
        let (entry, body) = self.decode_row(part, conn, row)?;
        let bad = |detail: String| StoreError::Corrupt {
            path: part.path.clone(),
            detail: format!(
                "the entry of gate {} seq {}: {detail}",
                entry.gate, entry.seq
            ),
        };
        let fingerprint: Option<Vec<u8>> = row
            .get(12)
            .map_err(|e| StoreError::from_sqlite(&part.path, "reading an entry", e))?;
        let fingerprint = fingerprint
            .map(|bytes| {
                <[u8; 16]>::try_from(bytes.as_slice())
                    .map(EventFingerprint)
                    .map_err(|_| bad(format!("a {}-byte fingerprint", bytes.len())))
            })
            .transpose()?;
        Ok(RecordedEntry::from_parts(entry, body, fingerprint))
    }

    /// The row's indexed facts (with `failed` left empty) and its decoded body.
    pub(super) fn decode_row(
        &self,
        part: &Partition,
        conn: &Connection,
        row: &Row<'_>,
    ) -> Result<(EntryRow, record::Body), StoreError> {
        decode_entry(part, conn, row)
    }
}

/// A row selected with [`ENTRY_COLUMNS`] from `part` through `conn`: its indexed facts (with
/// `failed` left empty) and its decoded body.
///
/// # Errors
/// [`StoreError::Corrupt`] for a row that does not decode.
pub(crate) fn decode_entry(
    part: &Partition,
    conn: &Connection,
    row: &Row<'_>,
) -> Result<(EntryRow, record::Body), StoreError> {
    let sql = |e| StoreError::from_sqlite(&part.path, "reading an entry", e);
    let corrupt = |detail: String| StoreError::Corrupt {
        path: part.path.clone(),
        detail,
    };
    let code = |idx: usize| -> Result<u8, StoreError> {
        let v: i64 = row.get(idx).map_err(sql)?;
        u8::try_from(v).map_err(|_| corrupt(format!("code {v} in column {idx}")))
    };
    let unknown = |what: &str, c: u8| corrupt(format!("unknown {what} code {c} in an entry"));
    let time = |idx| -> Result<UnixMillis, StoreError> {
        Ok(UnixMillis(
            row.get::<_, i64>(idx).map_err(sql)?.max(0) as u64
        ))
    };
    let (d, m, dir) = (code(5)?, code(6)?, code(7)?);
    let entry = EntryRow {
        gate: GateId(row.get(0).map_err(sql)?),
        seq: from_sql_u64(row.get(1).map_err(sql)?),
        market: MarketId(row.get(2).map_err(sql)?),
        zone: ZoneId(row.get(3).map_err(sql)?),
        subject: row
            .get::<_, Option<i64>>(4)
            .map_err(sql)?
            .map(|s| SubjectId(from_sql_u64(s))),
        decision: Decision::from_code(d).ok_or_else(|| unknown("decision", d))?,
        mode: ModeKind::from_code(m).ok_or_else(|| unknown("mode", m))?,
        direction: Direction::from_code(dir).ok_or_else(|| unknown("direction", dir))?,
        score: row.get::<_, Option<f64>>(8).map_err(sql)?.map(|s| s as f32),
        captured_at: time(9)?,
        decided_at: time(10)?,
        failed: Vec::new(),
    };
    let body = row
        .get_ref(11)
        .and_then(|v| Ok(v.as_blob()?))
        .map_err(sql)?;
    let body = record::decode_body(body, |id| {
        part.form(conn, id)
            .map_err(|e| record::DecodeError(e.to_string()))
    })
    .map_err(|e| {
        corrupt(format!(
            "the record of gate {} seq {} does not decode: {e}",
            entry.gate, entry.seq
        ))
    })?;
    Ok((entry, body))
}

fn failed_checks(checks: &[Check]) -> impl Iterator<Item = CheckKind> + '_ {
    checks
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| c.kind)
}

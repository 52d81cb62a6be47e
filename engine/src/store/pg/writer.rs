//! The PostgreSQL entry writer: group commit, one statement (one transaction, one durable
//! commit with `synchronous_commit = on`) per batch and UTC day.
//!
//! A batch goes to the server as arrays, one per column, in one statement:
//!
//! ```sql
//! WITH input AS (SELECT * FROM unnest($1, ..., $13) AS t(gate, seq, ...)),
//!      keys AS (INSERT INTO entry_keys SELECT gate, seq, decided_at FROM input
//!               ON CONFLICT (gate, seq) DO NOTHING RETURNING gate, seq)
//! INSERT INTO entries SELECT input.* FROM input JOIN keys USING (gate, seq)
//! RETURNING gate, seq
//! ```
//!
//! so a record is written only if its `(gate, seq)` is new in the whole database (another
//! node's concurrent insert of the same key waits for that node's commit, then counts as a
//! duplicate), and the round trips per batch stay at one however large it is. Day partitions
//! are made ahead by the maintenance thread (today and the next two days); a writer that meets
//! a day without one (no maintenance thread: tools, tests) makes it and the next day's before
//! the batch's statement, outside its transaction, under an advisory lock so that nodes do not
//! race on the DDL.
//!
//! On a node with market leases (`cluster::lease`) each day's batch is a transaction of its
//! own instead: the fence's `SELECT .. FOR SHARE` of the batch's lease rows, the insert of the
//! records whose markets passed, the commit (four round trips instead of one).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use gatewarden_protocol::{Check, GateId, MarketId};
use postgres::error::SqlState;
use postgres::{GenericClient, Statement};

use super::lease::{FENCE, LeaseFence};
use super::{Db, PgClient, partition_name, pg};
use crate::store::history::{DAY_MS, day_of, record};
use crate::store::{CommitError, CommitOutcome, EntryRecord, StoreError, sql_time, to_sql_u64};

/// `pg_advisory_xact_lock` key held while a day partition is made: "GWPT".
const PARTITION_LOCK: i64 = 0x4757_5054;

const INSERT: &str = "
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::smallint[], $7::smallint[], $8::smallint[], $9::real[],
                         $10::bigint[], $11::bigint[], $12::bytea[], $13::bytea[])
        AS t(gate, seq, market, zone, subject, decision, mode, direction, score, captured_at,
             decided_at, body, fingerprint)
), keys AS (
    INSERT INTO entry_keys (gate, seq, decided_at)
    SELECT gate, seq, decided_at FROM input
    ON CONFLICT (gate, seq) DO NOTHING
    RETURNING gate, seq
)
INSERT INTO entries (gate, seq, market, zone, subject, decision, mode, direction, score,
                     captured_at, decided_at, body, fingerprint)
SELECT i.gate, i.seq, i.market, i.zone, i.subject, i.decision, i.mode, i.direction, i.score,
       i.captured_at, i.decided_at, i.body, i.fingerprint
FROM input i JOIN keys k ON k.gate = i.gate AND k.seq = i.seq
RETURNING gate, seq";

/// The group-commit writer of entry records into PostgreSQL. Owns its connection; `Send`,
/// not shared.
pub(crate) struct PgEntryWriter {
    db: Arc<Db>,
    /// `None` before the first use of a bulk loader, and after a connection failed (the next
    /// batch reconnects).
    conn: Option<Conn>,
    /// Bulk loading: commits are not synced one by one (`synchronous_commit = off`) until
    /// [`PgEntryWriter::finish`].
    bulk: bool,
    /// Record forms by their bytes, as committed.
    forms: HashMap<Vec<u8>, u32>,
    /// Days whose partition this writer has made sure of.
    days: HashSet<i64>,
    /// The node's market leases, once it runs with them: every commit is then fenced by
    /// their epochs (see [`PgEntryWriter::commit`]).
    fence: Arc<OnceLock<Arc<LeaseFence>>>,
}

/// What one day's statement wrote.
struct Written {
    /// The keys inserted.
    rows: Vec<postgres::Row>,
    /// The markets whose records the fence refused.
    refused: HashSet<i64>,
}

struct Conn {
    client: PgClient,
    insert: Statement,
}

impl std::fmt::Debug for PgEntryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEntryWriter")
            .field("database", &self.db.redacted)
            .field("bulk", &self.bulk)
            .finish_non_exhaustive()
    }
}

/// One batch of one day, as the columns of the insert.
#[derive(Default)]
struct Columns {
    gate: Vec<i64>,
    seq: Vec<i64>,
    market: Vec<i64>,
    zone: Vec<i64>,
    subject: Vec<Option<i64>>,
    decision: Vec<i16>,
    mode: Vec<i16>,
    direction: Vec<i16>,
    score: Vec<Option<f32>>,
    captured_at: Vec<i64>,
    decided_at: Vec<i64>,
    body: Vec<Vec<u8>>,
    fingerprint: Vec<Option<Vec<u8>>>,
}

impl Columns {
    /// The rows whose market passes `keep`.
    fn only(&self, keep: impl Fn(i64) -> bool) -> Self {
        let mut out = Self::default();
        for i in (0..self.gate.len()).filter(|&i| keep(self.market[i])) {
            out.gate.push(self.gate[i]);
            out.seq.push(self.seq[i]);
            out.market.push(self.market[i]);
            out.zone.push(self.zone[i]);
            out.subject.push(self.subject[i]);
            out.decision.push(self.decision[i]);
            out.mode.push(self.mode[i]);
            out.direction.push(self.direction[i]);
            out.score.push(self.score[i]);
            out.captured_at.push(self.captured_at[i]);
            out.decided_at.push(self.decided_at[i]);
            out.body.push(self.body[i].clone());
            out.fingerprint.push(self.fingerprint[i].clone());
        }
        out
    }
}

impl PgEntryWriter {
    /// The pipeline's writer: connects now, so that a store that cannot be written fails the
    /// start rather than the first event.
    pub(crate) fn connect(
        db: Arc<Db>,
        fence: Arc<OnceLock<Arc<LeaseFence>>>,
    ) -> Result<Self, StoreError> {
        let mut writer = Self::new(db, false, fence);
        writer.conn()?;
        Ok(writer)
    }

    /// The bulk loader; connects at its first commit. Never fenced: it loads past days.
    pub(crate) fn bulk(db: Arc<Db>) -> Self {
        Self::new(db, true, Arc::default())
    }

    fn new(db: Arc<Db>, bulk: bool, fence: Arc<OnceLock<Arc<LeaseFence>>>) -> Self {
        Self {
            db,
            conn: None,
            bulk,
            forms: HashMap::new(),
            days: HashSet::new(),
            fence,
        }
    }

    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        match &mut self.conn {
            Some(conn) => Ok(conn),
            slot @ None => {
                let mut client = self.db.connect(!self.bulk)?;
                let insert = client
                    .prepare(INSERT)
                    .map_err(pg("preparing the entry insert"))?;
                Ok(slot.insert(Conn { client, insert }))
            }
        }
    }

    /// See [`EntryWriter::commit`](crate::store::EntryWriter::commit).
    ///
    /// With leases, each day's insert runs in a transaction that first locks the lease rows
    /// of the batch's markets at the epochs this node holds them (`FOR SHARE`): records of a
    /// market held at another epoch, or by another node, are not recorded and come back as
    /// `None` with [`StoreError::LeaseLost`]; the rest are committed. A takeover's `UPDATE`
    /// of those rows waits for the commit, so the new holder's rebuild reads every record the
    /// old holder committed.
    pub(crate) fn commit(
        &mut self,
        records: &[EntryRecord],
    ) -> Result<Vec<CommitOutcome>, CommitError> {
        let mut by_day: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            by_day
                .entry(day_of(r.verdict.decided_at))
                .or_default()
                .push(i);
        }
        let mut recorded: Vec<Option<CommitOutcome>> = vec![None; records.len()];
        let mut lost: BTreeSet<MarketId> = BTreeSet::new();
        for (day, idxs) in by_day {
            match self.commit_day(day, records, &idxs) {
                Ok(outcomes) => {
                    for (i, o) in idxs.into_iter().zip(outcomes) {
                        if o.is_none() {
                            lost.insert(records[i].market);
                        }
                        recorded[i] = o;
                    }
                }
                Err(error) => {
                    // The partition may have been dropped, the connection lost: start afresh.
                    self.days.clear();
                    return Err(CommitError { error, recorded });
                }
            }
        }
        if !lost.is_empty() {
            return Err(CommitError {
                error: StoreError::LeaseLost {
                    markets: lost.into_iter().collect(),
                },
                recorded,
            });
        }
        Ok(recorded.into_iter().flatten().collect())
    }

    /// Makes everything committed so far durable: a bulk loader's commits were not synced one
    /// by one, and one synchronous commit flushes the log up to it, theirs included.
    pub(crate) fn finish(&mut self) -> Result<(), StoreError> {
        if !self.bulk {
            return Ok(());
        }
        let Some(conn) = &mut self.conn else {
            return Ok(()); // nothing was written
        };
        conn.client
            .batch_execute(
                "SET synchronous_commit = on;
                 UPDATE meta SET value = value WHERE key = 'schema_version';",
            )
            .map_err(pg("syncing loaded entries"))?;
        conn.client
            .batch_execute("SET synchronous_commit = off")
            .map_err(pg("syncing loaded entries"))
    }

    fn commit_day(
        &mut self,
        day: i64,
        records: &[EntryRecord],
        idxs: &[usize],
    ) -> Result<Vec<Option<CommitOutcome>>, StoreError> {
        self.ensure_partitions(day)?;
        // A key twice in one batch: the first is the record, the others duplicates of it.
        let mut seen: HashSet<(GateId, u64)> = HashSet::with_capacity(idxs.len());
        let mut cols = Columns::default();
        let mut sent: Vec<(GateId, u64)> = Vec::with_capacity(idxs.len());
        for &i in idxs {
            let rec = &records[i];
            let v = &rec.verdict;
            if !seen.insert((v.gate, v.seq)) {
                continue;
            }
            let body = self.encode_body(rec)?;
            cols.gate.push(i64::from(v.gate.0));
            cols.seq.push(to_sql_u64(v.seq));
            cols.market.push(i64::from(rec.market.0));
            cols.zone.push(i64::from(rec.zone.0));
            cols.subject.push(v.subject.map(|s| to_sql_u64(s.0)));
            cols.decision.push(i16::from(v.decision.code()));
            cols.mode.push(i16::from(rec.mode.code()));
            cols.direction.push(i16::from(rec.direction.code()));
            cols.score.push(v.score);
            cols.captured_at.push(sql_time(rec.captured_at));
            cols.decided_at.push(sql_time(v.decided_at));
            cols.body.push(body);
            cols.fingerprint.push(Some(rec.fingerprint.0.to_vec()));
            sent.push((v.gate, v.seq));
        }
        let fence = self.fence.get().cloned();
        let written = match Self::write(self.conn()?, fence.as_deref(), &cols) {
            // Retention dropped the day's partition since this writer made sure of it (a
            // record late by more than the retention period): make it again, once.
            Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                self.days.remove(&day);
                self.ensure_partitions(day)?;
                Self::write(self.conn()?, fence.as_deref(), &cols)
            }
            other => other,
        }
        .map_err(pg("committing entry records"))?;
        let mut inserted: HashSet<(GateId, u64)> = HashSet::with_capacity(written.rows.len());
        for row in written.rows {
            let gate: i64 = row.try_get(0).map_err(pg("committing entry records"))?;
            let seq: i64 = row.try_get(1).map_err(pg("committing entry records"))?;
            let gate = u32::try_from(gate)
                .map_err(|_| self.db.corrupt(format!("gate id {gate} is out of range")))?;
            inserted.insert((GateId(gate), crate::store::from_sql_u64(seq)));
        }
        // Outcomes in the order given: the first of each inserted key is the record.
        Ok(idxs
            .iter()
            .map(|&i| {
                let v = &records[i].verdict;
                if written.refused.contains(&i64::from(records[i].market.0)) {
                    None
                } else if inserted.remove(&(v.gate, v.seq)) {
                    Some(CommitOutcome::Inserted)
                } else {
                    Some(CommitOutcome::Duplicate)
                }
            })
            .collect())
    }

    /// Writes one day's batch: without a fence, the insert alone (one statement, one
    /// transaction); with one, the fence's check and the insert of the records it lets
    /// through in one transaction.
    fn write(
        conn: &mut Conn,
        fence: Option<&LeaseFence>,
        cols: &Columns,
    ) -> Result<Written, postgres::Error> {
        let Some(fence) = fence else {
            let rows = Self::insert(&mut *conn.client, &conn.insert, cols)?;
            return Ok(Written {
                rows,
                refused: HashSet::new(),
            });
        };
        let markets: BTreeSet<i64> = cols.market.iter().copied().collect();
        let (mut held, mut epochs) = (Vec::new(), Vec::new());
        for &m in &markets {
            let epoch = u32::try_from(m).ok().and_then(|m| fence.epoch(MarketId(m)));
            if let Some(epoch) = epoch {
                held.push(m);
                epochs.push(i64::try_from(epoch).unwrap_or(i64::MAX));
            }
        }
        let mut tx = conn.client.transaction()?;
        let passed: HashSet<i64> = tx
            .query(FENCE, &[&fence.node(), &held, &epochs])?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let refused: HashSet<i64> = markets
            .iter()
            .filter(|m| !passed.contains(m))
            .copied()
            .collect();
        let rows = if refused.is_empty() {
            Self::insert(&mut tx, &conn.insert, cols)?
        } else {
            let kept = cols.only(|market| passed.contains(&market));
            if kept.gate.is_empty() {
                Vec::new()
            } else {
                Self::insert(&mut tx, &conn.insert, &kept)?
            }
        };
        tx.commit()?;
        Ok(Written { rows, refused })
    }

    /// Runs the batch insert.
    fn insert(
        client: &mut impl GenericClient,
        insert: &Statement,
        cols: &Columns,
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        client.query(
            insert,
            &[
                &cols.gate,
                &cols.seq,
                &cols.market,
                &cols.zone,
                &cols.subject,
                &cols.decision,
                &cols.mode,
                &cols.direction,
                &cols.score,
                &cols.captured_at,
                &cols.decided_at,
                &cols.body,
                &cols.fingerprint,
            ],
        )
    }

    /// The record body of `rec`, with the ids of its forms (new forms are committed first:
    /// a form without an entry is harmless, an entry without its form would not decode).
    fn encode_body(&mut self, rec: &EntryRecord) -> Result<Vec<u8>, StoreError> {
        let v = &rec.verdict;
        let display = self.form(record::display_form(&v.display))?;
        let policy = match &rec.policy {
            Some(p) => Some(self.form(record::policy_form(p.as_str()))?),
            None => None,
        };
        let mut checks: Vec<(u32, &Check)> = Vec::with_capacity(v.checks.len());
        for c in &v.checks {
            checks.push((self.form(record::check_form(c))?, c));
        }
        let mut body = Vec::with_capacity(32);
        record::encode_body(&mut body, display, policy, &checks);
        Ok(body)
    }

    /// The dictionary id of a form, adding it to `entry_forms` if it is new.
    fn form(&mut self, bytes: Vec<u8>) -> Result<u32, StoreError> {
        if let Some(&id) = self.forms.get(&bytes) {
            return Ok(id);
        }
        let op = pg("recording a record form");
        let client = &mut self.conn()?.client;
        // Another node may add the same form at the same moment: the unique bytes make one
        // of the two inserts do nothing, and the select then finds the other's.
        let row = client
            .query_opt(
                "INSERT INTO entry_forms (bytes) VALUES ($1) ON CONFLICT (bytes) DO NOTHING
                 RETURNING id",
                &[&bytes],
            )
            .map_err(&op)?;
        let row = match row {
            Some(row) => row,
            None => client
                .query_one("SELECT id FROM entry_forms WHERE bytes = $1", &[&bytes])
                .map_err(&op)?,
        };
        let id: i32 = row.try_get(0).map_err(&op)?;
        let id = u32::try_from(id).map_err(|_| {
            self.db
                .corrupt(format!("record form id {id} is out of range"))
        })?;
        self.forms.insert(bytes, id);
        Ok(id)
    }

    /// Makes sure the partitions of `day` and the day after exist.
    fn ensure_partitions(&mut self, day: i64) -> Result<(), StoreError> {
        if self.days.contains(&day) {
            return Ok(());
        }
        let client = &mut self.conn()?.client;
        make_partitions(client, [day, day + 1])?;
        self.days.insert(day);
        Ok(())
    }
}

/// Makes the partitions of `days` that do not exist yet, under an advisory lock so that nodes
/// do not race on the DDL. Making one locks `entries` for a moment: the maintenance thread
/// makes them two days ahead (`PgStore::prepare_partitions`), so that the commit path finds
/// them made and its own `IF NOT EXISTS` takes no lock.
pub(super) fn make_partitions(
    client: &mut postgres::Client,
    days: impl IntoIterator<Item = i64>,
) -> Result<(), StoreError> {
    let op = pg("making an entry partition");
    let mut tx = client.transaction().map_err(&op)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .map_err(&op)?;
    for d in days {
        let lo = d.saturating_mul(DAY_MS as i64);
        let hi = lo.saturating_add(DAY_MS as i64);
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF entries FOR VALUES FROM ({lo}) TO ({hi})",
            partition_name(d)
        ))
        .map_err(&op)?;
    }
    tx.commit().map_err(&op)
}

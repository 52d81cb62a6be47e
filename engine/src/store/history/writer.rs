//! Writing entry records into day partitions: the pipeline's group-commit writer, and the bulk
//! loader that the history generator and the schema-2 migration use.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use gatewarden_protocol::{Check, GateId, Verdict};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::partition::{self, Day};
use super::{History, day_of, record};
use crate::store::schema::Role;
use crate::store::{
    CommitOutcome, EntryRecord, EventFingerprint, ModeKind, StoreError, from_sql_u64, sql_time,
    to_sql_u64,
};

const INSERT: &str = "INSERT INTO entries (gate, seq, market, zone, subject, decision, mode,
                                           direction, score, captured_at, decided_at, body,
                                           fingerprint)
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                      ON CONFLICT (gate, seq) DO NOTHING";

const UPSERT_GATE_SEQS: &str = "INSERT INTO gate_seqs (gate, min_seq, max_seq) VALUES (?1, ?2, ?3)
                                ON CONFLICT (gate) DO UPDATE
                                SET min_seq = excluded.min_seq, max_seq = excluded.max_seq";

/// Partitions a writer keeps open: today's, and yesterday's for the records of a batch that
/// straddles midnight.
const OPEN_DAYS: usize = 2;

/// A batch could not be recorded in full.
///
/// Records of one day are committed in one transaction; a batch that straddles midnight is
/// two. If the second fails, the first is durable: `recorded` says, per record in the order
/// given, what became of it (`None`: not recorded).
#[derive(Debug)]
pub struct CommitError {
    /// Why the (rest of the) batch was not recorded.
    pub error: StoreError,
    /// Per record: its outcome if it is durable, `None` if it is not.
    pub recorded: Vec<Option<CommitOutcome>>,
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for CommitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The group-commit writer of entry records into SQLite day partitions. Owns its
/// connections; `Send`, not shared.
pub(crate) struct SqliteEntryWriter {
    history: Arc<History>,
    role: Role,
    days: BTreeMap<Day, DayWriter>,
    body: Vec<u8>,
}

impl std::fmt::Debug for SqliteEntryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEntryWriter")
            .field("dir", &self.history.dir)
            .field("open_days", &self.days.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One open partition: its connection and its dictionary of forms.
struct DayWriter {
    conn: Connection,
    path: PathBuf,
    forms: HashMap<Vec<u8>, u32>,
}

/// One record as the writer inserts it; the migration builds these from schema-2 rows, which
/// have no fingerprint.
pub(crate) struct RecordRef<'a> {
    pub(crate) record: &'a EntryRecord,
    pub(crate) fingerprint: Option<&'a EventFingerprint>,
}

impl SqliteEntryWriter {
    pub(crate) fn new(history: Arc<History>, role: Role) -> Self {
        Self {
            history,
            role,
            days: BTreeMap::new(),
            body: Vec::with_capacity(128),
        }
    }

    /// Records a batch. With the pipeline's writer (`synchronous=FULL`), every record is
    /// durable when this returns `Ok`. A `(gate, seq)` already in its day's partition (earlier,
    /// or earlier in the same batch) is not inserted and comes back as
    /// [`CommitOutcome::Duplicate`]. Outcomes are in the order of `records`.
    ///
    /// # Errors
    /// SQLite failures (disk full, I/O error, busy past the timeout); [`CommitError`] says
    /// which records, if any, were recorded all the same.
    pub(crate) fn commit(
        &mut self,
        records: &[EntryRecord],
    ) -> Result<Vec<CommitOutcome>, CommitError> {
        let refs: Vec<RecordRef<'_>> = records
            .iter()
            .map(|r| RecordRef {
                record: r,
                fingerprint: Some(&r.fingerprint),
            })
            .collect();
        self.commit_refs(&refs)
    }

    pub(crate) fn commit_refs(
        &mut self,
        records: &[RecordRef<'_>],
    ) -> Result<Vec<CommitOutcome>, CommitError> {
        let mut by_day: BTreeMap<Day, Vec<usize>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            by_day
                .entry(day_of(r.record.verdict.decided_at))
                .or_default()
                .push(i);
        }
        let mut recorded: Vec<Option<CommitOutcome>> = vec![None; records.len()];
        for (day, idxs) in by_day {
            match self.commit_day(day, records, &idxs) {
                Ok(outcomes) => {
                    for (i, o) in idxs.into_iter().zip(outcomes) {
                        recorded[i] = Some(o);
                    }
                }
                Err(error) => return Err(CommitError { error, recorded }),
            }
        }
        Ok(recorded.into_iter().flatten().collect())
    }

    /// Makes everything written so far durable and the partitions compact: checkpoints each
    /// open partition's log into its file and syncs it. The bulk loader's last step (its
    /// transactions are not synced one by one); harmless for the pipeline's writer.
    ///
    /// # Errors
    /// SQLite and file-system failures.
    pub(crate) fn finish(&mut self) -> Result<(), StoreError> {
        for (_, day) in std::mem::take(&mut self.days) {
            day.close(self.role)?;
        }
        Ok(())
    }

    fn commit_day(
        &mut self,
        day: Day,
        records: &[RecordRef<'_>],
        idxs: &[usize],
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let history = self.history.clone();
        // Taken out so that it can be borrowed beside the day writer; put back on success (an
        // error only costs a new allocation).
        let mut body = std::mem::take(&mut self.body);
        let writer = self.day_writer(day)?;
        let path = writer.path.clone();
        let sql = |e| StoreError::from_sqlite(&path, "committing entry records", e);
        let _gate = history
            .commit_gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Retention deletes a day under the same gate: a day deleted since it was opened above
        // must not take records into a file that is gone.
        if history.get(day).is_none() {
            return Err(StoreError::Io {
                path,
                source: std::io::Error::other("the day was deleted by retention meanwhile"),
            });
        }
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        // Another writer of the same day (a second bulk loader, a second writer in a program
        // embedding the engine) may have added forms since this one loaded them: under the
        // transaction's write lock, catch up before numbering new ones.
        let stored: Option<u32> = tx
            .query_row("SELECT max(id) FROM dict", [], |r| r.get(0))
            .map_err(sql)?;
        if stored.map_or(0, |m| m as usize + 1) != writer.forms.len() {
            writer.forms = load_forms(&tx, &path)?;
        }
        let mut batch = Batch {
            forms: &writer.forms,
            new_forms: Vec::new(),
            gates: HashMap::new(),
        };
        let mut outcomes = Vec::with_capacity(idxs.len());
        for &i in idxs {
            let inserted = insert(&tx, &mut batch, &mut body, &records[i]).map_err(sql)?;
            outcomes.push(if inserted {
                CommitOutcome::Inserted
            } else {
                CommitOutcome::Duplicate
            });
        }
        let Batch {
            new_forms, gates, ..
        } = batch;
        for (bytes, id) in &new_forms {
            tx.execute(
                "INSERT INTO dict (id, bytes) VALUES (?1, ?2)",
                params![id, bytes],
            )
            .map_err(sql)?;
        }
        // Each gate's range in this partition, widened by the batch. Read under the write
        // lock (another writer may have widened it) and merged here, where seqs compare as
        // u64 (SQLite would compare their i64 bit patterns).
        let mut spans = Vec::with_capacity(gates.len());
        for (gate, (lo, hi)) in gates {
            let stored: Option<(i64, i64)> = tx
                .prepare_cached("SELECT min_seq, max_seq FROM gate_seqs WHERE gate = ?1")
                .and_then(|mut s| {
                    s.query_row([gate.0], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(sql)?;
            let (lo, hi) = stored.map_or((lo, hi), |(a, b)| {
                (from_sql_u64(a).min(lo), from_sql_u64(b).max(hi))
            });
            tx.prepare_cached(UPSERT_GATE_SEQS)
                .and_then(|mut s| s.execute(params![gate.0, to_sql_u64(lo), to_sql_u64(hi)]))
                .map_err(sql)?;
            spans.push((gate, lo, hi));
        }
        tx.commit().map_err(sql)?;
        writer.forms.extend(new_forms);
        for (gate, lo, hi) in spans {
            history.seqs.note(gate, day, lo, hi);
        }
        self.body = body;
        Ok(outcomes)
    }

    /// The open partition of `day`, opening (or creating) it on first use. At most
    /// `OPEN_DAYS` stay open; the oldest other than `day` is closed to make room (a migration
    /// or a clock stepped back may ask for an older day than those open).
    fn day_writer(&mut self, day: Day) -> Result<&mut DayWriter, StoreError> {
        // A partition deleted by retention while this writer held it is created afresh.
        if self.days.contains_key(&day) && self.history.get(day).is_none() {
            self.days.remove(&day);
        }
        if !self.days.contains_key(&day) {
            while self.days.len() >= OPEN_DAYS {
                let Some(&oldest) = self.days.keys().next() else {
                    break;
                };
                if let Some(done) = self.days.remove(&oldest) {
                    done.close(self.role)?;
                }
            }
            let path = self.history.path_of(day);
            let opening = self
                .history
                .open_lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let conn = partition::open_for_writing(&path, self.role)?;
            let forms = load_forms(&conn, &path)?;
            self.history.register(day);
            drop(opening);
            self.days.insert(day, DayWriter { conn, path, forms });
        }
        self.days.get_mut(&day).ok_or_else(|| StoreError::Corrupt {
            path: self.history.path_of(day),
            detail: "the day's writer vanished while it was opened".to_owned(),
        })
    }
}

impl DayWriter {
    /// Closes a day this writer is done with. The bulk loader's transactions were not synced
    /// one by one, so it folds the log into the file and syncs both first. The pipeline's
    /// writer only drops its connection: it leaves a day two days after its last record, when
    /// the maintenance thread has long folded that day's log in, and its connection does not
    /// checkpoint on close (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`).
    fn close(self, role: Role) -> Result<(), StoreError> {
        if role != Role::BulkLoader {
            return Ok(());
        }
        let sql = |e| StoreError::from_sqlite(&self.path, "checkpointing a partition", e);
        self.conn
            .execute_batch("PRAGMA synchronous = FULL;")
            .map_err(sql)?;
        // Nothing else reads or writes a day being loaded; if something does (busy), the log
        // stays for the maintenance thread, and both files are synced as they stand.
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(sql)?;
        if busy != 0 {
            tracing::warn!(path = %self.path.display(), "a loaded day's log could not be folded in");
        }
        drop(self.conn);
        crate::store::fsutil::sync_file_and_dir(&self.path)?;
        // Another writer of the same day may still hold the log open; when it closes, SQLite
        // deletes the log, so "gone" between our check and our sync means nothing left to sync.
        let wal = super::upkeep::sidecar(&self.path, "-wal");
        match std::fs::File::open(&wal) {
            Ok(log) => log.sync_all().map_err(|e| StoreError::Io {
                path: wal.clone(),
                source: e,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Io {
                    path: wal,
                    source: e,
                });
            }
        }
        Ok(())
    }
}

/// What one day's transaction has added so far, beyond what is committed.
struct Batch<'a> {
    forms: &'a HashMap<Vec<u8>, u32>,
    new_forms: Vec<(Vec<u8>, u32)>,
    /// Each gate's lowest and highest seq inserted.
    gates: HashMap<GateId, (u64, u64)>,
}

impl Batch<'_> {
    /// The dictionary id of `form`, assigning the next free one to a new form.
    fn intern(&mut self, form: Vec<u8>) -> u32 {
        if let Some(&id) = self.forms.get(&form) {
            return id;
        }
        if let Some((_, id)) = self.new_forms.iter().find(|(b, _)| *b == form) {
            return *id;
        }
        let id = (self.forms.len() + self.new_forms.len()) as u32;
        self.new_forms.push((form, id));
        id
    }
}

/// Inserts one record; false if its `(gate, seq)` is already in the partition.
fn insert(
    tx: &Transaction<'_>,
    batch: &mut Batch<'_>,
    body: &mut Vec<u8>,
    r: &RecordRef<'_>,
) -> rusqlite::Result<bool> {
    let rec = r.record;
    let v: &Verdict = &rec.verdict;
    let display = batch.intern(record::display_form(&v.display));
    let policy = rec
        .policy
        .as_ref()
        .map(|p| batch.intern(record::policy_form(p.as_str())));
    let checks: Vec<(u32, &Check)> = v
        .checks
        .iter()
        .map(|c| (batch.intern(record::check_form(c)), c))
        .collect();
    body.clear();
    record::encode_body(body, display, policy, &checks);
    let n = tx.prepare_cached(INSERT)?.execute(params![
        v.gate.0,
        to_sql_u64(v.seq),
        rec.market.0,
        rec.zone.0,
        v.subject.map(|s| to_sql_u64(s.0)),
        v.decision.code(),
        rec.mode.code(),
        rec.direction.code(),
        v.score.map(f64::from),
        sql_time(rec.captured_at),
        sql_time(v.decided_at),
        &body[..],
        r.fingerprint.map(|f| &f.0[..]),
    ])?;
    if n == 0 {
        return Ok(false);
    }
    let span = batch.gates.entry(v.gate).or_insert((v.seq, v.seq));
    span.0 = span.0.min(v.seq);
    span.1 = span.1.max(v.seq);
    Ok(true)
}

fn load_forms(
    conn: &Connection,
    path: &std::path::Path,
) -> Result<HashMap<Vec<u8>, u32>, StoreError> {
    let sql = |e| StoreError::from_sqlite(path, "reading a partition's forms", e);
    let mut stmt = conn.prepare("SELECT id, bytes FROM dict").map_err(sql)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, Vec<u8>>(1)?, r.get::<_, u32>(0)?)))
        .map_err(sql)?;
    let forms: HashMap<Vec<u8>, u32> = rows.collect::<Result<_, _>>().map_err(sql)?;
    // Ids are dense from 0 (see `Batch::intern`); a gap would make the next id collide.
    if forms.values().any(|&id| id as usize >= forms.len()) {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: "the record forms are not numbered densely".to_owned(),
        });
    }
    Ok(forms)
}

impl ModeKind {
    /// The mode's code as partitions store it.
    pub(crate) const fn code(self) -> u8 {
        match self {
            Self::Verify => 1,
            Self::Identify => 2,
            Self::SignIn => 3,
        }
    }

    /// The mode with this code.
    pub(crate) const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Verify),
            2 => Some(Self::Identify),
            3 => Some(Self::SignIn),
            _ => None,
        }
    }
}

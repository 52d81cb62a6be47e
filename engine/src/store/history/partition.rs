//! One partition: the entry records of one UTC day in a SQLite file of their own.
//!
//! ```text
//! entries   one row per verdict; indexed by (gate, seq), (subject, decided_at) and
//!           (market, decided_at, ...); `body` is the compact record (see `record`). The
//!           market indexes cover the market queries (frequency, sign-ins, contacts), so they
//!           never read the table: a 30-day frequency reads 30 index ranges, not 450,000 rows,
//!           and over a whole day it reads them in subject order (no sort for GROUP BY)

//! dict      the partition's forms: checks without their values, screens, policy versions
//! gate_seqs each gate's lowest and highest seq in this partition, kept in the same
//!           transaction as the entries (the seq directory is loaded from it at start-up)
//! ```
//!
//! A partition file is marked with its own application id and version, so that a file dropped
//! into `entries/` by mistake is refused rather than read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension};

use super::record::{self, Form};
use crate::store::StoreError;
use crate::store::schema::{self, ReadPool, Role};

/// `PRAGMA application_id` of a partition: "GWRE".
const APPLICATION_ID: i32 = 0x4757_5245;
/// The partition layout this build writes and reads.
const VERSION: i64 = 1;

/// Enumerations are stored as their permanent wire codes; `mode` as [`ModeKind::code`].
///
/// [`ModeKind::code`]: crate::store::ModeKind::code
const SCHEMA: &str = "
CREATE TABLE entries (
    id          INTEGER PRIMARY KEY,
    gate        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    market      INTEGER NOT NULL,
    zone        INTEGER NOT NULL,
    subject     INTEGER,
    decision    INTEGER NOT NULL,
    mode        INTEGER NOT NULL,
    direction   INTEGER NOT NULL,
    score       REAL,
    captured_at INTEGER NOT NULL,
    decided_at  INTEGER NOT NULL,
    body        BLOB NOT NULL,
    fingerprint BLOB
);
CREATE TABLE dict (
    id    INTEGER PRIMARY KEY,
    bytes BLOB NOT NULL UNIQUE
);
CREATE TABLE gate_seqs (
    gate    INTEGER PRIMARY KEY,
    min_seq INTEGER NOT NULL,
    max_seq INTEGER NOT NULL
);
";

/// The indexes, apart so that opening a partition can add one it lacks (a partition written
/// before the index existed; the queries name them).
const INDEXES: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS entries_key ON entries(gate, seq);
CREATE INDEX IF NOT EXISTS entries_subject
    ON entries(subject, decided_at) WHERE subject IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_market
    ON entries(market, decided_at, subject, decision, mode, direction, gate, zone);
CREATE INDEX IF NOT EXISTS entries_market_subject
    ON entries(market, subject, decision, direction, mode, decided_at);
";

/// The day a partition holds: days since 1970-01-01, UTC.
pub(crate) type Day = i64;

/// The file name of `day`'s partition: `2026-12-04.db`.
pub(crate) fn file_name(day: Day) -> String {
    format!("{}.db", crate::clock::format_day(day))
}

/// The day of a partition file name, if it is one.
pub(crate) fn day_of_file(name: &str) -> Option<Day> {
    let stem = name.strip_suffix(".db")?;
    let day = crate::clock::parse_day(stem).ok()?;
    // Only the canonical spelling: `2025-12-4.db` beside `2025-12-04.db` would be one day in
    // two files, and the writer writes only the canonical one.
    (file_name(day) == name).then_some(day)
}

/// A partition known to the store: its file, its read connections and a cache of its forms.
pub(crate) struct Partition {
    pub(crate) day: Day,
    pub(crate) path: PathBuf,
    pub(crate) readers: ReadPool,
    forms: Mutex<HashMap<u32, Form>>,
}

impl Partition {
    pub(crate) fn new(day: Day, path: PathBuf) -> Self {
        Self {
            day,
            readers: ReadPool::for_partition(path.clone()),
            path,
            forms: Mutex::new(HashMap::new()),
        }
    }

    /// Whether every instant of this partition's day lies in `[since, until)`.
    pub(crate) fn is_within(
        &self,
        since: gatewarden_protocol::UnixMillis,
        until: gatewarden_protocol::UnixMillis,
    ) -> bool {
        let start = (self.day.max(0) as u64).saturating_mul(super::DAY_MS);
        since.0 <= start && start.saturating_add(super::DAY_MS) <= until.0
    }

    /// The form with dictionary id `id`, read through `conn` on a cache miss. `conn` must be the
    /// connection (and transaction) that read the record naming `id`: the writer adds a form in
    /// the same transaction as the first record that uses it, so that snapshot holds it.
    pub(crate) fn form(&self, conn: &Connection, id: u32) -> Result<Form, StoreError> {
        if let Some(f) = self.lock_forms().get(&id) {
            return Ok(f.clone());
        }
        let bytes: Option<Vec<u8>> = conn
            .query_row("SELECT bytes FROM dict WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(|e| StoreError::from_sqlite(&self.path, "reading a record form", e))?;
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let bytes =
            bytes.ok_or_else(|| corrupt(format!("a record names form {id}, not stored")))?;
        let form = record::decode_form(&bytes)
            .map_err(|e| corrupt(format!("form {id} does not decode: {e}")))?;
        self.lock_forms().insert(id, form.clone());
        Ok(form)
    }

    fn lock_forms(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Form>> {
        self.forms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads every gate's seq range (for the seq directory) through `conn`, a connection that
    /// is closed afterwards (at open, hundreds of partitions must not each keep one).
    pub(crate) fn gate_seqs(&self, conn: &Connection) -> Result<Vec<(u32, u64, u64)>, StoreError> {
        let sql = |e| StoreError::from_sqlite(&self.path, "reading a partition's seq ranges", e);
        let mut stmt = conn
            .prepare("SELECT gate, min_seq, max_seq FROM gate_seqs")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }

    /// How many entries the partition holds. Rows are never deleted from a partition (it is
    /// deleted whole), so the highest rowid is the count, read without a scan.
    pub(crate) fn entry_count(&self) -> Result<u64, StoreError> {
        let conn = self.readers.get()?;
        let n: Option<i64> = conn
            .query_row("SELECT max(id) FROM entries", [], |r| r.get(0))
            .map_err(|e| StoreError::from_sqlite(&self.path, "counting entries", e))?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }
}

/// Opens (creating if needed) a partition for writing, with the pragmas of `role`, and makes
/// sure its schema is there.
pub(crate) fn open_for_writing(path: &Path, role: Role) -> Result<Connection, StoreError> {
    crate::store::fsutil::ensure_private_file(path)?;
    let conn = schema::open_connection(path, role)?;
    ensure_schema(&conn, path)?;
    crate::store::fsutil::tighten_sidecars(path)?;
    Ok(conn)
}

/// Checks that `path` is a partition of this version, creating the schema in an empty file.
pub(crate) fn ensure_schema(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |op| move |e| StoreError::from_sqlite(path, op, e);
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(sql("reading a partition's mark"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql("reading a partition's version"))?;
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    match (app, version) {
        (APPLICATION_ID, VERSION) => conn
            .execute_batch(INDEXES)
            .map_err(sql("adding a partition's indexes")),
        (APPLICATION_ID, v) if v > VERSION => Err(StoreError::Incompatible {
            found: v as u32,
            supported: VERSION as u32,
        }),
        (0, 0) => {
            let tx = rusqlite::Transaction::new_unchecked(
                conn,
                rusqlite::TransactionBehavior::Immediate,
            )
            .map_err(sql("creating a partition"))?;
            // Under the write lock, look again: another writer of the same new day (two bulk
            // loader threads) may have created it while this one waited for the lock.
            let marked: i32 = tx
                .query_row("PRAGMA application_id", [], |r| r.get(0))
                .map_err(sql("reading a partition's mark"))?;
            if marked == APPLICATION_ID {
                drop(tx); // rolls back; nothing was written
                return ensure_schema(conn, path);
            }
            let objects: i64 = tx
                .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
                .map_err(sql("reading a partition's schema"))?;
            if objects > 0 {
                return Err(corrupt(format!(
                    "not an entry partition ({objects} schema objects, no gatewarden mark)"
                )));
            }
            tx.execute_batch(SCHEMA)
                .and_then(|()| tx.execute_batch(INDEXES))
                .map_err(sql("creating a partition"))?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(sql("marking a partition"))?;
            tx.pragma_update(None, "user_version", VERSION)
                .map_err(sql("marking a partition"))?;
            tx.commit().map_err(sql("creating a partition"))
        }
        (app, v) => Err(corrupt(format!(
            "not an entry partition (application id {app:#x}, version {v})"
        ))),
    }
}

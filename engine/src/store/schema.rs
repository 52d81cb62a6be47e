//! The SQLite schema, its versioned migrations, connection set-up, and the checks made before a
//! database file is trusted.
//!
//! Versioning: `PRAGMA user_version` holds the schema version and `PRAGMA application_id`
//! marks the file as a gatewarden store. `MIGRATIONS[i]` takes version `i` to `i + 1`, each in
//! its own transaction; a store whose version is above [`SCHEMA_VERSION`] is refused rather
//! than guessed at.

use std::fs;
use std::io::Read;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::StoreError;

/// The schema version this build writes and understands.
pub(super) const SCHEMA_VERSION: u32 = 4;

/// `PRAGMA application_id` of a gatewarden store: "GWRD".
pub(super) const APPLICATION_ID: i32 = 0x4757_5244;

/// How long a connection waits for another's write lock before failing. Long, because the
/// alternative for the entry writer is failing events closed; registry writers keep their
/// transactions short (callers batch templates) so that this wait is rarely more than one fsync.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle read connections kept for reuse; more are opened on demand when readers overlap.
const MAX_IDLE_READERS: usize = 4;

/// Version 0 → 1: the initial schema.
///
/// Enumerations are stored as lowercase text (`admit`, `service_worker`) so that the database
/// reads plainly in the `sqlite3` shell; ids are integers stored by bit pattern.
const V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE subjects (
    id          INTEGER PRIMARY KEY,
    category    TEXT NOT NULL,
    home_market INTEGER NOT NULL,
    markets     TEXT NOT NULL,   -- JSON array of market ids; [] means every market
    zones       TEXT NOT NULL,   -- JSON array of zone ids; [] means every zone
    valid_from  INTEGER,
    valid_until INTEGER,
    status      TEXT NOT NULL
);

-- kind 'id_card': key = HMAC-SHA256(credential.key, normalised number), never the number.
-- kind 'staff_qr': key = the token's UTF-8 bytes.
CREATE TABLE credentials (
    kind    TEXT NOT NULL,
    key     BLOB NOT NULL,
    subject INTEGER NOT NULL REFERENCES subjects(id),
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX credentials_subject ON credentials(subject);

-- AUTOINCREMENT: ids are never reused, so the gallery's watermark (highest id folded in) stays
-- meaningful even if the newest template is deleted.
CREATE TABLE templates (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    subject INTEGER NOT NULL REFERENCES subjects(id),
    model   TEXT NOT NULL,
    dim     INTEGER NOT NULL,
    vector  BLOB NOT NULL    -- dim little-endian f32
);
CREATE INDEX templates_subject ON templates(subject);

CREATE TABLE health (
    subject       INTEGER PRIMARY KEY REFERENCES subjects(id),
    test_at       INTEGER,
    test_result   TEXT,
    vaccine_doses INTEGER NOT NULL,
    health_code   TEXT NOT NULL,
    travel_code   TEXT NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE gates (
    id     INTEGER PRIMARY KEY,
    market INTEGER NOT NULL,
    zone   INTEGER NOT NULL,
    name   TEXT NOT NULL
);

-- One row per verdict. The indexed columns serve the queries; `verdict` is the full verdict
-- (checks included) as JSON, returned verbatim for a repeated (gate, seq).
CREATE TABLE entries (
    id          INTEGER PRIMARY KEY,
    gate        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    market      INTEGER NOT NULL,
    zone        INTEGER NOT NULL,
    subject     INTEGER,
    decision    TEXT NOT NULL,
    mode        TEXT NOT NULL,
    direction   TEXT NOT NULL,
    score       REAL,
    captured_at INTEGER NOT NULL,
    decided_at  INTEGER NOT NULL,
    failed      TEXT NOT NULL,   -- JSON array of the failing check kinds
    verdict     TEXT NOT NULL,
    UNIQUE (gate, seq)
);
CREATE INDEX entries_subject_time ON entries(subject, decided_at);
CREATE INDEX entries_market_time ON entries(market, decided_at);
CREATE INDEX entries_time ON entries(decided_at);

-- Staff sign-ins are the admitted sign-in events.
CREATE VIEW signins AS
    SELECT subject, market, zone, gate, decided_at FROM entries
    WHERE mode = 'sign_in' AND decision = 'admit' AND subject IS NOT NULL;

CREATE TABLE revocations (
    id      INTEGER PRIMARY KEY,
    subject INTEGER NOT NULL,
    reason  TEXT NOT NULL,
    at      INTEGER NOT NULL
);
";

/// Version 1 → 2: a keyed fingerprint of each recorded event, so that a retry is told apart
/// from a reused `(gate, seq)` (see `pipeline::exactly_once`). Entries recorded before it have
/// none and are compared on `captured_at` and mode alone.
///
/// The audit trail records reinstatements beside revocations (`action`). And staff QR tokens,
/// stored in clear by version 1 (kind `staff_qr`), become keyed hashes (kind `staff_qr_hmac`):
/// that step needs the key, so `Store::open` runs it after the SQL (`key::hash_clear_qr_tokens`).
const V2: &str = "
ALTER TABLE entries ADD COLUMN fingerprint BLOB;
ALTER TABLE revocations ADD COLUMN action TEXT NOT NULL DEFAULT 'revoke';
";

/// Version 2 → 3: entry records move out of this file into day partitions
/// (`store/entries/YYYY-MM-DD.db`, see `history`), in a compact encoding. Moving them takes
/// Rust (each JSON verdict is re-encoded), so `migrate` runs the move just before this SQL,
/// which only drops what was moved.
const V3: &str = "
DROP VIEW signins;
DROP TABLE entries;
";

/// Version 3 → 4: how staff resolved escalations (see `store::escalations`), one row per
/// escalated `(gate, seq)`, written once.
const V4: &str = "
CREATE TABLE resolutions (
    gate         INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    subject      INTEGER,
    market       INTEGER NOT NULL,
    escalated_at INTEGER NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('admitted', 'turned_away')),
    resolved_by  TEXT NOT NULL,
    note         TEXT NOT NULL,
    resolved_at  INTEGER NOT NULL,
    PRIMARY KEY (gate, seq)
) WITHOUT ROWID;
CREATE INDEX resolutions_market ON resolutions (market, escalated_at);
CREATE INDEX resolutions_subject ON resolutions (subject, escalated_at);
";

pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// What a connection is for; each role gets its own pragmas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Registry and template writes, migrations.
    Writer,
    /// Entry records (group commit) in a history partition. It never checkpoints: the
    /// maintenance thread does, so that no commit waits for a checkpoint.
    EntryWriter,
    /// The maintenance thread's connection to a partition: checkpoints, schema checks.
    Checkpointer,
    /// Bulk loading of past entries (the history generator, the v2 migration): no fsync per
    /// transaction (`synchronous = NORMAL`); the loader syncs each day when it leaves it.
    BulkLoader,
    /// Queries only.
    Reader,
    /// Queries of one day partition: a small page cache, since a long history has hundreds of
    /// them open (the operating system caches the files anyway).
    PartitionReader,
}

/// Cheap checks on the raw file before SQLite sees it: the header magic, and truncation.
///
/// SQLite itself notices a truncated file only when it reaches a missing page, possibly long
/// after start-up; the header's page count lets us refuse it at once. The count is trusted only
/// when SQLite marks it valid, and only when no write-ahead log is pending (a crash during a
/// checkpoint may leave the file short, and replaying the log repairs it).
pub(crate) fn check_file(db: &Path) -> Result<(), StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: db.to_owned(),
        detail,
    };
    let io = |source| StoreError::Io {
        path: db.to_owned(),
        source,
    };
    let mut file = match fs::File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(()); // a new, empty database
    }
    let mut header = [0u8; 100];
    if len < header.len() as u64 {
        return Err(corrupt(format!(
            "the file is {len} bytes, shorter than the 100-byte SQLite header"
        )));
    }
    file.read_exact(&mut header).map_err(io)?;
    if &header[..16] != b"SQLite format 3\0" {
        return Err(corrupt("not a SQLite database (wrong header)".to_owned()));
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    let pages = u64::from(be32(28));
    let size_valid = pages > 0 && be32(24) == be32(92);
    let expected = pages * page_size;
    if size_valid && len < expected && !wal_pending(db) {
        return Err(corrupt(format!(
            "truncated: its header says {pages} pages of {page_size} bytes ({expected} bytes) \
             but the file has {len} bytes"
        )));
    }
    Ok(())
}

fn wal_pending(db: &Path) -> bool {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    fs::metadata(Path::new(&name)).is_ok_and(|m| m.len() > 0)
}

/// Opens a connection with the pragmas of `role`.
pub(crate) fn open_connection(db: &Path, role: Role) -> Result<Connection, StoreError> {
    let err = |op| move |e| StoreError::from_sqlite(db, op, e);
    // Readers never create: a reader of a day partition deleted by retention meanwhile must
    // fail, not leave an empty file behind.
    let create = if matches!(role, Role::Reader | Role::PartitionReader) {
        OpenFlags::empty()
    } else {
        OpenFlags::SQLITE_OPEN_CREATE
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | create | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(err("opening the database"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(err("setting the busy timeout"))?;
    conn.set_prepared_statement_cache_capacity(32);
    if matches!(
        role,
        Role::Writer | Role::EntryWriter | Role::BulkLoader | Role::Checkpointer
    ) {
        // The journal mode is stored in the file; setting it once, from the first connection,
        // is enough. It is also the first statement that reads the file, so a file SQLite
        // cannot read fails here.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err("switching to WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                path: db.to_owned(),
                detail: format!("cannot switch the journal to WAL (it stays {mode:?})"),
            });
        }
    }
    // synchronous is per connection: FULL makes every commit durable before it returns.
    // The entry writer gets a 64 MiB page cache (SQLite's default is 2 MiB): each record lands
    // at a random place in the (gate, seq) and subject indexes; a day's partition of 150,000
    // entries keeps all of its index pages in that. It never checkpoints (wal_autocheckpoint
    // = 0): the maintenance thread does, from its own connection, so no commit pays for one.
    // journal_size_limit: a restarted log keeps up to 64 MiB of its file, so that commits
    // overwrite it rather than grow the file again (an fsync that allocates costs more).
    let pragmas = match role {
        // secure_delete: the registry holds personal data, and a deleted or replaced row
        // (a credential, a clear QR token being hashed) must not linger in free pages.
        Role::Writer => {
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;"
        }
        Role::EntryWriter => {
            "PRAGMA synchronous = FULL; PRAGMA cache_size = -65536; \
             PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;"
        }
        Role::Checkpointer => "PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864;",
        // NORMAL, not OFF: in WAL mode it syncs at checkpoints, so a crash mid-load loses the
        // last transactions but never damages the file.
        Role::BulkLoader => {
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536; \
             PRAGMA journal_size_limit = 67108864;"
        }
        Role::Reader => "PRAGMA query_only = ON;",
        Role::PartitionReader => "PRAGMA query_only = ON; PRAGMA cache_size = -256;",
    };
    conn.execute_batch(pragmas)
        .map_err(err("setting connection pragmas"))?;
    if role == Role::EntryWriter {
        // The last connection to close checkpoints by default; the entry writer must never
        // checkpoint, even when it leaves a day.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(err("setting connection options"))?;
    }
    Ok(conn)
}

/// Brings the schema up to [`SCHEMA_VERSION`], or refuses a store it cannot understand.
/// `before(to)` runs before the migration to version `to`, outside its transaction: the
/// steps SQL cannot do (moving entries into partitions before version 3 drops them).
pub(super) fn migrate(
    conn: &Connection,
    db: &Path,
    mut before: impl FnMut(u32) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let err = |op| move |e| StoreError::from_sqlite(db, op, e);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err("reading the schema version"))?;
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(err("reading the application id"))?;
    let version = u32::try_from(version).map_err(|_| StoreError::Corrupt {
        path: db.to_owned(),
        detail: format!("schema version {version} is not a version gatewarden ever wrote"),
    })?;
    check_identity(conn, db, version, app_id)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Incompatible {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = from + 1;
        before(to as u32)?;
        // A migration must not half-apply: it runs in one transaction with its version bump.
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
            .map_err(err("starting a migration"))?;
        tx.execute_batch(sql).map_err(err("migrating the schema"))?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(err("marking the store"))?;
        tx.pragma_update(None, "user_version", to as i64)
            .map_err(err("recording the schema version"))?;
        tx.commit().map_err(err("committing a migration"))?;
    }
    Ok(())
}

/// Refuses SQLite files that some other program made.
fn check_identity(
    conn: &Connection,
    db: &Path,
    version: u32,
    app_id: i32,
) -> Result<(), StoreError> {
    let foreign = |detail: String| StoreError::Corrupt {
        path: db.to_owned(),
        detail,
    };
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(foreign(format!(
            "a SQLite database of another program (application id {app_id:#x})"
        )));
    }
    if app_id == 0 && version == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(|e| StoreError::from_sqlite(db, "reading the schema", e))?;
        if tables > 0 {
            return Err(foreign(format!(
                "a SQLite database with {tables} schema objects but no gatewarden mark"
            )));
        }
    }
    Ok(())
}

/// Read connections, reused across calls. A caller takes one for the length of a query and
/// it returns to the pool when dropped, so concurrent queries never share a connection.
pub(crate) struct ReadPool {
    db: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    role: Role,
}

impl ReadPool {
    pub(super) fn new(db: PathBuf) -> Self {
        Self {
            db,
            idle: Mutex::new(Vec::new()),
            max_idle: MAX_IDLE_READERS,
            role: Role::Reader,
        }
    }

    /// The pool of a day partition: at most one idle connection, with a small cache (there may
    /// be hundreds of partitions, and each connection holds file descriptors).
    pub(crate) fn for_partition(db: PathBuf) -> Self {
        Self {
            db,
            idle: Mutex::new(Vec::new()),
            max_idle: 1,
            role: Role::PartitionReader,
        }
    }

    /// A read connection: an idle one, or a new one.
    pub(crate) fn get(&self) -> Result<PooledReader<'_>, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(c) => c,
            None => open_connection(&self.db, self.role)?,
        };
        Ok(PooledReader {
            pool: self,
            conn: Some(conn),
        })
    }
}

/// A read connection borrowed from the pool.
pub(crate) struct PooledReader<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Deref for PooledReader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        // `conn` is Some from construction until `drop` takes it.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("reader used after drop"))
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if idle.len() < self.pool.max_idle {
                idle.push(conn);
            }
        }
    }
}

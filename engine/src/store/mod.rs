//! The store: the engine's durable state, in SQLite files (the default) or in PostgreSQL,
//! plus the in-memory registry cache.
//!
//! [`Store`] is the seam between the engine and its two backends; why it is an enum over them
//! rather than a trait object is written down in `seam`. Both backends keep the same logical
//! schema (subjects, credentials, templates, health, gates, the revocation audit trail,
//! entries keyed by `(gate, seq)`, resolutions of escalations), each with its own versioned
//! migrations, and both serve the per-event registry reads from the same in-memory cache.
//!
//! # SQLite (embedded, one machine)
//!
//! ```text
//! DATA/store/gatewarden.db (+ -wal, -shm)   the registry: SQLite, WAL, synchronous=FULL
//! DATA/store/entries/YYYY-MM-DD.db          entry records, one file per UTC day (`history`)
//! DATA/store/credential.key                 32 random bytes: the key of the credential hashes
//!                                           (`engine.credential_key` can put it elsewhere)
//! ```
//!
//! What lives here: the registry (subjects, their credentials, health records, gates), face
//! templates (the truth from which the gallery is derived), the revocation audit trail, and
//! every entry record (each verdict with its checks, keyed by `(gate, seq)`) in day partitions.
//! The schema and its versioned migrations are in `schema`; a store written by a newer
//! gatewarden, or a file that is not a gatewarden store, is refused at [`Store::open`] with a
//! message that says what to do.
//!
//! Modules: `schema` (migrations, connections), `registry`, `templates`, `cache`, `key`
//! (credential hashing), `entries` (record types, reading records back), `queries`
//! (trajectories, frequency, sign-ins, contacts), `history` (partitions, the compact record,
//! the entry writer, checkpoints, retention), [`import`] (CSV and JSON files).
//!
//! Connections:
//! - one registry writer (a `Mutex<Connection>`) for subjects, health, gates and templates;
//!   every write goes to SQLite first and then to the cache (write-through);
//! - one [`EntryWriter`] per caller (the pipeline's commit thread), which commits entry records
//!   in groups: one transaction, one fsync, per batch, into today's partition only; it never
//!   checkpoints (the maintenance thread does, see [`Store::checkpoint_entries`]);
//! - small pools of read connections for queries, per file; WAL lets them read while the
//!   writers write.
//!
//! The hot data the pipeline reads per event (subjects, credentials, health, gates) is served
//! from `dashmap` caches loaded at open, so deciding an event never touches SQLite.
//!
//! Personal data: ID-card numbers and staff QR tokens are stored only as keyed HMAC-SHA256
//! hashes (the key is `credential.key`, never in the database), so a copy of the database
//! alone does not reveal them. Files are created owner-only (0600, directory 0700).
//!
//! # PostgreSQL (`store = "postgres://..."`, several nodes)
//!
//! The same tables in one database, entries in a table partitioned by UTC day (declarative
//! partitioning; partitions are made two days ahead by the maintenance thread, and retention
//! drops whole partitions), `(gate, seq)` unique across days, and one transaction per pipeline
//! batch with `synchronous_commit = on`. See `pg` for the layout and the client choice.

mod cache;
mod codes;
mod entries;
mod escalations;
mod fsutil;
mod history;
pub mod import;
mod key;
#[cfg(feature = "postgres")]
mod pg;
mod queries;
mod registry;
mod schema;
mod seam;
mod templates;

#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gatewarden_protocol::{GateId, SubjectId};
use rusqlite::Connection;

pub use entries::{
    CommitOutcome, EntryRecord, EntryRow, EventFingerprint, ModeKind, RecordedEntry,
};
pub(crate) use entries::{Passage, PassageMark, PassageMarks};
pub use history::ENTRIES_DIR;
pub use history::archive::{ArchivedEntry, EntryArchive};
pub(crate) use history::partition::Day;
pub use history::upkeep::{
    CheckpointReport, Checkpointer, HistoryCounters, HistoryStats, PartitionStats, PrunedPartition,
    history_stats_in,
};
pub use history::writer::CommitError;
use history::writer::SqliteEntryWriter;
#[cfg(feature = "postgres")]
pub(crate) use pg::ChangeFeed;
#[cfg(feature = "postgres")]
pub(crate) use pg::lease::{Held, LeaseFence, LeaseRow, LeaseTable};
pub use seam::{EntryWriter, Store, StoreLocation};

pub use escalations::{Escalation, EscalationState, Resolution, ResolvedAs};
#[cfg(any(test, feature = "testing"))]
pub(crate) use history::record::decode_for_fuzzing as decode_record_for_fuzzing;
pub use queries::{ContactRow, FrequencyRow, SignInRow};

use cache::Cache;
use history::History;
use key::CredentialKey;
use schema::ReadPool;

/// How far a node follows the registry writes of other nodes (PostgreSQL store): the change
/// log's id it has applied up to, and what it has done since start-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RegistryFollowCounters {
    /// The highest change applied (at start: the one the registry was loaded at).
    pub watermark: u64,
    /// Changes applied since start-up (this node's own included).
    pub applied: u64,
    /// Age of the last change applied when it was read, by the database's clock (ms).
    pub lag_ms: u64,
    /// Reads of the change log.
    pub polls: u64,
    /// Change notifications received.
    pub notifications: u64,
    /// Connections made by the follower (1 plus its reconnections).
    pub connects: u64,
}

/// File name of the SQLite database inside the store directory.
pub const DB_FILE: &str = "gatewarden.db";
/// File name of the credential-hash key inside the store directory.
pub const KEY_FILE: &str = "credential.key";

/// The SQLite backend: the engine's durable state in SQLite files, and its registry cache.
pub(crate) struct SqliteStore {
    dir: PathBuf,
    db_path: PathBuf,
    key: CredentialKey,
    writer: Mutex<Connection>,
    readers: ReadPool,
    cache: Cache,
    history: Arc<History>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("dir", &self.dir)
            .field("subjects", &self.cache.subjects.len())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store in `dir` (normally `DATA/store`), creating it if it does not exist.
    ///
    /// Creates the directory (0700) and files (0600), switches the database to WAL with
    /// `synchronous=FULL`, applies any pending schema migrations, loads or creates the
    /// credential key, and loads the registry cache.
    ///
    /// # Errors
    /// - [`StoreError::Incompatible`] if a newer gatewarden wrote the store;
    /// - [`StoreError::Corrupt`] if the database is not a gatewarden SQLite store, is
    ///   truncated, or fails while its registry is read;
    /// - [`StoreError::KeyMissing`] / [`StoreError::KeyMismatch`] if the credential key is not
    ///   the one the stored ID-card hashes were made with;
    /// - [`StoreError::Io`] / [`StoreError::Sqlite`] for file-system and SQLite failures.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_key(dir, &dir.join(KEY_FILE))
    }

    /// [`Store::open`] with the credential key at `key_path` instead of `dir/credential.key`,
    /// so that the key can live apart from the store (another disk, another backup).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub(crate) fn open_with_key(dir: &Path, key_path: &Path) -> Result<Self, StoreError> {
        fsutil::create_private_dir(dir)?;
        let db_path = dir.join(DB_FILE);
        schema::check_file(&db_path)?;
        fsutil::ensure_private_file(&db_path)?;
        let mut writer = schema::open_connection(&db_path, schema::Role::Writer)?;
        let history = Arc::new(History::open(&dir.join(ENTRIES_DIR))?);
        let mut moved = 0;
        schema::migrate(&writer, &db_path, |to| {
            if to == 3 {
                moved = history::legacy::move_entries(&writer, &db_path, &history)?;
            }
            Ok(())
        })?;
        if moved > 0 {
            tracing::info!(entries = moved, "entry records moved into day partitions");
            // The old entries table's pages are free now; give them back to the file system.
            // The move is committed: a failure here costs disk space, not the start.
            if let Err(e) = writer.execute_batch("VACUUM") {
                tracing::warn!(error = %e, "cannot compact the store after the move; will use more disk");
            }
        }
        let key = key::load_or_create(&writer, &db_path, key_path, !history.is_empty())?;
        let hashed = key::hash_clear_qr_tokens(&mut writer, &db_path, &key)?;
        if hashed > 0 {
            tracing::info!(
                tokens = hashed,
                "staff QR tokens stored in clear replaced by keyed hashes"
            );
        }
        let cache = Cache::load(&writer, &db_path)?;
        // SQLite created -wal and -shm with the database's mode; make sure of it anyway, since
        // a database file copied in from elsewhere may have been more permissive.
        fsutil::tighten_sidecars(&db_path)?;
        Ok(Self {
            dir: dir.to_owned(),
            readers: ReadPool::new(db_path.clone()),
            db_path,
            key,
            writer: Mutex::new(writer),
            cache,
            history,
        })
    }

    /// The store directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs SQLite's `quick_check` over the whole database: O(size), so not done at open.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the first problem SQLite found.
    pub(crate) fn verify(&self) -> Result<(), StoreError> {
        let conn = self.readers.get()?;
        let result: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| self.sql_err("checking the database", e))?;
        if result == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                path: self.db_path.clone(),
                detail: result,
            })
        }
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped any open transaction, which rolls it back, so
        // the connection itself is consistent and can be used again.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sql_err(&self, op: &'static str, e: rusqlite::Error) -> StoreError {
        StoreError::from_sqlite(&self.db_path, op, e)
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.db_path.clone(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
impl SqliteStore {
    /// Runs `sql` on a read connection; every value as text (`NULL` for null).
    pub(crate) fn test_query(&self, sql: &str) -> Vec<Vec<String>> {
        use rusqlite::types::Value;
        let conn = self.readers.get().unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get::<_, Value>(i)? {
                        Value::Integer(v) => v.to_string(),
                        Value::Real(v) => v.to_string(),
                        Value::Text(t) => t,
                        Value::Null => "NULL".to_owned(),
                        Value::Blob(b) => format!("{b:?}"),
                    })
                })
                .collect()
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file or directory could not be created, read or written.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The database is damaged, truncated, or not a gatewarden store.
    #[error(
        "store {} is corrupt or not a gatewarden store: {detail}; restore it from a backup, or \
         move it aside to start with an empty store",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// A newer gatewarden wrote this store.
    #[error(
        "store schema version {found} is newer than this gatewarden supports ({supported}); run \
         the newer gatewarden, or point --data at a store made by this version"
    )]
    Incompatible {
        /// The store's schema version.
        found: u32,
        /// The newest schema version this build knows.
        supported: u32,
    },
    /// The store holds ID-card hashes but their key file is gone.
    #[error(
        "credential key {} is missing but the store holds ID-card hashes made with it; restore \
         the key file from a backup (a new key cannot match the stored hashes)",
        path.display()
    )]
    KeyMissing {
        /// Where the key file should be.
        path: PathBuf,
    },
    /// The key file is not the one the stored ID-card hashes were made with.
    #[error(
        "credential key {} is not the key this store's ID-card hashes were made with; restore \
         the matching key file",
        path.display()
    )]
    KeyMismatch {
        /// The key file.
        path: PathBuf,
    },
    /// A write names a subject the registry does not have.
    #[error("unknown subject {0}: enroll the subject first")]
    UnknownSubject(SubjectId),
    /// A credential in a subject record already belongs to another subject.
    #[error(
        "the {kind} of subject {subject} already belongs to subject {holder}; fix or revoke one \
         of the two records"
    )]
    CredentialTaken {
        /// `ID card` or `staff QR token`.
        kind: &'static str,
        /// The subject being written.
        subject: SubjectId,
        /// The subject holding the credential.
        holder: SubjectId,
    },
    /// A subject write would lift a revocation or a blocklisting. Only an explicit, audited
    /// reinstatement ([`Store::reinstate`]) does that; an import or upload never does.
    #[error(
        "subject {subject} is {} and this record would make it {}; a revocation or \
         blocklisting is lifted only by an explicit reinstatement (gatewarden reinstate, or \
         POST /api/v1/subjects/{subject}/reinstate), never by an import: send the record with \
         status \"{}\" or leave it out; nothing was written",
        from.name(),
        to.name(),
        from.name()
    )]
    StatusLift {
        /// The subject.
        subject: SubjectId,
        /// Its stored status.
        from: gatewarden_protocol::SubjectStatus,
        /// The status the write asked for.
        to: gatewarden_protocol::SubjectStatus,
    },
    /// A value is out of range (an empty template or credential, a non-finite number).
    #[error("invalid {what} for subject {subject}: {reason}")]
    Invalid {
        /// Whose record.
        subject: SubjectId,
        /// Which value.
        what: &'static str,
        /// Why (never the value itself when it is personal or biometric data).
        reason: String,
    },
    /// A verdict could not be encoded for its entry record.
    #[error("cannot encode the verdict of gate {gate} seq {seq}: {source}")]
    Encode {
        /// The verdict's gate.
        gate: GateId,
        /// The verdict's sequence number.
        seq: u64,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The `store` setting is neither `sqlite` nor a PostgreSQL URL this build can use.
    #[error("store location {location:?} is not usable: {reason}")]
    BadLocation {
        /// The setting, its password (if any) replaced by `***`.
        location: String,
        /// Why.
        reason: String,
    },
    /// PostgreSQL failed: the server cannot be reached, refused the login, or failed a
    /// statement.
    #[cfg(feature = "postgres")]
    #[error("postgresql failed while {op}: {source}")]
    Postgres {
        /// What the store was doing.
        op: &'static str,
        /// The client's error (it never holds the connection's password).
        #[source]
        source: postgres::Error,
    },
    /// The entry writer's fence refused records: this node no longer holds the lease of
    /// their markets at the epoch it decided them under (another node took the markets), so
    /// they were not recorded and their verdicts must not be released. The gates retry with
    /// the same seq, and are sent to the markets' new node.
    #[error(
        "this node no longer holds the lease of market(s) {markets:?}; their entries were not \
         recorded (the gates retry at the markets' new node)"
    )]
    LeaseLost {
        /// The markets whose records were refused.
        markets: Vec<gatewarden_protocol::MarketId>,
    },
    /// The operation exists on the SQLite store only (for now).
    #[error("{what} is not supported on the PostgreSQL store")]
    Unsupported {
        /// The operation.
        what: &'static str,
    },
    /// SQLite failed (busy past the timeout, disk full, I/O error).
    #[error("sqlite failed while {op}: {source}")]
    Sqlite {
        /// What the store was doing.
        op: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// True when the request that caused this error can never succeed as it stands (an
    /// unknown subject, a credential held by someone else, a revocation it would lift, a value
    /// out of range); false when the store itself failed and the same request may succeed
    /// later.
    pub fn is_request_fault(&self) -> bool {
        matches!(
            self,
            Self::UnknownSubject(_)
                | Self::CredentialTaken { .. }
                | Self::StatusLift { .. }
                | Self::Invalid { .. }
        )
    }

    /// Classifies a SQLite error: damage becomes [`StoreError::Corrupt`], the rest `Sqlite`.
    fn from_sqlite(path: &Path, op: &'static str, e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                Self::Corrupt {
                    path: path.to_owned(),
                    detail: format!("{e} (while {op})"),
                }
            }
            _ => Self::Sqlite { op, source: e },
        }
    }
}

/// SQLite integers are signed 64-bit; ids and sequence numbers are stored by bit pattern, so
/// every `u64` round-trips exactly (values above `i64::MAX` read back as themselves).
fn to_sql_u64(v: u64) -> i64 {
    v as i64
}

/// The inverse of [`to_sql_u64`].
fn from_sql_u64(v: i64) -> u64 {
    v as u64
}

/// A time bound for SQL comparisons: times past `i64::MAX` ms clamp (no real time is there).
fn sql_time(t: gatewarden_protocol::UnixMillis) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

//! The store seam: one [`Store`] type over two backends, SQLite (the embedded default) and
//! PostgreSQL (several nodes on one database).
//!
//! # Why an enum, not a trait object
//!
//! What the engine calls on its store is a fixed, closed set: the registry reads (served from
//! the in-memory cache on both backends), the registry writes, templates, the entry writer of
//! the pipeline's commit thread, the `(gate, seq)` look-ups of exactly-once, the manager
//! queries, escalations and retention. There are two backends, both in this crate, and no
//! third party adds one. So the seam is a private `enum Backend` inside `Store`, and each
//! public method is a `match` that forwards to the backend's method of the same name:
//!
//! - the SQLite path is the code that was there, untouched except for the name of its type
//!   (`SqliteStore`, `SqliteEntryWriter`); its group commit, its fsync discipline and its
//!   checkpoints are exactly as before;
//! - a match on a two-variant enum costs nothing measurable beside one commit (one fsync):
//!   no `Box<dyn>`, no vtable, and the generic callbacks (`for_each_entry_since`,
//!   `for_each_template_since`) stay generic, which a trait object could not offer;
//! - every caller keeps `Arc<Store>` and `EntryWriter` as concrete types: the engine, the
//!   pipeline, the server, the HTTP API, the CLI and the load generator did not change.
//!
//! A trait would be the better seam if backends were to be added outside the crate; nothing
//! asks for that.
//!
//! The PostgreSQL backend is behind the `postgres` cargo feature, so the library built without
//! default features links no PostgreSQL client (and no async runtime).

use std::path::Path;

use gatewarden_protocol::{
    Credential, GateId, HealthRecord, MarketId, SubjectId, SubjectRecord, SubjectStatus,
    UnixMillis, UpdateHealthAck, Verdict,
};

use super::{
    CheckpointReport, Checkpointer, CommitError, CommitOutcome, ContactRow, Day, EntryRecord,
    EntryRow, Escalation, EscalationState, EventFingerprint, FrequencyRow, HistoryCounters,
    HistoryStats, Passage, PassageMark, PassageMarks, PrunedPartition, RecordedEntry,
    RegistryFollowCounters, Resolution, SignInRow, SqliteEntryWriter, SqliteStore, StoreError,
};
use crate::model::GateInfo;

#[cfg(feature = "postgres")]
use super::pg::{AppliedChanges, ChangeFeed, PgEntryWriter, PgStore};

/// Where the store lives: the `store` key of `gatewarden.toml`, or `--store`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
#[non_exhaustive]
pub enum StoreLocation {
    /// SQLite files in the data folder's `store/` (the default).
    Sqlite,
    /// A PostgreSQL database, by its connection URL (`postgres://...` or `postgresql://...`).
    Postgres(String),
}

impl StoreLocation {
    /// Parses the `store` setting: `"sqlite"`, or a `postgres://` / `postgresql://` URL.
    ///
    /// # Errors
    /// [`StoreError::BadLocation`] for anything else, and for a PostgreSQL URL when this
    /// gatewarden was built without the `postgres` feature.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadLocation {
            location: redact_url(text),
            reason: reason.to_owned(),
        };
        if text == "sqlite" {
            return Ok(Self::Sqlite);
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            if !cfg!(feature = "postgres") {
                return Err(bad(
                    "this gatewarden was built without PostgreSQL support (cargo feature \
                     \"postgres\")",
                ));
            }
            return Ok(Self::Postgres(text.to_owned()));
        }
        Err(bad(
            "expected \"sqlite\" or a URL starting with postgres:// or postgresql://",
        ))
    }
}

impl TryFrom<String> for StoreLocation {
    type Error = StoreError;

    fn try_from(text: String) -> Result<Self, StoreError> {
        Self::parse(&text)
    }
}

impl std::fmt::Debug for StoreLocation {
    // The URL may hold a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite => f.write_str("Sqlite"),
            Self::Postgres(url) => write!(f, "Postgres({})", redact_url(url)),
        }
    }
}

/// A connection URL with its password (if any: `user:password@`, or `password=` among the
/// parameters) replaced by `***`, for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((auth, host)) = rest.rsplit_once('@')
        && let Some((user, _)) = auth.split_once(':')
    {
        out = format!("{scheme}://{user}:***@{host}");
    }
    if let Some(at) = out.find("password=") {
        let start = at + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
    }
    out
}

// One `Store` per engine, behind an `Arc`: the variants' sizes do not matter, and a box would
// add a pointer chase to every call of the SQLite path.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Sqlite(SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(PgStore),
}

/// Forwards a call to the backend's method of the same name.
macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match &$self.backend {
            Backend::Sqlite($b) => $e,
            #[cfg(feature = "postgres")]
            Backend::Postgres($b) => $e,
        }
    };
}

/// The engine's durable state and its registry cache. `Send + Sync`; share it in an `Arc`.
///
/// Backed by SQLite files ([`Store::open`]) or a PostgreSQL database
/// ([`Store::open_location`] with [`StoreLocation::Postgres`]); see the module docs of
/// [`store`](crate::store) for both layouts.
pub struct Store {
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        dispatch!(self, b => std::fmt::Debug::fmt(b, f))
    }
}

impl Store {
    /// Opens the SQLite store in `dir` (normally `DATA/store`), creating it if it does not
    /// exist.
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
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        SqliteStore::open(dir).map(Self::sqlite)
    }

    /// [`Store::open`] with the credential key at `key_path` instead of `dir/credential.key`,
    /// so that the key can live apart from the store (another disk, another backup).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_with_key(dir: &Path, key_path: &Path) -> Result<Self, StoreError> {
        SqliteStore::open_with_key(dir, key_path).map(Self::sqlite)
    }

    /// Opens the store at `location`. `dir` is the local store folder (SQLite's files; with
    /// PostgreSQL only the default place of the credential key), `key_path` the credential
    /// key. With PostgreSQL, every node of a site must use the same key file.
    ///
    /// # Errors
    /// As [`Store::open`]; for PostgreSQL also [`StoreError::Postgres`] (an unreachable
    /// server, a refused login) and [`StoreError::Incompatible`] for a schema written by a
    /// newer gatewarden.
    pub fn open_location(
        location: &StoreLocation,
        dir: &Path,
        key_path: &Path,
    ) -> Result<Self, StoreError> {
        match location {
            StoreLocation::Sqlite => Self::open_with_key(dir, key_path),
            #[cfg(feature = "postgres")]
            StoreLocation::Postgres(url) => Ok(Self {
                backend: Backend::Postgres(PgStore::open(url, dir, key_path)?),
            }),
            #[cfg(not(feature = "postgres"))]
            StoreLocation::Postgres(url) => Err(StoreError::BadLocation {
                location: redact_url(url),
                reason: "this gatewarden was built without PostgreSQL support".to_owned(),
            }),
        }
    }

    fn sqlite(store: SqliteStore) -> Self {
        Self {
            backend: Backend::Sqlite(store),
        }
    }

    /// Which backend this is: `"sqlite"` or `"postgres"` (for logs and statistics).
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The local store directory (SQLite's files; the credential key's default place).
    pub fn dir(&self) -> &Path {
        dispatch!(self, b => b.dir())
    }

    /// Checks the store's integrity: SQLite's `quick_check` over the whole database (O(size),
    /// so not done at open); on PostgreSQL, that the schema is the one this build writes.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] naming the first problem found.
    pub fn verify(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.verify())
    }

    /// The registry cache and credential key of either backend: the cache reads below are the
    /// same code for both, and never touch the database.
    fn cache_and_key(&self) -> (&super::cache::Cache, &super::key::CredentialKey) {
        dispatch!(self, b => (&b.cache, &b.key))
    }

    fn cache(&self) -> &super::cache::Cache {
        self.cache_and_key().0
    }

    /// A subject's record, from the cache. The cached copy has `id_card = None` and no
    /// `qr_tokens` (both are kept only as keyed hashes), so do not write it back through
    /// [`Store::upsert_subjects`]: that replaces the whole record and would drop them.
    pub fn subject(&self, id: SubjectId) -> Option<std::sync::Arc<SubjectRecord>> {
        self.cache().subject(id)
    }

    /// The subject a credential belongs to: the credential is hashed with the store's key and
    /// looked up by hash.
    pub fn resolve_credential(&self, credential: &Credential) -> Option<SubjectId> {
        let (cache, key) = self.cache_and_key();
        cache.resolve_credential(key, credential)
    }

    /// A subject's latest health record, from the cache.
    pub fn health(&self, id: SubjectId) -> Option<HealthRecord> {
        self.cache().health(id)
    }

    /// A gate of the registry, from the cache.
    pub fn gate(&self, id: GateId) -> Option<GateInfo> {
        self.cache().gate(id)
    }

    /// Every gate, ordered by id.
    pub fn gates(&self) -> Vec<GateInfo> {
        self.cache().gates()
    }

    /// The staff of a market: subjects of a staff category (service worker, manager, staff,
    /// merchant) whose home market it is, ordered by id, whatever their status or validity.
    pub fn market_staff(&self, market: MarketId) -> Vec<std::sync::Arc<SubjectRecord>> {
        self.cache().market_staff(market)
    }

    /// Every subject id, ascending. A scan of the cache, for tools, not for the per-event
    /// path.
    pub fn subject_ids(&self) -> Vec<SubjectId> {
        self.cache().subject_ids()
    }

    /// How many subjects the registry holds.
    pub fn subject_count(&self) -> usize {
        self.cache().subjects.len()
    }

    /// Inserts or replaces subject records, in one transaction. Each record replaces the
    /// stored one entirely, credentials included. Returns the number of records written.
    ///
    /// # Errors
    /// [`StoreError::CredentialTaken`] if a card or token belongs to another subject,
    /// [`StoreError::Invalid`] for an empty card or token, [`StoreError::StatusLift`] for a
    /// record that would lift a revocation or blocklisting; nothing is written then.
    pub fn upsert_subjects(&self, records: &[SubjectRecord]) -> Result<usize, StoreError> {
        dispatch!(self, b => b.upsert_subjects(records))
    }

    /// Applies health records in one transaction. Idempotent: a record older than the stored
    /// one (by `updated_at`) is ignored. Records of unknown subjects are counted in
    /// `unknown_subjects` and not applied.
    ///
    /// # Errors
    /// Database failures; nothing is applied then.
    pub fn upsert_health(&self, records: &[HealthRecord]) -> Result<UpdateHealthAck, StoreError> {
        dispatch!(self, b => b.upsert_health(records))
    }

    /// The first record that would lift a revocation or blocklisting, if any: its index, and
    /// the error [`upsert_subjects`](Self::upsert_subjects) refuses it with.
    pub fn find_status_lift(&self, records: &[SubjectRecord]) -> Option<(usize, StoreError)> {
        dispatch!(self, b => b.find_status_lift(records))
    }

    /// Lifts a revocation or blocklisting, with an audit record. Returns the status the
    /// subject had, or `None` if it is unknown.
    ///
    /// # Errors
    /// Database failures; nothing is changed then.
    pub fn reinstate(
        &self,
        id: SubjectId,
        reason: &str,
        now: UnixMillis,
    ) -> Result<Option<SubjectStatus>, StoreError> {
        dispatch!(self, b => b.reinstate(id, reason, now))
    }

    /// Revokes a subject everywhere and records why in the audit trail. Returns false if the
    /// subject is unknown.
    ///
    /// # Errors
    /// Database failures; nothing is changed then.
    pub fn revoke(&self, id: SubjectId, reason: &str, now: UnixMillis) -> Result<bool, StoreError> {
        dispatch!(self, b => b.revoke(id, reason, now))
    }

    /// Inserts or replaces gates, in one transaction. Returns the number written.
    ///
    /// # Errors
    /// Database failures; nothing is written then.
    pub fn upsert_gates(&self, gates: &[GateInfo]) -> Result<usize, StoreError> {
        dispatch!(self, b => b.upsert_gates(gates))
    }

    /// Adds templates `(subject, model, embedding)` in one transaction and returns their new
    /// ids, ascending.
    ///
    /// # Errors
    /// [`StoreError::UnknownSubject`] for a subject not in the registry, and
    /// [`StoreError::Invalid`] for an empty model or embedding or a non-finite value; nothing
    /// is added then.
    pub fn add_templates(
        &self,
        rows: &[(SubjectId, &str, &[f32])],
    ) -> Result<Vec<u64>, StoreError> {
        dispatch!(self, b => b.add_templates(rows))
    }

    /// Calls `f(id, subject, embedding)` for every template with `id > watermark`, in
    /// ascending id order, and returns how many it visited.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a vector whose length is not a whole number of f32.
    pub fn for_each_template_since(
        &self,
        watermark: u64,
        f: impl FnMut(u64, SubjectId, &[f32]),
    ) -> Result<u64, StoreError> {
        dispatch!(self, b => b.for_each_template_since(watermark, f))
    }

    /// How many templates the store holds.
    ///
    /// # Errors
    /// Database failures.
    pub fn template_count(&self) -> Result<u64, StoreError> {
        dispatch!(self, b => b.template_count())
    }

    /// A new entry writer with its own connection(s), for the pipeline's commit thread.
    ///
    /// # Errors
    /// PostgreSQL: the connection could not be made.
    pub fn entry_writer(&self) -> Result<EntryWriter, StoreError> {
        Ok(EntryWriter {
            inner: match &self.backend {
                Backend::Sqlite(b) => Writer::Sqlite(b.entry_writer()?),
                #[cfg(feature = "postgres")]
                Backend::Postgres(b) => Writer::Postgres(b.entry_writer()?),
            },
        })
    }

    /// A writer for loading past entries in bulk (the history generator): its transactions
    /// are not synced one by one, so nothing it writes is durable until
    /// [`EntryWriter::finish`] returns. Never use it for live events. (PostgreSQL: it
    /// connects at its first commit, and fails that commit if it cannot.)
    pub fn bulk_entry_loader(&self) -> EntryWriter {
        EntryWriter {
            inner: match &self.backend {
                Backend::Sqlite(b) => Writer::Sqlite(b.bulk_entry_loader()),
                #[cfg(feature = "postgres")]
                Backend::Postgres(b) => Writer::Postgres(b.bulk_entry_loader()),
            },
        }
    }

    /// The verdict recorded for `(gate, seq)`, marked `replayed`, or `None` if there is none.
    ///
    /// # Errors
    /// Database failures, or [`StoreError::Corrupt`] if the stored verdict does not decode.
    pub fn verdict_for(&self, gate: GateId, seq: u64) -> Result<Option<Verdict>, StoreError> {
        Ok(self.recorded_entry(gate, seq)?.map(|r| r.verdict))
    }

    /// What the entry log holds for `(gate, seq)`, or `None` if nothing is recorded.
    ///
    /// # Errors
    /// Database failures, or [`StoreError::Corrupt`] if the stored record does not decode.
    pub fn recorded_entry(
        &self,
        gate: GateId,
        seq: u64,
    ) -> Result<Option<RecordedEntry>, StoreError> {
        dispatch!(self, b => b.recorded_entry(gate, seq))
    }

    /// The keyed fingerprint of an event's canonical bytes (the pipeline builds the bytes).
    pub fn event_fingerprint(&self, canonical: &[u8]) -> EventFingerprint {
        dispatch!(self, b => b.event_fingerprint(canonical))
    }

    /// The highest recorded `seq` of every gate that has entries. The pipeline loads it at
    /// start-up so that a gate's new events need no replay lookup. (On PostgreSQL, of every
    /// registered gate: events come only from those.)
    ///
    /// # Errors
    /// Database failures.
    pub fn max_seq_per_gate(&self) -> Result<Vec<(GateId, u64)>, StoreError> {
        dispatch!(self, b => b.max_seq_per_gate())
    }

    /// Calls `f` for every entry decided at or after `since`, in decision order, each record
    /// decoded whole (exports and checks; the start-up rebuild of today's counters reads only
    /// the indexed columns, `for_each_passage_since`).
    ///
    /// # Errors
    /// Database failures, or [`StoreError::Corrupt`] for a row gatewarden could not have
    /// written.
    pub fn for_each_entry_since(
        &self,
        since: UnixMillis,
        f: impl FnMut(&EntryRow),
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => b.for_each_entry_since(since, f),
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.for_each_entry_since(since, f),
        }
    }

    /// The market-lease table of the PostgreSQL store, as node `node`, on a connection of
    /// its own.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] on SQLite; [`StoreError::Postgres`] if the connection
    /// cannot be made.
    #[cfg(feature = "postgres")]
    pub(crate) fn lease_table(
        &self,
        node: &str,
    ) -> Result<super::pg::lease::LeaseTable, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(StoreError::Unsupported {
                what: "market leases (they need the PostgreSQL store)",
            }),
            Backend::Postgres(b) => b.lease_table(node),
        }
    }

    /// Fences every later commit of this store's entry writers by the node's leases.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] on SQLite, or for a second fence.
    #[cfg(feature = "postgres")]
    pub(crate) fn fence_commits(
        &self,
        fence: std::sync::Arc<super::pg::lease::LeaseFence>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(StoreError::Unsupported {
                what: "market leases (they need the PostgreSQL store)",
            }),
            Backend::Postgres(b) => b.fence_commits(fence),
        }
    }

    /// Streams the admitted passages of known people decided at or after `since`, day by day
    /// and within a day in the order they were decided (PostgreSQL, [`Passage::query`]) or
    /// recorded (SQLite, [`SqliteStore::for_each_passage_after`]), from the indexed columns
    /// alone (today's counters); only those
    /// of `markets` if given (a takeover's rebuild of the markets it took).
    ///
    /// # Errors
    /// As [`Store::for_each_entry_since`].
    pub(crate) fn for_each_passage_since(
        &self,
        since: UnixMillis,
        markets: Option<&[MarketId]>,
        mut f: impl FnMut(&Passage),
    ) -> Result<(), StoreError> {
        match (&self.backend, markets) {
            (Backend::Sqlite(b), None) => b.for_each_passage_since(since, f),
            // One file per day, no index by market: the day's scan, filtered.
            (Backend::Sqlite(b), Some(markets)) => b.for_each_passage_since(since, |p| {
                if markets.contains(&p.market) {
                    f(p);
                }
            }),
            #[cfg(feature = "postgres")]
            (Backend::Postgres(b), markets) => b.for_each_passage_since(since, markets, f),
        }
    }

    /// Streams the passages decided at or after `since` and recorded after `marks`, and moves
    /// the marks past them ([`SqliteStore::for_each_passage_after`]): what the counters'
    /// snapshot needs to catch up with the entry log without reading it again.
    ///
    /// # Errors
    /// As [`Store::for_each_entry_since`]; [`StoreError::Unsupported`] on PostgreSQL, whose
    /// ids are not committed in order across nodes (see [`Store::supports_passage_marks`]).
    pub(crate) fn for_each_passage_after(
        &self,
        since: UnixMillis,
        marks: &mut PassageMarks,
        f: impl FnMut(&Passage),
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => b.for_each_passage_after(since, marks, f),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Err(StoreError::Unsupported {
                what: "passage marks (entry ids of several nodes are not committed in order)",
            }),
        }
    }

    /// Whether the entry log still holds the row `mark` names in day file `day` (false on
    /// PostgreSQL, which has no marks).
    ///
    /// # Errors
    /// Database failures.
    pub(crate) fn passage_mark_holds(
        &self,
        day: Day,
        mark: &PassageMark,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => b.passage_mark_holds(day, mark),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Ok(false),
        }
    }

    /// Whether [`Store::for_each_passage_after`] works here: on SQLite, where one writer
    /// assigns row ids in commit order. Several PostgreSQL nodes draw ids from one sequence and
    /// commit them out of order, so a mark could skip a row that commits late.
    pub(crate) fn supports_passage_marks(&self) -> bool {
        matches!(self.backend, Backend::Sqlite(_))
    }

    /// A subject's recorded entries decided in `[since, until)`, in time order.
    ///
    /// # Errors
    /// Database failures, or [`StoreError::Corrupt`] for an undecodable row.
    pub fn trajectory(
        &self,
        subject: SubjectId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<EntryRow>, StoreError> {
        dispatch!(self, b => b.trajectory(subject, since, until))
    }

    /// Subjects admitted into `market` (entries, not exits or sign-ins) at least `min` times
    /// in `[since, until)`, most entries first.
    ///
    /// # Errors
    /// Database failures.
    pub fn frequency(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
        min: u32,
    ) -> Result<Vec<FrequencyRow>, StoreError> {
        dispatch!(self, b => b.frequency(market, since, until, min))
    }

    /// The first admitted sign-in of each subject at `market` in `[since, until)`, earliest
    /// first.
    ///
    /// # Errors
    /// Database failures.
    pub fn signins(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<SignInRow>, StoreError> {
        dispatch!(self, b => b.signins(market, since, until))
    }

    /// Everyone admitted at the same market within `window_ms` of one of `subject`'s admitted
    /// passages in `[since, until)`.
    ///
    /// # Errors
    /// Database failures.
    pub fn contacts(
        &self,
        subject: SubjectId,
        window_ms: u64,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<ContactRow>, StoreError> {
        dispatch!(self, b => b.contacts(subject, window_ms, since, until))
    }

    /// The escalations at `market` decided in `[since, until)` in `state`, newest first, at
    /// most `limit`, each with its resolution if there is one.
    ///
    /// # Errors
    /// Database failures, or [`StoreError::Corrupt`] for an undecodable row.
    pub fn escalations(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
        state: EscalationState,
        limit: usize,
    ) -> Result<Vec<Escalation>, StoreError> {
        dispatch!(self, b => b.escalations(market, since, until, state, limit))
    }

    /// Records how staff resolved an escalation. Returns `None` when it is recorded, or the
    /// resolution already on record (which is kept: a resolution is never overwritten).
    ///
    /// # Errors
    /// Database failures; nothing is recorded then.
    pub fn resolve_escalation(&self, r: &Resolution) -> Result<Option<Resolution>, StoreError> {
        dispatch!(self, b => b.resolve_escalation(r))
    }

    /// The resolutions of escalations about `subject` decided in `[since, until)`, in time
    /// order.
    ///
    /// # Errors
    /// Database failures.
    pub fn resolutions_of(
        &self,
        subject: SubjectId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<Resolution>, StoreError> {
        dispatch!(self, b => b.resolutions_of(subject, since, until))
    }

    /// Deletes the entry partitions older than the `entry_days` days ending on `now`'s UTC day
    /// (today included), and the resolutions of the escalations in them.
    ///
    /// # Errors
    /// File-system or database failures; partitions deleted before the failure stay deleted.
    pub fn prune_entries(
        &self,
        now: UnixMillis,
        entry_days: u32,
    ) -> Result<Vec<PrunedPartition>, StoreError> {
        dispatch!(self, b => b.prune_entries(now, entry_days))
    }

    /// One checkpoint pass over the SQLite partitions (the maintenance thread calls it;
    /// nothing on the commit path does). PostgreSQL checkpoints itself; there the pass makes
    /// the day partitions of today and the next two days if they are missing, so that the
    /// commit path never waits for one to be made.
    ///
    /// # Errors
    /// SQLite or PostgreSQL failures; counted, and the next pass tries again.
    pub fn checkpoint_entries(
        &self,
        cp: &mut Checkpointer,
        now: UnixMillis,
    ) -> Result<CheckpointReport, StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => b.checkpoint_entries(cp, now),
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b
                .prepare_partitions(now)
                .map(|()| CheckpointReport::default()),
        }
    }

    /// Entries per partition, bytes per entry, log sizes, oldest and newest day.
    ///
    /// # Errors
    /// A partition that cannot be read.
    pub fn history_stats(&self) -> Result<HistoryStats, StoreError> {
        dispatch!(self, b => b.history_stats())
    }

    /// The history's counters since start-up.
    pub fn history_counters(&self) -> HistoryCounters {
        dispatch!(self, b => b.history_counters())
    }

    /// How far this node follows registry writes made at other nodes (PostgreSQL); `None`
    /// on SQLite, where one node holds the registry.
    pub fn registry_follow_counters(&self) -> Option<RegistryFollowCounters> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => Some(b.follow_counters()),
        }
    }

    /// A connection that follows the registry's change log (see `pg::changes`), `LISTEN`ing
    /// when `listen`; `None` on SQLite, which has nothing to follow.
    ///
    /// # Errors
    /// The database cannot be reached.
    #[cfg(feature = "postgres")]
    pub(crate) fn change_feed(&self, listen: bool) -> Result<Option<ChangeFeed>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(b) => b.change_feed(listen).map(Some),
        }
    }

    /// Applies the registry changes written since the last call (at any node) to the cache;
    /// the templates are the caller's ([`AppliedChanges::templates_after`]).
    ///
    /// # Errors
    /// The database failed; nothing after the last change applied is lost (the next call
    /// reads it again).
    #[cfg(feature = "postgres")]
    pub(crate) fn apply_changes(
        &self,
        feed: &mut ChangeFeed,
    ) -> Result<AppliedChanges, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(AppliedChanges::default()),
            Backend::Postgres(b) => b.apply_changes(feed),
        }
    }

    /// Runs `sql` (written to work on both backends) and returns every value as text.
    #[cfg(test)]
    pub(crate) fn test_query(&self, sql: &str) -> Vec<Vec<String>> {
        dispatch!(self, b => b.test_query(sql))
    }
}

// One writer per commit thread, owned for its life: as for `Backend`.
#[allow(clippy::large_enum_variant)]
enum Writer {
    Sqlite(SqliteEntryWriter),
    #[cfg(feature = "postgres")]
    Postgres(PgEntryWriter),
}

/// The group-commit writer of entry records, for the pipeline's commit thread (one per
/// caller). Owns its connection(s); `Send`, not shared.
pub struct EntryWriter {
    inner: Writer,
}

impl std::fmt::Debug for EntryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Writer::Sqlite(w) => std::fmt::Debug::fmt(w, f),
            #[cfg(feature = "postgres")]
            Writer::Postgres(w) => std::fmt::Debug::fmt(w, f),
        }
    }
}

impl EntryWriter {
    /// Records a batch: one transaction (one durable commit) per UTC day it touches. With the
    /// pipeline's writer, every record is durable when this returns `Ok`. A `(gate, seq)`
    /// already recorded (earlier, or earlier in the same batch) is not inserted and comes back
    /// as [`CommitOutcome::Duplicate`]. Outcomes are in the order of `records`.
    ///
    /// # Errors
    /// Database failures (disk full, I/O error, busy past the timeout, a lost connection);
    /// [`CommitError`] says which records, if any, were recorded all the same.
    pub fn commit(&mut self, records: &[EntryRecord]) -> Result<Vec<CommitOutcome>, CommitError> {
        match &mut self.inner {
            Writer::Sqlite(w) => w.commit(records),
            #[cfg(feature = "postgres")]
            Writer::Postgres(w) => w.commit(records),
        }
    }

    /// Makes everything written so far durable (the bulk loader's last step; harmless for the
    /// pipeline's writer).
    ///
    /// # Errors
    /// Database and file-system failures.
    pub fn finish(&mut self) -> Result<(), StoreError> {
        match &mut self.inner {
            Writer::Sqlite(w) => w.finish(),
            #[cfg(feature = "postgres")]
            Writer::Postgres(w) => w.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_location_parses_and_never_prints_a_password() {
        assert_eq!(
            StoreLocation::parse("sqlite").unwrap(),
            StoreLocation::Sqlite
        );
        let err = StoreLocation::parse("mysql://u:secret@h/db").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("postgres://"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");
        assert_eq!(
            redact_url("postgres://gw:secret@db.example/gw"),
            "postgres://gw:***@db.example/gw"
        );
        assert_eq!(
            redact_url("postgresql:///gw?host=/tmp"),
            "postgresql:///gw?host=/tmp"
        );
        assert_eq!(
            redact_url("postgresql:///gw?password=secret&host=/tmp"),
            "postgresql:///gw?password=***&host=/tmp"
        );
        assert_eq!(
            redact_url("postgres://gw:a@b@db/gw?password=x"),
            "postgres://gw:***@db/gw?password=***"
        );
        if cfg!(feature = "postgres") {
            let loc = StoreLocation::parse("postgres://gw:secret@h/db").unwrap();
            assert!(!format!("{loc:?}").contains("secret"));
        }
    }
}

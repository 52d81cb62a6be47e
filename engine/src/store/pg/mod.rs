//! The PostgreSQL backend of the store (`store = "postgres://..."`).
//!
//! Layout and migrations are in `schema`; the group-commit entry writer is in `writer`; the
//! market-lease table and the commit fence are in `lease`; the registry's change log and its
//! follower's reads in `changes`.
//!
//! # The client crate: `postgres` (rust-postgres, synchronous), without TLS
//!
//! - Every caller of the store is synchronous: the pipeline's commit thread and matcher
//!   workers are plain threads, and the server and the HTTP API call the engine through
//!   `spawn_blocking`. The synchronous `postgres` client fits them as they are. It wraps
//!   `tokio-postgres`, driving each connection on a small runtime of its own, so no tokio
//!   reaches the pipeline's code (and the engine still embeds in any program).
//! - `tokio-postgres` itself would make every store call `async`, all the way up through the
//!   pipeline, for no gain: there is one commit in flight at a time by design (group commit).
//! - `sqlx` brings its macros, its own pool and runtime glue and many more crates; `diesel`
//!   an ORM. Neither is needed for a few dozen hand-written statements.
//! - `NoTls`: the expected deployment is a Unix socket or loopback, or a private network
//!   behind the operator's own TLS tunnel; TLS support would add a second TLS stack
//!   (`postgres-native-tls`/OpenSSL or `tokio-postgres-rustls`). Left for when it is asked for.
//!
//! The whole backend is behind the `postgres` cargo feature.
//!
//! # Connections
//!
//! - one registry writer (`Mutex<Client>`), as with SQLite: writes go to PostgreSQL first,
//!   then to the in-memory cache;
//! - one connection per [`PgEntryWriter`] (the pipeline's commit thread): one statement, so
//!   one transaction and one durable commit (`synchronous_commit = on`), per batch and day;
//! - a small pool of read connections for queries, each read in a `REPEATABLE READ` read-only
//!   transaction so that the record forms it resolves are those of the rows it reads;
//! - one follower connection (`changes`), opened by the engine's follower thread: it
//!   `LISTEN`s for the registry's change notifications and reads the change log, so that
//!   every node's cache and gallery follow the registry writes of every other node.
//!
//! Registry writes take the registry's advisory lock first and record their changes last, in
//! their own transaction (`changes` says why the lock closes the watermark gap).

mod changes;
pub(crate) mod lease;
mod schema;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use gatewarden_protocol::{
    Check, CodeColour, Decision, Direction, GateId, HealthRecord, MarketId, Outcome, SubjectId,
    SubjectRecord, SubjectStatus, TestResult, UnixMillis, UpdateHealthAck, ZoneId,
};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, IsolationLevel, NoTls, Row, Transaction};

pub(crate) use changes::{AppliedChanges, ChangeFeed};
pub(crate) use writer::PgEntryWriter;

use self::changes::{ChangeKind, Rows};
use super::cache::{Cache, CredentialHashes};
use super::codes::Named;
use super::history::record::{self, Form};
use super::history::upkeep::{first_kept_day, summarise};
use super::history::{DAY_MS, day_of};
use super::key::{self, CredentialKey};
use super::registry::{KIND_ID_CARD, KIND_QR, cached_copy, invalid};
use super::seam::redact_url;
use super::templates::check_template;
use super::{
    ContactRow, EntryRow, Escalation, EscalationState, EventFingerprint, FrequencyRow,
    HistoryCounters, HistoryStats, ModeKind, PartitionStats, Passage, PrunedPartition,
    RecordedEntry, Resolution, ResolvedAs, SignInRow, StoreError, from_sql_u64, fsutil, sql_time,
    to_sql_u64,
};
use crate::model::GateInfo;

/// How long opening a connection may take before the store gives up (an unreachable host
/// fails start-up instead of hanging it), unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle read connections kept for reuse.
const MAX_IDLE_READERS: usize = 4;

/// The columns [`decode_entry`] reads, in its order.
const ENTRY_COLUMNS: &str = "gate, seq, market, zone, subject, decision, mode, direction, score, \
                             captured_at, decided_at, body";

const RESOLUTION_COLUMNS: &str =
    "gate, seq, subject, market, escalated_at, outcome, resolved_by, note, resolved_at";

/// How to reach the database, and how to name it in messages.
pub(crate) struct Db {
    config: postgres::Config,
    /// The URL with its password replaced.
    redacted: String,
}

impl Db {
    fn parse(url: &str) -> Result<Self, StoreError> {
        let redacted = redact_url(url);
        let mut config: postgres::Config =
            url.parse()
                .map_err(|e: postgres::Error| StoreError::BadLocation {
                    location: redacted.clone(),
                    reason: e.to_string(),
                })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("gatewarden");
        }
        Ok(Self { config, redacted })
    }

    /// A new connection. `synchronous_commit` is set explicitly: a server configured with it
    /// off would otherwise acknowledge entries that a crash can lose.
    pub(crate) fn connect(&self, synchronous: bool) -> Result<PgClient, StoreError> {
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(pg("connecting to the database"))?;
        client
            .batch_execute(if synchronous {
                "SET synchronous_commit = on"
            } else {
                "SET synchronous_commit = off"
            })
            .map_err(pg("setting up the connection"))?;
        Ok(PgClient(Some(client)))
    }

    /// A new connection named `application` in `pg_stat_activity` (the follower's), with
    /// the store's defaults otherwise.
    pub(crate) fn connect_as(&self, application: &str) -> Result<PgClient, StoreError> {
        let mut config = self.config.clone();
        config.application_name(application);
        let client = config
            .connect(NoTls)
            .map_err(pg("connecting to the database"))?;
        Ok(PgClient(Some(client)))
    }

    pub(crate) fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: PathBuf::from(&self.redacted),
            detail,
        }
    }

    fn pg(&self, op: &'static str) -> impl Fn(postgres::Error) -> StoreError {
        pg(op)
    }
}

/// A connection that may be dropped on any thread. Dropping a `postgres::Client` blocks on
/// its own small runtime to say goodbye to the server, which panics on a thread that drives a
/// tokio runtime (the server drops the engine on one at shutdown, or when start-up fails after
/// the engine opened): so the client is dropped on a short-lived thread of its own.
pub(crate) struct PgClient(Option<Client>);

impl std::ops::Deref for PgClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        // Some until drop: set in `Db::connect`, taken only in `Drop`.
        match &self.0 {
            Some(client) => client,
            None => unreachable!("a PgClient is used after its drop"),
        }
    }
}

impl std::ops::DerefMut for PgClient {
    fn deref_mut(&mut self) -> &mut Client {
        match &mut self.0 {
            Some(client) => client,
            None => unreachable!("a PgClient is used after its drop"),
        }
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            let closing = std::thread::Builder::new()
                .name("gw-pg-close".to_owned())
                .spawn(move || drop(client));
            if let Ok(thread) = closing {
                let _ = thread.join();
            }
        }
    }
}

/// Wraps a client error with what the store was doing.
pub(crate) fn pg(op: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { op, source }
}

/// The decoded record forms (`entry_forms`), shared by every reader. Forms never change once
/// committed, so a form cached here is good for ever.
#[derive(Default)]
struct Forms {
    by_id: RwLock<HashMap<u32, Form>>,
}

impl Forms {
    fn get(&self, id: u32) -> Option<Form> {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Loads every form (they are few: one per distinct check, screen and policy version).
    fn refresh(&self, db: &Db, tx: &mut Transaction<'_>) -> Result<(), StoreError> {
        let rows = tx
            .query("SELECT id, bytes FROM entry_forms", &[])
            .map_err(pg("reading record forms"))?;
        let mut map = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        for row in rows {
            let id: i32 = row.try_get(0).map_err(pg("reading record forms"))?;
            let bytes: Vec<u8> = row.try_get(1).map_err(pg("reading record forms"))?;
            map.insert(id as u32, decode_form(db, id, &bytes)?);
        }
        Ok(())
    }

    /// The form `id`, from the cache or else from the database.
    fn get_or_load(&self, id: u32, db: &Db, tx: &mut Transaction<'_>) -> Result<Form, StoreError> {
        if let Some(form) = self.get(id) {
            return Ok(form);
        }
        let key = i32::try_from(id).map_err(|_| db.corrupt(format!("record form id {id}")))?;
        let row = tx
            .query_opt("SELECT bytes FROM entry_forms WHERE id = $1", &[&key])
            .map_err(pg("reading a record form"))?
            .ok_or_else(|| {
                db.corrupt(format!(
                    "an entry names record form {id}, which is not there"
                ))
            })?;
        let bytes: Vec<u8> = row.try_get(0).map_err(pg("reading a record form"))?;
        let form = decode_form(db, key, &bytes)?;
        self.by_id
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, form.clone());
        Ok(form)
    }
}

fn decode_form(db: &Db, id: i32, bytes: &[u8]) -> Result<Form, StoreError> {
    record::decode_form(bytes)
        .map_err(|e| db.corrupt(format!("record form {id} does not decode: {e}")))
}

#[derive(Default)]
struct Counters {
    pruned_partitions: AtomicU64,
    pruned_entries: AtomicU64,
}

/// The PostgreSQL store: registry, templates and entry log in one database, the registry
/// cached in memory as with SQLite.
pub(crate) struct PgStore {
    dir: PathBuf,
    db: Arc<Db>,
    pub(in crate::store) key: CredentialKey,
    pub(in crate::store) cache: Cache,
    writer: Mutex<PgClient>,
    readers: Mutex<Vec<PgClient>>,
    forms: Forms,
    counters: Counters,
    /// The last day whose partition the maintenance thread has made (ahead of time).
    prepared_through: AtomicI64,
    /// The node's lease fence, once it runs with market leases; shared with its entry
    /// writers, made before or after it is set.
    fence: Arc<std::sync::OnceLock<Arc<lease::LeaseFence>>>,
    /// Where following other nodes' registry writes has got to (`changes`).
    follow: Arc<changes::FollowState>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.db.redacted)
            .field("subjects", &self.cache.subjects.len())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, creates or migrates the schema, loads (or makes) the credential key and the
    /// registry cache. `dir` is created (0700) as the default home of the key file.
    pub(crate) fn open(url: &str, dir: &Path, key_path: &Path) -> Result<Self, StoreError> {
        let db = Arc::new(Db::parse(url)?);
        fsutil::create_private_dir(dir)?;
        let mut client = db.connect(true)?;
        db.migrate(&mut client)?;
        let key = load_key(&db, &mut client, key_path)?;
        let (cache, changes_at) = load_cache(&db, &mut client)?;
        Ok(Self {
            dir: dir.to_owned(),
            db,
            key,
            cache,
            follow: Arc::new(changes::FollowState::at(changes_at)),
            writer: Mutex::new(client),
            readers: Mutex::new(Vec::new()),
            forms: Forms::default(),
            counters: Counters::default(),
            prepared_through: AtomicI64::new(i64::MIN),
            fence: Arc::default(),
        })
    }

    /// Fences every later commit of this store's entry writers by `fence` (once; a second
    /// fence is refused, since two lease directories over one store would contradict).
    pub(crate) fn fence_commits(&self, fence: Arc<lease::LeaseFence>) -> Result<(), StoreError> {
        self.fence.set(fence).map_err(|_| StoreError::Unsupported {
            what: "a second market-lease fence on one store",
        })
    }

    /// The lease table, on a connection of its own, as node `node`.
    pub(crate) fn lease_table(&self, node: &str) -> Result<lease::LeaseTable, StoreError> {
        lease::LeaseTable::connect(Arc::clone(&self.db), node)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks that the schema is the one this build writes.
    pub(crate) fn verify(&self) -> Result<(), StoreError> {
        let mut client = self.writer()?;
        let mut tx = client.transaction().map_err(pg("checking the schema"))?;
        let version = self.db.version_in(&mut tx)?;
        if version != schema::SCHEMA_VERSION {
            return Err(self.db.corrupt(format!(
                "schema version {version}, expected {}",
                schema::SCHEMA_VERSION
            )));
        }
        Ok(())
    }

    /// The registry writer's connection, made again if it was lost (a server restart).
    fn writer(&self) -> Result<MutexGuard<'_, PgClient>, StoreError> {
        // A panic while holding the lock dropped its transaction (rolled back on drop).
        let mut client = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if client.is_closed() {
            *client = self.db.connect(true)?;
        }
        Ok(client)
    }

    /// A read connection from the pool (or a new one); given back by [`Self::give_back`].
    fn reader(&self) -> Result<PgClient, StoreError> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => self.db.connect(true),
        }
    }

    fn give_back(&self, client: PgClient) {
        let mut idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS && !client.is_closed() {
            idle.push(client);
        }
    }

    /// Runs `f` in a read-only `REPEATABLE READ` transaction on a pooled connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.reader()?;
        let result = (|| {
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(pg("starting a read"))?;
            let out = f(&mut tx)?;
            tx.commit().map_err(pg("ending a read"))?;
            Ok(out)
        })();
        self.give_back(client);
        result
    }

    // ---- the registry (cache reads) ----

    pub(crate) fn find_status_lift(
        &self,
        records: &[SubjectRecord],
    ) -> Option<(usize, StoreError)> {
        self.cache.find_status_lift(records)
    }

    pub(crate) fn event_fingerprint(&self, canonical: &[u8]) -> EventFingerprint {
        EventFingerprint(self.key.fingerprint(canonical))
    }

    // ---- the registry (writes: PostgreSQL first, then the cache) ----

    pub(crate) fn upsert_subjects(&self, records: &[SubjectRecord]) -> Result<usize, StoreError> {
        let mut client = self.writer()?;
        let mut tx = client
            .transaction()
            .map_err(pg("starting a subject upsert"))?;
        changes::lock(&mut tx)?;
        // Under the registry lock, against the database's rows: no revocation of any node
        // slips in between.
        self.reread(&mut tx, &Rows::subjects(records.iter().map(|r| r.subject)))?;
        self.cache.refuse_status_lift(records)?;
        let mut hashes = Vec::with_capacity(records.len());
        for record in records {
            hashes.push(self.write_subject(&mut tx, record)?);
        }
        changes::record(
            &mut tx,
            ChangeKind::Subject,
            &changes::subject_keys(records.iter().map(|r| r.subject)),
        )?;
        tx.commit().map_err(pg("committing subjects"))?;
        for (record, hash) in records.iter().zip(hashes) {
            self.cache.replace_subject(cached_copy(record), hash);
        }
        Ok(records.len())
    }

    fn write_subject(
        &self,
        tx: &mut Transaction<'_>,
        r: &SubjectRecord,
    ) -> Result<CredentialHashes, StoreError> {
        let ids = |v: Vec<u32>| serde_json::to_string(&v).unwrap_or_else(|_| "[]".to_owned());
        let id = to_sql_u64(r.subject.0);
        tx.execute(
            "INSERT INTO subjects (id, category, home_market, markets, zones, valid_from,
                                   valid_until, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET
                category = excluded.category, home_market = excluded.home_market,
                markets = excluded.markets, zones = excluded.zones,
                valid_from = excluded.valid_from, valid_until = excluded.valid_until,
                status = excluded.status",
            &[
                &id,
                &r.category.name(),
                &i64::from(r.home_market.0),
                &ids(r.markets.iter().map(|m| m.0).collect()),
                &ids(r.zones.iter().map(|z| z.0).collect()),
                &r.valid_from.map(sql_time),
                &r.valid_until.map(sql_time),
                &r.status.name(),
            ],
        )
        .map_err(pg("writing a subject"))?;
        tx.execute("DELETE FROM credentials WHERE subject = $1", &[&id])
            .map_err(pg("writing a subject"))?;
        let id_card = match &r.id_card {
            Some(number) => {
                if number.trim().is_empty() {
                    return Err(invalid(r.subject, "ID card", "the number is empty"));
                }
                let hash = self.key.hash_id_card(number);
                write_credential(tx, r.subject, KIND_ID_CARD, &hash)?;
                Some(hash)
            }
            None => None,
        };
        let mut qr_tokens = Vec::with_capacity(r.qr_tokens.len());
        for token in &r.qr_tokens {
            if token.is_empty() {
                return Err(invalid(r.subject, "staff QR token", "the token is empty"));
            }
            let hash = self.key.hash_qr_token(token);
            write_credential(tx, r.subject, KIND_QR, &hash)?;
            qr_tokens.push(hash);
        }
        qr_tokens.sort_unstable();
        qr_tokens.dedup();
        Ok(CredentialHashes { id_card, qr_tokens })
    }

    pub(crate) fn upsert_health(
        &self,
        records: &[HealthRecord],
    ) -> Result<UpdateHealthAck, StoreError> {
        let mut client = self.writer()?;
        let mut tx = client
            .transaction()
            .map_err(pg("starting a health upsert"))?;
        changes::lock(&mut tx)?;
        // A person enrolled at another node a moment ago is known here too.
        self.reread(&mut tx, &Rows::subjects(records.iter().map(|r| r.subject)))?;
        let stmt = tx
            .prepare(
                "INSERT INTO health (subject, test_at, test_result, vaccine_doses, health_code,
                                     travel_code, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (subject) DO UPDATE SET
                    test_at = excluded.test_at, test_result = excluded.test_result,
                    vaccine_doses = excluded.vaccine_doses,
                    health_code = excluded.health_code, travel_code = excluded.travel_code,
                    updated_at = excluded.updated_at
                 WHERE excluded.updated_at >= health.updated_at",
            )
            .map_err(pg("preparing the health upsert"))?;
        let mut applied = Vec::new();
        let mut unknown = 0u32;
        for r in records {
            if !self.cache.subjects.contains_key(&r.subject) {
                unknown += 1;
                continue;
            }
            let changed = tx
                .execute(
                    &stmt,
                    &[
                        &to_sql_u64(r.subject.0),
                        &r.test_at.map(sql_time),
                        &r.test_result.map(TestResult::name),
                        &i64::from(r.vaccine_doses),
                        &r.health_code.name(),
                        &r.travel_code.name(),
                        &sql_time(r.updated_at),
                    ],
                )
                .map_err(pg("writing a health record"))?;
            if changed > 0 {
                applied.push(r);
            }
        }
        changes::record(
            &mut tx,
            ChangeKind::Health,
            &changes::subject_keys(applied.iter().map(|r| r.subject)),
        )?;
        tx.commit().map_err(pg("committing health records"))?;
        let ack = UpdateHealthAck {
            applied: u32::try_from(applied.len()).unwrap_or(u32::MAX),
            unknown_subjects: unknown,
        };
        for r in applied {
            self.cache.health.insert(r.subject, r.clone());
        }
        Ok(ack)
    }

    pub(crate) fn reinstate(
        &self,
        id: SubjectId,
        reason: &str,
        now: UnixMillis,
    ) -> Result<Option<SubjectStatus>, StoreError> {
        let mut client = self.writer()?;
        let op = pg("reinstating a subject");
        let mut tx = client.transaction().map_err(&op)?;
        changes::lock(&mut tx)?;
        // The status as the database holds it (another node may have revoked just now).
        self.reread(&mut tx, &Rows::subjects([id]))?;
        let Some(current) = self.cache.subject(id) else {
            return Ok(None);
        };
        if current.status == SubjectStatus::Active {
            return Ok(Some(SubjectStatus::Active));
        }
        tx.execute(
            "UPDATE subjects SET status = 'active' WHERE id = $1",
            &[&to_sql_u64(id.0)],
        )
        .map_err(&op)?;
        tx.execute(
            "INSERT INTO revocations (subject, reason, at, action)
             VALUES ($1, $2, $3, 'reinstate')",
            &[&to_sql_u64(id.0), &reason, &sql_time(now)],
        )
        .map_err(&op)?;
        changes::record(&mut tx, ChangeKind::Subject, &changes::subject_keys([id]))?;
        tx.commit().map_err(&op)?;
        let mut record = (*current).clone();
        record.status = SubjectStatus::Active;
        self.cache.subjects.insert(id, Arc::new(record));
        Ok(Some(current.status))
    }

    pub(crate) fn revoke(
        &self,
        id: SubjectId,
        reason: &str,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut client = self.writer()?;
        let op = pg("revoking a subject");
        let mut tx = client.transaction().map_err(&op)?;
        changes::lock(&mut tx)?;
        // The person as the database holds them (enrolled at another node a moment ago, say).
        self.reread(&mut tx, &Rows::subjects([id]))?;
        let Some(current) = self.cache.subject(id) else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE subjects SET status = 'revoked' WHERE id = $1 AND status = 'active'",
            &[&to_sql_u64(id.0)],
        )
        .map_err(&op)?;
        tx.execute(
            "INSERT INTO revocations (subject, reason, at) VALUES ($1, $2, $3)",
            &[&to_sql_u64(id.0), &reason, &sql_time(now)],
        )
        .map_err(&op)?;
        changes::record(&mut tx, ChangeKind::Subject, &changes::subject_keys([id]))?;
        tx.commit().map_err(&op)?;
        if current.status == SubjectStatus::Active {
            let mut record = (*current).clone();
            record.status = SubjectStatus::Revoked;
            self.cache.subjects.insert(id, Arc::new(record));
        }
        Ok(true)
    }

    pub(crate) fn upsert_gates(&self, gates: &[GateInfo]) -> Result<usize, StoreError> {
        let mut client = self.writer()?;
        let op = pg("writing gates");
        let mut tx = client.transaction().map_err(&op)?;
        changes::lock(&mut tx)?;
        let stmt = tx
            .prepare(
                "INSERT INTO gates (id, market, zone, name) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET
                    market = excluded.market, zone = excluded.zone, name = excluded.name",
            )
            .map_err(&op)?;
        for g in gates {
            tx.execute(
                &stmt,
                &[
                    &i64::from(g.gate.0),
                    &i64::from(g.market.0),
                    &i64::from(g.zone.0),
                    &g.name,
                ],
            )
            .map_err(&op)?;
        }
        changes::record(
            &mut tx,
            ChangeKind::Gate,
            &changes::gate_keys(gates.iter().map(|g| g.gate)),
        )?;
        tx.commit().map_err(&op)?;
        for g in gates {
            self.cache.gates.insert(g.gate, g.clone());
        }
        Ok(gates.len())
    }

    // ---- templates ----

    pub(crate) fn add_templates(
        &self,
        rows: &[(SubjectId, &str, &[f32])],
    ) -> Result<Vec<u64>, StoreError> {
        for (i, (subject, model, embedding)) in rows.iter().enumerate() {
            check_template(&self.cache, i, *subject, model, embedding)?;
        }
        let mut client = self.writer()?;
        let op = pg("adding templates");
        let mut tx = client.transaction().map_err(&op)?;
        changes::lock(&mut tx)?;
        let stmt = tx
            .prepare(
                "INSERT INTO templates (subject, model, dim, vector) VALUES ($1, $2, $3, $4)
                 RETURNING id",
            )
            .map_err(&op)?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut bytes = Vec::new();
        for (subject, model, embedding) in rows {
            bytes.clear();
            bytes.extend(embedding.iter().flat_map(|v| v.to_le_bytes()));
            let dim = i32::try_from(embedding.len()).unwrap_or(i32::MAX);
            let row = tx
                .query_one(&stmt, &[&to_sql_u64(subject.0), model, &dim, &bytes])
                .map_err(&op)?;
            ids.push(from_sql_u64(row.try_get(0).map_err(&op)?));
        }
        // Under the lock, this write's ids are the only ones taken since it began: every
        // one is above the smallest less one.
        if let Some(first) = ids.iter().min() {
            changes::record(
                &mut tx,
                ChangeKind::Templates,
                &[to_sql_u64(first.saturating_sub(1))],
            )?;
        }
        tx.commit().map_err(&op)?;
        Ok(ids)
    }

    pub(crate) fn for_each_template_since(
        &self,
        watermark: u64,
        mut f: impl FnMut(u64, SubjectId, &[f32]),
    ) -> Result<u64, StoreError> {
        let op = pg("reading templates");
        let db = &self.db;
        self.read(|tx| {
            // Streamed row by row into one reused buffer: constant memory at any size.
            let mut rows = tx
                .query_raw(
                    "SELECT id, subject, vector FROM templates WHERE id > $1 ORDER BY id",
                    [to_sql_u64(watermark)],
                )
                .map_err(&op)?;
            let mut buf: Vec<f32> = Vec::new();
            let mut count = 0u64;
            while let Some(row) = rows.next().map_err(&op)? {
                let id = from_sql_u64(row.try_get(0).map_err(&op)?);
                let subject = SubjectId(from_sql_u64(row.try_get(1).map_err(&op)?));
                let blob: &[u8] = row.try_get(2).map_err(&op)?;
                let (chunks, rest) = blob.as_chunks::<4>();
                if !rest.is_empty() {
                    return Err(db.corrupt(format!(
                        "template {id} has {} bytes, not a whole number of f32",
                        blob.len()
                    )));
                }
                buf.clear();
                buf.extend(chunks.iter().map(|c| f32::from_le_bytes(*c)));
                f(id, subject, &buf);
                count += 1;
            }
            Ok(count)
        })
    }

    pub(crate) fn template_count(&self) -> Result<u64, StoreError> {
        self.read(|tx| {
            tx.query_one("SELECT count(*) FROM templates", &[])
                .and_then(|r| r.try_get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .map_err(pg("counting templates"))
        })
    }

    // ---- the entry log ----

    pub(crate) fn entry_writer(&self) -> Result<PgEntryWriter, StoreError> {
        PgEntryWriter::connect(Arc::clone(&self.db), Arc::clone(&self.fence))
    }

    pub(crate) fn bulk_entry_loader(&self) -> PgEntryWriter {
        PgEntryWriter::bulk(Arc::clone(&self.db))
    }

    pub(crate) fn recorded_entry(
        &self,
        gate: GateId,
        seq: u64,
    ) -> Result<Option<RecordedEntry>, StoreError> {
        let op = pg("reading a recorded entry");
        self.read(|tx| {
            // The key names the record's time, and the time its partition: one partition read.
            let rows = tx
                .query(
                    &*format!(
                        "SELECT {ENTRY_COLUMNS}, fingerprint FROM entries
                         WHERE gate = $1 AND seq = $2 AND decided_at = (
                             SELECT decided_at FROM entry_keys WHERE gate = $1 AND seq = $2)"
                    ),
                    &[&i64::from(gate.0), &to_sql_u64(seq)],
                )
                .map_err(&op)?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            let (entry, body) = self.decode(tx, row)?;
            let fingerprint: Option<Vec<u8>> = row.try_get(12).map_err(&op)?;
            let fingerprint = fingerprint
                .map(|bytes| {
                    <[u8; 16]>::try_from(bytes.as_slice())
                        .map(EventFingerprint)
                        .map_err(|_| {
                            self.db.corrupt(format!(
                                "the entry of gate {gate} seq {seq}: a {}-byte fingerprint",
                                bytes.len()
                            ))
                        })
                })
                .transpose()?;
            Ok(Some(RecordedEntry::from_parts(entry, body, fingerprint)))
        })
    }

    pub(crate) fn max_seq_per_gate(&self) -> Result<Vec<(GateId, u64)>, StoreError> {
        let op = pg("reading each gate's last seq");
        self.read(|tx| {
            // Seqs are stored by bit pattern, so one above i64::MAX is negative here: the
            // highest u64 is the highest negative value if there is one. Per registered gate
            // (events come only from those), each a walk down the key's index.
            let rows = tx
                .query(
                    "SELECT g.id,
                            (SELECT max(seq) FROM entry_keys k WHERE k.gate = g.id AND seq >= 0),
                            (SELECT max(seq) FROM entry_keys k WHERE k.gate = g.id AND seq < 0)
                     FROM gates g",
                    &[],
                )
                .map_err(&op)?;
            let mut out = Vec::new();
            for row in rows {
                let gate = u32_of(&self.db, row.try_get(0).map_err(&op)?, "gate")?;
                let low: Option<i64> = row.try_get(1).map_err(&op)?;
                let high: Option<i64> = row.try_get(2).map_err(&op)?;
                if let Some(max) = high.or(low) {
                    out.push((GateId(gate), from_sql_u64(max)));
                }
            }
            Ok(out)
        })
    }

    /// Every entry decided at or after `since`, of `markets` only if given (the markets'
    /// index then narrows the read).
    pub(crate) fn for_each_entry_since(
        &self,
        since: UnixMillis,
        mut f: impl FnMut(&EntryRow),
    ) -> Result<(), StoreError> {
        let op = pg("reading entries");
        self.read(|tx| {
            // Every form a row can name is visible in this snapshot: load them first, since
            // the stream below holds the connection.
            self.forms.refresh(&self.db, tx)?;
            let mut rows = tx
                .query_raw(
                    &*format!(
                        "SELECT {ENTRY_COLUMNS} FROM entries WHERE decided_at >= $1
                         ORDER BY decided_at, id"
                    ),
                    [sql_time(since)],
                )
                .map_err(&op)?;
            while let Some(row) = rows.next().map_err(&op)? {
                let (entry, body) = decode_entry(&self.db, &row, |id| {
                    self.forms
                        .get(id)
                        .ok_or_else(|| record::DecodeError(format!("unknown form {id}")))
                })?;
                f(&EntryRow {
                    failed: failed_checks(&body.checks),
                    ..entry
                });
            }
            Ok(())
        })
    }

    /// Streams the [`Passage`]s decided at or after `since` (in `markets` only, if given), in
    /// the order they were decided.
    pub(crate) fn for_each_passage_since(
        &self,
        since: UnixMillis,
        markets: Option<&[MarketId]>,
        mut f: impl FnMut(&Passage),
    ) -> Result<(), StoreError> {
        let op = pg("reading passages");
        let since = sql_time(since);
        let markets: Option<Vec<i64>> = markets.map(|m| m.iter().map(|m| i64::from(m.0)).collect());
        self.read(|tx| {
            let mut rows = match &markets {
                None => tx.query_raw(
                    &*Passage::query("entries", "$1", None),
                    [&since as &(dyn ToSql + Sync)],
                ),
                Some(markets) => tx.query_raw(
                    &*Passage::query("entries", "$1", Some("$2")),
                    [&since as &(dyn ToSql + Sync), markets],
                ),
            }
            .map_err(&op)?;
            while let Some(row) = rows.next().map_err(&op)? {
                let market = u32_of(&self.db, row.try_get(1).map_err(&op)?, "market")?;
                let passage = Passage::from_columns(
                    row.try_get(0).map_err(&op)?,
                    MarketId(market),
                    i64::from(row.try_get::<_, i16>(2).map_err(&op)?),
                    i64::from(row.try_get::<_, i16>(3).map_err(&op)?),
                    row.try_get(4).map_err(&op)?,
                )
                .map_err(|detail| self.db.corrupt(detail))?;
                f(&passage);
            }
            Ok(())
        })
    }

    /// Decodes an entry row, loading the forms it names that this process has not seen.
    fn decode(
        &self,
        tx: &mut Transaction<'_>,
        row: &Row,
    ) -> Result<(EntryRow, record::Body), StoreError> {
        decode_entry(&self.db, row, |id| {
            self.forms
                .get_or_load(id, &self.db, tx)
                .map_err(|e| record::DecodeError(e.to_string()))
        })
    }

    fn entry_rows(
        &self,
        tx: &mut Transaction<'_>,
        rows: &[Row],
    ) -> Result<Vec<EntryRow>, StoreError> {
        rows.iter()
            .map(|row| {
                let (entry, body) = self.decode(tx, row)?;
                Ok(EntryRow {
                    failed: failed_checks(&body.checks),
                    ..entry
                })
            })
            .collect()
    }

    // ---- queries ----

    pub(crate) fn trajectory(
        &self,
        subject: SubjectId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<EntryRow>, StoreError> {
        self.read(|tx| {
            let rows = tx
                .query(
                    &*format!(
                        "SELECT {ENTRY_COLUMNS} FROM entries
                         WHERE subject = $1 AND decided_at >= $2 AND decided_at < $3
                         ORDER BY decided_at, id"
                    ),
                    &[&to_sql_u64(subject.0), &sql_time(since), &sql_time(until)],
                )
                .map_err(pg("querying a trajectory"))?;
            self.entry_rows(tx, &rows)
        })
    }

    pub(crate) fn frequency(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
        min: u32,
    ) -> Result<Vec<FrequencyRow>, StoreError> {
        let op = pg("querying entry frequency");
        let rows = self.read(|tx| {
            tx.query(
                "SELECT subject, count(*), min(decided_at), max(decided_at) FROM entries
                 WHERE market = $1 AND decided_at >= $2 AND decided_at < $3
                   AND decision = $4 AND direction = $5 AND mode <> $6
                   AND subject IS NOT NULL
                 GROUP BY subject HAVING count(*) >= $7",
                &[
                    &i64::from(market.0),
                    &sql_time(since),
                    &sql_time(until),
                    &code(Decision::Admit.code()),
                    &code(Direction::Entry.code()),
                    &code(ModeKind::SignIn.code()),
                    &i64::from(min),
                ],
            )
            .map_err(&op)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let subject = SubjectId(from_sql_u64(r.try_get(0).map_err(&op)?));
            let n: i64 = r.try_get(1).map_err(&op)?;
            out.push(FrequencyRow {
                subject,
                category: self.cache.subject(subject).map(|s| s.category),
                entries: u32::try_from(n).unwrap_or(u32::MAX),
                first_at: millis(r.try_get(2).map_err(&op)?),
                last_at: millis(r.try_get(3).map_err(&op)?),
            });
        }
        out.sort_by(|a, b| b.entries.cmp(&a.entries).then(a.subject.cmp(&b.subject)));
        Ok(out)
    }

    pub(crate) fn signins(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<SignInRow>, StoreError> {
        let op = pg("querying sign-ins");
        let rows = self.read(|tx| {
            tx.query(
                "SELECT DISTINCT ON (subject) subject, decided_at, gate, zone FROM entries
                 WHERE market = $1 AND decided_at >= $2 AND decided_at < $3
                   AND mode = $4 AND decision = $5 AND subject IS NOT NULL
                 ORDER BY subject, decided_at, id",
                &[
                    &i64::from(market.0),
                    &sql_time(since),
                    &sql_time(until),
                    &code(ModeKind::SignIn.code()),
                    &code(Decision::Admit.code()),
                ],
            )
            .map_err(&op)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let subject = SubjectId(from_sql_u64(r.try_get(0).map_err(&op)?));
            out.push(SignInRow {
                subject,
                category: self.cache.subject(subject).map(|s| s.category),
                first_at: millis(r.try_get(1).map_err(&op)?),
                gate: GateId(u32_of(&self.db, r.try_get(2).map_err(&op)?, "gate")?),
                zone: ZoneId(u32_of(&self.db, r.try_get(3).map_err(&op)?, "zone")?),
            });
        }
        out.sort_by(|a, b| a.first_at.cmp(&b.first_at).then(a.subject.cmp(&b.subject)));
        Ok(out)
    }

    pub(crate) fn contacts(
        &self,
        subject: SubjectId,
        window_ms: u64,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<ContactRow>, StoreError> {
        let passages: Vec<(MarketId, UnixMillis)> = self
            .trajectory(subject, since, until)?
            .into_iter()
            .filter(|e| e.decision == Decision::Admit)
            .map(|e| (e.market, e.decided_at))
            .collect();
        let op = pg("querying contacts");
        let mut met: HashMap<(u64, u32), Meeting> = HashMap::new();
        self.read(|tx| {
            let stmt = tx
                .prepare(
                    "SELECT subject, decided_at, id FROM entries
                     WHERE market = $1 AND decided_at BETWEEN $2 AND $3
                       AND decision = $4 AND subject IS NOT NULL AND subject <> $5",
                )
                .map_err(&op)?;
            for (market, at) in passages {
                let lo = sql_time(UnixMillis(at.0.saturating_sub(window_ms)));
                let hi = sql_time(UnixMillis(at.0.saturating_add(window_ms)));
                let rows = tx
                    .query(
                        &stmt,
                        &[
                            &i64::from(market.0),
                            &lo,
                            &hi,
                            &code(Decision::Admit.code()),
                            &to_sql_u64(subject.0),
                        ],
                    )
                    .map_err(&op)?;
                for r in rows {
                    let other = from_sql_u64(r.try_get(0).map_err(&op)?);
                    let t: i64 = r.try_get(1).map_err(&op)?;
                    let id: i64 = r.try_get(2).map_err(&op)?;
                    let m = met.entry((other, market.0)).or_insert(Meeting {
                        first: t,
                        last: t,
                        closest: u64::MAX,
                        ids: HashSet::new(),
                    });
                    m.first = m.first.min(t);
                    m.last = m.last.max(t);
                    m.closest = m.closest.min(t.abs_diff(sql_time(at)));
                    m.ids.insert(id);
                }
            }
            Ok(())
        })?;
        let mut out: Vec<ContactRow> = met
            .into_iter()
            .map(|((other, market), m)| {
                let other = SubjectId(other);
                ContactRow {
                    subject: other,
                    category: self.cache.subject(other).map(|s| s.category),
                    market: MarketId(market),
                    first_at: millis(m.first),
                    last_at: millis(m.last),
                    passages: u32::try_from(m.ids.len()).unwrap_or(u32::MAX),
                    closest_ms: m.closest,
                }
            })
            .collect();
        out.sort_by(|a, b| a.first_at.cmp(&b.first_at).then(a.subject.cmp(&b.subject)));
        Ok(out)
    }

    // ---- escalations ----

    pub(crate) fn escalations(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
        state: EscalationState,
        limit: usize,
    ) -> Result<Vec<Escalation>, StoreError> {
        let op = pg("querying escalations");
        self.read(|tx| {
            let mut resolved = self.resolutions_where(
                tx,
                "market = $1 AND escalated_at >= $2 AND escalated_at < $3",
                &[&i64::from(market.0), &sql_time(since), &sql_time(until)],
            )?;
            let rows = tx
                .query(
                    &*format!(
                        "SELECT {ENTRY_COLUMNS} FROM entries
                         WHERE market = $1 AND decided_at >= $2 AND decided_at < $3
                           AND decision = $4
                         ORDER BY decided_at DESC, id DESC"
                    ),
                    &[
                        &i64::from(market.0),
                        &sql_time(since),
                        &sql_time(until),
                        &code(Decision::Escalate.code()),
                    ],
                )
                .map_err(&op)?;
            let mut out = Vec::new();
            for row in &rows {
                if out.len() >= limit {
                    break;
                }
                let (entry, body) = self.decode(tx, row)?;
                let resolution = resolved.remove(&(entry.gate, entry.seq));
                if !state.admits(resolution.as_ref()) {
                    continue;
                }
                let checks = body
                    .checks
                    .into_iter()
                    .filter(|c| matches!(c.outcome, Outcome::Escalate | Outcome::Fail))
                    .collect();
                out.push(Escalation {
                    entry,
                    checks,
                    resolution,
                });
            }
            Ok(out)
        })
    }

    pub(crate) fn resolve_escalation(
        &self,
        r: &Resolution,
    ) -> Result<Option<Resolution>, StoreError> {
        let mut client = self.writer()?;
        let op = pg("recording a resolution");
        let mut tx = client.transaction().map_err(&op)?;
        let inserted = tx
            .execute(
                &*format!(
                    "INSERT INTO resolutions ({RESOLUTION_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (gate, seq) DO NOTHING"
                ),
                &[
                    &i64::from(r.gate.0),
                    &to_sql_u64(r.seq),
                    &r.subject.map(|s| to_sql_u64(s.0)),
                    &i64::from(r.market.0),
                    &sql_time(r.escalated_at),
                    &r.outcome.name(),
                    &r.by,
                    &r.note,
                    &sql_time(r.at),
                ],
            )
            .map_err(&op)?;
        if inserted == 1 {
            tx.commit().map_err(&op)?;
            return Ok(None);
        }
        let existing = self.resolutions_where(
            &mut tx,
            "gate = $1 AND seq = $2",
            &[&i64::from(r.gate.0), &to_sql_u64(r.seq)],
        )?;
        Ok(existing.into_values().next())
    }

    pub(crate) fn resolutions_of(
        &self,
        subject: SubjectId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<Resolution>, StoreError> {
        let mut out: Vec<Resolution> = self
            .read(|tx| {
                self.resolutions_where(
                    tx,
                    "subject = $1 AND escalated_at >= $2 AND escalated_at < $3",
                    &[&to_sql_u64(subject.0), &sql_time(since), &sql_time(until)],
                )
            })?
            .into_values()
            .collect();
        out.sort_by_key(|r| (r.escalated_at, r.gate, r.seq));
        Ok(out)
    }

    fn resolutions_where(
        &self,
        tx: &mut Transaction<'_>,
        filter: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<HashMap<(GateId, u64), Resolution>, StoreError> {
        let op = pg("reading resolutions");
        let rows = tx
            .query(
                &*format!("SELECT {RESOLUTION_COLUMNS} FROM resolutions WHERE {filter}"),
                args,
            )
            .map_err(&op)?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let outcome: String = row.try_get(5).map_err(&op)?;
            let outcome = ResolvedAs::from_name(&outcome)
                .ok_or_else(|| self.db.corrupt(format!("unknown resolution {outcome:?}")))?;
            let r = Resolution {
                gate: GateId(u32_of(&self.db, row.try_get(0).map_err(&op)?, "gate")?),
                seq: from_sql_u64(row.try_get(1).map_err(&op)?),
                subject: row
                    .try_get::<_, Option<i64>>(2)
                    .map_err(&op)?
                    .map(|s| SubjectId(from_sql_u64(s))),
                market: MarketId(u32_of(&self.db, row.try_get(3).map_err(&op)?, "market")?),
                escalated_at: millis(row.try_get(4).map_err(&op)?),
                outcome,
                by: row.try_get(6).map_err(&op)?,
                note: row.try_get(7).map_err(&op)?,
                at: millis(row.try_get(8).map_err(&op)?),
            };
            out.insert((r.gate, r.seq), r);
        }
        Ok(out)
    }

    // ---- retention and statistics ----

    /// Drops the day partitions older than `entry_days` days ending on `now`'s UTC day, then
    /// the keys and resolutions of those days.
    pub(crate) fn prune_entries(
        &self,
        now: UnixMillis,
        entry_days: u32,
    ) -> Result<Vec<PrunedPartition>, StoreError> {
        let keep_from = first_kept_day(day_of(now), entry_days);
        let cutoff = keep_from.max(0) * DAY_MS as i64;
        let mut client = self.db.connect(true)?;
        let op = pg("deleting expired entries");
        // Resolutions expire with their entries, whatever happens to the partitions.
        client
            .execute(
                "DELETE FROM resolutions WHERE escalated_at < $1",
                &[&cutoff],
            )
            .map_err(&op)?;
        let mut pruned = Vec::new();
        for day in partition_days(&mut client)? {
            if day >= keep_from {
                continue;
            }
            let name = partition_name(day);
            let (entries, bytes): (i64, i64) = client
                .query_one(
                    &*format!("SELECT count(*), pg_total_relation_size('{name}') FROM {name}"),
                    &[],
                )
                .and_then(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .map_err(&op)?;
            // Detached without blocking the writer, then dropped; a detach left half-done by
            // a crash is finished first.
            let detached = client.batch_execute(&format!(
                "ALTER TABLE entries DETACH PARTITION {name} CONCURRENTLY"
            ));
            if let Err(e) = detached {
                tracing::debug!(error = %e, partition = %name, "concurrent detach failed; finishing it");
                let _ = client.batch_execute(&format!(
                    "ALTER TABLE entries DETACH PARTITION {name} FINALIZE"
                ));
            }
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .map_err(&op)?;
            let day_name = crate::clock::format_day(day);
            tracing::info!(day = %day_name, entries, "entry partition deleted by retention");
            self.counters
                .pruned_partitions
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .pruned_entries
                .fetch_add(entries.max(0) as u64, Ordering::Relaxed);
            pruned.push(PrunedPartition {
                day: day_name,
                entries: entries.max(0) as u64,
                bytes: bytes.max(0) as u64,
            });
        }
        // The keys go after their records: a key without its record would only make a retry
        // look recorded; a record without its key could be recorded twice.
        client
            .execute("DELETE FROM entry_keys WHERE decided_at < $1", &[&cutoff])
            .map_err(&op)?;
        Ok(pruned)
    }

    pub(crate) fn history_stats(&self) -> Result<HistoryStats, StoreError> {
        let mut client = self.reader()?;
        let op = pg("reading partition statistics");
        let result = (|| {
            let mut partitions = Vec::new();
            for day in partition_days(&mut client)? {
                let name = partition_name(day);
                let (entries, bytes): (i64, i64) = client
                    .query_one(
                        &*format!("SELECT count(*), pg_total_relation_size('{name}') FROM {name}"),
                        &[],
                    )
                    .and_then(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .map_err(&op)?;
                partitions.push(PartitionStats {
                    day: crate::clock::format_day(day),
                    entries: entries.max(0) as u64,
                    bytes: bytes.max(0) as u64,
                    wal_bytes: 0,
                });
            }
            Ok(summarise(partitions))
        })();
        self.give_back(client);
        result
    }

    /// Makes the partitions of today and the next two days if they are not made yet (the
    /// maintenance thread calls it every pass; it connects once a day). The writer then never
    /// makes a partition on the commit path while the maintenance thread runs.
    pub(crate) fn prepare_partitions(&self, now: UnixMillis) -> Result<(), StoreError> {
        let today = day_of(now);
        if self.prepared_through.load(Ordering::Relaxed) >= today + 2 {
            return Ok(());
        }
        let mut client = self.db.connect(true)?;
        writer::make_partitions(&mut client, today..=today + 2)?;
        self.prepared_through.store(today + 2, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn follow_counters(&self) -> super::RegistryFollowCounters {
        self.follow.snapshot()
    }

    pub(crate) fn history_counters(&self) -> HistoryCounters {
        HistoryCounters {
            pruned_partitions: self.counters.pruned_partitions.load(Ordering::Relaxed),
            pruned_entries: self.counters.pruned_entries.load(Ordering::Relaxed),
            ..HistoryCounters::default()
        }
    }
}

#[cfg(test)]
impl PgStore {
    /// Runs `sql` on a read connection; every value as text (`NULL` for null).
    pub(crate) fn test_query(&self, sql: &str) -> Vec<Vec<String>> {
        let mut client = self.reader().unwrap();
        let out = client
            .simple_query(sql)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        self.give_back(client);
        out
    }
}

/// The name of the partition of `day`.
pub(crate) fn partition_name(day: i64) -> String {
    format!("entries_d{day}")
}

/// The days that have a partition, oldest first.
fn partition_days(client: &mut Client) -> Result<Vec<i64>, StoreError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'entries'::regclass",
            &[],
        )
        .map_err(pg("listing entry partitions"))?;
    let mut days = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(0).map_err(pg("listing entry partitions"))?;
        if let Some(day) = name
            .strip_prefix("entries_d")
            .and_then(|d| d.parse::<i64>().ok())
        {
            days.push(day);
        }
    }
    days.sort_unstable();
    Ok(days)
}

fn write_credential(
    tx: &mut Transaction<'_>,
    subject: SubjectId,
    kind: &'static str,
    key: &[u8],
) -> Result<(), StoreError> {
    let op = pg("writing a credential");
    let holder: Option<i64> = tx
        .query_opt(
            "SELECT subject FROM credentials WHERE kind = $1 AND key = $2",
            &[&kind, &key],
        )
        .map_err(&op)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(&op)?;
    match holder.map(|h| SubjectId(from_sql_u64(h))) {
        Some(h) if h == subject => Ok(()),
        Some(holder) => Err(StoreError::CredentialTaken {
            kind: if kind == KIND_ID_CARD {
                "ID card"
            } else {
                "staff QR token"
            },
            subject,
            holder,
        }),
        None => tx
            .execute(
                "INSERT INTO credentials (kind, key, subject) VALUES ($1, $2, $3)",
                &[&kind, &key, &to_sql_u64(subject.0)],
            )
            .map(drop)
            .map_err(&op),
    }
}

/// Loads (or makes) the credential key and checks it against the database's check value.
fn load_key(db: &Db, client: &mut Client, path: &Path) -> Result<CredentialKey, StoreError> {
    let op = pg("reading the credential key check");
    let recorded: Option<String> = client
        .query_opt("SELECT value FROM meta WHERE key = $1", &[&key::CHECK_META])
        .map_err(&op)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(&op)?;
    let has_hashes = |client: &mut Client| -> Result<bool, StoreError> {
        client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM credentials)
                        OR EXISTS (SELECT 1 FROM entry_keys)",
                &[],
            )
            .and_then(|r| r.try_get(0))
            .map_err(db.pg("looking for keyed hashes"))
    };
    // Both closures need the client, one after the other: share it through a cell.
    let client = std::cell::RefCell::new(client);
    key::load_or_create_with(
        path,
        recorded,
        || has_hashes(&mut client.borrow_mut()),
        |check| {
            client
                .borrow_mut()
                .execute(
                    "INSERT INTO meta (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&key::CHECK_META, &check],
                )
                .map(drop)
                .map_err(pg("recording the credential key check"))
        },
    )
}

/// The columns [`subject_from_row`] reads, in its order.
const SUBJECT_COLUMNS: &str =
    "id, category, home_market, markets, zones, valid_from, valid_until, status";

/// The columns [`health_from_row`] reads, in its order.
const HEALTH_COLUMNS: &str =
    "subject, test_at, test_result, vaccine_doses, health_code, travel_code, updated_at";

/// The columns [`gate_from_row`] reads, in its order.
const GATE_COLUMNS: &str = "id, market, zone, name";

/// Reads the whole registry into a new cache, in one snapshot, and the change-log id that
/// snapshot is at (where following other nodes' writes starts).
fn load_cache(db: &Db, client: &mut Client) -> Result<(Cache, i64), StoreError> {
    let cache = Cache::default();
    let op = pg("loading the registry");
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(&op)?;
    let at = changes::latest(&mut tx)?;
    for row in tx
        .query("SELECT kind, key, subject FROM credentials", &[])
        .map_err(&op)?
    {
        let (kind, hash, subject) = credential_from_row(db, &row)?;
        match kind {
            CredentialKind::IdCard => {
                cache.id_cards.insert(hash, subject);
                cache.id_card_of.insert(subject, hash);
            }
            CredentialKind::Qr => {
                cache.qr_tokens.insert(hash, subject);
                cache.qr_of.entry(subject).or_default().push(hash);
            }
        }
    }
    for row in tx
        .query(&*format!("SELECT {SUBJECT_COLUMNS} FROM subjects"), &[])
        .map_err(&op)?
    {
        let record = subject_from_row(db, &row)?;
        cache.subjects.insert(record.subject, Arc::new(record));
    }
    for row in tx
        .query(&*format!("SELECT {HEALTH_COLUMNS} FROM health"), &[])
        .map_err(&op)?
    {
        let record = health_from_row(db, &row)?;
        cache.health.insert(record.subject, record);
    }
    for row in tx
        .query(&*format!("SELECT {GATE_COLUMNS} FROM gates"), &[])
        .map_err(&op)?
    {
        let gate = gate_from_row(db, &row)?;
        cache.gates.insert(gate.gate, gate);
    }
    tx.commit().map_err(&op)?;
    Ok((cache, at))
}

/// Which credential a stored hash is of.
enum CredentialKind {
    IdCard,
    Qr,
}

/// A `credentials` row: its kind, its keyed hash and its holder.
fn credential_from_row(
    db: &Db,
    row: &Row,
) -> Result<(CredentialKind, [u8; 32], SubjectId), StoreError> {
    let op = pg("loading the registry");
    let kind: String = row.try_get(0).map_err(&op)?;
    let key: Vec<u8> = row.try_get(1).map_err(&op)?;
    let subject = SubjectId(from_sql_u64(row.try_get(2).map_err(&op)?));
    let hash: [u8; 32] = key
        .try_into()
        .map_err(|_| db.corrupt(format!("a {kind} hash is not 32 bytes")))?;
    let kind = match kind.as_str() {
        KIND_ID_CARD => CredentialKind::IdCard,
        KIND_QR => CredentialKind::Qr,
        other => return Err(db.corrupt(format!("unknown credential kind {other:?}"))),
    };
    Ok((kind, hash, subject))
}

/// A row of [`SUBJECT_COLUMNS`], as the cache keeps it (no credentials).
fn subject_from_row(db: &Db, row: &Row) -> Result<SubjectRecord, StoreError> {
    let op = pg("loading the registry");
    Ok(SubjectRecord {
        subject: SubjectId(from_sql_u64(row.try_get(0).map_err(&op)?)),
        category: label(db, row, 1, "category")?,
        home_market: MarketId(u32_of(db, row.try_get(2).map_err(&op)?, "market")?),
        markets: id_list(db, row, 3, "markets", MarketId)?,
        zones: id_list(db, row, 4, "zones", ZoneId)?,
        valid_from: row.try_get::<_, Option<i64>>(5).map_err(&op)?.map(millis),
        valid_until: row.try_get::<_, Option<i64>>(6).map_err(&op)?.map(millis),
        id_card: None,
        qr_tokens: Vec::new(),
        status: label(db, row, 7, "status")?,
    })
}

/// A row of [`HEALTH_COLUMNS`].
fn health_from_row(db: &Db, row: &Row) -> Result<HealthRecord, StoreError> {
    let op = pg("loading the registry");
    let test_result: Option<String> = row.try_get(2).map_err(&op)?;
    let test_result = test_result
        .map(|s| {
            TestResult::from_label(&s)
                .ok_or_else(|| db.corrupt(format!("unknown test result {s:?}")))
        })
        .transpose()?;
    let doses: i64 = row.try_get(3).map_err(&op)?;
    Ok(HealthRecord {
        subject: SubjectId(from_sql_u64(row.try_get(0).map_err(&op)?)),
        test_at: row.try_get::<_, Option<i64>>(1).map_err(&op)?.map(millis),
        test_result,
        vaccine_doses: u8::try_from(doses)
            .map_err(|_| db.corrupt(format!("{doses} vaccine doses")))?,
        health_code: label::<CodeColour>(db, row, 4, "health code")?,
        travel_code: label::<CodeColour>(db, row, 5, "travel code")?,
        updated_at: millis(row.try_get(6).map_err(&op)?),
    })
}

/// A row of [`GATE_COLUMNS`].
fn gate_from_row(db: &Db, row: &Row) -> Result<GateInfo, StoreError> {
    let op = pg("loading the registry");
    Ok(GateInfo {
        gate: GateId(u32_of(db, row.try_get(0).map_err(&op)?, "gate")?),
        market: MarketId(u32_of(db, row.try_get(1).map_err(&op)?, "market")?),
        zone: ZoneId(u32_of(db, row.try_get(2).map_err(&op)?, "zone")?),
        name: row.try_get(3).map_err(&op)?,
    })
}

fn label<T: Named>(db: &Db, row: &Row, idx: usize, what: &str) -> Result<T, StoreError> {
    let s: String = row.try_get(idx).map_err(pg("loading the registry"))?;
    T::from_label(&s).ok_or_else(|| db.corrupt(format!("unknown {what} {s:?}")))
}

fn id_list<T>(
    db: &Db,
    row: &Row,
    idx: usize,
    what: &str,
    wrap: fn(u32) -> T,
) -> Result<Vec<T>, StoreError> {
    let s: String = row.try_get(idx).map_err(pg("loading the registry"))?;
    let ids: Vec<u32> =
        serde_json::from_str(&s).map_err(|e| db.corrupt(format!("{what} {s:?}: {e}")))?;
    Ok(ids.into_iter().map(wrap).collect())
}

/// A u32 id stored widened to BIGINT.
fn u32_of(db: &Db, v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| db.corrupt(format!("{what} id {v} is out of range")))
}

/// A one-byte wire code as a SMALLINT.
fn code(c: u8) -> i16 {
    i16::from(c)
}

fn millis(t: i64) -> UnixMillis {
    UnixMillis(t.max(0) as u64)
}

fn failed_checks(checks: &[Check]) -> Vec<gatewarden_protocol::CheckKind> {
    checks
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| c.kind)
        .collect()
}

/// A row selected with [`ENTRY_COLUMNS`]: its indexed facts (with `failed` left empty) and its
/// decoded body; `form` resolves the body's dictionary ids.
fn decode_entry(
    db: &Db,
    row: &Row,
    form: impl FnMut(u32) -> Result<Form, record::DecodeError>,
) -> Result<(EntryRow, record::Body), StoreError> {
    let op = pg("reading an entry");
    let small = |idx: usize| -> Result<u8, StoreError> {
        let v: i16 = row.try_get(idx).map_err(&op)?;
        u8::try_from(v).map_err(|_| db.corrupt(format!("code {v} in column {idx}")))
    };
    let unknown = |what: &str, c: u8| db.corrupt(format!("unknown {what} code {c} in an entry"));
    let (d, m, dir) = (small(5)?, small(6)?, small(7)?);
    let entry = EntryRow {
        gate: GateId(u32_of(db, row.try_get(0).map_err(&op)?, "gate")?),
        seq: from_sql_u64(row.try_get(1).map_err(&op)?),
        market: MarketId(u32_of(db, row.try_get(2).map_err(&op)?, "market")?),
        zone: ZoneId(u32_of(db, row.try_get(3).map_err(&op)?, "zone")?),
        subject: row
            .try_get::<_, Option<i64>>(4)
            .map_err(&op)?
            .map(|s| SubjectId(from_sql_u64(s))),
        decision: Decision::from_code(d).ok_or_else(|| unknown("decision", d))?,
        mode: ModeKind::from_code(m).ok_or_else(|| unknown("mode", m))?,
        direction: Direction::from_code(dir).ok_or_else(|| unknown("direction", dir))?,
        score: row.try_get::<_, Option<f32>>(8).map_err(&op)?,
        captured_at: millis(row.try_get(9).map_err(&op)?),
        decided_at: millis(row.try_get(10).map_err(&op)?),
        failed: Vec::new(),
    };
    let body: &[u8] = row.try_get(11).map_err(&op)?;
    let body = record::decode_body(body, form).map_err(|e| {
        db.corrupt(format!(
            "the record of gate {} seq {} does not decode: {e}",
            entry.gate, entry.seq
        ))
    })?;
    Ok((entry, body))
}

struct Meeting {
    first: i64,
    last: i64,
    closest: u64,
    ids: HashSet<i64>,
}

//! The PostgreSQL schema and its versioned migrations.
//!
//! The logical schema is SQLite's (`store::schema`) with PostgreSQL's types: ids, codes and
//! times are `BIGINT` (u64 ids by bit pattern, as in SQLite; u32 ids widened), f32 scores are
//! `REAL` (exact), blobs are `BYTEA`. What differs is the entry log, which is one table
//! partitioned by UTC day instead of one SQLite file per day:
//!
//! - `entries` is `PARTITION BY RANGE (decided_at)`, one partition `entries_d<day>` per UTC day
//!   (`<day>` = days since 1970-01-01), made ahead by the maintenance thread (today and the
//!   next two days; making one locks the table for a moment, so not on the commit path), or by
//!   the entry writer when a day arrives without one; retention detaches and drops whole
//!   partitions;
//! - a unique constraint of a partitioned table must include its partition key, so `(gate,
//!   seq)` cannot be unique across days there. `entry_keys` is that key, in a table of its own
//!   (gate, seq, decided_at: no personal data): a record is inserted only if its key is new, in
//!   the same transaction, so a retried event can never get a second record, whichever node
//!   and whichever day it reaches;
//! - record bodies are the compact encoding of `history::record`, with one dictionary of forms
//!   (`entry_forms`) for the whole database instead of one per day file.
//!
//! Versioning: `meta` holds `schema_version` and `application = gatewarden`. `MIGRATIONS[i]`
//! takes version `i` to `i + 1` in one transaction; a database whose version is above
//! [`SCHEMA_VERSION`] is refused, and so is a database that has tables but is not a
//! gatewarden store. Concurrent starts of several nodes are serialised by an advisory lock.

use postgres::Client;

use super::Db;
use crate::store::StoreError;

/// The schema version this build writes and understands.
pub(super) const SCHEMA_VERSION: u32 = 3;

/// `pg_advisory_xact_lock` key held while migrating: "GWRD".
const MIGRATION_LOCK: i64 = 0x4757_5244;

/// Version 0 → 1: the whole schema of SQLite's version 4.
const V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE subjects (
    id          BIGINT PRIMARY KEY,
    category    TEXT NOT NULL,
    home_market BIGINT NOT NULL,
    markets     TEXT NOT NULL,   -- JSON array of market ids; [] means every market
    zones       TEXT NOT NULL,   -- JSON array of zone ids; [] means every zone
    valid_from  BIGINT,
    valid_until BIGINT,
    status      TEXT NOT NULL
);

-- kind 'id_card' or 'staff_qr_hmac': key = HMAC-SHA256(credential.key, ...), never the value.
CREATE TABLE credentials (
    kind    TEXT NOT NULL,
    key     BYTEA NOT NULL,
    subject BIGINT NOT NULL REFERENCES subjects(id),
    PRIMARY KEY (kind, key)
);
CREATE INDEX credentials_subject ON credentials(subject);

-- Identity ids are never reused, so the gallery's watermark stays meaningful.
CREATE TABLE templates (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject BIGINT NOT NULL REFERENCES subjects(id),
    model   TEXT NOT NULL,
    dim     INTEGER NOT NULL,
    vector  BYTEA NOT NULL    -- dim little-endian f32
);
CREATE INDEX templates_subject ON templates(subject);

CREATE TABLE health (
    subject       BIGINT PRIMARY KEY REFERENCES subjects(id),
    test_at       BIGINT,
    test_result   TEXT,
    vaccine_doses BIGINT NOT NULL,
    health_code   TEXT NOT NULL,
    travel_code   TEXT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE gates (
    id     BIGINT PRIMARY KEY,
    market BIGINT NOT NULL,
    zone   BIGINT NOT NULL,
    name   TEXT NOT NULL
);

CREATE TABLE revocations (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject BIGINT NOT NULL,
    reason  TEXT NOT NULL,
    at      BIGINT NOT NULL,
    action  TEXT NOT NULL DEFAULT 'revoke'
);

CREATE TABLE resolutions (
    gate         BIGINT NOT NULL,
    seq          BIGINT NOT NULL,
    subject      BIGINT,
    market       BIGINT NOT NULL,
    escalated_at BIGINT NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('admitted', 'turned_away')),
    resolved_by  TEXT NOT NULL,
    note         TEXT NOT NULL,
    resolved_at  BIGINT NOT NULL,
    PRIMARY KEY (gate, seq)
);
CREATE INDEX resolutions_market ON resolutions (market, escalated_at);
CREATE INDEX resolutions_subject ON resolutions (subject, escalated_at);

-- The forms of the compact record bodies (see store::history::record), for every day.
CREATE TABLE entry_forms (
    id    INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bytes BYTEA NOT NULL UNIQUE
);

-- The idempotency key of the entry log, unique across days and nodes.
CREATE TABLE entry_keys (
    gate       BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    decided_at BIGINT NOT NULL,
    PRIMARY KEY (gate, seq)
);
CREATE INDEX entry_keys_time ON entry_keys (decided_at);

-- One row per verdict; one partition per UTC day (entries_d<day>), made by the entry writer.
-- id orders the entries of one millisecond, as SQLite's rowid does.
CREATE SEQUENCE entries_id;
CREATE TABLE entries (
    id          BIGINT NOT NULL DEFAULT nextval('entries_id'),
    gate        BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    market      BIGINT NOT NULL,
    zone        BIGINT NOT NULL,
    subject     BIGINT,
    decision    SMALLINT NOT NULL,
    mode        SMALLINT NOT NULL,
    direction   SMALLINT NOT NULL,
    score       REAL,
    captured_at BIGINT NOT NULL,
    decided_at  BIGINT NOT NULL,
    body        BYTEA NOT NULL,
    fingerprint BYTEA
) PARTITION BY RANGE (decided_at);
CREATE INDEX entries_key ON entries (gate, seq);
CREATE INDEX entries_subject ON entries (subject, decided_at);
CREATE INDEX entries_market ON entries (market, decided_at);
CREATE INDEX entries_time ON entries (decided_at);
";

/// Version 1 → 2: market leases (issue 14; `store::pg::lease`, `cluster::lease`). One row per
/// market, made when a node first sees the market (in `gates` or a node's preferences). Times
/// are the database's own (`clock_timestamp()`): no node's clock decides who holds a market.
const V2: &str = "
CREATE TABLE market_leases (
    market      BIGINT PRIMARY KEY,
    holder      TEXT,                        -- the node's name; NULL: never held
    epoch       BIGINT NOT NULL DEFAULT 0,   -- +1 at every acquisition: the fencing token
    expires_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    acquired_at TIMESTAMPTZ
);
";

/// Version 2 → 3: the registry's change log for propagation between nodes (issue 14).
///
/// One row per registry write, in the writer's transaction: `kind` names what changed and
/// `key` which one (a subject id for `subject` and `health`, a gate id for `gate`, and for
/// `templates` the highest template id before the write, so that every template of the write
/// has a greater id). No personal data: ids only. `at` is the database's clock at the write,
/// for the followers' lag. Ids are assigned under the registry's write lock (see
/// `pg::changes`), so they commit in id order and a follower's `id > watermark` misses none.
const V3: &str = "
CREATE TABLE registry_changes (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('subject', 'health', 'gate', 'templates')),
    key  BIGINT NOT NULL,
    at   BIGINT NOT NULL
);
";

const MIGRATIONS: &[&str] = &[V1, V2, V3];

impl Db {
    /// Brings the schema up to [`SCHEMA_VERSION`], or refuses a database it cannot understand.
    pub(super) fn migrate(&self, client: &mut Client) -> Result<(), StoreError> {
        let mut tx = client
            .transaction()
            .map_err(self.pg("starting the schema check"))?;
        // Two nodes starting at once: the second waits here, then finds the schema made.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(self.pg("locking the schema"))?;
        let version = self.version_in(&mut tx)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Incompatible {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql)
                .map_err(self.pg("migrating the schema"))?;
            let to = (from + 1).to_string();
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&to],
            )
            .map_err(self.pg("recording the schema version"))?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('application', 'gatewarden')
                 ON CONFLICT (key) DO NOTHING",
                &[],
            )
            .map_err(self.pg("marking the store"))?;
        }
        tx.commit().map_err(self.pg("committing the schema"))
    }

    /// The schema version of the database: 0 for an empty one. A database with tables of its
    /// own but no gatewarden `meta` is refused rather than written into.
    pub(super) fn version_in(&self, tx: &mut postgres::Transaction<'_>) -> Result<u32, StoreError> {
        let has_meta: bool = tx
            .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])
            .and_then(|r| r.try_get(0))
            .map_err(self.pg("looking for the schema"))?;
        if !has_meta {
            let tables: i64 = tx
                .query_one(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()",
                    &[],
                )
                .and_then(|r| r.try_get(0))
                .map_err(self.pg("looking for the schema"))?;
            if tables > 0 {
                return Err(self.corrupt(format!(
                    "the database has {tables} tables but no gatewarden schema; give gatewarden \
                     a database of its own"
                )));
            }
            return Ok(0);
        }
        let rows = tx
            .query(
                "SELECT key, value FROM meta WHERE key IN ('schema_version', 'application')",
                &[],
            )
            .map_err(self.pg("reading the schema version"))?;
        let mut version = None;
        let mut application = None;
        for row in rows {
            let key: String = row
                .try_get(0)
                .map_err(self.pg("reading the schema version"))?;
            let value: String = row
                .try_get(1)
                .map_err(self.pg("reading the schema version"))?;
            match key.as_str() {
                "schema_version" => version = Some(value),
                _ => application = Some(value),
            }
        }
        if application.as_deref() != Some("gatewarden") {
            return Err(self.corrupt("the database's meta table is not gatewarden's".to_owned()));
        }
        let version = version.unwrap_or_default();
        version.parse::<u32>().map_err(|_| {
            self.corrupt(format!(
                "schema version {version:?} is not a version gatewarden ever wrote"
            ))
        })
    }
}

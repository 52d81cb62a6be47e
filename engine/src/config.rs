//! Typed configuration, read from `DATA/gatewarden.toml`. Every field has a sensible default,
//! so an empty file (or none) is a working configuration.
//!
//! ```toml
//! store = "sqlite"          # where the durable state lives: "sqlite" (DATA/store, the default)
//!                           # or a PostgreSQL URL, "postgres://user@host/db"
//!                           # (`gatewarden serve --store URL` overrides it)
//!
//! [engine]
//! dim = 512                 # embedding dimension of the face model
//! model = "demo-face-v1"    # face model id every embedding must come from
//! precision = "auto"        # gallery scan: "auto" (int8; binary from 100k rows), "int8", "binary", "f32"
//! utc_offset_minutes = 480  # the markets' local time (Beijing)
//! policy = "policy.toml"    # relative to the data folder; absent: the embedded demo policy
//! queue_capacity = 4096     # events waiting for a matcher; beyond it gates get Busy
//! workers = 0               # matcher threads; 0 = one per core but one (at least one)
//! max_batch = 64            # events per micro-batch
//! max_wait_ms = 2           # longest the first event waits for a batch to fill
//! deadline_ms = 40          # an event queued longer than this gets Busy, not a late verdict
//! commit_max = 256          # most records per group commit (and the hand-off bound)
//! busy_retry_ms = 50        # base retry hint in Busy replies
//! compact_after = 50000     # fold the in-memory gallery delta into a segment past this size
//! maintenance_interval_ms = 10000  # how often the maintenance thread looks for gallery work
//! checkpoint_interval_ms = 1000     # how often it checkpoints the entry log (never the writer)
//! counters_snapshot_ms = 10000      # SQLite store: how often it saves today's committed
//!                           # counters (store/counters.snap), so that a restart reads only
//!                           # the entries recorded since, not the whole day; 0 = never
//! credential_key = "store/credential.key"  # HMAC key of card/QR hashes and fingerprints;
//!                           # relative to the data folder; keep it apart from store backups
//! registry_poll_ms = 500    # PostgreSQL store: how often this node reads the registry's
//!                           # change log for other nodes' writes (the guarantee; 1..=60000)
//! registry_notify = true    # PostgreSQL store: also wake at once on their notifications
//!
//! [retention]
//! entry_days = 180          # days of entry records kept, today (UTC) included; older days
//!                           # are deleted as whole files, hourly and by `gatewarden store prune`
//!
//! [server]
//! listen = "127.0.0.1:4433"
//! certs = "certs"
//! max_streams_per_gate = 32
//! keep_alive_ms = 5000
//! idle_timeout_ms = 30000
//! stream_read_timeout_ms = 5000
//! udp_buffer_bytes = 4194304
//! shutdown_grace_ms = 5000
//! max_handshakes = 2048     # handshakes in progress at once; more are refused (the gate
//!                           # backs off and retries: a reconnect storm waits in the gates);
//!                           # from half that many on, new addresses get a QUIC Retry first
//! shed_below_requests = true  # while the engine sheds: Busy from the event header, and no
//!                           # stream credit for a refused gate during its pause
//!
//! [http]
//! enabled = true                # the admin HTTP API, /metrics and the market console
//! listen = "127.0.0.1:4480"     # loopback by default: the API serves personal data
//! token_file = "admin.token"    # bearer token, relative to the data folder; made if absent
//! allow_remote = false          # a non-loopback listen address is refused unless true
//!
//! [cluster]                     # absent: this node serves every market (one node)
//! node = "a"                    # which of the nodes below this one is
//! unowned_retry_ms = 5000       # a market no node serves: its gates retry after this long
//! [[cluster.nodes]]             # every node of the site (the same list on every node)
//! name = "a"
//! addresses = ["127.0.0.1:4433"]  # where its gates reach it, host:port, in order; sent to
//!                               # gates of its markets that connect to another node
//! markets = [1]                 # the markets it serves; a market belongs to one node
//!                               # (with [cluster.leases]: the markets it prefers)
//! # [cluster.leases]            # PostgreSQL store only: markets served by lease
//! # ttl_ms = 3000               # a lease lasts this long after its last renewal
//! # renew_ms = 1000             # renewal period, at most ttl_ms / 3
//! ```
//!
//! The admin API is plain HTTP: the bearer token and the personal data it guards cross the
//! network in clear. So `[http] listen` must be a loopback address (127.0.0.0/8, `::1`)
//! unless `allow_remote = true`, which says a TLS proxy in front of it does the encryption.
//!
//! `[cluster]` runs several nodes over one site: each market is served by the node whose
//! `markets` list it, and a gate of that market that connects to another node is sent there
//! (PROTOCOL.md, "Markets served elsewhere"; [`crate::cluster`]). A market listed by no node
//! is served by none: its gates are told to retry after `unowned_retry_ms`. `serve` rereads
//! the section on SIGHUP, which is how a market is moved by hand: reload the old owner first and the new one a
//! second later.
//!
//! `[cluster.leases]` (with `store = "postgres://..."`; on SQLite it is refused) serves each
//! market by a lease in the store instead of by the table: a node serves a market while it
//! holds the lease, takes its preferred markets when their leases are free, and takes any
//! market whose lease ran out `ttl_ms` ago (a dead node's), rebuilding its counters first
//! (`cluster::lease`, built with the `postgres` feature). The section is then read
//! once, at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::clock::UtcOffset;
use crate::gallery::Precision;

/// File name of the configuration inside a data folder.
pub const CONFIG_FILE: &str = "gatewarden.toml";

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the store lives; `None` is SQLite in the data folder. Its `Debug` never shows a
    /// password.
    #[serde(default)]
    pub store: Option<crate::store::StoreLocation>,
    /// Matching, policy and pipeline.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The QUIC front.
    #[serde(default)]
    pub server: ServerConfig,
    /// The admin HTTP API and console.
    #[serde(default)]
    pub http: HttpConfig,
    /// How long entry records are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Several nodes, each market served by one; absent: this node serves every market.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// How long personal data is kept. See the module docs.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetentionConfig {
    /// Days of entry records kept, today (UTC) included. At least 1.
    pub entry_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { entry_days: 180 }
    }
}

impl RetentionConfig {
    /// Retention keeping `entry_days` days.
    pub fn keeping(entry_days: u32) -> Self {
        Self { entry_days }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for zero days.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.entry_days == 0 {
            return Err(ConfigError::Invalid {
                field: "retention.entry_days",
                reason: "must be at least 1 (today's entries are always kept)".to_owned(),
            });
        }
        Ok(())
    }
}

/// Gallery scan precision as written in the file. 1:1 verification always uses the f32 rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    /// `int8` below [`crate::index::AUTO_BINARY_MIN_ROWS`] live templates, `binary` from there
    /// (decided per search, so the choice follows the registry as it grows).
    #[default]
    Auto,
    /// 1-bit code scan, then an exact re-rank of a shortlist: scores are exact, but a match
    /// outside the shortlist can be missed (never invented).
    Binary,
    /// Full-precision scan.
    F32,
    /// Quantized scan with exact re-rank: the same answers as `f32`.
    Int8,
}

impl From<PrecisionSetting> for Precision {
    fn from(p: PrecisionSetting) -> Self {
        match p {
            PrecisionSetting::Auto => Self::Auto,
            PrecisionSetting::Binary => Self::Binary,
            PrecisionSetting::F32 => Self::F32,
            PrecisionSetting::Int8 => Self::Int8,
        }
    }
}

/// The longest `counters_snapshot_ms`: a day (the counters are a day's).
pub(crate) const MAX_COUNTERS_SNAPSHOT_MS: u64 = 86_400_000;

/// Engine settings. See the module docs for each field's meaning and default.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // documented in the module-level example
pub struct EngineConfig {
    pub dim: usize,
    pub model: String,
    pub precision: PrecisionSetting,
    pub utc_offset_minutes: i32,
    pub policy: Option<PathBuf>,
    pub queue_capacity: usize,
    pub workers: usize,
    pub max_batch: usize,
    pub max_wait_ms: u64,
    pub deadline_ms: u64,
    /// Most records per group commit, and the bound of the hand-off to the committer. A sync
    /// that runs slow (the disk is busy with a checkpoint) is paid once by everything that
    /// arrived meanwhile: with 64 a slow sync capped the commit rate below 6,000 events a
    /// second and the queue stood; with 256 the same runs shed 15x less (issue 13 notes).
    pub commit_max: usize,
    pub busy_retry_ms: u32,
    pub compact_after: usize,
    pub maintenance_interval_ms: u64,
    pub checkpoint_interval_ms: u64,
    /// How often the maintenance thread saves today's committed counters (SQLite store;
    /// 0: never, and every start reads the whole day's entries).
    pub counters_snapshot_ms: u64,
    pub credential_key: Option<PathBuf>,
    pub registry_poll_ms: u64,
    pub registry_notify: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            dim: 512,
            model: "demo-face-v1".to_owned(),
            precision: PrecisionSetting::Auto,
            utc_offset_minutes: 480,
            policy: None,
            queue_capacity: 4096,
            workers: 0,
            max_batch: 64,
            max_wait_ms: 2,
            deadline_ms: 40,
            commit_max: 256,
            busy_retry_ms: 50,
            compact_after: 50_000,
            maintenance_interval_ms: 10_000,
            checkpoint_interval_ms: 1_000,
            counters_snapshot_ms: 10_000,
            credential_key: None,
            registry_poll_ms: 500,
            registry_notify: true,
        }
    }
}

impl EngineConfig {
    /// The markets' local time zone.
    pub fn utc_offset(&self) -> UtcOffset {
        UtcOffset(self.utc_offset_minutes)
    }

    /// Matcher threads to run: the configured count, or one per core but one.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            // One core is left to the network front and the committer: on two cores, two
            // matchers fighting the QUIC threads for the CPU decided no more events per second
            // than one, and their p99 was twice as long (issue 5 notes, overload runs).
            std::thread::available_parallelism()
                .map_or(1, usize::from)
                .saturating_sub(1)
                .max(1)
        }
    }

    /// Where the credential key is: `credential_key` (relative to the data folder), or the
    /// store's own folder.
    pub fn credential_key_path(&self, data_dir: &Path) -> PathBuf {
        match &self.credential_key {
            Some(path) => data_dir.join(path),
            None => data_dir.join("store").join(crate::store::KEY_FILE),
        }
    }

    /// The longest an event may wait in the queue.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.dim == 0 || self.dim > usize::from(u16::MAX) {
            return bad("engine.dim", format!("{} is not in 1..=65535", self.dim));
        }
        if self.model.is_empty() {
            return bad("engine.model", "must not be empty".to_owned());
        }
        if !(-840..=840).contains(&self.utc_offset_minutes) {
            return bad(
                "engine.utc_offset_minutes",
                format!("{} is not in -840..=840", self.utc_offset_minutes),
            );
        }
        if self.counters_snapshot_ms > MAX_COUNTERS_SNAPSHOT_MS {
            return bad(
                "engine.counters_snapshot_ms",
                format!(
                    "{} is more than a day ({MAX_COUNTERS_SNAPSHOT_MS}); 0 turns snapshots off",
                    self.counters_snapshot_ms
                ),
            );
        }
        if self.compact_after == 0
            || self.maintenance_interval_ms == 0
            || self.checkpoint_interval_ms == 0
        {
            return bad(
                "engine",
                "compact_after, maintenance_interval_ms and checkpoint_interval_ms must be at \
                 least 1"
                    .to_owned(),
            );
        }
        if !(1..=60_000).contains(&self.registry_poll_ms) {
            return bad(
                "engine.registry_poll_ms",
                format!("{} is not in 1..=60000", self.registry_poll_ms),
            );
        }
        if self.queue_capacity == 0 || self.max_batch == 0 || self.commit_max == 0 {
            return bad(
                "engine",
                "queue_capacity, max_batch and commit_max must be at least 1".to_owned(),
            );
        }
        Ok(())
    }
}

/// QUIC front settings. See the module docs for each field's meaning and default.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // documented in the module-level example
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub certs: PathBuf,
    pub max_streams_per_gate: u32,
    pub keep_alive_ms: u64,
    pub idle_timeout_ms: u64,
    pub stream_read_timeout_ms: u64,
    pub udp_buffer_bytes: usize,
    pub shutdown_grace_ms: u64,
    pub max_handshakes: usize,
    pub shed_below_requests: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            certs: PathBuf::from("certs"),
            max_streams_per_gate: 32,
            keep_alive_ms: 5_000,
            idle_timeout_ms: 30_000,
            stream_read_timeout_ms: 5_000,
            udp_buffer_bytes: 4 << 20,
            shutdown_grace_ms: 5_000,
            max_handshakes: 2048,
            shed_below_requests: true,
        }
    }
}

/// Admin HTTP API settings. See the module docs for each field's meaning and default.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // documented in the module-level example
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub token_file: PathBuf,
    pub allow_remote: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 4480)),
            token_file: PathBuf::from("admin.token"),
            allow_remote: false,
        }
    }
}

impl HttpConfig {
    /// Refuses a non-loopback `listen` address unless `allow_remote` is set. Call it again
    /// after overriding `listen` (as `serve --http ADDR` does).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `http.listen`, the address and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled || self.allow_remote || self.listen.ip().to_canonical().is_loopback() {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            field: "http.listen",
            reason: format!(
                "{} is not a loopback address; the admin API is plain HTTP; put a TLS proxy in \
                 front and set allow_remote = true in [http], or listen on 127.0.0.1",
                self.listen
            ),
        })
    }
}

/// The `[cluster]` section: this node's name and every node of the site. See the module docs.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// This node's name: one of `nodes`.
    pub node: String,
    /// The pause (ms) given to gates of a market that no node serves: 1..=60000.
    #[serde(default = "default_unowned_retry_ms")]
    pub unowned_retry_ms: u32,
    /// Every node of the site, this one included.
    pub nodes: Vec<NodeConfig>,
    /// Market leases in PostgreSQL: with them, each node's `markets` are the markets it
    /// prefers, and which node serves a market is decided by a lease instead of this table
    /// (`cluster::lease`). Absent: the table is the assignment.
    #[serde(default)]
    pub leases: Option<LeaseConfig>,
}

/// `[cluster.leases]`: how long a market's lease lasts and how often it is renewed.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// How long (ms) a lease lasts after its last renewal, by the database's clock: a dead
    /// node's markets are served again after about `ttl_ms` (its own markets' preferred
    /// node) or `2 * ttl_ms` (any other node). 300..=600000, above `[engine] deadline_ms`.
    pub ttl_ms: u32,
    /// How often (ms) the node renews its leases and looks for free markets; at most a
    /// third of `ttl_ms`, so that two renewals can fail before a lease runs out.
    pub renew_ms: u32,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 3_000,
            renew_ms: 1_000,
        }
    }
}

impl LeaseConfig {
    /// The lease's length.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_ms))
    }

    /// The renewal period.
    pub fn renew(&self) -> Duration {
        Duration::from_millis(u64::from(self.renew_ms))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(300..=600_000).contains(&self.ttl_ms) {
            return Err(ConfigError::Invalid {
                field: "cluster.leases.ttl_ms",
                reason: format!("{} is not in 300..=600000", self.ttl_ms),
            });
        }
        if self.renew_ms < 50 || self.renew_ms > self.ttl_ms / 3 {
            return Err(ConfigError::Invalid {
                field: "cluster.leases.renew_ms",
                reason: format!(
                    "{} is not in 50..={} (a third of ttl_ms, so that a lease survives two \
                     failed renewals)",
                    self.renew_ms,
                    self.ttl_ms / 3
                ),
            });
        }
        Ok(())
    }
}

/// One node of `[cluster]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Its name, unique in the cluster.
    pub name: String,
    /// Where its gates reach it: 1 to 8 addresses, `host:port` each (an IPv6 host in
    /// brackets), as a gate dials them and as its server certificate names the host.
    pub addresses: Vec<String>,
    /// The markets it serves; each market is listed by one node at most.
    #[serde(default)]
    pub markets: Vec<u32>,
}

fn default_unowned_retry_ms() -> u32 {
    5_000
}

impl ClusterConfig {
    /// Checks the section: node names unique and non-empty, this node among them, every
    /// node's addresses valid in a `Redirect` (so whatever this file says can be sent to a
    /// gate), each market served by one node at most, and the retry pause in 1..=60000 ms.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key and the value at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: String| Err(ConfigError::Invalid { field, reason });
        if !(1..=gatewarden_protocol::limits::MAX_RETRY_AFTER_MS).contains(&self.unowned_retry_ms) {
            return bad(
                "cluster.unowned_retry_ms",
                format!("{} is not in 1..=60000", self.unowned_retry_ms),
            );
        }
        let mut owner_of = std::collections::HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.name.is_empty() || node.name.len() > gatewarden_protocol::MAX_STRING_LEN {
                return bad(
                    "cluster.nodes.name",
                    format!(
                        "node {} has a name of {} bytes; use 1..=256",
                        i + 1,
                        node.name.len()
                    ),
                );
            }
            if self.nodes[..i].iter().any(|n| n.name == node.name) {
                return bad(
                    "cluster.nodes.name",
                    format!("{:?} names two nodes", node.name),
                );
            }
            if node.addresses.is_empty() {
                return bad(
                    "cluster.nodes.addresses",
                    format!(
                        "node {:?} has no address; its gates could not be sent to it",
                        node.name
                    ),
                );
            }
            // What a Redirect naming this node would carry must be a valid Redirect.
            let redirect = gatewarden_protocol::Redirect {
                market: gatewarden_protocol::MarketId(0),
                node: node.name.clone(),
                addresses: node.addresses.clone(),
                retry_after_ms: 0,
            };
            if let Err(e) = redirect.validate() {
                return bad(
                    "cluster.nodes.addresses",
                    format!(
                        "node {:?}: {e}; write host:port, e.g. \"10.0.0.2:4433\" or \"[fd00::2]:4433\", \
                         at most 8",
                        node.name
                    ),
                );
            }
            for market in &node.markets {
                if let Some(first) = owner_of.insert(*market, &node.name) {
                    return bad(
                        "cluster.nodes.markets",
                        format!(
                            "market {market} is listed by nodes {first:?} and {:?}; a market is \
                             served by one node at a time",
                            node.name
                        ),
                    );
                }
            }
        }
        if !self.nodes.iter().any(|n| n.name == self.node) {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            return bad(
                "cluster.node",
                format!(
                    "{:?} is not one of the nodes listed in [[cluster.nodes]] ({names:?})",
                    self.node
                ),
            );
        }
        match &self.leases {
            Some(leases) => leases.validate(),
            None => Ok(()),
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config value {field}: {reason}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl Config {
    /// Parses a configuration from TOML text; `origin` names it in errors.
    ///
    /// # Errors
    /// Syntax errors, unknown keys and out-of-range values.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section's values (also after command-line overrides).
    ///
    /// # Errors
    /// The first out-of-range value, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine.validate()?;
        self.retention.validate()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            if let Some(leases) = &cluster.leases {
                self.check_leases(leases)?;
            }
        }
        self.http.validate()
    }

    /// Leases live in the shared PostgreSQL store, and must outlast an event's queue wait.
    fn check_leases(&self, leases: &LeaseConfig) -> Result<(), ConfigError> {
        if !matches!(self.store, Some(crate::store::StoreLocation::Postgres(_))) {
            return Err(ConfigError::Invalid {
                field: "cluster.leases",
                reason: "market leases live in the PostgreSQL store that every node shares; set \
                         store = \"postgres://...\" in this file, or remove [cluster.leases] to \
                         assign markets by the [[cluster.nodes]] table"
                    .to_owned(),
            });
        }
        if u64::from(leases.ttl_ms) <= self.engine.deadline_ms {
            return Err(ConfigError::Invalid {
                field: "cluster.leases.ttl_ms",
                reason: format!(
                    "{} ms is not above [engine] deadline_ms ({} ms): an event admitted under a \
                     lease must be decided before the lease can pass to another node",
                    leases.ttl_ms, self.engine.deadline_ms
                ),
            });
        }
        Ok(())
    }

    /// Reads `DATA/gatewarden.toml`; a missing file gives the defaults.
    ///
    /// # Errors
    /// An unreadable or invalid file.
    pub fn load_from_data_dir(data: &Path) -> Result<Self, ConfigError> {
        let path = data.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_toml(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(c.engine.dim, 512);
        assert_eq!(c.server.listen.port(), 4433);
        assert!(c.http.enabled);
        assert_eq!(c.http.listen.port(), 4480);
        assert_eq!(c.http.token_file, PathBuf::from("admin.token"));
    }

    #[test]
    fn http_section_is_read_and_checked() {
        let c = Config::from_toml(
            "[http]\nenabled = false\nlisten = \"127.0.0.1:0\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(!c.http.enabled);
        assert_eq!(c.http.listen.port(), 0);
        let err = Config::from_toml("[http]\ntoken = \"x\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
    }

    #[test]
    fn remote_http_listen_needs_allow_remote() {
        for addr in [
            "0.0.0.0:4480",
            "192.168.1.5:4480",
            "[::]:4480",
            "[2001:db8::1]:80",
        ] {
            let text = format!("[http]\nlisten = \"{addr}\"\n");
            let err = Config::from_toml(&text, Path::new("x.toml")).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        field: "http.listen",
                        ..
                    }
                ),
                "{msg}"
            );
            assert!(
                msg.contains(addr.trim_start_matches('[').split(']').next().unwrap()),
                "{msg}"
            );
            assert!(
                msg.contains("the admin API is plain HTTP; put a TLS proxy in front and set allow_remote = true"),
                "{msg}"
            );
            let allowed = format!("{text}allow_remote = true\n");
            let c = Config::from_toml(&allowed, Path::new("x.toml")).unwrap();
            assert!(c.http.allow_remote);
            // A disabled API listens nowhere, so its address is not checked.
            let off = format!("{text}enabled = false\n");
            Config::from_toml(&off, Path::new("x.toml")).unwrap();
        }
        for addr in [
            "127.0.0.1:0",
            "127.1.2.3:4480",
            "[::1]:4480",
            "[::ffff:127.0.0.1]:4480",
        ] {
            let text = format!("[http]\nlisten = \"{addr}\"\n");
            let c = Config::from_toml(&text, Path::new("x.toml")).unwrap();
            assert!(!c.http.allow_remote);
        }
        // An override made after parsing is caught by validating again.
        let mut c = Config::default();
        c.http.listen = "10.0.0.1:4480".parse().unwrap();
        assert!(c.validate().is_err());
        c.http.allow_remote = true;
        c.validate().unwrap();
    }

    #[test]
    fn store_location_is_read_and_checked() {
        use crate::store::StoreLocation;
        assert_eq!(Config::default().store, None);
        let c = Config::from_toml("store = \"sqlite\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.store, Some(StoreLocation::Sqlite));
        let err = Config::from_toml("store = \"mysql://h/db\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
        if cfg!(feature = "postgres") {
            let c = Config::from_toml("store = \"postgres://gw@db/gw\"\n", Path::new("x.toml"))
                .unwrap();
            assert_eq!(
                c.store,
                Some(StoreLocation::Postgres("postgres://gw@db/gw".to_owned()))
            );
        }
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = Config::from_toml("[engine]\ndimm = 3\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("dimm"), "{err}");
    }

    #[test]
    fn out_of_range_value_is_refused() {
        let err = Config::from_toml("[engine]\ndim = 0\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("engine.dim"), "{err}");
    }

    #[test]
    fn registry_following_is_read_and_checked() {
        let c = Config::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(
            (c.engine.registry_poll_ms, c.engine.registry_notify),
            (500, true)
        );
        let c = Config::from_toml(
            "[engine]\nregistry_poll_ms = 200\nregistry_notify = false\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(
            (c.engine.registry_poll_ms, c.engine.registry_notify),
            (200, false)
        );
        for bad in ["0", "60001"] {
            let err = Config::from_toml(
                &format!("[engine]\nregistry_poll_ms = {bad}\n"),
                Path::new("x.toml"),
            )
            .unwrap_err();
            assert!(err.to_string().contains("engine.registry_poll_ms"), "{err}");
        }
    }

    #[test]
    fn cluster_section_is_read_and_checked() {
        let two = "[cluster]\nnode = \"b\"\n\
                   [[cluster.nodes]]\nname = \"a\"\naddresses = [\"10.0.0.1:4433\"]\nmarkets = [1]\n\
                   [[cluster.nodes]]\nname = \"b\"\naddresses = [\"[fd00::2]:4433\"]\nmarkets = [2, 3]\n";
        let c = Config::from_toml(two, Path::new("x.toml")).unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.node, "b");
        assert_eq!(cluster.unowned_retry_ms, 5_000);
        assert_eq!(cluster.nodes[1].markets, [2, 3]);
        assert!(
            Config::from_toml("", Path::new("x.toml"))
                .unwrap()
                .cluster
                .is_none()
        );
        for (bad, field) in [
            (two.replace("node = \"b\"", "node = \"c\""), "cluster.node"),
            (
                two.replace("markets = [2, 3]", "markets = [1]"),
                "cluster.nodes.markets",
            ),
            (
                two.replace("\"10.0.0.1:4433\"", "\"10.0.0.1\""),
                "cluster.nodes.addresses",
            ),
            (
                two.replace("[\"10.0.0.1:4433\"]", "[]"),
                "cluster.nodes.addresses",
            ),
            (
                two.replace("name = \"a\"", "name = \"b\""),
                "cluster.nodes.name",
            ),
            (
                two.replace("name = \"a\"", "name = \"\""),
                "cluster.nodes.name",
            ),
            (
                two.replace("node = \"b\"\n", "node = \"b\"\nunowned_retry_ms = 0\n"),
                "cluster.unowned_retry_ms",
            ),
        ] {
            let err = Config::from_toml(&bad, Path::new("x.toml")).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { field: f, .. } if *f == field),
                "{bad}: {err}"
            );
        }
        let err =
            Config::from_toml(&format!("{two}[cluster.extra]\n"), Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn leases_need_postgres_and_a_sane_renewal() {
        let one = "[cluster]\nnode = \"a\"\n[cluster.leases]\nttl_ms = 2000\nrenew_ms = 500\n\
                   [[cluster.nodes]]\nname = \"a\"\naddresses = [\"127.0.0.1:4433\"]\nmarkets = [1]\n";
        let on_pg = format!("store = \"postgres://gw@db/gw\"\n{one}");
        if cfg!(feature = "postgres") {
            let c = Config::from_toml(&on_pg, Path::new("x.toml")).unwrap();
            let leases = c.cluster.unwrap().leases.unwrap();
            assert_eq!((leases.ttl_ms, leases.renew_ms), (2000, 500));
            for (bad, field) in [
                (
                    on_pg.replace("renew_ms = 500", "renew_ms = 700"),
                    "cluster.leases.renew_ms",
                ),
                (
                    on_pg.replace("ttl_ms = 2000", "ttl_ms = 100"),
                    "cluster.leases.ttl_ms",
                ),
                (
                    on_pg.replace("[cluster]\n", "[engine]\ndeadline_ms = 3000\n[cluster]\n"),
                    "cluster.leases.ttl_ms",
                ),
            ] {
                let err = Config::from_toml(&bad, Path::new("x.toml")).unwrap_err();
                assert!(
                    matches!(&err, ConfigError::Invalid { field: f, .. } if *f == field),
                    "{bad}: {err}"
                );
            }
        }
        // On SQLite (the default) a lease has nowhere to live: a clear error, not a node that
        // silently serves alone.
        let err = Config::from_toml(one, Path::new("x.toml")).unwrap_err();
        assert!(
            matches!(
                &err,
                ConfigError::Invalid {
                    field: "cluster.leases",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("postgres://"), "{err}");
    }

    #[test]
    fn doc_example_parses() {
        let doc = include_str!("config.rs");
        let start = doc.find("//! ```toml").unwrap();
        let end = start + doc[start..].find("//! ```\n").unwrap();
        let text: String = doc[start..end]
            .lines()
            .skip(1)
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        Config::from_toml(&text, Path::new("doc.toml")).unwrap();
    }
}

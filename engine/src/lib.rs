//! gatewarden: the gate-event ingestion and face-matching engine.
//!
//! Gates stream events (a face embedding, maybe a credential, maybe a temperature); the
//! engine matches the face against a memory-mapped gallery, applies the market's policy,
//! writes a durable entry record and answers with a verdict and its reasons.
//!
//! ```text
//!  gate ─QUIC─► server (feature "server")          Engine::submit ◄─ your program
//!                    └────────────┬────────────────────┘
//!                                 ▼
//!        pipeline: bounded queue ─► matcher workers (micro-batches) ─► committer
//!                                     │  gallery + index: 1:N / 1:1      │ store: SQLite,
//!                                     │  policy: checks → Verdict        │ group commit
//!                                     ▼                                  ▼
//!                              reply released only after the record is durable
//! ```
//!
//! Modules:
//! - [`engine`]: the library API, [`Engine`]; the server and the command line (the
//!   `gatewarden-cli` package in `engine/cli`) use only this.
//! - [`config`]: typed configuration (`DATA/gatewarden.toml`) with defaults.
//! - [`cluster`]: which node serves which market ([`cluster::MarketDirectory`]): one node
//!   serving all, a static `[cluster]` table, later a lease in PostgreSQL.
//! - [`clock`]: the only reader of the system clock; calendar helpers.
//! - [`gallery`]: memory-mapped segment files, the in-memory delta, tombstones.
//! - [`index`]: SIMD kernels (runtime dispatch), exact top-k search, batched search.
//! - [`policy`]: pure decision logic: (event, match, person, health, state, now) → Verdict.
//! - [`store`]: SQLite registry, templates, health records and entry records.
//! - [`pipeline`]: submit, exactly-once (claims, high-water marks, fingerprints), queue,
//!   micro-batching, workers, group commit, stats.
//! - `maintenance`: the engine's background thread (gallery compaction).
//! - `follow` (feature `postgres`): the registry follower, which carries registry writes made
//!   at other nodes into this node's cache and gallery.
//! - [`calibrate`]: FPIR and FNIR of the thresholds at the live gallery size.
//! - [`whatif`]: policy replay over the recorded entries (read-only).
//! - [`model`]: small domain records shared across modules.
//! - [`site_lock`]: the exclusive lock every writer of a data folder takes.
//! - [`npy`]: NumPy `.npy` reading and writing for the tools.
//! - `server` (feature `server`, on by default): the QUIC front (quinn, rustls), mutual-TLS
//!   identity rules and development certificates. It only translates streams to
//!   [`Engine::submit`].
//! - `http` (feature `server`): the admin HTTP API, `/metrics`, the OpenAPI description and
//!   the market console, beside the QUIC front; it too uses only the [`Engine`] API.
//! - `testing` (feature `testing`): seeded generators for benches, fuzzing and tests.
//!
//! Invariants: nothing is acknowledged that is not on disk; every error or panic on the
//! decision path fails closed (Deny, recorded); no embedding ever reaches a log line.
#![deny(unsafe_code)]

pub mod calibrate;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod engine;
mod error;
#[cfg(feature = "postgres")]
mod follow;
pub mod gallery;
pub mod index;
mod maintenance;
pub mod model;
pub mod npy;
pub mod pipeline;
pub mod policy;
pub mod site_lock;
pub mod store;
pub mod whatif;

#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod server;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use config::Config;
pub use engine::{
    Engine, MAX_NOTE_CHARS, MAX_RESOLVER_CHARS, ResolveEscalation, Resolved, Submission,
};
pub use error::Error;
pub use pipeline::Reply;

//! Integration tests of the engine through its real parts: SQLite files, memory-mapped
//! galleries, the pipeline threads, QUIC over loopback with mutual TLS, and processes killed
//! with SIGKILL. One test binary (one link) with a module per area.

// Fixture helpers outside #[test] functions unwrap too: a broken fixture should stop the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_errors;
mod cdp;
mod cluster;
mod console;
mod crash;
mod engine_api;
mod enroll;
mod front;
mod http;
mod http_client;
mod leases;
mod policy;
mod postgres;
mod propagation;
mod quic;
mod server;
mod site;
mod spec_answers;
mod storms;
mod support;
mod whatif;

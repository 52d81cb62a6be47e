//! Integration tests of the engine through its real parts: SQLite files, memory-mapped
//! galleries, the pipeline threads, QUIC over loopback with mutual TLS, and processes killed
//! with SIGKILL. One test binary (one link) with a module per area.

mod crash;
mod engine_api;
mod quic;
mod server;
mod support;

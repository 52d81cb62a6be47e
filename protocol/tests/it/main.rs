//! Integration tests of gatewarden-protocol (one binary): golden fixtures and the spec.

// Test helpers outside #[test] fns are not covered by clippy.toml's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod golden;
mod samples;
mod spec;

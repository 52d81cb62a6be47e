//! Integration tests of gatewarden-protocol (one binary): golden fixtures and the spec.

mod golden;
mod samples;
mod spec;

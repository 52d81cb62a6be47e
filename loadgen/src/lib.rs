//! gatewarden-loadgen: a simulated fleet of gates over real QUIC, with ground truth.
//!
//! Two jobs, each usable as a library (the engine's `gatewarden demo` calls both) and from the
//! `gatewarden-loadgen` binary:
//!
//! - [`population`]: a seeded synthetic population (subjects in the five staff categories and
//!   the public, spread over markets; face templates; health records; credentials) written in
//!   the formats the engine's import tools read, plus the ground truth: for every person, what
//!   a correct engine running the demo policy must answer.
//! - [`run`]: N gates, each its own QUIC connection and client certificate, sending events on
//!   an open-loop schedule (constant, Poisson or a rush-hour curve). Latency is measured from
//!   each event's *intended* send time, so a slow server cannot hide its queueing (no
//!   coordinated omission). Every verdict is checked against the ground truth.
//!
//! Everything random comes from the engine's seeded generators (`gatewarden::testing`: the
//! `Rng` streams and `IndexedFaces`), so a population and a run's event sequence are
//! reproducible from their seeds; `templates.npy` is written by the engine's own `.npy` module,
//! and the files spell categories, statuses and colours with the protocol's wire names.
//!
//! Module map: `stream` (the random streams), [`population`] (the people and their files),
//! `truth` (the demo policy, mirrored), [`run`] (arrivals, QUIC client, bad input, report,
//! plot), [`history`] (past entries), [`strangers`] (never-enrolled faces, for calibration).
#![forbid(unsafe_code)]

pub mod history;
pub mod population;
pub mod propagation;
pub mod run;
pub mod strangers;

mod stream;
mod truth;

/// What `gatewarden demo` does, step by step with the two binaries (shown by
/// `gatewarden-loadgen --help`; the `gatewarden` command's tests parse each of its lines).
pub const BY_HAND: &str = "\
  gatewarden-loadgen population --subjects 100000 --out pop
  gatewarden init data && gatewarden cert --data data --gates 1000
  gatewarden import gates pop/gates.jsonl --data data
  gatewarden import subjects pop/subjects.jsonl --data data
  gatewarden import health pop/health.jsonl --data data
  gatewarden enroll --vectors pop/templates.npy --subjects pop/template_subjects.txt --data data
  gatewarden serve ...
  gatewarden-loadgen run --certs data/certs --population pop --rate 2000 --profile rush \\
      --duration 60s --json report.json --plot latency.svg";

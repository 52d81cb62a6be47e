//! The what-if endpoints and the scheduled FPIR estimate.
//!
//! - `POST /api/v1/policy/replay?from=DAY&to=DAY[&market=M][&examples=N]`, body: a policy
//!   file's text. Re-decides the recorded entries of those local days under it, reading the
//!   entry history read-only (the policy in force is untouched), and answers the
//!   [`ReplayReport`]. A policy with problems is refused (422) with every problem. One replay
//!   runs at a time; another request meanwhile is answered 503.
//! - `GET /api/v1/calibration`: the latest scheduled FPIR estimate at the live gallery size.
//! - `/metrics` adds `gatewarden_fpir_estimate` (and its interval, target and sample) to the
//!   engine's metrics.
//! - `/console/tools.js`: the console's replay and calibration views.
//!
//! **The schedule.** A thread of its own (never a worker, never the async runtime) samples
//! [`SAMPLE`] enrolled templates [`FIRST_AFTER`] after start and then every [`EVERY`], and
//! searches them leave-one-out with the engine's own search on one thread
//! ([`calibrate::estimate_fpir`]). It holds the engine weakly and stops with it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gatewarden_protocol::MarketId;
use serde::Serialize;

use super::{ApiError, HttpState, api};
use crate::Engine;
use crate::calibrate::{self, FpirEstimate};
use crate::clock::{self, Clock};
use crate::policy::{PolicyBook, PolicyError};
use crate::store::{EntryArchive, StoreError};
use crate::whatif::{self, ReplayRange, ReplayReport};

/// The FPIR the console and `/metrics` hold the estimate against (NIST FRVT's figure for
/// access control); `gatewarden calibrate --target-fpir` takes any other.
pub const TARGET_FPIR: f64 = 0.003;
/// Probes per scheduled estimate: a few seconds of one core at a million templates.
pub const SAMPLE: usize = 1000;
/// Delay of the first estimate after start. An estimate that falls due while the engine sheds
/// load (a restart's reconnect storm, a rush) waits [`BUSY_RETRY`] instead.
pub const FIRST_AFTER: Duration = Duration::from_secs(5);
/// How long an estimate waits when it falls due while the engine sheds load.
pub const BUSY_RETRY: Duration = Duration::from_secs(60);
/// Interval between estimates.
pub const EVERY: Duration = Duration::from_secs(3600);
/// The most days one replay request may span.
const MAX_DAYS: i64 = 31;

/// The scheduled estimate, shared by the estimating thread and the handlers, and the flag
/// that lets one replay run at a time.
#[derive(Default)]
pub struct Calibration {
    latest: Mutex<Option<FpirEstimate>>,
    stop: AtomicBool,
    replaying: AtomicBool,
}

/// The one replay allowed to run; the next may start when this is dropped (also on a
/// panic). A replay reads whole days of history on a core of its own, and two at once would
/// only halve each other's speed and double the read load on today's entry file.
struct ReplaySlot(Arc<Calibration>);

impl ReplaySlot {
    fn take(calibration: &Arc<Calibration>) -> Option<Self> {
        calibration
            .replaying
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| Self(Arc::clone(calibration)))
    }
}

impl Drop for ReplaySlot {
    fn drop(&mut self) {
        self.0.replaying.store(false, Ordering::Release);
    }
}

impl Calibration {
    /// Starts the estimating thread over `engine`; it ends when the engine or the returned
    /// handle is dropped.
    pub fn start(engine: &Arc<Engine>, clock: Arc<dyn Clock>) -> Arc<Self> {
        let me = Arc::new(Self::default());
        let (weak_engine, weak_me) = (Arc::downgrade(engine), Arc::downgrade(&me));
        let spawned = std::thread::Builder::new()
            .name("fpir-estimate".to_owned())
            .spawn(move || run_schedule(&weak_engine, &weak_me, clock.as_ref()));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the FPIR estimate; /metrics will lack it");
        }
        me
    }

    /// The latest estimate, if one was made.
    pub fn latest(&self) -> Option<FpirEstimate> {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Calibration {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sleeps until the next estimate is due, a second at a time so that it notices the end.
fn run_schedule(engine: &Weak<Engine>, me: &Weak<Calibration>, clock: &dyn Clock) {
    let mut wait = FIRST_AFTER;
    let mut seed = 1;
    loop {
        let mut slept = Duration::ZERO;
        while slept < wait {
            let step = Duration::from_secs(1).min(wait - slept);
            std::thread::sleep(step);
            slept += step;
            let alive = me
                .upgrade()
                .is_some_and(|m| !m.stop.load(Ordering::Relaxed));
            if !alive || engine.strong_count() == 0 {
                return;
            }
        }
        let (Some(engine), Some(me)) = (engine.upgrade(), me.upgrade()) else {
            return;
        };
        // Never compete with a rush the engine is already shedding: try again a bit later.
        if engine.is_shedding() {
            wait = BUSY_RETRY;
            continue;
        }
        let threshold = engine.policies().default_policy().identify_threshold();
        let snapshot = engine.gallery().snapshot();
        drop(engine);
        let estimate = calibrate::estimate_fpir(&snapshot, threshold, SAMPLE, seed, clock.now());
        tracing::info!(
            fpir = estimate.fpir,
            high = estimate.high,
            probes = estimate.probes,
            templates = estimate.gallery_size,
            "FPIR estimated at the live gallery size"
        );
        *me.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(estimate);
        seed += 1;
        wait = EVERY;
    }
}

/// `/metrics`: the engine's metrics, then the FPIR estimate.
pub(super) async fn metrics(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let base = api::metrics(State(state.clone())).await?;
    let body = axum::body::to_bytes(base.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot render the metrics: {e}")))?;
    let mut text = String::from_utf8_lossy(&body).into_owned();
    render_estimate(&mut text, state.0.calibration.latest());
    Ok(([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response())
}

fn render_estimate(out: &mut String, estimate: Option<FpirEstimate>) {
    let _ = writeln!(
        out,
        "# HELP gatewarden_fpir_target The FPIR the estimate is held against.\n\
         # TYPE gatewarden_fpir_target gauge\ngatewarden_fpir_target {TARGET_FPIR}"
    );
    let Some(e) = estimate else { return };
    let gauges = [
        (
            "gatewarden_fpir_estimate",
            "Estimated false-positive identification rate at the default identify threshold and the live gallery size (leave-one-out sample).",
            e.fpir,
        ),
        (
            "gatewarden_fpir_estimate_low",
            "Lower end of the estimate's 95% interval.",
            e.low,
        ),
        (
            "gatewarden_fpir_estimate_high",
            "Upper end of the estimate's 95% interval.",
            e.high,
        ),
        (
            "gatewarden_fpir_estimate_probes",
            "Probes behind the estimate.",
            e.probes as f64,
        ),
        (
            "gatewarden_fpir_estimate_threshold",
            "The identify threshold the estimate is for.",
            f64::from(e.threshold),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
}

/// What `GET /api/v1/calibration` answers.
#[derive(Serialize)]
pub(super) struct CalibrationView {
    target_fpir: f64,
    /// Whether the estimate's value is above the target.
    above_target: bool,
    estimate: Option<FpirEstimate>,
    every_s: u64,
}

pub(super) async fn calibration(State(state): State<HttpState>) -> Json<CalibrationView> {
    let estimate = state.0.calibration.latest();
    Json(CalibrationView {
        target_fpir: TARGET_FPIR,
        above_target: estimate.is_some_and(|e| e.fpir > TARGET_FPIR),
        estimate,
        every_s: EVERY.as_secs(),
    })
}

pub(super) async fn console_tools_js() -> Response {
    api::asset(
        "text/javascript; charset=utf-8",
        include_str!("console/tools.js"),
    )
}

/// The replay answer: the range asked for, then the report.
#[derive(Serialize)]
pub(super) struct ReplayView {
    from: String,
    to: String,
    market: Option<u32>,
    missing_days: Vec<String>,
    #[serde(flatten)]
    report: ReplayReport,
}

pub(super) async fn post_replay(
    State(state): State<HttpState>,
    q: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<ReplayView>, ApiError> {
    let q = q
        .map(|Query(m)| m)
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    let body = body.map_err(|e| ApiError::BadRequest(format!("cannot read the policy: {e}")))?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::BadRequest("the policy is not UTF-8 text".to_owned()))?;
    let request = ReplayRequest::parse(&q)?;
    let slot = ReplaySlot::take(&state.0.calibration).ok_or_else(|| {
        ApiError::Unavailable(
            "another policy replay is running; one runs at a time: try again when it ends"
                .to_owned(),
        )
    })?;
    let engine = Arc::clone(&state.0.engine);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        replay(&engine, &text, &request)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the replay task failed: {e}")))?
    .map(Json)
}

struct ReplayRequest {
    from: String,
    to: String,
    first: i64,
    last: i64,
    market: Option<u32>,
    examples: usize,
}

impl ReplayRequest {
    fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let bad = |m: String| ApiError::BadRequest(m);
        let day = |key: &str| -> Result<(String, i64), ApiError> {
            let s = q
                .get(key)
                .ok_or_else(|| bad(format!("`{key}` is required (YYYY-MM-DD)")))?;
            let d = clock::parse_day(s)
                .map_err(|_| bad(format!("bad `{key}` {s:?}: expected YYYY-MM-DD")))?;
            Ok((s.clone(), d))
        };
        let ((from, first), (to, last)) = (day("from")?, day("to")?);
        if first > last || last - first >= MAX_DAYS {
            return Err(bad(format!(
                "`from` {from} to `to` {to} must be in order and span at most {MAX_DAYS} days"
            )));
        }
        let number = |key: &str| -> Result<Option<u64>, ApiError> {
            q.get(key)
                .map(|v| v.parse().map_err(|_| bad(format!("bad `{key}` {v:?}"))))
                .transpose()
        };
        let market = number("market")?
            .map(|m| u32::try_from(m).map_err(|_| bad(format!("bad `market` {m}"))))
            .transpose()?;
        let examples = number("examples")?.map_or(10, |n| n.min(100) as usize);
        Ok(Self {
            from,
            to,
            first,
            last,
            market,
            examples,
        })
    }
}

fn replay(engine: &Engine, text: &str, r: &ReplayRequest) -> Result<ReplayView, ApiError> {
    let book = PolicyBook::from_toml(text, "policy.toml").map_err(|e| match e {
        PolicyError::Invalid { problems } => ApiError::PolicyRefused {
            problems,
            kept: engine.policy_version().to_string(),
        },
        other => ApiError::BadRequest(other.to_string()),
    })?;
    let offset = engine.config().utc_offset();
    let archive = EntryArchive::of_store(engine.store()).map_err(|e| match e {
        StoreError::Unsupported { .. } => ApiError::BadRequest(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    })?;
    let missing: Vec<String> = whatif::missing_days(&archive, offset, r.first, r.last)
        .into_iter()
        .map(clock::format_day)
        .collect();
    if missing.len() as i64 == r.last - r.first + 1 {
        return Err(ApiError::NotFound(format!(
            "no entries recorded between {} and {}",
            r.from, r.to
        )));
    }
    let range = ReplayRange {
        since: offset.day_start(r.first),
        until: offset.day_start(r.last + 1),
        market: r.market.map(MarketId),
        examples: r.examples,
    };
    let report = whatif::replay(&archive, &book, offset, &range, |_| {})
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ReplayView {
        from: r.from.clone(),
        to: r.to.clone(),
        market: r.market,
        missing_days: missing,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_replay_at_a_time_and_the_slot_frees_on_drop_or_panic() {
        let calibration = Arc::new(Calibration::default());
        let first = ReplaySlot::take(&calibration).unwrap();
        assert!(ReplaySlot::take(&calibration).is_none());
        drop(first);
        let second = ReplaySlot::take(&calibration).unwrap();
        let panicked = std::thread::spawn(move || {
            let _held = second;
            panic!("a replay that fails");
        })
        .join();
        assert!(panicked.is_err());
        assert!(ReplaySlot::take(&calibration).is_some());
    }
}

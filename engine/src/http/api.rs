//! The request handlers. Each parses and checks its parameters, then does its engine work on
//! a blocking thread.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{Method as HttpMethod, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use gatewarden_protocol::{
    EnrollAck, GateId, HealthRecord, MarketId, Revoke, RevokeAck, SubjectId, SubjectRecord,
    UnixMillis, UpdateHealth, UpdateHealthAck,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::params::{DAY_MS, MAX_LIMIT, MAX_WINDOW_S, Params, TimeRange, day_text, path_id};
use super::{HttpState, MAX_BODY_BYTES, OPENAPI_JSON, metrics, views};
use crate::engine::PolicyReload;
use crate::pipeline::StatsSnapshot;
use crate::policy::PolicyError;
use crate::server::ServerStatsSnapshot;
use crate::store::import::{ImportFormat, ImportRecord, read_all};
use crate::store::{
    ContactRow, EntryRow, EscalationState, FrequencyRow, Resolution, ResolvedAs, SignInRow,
};
use crate::{Engine, ResolveEscalation, Resolved};

type Query_ = Result<Query<HashMap<String, String>>, QueryRejection>;
type Body = Result<Bytes, BytesRejection>;
type ApiResult<T> = Result<Json<T>, ApiError>;

/// How far back the verdict list looks by default.
const VERDICT_DAYS: u64 = 7;

/// Runs engine work on a blocking thread.
async fn blocking<T, F>(state: &HttpState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Engine) -> Result<T, ApiError> + Send + 'static,
{
    let engine = Arc::clone(&state.0.engine);
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| ApiError::Internal(format!("the request's worker task failed: {e}")))?
}

fn query(q: Query_) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(m)| m)
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {}", e.body_text())))
}

fn body(b: Body) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            }
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {}", e.body_text()))
        }
    })
}

fn json_body<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a valid {what}: {e}")))
}

fn subject_id(text: &str) -> Result<SubjectId, ApiError> {
    path_id("subject", text).map(SubjectId)
}

fn market_id(text: &str) -> Result<MarketId, ApiError> {
    path_id("market", text).map(MarketId)
}

fn unknown_subject(id: SubjectId) -> ApiError {
    ApiError::NotFound(format!(
        "subject {id} is not in the registry; check the id or import the subject first"
    ))
}

fn require_subject(engine: &Engine, id: SubjectId) -> Result<(), ApiError> {
    match engine.store().subject(id) {
        Some(_) => Ok(()),
        None => Err(unknown_subject(id)),
    }
}

/// Today's local day, the default time range.
fn today(state: &HttpState) -> (UnixMillis, UnixMillis) {
    state.0.engine.config().utc_offset().day_bounds(state.now())
}

// ---- open routes ----

/// The console loads only its own script and style sheet and builds its SVG through the DOM,
/// so nothing inline or foreign is needed; no other site may frame it (clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; frame-ancestors 'none'";

pub(super) fn asset(content_type: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        text,
    )
        .into_response()
}

pub(super) async fn console_index() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    )
}

pub(super) async fn console_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("console/app.js"),
    )
}

pub(super) async fn console_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("console/style.css"))
}

pub(super) async fn openapi() -> Response {
    asset("application/json", OPENAPI_JSON)
}

#[derive(Serialize)]
pub(super) struct Health {
    status: &'static str,
}

pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

pub(super) async fn metrics(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let server = state.0.server.snapshot();
    let stats = blocking(&state, |e| Ok(e.stats())).await?;
    Ok((
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&stats, &server),
    )
        .into_response())
}

pub(super) async fn not_found(method: HttpMethod, uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route {method} {}; see /api/v1/openapi.json for the routes",
        uri.path()
    ))
}

// ---- reads ----

#[derive(Serialize)]
pub(super) struct StatsResponse {
    now_ms: UnixMillis,
    uptime_s: f64,
    utc_offset_minutes: i32,
    engine: StatsSnapshot,
    server: ServerStatsSnapshot,
}

pub(super) async fn stats(State(state): State<HttpState>) -> ApiResult<StatsResponse> {
    let engine = blocking(&state, |e| Ok(e.stats())).await?;
    let now = state.now();
    Ok(Json(StatsResponse {
        now_ms: now,
        uptime_s: now.0.saturating_sub(state.0.started.0) as f64 / 1000.0,
        utc_offset_minutes: state.0.engine.config().utc_offset_minutes,
        engine,
        server: state.0.server.snapshot(),
    }))
}

#[derive(Serialize)]
pub(super) struct StatsHistory {
    interval_ms: u64,
    samples: Vec<super::recent::Sample>,
}

/// The last five minutes of rates, one sample a second, oldest first.
pub(super) async fn stats_history(State(state): State<HttpState>) -> ApiResult<StatsHistory> {
    Ok(Json(StatsHistory {
        interval_ms: super::recent::INTERVAL_MS,
        samples: state.0.recent.samples(),
    }))
}

pub(super) async fn markets(State(state): State<HttpState>) -> ApiResult<Vec<views::MarketView>> {
    let gates = blocking(&state, |e| Ok(e.store().gates())).await?;
    Ok(Json(views::markets(&gates)))
}

pub(super) async fn subject(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<views::SubjectResponse> {
    let id = subject_id(&id)?;
    Params::new(&query(q)?, &[])?;
    let found = blocking(&state, move |e| {
        let record = e.store().subject(id).ok_or_else(|| unknown_subject(id))?;
        Ok(views::SubjectResponse {
            subject: views::SubjectView::from(record.as_ref()),
            health: e.store().health(id).as_ref().map(views::HealthView::from),
        })
    })
    .await?;
    Ok(Json(found))
}

/// The time range of a query (`since`/`until` or `day`; default: today), allowing the
/// route's `extra` parameters besides.
fn day_range(
    state: &HttpState,
    q: &HashMap<String, String>,
    extra: &[&str],
) -> Result<TimeRange, ApiError> {
    let mut allowed = vec!["since", "until", "day"];
    allowed.extend_from_slice(extra);
    Params::new(q, &allowed)?.range(state.0.engine.config().utc_offset(), today(state), DAY_MS)
}

/// A subject route's id and time range (default: today).
fn subject_range(
    state: &HttpState,
    id: &str,
    q: &HashMap<String, String>,
    extra: &[&str],
) -> Result<(SubjectId, TimeRange), ApiError> {
    Ok((subject_id(id)?, day_range(state, q, extra)?))
}

pub(super) async fn trajectory(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<Vec<EntryRow>> {
    let (id, r) = subject_range(&state, &id, &query(q)?, &[])?;
    let rows = blocking(&state, move |e| {
        require_subject(e, id)?;
        Ok(e.trajectory(id, r.since, r.until)?)
    })
    .await?;
    Ok(Json(rows))
}

pub(super) async fn verdicts(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<Vec<views::VerdictView>> {
    let id = subject_id(&id)?;
    let q = query(q)?;
    let p = Params::new(&q, &["since", "until", "day", "limit"])?;
    let now = state.now();
    // Until a minute ahead: a verdict decided while this request runs is still listed.
    let default = (
        UnixMillis(now.0.saturating_sub(VERDICT_DAYS * DAY_MS)),
        UnixMillis(now.0.saturating_add(60_000)),
    );
    let r = p.range(
        state.0.engine.config().utc_offset(),
        default,
        VERDICT_DAYS * DAY_MS,
    )?;
    let limit = p.number("limit", 20, 1..=MAX_LIMIT as u64)? as usize;
    let found = blocking(&state, move |e| {
        require_subject(e, id)?;
        let rows = e.trajectory(id, r.since, r.until)?;
        let mut out = Vec::with_capacity(limit.min(rows.len()));
        for row in rows.into_iter().rev().take(limit) {
            let recorded = e.store().recorded_entry(row.gate, row.seq)?;
            out.push(views::VerdictView::new(row, recorded.as_ref()));
        }
        Ok(out)
    })
    .await?;
    Ok(Json(found))
}

pub(super) async fn subject_frequency(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<views::SubjectFrequency> {
    let (id, r) = subject_range(&state, &id, &query(q)?, &[])?;
    let found = blocking(&state, move |e| {
        require_subject(e, id)?;
        let rows = e.trajectory(id, r.since, r.until)?;
        Ok(views::subject_frequency(id, &rows))
    })
    .await?;
    Ok(Json(found))
}

/// How staff resolved the person's escalations (default: today).
pub(super) async fn resolutions(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<Vec<Resolution>> {
    let (id, r) = subject_range(&state, &id, &query(q)?, &[])?;
    let rows = blocking(&state, move |e| {
        require_subject(e, id)?;
        Ok(e.resolutions_of(id, r.since, r.until)?)
    })
    .await?;
    Ok(Json(rows))
}

pub(super) async fn contacts(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<Vec<ContactRow>> {
    let q = query(q)?;
    let (id, r) = subject_range(&state, &id, &q, &["window_s"])?;
    let window_s = Params::new(&q, &["since", "until", "day", "window_s"])?.number(
        "window_s",
        600,
        1..=MAX_WINDOW_S,
    )?;
    let rows = blocking(&state, move |e| {
        require_subject(e, id)?;
        Ok(e.contacts(id, window_s * 1000, r.since, r.until)?)
    })
    .await?;
    Ok(Json(rows))
}

/// A market route's id and time range (default: today).
fn market_range(
    state: &HttpState,
    id: &str,
    q: &HashMap<String, String>,
    extra: &[&str],
) -> Result<(MarketId, TimeRange), ApiError> {
    Ok((market_id(id)?, day_range(state, q, extra)?))
}

pub(super) async fn market_frequency(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<Vec<FrequencyRow>> {
    let q = query(q)?;
    let (id, r) = market_range(&state, &id, &q, &["min"])?;
    let min = Params::new(&q, &["since", "until", "day", "min"])?.number(
        "min",
        1,
        1..=u64::from(u32::MAX),
    )?;
    let min = u32::try_from(min).unwrap_or(u32::MAX);
    let rows = blocking(&state, move |e| Ok(e.frequency(id, r.since, r.until, min)?)).await?;
    Ok(Json(rows))
}

pub(super) async fn signins(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<Vec<SignInRow>> {
    let (id, r) = market_range(&state, &id, &query(q)?, &[])?;
    let rows = blocking(&state, move |e| Ok(e.signins(id, r.since, r.until)?)).await?;
    Ok(Json(rows))
}

pub(super) async fn hall(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<views::Hall> {
    let market = market_id(&id)?;
    let q = query(q)?;
    let offset = state.0.engine.config().utc_offset();
    let day = Params::new(&q, &["day"])?.day(offset, state.now())?;
    let bounds = (offset.day_start(day), offset.day_start(day + 1));
    let hall = blocking(&state, move |e| {
        let store = e.store();
        let staff: Vec<_> = store
            .market_staff(market)
            .into_iter()
            .filter(|r| views::on_staff(r, bounds))
            .map(|r| {
                let health = store.health(r.subject);
                (r, health)
            })
            .collect();
        let signins = e.signins(market, bounds.0, bounds.1)?;
        Ok(views::hall(market, day_text(day), bounds, &staff, &signins))
    })
    .await?;
    Ok(Json(hall))
}

/// A market's escalations (default: today), newest first: open, resolved or all (`state`).
pub(super) async fn escalations(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    q: Query_,
) -> ApiResult<Vec<views::EscalationView>> {
    let q = query(q)?;
    let (id, r) = market_range(&state, &id, &q, &["limit", "state"])?;
    let limit = Params::new(&q, &["since", "until", "day", "limit", "state"])?.number(
        "limit",
        MAX_LIMIT as u64,
        1..=MAX_LIMIT as u64,
    )? as usize;
    let wanted = match q.get("state").map(String::as_str) {
        None | Some("all") => EscalationState::Any,
        Some("open") => EscalationState::Open,
        Some("resolved") => EscalationState::Resolved,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "state {other:?} is not \"open\", \"resolved\" or \"all\""
            )));
        }
    };
    let rows = blocking(&state, move |e| {
        Ok(e.escalations(id, r.since, r.until, wanted, limit)?)
    })
    .await?;
    Ok(Json(
        rows.into_iter().map(views::EscalationView::new).collect(),
    ))
}

// ---- writes ----

/// A JSON array of import-format objects, parsed by the importer itself. Any bad element
/// refuses the whole body.
fn import_rows<T: ImportRecord>(bytes: &[u8]) -> Result<Vec<T>, ApiError> {
    let value: serde_json::Value = json_body(bytes, &format!("JSON array of {} objects", T::NAME))?;
    let serde_json::Value::Array(items) = value else {
        return Err(ApiError::BadRequest(format!(
            "the body must be a JSON array of {} objects (the JSON Lines import format)",
            T::NAME
        )));
    };
    // One compact object per line: element i is line i + 1 of a JSON Lines file.
    let mut lines = String::with_capacity(bytes.len() + items.len());
    for item in &items {
        lines.push_str(&item.to_string());
        lines.push('\n');
    }
    let parsed = read_all::<T, _>(lines.as_bytes(), ImportFormat::JsonLines, |_, _| {})
        .map_err(|e| ApiError::Internal(format!("cannot parse the body: {e}")))?;
    if let Some(first) = parsed.errors.first() {
        return Err(ApiError::BadRequest(format!(
            "{} at index {}: {}; {} of {} elements are bad, nothing was applied",
            T::NAME,
            first.line.saturating_sub(1),
            first.reason,
            parsed.bad_rows,
            items.len()
        )));
    }
    Ok(parsed.records)
}

/// Refuses an upload that would lift a revocation or a blocklisting (the store's rule),
/// naming the element. Checked before anything is written, so a refused element refuses the
/// whole body.
fn refuse_reinstatement(engine: &Engine, records: &[SubjectRecord]) -> Result<(), ApiError> {
    match engine.store().find_status_lift(records) {
        None => Ok(()),
        Some((i, error)) => Err(ApiError::Conflict(format!("subject at index {i}: {error}"))),
    }
}

#[derive(Serialize)]
pub(super) struct Upserted {
    upserted: usize,
}

pub(super) async fn post_subjects(State(state): State<HttpState>, b: Body) -> ApiResult<Upserted> {
    let bytes = body(b)?;
    let done = blocking(&state, move |e| {
        let records = import_rows::<SubjectRecord>(&bytes)?;
        refuse_reinstatement(e, &records)?;
        Ok(e.store().upsert_subjects(&records)?)
    })
    .await?;
    Ok(Json(Upserted { upserted: done }))
}

pub(super) async fn post_health(
    State(state): State<HttpState>,
    b: Body,
) -> ApiResult<UpdateHealthAck> {
    let bytes = body(b)?;
    let ack = blocking(&state, move |e| {
        let records = import_rows::<HealthRecord>(&bytes)?;
        Ok(e.update_health(&UpdateHealth { records })?)
    })
    .await?;
    Ok(Json(ack))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplatesBody {
    model: String,
    embeddings: Vec<Vec<f32>>,
}

pub(super) async fn post_templates(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    b: Body,
) -> ApiResult<EnrollAck> {
    let id = subject_id(&id)?;
    let bytes = body(b)?;
    let ack = blocking(&state, move |e| {
        let request: TemplatesBody =
            json_body(&bytes, "templates object {\"model\", \"embeddings\"}")?;
        require_subject(e, id)?;
        if request.model != e.config().model {
            return Err(ApiError::BadRequest(format!(
                "model {:?} is not the gallery's model {:?}",
                request.model,
                e.config().model
            )));
        }
        if request.embeddings.is_empty() {
            return Err(ApiError::BadRequest(
                "embeddings is empty: send at least one template".to_owned(),
            ));
        }
        let rows: Vec<(SubjectId, &[f32])> = request
            .embeddings
            .iter()
            .map(|v| (id, v.as_slice()))
            .collect();
        let report = e.enroll_templates(&rows, Some(&e.gallery().snapshot()))?;
        Ok(EnrollAck {
            subject: id,
            templates_added: u32::try_from(report.added).unwrap_or(u32::MAX),
            duplicate_of: report.duplicates.first().map(|d| d.existing),
        })
    })
    .await?;
    Ok(Json(ack))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: String,
}

/// The body of a status change (`revoke`, `reinstate`): a reason for the audit trail, not
/// blank, within the wire protocol's limits.
fn audit_request(subject: SubjectId, b: Body, action: &str) -> Result<Revoke, ApiError> {
    let what = format!("{action} object {{\"reason\"}}");
    let request: RevokeBody = json_body(&body(b)?, &what)?;
    if request.reason.trim().is_empty() {
        return Err(ApiError::BadRequest(format!(
            "reason is empty: say why the subject is {action}d, for the audit trail"
        )));
    }
    let request = Revoke {
        subject,
        reason: request.reason,
    };
    request
        .validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(request)
}

pub(super) async fn post_revoke(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    b: Body,
) -> ApiResult<RevokeAck> {
    let request = audit_request(subject_id(&id)?, b, "revoke")?;
    let ack = blocking(&state, move |e| Ok(e.revoke(&request)?)).await?;
    Ok(Json(ack))
}

#[derive(Serialize)]
pub(super) struct ReinstateAck {
    subject: SubjectId,
    /// The status before; `active` means nothing changed.
    was: &'static str,
}

/// Lifts a revocation or blocklisting, with a reason for the audit trail.
pub(super) async fn post_reinstate(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    b: Body,
) -> ApiResult<ReinstateAck> {
    let id = subject_id(&id)?;
    let request = audit_request(id, b, "reinstate")?;
    let was = blocking(&state, move |e| Ok(e.reinstate(id, &request.reason)?)).await?;
    let was = was.ok_or_else(|| ApiError::NotFound(format!("no subject {id}")))?;
    Ok(Json(ReinstateAck {
        subject: id,
        was: was.name(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    outcome: String,
    by: String,
    #[serde(default)]
    note: String,
}

/// Records how staff resolved an escalation: once; a second resolution is a conflict that
/// names the first.
pub(super) async fn post_resolve(
    State(state): State<HttpState>,
    Path((gate, seq)): Path<(String, String)>,
    b: Body,
) -> ApiResult<Resolution> {
    let gate = GateId(path_id("gate", &gate)?);
    let seq: u64 = path_id("seq", &seq)?;
    let body: ResolveBody = json_body(
        &body(b)?,
        "resolution object {\"outcome\": \"admitted\" | \"turned_away\", \"by\", \"note\"}",
    )?;
    let outcome = ResolvedAs::from_name(&body.outcome).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "outcome {:?} is not \"admitted\" or \"turned_away\"",
            body.outcome
        ))
    })?;
    let request = ResolveEscalation {
        gate,
        seq,
        outcome,
        by: body.by,
        note: body.note,
    };
    let done = blocking(&state, move |e| Ok(e.resolve_escalation(&request)?)).await?;
    match done {
        Resolved::Recorded(r) => Ok(Json(r)),
        Resolved::AlreadyResolved(first) => Err(ApiError::Conflict(format!(
            "gate {gate} seq {seq} was already resolved as {} by {} at {} ms; a resolution is \
             never changed",
            first.outcome.name(),
            first.by,
            first.at.0
        ))),
        Resolved::NoSuchEntry => Err(ApiError::NotFound(format!(
            "nothing is recorded for gate {gate} seq {seq}"
        ))),
        Resolved::NotEscalated(d) => Err(ApiError::Conflict(format!(
            "gate {gate} seq {seq} was not escalated (its verdict was {}): only escalations \
             are resolved by staff",
            d.name()
        ))),
    }
}

#[derive(Serialize)]
pub(super) struct PolicyView {
    /// The version in force.
    version: String,
    /// What it does, in plain words (as `gatewarden policy check` prints it).
    summary: String,
}

/// The policy in force.
pub(super) async fn policy(State(state): State<HttpState>) -> ApiResult<PolicyView> {
    let view = blocking(&state, |e| {
        let (version, summary) = e.policy_summary();
        Ok(PolicyView {
            version: version.to_string(),
            summary,
        })
    })
    .await?;
    Ok(Json(view))
}

/// Rereads the policy file: the new version on success; a refused file changes nothing and
/// the answer lists every problem.
pub(super) async fn post_policy_reload(
    State(state): State<HttpState>,
    b: Body,
) -> ApiResult<PolicyReload> {
    let bytes = body(b)?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "a reload takes no body: the server rereads its configured policy file".to_owned(),
        ));
    }
    let done = blocking(&state, |e| {
        e.reload_policy().map_err(|error| match error {
            PolicyError::Invalid { problems } => ApiError::PolicyRefused {
                problems,
                kept: e.policy_version().to_string(),
            },
            PolicyError::Incomplete { .. } => ApiError::Internal(error.to_string()),
            // No file configured, or one the server cannot read or will not trust: the
            // server's state, not the request, is what needs fixing.
            other => ApiError::Conflict(other.to_string()),
        })
    })
    .await?;
    Ok(Json(done))
}

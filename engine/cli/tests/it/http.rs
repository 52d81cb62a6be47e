//! The admin HTTP API over a real socket: a populated engine with recorded verdicts, the
//! server from `gatewarden::http::serve` on 127.0.0.1:0, and requests from a plain TCP client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use gatewarden::Engine;
use gatewarden::Reply;
use gatewarden::clock::{Clock, SystemClock, format_day};
use gatewarden::http::{AdminToken, HttpState, serve};
use gatewarden::server::ServerStats;
use gatewarden_protocol::{
    Credential, Decision, Direction, Event, FaceSample, GateId, Mode, UnixMillis, Verdict,
};
use serde_json::Value;

use crate::http_client::{Response, get, post_json};
use crate::support::{self, DIM, MODEL, face_of, probe_of, verify_event};

/// A running API over a temporary data folder.
pub(crate) struct Api {
    pub(crate) engine: Arc<Engine>,
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Api {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(support::open_populated(dir.path(), SystemClock.now()));
        let token = AdminToken::load_or_create(&dir.path().join("admin.token")).unwrap();
        let secret = token.secret().to_owned();
        let state = HttpState::new(Arc::clone(&engine), Arc::new(ServerStats::default()), token);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Self {
            engine,
            addr,
            token: secret,
            runtime,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> Response {
        get(self.addr, path, Some(&self.token))
    }

    fn post(&self, path: &str, body: &str) -> Response {
        post_json(self.addr, path, Some(&self.token), body)
    }

    fn get_ok(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        assert!(r.content_type.starts_with("application/json"), "{r:?}");
        r.json()
    }

    fn post_ok(&self, path: &str, body: &str) -> Value {
        let r = self.post(path, body);
        assert_eq!(r.status, 200, "POST {path}: {}", r.body);
        r.json()
    }

    /// Stops the server gracefully and checks that it ended without error.
    pub(crate) fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let task = self.task.take().unwrap();
        self.runtime.block_on(task).unwrap().unwrap();
    }
}

/// A 4xx with the JSON error shape; returns the message.
fn error(r: &Response, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    let body = r.json();
    assert_eq!(body["code"], code, "{}", r.body);
    body["error"].as_str().unwrap().to_owned()
}

fn verdict(reply: Reply) -> Verdict {
    match reply {
        Reply::Verdict(v) => v,
        other => panic!("expected a verdict, got {other:?}"),
    }
}

const STAFF: u64 = 900;
const LATE: u64 = 901;

/// Adds two staff members of market 1 through the API: 900 with a negative test today and a
/// face, 901 without a test; 900 signs in at gate 3.
fn add_staff(api: &Api, now: UnixMillis) -> Verdict {
    let subjects = format!(
        r#"[{{"subject":{STAFF},"category":"staff","home_market":1,"qr_tokens":["qr-{STAFF}"]}},
            {{"subject":{LATE},"category":"manager","home_market":1}}]"#
    );
    assert_eq!(api.post_ok("/api/v1/subjects", &subjects)["upserted"], 2);
    let (day_start, _) = api.engine.config().utc_offset().day_bounds(now);
    let health = format!(
        r#"[{{"subject":{STAFF},"test_at":{},"test_result":"negative","vaccine_doses":3,
              "health_code":"green","travel_code":"green","updated_at":{}}}]"#,
        day_start.0.max(now.0 - 60_000),
        now.0
    );
    let ack = api.post_ok("/api/v1/health", &health);
    assert_eq!(ack["applied"], 1, "{ack}");
    let templates = serde_json::json!({"model": MODEL, "embeddings": [face_of(STAFF)]});
    let ack = api.post_ok(
        &format!("/api/v1/subjects/{STAFF}/templates"),
        &templates.to_string(),
    );
    assert_eq!(ack["subject"], STAFF);
    assert_eq!(ack["templates_added"], 1, "{ack}");
    assert!(ack["duplicate_of"].is_null());
    verdict(api.engine.submit_blocking(Event {
        gate: GateId(3),
        seq: 1,
        captured_at: now,
        mode: Mode::SignIn {
            credential: Some(Credential::StaffQr(format!("qr-{STAFF}"))),
        },
        direction: Direction::Entry,
        face: Some(FaceSample {
            model: MODEL.to_owned(),
            embedding: probe_of(STAFF, 3),
            quality: 0.9,
            liveness: 0.95,
        }),
        temperature_c: Some(36.4),
    }))
}

/// Records visits: 7 and 8 admitted at gate 1 moments apart, 9 refused for fever at gate 2.
fn record_visits(api: &Api, now: UnixMillis) {
    for (seq, person) in [(1, 7), (2, 8)] {
        let v = verdict(
            api.engine
                .submit_blocking(verify_event(1, seq, person, now)),
        );
        assert_eq!(v.decision, Decision::Admit, "{v:?}");
    }
    let mut fever = verify_event(2, 1, 9, now);
    fever.temperature_c = Some(38.6);
    let v = verdict(api.engine.submit_blocking(fever));
    assert_ne!(v.decision, Decision::Admit, "{v:?}");
}

#[test]
fn tokens_guard_personal_data_only() {
    let api = Api::start();
    for path in [
        "/api/v1/stats",
        "/api/v1/subjects/7",
        "/api/v1/markets/1/hall",
    ] {
        let r = get(api.addr, path, None);
        assert!(error(&r, 401, "unauthorized").contains("Bearer"));
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let r = get(api.addr, path, Some("0123456789abcdef"));
        error(&r, 401, "unauthorized");
    }
    let r = post_json(
        api.addr,
        "/api/v1/subjects/7/revoke",
        None,
        r#"{"reason":"x"}"#,
    );
    error(&r, 401, "unauthorized");
    assert_eq!(
        api.get_ok("/api/v1/subjects/7")["subject"]["status"],
        "active"
    );

    assert_eq!(get(api.addr, "/healthz", None).json()["status"], "ok");
    for (path, ty) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
        ("/api/v1/openapi.json", "application/json"),
    ] {
        let r = get(api.addr, path, None);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.content_type.starts_with(ty), "{path}: {}", r.content_type);
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'self'; frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert!(!r.body.is_empty());
    }
    let doc = get(api.addr, "/api/v1/openapi.json", None).json();
    assert!(doc["paths"]["/api/v1/markets/{id}/hall"]["get"].is_object());
    let r = get(api.addr, "/api/v1/nothing", Some(&api.token));
    assert!(error(&r, 404, "not_found").contains("/api/v1/nothing"));
    api.stop();
}

#[test]
fn reads_show_the_recorded_day() {
    let api = Api::start();
    let now = SystemClock.now();
    let sign_in = add_staff(&api, now);
    assert_eq!(sign_in.decision, Decision::Admit, "{sign_in:?}");
    record_visits(&api, now);
    // Every day-dependent read names the recorded day: the server's own "today" may already
    // be the next one if the markets' midnight passed since `now`.
    let offset = api.engine.config().utc_offset();
    let day = format_day(offset.day_of(now));

    // Stats equal the engine's own.
    let stats = api.get_ok("/api/v1/stats");
    let engine = api.engine.stats();
    assert_eq!(stats["engine"]["admit"], engine.decisions.admit);
    assert_eq!(stats["engine"]["deny"], engine.decisions.deny);
    assert_eq!(stats["engine"]["submitted"], engine.submitted);
    assert_eq!(
        stats["engine"]["end_to_end_us"]["buckets"]
            .as_array()
            .unwrap()
            .len(),
        32
    );
    assert_eq!(stats["engine"]["markets"][0]["market"], 1);
    assert!(
        stats["engine"]["failed_checks"]["temperature"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(stats["server"]["connections"], 0);
    assert_eq!(stats["utc_offset_minutes"], 480);
    assert!(stats["now_ms"].as_u64().unwrap() >= now.0);

    let markets = api.get_ok("/api/v1/markets");
    assert_eq!(
        markets,
        serde_json::json!([{"market": 1, "gates": 4, "zones": [1, 2, 3, 4]}])
    );

    // A subject: names, no credentials.
    let s = api.get_ok("/api/v1/subjects/7");
    assert_eq!(s["subject"]["category"], "shopper");
    assert_eq!(s["health"]["test_result"], "negative");
    assert_eq!(s["health"]["health_code"], "green");
    let text = s.to_string();
    assert!(
        !text.contains("id_card") && !text.contains(&support::id_card(7)),
        "{text}"
    );
    let staff = api.get_ok(&format!("/api/v1/subjects/{STAFF}"));
    assert!(!staff.to_string().contains("qr-900"), "{staff}");
    assert!(api.get_ok(&format!("/api/v1/subjects/{LATE}"))["health"].is_null());

    // The hall: the untested manager first, then the signed-in, tested staff member.
    let hall = api.get_ok(&format!("/api/v1/markets/1/hall?day={day}"));
    assert_eq!(hall["day"], day.as_str());
    assert_eq!(
        hall["counts"],
        serde_json::json!({"staff": 2, "signed_in": 1, "tested_today": 1, "not_tested": 1})
    );
    assert_eq!(hall["staff"][0]["subject"], LATE);
    assert_eq!(hall["staff"][0]["tested_today"], false);
    assert!(hall["staff"][0]["signed_in_at"].is_null());
    let member = &hall["staff"][1];
    assert_eq!(member["subject"], STAFF);
    assert_eq!(member["category"], "staff");
    assert_eq!(member["gate"], 3);
    assert_eq!(member["signed_in_at"], sign_in.decided_at.0);
    assert_eq!(member["tested_today"], true);
    assert_eq!(member["test_result"], "negative");
    let other = api.get_ok("/api/v1/markets/1/hall?day=2020-01-01");
    assert_eq!(other["counts"]["signed_in"], 0);
    assert_eq!(other["counts"]["tested_today"], 0);

    // Trajectory and verdicts.
    let t = api.get_ok(&format!("/api/v1/subjects/7/trajectory?day={day}"));
    assert_eq!(t.as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t[0]["decision"], "admit");
    assert_eq!(t[0]["mode"], "verify");
    assert_eq!(t[0]["gate"], 1);
    assert_eq!(t[0]["direction"], "entry");
    let v = api.get_ok(&format!("/api/v1/subjects/9/verdicts?day={day}"));
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let fever = v[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "temperature")
        .unwrap_or_else(|| panic!("no temperature check in {v}"));
    assert_eq!(fever["outcome"], "fail");
    assert!(
        (fever["value"].as_f64().unwrap() - 38.6).abs() < 1e-3,
        "{fever}"
    );
    assert!(fever["threshold"].as_f64().unwrap() < 38.6);
    assert!(["red", "yellow"].contains(&v[0]["display"]["colour"].as_str().unwrap()));
    assert_eq!(v[0]["entry"]["failed"][0], "temperature");
    assert_eq!(
        api.get_ok(&format!("/api/v1/subjects/7/verdicts?day={day}&limit=1"))[0]["display"]["colour"],
        "green"
    );

    // Contacts, frequency, sign-ins.
    let c = api.get_ok(&format!(
        "/api/v1/subjects/7/contacts?day={day}&window_s=600"
    ));
    assert!(
        c.as_array().unwrap().iter().any(|r| r["subject"] == 8),
        "{c}"
    );
    let f = api.get_ok(&format!("/api/v1/subjects/7/frequency?day={day}"));
    assert_eq!(f["entries"], 1);
    assert_eq!(f["by_market"][0]["market"], 1);
    let mf = api.get_ok(&format!("/api/v1/markets/1/frequency?day={day}&min=1"));
    assert!(
        mf.as_array()
            .unwrap()
            .iter()
            .any(|r| r["subject"] == 7 && r["entries"] == 1),
        "{mf}"
    );
    let si = api.get_ok(&format!("/api/v1/markets/1/signins?day={day}"));
    assert_eq!(si[0]["subject"], STAFF);
    assert_eq!(si[0]["category"], "staff");
    let since = now.0 + 3_600_000;
    let empty = api.get_ok(&format!(
        "/api/v1/subjects/7/trajectory?since={since}&until={}",
        since + 1
    ));
    assert_eq!(empty, serde_json::json!([]));
    // One end alone: the other is a day (verdicts: a week) from it, not from today. Rows are
    // stamped when decided, a moment after `now`.
    let (day_start, _) = offset.day_bounds(now);
    let before = api.get_ok(&format!(
        "/api/v1/subjects/7/trajectory?until={}",
        day_start.0
    ));
    assert_eq!(before, serde_json::json!([]));
    let from = api.get_ok(&format!(
        "/api/v1/subjects/7/trajectory?since={}",
        now.0 - 1
    ));
    assert_eq!(from.as_array().unwrap().len(), 1, "{from}");
    let until = api.get_ok(&format!(
        "/api/v1/subjects/9/verdicts?until={}",
        now.0 + 60_000
    ));
    assert_eq!(until.as_array().unwrap().len(), 1, "{until}");
    let si = api.get_ok(&format!(
        "/api/v1/markets/1/signins?until={}",
        now.0 + 60_000
    ));
    assert_eq!(si[0]["subject"], STAFF);

    // /metrics agrees with the stats.
    let r = get(api.addr, "/metrics", None);
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type
    );
    let engine = api.engine.stats();
    let total: f64 = ["admit", "deny", "escalate"]
        .iter()
        .map(|d| {
            metric(
                &r.body,
                &format!("gatewarden_events_total{{decision=\"{d}\"}}"),
            )
        })
        .sum();
    assert_eq!(
        total as u64,
        engine.decisions.admit + engine.decisions.deny + engine.decisions.escalate
    );
    assert_eq!(
        metric(&r.body, "gatewarden_events_total{decision=\"admit\"}") as u64,
        engine.decisions.admit
    );
    assert_eq!(
        metric(&r.body, "gatewarden_submitted_total") as u64,
        engine.submitted
    );
    assert_eq!(
        metric(
            &r.body,
            "gatewarden_stage_seconds_count{stage=\"end_to_end\"}"
        ) as u64,
        engine.end_to_end_us.count
    );
    api.stop();
}

/// The value of one sample line of the Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .parse()
        .unwrap()
}

#[test]
fn bad_parameters_are_400_naming_the_value() {
    let api = Api::start();
    let cases = [
        ("/api/v1/subjects/x7", "x7"),
        ("/api/v1/markets/one/hall", "one"),
        ("/api/v1/markets/1/hall?day=2026-13-01", "2026-13-01"),
        ("/api/v1/subjects/7/trajectory?since=200&until=100", "200"),
        ("/api/v1/subjects/7/trajectory?since=soon", "soon"),
        (
            "/api/v1/subjects/7/trajectory?since=0&until=99999999999",
            "366 days",
        ),
        ("/api/v1/subjects/7/verdicts?limit=0", "limit 0"),
        ("/api/v1/subjects/7/verdicts?limit=201", "limit 201"),
        (
            "/api/v1/subjects/7/contacts?window_s=100000",
            "window_s 100000",
        ),
        ("/api/v1/markets/1/signins?sinse=1", "sinse"),
    ];
    for (path, named) in cases {
        let msg = error(&api.get(path), 400, "bad_request");
        assert!(msg.contains(named), "{path}: {msg}");
    }
    let msg = error(&api.get("/api/v1/subjects/424242"), 404, "not_found");
    assert!(msg.contains("424242"), "{msg}");
    error(
        &api.get("/api/v1/subjects/424242/trajectory"),
        404,
        "not_found",
    );
    api.stop();
}

#[test]
fn writes_apply_and_bad_bodies_change_nothing() {
    let api = Api::start();
    // A bad element refuses the whole array.
    let body = r#"[{"subject":500,"category":"staff","home_market":1},
                   {"subject":501,"category":"astronaut","home_market":1}]"#;
    let msg = error(&api.post("/api/v1/subjects", body), 400, "bad_request");
    assert!(
        msg.contains("index 1") && msg.contains("astronaut"),
        "{msg}"
    );
    error(&api.get("/api/v1/subjects/500"), 404, "not_found");
    let msg = error(
        &api.post("/api/v1/subjects", r#"{"subject":1}"#),
        400,
        "bad_request",
    );
    assert!(msg.contains("array"), "{msg}");
    let msg = error(&api.post("/api/v1/subjects", "[{"), 400, "bad_request");
    assert!(msg.contains("JSON"), "{msg}");
    let dup = r#"[{"subject":502,"category":"staff","home_market":1},
                  {"subject":502,"category":"staff","home_market":2}]"#;
    error(&api.post("/api/v1/subjects", dup), 400, "bad_request");
    assert_eq!(api.post_ok("/api/v1/subjects", "[]")["upserted"], 0);

    let health = r#"[{"subject":7,"vaccine_doses":3,"health_code":"purple","travel_code":"green","updated_at":1800000000000}]"#;
    let msg = error(&api.post("/api/v1/health", health), 400, "bad_request");
    assert!(msg.contains("purple") && msg.contains("index 0"), "{msg}");
    let health = r#"[{"subject":7,"vaccine_doses":1,"health_code":"yellow","travel_code":"green","updated_at":1900000000000},
                     {"subject":77777,"vaccine_doses":1,"health_code":"green","travel_code":"green","updated_at":1900000000000}]"#;
    let ack = api.post_ok("/api/v1/health", health);
    assert_eq!(ack["applied"], 1, "{ack}");
    assert_eq!(ack["unknown_subjects"], 1, "{ack}");
    assert_eq!(
        api.get_ok("/api/v1/subjects/7")["health"]["health_code"],
        "yellow"
    );

    // Templates: dimension, model, values, subject.
    let short = serde_json::json!({"model": MODEL, "embeddings": [[0.5, 0.5]]}).to_string();
    let msg = error(
        &api.post("/api/v1/subjects/7/templates", &short),
        400,
        "bad_request",
    );
    assert!(msg.contains(&DIM.to_string()), "{msg}");
    let other = serde_json::json!({"model": "other-model", "embeddings": [face_of(7)]}).to_string();
    let msg = error(
        &api.post("/api/v1/subjects/7/templates", &other),
        400,
        "bad_request",
    );
    assert!(msg.contains("other-model"), "{msg}");
    let zeros = serde_json::json!({"model": MODEL, "embeddings": [vec![0.0f32; DIM]]}).to_string();
    error(
        &api.post("/api/v1/subjects/7/templates", &zeros),
        400,
        "bad_request",
    );
    let huge = format!(
        r#"{{"model":"{MODEL}","embeddings":[[1e39{}]]}}"#,
        ",0.1".repeat(DIM - 1)
    );
    error(
        &api.post("/api/v1/subjects/7/templates", &huge),
        400,
        "bad_request",
    );
    let none = serde_json::json!({"model": MODEL, "embeddings": []}).to_string();
    error(
        &api.post("/api/v1/subjects/7/templates", &none),
        400,
        "bad_request",
    );
    let extra = serde_json::json!({"model": MODEL, "embeddings": [face_of(7)], "x": 1}).to_string();
    error(
        &api.post("/api/v1/subjects/7/templates", &extra),
        400,
        "bad_request",
    );
    let good = serde_json::json!({"model": MODEL, "embeddings": [face_of(4242)]}).to_string();
    error(
        &api.post("/api/v1/subjects/4242/templates", &good),
        404,
        "not_found",
    );
    // Subject 8's own face again is fine; subject 7's face under subject 8 is a duplicate.
    let dup = serde_json::json!({"model": MODEL, "embeddings": [face_of(7)]}).to_string();
    let ack = api.post_ok("/api/v1/subjects/8/templates", &dup);
    assert_eq!(ack["templates_added"], 0, "{ack}");
    assert_eq!(ack["duplicate_of"], 7, "{ack}");

    // Revoke.
    let msg = error(
        &api.post("/api/v1/subjects/50/revoke", r#"{"reason":"  "}"#),
        400,
        "bad_request",
    );
    assert!(msg.contains("reason"), "{msg}");
    error(
        &api.post("/api/v1/subjects/50/revoke", "{}"),
        400,
        "bad_request",
    );
    let ack = api.post_ok("/api/v1/subjects/50/revoke", r#"{"reason":"lost card"}"#);
    assert_eq!(ack, serde_json::json!({"subject": 50, "revoked": true}));
    assert_eq!(
        api.get_ok("/api/v1/subjects/50")["subject"]["status"],
        "revoked"
    );
    let ack = api.post_ok("/api/v1/subjects/99999/revoke", r#"{"reason":"unknown"}"#);
    assert_eq!(ack["revoked"], false);
    refuses_to_lift_revocations(&api);

    // A body over the limit is refused from its declared length.
    let r = oversized_post(api.addr, "/api/v1/subjects", &api.token);
    error(&r, 413, "payload_too_large");
    api.stop();
}

/// A subject upload never un-revokes or un-blocklists (subject 50 is revoked by the caller).
fn refuses_to_lift_revocations(api: &Api) {
    let status =
        |id: u64| api.get_ok(&format!("/api/v1/subjects/{id}"))["subject"]["status"].clone();
    // No status means active: that would silently lift the revocation.
    for body in [
        r#"[{"subject":50,"category":"shopper","home_market":1}]"#,
        r#"[{"subject":503,"category":"staff","home_market":1},
            {"subject":50,"category":"shopper","home_market":1,"status":"active"}]"#,
    ] {
        let msg = error(&api.post("/api/v1/subjects", body), 409, "conflict");
        assert!(
            msg.contains("subject 50") && msg.contains("revoked") && msg.contains("reinstate"),
            "{msg}"
        );
        assert_eq!(status(50), "revoked");
    }
    // All or nothing: the good element of the refused batch was not written.
    error(&api.get("/api/v1/subjects/503"), 404, "not_found");

    // Keeping the status, or tightening it, is an ordinary update.
    let keep = r#"[{"subject":50,"category":"shopper","home_market":1,"status":"revoked"}]"#;
    assert_eq!(api.post_ok("/api/v1/subjects", keep)["upserted"], 1);
    let block = r#"[{"subject":50,"category":"shopper","home_market":1,"status":"blocklisted"}]"#;
    assert_eq!(api.post_ok("/api/v1/subjects", block)["upserted"], 1);
    assert_eq!(status(50), "blocklisted");
    for weaker in ["revoked", "active"] {
        let body = format!(
            r#"[{{"subject":50,"category":"shopper","home_market":1,"status":"{weaker}"}}]"#
        );
        let msg = error(&api.post("/api/v1/subjects", &body), 409, "conflict");
        assert!(
            msg.contains("subject 50") && msg.contains("blocklisted"),
            "{msg}"
        );
        assert_eq!(status(50), "blocklisted");
    }

    // The explicit way back: a reinstatement with a reason.
    let empty = api.post("/api/v1/subjects/50/reinstate", r#"{"reason":" "}"#);
    error(&empty, 400, "bad_request");
    assert_eq!(status(50), "blocklisted");
    let ack = api.post_ok(
        "/api/v1/subjects/50/reinstate",
        r#"{"reason":"identity re-checked by staff"}"#,
    );
    assert_eq!(
        (ack["subject"].clone(), ack["was"].clone()),
        (50.into(), "blocklisted".into())
    );
    assert_eq!(status(50), "active");
    error(
        &api.post("/api/v1/subjects/999999/reinstate", r#"{"reason":"x"}"#),
        404,
        "not_found",
    );
}

#[test]
fn hall_lists_only_active_staff_valid_that_day() {
    let api = Api::start();
    let offset = api.engine.config().utc_offset();
    let day = "2026-11-29";
    let d = gatewarden::clock::parse_day(day).unwrap();
    let (start, end) = (offset.day_start(d).0, offset.day_start(d + 1).0);
    let subjects = format!(
        r#"[{{"subject":920,"category":"staff","home_market":1}},
            {{"subject":921,"category":"staff","home_market":1,"status":"revoked"}},
            {{"subject":922,"category":"merchant","home_market":1,"status":"blocklisted"}},
            {{"subject":923,"category":"staff","home_market":1,"valid_until":{}}},
            {{"subject":924,"category":"manager","home_market":1,"valid_from":{end}}},
            {{"subject":925,"category":"staff","home_market":1,"valid_until":{}}},
            {{"subject":926,"category":"service_worker","home_market":1,"valid_from":{}}},
            {{"subject":927,"category":"staff","home_market":2}}]"#,
        start - 1,
        start + 1,
        end - 1
    );
    assert_eq!(api.post_ok("/api/v1/subjects", &subjects)["upserted"], 8);
    let hall = api.get_ok(&format!("/api/v1/markets/1/hall?day={day}"));
    let listed: Vec<u64> = hall["staff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subject"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![920, 925, 926], "{hall}");
    assert_eq!(hall["counts"]["staff"], 3);
    assert_eq!(hall["counts"]["not_tested"], 3);
    // Revoked through the API: gone from the hall too.
    api.post_ok(
        "/api/v1/subjects/920/revoke",
        r#"{"reason":"left the job"}"#,
    );
    let hall = api.get_ok(&format!("/api/v1/markets/1/hall?day={day}"));
    assert_eq!(hall["counts"]["staff"], 2, "{hall}");
    api.stop();
}

#[test]
fn every_api_route_needs_the_token() {
    let api = Api::start();
    let mut checked = 0;
    for route in gatewarden::http::ROUTES {
        if !route.path.starts_with("/api/v1/") || route.path == "/api/v1/openapi.json" {
            continue;
        }
        assert!(route.token, "{route:?} must need the admin token");
        // Subject 7 and market 1 exist, so only the missing token can refuse the request.
        let path = route
            .path
            .replace(
                "{id}",
                if route.path.contains("/markets/") {
                    "1"
                } else {
                    "7"
                },
            )
            .replace("{gate}", "1")
            .replace("{seq}", "1");
        assert!(!path.contains('{'), "{route:?}: unfilled path parameter");
        let method = route.method.name().to_ascii_uppercase();
        let body = (method == "POST").then_some(r#"{"reason":"x"}"#);
        let r = crate::http_client::request(api.addr, &method, &path, None, body);
        let msg = error(&r, 401, "unauthorized");
        assert!(msg.contains("Bearer"), "{route:?}: {msg}");
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} /api/v1 routes found");
    assert_eq!(
        api.get_ok("/api/v1/subjects/7")["subject"]["status"],
        "active"
    );
    api.stop();
}

/// Sends a 17 MiB body; the server must refuse it once it passes the limit. The server may
/// answer and close before the whole body is written, so write errors are expected.
fn oversized_post(addr: SocketAddr, path: &str, token: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let len = 17usize << 20;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..17 {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    sender.join().unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response to an oversized body: {text:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Response {
        status,
        content_type: String::new(),
        headers: vec![],
        body: body.to_owned(),
    }
}

/// Kills the child if the test fails before it stops.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long the test waits for each line from `serve` (it prints within seconds; the margin is
/// for a loaded CI machine). A hung server fails the test instead of hanging the suite.
const SERVE_LINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The child's stdout lines, read on a thread so that every wait has a timeout.
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn new(stdout: std::process::ChildStdout) -> Self {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// The next line; fails the test if none comes within the timeout or stdout closed.
    fn next(&self, waiting_for: &str) -> String {
        match self.0.recv_timeout(SERVE_LINE_TIMEOUT) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                "serve printed no {waiting_for} line within {SERVE_LINE_TIMEOUT:?}: is it hung?"
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("serve closed stdout before its {waiting_for} line")
            }
        }
    }

    /// Every remaining line, until stdout closes; fails the test on a timeout.
    fn rest(&self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match self.0.recv_timeout(SERVE_LINE_TIMEOUT) {
                Ok(line) => lines.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return lines,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!(
                    "serve did not exit within {SERVE_LINE_TIMEOUT:?} of SIGTERM; it printed \
                     {lines:?}"
                ),
            }
        }
    }
}

#[test]
fn serve_prints_the_http_address_and_stops_on_sigterm() {
    use std::process::{Command, Stdio};

    use gatewarden::server::certs::{CertDir, ensure_dev_certs};

    let dir = tempfile::tempdir().unwrap();
    let engine = support::open_populated(dir.path(), SystemClock.now());
    engine.shutdown();
    drop(engine);
    std::fs::write(
        dir.path().join("gatewarden.toml"),
        format!(
            "[engine]\ndim = {DIM}\nmodel = \"{MODEL}\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    ensure_dev_certs(&CertDir(dir.path().join("certs")), (1..=4).map(GateId)).unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_gatewarden"))
            .args(["serve", "--http", "127.0.0.1:0", "--data"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = Lines::new(child.0.stdout.take().unwrap());
    let line = out.next("`listening on`");
    assert!(line.starts_with("listening on "), "{line:?}");
    let line = out.next("`http on`");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("http on ")
        .unwrap_or_else(|| panic!("line 2 is {line:?}"))
        .parse()
        .unwrap();
    let line = out.next("`console on`");
    let token_file = dir.path().join("admin.token");
    assert!(
        line.starts_with(&format!(
            "console on http://{addr}/ (open http://{addr}/#token="
        )) && line.contains(&token_file.display().to_string()),
        "line 3 is {line:?}"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        !line.contains(token.trim()),
        "the token must stay out of stdout"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join("admin.token")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(get(addr, "/healthz", None).status, 200);
    let stats = get(addr, "/api/v1/stats", Some(token.trim()));
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert_eq!(stats.json()["engine"]["queue_capacity"], 4096);
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest = out.rest();
    assert!(
        rest.first().is_some_and(|l| l.starts_with("stats {")),
        "{rest:?}"
    );
    assert!(child.0.wait().unwrap().success());
}

/// Runs `gatewarden serve` on a fresh folder with this configuration and flags, expecting it
/// to refuse to start; returns the folder and what it wrote to stderr.
fn serve_refusal(config: &str, flags: &[&str]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gatewarden.toml"), config).unwrap();
    let certs = gatewarden::server::certs::CertDir(dir.path().join("certs"));
    gatewarden::server::certs::ensure_dev_certs(&certs, [GateId(1)]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatewarden"))
        .arg("serve")
        .args(flags)
        .arg("--data")
        .arg(dir.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (dir, err)
}

#[test]
fn serve_refuses_a_remote_http_address_without_allow_remote() {
    let (dir, err) = serve_refusal(
        "[server]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"0.0.0.0:0\"\n",
        &[],
    );
    assert!(
        err.contains("0.0.0.0:0") && err.contains("allow_remote = true"),
        "{err}"
    );
    assert!(!dir.path().join("admin.token").exists());
    // The flag is checked like the file.
    let (_dir, err) = serve_refusal(
        "[server]\nlisten = \"127.0.0.1:0\"\n",
        &["--http", "0.0.0.0:0"],
    );
    assert!(err.contains("allow_remote = true"), "{err}");
}

#[test]
fn serve_refuses_a_taken_http_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_dir, err) = serve_refusal("[server]\nlisten = \"127.0.0.1:0\"\n", &["--http", &addr]);
    assert!(err.contains(&addr) && err.contains("--no-http"), "{err}");
}

#[test]
fn serve_prints_each_os_error_once() {
    // A taken QUIC port.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_dir, err) = serve_refusal("", &["--no-http", "--listen", &addr]);
    assert!(err.contains(&addr), "{err}");
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
    // A missing policy file.
    let (_dir, err) = serve_refusal(
        "[engine]\npolicy = \"missing.toml\"\n[server]\nlisten = \"127.0.0.1:0\"\n",
        &["--no-http"],
    );
    assert!(err.contains("missing.toml"), "{err}");
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
}

/// Escalations through the API: listed per market, resolved once by a named person, with typed
/// refusals for what cannot be resolved.
#[test]
fn escalations_are_resolved_once_with_a_name() {
    let api = Api::start();
    let now = SystemClock.now();
    // A yellow health code escalates under the default policy.
    let health = format!(
        r#"[{{"subject":7,"test_at":{},"test_result":"negative","vaccine_doses":3,
              "health_code":"yellow","travel_code":"green","updated_at":{}}}]"#,
        now.0 - 60_000,
        now.0
    );
    assert_eq!(api.post_ok("/api/v1/health", &health)["applied"], 1);
    let escalated = verdict(api.engine.submit_blocking(verify_event(4, 1, 7, now)));
    assert_eq!(escalated.decision, Decision::Escalate, "{escalated:?}");
    let admitted = verdict(api.engine.submit_blocking(verify_event(4, 100, 8, now)));
    assert_eq!(admitted.decision, Decision::Admit);
    let seq = escalated.seq;
    let market = api
        .get_ok("/api/v1/subjects/7/trajectory")
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["seq"] == seq && e["gate"] == 4)
        .unwrap()["market"]
        .clone();
    let listed = api.get_ok(&format!("/api/v1/markets/{market}/escalations"));
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["entry"]["seq"] == seq)
        .expect("the escalation is listed")
        .clone();
    assert!(row["resolution"].is_null());
    assert!(
        row["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["outcome"] == "escalate"),
        "{row}"
    );
    let path = format!("/api/v1/escalations/4/{seq}/resolve");
    for (body, why) in [
        (r#"{"outcome":"admitted","by":"  "}"#, "by is empty"),
        (r#"{"outcome":"maybe","by":"Wang"}"#, "not \"admitted\""),
        (r#"{"outcome":"admitted"}"#, "missing field `by`"),
    ] {
        let msg = error(&api.post(&path, body), 400, "bad_request");
        assert!(msg.contains(why), "{body}: {msg}");
    }
    let resolved = api.post_ok(
        &path,
        r#"{"outcome":"turned_away","by":"Wang Fang","note":"no ID"}"#,
    );
    assert_eq!(resolved["outcome"], "turned_away");
    assert_eq!(resolved["by"], "Wang Fang");
    assert_eq!(resolved["subject"], 7);
    let msg = error(
        &api.post(&path, r#"{"outcome":"admitted","by":"Li Wei"}"#),
        409,
        "conflict",
    );
    assert!(
        msg.contains("already resolved as turned_away by Wang Fang"),
        "{msg}"
    );
    let msg = error(
        &api.post(
            "/api/v1/escalations/4/100/resolve",
            r#"{"outcome":"admitted","by":"Li"}"#,
        ),
        409,
        "conflict",
    );
    assert!(msg.contains("was not escalated"), "{msg}");
    error(
        &api.post(
            "/api/v1/escalations/4/99999/resolve",
            r#"{"outcome":"admitted","by":"Li"}"#,
        ),
        404,
        "not_found",
    );
    let mine = api.get_ok("/api/v1/subjects/7/resolutions");
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine[0]["note"], "no ID");
    // The verdict list names the policy that decided.
    let verdicts = api.get_ok("/api/v1/subjects/7/verdicts?limit=1");
    let version = api.get_ok("/api/v1/policy")["version"].clone();
    assert_eq!(verdicts[0]["policy_version"], version);
    api.stop();
}

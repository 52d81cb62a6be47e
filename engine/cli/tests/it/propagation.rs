//! Registry propagation between nodes on one PostgreSQL database (issue 14): a write at one
//! node (enrolment, health record, revocation, reinstatement, gates) reaches the verdicts of
//! another. First two engines in this process, each with its own follower thread and
//! connections (as two nodes have); then two real `gatewarden serve` processes, written to
//! through node a's admin HTTP API and the `gatewarden` command line, and asked by a gate over
//! QUIC at node b.
//!
//! Waits are bounded (30 s) and nothing asserts how fast: the latency is measured by
//! `benches/cluster/propagation.sh`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::server::certs::{CertDir, ensure_dev_certs};
use gatewarden::store::{KEY_FILE, StoreLocation};
use gatewarden::testing::postgres;
use gatewarden::{Config, Engine, Reply};
use gatewarden_protocol::{
    Category, CheckKind, CodeColour, Decision, Enroll, FaceTemplate, GateId, HealthRecord, Message,
    Outcome, Revoke, SubjectId, SubjectRecord, SubjectStatus, TestResult, UnixMillis, UpdateHealth,
    Verdict,
};

use crate::crash::ServerGuard;
use crate::http_client::post_json;
use crate::quic::Client;
use crate::support::{self, face_of, identify_event, probe_of, verify_event};

/// The longest any write may take to show at the other node before the test fails.
const BOUND: Duration = Duration::from_secs(30);

/// Waits, polling, until `check` holds; fails after [`BOUND`].
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = SystemClock.instant() + BOUND;
    while !check() {
        assert!(
            SystemClock.instant() < deadline,
            "{what}: not within {BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fails(v: &Verdict, kind: CheckKind) -> bool {
    v.checks
        .iter()
        .any(|c| c.kind == kind && c.outcome == Outcome::Fail)
}

/// The configuration of a node on `url`, with the site's one credential key.
fn node_config(url: &str, key: &Path) -> Config {
    let mut config = support::config();
    config.store = Some(StoreLocation::Postgres(url.to_owned()));
    config.engine.credential_key = Some(key.to_owned());
    config
}

/// Node a's engine (which makes the schema and the key) and node b's, on a fresh database,
/// before anything is written: b learns everything through its follower.
struct TwoNodes {
    a: Engine,
    b: Engine,
    url: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    seq: u64,
}

impl TwoNodes {
    fn open(tune_b: impl FnOnce(&mut Config)) -> Option<Self> {
        let url = postgres::shared()?.database().unwrap();
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let key = da.path().join("store").join(KEY_FILE);
        let a = Engine::open(da.path(), node_config(&url, &key)).unwrap();
        let mut config = node_config(&url, &key);
        tune_b(&mut config);
        let b = Engine::open(db.path(), config).unwrap();
        Some(Self {
            a,
            b,
            url,
            _dirs: (da, db),
            seq: 0,
        })
    }

    /// A verdict at node b (gate 1) for `subject`'s card and face.
    fn verify_at_b(&mut self, subject: u64) -> Option<Verdict> {
        self.seq += 1;
        let event = verify_event(1, self.seq, subject, SystemClock.now());
        match self.b.submit_blocking(event) {
            Reply::Verdict(v) => Some(v),
            _ => None, // e.g. the gate is not known at b yet
        }
    }

    /// Waits until node b admits `subject`.
    fn b_admits(&mut self, subject: u64) {
        until(&format!("b admits {subject}"), || {
            self.verify_at_b(subject)
                .is_some_and(|v| v.decision == Decision::Admit)
        });
    }

    /// Waits until node b denies `subject` for failing `kind`.
    fn b_denies(&mut self, subject: u64, kind: CheckKind) {
        until(&format!("b denies {subject} on {kind:?}"), || {
            self.verify_at_b(subject)
                .is_some_and(|v| v.decision == Decision::Deny && fails(&v, kind))
        });
    }
}

fn health(subject: u64, colour: CodeColour, at: UnixMillis) -> HealthRecord {
    HealthRecord {
        subject: SubjectId(subject),
        test_at: Some(UnixMillis(at.0 - 3_600_000)),
        test_result: Some(TestResult::Negative),
        vaccine_doses: 3,
        health_code: colour,
        travel_code: CodeColour::Green,
        updated_at: at,
    }
}

fn revoke(engine: &Engine, subject: u64) {
    let ack = engine
        .revoke(&Revoke {
            subject: SubjectId(subject),
            reason: "card reported stolen".to_owned(),
        })
        .unwrap();
    assert!(ack.revoked);
}

#[test]
fn writes_at_one_engine_reach_the_other_engines_verdicts() {
    let Some(mut nodes) = TwoNodes::open(|_| {}) else {
        return;
    };
    // The whole site is written at a after b started: gates, people, health, faces.
    let now = SystemClock.now();
    support::populate(&nodes.a, now);
    nodes.b_admits(1);
    // 1:N: the faces reached b's gallery.
    let probe = identify_event(2, 1, probe_of(4, 99), now);
    until("b identifies 4 by face alone", || {
        matches!(nodes.b.submit_blocking(probe.clone()),
            Reply::Verdict(v) if v.subject == Some(SubjectId(4)) && v.decision == Decision::Admit)
    });

    // A health update at a changes b's verdict.
    nodes.b_admits(2);
    let red = health(2, CodeColour::Red, UnixMillis(now.0 + 1));
    let ack = nodes
        .a
        .update_health(&UpdateHealth { records: vec![red] })
        .unwrap();
    assert_eq!(ack.applied, 1);
    nodes.b_denies(2, CheckKind::HealthCode);

    // A revocation at a makes b deny; a reinstatement at a reverses it.
    nodes.b_admits(3);
    revoke(&nodes.a, 3);
    nodes.b_denies(3, CheckKind::SubjectStatus);
    nodes.a.reinstate(SubjectId(3), "card found").unwrap();
    nodes.b_admits(3);

    // An enrolment through the engine's API (record, card and face at once).
    let ack = nodes
        .a
        .enroll(&Enroll {
            subject: SubjectRecord {
                subject: SubjectId(60),
                category: Category::Shopper,
                home_market: gatewarden_protocol::MarketId(1),
                markets: vec![],
                zones: vec![],
                valid_from: None,
                valid_until: None,
                id_card: Some(support::id_card(60)),
                qr_tokens: vec![],
                status: SubjectStatus::Active,
            },
            templates: vec![FaceTemplate {
                model: support::MODEL.to_owned(),
                embedding: face_of(60),
            }],
        })
        .unwrap();
    assert_eq!(ack.templates_added, 1);
    nodes
        .a
        .update_health(&UpdateHealth {
            records: vec![health(60, CodeColour::Green, now)],
        })
        .unwrap();
    nodes.b_admits(60);

    let follow = nodes.b.stats().registry.expect("a PostgreSQL node follows");
    assert!(follow.applied > 0 && follow.notifications > 0, "{follow:?}");
    nodes.b.shutdown();
    nodes.a.shutdown();
    drop(nodes.url);
}

#[test]
fn the_poll_alone_carries_writes_when_notifications_are_off() {
    let Some(mut nodes) = TwoNodes::open(|c| {
        c.engine.registry_notify = false;
        c.engine.registry_poll_ms = 300;
    }) else {
        return;
    };
    support::populate(&nodes.a, SystemClock.now());
    nodes.b_admits(5);
    revoke(&nodes.a, 5);
    nodes.b_denies(5, CheckKind::SubjectStatus);
    let follow = nodes.b.stats().registry.unwrap();
    assert_eq!(follow.notifications, 0, "b does not listen");
    assert!(follow.polls > 0 && follow.applied > 0, "{follow:?}");
}

#[test]
fn a_follower_whose_connection_is_killed_reconnects_and_misses_nothing() {
    let Some(mut nodes) = TwoNodes::open(|_| {}) else {
        return;
    };
    support::populate(&nodes.a, SystemClock.now());
    nodes.b_admits(6);
    // Kill both nodes' follower connections (the database's own admin statement), then write
    // at once: the notification goes to nobody, the reconnected follower reads it anyway.
    let killed = postgres::PgServer::execute(
        &nodes.url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'gatewarden-follower' AND datname = current_database()",
    )
    .unwrap();
    assert_eq!(killed.len(), 2, "one follower per node");
    revoke(&nodes.a, 6);
    nodes.b_denies(6, CheckKind::SubjectStatus);
    until("b's follower reconnected", || {
        nodes.b.stats().registry.unwrap().connects >= 2
    });
}

// ---- two `gatewarden serve` processes ----

/// A running `gatewarden serve` and its two addresses.
struct Served {
    _guard: ServerGuard,
    quic: SocketAddr,
    http: SocketAddr,
}

fn serve(site: &Path) -> Served {
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_gatewarden"))
        .args(["serve", "--data"])
        .arg(site)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = ServerGuard(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut next = |prefix: &str| -> SocketAddr {
        let line = lines.next().unwrap().unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("serve said {line:?}"))
            .parse()
            .unwrap()
    };
    let quic = next("listening on ");
    let http = next("http on ");
    Served {
        _guard: guard,
        quic,
        http,
    }
}

/// A data folder of a node on `url` (the site's one key at `key`), with gate certificates.
fn node_site(root: &Path, name: &str, url: &str, key: &Path) -> PathBuf {
    let site = root.join(name);
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("gatewarden.toml"),
        format!(
            "store = \"{url}\"\n[engine]\ndim = {}\nmodel = \"{}\"\ncredential_key = \"{}\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            support::DIM,
            support::MODEL,
            key.display()
        ),
    )
    .unwrap();
    ensure_dev_certs(
        &CertDir(site.join("certs")),
        (1..=support::GATES).map(GateId),
    )
    .unwrap();
    site
}

/// A verdict for `subject` from a gate connected to node b over QUIC.
async fn verify_over_quic(gate: &Client, seq: u64, subject: u64) -> Option<Verdict> {
    let event = verify_event(1, seq, subject, SystemClock.now());
    match gate.request(&Message::Event(event)).await {
        Ok(Message::Verdict(v)) => Some(v),
        _ => None,
    }
}

#[test]
fn serve_nodes_follow_writes_made_through_another_nodes_api_and_the_command_line() {
    let Some(server) = postgres::shared() else {
        return;
    };
    let url = server.database().unwrap();
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join(KEY_FILE);
    let site_a = node_site(root.path(), "a", &url, &key);
    let site_b = node_site(root.path(), "b", &url, &key);
    // The site's registry, written by node a's engine before either node serves.
    let engine = Engine::open(&site_a, node_config(&url, &key)).unwrap();
    support::populate(&engine, SystemClock.now());
    engine.shutdown();
    drop(engine);

    let a = serve(&site_a);
    let b = serve(&site_b);
    let token = std::fs::read_to_string(site_a.join("admin.token")).unwrap();
    let token = token.trim();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gate = runtime.block_on(async {
        let gate = Client::gate(b.quic, &site_b.join("certs"), 1).await;
        assert!(matches!(gate.hello(1).await, Message::HelloAck(_)));
        gate
    });
    let mut seq = 0;
    let mut b_says = |subject: u64, wanted: &dyn Fn(&Verdict) -> bool, what: &str| {
        until(what, || {
            seq += 1;
            runtime
                .block_on(verify_over_quic(&gate, seq, subject))
                .is_some_and(|v| wanted(&v))
        });
    };
    let admitted = |v: &Verdict| v.decision == Decision::Admit;
    let revoked = |v: &Verdict| fails(v, CheckKind::SubjectStatus);
    b_says(7, &admitted, "b admits 7");

    // Revoked through node a's admin API: node b denies.
    let r = post_json(
        a.http,
        "/api/v1/subjects/7/revoke",
        Some(token),
        r#"{"reason":"card reported stolen"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    b_says(7, &revoked, "b denies 7 after a's API revoked them");

    // Reinstated with the command line, from a third folder on the same database: node b
    // admits again.
    let admin = node_site(root.path(), "admin", &url, &key);
    let out = support::gw(&["reinstate", "7", "--reason", "card found"], &admin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b_says(
        7,
        &admitted,
        "b admits 7 after the command line reinstated them",
    );

    // A new person enrolled through node a's API: record, health, face.
    let now = SystemClock.now();
    let person = format!(
        r#"[{{"subject":70,"category":"shopper","home_market":1,"id_card":"{}"}}]"#,
        support::id_card(70)
    );
    let r = post_json(a.http, "/api/v1/subjects", Some(token), &person);
    assert_eq!(r.status, 200, "{}", r.body);
    let record = format!(
        r#"[{{"subject":70,"test_at":{},"test_result":"negative","vaccine_doses":3,
              "health_code":"green","travel_code":"green","updated_at":{}}}]"#,
        now.0 - 60_000,
        now.0
    );
    let r = post_json(a.http, "/api/v1/health", Some(token), &record);
    assert_eq!(r.status, 200, "{}", r.body);
    let face = serde_json::json!({"model": support::MODEL, "embeddings": [face_of(70)]});
    let r = post_json(
        a.http,
        "/api/v1/subjects/70/templates",
        Some(token),
        &face.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    b_says(70, &admitted, "b admits 70, enrolled through a's API");

    // Node b's metrics show its follower.
    let metrics = crate::http_client::get(b.http, "/metrics", None);
    assert!(
        metrics
            .body
            .contains("gatewarden_registry_changes_applied_total"),
        "{}",
        metrics.body
    );
    runtime.block_on(gate.close());
}

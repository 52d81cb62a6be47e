//! Two `gatewarden serve` processes on loopback with a static `[cluster]` table (issue 14):
//! node a serves market 1, node b market 2. A gate that connects to the node of the other
//! market is redirected (a version-1 gate is told in words), follows and gets verdicts; a
//! gate cannot talk its way into another market. The load generator, given both addresses,
//! follows the redirects at connect; mid-run market 1 is moved to b by reloading the tables
//! (a first, b a moment later), so its gates' next events are redirected, undecided, and
//! retried at b; then b is killed with SIGKILL and a takes both markets (a reload: the static
//! stand-in for a lease), and the gates fail over to a, every event answered. Last, a market
//! moved away while a gate is connected redirects its next events.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::cluster::StaticDirectory;
use gatewarden_loadgen::population::{PopulationConfig, generate};
use gatewarden_loadgen::run::{Profile, RunConfig};
use gatewarden_protocol::{
    Direction, ErrorCode, Event, FaceSample, GateId, Hello, MarketId, Message, Mode,
    PROTOCOL_VERSION, Redirect,
};

use crate::crash::{ServerGuard, spawn_server};
use crate::quic::Client;
use crate::support::stranger;

/// Gates of the site: odd ones stand in market 1, even ones in market 2 (`init`'s and the
/// population's round-robin).
const GATES: u32 = 8;
const SUBJECTS: usize = 200;

/// A free UDP port on loopback (released at once: the node binds it moments later).
pub(crate) fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.env("RUST_LOG", "off").output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gatewarden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatewarden"))
}

/// One site (gates, people, health records, faces) made with the CLI from a loadgen
/// population; returns the population folder.
fn make_site(root: &Path, site: &Path) -> PathBuf {
    run_ok(gatewarden().arg("init").arg(site).args([
        "--gates",
        &GATES.to_string(),
        "--markets",
        "2",
    ]));
    let population = root.join("population");
    generate(
        &PopulationConfig {
            subjects: SUBJECTS,
            markets: 2,
            gates: GATES,
            now: SystemClock.now(),
            ..PopulationConfig::default()
        },
        &population,
    )
    .unwrap();
    run_ok(
        gatewarden()
            .args(["import", "subjects"])
            .arg(population.join("subjects.jsonl"))
            .arg("--data")
            .arg(site),
    );
    run_ok(
        gatewarden()
            .args(["health", "import"])
            .arg(population.join("health.jsonl"))
            .arg("--data")
            .arg(site),
    );
    run_ok(
        gatewarden()
            .arg("enroll")
            .arg("--vectors")
            .arg(population.join("templates.npy"))
            .arg("--subjects")
            .arg(population.join("template_subjects.txt"))
            .args(["--no-duplicate-check", "--data"])
            .arg(site),
    );
    population
}

/// Copies a stopped site (store, gallery, certificates: the same fleet CA) to `to`.
pub(crate) fn copy_site(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_site(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The configuration of node `node`: QUIC on `listen`, no HTTP API, and the cluster table
/// with node a serving `a_markets` and node b `b_markets`.
fn node_config(
    node: &str,
    listen: SocketAddr,
    a: (SocketAddr, &str),
    b: (SocketAddr, &str),
) -> String {
    format!(
        "[engine]\npolicy = \"policy.toml\"\n\
         [server]\nlisten = \"{listen}\"\n\
         [http]\nenabled = false\n\
         [cluster]\nnode = \"{node}\"\nunowned_retry_ms = 700\n\
         [[cluster.nodes]]\nname = \"a\"\naddresses = [\"{}\"]\nmarkets = [{}]\n\
         [[cluster.nodes]]\nname = \"b\"\naddresses = [\"{}\"]\nmarkets = [{}]\n",
        a.0, a.1, b.0, b.1
    )
}

fn write_config(site: &Path, text: &str) {
    let path = site.join("gatewarden.toml");
    // Replace, never truncate in place: the running server may be reading it.
    let tmp = site.join("gatewarden.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

fn signal(server: &ServerGuard, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub(crate) fn hello(gate: u32, market: u32, min_version: u16, max_version: u16) -> Message {
    Message::Hello(Hello {
        min_version,
        max_version,
        gate: GateId(gate),
        market: MarketId(market),
        firmware: "cluster-test".to_owned(),
        capabilities: 0,
    })
}

/// Waits (at most 3 s) for the server to close `client`'s connection; its application code.
async fn close_code(client: &Client) -> u64 {
    let reason = tokio::time::timeout(Duration::from_secs(3), client.closed())
        .await
        .expect("the server did not close the connection");
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
        other => panic!("closed by {other:?}"),
    }
}

fn expect_redirect(reply: &Message, market: u32, node: &str, to: SocketAddr) -> Redirect {
    let Message::Redirect(r) = reply else {
        panic!("expected a redirect to node {node}, got {reply:?}");
    };
    assert_eq!(r.market, MarketId(market));
    assert_eq!(r.node, node);
    assert_eq!(r.addresses, [to.to_string()]);
    assert_eq!(r.retry_after_ms, 0);
    r.clone()
}

/// A face-only event of `gate` in the site's model (whatever the decision, it is decided).
fn event(gate: u32, seq: u64) -> Event {
    Event {
        gate: GateId(gate),
        seq,
        captured_at: SystemClock.now(),
        mode: Mode::Identify,
        direction: Direction::Entry,
        face: Some(FaceSample {
            model: "demo-face-v1".to_owned(),
            // The site's faces are 512-d (the population's), not the unit tests' 128.
            embedding: stranger(seq).repeat(4),
            quality: 0.9,
            liveness: 0.95,
        }),
        temperature_c: None,
    }
}

#[test]
fn gates_follow_redirects_and_fail_over_when_a_node_dies() {
    let root = tempfile::tempdir().unwrap();
    let (site_a, site_b) = (root.path().join("a"), root.path().join("b"));
    let population = make_site(root.path(), &site_a);
    copy_site(&site_a, &site_b);
    let addr_a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let addr_b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let table = |node, listen, a_markets, b_markets| {
        node_config(node, listen, (addr_a, a_markets), (addr_b, b_markets))
    };
    write_config(&site_a, &table("a", addr_a, "1", "2"));
    write_config(&site_b, &table("b", addr_b, "1", "2"));
    let (a, listening_a) = spawn_server(&site_a);
    let (mut b, listening_b) = spawn_server(&site_b);
    assert_eq!((listening_a, listening_b), (addr_a, addr_b));
    let certs = site_a.join("certs");
    let runtime = crate::server::runtime();

    runtime.block_on(async {
        // A gate of market 2 at node a: told to go to b, and the connection ends (code 3).
        let client = Client::gate(addr_a, &certs, 2).await;
        let reply = client
            .request(&hello(2, 2, 1, PROTOCOL_VERSION))
            .await
            .unwrap();
        let redirect = expect_redirect(&reply, 2, "b", addr_b);
        assert_eq!(close_code(&client).await, 3);
        // A version-1 gate gets an error it knows (shutting_down: reconnect elsewhere), naming
        // the node, and the connection ends as after any error to a Hello (code 2).
        let old = Client::gate(addr_a, &certs, 2).await;
        let reply = old.request(&hello(2, 2, 1, 1)).await.unwrap();
        let Message::Error(e) = &reply else {
            panic!("a version-1 gate got {reply:?}");
        };
        assert_eq!(e.code, ErrorCode::ShuttingDown);
        assert!(
            e.message.contains("node b") && e.message.contains(&addr_b.to_string()),
            "{}",
            e.message
        );
        assert_eq!(close_code(&old).await, 2);
        // No gate can claim another market to stay: the registry's market decides.
        let liar = Client::gate(addr_a, &certs, 2).await;
        let reply = liar
            .request(&hello(2, 1, 1, PROTOCOL_VERSION))
            .await
            .unwrap();
        assert!(
            matches!(&reply, Message::Error(e) if e.code == ErrorCode::UnknownGate),
            "{reply:?}"
        );
        // The gate follows the redirect to b and is served there.
        let (host, port) = Redirect::split_address(&redirect.addresses[0]).unwrap();
        let to: SocketAddr = format!("{host}:{port}").parse().unwrap();
        let served = Client::gate(to, &certs, 2).await;
        let ack = served
            .request(&hello(2, 2, 1, PROTOCOL_VERSION))
            .await
            .unwrap();
        assert!(
            matches!(&ack, Message::HelloAck(a) if a.version == PROTOCOL_VERSION),
            "{ack:?}"
        );
        let verdict = served.request(&Message::Event(event(2, 1))).await.unwrap();
        assert!(matches!(verdict, Message::Verdict(_)), "{verdict:?}");
        served.close().await;
        // And the other way round: a gate of market 1 at b is sent to a.
        let one = Client::gate(addr_b, &certs, 1).await;
        let reply = one
            .request(&hello(1, 1, 1, PROTOCOL_VERSION))
            .await
            .unwrap();
        expect_redirect(&reply, 1, "a", addr_a);
    });

    // The load generator knows both nodes and starts every gate at a. Mid-run b dies (SIGKILL)
    // and a takes market 2 over (its table reloaded on SIGHUP, after b is gone: one owner at a
    // time). Every event must be answered, market 2's by b before and by a after.
    let loadgen = {
        let cfg = RunConfig {
            targets: vec![addr_a, addr_b],
            certs: certs.clone(),
            population,
            gates: GATES,
            rate: 40.0,
            profile: Profile::Constant,
            duration: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_millis(300),
            sockets: 2,
            ..RunConfig::default()
        };
        std::thread::spawn(move || gatewarden_loadgen::run::run(&cfg))
    };
    // Market 1 moves to b by hand, the safe way round: a stops deciding it first (its gates'
    // next events are redirected, undecided), b takes it a moment later.
    std::thread::sleep(Duration::from_secs(3));
    write_config(&site_a, &table("a", addr_a, "", "1, 2"));
    signal(&a, "-HUP");
    std::thread::sleep(Duration::from_millis(200));
    write_config(&site_b, &table("b", addr_b, "", "1, 2"));
    signal(&b, "-HUP");
    // Then b dies, and a takes both markets.
    std::thread::sleep(Duration::from_secs(3));
    b.0.kill().unwrap(); // SIGKILL
    b.0.wait().unwrap();
    write_config(&site_a, &table("a", addr_a, "1, 2", ""));
    signal(&a, "-HUP");
    let report = loadgen.join().unwrap().unwrap();
    eprintln!("{}", serde_json::to_string(&report.per_second).unwrap());
    eprintln!(
        "sent {} verdicts {} lost {} errors {:?} redirects {} failovers {} p99 {} ms max {} ms",
        report.sent,
        report.verdicts,
        report.lost,
        report.errors_by_code,
        report.redirects,
        report.failovers,
        report.latency_ms.p99,
        report.latency_ms.max
    );
    assert!(report.sent >= 300, "{}", report.sent);
    assert_eq!(report.lost, 0, "an event was never answered");
    assert_eq!(report.errors, 0, "{:?}", report.errors_by_code);
    assert_eq!(report.verdicts, report.sent);
    // Each gate of market 2 was sent from a to b when it connected, and each gate of market 1
    // when its market moved (an event's Redirect, or its next Hello's)...
    assert!(report.redirects >= u64::from(GATES), "{}", report.redirects);
    // ...and the gates at b moved on when b died (at least market 2's: a gate of market 1
    // may still have been on its way).
    assert!(
        report.failovers >= u64::from(GATES / 2),
        "{}",
        report.failovers
    );
    // The failover shows in the latency of the events caught in it, counted from their first
    // intended send, not from the retry.
    assert!(report.latency_ms.max >= 300.0, "{}", report.latency_ms.max);
    let last = report.per_second.last().unwrap();
    assert_eq!(last.gates_connected, GATES, "every gate is connected again");

    runtime.block_on(async {
        // Market 2 is a's now. A gate connected there is redirected at its next event once a's
        // table gives market 2 back to b, and the connection stays open for its other events.
        let client = Client::gate(addr_a, &certs, 4).await;
        let ack = client
            .request(&hello(4, 2, 1, PROTOCOL_VERSION))
            .await
            .unwrap();
        assert!(matches!(ack, Message::HelloAck(_)), "{ack:?}");
        let verdict = client.request(&Message::Event(event(4, 1))).await.unwrap();
        assert!(matches!(verdict, Message::Verdict(_)), "{verdict:?}");
        write_config(&site_a, &table("a", addr_a, "1", "2"));
        signal(&a, "-HUP");
        let (mut seq, mut tries) = (2, 0);
        let reply = loop {
            let reply = client
                .request(&Message::Event(event(4, seq)))
                .await
                .unwrap();
            tries += 1;
            match reply {
                // A gate retries Busy with the same seq (on a loaded machine an event can
                // wait out its queue deadline); the redirect is what this waits for.
                Message::Busy(b) if tries < 200 => {
                    tokio::time::sleep(Duration::from_millis(b.retry_after_ms.into())).await;
                    continue;
                }
                Message::Verdict(_) if seq <= 100 => seq += 1,
                _ => break reply,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        expect_redirect(&reply, 2, "b", addr_b);
        let again = client
            .request(&Message::Event(event(4, seq + 1)))
            .await
            .unwrap();
        expect_redirect(&again, 2, "b", addr_b);
        client.close().await;
    });
    signal(&a, "-TERM");
    let mut a = a;
    assert!(a.0.wait().unwrap().success(), "node a did not stop cleanly");
}

/// In process, over real QUIC: a market that no node serves (a takeover under way) gets a
/// `Redirect` without a node and with the pause to wait; a version-1 gate gets it in words.
#[test]
fn a_market_no_node_serves_is_told_to_wait() {
    let config = gatewarden::Config::from_toml(
        "[cluster]\nnode = \"a\"\nunowned_retry_ms = 700\n\
         [[cluster.nodes]]\nname = \"a\"\naddresses = [\"127.0.0.1:4433\"]\nmarkets = [2]\n",
        Path::new("x.toml"),
    )
    .unwrap();
    let markets = StaticDirectory::new(config.cluster.as_ref().unwrap()).unwrap();
    crate::server::runtime().block_on(async {
        // The fixture's gates all stand in market 1, which nobody serves here.
        let running = crate::server::start_with_markets(Arc::new(markets)).await;
        let client = Client::gate(running.addr, &running.certs, 1).await;
        let reply = client
            .request(&hello(1, 1, 1, PROTOCOL_VERSION))
            .await
            .unwrap();
        assert_eq!(
            reply,
            Message::Redirect(Redirect {
                market: MarketId(1),
                node: String::new(),
                addresses: vec![],
                retry_after_ms: 700,
            })
        );
        assert_eq!(close_code(&client).await, 3);
        let old = Client::gate(running.addr, &running.certs, 1).await;
        let reply = old.request(&hello(1, 1, 1, 1)).await.unwrap();
        assert!(
            matches!(&reply, Message::Error(e) if e.code == ErrorCode::ShuttingDown
                && e.message.contains("no node serves market 1")
                && e.message.contains("700 ms")),
            "{reply:?}"
        );
        assert_eq!(close_code(&old).await, 2);
        // An event before any accepted Hello is still hello_required, never decided.
        let fresh = Client::gate(running.addr, &running.certs, 1).await;
        let event = crate::support::verify_event(1, 1, 1, crate::server::now());
        let reply = fresh.request(&Message::Event(event)).await.unwrap();
        assert!(
            matches!(&reply, Message::Error(e) if e.code == ErrorCode::HelloRequired),
            "{reply:?}"
        );
        fresh.close().await;
        running.stop().await;
    });
}

/// In process, over real QUIC: a gate moved in the registry to a market this node does not
/// serve is redirected on its next event, on the connection it opened while its market was
/// served here: the market is read from the registry per event, not remembered from Hello.
#[test]
fn a_gate_moved_to_a_market_served_elsewhere_is_redirected_on_its_next_event() {
    let config = gatewarden::Config::from_toml(
        "[cluster]\nnode = \"a\"\n\
         [[cluster.nodes]]\nname = \"a\"\naddresses = [\"127.0.0.1:4433\"]\nmarkets = [1]\n\
         [[cluster.nodes]]\nname = \"b\"\naddresses = [\"127.0.0.1:4434\"]\nmarkets = [2]\n",
        Path::new("x.toml"),
    )
    .unwrap();
    let markets = StaticDirectory::new(config.cluster.as_ref().unwrap()).unwrap();
    crate::server::runtime().block_on(async {
        let running = crate::server::start_with_markets(Arc::new(markets)).await;
        let client = Client::gate(running.addr, &running.certs, 1).await;
        assert!(matches!(client.hello(1).await, Message::HelloAck(_)));
        let now = crate::server::now();
        let first = crate::support::verify_event(1, 1, 1, now);
        let reply = client.request(&Message::Event(first)).await.unwrap();
        assert!(
            matches!(reply, Message::Verdict(_) | Message::Busy(_)),
            "{reply:?}"
        );
        let mut moved = running.engine.store().gate(GateId(1)).unwrap();
        moved.market = MarketId(2);
        running.engine.store().upsert_gates(&[moved]).unwrap();
        let second = crate::support::verify_event(1, 2, 2, now);
        let reply = client.request(&Message::Event(second)).await.unwrap();
        assert!(
            matches!(&reply, Message::Redirect(r) if r.market == MarketId(2) && r.node == "b"),
            "{reply:?}"
        );
        client.close().await;
        running.stop().await;
    });
}

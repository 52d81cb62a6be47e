//! Two `gatewarden serve` processes on one PostgreSQL with market leases (issue 14): node a
//! prefers market 1 (gates 1 and 2), node b market 2 (gates 3 and 4). A gate of a's market
//! that connects to b is redirected to a. Node a is killed with SIGKILL in the middle of a
//! stream of events; after its leases run out b takes market 1, rebuilds its counters from the
//! entry log, and the gates (which know both addresses) get their verdicts from b: a person
//! who entered through a cannot enter again through b without going out, every acknowledged
//! event is in PostgreSQL exactly once, and every retry of one gets the recorded verdict.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::model::GateInfo;
use gatewarden::server::certs::{CertDir, ensure_dev_certs};
use gatewarden::store::{KEY_FILE, Store, StoreLocation};
use gatewarden::testing::postgres;
use gatewarden_protocol::{
    CheckKind, Decision, Direction, Event, GateId, MarketId, Message, Outcome, UnixMillis, Verdict,
    ZoneId,
};

use crate::cluster::{copy_site, free_port, hello};
use crate::crash::{ServerGuard, spawn_server};
use crate::quic::Client;
use crate::support::{self, verify_event};

/// The gates of market 1 (node a's).
const MARKET_1: [u32; 2] = [1, 2];
/// Events per gate of market 1 in the stream; people 1..=40 take part in it.
const PER_GATE: u64 = 60;
/// The stream's verdicts after which node a is killed.
const KILL_AFTER: usize = 40;
/// People kept out of the stream for the anti-passback checks.
const INSIDE: u64 = 45;
const WENT_OUT: u64 = 46;

/// The configuration of node `me`: QUIC on `listen`, the store in PostgreSQL, anti-passback
/// on, leases of 1.5 s renewed every 250 ms.
fn node_config(url: &str, me: &str, listen: SocketAddr, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "store = \"{url}\"\n\
         [engine]\ndim = {}\nmodel = \"{}\"\npolicy = \"policy.toml\"\n\
         [server]\nlisten = \"{listen}\"\n\
         [http]\nenabled = false\n\
         [cluster]\nnode = \"{me}\"\nunowned_retry_ms = 200\n\
         [cluster.leases]\nttl_ms = 1500\nrenew_ms = 250\n\
         [[cluster.nodes]]\nname = \"a\"\naddresses = [\"{a}\"]\nmarkets = [1]\n\
         [[cluster.nodes]]\nname = \"b\"\naddresses = [\"{b}\"]\nmarkets = [2]\n",
        support::DIM,
        support::MODEL
    )
}

/// The site in PostgreSQL: the support fixture's people and faces, gates 1 and 2 in market 1,
/// 3 and 4 in market 2; the data folder of node a (key file, gallery, certificates, policy
/// with anti-passback), copied for node b.
fn make_sites(root: &Path, url: &str, now: UnixMillis) {
    let site_a = root.join("a");
    let mut config = support::config();
    config.store = Some(StoreLocation::Postgres(url.to_owned()));
    let engine = gatewarden::Engine::open(&site_a, config).unwrap();
    support::populate(&engine, now);
    let market_2: Vec<GateInfo> = [3, 4]
        .map(|g| GateInfo {
            gate: GateId(g),
            market: MarketId(2),
            zone: ZoneId(g),
            name: format!("gate {g}"),
        })
        .to_vec();
    engine.store().upsert_gates(&market_2).unwrap();
    engine.shutdown();
    drop(engine);
    ensure_dev_certs(
        &CertDir(site_a.join("certs")),
        (1..=support::GATES).map(GateId),
    )
    .unwrap();
    let policy = gatewarden::policy::DEMO_POLICY_TOML
        .replace("anti_passback = false", "anti_passback = true");
    assert_ne!(policy, gatewarden::policy::DEMO_POLICY_TOML);
    std::fs::write(site_a.join("policy.toml"), policy).unwrap();
    copy_site(&site_a, &root.join("b"));
}

/// `event` at `gate` going `direction`.
fn passage(gate: u32, seq: u64, subject: u64, direction: Direction, now: UnixMillis) -> Event {
    Event {
        direction,
        ..verify_event(gate, seq, subject, now)
    }
}

/// Connects gate `gate` to `addr` and says Hello until the node serves its market (a redirect
/// or a refusal while the market is between owners is waited out); at most 60 s.
async fn served(addr: SocketAddr, certs: &Path, gate: u32, market: u32) -> Client {
    let give_up = SystemClock.instant() + Duration::from_secs(60);
    let dir = CertDir(certs.to_owned());
    let (cert, key) = (dir.gate_cert(GateId(gate)), dir.gate_key(GateId(gate)));
    loop {
        if let Ok(client) = Client::connect(addr, certs, &cert, &key).await
            && let Ok(reply) = client.request(&hello(gate, market, 1, 2)).await
        {
            if matches!(reply, Message::HelloAck(_)) {
                return client;
            }
            client.close().await;
        }
        assert!(
            SystemClock.instant() < give_up,
            "node {addr} never served gate {gate}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `event` until it gets a verdict, waiting out Busy and a market between owners;
/// `None` if the connection is lost.
async fn verdict_of(client: &Client, event: &Event) -> Option<Verdict> {
    for _ in 0..600 {
        match client.request(&Message::Event(event.clone())).await {
            Ok(Message::Verdict(v)) => return Some(v),
            Ok(Message::Busy(b)) => {
                tokio::time::sleep(Duration::from_millis(u64::from(b.retry_after_ms))).await;
            }
            Ok(Message::Redirect(r)) => {
                tokio::time::sleep(Duration::from_millis(u64::from(r.retry_after_ms.max(50))))
                    .await;
            }
            Ok(Message::Error(e)) if e.code == gatewarden_protocol::ErrorCode::Internal => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(_) => return None,
        }
    }
    panic!(
        "no verdict for {:?} after 600 attempts",
        (event.gate, event.seq)
    );
}

/// Sends the events concurrently over one connection per gate; kills `kill.0` once `kill.1`
/// verdicts arrived, and returns the verdicts that arrived.
async fn stream(
    clients: &HashMap<u32, Arc<Client>>,
    events: &[Event],
    mut kill: Option<(&mut ServerGuard, usize)>,
) -> HashMap<(GateId, u64), Verdict> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for event in events {
        let client = Arc::clone(&clients[&event.gate.0]);
        let (event, tx) = (event.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            if let Some(v) = verdict_of(&client, &event).await {
                let _ = tx.send(v);
            }
        }));
    }
    drop(tx);
    let mut got = HashMap::new();
    while let Some(v) = rx.recv().await {
        got.insert((v.gate, v.seq), v);
        if let Some((server, after)) = kill.as_mut()
            && got.len() >= *after
        {
            server.0.kill().unwrap(); // SIGKILL
            server.0.wait().unwrap();
            // Replies already on the wire may still land; then stop waiting.
            let deadline = tokio::time::sleep(Duration::from_millis(300));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    v = rx.recv() => match v {
                        Some(v) => { got.insert((v.gate, v.seq), v); }
                        None => break,
                    },
                    () = &mut deadline => break,
                }
            }
            tasks.iter().for_each(|t| t.abort());
            return got;
        }
    }
    got
}

fn failed(v: &Verdict, kind: CheckKind) -> bool {
    v.checks
        .iter()
        .any(|c| c.kind == kind && c.outcome == Outcome::Fail)
}

#[test]
fn a_killed_nodes_market_is_taken_over_with_its_counters_and_no_event_lost() {
    let Some(pg) = postgres::shared() else {
        return;
    };
    let url = pg.database().unwrap();
    let root = tempfile::tempdir().unwrap();
    let now = SystemClock.now();
    make_sites(root.path(), &url, now);
    let (site_a, site_b) = (root.path().join("a"), root.path().join("b"));
    let addr_a: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let addr_b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    for (site, me, listen) in [(&site_a, "a", addr_a), (&site_b, "b", addr_b)] {
        std::fs::write(
            site.join("gatewarden.toml"),
            node_config(&url, me, listen, addr_a, addr_b),
        )
        .unwrap();
    }
    let (mut a, _) = spawn_server(&site_a);
    let (b, _) = spawn_server(&site_b);
    let certs = site_a.join("certs");
    let events: Vec<Event> = MARKET_1
        .iter()
        .flat_map(|&g| (1..=PER_GATE).map(move |seq| (g, seq)))
        .map(|(g, seq)| verify_event(g, seq, 1 + (seq + u64::from(g)) % 40, now))
        .collect();
    let runtime = crate::server::runtime();

    let acknowledged = runtime.block_on(async {
        // A gate of market 1 at b is sent to a (once b has read who holds it).
        let give_up = SystemClock.instant() + Duration::from_secs(30);
        loop {
            let client = Client::gate(addr_b, &certs, 1).await;
            let reply = client.request(&hello(1, 1, 1, 2)).await.unwrap();
            if let Message::Redirect(r) = &reply
                && r.node == "a"
            {
                assert_eq!(r.addresses, [addr_a.to_string()]);
                break;
            }
            assert!(
                SystemClock.instant() < give_up,
                "b never sent gate 1 to a: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // At a: one person goes in, another in and out.
        let gate_1 = served(addr_a, &certs, 1, 1).await;
        for (seq, subject, direction) in [
            (1001, INSIDE, Direction::Entry),
            (1002, WENT_OUT, Direction::Entry),
            (1003, WENT_OUT, Direction::Exit),
        ] {
            let v = verdict_of(&gate_1, &passage(1, seq, subject, direction, now))
                .await
                .unwrap();
            assert_eq!(v.decision, Decision::Admit, "{v:?}");
        }
        gate_1.close().await;
        // The stream at a, and a killed in the middle of it.
        let mut clients = HashMap::new();
        for g in MARKET_1 {
            clients.insert(g, Arc::new(served(addr_a, &certs, g, 1).await));
        }
        let got = stream(&clients, &events, Some((&mut a, KILL_AFTER))).await;
        assert!(got.len() >= KILL_AFTER);
        assert!(
            got.len() < events.len(),
            "the kill came too late to test anything"
        );
        got
    });

    // b takes market 1 after a's leases run out; the gates, which know both nodes, retry every
    // event there with the same keys.
    let retried = runtime.block_on(async {
        let mut clients = HashMap::new();
        for g in MARKET_1 {
            clients.insert(g, Arc::new(served(addr_b, &certs, g, 1).await));
        }
        // Anti-passback across the failover, before any retry (whose duplicate would make b
        // rebuild every counter): the counters b rebuilt when it took market 1 know who is
        // inside.
        let gate_2 = &clients[&2];
        let again = verdict_of(gate_2, &passage(2, 2001, INSIDE, Direction::Entry, now))
            .await
            .unwrap();
        assert_ne!(again.decision, Decision::Admit, "{again:?}");
        assert!(failed(&again, CheckKind::AntiPassback), "{again:?}");
        let back = verdict_of(gate_2, &passage(2, 2002, WENT_OUT, Direction::Entry, now))
            .await
            .unwrap();
        assert_eq!(back.decision, Decision::Admit, "{back:?}");
        stream(&clients, &events, None).await
    });
    eprintln!(
        "acknowledged by a before the kill: {}; answered by b: {}",
        acknowledged.len(),
        retried.len()
    );
    assert_eq!(
        retried.len(),
        events.len(),
        "some events got no verdict from b"
    );
    for (key, before) in &acknowledged {
        let after = &retried[key];
        assert!(after.replayed, "{key:?} was decided twice");
        assert_eq!(
            (after.decision, after.subject, &after.checks),
            (before.decision, before.subject, &before.checks),
            "{key:?}"
        );
    }

    // Every event is in PostgreSQL exactly once, and each acknowledged one as acknowledged.
    let store_dir = site_b.join("store");
    let store = Store::open_location(
        &StoreLocation::Postgres(url),
        &store_dir,
        &store_dir.join(KEY_FILE),
    )
    .unwrap();
    let mut records: HashMap<(GateId, u64), usize> = HashMap::new();
    store
        .for_each_entry_since(UnixMillis(0), |row| {
            *records.entry((row.gate, row.seq)).or_default() += 1;
        })
        .unwrap();
    for event in &events {
        assert_eq!(
            records.get(&(event.gate, event.seq)),
            Some(&1),
            "{:?} not recorded once",
            (event.gate, event.seq)
        );
    }
    for (key, v) in &acknowledged {
        let stored = store.verdict_for(key.0, key.1).unwrap().unwrap();
        assert_eq!((stored.decision, &stored.checks), (v.decision, &v.checks));
    }
    drop(b);
}

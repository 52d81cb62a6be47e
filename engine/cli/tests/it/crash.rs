//! Durability across `kill -9`: a real `gatewarden serve` process, real QUIC clients, SIGKILL
//! mid-stream, a restart on the same data folder, and gates retrying with the same keys.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::server::certs::{CertDir, ensure_dev_certs};
use gatewarden::store::Store;
use gatewarden_protocol::{Event, GateId, Message, UnixMillis, Verdict};

use crate::quic::Client;
use crate::support::{self, GATES, verify_event};

pub(crate) const PER_GATE: u64 = 100;

/// A server child that is killed if the test fails before stopping it.
pub(crate) struct ServerGuard(pub(crate) Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn spawn_server(dir: &Path) -> (ServerGuard, SocketAddr) {
    spawn_server_with(dir, &[])
}

/// [`spawn_server`] with more arguments for `gatewarden serve`.
pub(crate) fn spawn_server_with(dir: &Path, extra: &[&str]) -> (ServerGuard, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewarden"))
        .args(["serve", "--data"])
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // Guard first: a server that prints garbage must not outlive the test.
    let stdout = child.stdout.take().unwrap();
    let guard = ServerGuard(child);
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("server said {line:?}"))
        .parse()
        .unwrap();
    (guard, addr)
}

pub(crate) fn prepare(dir: &Path, now: UnixMillis) {
    prepare_with(dir, now, "", "");
}

/// [`prepare`] with extra `[engine]` lines and extra sections in the configuration.
fn prepare_with(dir: &Path, now: UnixMillis, engine_extra: &str, sections: &str) {
    let engine = support::open_populated(dir, now);
    engine.shutdown();
    drop(engine);
    std::fs::write(
        dir.join("gatewarden.toml"),
        format!(
            "[engine]\ndim = {}\nmodel = \"{}\"\n{engine_extra}[server]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n{sections}",
            support::DIM,
            support::MODEL
        ),
    )
    .unwrap();
    ensure_dev_certs(&CertDir(dir.join("certs")), (1..=GATES).map(GateId)).unwrap();
}

pub(crate) fn events(now: UnixMillis) -> Vec<Event> {
    (1..=GATES)
        .flat_map(|g| (1..=PER_GATE).map(move |seq| (g, seq)))
        .map(|(g, seq)| verify_event(g, seq, 1 + (seq + u64::from(g)) % support::PEOPLE, now))
        .collect()
}

/// Sends every event concurrently; returns the verdicts that arrived. With `kill_after`,
/// SIGKILLs the server once that many verdicts have arrived and stops waiting shortly after.
pub(crate) async fn drive(
    addr: SocketAddr,
    certs: &Path,
    events: &[Event],
    mut kill: Option<(&mut Child, usize)>,
) -> HashMap<(GateId, u64), Verdict> {
    let mut clients = Vec::new();
    for g in 1..=GATES {
        let client = Client::gate(addr, certs, g).await;
        assert!(matches!(client.hello(g).await, Message::HelloAck(_)));
        clients.push(Arc::new(client));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for event in events {
        let client = Arc::clone(&clients[event.gate.0 as usize - 1]);
        let event = event.clone();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            for _attempt in 0..50 {
                match client.request(&Message::Event(event.clone())).await {
                    Ok(Message::Verdict(v)) => {
                        let _ = tx.send(v);
                        return;
                    }
                    Ok(Message::Busy(b)) => {
                        tokio::time::sleep(Duration::from_millis(u64::from(b.retry_after_ms)))
                            .await;
                    }
                    Ok(other) => panic!("unexpected reply {other:?}"),
                    Err(_) => return, // connection lost: the server was killed
                }
            }
        }));
    }
    drop(tx);
    let mut got = HashMap::new();
    while let Some(v) = rx.recv().await {
        got.insert((v.gate, v.seq), v);
        if let Some((child, after)) = kill.as_mut()
            && got.len() >= *after
        {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
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

#[test]
fn acknowledged_events_survive_kill_9_and_retries_are_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemClock.now();
    prepare(dir.path(), now);
    kill_restart_and_check(dir.path(), now, &|| {});
}

/// Days of expired history the prune test starts with: enough that deleting them takes the
/// server well past its first verdicts, so the kill lands while retention is deleting.
const EXPIRED_DAYS: i64 = 1_500;

/// The same proof while the maintenance thread prunes 1,500 expired day partitions (retention
/// runs at start-up) and checkpoints the entry log every millisecond: the kill lands during the
/// prune, and between or inside checkpoints. After the restart every acknowledged event is
/// still recorded once, and no expired day survives.
#[test]
fn acknowledged_events_survive_kill_9_during_prune_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemClock.now();
    prepare_with(
        dir.path(),
        now,
        "checkpoint_interval_ms = 1\n",
        "[retention]\nentry_days = 30\n",
    );
    let entries = dir
        .path()
        .join("store")
        .join(gatewarden::store::ENTRIES_DIR);
    write_expired_days(dir.path(), now, &entries);
    assert_eq!(partition_count(&entries), EXPIRED_DAYS as usize);
    kill_restart_and_check(dir.path(), now, &|| {
        let left = partition_count(&entries);
        eprintln!("partitions left when the server was killed: {left}");
        assert!(
            left > 1 && left < EXPIRED_DAYS as usize,
            "the kill did not land during the prune ({left} partitions left)"
        );
    });
    // The kill came while the first server was still deleting (the second finished the job).
    let store = Store::open(&dir.path().join("store")).unwrap();
    let stats = store.history_stats().unwrap();
    assert_eq!(stats.partitions.len(), 1, "only today's partition is left");
}

/// One expired day written through the store, copied under `EXPIRED_DAYS` day names.
fn write_expired_days(dir: &Path, now: UnixMillis, entries: &Path) {
    const DAY_MS: u64 = 86_400_000;
    let oldest = now.0 / DAY_MS - 400;
    {
        let store = Store::open(&dir.join("store")).unwrap();
        let mut loader = store.bulk_entry_loader();
        // Gate 1000 is not one of the live gates: its keys never meet theirs.
        let records: Vec<_> = (1..=200u64)
            .map(|seq| {
                let mut e = verify_event(1, seq, 1 + seq % support::PEOPLE, now);
                e.gate = GateId(1000);
                let mut v = gatewarden::policy::internal_error(
                    e.gate,
                    seq,
                    UnixMillis(oldest * DAY_MS + seq * 1000),
                    "history",
                );
                v.replayed = false;
                gatewarden::store::EntryRecord {
                    verdict: v,
                    market: gatewarden_protocol::MarketId(1),
                    zone: gatewarden_protocol::ZoneId(1),
                    mode: gatewarden::store::ModeKind::Verify,
                    direction: e.direction,
                    captured_at: e.captured_at,
                    fingerprint: gatewarden::store::EventFingerprint([7; 16]),
                    policy: None,
                }
            })
            .collect();
        loader.commit(&records).unwrap();
        loader.finish().unwrap();
    }
    let day_name = |d: u64| format!("{}.db", gatewarden::clock::format_day(d as i64));
    let source = entries.join(day_name(oldest));
    for k in 1..EXPIRED_DAYS as u64 {
        std::fs::copy(&source, entries.join(day_name(oldest - k))).unwrap();
    }
}

fn partition_count(entries: &Path) -> usize {
    std::fs::read_dir(entries)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".db"))
        })
        .count()
}

/// Serves, SIGKILLs the server after the first verdicts, restarts it, retries everything, and
/// checks that every acknowledged event was recorded exactly once.
fn kill_restart_and_check(dir: &Path, now: UnixMillis, after_kill: &dyn Fn()) {
    let certs = dir.join("certs");
    let all = events(now);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let (mut first, addr) = spawn_server(dir);
    let acknowledged = runtime.block_on(drive(
        addr,
        &certs,
        &all,
        Some((&mut first.0, PER_GATE as usize)),
    ));
    assert!(acknowledged.len() >= PER_GATE as usize);
    assert!(
        acknowledged.len() < all.len(),
        "the kill came too late to test anything"
    );
    after_kill();

    // Restart on the same folder; every gate retries everything with the same keys.
    let (mut second, addr) = spawn_server(dir);
    let retried = runtime.block_on(drive(addr, &certs, &all, None));
    assert_eq!(retried.len(), all.len(), "some retries got no verdict");
    for (key, before) in &acknowledged {
        let after = &retried[key];
        assert!(after.replayed, "{key:?} was decided twice");
        assert_eq!(
            (after.decision, after.subject, &after.checks),
            (before.decision, before.subject, &before.checks)
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &second.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        second.0.wait().unwrap().success(),
        "server did not shut down cleanly"
    );

    let store = Store::open(&dir.join("store")).unwrap();
    let mut records: HashMap<(GateId, u64), usize> = HashMap::new();
    store
        .for_each_entry_since(UnixMillis(0), |row| {
            if row.gate.0 <= GATES {
                *records.entry((row.gate, row.seq)).or_default() += 1;
            }
        })
        .unwrap();
    assert_eq!(records.len(), all.len());
    assert!(records.values().all(|&n| n == 1));
    for (key, v) in &retried {
        let stored = store.verdict_for(key.0, key.1).unwrap().unwrap();
        assert_eq!(stored.decision, v.decision);
    }
}

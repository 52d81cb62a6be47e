//! `gatewarden serve --store postgres://...` through the real binary: real QUIC events from
//! gates, the server SIGKILLed mid-stream, and every acknowledged event found in PostgreSQL,
//! once; then a restart where every retry gets the recorded verdict.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::server::certs::{CertDir, ensure_dev_certs};
use gatewarden::store::{KEY_FILE, Store, StoreLocation};
use gatewarden::testing::postgres;
use gatewarden_protocol::{GateId, UnixMillis};

use crate::crash::{PER_GATE, drive, events, spawn_server_with};
use crate::support::{self, GATES};

fn open_store(dir: &Path, url: &str) -> Store {
    let store_dir = dir.join("store");
    Store::open_location(
        &StoreLocation::Postgres(url.to_owned()),
        &store_dir,
        &store_dir.join(KEY_FILE),
    )
    .unwrap()
}

#[test]
fn serve_on_postgres_keeps_every_acknowledged_event_through_kill_9() {
    let Some(server) = postgres::shared() else {
        return;
    };
    let url = server.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now = SystemClock.now();
    // The site: registry, health and templates written into PostgreSQL by the engine.
    let mut config = support::config();
    config.store = Some(StoreLocation::Postgres(url.clone()));
    let engine = gatewarden::Engine::open(dir.path(), config).unwrap();
    support::populate(&engine, now);
    engine.shutdown();
    drop(engine);
    // The configuration says nothing of the store: `--store` alone points serve at it.
    std::fs::write(
        dir.path().join("gatewarden.toml"),
        format!(
            "[engine]\ndim = {}\nmodel = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n",
            support::DIM,
            support::MODEL
        ),
    )
    .unwrap();
    ensure_dev_certs(&CertDir(dir.path().join("certs")), (1..=GATES).map(GateId)).unwrap();
    assert!(
        !dir.path()
            .join("store")
            .join(gatewarden::store::DB_FILE)
            .exists(),
        "nothing went to SQLite"
    );

    let certs = dir.path().join("certs");
    let all = events(now);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store_arg = ["--store", url.as_str()];
    let (mut first, addr) = spawn_server_with(dir.path(), &store_arg);
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

    // Straight after the kill: every acknowledged verdict is in PostgreSQL, once, as sent.
    let store = open_store(dir.path(), &url);
    let mut records: HashMap<(GateId, u64), usize> = HashMap::new();
    store
        .for_each_entry_since(UnixMillis(0), |row| {
            *records.entry((row.gate, row.seq)).or_default() += 1;
        })
        .unwrap();
    for (key, v) in &acknowledged {
        assert_eq!(
            records.get(key),
            Some(&1),
            "{key:?} acknowledged, not recorded once"
        );
        let stored = store.verdict_for(key.0, key.1).unwrap().unwrap();
        assert_eq!(
            (stored.decision, stored.subject, &stored.checks),
            (v.decision, v.subject, &v.checks)
        );
    }
    drop(store);

    // Restart; every gate retries everything with the same keys.
    let (mut second, addr) = spawn_server_with(dir.path(), &store_arg);
    let retried = runtime.block_on(drive(addr, &certs, &all, None));
    assert_eq!(retried.len(), all.len(), "some retries got no verdict");
    for (key, before) in &acknowledged {
        let after = &retried[key];
        assert!(after.replayed, "{key:?} was decided twice");
        assert_eq!(after.decision, before.decision);
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
    let store = open_store(dir.path(), &url);
    let mut records: HashMap<(GateId, u64), usize> = HashMap::new();
    store
        .for_each_entry_since(UnixMillis(0), |row| {
            *records.entry((row.gate, row.seq)).or_default() += 1;
        })
        .unwrap();
    assert_eq!(records.len(), all.len());
    assert!(records.values().all(|&n| n == 1));
}

#[test]
fn serve_refuses_a_bad_store_url_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    crate::crash::prepare(dir.path(), SystemClock.now());
    let out = Command::new(env!("CARGO_BIN_EXE_gatewarden"))
        .args(["serve", "--data"])
        .arg(dir.path())
        .args(["--store", "mysql://gw:secret@localhost/gw"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("postgres://"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

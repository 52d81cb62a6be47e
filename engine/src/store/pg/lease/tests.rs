//! Market leases on a real PostgreSQL: two (then three) lease directories on one database.
//!
//! Nothing here asserts a duration: the waits are bounded polls, and what is checked is who
//! answers `Here`, the epochs and the rows.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatewarden_protocol::{Decision, GateId, MarketId, ZoneId};

use crate::Config;
use crate::clock::{Clock, SystemClock};
use crate::cluster::lease::LeaseDirectory;
use crate::cluster::{MarketDirectory, Ownership};
use crate::config::ClusterConfig;
use crate::model::GateInfo;
use crate::pipeline::MarketRebuilder;
use crate::store::tests::entry;
use crate::store::{CommitOutcome, ModeKind, Store, StoreError, StoreLocation};
use crate::testing::postgres;

/// `[cluster]` for node `me` of two: a prefers market 1, b market 2.
fn cluster(me: &str) -> ClusterConfig {
    let text = format!(
        "store = \"postgres://unused@localhost/x\"\n\
         [cluster]\nnode = \"{me}\"\n[cluster.leases]\nttl_ms = 600\nrenew_ms = 100\n\
         [[cluster.nodes]]\nname = \"a\"\naddresses = [\"127.0.0.1:4433\"]\nmarkets = [1]\n\
         [[cluster.nodes]]\nname = \"b\"\naddresses = [\"127.0.0.1:4434\"]\nmarkets = [2]\n"
    );
    Config::from_toml(&text, Path::new("x.toml"))
        .unwrap()
        .cluster
        .unwrap()
}

fn open(url: &str, dir: &Path) -> Store {
    Store::open_location(
        &StoreLocation::Postgres(url.to_owned()),
        dir,
        &dir.join("credential.key"),
    )
    .unwrap()
}

/// A rebuilder that records the markets it was asked for.
fn recorder() -> (MarketRebuilder, Arc<Mutex<Vec<Vec<u32>>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&calls);
    let rebuild: MarketRebuilder = Arc::new(move |markets: &[MarketId]| {
        seen.lock()
            .unwrap()
            .push(markets.iter().map(|m| m.0).collect());
        Ok(())
    });
    (rebuild, calls)
}

/// Polls `done` every 10 ms for up to 30 s, calling `each` at every poll.
fn wait_until(what: &str, mut done: impl FnMut() -> bool, mut each: impl FnMut()) {
    let give_up = SystemClock.instant() + Duration::from_secs(30);
    while !done() {
        each();
        assert!(
            SystemClock.instant() < give_up,
            "gave up waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lease_row(store: &Store, market: u32) -> Vec<String> {
    store
        .test_query(&format!(
            "SELECT holder, epoch::text FROM market_leases WHERE market = {market}"
        ))
        .into_iter()
        .next()
        .unwrap()
}

#[test]
fn a_dead_nodes_market_passes_to_the_other_node_and_its_late_commit_is_fenced() {
    let Some(server) = postgres::shared() else {
        return;
    };
    let url = server.database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store_a, store_b) = (open(&url, dir.path()), open(&url, dir.path()));
    store_a
        .upsert_gates(&[1, 2].map(|m| GateInfo {
            gate: GateId(m),
            market: MarketId(m),
            zone: ZoneId(m),
            name: format!("gate {m}"),
        }))
        .unwrap();
    let (rebuild_a, _) = recorder();
    let (rebuild_b, rebuilt_b) = recorder();
    let a =
        LeaseDirectory::start(&cluster("a"), &store_a, rebuild_a, Arc::new(SystemClock)).unwrap();
    let b =
        LeaseDirectory::start(&cluster("b"), &store_b, rebuild_b, Arc::new(SystemClock)).unwrap();
    let (m1, m2) = (MarketId(1), MarketId(2));

    // Each holds the market it prefers, and sends the other's gates to the other.
    assert_eq!(a.owner(m1), Ownership::Here);
    assert_eq!(b.owner(m2), Ownership::Here);
    assert!(
        matches!(b.owner(m1), Ownership::Elsewhere(n) if n.name == "a" && n.addresses == ["127.0.0.1:4433"])
    );
    // a learns of b's take at its next round.
    wait_until(
        "a sends market 2's gates to b",
        || matches!(a.owner(m2), Ownership::Elsewhere(n) if n.name == "b"),
        || {},
    );
    assert_eq!(a.epoch(m1), Some(1));
    assert_eq!(lease_row(&store_b, 1), ["a", "1"]);
    assert_eq!(
        *rebuilt_b.lock().unwrap(),
        [vec![2]],
        "b rebuilt what it took"
    );

    // a records under its lease; b's writer may not record market 1 (a holds it), but its
    // own market 2 in the same batch is recorded.
    let mut writer_a = store_a.entry_writer().unwrap();
    let mut writer_b = store_b.entry_writer().unwrap();
    let by_a = entry(1, 1, 1, Some(7), Decision::Admit, ModeKind::Verify, 0);
    assert_eq!(
        writer_a.commit(std::slice::from_ref(&by_a)).unwrap(),
        [CommitOutcome::Inserted]
    );
    let stray = entry(1, 2, 1, Some(8), Decision::Admit, ModeKind::Verify, 1);
    let own = entry(2, 1, 2, Some(9), Decision::Admit, ModeKind::Verify, 1);
    let err = writer_b.commit(&[own, stray]).unwrap_err();
    assert!(
        matches!(&err.error, StoreError::LeaseLost { markets } if *markets == [m1]),
        "{err}"
    );
    assert_eq!(err.recorded, [Some(CommitOutcome::Inserted), None]);
    assert!(store_a.recorded_entry(GateId(1), 2).unwrap().is_none());

    // a dies (stops renewing). b takes market 1 once a's lease ran out; at no poll do both
    // answer Here, and when b first does, a has already stopped.
    a.stop();
    wait_until(
        "b serves market 1",
        || b.owner(m1) == Ownership::Here,
        || {
            assert!(
                !(a.owner(m1) == Ownership::Here && b.owner(m1) == Ownership::Here),
                "two nodes answer Here for market 1"
            );
        },
    );
    assert_ne!(a.owner(m1), Ownership::Here, "a stopped before b started");
    assert_eq!(b.epoch(m1), Some(2), "a take adds one to the epoch");
    assert_eq!(lease_row(&store_b, 1), ["b", "2"]);
    assert_eq!(
        *rebuilt_b.lock().unwrap(),
        [vec![2], vec![1]],
        "b rebuilt market 1's counters when it took it"
    );
    assert_eq!(b.takeovers(), 2);

    // a's late commit (an event it admitted before it stopped) is fenced: not recorded, a
    // typed error, so its verdict is never released.
    let late = entry(1, 3, 1, Some(7), Decision::Admit, ModeKind::Verify, 2);
    let err = writer_a.commit(std::slice::from_ref(&late)).unwrap_err();
    assert!(
        matches!(&err.error, StoreError::LeaseLost { markets } if *markets == [m1]),
        "{err}"
    );
    assert_eq!(err.recorded, [None]);
    assert!(store_b.recorded_entry(GateId(1), 3).unwrap().is_none());
    // b records market 1 now.
    assert_eq!(
        writer_b
            .commit(&[entry(
                1,
                3,
                1,
                Some(7),
                Decision::Admit,
                ModeKind::Verify,
                3
            )])
            .unwrap(),
        [CommitOutcome::Inserted]
    );

    // a comes back (a new process): market 1 is b's while b lives; a does not take it.
    let store_a2 = open(&url, dir.path());
    let (rebuild_a2, rebuilt_a2) = recorder();
    let a2 =
        LeaseDirectory::start(&cluster("a"), &store_a2, rebuild_a2, Arc::new(SystemClock)).unwrap();
    assert!(matches!(a2.owner(m1), Ownership::Elsewhere(n) if n.name == "b"));
    assert!(rebuilt_a2.lock().unwrap().is_empty());

    // b stops cleanly: its leases end at once and a takes its preferred market back (and b's
    // market 2 after the grace), each rebuilt, at the next epochs.
    b.release(&store_b).unwrap();
    assert_ne!(b.owner(m1), Ownership::Here);
    wait_until(
        "a serves both markets",
        || a2.owner(m1) == Ownership::Here && a2.owner(m2) == Ownership::Here,
        || {},
    );
    assert_eq!((a2.epoch(m1), a2.epoch(m2)), (Some(3), Some(2)));
    let mut rebuilt: Vec<u32> = rebuilt_a2.lock().unwrap().concat();
    rebuilt.sort_unstable();
    assert_eq!(rebuilt, [1, 2]);
}

#[test]
fn leases_on_sqlite_are_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let (rebuild, _) = recorder();
    let err =
        LeaseDirectory::start(&cluster("a"), &store, rebuild, Arc::new(SystemClock)).unwrap_err();
    assert!(
        matches!(&err, crate::Error::Store(StoreError::Unsupported { .. })),
        "{err}"
    );
}

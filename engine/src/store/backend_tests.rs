//! The store suite on PostgreSQL: every backend-independent test of `store::tests` runs again
//! against a real PostgreSQL server (`testing::postgres`), each on a database of its own, plus
//! the tests only PostgreSQL needs (exactly once across nodes, partitions, bad locations).
//!
//! How: while a test runs through [`on_postgres`], [`open`] gives each test folder a database
//! of the shared server instead of SQLite files, and the same database again when the test
//! reopens the folder. The tests themselves are the SQLite suite's, unchanged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::testing::postgres;

thread_local! {
    /// While a test runs on PostgreSQL: the database of each test folder.
    static DATABASES: RefCell<Option<HashMap<PathBuf, String>>> = const { RefCell::new(None) };
}

/// The PostgreSQL store of test folder `dir`, if the running test is on PostgreSQL.
pub(super) fn open(dir: &Path) -> Option<Store> {
    let url = DATABASES.with(|d| {
        let mut d = d.borrow_mut();
        let map = d.as_mut()?;
        let url = map.entry(dir.to_owned()).or_insert_with(new_database);
        Some(url.clone())
    })?;
    Some(open_url(&url, dir))
}

fn new_database() -> String {
    postgres::shared()
        .expect("the test runs on PostgreSQL, so the server is up")
        .database()
        .unwrap()
}

fn open_url(url: &str, dir: &Path) -> Store {
    let store_dir = dir.join("store");
    Store::open_location(
        &StoreLocation::Postgres(url.to_owned()),
        &store_dir,
        &store_dir.join(KEY_FILE),
    )
    .unwrap()
}

/// Runs `test` with [`open`] on PostgreSQL; skips it when PostgreSQL is not installed (and
/// `GATEWARDEN_REQUIRE_POSTGRES` is not set, see `testing::postgres::shared`).
fn on_postgres(test: fn()) {
    if postgres::shared().is_none() {
        return;
    }
    DATABASES.with(|d| *d.borrow_mut() = Some(HashMap::new()));
    test();
    DATABASES.with(|d| *d.borrow_mut() = None);
}

/// `#[test] fn name()` running the SQLite suite's `name` on PostgreSQL.
macro_rules! again_on_postgres {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                on_postgres(super::$name);
            }
        )*
    };
}

again_on_postgres!(
    open_reopen_keeps_data,
    upsert_subjects_is_idempotent_and_replaces_credentials,
    credential_conflict_writes_nothing,
    upsert_health_is_idempotent_and_keeps_the_newest,
    revoke_changes_status_and_audits,
    templates_round_trip_and_stream_from_a_watermark,
    commit_reports_duplicates_and_keeps_one_row,
    verdict_for_round_trips,
    trajectory_lists_a_subject_across_markets_in_time_order,
    frequency_counts_admitted_entries_most_first,
    signins_list_first_admitted_signin_per_subject,
    contacts_find_others_in_the_same_market_within_the_window,
    for_each_entry_since_streams_in_time_order,
    passages_are_the_admitted_entries_of_known_people_in_time_order,
    market_staff_lists_working_categories_of_the_home_market,
    event_fingerprints_are_keyed_per_store,
    only_a_reinstatement_lifts_a_revocation,
    escalations_are_listed_resolved_once_and_expire_with_their_entries,
);

/// A fresh PostgreSQL database and a folder for the key, or `None` without PostgreSQL.
fn fresh() -> Option<(tempfile::TempDir, String)> {
    let server = postgres::shared()?;
    Some((tempfile::tempdir().unwrap(), server.database().unwrap()))
}

fn gate(id: u32, market: u32) -> GateInfo {
    GateInfo {
        gate: GateId(id),
        market: MarketId(market),
        zone: ZoneId(id * 10),
        name: format!("gate {id}"),
    }
}

#[test]
fn a_retried_key_is_recorded_once_across_nodes() {
    let Some((dir, url)) = fresh() else { return };
    // Two nodes: two stores on one database, sharing the site's key file.
    let a = open_url(&url, dir.path());
    let b = open_url(&url, dir.path());
    a.upsert_gates(&[gate(1, 1)]).unwrap();
    let mut wa = a.entry_writer().unwrap();
    let mut wb = b.entry_writer().unwrap();
    let first = entry(1, 7, 1, Some(1), Decision::Admit, ModeKind::Verify, 0);
    let mut retry = first.clone();
    retry.verdict.decision = Decision::Deny;
    // The retry reaches the other node a day later: the key is unique across days too.
    retry.verdict.decided_at = UnixMillis(first.verdict.decided_at.0 + 86_400_000);
    assert_eq!(wa.commit(&[first]).unwrap(), vec![CommitOutcome::Inserted]);
    assert_eq!(
        wb.commit(std::slice::from_ref(&retry)).unwrap(),
        vec![CommitOutcome::Duplicate]
    );
    let recorded = b.recorded_entry(GateId(1), 7).unwrap().unwrap();
    assert_eq!(
        recorded.verdict.decision,
        Decision::Admit,
        "the first record stands"
    );
    assert_eq!(a.history_stats().unwrap().entries, 1);
    // Node B knows gate 1's last seq after a restart, though it never recorded it.
    drop(b);
    let b = open_url(&url, dir.path());
    assert_eq!(b.max_seq_per_gate().unwrap(), vec![(GateId(1), 7)]);
}

#[test]
fn entries_are_partitioned_by_day_and_retention_drops_whole_days() {
    let Some((dir, url)) = fresh() else { return };
    let store = open_url(&url, dir.path());
    store.upsert_gates(&[gate(1, 1), gate(2, 1)]).unwrap();
    let mut w = store.entry_writer().unwrap();
    let day_s = 86_400;
    // One batch over three days: each day is its own transaction and partition.
    let out = w
        .commit(&[
            entry(1, 1, 1, Some(1), Decision::Admit, ModeKind::Verify, 0),
            entry(1, 2, 1, Some(1), Decision::Admit, ModeKind::Verify, day_s),
            entry(
                2,
                1,
                1,
                Some(2),
                Decision::Deny,
                ModeKind::Identify,
                2 * day_s,
            ),
            entry(1, 2, 1, Some(1), Decision::Admit, ModeKind::Verify, day_s),
        ])
        .unwrap();
    assert_eq!(
        out,
        vec![
            CommitOutcome::Inserted,
            CommitOutcome::Inserted,
            CommitOutcome::Inserted,
            CommitOutcome::Duplicate
        ]
    );
    let stats = store.history_stats().unwrap();
    let days: Vec<u64> = stats.partitions.iter().map(|p| p.entries).collect();
    // Three days with entries, and the day after the last made ahead of time.
    assert_eq!(days, vec![1, 1, 1, 0], "{stats:?}");
    let partitions =
        store.test_query("SELECT count(*) FROM pg_inherits WHERE inhparent = 'entries'::regclass");
    assert_eq!(partitions, vec![vec!["4".to_owned()]]);
    // Keep one day, counted from the third: the first two go, whole.
    let first_day = (T0 / 86_400_000) as i64;
    let now = UnixMillis((first_day as u64 + 2) * 86_400_000);
    let pruned = store.prune_entries(now, 1).unwrap();
    assert_eq!(pruned.len(), 2, "{pruned:?}");
    assert_eq!(pruned[0].entries, 1);
    assert_eq!(store.history_counters().pruned_partitions, 2);
    assert_eq!(store.verdict_for(GateId(1), 1).unwrap(), None);
    assert!(store.verdict_for(GateId(2), 1).unwrap().is_some());
    let keys = store.test_query("SELECT count(*) FROM entry_keys");
    assert_eq!(
        keys,
        vec![vec!["1".to_owned()]],
        "the keys of dropped days go too"
    );
    // A late record for a dropped day makes its partition again rather than failing twice.
    let late = entry(1, 3, 1, Some(1), Decision::Admit, ModeKind::Verify, 5);
    assert_eq!(w.commit(&[late]).unwrap(), vec![CommitOutcome::Inserted]);
}

#[test]
fn open_refuses_a_newer_schema_and_a_foreign_database() {
    let Some((dir, url)) = fresh() else { return };
    drop(open_url(&url, dir.path()));
    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    client
        .batch_execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        .unwrap();
    let key = dir.path().join("store").join(KEY_FILE);
    let location = StoreLocation::Postgres(url);
    let err = Store::open_location(&location, &dir.path().join("store"), &key).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Incompatible {
                found: 99,
                supported: 3
            }
        ),
        "{err}"
    );
    // A database that holds someone else's tables is not written into.
    let (_, other) = fresh().unwrap();
    let mut client = ::postgres::Client::connect(&other, ::postgres::NoTls).unwrap();
    client
        .batch_execute("CREATE TABLE invoices (id int)")
        .unwrap();
    let location = StoreLocation::Postgres(other);
    let err = Store::open_location(&location, &dir.path().join("store"), &key).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("no gatewarden schema"), "{err}");
}

#[test]
fn open_reports_a_bad_url_and_an_unreachable_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("credential.key");
    let bad = StoreLocation::Postgres("postgres://gw:secret@host:notaport/db".to_owned());
    let err = Store::open_location(&bad, dir.path(), &key).unwrap_err();
    assert!(matches!(err, StoreError::BadLocation { .. }), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
    // Nobody listens on a socket in an empty folder: refused at once, a typed error.
    let nowhere = StoreLocation::Postgres(format!(
        "postgresql:///gw?host={}&user=gw&password=secret",
        dir.path().display()
    ));
    let err = Store::open_location(&nowhere, dir.path(), &key).unwrap_err();
    assert!(matches!(err, StoreError::Postgres { .. }), "{err}");
    assert!(err.to_string().contains("connecting"), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn the_bulk_loader_is_durable_after_finish() {
    let Some((dir, url)) = fresh() else { return };
    let store = open_url(&url, dir.path());
    store.upsert_gates(&[gate(4, 1)]).unwrap();
    let mut loader = store.bulk_entry_loader();
    loader.finish().unwrap(); // nothing written yet: nothing to do
    let records: Vec<EntryRecord> = (1..=50)
        .map(|seq| entry(4, seq, 1, Some(seq), Decision::Admit, ModeKind::Verify, seq))
        .collect();
    assert!(
        loader
            .commit(&records)
            .unwrap()
            .iter()
            .all(|o| *o == CommitOutcome::Inserted)
    );
    loader.finish().unwrap();
    assert_eq!(store.history_stats().unwrap().entries, 50);
    assert_eq!(store.max_seq_per_gate().unwrap(), vec![(GateId(4), 50)]);
}

#[test]
fn replay_and_calibration_are_refused_with_a_typed_error() {
    let Some((dir, url)) = fresh() else { return };
    let store = open_url(&url, dir.path());
    let err = EntryArchive::of_store(&store).unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err}");
    assert!(
        err.to_string()
            .ends_with("is not supported on the PostgreSQL store"),
        "{err}"
    );
    let location = StoreLocation::Postgres(url);
    let err = EntryArchive::open_at(Some(&location), &dir.path().join("store")).unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err}");
}

#[test]
fn maintenance_makes_partitions_ahead_of_the_commit_path() {
    let Some((dir, url)) = fresh() else { return };
    let store = open_url(&url, dir.path());
    let count = || {
        store.test_query("SELECT count(*) FROM pg_inherits WHERE inhparent = 'entries'::regclass")
    };
    assert_eq!(count(), vec![vec!["0".to_owned()]]);
    let mut cp = Checkpointer::default();
    store.checkpoint_entries(&mut cp, UnixMillis(T0)).unwrap();
    assert_eq!(
        count(),
        vec![vec!["3".to_owned()]],
        "today and two days ahead"
    );
    store.checkpoint_entries(&mut cp, UnixMillis(T0)).unwrap();
    store
        .checkpoint_entries(&mut cp, UnixMillis(T0 + 86_400_000))
        .unwrap();
    assert_eq!(count(), vec![vec!["4".to_owned()]], "one more the next day");
}

/// Applies every registry change `store`'s follower has not applied yet.
fn follow(store: &Store) -> pg::AppliedChanges {
    let mut feed = store.change_feed(false).unwrap().unwrap();
    store.apply_changes(&mut feed).unwrap()
}

#[test]
fn registry_writes_at_one_node_reach_the_other_nodes_cache() {
    let Some((dir, url)) = fresh() else { return };
    let a = open_url(&url, dir.path());
    let b = open_url(&url, dir.path());
    a.upsert_gates(&[gate(1, 1)]).unwrap();
    let mut person = subject(7);
    person.id_card = Some("110101199001010007".to_owned());
    a.upsert_subjects(&[person]).unwrap();
    a.upsert_health(&[health(7, T0, CodeColour::Red)]).unwrap();
    let card = Credential::IdCard("110101199001010007".to_owned());
    let qr = Credential::StaffQr("qr-7".to_owned());
    assert!(
        b.subject(SubjectId(7)).is_none(),
        "b was loaded before the writes"
    );
    assert!(b.gate(GateId(1)).is_none());

    let applied = follow(&b);
    assert_eq!(applied.changes, 3);
    assert_eq!(applied.templates_after, None);
    assert_eq!(b.gate(GateId(1)), Some(gate(1, 1)));
    assert_eq!(
        b.subject(SubjectId(7)).unwrap().status,
        SubjectStatus::Active
    );
    assert_eq!(b.resolve_credential(&card), Some(SubjectId(7)));
    assert_eq!(b.resolve_credential(&qr), Some(SubjectId(7)));
    assert_eq!(b.health(SubjectId(7)).unwrap().health_code, CodeColour::Red);
    let counters = b.registry_follow_counters().unwrap();
    assert_eq!(counters.applied, 3);
    assert!(counters.watermark >= 3);

    // A revocation, a replaced card, templates: each reaches b; nothing is applied twice over.
    a.revoke(SubjectId(7), "lost card", UnixMillis(T0)).unwrap();
    let mut new_card = subject(7);
    new_card.status = SubjectStatus::Revoked;
    new_card.id_card = Some("110101199001010070".to_owned());
    new_card.qr_tokens = vec![];
    a.upsert_subjects(&[new_card]).unwrap();
    let before = b.template_count().unwrap();
    let ids = a
        .add_templates(&[
            (SubjectId(7), "m", &vector(7, 8)),
            (SubjectId(7), "m", &vector(8, 8)),
        ])
        .unwrap();
    let applied = follow(&b);
    assert_eq!(applied.changes, 3);
    let after = applied.templates_after.unwrap();
    let mut seen = Vec::new();
    b.for_each_template_since(after, |id, s, _| seen.push((id, s)))
        .unwrap();
    assert_eq!(seen, vec![(ids[0], SubjectId(7)), (ids[1], SubjectId(7))]);
    assert_eq!(before, 0);
    assert_eq!(
        b.subject(SubjectId(7)).unwrap().status,
        SubjectStatus::Revoked
    );
    assert_eq!(b.resolve_credential(&card), None, "the old card is gone");
    assert_eq!(b.resolve_credential(&qr), None, "so is the QR token");
    assert_eq!(
        b.resolve_credential(&Credential::IdCard("110101199001010070".to_owned())),
        Some(SubjectId(7))
    );
    assert_eq!(follow(&b).changes, 0, "nothing new");

    // a follows its own writes: harmless, its cache stays as its writes left it.
    assert_eq!(follow(&a).changes, 6);
    assert_eq!(
        a.subject(SubjectId(7)).unwrap().status,
        SubjectStatus::Revoked
    );
    assert_eq!(a.resolve_credential(&card), None);
    a.reinstate(SubjectId(7), "found", UnixMillis(T0)).unwrap();
    follow(&b);
    assert_eq!(
        b.subject(SubjectId(7)).unwrap().status,
        SubjectStatus::Active
    );
}

#[test]
fn a_node_opened_after_writes_starts_following_where_its_cache_was_loaded() {
    let Some((dir, url)) = fresh() else { return };
    let a = open_url(&url, dir.path());
    a.upsert_gates(&[gate(1, 1), gate(2, 1)]).unwrap();
    let b = open_url(&url, dir.path());
    assert!(b.gate(GateId(2)).is_some(), "loaded at open");
    assert_eq!(
        follow(&b).changes,
        0,
        "the open's snapshot already held them"
    );
    a.upsert_gates(&[gate(3, 2)]).unwrap();
    assert_eq!(follow(&b).changes, 1);
    assert_eq!(b.gate(GateId(3)), Some(gate(3, 2)));
    // Change rows hold ids only: nothing personal in the log.
    let kinds = b.test_query("SELECT kind, key FROM registry_changes ORDER BY id");
    assert_eq!(kinds.len(), 3);
    assert_eq!(kinds[2], vec!["gate".to_owned(), "3".to_owned()]);
}

#[test]
fn a_write_judges_the_databases_rows_not_a_cache_the_follower_has_not_caught_up() {
    let Some((dir, url)) = fresh() else { return };
    let a = open_url(&url, dir.path());
    let b = open_url(&url, dir.path());
    a.upsert_subjects(&[subject(7)]).unwrap();
    // b has not followed a yet, and still knows 7 at once when it writes about them.
    let ack = b
        .upsert_health(&[health(7, T0, CodeColour::Green)])
        .unwrap();
    assert_eq!((ack.applied, ack.unknown_subjects), (1, 0));
    assert!(b.revoke(SubjectId(7), "lost card", UnixMillis(T0)).unwrap());
    // a's copy still says active; an upload of 7 as active must not lift b's revocation.
    assert_eq!(
        a.subject(SubjectId(7)).unwrap().status,
        SubjectStatus::Active
    );
    let err = a.upsert_subjects(&[subject(7)]).unwrap_err();
    assert!(matches!(err, StoreError::StatusLift { .. }), "{err}");
    assert_eq!(
        a.reinstate(SubjectId(7), "found", UnixMillis(T0)).unwrap(),
        Some(SubjectStatus::Revoked),
        "a reinstates what b revoked"
    );
    follow(&b);
    assert_eq!(
        b.subject(SubjectId(7)).unwrap().status,
        SubjectStatus::Active
    );
}

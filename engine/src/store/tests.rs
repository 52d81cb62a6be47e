//! Store tests against real SQLite files in temporary directories.

use std::path::Path;

use gatewarden_protocol::{
    Category, Check, CheckKind, CodeColour, Credential, Decision, Direction, Display,
    DisplayColour, GateId, HealthRecord, MarketId, Outcome, SubjectId, SubjectRecord,
    SubjectStatus, TestResult, UnixMillis, Verdict, ZoneId,
};

use super::*;
use crate::model::GateInfo;

pub(crate) const T0: u64 = 1_780_000_000_000; // 2026-05-28

fn subject(id: u64) -> SubjectRecord {
    SubjectRecord {
        subject: SubjectId(id),
        category: Category::Merchant,
        home_market: MarketId(1),
        markets: vec![MarketId(1), MarketId(2)],
        zones: vec![ZoneId(3)],
        valid_from: Some(UnixMillis(T0)),
        valid_until: None,
        id_card: None,
        qr_tokens: vec![format!("qr-{id}")],
        status: SubjectStatus::Active,
    }
}

fn health(id: u64, updated_at: u64, colour: CodeColour) -> HealthRecord {
    HealthRecord {
        subject: SubjectId(id),
        test_at: Some(UnixMillis(updated_at - 1000)),
        test_result: Some(TestResult::Negative),
        vaccine_doses: 3,
        health_code: colour,
        travel_code: CodeColour::Green,
        updated_at: UnixMillis(updated_at),
    }
}

pub(crate) fn verdict(
    gate: u32,
    seq: u64,
    subject: Option<u64>,
    decision: Decision,
    at: u64,
) -> Verdict {
    let failing = decision != Decision::Admit;
    Verdict {
        gate: GateId(gate),
        seq,
        decision,
        subject: subject.map(SubjectId),
        score: subject.map(|_| 0.83),
        checks: vec![
            Check {
                kind: CheckKind::FaceMatch,
                outcome: Outcome::Pass,
                value: Some(0.83),
                threshold: Some(0.6),
                detail: String::new(),
            },
            Check {
                kind: CheckKind::HealthCode,
                outcome: if failing {
                    Outcome::Fail
                } else {
                    Outcome::Pass
                },
                value: None,
                threshold: None,
                detail: "yellow".to_owned(),
            },
        ],
        display: Display {
            colour: if failing {
                DisplayColour::Red
            } else {
                DisplayColour::Green
            },
            text: "ok".to_owned(),
        },
        decided_at: UnixMillis(at),
        replayed: false,
    }
}

/// An entry at gate `gate` of market `market`, decided at `T0 + at_s` seconds.
pub(crate) fn entry(
    gate: u32,
    seq: u64,
    market: u32,
    subject: Option<u64>,
    decision: Decision,
    mode: ModeKind,
    at_s: u64,
) -> EntryRecord {
    let at = T0 + at_s * 1000;
    EntryRecord {
        verdict: verdict(gate, seq, subject, decision, at),
        market: MarketId(market),
        zone: ZoneId(gate * 10),
        mode,
        direction: Direction::Entry,
        captured_at: UnixMillis(at - 40),
        fingerprint: EventFingerprint([(seq % 251) as u8; 16]),
        policy: Some(crate::policy::PolicyVersion::from_stored(format!(
            "{:012x}",
            seq % 3
        ))),
    }
}

/// The store of test folder `dir`: SQLite files in it, or, while a test runs through
/// `on_postgres`, a PostgreSQL database of the shared test server that belongs to `dir` (so
/// that reopening `dir` reopens the same database).
pub(crate) fn open(dir: &Path) -> Store {
    #[cfg(feature = "postgres")]
    if let Some(store) = on_postgres::open(dir) {
        return store;
    }
    Store::open(&dir.join("store")).unwrap()
}

fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn open_reopen_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.upsert_subjects(&[subject(1), subject(2)]).unwrap();
        store
            .upsert_health(&[health(1, T0, CodeColour::Green)])
            .unwrap();
        store
            .upsert_gates(&[GateInfo {
                gate: GateId(7),
                market: MarketId(1),
                zone: ZoneId(3),
                name: "north".to_owned(),
            }])
            .unwrap();
        let v = vector(1, 8);
        store.add_templates(&[(SubjectId(1), "m1", &v)]).unwrap();
        let mut w = store.entry_writer().unwrap();
        w.commit(&[entry(
            7,
            1,
            1,
            Some(1),
            Decision::Admit,
            ModeKind::Verify,
            0,
        )])
        .unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.subject_count(), 2);
    let cached = SubjectRecord {
        qr_tokens: vec![], // kept only as hashes
        ..subject(2)
    };
    assert_eq!(*store.subject(SubjectId(2)).unwrap(), cached);
    assert_eq!(
        store.health(SubjectId(1)),
        Some(health(1, T0, CodeColour::Green))
    );
    assert_eq!(store.gate(GateId(7)).unwrap().name, "north");
    assert_eq!(store.gates().len(), 1);
    assert_eq!(store.template_count().unwrap(), 1);
    assert!(store.verdict_for(GateId(7), 1).unwrap().is_some());
    assert_eq!(
        store.resolve_credential(&Credential::StaffQr("qr-2".to_owned())),
        Some(SubjectId(2))
    );
    store.verify().unwrap();
}

#[cfg(unix)]
#[test]
fn open_creates_owner_only_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("data").join("store");
    let store = Store::open(&store_dir).unwrap();
    store.upsert_subjects(&[subject(1)]).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&store_dir), 0o700);
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    for name in [DB_FILE, KEY_FILE, "gatewarden.db-wal", "gatewarden.db-shm"] {
        let path = store_dir.join(name);
        assert!(path.exists(), "{name} missing");
        assert_eq!(mode(&path), 0o600, "{name}");
    }
    assert_eq!(std::fs::read(store_dir.join(KEY_FILE)).unwrap().len(), 32);
}

#[test]
fn open_rejects_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let db = dir.path().join("store").join(DB_FILE);
    Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Store::open(&dir.path().join("store")).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Incompatible {
                found: 99,
                supported: schema::SCHEMA_VERSION
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("99") && msg.contains("newer"), "{msg}");
}

#[test]
fn open_rejects_garbage_file() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(store_dir.join(DB_FILE), garbage).unwrap();
    let err = Store::open(&store_dir).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
}

#[test]
fn open_rejects_short_file() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    std::fs::write(store_dir.join(DB_FILE), b"SQLite format 3\0abc").unwrap();
    let err = Store::open(&store_dir).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn open_rejects_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.upsert_subjects(&[subject(1)]).unwrap();
        let vectors: Vec<Vec<f32>> = (0..200).map(|i| vector(i, 512)).collect();
        let rows: Vec<_> = vectors
            .iter()
            .map(|v| (SubjectId(1), "m1", v.as_slice()))
            .collect();
        store.add_templates(&rows).unwrap();
    } // the last connection to close checkpoints the WAL into the file and removes it
    let db = dir.path().join("store").join(DB_FILE);
    assert!(!dir.path().join("store").join("gatewarden.db-wal").exists());
    let len = std::fs::metadata(&db).unwrap().len();
    assert!(len > 400_000, "{len}");
    let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let err = Store::open(&dir.path().join("store")).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn open_rejects_foreign_sqlite_database() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let conn = Connection::open(store_dir.join(DB_FILE)).unwrap();
    conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, data BLOB)")
        .unwrap();
    drop(conn);
    let err = Store::open(&store_dir).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("no gatewarden mark"), "{err}");
}

#[test]
fn open_refuses_lost_or_wrong_credential_key() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    {
        let store = Store::open(&store_dir).unwrap();
        let mut s = subject(1);
        s.id_card = Some("11010519491231002X".to_owned());
        store.upsert_subjects(&[s]).unwrap();
    }
    let key = store_dir.join(KEY_FILE);
    let original = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let err = Store::open(&store_dir).unwrap_err();
    assert!(matches!(err, StoreError::KeyMissing { .. }), "{err:?}");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let err = Store::open(&store_dir).unwrap_err();
    assert!(matches!(err, StoreError::KeyMismatch { .. }), "{err:?}");
    std::fs::write(&key, &original).unwrap();
    let store = Store::open(&store_dir).unwrap();
    assert_eq!(
        store.resolve_credential(&Credential::IdCard("11010519491231002X".to_owned())),
        Some(SubjectId(1))
    );
}

#[test]
fn upsert_subjects_is_idempotent_and_replaces_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let records = [subject(1), subject(2)];
    assert_eq!(store.upsert_subjects(&records).unwrap(), 2);
    assert_eq!(store.upsert_subjects(&records).unwrap(), 2);
    assert_eq!(store.subject_count(), 2);
    let mut changed = subject(1);
    changed.qr_tokens = vec!["qr-new".to_owned()];
    changed.category = Category::Manager;
    store.upsert_subjects(&[changed]).unwrap();
    let qr = |t: &str| store.resolve_credential(&Credential::StaffQr(t.to_owned()));
    assert_eq!(qr("qr-1"), None, "the old token no longer resolves");
    assert_eq!(qr("qr-new"), Some(SubjectId(1)));
    assert_eq!(
        store.subject(SubjectId(1)).unwrap().category,
        Category::Manager
    );
    // The same after a reopen: the database agrees with the cache.
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.resolve_credential(&Credential::StaffQr("qr-1".to_owned())),
        None
    );
    assert_eq!(
        store.resolve_credential(&Credential::StaffQr("qr-new".to_owned())),
        Some(SubjectId(1))
    );
    assert!(
        store.subject(SubjectId(1)).unwrap().qr_tokens.is_empty(),
        "tokens are kept only as hashes"
    );
}

#[test]
fn staff_qr_tokens_are_stored_only_as_keyed_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let token = "STAFF-TOKEN-7f3a9c";
    let mut s = subject(1);
    s.qr_tokens = vec![token.to_owned()];
    {
        let store = open(dir.path());
        store.upsert_subjects(&[s]).unwrap();
    }
    let store_dir = dir.path().join("store");
    for name in [DB_FILE, "gatewarden.db-wal"] {
        let path = store_dir.join(name);
        if path.exists() {
            assert!(
                !contains(&file_bytes(&path), token.as_bytes()),
                "{name} holds the token"
            );
        }
    }
    let store = open(dir.path());
    assert_eq!(
        store.resolve_credential(&Credential::StaffQr(token.to_owned())),
        Some(SubjectId(1))
    );
    assert_eq!(
        store.resolve_credential(&Credential::StaffQr(token.to_lowercase())),
        None,
        "tokens match exactly"
    );
}

/// Version 1 kept staff QR tokens in clear; opening it replaces them by keyed hashes, and a
/// store made with one key refuses another once it holds such hashes.
#[test]
fn clear_qr_tokens_of_a_v1_store_are_hashed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    {
        let conn = Connection::open(store_dir.join(DB_FILE)).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO subjects VALUES (4, 'staff', 1, '[]', '[]', NULL, NULL, 'active');
             INSERT INTO credentials VALUES ('staff_qr', CAST('qr-four' AS BLOB), 4);",
        )
        .unwrap();
    }
    let store = Store::open(&store_dir).unwrap();
    assert_eq!(
        store.resolve_credential(&Credential::StaffQr("qr-four".to_owned())),
        Some(SubjectId(4))
    );
    drop(store);
    let db = file_bytes(&store_dir.join(DB_FILE));
    let wal = store_dir.join("gatewarden.db-wal");
    assert!(!contains(&db, b"qr-four"));
    assert!(!wal.exists() || !contains(&file_bytes(&wal), b"qr-four"));
    // The hashes depend on the key now: a new key is refused, not silently used.
    std::fs::remove_file(store_dir.join(KEY_FILE)).unwrap();
    assert!(matches!(
        Store::open(&store_dir),
        Err(StoreError::KeyMissing { .. })
    ));
}

#[test]
fn the_credential_key_can_live_apart_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys").join("credential.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let store_dir = dir.path().join("store");
    let mut s = subject(1);
    s.id_card = Some("110105194912310021".to_owned());
    {
        let store = Store::open_with_key(&store_dir, &key).unwrap();
        store.upsert_subjects(&[s]).unwrap();
    }
    assert!(key.exists() && !store_dir.join(KEY_FILE).exists());
    let store = Store::open_with_key(&store_dir, &key).unwrap();
    assert_eq!(
        store.resolve_credential(&Credential::IdCard("110105194912310021".to_owned())),
        Some(SubjectId(1))
    );
    drop(store);
    assert!(matches!(
        Store::open(&store_dir),
        Err(StoreError::KeyMissing { .. })
    ));
}

#[test]
fn id_card_is_stored_only_as_a_keyed_hash() {
    let dir = tempfile::tempdir().unwrap();
    let number = "11010519491231002X";
    {
        let store = open(dir.path());
        let mut s = subject(1);
        s.id_card = Some(number.to_owned());
        store.upsert_subjects(&[s]).unwrap();
        assert_eq!(store.subject(SubjectId(1)).unwrap().id_card, None);
        let card = |n: &str| store.resolve_credential(&Credential::IdCard(n.to_owned()));
        assert_eq!(card(number), Some(SubjectId(1)));
        assert_eq!(
            card(" 11010519491231002x "),
            Some(SubjectId(1)),
            "normalised"
        );
        assert_eq!(card("110105194912310021"), None);
        // While open: the WAL holds the newest pages.
        let store_dir = dir.path().join("store");
        for name in [DB_FILE, "gatewarden.db-wal"] {
            let bytes = file_bytes(&store_dir.join(name));
            assert!(
                !contains(&bytes, number.as_bytes()),
                "{name} holds the number"
            );
            assert!(
                !contains(&bytes, b"110105194912"),
                "{name} holds part of the number"
            );
        }
    }
    let bytes = file_bytes(&dir.path().join("store").join(DB_FILE));
    assert!(!bytes.is_empty());
    assert!(!contains(&bytes, number.as_bytes()));
}

#[test]
fn credential_conflict_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.upsert_subjects(&[subject(1)]).unwrap();
    let mut thief = subject(2);
    thief.qr_tokens = vec!["qr-1".to_owned()];
    let err = store.upsert_subjects(&[subject(3), thief]).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::CredentialTaken {
                subject: SubjectId(2),
                holder: SubjectId(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        store.subject(SubjectId(3)).is_none(),
        "the batch is one transaction"
    );
    drop(store);
    assert!(open(dir.path()).subject(SubjectId(3)).is_none());
}

#[test]
fn upsert_health_is_idempotent_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.upsert_subjects(&[subject(1)]).unwrap();
    let new = health(1, T0 + 10, CodeColour::Yellow);
    let old = health(1, T0, CodeColour::Green);
    let ack = store
        .upsert_health(&[new.clone(), health(9, T0, CodeColour::Green)])
        .unwrap();
    assert_eq!((ack.applied, ack.unknown_subjects), (1, 1));
    let ack = store.upsert_health(std::slice::from_ref(&new)).unwrap();
    assert_eq!(
        (ack.applied, ack.unknown_subjects),
        (1, 0),
        "replay applies the same record"
    );
    let ack = store.upsert_health(&[old]).unwrap();
    assert_eq!(
        (ack.applied, ack.unknown_subjects),
        (0, 0),
        "a stale record is ignored"
    );
    assert_eq!(store.health(SubjectId(1)), Some(new.clone()));
    assert_eq!(store.health(SubjectId(9)), None);
    drop(store);
    assert_eq!(open(dir.path()).health(SubjectId(1)), Some(new));
}

#[test]
fn revoke_changes_status_and_audits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut banned = subject(2);
    banned.status = SubjectStatus::Blocklisted;
    store.upsert_subjects(&[subject(1), banned]).unwrap();
    assert!(
        store
            .revoke(SubjectId(1), "lost card", UnixMillis(T0))
            .unwrap()
    );
    assert!(store.revoke(SubjectId(2), "left", UnixMillis(T0)).unwrap());
    assert!(!store.revoke(SubjectId(3), "who", UnixMillis(T0)).unwrap());
    assert_eq!(
        store.subject(SubjectId(1)).unwrap().status,
        SubjectStatus::Revoked
    );
    assert_eq!(
        store.subject(SubjectId(2)).unwrap().status,
        SubjectStatus::Blocklisted
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.subject(SubjectId(1)).unwrap().status,
        SubjectStatus::Revoked
    );
    let audits = store.test_query("SELECT count(*) FROM revocations");
    assert_eq!(audits, vec![vec!["2".to_owned()]]);
}

#[test]
fn templates_round_trip_and_stream_from_a_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.upsert_subjects(&[subject(1), subject(2)]).unwrap();
    let vs: Vec<Vec<f32>> = (0..5).map(|i| vector(i, 16)).collect();
    let ids = store
        .add_templates(&[
            (SubjectId(1), "m1", &vs[0]),
            (SubjectId(2), "m1", &vs[1]),
            (SubjectId(1), "m1", &vs[2]),
        ])
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let more = store
        .add_templates(&[(SubjectId(2), "m1", &vs[3])])
        .unwrap();
    assert!(more[0] > ids[2]);
    let mut seen = Vec::new();
    let n = store
        .for_each_template_since(ids[0], |id, s, v| seen.push((id, s, v.to_vec())))
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        seen,
        vec![
            (ids[1], SubjectId(2), vs[1].clone()),
            (ids[2], SubjectId(1), vs[2].clone()),
            (more[0], SubjectId(2), vs[3].clone()),
        ]
    );
    assert_eq!(store.template_count().unwrap(), 4);

    let err = store.add_templates(&[(SubjectId(1), "m1", &vs[4]), (SubjectId(9), "m1", &vs[4])]);
    assert!(
        matches!(err, Err(StoreError::UnknownSubject(SubjectId(9)))),
        "{err:?}"
    );
    let mut bad = vs[4].clone();
    bad[3] = f32::NAN;
    let err = store
        .add_templates(&[(SubjectId(1), "m1", &bad)])
        .unwrap_err();
    assert!(err.to_string().contains("index 3"), "{err}");
    assert!(store.add_templates(&[(SubjectId(1), "m1", &[])]).is_err());
    assert_eq!(
        store.template_count().unwrap(),
        4,
        "failed batches add nothing"
    );
}

#[test]
fn commit_reports_duplicates_and_keeps_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut w = store.entry_writer().unwrap();
    let first = entry(1, 5, 1, Some(1), Decision::Admit, ModeKind::Verify, 0);
    let mut retry = first.clone();
    retry.verdict.decision = Decision::Deny; // a racing retry decided differently
    let out = w
        .commit(&[
            first,
            entry(1, 6, 1, None, Decision::Deny, ModeKind::Identify, 1),
            retry.clone(),
        ])
        .unwrap();
    assert_eq!(
        out,
        vec![
            CommitOutcome::Inserted,
            CommitOutcome::Inserted,
            CommitOutcome::Duplicate
        ]
    );
    assert_eq!(w.commit(&[retry]).unwrap(), vec![CommitOutcome::Duplicate]);
    assert_eq!(store.history_stats().unwrap().entries, 2);
    let stored = store.verdict_for(GateId(1), 5).unwrap().unwrap();
    assert_eq!(stored.decision, Decision::Admit, "the first record stands");
}

#[test]
fn verdict_for_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut w = store.entry_writer().unwrap();
    let record = entry(
        3,
        u64::MAX,
        1,
        Some(u64::MAX),
        Decision::Escalate,
        ModeKind::SignIn,
        9,
    );
    w.commit(std::slice::from_ref(&record)).unwrap();
    let mut expected = record.verdict.clone();
    expected.replayed = true;
    assert_eq!(
        store.verdict_for(GateId(3), u64::MAX).unwrap(),
        Some(expected)
    );
    assert_eq!(store.verdict_for(GateId(3), 1).unwrap(), None);
    let rows = store
        .trajectory(SubjectId(u64::MAX), UnixMillis(0), UnixMillis(u64::MAX))
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].seq, u64::MAX);
    assert_eq!(rows[0].failed, vec![CheckKind::HealthCode]);
    assert_eq!(rows[0].mode, ModeKind::SignIn);
}

/// Market 1: subject 1 enters at 0 s, 100 s and 5000 s; subject 2 at 30 s (denied at 20 s);
/// subject 3 at 2000 s; subject 4 signs in at 10 s and again at 50 s. Market 2: subject 1 at
/// 9000 s, subject 5 at 9010 s.
fn query_fixture(store: &Store) {
    use Decision::{Admit, Deny};
    use ModeKind::{Identify, SignIn, Verify};
    let mut w = store.entry_writer().unwrap();
    let mut exit = entry(1, 9, 1, Some(1), Admit, Verify, 6000);
    exit.direction = Direction::Exit;
    w.commit(&[
        entry(1, 1, 1, Some(1), Admit, Verify, 0),
        entry(2, 1, 1, Some(4), Admit, SignIn, 10),
        entry(1, 2, 1, Some(2), Deny, Identify, 20),
        entry(1, 3, 1, Some(2), Admit, Identify, 30),
        entry(3, 1, 1, Some(4), Admit, SignIn, 50),
        entry(1, 4, 1, Some(1), Admit, Verify, 100),
        entry(1, 5, 1, Some(3), Admit, Verify, 2000),
        entry(1, 6, 1, Some(1), Admit, Verify, 5000),
        entry(1, 7, 1, None, Deny, Identify, 5001),
        exit,
        entry(9, 1, 2, Some(1), Admit, Verify, 9000),
        entry(9, 2, 2, Some(5), Admit, Verify, 9010),
    ])
    .unwrap();
}

fn at(s: u64) -> UnixMillis {
    UnixMillis(T0 + s * 1000)
}

#[test]
fn trajectory_lists_a_subject_across_markets_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    query_fixture(&store);
    let rows = store.trajectory(SubjectId(1), at(0), at(100_000)).unwrap();
    let got: Vec<(u32, u64)> = rows.iter().map(|r| (r.market.0, r.decided_at.0)).collect();
    assert_eq!(
        got,
        vec![
            (1, at(0).0),
            (1, at(100).0),
            (1, at(5000).0),
            (1, at(6000).0),
            (2, at(9000).0)
        ]
    );
    let window = store.trajectory(SubjectId(1), at(100), at(5000)).unwrap();
    assert_eq!(window.len(), 1, "half-open range");
    let denied = store.trajectory(SubjectId(2), at(0), at(100)).unwrap();
    assert_eq!(
        denied[0].decision,
        Decision::Deny,
        "denied attempts are part of it"
    );
}

#[test]
fn frequency_counts_admitted_entries_most_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.upsert_subjects(&[subject(1)]).unwrap();
    query_fixture(&store);
    let rows = store.frequency(MarketId(1), at(0), at(100_000), 1).unwrap();
    let got: Vec<(u64, u32)> = rows.iter().map(|r| (r.subject.0, r.entries)).collect();
    // Subject 1's exit and subject 4's sign-ins are not entries; subject 2's denial neither.
    assert_eq!(got, vec![(1, 3), (2, 1), (3, 1)]);
    assert_eq!(rows[0].category, Some(Category::Merchant));
    assert_eq!(rows[1].category, None);
    assert_eq!((rows[0].first_at, rows[0].last_at), (at(0), at(5000)));
    let busy = store.frequency(MarketId(1), at(0), at(100_000), 2).unwrap();
    assert_eq!(busy.len(), 1);
    assert!(
        store
            .frequency(MarketId(3), at(0), at(100_000), 1)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn signins_list_first_admitted_signin_per_subject() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    query_fixture(&store);
    let rows = store.signins(MarketId(1), at(0), at(100_000)).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].subject, rows[0].first_at), (SubjectId(4), at(10)));
    assert_eq!(rows[0].gate, GateId(2), "the gate of the first sign-in");
    let later = store.signins(MarketId(1), at(20), at(100_000)).unwrap();
    assert_eq!((later[0].first_at, later[0].gate), (at(50), GateId(3)));
    assert!(
        store
            .signins(MarketId(2), at(0), at(100_000))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn contacts_find_others_in_the_same_market_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    query_fixture(&store);
    let rows = store
        .contacts(SubjectId(1), 60_000, at(0), at(100_000))
        .unwrap();
    let got: Vec<(u64, u32, u32, u64)> = rows
        .iter()
        .map(|r| (r.subject.0, r.market.0, r.passages, r.closest_ms))
        .collect();
    // Within 60 s of 0 s / 100 s: subject 4 (10 s, 50 s), subject 2 (30 s; the denial at 20 s
    // does not count). Nobody near 5000 s or 6000 s. Subject 5 in market 2 near 9000 s.
    assert_eq!(
        got,
        vec![(4, 1, 2, 10_000), (2, 1, 1, 30_000), (5, 2, 1, 10_000)]
    );
    assert_eq!(rows[0].first_at, at(10));
    let narrow = store
        .contacts(SubjectId(1), 5_000, at(0), at(100_000))
        .unwrap();
    assert!(narrow.is_empty(), "{narrow:?}");
    let only_market_2 = store
        .contacts(SubjectId(1), 60_000, at(8000), at(100_000))
        .unwrap();
    assert_eq!(only_market_2.len(), 1);
}

#[test]
fn for_each_entry_since_streams_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    query_fixture(&store);
    let mut times = Vec::new();
    store
        .for_each_entry_since(at(5000), |r| times.push(r.decided_at))
        .unwrap();
    assert_eq!(
        times,
        vec![at(5000), at(5001), at(6000), at(9000), at(9010)]
    );
}

#[test]
fn passages_are_the_admitted_entries_of_known_people_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    query_fixture(&store);
    let mut expected = Vec::new();
    store
        .for_each_entry_since(at(20), |r| {
            if let (Decision::Admit, Some(subject)) = (r.decision, r.subject) {
                expected.push(Passage {
                    subject,
                    market: r.market,
                    mode: r.mode,
                    direction: r.direction,
                    at: r.decided_at,
                });
            }
        })
        .unwrap();
    let mut passages = Vec::new();
    store
        .for_each_passage_since(at(20), None, |p| passages.push(*p))
        .unwrap();
    assert_eq!(passages, expected);
    // The fixture's deny at 20 s and the unknown person at 5001 s are not passages; the exit
    // at 6000 s is.
    let times: Vec<UnixMillis> = passages.iter().map(|p| p.at).collect();
    assert_eq!(
        times,
        [30, 50, 100, 2000, 5000, 6000, 9000, 9010].map(at).to_vec()
    );
    assert_eq!(passages[5].direction, Direction::Exit);
    assert_eq!(passages[1].mode, ModeKind::SignIn);
    // One market's passages only (a takeover's rebuild).
    let mut market_2 = Vec::new();
    store
        .for_each_passage_since(at(0), Some(&[MarketId(2)]), |p| market_2.push(*p))
        .unwrap();
    assert_eq!(market_2, passages[6..].to_vec());
}

#[test]
fn readers_see_commits_while_the_writer_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let mut w = store.entry_writer().unwrap();
    let reader = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            for _ in 0..50 {
                store
                    .trajectory(SubjectId(1), UnixMillis(0), UnixMillis(u64::MAX))
                    .unwrap();
            }
        })
    };
    for seq in 0..50 {
        w.commit(&[entry(
            1,
            seq,
            1,
            Some(1),
            Decision::Admit,
            ModeKind::Verify,
            seq,
        )])
        .unwrap();
    }
    reader.join().unwrap();
    assert_eq!(
        store
            .trajectory(SubjectId(1), UnixMillis(0), UnixMillis(u64::MAX))
            .unwrap()
            .len(),
        50
    );
}

#[test]
fn store_is_shareable_and_the_writer_movable() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send::<EntryWriter>();
}

#[test]
fn rows_serialise_names_not_wire_codes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.upsert_subjects(&[subject(1)]).unwrap();
    query_fixture(&store);
    let rows = store.trajectory(SubjectId(2), at(0), at(100)).unwrap();
    let json = serde_json::to_value(&rows[0]).unwrap();
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["mode"], "identify");
    assert_eq!(json["direction"], "entry");
    assert_eq!(json["failed"], serde_json::json!(["health_code"]));
    let freq = store.frequency(MarketId(1), at(0), at(100_000), 1).unwrap();
    let json = serde_json::to_value(&freq).unwrap();
    assert_eq!(json[0]["category"], "merchant");
    assert_eq!(json[1]["category"], serde_json::Value::Null);
}

/// Commit latency of 40-record batches on the real disk: median and p99 over 200 commits.
/// Run: `cargo test -p gatewarden --lib store::tests::stress_commit_latency -- --ignored
/// --nocapture`. `GATEWARDEN_BENCH_DIR` picks the file system (default: the system temp dir).
#[test]
#[ignore = "measures fsync latency; run by hand"]
fn stress_commit_latency() {
    use crate::clock::{Clock, SystemClock};
    let base = std::env::var_os("GATEWARDEN_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = open(dir.path());
    let mut w = store.entry_writer().unwrap();
    let mut lat = Vec::new();
    let mut seq = 0;
    for round in 0..220 {
        let batch: Vec<EntryRecord> = (0..40)
            .map(|i| {
                seq += 1;
                entry(
                    1 + i % 8,
                    seq,
                    1,
                    Some(u64::from(i)),
                    Decision::Admit,
                    ModeKind::Verify,
                    seq,
                )
            })
            .collect();
        let start = SystemClock.instant();
        w.commit(&batch).unwrap();
        let us = SystemClock
            .instant()
            .saturating_duration_since(start)
            .as_micros() as u64;
        if round >= 20 {
            lat.push(us); // the first rounds warm the page cache and statement cache
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    println!(
        "commit of 40 records over {} commits: median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}

/// Bulk template load: 100k x 512-d in batches of 5,000.
/// Run: `cargo test -p gatewarden --lib store::tests::stress_template_load -- --ignored --nocapture`.
#[test]
#[ignore = "writes 200 MB; run by hand"]
fn stress_template_load() {
    use crate::clock::{Clock, SystemClock};
    let base = std::env::var_os("GATEWARDEN_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = open(dir.path());
    let subjects: Vec<SubjectRecord> = (0..100_000).map(subject).collect();
    let start = SystemClock.instant();
    store.upsert_subjects(&subjects).unwrap();
    let subjects_s = SystemClock
        .instant()
        .saturating_duration_since(start)
        .as_secs_f64();
    let vectors: Vec<Vec<f32>> = (0..5_000).map(|i| vector(i, 512)).collect();
    let start = SystemClock.instant();
    for batch in 0..20u64 {
        let rows: Vec<_> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (SubjectId(batch * 5_000 + i as u64), "m1", v.as_slice()))
            .collect();
        store.add_templates(&rows).unwrap();
    }
    let add_s = SystemClock
        .instant()
        .saturating_duration_since(start)
        .as_secs_f64();
    let start = SystemClock.instant();
    let mut sum = 0.0f64;
    let n = store
        .for_each_template_since(0, |_, _, v| sum += f64::from(v[0]))
        .unwrap();
    let scan_s = SystemClock
        .instant()
        .saturating_duration_since(start)
        .as_secs_f64();
    assert_eq!(n, 100_000);
    let start = SystemClock.instant();
    drop(store);
    let reopen = open(dir.path());
    let open_s = SystemClock
        .instant()
        .saturating_duration_since(start)
        .as_secs_f64();
    assert_eq!(reopen.subject_count(), 100_000);
    println!(
        "100k subjects upsert {subjects_s:.2} s; 100k x 512 templates add {add_s:.2} s; \
         stream {scan_s:.2} s; close + reopen (cache load) {open_s:.2} s"
    );
}

#[test]
fn market_staff_lists_working_categories_of_the_home_market() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut records = Vec::new();
    for (id, category, market) in [
        (5, Category::Manager, 1),
        (2, Category::ServiceWorker, 1),
        (3, Category::Shopper, 1),
        (4, Category::Staff, 2),
        (1, Category::Merchant, 1),
        (6, Category::Buyer, 1),
    ] {
        let mut r = subject(id);
        r.category = category;
        r.home_market = MarketId(market);
        r.qr_tokens = vec![];
        records.push(r);
    }
    store.upsert_subjects(&records).unwrap();
    let ids = |m| {
        store
            .market_staff(MarketId(m))
            .iter()
            .map(|r| r.subject.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(1), vec![1, 2, 5], "staff of market 1, by id");
    assert_eq!(ids(2), vec![4]);
    assert!(ids(3).is_empty());
}

/// A store written by schema version 1 (no fingerprints, no audit actions) opens, migrates,
/// and still answers for its old entries.
#[test]
fn a_v1_store_migrates_and_keeps_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let v = verdict(4, 9, Some(1), Decision::Admit, T0);
    {
        let conn = Connection::open(store_dir.join(DB_FILE)).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO entries (gate, seq, market, zone, subject, decision, mode, direction,
                                  score, captured_at, decided_at, failed, verdict)
             VALUES (4, 9, 1, 2, 1, 'admit', 'identify', 'entry', 0.83, ?1, ?2, '[]', ?3)",
            rusqlite::params![
                (T0 - 40) as i64,
                T0 as i64,
                serde_json::to_string(&v).unwrap()
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO revocations (subject, reason, at) VALUES (1, 'old', 5)",
            [],
        )
        .unwrap();
    }
    let store = Store::open(&store_dir).unwrap();
    let recorded = store.recorded_entry(GateId(4), 9).unwrap().unwrap();
    assert_eq!(recorded.fingerprint, None);
    assert_eq!(recorded.captured_at, UnixMillis(T0 - 40));
    assert_eq!(recorded.mode, ModeKind::Identify);
    assert_eq!(recorded.verdict.decision, Decision::Admit);
    assert!(recorded.verdict.replayed);
    let action = store.test_query("SELECT action FROM revocations");
    assert_eq!(action, vec![vec!["revoke".to_owned()]]);
    // New entries carry their fingerprint.
    let mut w = store.entry_writer().unwrap();
    let record = entry(4, 10, 1, Some(1), Decision::Admit, ModeKind::Verify, 5);
    w.commit(std::slice::from_ref(&record)).unwrap();
    let recorded = store.recorded_entry(GateId(4), 10).unwrap().unwrap();
    assert_eq!(recorded.fingerprint, Some(record.fingerprint));
}

#[test]
fn event_fingerprints_are_keyed_per_store() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (a, b) = (open(a.path()), open(b.path()));
    assert_eq!(a.event_fingerprint(b"event"), a.event_fingerprint(b"event"));
    assert_ne!(a.event_fingerprint(b"event"), a.event_fingerprint(b"evenT"));
    assert_ne!(a.event_fingerprint(b"event"), b.event_fingerprint(b"event"));
}

/// No import lifts a revocation or a blocklisting; an explicit reinstatement does, and is
/// audited.
#[test]
fn only_a_reinstatement_lifts_a_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut banned = subject(2);
    banned.status = SubjectStatus::Blocklisted;
    store.upsert_subjects(&[subject(1), banned]).unwrap();
    store
        .revoke(SubjectId(1), "lost card", UnixMillis(T0))
        .unwrap();

    let err = store
        .upsert_subjects(&[subject(3), subject(1)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::StatusLift {
                subject: SubjectId(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("reinstate"), "{err}");
    assert!(
        store.subject(SubjectId(3)).is_none(),
        "nothing of the batch is written"
    );
    let mut revoked_again = subject(2);
    revoked_again.status = SubjectStatus::Revoked;
    assert!(
        store.upsert_subjects(&[revoked_again]).is_err(),
        "blocklisted to revoked lifts"
    );
    let mut tighter = subject(1);
    tighter.status = SubjectStatus::Blocklisted;
    store.upsert_subjects(&[tighter]).unwrap();

    let was = store
        .reinstate(
            SubjectId(1),
            "card found; checked by staff",
            UnixMillis(T0 + 1),
        )
        .unwrap();
    assert_eq!(was, Some(SubjectStatus::Blocklisted));
    assert_eq!(
        store.subject(SubjectId(1)).unwrap().status,
        SubjectStatus::Active
    );
    assert_eq!(
        store
            .reinstate(SubjectId(9), "who", UnixMillis(T0))
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .reinstate(SubjectId(1), "again", UnixMillis(T0))
            .unwrap(),
        Some(SubjectStatus::Active)
    );
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.subject(SubjectId(1)).unwrap().status,
        SubjectStatus::Active
    );
    let audits =
        store.test_query("SELECT action, reason FROM revocations WHERE subject = 1 ORDER BY id");
    assert_eq!(
        audits,
        vec![
            vec!["revoke".to_owned(), "lost card".to_owned()],
            vec![
                "reinstate".to_owned(),
                "card found; checked by staff".to_owned()
            ]
        ]
    );
}

#[test]
fn escalations_are_listed_resolved_once_and_expire_with_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut w = store.entry_writer().unwrap();
    let records = [
        entry(1, 1, 5, Some(10), Decision::Escalate, ModeKind::Verify, 10),
        entry(1, 2, 5, Some(11), Decision::Admit, ModeKind::Verify, 20),
        entry(
            2,
            1,
            5,
            Some(12),
            Decision::Escalate,
            ModeKind::Identify,
            30,
        ),
        entry(3, 1, 6, Some(10), Decision::Escalate, ModeKind::Verify, 40),
    ];
    w.commit(&records).unwrap();
    let all = (UnixMillis(0), UnixMillis(u64::MAX));
    let listed = store
        .escalations(MarketId(5), all.0, all.1, EscalationState::Any, 100)
        .unwrap();
    let keys: Vec<(u32, u64)> = listed
        .iter()
        .map(|e| (e.entry.gate.0, e.entry.seq))
        .collect();
    assert_eq!(
        keys,
        vec![(2, 1), (1, 1)],
        "market 5's escalations, newest first"
    );
    assert!(listed.iter().all(|e| e.resolution.is_none()));
    // Only the checks that failed or escalated come with an escalation.
    assert!(listed[0].checks.iter().all(|c| c.outcome != Outcome::Pass));
    assert_eq!(
        store
            .escalations(MarketId(5), all.0, all.1, EscalationState::Any, 1)
            .unwrap()
            .len(),
        1
    );

    let resolution = Resolution {
        gate: GateId(1),
        seq: 1,
        subject: Some(SubjectId(10)),
        market: MarketId(5),
        escalated_at: records[0].verdict.decided_at,
        outcome: ResolvedAs::Admitted,
        by: "Wang Fang".to_owned(),
        note: "paper test shown".to_owned(),
        at: UnixMillis(T0 + 60_000),
    };
    assert_eq!(store.resolve_escalation(&resolution).unwrap(), None);
    let second = Resolution {
        outcome: ResolvedAs::TurnedAway,
        by: "Li Wei".to_owned(),
        ..resolution.clone()
    };
    assert_eq!(
        store.resolve_escalation(&second).unwrap(),
        Some(resolution.clone()),
        "the first resolution stands"
    );
    let listed = store
        .escalations(MarketId(5), all.0, all.1, EscalationState::Any, 100)
        .unwrap();
    assert_eq!(listed[1].resolution, Some(resolution.clone()));
    // Open and resolved ones apart, the limit counting only what is listed.
    let open_ones = store
        .escalations(MarketId(5), all.0, all.1, EscalationState::Open, 1)
        .unwrap();
    assert_eq!((open_ones.len(), open_ones[0].entry.gate), (1, GateId(2)));
    let done = store
        .escalations(MarketId(5), all.0, all.1, EscalationState::Resolved, 1)
        .unwrap();
    assert_eq!((done.len(), done[0].entry.gate), (1, GateId(1)));
    assert_eq!(
        store.resolutions_of(SubjectId(10), all.0, all.1).unwrap(),
        vec![resolution]
    );
    // Survives a reopen, and expires with its day's entries.
    drop(w);
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store
            .resolutions_of(SubjectId(10), all.0, all.1)
            .unwrap()
            .len(),
        1
    );
    // Kept while its day is within retention (the escalation's day is the first kept one),
    // and deleted the day after, with the entries.
    let day_ms = 86_400_000;
    let escalation_day = records[0].verdict.decided_at.0 / day_ms;
    let kept_after_pruning_on = |day: u64| {
        store.prune_entries(UnixMillis(day * day_ms), 30).unwrap();
        store
            .resolutions_of(SubjectId(10), all.0, all.1)
            .unwrap()
            .len()
    };
    assert_eq!(kept_after_pruning_on(escalation_day + 29), 1);
    assert_eq!(kept_after_pruning_on(escalation_day + 30), 0);
    assert!(
        store
            .escalations(MarketId(5), all.0, all.1, EscalationState::Any, 100)
            .unwrap()
            .is_empty()
    );
}

#[cfg(feature = "postgres")]
#[path = "backend_tests.rs"]
mod on_postgres;

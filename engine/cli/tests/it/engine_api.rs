//! The library API over real files: SQLite store, gallery folder, pipeline threads.

use std::sync::Arc;

use gatewarden::clock::{Clock, SystemClock};
use gatewarden::{Engine, Reply};
use gatewarden_protocol::{
    CheckKind, Credential, Decision, ErrorCode, GateId, Mode, Outcome, Revoke, SubjectId,
    UnixMillis, Verdict,
};

use crate::support::{self, identify_event, open_populated, probe_of, stranger, verify_event};

fn now() -> UnixMillis {
    SystemClock.now()
}

fn verdict(reply: Reply) -> Verdict {
    match reply {
        Reply::Verdict(v) => v,
        other => panic!("expected a verdict, got {other:?}"),
    }
}

fn error_code(reply: Reply) -> ErrorCode {
    match reply {
        Reply::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn check(v: &Verdict, kind: CheckKind) -> Outcome {
    v.checks
        .iter()
        .find(|c| c.kind == kind)
        .map(|c| c.outcome)
        .unwrap_or_else(|| panic!("no {kind:?} check in {v:?}"))
}

#[test]
fn verify_admits_the_card_holder_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let v = verdict(engine.submit_blocking(verify_event(1, 1, 7, now())));
    assert_eq!(v.decision, Decision::Admit, "{v:?}");
    assert_eq!(v.subject, Some(SubjectId(7)));
    assert_eq!(check(&v, CheckKind::FaceMatch), Outcome::Pass);
    let stored = engine.store().verdict_for(GateId(1), 1).unwrap().unwrap();
    assert_eq!(stored.decision, v.decision);
    assert_eq!(stored.checks, v.checks);
}

#[test]
fn identify_finds_the_person_and_refuses_a_stranger() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let found = verdict(engine.submit_blocking(identify_event(2, 1, probe_of(13, 99), now())));
    assert_eq!(found.subject, Some(SubjectId(13)), "{found:?}");
    assert_eq!(found.decision, Decision::Admit);
    let refused = verdict(engine.submit_blocking(identify_event(2, 2, stranger(5), now())));
    assert_eq!(refused.decision, Decision::Deny, "{refused:?}");
    assert_eq!(refused.subject, None);
    assert_eq!(check(&refused, CheckKind::FaceMatch), Outcome::Fail);
}

#[test]
fn a_card_with_someone_elses_face_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let mut event = verify_event(1, 1, 7, now());
    event.face.as_mut().unwrap().embedding = probe_of(8, 1);
    let v = verdict(engine.submit_blocking(event));
    assert_eq!(v.decision, Decision::Deny, "{v:?}");
    assert_eq!(check(&v, CheckKind::FaceMatch), Outcome::Fail);
}

#[test]
fn an_unknown_card_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let mut event = verify_event(1, 1, 7, now());
    event.mode = Mode::Verify {
        credential: Credential::IdCard("000000000000000000".to_owned()),
    };
    let v = verdict(engine.submit_blocking(event));
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(check(&v, CheckKind::Credential), Outcome::Fail);
}

#[test]
fn fever_is_denied_with_the_reading() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let mut event = verify_event(1, 1, 7, now());
    event.temperature_c = Some(38.6);
    let v = verdict(engine.submit_blocking(event));
    assert_eq!(v.decision, Decision::Deny);
    let temp = v
        .checks
        .iter()
        .find(|c| c.kind == CheckKind::Temperature)
        .unwrap();
    assert_eq!(temp.outcome, Outcome::Fail);
    assert!((temp.value.unwrap() - 38.6).abs() < 1e-3);
}

#[test]
fn a_retry_gets_the_recorded_verdict_and_no_second_record() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let event = verify_event(1, 5, 7, now());
    let first = verdict(engine.submit_blocking(event.clone()));
    assert!(!first.replayed);
    let second = verdict(engine.submit_blocking(event));
    assert!(second.replayed);
    assert_eq!(second.decision, first.decision);
    assert_eq!(second.checks, first.checks);
    assert_eq!(engine.stats().replayed, 1);
    let trail = engine
        .trajectory(SubjectId(7), UnixMillis(0), UnixMillis(u64::MAX / 2))
        .unwrap();
    assert_eq!(trail.len(), 1, "{trail:?}");
}

/// A gate whose counter restarted sends new people under recorded keys: each must be refused
/// with `seq_reused`, never answered with the recorded (admit) verdict, and never recorded.
#[test]
fn a_reused_key_is_refused_not_answered_with_someone_elses_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let original = verify_event(1, 5, 7, now());
    let admitted = verdict(engine.submit_blocking(original.clone()));
    assert_eq!(admitted.decision, Decision::Admit);

    let mut stranger_face = original.clone();
    stranger_face.face.as_mut().unwrap().embedding = stranger(1);
    let other_person = verify_event(1, 5, 8, original.captured_at);
    let mut later = original.clone();
    later.captured_at = UnixMillis(original.captured_at.0 + 1);
    let mut identify = identify_event(1, 5, probe_of(7, 5), original.captured_at);
    identify.direction = original.direction;
    let mut warmer = original.clone();
    warmer.temperature_c = Some(36.6);
    for (what, reused) in [
        ("another face", stranger_face),
        ("another card", other_person),
        ("another capture time", later),
        ("another mode", identify),
        ("another temperature", warmer),
    ] {
        assert_eq!(
            error_code(engine.submit_blocking(reused)),
            ErrorCode::SeqReused,
            "{what}"
        );
    }
    assert_eq!(engine.stats().seq_reused, 5);
    assert_eq!(engine.stats().replayed, 0);
    for subject in [7, 8] {
        let trail = engine
            .trajectory(SubjectId(subject), UnixMillis(0), UnixMillis(u64::MAX / 2))
            .unwrap();
        assert_eq!(trail.len(), usize::from(subject == 7), "{trail:?}");
    }
    // The true retry is still answered from the record, and the gate's next seq is decided.
    assert!(verdict(engine.submit_blocking(original)).replayed);
    let next = verdict(engine.submit_blocking(verify_event(1, 6, 8, now())));
    assert!(!next.replayed);
    assert_eq!(next.subject, Some(SubjectId(8)));
}

/// A lower seq that was never recorded is a new event, decided as any other.
#[test]
fn a_lower_unrecorded_seq_is_decided() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    assert!(!verdict(engine.submit_blocking(verify_event(1, 10, 7, now()))).replayed);
    let lower = verdict(engine.submit_blocking(verify_event(1, 4, 8, now())));
    assert!(!lower.replayed);
    assert_eq!(lower.subject, Some(SubjectId(8)));
}

#[test]
fn bad_events_get_typed_errors_and_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let unknown_gate = verify_event(99, 1, 7, now());
    assert_eq!(
        error_code(engine.submit_blocking(unknown_gate)),
        ErrorCode::UnknownGate
    );

    let mut short = verify_event(1, 2, 7, now());
    short.face.as_mut().unwrap().embedding.pop();
    assert_eq!(
        error_code(engine.submit_blocking(short)),
        ErrorCode::DimensionMismatch
    );

    let mut nan = verify_event(1, 3, 7, now());
    nan.face.as_mut().unwrap().embedding[3] = f32::NAN;
    assert_eq!(
        error_code(engine.submit_blocking(nan)),
        ErrorCode::InvalidValue
    );

    let mut model = verify_event(1, 4, 7, now());
    model.face.as_mut().unwrap().model = "other-model".to_owned();
    assert_eq!(
        error_code(engine.submit_blocking(model)),
        ErrorCode::UnknownModel
    );

    let mut zeros = verify_event(1, 5, 7, now());
    zeros.face.as_mut().unwrap().embedding.fill(0.0);
    assert_eq!(
        error_code(engine.submit_blocking(zeros)),
        ErrorCode::InvalidValue
    );

    for seq in 1..=5 {
        assert!(
            engine
                .store()
                .verdict_for(GateId(1), seq)
                .unwrap()
                .is_none()
        );
    }
}

#[test]
fn a_revoked_person_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let ack = engine
        .revoke(&Revoke {
            subject: SubjectId(9),
            reason: "card reported lost".to_owned(),
        })
        .unwrap();
    assert!(ack.revoked);
    let v = verdict(engine.submit_blocking(verify_event(1, 1, 9, now())));
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(v.subject, Some(SubjectId(9)));
    assert_eq!(check(&v, CheckKind::SubjectStatus), Outcome::Fail);
}

#[test]
fn events_past_their_deadline_get_busy_not_a_late_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config();
    config.engine.deadline_ms = 0;
    let engine = Engine::open(dir.path(), config).unwrap();
    support::populate(&engine, now());
    let reply = engine.submit_blocking(verify_event(1, 1, 7, now()));
    assert!(
        matches!(reply, Reply::Busy(b) if b.retry_after_ms > 0),
        "{reply:?}"
    );
    assert!(engine.store().verdict_for(GateId(1), 1).unwrap().is_none());
    assert_eq!(engine.stats().expired, 1);
}

#[test]
fn a_full_queue_answers_busy_at_once_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config();
    config.engine.queue_capacity = 1;
    config.engine.max_batch = 1;
    config.engine.workers = 1;
    let engine = Engine::open(dir.path(), config).unwrap();
    support::populate(&engine, now());
    let pending: Vec<_> = (1..=300)
        .map(|seq| engine.submit(verify_event(1 + (seq % 4) as u32, seq, 1 + seq % 50, now())))
        .collect();
    let replies: Vec<Reply> = pending.into_iter().map(|p| p.wait()).collect();
    let busy = replies
        .iter()
        .filter(|r| matches!(r, Reply::Busy(_)))
        .count();
    assert!(busy > 0, "300 events into a queue of one never saw Busy");
    for (i, reply) in replies.iter().enumerate() {
        let seq = i as u64 + 1;
        let gate = GateId(1 + (seq % 4) as u32);
        let recorded = engine.store().verdict_for(gate, seq).unwrap();
        match reply {
            Reply::Verdict(v) => {
                assert_eq!(recorded.as_ref().map(|r| r.decision), Some(v.decision))
            }
            Reply::Busy(_) => assert!(recorded.is_none(), "a Busy event was recorded"),
            Reply::Error(e) => panic!("unexpected error {e:?}"),
        }
    }
}

#[test]
fn async_submit_works_and_shutdown_drains() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(open_populated(dir.path(), now()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let verdicts = runtime.block_on(async {
        let mut out = Vec::new();
        for seq in 1..=20u64 {
            out.push(engine.submit(verify_event(3, seq, seq, now())).await);
        }
        out
    });
    assert!(
        verdicts
            .iter()
            .all(|r| matches!(r, Reply::Verdict(v) if v.decision == Decision::Admit))
    );
    engine.shutdown();
    let after = engine.submit_blocking(verify_event(3, 21, 1, now()));
    assert_eq!(error_code(after), ErrorCode::ShuttingDown);
}

#[test]
fn a_reopened_engine_keeps_records_and_faces() {
    let dir = tempfile::tempdir().unwrap();
    let event = verify_event(1, 1, 7, now());
    {
        let engine = open_populated(dir.path(), now());
        let v = verdict(engine.submit_blocking(event.clone()));
        assert_eq!(v.decision, Decision::Admit);
        engine.shutdown();
    }
    let engine = Engine::open(dir.path(), support::config()).unwrap();
    assert_eq!(engine.gallery().len(), support::PEOPLE as usize);
    let replay = verdict(engine.submit_blocking(event.clone()));
    assert!(replay.replayed);
    // Fingerprints survive the restart: another event under the key is still refused.
    let mut other = event;
    other.temperature_c = Some(37.0);
    assert_eq!(
        error_code(engine.submit_blocking(other)),
        ErrorCode::SeqReused
    );
    let found = verdict(engine.submit_blocking(identify_event(1, 2, probe_of(21, 3), now())));
    assert_eq!(found.subject, Some(SubjectId(21)));
}

/// Today's counters come back after a restart: from the committed counters' snapshot that a
/// shutdown saves, and, when the snapshot is older than the entry log (a crash between two
/// saves), from it and the entries recorded after it. Anti-passback shows them: someone inside
/// cannot enter again.
#[test]
fn todays_counters_come_back_from_the_snapshot_and_what_followed_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = gatewarden::policy::DEMO_POLICY_TOML
        .replace("anti_passback = false", "anti_passback = true");
    std::fs::write(dir.path().join("passback.toml"), policy).unwrap();
    let mut config = support::config();
    config.engine.policy = Some("passback.toml".into());
    // Often, so that the test sees a save while the engine serves.
    config.engine.counters_snapshot_ms = 200;
    let snapshot = dir.path().join("store").join("counters.snap");
    let enters = |engine: &Engine, seq, subject| {
        let v = verdict(engine.submit_blocking(verify_event(1, seq, subject, now())));
        (v.decision, check(&v, CheckKind::AntiPassback))
    };
    let inside = (Decision::Deny, Outcome::Fail);
    {
        let engine = Engine::open(dir.path(), config.clone()).unwrap();
        support::populate(&engine, now());
        assert_eq!(enters(&engine, 1, 7), (Decision::Admit, Outcome::Pass));
        assert_eq!(enters(&engine, 2, 7), inside);
        engine.shutdown();
    }
    let older = std::fs::read(&snapshot).expect("a shutdown saves the counters");
    {
        let engine = Engine::open(dir.path(), config.clone()).unwrap();
        let start = engine.stats().counters_start;
        assert!(start.from_snapshot && start.passages_read == 0, "{start:?}");
        assert_eq!(enters(&engine, 3, 7), inside, "from the snapshot");
        assert_eq!(enters(&engine, 4, 8), (Decision::Admit, Outcome::Pass));
        engine.shutdown();
    }
    std::fs::write(&snapshot, older).unwrap();
    {
        let engine = Engine::open(dir.path(), config.clone()).unwrap();
        let start = engine.stats().counters_start;
        assert!(start.from_snapshot && start.passages_read == 1, "{start:?}");
        assert_eq!(enters(&engine, 5, 7), inside, "from the older snapshot");
        assert_eq!(enters(&engine, 6, 8), inside, "from the entry after it");
        // The maintenance thread saves while serving, not only at shutdown (a kill -9 leaves
        // the last of those saves).
        let saved = std::fs::metadata(&snapshot).unwrap().modified().unwrap();
        let deadline = SystemClock.instant() + std::time::Duration::from_secs(30);
        while std::fs::metadata(&snapshot).unwrap().modified().unwrap() == saved {
            assert!(SystemClock.instant() < deadline, "no save while serving");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(engine);
    }
    // Snapshots turned off: nothing reads the file, so it is deleted (it holds who is inside).
    config.engine.counters_snapshot_ms = 0;
    let engine = Engine::open(dir.path(), config).unwrap();
    let start = engine.stats().counters_start;
    assert!(
        !start.from_snapshot && start.passages_read == 2,
        "{start:?}"
    );
    assert!(!snapshot.exists());
    assert_eq!(enters(&engine, 7, 8), inside, "from the whole day");
}

#[test]
fn enrolling_a_face_twice_under_another_name_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_populated(dir.path(), now());
    let face = support::face_of(3);
    let rows = [(SubjectId(4), face.as_slice())];
    let report = engine
        .enroll_templates(&rows, Some(&engine.gallery().snapshot()))
        .unwrap();
    assert_eq!(report.added, 0);
    assert_eq!(report.duplicates.len(), 1);
    assert_eq!(report.duplicates[0].existing, SubjectId(3));
}

/// Online enrolments are folded into a segment by the engine's own maintenance thread once
/// the delta reaches `compact_after`, and a restart then finds them in the segment instead of
/// replaying them from the store.
#[test]
fn the_maintenance_thread_folds_online_enrolments_into_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config();
    config.engine.compact_after = 20;
    config.engine.maintenance_interval_ms = 20;
    {
        let engine = Engine::open(dir.path(), config.clone()).unwrap();
        support::populate(&engine, now()); // 50 templates, online
        let deadline = SystemClock.instant() + std::time::Duration::from_secs(30);
        while engine.gallery().stats().delta_rows > 0 {
            assert!(
                SystemClock.instant() < deadline,
                "no compaction: {:?}",
                engine.gallery().stats()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let stats = engine.gallery().stats();
        assert!(stats.segments >= 1 && stats.segment_rows == 50, "{stats:?}");
        engine.shutdown();
    }
    let engine = Engine::open(dir.path(), config).unwrap();
    let stats = engine.gallery().stats();
    assert_eq!((stats.rows, stats.delta_rows), (50, 0), "{stats:?}");
    let found = verdict(engine.submit_blocking(identify_event(1, 1, probe_of(21, 3), now())));
    assert_eq!(found.subject, Some(SubjectId(21)));
}

#[test]
fn a_missing_or_corrupt_gallery_segment_says_how_to_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open_populated(dir.path(), now());
        engine.gallery().compact().unwrap();
        engine.shutdown();
    }
    let gallery = dir.path().join("gallery");
    let segment = std::fs::read_dir(&gallery)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains("seg"))
        .expect("a segment file after compaction");
    let original = std::fs::read(&segment).unwrap();
    let advice = |err: &str| {
        assert!(
            err.contains(&format!("delete {}", gallery.display()))
                && err.contains("rebuild it from the store"),
            "{err}"
        );
    };
    // Cut short.
    std::fs::write(&segment, &original[..original.len() / 2]).unwrap();
    let err = Engine::open(dir.path(), support::config()).err().unwrap();
    advice(&err.to_string());
    // Gone.
    std::fs::remove_file(&segment).unwrap();
    let err = Engine::open(dir.path(), support::config()).err().unwrap();
    advice(&err.to_string());
    // Following the advice works: every template comes back from the store.
    std::fs::remove_dir_all(&gallery).unwrap();
    let engine = Engine::open(dir.path(), support::config()).unwrap();
    assert_eq!(engine.gallery().len(), support::PEOPLE as usize);
    let v = verdict(engine.submit_blocking(verify_event(1, 1, 7, now())));
    assert_eq!(v.decision, Decision::Admit, "{v:?}");
}

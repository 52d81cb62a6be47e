//! Property tests: monotonicity (a higher score never makes a decision worse; an added
//! failure never makes it better), every Deny names a Fail, and `decide` is total: no input,
//! NaN and extreme values included, makes it panic or admit on a broken reading.

use gatewarden_protocol::{
    Category, CheckKind, CodeColour, Decision, Direction, FaceSample, HealthRecord, MarketId, Mode,
    Outcome, SubjectId, SubjectRecord, SubjectStatus, TestResult, UnixMillis, Verdict, ZoneId,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::testkit::{ALICE, BOB, Fixture, MARKET, STRICT, ZONE};
use super::{CredentialLookup, FaceResult, MarketPolicy, PolicyBook};
use crate::clock::{DAY_MS, HOUR_MS, UtcOffset};

/// Deny < Escalate < Admit.
fn rank(d: Decision) -> u8 {
    match d {
        Decision::Deny => 0,
        Decision::Escalate => 1,
        Decision::Admit => 2,
    }
}

fn book_policy(text: &str) -> MarketPolicy {
    PolicyBook::from_toml(text, "prop.toml")
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .for_market(MARKET)
        .clone()
}

// ---- policies ----

fn code_rule() -> impl Strategy<Value = &'static str> {
    // Red is never allowed: a red code is always a failure, so making a code red always adds one.
    prop_oneof![
        Just("\"off\""),
        Just("{ pass = [\"green\"] }"),
        Just("{ pass = [\"green\"], escalate = [\"yellow\"] }"),
        Just("{ pass = [\"green\", \"yellow\"] }"),
    ]
}

fn off_or<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = String> {
    prop::option::of(s).prop_map(|v| v.map_or_else(|| "\"off\"".to_owned(), |v| format!("{v:?}")))
}

fn schedule() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"always\"".to_owned()),
        (0u32..1440, 1u32..1440).prop_map(|(start, len)| {
            let end = (start + len) % 1440;
            let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
            format!("[\"{}-{}\"]", hm(start), hm(end))
        }),
    ]
}

/// The seven rule keys, as TOML lines.
fn rules() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        0u8..=4,
        off_or(1u32..=100),
        schedule(),
        any::<bool>(),
        any::<bool>(),
        off_or(1u32..=60),
    )
        .prop_map(
            |(zones, doses, test, schedule, sign_in, passback, entries)| {
                format!(
                    "zones_enforced = {zones}\nmin_vaccine_doses = {doses}\n\
                 max_test_age_hours = {test}\nschedule = {schedule}\n\
                 sign_in_required = {sign_in}\nanti_passback = {passback}\n\
                 max_entries_per_day = {entries}\n"
                )
            },
        )
}

/// A random valid policy: every key of `[default]`, plus rules for merchants and buyers.
fn policy() -> impl Strategy<Value = MarketPolicy> {
    let market = (
        (
            -1.0f64..=1.0,
            -1.0f64..=1.0,
            0.0f64..=0.2,
            0.0f64..=0.3,
            0.0f64..=1.0,
        ),
        any::<bool>(),
        off_or(30.0f64..=45.0),
        code_rule(),
        code_rule(),
        off_or(1u32..=300),
        prop_oneof![Just("deny"), Just("escalate")],
        (
            off_or(1u32..=200),
            off_or(1u32..=200),
            prop_oneof![Just("deny"), Just("escalate")],
        ),
    );
    (market, rules(), rules(), rules()).prop_map(|(m, base, merchant, buyer)| {
        let (
            (identify, verify, band, margin, liveness),
            card,
            temp,
            health,
            travel,
            cap,
            over,
            ages,
        ) = m;
        let (health_age, travel_age, stale) = ages;
        let text = format!(
            "[default]\nidentify_threshold = {identify:?}\nverify_threshold = {verify:?}\n\
             borderline_band = {band:?}\nmargin = {margin:?}\nliveness_min = {liveness:?}\n\
             require_credential = {card}\ntemperature_ceiling_c = {temp}\n\
             health_code = {health}\ntravel_code = {travel}\noccupancy_cap = {cap}\n\
             health_code_max_age = {health_age}\ntravel_code_max_age = {travel_age}\n\
             stale_code = \"{stale}\"\n\
             over_occupancy = \"{over}\"\n{base}\n\
             [default.categories.merchant]\n{merchant}\n\
             [default.categories.buyer]\n{buyer}\n"
        );
        book_policy(&text)
    })
}

/// The shipped policies and random ones.
fn any_policy() -> impl Strategy<Value = MarketPolicy> {
    prop_oneof![
        1 => Just(book_policy(STRICT)),
        1 => Just(PolicyBook::demo().for_market(MARKET).clone()),
        1 => Just(book_policy(include_str!("../../policies/xinfadi.toml"))),
        1 => Just(book_policy(include_str!("../../policies/haidian.toml"))),
        4 => policy(),
    ]
}

// ---- inputs ----

/// Plausible scores, with NaN and infinities now and then.
fn score() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -1.0f32..=1.0,
        1 => Just(f32::NAN),
        1 => any::<f32>(),
    ]
}

fn who() -> impl Strategy<Value = SubjectId> {
    prop_oneof![4 => Just(ALICE), 1 => Just(BOB)]
}

fn credential() -> impl Strategy<Value = CredentialLookup> {
    prop_oneof![
        Just(CredentialLookup::NotPresented),
        Just(CredentialLookup::Unknown),
        who().prop_map(CredentialLookup::Resolved),
    ]
}

fn face_result() -> impl Strategy<Value = FaceResult> {
    prop_oneof![
        1 => Just(FaceResult::NoFace),
        3 => (prop::option::of((who(), score())), prop::option::of((who(), score())))
            .prop_map(|(best, runner_up)| FaceResult::Identified { best, runner_up }),
        3 => (who(), prop::option::of(score()))
            .prop_map(|(subject, score)| FaceResult::Verified { subject, score }),
    ]
}

fn category() -> impl Strategy<Value = Category> {
    prop_oneof![
        Just(Category::ServiceWorker),
        Just(Category::Manager),
        Just(Category::Staff),
        Just(Category::Merchant),
        Just(Category::Buyer),
        Just(Category::Shopper),
    ]
}

fn colour() -> impl Strategy<Value = CodeColour> {
    prop_oneof![
        4 => Just(CodeColour::Green),
        1 => Just(CodeColour::Yellow),
        1 => Just(CodeColour::Red),
    ]
}

/// Instants around `now`, or anywhere at all.
fn instant(now: u64) -> impl Strategy<Value = UnixMillis> {
    prop_oneof![
        4 => (0..200 * HOUR_MS).prop_map(move |d| UnixMillis(now.saturating_sub(d))),
        1 => (0..50 * HOUR_MS).prop_map(move |d| UnixMillis(now.saturating_add(d))),
        1 => any::<u64>().prop_map(UnixMillis),
    ]
}

fn subject(now: u64) -> impl Strategy<Value = SubjectRecord> {
    let status = prop_oneof![
        6 => Just(SubjectStatus::Active),
        1 => Just(SubjectStatus::Revoked),
        1 => Just(SubjectStatus::Blocklisted),
    ];
    let markets = prop_oneof![Just(vec![]), Just(vec![MARKET]), Just(vec![MarketId(1)])];
    let zones = prop_oneof![Just(vec![]), Just(vec![ZONE]), Just(vec![ZoneId(99)])];
    (
        who(),
        category(),
        status,
        markets,
        zones,
        prop::option::of(instant(now)),
        prop::option::of(instant(now)),
    )
        .prop_map(
            |(subject, category, status, markets, zones, valid_from, valid_until)| SubjectRecord {
                subject,
                category,
                home_market: MARKET,
                markets,
                zones,
                valid_from,
                valid_until,
                id_card: None,
                qr_tokens: Vec::new(),
                status,
            },
        )
}

fn health(now: u64) -> impl Strategy<Value = HealthRecord> {
    let result = prop::option::of(prop_oneof![
        4 => Just(TestResult::Negative),
        1 => Just(TestResult::Positive),
        1 => Just(TestResult::Pending),
    ]);
    (
        who(),
        prop::option::of(instant(now)),
        result,
        0u8..=4,
        colour(),
        colour(),
        instant(now),
    )
        .prop_map(
            move |(subject, test_at, test_result, vaccine_doses, health_code, travel_code, at)| {
                HealthRecord {
                    subject,
                    test_at,
                    test_result,
                    vaccine_doses,
                    health_code,
                    travel_code,
                    updated_at: at,
                }
            },
        )
}

/// Any event and context. With `wild`, time, offset and readings range over every value.
fn fixture(wild: bool) -> impl Strategy<Value = Fixture> {
    let base_now = Fixture::new().now.0;
    let now = if wild {
        any::<u64>().boxed()
    } else {
        (0..7 * DAY_MS).prop_map(move |d| base_now + d).boxed()
    };
    let offset = if wild {
        any::<i32>().boxed()
    } else {
        (-720i32..=840).boxed()
    };
    (now, offset).prop_flat_map(move |(now, offset)| {
        let event = (
            0u8..3,
            any::<bool>(),
            prop::option::of(score()),
            prop::option::of(prop_oneof![
                8 => 35.0f32..40.0,
                1 => Just(f32::NAN),
                1 => any::<f32>(),
            ]),
        );
        let context = (
            credential(),
            face_result(),
            prop::option::of(subject(now)),
            prop::option::of(health(now)),
            (0u32..60, prop::option::of(any::<bool>()), any::<bool>()),
            0u32..400,
        );
        (event, context).prop_map(move |(event, context)| {
            let (mode, exit, liveness, temperature) = event;
            let (credential, face, subject, health, person, occupancy) = context;
            let mut f = Fixture::new();
            f.now = UnixMillis(now);
            f.utc_offset = UtcOffset(offset);
            f.event.mode = match mode {
                0 => f.event.mode.clone(),
                1 => Mode::Identify,
                _ => Mode::SignIn { credential: None },
            };
            f.event.direction = if exit {
                Direction::Exit
            } else {
                Direction::Entry
            };
            f.event.face = liveness.map(|liveness| FaceSample {
                model: "test".to_owned(),
                embedding: Vec::new(),
                quality: 0.9,
                liveness,
            });
            f.event.temperature_c = temperature;
            f.credential = credential;
            f.face = face;
            f.subject = subject;
            f.health = health;
            (
                f.person.entries_today,
                f.person.inside,
                f.person.signed_in_today,
            ) = person;
            f.market.occupancy = occupancy;
            f
        })
    })
}

// ---- invariants of a single verdict ----

/// What every verdict must satisfy, whatever the input.
fn assert_well_formed(v: &Verdict, f: &Fixture) -> Result<(), TestCaseError> {
    prop_assert_eq!(v.checks.len(), 19);
    prop_assert!(v.checks.windows(2).all(|w| w[0].kind < w[1].kind), "order");
    prop_assert_eq!(
        (v.gate, v.seq, v.decided_at),
        (f.event.gate, f.event.seq, f.now)
    );
    prop_assert!(!v.replayed);
    let any = |o: Outcome| v.checks.iter().any(|c| c.outcome == o);
    let expected = if any(Outcome::Fail) {
        Decision::Deny
    } else if any(Outcome::Escalate) {
        Decision::Escalate
    } else {
        Decision::Admit
    };
    prop_assert_eq!(v.decision, expected);
    prop_assert!(!v.display.text.is_empty());
    if v.subject.is_none() {
        // No person: every person-specific check stands aside, and the event is refused.
        prop_assert_eq!(v.decision, Decision::Deny);
        for c in &v.checks {
            if (CheckKind::SubjectStatus..=CheckKind::Frequency).contains(&c.kind)
                && !matches!(c.kind, CheckKind::Temperature)
            {
                prop_assert_eq!(c.outcome, Outcome::NotChecked, "{:?}", c.kind);
            }
        }
    }
    Ok(())
}

/// Puts a non-finite value into one reading the policy looks at.
fn poison(f: &mut Fixture, which: u8) {
    match which {
        0 => {
            f.face = match f.face {
                FaceResult::Verified { subject, .. } => FaceResult::Verified {
                    subject,
                    score: Some(f32::NAN),
                },
                FaceResult::Identified { runner_up, .. } => FaceResult::Identified {
                    best: Some((ALICE, f32::NAN)),
                    runner_up,
                },
                FaceResult::NoFace => FaceResult::Verified {
                    subject: ALICE,
                    score: Some(f32::NAN),
                },
            }
        }
        1 => {
            if let Some(face) = &mut f.event.face {
                face.liveness = f32::NAN;
            } else {
                f.face = FaceResult::Identified {
                    best: Some((ALICE, f32::INFINITY)),
                    runner_up: None,
                };
                f.event.face = Some(FaceSample {
                    model: "test".to_owned(),
                    embedding: Vec::new(),
                    quality: 0.9,
                    liveness: f32::NAN,
                });
            }
        }
        _ => f.event.temperature_c = Some(f32::NAN),
    }
}

/// Makes one check fail outright (the worst outcome for that check).
fn add_failure(f: &mut Fixture, which: u8) {
    match which {
        0 => f.event.temperature_c = Some(46.0), // above any allowed ceiling (≤ 45)
        1 => f
            .health
            .iter_mut()
            .for_each(|h| h.health_code = CodeColour::Red),
        2 => f
            .health
            .iter_mut()
            .for_each(|h| h.travel_code = CodeColour::Red),
        3 => f
            .health
            .iter_mut()
            .for_each(|h| h.test_result = Some(TestResult::Positive)),
        4 => f.health.iter_mut().for_each(|h| h.vaccine_doses = 0),
        5 => f
            .subject
            .iter_mut()
            .for_each(|s| s.status = SubjectStatus::Revoked),
        6 => f
            .subject
            .iter_mut()
            .for_each(|s| s.markets = vec![MarketId(1)]),
        7 => f
            .subject
            .iter_mut()
            .for_each(|s| s.valid_until = Some(UnixMillis(0))),
        8 => f.person.entries_today = u32::MAX,
        9 => f.market.occupancy = u32::MAX,
        10 => f.credential = CredentialLookup::Unknown,
        11 => f.face = FaceResult::NoFace,
        _ => f.health = None,
    }
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn prop_decide_is_total_and_consistent(f in fixture(true), policy in any_policy()) {
        let v = f.decide(&policy);
        assert_well_formed(&v, &f)?;
    }

    #[test]
    fn prop_every_deny_names_a_fail(f in fixture(false), policy in any_policy()) {
        let v = f.decide(&policy);
        if v.decision == Decision::Deny {
            let fail = v.checks.iter().find(|c| c.outcome == Outcome::Fail);
            prop_assert!(fail.is_some());
            // The screen names the first failing check's reason.
            prop_assert_eq!(&v.display.text, &fail.map(|c| c.detail.clone()).unwrap_or_default());
        }
    }

    #[test]
    fn prop_higher_score_never_worsens_decision(
        f in fixture(false),
        policy in any_policy(),
        base in -1.0f32..=1.0,
        raise in 0.0f32..=2.0,
    ) {
        let with_score = |score: f32| {
            let mut f = f.clone();
            f.face = match f.face {
                FaceResult::Verified { subject, .. } => {
                    FaceResult::Verified { subject, score: Some(score) }
                }
                FaceResult::Identified { best, runner_up } => FaceResult::Identified {
                    best: Some((best.map_or(ALICE, |b| b.0), score)),
                    runner_up,
                },
                FaceResult::NoFace => FaceResult::Identified {
                    best: Some((ALICE, score)),
                    runner_up: None,
                },
            };
            f.decide(&policy)
        };
        let low = with_score(base);
        let high = with_score(base + raise);
        prop_assert!(
            rank(high.decision) >= rank(low.decision),
            "{:?} at {} became {:?} at {}", low.decision, base, high.decision, base + raise
        );
    }

    #[test]
    fn prop_added_failure_never_improves_decision(
        f in fixture(false),
        policy in any_policy(),
        which in 0u8..13,
    ) {
        let before = f.decide(&policy);
        let mut worse = f;
        add_failure(&mut worse, which);
        let after = worse.decide(&policy);
        prop_assert!(
            rank(after.decision) <= rank(before.decision),
            "failure {} turned {:?} into {:?}", which, before.decision, after.decision
        );
    }

    #[test]
    fn prop_non_finite_readings_never_admit(
        f in fixture(false),
        policy in any_policy(),
        which in 0u8..3,
    ) {
        let mut f = f;
        poison(&mut f, which);
        let v = f.decide(&policy);
        let ceiling_on = policy.settings.temperature_ceiling_c.on().is_some();
        let temperature_counts = f.event.direction == Direction::Entry && ceiling_on;
        if which < 2 || temperature_counts {
            prop_assert_ne!(v.decision, Decision::Admit);
        }
    }
}

// ---- replay: re-deciding a recorded verdict from what its record holds ----

/// The fixture as the pipeline would build it: the face result follows the credential (a
/// resolved card means 1:1 with its holder, none means 1:N, an unknown card no match), and
/// the registry and health records are the candidate's own.
fn as_the_pipeline_builds_it(mut f: Fixture) -> Fixture {
    // The pipeline looks a credential up only when the event carries one, and finds it or not
    // (`pipeline::worker::lookup_credential`): a Verify event is never "not presented", and
    // an event without a credential never resolves one.
    let carries_credential = match &f.event.mode {
        Mode::Verify { .. } => true,
        Mode::SignIn { credential } => credential.is_some(),
        Mode::Identify => false,
    };
    f.credential = match (carries_credential, f.credential) {
        (true, CredentialLookup::NotPresented) => CredentialLookup::Unknown,
        (false, _) => CredentialLookup::NotPresented,
        (true, lookup) => lookup,
    };
    // The index ranks its answers: a runner-up never scores above the best.
    if let FaceResult::Identified {
        best: Some((_, best)),
        runner_up: Some((_, runner_up)),
    } = &mut f.face
    {
        *runner_up = runner_up.min(*best);
    }
    let score = match f.face {
        FaceResult::Verified { score, .. } => score,
        FaceResult::Identified { best, .. } => best.map(|(_, s)| s),
        FaceResult::NoFace => None,
    };
    f.face = match (f.event.face.is_some(), f.credential, f.face) {
        (false, _, _) | (_, CredentialLookup::Unknown, _) => FaceResult::NoFace,
        (true, CredentialLookup::Resolved(holder), _) => FaceResult::Verified {
            subject: holder,
            score,
        },
        (true, CredentialLookup::NotPresented, FaceResult::Identified { best, runner_up }) => {
            FaceResult::Identified { best, runner_up }
        }
        (true, CredentialLookup::NotPresented, _) => FaceResult::Identified {
            best: score.map(|s| (ALICE, s)),
            runner_up: None,
        },
    };
    let candidate = match (f.credential, f.face) {
        (CredentialLookup::Resolved(s), _) => Some(s),
        (_, FaceResult::Identified { best, .. }) => best.map(|(s, _)| s),
        _ => None,
    };
    f.subject = candidate.and_then(|c| f.subject.take().map(|r| SubjectRecord { subject: c, ..r }));
    f.health = candidate.and_then(|c| f.health.take().map(|h| HealthRecord { subject: c, ..h }));
    f
}

/// Half the time, a face that matches well and is live: random scores and thresholds fail
/// identity so often that the person checks would rarely run.
fn often_identified(mut f: Fixture, tame: bool) -> Fixture {
    if !tame {
        return f;
    }
    if let Some(face) = f.event.face.as_mut() {
        face.liveness = 1.0;
    }
    f.face = match f.face {
        FaceResult::Verified { subject, .. } => FaceResult::Verified {
            subject,
            score: Some(1.0),
        },
        FaceResult::Identified { runner_up, .. } => FaceResult::Identified {
            best: Some((ALICE, 1.0)),
            runner_up,
        },
        FaceResult::NoFace => FaceResult::NoFace,
    };
    f
}

/// The entry record of verdict `v` on `f`, as the archive reads it back.
fn recorded(f: &Fixture, v: &Verdict) -> crate::store::ArchivedEntry {
    crate::store::ArchivedEntry {
        gate: f.event.gate,
        seq: f.event.seq,
        market: f.gate.market,
        zone: f.gate.zone,
        subject: v.subject,
        decision: v.decision,
        mode: crate::store::ModeKind::from(&f.event.mode),
        direction: f.event.direction,
        captured_at: f.event.captured_at,
        decided_at: v.decided_at,
        checks: v.checks.clone(),
    }
}

/// What the registry says about the recorded person's category now.
fn category_now(f: &Fixture, v: &Verdict) -> Option<Category> {
    f.subject
        .as_ref()
        .filter(|r| Some(r.subject) == v.subject)
        .map(|r| r.category)
}

/// The demo policy with the test age tightened from 48 h to `hours`.
fn demo_with_test_age(hours: u32) -> MarketPolicy {
    let text = super::DEMO_POLICY_TOML.replace(
        "max_test_age_hours = 48",
        &format!("max_test_age_hours = {hours}"),
    );
    assert_ne!(text, super::DEMO_POLICY_TOML);
    book_policy(&text)
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    /// Under the policy that made it, a record replays to its own decision, knowing every
    /// input that matters.
    #[test]
    fn prop_replay_under_the_recording_policy_changes_nothing(
        f in fixture(false),
        policy in any_policy(),
        tame in any::<bool>(),
    ) {
        let f = often_identified(as_the_pipeline_builds_it(f), tame);
        let v = f.decide(&policy);
        let entry = recorded(&f, &v);
        let r = super::replay::replay_entry(&entry, category_now(&f, &v), &policy, f.utc_offset);
        prop_assert_eq!(r.decision, Some(v.decision), "unknown: {:?}", r.unknown);
        prop_assert!(r.unknown.is_empty(), "{:?}", r.unknown);
    }

    /// Under any other policy, replay either says it cannot know, or gives exactly the
    /// decision the true inputs get.
    #[test]
    fn prop_replay_never_guesses(
        f in fixture(false),
        recording in any_policy(),
        other in any_policy(),
        tame in any::<bool>(),
    ) {
        let f = often_identified(as_the_pipeline_builds_it(f), tame);
        let v = f.decide(&recording);
        let entry = recorded(&f, &v);
        let r = super::replay::replay_entry(&entry, category_now(&f, &v), &other, f.utc_offset);
        if let Some(d) = r.decision {
            prop_assert_eq!(d, f.decide(&other).decision);
        } else {
            prop_assert!(!r.unknown.is_empty());
        }
    }

    /// A stricter test age changes exactly the entries whose true inputs decide differently,
    /// and replay knows every one of them (the test age was recorded).
    #[test]
    fn prop_a_stricter_test_age_changes_exactly_the_entries_it_should(
        f in fixture(false),
        hours in 1u32..48,
        tame in any::<bool>(),
    ) {
        let f = often_identified(as_the_pipeline_builds_it(f), tame);
        let demo = PolicyBook::demo().for_market(MARKET).clone();
        let strict = demo_with_test_age(hours);
        let v = f.decide(&demo);
        let entry = recorded(&f, &v);
        let r = super::replay::replay_entry(&entry, category_now(&f, &v), &strict, f.utc_offset);
        prop_assert_eq!(r.decision, Some(f.decide(&strict).decision), "{:?}", r.unknown);
    }
}

#[test]
fn replay_names_the_check_whose_input_was_not_recorded() {
    // Recorded under the demo policy, which asks buyers for no vaccination: the doses are not
    // in the record, so a policy that asks for three cannot be decided from it.
    let mut f = Fixture::identify();
    f.subject_mut().category = Category::Buyer;
    let demo = PolicyBook::demo().for_market(MARKET).clone();
    let v = f.decide(&demo);
    assert_eq!(v.decision, Decision::Admit);
    let text = super::DEMO_POLICY_TOML.replace("min_vaccine_doses = 0", "min_vaccine_doses = 3");
    let strict = book_policy(&text);
    let entry = recorded(&f, &v);
    let r = super::replay::replay_entry(&entry, Some(Category::Buyer), &strict, f.utc_offset);
    assert_eq!(r.decision, None);
    assert_eq!(r.unknown, vec![CheckKind::Vaccination]);
    // The test age was recorded (48 h required): tightening it below the test's age (10 h)
    // denies, and replay knows it.
    let r = super::replay::replay_entry(
        &entry,
        Some(Category::Buyer),
        &demo_with_test_age(6),
        f.utc_offset,
    );
    assert_eq!(r.decision, Some(Decision::Deny));
    assert!(r.unknown.is_empty());
    assert_eq!(
        crate::policy::testkit::check(&r.verdict, CheckKind::TestAge).outcome,
        Outcome::Fail
    );
}

/// The shipped policies: sane rules under which a healthy person is admitted, so that one
/// changed input decides the outcome.
fn shipped_policy() -> impl Strategy<Value = MarketPolicy> {
    prop_oneof![
        Just(book_policy(STRICT)),
        Just(PolicyBook::demo().for_market(MARKET).clone()),
        Just(book_policy(include_str!("../../policies/xinfadi.toml"))),
        Just(book_policy(include_str!("../../policies/haidian.toml"))),
    ]
}

/// A healthy, admitted person (by card or by face) with one input changed.
fn one_change() -> impl Strategy<Value = Fixture> {
    (any::<bool>(), 0u8..9, 0u32..100, any::<bool>()).prop_map(|(by_face, which, n, flag)| {
        let mut f = if by_face {
            Fixture::identify()
        } else {
            Fixture::new()
        };
        let now = f.now;
        match which {
            0 => f.health_mut().vaccine_doses = (n % 5) as u8,
            1 => f.subject_mut().zones = if flag { vec![ZoneId(99)] } else { vec![] },
            2 => f.person.entries_today = n % 60,
            3 => f.market.occupancy = n * 100,
            4 => f.event.temperature_c = Some(36.0 + (n as f32) / 25.0),
            5 => f.health_mut().test_at = Some(UnixMillis(now.0 - u64::from(n) * HOUR_MS)),
            6 => f.person.signed_in_today = flag,
            7 => f.person.inside = if flag { Some(true) } else { None },
            _ => {
                f.health_mut().health_code = if flag {
                    CodeColour::Yellow
                } else {
                    CodeColour::Red
                };
            }
        }
        f
    })
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    /// From a healthy entry with one input changed, replay under a shipped policy either
    /// says it cannot know, or gives the decision the true inputs get.
    #[test]
    fn prop_replay_never_guesses_what_one_input_decides(
        f in one_change(),
        recording in shipped_policy(),
        other in shipped_policy(),
    ) {
        let f = as_the_pipeline_builds_it(f);
        let v = f.decide(&recording);
        let entry = recorded(&f, &v);
        let r = super::replay::replay_entry(&entry, category_now(&f, &v), &other, f.utc_offset);
        if let Some(d) = r.decision {
            prop_assert_eq!(d, f.decide(&other).decision, "{:?}", v.checks);
        } else {
            prop_assert!(!r.unknown.is_empty());
        }
    }
}

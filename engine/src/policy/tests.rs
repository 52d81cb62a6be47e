//! Unit tests: each check passing, failing, escalating and not checked on hand-built inputs;
//! policy files parsing and being refused with file, line and reason.

use gatewarden_protocol::{
    Category, CheckKind, CodeColour, Credential, Decision, Direction, DisplayColour, GateId,
    MarketId, Mode, Outcome, SubjectStatus, TestResult, UnixMillis, ZoneId,
};

use super::testkit::{ALICE, BOB, Fixture, MARKET, STRICT, check, strict};
use super::{CredentialLookup, FaceResult, PolicyBook, PolicyError, Problem, internal_error};
use crate::clock::{HOUR_MS, UtcOffset};

fn outcome(f: &Fixture, kind: CheckKind) -> Outcome {
    check(&f.decide(&strict()), kind).outcome
}

/// The strict policy with `extra` appended as a `[markets.7]` override.
fn strict_with(extra: &str) -> super::MarketPolicy {
    let text = format!("{STRICT}\n[markets.7]\n{extra}\n");
    PolicyBook::from_toml(&text, "strict.toml")
        .unwrap()
        .for_market(MARKET)
        .clone()
}

/// Every problem `text` has, in file order.
fn problems(text: &str) -> Vec<Problem> {
    match PolicyBook::from_toml(text, "bad.toml") {
        Err(PolicyError::Invalid { problems }) => {
            assert!(!problems.is_empty());
            assert!(problems.iter().all(|p| p.origin == "bad.toml"));
            problems
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// The one problem `text` has: line, column and reason.
fn invalid(text: &str) -> (usize, usize, String) {
    let mut all = problems(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let p = all.remove(0);
    (p.line, p.column, p.reason)
}

// ---- the baseline and the shape of a verdict ----

#[test]
fn decide_admits_when_every_check_passes() {
    let f = Fixture::new();
    let v = f.decide(&strict());
    assert_eq!(v.decision, Decision::Admit, "{v:#?}");
    assert_eq!(v.subject, Some(ALICE));
    assert_eq!(v.score, Some(0.8));
    assert_eq!((v.gate, v.seq, v.decided_at), (GateId(9), 1234, f.now));
    assert!(!v.replayed);
    assert_eq!(v.display.colour, DisplayColour::Green);
    assert_eq!(v.display.text, "Welcome");
    assert!(v.checks.iter().all(|c| c.outcome != Outcome::Fail));
}

#[test]
fn decide_lists_every_check_in_kind_order() {
    let v = Fixture::new().decide(&strict());
    let kinds: Vec<CheckKind> = v.checks.iter().map(|c| c.kind).collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(kinds, sorted, "checks out of order or repeated");
    assert_eq!(kinds.len(), 19);
    assert!(!kinds.contains(&CheckKind::Internal));
    // Identity-failure verdicts list the same checks.
    let mut f = Fixture::new();
    f.credential = CredentialLookup::Unknown;
    let unknown: Vec<CheckKind> = f.decide(&strict()).checks.iter().map(|c| c.kind).collect();
    assert_eq!(unknown, kinds);
}

#[test]
fn decide_names_first_failure_on_red_screen() {
    let mut f = Fixture::new();
    f.health_mut().test_at = Some(UnixMillis(f.now.0 - 50 * HOUR_MS));
    f.event.temperature_c = Some(38.5);
    let v = f.decide(&strict());
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(v.display.colour, DisplayColour::Red);
    // Temperature comes before TestAge in check order.
    assert_eq!(v.display.text, "Temperature too high");
}

#[test]
fn decide_escalates_on_yellow_screen() {
    let mut f = Fixture::new();
    f.health_mut().health_code = CodeColour::Yellow;
    let v = f.decide(&strict());
    assert_eq!(v.decision, Decision::Escalate);
    assert_eq!(v.display.colour, DisplayColour::Yellow);
    assert_eq!(v.display.text, "Health code yellow: please wait for staff");
}

#[test]
fn decide_fail_outranks_escalate() {
    let mut f = Fixture::new();
    f.health_mut().health_code = CodeColour::Yellow;
    f.health_mut().travel_code = CodeColour::Red;
    let v = f.decide(&strict());
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(v.display.text, "Travel code red");
}

#[test]
fn internal_error_fails_closed() {
    let v = internal_error(GateId(5), 77, UnixMillis(1000), "store unavailable");
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(
        (v.gate, v.seq, v.decided_at),
        (GateId(5), 77, UnixMillis(1000))
    );
    assert_eq!(v.checks.len(), 1);
    assert_eq!(v.checks[0].kind, CheckKind::Internal);
    assert_eq!(v.checks[0].outcome, Outcome::Fail);
    assert_eq!(v.checks[0].detail, "store unavailable");
    assert_eq!(v.subject, None);
    assert_eq!(v.display.colour, DisplayColour::Red);
    let long = "é".repeat(1000);
    let v = internal_error(GateId(5), 78, UnixMillis(1000), &long);
    assert_eq!(v.checks[0].detail.chars().count(), 200);
}

// ---- identity: Credential, FaceMatch, MatchMargin, Liveness ----

#[test]
fn credential_unknown_denies_and_skips_person_checks() {
    let mut f = Fixture::new();
    f.credential = CredentialLookup::Unknown;
    f.health_mut().health_code = CodeColour::Red;
    let v = f.decide(&strict());
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(check(&v, CheckKind::Credential).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Unknown card");
    assert_eq!(v.subject, None);
    assert_eq!(v.score, None);
    for kind in [
        CheckKind::SubjectStatus,
        CheckKind::Zone,
        CheckKind::HealthCode,
        CheckKind::TestAge,
        CheckKind::SignIn,
        CheckKind::AntiPassback,
        CheckKind::Frequency,
    ] {
        let c = check(&v, kind);
        assert_eq!(c.outcome, Outcome::NotChecked, "{kind:?}");
        assert_eq!(c.detail, "Not identified");
    }
}

#[test]
fn credential_resolved_passes_and_absent_is_not_checked() {
    assert_eq!(
        outcome(&Fixture::new(), CheckKind::Credential),
        Outcome::Pass
    );
    let f = Fixture::identify();
    let v = f.decide(&strict());
    assert_eq!(
        check(&v, CheckKind::Credential).outcome,
        Outcome::NotChecked
    );
    assert_eq!(v.decision, Decision::Admit);
}

#[test]
fn credential_required_refuses_face_alone() {
    let policy = strict_with("require_credential = true");
    let v = Fixture::identify().decide(&policy);
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(check(&v, CheckKind::Credential).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "ID card required");
    // The face still identifies the person, so the record names them.
    assert_eq!(v.subject, Some(ALICE));
    assert_eq!(Fixture::new().decide(&policy).decision, Decision::Admit);
}

#[test]
fn face_missing_fails() {
    let mut f = Fixture::new();
    f.face = FaceResult::NoFace;
    f.event.face = None;
    let v = f.decide(&strict());
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(check(&v, CheckKind::FaceMatch).outcome, Outcome::Fail);
    assert_eq!(check(&v, CheckKind::Liveness).outcome, Outcome::NotChecked);
    assert_eq!(v.display.text, "No face captured");
}

#[test]
fn face_identify_below_threshold_is_no_match() {
    let mut f = Fixture::identify();
    f.face = FaceResult::Identified {
        best: Some((ALICE, 0.40)),
        runner_up: None,
    };
    let v = f.decide(&strict());
    let c = check(&v, CheckKind::FaceMatch);
    assert_eq!(c.outcome, Outcome::Fail);
    assert_eq!(c.detail, "No match");
    assert_eq!(c.threshold, Some(0.5));
    assert_eq!(
        check(&v, CheckKind::MatchMargin).outcome,
        Outcome::NotChecked
    );
    assert_eq!(v.subject, None);
    f.face = FaceResult::Identified {
        best: None,
        runner_up: None,
    };
    assert_eq!(f.decide(&strict()).display.text, "No match");
}

#[test]
fn face_identify_borderline_escalates() {
    let mut f = Fixture::identify();
    f.face = FaceResult::Identified {
        best: Some((ALICE, 0.47)),
        runner_up: None,
    };
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::FaceMatch).outcome, Outcome::Escalate);
    assert_eq!(v.decision, Decision::Escalate);
    assert_eq!(v.subject, Some(ALICE));
    assert_eq!(v.display.text, "Uncertain match: please wait for staff");
}

#[test]
fn face_verify_threshold_passes_and_fails() {
    let mut f = Fixture::new();
    f.face = FaceResult::Verified {
        subject: ALICE,
        score: Some(0.45),
    };
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::FaceMatch).outcome, Outcome::Pass);
    assert_eq!(check(&v, CheckKind::FaceMatch).threshold, Some(0.45));
    assert_eq!(
        check(&v, CheckKind::MatchMargin).outcome,
        Outcome::NotChecked
    );
    f.face = FaceResult::Verified {
        subject: ALICE,
        score: Some(0.2),
    };
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::FaceMatch).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Face does not match card");
    assert_eq!(v.subject, None);
}

#[test]
fn face_verify_without_templates_fails() {
    let mut f = Fixture::new();
    f.face = FaceResult::Verified {
        subject: ALICE,
        score: None,
    };
    let v = f.decide(&strict());
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(v.display.text, "No face enrolled for this card");
}

#[test]
fn face_of_other_subject_than_card_fails() {
    let mut f = Fixture::new();
    f.face = FaceResult::Verified {
        subject: BOB,
        score: Some(0.9),
    };
    assert_eq!(outcome(&f, CheckKind::FaceMatch), Outcome::Fail);
    f.face = FaceResult::Identified {
        best: Some((BOB, 0.9)),
        runner_up: None,
    };
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::FaceMatch).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Face does not match card");
}

#[test]
fn margin_escalates_close_runner_up() {
    let mut f = Fixture::identify();
    f.face = FaceResult::Identified {
        best: Some((ALICE, 0.80)),
        runner_up: Some((BOB, 0.78)),
    };
    let v = f.decide(&strict());
    let c = check(&v, CheckKind::MatchMargin);
    assert_eq!(c.outcome, Outcome::Escalate);
    assert_eq!(c.threshold, Some(0.05));
    assert_eq!(v.decision, Decision::Escalate);
    assert_eq!(
        outcome(&Fixture::identify(), CheckKind::MatchMargin),
        Outcome::Pass
    );
    f.face = FaceResult::Identified {
        best: Some((ALICE, 0.80)),
        runner_up: None,
    };
    assert_eq!(outcome(&f, CheckKind::MatchMargin), Outcome::Pass);
}

#[test]
fn liveness_failure_denies_and_identifies_no_one() {
    let mut f = Fixture::new();
    f.event.face.as_mut().unwrap().liveness = 0.2;
    let v = f.decide(&strict());
    let c = check(&v, CheckKind::Liveness);
    assert_eq!(c.outcome, Outcome::Fail);
    assert_eq!((c.threshold, c.value), (Some(0.5), Some(f64::from(0.2f32))));
    assert_eq!(v.subject, None);
    assert_eq!(
        check(&v, CheckKind::SubjectStatus).outcome,
        Outcome::NotChecked
    );
    assert_eq!(outcome(&Fixture::new(), CheckKind::Liveness), Outcome::Pass);
}

#[test]
fn nan_scores_fail_closed() {
    let mut f = Fixture::identify();
    f.face = FaceResult::Identified {
        best: Some((ALICE, f32::NAN)),
        runner_up: None,
    };
    assert_eq!(f.decide(&strict()).decision, Decision::Deny);
    f.face = FaceResult::Identified {
        best: Some((ALICE, 0.9)),
        runner_up: Some((BOB, f32::NAN)),
    };
    assert_eq!(outcome(&f, CheckKind::MatchMargin), Outcome::Escalate);
    let mut f = Fixture::new();
    f.face = FaceResult::Verified {
        subject: ALICE,
        score: Some(f32::NAN),
    };
    assert_eq!(f.decide(&strict()).decision, Decision::Deny);
    let mut f = Fixture::new();
    f.event.face.as_mut().unwrap().liveness = f32::NAN;
    assert_eq!(f.decide(&strict()).decision, Decision::Deny);
}

// ---- the person: SubjectStatus, Blocklist, Validity, Market, Zone, Schedule ----

#[test]
fn status_revoked_fails() {
    let mut f = Fixture::new();
    f.subject_mut().status = SubjectStatus::Revoked;
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::SubjectStatus).outcome, Outcome::Fail);
    assert_eq!(check(&v, CheckKind::Blocklist).outcome, Outcome::Pass);
    assert_eq!(v.display.text, "Card revoked");
}

#[test]
fn blocklisted_fails() {
    let mut f = Fixture::new();
    f.subject_mut().status = SubjectStatus::Blocklisted;
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::SubjectStatus).outcome, Outcome::Pass);
    assert_eq!(check(&v, CheckKind::Blocklist).outcome, Outcome::Fail);
    assert_eq!(v.decision, Decision::Deny);
}

#[test]
fn identified_but_unregistered_fails_closed() {
    let mut f = Fixture::new();
    f.subject = None;
    let v = f.decide(&strict());
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(check(&v, CheckKind::SubjectStatus).detail, "Not registered");
    assert_eq!(
        check(&v, CheckKind::HealthCode).outcome,
        Outcome::NotChecked
    );
    // A record of someone else is no record.
    let mut f = Fixture::new();
    f.subject_mut().subject = BOB;
    assert_eq!(outcome(&f, CheckKind::SubjectStatus), Outcome::Fail);
}

#[test]
fn validity_window_bounds() {
    let mut f = Fixture::new();
    assert_eq!(outcome(&f, CheckKind::Validity), Outcome::NotChecked);
    f.subject_mut().valid_from = Some(UnixMillis(f.now.0 + 1));
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::Validity).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Pass not yet valid");
    f.subject_mut().valid_from = Some(f.now);
    f.subject_mut().valid_until = Some(f.now);
    assert_eq!(outcome(&f, CheckKind::Validity), Outcome::Pass);
    f.subject_mut().valid_until = Some(UnixMillis(f.now.0 - 1));
    assert_eq!(f.decide(&strict()).display.text, "Pass expired");
}

#[test]
fn market_allow_list() {
    let mut f = Fixture::new();
    assert_eq!(outcome(&f, CheckKind::Market), Outcome::Pass);
    f.subject_mut().markets = vec![MarketId(1), MarketId(2)];
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::Market).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Not allowed at this market");
    f.subject_mut().markets.clear();
    assert_eq!(outcome(&f, CheckKind::Market), Outcome::Pass);
}

#[test]
fn zone_enforced_per_category() {
    let mut f = Fixture::new();
    assert_eq!(outcome(&f, CheckKind::Zone), Outcome::Pass);
    f.subject_mut().zones = vec![ZoneId(99)];
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::Zone).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Outside assigned zone");
    f.subject_mut().zones.clear();
    assert_eq!(outcome(&f, CheckKind::Zone), Outcome::Pass);
    // Buyers' zones are not enforced by the strict policy.
    f.subject_mut().zones = vec![ZoneId(99)];
    f.subject_mut().category = Category::Buyer;
    assert_eq!(outcome(&f, CheckKind::Zone), Outcome::NotChecked);
}

#[test]
fn schedule_uses_local_time() {
    // 10:00 in Beijing is inside 06:00-20:00.
    let mut f = Fixture::new();
    let v = f.decide(&strict());
    let c = check(&v, CheckKind::Schedule);
    assert_eq!((c.outcome, c.value), (Outcome::Pass, Some(600.0)));
    // The same instant is 02:00 in UTC: outside.
    f.utc_offset = UtcOffset(0);
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::Schedule).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Outside allowed hours");
    let always = strict_with("schedule = \"always\"");
    let v = f.decide(&always);
    assert_eq!(check(&v, CheckKind::Schedule).outcome, Outcome::NotChecked);
}

#[test]
fn schedule_window_wraps_midnight() {
    let policy = strict_with("schedule = [\"22:00-06:00\"]");
    let mut f = Fixture::new();
    f.utc_offset = UtcOffset(0); // 02:00
    assert_eq!(
        check(&f.decide(&policy), CheckKind::Schedule).outcome,
        Outcome::Pass
    );
    f.utc_offset = UtcOffset(480); // 10:00
    assert_eq!(
        check(&f.decide(&policy), CheckKind::Schedule).outcome,
        Outcome::Fail
    );
}

// ---- the event: Temperature ----

#[test]
fn temperature_against_ceiling() {
    let mut f = Fixture::new();
    f.event.temperature_c = Some(37.3);
    let v = f.decide(&strict());
    let c = check(&v, CheckKind::Temperature);
    assert_eq!(c.outcome, Outcome::Pass);
    assert_eq!(c.threshold, Some(37.3));
    f.event.temperature_c = Some(37.4);
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::Temperature).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Temperature too high");
    f.event.temperature_c = None;
    assert_eq!(outcome(&f, CheckKind::Temperature), Outcome::NotChecked);
    f.event.temperature_c = Some(f32::NAN);
    assert_eq!(outcome(&f, CheckKind::Temperature), Outcome::Fail);
    f.event.temperature_c = Some(f32::NEG_INFINITY);
    assert_eq!(outcome(&f, CheckKind::Temperature), Outcome::Fail);
    f.event.temperature_c = Some(39.0);
    let off = strict_with("temperature_ceiling_c = \"off\"");
    assert_eq!(
        check(&f.decide(&off), CheckKind::Temperature).outcome,
        Outcome::NotChecked
    );
}

#[test]
fn temperature_checked_for_unidentified_person() {
    let mut f = Fixture::new();
    f.credential = CredentialLookup::Unknown;
    f.event.temperature_c = Some(39.0);
    assert_eq!(outcome(&f, CheckKind::Temperature), Outcome::Fail);
}

// ---- health: HealthCode, TravelCode, TestAge, Vaccination ----

#[test]
fn health_code_colours() {
    let mut f = Fixture::new();
    assert_eq!(outcome(&f, CheckKind::HealthCode), Outcome::Pass);
    f.health_mut().health_code = CodeColour::Yellow;
    assert_eq!(outcome(&f, CheckKind::HealthCode), Outcome::Escalate);
    f.health_mut().health_code = CodeColour::Red;
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::HealthCode).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Health code red");
    let off = strict_with("health_code = \"off\"");
    assert_eq!(
        check(&f.decide(&off), CheckKind::HealthCode).outcome,
        Outcome::NotChecked
    );
    // Yellow can be made a plain failure.
    let strict_yellow = strict_with("health_code = { pass = [\"green\"] }");
    f.health_mut().health_code = CodeColour::Yellow;
    let v = f.decide(&strict_yellow);
    assert_eq!(check(&v, CheckKind::HealthCode).outcome, Outcome::Fail);
}

#[test]
fn travel_code_colours() {
    let mut f = Fixture::new();
    assert_eq!(outcome(&f, CheckKind::TravelCode), Outcome::Pass);
    f.health_mut().travel_code = CodeColour::Yellow;
    assert_eq!(outcome(&f, CheckKind::TravelCode), Outcome::Escalate);
    f.health_mut().travel_code = CodeColour::Red;
    assert_eq!(outcome(&f, CheckKind::TravelCode), Outcome::Fail);
    let off = strict_with("travel_code = \"off\"");
    assert_eq!(
        check(&f.decide(&off), CheckKind::TravelCode).outcome,
        Outcome::NotChecked
    );
}

#[test]
fn code_checks_report_colour_age_and_max_age() {
    let mut f = Fixture::new();
    f.health_mut().updated_at = UnixMillis(f.now.0 - 6 * HOUR_MS);
    let v = f.decide(&strict());
    let health = check(&v, CheckKind::HealthCode);
    assert_eq!(health.outcome, Outcome::Pass);
    assert_eq!(health.detail, "Health code green");
    assert_eq!((health.value, health.threshold), (Some(6.0), Some(24.0)));
    let travel = check(&v, CheckKind::TravelCode);
    assert_eq!(travel.detail, "Travel code green");
    assert_eq!((travel.value, travel.threshold), (Some(6.0), Some(72.0)));
    // With no maximum age the age is still reported, against no threshold.
    let any_age = strict_with("health_code_max_age = \"off\"");
    let health = check(&f.decide(&any_age), CheckKind::HealthCode).clone();
    assert_eq!(health.outcome, Outcome::Pass);
    assert_eq!((health.value, health.threshold), (Some(6.0), None));
}

#[test]
fn stale_health_code_is_refused_as_the_policy_says() {
    let mut f = Fixture::new();
    // Ten days old: the green code of the issue that was still admitted.
    f.health_mut().updated_at = UnixMillis(f.now.0 - 240 * HOUR_MS);
    let v = f.decide(&strict());
    let health = check(&v, CheckKind::HealthCode);
    assert_eq!(health.outcome, Outcome::Fail);
    assert_eq!(health.detail, "Health code green, older than 24 h");
    assert_eq!((health.value, health.threshold), (Some(240.0), Some(24.0)));
    assert_eq!(v.decision, Decision::Deny);
    assert_eq!(v.display.text, "Health code green, older than 24 h");
    // The travel code's own maximum (72 h) is passed too.
    assert_eq!(check(&v, CheckKind::TravelCode).outcome, Outcome::Fail);

    let escalate = strict_with("stale_code = \"escalate\"");
    let v = f.decide(&escalate);
    assert_eq!(check(&v, CheckKind::HealthCode).outcome, Outcome::Escalate);
    assert_eq!(v.decision, Decision::Escalate);

    // At the limit exactly is still fresh; a millisecond past it is not.
    f.health_mut().updated_at = UnixMillis(f.now.0 - 24 * HOUR_MS);
    assert_eq!(outcome(&f, CheckKind::HealthCode), Outcome::Pass);
    f.health_mut().updated_at = UnixMillis(f.now.0 - 24 * HOUR_MS - 1);
    assert_eq!(outcome(&f, CheckKind::HealthCode), Outcome::Fail);
    assert_eq!(outcome(&f, CheckKind::TravelCode), Outcome::Pass);
}

#[test]
fn stale_code_never_softens_a_refused_colour() {
    let mut f = Fixture::new();
    f.health_mut().updated_at = UnixMillis(f.now.0 - 100 * HOUR_MS);
    f.health_mut().health_code = CodeColour::Red;
    let escalate = strict_with("stale_code = \"escalate\"");
    let v = f.decide(&escalate);
    let health = check(&v, CheckKind::HealthCode);
    assert_eq!(health.outcome, Outcome::Fail);
    assert_eq!(health.detail, "Health code red");
    // A yellow code that is also stale gets the worse of escalate and deny.
    f.health_mut().health_code = CodeColour::Yellow;
    let health = check(&f.decide(&strict()), CheckKind::HealthCode).clone();
    assert_eq!(health.outcome, Outcome::Fail);
    assert_eq!(health.detail, "Health code yellow, older than 24 h");
    let health = check(&f.decide(&escalate), CheckKind::HealthCode).clone();
    assert_eq!(health.outcome, Outcome::Escalate);
}

#[test]
fn code_updated_in_the_future_is_zero_hours_old() {
    let mut f = Fixture::new();
    f.health_mut().updated_at = UnixMillis(f.now.0 + 5 * HOUR_MS);
    let v = f.decide(&strict());
    let health = check(&v, CheckKind::HealthCode);
    assert_eq!(health.outcome, Outcome::Pass);
    assert_eq!(health.value, Some(0.0));
}

#[test]
fn code_max_age_is_per_market() {
    let mut f = Fixture::new();
    f.health_mut().updated_at = UnixMillis(f.now.0 - 30 * HOUR_MS);
    assert_eq!(outcome(&f, CheckKind::HealthCode), Outcome::Fail);
    let relaxed = strict_with("health_code_max_age = 48");
    let health = check(&f.decide(&relaxed), CheckKind::HealthCode).clone();
    assert_eq!(health.outcome, Outcome::Pass);
    assert_eq!(health.threshold, Some(48.0));
}

#[test]
fn bad_code_ages_are_refused() {
    for bad in ["0", "2161", "1.5", "\"24h\"", "-3"] {
        let text = STRICT.replace(
            "health_code_max_age = 24",
            &format!("health_code_max_age = {bad}"),
        );
        let (line, _, reason) = invalid(&text);
        let expected = STRICT
            .lines()
            .position(|l| l.starts_with("health_code_max_age"))
            .unwrap()
            + 1;
        assert_eq!(line, expected, "{bad}: {reason}");
    }
    let text = STRICT.replace("stale_code = \"deny\"", "stale_code = \"warn\"");
    let (_, _, reason) = invalid(&text);
    assert!(reason.contains("warn"), "{reason}");
    let text = STRICT.replace("travel_code_max_age = 72\n", "");
    let (line, _, reason) = invalid(&text);
    assert_eq!(line, 2);
    assert!(reason.contains("`travel_code_max_age`"), "{reason}");
}

#[test]
fn no_health_record_fails_every_health_check() {
    let mut f = Fixture::new();
    f.health = None;
    let v = f.decide(&strict());
    for kind in [
        CheckKind::HealthCode,
        CheckKind::TravelCode,
        CheckKind::TestAge,
        CheckKind::Vaccination,
    ] {
        assert_eq!(check(&v, kind).outcome, Outcome::Fail, "{kind:?}");
    }
    assert_eq!(v.display.text, "No health record");
    // A record filed under someone else counts as none.
    let mut f = Fixture::new();
    f.health_mut().subject = BOB;
    assert_eq!(f.decide(&strict()).display.text, "No health record");
}

#[test]
fn test_age_limit() {
    let mut f = Fixture::new();
    let v = f.decide(&strict());
    let c = check(&v, CheckKind::TestAge);
    assert_eq!(
        (c.outcome, c.value, c.threshold),
        (Outcome::Pass, Some(10.0), Some(48.0))
    );
    f.health_mut().test_at = Some(UnixMillis(f.now.0 - 48 * HOUR_MS));
    assert_eq!(outcome(&f, CheckKind::TestAge), Outcome::Pass);
    f.health_mut().test_at = Some(UnixMillis(f.now.0 - 48 * HOUR_MS - 1));
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::TestAge).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Test older than 48 h");
    // A test stamped in the future is zero hours old.
    f.health_mut().test_at = Some(UnixMillis(f.now.0 + HOUR_MS));
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::TestAge).value, Some(0.0));
    let off = strict_with("max_test_age_hours = \"off\"");
    f.health_mut().test_at = None;
    assert_eq!(
        check(&f.decide(&off), CheckKind::TestAge).outcome,
        Outcome::NotChecked
    );
}

#[test]
fn test_result_must_be_negative() {
    let cases = [
        (Some(TestResult::Positive), "Test positive"),
        (Some(TestResult::Pending), "Test result pending"),
        (None, "No test result"),
    ];
    for (result, text) in cases {
        let mut f = Fixture::new();
        f.health_mut().test_result = result;
        let v = f.decide(&strict());
        assert_eq!(check(&v, CheckKind::TestAge).outcome, Outcome::Fail);
        assert_eq!(v.display.text, text);
    }
    let mut f = Fixture::new();
    f.health_mut().test_at = None;
    assert_eq!(f.decide(&strict()).display.text, "No test on record");
}

#[test]
fn vaccination_minimum_per_category() {
    let mut f = Fixture::new();
    let v = f.decide(&strict());
    let c = check(&v, CheckKind::Vaccination);
    assert_eq!(
        (c.outcome, c.value, c.threshold),
        (Outcome::Pass, Some(3.0), Some(2.0))
    );
    f.health_mut().vaccine_doses = 1;
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::Vaccination).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Vaccination incomplete");
    f.health_mut().vaccine_doses = 0;
    assert_eq!(f.decide(&strict()).display.text, "Not vaccinated");
    // Buyers need no vaccine under the strict policy.
    f.subject_mut().category = Category::Buyer;
    assert_eq!(outcome(&f, CheckKind::Vaccination), Outcome::NotChecked);
    assert_eq!(f.decide(&strict()).decision, Decision::Admit);
}

// ---- passage: SignIn, AntiPassback, Frequency, Occupancy ----

#[test]
fn sign_in_required_before_work() {
    let mut f = Fixture::new();
    assert_eq!(outcome(&f, CheckKind::SignIn), Outcome::Pass);
    f.person.signed_in_today = false;
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::SignIn).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Sign in first");
    // The sign-in itself is exempt, and is admitted.
    f.event.mode = Mode::SignIn {
        credential: Some(Credential::StaffQr("qr".to_owned())),
    };
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::SignIn).outcome, Outcome::NotChecked);
    assert_eq!(v.decision, Decision::Admit);
    assert_eq!(v.display.text, "Signed in");
    // Buyers need not sign in.
    f.event.mode = Mode::Identify;
    f.subject_mut().category = Category::Buyer;
    assert_eq!(outcome(&f, CheckKind::SignIn), Outcome::NotChecked);
}

#[test]
fn anti_passback_alternates() {
    let mut f = Fixture::new();
    assert_eq!(outcome(&f, CheckKind::AntiPassback), Outcome::Pass);
    f.person.inside = Some(true);
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::AntiPassback).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Already inside");
    f.event.direction = Direction::Exit;
    assert_eq!(outcome(&f, CheckKind::AntiPassback), Outcome::Pass);
    f.person.inside = Some(false);
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::AntiPassback).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "No entry on record");
    // No passage today: both directions pass.
    f.person.inside = None;
    assert_eq!(outcome(&f, CheckKind::AntiPassback), Outcome::Pass);
    f.event.direction = Direction::Entry;
    assert_eq!(outcome(&f, CheckKind::AntiPassback), Outcome::Pass);
    let off = strict_with("anti_passback = false");
    f.person.inside = Some(true);
    let v = f.decide(&off);
    assert_eq!(
        check(&v, CheckKind::AntiPassback).outcome,
        Outcome::NotChecked
    );
}

#[test]
fn frequency_cap() {
    let mut f = Fixture::new();
    f.person.entries_today = 4;
    let v = f.decide(&strict());
    let c = check(&v, CheckKind::Frequency);
    assert_eq!(
        (c.outcome, c.value, c.threshold),
        (Outcome::Pass, Some(4.0), Some(5.0))
    );
    f.person.entries_today = 5;
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::Frequency).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Daily entry limit reached");
    let off = strict_with("max_entries_per_day = \"off\"");
    let v = f.decide(&off);
    assert_eq!(check(&v, CheckKind::Frequency).outcome, Outcome::NotChecked);
}

#[test]
fn occupancy_cap_denies_or_escalates() {
    let mut f = Fixture::new();
    f.market.occupancy = 99;
    assert_eq!(outcome(&f, CheckKind::Occupancy), Outcome::Pass);
    f.market.occupancy = 100;
    let v = f.decide(&strict());
    assert_eq!(check(&v, CheckKind::Occupancy).outcome, Outcome::Fail);
    assert_eq!(v.display.text, "Market full");
    let soft = strict_with("over_occupancy = \"escalate\"");
    let v = f.decide(&soft);
    assert_eq!(check(&v, CheckKind::Occupancy).outcome, Outcome::Escalate);
    assert_eq!(v.decision, Decision::Escalate);
    let off = strict_with("occupancy_cap = \"off\"");
    let v = f.decide(&off);
    assert_eq!(check(&v, CheckKind::Occupancy).outcome, Outcome::NotChecked);
}

// ---- exits ----

#[test]
fn exit_skips_health_and_standing() {
    let mut f = Fixture::new();
    f.event.direction = Direction::Exit;
    f.person.inside = Some(true);
    f.event.temperature_c = Some(39.5);
    f.market.occupancy = 1000;
    f.person.entries_today = 99;
    f.person.signed_in_today = false;
    f.subject_mut().status = SubjectStatus::Revoked;
    f.subject_mut().zones = vec![ZoneId(99)];
    f.health_mut().health_code = CodeColour::Red;
    f.health_mut().vaccine_doses = 0;
    f.utc_offset = UtcOffset(0); // outside the schedule
    let v = f.decide(&strict());
    assert_eq!(v.decision, Decision::Admit, "{v:#?}");
    assert_eq!(v.subject, Some(ALICE));
    for kind in [
        CheckKind::SubjectStatus,
        CheckKind::Schedule,
        CheckKind::Temperature,
        CheckKind::HealthCode,
        CheckKind::Vaccination,
        CheckKind::SignIn,
        CheckKind::Frequency,
        CheckKind::Occupancy,
    ] {
        let c = check(&v, kind);
        assert_eq!(
            (c.outcome, c.detail.as_str()),
            (Outcome::NotChecked, "Exit"),
            "{kind:?}"
        );
    }
    assert_eq!(check(&v, CheckKind::AntiPassback).outcome, Outcome::Pass);
}

#[test]
fn exit_still_needs_identity() {
    let mut f = Fixture::new();
    f.event.direction = Direction::Exit;
    f.credential = CredentialLookup::Unknown;
    assert_eq!(f.decide(&strict()).decision, Decision::Deny);
}

// ---- policy files ----

#[test]
fn demo_policy_parses() {
    let book = PolicyBook::demo();
    assert!(book.overridden_markets().is_empty());
    let p = book.for_market(MarketId(1));
    assert_eq!(p.identify_threshold(), 0.50);
    assert_eq!(p.verify_threshold(), 0.45);
    assert_eq!(p.margin(), 0.05);
    assert_eq!(p.borderline_band(), 0.0);
    assert!(!p.requires_credential());
}

#[test]
fn demo_policy_follows_contract() {
    let policy = PolicyBook::demo().for_market(MARKET).clone();
    // A merchant needs two doses and stays in their zone; a buyer needs neither.
    let mut f = Fixture::new();
    f.person = Default::default();
    f.health_mut().vaccine_doses = 1;
    assert_eq!(f.decide(&policy).display.text, "Vaccination incomplete");
    f.subject_mut().category = Category::Buyer;
    f.subject_mut().zones = vec![ZoneId(99)];
    assert_eq!(f.decide(&policy).decision, Decision::Admit);
    // 48 h test, 37.3 °C, yellow escalates, 50 entries, no sign-in or passback rules.
    f.health_mut().test_at = Some(UnixMillis(f.now.0 - 47 * HOUR_MS));
    f.person.entries_today = 49;
    f.person.inside = Some(true);
    assert_eq!(f.decide(&policy).decision, Decision::Admit);
    f.person.entries_today = 50;
    assert_eq!(f.decide(&policy).display.text, "Daily entry limit reached");
    f.person.entries_today = 0;
    f.event.temperature_c = Some(37.4);
    assert_eq!(f.decide(&policy).decision, Decision::Deny);
    f.event.temperature_c = None;
    f.health_mut().travel_code = CodeColour::Yellow;
    assert_eq!(f.decide(&policy).decision, Decision::Escalate);
    f.health = None;
    assert_eq!(f.decide(&policy).decision, Decision::Deny);
}

#[test]
fn field_policies_parse() {
    let xinfadi = PolicyBook::from_toml(include_str!("../../policies/xinfadi.toml"), "x")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(xinfadi.default_policy().requires_credential());
    let haidian = PolicyBook::from_toml(include_str!("../../policies/haidian.toml"), "h")
        .unwrap_or_else(|e| panic!("{e}"));
    let p = haidian.default_policy();
    for c in [
        Category::ServiceWorker,
        Category::Manager,
        Category::Staff,
        Category::Merchant,
    ] {
        assert!(p.requires_sign_in(c), "{c:?}");
    }
    assert!(!p.requires_sign_in(Category::Buyer));
}

#[test]
fn xinfadi_requires_card_test_codes_and_three_doses() {
    let book = PolicyBook::from_toml(include_str!("../../policies/xinfadi.toml"), "x").unwrap();
    let policy = book.for_market(MARKET).clone();
    let mut f = Fixture::new();
    f.subject_mut().category = Category::Buyer;
    assert_eq!(f.decide(&policy).decision, Decision::Admit);
    assert_eq!(
        Fixture::identify().decide(&policy).display.text,
        "ID card required"
    );
    f.health_mut().test_at = Some(UnixMillis(f.now.0 - 25 * HOUR_MS));
    assert_eq!(f.decide(&policy).display.text, "Test older than 24 h");
    let mut f = Fixture::new();
    f.health_mut().vaccine_doses = 2;
    assert_eq!(f.decide(&policy).display.text, "Vaccination incomplete");
    let mut f = Fixture::new();
    f.health_mut().health_code = CodeColour::Yellow;
    assert_eq!(f.decide(&policy).decision, Decision::Deny);
}

#[test]
fn haidian_no_test_no_entry_no_vaccine_no_work() {
    let book = PolicyBook::from_toml(include_str!("../../policies/haidian.toml"), "h").unwrap();
    let policy = book.for_market(MARKET).clone();
    // A buyer without vaccination enters with a test.
    let mut f = Fixture::new();
    f.subject_mut().category = Category::Buyer;
    f.health_mut().vaccine_doses = 0;
    f.person = Default::default();
    assert_eq!(
        f.decide(&policy).decision,
        Decision::Admit,
        "{:#?}",
        f.decide(&policy)
    );
    f.health_mut().test_result = Some(TestResult::Positive);
    assert_eq!(f.decide(&policy).decision, Decision::Deny);
    // A merchant without vaccination may not work.
    let mut f = Fixture::new();
    f.health_mut().vaccine_doses = 0;
    assert_eq!(f.decide(&policy).display.text, "Not vaccinated");
    // Staff sign in first, and stay in their zones.
    let mut f = Fixture::new();
    f.subject_mut().category = Category::Staff;
    f.person.signed_in_today = false;
    assert_eq!(f.decide(&policy).display.text, "Sign in first");
    f.person.signed_in_today = true;
    f.subject_mut().zones = vec![ZoneId(99)];
    assert_eq!(f.decide(&policy).display.text, "Outside assigned zone");
}

#[test]
fn market_override_merges_key_by_key() {
    let text = format!(
        "{STRICT}
[markets.7]
identify_threshold = 0.6
min_vaccine_doses = 3

[markets.7.categories.buyer]
max_entries_per_day = 1
"
    );
    let book = PolicyBook::from_toml(&text, "m.toml").unwrap();
    assert_eq!(book.overridden_markets(), vec![MARKET]);
    assert_eq!(book.for_market(MarketId(8)).identify_threshold(), 0.5);
    let policy = book.for_market(MARKET).clone();
    assert_eq!(policy.identify_threshold(), 0.6);
    assert_eq!(policy.verify_threshold(), 0.45);
    // The market's base dose count replaces the default's for merchants...
    let mut f = Fixture::new();
    f.health_mut().vaccine_doses = 2;
    assert_eq!(f.decide(&policy).display.text, "Vaccination incomplete");
    // ...while the default's buyer keys still apply, merged with the market's buyer keys.
    f.subject_mut().category = Category::Buyer;
    f.person.entries_today = 1;
    let v = f.decide(&policy);
    assert_eq!(
        check(&v, CheckKind::Vaccination).outcome,
        Outcome::NotChecked
    );
    assert_eq!(check(&v, CheckKind::Frequency).threshold, Some(1.0));
    assert_eq!(v.display.text, "Daily entry limit reached");
}

#[test]
fn bad_value_names_line_and_range() {
    let text = STRICT.replace("verify_threshold = 0.45", "verify_threshold = 1.45");
    let (line, column, reason) = invalid(&text);
    assert_eq!(line, 4);
    assert_eq!(column, 20);
    assert_eq!(reason, "cosine score 1.45 is outside [-1, 1]");
    let text = STRICT.replace("temperature_ceiling_c = 37.3", "temperature_ceiling_c = 73");
    let (line, _, reason) = invalid(&text);
    assert_eq!(line, 9);
    assert!(reason.contains("temperature ceiling"), "{reason}");
}

#[test]
fn unknown_key_is_refused() {
    let text = format!("{STRICT}\n[markets.7]\nidentfy_threshold = 0.6\n");
    let (line, column, reason) = invalid(&text);
    assert_eq!((line, column), (STRICT.lines().count() + 3, 1));
    assert!(
        reason.starts_with("unknown key `identfy_threshold` in [markets.7]"),
        "{reason}"
    );
}

#[test]
fn unknown_category_is_refused() {
    let text = format!("{STRICT}\n[default.categories.visitor]\nzones_enforced = true\n");
    let (_, _, reason) = invalid(&text);
    assert!(
        reason.starts_with("unknown category `visitor` in [default].categories"),
        "{reason}"
    );
}

#[test]
fn market_only_key_in_category_is_refused() {
    let text = format!("{STRICT}\n[default.categories.staff]\nmargin = 0.1\n");
    let (_, _, reason) = invalid(&text);
    assert!(
        reason.starts_with("`margin` applies to a whole market and cannot be set per category"),
        "{reason}"
    );
}

#[test]
fn missing_default_key_is_refused() {
    let text = STRICT.replace("liveness_min = 0.5\n", "");
    let (line, _, reason) = invalid(&text);
    assert_eq!(line, 2, "points at [default]");
    assert_eq!(
        reason,
        "missing key `liveness_min` in [default]; [default] must set every key"
    );
}

#[test]
fn bad_schedules_are_refused() {
    for (schedule, needle) in [
        ("[\"6-20\"]", "not of the form"),
        ("[\"08:00-08:00\"]", "is empty"),
        ("[]", "never open"),
        ("\"sometimes\"", "\"always\""),
    ] {
        let text = STRICT.replace(
            "schedule = [\"06:00-20:00\"]",
            &format!("schedule = {schedule}"),
        );
        let (line, _, reason) = invalid(&text);
        assert_eq!(line, 20, "{schedule}");
        assert!(reason.contains(needle), "{schedule}: {reason}");
    }
}

#[test]
fn bad_market_ids_are_refused() {
    for id in ["x7", "07", "-1", "4294967296"] {
        let text = format!("{STRICT}\n[markets.\"{id}\"]\nmargin = 0.1\n");
        let (line, _, reason) = invalid(&text);
        assert_eq!(line, STRICT.lines().count() + 2, "{id}");
        assert!(reason.starts_with("market id"), "{id}: {reason}");
    }
}

#[test]
fn bad_code_rules_are_refused() {
    let both = "health_code = { pass = [\"green\", \"yellow\"], escalate = [\"yellow\"] }";
    let (line, _, reason) = invalid(&format!("{STRICT}\n[markets.7]\n{both}\n"));
    assert_eq!(line, STRICT.lines().count() + 3);
    assert!(reason.contains("both"), "{reason}");
    let purple = "travel_code = { pass = [\"purple\"] }";
    let (_, _, reason) = invalid(&format!("{STRICT}\n[markets.7]\n{purple}\n"));
    assert!(reason.contains("purple"), "{reason}");
    let (_, _, reason) = invalid(&format!("{STRICT}\n[markets.7]\ntravel_code = \"of\"\n"));
    assert!(reason.contains("\"off\""), "{reason}");
}

#[test]
fn bad_integers_are_refused() {
    for (key, bad) in [
        ("max_entries_per_day = 5", "max_entries_per_day = 0"),
        ("max_entries_per_day = 5", "max_entries_per_day = 2.5"),
        ("max_test_age_hours = 48", "max_test_age_hours = -1"),
        ("min_vaccine_doses = 2", "min_vaccine_doses = 11"),
        ("occupancy_cap = 100", "occupancy_cap = true"),
    ] {
        let (line, _, reason) = invalid(&STRICT.replace(key, bad));
        let expected = STRICT.lines().position(|l| l == key).unwrap() + 1;
        assert_eq!(line, expected, "{bad}: {reason}");
    }
}

#[test]
fn syntax_error_names_line() {
    let found = problems("[default]\nmargin = = 1\n");
    assert_eq!(found[0].line, 2, "{found:#?}");
    // A broken document is not also checked key by key: no "missing key" noise.
    assert!(
        found.iter().all(|p| !p.reason.contains("missing key")),
        "{found:#?}"
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = format!(
        "{}\n[markets.7]\nidentfy_threshold = 0.6\nmargin = 9\n\
         [markets.7.categories.staff]\nmargin = 0.1\nschedule = []\n\
         [markets.x]\nmargin = 0.1\n",
        STRICT
            .replace("verify_threshold = 0.45", "verify_threshold = 1.45")
            .replace("liveness_min = 0.5\n", "")
    );
    let found = problems(&text);
    let reasons: Vec<&str> = found.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(found.len(), 7, "{reasons:#?}");
    let lines: Vec<usize> = found.iter().map(|p| p.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted, "not in file order");
    assert!(
        reasons[0].starts_with("missing key `liveness_min`"),
        "{reasons:#?}"
    );
    assert!(reasons[1].starts_with("cosine score 1.45"), "{reasons:#?}");
    assert!(
        reasons[2].starts_with("unknown key `identfy_threshold`"),
        "{reasons:#?}"
    );
    assert!(reasons[3].starts_with("match margin 9"), "{reasons:#?}");
    assert!(
        reasons[4].starts_with("`margin` applies to a whole market"),
        "{reasons:#?}"
    );
    assert!(reasons[5].contains("never open"), "{reasons:#?}");
    assert!(reasons[6].starts_with("market id \"x\""), "{reasons:#?}");
    // The error's text is one `file:line:column: reason` line per problem.
    let err = PolicyBook::from_toml(&text, "bad.toml").unwrap_err();
    assert_eq!(err.to_string().lines().count(), 7);
    assert_eq!(err.problems().len(), 7);
    assert!(err.to_string().lines().all(|l| l.starts_with("bad.toml:")));
}

#[test]
fn version_follows_meaning_not_layout() {
    let book = PolicyBook::from_toml(STRICT, "a.toml").unwrap();
    let v = book.version().as_str();
    assert_eq!(v.len(), 12);
    assert!(
        v.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{v}"
    );
    // Comments, blank lines, key order and number spelling do not change it.
    let relaid = format!(
        "# a comment\n\n{}",
        STRICT
            .replace("occupancy_cap = 100", "occupancy_cap = 1_00 # people")
            .replace("margin = 0.05\n", "")
            .replace(
                "liveness_min = 0.5\n",
                "liveness_min = 0.5\nmargin = 5e-2\n"
            )
    );
    let same = PolicyBook::from_toml(&relaid, "b.toml").unwrap();
    assert_eq!(same.version(), book.version());
    // Any change of meaning does.
    let changed = PolicyBook::from_toml(
        &STRICT.replace("occupancy_cap = 100", "occupancy_cap = 101"),
        "c.toml",
    )
    .unwrap();
    assert_ne!(changed.version(), book.version());
    assert_ne!(PolicyBook::demo().version(), book.version());
}

#[test]
fn summary_describes_each_market_and_category() {
    let text = format!(
        "{STRICT}\n[markets.7]\noccupancy_cap = \"off\"\n[markets.7.categories.buyer]\n\
         schedule = [\"04:00-10:00\"]\n[markets.9]\n"
    );
    let book = PolicyBook::from_toml(&text, "s.toml").unwrap();
    let summary = book.summary();
    assert!(
        summary.starts_with(&format!("policy version {}\n", book.version())),
        "{summary}"
    );
    assert!(
        summary.contains("default (every market except 7, 9):"),
        "{summary}"
    );
    assert!(summary.contains("market 7:"), "{summary}");
    assert!(summary.contains("market 9: as the default"), "{summary}");
    assert!(summary.contains("health code: green pass, yellow escalate, red deny; no record: deny; older than 24 h: deny"), "{summary}");
    assert!(
        summary.contains("occupancy: at 100 people inside, entries are denied"),
        "{summary}"
    );
    assert!(summary.contains("occupancy: not capped"), "{summary}");
    // One line per category in each market, the buyer's market-7 schedule among them.
    let buyer: Vec<&str> = summary
        .lines()
        .filter(|l| l.trim_start().starts_with("buyer "))
        .collect();
    assert_eq!(buyer.len(), 2, "{summary}");
    assert!(buyer[0].contains("only 06:00-20:00"), "{summary}");
    assert!(buyer[1].contains("only 04:00-10:00"), "{summary}");
    assert!(buyer[1].contains("no vaccination needed"), "{summary}");
    let merchant = summary
        .lines()
        .find(|l| l.trim_start().starts_with("merchant "))
        .unwrap();
    assert!(
        merchant.contains("2 vaccine doses; own zones only; sign in before entering"),
        "{merchant}"
    );
}

#[test]
fn load_reads_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, STRICT).unwrap();
    let book = PolicyBook::load(&good).unwrap();
    assert_eq!(book.for_market(MARKET).identify_threshold(), 0.5);

    let bad = dir.path().join("market.toml");
    std::fs::write(&bad, STRICT.replace("margin = 0.05", "margin = -1")).unwrap();
    let err = PolicyBook::load(&bad).unwrap_err().to_string();
    assert!(
        err.starts_with("market.toml:6:10: match margin -1"),
        "{err}"
    );

    let missing = dir.path().join("missing.toml");
    assert!(matches!(
        PolicyBook::load(&missing),
        Err(PolicyError::Read { .. })
    ));

    let huge = dir.path().join("huge.toml");
    std::fs::write(&huge, vec![b'#'; 2 << 20]).unwrap();
    assert!(matches!(
        PolicyBook::load(&huge),
        Err(PolicyError::TooLarge { .. })
    ));
}

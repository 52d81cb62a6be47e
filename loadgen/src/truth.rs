//! The demo policy (`/work/notes/demo-policy.md`, shipped as `engine/policies/demo.toml`),
//! mirrored over the *facts the generator chose*, to say what a correct engine must answer.
//!
//! This is not a second policy engine: it sees no scores, only whether the face at the gate is
//! the person's own (genuine) or a stranger's (impostor), which the generator knows. The
//! score model in `vectors` keeps genuine scores far above and impostor scores far below the
//! face thresholds, so the face checks have a certain outcome.
//!
//! Checks, as the policy orders them (any Fail → Deny; else any Escalate → Escalate; else
//! Admit): face, status, validity, market, zone, temperature, health code, travel code, test,
//! vaccination. Liveness is always above the minimum and the daily sign-in requirement,
//! anti-passback, schedules and the occupancy cap are off or out of reach in the demo; the
//! frequency cap (50 admits per person per day) is kept out of reach by the run's planner.

use gatewarden_protocol::Decision;

use gatewarden_protocol::{CodeColour, SubjectStatus, TestResult};

use crate::population::{DemoCategory, Gate, Subject};

/// Temperature ceiling in °C: a reading above it fails.
pub(crate) const TEMPERATURE_CEILING_C: f32 = 37.3;
/// A negative test older than this (ms) fails.
pub(crate) const TEST_MAX_AGE_MS: u64 = 48 * 3_600_000;

/// Whose face the gate camera saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Face {
    /// The person named by the event (the credential holder, or the identified person).
    Genuine,
    /// A never-enrolled stranger.
    Impostor,
}

/// Everything about one event that the policy's outcome depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Facts<'a> {
    /// The person: the genuine face's owner, or the card holder an impostor presents. `None`
    /// for an impostor without a credential (1:N).
    pub(crate) subject: Option<&'a Subject>,
    /// Whose face it is.
    pub(crate) face: Face,
    /// Where.
    pub(crate) gate: &'a Gate,
    /// The reading, if any.
    pub(crate) temperature_c: Option<f32>,
    /// When (unix ms).
    pub(crate) at: u64,
}

/// What a correct engine answers, and why (the failing or escalating checks, for reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Expected {
    /// The decision.
    pub(crate) decision: Decision,
    /// The person the verdict must name, if any.
    pub(crate) subject: Option<u64>,
    /// Names of the checks that failed or escalated.
    pub(crate) reasons: Vec<&'static str>,
}

/// The demo policy's answer for `facts`.
pub(crate) fn expected(facts: &Facts<'_>) -> Expected {
    let Some(s) = facts.subject else {
        // 1:N with a stranger's face: nobody reaches the identify threshold.
        return Expected {
            decision: Decision::Deny,
            subject: None,
            reasons: vec!["face_match"],
        };
    };
    let mut fails = Vec::new();
    let mut escalates = Vec::new();
    if facts.face == Face::Impostor {
        fails.push("face_match");
    }
    if s.status != SubjectStatus::Active {
        fails.push("subject_status");
    }
    let in_window =
        s.valid_from.is_none_or(|f| facts.at >= f) && s.valid_until.is_none_or(|u| facts.at <= u);
    if !in_window {
        fails.push("validity");
    }
    if !s.markets.is_empty() && !s.markets.contains(&facts.gate.market) {
        fails.push("market");
    }
    if s.category.is_zoned() && !s.zones.is_empty() && !s.zones.contains(&facts.gate.zone) {
        fails.push("zone");
    }
    if facts
        .temperature_c
        .is_some_and(|t| t > TEMPERATURE_CEILING_C)
    {
        fails.push("temperature");
    }
    health_checks(s, facts.at, &mut fails, &mut escalates);
    let decision = if !fails.is_empty() {
        Decision::Deny
    } else if !escalates.is_empty() {
        Decision::Escalate
    } else {
        Decision::Admit
    };
    fails.extend(escalates);
    Expected {
        decision,
        subject: Some(s.id),
        reasons: fails,
    }
}

fn health_checks(
    s: &Subject,
    at: u64,
    fails: &mut Vec<&'static str>,
    escalates: &mut Vec<&'static str>,
) {
    let Some(h) = &s.health else {
        // No health record at all: no test, no entry.
        fails.push("health_record");
        return;
    };
    for (name, colour) in [
        ("health_code", h.health_code),
        ("travel_code", h.travel_code),
    ] {
        match colour {
            CodeColour::Green => {}
            CodeColour::Yellow => escalates.push(name),
            CodeColour::Red => fails.push(name),
        }
    }
    let test_ok = match (h.test_at, h.test_result) {
        (Some(t), Some(TestResult::Negative)) => at.saturating_sub(t) <= TEST_MAX_AGE_MS,
        _ => false,
    };
    if !test_ok {
        fails.push("test_age");
    }
    if h.vaccine_doses < s.category.required_doses() {
        fails.push("vaccination");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewarden_protocol::Category;

    use crate::population::{Health, Persona};

    const NOW: u64 = 1_750_000_000_000;
    const HOUR: u64 = 3_600_000;

    fn subject(category: Category) -> Subject {
        Subject {
            index: 0,
            id: 1,
            category,
            home_market: 1,
            markets: if category.is_zoned() { vec![1] } else { vec![] },
            zones: if category.is_zoned() { vec![2] } else { vec![] },
            valid_from: Some(NOW - 1000 * HOUR),
            valid_until: Some(NOW + 1000 * HOUR),
            id_card: "110108195001010011".into(),
            qr_token: None,
            status: SubjectStatus::Active,
            persona: Persona::Eligible,
            health: Some(Health {
                test_at: Some(NOW - 5 * HOUR),
                test_result: Some(TestResult::Negative),
                vaccine_doses: 3,
                health_code: CodeColour::Green,
                travel_code: CodeColour::Green,
                updated_at: NOW - 4 * HOUR,
            }),
        }
    }

    fn decide(s: &Subject, face: Face, gate: Gate, temp: f32) -> Decision {
        let facts = Facts {
            subject: Some(s),
            face,
            gate: &gate,
            temperature_c: Some(temp),
            at: NOW,
        };
        expected(&facts).decision
    }

    const HOME: Gate = Gate {
        gate: 1,
        market: 1,
        zone: 2,
    };

    #[test]
    fn truth_admits_eligible_and_denies_each_failure() {
        let ok = subject(Category::Merchant);
        assert_eq!(decide(&ok, Face::Genuine, HOME, 36.5), Decision::Admit);
        assert_eq!(decide(&ok, Face::Impostor, HOME, 36.5), Decision::Deny);
        assert_eq!(decide(&ok, Face::Genuine, HOME, 38.4), Decision::Deny);
        assert_eq!(
            decide(&ok, Face::Genuine, HOME, 37.3),
            Decision::Admit,
            "ceiling is inclusive"
        );
        let other_zone = Gate { zone: 3, ..HOME };
        assert_eq!(decide(&ok, Face::Genuine, other_zone, 36.5), Decision::Deny);
        let other_market = Gate { market: 2, ..HOME };
        assert_eq!(
            decide(&ok, Face::Genuine, other_market, 36.5),
            Decision::Deny
        );

        let mut s = ok.clone();
        s.status = SubjectStatus::Revoked;
        assert_eq!(decide(&s, Face::Genuine, HOME, 36.5), Decision::Deny);
        let mut s = ok.clone();
        s.valid_until = Some(NOW - HOUR);
        assert_eq!(decide(&s, Face::Genuine, HOME, 36.5), Decision::Deny);
        let mut s = ok;
        s.health = None;
        assert_eq!(decide(&s, Face::Genuine, HOME, 36.5), Decision::Deny);
    }

    #[test]
    fn truth_applies_health_rules() {
        let base = subject(Category::Staff);
        let with = |f: &dyn Fn(&mut Health)| {
            let mut s = base.clone();
            f(s.health.as_mut().unwrap());
            decide(&s, Face::Genuine, HOME, 36.5)
        };
        assert_eq!(with(&|h| h.test_at = Some(NOW - 72 * HOUR)), Decision::Deny);
        assert_eq!(
            with(&|h| h.test_at = Some(NOW - 47 * HOUR)),
            Decision::Admit
        );
        assert_eq!(
            with(&|h| h.test_result = Some(TestResult::Positive)),
            Decision::Deny
        );
        assert_eq!(
            with(&|h| h.test_result = Some(TestResult::Pending)),
            Decision::Deny
        );
        assert_eq!(with(&|h| h.vaccine_doses = 1), Decision::Deny);
        assert_eq!(
            with(&|h| h.health_code = CodeColour::Yellow),
            Decision::Escalate
        );
        assert_eq!(
            with(&|h| h.travel_code = CodeColour::Yellow),
            Decision::Escalate
        );
        assert_eq!(with(&|h| h.health_code = CodeColour::Red), Decision::Deny);
        // Any fail beats an escalation.
        assert_eq!(
            with(&|h| {
                h.health_code = CodeColour::Yellow;
                h.vaccine_doses = 0;
            }),
            Decision::Deny
        );
    }

    #[test]
    fn truth_skips_zone_and_doses_for_the_public() {
        let mut s = subject(Category::Shopper);
        s.health.as_mut().unwrap().vaccine_doses = 0;
        let anywhere = Gate {
            gate: 9,
            market: 7,
            zone: 4,
        };
        assert_eq!(decide(&s, Face::Genuine, anywhere, 36.5), Decision::Admit);
        let mut b = subject(Category::Buyer);
        b.zones = vec![1];
        assert_eq!(decide(&b, Face::Genuine, anywhere, 36.5), Decision::Admit);
    }

    #[test]
    fn truth_names_subjects() {
        let s = subject(Category::Manager);
        let facts = Facts {
            subject: None,
            face: Face::Impostor,
            gate: &HOME,
            temperature_c: None,
            at: NOW,
        };
        assert_eq!(expected(&facts).subject, None);
        assert_eq!(expected(&facts).decision, Decision::Deny);
        let facts = Facts {
            subject: Some(&s),
            face: Face::Impostor,
            ..facts
        };
        assert_eq!(expected(&facts).subject, Some(1));
        assert_eq!(expected(&facts).reasons, vec!["face_match"]);
    }
}

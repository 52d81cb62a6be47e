//! [`decide`]: one event, its match result and the person's records in, one [`Verdict`] out.
//!
//! Pure and total: no clock (time is the `now` argument), no I/O, no panics on any input.
//! Nineteen checks always run in [`CheckKind`] order (see the module docs of
//! [`policy`](super) for what each one does); a verdict always lists all of them.

use gatewarden_protocol::{
    Check, CheckKind, CodeColour, Decision, Direction, Display, DisplayColour, Event, GateId,
    HealthRecord, Mode, Outcome, SubjectId, SubjectRecord, SubjectStatus, TestResult, Verdict,
};

use super::MarketPolicy;
use super::file::{CategoryRules, MarketSettings};
use super::values::{
    CodeAge, CodeRule, CodeVerdict, OffOr, Refusal, Schedule, Threshold, local_minute,
};
use crate::clock::{HOUR_MS, UnixMillis, UtcOffset};
use crate::model::GateInfo;

/// Everything [`decide`] looks at for one event. The pipeline fills it in: the match result
/// from the gallery, the records from the store, the counters from today's tally.
#[derive(Clone, Copy, Debug)]
pub struct DecisionInput<'a> {
    /// The event as the gate sent it (mode, direction, liveness, temperature).
    pub event: &'a Event,
    /// Where the gate stands.
    pub gate: &'a GateInfo,
    /// What the event's credential resolved to.
    pub credential: CredentialLookup,
    /// What the face matched.
    pub face: FaceResult,
    /// The candidate's registry record: the credential holder (1:1) or the best match (1:N).
    /// `None` when there is no candidate, or the registry does not know them.
    pub subject: Option<&'a SubjectRecord>,
    /// The candidate's health record, if the authority has sent one.
    pub health: Option<&'a HealthRecord>,
    /// The candidate's counters today at this market.
    pub person: PersonState,
    /// The market's counters now.
    pub market: MarketState,
    /// The markets' local time, for schedules.
    pub utc_offset: UtcOffset,
}

/// What the event's credential resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialLookup {
    /// No card or QR code was presented.
    NotPresented,
    /// A credential was presented that the registry does not know.
    Unknown,
    /// The credential names this person.
    Resolved(SubjectId),
}

/// What the face matched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaceResult {
    /// The event carries no face.
    NoFace,
    /// 1:N search: the best subject and the best *other* subject, with cosine scores.
    Identified {
        /// The best-scoring subject, if the gallery is not empty.
        best: Option<(SubjectId, f32)>,
        /// The best subject other than `best`, for the margin check.
        runner_up: Option<(SubjectId, f32)>,
    },
    /// 1:1 verification against the credential holder's templates.
    Verified {
        /// The credential holder.
        subject: SubjectId,
        /// Their best template's score; `None` when they have no templates.
        score: Option<f32>,
    },
}

/// The candidate's counters today at the gate's market (local day).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersonState {
    /// Admitted entries today.
    pub entries_today: u32,
    /// `Some(true)` when the last admitted passage today was an entry, `Some(false)` an
    /// exit, `None` when there was none today.
    pub inside: Option<bool>,
    /// An admitted sign-in today.
    pub signed_in_today: bool,
}

/// The market's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarketState {
    /// People inside now (admitted entries minus admitted exits).
    pub occupancy: u32,
}

/// Checks in a verdict: one per [`CheckKind`] except `Internal`.
const CHECK_COUNT: usize = 19;

/// Why person-specific checks do not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    /// Identity failed: there is no person to check.
    NotIdentified,
    /// Leaving is allowed whatever the person's standing (anti-passback aside).
    Exit,
    /// Identified, but the registry has no record (fails SubjectStatus on entry).
    NotRegistered,
}

impl Skip {
    fn why(self) -> &'static str {
        match self {
            Self::NotIdentified => "Not identified",
            Self::Exit => "Exit",
            Self::NotRegistered => "Not registered",
        }
    }
}

/// Decides one event under `policy` at time `now`.
///
/// Every check in [`CheckKind`] order is reported (Pass, Fail, Escalate or NotChecked, with
/// its value and threshold); any Fail gives Deny, else any Escalate gives Escalate, else
/// Admit. Never panics: NaN scores or readings fail their check.
pub fn decide(input: &DecisionInput<'_>, policy: &MarketPolicy, now: UnixMillis) -> Verdict {
    let s = &policy.settings;
    let mut sheet = Sheet::default();
    let identity = identity_checks(input, s, &mut sheet);
    let entry = input.event.direction == Direction::Entry;
    // Who the person is in the registry, if identity holds and the registry agrees.
    let who = match identity {
        None => Err(Skip::NotIdentified),
        Some((id, _)) => input
            .subject
            .filter(|r| r.subject == id)
            .ok_or(Skip::NotRegistered),
    };
    // The person-specific checks run only for a registered person entering.
    let person = match (who, entry) {
        (Err(Skip::NotIdentified), _) => Err(Skip::NotIdentified),
        (_, false) => Err(Skip::Exit),
        (who, true) => who,
    };
    let rules = who.map_or(&policy.base, |r| policy.rules_for(r.category));

    status_checks(person, &mut sheet, now);
    place_checks(input, person, rules, &mut sheet, now);
    temperature_check(input, s, entry, &mut sheet);
    health_checks(input, person, s, rules, &mut sheet, now);
    passage_checks(input, who, person, rules, &mut sheet);
    occupancy_check(input, s, entry, &mut sheet);

    let subject = identity.map(|(id, _)| id);
    let score = identity.map(|(_, score)| score);
    sheet.into_verdict(input.event, subject, score, now)
}

/// Fails an event closed: Deny, with a single `Internal` check that carries `detail`.
///
/// For errors and panics while deciding; `detail` must not contain biometric data. It is cut
/// to 200 characters so that a runaway message cannot bloat the entry record.
pub fn internal_error(gate: GateId, seq: u64, now: UnixMillis, detail: &str) -> Verdict {
    const MAX_DETAIL: usize = 200;
    let detail = match detail.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => &detail[..cut],
        None => detail,
    };
    Verdict {
        gate,
        seq,
        decision: Decision::Deny,
        subject: None,
        score: None,
        checks: vec![Check {
            kind: CheckKind::Internal,
            outcome: Outcome::Fail,
            value: None,
            threshold: None,
            detail: detail.to_owned(),
        }],
        display: Display {
            colour: DisplayColour::Red,
            text: "System error: please ask staff".to_owned(),
        },
        decided_at: now,
        replayed: false,
    }
}

/// The checks as they are decided, plus where the first Fail and first Escalate are.
struct Sheet {
    checks: Vec<Check>,
    first_fail: Option<usize>,
    first_escalate: Option<usize>,
}

impl Default for Sheet {
    fn default() -> Self {
        Self {
            checks: Vec::with_capacity(CHECK_COUNT),
            first_fail: None,
            first_escalate: None,
        }
    }
}

impl Sheet {
    fn push(
        &mut self,
        kind: CheckKind,
        outcome: Outcome,
        value: Option<f64>,
        threshold: Option<f64>,
        detail: impl Into<String>,
    ) {
        let at = self.checks.len();
        match outcome {
            Outcome::Fail => {
                self.first_fail.get_or_insert(at);
            }
            Outcome::Escalate => {
                self.first_escalate.get_or_insert(at);
            }
            Outcome::Pass | Outcome::NotChecked => {}
        }
        self.checks.push(Check {
            kind,
            outcome,
            value,
            threshold,
            detail: detail.into(),
        });
    }

    fn pass(&mut self, kind: CheckKind, value: Option<f64>, threshold: Option<f64>) {
        self.push(kind, Outcome::Pass, value, threshold, String::new());
    }

    fn not_checked(&mut self, kind: CheckKind, why: &'static str) {
        self.push(kind, Outcome::NotChecked, None, None, why);
    }

    fn fail(&mut self, kind: CheckKind, detail: impl Into<String>) {
        self.push(kind, Outcome::Fail, None, None, detail);
    }

    /// The decision is the conjunction of the checks; the screen names the first reason.
    fn into_verdict(
        self,
        event: &Event,
        subject: Option<SubjectId>,
        score: Option<f32>,
        now: UnixMillis,
    ) -> Verdict {
        let text = |i: usize| self.checks.get(i).map_or("", |c| c.detail.as_str());
        let (decision, display) = if let Some(i) = self.first_fail {
            (
                Decision::Deny,
                screen(DisplayColour::Red, text(i).to_owned()),
            )
        } else if let Some(i) = self.first_escalate {
            let t = format!("{}: please wait for staff", text(i));
            (Decision::Escalate, screen(DisplayColour::Yellow, t))
        } else {
            let t = match event.mode {
                Mode::SignIn { .. } => "Signed in",
                _ => "Welcome",
            };
            (Decision::Admit, screen(DisplayColour::Green, t.to_owned()))
        };
        Verdict {
            gate: event.gate,
            seq: event.seq,
            decision,
            subject,
            score: score.filter(|_| subject.is_some()),
            checks: self.checks,
            display,
            decided_at: now,
            replayed: false,
        }
    }
}

fn screen(colour: DisplayColour, text: String) -> Display {
    Display { colour, text }
}

/// Pass at or above the threshold, Escalate within the borderline band below it, else Fail.
/// NaN compares false everywhere and so fails.
fn judge_score(score: f32, threshold: Threshold, band: Threshold) -> Outcome {
    if score >= threshold.cmp {
        Outcome::Pass
    } else if score >= threshold.cmp - band.cmp {
        Outcome::Escalate
    } else {
        Outcome::Fail
    }
}

/// FaceMatch, MatchMargin, Liveness, Credential. Returns who the person is, with the score,
/// when identity is established (a face match, a known or absent credential, a live face).
fn identity_checks(
    input: &DecisionInput<'_>,
    s: &MarketSettings,
    sheet: &mut Sheet,
) -> Option<(SubjectId, f32)> {
    let matched = face_checks(input, s, sheet);
    let live = liveness_check(input.event, s, sheet);
    let credential_known = credential_check(input.credential, s, sheet);
    matched.filter(|_| credential_known && live)
}

/// Returns false when a presented credential is unknown (identity fails).
fn credential_check(lookup: CredentialLookup, s: &MarketSettings, sheet: &mut Sheet) -> bool {
    match lookup {
        CredentialLookup::NotPresented if s.require_credential => {
            sheet.fail(CheckKind::Credential, "ID card required");
            true
        }
        CredentialLookup::NotPresented => {
            sheet.not_checked(CheckKind::Credential, "No card");
            true
        }
        CredentialLookup::Unknown => {
            sheet.fail(CheckKind::Credential, "Unknown card");
            false
        }
        CredentialLookup::Resolved(_) => {
            sheet.pass(CheckKind::Credential, None, None);
            true
        }
    }
}

/// FaceMatch and MatchMargin; returns the matched subject unless FaceMatch failed.
fn face_checks(
    input: &DecisionInput<'_>,
    s: &MarketSettings,
    sheet: &mut Sheet,
) -> Option<(SubjectId, f32)> {
    let card = match input.credential {
        CredentialLookup::Resolved(id) => Some(id),
        _ => None,
    };
    let threshold = |t: Threshold| Some(t.report);
    match input.face {
        // Whatever the face matched, an unknown card leaves no one to match it against;
        // the Credential check names the reason.
        _ if input.credential == CredentialLookup::Unknown => {
            sheet.not_checked(CheckKind::FaceMatch, "Unknown card");
            sheet.not_checked(CheckKind::MatchMargin, "Unknown card");
            None
        }
        FaceResult::NoFace => {
            sheet.fail(CheckKind::FaceMatch, "No face captured");
            sheet.not_checked(CheckKind::MatchMargin, "No face");
            None
        }
        FaceResult::Identified { best: None, .. } => {
            let t = threshold(s.identify_threshold.0);
            sheet.push(CheckKind::FaceMatch, Outcome::Fail, None, t, "No match");
            sheet.not_checked(CheckKind::MatchMargin, "No match");
            None
        }
        FaceResult::Identified {
            best: Some((id, score)),
            runner_up,
        } => {
            let t = s.identify_threshold.0;
            let outcome = if card.is_some_and(|c| c != id) {
                Outcome::Fail
            } else {
                judge_score(score, t, s.borderline_band.0)
            };
            let detail = match outcome {
                Outcome::Pass => "",
                Outcome::Escalate => "Uncertain match",
                _ if card.is_some() => "Face does not match card",
                _ => "No match",
            };
            let value = Some(f64::from(score));
            sheet.push(CheckKind::FaceMatch, outcome, value, threshold(t), detail);
            if outcome == Outcome::Fail {
                sheet.not_checked(CheckKind::MatchMargin, "No match");
                return None;
            }
            margin_check(id, score, runner_up, s, sheet);
            Some((id, score))
        }
        FaceResult::Verified { subject, score } => {
            let t = s.verify_threshold.0;
            let (outcome, detail) = match score {
                _ if card.is_some_and(|c| c != subject) => {
                    (Outcome::Fail, "Face does not match card")
                }
                None => (Outcome::Fail, "No face enrolled for this card"),
                Some(score) => match judge_score(score, t, s.borderline_band.0) {
                    Outcome::Pass => (Outcome::Pass, ""),
                    Outcome::Escalate => (Outcome::Escalate, "Uncertain match"),
                    o => (o, "Face does not match card"),
                },
            };
            let value = score.map(f64::from);
            sheet.push(CheckKind::FaceMatch, outcome, value, threshold(t), detail);
            sheet.not_checked(CheckKind::MatchMargin, "1:1 match");
            match (outcome, score) {
                (Outcome::Fail, _) | (_, None) => None,
                (_, Some(score)) => Some((subject, score)),
            }
        }
    }
}

/// 1:N only: the best subject must lead the best other subject by the margin, else staff
/// look. A runner-up that is the best subject itself breaks the pipeline's contract and is
/// ignored rather than trusted.
fn margin_check(
    best: SubjectId,
    score: f32,
    runner_up: Option<(SubjectId, f32)>,
    s: &MarketSettings,
    sheet: &mut Sheet,
) {
    let margin = s.margin.0;
    match runner_up {
        Some((other, other_score)) if other != best => {
            let lead = score - other_score;
            // Written as "lead >= margin" so that a NaN lead escalates instead of passing.
            let (outcome, detail) = if lead >= margin.cmp {
                (Outcome::Pass, "")
            } else {
                (Outcome::Escalate, "Ambiguous match")
            };
            let value = Some(f64::from(lead));
            sheet.push(
                CheckKind::MatchMargin,
                outcome,
                value,
                Some(margin.report),
                detail,
            );
        }
        _ => sheet.pass(CheckKind::MatchMargin, None, Some(margin.report)),
    }
}

/// Returns false when a face was presented and failed liveness (identity fails: a spoof
/// must not be recorded as the victim's visit).
fn liveness_check(event: &Event, s: &MarketSettings, sheet: &mut Sheet) -> bool {
    let Some(face) = &event.face else {
        sheet.not_checked(CheckKind::Liveness, "No face");
        return true;
    };
    let min = s.liveness_min.0;
    let value = Some(f64::from(face.liveness));
    if face.liveness >= min.cmp {
        sheet.pass(CheckKind::Liveness, value, Some(min.report));
        true
    } else {
        let detail = "Liveness check failed";
        sheet.push(
            CheckKind::Liveness,
            Outcome::Fail,
            value,
            Some(min.report),
            detail,
        );
        false
    }
}

/// SubjectStatus, Blocklist, Validity.
fn status_checks(person: Result<&SubjectRecord, Skip>, sheet: &mut Sheet, now: UnixMillis) {
    let p = match person {
        Ok(p) => p,
        Err(skip) => {
            // An identified person entering whom the registry does not know fails closed.
            if skip == Skip::NotRegistered {
                sheet.fail(CheckKind::SubjectStatus, "Not registered");
            } else {
                sheet.not_checked(CheckKind::SubjectStatus, skip.why());
            }
            sheet.not_checked(CheckKind::Blocklist, skip.why());
            sheet.not_checked(CheckKind::Validity, skip.why());
            return;
        }
    };
    match p.status {
        SubjectStatus::Revoked => sheet.fail(CheckKind::SubjectStatus, "Card revoked"),
        SubjectStatus::Active | SubjectStatus::Blocklisted => {
            sheet.pass(CheckKind::SubjectStatus, None, None);
        }
    }
    match p.status {
        SubjectStatus::Blocklisted => sheet.fail(CheckKind::Blocklist, "Blocklisted"),
        SubjectStatus::Active | SubjectStatus::Revoked => {
            sheet.pass(CheckKind::Blocklist, None, None);
        }
    }
    match (p.valid_from, p.valid_until) {
        (None, None) => sheet.not_checked(CheckKind::Validity, "No validity window"),
        (Some(from), _) if now < from => sheet.fail(CheckKind::Validity, "Pass not yet valid"),
        (_, Some(until)) if now > until => sheet.fail(CheckKind::Validity, "Pass expired"),
        _ => sheet.pass(CheckKind::Validity, None, None),
    }
}

/// Market, Zone, Schedule.
fn place_checks(
    input: &DecisionInput<'_>,
    person: Result<&SubjectRecord, Skip>,
    rules: &CategoryRules,
    sheet: &mut Sheet,
    now: UnixMillis,
) {
    let p = match person {
        Ok(p) => p,
        Err(skip) => {
            for kind in [CheckKind::Market, CheckKind::Zone, CheckKind::Schedule] {
                sheet.not_checked(kind, skip.why());
            }
            return;
        }
    };
    let gate = input.gate;
    if p.markets.is_empty() || p.markets.contains(&gate.market) {
        sheet.pass(CheckKind::Market, None, None);
    } else {
        sheet.fail(CheckKind::Market, "Not allowed at this market");
    }
    if !rules.zones_enforced {
        sheet.not_checked(CheckKind::Zone, "Not required");
    } else if p.zones.is_empty() || p.zones.contains(&gate.zone) {
        sheet.pass(CheckKind::Zone, None, None);
    } else {
        sheet.fail(CheckKind::Zone, "Outside assigned zone");
    }
    match &rules.schedule {
        Schedule::Always => sheet.not_checked(CheckKind::Schedule, "Not required"),
        schedule => {
            let minute = local_minute(now, input.utc_offset.0);
            let value = Some(f64::from(minute));
            if schedule.is_open(minute) {
                sheet.pass(CheckKind::Schedule, value, None);
            } else {
                let detail = "Outside allowed hours";
                sheet.push(CheckKind::Schedule, Outcome::Fail, value, None, detail);
            }
        }
    }
}

/// Temperature: entries only; runs even for an unidentified person (a fever is a fever).
fn temperature_check(
    input: &DecisionInput<'_>,
    s: &MarketSettings,
    entry: bool,
    sheet: &mut Sheet,
) {
    let kind = CheckKind::Temperature;
    let Some(ceiling) = s.temperature_ceiling_c.on() else {
        return sheet.not_checked(kind, "Not required");
    };
    let ceiling = ceiling.0;
    match input.event.temperature_c {
        _ if !entry => sheet.not_checked(kind, "Exit"),
        None => sheet.not_checked(kind, "No reading"),
        Some(t) if !t.is_finite() => sheet.fail(kind, "Invalid temperature reading"),
        Some(t) => {
            let (value, threshold) = (Some(f64::from(t)), Some(ceiling.report));
            if t <= ceiling.cmp {
                sheet.pass(kind, value, threshold);
            } else {
                sheet.push(
                    kind,
                    Outcome::Fail,
                    value,
                    threshold,
                    "Temperature too high",
                );
            }
        }
    }
}

/// HealthCode, TravelCode, TestAge, Vaccination. A missing health record fails each check
/// that is switched on: no test, no entry.
fn health_checks(
    input: &DecisionInput<'_>,
    person: Result<&SubjectRecord, Skip>,
    s: &MarketSettings,
    rules: &CategoryRules,
    sheet: &mut Sheet,
    now: UnixMillis,
) {
    let p = match person {
        Ok(p) => p,
        Err(skip) => {
            for kind in [
                CheckKind::HealthCode,
                CheckKind::TravelCode,
                CheckKind::TestAge,
                CheckKind::Vaccination,
            ] {
                sheet.not_checked(kind, skip.why());
            }
            return;
        }
    };
    // A record filed under someone else is no record for this person.
    let health = input.health.filter(|h| h.subject == p.subject);
    let codes = [
        (
            CheckKind::HealthCode,
            s.health_code,
            s.health_code_max_age,
            health.map(|h| h.health_code),
        ),
        (
            CheckKind::TravelCode,
            s.travel_code,
            s.travel_code_max_age,
            health.map(|h| h.travel_code),
        ),
    ];
    for (kind, rule, max_age, colour) in codes {
        let code = Code {
            kind,
            rule,
            max_age,
            stale: s.stale_code,
        };
        code.check(colour.zip(health.map(|h| h.updated_at)), sheet, now);
    }
    test_check(rules, health, sheet, now);
    vaccination_check(rules, health, sheet);
}

/// One code check's settings: the colours, the oldest record accepted, what a stale one gets.
struct Code {
    kind: CheckKind,
    rule: OffOr<CodeRule>,
    max_age: OffOr<CodeAge>,
    stale: Refusal,
}

impl Code {
    /// Judges the colour, then the record's age (hours since its update, the check's value;
    /// the maximum age is its threshold). A refused colour fails whatever its age; an
    /// accepted or escalated colour that is too old gets what `stale_code` says, whichever
    /// is worse. A record stamped in the future (clock skew at the authority) is zero hours
    /// old. The detail always names the colour.
    fn check(&self, record: Option<(CodeColour, UnixMillis)>, sheet: &mut Sheet, now: UnixMillis) {
        let kind = self.kind;
        let Some(rule) = self.rule.on() else {
            return sheet.not_checked(kind, "Not required");
        };
        let Some((colour, updated_at)) = record else {
            return sheet.fail(kind, "No health record");
        };
        let age_ms = now.saturating_since(updated_at);
        let value = Some(age_ms as f64 / HOUR_MS as f64);
        let max_hours = self.max_age.on().map(|m| m.0);
        let threshold = max_hours.map(f64::from);
        let by_colour = match rule.judge(colour) {
            CodeVerdict::Pass => Outcome::Pass,
            CodeVerdict::Escalate => Outcome::Escalate,
            CodeVerdict::Fail => Outcome::Fail,
        };
        let detail = code_text(kind, colour);
        let stale_hours = max_hours.filter(|&h| age_ms > u64::from(h) * HOUR_MS);
        match (by_colour, stale_hours) {
            (Outcome::Fail, _) | (_, None) => sheet.push(kind, by_colour, value, threshold, detail),
            (_, Some(h)) => {
                let by_age = match self.stale {
                    Refusal::Deny => Outcome::Fail,
                    Refusal::Escalate => Outcome::Escalate,
                };
                // Formatted only on this path; the screen must say why a good colour is
                // not enough.
                let detail = format!("{detail}, older than {h} h");
                sheet.push(kind, by_age, value, threshold, detail);
            }
        }
    }
}

/// Plain words for a code colour; static, so no formatting per event.
fn code_text(kind: CheckKind, colour: CodeColour) -> &'static str {
    match (kind == CheckKind::HealthCode, colour) {
        (true, CodeColour::Green) => "Health code green",
        (true, CodeColour::Yellow) => "Health code yellow",
        (true, CodeColour::Red) => "Health code red",
        (false, CodeColour::Green) => "Travel code green",
        (false, CodeColour::Yellow) => "Travel code yellow",
        (false, CodeColour::Red) => "Travel code red",
    }
}

/// The latest test must be negative and at most the policy's age old. A test stamped in the
/// future (clock skew at the authority) counts as zero hours old.
fn test_check(
    rules: &CategoryRules,
    health: Option<&HealthRecord>,
    sheet: &mut Sheet,
    now: UnixMillis,
) {
    let kind = CheckKind::TestAge;
    let Some(max_hours) = rules.max_test_age_hours.on() else {
        return sheet.not_checked(kind, "Not required");
    };
    let max_hours = max_hours.0;
    let Some(h) = health else {
        return sheet.fail(kind, "No health record");
    };
    let threshold = Some(f64::from(max_hours));
    let at = match (h.test_at, h.test_result) {
        (None, _) => return sheet.fail(kind, "No test on record"),
        (Some(_), None) => return sheet.fail(kind, "No test result"),
        (Some(_), Some(TestResult::Positive)) => return sheet.fail(kind, "Test positive"),
        (Some(_), Some(TestResult::Pending)) => return sheet.fail(kind, "Test result pending"),
        (Some(at), Some(TestResult::Negative)) => at,
    };
    let age_ms = now.saturating_since(at);
    let value = Some(age_ms as f64 / HOUR_MS as f64);
    if age_ms <= u64::from(max_hours) * HOUR_MS {
        sheet.pass(kind, value, threshold);
    } else {
        // Formatted only on this failing path; the screen must name the limit.
        let detail = format!("Test older than {max_hours} h");
        sheet.push(kind, Outcome::Fail, value, threshold, detail);
    }
}

fn vaccination_check(rules: &CategoryRules, health: Option<&HealthRecord>, sheet: &mut Sheet) {
    let kind = CheckKind::Vaccination;
    let min = rules.min_vaccine_doses.0;
    if min == 0 {
        return sheet.not_checked(kind, "Not required");
    }
    let Some(h) = health else {
        return sheet.fail(kind, "No health record");
    };
    let (value, threshold) = (Some(f64::from(h.vaccine_doses)), Some(f64::from(min)));
    if h.vaccine_doses >= min {
        sheet.pass(kind, value, threshold);
    } else {
        let detail = if h.vaccine_doses == 0 {
            "Not vaccinated"
        } else {
            "Vaccination incomplete"
        };
        sheet.push(kind, Outcome::Fail, value, threshold, detail);
    }
}

/// SignIn, AntiPassback, Frequency.
fn passage_checks(
    input: &DecisionInput<'_>,
    who: Result<&SubjectRecord, Skip>,
    person: Result<&SubjectRecord, Skip>,
    rules: &CategoryRules,
    sheet: &mut Sheet,
) {
    let sign_in_event = matches!(input.event.mode, Mode::SignIn { .. });
    let state = input.person;
    match person {
        Err(skip) => sheet.not_checked(CheckKind::SignIn, skip.why()),
        Ok(_) if !rules.sign_in_required => sheet.not_checked(CheckKind::SignIn, "Not required"),
        Ok(_) if sign_in_event => sheet.not_checked(CheckKind::SignIn, "Sign-in event"),
        Ok(_) if state.signed_in_today => sheet.pass(CheckKind::SignIn, None, None),
        Ok(_) => sheet.fail(CheckKind::SignIn, "Sign in first"),
    }
    anti_passback_check(input, who, rules, sign_in_event, sheet);
    let kind = CheckKind::Frequency;
    match (person, rules.max_entries_per_day.on()) {
        (Err(skip), _) => sheet.not_checked(kind, skip.why()),
        (Ok(_), None) => sheet.not_checked(kind, "Not required"),
        (Ok(_), Some(cap)) => {
            let value = Some(f64::from(state.entries_today));
            let threshold = Some(f64::from(cap.0));
            if state.entries_today < cap.0 {
                sheet.pass(kind, value, threshold);
            } else {
                let detail = "Daily entry limit reached";
                sheet.push(kind, Outcome::Fail, value, threshold, detail);
            }
        }
    }
}

/// Entries and exits alternate. Runs on exits too (the one person check that does). With
/// no passage today (`inside == None`) both directions pass: the tally starts afresh each
/// day, and someone who came in before midnight must be able to leave.
fn anti_passback_check(
    input: &DecisionInput<'_>,
    who: Result<&SubjectRecord, Skip>,
    rules: &CategoryRules,
    sign_in_event: bool,
    sheet: &mut Sheet,
) {
    let kind = CheckKind::AntiPassback;
    if let Err(skip) = who {
        return sheet.not_checked(kind, skip.why());
    }
    if !rules.anti_passback {
        return sheet.not_checked(kind, "Not required");
    }
    if sign_in_event {
        return sheet.not_checked(kind, "Sign-in event");
    }
    match (input.event.direction, input.person.inside) {
        (Direction::Entry, Some(true)) => sheet.fail(kind, "Already inside"),
        (Direction::Exit, Some(false)) => sheet.fail(kind, "No entry on record"),
        _ => sheet.pass(kind, None, None),
    }
}

/// Occupancy: entries only; runs even for an unidentified person (the market is full
/// whoever comes).
fn occupancy_check(input: &DecisionInput<'_>, s: &MarketSettings, entry: bool, sheet: &mut Sheet) {
    let kind = CheckKind::Occupancy;
    let Some(cap) = s.occupancy_cap.on() else {
        return sheet.not_checked(kind, "Not required");
    };
    if !entry {
        return sheet.not_checked(kind, "Exit");
    }
    let occupancy = input.market.occupancy;
    let (value, threshold) = (Some(f64::from(occupancy)), Some(f64::from(cap.0)));
    if occupancy < cap.0 {
        return sheet.pass(kind, value, threshold);
    }
    let outcome = match s.over_occupancy {
        Refusal::Deny => Outcome::Fail,
        Refusal::Escalate => Outcome::Escalate,
    };
    sheet.push(kind, outcome, value, threshold, "Market full");
}

//! What-if replay: re-deciding a recorded entry under another policy, from what its record
//! holds, with [`decide`](fn@super::decide) itself.
//!
//! # What a record holds, and what it does not
//!
//! An entry record keeps the gate, market, zone, mode, direction, the decision's time and
//! every check with its outcome, value, threshold and detail. From those, [`replay_entry`]
//! rebuilds the inputs [`decide`](fn@super::decide) saw:
//!
//! | input | from |
//! |---|---|
//! | face score, 1:1 or 1:N | FaceMatch value; Credential outcome (a resolved card means 1:1) |
//! | runner-up (1:N) | MatchMargin value (the lead), when the match held |
//! | liveness, face present | Liveness value, "No face" |
//! | temperature | Temperature value, "No reading", "Invalid temperature reading" |
//! | health and travel code colour, record age | HealthCode / TravelCode detail and value |
//! | test result and age | TestAge detail and value |
//! | vaccine doses | Vaccination value |
//! | person status, validity, markets, zones | SubjectStatus, Blocklist, Validity, Market, Zone outcomes |
//! | signed in, inside, entries today, occupancy | SignIn, AntiPassback, Frequency, Occupancy |
//! | local time of day | the decision time and the site's UTC offset |
//! | person category | **not recorded**: the registry as it is now |
//!
//! A check that the policy in force switched off (or that did not run, say because no one was
//! identified) recorded no value: the input behind it is **unknown**. Replay never guesses
//! one. It decides the entry twice, once with every unknown input at its most favourable
//! (green code, fresh negative test, no fever, zero entries today...) and once at its least
//! favourable; each check's outcome is monotone in its own inputs, so when both runs agree the
//! new decision does not depend on what was not recorded. When they disagree the entry is
//! *undetermined*, and the checks whose outcomes differ are named: the report counts them per
//! check, so an operator reads "Vaccination: 412 entries lack the doses (not checked when
//! they were recorded)" rather than a made-up figure.
//!
//! The counters (entries today, occupancy, inside, signed in) are the ones recorded: replay
//! re-decides each entry on its own, so a denial the new policy adds does not lower the
//! occupancy seen by the entries after it (a first-order estimate, said in every report).

use gatewarden_protocol::{
    Category, Check, CheckKind, CodeColour, Credential, Decision, Direction, Event, FaceSample,
    HealthRecord, MarketId, Mode, Outcome, SubjectId, SubjectRecord, SubjectStatus, TestResult,
    UnixMillis, Verdict, ZoneId,
};

use super::MarketPolicy;
use super::{CredentialLookup, DecisionInput, FaceResult, MarketState, PersonState, decide};
use crate::clock::{HOUR_MS, UtcOffset};
use crate::model::GateInfo;
use crate::store::{ArchivedEntry, ModeKind};

/// A person id that no one has: stands for the card holder or best match of an entry whose
/// identity failed (the record names no one then).
const NOBODY: SubjectId = SubjectId(u64::MAX);

/// What replaying one entry gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    /// The new decision; `None` when it depends on an input the record lacks.
    pub decision: Option<Decision>,
    /// The new verdict with every unknown input at its most favourable.
    pub verdict: Verdict,
    /// Checks whose new outcome depends on an input the record lacks (in check order).
    pub unknown: Vec<CheckKind>,
}

/// Re-decides `entry` under `policy` (its market's), as of the entry's decision time.
/// `category` is the person's category from the registry now, `None` if the registry does
/// not know them (or nobody was identified).
pub fn replay_entry(
    entry: &ArchivedEntry,
    category: Option<Category>,
    policy: &MarketPolicy,
    offset: UtcOffset,
) -> Replayed {
    let facts = Facts::read(entry, category);
    let best = facts.decide(entry, policy, offset, Side::Favourable);
    let worst = facts.decide(entry, policy, offset, Side::Unfavourable);
    let mut unknown: Vec<CheckKind> = best
        .checks
        .iter()
        .zip(&worst.checks)
        .filter(|(a, b)| a.outcome != b.outcome)
        .map(|(a, _)| a.kind)
        .collect();
    // A registered person the registry no longer knows: which category's rules apply is
    // itself unknown.
    let category_unknown = facts.registered == Some(true) && category.is_none();
    if category_unknown {
        unknown.push(CheckKind::SubjectStatus);
    }
    let decision = (best.decision == worst.decision && !category_unknown).then_some(best.decision);
    Replayed {
        decision,
        verdict: best,
        unknown,
    }
}

/// What a record says about each check's input; `None` is unknown.
#[derive(Clone, Debug, Default)]
struct Facts {
    credential: Option<CredentialLookup>,
    face: Option<FaceFacts>,
    liveness: Option<Option<f32>>,
    registered: Option<bool>,
    category: Option<Category>,
    status: Option<SubjectStatus>,
    validity: Option<(Option<UnixMillis>, Option<UnixMillis>)>,
    market_ok: Option<bool>,
    zone_ok: Option<bool>,
    temperature: Option<Option<f32>>,
    health_present: Option<bool>,
    health_code: Option<CodeColour>,
    travel_code: Option<CodeColour>,
    updated_at: Option<UnixMillis>,
    test: Option<(Option<UnixMillis>, Option<TestResult>)>,
    doses: Option<u8>,
    signed_in: Option<bool>,
    inside: Option<Option<bool>>,
    entries_today: Option<u32>,
    occupancy: Option<u32>,
}

/// The face result as recorded; the subject is the record's (or [`NOBODY`]).
#[derive(Clone, Copy, Debug, PartialEq)]
enum FaceFacts {
    NoFace,
    Verified {
        score: Option<f32>,
    },
    Identified {
        best: Option<f32>,
        lead: Option<Option<f32>>,
    },
}

/// Which extreme the unknown inputs take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Favourable,
    Unfavourable,
}

impl Side {
    fn pick<T>(self, known: Option<T>, favourable: T, unfavourable: T) -> T {
        known.unwrap_or(match self {
            Self::Favourable => favourable,
            Self::Unfavourable => unfavourable,
        })
    }
}

/// The recorded checks, by kind.
struct Sheet<'a>(&'a [Check]);

impl<'a> Sheet<'a> {
    fn get(&self, kind: CheckKind) -> Option<&'a Check> {
        self.0.iter().find(|c| c.kind == kind)
    }

    fn outcome(&self, kind: CheckKind) -> Option<Outcome> {
        self.get(kind).map(|c| c.outcome)
    }

    fn detail(&self, kind: CheckKind) -> &'a str {
        self.get(kind).map_or("", |c| c.detail.as_str())
    }

    /// The value of a check that ran (Pass, Fail or Escalate with a value).
    fn value(&self, kind: CheckKind) -> Option<f64> {
        self.get(kind)
            .filter(|c| c.outcome != Outcome::NotChecked)
            .and_then(|c| c.value)
    }

    fn any_detail(&self, detail: &str) -> bool {
        self.0.iter().any(|c| c.detail == detail)
    }
}

/// The instant `hours` (a recorded age) before `now`; ages are whole milliseconds divided by
/// an hour, so multiplying back and rounding gives the milliseconds exactly.
fn hours_before(now: UnixMillis, hours: f64) -> UnixMillis {
    let ms = (hours * HOUR_MS as f64).round().max(0.0) as u64;
    UnixMillis(now.0.saturating_sub(ms))
}

impl Facts {
    fn read(entry: &ArchivedEntry, category: Option<Category>) -> Self {
        let s = Sheet(&entry.checks);
        let now = entry.decided_at;
        let mut f = Self {
            category,
            ..Self::default()
        };
        f.read_identity(&s, entry);
        f.read_person(&s, now);
        f.read_health(&s, now);
        f.read_counters(&s);
        f.temperature = match (
            s.outcome(CheckKind::Temperature),
            s.detail(CheckKind::Temperature),
        ) {
            (Some(Outcome::NotChecked), "No reading") => Some(None),
            (Some(Outcome::Fail), "Invalid temperature reading") => Some(Some(f32::NAN)),
            _ => s.value(CheckKind::Temperature).map(|v| Some(v as f32)),
        };
        f
    }

    fn read_identity(&mut self, s: &Sheet<'_>, entry: &ArchivedEntry) {
        self.credential = Some(
            match (
                s.outcome(CheckKind::Credential),
                s.detail(CheckKind::Credential),
            ) {
                (Some(Outcome::Pass), _) => {
                    CredentialLookup::Resolved(entry.subject.unwrap_or(NOBODY))
                }
                (Some(Outcome::Fail), "Unknown card") => CredentialLookup::Unknown,
                _ => CredentialLookup::NotPresented,
            },
        );
        self.liveness = match s.detail(CheckKind::Liveness) {
            "No face" => Some(None),
            _ => s.value(CheckKind::Liveness).map(|v| Some(v as f32)),
        };
        let face = s.get(CheckKind::FaceMatch);
        let score = face.and_then(|c| c.value).map(|v| v as f32);
        self.face = match (face.map(|c| c.detail.as_str()), self.credential) {
            (Some("No face captured"), _) => Some(FaceFacts::NoFace),
            (Some("Unknown card"), _) => Some(FaceFacts::NoFace),
            (_, Some(CredentialLookup::Resolved(_))) => Some(FaceFacts::Verified { score }),
            (Some(_), _) => {
                let lead = match s.outcome(CheckKind::MatchMargin) {
                    Some(Outcome::Pass | Outcome::Escalate) => {
                        Some(s.value(CheckKind::MatchMargin).map(|v| v as f32))
                    }
                    _ => None,
                };
                Some(FaceFacts::Identified { best: score, lead })
            }
            (None, _) => None,
        };
        self.registered = if s.any_detail("Not registered") {
            Some(false)
        } else {
            entry.subject.map(|_| true)
        };
    }

    fn read_person(&mut self, s: &Sheet<'_>, now: UnixMillis) {
        let ran = |kind| matches!(s.outcome(kind), Some(Outcome::Pass | Outcome::Fail));
        if ran(CheckKind::SubjectStatus) && ran(CheckKind::Blocklist) {
            self.status = Some(
                match (
                    s.detail(CheckKind::SubjectStatus),
                    s.outcome(CheckKind::Blocklist),
                ) {
                    ("Card revoked", _) => SubjectStatus::Revoked,
                    (_, Some(Outcome::Fail)) => SubjectStatus::Blocklisted,
                    _ => SubjectStatus::Active,
                },
            );
        }
        self.validity = match (
            s.outcome(CheckKind::Validity),
            s.detail(CheckKind::Validity),
        ) {
            (Some(Outcome::Pass), _) => Some((Some(now), None)),
            (_, "Pass not yet valid") => Some((Some(UnixMillis(now.0.saturating_add(1))), None)),
            (_, "Pass expired") => Some((None, Some(UnixMillis(now.0.saturating_sub(1))))),
            (_, "No validity window") => Some((None, None)),
            _ => None,
        };
        let judged = |kind| match s.outcome(kind) {
            Some(Outcome::Pass) => Some(true),
            Some(Outcome::Fail) => Some(false),
            _ => None,
        };
        self.market_ok = judged(CheckKind::Market);
        self.zone_ok = judged(CheckKind::Zone);
    }

    fn read_health(&mut self, s: &Sheet<'_>, now: UnixMillis) {
        let kinds = [
            CheckKind::HealthCode,
            CheckKind::TravelCode,
            CheckKind::TestAge,
            CheckKind::Vaccination,
        ];
        let none = kinds.iter().any(|&k| s.detail(k) == "No health record");
        let some = kinds.iter().any(|&k| {
            matches!(
                s.outcome(k),
                Some(Outcome::Pass | Outcome::Fail | Outcome::Escalate)
            ) && s.detail(k) != "No health record"
        });
        self.health_present = if none {
            Some(false)
        } else {
            some.then_some(true)
        };
        self.health_code = colour(s.detail(CheckKind::HealthCode), "Health code ");
        self.travel_code = colour(s.detail(CheckKind::TravelCode), "Travel code ");
        self.updated_at = s
            .value(CheckKind::HealthCode)
            .or_else(|| s.value(CheckKind::TravelCode))
            .map(|h| hours_before(now, h));
        self.test = match (s.outcome(CheckKind::TestAge), s.detail(CheckKind::TestAge)) {
            (_, "No test on record") => Some((None, None)),
            (_, "No test result") => Some((Some(now), None)),
            (_, "Test positive") => Some((Some(now), Some(TestResult::Positive))),
            (_, "Test result pending") => Some((Some(now), Some(TestResult::Pending))),
            (Some(Outcome::Pass | Outcome::Fail), _) => s
                .value(CheckKind::TestAge)
                .map(|h| (Some(hours_before(now, h)), Some(TestResult::Negative))),
            _ => None,
        };
        self.doses = s.value(CheckKind::Vaccination).map(|v| v as u8);
    }

    fn read_counters(&mut self, s: &Sheet<'_>) {
        self.signed_in = match s.outcome(CheckKind::SignIn) {
            Some(Outcome::Pass) => Some(true),
            Some(Outcome::Fail) => Some(false),
            _ => None,
        };
        self.inside = match (
            s.outcome(CheckKind::AntiPassback),
            s.detail(CheckKind::AntiPassback),
        ) {
            (Some(Outcome::Pass), _) => Some(None),
            (_, "Already inside") => Some(Some(true)),
            (_, "No entry on record") => Some(Some(false)),
            _ => None,
        };
        self.entries_today = s.value(CheckKind::Frequency).map(|v| v as u32);
        self.occupancy = s.value(CheckKind::Occupancy).map(|v| v as u32);
    }

    /// Decides the entry with the unknown inputs on `side`.
    fn decide(
        &self,
        entry: &ArchivedEntry,
        policy: &MarketPolicy,
        offset: UtcOffset,
        side: Side,
    ) -> Verdict {
        let now = entry.decided_at;
        let event = self.event(entry, side);
        let gate = GateInfo {
            gate: entry.gate,
            market: entry.market,
            zone: entry.zone,
            name: String::new(),
        };
        let who = self.who(entry);
        let subject = self.subject_record(who, entry, side);
        let health = self.health_record(who, now, side);
        let input = DecisionInput {
            event: &event,
            gate: &gate,
            credential: self.credential.unwrap_or(CredentialLookup::NotPresented),
            face: self.face_result(who, side),
            subject: subject.as_ref(),
            health: health.as_ref(),
            person: self.person_state(entry.direction, side),
            market: MarketState {
                occupancy: side.pick(self.occupancy, 0, u32::MAX),
            },
            utc_offset: offset,
        };
        decide(&input, policy, now)
    }

    fn who(&self, entry: &ArchivedEntry) -> SubjectId {
        entry.subject.unwrap_or(NOBODY)
    }

    fn event(&self, entry: &ArchivedEntry, side: Side) -> Event {
        // decide looks only at whether the mode is a sign-in; the credential itself is gone.
        let mode = match entry.mode {
            ModeKind::Verify => Mode::Verify {
                credential: Credential::IdCard(String::new()),
            },
            ModeKind::Identify => Mode::Identify,
            ModeKind::SignIn => Mode::SignIn { credential: None },
        };
        let liveness = side.pick(self.liveness, Some(1.0), Some(0.0));
        Event {
            gate: entry.gate,
            seq: entry.seq,
            captured_at: entry.captured_at,
            mode,
            direction: entry.direction,
            face: liveness.map(|liveness| FaceSample {
                model: String::new(),
                embedding: Vec::new(),
                quality: 1.0,
                liveness,
            }),
            temperature_c: side.pick(self.temperature, None, Some(99.0)),
        }
    }

    fn face_result(&self, who: SubjectId, side: Side) -> FaceResult {
        let holder = match self.credential {
            Some(CredentialLookup::Resolved(id)) => id,
            _ => who,
        };
        match self.face {
            None | Some(FaceFacts::NoFace) => FaceResult::NoFace,
            Some(FaceFacts::Verified { score }) => FaceResult::Verified {
                subject: holder,
                score,
            },
            Some(FaceFacts::Identified { best, lead }) => {
                let best = best.map(|score| (who, score));
                let runner_up = match (best, side.pick(lead, None, Some(f32::NEG_INFINITY))) {
                    (Some((_, score)), Some(lead)) => Some((NOBODY, runner_up_score(score, lead))),
                    _ => None,
                };
                FaceResult::Identified { best, runner_up }
            }
        }
    }

    fn subject_record(
        &self,
        who: SubjectId,
        entry: &ArchivedEntry,
        side: Side,
    ) -> Option<SubjectRecord> {
        if self.registered == Some(false) {
            return None;
        }
        let elsewhere = |ok: Option<bool>, other: u32| match side.pick(ok, true, false) {
            true => Vec::new(),
            false => vec![other],
        };
        let now = entry.decided_at;
        Some(SubjectRecord {
            subject: who,
            category: self.category.unwrap_or(Category::Shopper),
            home_market: entry.market,
            markets: elsewhere(self.market_ok, entry.market.0.wrapping_add(1))
                .into_iter()
                .map(MarketId)
                .collect(),
            zones: elsewhere(self.zone_ok, entry.zone.0.wrapping_add(1))
                .into_iter()
                .map(ZoneId)
                .collect(),
            valid_from: None,
            valid_until: None,
            id_card: None,
            qr_tokens: Vec::new(),
            status: side.pick(self.status, SubjectStatus::Active, SubjectStatus::Revoked),
        })
        .map(|mut r| {
            let expired = (None, Some(UnixMillis(now.0.saturating_sub(1))));
            (r.valid_from, r.valid_until) = side.pick(self.validity, (None, None), expired);
            r
        })
    }

    fn health_record(&self, who: SubjectId, now: UnixMillis, side: Side) -> Option<HealthRecord> {
        if !side.pick(self.health_present, true, false) {
            return None;
        }
        let worst = UnixMillis(0);
        Some(HealthRecord {
            subject: who,
            test_at: None,
            test_result: None,
            vaccine_doses: side.pick(self.doses, u8::MAX, 0),
            health_code: side.pick(self.health_code, CodeColour::Green, CodeColour::Red),
            travel_code: side.pick(self.travel_code, CodeColour::Green, CodeColour::Red),
            updated_at: side.pick(self.updated_at, now, worst),
        })
        .map(|mut h| {
            let fresh = (Some(now), Some(TestResult::Negative));
            (h.test_at, h.test_result) = side.pick(self.test, fresh, (None, None));
            h
        })
    }

    fn person_state(&self, direction: Direction, side: Side) -> PersonState {
        PersonState {
            entries_today: side.pick(self.entries_today, 0, u32::MAX),
            inside: side.pick(self.inside, None, Some(direction == Direction::Entry)),
            signed_in_today: side.pick(self.signed_in, true, false),
        }
    }
}

/// The recorded colour in a code check's detail ("Health code green, older than 24 h").
fn colour(detail: &str, prefix: &str) -> Option<CodeColour> {
    let rest = detail.strip_prefix(prefix)?;
    let name = rest.split(',').next()?;
    CodeColour::ALL.iter().copied().find(|c| c.name() == name)
}

/// A runner-up score whose lead over `score` is exactly the recorded `lead` when computed
/// the way [`decide`](fn@super::decide) does (`score - runner_up` in f32), so that a lead recorded right at the
/// margin replays on the same side of it.
fn runner_up_score(score: f32, lead: f32) -> f32 {
    let mut other = score - lead;
    for _ in 0..4 {
        let got = score - other;
        if got == lead || !got.is_finite() {
            break;
        }
        // A lead too small means the runner-up is too high: step it down one ulp, and up
        // otherwise.
        other = if got < lead {
            other.next_down()
        } else {
            other.next_up()
        };
    }
    other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_up_reproduces_the_recorded_lead_exactly() {
        let scores = [0.93_f32, 0.512_345, 0.1, 0.999_999, 0.5];
        let others = [0.4_f32, 0.462_345, 0.099_999, 0.3, 0.45];
        for (&s, &o) in scores.iter().zip(&others) {
            let lead = s - o;
            assert_eq!(s - runner_up_score(s, lead), lead, "{s} {o}");
        }
    }

    #[test]
    fn colours_are_read_from_the_detail() {
        assert_eq!(
            colour("Health code green", "Health code "),
            Some(CodeColour::Green)
        );
        assert_eq!(
            colour("Travel code yellow, older than 72 h", "Travel code "),
            Some(CodeColour::Yellow)
        );
        assert_eq!(colour("Not required", "Health code "), None);
    }

    #[test]
    fn hours_round_trip_to_the_millisecond() {
        let now = UnixMillis(1_790_000_000_000);
        for ms in [0u64, 1, 999, 3_599_999, 86_400_001, 7_776_000_000] {
            let hours = ms as f64 / HOUR_MS as f64;
            assert_eq!(hours_before(now, hours), UnixMillis(now.0 - ms));
        }
    }
}

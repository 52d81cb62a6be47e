//! Hand-built inputs for the policy's unit and property tests.

use gatewarden_protocol::{
    Category, Check, CheckKind, CodeColour, Credential, Direction, Event, FaceSample, GateId,
    HealthRecord, MarketId, Mode, SubjectId, SubjectRecord, SubjectStatus, TestResult, Verdict,
    ZoneId,
};

use super::{
    CredentialLookup, DecisionInput, FaceResult, MarketPolicy, MarketState, PersonState,
    PolicyBook, decide,
};
use crate::clock::{DAY_MS, HOUR_MS, UnixMillis, UtcOffset, days_from_civil};
use crate::model::GateInfo;

/// A policy with every check switched on, so each one can be made to fail.
pub(crate) const STRICT: &str = r#"
[default]
identify_threshold = 0.5
verify_threshold = 0.45
borderline_band = 0.05
margin = 0.05
liveness_min = 0.5
require_credential = false
temperature_ceiling_c = 37.3
health_code = { pass = ["green"], escalate = ["yellow"] }
travel_code = { pass = ["green"], escalate = ["yellow"] }
health_code_max_age = 24
travel_code_max_age = 72
stale_code = "deny"
occupancy_cap = 100
over_occupancy = "deny"
zones_enforced = true
min_vaccine_doses = 2
max_test_age_hours = 48
schedule = ["06:00-20:00"]
sign_in_required = true
anti_passback = true
max_entries_per_day = 5

[default.categories.buyer]
zones_enforced = false
min_vaccine_doses = 0
sign_in_required = false
"#;

/// The person in every fixture.
pub(crate) const ALICE: SubjectId = SubjectId(42);
/// Someone else.
pub(crate) const BOB: SubjectId = SubjectId(43);
/// The fixture gate's market and zone.
pub(crate) const MARKET: MarketId = MarketId(7);
pub(crate) const ZONE: ZoneId = ZoneId(3);
/// Beijing.
pub(crate) const BEIJING: UtcOffset = UtcOffset(480);

/// 2026-03-10 10:00 in Beijing (02:00 UTC).
pub(crate) fn now() -> UnixMillis {
    UnixMillis(days_from_civil(2026, 3, 10) as u64 * DAY_MS + 2 * HOUR_MS)
}

/// The strict policy for the fixture market.
pub(crate) fn strict() -> MarketPolicy {
    PolicyBook::from_toml(STRICT, "strict.toml")
        .unwrap()
        .for_market(MARKET)
        .clone()
}

/// One event and everything the pipeline would look up for it. `Fixture::new()` is a merchant
/// entering with card and face who passes every check of [`STRICT`].
#[derive(Clone, Debug)]
pub(crate) struct Fixture {
    pub(crate) event: Event,
    pub(crate) gate: GateInfo,
    pub(crate) credential: CredentialLookup,
    pub(crate) face: FaceResult,
    pub(crate) subject: Option<SubjectRecord>,
    pub(crate) health: Option<HealthRecord>,
    pub(crate) person: PersonState,
    pub(crate) market: MarketState,
    pub(crate) utc_offset: UtcOffset,
    pub(crate) now: UnixMillis,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let now = now();
        Self {
            event: Event {
                gate: GateId(9),
                seq: 1234,
                captured_at: now,
                mode: Mode::Verify {
                    credential: Credential::IdCard("110101199001011234".to_owned()),
                },
                direction: Direction::Entry,
                face: Some(FaceSample {
                    model: "test".to_owned(),
                    embedding: Vec::new(),
                    quality: 0.9,
                    liveness: 0.9,
                }),
                temperature_c: Some(36.5),
            },
            gate: GateInfo {
                gate: GateId(9),
                market: MARKET,
                zone: ZONE,
                name: "north".to_owned(),
            },
            credential: CredentialLookup::Resolved(ALICE),
            face: FaceResult::Verified {
                subject: ALICE,
                score: Some(0.8),
            },
            subject: Some(SubjectRecord {
                subject: ALICE,
                category: Category::Merchant,
                home_market: MARKET,
                markets: vec![MARKET],
                zones: vec![ZONE],
                valid_from: None,
                valid_until: None,
                id_card: None,
                qr_tokens: Vec::new(),
                status: SubjectStatus::Active,
            }),
            health: Some(HealthRecord {
                subject: ALICE,
                test_at: Some(UnixMillis(now.0 - 10 * HOUR_MS)),
                test_result: Some(TestResult::Negative),
                vaccine_doses: 3,
                health_code: CodeColour::Green,
                travel_code: CodeColour::Green,
                updated_at: now,
            }),
            person: PersonState {
                entries_today: 0,
                inside: Some(false),
                signed_in_today: true,
            },
            market: MarketState { occupancy: 10 },
            utc_offset: BEIJING,
            now,
        }
    }

    /// The same person arriving by face alone (1:N), with a distant runner-up.
    pub(crate) fn identify() -> Self {
        let mut f = Self::new();
        f.event.mode = Mode::Identify;
        f.credential = CredentialLookup::NotPresented;
        f.face = FaceResult::Identified {
            best: Some((ALICE, 0.8)),
            runner_up: Some((BOB, 0.3)),
        };
        f
    }

    pub(crate) fn input(&self) -> DecisionInput<'_> {
        DecisionInput {
            event: &self.event,
            gate: &self.gate,
            credential: self.credential,
            face: self.face,
            subject: self.subject.as_ref(),
            health: self.health.as_ref(),
            person: self.person,
            market: self.market,
            utc_offset: self.utc_offset,
        }
    }

    pub(crate) fn decide(&self, policy: &MarketPolicy) -> Verdict {
        decide(&self.input(), policy, self.now)
    }

    pub(crate) fn subject_mut(&mut self) -> &mut SubjectRecord {
        self.subject.as_mut().unwrap()
    }

    pub(crate) fn health_mut(&mut self) -> &mut HealthRecord {
        self.health.as_mut().unwrap()
    }
}

/// The verdict's check of `kind`.
pub(crate) fn check(v: &Verdict, kind: CheckKind) -> &Check {
    v.checks
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("verdict has no {kind:?} check"))
}

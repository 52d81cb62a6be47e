//! The JSON shapes the API returns. Enumerations appear as their snake-case names, never as
//! wire codes; ID-card numbers, QR tokens and embeddings never appear at all. The pure
//! computations behind the hall display and a person's visit counts live here too, so they
//! are unit-tested without a server.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gatewarden_protocol::{
    Check, Decision, Direction, GateId, HealthRecord, MarketId, SubjectId, SubjectRecord,
    SubjectStatus, TestResult, UnixMillis, ZoneId,
};
use serde::Serialize;

use crate::model::GateInfo;
use crate::store::{EntryRow, Escalation, ModeKind, RecordedEntry, Resolution, SignInRow};

/// A registry record without its credentials.
#[derive(Debug, Serialize)]
pub(crate) struct SubjectView {
    subject: SubjectId,
    category: &'static str,
    home_market: MarketId,
    markets: Vec<MarketId>,
    zones: Vec<ZoneId>,
    valid_from: Option<UnixMillis>,
    valid_until: Option<UnixMillis>,
    status: &'static str,
}

impl From<&SubjectRecord> for SubjectView {
    fn from(r: &SubjectRecord) -> Self {
        Self {
            subject: r.subject,
            category: r.category.name(),
            home_market: r.home_market,
            markets: r.markets.clone(),
            zones: r.zones.clone(),
            valid_from: r.valid_from,
            valid_until: r.valid_until,
            status: r.status.name(),
        }
    }
}

/// A health record with names.
#[derive(Debug, Serialize)]
pub(crate) struct HealthView {
    test_at: Option<UnixMillis>,
    test_result: Option<&'static str>,
    vaccine_doses: u8,
    health_code: &'static str,
    travel_code: &'static str,
    updated_at: UnixMillis,
}

impl From<&HealthRecord> for HealthView {
    fn from(h: &HealthRecord) -> Self {
        Self {
            test_at: h.test_at,
            test_result: h.test_result.map(TestResult::name),
            vaccine_doses: h.vaccine_doses,
            health_code: h.health_code.name(),
            travel_code: h.travel_code.name(),
            updated_at: h.updated_at,
        }
    }
}

/// `GET /api/v1/subjects/{id}`.
#[derive(Debug, Serialize)]
pub(crate) struct SubjectResponse {
    pub(crate) subject: SubjectView,
    pub(crate) health: Option<HealthView>,
}

/// One market of the gate registry.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(crate) struct MarketView {
    market: MarketId,
    gates: usize,
    zones: Vec<ZoneId>,
}

/// The markets the gate registry knows, in market order.
pub(crate) fn markets(gates: &[GateInfo]) -> Vec<MarketView> {
    let mut by_market: BTreeMap<MarketId, (usize, BTreeSet<ZoneId>)> = BTreeMap::new();
    for g in gates {
        let entry = by_market.entry(g.market).or_default();
        entry.0 += 1;
        entry.1.insert(g.zone);
    }
    by_market
        .into_iter()
        .map(|(market, (gates, zones))| MarketView {
            market,
            gates,
            zones: zones.into_iter().collect(),
        })
        .collect()
}

/// One check of a recorded verdict.
#[derive(Debug, Serialize)]
struct CheckView {
    kind: &'static str,
    outcome: &'static str,
    value: Option<f64>,
    threshold: Option<f64>,
    detail: String,
}

/// What the gate screen showed.
#[derive(Debug, Serialize)]
struct DisplayView {
    colour: &'static str,
    text: String,
}

fn check_views(checks: &[Check]) -> Vec<CheckView> {
    checks
        .iter()
        .map(|c| CheckView {
            kind: c.kind.name(),
            outcome: c.outcome.name(),
            value: c.value,
            threshold: c.threshold,
            detail: c.detail.clone(),
        })
        .collect()
}

/// `GET /api/v1/subjects/{id}/verdicts`: an entry and its full verdict.
#[derive(Debug, Serialize)]
pub(crate) struct VerdictView {
    entry: EntryRow,
    checks: Vec<CheckView>,
    display: Option<DisplayView>,
    /// The version of the policy that decided; `None` for verdicts recorded before versions
    /// were.
    policy_version: Option<String>,
}

impl VerdictView {
    /// An entry with its stored record (`None` if there is none: checks empty, no display).
    pub(crate) fn new(entry: EntryRow, recorded: Option<&RecordedEntry>) -> Self {
        let verdict = recorded.map(|r| &r.verdict);
        let display = verdict.map(|v| DisplayView {
            colour: v.display.colour.name(),
            text: v.display.text.clone(),
        });
        Self {
            entry,
            checks: verdict.map(|v| check_views(&v.checks)).unwrap_or_default(),
            display,
            policy_version: recorded.and_then(|r| r.policy.as_ref().map(ToString::to_string)),
        }
    }
}

/// `GET /api/v1/markets/{id}/escalations`: an escalated entry, the checks that escalated or
/// failed, and how staff resolved it (`null` while open).
#[derive(Debug, Serialize)]
pub(crate) struct EscalationView {
    entry: EntryRow,
    checks: Vec<CheckView>,
    resolution: Option<Resolution>,
}

impl EscalationView {
    pub(crate) fn new(e: Escalation) -> Self {
        Self {
            checks: check_views(&e.checks),
            entry: e.entry,
            resolution: e.resolution,
        }
    }
}

/// One market in a person's visit counts.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(crate) struct MarketVisits {
    market: MarketId,
    entries: u32,
    first_at: UnixMillis,
    last_at: UnixMillis,
}

/// `GET /api/v1/subjects/{id}/frequency`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(crate) struct SubjectFrequency {
    subject: SubjectId,
    entries: u32,
    by_market: Vec<MarketVisits>,
}

/// A person's entries per market, counted as the market frequency query counts them:
/// admitted entries (not exits, not sign-ins).
pub(crate) fn subject_frequency(subject: SubjectId, rows: &[EntryRow]) -> SubjectFrequency {
    let mut by_market: BTreeMap<MarketId, MarketVisits> = BTreeMap::new();
    let counted = rows.iter().filter(|r| {
        r.decision == Decision::Admit
            && r.direction == Direction::Entry
            && r.mode != ModeKind::SignIn
    });
    for r in counted {
        let v = by_market.entry(r.market).or_insert(MarketVisits {
            market: r.market,
            entries: 0,
            first_at: r.decided_at,
            last_at: r.decided_at,
        });
        v.entries += 1;
        v.first_at = v.first_at.min(r.decided_at);
        v.last_at = v.last_at.max(r.decided_at);
    }
    let by_market: Vec<MarketVisits> = by_market.into_values().collect();
    SubjectFrequency {
        subject,
        entries: by_market.iter().map(|m| m.entries).sum(),
        by_market,
    }
}

/// One staff member on the hall display.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(crate) struct HallStaff {
    subject: SubjectId,
    category: &'static str,
    signed_in_at: Option<UnixMillis>,
    gate: Option<GateId>,
    test_at: Option<UnixMillis>,
    test_result: Option<&'static str>,
    tested_today: bool,
}

/// The hall display's totals.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(crate) struct HallCounts {
    staff: usize,
    signed_in: usize,
    tested_today: usize,
    not_tested: usize,
}

/// `GET /api/v1/markets/{id}/hall`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Hall {
    market: MarketId,
    day: String,
    counts: HallCounts,
    staff: Vec<HallStaff>,
}

/// Whether a staff member belongs on the hall display of the day `[since, until)`: active
/// (revoked and blocklisted people no longer work there) and valid at some moment of the day
/// (validity bounds are inclusive, as the policy reads them).
pub(crate) fn on_staff(r: &SubjectRecord, (since, until): (UnixMillis, UnixMillis)) -> bool {
    r.status == SubjectStatus::Active
        && r.valid_from.is_none_or(|from| from < until)
        && r.valid_until.is_none_or(|end| end >= since)
}

/// Builds the hall display of one local day `[since, until)`: every staff member, whether they
/// signed in, and whether their latest test is negative and taken that day. Not tested first,
/// then by subject id. `staff` must already be filtered with [`on_staff`].
pub(crate) fn hall(
    market: MarketId,
    day: String,
    (since, until): (UnixMillis, UnixMillis),
    staff: &[(std::sync::Arc<SubjectRecord>, Option<HealthRecord>)],
    signins: &[SignInRow],
) -> Hall {
    let signed: HashMap<SubjectId, &SignInRow> = signins.iter().map(|s| (s.subject, s)).collect();
    let mut rows: Vec<HallStaff> = staff
        .iter()
        .map(|(r, health)| {
            let sign = signed.get(&r.subject);
            let test_at = health.as_ref().and_then(|h| h.test_at);
            let result = health.as_ref().and_then(|h| h.test_result);
            HallStaff {
                subject: r.subject,
                category: r.category.name(),
                signed_in_at: sign.map(|s| s.first_at),
                gate: sign.map(|s| s.gate),
                test_at,
                test_result: result.map(TestResult::name),
                tested_today: result == Some(TestResult::Negative)
                    && test_at.is_some_and(|t| since <= t && t < until),
            }
        })
        .collect();
    rows.sort_by_key(|s| (s.tested_today, s.subject));
    let tested_today = rows.iter().filter(|s| s.tested_today).count();
    Hall {
        market,
        day,
        counts: HallCounts {
            staff: rows.len(),
            signed_in: rows.iter().filter(|s| s.signed_in_at.is_some()).count(),
            tested_today,
            not_tested: rows.len() - tested_today,
        },
        staff: rows,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gatewarden_protocol::{Category, CodeColour};

    use super::*;

    fn staff(id: u64, category: Category) -> Arc<SubjectRecord> {
        Arc::new(SubjectRecord {
            subject: SubjectId(id),
            category,
            home_market: MarketId(1),
            markets: vec![],
            zones: vec![],
            valid_from: None,
            valid_until: None,
            id_card: None,
            qr_tokens: vec![],
            status: SubjectStatus::Active,
        })
    }

    fn test(id: u64, at: u64, result: TestResult) -> Option<HealthRecord> {
        Some(HealthRecord {
            subject: SubjectId(id),
            test_at: Some(UnixMillis(at)),
            test_result: Some(result),
            vaccine_doses: 2,
            health_code: CodeColour::Green,
            travel_code: CodeColour::Green,
            updated_at: UnixMillis(at),
        })
    }

    #[test]
    fn hall_counts_and_orders_staff() {
        let day = (UnixMillis(1_000), UnixMillis(2_000));
        let people = vec![
            (
                staff(1, Category::Staff),
                test(1, 1_500, TestResult::Negative),
            ),
            (
                staff(2, Category::Manager),
                test(2, 500, TestResult::Negative),
            ), // yesterday
            (
                staff(3, Category::Merchant),
                test(3, 1_200, TestResult::Positive),
            ),
            (staff(4, Category::ServiceWorker), None),
        ];
        let signins = vec![SignInRow {
            subject: SubjectId(1),
            category: Some(Category::Staff),
            first_at: UnixMillis(1_100),
            gate: GateId(3),
            zone: ZoneId(1),
        }];
        let h = hall(MarketId(1), "d".into(), day, &people, &signins);
        assert_eq!(
            h.counts,
            HallCounts {
                staff: 4,
                signed_in: 1,
                tested_today: 1,
                not_tested: 3
            }
        );
        let order: Vec<u64> = h.staff.iter().map(|s| s.subject.0).collect();
        assert_eq!(order, vec![2, 3, 4, 1], "not tested first, then by id");
        let one = h.staff.last().unwrap();
        assert_eq!(one.signed_in_at, Some(UnixMillis(1_100)));
        assert_eq!(one.gate, Some(GateId(3)));
        assert_eq!(h.staff[1].test_result, Some("positive"));
    }

    #[test]
    fn only_active_staff_valid_on_the_day_are_on_the_hall() {
        let day = (UnixMillis(1_000), UnixMillis(2_000));
        let with = |f: &dyn Fn(&mut SubjectRecord)| {
            let mut r = (*staff(1, Category::Staff)).clone();
            f(&mut r);
            on_staff(&r, day)
        };
        assert!(with(&|_| {}));
        assert!(!with(&|r| r.status = SubjectStatus::Revoked));
        assert!(!with(&|r| r.status = SubjectStatus::Blocklisted));
        // Starts after the day, or ended before it.
        assert!(!with(&|r| r.valid_from = Some(UnixMillis(2_000))));
        assert!(!with(&|r| r.valid_until = Some(UnixMillis(999))));
        // Valid for part of the day (bounds inclusive) is enough.
        assert!(with(&|r| r.valid_from = Some(UnixMillis(1_999))));
        assert!(with(&|r| r.valid_until = Some(UnixMillis(1_000))));
        assert!(with(&|r| {
            r.valid_from = Some(UnixMillis(0));
            r.valid_until = Some(UnixMillis(5_000));
        }));
    }

    fn row(market: u32, at: u64, decision: Decision, mode: ModeKind) -> EntryRow {
        EntryRow {
            gate: GateId(1),
            seq: at,
            market: MarketId(market),
            zone: ZoneId(1),
            subject: Some(SubjectId(7)),
            decision,
            mode,
            direction: Direction::Entry,
            score: None,
            captured_at: UnixMillis(at),
            decided_at: UnixMillis(at),
            failed: vec![],
        }
    }

    #[test]
    fn frequency_counts_admitted_entries_per_market() {
        let rows = vec![
            row(1, 10, Decision::Admit, ModeKind::Verify),
            row(2, 20, Decision::Admit, ModeKind::Identify),
            row(1, 30, Decision::Deny, ModeKind::Verify),
            row(1, 40, Decision::Admit, ModeKind::SignIn),
            row(1, 50, Decision::Admit, ModeKind::Identify),
        ];
        let f = subject_frequency(SubjectId(7), &rows);
        assert_eq!(f.entries, 3);
        assert_eq!(
            f.by_market,
            vec![
                MarketVisits {
                    market: MarketId(1),
                    entries: 2,
                    first_at: UnixMillis(10),
                    last_at: UnixMillis(50)
                },
                MarketVisits {
                    market: MarketId(2),
                    entries: 1,
                    first_at: UnixMillis(20),
                    last_at: UnixMillis(20)
                },
            ]
        );
    }

    #[test]
    fn markets_group_gates() {
        let g = |gate, market, zone| GateInfo {
            gate: GateId(gate),
            market: MarketId(market),
            zone: ZoneId(zone),
            name: String::new(),
        };
        let m = markets(&[g(1, 2, 5), g(2, 1, 3), g(3, 1, 3), g(4, 1, 1)]);
        assert_eq!(
            m,
            vec![
                MarketView {
                    market: MarketId(1),
                    gates: 3,
                    zones: vec![ZoneId(1), ZoneId(3)]
                },
                MarketView {
                    market: MarketId(2),
                    gates: 1,
                    zones: vec![ZoneId(5)]
                },
            ]
        );
    }
}

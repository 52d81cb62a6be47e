//! The replay report: counts by transition, market, category, check and hour, and examples.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use gatewarden_protocol::{Category, Check, CheckKind, Decision, Outcome};
use serde::Serialize;

use crate::clock::{HOUR_MS, UtcOffset, format_local};
use crate::policy::replay::Replayed;
use crate::store::ArchivedEntry;

/// What a new policy would have changed over a range of recorded entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReplayReport {
    /// The replayed policy's version.
    pub policy_version: String,
    /// Entries replayed.
    pub entries: u64,
    /// Entries whose decision is the same.
    pub unchanged: u64,
    /// Entries whose decision changes.
    pub changed: u64,
    /// Entries whose new decision depends on an input their record lacks.
    pub undetermined: u64,
    /// Entries the new policy denies and the recorded one did not.
    pub extra_denials: u64,
    /// Entries the recorded policy denied and the new one does not.
    pub fewer_denials: u64,
    /// Each change of decision, `to` being `undetermined` where it is not known.
    pub transitions: Vec<Transition>,
    /// Per market.
    pub by_market: Vec<GroupRow>,
    /// Per person category (`unidentified` when nobody was identified).
    pub by_category: Vec<GroupRow>,
    /// Per check: how its outcomes move, and how often its input was not recorded.
    pub by_check: Vec<CheckRow>,
    /// Per local hour of day, summed over the range.
    pub by_hour: Vec<HourRow>,
    /// Some changed entries, in time order.
    pub examples: Vec<Example>,
    /// What the figures assume.
    pub notes: Vec<String>,
    #[serde(skip)]
    offset: UtcOffset,
    #[serde(skip)]
    max_examples: usize,
    #[serde(skip)]
    tallies: Tallies,
}

/// How many entries went from one decision to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The recorded decision.
    pub from: &'static str,
    /// The new decision, or `undetermined`.
    pub to: &'static str,
    /// How many entries.
    pub count: u64,
}

/// Counts for one market or category.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupRow {
    /// The market id or category name.
    pub key: String,
    /// Entries replayed.
    pub entries: u64,
    /// Decisions that change.
    pub changed: u64,
    /// Newly denied.
    pub extra_denials: u64,
    /// No longer denied.
    pub fewer_denials: u64,
    /// Not decidable from the record.
    pub undetermined: u64,
}

/// How one check's outcomes move between the recorded and the new verdicts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckRow {
    /// The check's name.
    pub check: &'static str,
    /// Entries where it fails now and did not.
    pub newly_failing: u64,
    /// Entries where it escalates now and neither failed nor escalated before.
    pub newly_escalating: u64,
    /// Entries where it failed and does not now.
    pub no_longer_failing: u64,
    /// Entries whose outcome of this check depends on an input the record lacks.
    pub undetermined: u64,
    /// Which input that is, and when the record holds it.
    pub missing_input: &'static str,
}

/// One local hour of the day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HourRow {
    /// 0 to 23, local time.
    pub hour: u8,
    /// Entries replayed.
    pub entries: u64,
    /// Denials recorded.
    pub denials_before: u64,
    /// Denials under the new policy (undetermined entries counted as they were).
    pub denials_after: u64,
    /// Newly denied.
    pub extra_denials: u64,
}

/// One changed entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Example {
    /// The gate.
    pub gate: u32,
    /// The event's sequence number.
    pub seq: u64,
    /// The market.
    pub market: u32,
    /// The person, if identified.
    pub subject: Option<u64>,
    /// The person's category, if known.
    pub category: Option<&'static str>,
    /// When it was decided, local time.
    pub at: String,
    /// The recorded decision.
    pub from: &'static str,
    /// The new decision.
    pub to: &'static str,
    /// The checks whose outcome changes: `test_age: pass -> fail (30.5 / 24)`.
    pub checks: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Tallies {
    transitions: BTreeMap<(&'static str, &'static str), u64>,
    markets: BTreeMap<u32, GroupRow>,
    categories: BTreeMap<&'static str, GroupRow>,
    checks: BTreeMap<u8, CheckRow>,
    hours: Vec<HourRow>,
}

const UNDETERMINED: &str = "undetermined";

impl ReplayReport {
    pub(super) fn new(version: &str, offset: UtcOffset, max_examples: usize) -> Self {
        Self {
            policy_version: version.to_owned(),
            offset,
            max_examples,
            tallies: Tallies {
                hours: (0..24)
                    .map(|hour| HourRow {
                        hour,
                        ..HourRow::default()
                    })
                    .collect(),
                ..Tallies::default()
            },
            notes: vec![
                "each entry is re-decided on its own, with the counters it recorded (entries \
                 today, occupancy, inside, signed in): a denial the new policy adds does not \
                 lower the counters seen by the entries after it"
                    .to_owned(),
                "person categories come from the registry as it is now; entries do not record \
                 them"
                    .to_owned(),
            ],
            ..Self::default()
        }
    }

    /// Counts one replayed entry.
    pub(super) fn add(
        &mut self,
        entry: &ArchivedEntry,
        category: Option<Category>,
        replayed: &Replayed,
    ) {
        let from = entry.decision;
        let to = replayed.decision;
        self.entries += 1;
        let change = Change::of(from, to);
        match change {
            Change::Same => self.unchanged += 1,
            Change::Unknown => self.undetermined += 1,
            Change::To(_) => self.changed += 1,
        }
        let denied_now = to == Some(Decision::Deny);
        let extra = denied_now && from != Decision::Deny;
        let fewer = from == Decision::Deny && to.is_some_and(|d| d != Decision::Deny);
        self.extra_denials += u64::from(extra);
        self.fewer_denials += u64::from(fewer);
        if change != Change::Same {
            let to_name = to.map_or(UNDETERMINED, Decision::name);
            *self
                .tallies
                .transitions
                .entry((from.name(), to_name))
                .or_default() += 1;
        }
        let counts = GroupCounts {
            change,
            extra,
            fewer,
        };
        let market = self.tallies.markets.entry(entry.market.0).or_default();
        counts.add_to(market, || entry.market.0.to_string());
        let cat = category.map_or("unidentified", Category::name);
        counts.add_to(self.tallies.categories.entry(cat).or_default(), || {
            cat.to_owned()
        });
        self.add_checks(&entry.checks, replayed);
        self.add_hour(
            entry,
            denied_now || (to.is_none() && from == Decision::Deny),
            extra,
        );
        if matches!(change, Change::To(_)) && self.examples.len() < self.max_examples {
            self.examples.push(self.example(entry, category, replayed));
        }
    }

    fn add_checks(&mut self, recorded: &[Check], replayed: &Replayed) {
        for new in &replayed.verdict.checks {
            let was = recorded.iter().find(|c| c.kind == new.kind);
            let was_outcome = was.map_or(Outcome::NotChecked, |c| c.outcome);
            let row = self.check_row(new.kind);
            if replayed.unknown.contains(&new.kind) {
                row.undetermined += 1;
                continue;
            }
            match (was_outcome, new.outcome) {
                (a, Outcome::Fail) if a != Outcome::Fail => row.newly_failing += 1,
                (Outcome::Pass | Outcome::NotChecked, Outcome::Escalate) => {
                    row.newly_escalating += 1;
                }
                (Outcome::Fail, b) if b != Outcome::Fail => row.no_longer_failing += 1,
                _ => {}
            }
        }
        // The category stand-in (see `replay_entry`) names SubjectStatus without a check of
        // its own in the verdict when identity failed; count it once.
        let missing_category = replayed.unknown.contains(&CheckKind::SubjectStatus)
            && !replayed
                .verdict
                .checks
                .iter()
                .any(|c| c.kind == CheckKind::SubjectStatus);
        if missing_category {
            self.check_row(CheckKind::SubjectStatus).undetermined += 1;
        }
    }

    fn check_row(&mut self, kind: CheckKind) -> &mut CheckRow {
        self.tallies
            .checks
            .entry(kind.code())
            .or_insert_with(|| CheckRow {
                check: kind.name(),
                missing_input: missing_input(kind),
                ..CheckRow::default()
            })
    }

    fn add_hour(&mut self, entry: &ArchivedEntry, denied_after: bool, extra: bool) {
        let hour = (self.offset.time_of_day_ms(entry.decided_at) / HOUR_MS) as usize;
        if let Some(row) = self.tallies.hours.get_mut(hour) {
            row.entries += 1;
            row.denials_before += u64::from(entry.decision == Decision::Deny);
            row.denials_after += u64::from(denied_after);
            row.extra_denials += u64::from(extra);
        }
    }

    fn example(
        &self,
        entry: &ArchivedEntry,
        category: Option<Category>,
        replayed: &Replayed,
    ) -> Example {
        let checks = replayed
            .verdict
            .checks
            .iter()
            .filter_map(|new| {
                let was = entry.checks.iter().find(|c| c.kind == new.kind)?;
                if replayed.unknown.contains(&new.kind) {
                    // The stand-in inputs of an unknown check are no one's facts.
                    return Some(format!("{}: not recorded", new.kind.name()));
                }
                (was.outcome != new.outcome).then(|| describe_change(was, new))
            })
            .collect();
        Example {
            gate: entry.gate.0,
            seq: entry.seq,
            market: entry.market.0,
            subject: entry.subject.map(|s| s.0),
            category: category.map(Category::name),
            at: format_local(entry.decided_at, self.offset),
            from: entry.decision.name(),
            to: replayed.decision.map_or(UNDETERMINED, Decision::name),
            checks,
        }
    }

    /// Turns the tallies into the report's lists; call once, after the last entry.
    pub(super) fn finish(mut self) -> Self {
        let t = std::mem::take(&mut self.tallies);
        self.transitions = t
            .transitions
            .into_iter()
            .map(|((from, to), count)| Transition { from, to, count })
            .collect();
        self.by_market = t.markets.into_values().collect();
        self.by_category = t.categories.into_values().collect();
        self.by_check = t
            .checks
            .into_values()
            .filter(|r| {
                r.newly_failing + r.newly_escalating + r.no_longer_failing + r.undetermined > 0
            })
            .collect();
        self.by_hour = t.hours.into_iter().filter(|h| h.entries > 0).collect();
        self
    }

    /// The report for people: totals, transitions, tables, examples, notes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "policy {}: {} entries replayed; {} unchanged, {} changed, {} undetermined",
            self.policy_version, self.entries, self.unchanged, self.changed, self.undetermined
        );
        let _ = writeln!(
            out,
            "extra denials {}, fewer denials {}",
            self.extra_denials, self.fewer_denials
        );
        self.render_transitions(&mut out);
        render_groups(&mut out, "market", &self.by_market);
        render_groups(&mut out, "category", &self.by_category);
        self.render_checks(&mut out);
        self.render_hours(&mut out);
        self.render_examples(&mut out);
        out.push_str("\nnotes:\n");
        for n in &self.notes {
            let _ = writeln!(out, "  - {n}");
        }
        out
    }

    fn render_transitions(&self, out: &mut String) {
        if self.transitions.is_empty() {
            out.push_str("\nno decision changes\n");
            return;
        }
        out.push_str("\nchanges:\n");
        for t in &self.transitions {
            let _ = writeln!(out, "  {:>8} -> {:<12} {:>9}", t.from, t.to, t.count);
        }
    }

    fn render_checks(&self, out: &mut String) {
        if self.by_check.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\nby check:\n  {:<15} {:>9} {:>9} {:>9} {:>9}",
            "check", "now fail", "now esc.", "no fail", "unknown"
        );
        for r in &self.by_check {
            let _ = writeln!(
                out,
                "  {:<15} {:>9} {:>9} {:>9} {:>9}",
                r.check, r.newly_failing, r.newly_escalating, r.no_longer_failing, r.undetermined
            );
        }
        for r in self.by_check.iter().filter(|r| r.undetermined > 0) {
            let _ = writeln!(
                out,
                "  {}: {} entries lack {}",
                r.check, r.undetermined, r.missing_input
            );
        }
    }

    fn render_hours(&self, out: &mut String) {
        if !self.by_hour.iter().any(|h| h.extra_denials > 0) {
            return;
        }
        let _ = writeln!(
            out,
            "\nextra denials by local hour:\n  {:<5} {:>9} {:>9} {:>9} {:>9}",
            "hour", "entries", "denied", "now", "extra"
        );
        for h in &self.by_hour {
            let _ = writeln!(
                out,
                "  {:02}:00 {:>9} {:>9} {:>9} {:>9}",
                h.hour, h.entries, h.denials_before, h.denials_after, h.extra_denials
            );
        }
    }

    fn render_examples(&self, out: &mut String) {
        if self.examples.is_empty() {
            return;
        }
        out.push_str("\nexamples:\n");
        for e in &self.examples {
            let who = e
                .subject
                .map_or_else(|| "nobody".to_owned(), |s| format!("person {s}"));
            let _ = writeln!(
                out,
                "  {} gate {} seq {} market {}, {} ({}): {} -> {}; {}",
                e.at,
                e.gate,
                e.seq,
                e.market,
                who,
                e.category.unwrap_or("?"),
                e.from,
                e.to,
                e.checks.join(", ")
            );
        }
    }
}

fn render_groups(out: &mut String, what: &str, rows: &[GroupRow]) {
    let _ = writeln!(
        out,
        "\nby {what}:\n  {:<14} {:>9} {:>9} {:>9} {:>9} {:>9}",
        what, "entries", "changed", "extra", "fewer", "unknown"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "  {:<14} {:>9} {:>9} {:>9} {:>9} {:>9}",
            r.key, r.entries, r.changed, r.extra_denials, r.fewer_denials, r.undetermined
        );
    }
}

/// A decision change, or none, or an unknown new decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Same,
    To(Decision),
    Unknown,
}

impl Change {
    fn of(from: Decision, to: Option<Decision>) -> Self {
        match to {
            None => Self::Unknown,
            Some(d) if d == from => Self::Same,
            Some(d) => Self::To(d),
        }
    }
}

struct GroupCounts {
    change: Change,
    extra: bool,
    fewer: bool,
}

impl GroupCounts {
    fn add_to(&self, row: &mut GroupRow, key: impl FnOnce() -> String) {
        if row.key.is_empty() {
            row.key = key();
        }
        row.entries += 1;
        row.changed += u64::from(matches!(self.change, Change::To(_)));
        row.undetermined += u64::from(self.change == Change::Unknown);
        row.extra_denials += u64::from(self.extra);
        row.fewer_denials += u64::from(self.fewer);
    }
}

fn describe_change(was: &Check, new: &Check) -> String {
    let mut s = format!(
        "{}: {} -> {}",
        new.kind.name(),
        was.outcome.name(),
        new.outcome.name()
    );
    if let Some(v) = new.value.or(was.value) {
        let t = new
            .threshold
            .map_or_else(|| "-".to_owned(), |t| format!("{t}"));
        let _ = write!(s, " ({} / {t})", (v * 1000.0).round() / 1000.0);
    }
    s
}

/// The input behind a check that a record may lack, and when it has it.
fn missing_input(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::FaceMatch => {
            "the card holder or best match (not recorded when no one was identified)"
        }
        CheckKind::MatchMargin => "the runner-up score (recorded only when the 1:N match held)",
        CheckKind::SubjectStatus => {
            "the person's status or category (not recorded when no one was identified or on \
             exits; a person no longer in the registry has no category)"
        }
        CheckKind::Blocklist | CheckKind::Validity | CheckKind::Market => {
            "the person's registry record (not recorded when no one was identified, or on exits)"
        }
        CheckKind::Zone => "the person's zones (recorded only where zones were enforced)",
        CheckKind::Temperature => "the temperature reading (recorded only with a ceiling set)",
        CheckKind::HealthCode => "the health code (recorded only when it was checked)",
        CheckKind::TravelCode => "the travel code (recorded only when it was checked)",
        CheckKind::TestAge => "the test result and time (recorded only when a test was required)",
        CheckKind::Vaccination => "the vaccine doses (recorded only with a minimum set)",
        CheckKind::SignIn => "today's sign-in (recorded only where sign-in was required)",
        CheckKind::AntiPassback => {
            "whether the person was inside (recorded only with anti-passback)"
        }
        CheckKind::Frequency => "the entries today (recorded only with a daily cap)",
        CheckKind::Occupancy => "the occupancy (recorded only with a cap)",
        _ => "an input the record does not hold",
    }
}

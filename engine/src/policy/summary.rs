//! [`PolicyBook::summary`]: what a policy does, in plain words, per market and category.

use std::fmt::Write;

use super::file::{CATEGORY_NAMES, CategoryRules, MarketSettings};
use super::values::{CodeAge, CodeRule, CodeVerdict, OffOr, Refusal, Schedule};
use super::{MarketPolicy, PolicyBook};

/// The whole summary: the default, then each market with its own table.
pub(super) fn render(book: &PolicyBook) -> String {
    let mut out = String::with_capacity(2048);
    let _ = writeln!(out, "policy version {}", book.version());
    let markets = book.overridden_markets();
    let others = if markets.is_empty() {
        "every market".to_owned()
    } else {
        let ids: Vec<String> = markets.iter().map(|m| m.0.to_string()).collect();
        format!("every market except {}", ids.join(", "))
    };
    market(&mut out, &format!("default ({others})"), &book.default);
    for id in markets {
        let policy = book.for_market(id);
        if *policy == book.default {
            let _ = writeln!(out, "\nmarket {}: as the default", id.0);
        } else {
            market(&mut out, &format!("market {}", id.0), policy);
        }
    }
    out
}

fn market(out: &mut String, title: &str, p: &MarketPolicy) {
    let s: &MarketSettings = &p.settings;
    let _ = writeln!(out, "\n{title}:");
    let _ = writeln!(
        out,
        "  face: 1:N score >= {}, 1:1 score >= {}, {}; 1:N lead over the next person < {} \
         escalates; liveness >= {}",
        s.identify_threshold.0.report,
        s.verify_threshold.0.report,
        match s.borderline_band.0.report {
            0.0 => "no borderline escalation".to_owned(),
            band => format!("scores up to {band} below a threshold escalate"),
        },
        s.margin.0.report,
        s.liveness_min.0.report,
    );
    let _ = writeln!(
        out,
        "  credential: {}",
        if s.require_credential {
            "required (an ID card or QR code; a face alone is denied)"
        } else {
            "optional (a face alone may identify)"
        }
    );
    let _ = writeln!(
        out,
        "  temperature: {}",
        match s.temperature_ceiling_c.on() {
            Some(c) => format!("deny above {} °C", c.0.report),
            None => "not checked".to_owned(),
        }
    );
    code(
        out,
        "health code",
        s.health_code,
        s.health_code_max_age,
        s.stale_code,
    );
    code(
        out,
        "travel code",
        s.travel_code,
        s.travel_code_max_age,
        s.stale_code,
    );
    let _ = writeln!(
        out,
        "  occupancy: {}",
        match s.occupancy_cap.on() {
            Some(cap) => format!(
                "at {} people inside, entries {}",
                cap.0,
                refusal(s.over_occupancy)
            ),
            None => "not capped".to_owned(),
        }
    );
    let width = CATEGORY_NAMES.iter().map(|c| c.len()).max().unwrap_or(0);
    for (name, rules) in CATEGORY_NAMES.iter().zip(&p.categories) {
        let _ = writeln!(out, "  {name:<width$}  {}", category(rules));
    }
}

fn code(out: &mut String, what: &str, rule: OffOr<CodeRule>, age: OffOr<CodeAge>, stale: Refusal) {
    let Some(rule) = rule.on() else {
        let _ = writeln!(out, "  {what}: not checked");
        return;
    };
    let mut parts = Vec::new();
    for (verdict, word) in [
        (CodeVerdict::Pass, "pass"),
        (CodeVerdict::Escalate, "escalate"),
        (CodeVerdict::Fail, "deny"),
    ] {
        let colours = rule.colours(verdict);
        if !colours.is_empty() {
            parts.push(format!("{} {word}", colours.join(" and ")));
        }
    }
    let age = match age.on() {
        Some(h) => format!("older than {} h: {}", h.0, stale.name()),
        None => "any age".to_owned(),
    };
    let _ = writeln!(
        out,
        "  {what}: {}; no record: deny; {age}",
        parts.join(", ")
    );
}

fn refusal(r: Refusal) -> &'static str {
    match r {
        Refusal::Deny => "are denied",
        Refusal::Escalate => "go to staff",
    }
}

fn category(r: &CategoryRules) -> String {
    let mut parts = Vec::new();
    parts.push(match &r.schedule {
        Schedule::Always => "any time".to_owned(),
        Schedule::Windows(w) => {
            let w: Vec<String> = w.iter().map(ToString::to_string).collect();
            format!("only {}", w.join(", "))
        }
    });
    parts.push(match r.max_test_age_hours.on() {
        Some(h) => format!("negative test within {} h", h.0),
        None => "no test needed".to_owned(),
    });
    parts.push(match r.min_vaccine_doses.0 {
        0 => "no vaccination needed".to_owned(),
        1 => "1 vaccine dose".to_owned(),
        n => format!("{n} vaccine doses"),
    });
    if r.zones_enforced {
        parts.push("own zones only".to_owned());
    }
    if r.sign_in_required {
        parts.push("sign in before entering".to_owned());
    }
    if r.anti_passback {
        parts.push("entries and exits alternate".to_owned());
    }
    parts.push(match r.max_entries_per_day.on() {
        Some(cap) => format!("at most {} entries a day", cap.0),
        None => "no daily entry limit".to_owned(),
    });
    parts.join("; ")
}

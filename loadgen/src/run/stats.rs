//! The run's counters and histograms, behind one mutex (held for a few hundred nanoseconds
//! per event, never across an await), and their conversion into a [`Report`].

use std::time::Duration;

use gatewarden_protocol::{Check, Decision, Outcome, Verdict};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::badinput::{BadKind, BadOutcome};
use super::plan::{ModeKind, Twist};
use super::report::{LatencyMs, Mismatch, Report, SecondStats};
use crate::population::Persona;
use crate::truth::Expected;

/// Mismatches kept in the report.
const MAX_MISMATCHES: usize = 20;
/// Highest latency the histograms hold (one hour, in µs); longer values are clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What the report needs to know about a good event besides its verdict.
#[derive(Clone, Debug)]
pub(crate) struct EventMeta {
    pub(crate) gate: u32,
    pub(crate) seq: u64,
    pub(crate) expected: Expected,
    pub(crate) mode: ModeKind,
    pub(crate) twist: Twist,
    pub(crate) persona: Option<Persona>,
}

/// One received verdict, for the `--verdicts` log (crash tests compare it with the store).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct VerdictRecord {
    pub(crate) gate: u32,
    pub(crate) seq: u64,
    pub(crate) decision: &'static str,
    pub(crate) subject: Option<u64>,
    pub(crate) replayed: bool,
}

/// Counters of one run.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) report: Report,
    all: Histogram<u64>,
    /// Latency of the attempt that got the verdict (see [`Report::attempt_latency_ms`]).
    attempt: Histogram<u64>,
    interval: Histogram<u64>,
    interval_sent: u64,
    interval_verdicts: u64,
    interval_busy: u64,
    /// Time of the latest reply, measured from the start of the load.
    pub(crate) last_reply: Duration,
    pub(crate) verdict_log: Option<Vec<VerdictRecord>>,
}

impl Stats {
    pub(crate) fn new(keep_verdicts: bool) -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            report: Report::default(),
            all: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            attempt: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            interval: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            interval_sent: 0,
            interval_verdicts: 0,
            interval_busy: 0,
            last_reply: Duration::ZERO,
            verdict_log: keep_verdicts.then(Vec::new),
        })
    }

    pub(crate) fn on_sent(&mut self) {
        self.report.sent += 1;
        self.interval_sent += 1;
    }

    pub(crate) fn on_reply(&mut self, at: Duration) {
        self.last_reply = self.last_reply.max(at);
    }

    pub(crate) fn on_busy(&mut self) {
        self.report.busy += 1;
        self.interval_busy += 1;
    }

    /// A verdict: `latency` from the event's intended send time, `attempt` from the intended
    /// time of the attempt that got it (equal unless the event was retried after `Busy`).
    pub(crate) fn on_verdict(
        &mut self,
        v: &Verdict,
        latency: Duration,
        attempt: Duration,
        meta: &EventMeta,
    ) {
        let us = micros(latency);
        self.all.saturating_record(us);
        self.attempt.saturating_record(micros(attempt));
        self.interval.saturating_record(us);
        self.interval_verdicts += 1;
        let r = &mut self.report;
        r.verdicts += 1;
        r.replayed += u64::from(v.replayed);
        match v.decision {
            Decision::Admit => r.decisions.admit += 1,
            Decision::Deny => r.decisions.deny += 1,
            Decision::Escalate => r.decisions.escalate += 1,
        }
        self.judge(v, meta);
        if let Some(log) = &mut self.verdict_log {
            log.push(VerdictRecord {
                gate: v.gate.0,
                seq: v.seq,
                decision: v.decision.name(),
                subject: v.subject.map(|s| s.0),
                replayed: v.replayed,
            });
        }
    }

    /// Compares a verdict with the ground truth.
    fn judge(&mut self, v: &Verdict, meta: &EventMeta) {
        let a = &mut self.report.accuracy;
        a.checked += 1;
        let want = meta.expected.decision;
        let decision_ok = v.decision == want;
        match (want, v.decision) {
            (Decision::Deny | Decision::Escalate, Decision::Admit) => a.false_admit += 1,
            (Decision::Admit, Decision::Deny | Decision::Escalate) => a.false_deny += 1,
            (Decision::Deny, Decision::Escalate) | (Decision::Escalate, Decision::Deny) => {
                a.deny_escalate_swaps += 1;
            }
            _ => {}
        }
        let subject_ok = match (meta.expected.subject, v.subject) {
            (Some(want), Some(got)) => want == got.0,
            (None, Some(_)) => false,
            _ => true,
        };
        if !subject_ok {
            a.wrong_subject += 1;
        }
        if decision_ok && subject_ok {
            a.correct += 1;
        } else if self.report.mismatches.len() < MAX_MISMATCHES {
            self.report.mismatches.push(mismatch(v, meta));
        }
    }

    /// An event answered with an error (`code` is the error code's name, or what else went
    /// wrong with the reply).
    pub(crate) fn on_error(&mut self, code: &str) {
        self.report.errors += 1;
        *self
            .report
            .errors_by_code
            .entry(code.to_string())
            .or_insert(0) += 1;
    }

    pub(crate) fn on_bad(&mut self, kind: BadKind, outcome: &BadOutcome, closed: bool) {
        let b = &mut self.report.bad_input;
        let k = b.by_kind.entry(kind.as_str().to_string()).or_default();
        b.sent += 1;
        k.sent += 1;
        match outcome {
            BadOutcome::Ok => {
                b.rejected_ok += 1;
                k.rejected_ok += 1;
            }
            BadOutcome::Violation(what) => {
                b.violations += 1;
                k.violations += 1;
                k.example.get_or_insert_with(|| what.clone());
            }
            BadOutcome::Wrong(what) => {
                b.wrong_reply += 1;
                k.wrong_reply += 1;
                k.example.get_or_insert_with(|| what.clone());
            }
            BadOutcome::NoReply => {
                b.no_reply += 1;
                k.no_reply += 1;
            }
        }
        b.connections_closed += u64::from(closed);
    }

    /// Closes the current one-second interval.
    pub(crate) fn tick(&mut self, t: f64, gates_connected: u32, gates_lost: u32) -> SecondStats {
        let s = SecondStats {
            t,
            gates_connected,
            gates_lost,
            sent: self.interval_sent,
            verdicts: self.interval_verdicts,
            busy: self.interval_busy,
            p50_ms: ms(&self.interval, 0.50),
            p99_ms: ms(&self.interval, 0.99),
        };
        self.interval.reset();
        self.interval_sent = 0;
        self.interval_verdicts = 0;
        self.interval_busy = 0;
        self.report.per_second.push(s.clone());
        s
    }

    /// True if the current interval has anything in it.
    pub(crate) fn interval_has_data(&self) -> bool {
        self.interval_sent + self.interval_verdicts + self.interval_busy > 0
    }

    /// The progress line for the interval just closed.
    pub(crate) fn progress_line(&self, s: &SecondStats) -> String {
        format!(
            "[{:>6.1}s] sent {:>8}  verdicts {:>8}  busy {:>6}  errors {:>5}  rate {:>6}/s  p99 {:>7.2} ms  (run p99 {:.2} ms)",
            s.t,
            self.report.sent,
            self.report.verdicts,
            self.report.busy,
            self.report.errors,
            s.verdicts,
            s.p99_ms,
            ms(&self.all, 0.99)
        )
    }

    /// The latency percentiles of the whole run, from intended send time.
    pub(crate) fn latency(&self) -> LatencyMs {
        percentiles(&self.all)
    }

    /// The percentiles of the verdict-getting attempts.
    pub(crate) fn attempt_latency(&self) -> LatencyMs {
        percentiles(&self.attempt)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_LATENCY_US)
}

fn percentiles(h: &Histogram<u64>) -> LatencyMs {
    LatencyMs {
        p50: ms(h, 0.50),
        p90: ms(h, 0.90),
        p99: ms(h, 0.99),
        p999: ms(h, 0.999),
        max: if h.is_empty() {
            0.0
        } else {
            h.max() as f64 / 1000.0
        },
        mean: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

fn reasons(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fail | Outcome::Escalate))
        .map(|c| format!("{:?}:{:?} {}", c.kind, c.outcome, c.detail))
        .collect()
}

fn mismatch(v: &Verdict, meta: &EventMeta) -> Mismatch {
    Mismatch {
        gate: meta.gate,
        seq: meta.seq,
        mode: meta.mode.as_str().into(),
        twist: meta.twist.as_str().into(),
        persona: meta.persona.map(|p| p.as_str().to_string()),
        expected: meta.expected.decision.name().into(),
        expected_subject: meta.expected.subject,
        expected_reasons: meta
            .expected
            .reasons
            .iter()
            .map(|r| (*r).to_string())
            .collect(),
        got: v.decision.name().into(),
        got_subject: v.subject.map(|s| s.0),
        got_score: v.score,
        got_reasons: reasons(&v.checks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewarden_protocol::{Display, DisplayColour, GateId, SubjectId, UnixMillis};

    fn verdict(decision: Decision, subject: Option<u64>) -> Verdict {
        Verdict {
            gate: GateId(1),
            seq: 9,
            decision,
            subject: subject.map(SubjectId),
            score: Some(0.7),
            checks: vec![],
            display: Display {
                colour: DisplayColour::Green,
                text: "ok".into(),
            },
            decided_at: UnixMillis(0),
            replayed: false,
        }
    }

    fn meta(decision: Decision, subject: Option<u64>) -> EventMeta {
        EventMeta {
            gate: 1,
            seq: 9,
            expected: Expected {
                decision,
                subject,
                reasons: vec![],
            },
            mode: ModeKind::Verify,
            twist: Twist::None,
            persona: Some(Persona::Eligible),
        }
    }

    #[test]
    fn accuracy_counts_each_kind_of_error() {
        let mut s = Stats::new(true).unwrap();
        let ms10 = Duration::from_millis(10);
        s.on_verdict(
            &verdict(Decision::Admit, Some(5)),
            ms10,
            ms10 / 2,
            &meta(Decision::Admit, Some(5)),
        );
        s.on_verdict(
            &verdict(Decision::Admit, Some(5)),
            ms10,
            ms10 / 2,
            &meta(Decision::Deny, Some(5)),
        );
        s.on_verdict(
            &verdict(Decision::Deny, Some(5)),
            ms10,
            ms10 / 2,
            &meta(Decision::Admit, Some(5)),
        );
        s.on_verdict(
            &verdict(Decision::Admit, Some(6)),
            ms10,
            ms10 / 2,
            &meta(Decision::Admit, Some(5)),
        );
        s.on_verdict(
            &verdict(Decision::Deny, Some(6)),
            ms10,
            ms10 / 2,
            &meta(Decision::Deny, None),
        );
        s.on_verdict(
            &verdict(Decision::Escalate, None),
            ms10,
            ms10 / 2,
            &meta(Decision::Deny, Some(5)),
        );
        let a = &s.report.accuracy;
        assert_eq!(a.checked, 6);
        assert_eq!(a.correct, 1);
        assert_eq!(a.false_admit, 1);
        assert_eq!(a.false_deny, 1);
        assert_eq!(a.wrong_subject, 2);
        assert_eq!(a.deny_escalate_swaps, 1);
        assert_eq!(s.report.mismatches.len(), 5);
        assert_eq!(s.report.decisions.admit, 3);
        assert_eq!(s.verdict_log.as_ref().unwrap().len(), 6);
        let l = s.latency();
        assert!((l.p50 - 10.0).abs() < 0.1, "{l:?}");
        let a = s.attempt_latency();
        assert!((a.p50 - 5.0).abs() < 0.1, "{a:?}");
    }

    #[test]
    fn tick_closes_intervals() {
        let mut s = Stats::new(false).unwrap();
        s.on_sent();
        s.on_verdict(
            &verdict(Decision::Admit, None),
            Duration::from_millis(4),
            Duration::from_millis(4),
            &meta(Decision::Admit, None),
        );
        assert!(s.interval_has_data());
        let t = s.tick(1.0, 3, 0);
        assert_eq!((t.sent, t.verdicts, t.gates_connected), (1, 1, 3));
        assert!((t.p99_ms - 4.0).abs() < 0.01);
        assert!(!s.interval_has_data());
        assert_eq!(s.tick(2.0, 3, 0).verdicts, 0);
        assert_eq!(s.report.per_second.len(), 2);
        assert!(s.progress_line(&t).contains("verdicts"));
    }
}

//! Pipeline counters: plain atomics, cheap enough to bump per event.
//!
//! Latencies go into fixed log2 buckets of microseconds (bucket `i` holds values in
//! `[2^i, 2^(i+1))`), so recording is one atomic add and a snapshot can estimate quantiles.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use gatewarden_protocol::{CheckKind, Decision, MarketId, Outcome, Verdict};
use serde::Serialize;

const BUCKETS: usize = 32;

/// A lock-free latency histogram with log2 buckets of microseconds.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.record_value(us);
    }

    /// Records one plain value (a batch size, say) in the same buckets.
    pub fn record_value(&self, v: u64) {
        let idx = (64 - v.max(1).leading_zeros() as usize - 1).min(BUCKETS - 1);
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(v, Ordering::Relaxed);
    }

    /// A point-in-time summary.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let quantile = |q: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // Upper edge of the bucket: a conservative estimate.
                    return (1u64 << (i + 1)) - 1;
                }
            }
            u64::MAX
        };
        HistogramSnapshot {
            count,
            mean: if count == 0 {
                0.0
            } else {
                self.sum_us.load(Ordering::Relaxed) as f64 / count as f64
            },
            p50: quantile(0.50),
            p99: quantile(0.99),
            buckets: counts,
        }
    }
}

/// Summary of a [`LatencyHistogram`]; values in the unit recorded (µs for latencies).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HistogramSnapshot {
    /// Values recorded.
    pub count: u64,
    /// Mean value.
    pub mean: f64,
    /// Median, as the upper edge of its log2 bucket.
    pub p50: u64,
    /// 99th percentile, as the upper edge of its log2 bucket.
    pub p99: u64,
    /// Counts per log2 bucket (bucket i holds values in [2^i, 2^(i+1))).
    pub buckets: Vec<u64>,
}

/// Live counters of a running pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    pub(crate) submitted: AtomicU64,
    pub(crate) rejected_busy: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) seq_reused: AtomicU64,
    pub(crate) internal_errors: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) decisions: DecisionCounters,
    /// The same counters per market, for the console and `/metrics`. A market's entry is made
    /// on its first verdict; there are tens of markets, not thousands.
    pub(crate) per_market: DashMap<MarketId, DecisionCounters>,
    pub(crate) queue_wait: LatencyHistogram,
    pub(crate) matching: LatencyHistogram,
    pub(crate) commit: LatencyHistogram,
    pub(crate) end_to_end: LatencyHistogram,
    pub(crate) batch_size: LatencyHistogram,
    pub(crate) commit_size: LatencyHistogram,
}

impl PipelineStats {
    /// Counts a recorded verdict, overall and for its market.
    pub(crate) fn count_verdict(&self, v: &Verdict, market: MarketId) {
        self.decisions.count(v);
        self.per_market.entry(market).or_default().count(v);
    }
}

/// Verdicts by decision and failing checks by kind.
#[derive(Debug, Default)]
pub(crate) struct DecisionCounters {
    admit: AtomicU64,
    deny: AtomicU64,
    escalate: AtomicU64,
    failed_checks: FailedChecks,
}

impl DecisionCounters {
    fn count(&self, v: &Verdict) {
        let counter = match v.decision {
            Decision::Admit => &self.admit,
            Decision::Deny => &self.deny,
            Decision::Escalate => &self.escalate,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        for check in &v.checks {
            if check.outcome == Outcome::Fail {
                self.failed_checks.bump(check.kind);
            }
        }
    }

    fn snapshot(&self) -> DecisionSnapshot {
        DecisionSnapshot {
            admit: self.admit.load(Ordering::Relaxed),
            deny: self.deny.load(Ordering::Relaxed),
            escalate: self.escalate.load(Ordering::Relaxed),
            failed_checks: self.failed_checks.snapshot(),
        }
    }
}

/// One counter per check kind, indexed by the kind's wire code.
#[derive(Debug)]
pub(crate) struct FailedChecks([AtomicU64; 64]);

impl Default for FailedChecks {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl FailedChecks {
    fn bump(&self, kind: CheckKind) {
        if let Some(c) = self.0.get(usize::from(kind.code())) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Non-zero counters by the check's permanent name (`temperature`, `test_age`, ...).
    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(code, c)| {
                let n = c.load(Ordering::Relaxed);
                let kind = CheckKind::from_code(u8::try_from(code).ok()?)?;
                (n > 0).then_some((kind.name(), n))
            })
            .collect()
    }
}

/// Verdicts by decision, and how often each check failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DecisionSnapshot {
    /// Admitted.
    pub admit: u64,
    /// Denied.
    pub deny: u64,
    /// Escalated to a guard.
    pub escalate: u64,
    /// Failing checks by name (a denied verdict may fail several).
    pub failed_checks: BTreeMap<&'static str, u64>,
}

/// One market's verdicts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MarketStats {
    /// The market.
    pub market: MarketId,
    /// Its verdicts.
    #[serde(flatten)]
    pub decisions: DecisionSnapshot,
}

/// How this process read today's counters (occupancy, anti-passback, entries per day,
/// sign-ins) at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CountersStart {
    /// True when they came from the snapshot the previous process saved and the entries
    /// recorded after it; false when every entry of the day was read.
    pub from_snapshot: bool,
    /// Passages (admitted entries and exits of known people) read from the entry log.
    pub passages_read: u64,
    /// Why the snapshot was not used, when it was not.
    pub why_not_snapshot: Option<String>,
}

/// A point-in-time copy of the pipeline's counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatsSnapshot {
    /// The version of the policy in force (see [`PolicyVersion`](crate::policy::PolicyVersion)).
    pub policy_version: String,
    /// Events accepted into the queue.
    pub submitted: u64,
    /// Events refused with `Busy` on arrival: the queue was full, or standing (admission
    /// control).
    pub rejected_busy: u64,
    /// Events answered `Busy` because they waited past their deadline.
    pub expired: u64,
    /// Repeated `(gate, seq)` answered from the record.
    pub replayed: u64,
    /// A `(gate, seq)` recorded for a different event, refused with `seq_reused`.
    pub seq_reused: u64,
    /// Events that failed closed on an internal error.
    pub internal_errors: u64,
    /// Group commits that failed (their events got an error, not a verdict).
    pub commit_failures: u64,
    /// Verdicts by decision and failing check, over every market.
    #[serde(flatten)]
    pub decisions: DecisionSnapshot,
    /// The same per market, in market order.
    pub markets: Vec<MarketStats>,
    /// Events waiting in the queue now.
    pub queue_depth: usize,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// Time from submit to a worker taking the event (µs).
    pub queue_wait_us: HistogramSnapshot,
    /// Matching and policy per batch (µs).
    pub matching_us: HistogramSnapshot,
    /// Group-commit latency (µs).
    pub commit_us: HistogramSnapshot,
    /// Submit to durable verdict (µs).
    pub end_to_end_us: HistogramSnapshot,
    /// Events per matcher batch.
    pub batch_size: HistogramSnapshot,
    /// Records per group commit.
    pub commit_size: HistogramSnapshot,
    /// The entry history: checkpoints, write-ahead log size, retention.
    pub history: crate::store::HistoryCounters,
    /// How far this node follows other nodes' registry writes (PostgreSQL store only).
    pub registry: Option<crate::store::RegistryFollowCounters>,
    /// How start-up read today's counters.
    pub counters_start: CountersStart,
}

impl PipelineStats {
    pub(crate) fn snapshot(&self, queue_depth: usize, queue_capacity: usize) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            policy_version: String::new(),
            submitted: get(&self.submitted),
            rejected_busy: get(&self.rejected_busy),
            expired: get(&self.expired),
            replayed: get(&self.replayed),
            seq_reused: get(&self.seq_reused),
            internal_errors: get(&self.internal_errors),
            commit_failures: get(&self.commit_failures),
            decisions: self.decisions.snapshot(),
            markets: self.market_snapshots(),
            queue_depth,
            queue_capacity,
            queue_wait_us: self.queue_wait.snapshot(),
            matching_us: self.matching.snapshot(),
            commit_us: self.commit.snapshot(),
            end_to_end_us: self.end_to_end.snapshot(),
            batch_size: self.batch_size.snapshot(),
            commit_size: self.commit_size.snapshot(),
            history: crate::store::HistoryCounters::default(),
            registry: None,
            counters_start: CountersStart::default(),
        }
    }
}

impl PipelineStats {
    fn market_snapshots(&self) -> Vec<MarketStats> {
        let mut markets: Vec<MarketStats> = self
            .per_market
            .iter()
            .map(|e| MarketStats {
                market: *e.key(),
                decisions: e.value().snapshot(),
            })
            .collect();
        markets.sort_by_key(|m| m.market);
        markets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_bound_the_values() {
        let h = LatencyHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        // p50 is 500 µs, reported as the upper edge of [256, 512).
        assert_eq!(s.p50, 511);
        // p99 is 990 µs, in [512, 1024).
        assert_eq!(s.p99, 1023);
        assert!((s.mean - 500.5).abs() < 1e-9);
    }

    #[test]
    fn empty_histogram_is_zero() {
        let s = LatencyHistogram::default().snapshot();
        assert_eq!((s.count, s.p50, s.p99), (0, 0, 0));
    }

    fn verdict(decision: Decision, failed: Option<CheckKind>) -> Verdict {
        use gatewarden_protocol::{Check, Display, DisplayColour, GateId, UnixMillis};
        Verdict {
            gate: GateId(1),
            seq: 1,
            decision,
            subject: None,
            score: None,
            checks: failed
                .into_iter()
                .map(|kind| Check {
                    kind,
                    outcome: Outcome::Fail,
                    value: None,
                    threshold: None,
                    detail: String::new(),
                })
                .collect(),
            display: Display {
                colour: DisplayColour::Red,
                text: String::new(),
            },
            decided_at: UnixMillis(0),
            replayed: false,
        }
    }

    #[test]
    fn verdicts_are_counted_overall_and_per_market() {
        let stats = PipelineStats::default();
        stats.count_verdict(&verdict(Decision::Admit, None), MarketId(2));
        stats.count_verdict(
            &verdict(Decision::Deny, Some(CheckKind::Temperature)),
            MarketId(2),
        );
        stats.count_verdict(&verdict(Decision::Admit, None), MarketId(1));
        let s = stats.snapshot(0, 1);
        assert_eq!((s.decisions.admit, s.decisions.deny), (2, 1));
        assert_eq!(s.decisions.failed_checks.get("temperature"), Some(&1));
        let markets: Vec<_> = s.markets.iter().map(|m| m.market).collect();
        assert_eq!(markets, [MarketId(1), MarketId(2)]);
        assert_eq!(s.markets[1].decisions.deny, 1);
        assert_eq!(s.markets[0].decisions.failed_checks.len(), 0);
        // The JSON is flat: `admit` at the top level and in each market.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["admit"], 2);
        assert_eq!(json["markets"][1]["failed_checks"]["temperature"], 1);
    }
}

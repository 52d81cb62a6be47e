//! The last five minutes of the engine's rates, one sample a second, kept by the server so
//! that a console opened in the middle of the rush draws its sparklines from history instead
//! of starting empty (`GET /api/v1/stats/history`).
//!
//! The engine's counters are cumulative; a sample is the difference between two snapshots a
//! second apart, computed the way the console computes its own live tiles.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use gatewarden_protocol::UnixMillis;
use serde::Serialize;

use crate::pipeline::StatsSnapshot;

/// Samples kept: five minutes at one a second.
pub(crate) const SAMPLES: usize = 300;
/// Time between samples.
pub(crate) const INTERVAL_MS: u64 = 1000;

/// One second of the engine's work.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct Sample {
    /// When the second ended (engine clock).
    pub(crate) at_ms: UnixMillis,
    /// Verdicts answered per second.
    pub(crate) verdicts_per_s: f64,
    /// Events refused with Busy (on arrival or past their deadline) per second.
    pub(crate) busy_per_s: f64,
    /// p99 end-to-end latency of the second's verdicts, as the upper edge of its log2 bucket,
    /// in ms; `None` when there were none.
    pub(crate) p99_ms: Option<f64>,
}

/// The cumulative counters a sample is taken against.
struct Counters {
    at: UnixMillis,
    verdicts: u64,
    busy: u64,
    end_to_end: Vec<u64>,
}

impl Counters {
    fn of(at: UnixMillis, s: &StatsSnapshot) -> Self {
        let d = &s.decisions;
        Self {
            at,
            verdicts: d.admit + d.deny + d.escalate,
            busy: s.rejected_busy + s.expired,
            end_to_end: s.end_to_end_us.buckets.clone(),
        }
    }
}

/// The ring of samples.
#[derive(Default)]
pub(crate) struct Recent {
    inner: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    last: Option<Counters>,
    samples: VecDeque<Sample>,
}

impl Recent {
    /// Takes a sample against the previous snapshot (the first call only sets the baseline).
    pub(crate) fn record(&self, now: UnixMillis, stats: &StatsSnapshot) {
        let current = Counters::of(now, stats);
        let mut ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(prev) = ring.last.take() {
            let dt_s = now.0.saturating_sub(prev.at.0) as f64 / 1000.0;
            if dt_s > 0.0 {
                let sample = Sample {
                    at_ms: now,
                    verdicts_per_s: current.verdicts.saturating_sub(prev.verdicts) as f64 / dt_s,
                    busy_per_s: current.busy.saturating_sub(prev.busy) as f64 / dt_s,
                    p99_ms: windowed_p99_us(&prev.end_to_end, &current.end_to_end)
                        .map(|us| us as f64 / 1000.0),
                };
                if ring.samples.len() == SAMPLES {
                    ring.samples.pop_front();
                }
                ring.samples.push_back(sample);
            }
        }
        ring.last = Some(current);
    }

    /// The samples, oldest first.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        let ring = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        ring.samples.iter().copied().collect()
    }
}

/// p99 of the values recorded between two snapshots of a log2 histogram, as the upper edge of
/// its bucket; `None` when nothing was recorded in between.
fn windowed_p99_us(before: &[u64], after: &[u64]) -> Option<u64> {
    let delta: Vec<u64> = after
        .iter()
        .enumerate()
        .map(|(i, c)| c.saturating_sub(before.get(i).copied().unwrap_or(0)))
        .collect();
    let count: u64 = delta.iter().sum();
    if count == 0 {
        return None;
    }
    // ceil(0.99 count), as the console computes it.
    let rank = (count - count / 100).max(1);
    let mut seen = 0;
    for (i, c) in delta.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some((1u64 << (i + 1).min(63)) - 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_of_a_window_is_the_bucket_holding_its_99th_percent() {
        assert_eq!(windowed_p99_us(&[], &[]), None);
        assert_eq!(windowed_p99_us(&[5, 5], &[5, 5]), None);
        // 100 new values: 99 in bucket 3 ([8, 16)), one in bucket 10.
        let before = vec![0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0];
        let after = vec![0, 0, 0, 109, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(windowed_p99_us(&before, &after), Some(15));
        // Two in the slow bucket out of 100: the 99th value is slow.
        let after = vec![0, 0, 0, 108, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(windowed_p99_us(&before, &after), Some(2047));
    }
}

//! The micro-batching rule, pure: no threads, no clock. Time arrives as an argument.
//!
//! A worker takes the first queued event, then keeps taking events until the batch holds
//! `max_events` or `max_wait` has passed since the first one arrived in the batch. Batching
//! lets one pass over the gallery serve many 1:N queries; the wait bounds what it costs the
//! first event in the batch.

use std::time::{Duration, Instant};

/// Limits of one micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most events in one batch (at least 1).
    pub max_events: usize,
    /// Longest the first event waits for company.
    pub max_wait: Duration,
}

impl BatchPolicy {
    /// A policy with at least one event per batch.
    pub fn new(max_events: usize, max_wait: Duration) -> Self {
        Self {
            max_events: max_events.max(1),
            max_wait,
        }
    }

    /// How long to keep waiting for more events, given the batch holds `len` events and the
    /// first was taken at `first_at`; `None` means close the batch now.
    pub fn wait_for_more(&self, len: usize, first_at: Instant, now: Instant) -> Option<Duration> {
        if len >= self.max_events {
            return None;
        }
        let deadline = first_at + self.max_wait;
        let left = deadline.saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self::new(64, Duration::from_millis(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    fn t0() -> Instant {
        crate::clock::ManualClock::new(crate::clock::UnixMillis(0)).instant()
    }

    #[test]
    fn closes_when_full() {
        let p = BatchPolicy::new(4, Duration::from_millis(5));
        let start = t0();
        assert!(p.wait_for_more(3, start, start).is_some());
        assert_eq!(p.wait_for_more(4, start, start), None);
        assert_eq!(p.wait_for_more(9, start, start), None);
    }

    #[test]
    fn closes_at_deadline_and_reports_time_left() {
        let p = BatchPolicy::new(64, Duration::from_millis(5));
        let start = t0();
        assert_eq!(
            p.wait_for_more(1, start, start + Duration::from_millis(2)),
            Some(Duration::from_millis(3))
        );
        assert_eq!(
            p.wait_for_more(1, start, start + Duration::from_millis(5)),
            None
        );
        assert_eq!(
            p.wait_for_more(1, start, start + Duration::from_millis(50)),
            None
        );
    }

    #[test]
    fn zero_wait_means_take_what_is_queued() {
        let p = BatchPolicy::new(64, Duration::ZERO);
        let start = t0();
        assert_eq!(p.wait_for_more(1, start, start), None);
    }

    #[test]
    fn at_least_one_event() {
        assert_eq!(BatchPolicy::new(0, Duration::ZERO).max_events, 1);
    }
}

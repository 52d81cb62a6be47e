//! Open-loop arrival schedules: when each event is *meant* to be sent, independent of how
//! fast the server answers.
//!
//! - `Constant`: evenly spaced at the target rate.
//! - `Poisson`: exponential gaps at the target rate (independent people walking up).
//! - `Rush`: a non-homogeneous Poisson process whose rate follows a raised cosine from 20% of
//!   the peak up to 100% at mid-run and back down: `λ(t) = peak · (0.2 + 0.8 · (1 − cos(2πt/T)) / 2)`.
//!   Arrivals are drawn at unit rate in the integrated-rate domain `Λ(t) = ∫λ` and mapped back
//!   through `Λ⁻¹` (the time-rescaling theorem), so the count in any window is Poisson with
//!   the right mean. The whole run carries `0.6 · peak · T` events on average.

use gatewarden::testing::Rng;

use crate::stream::Stream;

use super::Profile;

/// Lowest rate of the rush curve, as a fraction of the peak.
const RUSH_FLOOR: f64 = 0.2;

/// The intended send times (seconds from the start of the load), in increasing order.
#[derive(Debug)]
pub(crate) struct Arrivals {
    profile: Profile,
    rate: f64,
    duration_s: f64,
    rng: Rng,
    count: u64,
    /// Position in the integrated-rate domain (Poisson, Rush) or time (Constant).
    cursor: f64,
    /// Last time returned (Rush: the Newton iteration's starting point).
    last_t: f64,
}

impl Arrivals {
    /// A schedule at peak `rate` events/s over `duration_s` seconds.
    pub(crate) fn new(profile: Profile, rate: f64, duration_s: f64, seed: u64) -> Self {
        Self {
            profile,
            rate,
            duration_s,
            rng: Stream::Arrivals.rng(seed, 0),
            count: 0,
            cursor: 0.0,
            last_t: 0.0,
        }
    }

    /// The rate (events/s) the profile asks for at time `t`.
    pub(crate) fn rate_at(profile: Profile, rate: f64, duration_s: f64, t: f64) -> f64 {
        match profile {
            Profile::Constant | Profile::Poisson => rate,
            Profile::Rush => {
                let phase = std::f64::consts::TAU * t / duration_s;
                rate * (RUSH_FLOOR + (1.0 - RUSH_FLOOR) * (1.0 - phase.cos()) / 2.0)
            }
        }
    }

    /// `Λ(t)` of the rush curve, in units of events.
    fn rush_integral(&self, t: f64) -> f64 {
        let period = self.duration_s;
        let tau = std::f64::consts::TAU;
        let ramp = (1.0 - RUSH_FLOOR) / 2.0;
        self.rate * (RUSH_FLOOR * t + ramp * (t - period / tau * (tau * t / period).sin()))
    }

    /// `Λ⁻¹(target)` by Newton's method from the previous arrival (Λ is increasing and its
    /// slope is at least `0.2 · peak`, so the steps are bounded), clamped to the run.
    fn rush_inverse(&self, target: f64) -> f64 {
        let mut t = self.last_t;
        for _ in 0..50 {
            let f = self.rush_integral(t) - target;
            let slope = Self::rate_at(Profile::Rush, self.rate, self.duration_s, t);
            let next = (t - f / slope).clamp(self.last_t, self.duration_s);
            if (next - t).abs() < 1e-9 {
                return next;
            }
            t = next;
        }
        t
    }
}

impl Iterator for Arrivals {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        if !(self.rate > 0.0 && self.rate.is_finite() && self.duration_s > 0.0) {
            return None;
        }
        let t = match self.profile {
            Profile::Constant => self.count as f64 / self.rate,
            Profile::Poisson => {
                self.cursor += self.rng.exponential(1.0 / self.rate);
                self.cursor
            }
            Profile::Rush => {
                self.cursor += self.rng.exponential(1.0);
                if self.cursor >= self.rush_integral(self.duration_s) {
                    return None;
                }
                self.rush_inverse(self.cursor)
            }
        };
        if t >= self.duration_s {
            return None;
        }
        self.count += 1;
        self.last_t = t;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events per tenth of the run.
    fn deciles(profile: Profile, rate: f64, duration: f64) -> (Vec<f64>, usize) {
        let times: Vec<f64> = Arrivals::new(profile, rate, duration, 7).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{profile:?} is not sorted"
        );
        assert!(times.iter().all(|t| (0.0..duration).contains(t)));
        let mut bins = vec![0.0; 10];
        for t in &times {
            bins[((t / duration) * 10.0) as usize] += 1.0;
        }
        (bins, times.len())
    }

    #[test]
    fn constant_schedule_is_exact() {
        let times: Vec<f64> = Arrivals::new(Profile::Constant, 100.0, 2.0, 1).collect();
        assert_eq!(times.len(), 200);
        assert!((times[1] - 0.01).abs() < 1e-12);
    }

    #[test]
    fn poisson_schedule_has_the_rate_and_is_flat() {
        let (bins, n) = deciles(Profile::Poisson, 1000.0, 20.0);
        assert!(
            (n as f64 - 20_000.0).abs() < 5.0 * 20_000f64.sqrt(),
            "count {n}"
        );
        for b in bins {
            assert!((b - 2000.0).abs() < 5.0 * 2000f64.sqrt(), "decile {b}");
        }
    }

    #[test]
    fn rush_schedule_ramps_to_the_peak_and_back() {
        let (bins, n) = deciles(Profile::Rush, 1000.0, 60.0);
        let expected_total = 0.6 * 1000.0 * 60.0;
        assert!(
            (n as f64 - expected_total).abs() < 5.0 * expected_total.sqrt(),
            "count {n}"
        );
        // Expected events per decile: integral of λ over the tenth.
        let a = Arrivals::new(Profile::Rush, 1000.0, 60.0, 7);
        for (i, b) in bins.iter().enumerate() {
            let want = a.rush_integral((i + 1) as f64 * 6.0) - a.rush_integral(i as f64 * 6.0);
            assert!(
                (b - want).abs() < 5.0 * want.sqrt() + 1.0,
                "decile {i}: {b} vs {want}"
            );
        }
        // Shape: edges near 20% of the peak, middle near the peak, symmetric.
        assert!(bins[4] > 2.5 * bins[0] && bins[5] > 2.5 * bins[9]);
        assert!((bins[0] - bins[9]).abs() < 0.25 * bins[0]);
    }

    #[test]
    fn schedules_are_reproducible_and_bounded() {
        let a: Vec<f64> = Arrivals::new(Profile::Rush, 200.0, 5.0, 3).collect();
        let b: Vec<f64> = Arrivals::new(Profile::Rush, 200.0, 5.0, 3).collect();
        assert_eq!(a, b);
        assert_eq!(Arrivals::new(Profile::Poisson, 0.0, 5.0, 3).count(), 0);
        assert_eq!(Arrivals::new(Profile::Constant, 10.0, 0.0, 3).count(), 0);
        assert_eq!(Arrivals::rate_at(Profile::Rush, 100.0, 10.0, 0.0), 20.0);
        assert!((Arrivals::rate_at(Profile::Rush, 100.0, 10.0, 5.0) - 100.0).abs() < 1e-9);
    }
}

//! Time: the one place that reads the system clock, plus calendar helpers.
//!
//! Every other module takes time as an argument ([`UnixMillis`] for wall time, [`Instant`]
//! only inside the pipeline's batching deadline). Tests drive a [`ManualClock`].
//!
//! Markets live in a local time zone: "today" for sign-ins and entry frequency is a local
//! calendar day. The zone is a fixed UTC offset in minutes (Beijing is +480), configured once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use gatewarden_protocol::UnixMillis;

/// Milliseconds in one day.
pub const DAY_MS: u64 = 86_400_000;
/// Milliseconds in one hour.
pub const HOUR_MS: u64 = 3_600_000;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync {
    /// Wall-clock time.
    fn now(&self) -> UnixMillis;
    /// Monotonic time, for deadlines and latency.
    fn instant(&self) -> Instant;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned reader of the system clock
    fn now(&self) -> UnixMillis {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        UnixMillis(ms)
    }

    #[allow(clippy::disallowed_methods)] // the one sanctioned reader of the monotonic clock
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for deterministic tests.
#[derive(Debug)]
pub struct ManualClock {
    wall_ms: AtomicU64,
    origin: Instant,
    offset_ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: UnixMillis) -> Self {
        Self {
            wall_ms: AtomicU64::new(start.0),
            origin: SystemClock.instant(),
            offset_ms: AtomicU64::new(0),
        }
    }

    /// Moves both wall and monotonic time forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets wall time (monotonic time is unaffected).
    pub fn set(&self, now: UnixMillis) {
        self.wall_ms.store(now.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.wall_ms.load(Ordering::SeqCst))
    }

    fn instant(&self) -> Instant {
        self.origin + std::time::Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// A fixed offset from UTC, in minutes east (Beijing: +480).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct UtcOffset(pub i32);

impl UtcOffset {
    /// The offset in milliseconds (local = UTC + this).
    pub fn offset_ms(self) -> i64 {
        i64::from(self.0) * 60_000
    }

    /// Local milliseconds since the epoch; saturates instead of overflowing on absurd times
    /// (times come from gates and are not trusted).
    fn local_ms(self, t: UnixMillis) -> i64 {
        i64::try_from(t.0)
            .unwrap_or(i64::MAX)
            .saturating_add(self.offset_ms())
    }

    /// The local calendar day containing `t`, as days since 1970-01-01 (local).
    pub fn day_of(self, t: UnixMillis) -> i64 {
        self.local_ms(t).div_euclid(DAY_MS as i64)
    }

    /// The instant local day `day` starts.
    pub fn day_start(self, day: i64) -> UnixMillis {
        UnixMillis(
            day.saturating_mul(DAY_MS as i64)
                .saturating_sub(self.offset_ms())
                .max(0) as u64,
        )
    }

    /// Local day start and end (exclusive) around `t`.
    pub fn day_bounds(self, t: UnixMillis) -> (UnixMillis, UnixMillis) {
        let day = self.day_of(t);
        (self.day_start(day), self.day_start(day + 1))
    }

    /// Milliseconds since local midnight at `t`.
    pub fn time_of_day_ms(self, t: UnixMillis) -> u64 {
        self.local_ms(t).rem_euclid(DAY_MS as i64) as u64
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An error parsing a date or time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {input:?}: expected {expected}")]
pub struct ParseTimeError {
    what: &'static str,
    input: String,
    expected: &'static str,
}

/// Parses `YYYY-MM-DD` into a day number.
///
/// # Errors
/// A string not of that form, or a date that does not exist.
pub fn parse_day(s: &str) -> Result<i64, ParseTimeError> {
    let err = || ParseTimeError {
        what: "date",
        input: s.to_owned(),
        expected: "YYYY-MM-DD",
    };
    let mut parts = s.trim().splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(err());
    };
    let year: i64 = y.parse().map_err(|_| err())?;
    let month: u32 = m.parse().map_err(|_| err())?;
    let day: u32 = d.parse().map_err(|_| err())?;
    // Four-digit years only: a day far outside them is a typo, and its day number would
    // overflow the arithmetic below.
    if !(1..=9999).contains(&year) || !(1..=12).contains(&month) || day == 0 || day > 31 {
        return Err(err());
    }
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return Err(err());
    }
    Ok(days)
}

/// Formats a day number as `YYYY-MM-DD`.
pub fn format_day(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Formats `t` in local time as `YYYY-MM-DD HH:MM:SS`.
pub fn format_local(t: UnixMillis, offset: UtcOffset) -> String {
    let tod = offset.time_of_day_ms(t) / 1000;
    format!(
        "{} {:02}:{:02}:{:02}",
        format_day(offset.day_of(t)),
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    )
}

/// Parses a duration such as `30m`, `2h`, `45s`, `1d` or `500ms`.
///
/// # Errors
/// A number without a known unit, or no number.
pub fn parse_duration_ms(s: &str) -> Result<u64, ParseTimeError> {
    let err = || ParseTimeError {
        what: "duration",
        input: s.to_owned(),
        expected: "a number with a unit: ms, s, m, h or d (e.g. 30m)",
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        _ => return Err(err()),
    };
    n.checked_mul(scale).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips() {
        for days in [-800_000, -1, 0, 1, 19_000, 20_786, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(format_day(days_from_civil(2026, 11, 29)), "2026-11-29");
    }

    #[test]
    fn parse_day_rejects_impossible_dates() {
        assert!(parse_day("2026-02-29").is_err());
        assert!(parse_day("2024-02-29").is_ok());
        assert!(parse_day("2026-13-01").is_err());
        assert!(parse_day("yesterday").is_err());
        // Years outside four digits are typos, and must not overflow the day arithmetic.
        assert!(parse_day("99999999999999-01-01").is_err());
        assert!(parse_day("0-01-01").is_err());
        assert_eq!(format_day(parse_day("9999-12-31").unwrap()), "9999-12-31");
    }

    #[test]
    fn local_day_respects_offset() {
        let beijing = UtcOffset(480);
        // 2026-11-28 17:00 UTC is 2026-11-29 01:00 in Beijing.
        let t = UnixMillis(days_from_civil(2026, 11, 28) as u64 * DAY_MS + 17 * HOUR_MS);
        assert_eq!(format_day(beijing.day_of(t)), "2026-11-29");
        assert_eq!(format_day(UtcOffset(0).day_of(t)), "2026-11-28");
        let (start, end) = beijing.day_bounds(t);
        assert!(start <= t && t < end);
        assert_eq!(end.0 - start.0, DAY_MS);
        assert_eq!(format_local(t, beijing), "2026-11-29 01:00:00");
    }

    #[test]
    fn absurd_times_do_not_overflow() {
        let far = UnixMillis(u64::MAX);
        let offset = UtcOffset(840);
        let day = offset.day_of(far);
        assert!(offset.day_start(day) <= far);
        assert!(offset.time_of_day_ms(far) < DAY_MS);
    }

    #[test]
    fn parse_duration_units() {
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert!(parse_duration_ms("30").is_err());
        assert!(parse_duration_ms("m").is_err());
    }
}

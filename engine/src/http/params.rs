//! Query-string and path parameters: ids, time ranges, limits. Pure functions, so every rule
//! (and its message) is unit-tested; a bad value is a 400 that names it.

use std::collections::HashMap;

use gatewarden_protocol::UnixMillis;

use super::error::ApiError;
use crate::clock::{UtcOffset, format_day, parse_day};

/// Milliseconds per day.
pub(crate) const DAY_MS: u64 = 86_400_000;
/// The longest time range a query may cover.
pub(crate) const MAX_RANGE_DAYS: u64 = 366;
/// The widest contact window.
pub(crate) const MAX_WINDOW_S: u64 = 86_400;
/// The most verdicts one request returns.
pub(crate) const MAX_LIMIT: usize = 200;

/// A query string, checked against the names a route accepts.
#[derive(Debug)]
pub(crate) struct Params<'a> {
    map: &'a HashMap<String, String>,
}

impl<'a> Params<'a> {
    /// Refuses names the route does not take, so a typo is not silently ignored.
    pub(crate) fn new(
        map: &'a HashMap<String, String>,
        allowed: &[&str],
    ) -> Result<Self, ApiError> {
        let mut unknown: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| !allowed.contains(k))
            .collect();
        unknown.sort_unstable();
        if let Some(first) = unknown.first() {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {first:?}: this route takes {}",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        Ok(Self { map })
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.map.get(name).map(String::as_str)
    }

    /// An unsigned number in `range`, or `default` when absent.
    pub(crate) fn number(
        &self,
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        let n: u64 = text.trim().parse().map_err(|_| {
            ApiError::BadRequest(format!("{name} {text:?} is not a non-negative integer"))
        })?;
        if !range.contains(&n) {
            return Err(ApiError::BadRequest(format!(
                "{name} {n} is out of range: use {}..={}",
                range.start(),
                range.end()
            )));
        }
        Ok(n)
    }

    /// `[since, until)` from `since`/`until` (unix ms) or `day` (a local `YYYY-MM-DD`). With
    /// neither, `default`; with one end only, the other is `span` ms away from it (so
    /// `?until=<yesterday>` means the `span` before it, not "from yesterday until today").
    pub(crate) fn range(
        &self,
        offset: UtcOffset,
        default: (UnixMillis, UnixMillis),
        span: u64,
    ) -> Result<TimeRange, ApiError> {
        let (since, until) = match self.get("day") {
            Some(day) => {
                if self.get("since").is_some() || self.get("until").is_some() {
                    return Err(ApiError::BadRequest(
                        "give either day or since/until, not both".to_owned(),
                    ));
                }
                let d = day_number(day)?;
                (offset.day_start(d), offset.day_start(d + 1))
            }
            None => match (self.millis("since")?, self.millis("until")?) {
                (Some(since), Some(until)) => (since, until),
                (Some(since), None) => (since, UnixMillis(since.0.saturating_add(span))),
                (None, Some(until)) => (UnixMillis(until.0.saturating_sub(span)), until),
                (None, None) => default,
            },
        };
        TimeRange::new(since, until)
    }

    /// The local day from `day`, or the day containing `now`.
    pub(crate) fn day(&self, offset: UtcOffset, now: UnixMillis) -> Result<i64, ApiError> {
        match self.get("day") {
            Some(day) => day_number(day),
            None => Ok(offset.day_of(now)),
        }
    }

    fn millis(&self, name: &str) -> Result<Option<UnixMillis>, ApiError> {
        self.get(name)
            .map(|text| {
                text.trim().parse().map(UnixMillis).map_err(|_| {
                    ApiError::BadRequest(format!(
                        "{name} {text:?} is not a time: give unix milliseconds, or day=YYYY-MM-DD"
                    ))
                })
            })
            .transpose()
    }
}

/// A checked half-open time range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeRange {
    /// Start, inclusive.
    pub(crate) since: UnixMillis,
    /// End, exclusive.
    pub(crate) until: UnixMillis,
}

impl TimeRange {
    fn new(since: UnixMillis, until: UnixMillis) -> Result<Self, ApiError> {
        if since >= until {
            return Err(ApiError::BadRequest(format!(
                "since {} must be before until {}",
                since.0, until.0
            )));
        }
        if until.0 - since.0 > MAX_RANGE_DAYS * DAY_MS {
            return Err(ApiError::BadRequest(format!(
                "the range since {} until {} is longer than {MAX_RANGE_DAYS} days; ask for a \
                 shorter range",
                since.0, until.0
            )));
        }
        Ok(Self { since, until })
    }
}

/// A `YYYY-MM-DD` between years 1970 and 9999 as a day number.
pub(crate) fn day_number(text: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::BadRequest(format!("day {text:?} is not a date: expected YYYY-MM-DD"));
    // The shape check keeps absurd years away from the calendar arithmetic.
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !shaped || text < "1970-01-01" {
        return Err(bad());
    }
    parse_day(text).map_err(|_| bad())
}

/// A day number as `YYYY-MM-DD`.
pub(crate) fn day_text(day: i64) -> String {
    format_day(day)
}

/// A numeric path id, or a 400 naming it.
pub(crate) fn path_id<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| {
        ApiError::BadRequest(format!("{what} id {text:?} is not a non-negative integer"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const DEFAULT: (UnixMillis, UnixMillis) = (UnixMillis(1000), UnixMillis(2000));
    const BEIJING: UtcOffset = UtcOffset(480);

    fn range(pairs: &[(&str, &str)]) -> Result<TimeRange, ApiError> {
        let map = q(pairs);
        Params::new(&map, &["since", "until", "day"])?.range(BEIJING, DEFAULT, DAY_MS)
    }

    fn message(e: ApiError) -> String {
        assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        e.to_string()
    }

    #[test]
    fn range_defaults_and_overrides() {
        assert_eq!(
            range(&[]).unwrap(),
            TimeRange {
                since: UnixMillis(1000),
                until: UnixMillis(2000)
            }
        );
        assert_eq!(
            range(&[("since", "1500"), ("until", "1600")]).unwrap(),
            TimeRange {
                since: UnixMillis(1500),
                until: UnixMillis(1600)
            }
        );
        let r = range(&[("day", "2026-11-29")]).unwrap();
        // Beijing midnight is 16:00 UTC the day before.
        assert_eq!(r.since, UnixMillis(1_795_881_600_000));
        assert_eq!(r.until.0 - r.since.0, DAY_MS);
    }

    #[test]
    fn one_end_derives_the_other_from_it_not_from_today() {
        // Both ends far from DEFAULT: "yesterday" relative to a default of "today".
        let since = 1_795_881_600_000u64;
        assert_eq!(
            range(&[("since", &since.to_string())]).unwrap(),
            TimeRange {
                since: UnixMillis(since),
                until: UnixMillis(since + DAY_MS)
            }
        );
        assert_eq!(
            range(&[("until", &since.to_string())]).unwrap(),
            TimeRange {
                since: UnixMillis(since - DAY_MS),
                until: UnixMillis(since)
            }
        );
        // An end before the span starts at the epoch rather than failing.
        assert_eq!(
            range(&[("until", "5")]).unwrap(),
            TimeRange {
                since: UnixMillis(0),
                until: UnixMillis(5)
            }
        );
        // The verdicts route's span is a week.
        let map = q(&[("until", &since.to_string())]);
        let week = Params::new(&map, &["until"])
            .unwrap()
            .range(BEIJING, DEFAULT, 7 * DAY_MS)
            .unwrap();
        assert_eq!(week.since, UnixMillis(since - 7 * DAY_MS));
    }

    #[test]
    fn bad_ranges_name_the_value() {
        assert!(message(range(&[("since", "abc")]).unwrap_err()).contains("\"abc\""));
        assert!(
            message(range(&[("since", "3000"), ("until", "2000")]).unwrap_err()).contains("3000")
        );
        assert!(message(range(&[("day", "2026-02-30")]).unwrap_err()).contains("2026-02-30"));
        assert!(message(range(&[("day", "99999-01-01")]).unwrap_err()).contains("99999"));
        assert!(
            message(range(&[("day", "2026-01-01"), ("since", "1")]).unwrap_err())
                .contains("either")
        );
        let long = (MAX_RANGE_DAYS + 1) * DAY_MS;
        assert!(
            message(range(&[("since", "0"), ("until", &long.to_string())]).unwrap_err())
                .contains("days")
        );
        assert!(message(range(&[("until", "2000"), ("x", "1")]).unwrap_err()).contains("\"x\""));
    }

    #[test]
    fn numbers_are_checked() {
        let map = q(&[("limit", "500")]);
        let p = Params::new(&map, &["limit"]).unwrap();
        assert!(message(p.number("limit", 20, 1..=200).unwrap_err()).contains("500"));
        let map = q(&[("limit", "-1")]);
        let p = Params::new(&map, &["limit"]).unwrap();
        assert!(message(p.number("limit", 20, 1..=200).unwrap_err()).contains("-1"));
        let map = q(&[]);
        let p = Params::new(&map, &["limit"]).unwrap();
        assert_eq!(p.number("limit", 20, 1..=200).unwrap(), 20);
        assert!(message(path_id::<u64>("subject", "x1").unwrap_err()).contains("x1"));
        assert_eq!(path_id::<u32>("market", "7").unwrap(), 7);
    }
}

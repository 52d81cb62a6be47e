//! The typed values a policy file holds. Each type checks its own range while it is being
//! deserialized (parse, don't validate), so a bad value is refused with the span of the very
//! key that holds it, and [`decide`](super::decide()) never sees an out-of-range threshold.

use std::fmt;
use std::marker::PhantomData;

use gatewarden_protocol::CodeColour;
use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer, IntoDeserializer, Visitor};

use crate::clock::UnixMillis;

/// A real-valued threshold: compared in `f32` (the type of scores and readings), reported in
/// `f64` exactly as written in the file, so a verdict shows `0.45`, not `0.44999998807907104`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Threshold {
    /// What values are compared against.
    pub(crate) cmp: f32,
    /// What a check reports as its threshold.
    pub(crate) report: f64,
}

impl Threshold {
    fn new(v: f64) -> Self {
        Self {
            cmp: v as f32,
            report: v,
        }
    }
}

/// Defines a [`Threshold`] newtype that refuses values outside `[lo, hi]` (and NaN).
macro_rules! ranged_threshold {
    ($(#[$doc:meta])* $name:ident, $lo:expr, $hi:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
        #[serde(try_from = "f64")]
        pub(crate) struct $name(pub(crate) Threshold);

        impl TryFrom<f64> for $name {
            type Error = String;

            fn try_from(v: f64) -> Result<Self, String> {
                // `contains` is false for NaN, so NaN is refused here too.
                if ($lo..=$hi).contains(&v) {
                    Ok(Self(Threshold::new(v)))
                } else {
                    Err(format!("{} {v} is outside [{}, {}]", $what, $lo, $hi))
                }
            }
        }
    };
}

ranged_threshold!(
    /// A cosine-similarity threshold.
    Score, -1.0, 1.0, "cosine score"
);
ranged_threshold!(
    /// How far below a score threshold a score escalates instead of failing.
    Band, 0.0, 1.0, "borderline band"
);
ranged_threshold!(
    /// Required lead of the best subject over the best other subject (1:N).
    Margin, 0.0, 2.0, "match margin"
);
ranged_threshold!(
    /// A liveness minimum (liveness scores lie in [0, 1]).
    Unit, 0.0, 1.0, "liveness minimum"
);
ranged_threshold!(
    /// A body-temperature ceiling in °C.
    Celsius, 30.0, 45.0, "temperature ceiling (°C)"
);

/// Defines an integer newtype that refuses values outside `[lo, hi]`.
macro_rules! ranged_int {
    ($(#[$doc:meta])* $name:ident($inner:ty), $lo:expr, $hi:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "u64")]
        pub(crate) struct $name(pub(crate) $inner);

        impl TryFrom<u64> for $name {
            type Error = String;

            fn try_from(v: u64) -> Result<Self, String> {
                if ($lo..=$hi).contains(&v) {
                    // In range, so the narrowing cannot fail; map_err keeps it panic-free.
                    <$inner>::try_from(v).map(Self).map_err(|e| e.to_string())
                } else {
                    Err(format!("{} {v} is outside [{}, {}]", $what, $lo, $hi))
                }
            }
        }
    };
}

ranged_int!(
    /// A test-age limit in hours (at most 30 days).
    Hours(u32), 1, 720, "test age (hours)"
);
ranged_int!(
    /// The oldest health or travel code accepted, in hours since the record's update (at most
    /// 90 days).
    CodeAge(u32), 1, 2160, "code age (hours)"
);
ranged_int!(
    /// Vaccine doses.
    Doses(u8), 0, 10, "vaccine doses"
);
ranged_int!(
    /// A count cap (entries per day, people in a market). Zero would shut everyone out:
    /// close the schedule instead.
    Cap(u32), 1, 100_000_000, "cap"
);

/// A check that can be switched off with the string `"off"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OffOr<T> {
    /// The check does not run (reports NotChecked).
    Off,
    /// The check runs with this setting.
    On(T),
}

impl<T: Copy> OffOr<T> {
    /// The setting, if the check is on.
    pub(crate) fn on(&self) -> Option<T> {
        match self {
            Self::Off => None,
            Self::On(v) => Some(*v),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OffOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OffOrVisitor(PhantomData))
    }
}

/// Accepts `"off"`, or hands whatever else was written to `T`'s own deserializer.
struct OffOrVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OffOrVisitor<T> {
    type Value = OffOr<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a setting or \"off\"")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        if s == "off" {
            Ok(OffOr::Off)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(s), &self))
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        T::deserialize(v.into_deserializer()).map(OffOr::On)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        T::deserialize(v.into_deserializer()).map(OffOr::On)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        T::deserialize(v.into_deserializer()).map(OffOr::On)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        T::deserialize(v.into_deserializer()).map(OffOr::On)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::deserialize(SeqAccessDeserializer::new(seq)).map(OffOr::On)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(OffOr::On)
    }
}

/// A colour as written in a policy file.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ColourName {
    Green,
    Yellow,
    Red,
}

impl From<ColourName> for CodeColour {
    fn from(c: ColourName) -> Self {
        match c {
            ColourName::Green => Self::Green,
            ColourName::Yellow => Self::Yellow,
            ColourName::Red => Self::Red,
        }
    }
}

/// One bit per colour, so a check is a mask test.
fn colour_bit(c: CodeColour) -> u8 {
    match c {
        CodeColour::Green => 1,
        CodeColour::Yellow => 2,
        CodeColour::Red => 4,
    }
}

/// What a health- or travel-code colour leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CodeVerdict {
    /// The colour is allowed.
    Pass,
    /// The colour goes to staff.
    Escalate,
    /// The colour is refused.
    Fail,
}

/// `{ pass = ["green"], escalate = ["yellow"] }`: colours in neither list fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCodeRule")]
pub(crate) struct CodeRule {
    pass: u8,
    escalate: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCodeRule {
    pass: Vec<ColourName>,
    #[serde(default)]
    escalate: Vec<ColourName>,
}

impl TryFrom<RawCodeRule> for CodeRule {
    type Error = String;

    fn try_from(raw: RawCodeRule) -> Result<Self, String> {
        let mask = |list: &[ColourName]| {
            list.iter()
                .fold(0u8, |m, &c| m | colour_bit(CodeColour::from(c)))
        };
        let (pass, escalate) = (mask(&raw.pass), mask(&raw.escalate));
        if pass & escalate != 0 {
            return Err("a colour is listed under both `pass` and `escalate`".to_owned());
        }
        Ok(Self { pass, escalate })
    }
}

impl CodeRule {
    /// The colours that lead to `verdict`, as the policy file names them.
    pub(crate) fn colours(&self, verdict: CodeVerdict) -> Vec<&'static str> {
        [
            (CodeColour::Green, "green"),
            (CodeColour::Yellow, "yellow"),
            (CodeColour::Red, "red"),
        ]
        .into_iter()
        .filter(|(c, _)| self.judge(*c) == verdict)
        .map(|(_, name)| name)
        .collect()
    }

    /// What `colour` leads to under this rule.
    pub(crate) fn judge(&self, colour: CodeColour) -> CodeVerdict {
        let bit = colour_bit(colour);
        if self.pass & bit != 0 {
            CodeVerdict::Pass
        } else if self.escalate & bit != 0 {
            CodeVerdict::Escalate
        } else {
            CodeVerdict::Fail
        }
    }
}

/// What a soft failure leads to: an entry at the occupancy cap, a stale health or travel
/// code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Refusal {
    /// Refuse the entry.
    Deny,
    /// Send the entry to staff.
    Escalate,
}

impl Refusal {
    /// The word the policy file uses.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Escalate => "escalate",
        }
    }
}

/// Minutes in a day; a window may end at `24:00`.
const DAY_MINUTES: u16 = 24 * 60;

/// A daily window of local time, `"06:00-20:00"`. A window whose end is before its start
/// wraps past midnight (`"22:00-06:00"`). The start is inside, the end is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct Window {
    start_min: u16,
    end_min: u16,
}

impl Window {
    /// True when `minute` (minutes since local midnight) lies in the window.
    pub(crate) fn contains(&self, minute: u16) -> bool {
        if self.start_min < self.end_min {
            (self.start_min..self.end_min).contains(&minute)
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| (m / 60, m % 60);
        let ((sh, sm), (eh, em)) = (hm(self.start_min), hm(self.end_min));
        write!(f, "{sh:02}:{sm:02}-{eh:02}:{em:02}")
    }
}

/// Parses `HH:MM` into minutes since midnight; `24:00` only when `end` is set.
fn parse_clock(s: &str, end: bool) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let two_digits = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    let minutes = h * 60 + m;
    let ok = m < 60 && (h < 24 || (end && minutes == DAY_MINUTES));
    ok.then_some(minutes)
}

impl TryFrom<String> for Window {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("schedule window {s:?} is not of the form \"HH:MM-HH:MM\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let start_min = parse_clock(a.trim(), false).ok_or_else(bad)?;
        let end_min = parse_clock(b.trim(), true).ok_or_else(bad)?;
        if start_min == end_min % DAY_MINUTES {
            return Err(format!(
                "schedule window {s:?} is empty; for no time limit write schedule = \"always\""
            ));
        }
        Ok(Self { start_min, end_min })
    }
}

/// Most windows in one schedule (keeps a typo from becoming a huge list).
const MAX_WINDOWS: usize = 16;

/// When a category may pass: `"always"`, or a list of daily windows in local time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// No time limit (the check reports NotChecked).
    Always,
    /// Only within one of these windows.
    Windows(Vec<Window>),
}

impl Schedule {
    /// True when `minute` lies in the schedule.
    pub(crate) fn is_open(&self, minute: u16) -> bool {
        match self {
            Self::Always => true,
            Self::Windows(w) => w.iter().any(|w| w.contains(minute)),
        }
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScheduleVisitor)
    }
}

struct ScheduleVisitor;

impl<'de> Visitor<'de> for ScheduleVisitor {
    type Value = Schedule;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"always\" or a list of windows such as [\"06:00-20:00\"]")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Schedule, E> {
        if s == "always" {
            Ok(Schedule::Always)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(s), &self))
        }
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Schedule, A::Error> {
        let mut windows = Vec::new();
        while let Some(w) = seq.next_element::<Window>()? {
            if windows.len() == MAX_WINDOWS {
                return Err(de::Error::custom(format!(
                    "a schedule has at most {MAX_WINDOWS} windows"
                )));
            }
            windows.push(w);
        }
        if windows.is_empty() {
            return Err(de::Error::custom(
                "an empty schedule would never open; list windows or write \"always\"",
            ));
        }
        Ok(Schedule::Windows(windows))
    }
}

/// A market id written as a table key (`[markets.7]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct MarketKey(pub(crate) u32);

impl TryFrom<String> for MarketKey {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        // Canonical decimal only, so `[markets.7]` and `[markets.07]` cannot both name 7.
        match s.parse::<u32>() {
            Ok(n) if n.to_string() == s => Ok(Self(n)),
            _ => Err(format!(
                "market id {s:?} is not a plain number from 0 to {} (no sign, no leading zeros)",
                u32::MAX
            )),
        }
    }
}

/// Milliseconds since local midnight at `t`, in minutes. Computed in `i128` so that no
/// instant, however far off, can overflow (the policy must not panic on any input).
pub(crate) fn local_minute(t: UnixMillis, utc_offset_minutes: i32) -> u16 {
    let local_ms = i128::from(t.0) + i128::from(utc_offset_minutes) * 60_000;
    let minute = local_ms.rem_euclid(86_400_000) / 60_000;
    // rem_euclid keeps it in [0, 1440), which fits u16.
    u16::try_from(minute).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_parses_and_wraps() {
        let day = Window::try_from("06:00-20:00".to_owned()).unwrap();
        assert!(day.contains(6 * 60));
        assert!(day.contains(19 * 60 + 59));
        assert!(!day.contains(20 * 60));
        assert!(!day.contains(5 * 60 + 59));
        let night = Window::try_from("22:00-06:00".to_owned()).unwrap();
        assert!(night.contains(23 * 60));
        assert!(night.contains(0));
        assert!(!night.contains(12 * 60));
        let late = Window::try_from("12:00-24:00".to_owned()).unwrap();
        assert!(late.contains(23 * 60 + 59));
        assert!(!late.contains(0));
    }

    #[test]
    fn window_rejects_bad_forms() {
        for bad in [
            "6:00-20:00",
            "06:00",
            "25:00-26:00",
            "06:60-07:00",
            "24:00-06:00",
            "08:00-08:00",
            "00:00-24:00",
            "ab:cd-ef:gh",
            "+6:00-20:00",
        ] {
            assert!(Window::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn code_rule_judges_colours() {
        let rule = CodeRule::try_from(RawCodeRule {
            pass: vec![ColourName::Green],
            escalate: vec![ColourName::Yellow],
        })
        .unwrap();
        assert_eq!(rule.judge(CodeColour::Green), CodeVerdict::Pass);
        assert_eq!(rule.judge(CodeColour::Yellow), CodeVerdict::Escalate);
        assert_eq!(rule.judge(CodeColour::Red), CodeVerdict::Fail);
    }

    #[test]
    fn window_displays_as_written() {
        for text in ["06:00-20:00", "22:30-06:05", "12:00-24:00"] {
            let w = Window::try_from(text.to_owned()).unwrap();
            assert_eq!(w.to_string(), text);
        }
    }

    #[test]
    fn code_rule_rejects_colour_in_both_lists() {
        let raw = RawCodeRule {
            pass: vec![ColourName::Green, ColourName::Yellow],
            escalate: vec![ColourName::Yellow],
        };
        assert!(CodeRule::try_from(raw).is_err());
    }

    #[test]
    fn ranges_refuse_nan_and_out_of_range() {
        assert!(Score::try_from(f64::NAN).is_err());
        assert!(Score::try_from(1.01).is_err());
        assert!(Score::try_from(-1.0).is_ok());
        assert!(Celsius::try_from(29.9).is_err());
        assert!(Celsius::try_from(37.3).is_ok());
        assert!(Cap::try_from(0).is_err());
        assert!(Hours::try_from(721).is_err());
        assert!(Doses::try_from(11).is_err());
        assert!(CodeAge::try_from(0).is_err());
        assert!(CodeAge::try_from(2161).is_err());
        assert!(CodeAge::try_from(168).is_ok());
    }

    #[test]
    fn local_minute_applies_offset_and_never_overflows() {
        // 2026-01-01 00:00 UTC is 08:00 in Beijing.
        let t = UnixMillis(1_767_225_600_000);
        assert_eq!(local_minute(t, 0), 0);
        assert_eq!(local_minute(t, 480), 480);
        assert_eq!(local_minute(t, -60), 23 * 60);
        assert!(local_minute(UnixMillis(u64::MAX), i32::MAX) < 1440);
        assert!(local_minute(UnixMillis(0), i32::MIN) < 1440);
    }
}

//! The compact entry record: a verdict's checks and screen text in a few dozen bytes.
//!
//! A verdict's checks repeat from one entry to the next: the same kind, outcome, threshold and
//! explanation ("Outside assigned zone"), with only the measured value changing. So each
//! partition keeps a dictionary (`dict`) of *forms*: a check without its value, or a screen
//! (colour and text). A record's body names forms by their dictionary id and carries only the
//! values:
//!
//! ```text
//! body   = version:u8 (2)  display:varint  policy:varint  checks:varint  check*
//!          (version 1, written before policy versions were recorded, has no policy field)
//! policy = 0 (no policy version) | 1 + the dictionary id of a policy form
//! check  = form:varint  value            (value as the form's value kind says)
//! value  = nothing | varint (a whole number) | f32 LE | f64 LE
//!
//! form (dictionary bytes) =
//!   'C' kind:u8 outcome:u8 value_kind:u8 threshold_kind:u8 [threshold:f64 LE] detail:utf8
//!   'D' colour:u8 text:utf8
//!   'P' version:utf8             (the version of the policy that decided)
//! ```
//!
//! Every value round-trips exactly: a value is stored as a varint or an f32 only when that
//! representation gives back the same f64 bit for bit. Decoding never trusts the bytes: a
//! truncated body, an unknown code or a dangling id is a typed error, never a panic.

use gatewarden_protocol::{Check, CheckKind, Display, DisplayColour, Outcome};

/// Version byte of the body layout above.
const BODY_VERSION: u8 = 2;
/// The first layout, without the policy field; still read.
const BODY_VERSION_1: u8 = 1;
/// Tag of a check form.
const FORM_CHECK: u8 = b'C';
/// Tag of a screen form.
const FORM_DISPLAY: u8 = b'D';
/// Tag of a policy-version form.
const FORM_POLICY: u8 = b'P';

/// How a check's value is stored in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    None = 0,
    Varint = 1,
    F32 = 2,
    F64 = 3,
}

impl ValueKind {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::None,
            1 => Self::Varint,
            2 => Self::F32,
            3 => Self::F64,
            _ => return None,
        })
    }

    /// The smallest exact representation of `value`.
    fn of(value: Option<f64>) -> Self {
        let Some(v) = value else {
            return Self::None;
        };
        // 2^53: every whole number below it is exact in an f64.
        let whole = (0.0..9_007_199_254_740_992.0).contains(&v) && v.fract() == 0.0;
        if whole && !(v == 0.0 && v.is_sign_negative()) {
            Self::Varint
        } else if f64::from(v as f32).to_bits() == v.to_bits() {
            Self::F32
        } else {
            Self::F64
        }
    }
}

/// Why a body or a form does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DecodeError(pub(crate) String);

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

/// The dictionary bytes of a check without its value.
pub(crate) fn check_form(check: &Check) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + check.detail.len());
    out.push(FORM_CHECK);
    out.push(check.kind.code());
    out.push(check.outcome.code());
    out.push(ValueKind::of(check.value) as u8);
    match check.threshold {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
    out.extend_from_slice(check.detail.as_bytes());
    out
}

/// The dictionary bytes of a screen.
pub(crate) fn display_form(display: &Display) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + display.text.len());
    out.push(FORM_DISPLAY);
    out.push(display.colour.code());
    out.extend_from_slice(display.text.as_bytes());
    out
}

/// The dictionary bytes of a policy version.
pub(crate) fn policy_form(version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + version.len());
    out.push(FORM_POLICY);
    out.extend_from_slice(version.as_bytes());
    out
}

/// A decoded form.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Form {
    /// A check without its value, and how its value is stored.
    Check {
        kind: CheckKind,
        outcome: Outcome,
        value: ValueKindCode,
        threshold: Option<f64>,
        detail: String,
    },
    /// A screen.
    Display(Display),
    /// The version of the policy that decided.
    Policy(String),
}

/// A [`ValueKind`], opaque outside this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ValueKindCode(ValueKind);

/// Decodes dictionary bytes.
pub(crate) fn decode_form(bytes: &[u8]) -> Result<Form, DecodeError> {
    let mut r = Reader(bytes);
    match r.u8()? {
        FORM_CHECK => {
            let kind = r.u8()?;
            let kind = CheckKind::from_code(kind).ok_or_else(|| bad(format!("check {kind}")))?;
            let outcome = r.u8()?;
            let outcome =
                Outcome::from_code(outcome).ok_or_else(|| bad(format!("outcome {outcome}")))?;
            let value = r.u8()?;
            let value =
                ValueKind::from_code(value).ok_or_else(|| bad(format!("value kind {value}")))?;
            let threshold = match r.u8()? {
                0 => None,
                1 => Some(r.f64()?),
                t => return Err(bad(format!("threshold kind {t}"))),
            };
            Ok(Form::Check {
                kind,
                outcome,
                value: ValueKindCode(value),
                threshold,
                detail: r.rest_utf8()?,
            })
        }
        FORM_DISPLAY => {
            let colour = r.u8()?;
            let colour = DisplayColour::from_code(colour)
                .ok_or_else(|| bad(format!("screen colour {colour}")))?;
            Ok(Form::Display(Display {
                colour,
                text: r.rest_utf8()?,
            }))
        }
        FORM_POLICY => Ok(Form::Policy(r.rest_utf8()?)),
        tag => Err(bad(format!("form tag {tag}"))),
    }
}

/// Encodes a body: `display`, `policy` and `checks` are the dictionary ids of the verdict's
/// forms, in order; the values come from the checks themselves.
pub(crate) fn encode_body(
    out: &mut Vec<u8>,
    display: u32,
    policy: Option<u32>,
    checks: &[(u32, &Check)],
) {
    out.push(BODY_VERSION);
    put_varint(out, u64::from(display));
    put_varint(out, policy.map_or(0, |id| u64::from(id) + 1));
    put_varint(out, checks.len() as u64);
    for &(form, check) in checks {
        put_varint(out, u64::from(form));
        match (ValueKind::of(check.value), check.value) {
            (ValueKind::Varint, Some(v)) => put_varint(out, v as u64),
            (ValueKind::F32, Some(v)) => out.extend_from_slice(&(v as f32).to_le_bytes()),
            (ValueKind::F64, Some(v)) => out.extend_from_slice(&v.to_le_bytes()),
            _ => {}
        }
    }
}

/// A decoded body.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Body {
    /// What the gate screen showed.
    pub(crate) display: Display,
    /// The checks, in policy order.
    pub(crate) checks: Vec<Check>,
    /// The version of the policy that decided; `None` for version-1 bodies and for verdicts
    /// recorded without one.
    pub(crate) policy: Option<String>,
}

/// Decodes a body; `form` resolves a dictionary id.
pub(crate) fn decode_body(
    body: &[u8],
    mut form: impl FnMut(u32) -> Result<Form, DecodeError>,
) -> Result<Body, DecodeError> {
    let mut r = Reader(body);
    let version = r.u8()?;
    if version != BODY_VERSION && version != BODY_VERSION_1 {
        return Err(bad(format!("body version {version}")));
    }
    let Form::Display(display) = form(r.id()?)? else {
        return Err(bad("another form where the screen belongs"));
    };
    let policy = match version {
        BODY_VERSION_1 => None,
        _ => match r.varint()? {
            0 => None,
            n => {
                let id = u32::try_from(n - 1).map_err(|_| bad(format!("form id {}", n - 1)))?;
                let Form::Policy(v) = form(id)? else {
                    return Err(bad("another form where the policy version belongs"));
                };
                Some(v)
            }
        },
    };
    let n = r.varint()?;
    // Each check takes at least one byte; a larger count is a lie, not an allocation.
    if n > r.0.len() as u64 {
        return Err(bad(format!("{n} checks in {} bytes", r.0.len())));
    }
    let mut checks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let Form::Check {
            kind,
            outcome,
            value,
            threshold,
            detail,
        } = form(r.id()?)?
        else {
            return Err(bad("another form where a check belongs"));
        };
        let value = match value.0 {
            ValueKind::None => None,
            ValueKind::Varint => Some(r.varint()? as f64),
            ValueKind::F32 => Some(f64::from(r.f32()?)),
            ValueKind::F64 => Some(r.f64()?),
        };
        checks.push(Check {
            kind,
            outcome,
            value,
            threshold,
            detail,
        });
    }
    if !r.0.is_empty() {
        return Err(bad(format!("{} bytes after the last check", r.0.len())));
    }
    Ok(Body {
        display,
        checks,
        policy,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| bad("truncated"))?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn f32(&mut self) -> Result<f32, DecodeError> {
        Ok(f32::from_le_bytes(self.take()?))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_le_bytes(self.take()?))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(bad("varint overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn id(&mut self) -> Result<u32, DecodeError> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| bad(format!("form id {v}")))
    }

    fn rest_utf8(&mut self) -> Result<String, DecodeError> {
        let s = std::str::from_utf8(self.0).map_err(|_| bad("text is not UTF-8"))?;
        self.0 = &[];
        Ok(s.to_owned())
    }
}

/// See `testing::decode_entry_record`.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn decode_for_fuzzing(data: &[u8]) -> bool {
    let mut rest = data;
    let Some((&n, tail)) = rest.split_first() else {
        return false;
    };
    rest = tail;
    let mut forms = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let Some((&len, tail)) = rest.split_first() else {
            return false;
        };
        let Some((form, tail)) = tail.split_at_checked(usize::from(len)) else {
            return false;
        };
        forms.push(form);
        rest = tail;
    }
    decode_body(rest, |id| {
        forms
            .get(id as usize)
            .ok_or_else(|| bad(format!("no form {id}")))
            .and_then(|b| decode_form(b))
    })
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: CheckKind, value: Option<f64>, threshold: Option<f64>, detail: &str) -> Check {
        Check {
            kind,
            outcome: Outcome::Pass,
            value,
            threshold,
            detail: detail.to_owned(),
        }
    }

    /// Encodes with a dictionary built on the fly, then decodes through it.
    fn round_trip(display: &Display, checks: &[Check]) -> (Display, Vec<Check>, usize) {
        let mut dict: Vec<Vec<u8>> = Vec::new();
        let mut intern = |bytes: Vec<u8>| -> u32 {
            if let Some(i) = dict.iter().position(|b| *b == bytes) {
                return i as u32;
            }
            dict.push(bytes);
            (dict.len() - 1) as u32
        };
        let display_id = intern(display_form(display));
        let policy_id = intern(policy_form("0123456789ab"));
        let ids: Vec<(u32, &Check)> = checks.iter().map(|c| (intern(check_form(c)), c)).collect();
        let mut body = Vec::new();
        encode_body(&mut body, display_id, Some(policy_id), &ids);
        let decoded = decode_body(&body, |id| decode_form(&dict[id as usize])).unwrap();
        assert_eq!(decoded.policy.as_deref(), Some("0123456789ab"));
        (decoded.display, decoded.checks, body.len())
    }

    #[test]
    fn version_1_bodies_still_decode_without_a_policy() {
        let display = Display {
            colour: DisplayColour::Red,
            text: "Denied".into(),
        };
        let c = check(CheckKind::Temperature, Some(38.0), Some(37.3), "");
        let dict = [display_form(&display), check_form(&c)];
        // Written by the first layout: version 1, display 0, one check of form 1, varint 38.
        let body = [BODY_VERSION_1, 0, 1, 1, 38];
        let decoded = decode_body(&body, |id| decode_form(&dict[id as usize])).unwrap();
        assert_eq!(decoded.display, display);
        assert_eq!(decoded.checks, vec![c.clone()]);
        assert_eq!(decoded.policy, None);
        // A version-2 body without a policy version.
        let mut v2 = Vec::new();
        encode_body(&mut v2, 0, None, &[(1, &c)]);
        let decoded = decode_body(&v2, |id| decode_form(&dict[id as usize])).unwrap();
        assert_eq!((decoded.policy, decoded.checks), (None, vec![c.clone()]));
        // A policy field naming a screen form is damage, not a version.
        let mut wrong = Vec::new();
        encode_body(&mut wrong, 0, Some(0), &[(1, &c)]);
        assert!(decode_body(&wrong, |id| decode_form(&dict[id as usize])).is_err());
    }

    #[test]
    fn values_round_trip_bit_for_bit() {
        let values = [
            0.0,
            -0.0,
            1.0,
            3.0,
            36.6,
            f64::from(36.6f32),
            0.8312,
            f64::from(0.8312f32),
            -4.0,
            1e300,
            9_007_199_254_740_992.0,
            f64::INFINITY,
            f64::MIN_POSITIVE,
        ];
        let display = Display {
            colour: DisplayColour::Green,
            text: "Welcome".into(),
        };
        for v in values {
            let checks = [check(CheckKind::Temperature, Some(v), Some(37.3), "")];
            let (d, c, _) = round_trip(&display, &checks);
            assert_eq!(d, display);
            assert_eq!(c[0].value.unwrap().to_bits(), v.to_bits(), "value {v}");
            assert_eq!(c, checks);
        }
    }

    #[test]
    fn the_fuzzing_entry_decodes_a_real_record() {
        let display = Display {
            colour: DisplayColour::Yellow,
            text: "Wait".into(),
        };
        let c = check(CheckKind::Liveness, Some(0.5), Some(0.6), "low");
        let (d, f) = (display_form(&display), check_form(&c));
        let mut input = vec![2, d.len() as u8];
        input.extend_from_slice(&d);
        input.push(f.len() as u8);
        input.extend_from_slice(&f);
        encode_body(&mut input, 0, None, &[(1, &c)]);
        assert!(decode_for_fuzzing(&input));
        assert!(!decode_for_fuzzing(&input[..input.len() - 1]));
        assert!(!decode_for_fuzzing(&[]));
    }

    #[test]
    fn a_typical_verdict_body_is_small() {
        let checks: Vec<Check> = [
            (CheckKind::FaceMatch, Some(f64::from(0.83f32)), Some(0.45)),
            (CheckKind::MatchMargin, None, Some(0.05)),
            (CheckKind::Liveness, Some(f64::from(0.97f32)), Some(0.6)),
            (CheckKind::SubjectStatus, None, None),
            (CheckKind::Blocklist, None, None),
            (CheckKind::Validity, None, None),
            (CheckKind::Market, None, None),
            (CheckKind::Zone, None, None),
            (CheckKind::Temperature, Some(f64::from(36.5f32)), Some(37.3)),
            (CheckKind::TestAge, Some(30.25), Some(72.0)),
            (CheckKind::Vaccination, Some(3.0), Some(2.0)),
            (CheckKind::Occupancy, Some(412.0), Some(2000.0)),
        ]
        .into_iter()
        .map(|(k, v, t)| check(k, v, t, ""))
        .collect();
        let display = Display {
            colour: DisplayColour::Green,
            text: "Welcome".into(),
        };
        let (_, decoded, len) = round_trip(&display, &checks);
        assert_eq!(decoded, checks);
        assert!(len <= 48, "body of {len} bytes");
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let display = Display {
            colour: DisplayColour::Red,
            text: "Denied".into(),
        };
        let dict = [
            display_form(&display),
            check_form(&check(
                CheckKind::Temperature,
                Some(37.9),
                Some(37.3),
                "fever",
            )),
        ];
        let lookup = |id: u32| {
            dict.get(id as usize)
                .ok_or_else(|| bad(format!("no form {id}")))
                .and_then(|b| decode_form(b))
        };
        let c = check(CheckKind::Temperature, Some(37.9), Some(37.3), "fever");
        let mut body = Vec::new();
        encode_body(&mut body, 0, None, &[(1, &c)]);
        assert!(decode_body(&body, lookup).is_ok());
        // Every truncation, and every single-byte change, decodes or fails cleanly.
        for cut in 0..body.len() {
            assert!(decode_body(&body[..cut], lookup).is_err(), "cut at {cut}");
        }
        for at in 0..body.len() {
            for b in [0u8, 1, 2, 0x7f, 0x80, 0xff] {
                let mut damaged = body.clone();
                damaged[at] = b;
                let _ = decode_body(&damaged, lookup);
            }
        }
        // Trailing bytes, a dangling id, a form of the wrong kind, a count larger than the body.
        let mut long = body.clone();
        long.push(0);
        assert!(decode_body(&long, lookup).is_err());
        assert!(decode_body(&[1, 7, 0], lookup).is_err());
        assert!(decode_body(&[1, 1, 0], lookup).is_err());
        assert!(decode_body(&[1, 0, 0xff, 0xff, 0xff, 0x0f], lookup).is_err());
        for form in [
            &[][..],
            b"X",
            b"C",
            b"C\x63\x01\x00\x00",
            b"C\x01\x01\x09\x00",
            b"D\x09",
            b"P\xff",
        ] {
            assert!(decode_form(form).is_err(), "{form:?}");
        }
        assert!(
            decode_form(b"C\x01\x01\x00\x01\x00").is_err(),
            "short threshold"
        );
        assert!(decode_form(b"D\x01\xff").is_err(), "not UTF-8");
        assert!(
            decode_form(b"P\xff").is_err(),
            "a policy version that is not UTF-8"
        );
    }
}

//! Bounded serde deserializers: every string and list in a message is read through these, so
//! a lying length prefix is refused before anything is allocated for it, and the refusal names
//! the field.
//!
//! serde funnels every error through `Error::custom(String)`, which would lose the typed
//! [`DecodeError`]. [`raise`] therefore parks the typed error in a thread-local slot before
//! returning the custom error, and the codec takes it back out (see `codec.rs`). Decoding is
//! synchronous, so the slot always belongs to the decode running on this thread.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

use crate::error::DecodeError;
use crate::limits::{
    MAX_CHECKS, MAX_EMBEDDING_DIM, MAX_HEALTH_RECORDS, MAX_MARKETS, MAX_QR_TOKENS,
    MAX_REDIRECT_ADDRESSES, MAX_STRING_LEN, MAX_TEMPLATES, MAX_ZONES,
};

thread_local! {
    static FAULT: Cell<Option<DecodeError>> = const { Cell::new(None) };
}

/// Parks `err` for the codec and returns serde's string form of it.
pub(crate) fn raise<E: de::Error>(err: DecodeError) -> E {
    let text = err.to_string();
    FAULT.with(|slot| slot.set(Some(err)));
    E::custom(text)
}

/// Takes the typed error parked by the last [`raise`] on this thread, if any.
pub(crate) fn take_fault() -> Option<DecodeError> {
    FAULT.with(Cell::take)
}

/// Raises an unknown-code error for an enum or tag.
pub(crate) fn unknown_code<E: de::Error>(field: &'static str, code: u64) -> E {
    raise(DecodeError::UnknownCode { field, code })
}

/// A UTF-8 string of at most `max` bytes. Wire layout: u64 length, then the bytes.
#[derive(Clone, Copy)]
pub(crate) struct StrSeed {
    pub(crate) field: &'static str,
    pub(crate) max: usize,
}

impl StrSeed {
    pub(crate) const fn new(field: &'static str) -> Self {
        Self {
            field,
            max: MAX_STRING_LEN,
        }
    }

    fn check<E: de::Error>(self, bytes: &[u8]) -> Result<String, E> {
        if bytes.len() > self.max {
            return Err(raise(DecodeError::too_long(
                self.field,
                bytes.len(),
                self.max,
            )));
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(raise(DecodeError::InvalidUtf8 {
                field: self.field,
                valid_up_to: e.valid_up_to() as u64,
            })),
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        // Strings and byte strings share one layout; asking for bytes lets bincode hand us a
        // borrowed slice, so the length is checked against the input before any allocation
        // and the UTF-8 check can name the field.
        d.deserialize_bytes(self)
    }
}

impl Visitor<'_> for StrSeed {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} as a string of at most {} bytes",
            self.field, self.max
        )
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<String, E> {
        self.check(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.check(v.as_bytes())
    }
}

/// `Some(seed)` or `None`. Wire layout: one tag byte 0/1, then the value if 1.
#[derive(Clone, Copy)]
pub(crate) struct OptSeed<S>(pub(crate) S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for OptSeed<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for OptSeed<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an optional value")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// A list of at most `max` elements, each read with `elem`. Wire layout: u64 count, then the
/// elements. The count is checked before the list is allocated.
#[derive(Clone, Copy)]
pub(crate) struct VecSeed<S> {
    field: &'static str,
    max: usize,
    elem: S,
}

impl<T> VecSeed<PhantomData<T>> {
    pub(crate) const fn of(field: &'static str, max: usize) -> Self {
        Self {
            field,
            max,
            elem: PhantomData,
        }
    }
}

impl<S> VecSeed<S> {
    pub(crate) const fn with(field: &'static str, max: usize, elem: S) -> Self {
        Self { field, max, elem }
    }
}

impl<'de, S: DeserializeSeed<'de> + Clone> DeserializeSeed<'de> for VecSeed<S> {
    type Value = Vec<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Clone> Visitor<'de> for VecSeed<S> {
    type Value = Vec<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as a list of at most {} items", self.field, self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let announced = seq.size_hint().unwrap_or(0);
        if announced > self.max {
            return Err(raise(DecodeError::too_long(
                self.field, announced, self.max,
            )));
        }
        let mut out = Vec::with_capacity(announced);
        while let Some(value) = seq.next_element_seed(self.elem.clone())? {
            if out.len() == self.max {
                // Only formats without a length prefix get here (bincode's is checked above).
                return Err(raise(DecodeError::too_long(
                    self.field,
                    self.max + 1,
                    self.max,
                )));
            }
            out.push(value);
        }
        Ok(out)
    }
}

/// Generates the `deserialize_with` functions named in `message.rs`, one per bounded field.
macro_rules! field_fns {
    ($($name:ident: $ty:ty = $seed:expr;)*) => {
        $(
            pub(crate) fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                DeserializeSeed::deserialize($seed, d)
            }
        )*
    };
}

field_fns! {
    hello_firmware: String = StrSeed::new("hello.firmware");
    hello_ack_model: String = StrSeed::new("hello_ack.model");
    face_sample_model: String = StrSeed::new("face_sample.model");
    face_sample_embedding: Vec<f32> =
        VecSeed::<PhantomData<f32>>::of("face_sample.embedding", MAX_EMBEDDING_DIM);
    verdict_checks: Vec<crate::Check> =
        VecSeed::<PhantomData<crate::Check>>::of("verdict.checks", MAX_CHECKS);
    check_detail: String = StrSeed::new("check.detail");
    display_text: String = StrSeed::new("display.text");
    error_message: String = StrSeed::new("error.message");
    redirect_node: String = StrSeed::new("redirect.node");
    redirect_addresses: Vec<String> = VecSeed::with(
        "redirect.addresses",
        MAX_REDIRECT_ADDRESSES,
        StrSeed::new("redirect.addresses[]"),
    );
    enroll_templates: Vec<crate::FaceTemplate> =
        VecSeed::<PhantomData<crate::FaceTemplate>>::of("enroll.templates", MAX_TEMPLATES);
    subject_record_markets: Vec<crate::MarketId> =
        VecSeed::<PhantomData<crate::MarketId>>::of("subject_record.markets", MAX_MARKETS);
    subject_record_zones: Vec<crate::ZoneId> =
        VecSeed::<PhantomData<crate::ZoneId>>::of("subject_record.zones", MAX_ZONES);
    subject_record_id_card: Option<String> = OptSeed(StrSeed::new("subject_record.id_card"));
    subject_record_qr_tokens: Vec<String> = VecSeed::with(
        "subject_record.qr_tokens",
        MAX_QR_TOKENS,
        StrSeed::new("subject_record.qr_tokens[]"),
    );
    face_template_model: String = StrSeed::new("face_template.model");
    face_template_embedding: Vec<f32> =
        VecSeed::<PhantomData<f32>>::of("face_template.embedding", MAX_EMBEDDING_DIM);
    update_health_records: Vec<crate::HealthRecord> = VecSeed::<PhantomData<crate::HealthRecord>>::of(
        "update_health.records",
        MAX_HEALTH_RECORDS,
    );
    revoke_reason: String = StrSeed::new("revoke.reason");
}

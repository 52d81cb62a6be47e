//! Wire codes of the enums in `message.rs`, and their serde representation.
//!
//! Each C-like enum travels as its explicit code (a u8; `ErrorCode` a u16), never as its
//! declaration index. The data-carrying enums (`Mode`, `Credential`) travel as a u8 tag
//! followed by the variant's fields. An unknown code or tag is a typed decode error.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use crate::de::{OptSeed, StrSeed, unknown_code};
use crate::message::{Credential, Mode};

/// Implements `code`, `from_code`, `name`, `from_name`, `ALL` and serde-as-code for a C-like
/// enum. The match arms are exhaustive, so a new variant without a code does not compile.
macro_rules! wire_enum {
    ($name:ident: $repr:ty { $($variant:ident = $code:literal => $label:literal,)+ }) => {
        impl $name {
            /// Every variant, in code order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The wire code. Explicit and permanent (see PROTOCOL.md).
            pub const fn code(self) -> $repr {
                match self {
                    $(Self::$variant => $code,)+
                }
            }

            /// The variant with this wire code, if any.
            pub const fn from_code(code: $repr) -> Option<Self> {
                match code {
                    $($code => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// Stable snake-case name, for configuration files, logs and reports.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }

            /// The variant with this [`name`](Self::name), if any.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($label => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde::Serialize::serialize(&self.code(), s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let code = <$repr as serde::Deserialize>::deserialize(d)?;
                Self::from_code(code).ok_or_else(|| {
                    $crate::de::unknown_code(stringify!($name), u64::from(code))
                })
            }
        }
    };
}
pub(crate) use wire_enum;

/// Tag of [`Credential::IdCard`].
const CREDENTIAL_ID_CARD: u8 = 1;
/// Tag of [`Credential::StaffQr`].
const CREDENTIAL_STAFF_QR: u8 = 2;
/// Tag of [`Mode::Verify`].
const MODE_VERIFY: u8 = 1;
/// Tag of [`Mode::Identify`].
const MODE_IDENTIFY: u8 = 2;
/// Tag of [`Mode::SignIn`].
const MODE_SIGN_IN: u8 = 3;

impl Credential {
    /// The wire tag of this variant.
    pub const fn code(&self) -> u8 {
        match self {
            Self::IdCard(_) => CREDENTIAL_ID_CARD,
            Self::StaffQr(_) => CREDENTIAL_STAFF_QR,
        }
    }

    /// The credential text, whatever its kind.
    pub fn as_str(&self) -> &str {
        match self {
            Self::IdCard(s) | Self::StaffQr(s) => s,
        }
    }
}

impl Mode {
    /// The wire tag of this variant.
    pub const fn code(&self) -> u8 {
        match self {
            Self::Verify { .. } => MODE_VERIFY,
            Self::Identify => MODE_IDENTIFY,
            Self::SignIn { .. } => MODE_SIGN_IN,
        }
    }

    /// The credential presented, if any.
    pub const fn credential(&self) -> Option<&Credential> {
        match self {
            Self::Verify { credential } => Some(credential),
            Self::Identify => None,
            Self::SignIn { credential } => credential.as_ref(),
        }
    }
}

// Tagged enums are written as a tuple (tag, fields...): bincode writes tuples with no length,
// so the bytes are exactly the tag followed by the fields.
impl Serialize for Credential {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.code())?;
        t.serialize_element(self.as_str())?;
        t.end()
    }
}

const CREDENTIAL_TEXT: StrSeed = StrSeed::new("credential");

struct CredentialVisitor;

impl<'de> Visitor<'de> for CredentialVisitor {
    type Value = Credential;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a credential: tag byte then string")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Credential, A::Error> {
        let tag: u8 = next(&mut seq, 0, &self)?;
        let make: fn(String) -> Credential = match tag {
            CREDENTIAL_ID_CARD => Credential::IdCard,
            CREDENTIAL_STAFF_QR => Credential::StaffQr,
            other => return Err(unknown_code("Credential", u64::from(other))),
        };
        let text = next_seed(&mut seq, CREDENTIAL_TEXT, 1, &self)?;
        Ok(make(text))
    }
}

impl<'de> Deserialize<'de> for Credential {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_tuple(2, CredentialVisitor)
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Verify { credential } => {
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&MODE_VERIFY)?;
                t.serialize_element(credential)?;
                t.end()
            }
            Self::Identify => {
                let mut t = s.serialize_tuple(1)?;
                t.serialize_element(&MODE_IDENTIFY)?;
                t.end()
            }
            Self::SignIn { credential } => {
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&MODE_SIGN_IN)?;
                t.serialize_element(credential)?;
                t.end()
            }
        }
    }
}

struct ModeVisitor;

impl<'de> Visitor<'de> for ModeVisitor {
    type Value = Mode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mode: tag byte then its fields")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Mode, A::Error> {
        match next::<u8, _>(&mut seq, 0, &self)? {
            MODE_VERIFY => Ok(Mode::Verify {
                credential: next(&mut seq, 1, &self)?,
            }),
            MODE_IDENTIFY => Ok(Mode::Identify),
            MODE_SIGN_IN => Ok(Mode::SignIn {
                credential: next_seed(&mut seq, OptSeed(CredentialSeed), 1, &self)?,
            }),
            other => Err(unknown_code("Mode", u64::from(other))),
        }
    }
}

/// Reads a credential as a seed, so `Option<Credential>` can go through [`OptSeed`].
#[derive(Clone, Copy)]
struct CredentialSeed;

impl<'de> DeserializeSeed<'de> for CredentialSeed {
    type Value = Credential;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Credential, D::Error> {
        Credential::deserialize(d)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Two elements at most (tag + one field); Identify stops after the tag.
        d.deserialize_tuple(2, ModeVisitor)
    }
}

fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    index: usize,
    exp: &dyn de::Expected,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::invalid_length(index, exp))
}

fn next_seed<'de, S: DeserializeSeed<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    seed: S,
    index: usize,
    exp: &dyn de::Expected,
) -> Result<S::Value, A::Error> {
    seq.next_element_seed(seed)?
        .ok_or_else(|| de::Error::invalid_length(index, exp))
}

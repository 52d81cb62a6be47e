//! The body codec: the only module that names bincode.
//!
//! Configuration: little-endian, fixed-width integers (no varints), u64 lengths, and a decode
//! limit equal to the largest frame, so no length prefix can make the decoder claim more
//! memory than a frame may hold. Swapping bincode for another codec means rewriting this file
//! and keeping the golden fixtures (`tests/data/v1`, `tests/data/v2`) byte-identical.

use bincode::config::{self, Configuration, Fixint, LittleEndian, NoLimit};
use bincode::error::DecodeError as BincodeError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::de::take_fault;
use crate::error::DecodeError;
use crate::kind::MessageKind;
use crate::limits::MAX_FRAME_LEN;
use crate::message::Message;

const ENCODE: Configuration<LittleEndian, Fixint, NoLimit> = config::standard()
    .with_little_endian()
    .with_fixed_int_encoding();

const DECODE: Configuration<LittleEndian, Fixint, config::Limit<MAX_FRAME_LEN>> =
    ENCODE.with_limit::<MAX_FRAME_LEN>();

/// Appends the body of `msg` (no frame header) to `out`.
pub(crate) fn encode_body(msg: &Message, out: &mut Vec<u8>) {
    match msg {
        Message::Hello(m) => encode(m, out),
        Message::HelloAck(m) => encode(m, out),
        Message::Event(m) => encode(m, out),
        Message::Verdict(m) => encode(m, out),
        Message::Busy(m) => encode(m, out),
        Message::Error(m) => encode(m, out),
        Message::Redirect(m) => encode(m, out),
        Message::Enroll(m) => encode(m, out),
        Message::EnrollAck(m) => encode(m, out),
        Message::UpdateHealth(m) => encode(m, out),
        Message::UpdateHealthAck(m) => encode(m, out),
        Message::Revoke(m) => encode(m, out),
        Message::RevokeAck(m) => encode(m, out),
    }
}

/// Decodes a whole body of the given kind; every byte must belong to the message.
/// Does not validate values (see `validate.rs`).
pub(crate) fn decode_body(kind: MessageKind, body: &[u8]) -> Result<Message, DecodeError> {
    Ok(match kind {
        MessageKind::Hello => Message::Hello(decode(body)?),
        MessageKind::HelloAck => Message::HelloAck(decode(body)?),
        MessageKind::Event => Message::Event(decode(body)?),
        MessageKind::Verdict => Message::Verdict(decode(body)?),
        MessageKind::Busy => Message::Busy(decode(body)?),
        MessageKind::Error => Message::Error(decode(body)?),
        MessageKind::Redirect => Message::Redirect(decode(body)?),
        MessageKind::Enroll => Message::Enroll(decode(body)?),
        MessageKind::EnrollAck => Message::EnrollAck(decode(body)?),
        MessageKind::UpdateHealth => Message::UpdateHealth(decode(body)?),
        MessageKind::UpdateHealthAck => Message::UpdateHealthAck(decode(body)?),
        MessageKind::Revoke => Message::Revoke(decode(body)?),
        MessageKind::RevokeAck => Message::RevokeAck(decode(body)?),
    })
}

#[allow(clippy::expect_used)]
fn encode<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // Invariant: writing to a Vec cannot fail, every sequence in the message types has a
    // known length, and no Serialize impl in this crate returns an error; so bincode has no
    // error to report here.
    bincode::serde::encode_into_std_write(value, out, ENCODE)
        .expect("encoding a message into a Vec cannot fail");
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    // A fault left over from an unrelated serde use on this thread must not be reported here.
    drop(take_fault());
    match bincode::serde::decode_from_slice::<T, _>(body, DECODE) {
        Ok((value, read)) if read == body.len() => Ok(value),
        Ok((_, read)) => Err(DecodeError::TrailingBytes {
            count: (body.len() - read) as u64,
        }),
        Err(e) => Err(from_bincode(e)),
    }
}

fn from_bincode(err: BincodeError) -> DecodeError {
    match err {
        BincodeError::OtherString(text) => {
            take_fault().unwrap_or(DecodeError::Malformed { reason: text })
        }
        BincodeError::UnexpectedEnd { additional } => DecodeError::Malformed {
            reason: format!("message body ends at least {additional} bytes early"),
        },
        BincodeError::LimitExceeded => DecodeError::Malformed {
            reason: "a length prefix exceeds the frame".to_owned(),
        },
        BincodeError::UnexpectedVariant {
            type_name, found, ..
        } => DecodeError::UnknownCode {
            field: if type_name.starts_with("Option") {
                "Option tag"
            } else {
                type_name
            },
            code: u64::from(found),
        },
        BincodeError::InvalidBooleanValue(v) => DecodeError::UnknownCode {
            field: "bool",
            code: u64::from(v),
        },
        BincodeError::OutsideUsizeRange(len) => DecodeError::Malformed {
            reason: format!("length {len} does not fit this platform"),
        },
        other => DecodeError::Malformed {
            reason: other.to_string(),
        },
    }
}

//! gatewarden-protocol: the wire protocol between gates and the gatewarden engine.
//!
//! This crate contains no I/O and reads no clock (sans-IO, like quinn-proto): it turns bytes
//! into [`Message`]s and back, and validates every field before anyone else sees it. The
//! language-neutral specification, with every byte layout, code, limit and a hex example of
//! each message, is `PROTOCOL.md` beside this crate.
//!
//! # Frames
//!
//! | offset | size | field                                                  |
//! |-------:|-----:|--------------------------------------------------------|
//! | 0      | 4    | `length`: u32 little-endian, bytes that follow (≥ 1)   |
//! | 4      | 1    | `kind`: [`MessageKind`] code                           |
//! | 5      | n    | `body`: the message, `n = length - 1`                  |
//!
//! A whole frame is at most [`MAX_GATE_FRAME_LEN`] (64 KiB) for
//! gate messages and [`MAX_ADMIN_FRAME_LEN`] (1 MiB) for admin
//! messages; both are checked from the header, before the body is buffered.
//!
//! # Module map
//!
//! - `message`: the message types (plain data) and the wire codes of their enums.
//! - `ids`: identifier newtypes ([`GateId`], [`SubjectId`], ...).
//! - `kind`: [`MessageKind`], the frame's kind byte.
//! - `frame`: [`encode_frame`], [`decode_frame`], [`FrameDecoder`], [`frame_len_hint`].
//! - `codec`: the body codec; the only module that names bincode.
//! - `validate`: value rules ([`Message::validate`]), run on every decoded message.
//! - [`limits`]: every limit, with compile-time proof that valid messages fit their frames.
//! - `error`: [`DecodeError`] and its mapping to the wire [`ErrorCode`].
//! - `version`: [`negotiate`] the protocol version from a [`Hello`]. Version 2 is version 1
//!   plus [`Redirect`] (kind 7): a server sends it only on version-2 connections.
//!
//! # Example
//!
//! ```
//! use gatewarden_protocol::{Busy, FrameDecoder, Message, decode_frame, encode_frame};
//!
//! let mut wire = Vec::new();
//! encode_frame(&Message::Busy(Busy { retry_after_ms: 250 }), &mut wire);
//! assert_eq!(wire, [5, 0, 0, 0, 5, 250, 0, 0, 0]);
//! assert_eq!(decode_frame(&wire)?, Message::Busy(Busy { retry_after_ms: 250 }));
//!
//! // A stream may arrive in any pieces.
//! let mut decoder = FrameDecoder::new();
//! decoder.push(&wire[..3]);
//! assert_eq!(decoder.next()?, None);
//! decoder.push(&wire[3..]);
//! assert!(matches!(decoder.next()?, Some(Message::Busy(_))));
//! # Ok::<(), gatewarden_protocol::DecodeError>(())
//! ```
#![forbid(unsafe_code)]

mod codec;
mod de;
mod error;
mod frame;
mod ids;
mod kind;
pub mod limits;
mod message;
mod validate;
mod version;
mod wire;

pub use error::DecodeError;
pub use frame::{FrameDecoder, decode_frame, encode_frame, frame_len_hint};
pub use ids::{GateId, MarketId, SubjectId, UnixMillis, ZoneId};
pub use kind::MessageKind;
pub use limits::{
    FRAME_HEADER_LEN, MAX_ADMIN_FRAME_LEN, MAX_EMBEDDING_DIM, MAX_FRAME_LEN, MAX_GATE_FRAME_LEN,
    MAX_REDIRECT_ADDRESSES, MAX_STRING_LEN,
};
pub use message::*;
pub use version::{MIN_PROTOCOL_VERSION, negotiate};

/// The highest protocol version this crate speaks: version 1 plus [`Redirect`]. It speaks
/// every version from [`MIN_PROTOCOL_VERSION`] up to this one.
pub const PROTOCOL_VERSION: u16 = 2;

/// ALPN identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"gatewarden/1";

#[cfg(test)]
mod tests;

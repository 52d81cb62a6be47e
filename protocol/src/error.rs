//! Why a frame or message was refused.
//!
//! Every way peer bytes can be wrong is a [`DecodeError`] variant carrying the facts (field,
//! value, limit), and each maps to the wire [`ErrorCode`] the server sends back.
//! Messages never contain biometric data: embedding faults name the index, not the vector.

use crate::message::{ErrorCode, ErrorReply};

/// A frame or message that cannot be accepted.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix announces a frame larger than the limit for its kind (or than the
    /// decoder's own limit). Detected from the header alone, before anything is allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes; split the request")]
    FrameTooLarge {
        /// Whole frame length announced by the header, header included.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// Fewer bytes than the header announces (or than a header needs).
    #[error("frame truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the frame needs.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The kind byte names no message of this protocol version.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// An enum code (or an Option/bool tag) outside its table.
    #[error("unknown {field} code {code}")]
    UnknownCode {
        /// The enum (type name) or tag being decoded.
        field: &'static str,
        /// The code found.
        code: u64,
    },
    /// A string or list is longer than its limit.
    #[error("{field} has length {len}, more than the limit of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The length found (bytes for strings, elements for lists).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A string is not valid UTF-8.
    #[error("{field} is not valid utf-8 (error at byte {valid_up_to})")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
        /// Length of the valid prefix.
        valid_up_to: u64,
    },
    /// A value outside its allowed range (NaN, out of [0, 1], empty where required...).
    #[error("invalid {field}: {value} ({reason})")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The offending value, rendered (never biometric data: embeddings give the index).
        value: String,
        /// What the value must be.
        reason: &'static str,
    },
    /// Bytes left over after a complete frame, or inside a frame after its message.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes {
        /// How many.
        count: u64,
    },
    /// The bytes do not form a message of the announced kind.
    #[error("malformed message: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
}

impl DecodeError {
    /// The wire error code the server answers this failure with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::TooLong { .. } | Self::InvalidUtf8 { .. } | Self::Invalid { .. } => {
                ErrorCode::InvalidValue
            }
            Self::Truncated { .. }
            | Self::UnknownKind(_)
            | Self::UnknownCode { .. }
            | Self::TrailingBytes { .. }
            | Self::Malformed { .. } => ErrorCode::Malformed,
        }
    }

    /// The `Error` message that tells the peer about this failure (code and text).
    pub fn to_error_reply(&self) -> ErrorReply {
        ErrorReply::new(self.error_code(), self.to_string())
    }

    pub(crate) fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> Self {
        Self::Invalid {
            field,
            value: value.to_string(),
            reason,
        }
    }

    pub(crate) fn too_long(field: &'static str, len: usize, max: usize) -> Self {
        Self::TooLong {
            field,
            len: len as u64,
            max: max as u64,
        }
    }
}

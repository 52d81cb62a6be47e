//! Message kinds: the byte after the length prefix of every frame.
//!
//! Codes are explicit and permanent: adding a message adds a code, it never renumbers. Gate
//! messages use 1..=15, admin messages 16..=31.

use crate::limits::{MAX_ADMIN_FRAME_LEN, MAX_GATE_FRAME_LEN};
use crate::message::Message;

/// The kind of a frame's message, as its wire code.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MessageKind {
    /// [`Hello`](crate::Hello): gate → server.
    Hello = 1,
    /// [`HelloAck`](crate::HelloAck): server → gate.
    HelloAck = 2,
    /// [`Event`](crate::Event): gate → server.
    Event = 3,
    /// [`Verdict`](crate::Verdict): server → gate.
    Verdict = 4,
    /// [`Busy`](crate::Busy): server → gate.
    Busy = 5,
    /// [`ErrorReply`](crate::ErrorReply): server → peer.
    Error = 6,
    /// [`Redirect`](crate::Redirect): server → gate, protocol version 2 and later.
    Redirect = 7,
    /// [`Enroll`](crate::Enroll): admin → server.
    Enroll = 16,
    /// [`EnrollAck`](crate::EnrollAck): server → admin.
    EnrollAck = 17,
    /// [`UpdateHealth`](crate::UpdateHealth): admin → server.
    UpdateHealth = 18,
    /// [`UpdateHealthAck`](crate::UpdateHealthAck): server → admin.
    UpdateHealthAck = 19,
    /// [`Revoke`](crate::Revoke): admin → server.
    Revoke = 20,
    /// [`RevokeAck`](crate::RevokeAck): server → admin.
    RevokeAck = 21,
}

impl MessageKind {
    /// Every kind, in code order.
    pub const ALL: [Self; 13] = [
        Self::Hello,
        Self::HelloAck,
        Self::Event,
        Self::Verdict,
        Self::Busy,
        Self::Error,
        Self::Redirect,
        Self::Enroll,
        Self::EnrollAck,
        Self::UpdateHealth,
        Self::UpdateHealthAck,
        Self::Revoke,
        Self::RevokeAck,
    ];

    /// The wire code.
    pub const fn to_code(self) -> u8 {
        self as u8
    }

    /// The kind with this wire code, if any.
    pub const fn try_from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Hello,
            2 => Self::HelloAck,
            3 => Self::Event,
            4 => Self::Verdict,
            5 => Self::Busy,
            6 => Self::Error,
            7 => Self::Redirect,
            16 => Self::Enroll,
            17 => Self::EnrollAck,
            18 => Self::UpdateHealth,
            19 => Self::UpdateHealthAck,
            20 => Self::Revoke,
            21 => Self::RevokeAck,
            _ => return None,
        })
    }

    /// True for the admin messages (enrollment, health feed, revocation and their acks).
    pub const fn is_admin(self) -> bool {
        self.to_code() >= 16
    }

    /// Largest whole frame (header included) of this kind. Gate messages are small, so a
    /// gate connection can be held to a much lower limit than an admin connection.
    pub const fn max_frame_len(self) -> usize {
        if self.is_admin() {
            MAX_ADMIN_FRAME_LEN
        } else {
            MAX_GATE_FRAME_LEN
        }
    }

    /// Snake-case name (`hello_ack`), as used in PROTOCOL.md and fixture file names.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::HelloAck => "hello_ack",
            Self::Event => "event",
            Self::Verdict => "verdict",
            Self::Busy => "busy",
            Self::Error => "error",
            Self::Redirect => "redirect",
            Self::Enroll => "enroll",
            Self::EnrollAck => "enroll_ack",
            Self::UpdateHealth => "update_health",
            Self::UpdateHealthAck => "update_health_ack",
            Self::Revoke => "revoke",
            Self::RevokeAck => "revoke_ack",
        }
    }
}

impl Message {
    /// The kind written in this message's frame header.
    pub const fn kind(&self) -> MessageKind {
        match self {
            Self::Hello(_) => MessageKind::Hello,
            Self::HelloAck(_) => MessageKind::HelloAck,
            Self::Event(_) => MessageKind::Event,
            Self::Verdict(_) => MessageKind::Verdict,
            Self::Busy(_) => MessageKind::Busy,
            Self::Error(_) => MessageKind::Error,
            Self::Redirect(_) => MessageKind::Redirect,
            Self::Enroll(_) => MessageKind::Enroll,
            Self::EnrollAck(_) => MessageKind::EnrollAck,
            Self::UpdateHealth(_) => MessageKind::UpdateHealth,
            Self::UpdateHealthAck(_) => MessageKind::UpdateHealthAck,
            Self::Revoke(_) => MessageKind::Revoke,
            Self::RevokeAck(_) => MessageKind::RevokeAck,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for kind in MessageKind::ALL {
            assert!(seen.insert(kind.to_code()));
            assert_eq!(MessageKind::try_from_code(kind.to_code()), Some(kind));
        }
        let known = (0..=u8::MAX)
            .filter(|c| MessageKind::try_from_code(*c).is_some())
            .count();
        assert_eq!(known, MessageKind::ALL.len());
    }

    #[test]
    fn kind_codes_are_frozen() {
        let codes: Vec<u8> = MessageKind::ALL.iter().map(|k| k.to_code()).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21]);
    }
}

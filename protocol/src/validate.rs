//! Value rules of protocol version 1, applied to every decoded message.
//!
//! The codec guarantees shape (lengths, codes, UTF-8); these rules guarantee meaning: finite
//! floats, scores in [0, 1], plausible temperatures, non-empty credentials. The same rules let
//! a sender check a message before it goes out ([`Message::validate`]). Field names in the
//! errors are `struct.field`, as in PROTOCOL.md.

use crate::error::DecodeError;
use crate::limits::{
    MAX_CHECKS, MAX_EMBEDDING_DIM, MAX_HEALTH_RECORDS, MAX_MARKETS, MAX_QR_TOKENS,
    MAX_REDIRECT_ADDRESSES, MAX_RETRY_AFTER_MS, MAX_STRING_LEN, MAX_TEMPERATURE_C, MAX_TEMPLATES,
    MAX_ZONES, MIN_TEMPERATURE_C,
};
use crate::message::{
    Busy, Check, Credential, Enroll, ErrorReply, Event, FaceSample, FaceTemplate, Hello, HelloAck,
    Message, Mode, Redirect, Revoke, SubjectRecord, UpdateHealth, Verdict,
};

type Result = std::result::Result<(), DecodeError>;

impl Message {
    /// Checks every value rule of this message; the decoder runs this on every message, and
    /// a sender may run it before sending. The error names the first field at fault.
    pub fn validate(&self) -> Result {
        match self {
            Self::Hello(m) => m.validate(),
            Self::HelloAck(m) => m.validate(),
            Self::Event(m) => m.validate(),
            Self::Verdict(m) => m.validate(),
            Self::Busy(m) => m.validate(),
            Self::Error(m) => m.validate(),
            Self::Redirect(m) => m.validate(),
            Self::Enroll(m) => m.validate(),
            Self::UpdateHealth(m) => m.validate(),
            Self::Revoke(m) => m.validate(),
            Self::EnrollAck(_) | Self::UpdateHealthAck(_) | Self::RevokeAck(_) => Ok(()),
        }
    }
}

impl Hello {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        if self.min_version > self.max_version {
            return Err(DecodeError::invalid(
                "hello.min_version",
                format!("{} > max_version {}", self.min_version, self.max_version),
                "must not exceed max_version",
            ));
        }
        string("hello.firmware", &self.firmware)
    }
}

impl HelloAck {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        if self.embedding_dim == 0 || self.embedding_dim as usize > MAX_EMBEDDING_DIM {
            return Err(DecodeError::invalid(
                "hello_ack.embedding_dim",
                self.embedding_dim,
                "must be in 1..=4096",
            ));
        }
        non_empty("hello_ack.model", &self.model)
    }
}

impl Event {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        if let Some(credential) = self.mode.credential() {
            credential.validate()?;
        }
        if let Some(face) = &self.face {
            face.validate()?;
        }
        if let Some(t) = self.temperature_c
            && !(MIN_TEMPERATURE_C..=MAX_TEMPERATURE_C).contains(&t)
        {
            return Err(DecodeError::invalid(
                "event.temperature_c",
                t,
                "must be a reading in 25.0..=45.0 °C",
            ));
        }
        Ok(())
    }
}

impl Mode {
    /// Checks the value rules of the credential, if any (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        self.credential().map_or(Ok(()), Credential::validate)
    }
}

impl Credential {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        non_empty("credential", self.as_str())
    }
}

impl FaceSample {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        non_empty("face_sample.model", &self.model)?;
        embedding("face_sample.embedding", &self.embedding)?;
        unit_interval("face_sample.quality", self.quality)?;
        unit_interval("face_sample.liveness", self.liveness)
    }
}

impl Verdict {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        if let Some(score) = self.score
            && !score.is_finite()
        {
            return Err(DecodeError::invalid(
                "verdict.score",
                score,
                "must be finite",
            ));
        }
        max_len("verdict.checks", self.checks.len(), MAX_CHECKS)?;
        self.checks.iter().try_for_each(Check::validate)?;
        string("display.text", &self.display.text)
    }
}

impl Check {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        finite_opt("check.value", self.value)?;
        finite_opt("check.threshold", self.threshold)?;
        string("check.detail", &self.detail)
    }
}

impl Busy {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        if self.retry_after_ms > MAX_RETRY_AFTER_MS {
            return Err(DecodeError::invalid(
                "busy.retry_after_ms",
                self.retry_after_ms,
                "must be at most 60000",
            ));
        }
        Ok(())
    }
}

impl ErrorReply {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        string("error.message", &self.message)
    }
}

impl Redirect {
    /// Checks the value rules (see [`Message::validate`]): a node name of at most 256 bytes,
    /// at most 8 addresses, each `host:port` (see [`Redirect::split_address`]); a node
    /// exactly when there are addresses; a wait of at most 60000 ms, and of at least 1 ms
    /// when no node is named.
    pub fn validate(&self) -> Result {
        string("redirect.node", &self.node)?;
        max_len(
            "redirect.addresses",
            self.addresses.len(),
            MAX_REDIRECT_ADDRESSES,
        )?;
        for address in &self.addresses {
            if Self::split_address(address).is_none() {
                return Err(DecodeError::invalid(
                    "redirect.addresses[]",
                    format!("{address:?}"),
                    "must be host:port (a DNS name, an IPv4 address or a bracketed IPv6 \
                     address, and a port in 1..=65535)",
                ));
            }
        }
        if self.node.is_empty() != self.addresses.is_empty() {
            return Err(DecodeError::invalid(
                "redirect.node",
                format!("{:?} with {} addresses", self.node, self.addresses.len()),
                "a node is named exactly when addresses are given",
            ));
        }
        if self.retry_after_ms > MAX_RETRY_AFTER_MS {
            return Err(DecodeError::invalid(
                "redirect.retry_after_ms",
                self.retry_after_ms,
                "must be at most 60000",
            ));
        }
        if self.node.is_empty() && self.retry_after_ms == 0 {
            return Err(DecodeError::invalid(
                "redirect.retry_after_ms",
                0,
                "must be at least 1 when no node serves the market",
            ));
        }
        Ok(())
    }

    /// Splits an address of a redirect into its host and port: `host:port`, where the host is
    /// a DNS name or an IPv4 address (letters, digits, `.` and `-`) or an IPv6 address in
    /// brackets (returned without them), and the port is 1..=65535 in decimal. The host is
    /// what the gate dials and the name its server certificate must carry (PROTOCOL.md,
    /// section 1). `None` for anything else, at most 256 bytes being the wire's limit.
    pub fn split_address(address: &str) -> Option<(&str, u16)> {
        if address.len() > MAX_STRING_LEN {
            return None;
        }
        let (host, port) = address.rsplit_once(':')?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']')?;
            inner.parse::<std::net::Ipv6Addr>().ok()?;
            return Some((inner, port));
        }
        let name_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
        if host.is_empty() || !host.bytes().all(name_byte) {
            return None;
        }
        Some((host, port))
    }
}

impl Enroll {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        self.subject.validate()?;
        max_len("enroll.templates", self.templates.len(), MAX_TEMPLATES)?;
        self.templates.iter().try_for_each(FaceTemplate::validate)
    }
}

impl SubjectRecord {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        max_len("subject_record.markets", self.markets.len(), MAX_MARKETS)?;
        max_len("subject_record.zones", self.zones.len(), MAX_ZONES)?;
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until)
            && from > until
        {
            return Err(DecodeError::invalid(
                "subject_record.valid_from",
                format!("{from} > valid_until {until}"),
                "must not be after valid_until",
            ));
        }
        if let Some(card) = &self.id_card {
            non_empty("subject_record.id_card", card)?;
        }
        max_len(
            "subject_record.qr_tokens",
            self.qr_tokens.len(),
            MAX_QR_TOKENS,
        )?;
        self.qr_tokens
            .iter()
            .try_for_each(|t| non_empty("subject_record.qr_tokens[]", t))
    }
}

impl FaceTemplate {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        non_empty("face_template.model", &self.model)?;
        embedding("face_template.embedding", &self.embedding)
    }
}

impl UpdateHealth {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        max_len(
            "update_health.records",
            self.records.len(),
            MAX_HEALTH_RECORDS,
        )
    }
}

impl Revoke {
    /// Checks the value rules (see [`Message::validate`]).
    pub fn validate(&self) -> Result {
        string("revoke.reason", &self.reason)
    }
}

fn max_len(field: &'static str, len: usize, max: usize) -> Result {
    if len > max {
        return Err(DecodeError::too_long(field, len, max));
    }
    Ok(())
}

fn string(field: &'static str, s: &str) -> Result {
    max_len(field, s.len(), MAX_STRING_LEN)
}

fn non_empty(field: &'static str, s: &str) -> Result {
    if s.is_empty() {
        return Err(DecodeError::invalid(field, "\"\"", "must not be empty"));
    }
    string(field, s)
}

fn embedding(field: &'static str, values: &[f32]) -> Result {
    if values.is_empty() {
        return Err(DecodeError::invalid(
            field,
            "0 elements",
            "must have 1..=4096 elements",
        ));
    }
    max_len(field, values.len(), MAX_EMBEDDING_DIM)?;
    match values.iter().position(|v| !v.is_finite()) {
        // Name the index and the kind of fault, never the vector itself.
        Some(i) => Err(DecodeError::invalid(
            field,
            format!("{} at index {i}", values[i]),
            "every element must be finite",
        )),
        None => Ok(()),
    }
}

fn unit_interval(field: &'static str, v: f32) -> Result {
    if !(0.0..=1.0).contains(&v) {
        return Err(DecodeError::invalid(field, v, "must be in [0, 1]"));
    }
    Ok(())
}

fn finite_opt(field: &'static str, v: Option<f64>) -> Result {
    match v {
        Some(v) if !v.is_finite() => Err(DecodeError::invalid(field, v, "must be finite")),
        _ => Ok(()),
    }
}

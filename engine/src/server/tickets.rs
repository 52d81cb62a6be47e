//! TLS session tickets that a restarted server still accepts.
//!
//! A reconnect storm (every gate of a fleet coming back after a restart) is bounded by the
//! server's handshake rate, and a full mutual-TLS handshake is the expensive kind: the server
//! signs with its key and verifies the gate's certificate chain, the gate does the same the
//! other way. A TLS 1.3 resumption skips all four: the gate presents a ticket from its last
//! connection, and both sides only do the key exchange (rustls offers `psk_dhe_ke` only, so
//! every resumed connection still has fresh ECDHE keys: forward secrecy holds).
//!
//! rustls's own ticketer keys are random per process, so after a restart every ticket is
//! void, which is exactly when they would help. Here the ticket key of each period
//! ([`PERIOD`]) is derived from the server's private key and the period's number, as the
//! stateless-reset key is (reset.rs): the restarted process derives the same keys and accepts
//! the tickets its predecessor issued.
//!
//! What that costs, stated:
//!
//! - A ticket holds the session's resumption secret and the gate's certificate chain, sealed
//!   under a key that anyone holding the server's private key can derive. Such a party can
//!   already impersonate the server; with the ticket key it could also open a recorded ticket
//!   and, within the ticket's lifetime, resume as that gate.
//! - Resumption chains: a resumed connection is issued fresh tickets that carry the chain of
//!   the session's first, full handshake (rustls copies it). Keys roll every period and a
//!   ticket is accepted in its own period and the next (6 to 12 hours after it was issued),
//!   so a gate that stays away 12 hours makes a full handshake; but a gate that reconnects
//!   more often keeps the
//!   identity its certificate proved once, even after that certificate expires. What still
//!   holds on every connection: the gate must hold the session secret (no one else can use
//!   its tickets), and its `Hello` is checked against the registry, so a gate removed from
//!   the registry is refused. Replacing the fleet CA, or refusing expired certificates at
//!   once, therefore also needs a new server key, which voids every ticket.
//!
//! The ticket format: the period number (8 bytes, little-endian, also the AEAD's associated
//! data), a random 96-bit nonce, then the AES-256-GCM ciphertext and tag. Random nonces are
//! safe here: a period issues far fewer than the 2^32 tickets per key that random 96-bit
//! nonces allow.

use std::fmt;
use std::time::Duration;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use crate::clock::{Clock, SystemClock, UnixMillis};

/// How long one ticket key is used for issuing. A ticket is accepted in the period it was
/// issued in and the next, so it lives between one and two periods.
pub(super) const PERIOD: Duration = Duration::from_secs(6 * 3600);

/// The label of the ticket keys' derivation.
const LABEL: &[u8] = b"gatewarden session ticket key v1";

/// Bytes before the ciphertext: the period number and the nonce.
const HEADER: usize = 8 + NONCE_LEN;

/// Issues and opens session tickets under keys derived from the server's private key.
pub(super) struct DerivedTicketer {
    secret: Vec<u8>,
    random: SystemRandom,
}

impl fmt::Debug for DerivedTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("DerivedTicketer")
            .field("period_s", &PERIOD.as_secs())
            .finish_non_exhaustive()
    }
}

impl DerivedTicketer {
    /// A ticketer whose keys derive from `secret` (the server's private key file).
    pub(super) fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
            random: SystemRandom::new(),
        }
    }

    /// The key of period `period` (`None` only if ring refused a 32-byte AES-256 key).
    fn key(&self, period: u64) -> Option<LessSafeKey> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(LABEL);
        digest.update(&[0]);
        digest.update(&self.secret);
        digest.update(&period.to_le_bytes());
        let bytes = digest.finish();
        let key = UnboundKey::new(&AES_256_GCM, bytes.as_ref()).ok()?;
        Some(LessSafeKey::new(key))
    }

    fn seal_in(&self, period: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let label = period.to_le_bytes();
        let mut ticket = Vec::with_capacity(HEADER + plain.len() + AES_256_GCM.tag_len());
        ticket.extend_from_slice(&label);
        ticket.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key(period)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(label),
                &mut body,
            )
            .ok()?;
        ticket.extend_from_slice(&body);
        Some(ticket)
    }

    /// Opens a ticket if it was sealed in `now` or the period before; `None` for anything
    /// else, including every malformed input (tickets come from the network).
    fn open_in(&self, now: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        let label: [u8; 8] = ticket.get(..8)?.try_into().ok()?;
        let nonce: [u8; NONCE_LEN] = ticket.get(8..HEADER)?.try_into().ok()?;
        let period = u64::from_le_bytes(label);
        if period != now && Some(period) != now.checked_sub(1) {
            return None;
        }
        let mut body = ticket.get(HEADER..)?.to_vec();
        let plain = self
            .key(period)?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(label),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

/// The number of the period `now` falls in.
fn period_at(now: UnixMillis) -> u64 {
    now.0 / 1000 / PERIOD.as_secs()
}

impl ProducesTickets for DerivedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(PERIOD.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_in(period_at(SystemClock.now()), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_in(period_at(SystemClock.now()), cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_server_opens_its_predecessors_tickets() {
        let before = DerivedTicketer::new(b"server key");
        let after = DerivedTicketer::new(b"server key");
        let ticket = before.encrypt(b"session state").unwrap();
        assert_eq!(after.decrypt(&ticket).unwrap(), b"session state");
        // Sealed with a fresh nonce each time.
        assert_ne!(before.encrypt(b"session state").unwrap(), ticket);
    }

    #[test]
    fn other_keys_other_periods_and_tampering_are_refused() {
        let ticketer = DerivedTicketer::new(b"server key");
        let ticket = ticketer.seal_in(100, b"session state").unwrap();
        assert_eq!(ticketer.open_in(100, &ticket).unwrap(), b"session state");
        assert_eq!(ticketer.open_in(101, &ticket).unwrap(), b"session state");
        assert!(ticketer.open_in(102, &ticket).is_none(), "two periods old");
        assert!(ticketer.open_in(99, &ticket).is_none(), "from the future");
        let other = DerivedTicketer::new(b"another server's key");
        assert!(other.open_in(100, &ticket).is_none());
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert!(ticketer.open_in(100, &bad).is_none(), "byte {i} flipped");
        }
        for len in 0..ticket.len() {
            assert!(
                ticketer.open_in(100, &ticket[..len]).is_none(),
                "cut at {len}"
            );
        }
    }

    #[test]
    fn the_secret_is_not_in_the_debug_output() {
        let text = format!("{:?}", DerivedTicketer::new(b"TOPSECRET"));
        assert!(
            !text.contains("TOPSECRET") && !text.contains("84, 79, 80"),
            "{text}"
        );
    }
}

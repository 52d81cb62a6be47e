//! Stateless resets that survive a restart.
//!
//! A server killed and started again has lost every connection, but its gates do not know it:
//! their next packets carry connection IDs the new process never issued. QUIC answers such a
//! packet with a stateless reset, which the gate accepts only if it carries the token the old
//! server gave for that connection ID; quinn computes the token as an HMAC of the ID under the
//! endpoint's reset key, and resets only IDs its connection-ID generator recognises as its own
//! (quinn's `HashedConnectionIdGenerator` signs each ID with a keyed hash). With quinn's
//! defaults both keys are random per process, so a restarted server can reset nobody and every
//! gate waits for its idle timeout. Here both are derived from the server's private key (a
//! secret the server holds anyway, and which changes when its identity does), so the new
//! process recognises the old IDs and produces the old tokens: each gate learns of the restart
//! at its next packet.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn_proto::HashedConnectionIdGenerator;
use ring::hmac;

/// Shortest interval between two stateless resets: none. quinn's default (20 ms, against
/// loops between two endpoints resetting each other, and reflection) lets a restarted server
/// reset one gate per interval; and quinn takes the time once per poll of its socket, so any
/// positive interval allows one reset per *batch* of received datagrams (measured: a quarter
/// of a 10,000-gate fleet never got its reset and noticed the restart only by six seconds of
/// silence). Neither risk needs the interval here: a reset is always smaller than the
/// datagram that incited it (quinn pads to one byte less), so it amplifies nothing and a loop
/// between two endpoints shrinks to nothing, and this server only resets connection IDs it
/// signed (quinn's keyed generator), so a stranger cannot aim resets without first seeing a
/// gate's traffic.
const MIN_RESET_INTERVAL: Duration = Duration::ZERO;

/// The endpoint configuration with the reset key and connection-ID generator derived from
/// `secret` (the server's private key file).
pub(super) fn endpoint_config(secret: &[u8]) -> quinn::EndpointConfig {
    let reset = Arc::new(derive(secret, b"gatewarden stateless reset key v1"));
    let cid_key = cid_key(secret);
    let mut config = quinn::EndpointConfig::new(reset);
    config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid_key)));
    config.min_reset_interval(MIN_RESET_INTERVAL);
    config
}

/// The key of the connection-ID generator: 64 bits of an HMAC under the derived key.
fn cid_key(secret: &[u8]) -> u64 {
    let tag = hmac::sign(&derive(secret, b"gatewarden connection id key v1"), b"cid");
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_le_bytes(bytes)
}

/// Reads the server's key file and builds [`endpoint_config`] from it.
pub(super) fn endpoint_config_from(key_file: &Path) -> std::io::Result<quinn::EndpointConfig> {
    Ok(endpoint_config(&std::fs::read(key_file)?))
}

fn derive(secret: &[u8], label: &[u8]) -> hmac::Key {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(label);
    digest.update(&[0]);
    digest.update(secret);
    hmac::Key::new(hmac::HMAC_SHA256, digest.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::ConnectionIdGenerator;

    #[test]
    fn a_restarted_server_recognises_the_ids_it_issued_before_and_no_others() {
        let before = HashedConnectionIdGenerator::from_key(cid_key(b"server key")).generate_cid();
        let after = HashedConnectionIdGenerator::from_key(cid_key(b"server key"));
        assert!(after.validate(&before).is_ok());
        let other = HashedConnectionIdGenerator::from_key(cid_key(b"another server's key"));
        assert!(other.validate(&before).is_err());
    }

    #[test]
    fn the_reset_key_depends_on_the_secret_alone() {
        let tag = |secret: &[u8]| {
            hmac::sign(&derive(secret, b"label"), b"connection id")
                .as_ref()
                .to_vec()
        };
        assert_eq!(tag(b"server key"), tag(b"server key"));
        assert_ne!(tag(b"server key"), tag(b"another server's key"));
    }
}

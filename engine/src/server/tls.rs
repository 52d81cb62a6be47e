//! TLS for the QUIC front: TLS 1.3 only, the ring provider, ALPN `gatewarden/1`, and mutual
//! authentication against the fleet CA. Identity checks read the peer's certificate names.

use std::path::Path;
use std::sync::Arc;

use gatewarden_protocol::{ALPN, GateId};
use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::certs::{ADMIN_NAME, CertDir, gate_name};
use super::tickets::DerivedTicketer;

/// TLS set-up failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason} (create development certificates with `gatewarden cert`)")]
    Pem {
        /// Which file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn pem_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate in a PEM file.
///
/// # Errors
/// An unreadable file or one without certificates.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| pem_err(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate in file"));
    }
    Ok(certs)
}

/// Reads the private key in a PEM file.
///
/// # Errors
/// An unreadable file or one without a key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| pem_err(path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => pem_err(path, "no private key in file"),
        other => pem_err(path, other),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's provider: ring's, with `TLS13_AES_128_GCM_SHA256` first. ring's default
/// order puts the AES-256/SHA-384 suite first, whose key schedule runs SHA-512 in software
/// on x86 (no SHA-512 instructions), a measurable part of each handshake in a reconnect storm;
/// SHA-256 runs on the SHA extensions, and AES-128 is QUIC's own Initial suite. The server
/// picks by its own order (`ignore_client_order`), whatever a gate's firmware prefers.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The server's rustls configuration: its certificate, and client certificates required and
/// verified against the fleet CA. Session tickets are sealed under keys derived from the
/// server's private key (tickets.rs), so a gate resumes its session, skipping both
/// certificate checks, even with a restarted server: that is what makes a reconnect storm
/// cheaper.
///
/// # Errors
/// Missing or invalid certificate files.
pub fn server_config(dir: &CertDir) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&dir.ca_cert())? {
        roots.add(ca)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), server_provider()).build()?;
    let key_path = dir.server_key();
    let secret = std::fs::read(&key_path).map_err(|e| pem_err(&key_path, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&dir.server_cert())?, load_key(&key_path)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.ignore_client_order = true;
    config.ticketer = Arc::new(DerivedTicketer::new(&secret));
    Ok(config)
}

/// A client rustls configuration presenting `cert`/`key` and trusting the fleet CA (used by
/// the tests and the admin tools; the load generator has its own).
///
/// # Errors
/// Missing or invalid certificate files.
pub fn client_config(
    dir: &CertDir,
    cert: &Path,
    key: &Path,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&dir.ca_cert())? {
        roots.add(ca)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// What the peer's (already CA-verified) certificate entitles it to.
#[derive(Clone, Debug)]
pub struct PeerCert(CertificateDer<'static>);

impl PeerCert {
    /// The end-entity certificate of a verified peer.
    pub fn from_chain(chain: &[CertificateDer<'static>]) -> Option<Self> {
        chain.first().cloned().map(Self)
    }

    /// Whether one of the certificate's DNS names is exactly `name`. Exact comparison, not
    /// TLS name matching: a wildcard certificate (`*.gates.gatewarden`) must not stand for
    /// every gate.
    fn names_exactly(&self, name: &str) -> bool {
        webpki::EndEntityCert::try_from(&self.0)
            .is_ok_and(|ee| ee.valid_dns_names().any(|n| n.eq_ignore_ascii_case(name)))
    }

    /// Whether the certificate names this gate.
    pub fn is_gate(&self, gate: GateId) -> bool {
        self.names_exactly(&gate_name(gate))
    }

    /// Whether the certificate is an admin's.
    pub fn is_admin(&self) -> bool {
        self.names_exactly(ADMIN_NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::certs::ensure_dev_certs;

    #[test]
    fn the_server_takes_no_early_data_and_speaks_only_our_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir(dir.path().to_owned());
        ensure_dev_certs(&certs, [GateId(1)]).unwrap();
        let config = server_config(&certs).unwrap();
        // PROTOCOL.md section 1: no 0-RTT, so no replayable request reaches the server.
        assert_eq!(config.max_early_data_size, 0);
        assert_eq!(config.alpn_protocols, vec![ALPN.to_vec()]);
    }

    /// Runs a TLS handshake between two in-memory connections, and delivers whatever the
    /// server sends after it (its session tickets).
    fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        let mut wire = Vec::new();
        for _ in 0..16 {
            wire.clear();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut from_client = wire.as_slice();
            while !from_client.is_empty() {
                server.read_tls(&mut from_client).unwrap();
                server.process_new_packets().unwrap();
            }
            wire.clear();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            let mut from_server = wire.as_slice();
            while !from_server.is_empty() {
                client.read_tls(&mut from_server).unwrap();
                client.process_new_packets().unwrap();
            }
            if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
                return;
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn a_gate_resumes_its_session_with_a_restarted_server_and_keeps_its_identity() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir(dir.path().to_owned());
        ensure_dev_certs(&certs, [GateId(7)]).unwrap();
        let gate = Arc::new(
            client_config(
                &certs,
                &certs.gate_cert(GateId(7)),
                &certs.gate_key(GateId(7)),
            )
            .unwrap(),
        );
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connect = |server_config: &Arc<rustls::ServerConfig>| {
            let mut client =
                rustls::ClientConnection::new(Arc::clone(&gate), name.clone()).unwrap();
            let mut server = rustls::ServerConnection::new(Arc::clone(server_config)).unwrap();
            handshake(&mut client, &mut server);
            (client, server)
        };
        let first_process = Arc::new(server_config(&certs).unwrap());
        let (client, server) = connect(&first_process);
        assert_eq!(client.handshake_kind(), Some(rustls::HandshakeKind::Full));
        assert_eq!(
            client.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        let full_identity = server.peer_certificates().unwrap().to_vec();
        // The server restarts: a new configuration from the same files.
        let second_process = Arc::new(server_config(&certs).unwrap());
        let (client, server) = connect(&second_process);
        assert_eq!(
            client.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        assert_eq!(
            server.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        let resumed_identity = server.peer_certificates().unwrap().to_vec();
        assert_eq!(resumed_identity, full_identity);
        assert!(
            PeerCert::from_chain(&resumed_identity)
                .unwrap()
                .is_gate(GateId(7))
        );
        // Another server (another key) cannot open the ticket: a full handshake.
        let other = tempfile::tempdir().unwrap();
        let other_certs = CertDir(other.path().to_owned());
        ensure_dev_certs(&other_certs, []).unwrap();
        std::fs::copy(certs.ca_cert(), other_certs.ca_cert()).unwrap();
        std::fs::copy(certs.ca_key(), other_certs.ca_key()).unwrap();
        std::fs::remove_file(other_certs.server_cert()).unwrap();
        ensure_dev_certs(&other_certs, []).unwrap();
        let (client, _) = connect(&Arc::new(server_config(&other_certs).unwrap()));
        assert_eq!(client.handshake_kind(), Some(rustls::HandshakeKind::Full));
    }

    #[test]
    fn pem_files_without_the_wanted_item_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let certs = CertDir(dir.path().to_owned());
        ensure_dev_certs(&certs, []).unwrap();
        // A key file holds no certificate, and a certificate file no key.
        let e = load_certs(&certs.server_key()).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e = load_key(&certs.server_cert()).unwrap_err();
        assert!(e.to_string().contains("no private key"), "{e}");
        assert_eq!(load_certs(&certs.server_cert()).unwrap().len(), 1);
        assert!(load_key(&certs.server_key()).is_ok());
    }
}

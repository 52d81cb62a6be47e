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

/// The server's rustls configuration: its certificate, and client certificates required and
/// verified against the fleet CA.
///
/// # Errors
/// Missing or invalid certificate files.
pub fn server_config(dir: &CertDir) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&dir.ca_cert())? {
        roots.add(ca)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&dir.server_cert())?,
            load_key(&dir.server_key())?,
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
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

//! Development certificates: a fleet CA, the server's certificate, one certificate per gate,
//! and an admin certificate. A gate's certificate names it with the DNS name
//! `gate-<id>.gates.gatewarden`; an admin's with `admin.gatewarden`. The server checks those
//! names, so a gate can act only as itself.
//!
//! Layout of a certificate folder (keys are PKCS#8 PEM, created owner-only):
//! ```text
//! ca.pem  ca.key  server.pem  server.key  admin.pem  admin.key  gates/<id>.pem  gates/<id>.key
//! ```
//! Production fleets use their own CA; only the folder layout matters to `serve`.

use std::io::Write;
use std::path::{Path, PathBuf};

use gatewarden_protocol::GateId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// DNS name an admin certificate carries.
pub const ADMIN_NAME: &str = "admin.gatewarden";
const CA_COMMON_NAME: &str = "gatewarden fleet CA (development)";

/// The DNS name a gate's certificate carries.
pub fn gate_name(gate: GateId) -> String {
    format!("gate-{gate}.gates.gatewarden")
}

/// Paths inside a certificate folder.
#[derive(Clone, Debug)]
pub struct CertDir(pub PathBuf);

impl CertDir {
    /// The fleet CA certificate (the trust anchor for both sides).
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    /// The fleet CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    /// The server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("server.pem")
    }
    /// The server key.
    pub fn server_key(&self) -> PathBuf {
        self.0.join("server.key")
    }
    /// The admin certificate.
    pub fn admin_cert(&self) -> PathBuf {
        self.0.join("admin.pem")
    }
    /// The admin key.
    pub fn admin_key(&self) -> PathBuf {
        self.0.join("admin.key")
    }
    /// A gate's certificate.
    pub fn gate_cert(&self, gate: GateId) -> PathBuf {
        self.0.join("gates").join(format!("{gate}.pem"))
    }
    /// A gate's key.
    pub fn gate_key(&self, gate: GateId) -> PathBuf {
        self.0.join("gates").join(format!("{gate}.key"))
    }
}

/// Certificate generation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen refused the parameters or key.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A loaded CA that can issue certificates.
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
}

impl FleetCa {
    /// Loads the CA from `dir`, creating a new one if there is none.
    ///
    /// # Errors
    /// Unreadable files or an invalid key.
    pub fn open_or_create(dir: &CertDir) -> Result<Self, CertError> {
        let key_path = dir.ca_key();
        let key = if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            KeyPair::from_pem(&pem)?
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_public(&dir.ca_cert(), cert.pem().as_bytes())?;
            key
        };
        // The issuer is rebuilt from the same distinguished name and key, so certificates it
        // signs chain to the CA certificate on disk (issuer name and key identifier match).
        Ok(Self {
            issuer: Issuer::new(ca_params(), key),
        })
    }

    fn issue(
        &self,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<(), CertError> {
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        write_private(key_path, key.serialize_pem().as_bytes())?;
        write_public(cert_path, cert.pem().as_bytes())
    }

    /// Issues the server certificate for `names` (DNS names or IP addresses).
    ///
    /// # Errors
    /// Generation or write failures.
    pub fn issue_server(&self, dir: &CertDir, names: &[String]) -> Result<(), CertError> {
        self.issue(
            names.to_vec(),
            ExtendedKeyUsagePurpose::ServerAuth,
            &dir.server_cert(),
            &dir.server_key(),
        )
    }

    /// Issues the admin certificate.
    ///
    /// # Errors
    /// Generation or write failures.
    pub fn issue_admin(&self, dir: &CertDir) -> Result<(), CertError> {
        self.issue(
            vec![ADMIN_NAME.to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
            &dir.admin_cert(),
            &dir.admin_key(),
        )
    }

    /// Issues one gate's certificate.
    ///
    /// # Errors
    /// Generation or write failures.
    pub fn issue_gate(&self, dir: &CertDir, gate: GateId) -> Result<(), CertError> {
        let gates = dir.0.join("gates");
        create_private_dir(&gates)?;
        self.issue(
            vec![gate_name(gate)],
            ExtendedKeyUsagePurpose::ClientAuth,
            &dir.gate_cert(gate),
            &dir.gate_key(gate),
        )
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Creates whatever is missing in `dir`: the CA, a server certificate for localhost, the admin
/// certificate and a certificate for each gate. Returns how many certificates were issued.
///
/// # Errors
/// Generation or write failures.
pub fn ensure_dev_certs(
    dir: &CertDir,
    gates: impl IntoIterator<Item = GateId>,
) -> Result<usize, CertError> {
    create_private_dir(&dir.0)?;
    let ca = FleetCa::open_or_create(dir)?;
    let mut issued = 0;
    if !dir.server_cert().exists() {
        let names = ["localhost", "127.0.0.1", "::1"].map(str::to_owned);
        ca.issue_server(dir, &names)?;
        issued += 1;
    }
    if !dir.admin_cert().exists() {
        ca.issue_admin(dir)?;
        issued += 1;
    }
    for gate in gates {
        if !dir.gate_cert(gate).exists() {
            ca.issue_gate(dir, gate)?;
            issued += 1;
        }
    }
    Ok(issued)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_err(dir))
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io_err(path))?;
    // No fsync: development certificates are cheap to reissue, and a fleet of a thousand
    // gates would otherwise spend seconds syncing two thousand small files.
    file.write_all(bytes).map_err(io_err(path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    write_with_mode(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    write_with_mode(path, bytes, 0o644)
}

//! The admin bearer token: 32 random bytes from the system's generator, hex, in an
//! owner-only file in the data folder. Whoever can read the file may use the API, so a file
//! others can read is refused rather than trusted.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

/// Random bytes in a new token (64 hex characters).
const TOKEN_BYTES: usize = 32;

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The file could not be created, read or checked.
    #[error("cannot use the admin token file {}: {source}", path.display())]
    Io {
        /// The token file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but holds no token.
    #[error(
        "the admin token file {} is empty; delete it and restart to make a new token",
        path.display()
    )]
    Empty {
        /// The token file.
        path: PathBuf,
    },
    /// Users other than the owner may read the file.
    #[error(
        "the admin token file {} can be read by other users (mode {mode:o}); run \
         `chmod 600 {}` or delete it and restart to make a new token",
        path.display(),
        path.display()
    )]
    WorldReadable {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The system's random generator failed.
    #[error("the system random generator failed; cannot make an admin token")]
    Random,
}

/// The secret the admin API expects after `Authorization: Bearer `. Debug never shows it.
#[derive(Clone)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from its text (tests and embedders that manage the secret themselves).
    ///
    /// # Errors
    /// [`TokenError::Empty`] for an empty or blank text.
    pub fn from_secret(secret: &str, origin: &Path) -> Result<Self, TokenError> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(TokenError::Empty {
                path: origin.to_owned(),
            });
        }
        Ok(Self(secret.to_owned()))
    }

    /// A fresh random token.
    ///
    /// # Errors
    /// [`TokenError::Random`] if the system generator fails.
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TokenError::Random)?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The secret, to hand to a client (the console URL, a test). Never log it.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        // The length is not secret (every generated token has 64 characters).
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Reads the token at `path`, or makes one there (mode 0600, one line) if the file does not
    /// exist.
    ///
    /// # Errors
    /// An unreadable, empty or world-readable file, or a failed write.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        match create_new(path) {
            Ok(mut file) => {
                let token = Self::generate()?;
                file.write_all(format!("{}\n", token.0).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                tracing::info!(path = %path.display(), "made a new admin token");
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::read(path),
            Err(e) => Err(io(e)),
        }
    }

    fn read(path: &Path) -> Result<Self, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(io)?;
        let token = Self::from_secret(&text, path)?;
        tracing::info!(path = %path.display(), "admin token read");
        Ok(token)
    }
}

#[cfg(unix)]
fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| TokenError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o044 != 0 {
        return Err(TokenError::WorldReadable {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), TokenError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_a_private_hex_token_once_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let made = AdminToken::load_or_create(&path).unwrap();
        assert_eq!(made.secret().len(), 2 * TOKEN_BYTES);
        assert!(made.secret().bytes().all(|b| b.is_ascii_hexdigit()));
        let again = AdminToken::load_or_create(&path).unwrap();
        assert_eq!(made.secret(), again.secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!format!("{made:?}").contains(made.secret()));
    }

    #[test]
    fn two_tokens_differ() {
        let a = AdminToken::generate().unwrap();
        let b = AdminToken::generate().unwrap();
        assert_ne!(a.secret(), b.secret());
    }

    #[test]
    fn matches_only_the_exact_token() {
        let t = AdminToken::from_secret("abc123", Path::new("t")).unwrap();
        assert!(t.matches("abc123"));
        assert!(!t.matches("abc124"));
        assert!(!t.matches("abc12"));
        assert!(!t.matches(""));
    }

    #[test]
    fn empty_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        create_new(&path).unwrap().write_all(b"\n").unwrap();
        let err = AdminToken::load_or_create(&path).unwrap_err();
        assert!(matches!(err, TokenError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("admin.token"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "deadbeef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AdminToken::load_or_create(&path).unwrap_err();
        assert!(matches!(err, TokenError::WorldReadable { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!err.to_string().contains("deadbeef"));
    }
}

//! The admin bearer token: 32 random bytes from the system's generator, hex, in an
//! owner-only file in the data folder. Whoever can read the file may use the API, so a file
//! with any group or other permission, a symbolic link or a non-regular file is refused
//! rather than trusted.

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
    /// Users other than the owner have some permission on the file.
    #[error(
        "the admin token file {} is not private (mode {mode:03o}): group and other users must \
         have no permission on it; run `chmod 600 {}` or delete it and restart to make a new \
         token",
        path.display(),
        path.display()
    )]
    NotPrivate {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path is a symbolic link, a directory or another non-regular file.
    #[error(
        "the admin token file {} is not a regular file ({kind}); replace it with a plain file \
         of mode 600, or delete it and restart to make a new token",
        path.display()
    )]
    NotRegular {
        /// The token file.
        path: PathBuf,
        /// What it is instead ("a symbolic link", "a directory", ...).
        kind: &'static str,
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
    /// An unreadable or empty file, a link or non-regular file, a file with any group or other
    /// permission, or a failed write.
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
        // Checked before opening, so a link is never followed, and again on the open handle,
        // so a file swapped in between is caught too.
        check_private(path, &std::fs::symlink_metadata(path).map_err(io)?)?;
        let mut file = std::fs::File::open(path).map_err(io)?;
        check_private(path, &file.metadata().map_err(io)?)?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(io)?;
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

/// Refuses anything but a regular file (a link could point anywhere, a FIFO could block) and,
/// on Unix, any permission bit for group or others: whoever can read the token can read
/// personal data, and whoever can write it can choose the token.
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), TokenError> {
    let kind = meta.file_type();
    let not_regular = |kind| {
        Err(TokenError::NotRegular {
            path: path.to_owned(),
            kind,
        })
    };
    if kind.is_symlink() {
        return not_regular("a symbolic link");
    }
    if kind.is_dir() {
        return not_regular("a directory");
    }
    if !kind.is_file() {
        return not_regular("a device, pipe or socket");
    }
    check_mode(path, meta)
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TokenError::NotPrivate {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), TokenError> {
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

    /// A token file at `mode`; the error loading it.
    #[cfg(unix)]
    fn load_with_mode(mode: u32) -> (tempfile::TempDir, TokenError) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "deadbeef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = AdminToken::load_or_create(&path).unwrap_err();
        (dir, err)
    }

    #[cfg(unix)]
    #[test]
    fn any_group_or_other_permission_is_refused() {
        for mode in [
            0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o660, 0o666,
        ] {
            let (dir, err) = load_with_mode(mode);
            assert!(
                matches!(err, TokenError::NotPrivate { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            let msg = err.to_string();
            let path = dir.path().join("admin.token");
            assert!(msg.contains(&format!("{mode:o}")), "{msg}");
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
            assert!(!msg.contains("deadbeef"), "{msg}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn owner_only_modes_are_accepted() {
        use std::os::unix::fs::PermissionsExt;
        for mode in [0o600, 0o400] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("admin.token");
            std::fs::write(&path, "deadbeef\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let token = AdminToken::load_or_create(&path).unwrap();
            assert_eq!(token.secret(), "deadbeef");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_refused_even_to_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.token");
        create_new(&target)
            .unwrap()
            .write_all(b"deadbeef\n")
            .unwrap();
        let link = dir.path().join("admin.token");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = AdminToken::load_or_create(&link).unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::NotRegular {
                    kind: "a symbolic link",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("admin.token"), "{err}");
        // A dangling link is refused too, not followed to create a file elsewhere.
        std::fs::remove_file(&target).unwrap();
        let err = AdminToken::load_or_create(&link).unwrap_err();
        assert!(matches!(err, TokenError::NotRegular { .. }), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::create_dir(&path).unwrap();
        let err = AdminToken::load_or_create(&path).unwrap_err();
        assert!(
            matches!(
                err,
                TokenError::NotRegular {
                    kind: "a directory",
                    ..
                }
            ),
            "{err}"
        );
    }
}

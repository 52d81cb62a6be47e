//! The site lock: `DATA/site.lock`, held exclusively by whoever writes to a site (`serve` for
//! its whole run, the CLI's writers, the history generator), so that no write lands behind a
//! running server's caches. An OS file lock: released when dropped, or by the kernel when the
//! process dies. The file holds the holder's description, shown to whoever finds it taken.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;

/// The lock file inside a data folder.
pub const LOCK_FILE: &str = "site.lock";

/// An exclusive lock on a site; see the module docs.
#[derive(Debug)]
pub struct SiteLock {
    _file: File,
}

/// Why a site could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SiteLockError {
    /// Another process holds it.
    #[error("{} holds the site lock", if holder.is_empty() { "another gatewarden process" } else { holder })]
    Held {
        /// What the holder wrote into the lock file ("gatewarden serve (pid 42)"), maybe empty.
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot use the site lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl SiteLock {
    /// Locks the site in `data` for `holder` (a short description kept in the lock file), or
    /// says who holds it.
    ///
    /// # Errors
    /// [`SiteLockError::Held`] while another process holds it; [`SiteLockError::Io`] when the
    /// file cannot be used.
    pub fn acquire(data: &Path, holder: &str) -> Result<Self, SiteLockError> {
        let path = data.join(LOCK_FILE);
        let io = |source| SiteLockError::Io {
            path: path.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut other = String::new();
                let _ = file.read_to_string(&mut other);
                return Err(SiteLockError::Held {
                    holder: other.trim().to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let note = format!("{holder} (pid {})\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(note.as_bytes()))
            .map_err(io)?;
        Ok(Self { _file: file })
    }
}

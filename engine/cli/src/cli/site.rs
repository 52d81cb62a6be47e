//! A site: a data folder made by `gatewarden init` (or the demo). Every command but `init`
//! opens one through here, so that a mistyped `--data` is refused by name instead of silently
//! becoming a new, empty site with a fresh credential key.
//!
//! Opening a site also checks that nobody else can rewrite what the engine trusts: a data
//! folder, configuration, policy or certificate folder writable by group or others is refused
//! with the `chmod` that fixes it (whatever the umask was when they were made).
//!
//! Writers lock the site ([`SiteLock`]): `serve` for its whole run, `import`, `health import`,
//! `enroll` and `reinstate` while they write. A CLI write behind a running server would land
//! in the store but not in the server's caches (a revoked person still admitted until a
//! restart), so it is refused, naming the server's admin API as the way to make it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gatewarden::Config;
use gatewarden::config::CONFIG_FILE;

#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

/// Owner-only modes for what the engine creates.
pub(crate) const PRIVATE_DIR: u32 = 0o700;
pub(crate) const PRIVATE_FILE: u32 = 0o600;

/// Checks that `data` is an initialised site with safe permissions and loads its
/// configuration.
pub(crate) fn open(data: &Path) -> anyhow::Result<Config> {
    check_is_site(data)?;
    let config = Config::load_from_data_dir(data)?;
    check_private(data, &config)?;
    Ok(config)
}

/// Opens the site's store directly (for the CLI's imports, queries and status changes), where
/// the configuration's `store` says, with the credential key where it puts it.
pub(crate) fn open_store(data: &Path, config: &Config) -> anyhow::Result<gatewarden::store::Store> {
    use gatewarden::store::{Store, StoreLocation};
    let dir = data.join("store");
    let location = config.store.clone().unwrap_or(StoreLocation::Sqlite);
    Store::open_location(&location, &dir, &config.engine.credential_key_path(data)).with_context(
        || match &location {
            StoreLocation::Sqlite => format!("cannot open the store in {}", dir.display()),
            other => format!("cannot open the store at {other:?}"),
        },
    )
}

/// A site has its configuration file (written by `init` and the demo), or at least a store
/// (a folder made by a program that embeds the engine).
fn check_is_site(data: &Path) -> anyhow::Result<()> {
    let has_config = data.join(CONFIG_FILE).is_file();
    let has_store = data
        .join("store")
        .join(gatewarden::store::DB_FILE)
        .is_file();
    anyhow::ensure!(
        has_config || has_store,
        "{} is not a gatewarden site (no {CONFIG_FILE}, no store); create one with \
         `gatewarden init {}`, or pass --data with the site's folder",
        data.display(),
        data.display()
    );
    Ok(())
}

/// Refuses files and folders the engine trusts when group or others may write them, and
/// tightens a data folder that others may read (it holds personal data).
fn check_private(data: &Path, config: &Config) -> anyhow::Result<()> {
    refuse_writable_by_others(data)?;
    tighten_dir(data)?;
    let mut trusted: Vec<PathBuf> = vec![data.join(CONFIG_FILE), data.join(&config.server.certs)];
    if let Some(policy) = &config.engine.policy {
        trusted.push(data.join(policy));
    }
    for path in trusted.iter().filter(|p| p.exists()) {
        refuse_writable_by_others(path)?;
    }
    Ok(())
}

/// Refuses `path` if group or others may write it.
#[cfg(unix)]
pub(crate) fn refuse_writable_by_others(path: &Path) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the permissions of {}", path.display()))?
        .permissions()
        .mode();
    anyhow::ensure!(
        mode & 0o022 == 0,
        "{} is writable by {} (mode {:o}): anyone who can write it can change what the engine \
         trusts; run `chmod go-w {}` and start again",
        path.display(),
        if mode & 0o002 != 0 {
            "every user"
        } else {
            "its group"
        },
        mode & 0o777,
        path.display()
    );
    Ok(())
}

/// Refuses `path` if group or others may write it.
#[cfg(not(unix))]
pub(crate) fn refuse_writable_by_others(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn tighten_dir(dir: &Path) -> anyhow::Result<()> {
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the permissions of {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR))
            .with_context(|| format!("cannot make {} owner-only", dir.display()))?;
        tracing::info!(dir = %dir.display(), was = format!("{:o}", mode & 0o777), "data folder made owner-only (0700)");
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten_dir(_dir: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Creates `dir` (and parents) owner-only, whatever the umask, and tightens it if it existed.
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR);
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR))
        .with_context(|| format!("cannot make {} owner-only", dir.display()))?;
    Ok(())
}

/// Writes a new owner-only file (0600 whatever the umask); fails if it exists.
pub(crate) fn write_new_private(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(PRIVATE_FILE);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// An exclusive lock on a site, held while a command writes to it (or, for `serve`, while it
/// runs): the engine's [`gatewarden::site_lock::SiteLock`], with the CLI's advice when it is
/// taken.
#[derive(Debug)]
pub(crate) struct SiteLock {
    _lock: gatewarden::site_lock::SiteLock,
}

impl SiteLock {
    /// Locks the site for `holder`, or says who holds it and what to do instead.
    pub(crate) fn acquire(data: &Path, holder: &str) -> anyhow::Result<Self> {
        use gatewarden::site_lock::SiteLockError;
        match gatewarden::site_lock::SiteLock::acquire(data, holder) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err(SiteLockError::Held { holder }) => {
                anyhow::bail!("{}", locked_message(data, &holder))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn locked_message(data: &Path, holder: &str) -> String {
    let holder = if holder.is_empty() {
        "another gatewarden process"
    } else {
        holder
    };
    if holder.starts_with("gatewarden serve") {
        format!(
            "{holder} is serving {data}: a write from here would reach the store but not the \
             server's caches (a revoked person would still be admitted until a restart). Make \
             it through the server's admin API instead (POST /api/v1/subjects, /api/v1/gates, \
             /api/v1/health, /api/v1/enroll, /api/v1/subjects/ID/reinstate, with the bearer \
             token in {token}), or stop the server first",
            data = data.display(),
            token = data.join("admin.token").display()
        )
    } else {
        format!(
            "{holder} is writing to {}; try again when it has finished",
            data.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_that_is_not_a_site_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("sitee");
        let err = open(&missing).unwrap_err().to_string();
        assert!(err.contains("is not a gatewarden site"), "{err}");
        assert!(err.contains("gatewarden init"), "{err}");
        assert!(!missing.exists(), "nothing may be created");
    }

    #[cfg(unix)]
    #[test]
    fn writable_config_is_refused_with_the_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("site");
        write_new_private(&data.join(CONFIG_FILE), "").unwrap();
        assert!(open(&data).is_ok());
        std::fs::set_permissions(
            data.join(CONFIG_FILE),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let err = open(&data).unwrap_err().to_string();
        assert!(err.contains("chmod go-w"), "{err}");
        assert!(err.contains("every user"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_data_folder_is_tightened_and_a_writable_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("site");
        write_new_private(&data.join(CONFIG_FILE), "").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        open(&data).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = open(&data).unwrap_err().to_string();
        assert!(err.contains("its group"), "{err}");
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let serving = SiteLock::acquire(dir.path(), "gatewarden serve").unwrap();
        let err = SiteLock::acquire(dir.path(), "gatewarden import")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin API"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(serving);
        let importing = SiteLock::acquire(dir.path(), "gatewarden import").unwrap();
        let err = SiteLock::acquire(dir.path(), "gatewarden enroll")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is writing to"), "{err}");
        drop(importing);
    }
}

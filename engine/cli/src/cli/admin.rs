//! `gatewarden revoke` and `gatewarden reinstate`: a person's status, changed on purpose and
//! recorded in the audit trail with the reason. Reinstating is the only way a revoked or
//! blocklisted person becomes active again: imports and uploads are refused that.
//!
//! Like every CLI write, these lock the site, so they are refused while a server runs on it;
//! the server's admin API has the same two routes.

use std::path::PathBuf;

use anyhow::Context;
use gatewarden::clock::{Clock, SystemClock};
use gatewarden::store::Store;
use gatewarden_protocol::SubjectId;

/// Arguments of `gatewarden revoke` and `gatewarden reinstate`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The person's subject id.
    subject: u64,
    /// Why, for the audit trail (required).
    #[arg(long)]
    reason: String,
    /// Data folder.
    #[arg(long, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
}

fn open(args: &StatusArgs, command: &str) -> anyhow::Result<(Store, super::site::SiteLock)> {
    anyhow::ensure!(
        !args.reason.trim().is_empty(),
        "--reason is empty: say why, for the audit trail"
    );
    let config = super::site::open(&args.data)?;
    let lock = super::site::SiteLock::acquire(&args.data, command)?;
    Ok((super::site::open_store(&args.data, &config)?, lock))
}

pub(crate) fn run_revoke(args: StatusArgs) -> anyhow::Result<()> {
    let (store, _lock) = open(&args, "gatewarden revoke")?;
    let subject = SubjectId(args.subject);
    let known = store.revoke(subject, &args.reason, SystemClock.now())?;
    anyhow::ensure!(known, "no subject {subject} in {}", args.data.display());
    let status = store
        .subject(subject)
        .map(|s| s.status.name())
        .unwrap_or("?");
    println!("subject {subject} is {status}; recorded in the audit trail");
    Ok(())
}

pub(crate) fn run_reinstate(args: StatusArgs) -> anyhow::Result<()> {
    let (store, _lock) = open(&args, "gatewarden reinstate")?;
    let subject = SubjectId(args.subject);
    let was = store
        .reinstate(subject, &args.reason, SystemClock.now())?
        .with_context(|| format!("no subject {subject} in {}", args.data.display()))?;
    if was == gatewarden_protocol::SubjectStatus::Active {
        println!("subject {subject} was already active; nothing changed");
    } else {
        println!(
            "subject {subject} reinstated (was {}); recorded in the audit trail",
            was.name()
        );
    }
    Ok(())
}

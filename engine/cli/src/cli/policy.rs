//! `gatewarden policy check FILE`: every problem of a policy file at once, or what it does.

use std::path::PathBuf;

use gatewarden::policy::{PolicyBook, PolicyError};

/// Arguments of `gatewarden policy`.
#[derive(Debug, clap::Args)]
pub(crate) struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// Check a policy file without loading it anywhere: every problem as file:line:column
    /// (exit 1), or its version and what it does per market and category (exit 0). A server
    /// rereads its policy on SIGHUP or `POST /api/v1/policy/reload`.
    Check {
        /// The policy file (e.g. site/policy.toml).
        file: PathBuf,
    },
    /// Re-decide recorded entries under another policy, read-only, and report what would
    /// change: by market, check, category and hour, with examples.
    Replay(super::replay::ReplayArgs),
}

pub(crate) fn run(args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::Replay(args) => super::replay::run(args),
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let book = load_or_report(file)?;
    println!("{}: ok", file.display());
    print!("{}", book.summary());
    Ok(())
}

/// Loads a policy file, or prints every problem as file:line:column and fails.
pub(crate) fn load_or_report(file: &std::path::Path) -> anyhow::Result<PolicyBook> {
    match PolicyBook::load(file) {
        Ok(book) => Ok(book),
        Err(PolicyError::Invalid { problems }) => {
            for p in &problems {
                eprintln!("{p}");
            }
            let n = problems.len();
            anyhow::bail!(
                "{} has {n} problem{}; nothing was loaded",
                file.display(),
                if n == 1 { "" } else { "s" }
            )
        }
        Err(e) => Err(e.into()),
    }
}

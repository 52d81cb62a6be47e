//! Command-line front end. Each subcommand lives in its own module and talks to the engine
//! only through the library API.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod calibrate;
mod cert;
mod demo;
mod enroll;
mod gallery;
mod import;
mod policy;
mod query;
mod replay;
mod search;
mod serve;
mod site;
mod store;

/// gatewarden: face-gate ingestion and matching engine.
#[derive(Debug, Parser)]
#[command(name = "gatewarden", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole job end to end: population, import, a real server on loopback, a fleet
    /// of simulated gates over QUIC, and the report.
    Demo(demo::DemoArgs),
    /// Serve gates over QUIC (mutual TLS) from a data folder, with the admin HTTP API, metrics
    /// and market console beside it.
    Serve(serve::ServeArgs),
    /// Create a ready data folder: configuration, certificates, empty store, example policy.
    Init(cert::InitArgs),
    /// Create development certificates: a fleet CA, the server's, gates' and an admin's.
    Cert(cert::CertArgs),
    /// Enroll face templates from a .npy file into the store and the gallery.
    Enroll(enroll::EnrollArgs),
    /// Build, inspect and verify gallery segment files.
    Gallery(gallery::GalleryArgs),
    /// Exact top-k search of query vectors over a gallery file, with timings.
    Search(search::SearchArgs),
    /// Import subjects, gates or health records into a data folder.
    Import(import::ImportArgs),
    /// Import the daily health feed (test results, vaccination, codes).
    Health(import::HealthArgs),
    /// Query entry records: trajectories, frequency, sign-ins, contacts.
    Query(query::QueryArgs),
    /// The entry history: statistics per day partition, and retention by hand.
    Store(store::StoreArgs),
    /// Calibrate the face thresholds at the live gallery size: FPIR and FNIR today, the
    /// threshold meeting a target FPIR, and FPIR if the registry grows (never edits the policy).
    Calibrate(calibrate::CalibrateArgs),
    /// Check a policy file: every problem at once, or what it does per market and category.
    Policy(policy::PolicyArgs),
    /// Revoke a person everywhere (audited; refused while a server runs on the site: use its
    /// admin API).
    Revoke(admin::StatusArgs),
    /// Lift a revocation or blocklisting (audited): the only way a revoked person becomes
    /// active again.
    Reinstate(admin::StatusArgs),
}

/// Sets up logging to stderr; `RUST_LOG` overrides the default level.
pub(crate) fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The PostgreSQL client logs every statement's parameters at debug level: templates
    // (embeddings), credential hashes. Never, whatever RUST_LOG asks.
    let filter = match "tokio_postgres=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Default data folder of every command.
pub(crate) const DEFAULT_DATA: &str = "gatewarden-data";

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Init(args) => cert::run_init(args),
        Command::Cert(args) => cert::run(args),
        Command::Enroll(args) => enroll::run(args),
        Command::Health(args) => import::run_health(args),
        Command::Gallery(args) => gallery::run(args),
        Command::Search(args) => search::run(args),
        Command::Import(args) => import::run(args),
        Command::Query(args) => query::run(args),
        Command::Store(args) => store::run(args),
        Command::Policy(args) => policy::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Revoke(args) => admin::run_revoke(args),
        Command::Reinstate(args) => admin::run_reinstate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, like `{:#}`, but without a cause whose text the
/// message before it already includes: many errors name their OS error in their own text and
/// also return it as their source, which would print "(os error 98)" twice.
fn report(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that names its cause in its message and also returns it as its source, as
    /// the library's `#[error("cannot bind {addr}: {source}")]` errors do.
    #[derive(Debug)]
    struct Bind(std::io::Error);

    impl std::fmt::Display for Bind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot bind 127.0.0.1:4433: {}", self.0)
        }
    }

    impl std::error::Error for Bind {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_load_generators_manual_steps_are_valid_commands() {
        let mut parsed = 0;
        for line in gatewarden_loadgen::BY_HAND.lines() {
            for command in line.split("&&").map(str::trim) {
                if !command.starts_with("gatewarden ") || command.contains("...") {
                    continue;
                }
                let words: Vec<&str> = command.split_whitespace().collect();
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("`{command}` from gatewarden-loadgen --help does not parse:\n{e}");
                }
                parsed += 1;
            }
        }
        assert!(parsed >= 5, "only {parsed} commands found");
    }

    #[test]
    fn report_prints_each_cause_once() {
        let os = std::io::Error::from_raw_os_error(98);
        let os_text = os.to_string();
        let err = anyhow::Error::new(Bind(os)).context("cannot start");
        assert_eq!(format!("{err:#}").matches(&os_text).count(), 2);
        assert_eq!(
            report(&err),
            format!("cannot start: cannot bind 127.0.0.1:4433: {os_text}")
        );
        // Causes that add something are all kept.
        let plain = anyhow::anyhow!("disk full")
            .context("cannot write")
            .context("import");
        assert_eq!(report(&plain), "import: cannot write: disk full");
    }
}

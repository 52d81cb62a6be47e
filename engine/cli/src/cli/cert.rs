//! `gatewarden cert` and `gatewarden init`: development certificates and ready data folders.

use std::path::PathBuf;

use gatewarden::model::GateInfo;
use gatewarden::server::certs::{CertDir, ensure_dev_certs};
use gatewarden_protocol::{GateId, MarketId, ZoneId};

/// Arguments of `gatewarden cert`.
#[derive(Debug, clap::Args)]
pub(crate) struct CertArgs {
    /// Certificate folder [default: DATA/certs].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Data folder whose certs/ to use when --dir is not given.
    #[arg(long, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
    /// Issue certificates for gates 1..=N.
    #[arg(long, default_value_t = 0)]
    gates: u32,
}

pub(crate) fn run(args: CertArgs) -> anyhow::Result<()> {
    let dir = CertDir(args.dir.unwrap_or_else(|| args.data.join("certs")));
    let issued = issue(&dir, args.gates)?;
    println!(
        "{} certificate(s) issued in {} (CA, server for localhost, admin, gates 1..={})",
        issued,
        dir.0.display(),
        args.gates
    );
    Ok(())
}

fn issue(dir: &CertDir, gates: u32) -> anyhow::Result<usize> {
    let progress = gates >= 200;
    let mut issued = 0;
    // Issue in chunks so a large fleet shows progress.
    let ids: Vec<GateId> = (1..=gates).map(GateId).collect();
    issued += ensure_dev_certs(dir, std::iter::empty())?;
    for chunk in ids.chunks(100) {
        issued += ensure_dev_certs(dir, chunk.iter().copied())?;
        if progress {
            eprint!(
                "\rcertificates: {} / {gates} gates",
                chunk.last().map_or(0, |g| g.0)
            );
        }
    }
    if progress {
        eprintln!();
    }
    Ok(issued)
}

/// Arguments of `gatewarden init`.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// The data folder to create.
    dir: PathBuf,
    /// Register gates 1..=N (spread over --markets markets, 4 zones each) with certificates.
    #[arg(long, default_value_t = 4)]
    gates: u32,
    /// Markets to spread the gates over.
    #[arg(long, default_value_t = 1)]
    markets: u32,
}

const CONFIG_TEMPLATE: &str = "\
# gatewarden configuration. Every key is optional; these are the defaults.
[engine]
dim = 512
model = \"demo-face-v1\"
precision = \"auto\"     # int8 scan below 100k templates, 1-bit codes + exact re-rank above
utc_offset_minutes = 480
policy = \"policy.toml\"
workers = 0          # matcher threads; 0 = one per core but one
max_batch = 64
max_wait_ms = 2
deadline_ms = 40
commit_max = 256

[server]
listen = \"127.0.0.1:4433\"
certs = \"certs\"

# The admin HTTP API, /metrics and the market console (token: admin.token, made by serve).
[http]
enabled = true
listen = \"127.0.0.1:4480\"
token_file = \"admin.token\"
";

pub(crate) fn run_init(args: InitArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    if dir.join(gatewarden::config::CONFIG_FILE).exists() {
        anyhow::bail!(
            "{} already holds a gatewarden.toml; not overwriting",
            dir.display()
        );
    }
    let markets = args.markets.max(1);
    // Owner-only whatever the umask: the folder will hold personal data, and whoever can
    // rewrite the configuration or the policy decides who is admitted.
    super::site::create_private_dir(dir)?;
    super::site::write_new_private(&dir.join(gatewarden::config::CONFIG_FILE), CONFIG_TEMPLATE)?;
    super::site::write_new_private(
        &dir.join("policy.toml"),
        gatewarden::policy::DEMO_POLICY_TOML,
    )?;
    issue(&CertDir(dir.join("certs")), args.gates)?;
    let engine = gatewarden::Engine::open(dir, gatewarden::Config::load_from_data_dir(dir)?)?;
    let gates: Vec<GateInfo> = (1..=args.gates)
        .map(|g| GateInfo {
            gate: GateId(g),
            market: MarketId((g - 1) % markets + 1),
            zone: ZoneId((g - 1) / markets % 4 + 1),
            name: format!("gate {g}"),
        })
        .collect();
    engine.store().upsert_gates(&gates)?;
    engine.shutdown();
    println!(
        "initialised {}: gatewarden.toml, policy.toml, certs/ ({} gates), store/, gallery/\n\
         next: gatewarden import subjects FILE --data {0}; gatewarden serve --data {0}",
        dir.display(),
        args.gates
    );
    Ok(())
}

//! `gatewarden serve`: the QUIC front over a data folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use gatewarden::Config;
use gatewarden::server::Server;
use gatewarden::server::certs::CertDir;

/// Arguments of `gatewarden serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Data folder (store, gallery, certificates, gatewarden.toml).
    #[arg(long, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
    /// Configuration file [default: DATA/gatewarden.toml, if present].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the configuration (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Certificate folder, overriding the configuration [default: DATA/certs].
    #[arg(long)]
    certs: Option<PathBuf>,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Config::from_toml(&text, path)?
        }
        None => Config::load_from_data_dir(&args.data)?,
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    let certs = CertDir(
        args.certs
            .unwrap_or_else(|| args.data.join(&config.server.certs)),
    );
    let server_config = config.server.clone();
    let engine = Arc::new(
        gatewarden::Engine::open(&args.data, config)
            .with_context(|| format!("cannot open data folder {}", args.data.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gw-quic")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(Arc::clone(&engine), &server_config, &certs)?;
        let addr = server.local_addr()?;
        // The demo and scripts wait for this exact line on stdout.
        println!("listening on {addr}");
        tracing::info!(%addr, isa = ?gatewarden::index::kernels::Kernels::detect().isa(), "serving");
        server.run(shutdown_signal()).await;
        // The demo (and scripts) read the engine's own account of the run from this line.
        // Nobody may be reading stdout any more; that must not fail the shutdown.
        let line = format!("stats {}\n", serde_json::to_string(&engine.stats())?);
        let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
        anyhow::Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

//! `gatewarden serve`: the QUIC front over a data folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gatewarden::Config;
use gatewarden::cluster::{MarketDirectory, StaticDirectory};
use gatewarden::config::HttpConfig;
use gatewarden::http::{AdminToken, HttpState};
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
    /// Address of the admin HTTP API and console, overriding the configuration (port 0 picks
    /// a free port).
    #[arg(long, value_name = "ADDR", conflicts_with = "no_http")]
    http: Option<SocketAddr>,
    /// Do not start the admin HTTP API.
    #[arg(long)]
    no_http: bool,
    /// Where the store lives, overriding the configuration's `store`: `sqlite` (the data
    /// folder's files) or a PostgreSQL URL (`postgres://user@host/db`).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    // Only `init` makes a site; the checks come before anything is created or locked.
    let site_config = super::site::open(&args.data)?;
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| args.data.join(gatewarden::config::CONFIG_FILE));
    let mut config = match &args.config {
        Some(path) => {
            super::site::refuse_writable_by_others(path)?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Config::from_toml(&text, path)?
        }
        None => site_config,
    };
    let _lock = super::site::SiteLock::acquire(&args.data, "gatewarden serve")?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(http) = args.http {
        config.http.listen = http;
        config.http.enabled = true;
    }
    if args.no_http {
        config.http.enabled = false;
    }
    if let Some(store) = &args.store {
        config.store = Some(gatewarden::store::StoreLocation::parse(store)?);
    }
    // The flags may have changed what the file said: check the result again.
    config.validate()?;
    let certs = CertDir(
        args.certs
            .unwrap_or_else(|| args.data.join(&config.server.certs)),
    );
    let server_config = config.server.clone();
    let http_config = config.http.clone();
    // [cluster]: the markets this node serves (a table, or leases in PostgreSQL); without
    // it, every market (one node).
    let cluster_config = config.cluster.clone();
    let cluster = match &config.cluster {
        Some(table) if table.leases.is_none() => Some(ClusterReload {
            directory: Arc::new(StaticDirectory::new(table)?),
            path: config_path,
        }),
        _ => None,
    };
    let engine = Arc::new(
        gatewarden::Engine::open(&args.data, config)
            .with_context(|| format!("cannot open data folder {}", args.data.display()))?,
    );
    let leases = match &cluster_config {
        Some(table) if table.leases.is_some() => {
            let leases = engine
                .start_leases(table)
                .context("cannot start the market leases")?;
            tracing::info!(
                node = %leases.node(),
                here = ?leases.markets_here(),
                "cluster: markets served by lease; [cluster] is read once, at start"
            );
            Some(leases)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gw-quic")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut server = Server::bind(Arc::clone(&engine), &server_config, &certs)?;
        if let Some(cluster) = &cluster {
            let directory = Arc::clone(&cluster.directory);
            tracing::info!(
                node = %directory.node(),
                here = ?directory.markets_here(),
                assignments = ?directory.assignments(),
                "cluster: serving the markets assigned here; gates of the others are redirected"
            );
            server = server.with_markets(directory as Arc<dyn MarketDirectory>);
        }
        if let Some(leases) = &leases {
            server = server.with_markets(Arc::clone(leases) as Arc<dyn MarketDirectory>);
        }
        let addr = server.local_addr()?;
        let own = match (&cluster, &leases) {
            (Some(cluster), _) => Some(cluster.directory.addresses()),
            (None, Some(leases)) => Some(leases.addresses()),
            (None, None) => None,
        };
        if let Some(own) = own {
            let port = addr.port().to_string();
            if !own.iter().any(|a| a.rsplit_once(':').is_some_and(|(_, p)| p == port)) {
                tracing::warn!(
                    listening = %addr,
                    addresses = ?own,
                    "none of this node's [cluster] addresses has the port it listens on: the \
                     gates other nodes send here will not reach it"
                );
            }
        }
        let http = if http_config.enabled {
            Some(bind_http(&engine, &server, &http_config, &args.data).await?)
        } else {
            None
        };
        // Handlers first: whoever reads the banner may signal at once, and a signal before
        // the handlers exist would kill the server without its drain and `stats` line.
        let signals = ShutdownSignals::install()?;
        let reloads = ReloadSignal::install()?;
        // The demo and scripts wait for these exact lines on stdout. One write, so a reader
        // that takes the first line and closes the pipe cannot make the second one fail; and
        // a closed stdout is no reason to stop serving.
        let mut banner = format!("listening on {addr}\n");
        if let Some((http_addr, _, _)) = &http {
            banner.push_str(&format!("http on {http_addr}\n"));
            banner.push_str(&console_line(*http_addr, &args.data.join(&http_config.token_file)));
        }
        let mut stdout = std::io::stdout();
        let _ = std::io::Write::write_all(&mut stdout, banner.as_bytes());
        let _ = std::io::Write::flush(&mut stdout);
        tracing::info!(%addr, isa = ?gatewarden::index::kernels::Kernels::detect().isa(), "serving");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let http_task = http.map(|(http_addr, listener, state)| {
            tracing::info!(addr = %http_addr, "admin http api serving");
            tokio::spawn(gatewarden::http::serve(listener, state, stopped(stop_rx.clone())))
        });
        tokio::spawn(async move {
            signals.recv().await;
            let _ = stop_tx.send(true);
        });
        tokio::spawn(reloads.serve(Arc::clone(&engine), cluster));
        server.run(stopped(stop_rx)).await;
        if let Some(task) = http_task {
            // The HTTP side got the same signal; give its last requests a moment.
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin http api failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "admin http api task failed"),
                Err(_) => tracing::warn!("admin http api did not stop within 5 s"),
            }
        }
        // The demo (and scripts) read the engine's own account of the run from this line.
        // Nobody may be reading stdout any more; that must not fail the shutdown.
        let line = format!("stats {}\n", serde_json::to_string(&engine.stats())?);
        let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
        if let Some(leases) = leases {
            // A clean stop ends this node's leases at once (after its last record), so the
            // other nodes take its markets without waiting for them to run out.
            let engine = Arc::clone(&engine);
            let released = tokio::task::spawn_blocking(move || {
                engine.shutdown();
                leases.release(engine.store())
            })
            .await;
            match released {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "market leases not released; they run out after their ttl"),
                Err(e) => tracing::warn!(error = %e, "market leases not released; they run out after their ttl"),
            }
        }
        anyhow::Ok(())
    })
}

/// Binds the admin HTTP listener and loads (or makes) the admin token. A port in use or an
/// unusable token file stops start-up.
async fn bind_http(
    engine: &Arc<gatewarden::Engine>,
    server: &Server,
    config: &HttpConfig,
    data: &Path,
) -> anyhow::Result<(SocketAddr, tokio::net::TcpListener, HttpState)> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the admin HTTP API on {}; pick another address with --http \
                 ADDR or [http] listen, or turn it off with --no-http",
                config.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let token_path = data.join(&config.token_file);
    let token = AdminToken::load_or_create(&token_path)?;
    tracing::info!(token_file = %token_path.display(), "admin api token file");
    let state = HttpState::new(Arc::clone(engine), server.stats(), token);
    Ok((addr, listener, state))
}

/// The banner's console line: the address to open, and where its token is. The token itself
/// stays out of stdout, which often ends up in a shared log.
fn console_line(http: SocketAddr, token_file: &Path) -> String {
    format!(
        "console on http://{http}/ (open http://{http}/#token=<token>, the token being the \
         content of {})\n",
        token_file.display()
    )
}

/// SIGHUP: reread the policy file. Listened for from [`ReloadSignal::install`], so a SIGHUP
/// never kills a running server.
struct ReloadSignal {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl ReloadSignal {
    /// Registers the handler now (must run inside the runtime).
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Reloads the `[cluster]` table (when the server runs with one) and the policy on every
    /// SIGHUP, for as long as the runtime runs. Both log their outcome; a refused file
    /// changes nothing.
    async fn serve(mut self, engine: Arc<gatewarden::Engine>, cluster: Option<ClusterReload>) {
        let cluster = cluster.map(Arc::new);
        #[cfg(unix)]
        while self.hangup.recv().await.is_some() {
            let engine = Arc::clone(&engine);
            let cluster = cluster.clone();
            // The files are read and parsed off the async threads that serve the gates.
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(cluster) = &cluster {
                    cluster.reload();
                }
                engine.reload_policy()
            })
            .await;
        }
        #[cfg(not(unix))]
        let _ = (&mut self, engine, cluster);
    }
}

/// The running `[cluster]` table and the file it comes from.
struct ClusterReload {
    directory: Arc<StaticDirectory>,
    path: PathBuf,
}

impl ClusterReload {
    /// Rereads `[cluster]` from the configuration file and swaps the table in; a file that
    /// cannot be read, does not validate, lost its `[cluster]` section or renames this node
    /// leaves the table in force. Moving a market by hand: reload its old node first (it stops
    /// deciding the market and redirects its gates), then the new one a second later.
    fn reload(&self) {
        let result = (|| -> anyhow::Result<_> {
            super::site::refuse_writable_by_others(&self.path)?;
            let text = std::fs::read_to_string(&self.path)
                .with_context(|| format!("cannot read {}", self.path.display()))?;
            let config = Config::from_toml(&text, &self.path)?;
            let cluster = config.cluster.with_context(|| {
                format!(
                    "{} has no [cluster] section any more; restart to run as a single node",
                    self.path.display()
                )
            })?;
            Ok(self.directory.replace(&cluster)?)
        })();
        match result {
            Ok(change) => tracing::info!(
                gained = ?change.gained,
                lost = ?change.lost,
                here = ?self.directory.markets_here(),
                "cluster table reloaded"
            ),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "cluster table not reloaded; the table in force stays"
            ),
        }
    }
}

/// Completes once the shutdown flag is raised (or its sender is gone).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// SIGINT and SIGTERM, listened for from the moment of [`ShutdownSignals::install`].
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Registers the handlers now (must run inside the runtime).
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Completes on the first of them.
    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

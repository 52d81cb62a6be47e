//! `gatewarden demo`: the main job end to end on embedded defaults. A temporary data folder,
//! a synthetic population, the import, a real `gatewarden serve` child process on loopback
//! with fresh certificates, the fleet load generator over real QUIC, the report, the plot and
//! a clean shutdown. With `--console` the server also serves the market console over HTTP: the
//! demo prints its URL before the load starts and keeps the server up after the report until
//! Ctrl-C, so the rush hour can be watched and the records browsed afterwards.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use gatewarden::clock::{Clock, SystemClock};
use gatewarden::server::certs::{CertDir, ensure_dev_certs};
use gatewarden_loadgen::population::{PopulationConfig, generate};
use gatewarden_loadgen::run::{Profile, RunConfig};
use gatewarden_protocol::GateId;

/// Arguments of `gatewarden demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Enrolled people in the synthetic population.
    #[arg(long, default_value_t = 100_000)]
    subjects: usize,
    /// Simulated gates, each its own QUIC connection and certificate.
    #[arg(long, default_value_t = 1_000)]
    gates: u32,
    /// Markets the gates and people are spread over.
    #[arg(long, default_value_t = 10)]
    markets: u32,
    /// Peak arrival rate of the rush-hour curve, events per second (whole fleet).
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Length of the load run, e.g. 60s or 2m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Arrival profile: rush (ramp to the peak and back), constant or poisson.
    #[arg(long, default_value = "rush")]
    profile: String,
    /// Fraction of requests that are deliberately bad (malformed, NaN, replays, ...).
    #[arg(long, default_value_t = 0.0)]
    bad_input: f64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency-over-time plot (SVG) here.
    #[arg(long, default_value = "gatewarden-demo.svg")]
    plot: PathBuf,
    /// Use (and keep) this data folder instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Seed of the synthetic population and arrivals.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Serve the market console (admin HTTP API) during the run and keep it up afterwards,
    /// until Ctrl-C.
    #[arg(long)]
    console: bool,
    /// Where the console listens, with --console (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8480")]
    console_addr: SocketAddr,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    gatewarden::clock::parse_duration_ms(s)
        .map(Duration::from_millis)
        .map_err(|e| e.to_string())
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let profile = match args.profile.as_str() {
        "rush" => Profile::Rush,
        "constant" => Profile::Constant,
        "poisson" => Profile::Poisson,
        other => bail!("unknown profile {other:?}: use rush, constant or poisson"),
    };
    anyhow::ensure!(
        args.gates > 0 && args.subjects > 0,
        "--gates and --subjects must be positive"
    );
    if let Some(dir) = &args.keep {
        anyhow::ensure!(
            !dir.join(gatewarden::config::CONFIG_FILE).exists(),
            "--keep {} already holds a site; the demo builds a new one: name a new folder",
            dir.display()
        );
    }
    let folder = match &args.keep {
        Some(dir) => DemoFolder {
            path: dir.clone(),
            temporary: false,
        },
        None => DemoFolder {
            path: std::env::temp_dir().join(format!("gatewarden-demo-{}", std::process::id())),
            temporary: true,
        },
    };
    run_in(&args, &folder.path, profile)
}

/// The demo's data folder; a temporary one is removed however the demo ends (error or panic),
/// since it holds face templates and the admin token.
struct DemoFolder {
    path: PathBuf,
    temporary: bool,
}

impl Drop for DemoFolder {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn run_in(args: &DemoArgs, dir: &Path, profile: Profile) -> anyhow::Result<()> {
    let clock = SystemClock;
    let t0 = clock.instant();
    let step = |what: &str| eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());

    step(&format!(
        "population: {} people, {} gates, {} markets",
        args.subjects, args.gates, args.markets
    ));
    let population = dir.join("population");
    generate(
        &PopulationConfig {
            subjects: args.subjects,
            markets: args.markets,
            gates: args.gates,
            dim: 512,
            seed: args.seed,
            model: "demo-face-v1".to_owned(),
            now: clock.now(),
            ..PopulationConfig::default()
        },
        &population,
    )?;

    step("import: gates, people, health records, face templates");
    super::site::write_new_private(
        &dir.join(gatewarden::config::CONFIG_FILE),
        &demo_config(args),
    )
    .context("cannot write the demo configuration")?;
    import_population(dir, &population)?;

    step(&format!(
        "certificates: fleet CA, server, admin, {} gates",
        args.gates
    ));
    ensure_dev_certs(&CertDir(dir.join("certs")), (1..=args.gates).map(GateId))?;

    step("server: starting `gatewarden serve` on loopback");
    let mut server = ServerProcess::start(dir, args.console)?;
    let setup_s = t0.elapsed().as_secs_f64();
    // On any error from here on, the server's drop guard stops it.
    let console_url = server.http.map(|addr| console_url(dir, addr)).transpose()?;
    if let Some(url) = &console_url {
        // Its own stdout line, so scripts and the browser test can pick it up.
        println!("console: {url}");
    }
    step(&format!(
        "server listening on {} (set-up took {setup_s:.1} s); load starts",
        server.addr
    ));

    let cpu_before = server.cpu_seconds();
    let report = gatewarden_loadgen::run::run(&RunConfig {
        targets: vec![server.addr],
        server_name: "localhost".to_owned(),
        certs: dir.join("certs"),
        population,
        gates: args.gates,
        rate: args.rate,
        profile,
        duration: args.duration,
        max_events: None,
        bad_input: args.bad_input,
        seed: args.seed,
        progress: true,
        ..RunConfig::default()
    });
    let server_cpu = server.cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
    let (report, account) = match &console_url {
        None => {
            step("load finished; shutting the server down");
            let account = server.stop()?;
            let report = report?;
            print_load_report(&report, setup_s, server_cpu);
            (report, account)
        }
        Some(url) => {
            // The report first, then the server stays up for the console; its own account
            // comes from the `stats` line it prints when it stops.
            let report = report?;
            step("load finished; the server stays up for the console");
            print_load_report(&report, setup_s, server_cpu);
            // Every error from here on stops the server first: it must not outlive the demo.
            let waited =
                write_plot(&report, &args.plot).and_then(|()| wait_for_stop(url, &mut server));
            let account = server.stop()?;
            waited?;
            (report, account)
        }
    };
    let clean = account.clean;
    print_server_account(&account);
    println!(
        "server shutdown: {}",
        if clean { "clean" } else { "NOT clean" }
    );
    if console_url.is_none() {
        write_plot(&report, &args.plot)?;
    }
    if let Some(path) = &args.json {
        let mut value = serde_json::to_value(&report)?;
        value["demo"] = serde_json::json!({
            "setup_s": setup_s,
            "server_cpu_s": server_cpu,
            "loadgen_cpu_s": report.cpu_s,
            "clean_shutdown": clean,
            "server_peak_rss_mib": account.peak_rss_mib,
            "server_stats": account.stats,
            "subjects": args.subjects,
            "gates": args.gates,
        });
        std::fs::write(path, serde_json::to_string_pretty(&value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("json report: {}", path.display());
    }
    anyhow::ensure!(clean, "the server did not shut down cleanly");
    Ok(())
}

/// The demo's `gatewarden.toml`: QUIC on a free loopback port; the admin HTTP API only with
/// `--console` (without it nothing listens beyond the QUIC port, as before the console).
fn demo_config(args: &DemoArgs) -> String {
    let http = if args.console {
        format!("[http]\nlisten = \"{}\"\n", args.console_addr)
    } else {
        "[http]\nenabled = false\n".to_owned()
    };
    format!("[server]\nlisten = \"127.0.0.1:0\"\n{http}")
}

/// The console's URL with the admin token in the fragment (which browsers never send to the
/// server). `gatewarden serve` has written the token file by the time it prints `http on`.
fn console_url(dir: &Path, addr: SocketAddr) -> anyhow::Result<String> {
    let path = dir.join("admin.token");
    let token = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the admin token {}", path.display()))?;
    Ok(format!("http://{addr}/#token={}", token.trim()))
}

/// Keeps the demo (and its server) up until Ctrl-C or SIGTERM, or until the server exits on
/// its own (a Ctrl-C in the terminal reaches the server too).
fn wait_for_stop(url: &str, server: &mut ServerProcess) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal runtime")?;
    runtime.block_on(async {
        // Handlers first: a script may signal the moment it reads the line below.
        let stop = stop_signal()?;
        println!("console stays up at {url}; press Ctrl-C to stop");
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                _ = tick.tick() => {
                    if server.exited() {
                        eprintln!("the server stopped on its own");
                        return Ok(());
                    }
                }
            }
        }
    })
}

/// A future that completes on SIGINT or SIGTERM; the handlers are installed before it returns.
#[cfg(unix)]
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("cannot watch for Ctrl-C")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// The gates' side of the run: the load generator's summary and the CPU spent.
fn print_load_report(
    report: &gatewarden_loadgen::run::Report,
    setup_s: f64,
    server_cpu: Option<f64>,
) {
    println!("{}", report.summary());
    println!(
        "set-up before load: {setup_s:.1} s   CPU during load: server {}, load generator {:.1} s",
        server_cpu.map_or_else(|| "n/a".to_owned(), |s| format!("{s:.1} s")),
        report.cpu_s
    );
}

/// The latency-over-time plot, and where it went.
fn write_plot(report: &gatewarden_loadgen::run::Report, plot: &Path) -> anyhow::Result<()> {
    report.write_plot_svg(plot)?;
    println!("latency plot: {}", plot.display());
    Ok(())
}

/// The engine's side of the run: what it answered and how long a verdict took inside the
/// server (submit to durable record), which the gates' latency (including retries after Busy)
/// does not show.
fn print_server_account(account: &ServerAccount) {
    let Some(stats) = &account.stats else {
        println!("server stats: not reported");
        return;
    };
    let n = |key: &str| stats[key].as_u64().unwrap_or(0);
    let e2e = &stats["end_to_end_us"];
    println!(
        "server: {} verdicts, {} Busy (refused on arrival), {} Busy (past deadline), end-to-end p50 <= {:.1} ms, \
         p99 <= {:.1} ms (log2 buckets), peak RSS {}",
        n("admit") + n("deny") + n("escalate"),
        n("rejected_busy"),
        n("expired"),
        e2e["p50"].as_f64().unwrap_or(0.0) / 1e3,
        e2e["p99"].as_f64().unwrap_or(0.0) / 1e3,
        account
            .peak_rss_mib
            .map_or_else(|| "n/a".to_owned(), |m| format!("{m:.0} MiB"))
    );
}

/// Loads the population's registry files and templates through the engine API.
fn import_population(dir: &Path, population: &Path) -> anyhow::Result<()> {
    let config = gatewarden::Config::load_from_data_dir(dir)?;
    let engine = gatewarden::Engine::open(dir, config)?;
    let store = engine.store();
    super::import::import_file(
        store,
        super::import::Kind::Gates,
        &population.join("gates.jsonl"),
    )?;
    super::import::import_file(
        store,
        super::import::Kind::Subjects,
        &population.join("subjects.jsonl"),
    )?;
    super::import::import_file(
        store,
        super::import::Kind::Health,
        &population.join("health.jsonl"),
    )?;
    super::enroll::enroll_files(
        &engine,
        &population.join("templates.npy"),
        &population.join("template_subjects.txt"),
        // The population's ground truth is built against the faces as generated, lookalikes
        // included: only faces enrolled before are checked (none, on a fresh site).
        super::enroll::DuplicateCheck::Enrolled,
    )?;
    engine.shutdown();
    Ok(())
}

/// A `gatewarden serve` child process.
struct ServerProcess {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    addr: SocketAddr,
    /// The admin HTTP API's address, when it is enabled.
    http: Option<SocketAddr>,
}

/// What the server reported about itself at the end of the run.
#[derive(Debug, Default)]
struct ServerAccount {
    /// The engine's pipeline statistics (the `stats` line `serve` prints at exit).
    stats: Option<serde_json::Value>,
    /// Peak resident memory in MiB (VmHWM), read just before the stop.
    peak_rss_mib: Option<f64>,
    clean: bool,
}

impl ServerProcess {
    /// Starts `gatewarden serve` on `dir` and waits for its address (and, with `http`, the
    /// admin HTTP API's: line 2 of its stdout).
    fn start(dir: &Path, http: bool) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the gatewarden executable")?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--data")
            .arg(dir)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start gatewarden serve")?;
        let stdout = child.stdout.take().context("no stdout from server")?;
        let mut stdout = BufReader::new(stdout);
        let addrs = read_address(&mut stdout, "listening on ").and_then(|addr| {
            let http = if http {
                Some(read_address(&mut stdout, "http on ")?)
            } else {
                None
            };
            Ok((addr, http))
        });
        match addrs {
            Ok((addr, http)) => Ok(Self {
                child,
                stdout,
                addr,
                http,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Whether the server has exited (without waiting).
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// User + system CPU seconds of the child so far (Linux), if readable.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // Linux reports clock ticks; USER_HZ is 100 on every mainstream configuration.
        Some((utime + stime) / 100.0)
    }

    /// Peak resident memory of the child so far, in MiB (Linux).
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    /// Sends SIGTERM, waits, and collects the server's own account of the run.
    fn stop(mut self) -> anyhow::Result<ServerAccount> {
        let peak_rss_mib = self.peak_rss_mib();
        // A server that already stopped on a signal of its own (Ctrl-C in the terminal while
        // the console stays up) shut down as it would on ours.
        let (signalled, status) = match self.child.try_wait() {
            Ok(Some(status)) => (true, status),
            _ => {
                let pid = self.child.id().to_string();
                let signalled = Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .is_ok_and(|s| s.success());
                if !signalled {
                    // It may have exited between the check and the signal.
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Ok(self.account(peak_rss_mib, true, status));
                    }
                    self.child.kill().context("cannot stop the server")?;
                }
                let status = self.child.wait().context("cannot wait for the server")?;
                (signalled, status)
            }
        };
        Ok(self.account(peak_rss_mib, signalled, status))
    }

    /// The server's account once it has exited: the `stats` line from the rest of its stdout.
    fn account(
        &mut self,
        peak_rss_mib: Option<f64>,
        signalled: bool,
        status: std::process::ExitStatus,
    ) -> ServerAccount {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
        let stats = rest
            .lines()
            .find_map(|l| l.strip_prefix("stats "))
            .and_then(|json| serde_json::from_str(json).ok());
        ServerAccount {
            stats,
            peak_rss_mib,
            clean: signalled && status.success(),
        }
    }
}

/// A server the demo did not stop (an error or a panic on the way) must not outlive it: it
/// gets SIGTERM, a few seconds to drain, then SIGKILL.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the next stdout line of the server, which must be `prefix` and an address.
fn read_address(
    stdout: &mut BufReader<std::process::ChildStdout>,
    prefix: &str,
) -> anyhow::Result<SocketAddr> {
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .context("cannot read from the server")?;
    if line.is_empty() {
        bail!(
            "the server exited during start-up; see its messages above (with --console, a \
             taken --console-addr is the usual cause: pick another one)"
        );
    }
    let Some(addr) = line.trim().strip_prefix(prefix) else {
        bail!("the server did not start (it said {line:?}); see its messages above");
    };
    addr.parse()
        .with_context(|| format!("the server printed an invalid address {addr:?}"))
}

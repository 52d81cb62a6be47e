//! A fleet of simulated gates over real QUIC: connect, send an open-loop schedule of events,
//! check every verdict against the ground truth, and report.
//!
//! The shape of a run:
//!
//! 1. Regenerate the population from `population.json` (no big files are read) and load each
//!    gate's certificate.
//! 2. Connect the gates, [`RunConfig::connect_window`] handshakes at a time (TLS 1.3 with the
//!    gate's certificate, then Hello / HelloAck), and check the server's embedding dimension
//!    and model against the population's.
//! 3. One dispatcher walks the arrival schedule: at each intended time it plans an event
//!    (person, gate, mode, face, twist, expected answer), gives it the gate's next `seq`, and
//!    spawns a task that sends it on a new stream of the gate's connection. Latency runs from
//!    the intended time, so a dispatcher or server that falls behind shows up in the numbers.
//! 4. `Busy` is retried with the same `seq` after the server's hint; transport failures are
//!    retried (reconnecting if the connection died) with the same `seq`, so a server restart
//!    mid-run loses nothing that it acknowledged. With several targets (the nodes of a site)
//!    a gate that loses its node fails over to the next one, and a `Redirect` (the node does
//!    not serve the gate's market) sends it where the node says; the event is retried there
//!    with the same `seq`, never at two nodes at once, and its latency still runs from its
//!    first intended send.
//! 5. When the schedule ends (duration or event cap), unanswered events get
//!    [`RunConfig::reply_timeout`] more; what is still unanswered then is `lost`.
//!
//! Sequence numbers: gate `g`'s first `seq` is the load's start time in unix milliseconds
//! times 1000, then +1 per event. Runs on one data folder therefore never reuse a `(gate,
//! seq)` as long as they start at least a millisecond apart and send fewer than 1000 events
//! per gate per millisecond of separation (a 60 s run would need 60 million events per gate).

mod arrivals;
mod badinput;
pub(crate) mod client;
mod cpu;
mod plan;
mod report;
mod stats;
pub mod svg;

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use gatewarden_protocol::{ErrorCode, Event, Message, encode_frame};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use client::CertError;
pub use report::{
    Accuracy, BadInputReport, BadKindStats, ConfigEcho, Decisions, LatencyMs, Mismatch, Report,
    SecondStats,
};

use crate::population::{self, Gate, Population, PopulationError, wall_clock};
use crate::stream::Stream;
use arrivals::Arrivals;
use badinput::{Answered, BadKind, BadOutcome};
use client::{Connected, ExchangeError, GateConn, Target};
use plan::Planner;
use stats::{EventMeta, Stats};

/// How long before the first intended send the schedule starts (lets the dispatcher settle).
const LEAD: Duration = Duration::from_millis(100);
/// Transport retry pauses grow from this...
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(100);
/// ...to this.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Longest pause between `Busy` retries of one event, however often it was refused.
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(4);
/// Retries of a retryable `Error` (`Internal`, `ShuttingDown`) before it counts as an error.
const ERROR_RETRIES: u32 = 20;
/// UDP socket buffer size asked for (the kernel caps it at `net.core.rmem_max`/`wmem_max`):
/// handshake bursts and rush-hour replies arrive faster than one poll drains a small buffer.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// A population older than this has eligible people whose tests are about to expire.
const TRUTH_VALID_MS: u64 = 24 * 3_600_000;

/// The arrival profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Profile {
    /// Evenly spaced at the rate.
    Constant,
    /// Poisson arrivals at the rate.
    Poisson,
    /// Poisson arrivals whose rate ramps from 20% of the peak to the peak at mid-run and back
    /// (raised cosine).
    Rush,
}

impl Profile {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Poisson => "poisson",
            Self::Rush => "rush",
        }
    }
}

/// Relative weights of the three requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    /// Credential + face (1:1).
    pub verify: u32,
    /// Face only (1:N).
    pub identify: u32,
    /// Staff sign-in (workers only; half with a staff card, half by face alone).
    pub signin: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            verify: 70,
            identify: 20,
            signin: 10,
        }
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `verify,identify,signin`, e.g. `70,20,10`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<u32> = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u32>()
                    .map_err(|e| format!("mix {s:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [verify, identify, signin] if verify + identify + signin > 0 => Ok(Self {
                verify,
                identify,
                signin,
            }),
            _ => Err(format!(
                "mix {s:?}: expected three weights verify,identify,signin, not all zero"
            )),
        }
    }
}

/// Fractions of events that carry a twist.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Twists {
    /// A never-enrolled person's face (with a real person's card for verify): denied.
    pub impostor: f64,
    /// A fever reading on an otherwise eligible person's event: denied.
    pub fever: f64,
    /// A worker at a gate of their market outside their zones: denied.
    pub wrong_zone: f64,
}

impl Default for Twists {
    fn default() -> Self {
        Self {
            impostor: 0.02,
            fever: 0.01,
            wrong_zone: 0.01,
        }
    }
}

/// How to run the fleet.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The addresses of the site's nodes (at least one), in the order every gate tries them:
    /// the first at start, the next after a loss or a failed attempt.
    pub targets: Vec<SocketAddr>,
    /// The name the server certificates of `targets` must carry (the addresses a `Redirect`
    /// names are checked against their own host).
    pub server_name: String,
    /// The certificate folder (`ca.pem`, `gates/<id>.pem`, `gates/<id>.key`).
    pub certs: PathBuf,
    /// The population folder (`population.json`).
    pub population: PathBuf,
    /// Gates `1..=gates` take part, each with its own connection.
    pub gates: u32,
    /// Peak rate, events per second over the whole fleet.
    pub rate: f64,
    /// Arrival profile.
    pub profile: Profile,
    /// Length of the schedule.
    pub duration: Duration,
    /// Stop after this many good events, if set.
    pub max_events: Option<u64>,
    /// Request mix.
    pub mix: Mix,
    /// Event twists.
    pub twists: Twists,
    /// Fraction of streams that carry bad input (0 to 1).
    pub bad_input: f64,
    /// How long unanswered events may wait after the schedule ends (also the connect timeout).
    pub reply_timeout: Duration,
    /// Give up on an event after this many `Busy` replies (unlimited if `None`: retry until
    /// the run ends).
    pub max_busy_retries: Option<u32>,
    /// Seed of the run's plan (people, faces, arrivals).
    pub seed: u64,
    /// Print one progress line per second to stderr.
    pub progress: bool,
    /// Write every received verdict (gate, seq, decision, subject, replayed) here as JSON
    /// Lines, for crash tests that compare them with the store.
    pub verdict_log: Option<PathBuf>,
    /// UDP sockets shared by the gates' connections.
    pub sockets: usize,
    /// Most gate handshakes in flight at once before the load. On loopback 16 connected 1,000
    /// gates in 1.3-1.5 s; 200 at once overflowed UDP buffers and took 5-10 s.
    pub connect_window: usize,
    /// Keep-alive interval of each gate's connection (the idle timeout is five of them).
    pub keep_alive: Duration,
    /// How long the connected fleet stays quiet before the load starts (to measure what idle
    /// connections cost).
    pub hold: Duration,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            targets: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 4433))],
            server_name: "localhost".into(),
            certs: PathBuf::from("certs"),
            population: PathBuf::from("population"),
            gates: 1_000,
            rate: 2_000.0,
            profile: Profile::Rush,
            duration: Duration::from_secs(60),
            max_events: None,
            mix: Mix::default(),
            twists: Twists::default(),
            bad_input: 0.0,
            reply_timeout: Duration::from_secs(10),
            max_busy_retries: None,
            seed: 1,
            progress: false,
            verdict_log: None,
            sockets: 4,
            connect_window: 16,
            keep_alive: Duration::from_secs(1),
            hold: Duration::ZERO,
        }
    }
}

/// Why a run could not start (failures during the load are counted in the [`Report`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A configuration value is out of range.
    #[error("invalid run config: {what}")]
    InvalidConfig {
        /// Which value and why.
        what: String,
    },
    /// The population folder is unusable.
    #[error(transparent)]
    Population(#[from] PopulationError),
    /// A certificate or key is unusable.
    #[error(transparent)]
    Certs(#[from] CertError),
    /// The async runtime or a UDP socket could not be created.
    #[error("cannot set up the network runtime: {0}")]
    Runtime(#[from] io::Error),
    /// Not a single gate could connect.
    #[error("none of the {gates} gates could connect to {target}: {first}; is the server running?")]
    NoGateConnected {
        /// Gates tried.
        gates: u32,
        /// The server addresses, comma-separated.
        target: String,
        /// The first failure.
        first: String,
    },
    /// The server's gallery does not match the population.
    #[error(
        "the server does not match the population: {what}; import this population or regenerate it"
    )]
    ServerMismatch {
        /// What differs.
        what: String,
    },
}

/// Runs the fleet against `cfg.targets` and returns the report. Blocking: builds its own
/// two-thread tokio runtime.
///
/// # Errors
/// A bad configuration, population or certificate folder, or no gate able to connect.
pub fn run(cfg: &RunConfig) -> anyhow::Result<Report> {
    validate(cfg)?;
    let pop_cfg = population::load_config(&cfg.population)?;
    if cfg.gates > pop_cfg.gates {
        return Err(invalid(format!(
            "--gates {} but the population has only {} gates",
            cfg.gates, pop_cfg.gates
        ))
        .into());
    }
    let pop = Population::build(&pop_cfg)?;
    let gates: Vec<Gate> = pop.gates[..cfg.gates as usize].to_vec();
    let roots = client::load_roots(&cfg.certs)?;
    let transport = client::transport_config(cfg.keep_alive);
    let configs = gates
        .iter()
        .map(|g| client::gate_client_config(&cfg.certs, g.gate, &roots, &transport))
        .collect::<Result<Vec<_>, _>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let cpu_before = cpu::process_seconds();
    let result = runtime.block_on(drive(cfg, &pop, gates, configs));
    runtime.shutdown_timeout(Duration::from_secs(1));
    let (mut report, verdicts) = result?;
    report.cpu_s = match (cpu_before, cpu::process_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    if let (Some(path), Some(verdicts)) = (&cfg.verdict_log, verdicts) {
        write_verdict_log(path, &verdicts)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(report)
}

/// Parses a duration such as `60s`, `500ms`, `2m`, `1h` or a bare number of seconds (`1.5`).
///
/// # Errors
/// Text that is not a non-negative number with one of those units.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("duration {text:?}: expected a number with a unit, e.g. 60s or 500ms")
    })?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "duration {text:?}: unknown unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("duration {text:?}: {e}"))
}

fn invalid(what: String) -> RunError {
    RunError::InvalidConfig { what }
}

fn validate(cfg: &RunConfig) -> Result<(), RunError> {
    if cfg.gates == 0 {
        return Err(invalid("gates must be at least 1".into()));
    }
    if cfg.targets.is_empty() {
        return Err(invalid(
            "at least one target (server address) is needed".into(),
        ));
    }
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        return Err(invalid(format!(
            "rate {} must be a positive number of events per second",
            cfg.rate
        )));
    }
    if cfg.duration.is_zero() && cfg.max_events.is_none() {
        return Err(invalid("duration must be positive".into()));
    }
    if !(0.0..=1.0).contains(&cfg.bad_input) {
        return Err(invalid(format!(
            "bad_input {} must be a fraction in 0..=1",
            cfg.bad_input
        )));
    }
    let t = cfg.twists;
    if [t.impostor, t.fever, t.wrong_zone]
        .iter()
        .any(|f| !(0.0..=1.0).contains(f))
    {
        return Err(invalid(format!("twist fractions {t:?} must be in 0..=1")));
    }
    if cfg.mix.verify + cfg.mix.identify + cfg.mix.signin == 0 {
        return Err(invalid("mix weights must not all be zero".into()));
    }
    if cfg.reply_timeout.is_zero() {
        return Err(invalid("reply_timeout must be positive".into()));
    }
    if cfg.keep_alive.is_zero() {
        return Err(invalid("keep_alive must be positive".into()));
    }
    Ok(())
}

fn write_verdict_log(path: &std::path::Path, verdicts: &[stats::VerdictRecord]) -> io::Result<()> {
    let mut w = population::create_private_file(path)?;
    for v in verdicts {
        serde_json::to_writer(&mut w, v)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// State shared by the dispatcher and the event tasks.
struct Shared {
    fleet: Vec<GateConn>,
    connect_timeout: Duration,
    stats: Mutex<Stats>,
    /// The latest answered event per gate (kept only in bad-input mode, for replays).
    answered: Vec<Mutex<Option<Answered>>>,
    keep_answered: bool,
    /// When the schedule's time 0 is (set once the fleet is connected).
    load_start: OnceLock<Instant>,
    max_busy_retries: Option<u32>,
    /// Gates with a live connection (see [`keep_connected`]).
    connected: AtomicU32,
    /// Connections that ended since the last interval closed (losses the gates noticed).
    losses: AtomicU32,
    /// The gates' keep-alive interval.
    keep_alive: Duration,
}

impl Shared {
    fn load_start(&self) -> Instant {
        *self.load_start.get_or_init(Instant::now)
    }

    /// Gates with a live connection right now (kept by [`keep_connected`]).
    fn gates_connected(&self) -> u32 {
        self.connected.load(Ordering::Relaxed)
    }

    /// Connections lost since the last call.
    fn take_losses(&self) -> u32 {
        self.losses.swap(0, Ordering::Relaxed)
    }

    fn stats(&self) -> MutexGuard<'_, Stats> {
        // A panicking event task cannot leave the counters half-updated in a way that
        // matters more than losing the whole report; keep going.
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn connection(
        &self,
        gate: usize,
    ) -> Result<(quinn::Connection, Connected), client::ConnectError> {
        let attempt = self.fleet[gate].connection(self.connect_timeout).await;
        if let Some(kind) = attempt.as_ref().err().and_then(client::ConnectError::kind) {
            *self
                .stats()
                .report
                .connect_attempts_failed
                .entry(kind.to_owned())
                .or_default() += 1;
        }
        let (conn, how) = attempt?;
        if how == Connected::Again {
            self.stats().report.reconnects += 1;
        }
        Ok((conn, how))
    }
}

type Drive = (Report, Option<Vec<stats::VerdictRecord>>);

async fn drive(
    cfg: &RunConfig,
    pop: &Population,
    gates: Vec<Gate>,
    configs: Vec<quinn::ClientConfig>,
) -> Result<Drive, RunError> {
    let bind = if cfg.targets[0].is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let endpoints = (0..cfg.sockets.clamp(1, gates.len()))
        .map(|_| client::endpoint(bind, SOCKET_BUFFER_BYTES))
        .collect::<Result<Vec<_>, _>>()?;
    let nodes: Arc<[Target]> = cfg
        .targets
        .iter()
        .map(|addr| Target {
            addr: *addr,
            name: cfg.server_name.clone(),
        })
        .collect();
    let fleet: Vec<GateConn> = gates
        .iter()
        .zip(configs)
        .enumerate()
        .map(|(i, (g, c))| {
            GateConn::new(
                *g,
                c,
                endpoints[i % endpoints.len()].clone(),
                Arc::clone(&nodes),
            )
        })
        .collect();
    let stats = Stats::new(cfg.verdict_log.is_some())
        .map_err(|e| invalid(format!("latency histogram: {e}")))?;
    let shared = Arc::new(Shared {
        answered: gates.iter().map(|_| Mutex::new(None)).collect(),
        fleet,
        connect_timeout: cfg.reply_timeout.min(client::CONNECT_TIMEOUT),
        stats: Mutex::new(stats),
        keep_answered: cfg.bad_input > 0.0,
        load_start: OnceLock::new(),
        max_busy_retries: cfg.max_busy_retries,
        connected: AtomicU32::new(0),
        losses: AtomicU32::new(0),
        keep_alive: cfg.keep_alive,
    });

    let rss_before = cpu::resident_mib();
    let connect_started = Instant::now();
    let (connected, failures, first_error) =
        connect_fleet(&shared, cfg.connect_window.max(1)).await;
    let connect_s = connect_started.elapsed().as_secs_f64();
    let rss_connected = cpu::resident_mib();
    if connected == 0 {
        return Err(RunError::NoGateConnected {
            gates: cfg.gates,
            target: targets_text(&cfg.targets),
            first: first_error.unwrap_or_else(|| "no attempt made".into()),
        });
    }
    check_server(&shared, pop)?;
    // Every gate holds its connection from now on, and reconnects as PROTOCOL.md asks when it
    // loses it, whether or not it has an event to send (as a real gate does).
    let (keepers_done, keepers_rx) = watch::channel(false);
    let mut keepers = JoinSet::new();
    for gate in 0..shared.fleet.len() {
        keepers.spawn(keep_connected(
            Arc::clone(&shared),
            gate,
            keepers_rx.clone(),
        ));
    }
    tokio::time::sleep(cfg.hold).await;

    let start_unix_ms = wall_clock().0 + LEAD.as_millis() as u64;
    let _ = shared.load_start.set(Instant::now() + LEAD);
    let seq_base = start_unix_ms.saturating_mul(1000);
    let dispatch_end = dispatch(cfg, pop, &gates, &shared, start_unix_ms, seq_base).await;
    let _ = keepers_done.send(true);
    while keepers.join_next().await.is_some() {}

    for g in &shared.fleet {
        g.close().await;
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
    }

    let mut stats = shared.stats();
    let mut report = std::mem::take(&mut stats.report);
    report.latency_ms = stats.latency();
    report.attempt_latency_ms = stats.attempt_latency();
    let duration = dispatch_end.max(stats.last_reply).as_secs_f64();
    report.duration_s = duration;
    report.throughput_eps = if duration > 0.0 {
        report.verdicts as f64 / duration
    } else {
        0.0
    };
    let scheduled = dispatch_end.as_secs_f64();
    report.offered_eps = if scheduled > 0.0 {
        report.sent as f64 / scheduled
    } else {
        0.0
    };
    report.connect_s = connect_s;
    if let (Some(before), Some(after)) = (rss_before, rss_connected) {
        report.rss_before_connect_mib = before;
        report.rss_connected_mib = after;
        if connected > 0 {
            report.rss_per_connection_kib = (after - before) * 1024.0 / f64::from(connected);
        }
    }
    report.redirects = shared
        .fleet
        .iter()
        .map(|g| g.redirects.load(Ordering::Relaxed))
        .sum();
    report.failovers = shared
        .fleet
        .iter()
        .map(|g| g.failovers.load(Ordering::Relaxed))
        .sum();
    report.gates_connected = connected;
    report.connect_failures = failures;
    report.connect_error = first_error;
    report.config = echo(cfg, pop, seq_base);
    report.warnings = warnings(pop, start_unix_ms);
    Ok((report, stats.verdict_log.take()))
}

/// The targets as one line: `a, b`.
fn targets_text(targets: &[SocketAddr]) -> String {
    targets
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Redirects a gate follows while the fleet connects, before it counts as not connected.
const CONNECT_REDIRECTS: u32 = 4;

/// Connects every gate, at most `window` handshakes in flight at once (a burst of hundreds of
/// simultaneous handshakes overflows UDP receive buffers and stalls on retransmission
/// timers). A gate redirected to another node follows (after the protocol's pause). Returns
/// (connected, failed, first error).
async fn connect_fleet(shared: &Arc<Shared>, window: usize) -> (u32, u32, Option<String>) {
    let permits = Arc::new(Semaphore::new(window));
    let mut tasks = JoinSet::new();
    for gate in 0..shared.fleet.len() {
        let (shared, permits) = (Arc::clone(shared), Arc::clone(&permits));
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = permits.acquire_owned().await;
            let mut redirects = 0;
            loop {
                match shared.connection(gate).await {
                    Ok(_) => return Ok(()),
                    Err(client::ConnectError::Redirected { .. })
                        if redirects < CONNECT_REDIRECTS =>
                    {
                        redirects += 1;
                    }
                    Err(client::ConnectError::Backoff { wait, .. }) if redirects > 0 => {
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
    }
    let (mut ok, mut failed, mut first) = (0u32, 0u32, None);
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    (ok, failed, first)
}

/// Holds gate `gate`'s connection until `done`: waits for it to close, then reconnects it
/// through [`Shared::connection`], which keeps PROTOCOL.md's jittered pauses (shared with the
/// events that find the connection closed first). Keeps [`Shared::gates_connected`].
async fn keep_connected(shared: Arc<Shared>, gate: usize, mut done: watch::Receiver<bool>) {
    loop {
        let conn = loop {
            if let Some(conn) = shared.fleet[gate].current().await {
                break conn;
            }
            let wait = match shared.connection(gate).await {
                Ok((conn, _)) => break conn,
                Err(client::ConnectError::Backoff { wait, .. }) => wait,
                // The failure scheduled the next pause; the next call reports it.
                Err(_) => Duration::ZERO,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = done.wait_for(|d| *d) => return,
            }
        };
        shared.connected.fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = conn.closed() => break,
                () = silent(&conn, shared.keep_alive) => {
                    // PROTOCOL.md, "Reconnecting": silence for two keep-alives is a lost server.
                    conn.close(0u32.into(), b"server silent");
                    break;
                }
                () = shared.fleet[gate].moved.notified() => {}
                _ = done.wait_for(|d| *d) => return,
            }
            // After a Redirect the gate sends nothing new on this connection: drop this
            // handle, so that it closes once the events in flight on it are answered.
            if !shared.fleet[gate].holds(&conn).await {
                break;
            }
        }
        drop(conn);
        shared.connected.fetch_sub(1, Ordering::Relaxed);
        shared.losses.fetch_add(1, Ordering::Relaxed);
    }
}

/// Resolves once `conn` has received nothing for two keep-alive intervals (each keep-alive is
/// acknowledged, so a live server is never that quiet). A server killed without a word is
/// otherwise noticed only by a stateless reset from its successor, which a gate whose probes
/// have backed off past the outage may never provoke, or by the idle timeout.
async fn silent(conn: &quinn::Connection, keep_alive: Duration) {
    let mut heard = conn.stats().udp_rx.datagrams;
    let mut quiet = 0u32;
    loop {
        tokio::time::sleep(keep_alive).await;
        let now = conn.stats().udp_rx.datagrams;
        quiet = if now == heard { quiet + 1 } else { 0 };
        heard = now;
        if quiet >= 2 {
            return;
        }
    }
}

/// The server's HelloAck must agree with the population on dimension and model.
fn check_server(shared: &Shared, pop: &Population) -> Result<(), RunError> {
    let Some(ack) = shared.fleet.iter().find_map(|g| g.ack.get()) else {
        return Ok(());
    };
    if ack.embedding_dim as usize != pop.cfg.dim {
        return Err(RunError::ServerMismatch {
            what: format!(
                "server gallery dimension {} but population dimension {}",
                ack.embedding_dim, pop.cfg.dim
            ),
        });
    }
    if ack.model != pop.cfg.model {
        return Err(RunError::ServerMismatch {
            what: format!(
                "server model {:?} but population model {:?}",
                ack.model, pop.cfg.model
            ),
        });
    }
    Ok(())
}

fn warnings(pop: &Population, now_ms: u64) -> Vec<String> {
    let mut w = Vec::new();
    let made = pop.cfg.now.0;
    if now_ms > made + TRUTH_VALID_MS {
        w.push(format!(
            "the population was made {:.1} h ago; its eligible people's tests are expiring, so accuracy \
             is judged at each event's time but the run no longer shows the intended mix; regenerate it",
            (now_ms - made) as f64 / 3_600_000.0
        ));
    }
    if made > now_ms + 3_600_000 {
        w.push("the population's `now` lies in the future; tests may look older to the server than planned".into());
    }
    w
}

fn echo(cfg: &RunConfig, pop: &Population, seq_base: u64) -> ConfigEcho {
    ConfigEcho {
        target: targets_text(&cfg.targets),
        gates: cfg.gates,
        rate: cfg.rate,
        profile: cfg.profile.as_str().into(),
        duration_s: cfg.duration.as_secs_f64(),
        max_events: cfg.max_events,
        mix: [cfg.mix.verify, cfg.mix.identify, cfg.mix.signin],
        bad_input: cfg.bad_input,
        reply_timeout_s: cfg.reply_timeout.as_secs_f64(),
        seed: cfg.seed,
        seq_base,
        population: cfg.population.display().to_string(),
        subjects: pop.subjects.len(),
    }
}

/// Walks the schedule, spawning one task per stream; returns when every task has finished,
/// with the time (from the load start) at which the schedule ended.
async fn dispatch(
    cfg: &RunConfig,
    pop: &Population,
    gates: &[Gate],
    shared: &Arc<Shared>,
    start_unix_ms: u64,
    seq_base: u64,
) -> Duration {
    let (expiry_tx, expiry_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let ticker = tokio::spawn(tick(Arc::clone(shared), cfg.progress, done_rx));
    let mut planner = Planner::new(pop, gates, cfg.seed, cfg.mix, cfg.twists);
    let mut bad_rng = Stream::BadInput.rng(cfg.seed, 0);
    let mut seqs = vec![seq_base; gates.len()];
    let mut tasks = JoinSet::new();
    let (mut index, mut good) = (0u64, 0u64);
    let load_start = shared.load_start();
    for t in Arrivals::new(cfg.profile, cfg.rate, cfg.duration.as_secs_f64(), cfg.seed) {
        if cfg.max_events.is_some_and(|m| good >= m) {
            break;
        }
        let intended = load_start + Duration::from_secs_f64(t);
        if intended > Instant::now() {
            tokio::time::sleep_until(intended).await;
        }
        let plan = planner.plan(index, start_unix_ms + (t * 1000.0) as u64);
        index += 1;
        let seq = seqs[plan.gate];
        seqs[plan.gate] += 1;
        let mut event = plan.event;
        event.seq = seq;
        if cfg.bad_input > 0.0 && bad_rng.chance(cfg.bad_input) {
            let kind = BadKind::ALL[bad_rng.index(BadKind::ALL.len())];
            tasks.spawn(drive_bad(
                Arc::clone(shared),
                plan.gate,
                kind,
                event,
                expiry_rx.clone(),
            ));
        } else {
            good += 1;
            shared.stats().on_sent();
            let meta = EventMeta {
                gate: gates[plan.gate].gate,
                seq,
                expected: plan.expected,
                mode: plan.mode,
                twist: plan.twist,
                persona: plan.persona,
            };
            tasks.spawn(drive_event(
                Arc::clone(shared),
                plan.gate,
                event,
                meta,
                intended,
                expiry_rx.clone(),
            ));
        }
        while tasks.try_join_next().is_some() {}
    }
    let dispatch_end = load_start.elapsed();
    let timeout = cfg.reply_timeout;
    let expire = tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let _ = expiry_tx.send(true);
        // Keep the sender alive until every task has seen the expiry.
        std::future::pending::<()>().await;
    });
    while tasks.join_next().await.is_some() {}
    expire.abort();
    let _ = done_tx.send(true);
    let _ = ticker.await;
    let mut stats = shared.stats();
    if stats.interval_has_data() {
        let t = load_start.elapsed().as_secs_f64();
        let s = stats.tick(
            (t * 1000.0).round() / 1000.0,
            shared.gates_connected(),
            shared.take_losses(),
        );
        if cfg.progress {
            eprintln!("{}", stats.progress_line(&s));
        }
    }
    dispatch_end
}

/// Closes one interval per second (and prints the progress line) until `done`.
async fn tick(shared: Arc<Shared>, progress: bool, mut done: watch::Receiver<bool>) {
    let start = shared.load_start();
    let mut interval =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = done.wait_for(|d| *d) => return,
        }
        let t = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        let line = {
            let mut stats = shared.stats();
            let s = stats.tick(t, shared.gates_connected(), shared.take_losses());
            progress.then(|| stats.progress_line(&s))
        };
        if let Some(line) = line {
            eprintln!("{line}");
        }
    }
}

/// Resolves once the run's reply deadline has passed (or the run is being torn down).
async fn expired(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|e| *e).await;
}

/// Sleeps `d`, or returns false early if the deadline passes first.
async fn pause(d: Duration, rx: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = expired(rx) => false,
    }
}

/// How a good event ended.
enum Final {
    Verdict(gatewarden_protocol::Verdict),
    Error(String),
    BusyGaveUp,
    Lost,
}

/// Sends one good event until it gets a verdict or error, retrying `Busy` and transport
/// failures with the same `seq`, and records the outcome.
async fn drive_event(
    shared: Arc<Shared>,
    gate: usize,
    event: Event,
    meta: EventMeta,
    intended: Instant,
    mut expiry: watch::Receiver<bool>,
) {
    let mut frame = Vec::with_capacity(4096);
    encode_frame(&Message::Event(event.clone()), &mut frame);
    let (mut busy, mut error_retries, mut transport_retries) = (0u32, 0u32, 0u32);
    let mut last_busy = false;
    // Set once any attempt has a stream, i.e. the event left this gate for the server.
    let opened = AtomicBool::new(false);
    let mut attempt_intended = intended;
    let outcome = loop {
        let attempt = async {
            let (conn, _) = shared
                .connection(gate)
                .await
                .map_err(|e| ExchangeError::Transport(e.to_string()))?;
            let (message, at) = client::exchange_tracked(&conn, &frame, &opened).await?;
            if let Message::Redirect(r) = &message {
                // The market moved off this node: no new event goes on this connection, and
                // this one is retried where the node says, once this attempt has ended.
                shared.fleet[gate].redirected(&conn, r).await;
            }
            Ok((message, at))
        };
        let reply = tokio::select! {
            r = attempt => r,
            () = expired(&mut expiry) => break if last_busy { Final::BusyGaveUp } else { Final::Lost },
        };
        let reply = reply.map(|(message, opened_at)| {
            // The server withholds stream credit from a gate it has told to wait: time spent
            // waiting for a stream is part of that wait, not of the attempt.
            attempt_intended = attempt_intended.max(opened_at);
            message
        });
        let wait = match reply {
            Ok(Message::Verdict(v)) => break Final::Verdict(v),
            Ok(Message::Busy(b)) => {
                shared.stats().on_busy();
                shared.stats().on_reply(shared.load_start().elapsed());
                busy += 1;
                last_busy = true;
                if shared.max_busy_retries.is_some_and(|m| busy > m) {
                    break Final::BusyGaveUp;
                }
                busy_backoff(b.retry_after_ms, busy, meta.gate, meta.seq)
            }
            Ok(Message::Redirect(_)) => {
                // Not an answer: nothing was decided. The gate's next connection follows the
                // redirect (and its pause); the event goes there with the same seq.
                last_busy = false;
                RETRY_PAUSE_MIN
            }
            Ok(Message::Error(e)) if retryable(e.code) && error_retries < ERROR_RETRIES => {
                error_retries += 1;
                last_busy = false;
                RETRY_PAUSE_MIN
            }
            Ok(Message::Error(e)) => break Final::Error(format!("{:?}", e.code)),
            Ok(other) => break Final::Error(format!("unexpected {:?}", other.kind())),
            Err(ExchangeError::Decode(_)) => break Final::Error("undecodable".into()),
            Err(ExchangeError::Transport(_)) => {
                shared.stats().report.transport_retries += 1;
                transport_retries += 1;
                last_busy = false;
                (RETRY_PAUSE_MIN * transport_retries).min(RETRY_PAUSE_MAX)
            }
        };
        if last_busy {
            // The server answered and refused: its next answer is a fresh attempt. After a
            // transport failure or a retryable error the event is still waiting on the same
            // exchange, so that time stays in the attempt.
            attempt_intended = Instant::now() + wait;
        }
        if !pause(wait, &mut expiry).await {
            break if last_busy {
                Final::BusyGaveUp
            } else {
                Final::Lost
            };
        }
    };
    let latency = intended.elapsed();
    let attempt_latency = attempt_intended.elapsed();
    let at = shared.load_start().elapsed();
    let mut stats = shared.stats();
    match outcome {
        Final::Verdict(v) => {
            stats.on_reply(at);
            stats.on_verdict(&v, latency, attempt_latency, &meta);
            drop(stats);
            if shared.keep_answered {
                let mut slot = shared.answered[gate]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *slot = Some(Answered { event });
            }
        }
        Final::Error(code) => {
            stats.on_reply(at);
            stats.on_error(&code);
        }
        Final::BusyGaveUp => stats.report.busy_gave_up += 1,
        Final::Lost => {
            stats.report.lost += 1;
            stats.report.lost_unsent += u64::from(!opened.load(Ordering::Relaxed));
        }
    }
}

/// The pause before retrying an event after its `busy`-th `Busy` reply: the server's hint,
/// doubled for every further refusal and spread by ±50% (a fixed pause would have a whole
/// refused burst come back as one burst). PROTOCOL.md asks gates to back off like this, so an
/// overloaded server sheds load instead of being asked again at the same rate.
fn busy_backoff(hint_ms: u32, busy: u32, gate: u32, seq: u64) -> Duration {
    let doubled = u64::from(hint_ms.max(1)) << busy.saturating_sub(1).min(16);
    let pause = Duration::from_millis(doubled).min(BUSY_PAUSE_MAX);
    // A hash of the event's key and attempt, not a shared generator: no lock per retry.
    let mut x = (u64::from(gate) << 40) ^ seq.rotate_left(7) ^ u64::from(busy);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let spread = 0.5 + ((x ^ (x >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
    pause.mul_f64(spread)
}

/// Errors the protocol says to retry with the same `seq`.
fn retryable(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Internal | ErrorCode::ShuttingDown)
}

/// Sends one bad stream on the gate's connection and judges the reply.
async fn drive_bad(
    shared: Arc<Shared>,
    gate: usize,
    kind: BadKind,
    event: Event,
    mut expiry: watch::Receiver<bool>,
) {
    let attempt = async {
        let (conn, _) = shared.connection(gate).await.ok()?;
        let ack = shared.fleet[gate].ack.get()?.clone();
        let answered = if kind == BadKind::ReusedSeq {
            shared.answered[gate]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        } else {
            None
        };
        let own = shared.fleet[gate].gate.gate;
        let other = shared
            .fleet
            .iter()
            .map(|g| g.gate.gate)
            .find(|g| *g != own)
            .unwrap_or_else(|| own.wrapping_add(1));
        let (kind, bytes, promise) = badinput::build(kind, event, &ack, answered, other);
        let reply = client::exchange_raw(&conn, &bytes).await;
        let outcome = badinput::judge(promise, &reply);
        // A server that drops the connection over bad input does it right after replying.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some((kind, outcome, conn.close_reason().is_some()))
    };
    let result = tokio::select! {
        r = attempt => r,
        () = expired(&mut expiry) => None,
    };
    let (kind, outcome, closed) = result.unwrap_or((kind, BadOutcome::NoReply, false));
    shared.stats().on_bad(kind, &outcome, closed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_backoff_doubles_and_is_capped() {
        let at = |n| busy_backoff(50, n, 7, 1000 + u64::from(n));
        // First refusal: the hint, spread by ±50%.
        assert!((25..75).contains(&at(1).as_millis()), "{:?}", at(1));
        assert!((100..300).contains(&at(3).as_millis()), "{:?}", at(3));
        for n in [10, 40, u32::MAX] {
            assert!(at(n) < BUSY_PAUSE_MAX.mul_f64(1.5), "{:?}", at(n));
        }
        // Different events refused together come back spread out.
        let pauses: std::collections::BTreeSet<u128> = (0..50)
            .map(|seq| busy_backoff(50, 1, 3, seq).as_millis())
            .collect();
        assert!(pauses.len() > 20, "{pauses:?}");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn mix_parses_three_weights() {
        assert_eq!("70,20,10".parse::<Mix>(), Ok(Mix::default()));
        assert_eq!(
            "1, 0, 0".parse::<Mix>(),
            Ok(Mix {
                verify: 1,
                identify: 0,
                signin: 0
            })
        );
        assert!("0,0,0".parse::<Mix>().is_err());
        assert!("70,30".parse::<Mix>().is_err());
        assert!("a,b,c".parse::<Mix>().is_err());
    }

    #[test]
    fn run_config_is_validated() {
        let ok = RunConfig::default();
        assert!(validate(&ok).is_ok());
        for bad in [
            RunConfig {
                gates: 0,
                ..ok.clone()
            },
            RunConfig {
                targets: vec![],
                ..ok.clone()
            },
            RunConfig {
                rate: 0.0,
                ..ok.clone()
            },
            RunConfig {
                rate: f64::NAN,
                ..ok.clone()
            },
            RunConfig {
                bad_input: 1.5,
                ..ok.clone()
            },
            RunConfig {
                reply_timeout: Duration::ZERO,
                ..ok.clone()
            },
            RunConfig {
                mix: Mix {
                    verify: 0,
                    identify: 0,
                    signin: 0,
                },
                ..ok
            },
        ] {
            assert!(
                matches!(validate(&bad), Err(RunError::InvalidConfig { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn run_refuses_a_missing_population_before_touching_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RunConfig {
            population: dir.path().join("nope"),
            ..RunConfig::default()
        };
        let err = run(&cfg).unwrap_err().to_string();
        assert!(err.contains("population.json"), "{err}");
    }

    #[test]
    fn run_refuses_missing_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let pop = dir.path().join("pop");
        let pcfg = population::PopulationConfig {
            subjects: 10,
            gates: 4,
            markets: 2,
            dim: 8,
            ..Default::default()
        };
        population::generate(&pcfg, &pop).unwrap();
        let cfg = RunConfig {
            population: pop.clone(),
            certs: dir.path().join("certs"),
            gates: 4,
            ..RunConfig::default()
        };
        let err = run(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("gatewarden cert"),
            "{err}"
        );
        let too_many = RunConfig {
            population: pop,
            gates: 5,
            ..RunConfig::default()
        };
        assert!(
            run(&too_many)
                .unwrap_err()
                .to_string()
                .contains("only 4 gates")
        );
    }
}

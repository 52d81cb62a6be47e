//! The `gatewarden-loadgen` binary: make a synthetic population with ground truth, and drive
//! a fleet of simulated gates against a gatewarden server over QUIC.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gatewarden_loadgen::history;
use gatewarden_loadgen::population::{self, PopulationConfig};
use gatewarden_loadgen::run::{self, Mix, Profile, RunConfig, Twists};
use gatewarden_protocol::UnixMillis;

/// Simulated gate fleet for gatewarden, with ground truth.
#[derive(Debug, Parser)]
#[command(name = "gatewarden-loadgen", version, about, long_about = long_about())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn long_about() -> String {
    format!(
        "Simulated gate fleet for gatewarden, with ground truth.\n\n\
         `gatewarden demo` runs all of this in one command. By hand:\n{}",
        gatewarden_loadgen::BY_HAND
    )
}

// Parsed once per process: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Write a seeded synthetic population (subjects, health records, gates, face templates)
    /// and its ground truth into a folder.
    Population(PopulationArgs),
    /// Connect N gates over QUIC and send an open-loop schedule of events; report latency,
    /// throughput and accuracy against the ground truth.
    Run(RunArgs),
    /// Write months of past entry records into an existing site (stopped), decided by the
    /// site's own policy, for benchmarks that start from a store that has lived.
    History(HistoryArgs),
    /// Write faces of people who were never enrolled, exactly as a run's strangers are made,
    /// to check `gatewarden calibrate`'s FPIR estimate against them (`--strangers`).
    Strangers(StrangersArgs),
    /// Measure registry propagation between two nodes on one PostgreSQL: enrol a new person
    /// at node A (admin HTTP API), then ask a gate at node B until it admits them; report
    /// p50/p99 of the time from the write to B's verdict.
    Propagation(PropagationArgs),
}

#[derive(Debug, Args)]
struct PropagationArgs {
    /// Node A's admin HTTP API, host:port (where the writes go).
    #[arg(long)]
    admin: SocketAddr,
    /// Node A's admin token file (DATA/admin.token).
    #[arg(long)]
    token_file: PathBuf,
    /// Node B's QUIC address, host:port (where the verdicts come from).
    #[arg(long)]
    target: SocketAddr,
    /// The fleet's certificates (ca.pem and gates/), as for `run`.
    #[arg(long)]
    certs: PathBuf,
    /// The gate at node B that asks, and its market.
    #[arg(long, default_value_t = 1)]
    gate: u32,
    #[arg(long, default_value_t = 1)]
    market: u32,
    /// Rounds: one new person enrolled at A and verified at B each.
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// The site's face model id and dimension (`[engine] model` and `dim`).
    #[arg(long, default_value = "demo-face-v1")]
    model: String,
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// The first subject id enrolled (one more per round): ids the site does not use.
    #[arg(long, default_value_t = 900_000_000)]
    first_subject: u64,
    /// The longest a round may wait for node B, in seconds, before the run fails.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Before each round a random pause of up to this long (ms), so that the writes fall at
    /// every phase of node B's poll; give at least B's `registry_poll_ms`.
    #[arg(long, default_value_t = 500)]
    pause_ms: u64,
    /// Print the report as JSON (every round's latency included).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StrangersArgs {
    /// The population folder (its seed and dimension make the strangers).
    #[arg(long)]
    population: PathBuf,
    /// How many strangers (the impostors of events 0..count of the run).
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// The run's seed (`gatewarden-loadgen run --seed`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file (.npy, float32, one face a row).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct HistoryArgs {
    /// Data folder of the site (made by gatewarden init, with gates and subjects imported).
    #[arg(long)]
    data: PathBuf,
    /// Days of history, ending yesterday (UTC) unless --last-day says otherwise.
    #[arg(long, default_value_t = 180)]
    days: u32,
    /// Entries per day.
    #[arg(long, default_value_t = 150_000)]
    per_day: u64,
    /// The newest day written, YYYY-MM-DD (UTC); default yesterday.
    #[arg(long)]
    last_day: Option<String>,
    /// Seed of everything random.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct PopulationArgs {
    /// Enrolled people.
    #[arg(long, default_value_t = 100_000)]
    subjects: usize,
    /// Markets (numbered 1..=M).
    #[arg(long, default_value_t = 10)]
    markets: u32,
    /// Gates (numbered 1..=G, round-robin over markets, zones 1..=4).
    #[arg(long, default_value_t = 1_000)]
    gates: u32,
    /// Embedding dimension.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Seed of everything random.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Face model id (must equal the server gallery's).
    #[arg(long, default_value = "demo-face-v1")]
    model: String,
    /// The population's "now" in unix milliseconds (default: the current time). Ground truth
    /// holds for events within 24 h of it.
    #[arg(long)]
    now: Option<u64>,
    /// Output folder (created owner-only).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Server address; give every node of the site (repeat the flag, or separate them with
    /// commas): each gate starts at the first, fails over to the next when it loses its node,
    /// and follows the `Redirect`s of nodes that do not serve its market.
    #[arg(
        long = "target",
        default_value = "127.0.0.1:4433",
        value_delimiter = ','
    )]
    targets: Vec<SocketAddr>,
    /// Name the server certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Certificate folder made by `gatewarden cert` (ca.pem, gates/<id>.pem, gates/<id>.key).
    #[arg(long)]
    certs: PathBuf,
    /// Population folder made by `gatewarden-loadgen population`.
    #[arg(long)]
    population: PathBuf,
    /// Gates taking part (1..=N); default: every gate of the population.
    #[arg(long)]
    gates: Option<u32>,
    /// Peak rate in events per second over the whole fleet.
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Arrival profile.
    #[arg(long, value_enum, default_value = "rush")]
    profile: Profile,
    /// Length of the schedule (e.g. 60s, 2m, 500ms).
    #[arg(long, default_value = "60s", value_parser = run::parse_duration)]
    duration: Duration,
    /// Stop after this many events (whichever of this and --duration comes first).
    #[arg(long)]
    max_events: Option<u64>,
    /// Request mix as verify,identify,signin weights.
    #[arg(long, default_value = "70,20,10")]
    mix: Mix,
    /// Fraction of streams carrying bad input (malformed, oversize, NaN, wrong dimension,
    /// replay, other gate).
    #[arg(long, default_value_t = 0.0)]
    bad_input: f64,
    /// Fraction of events with a never-enrolled face.
    #[arg(long, default_value_t = 0.02)]
    impostors: f64,
    /// Fraction of eligible people's events with a fever reading.
    #[arg(long, default_value_t = 0.01)]
    fever: f64,
    /// Fraction of workers' events at a gate outside their zones.
    #[arg(long, default_value_t = 0.01)]
    wrong_zone: f64,
    /// Extra time for unanswered events after the schedule ends (also the connect timeout).
    #[arg(long, default_value = "10s", value_parser = run::parse_duration)]
    reply_timeout: Duration,
    /// Give up on an event after this many Busy replies (default: retry until the end).
    #[arg(long)]
    max_busy_retries: Option<u32>,
    /// Seed of the run (people, faces, arrivals).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency-over-time plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write every received verdict (gate, seq, decision, subject, replayed) here as JSON Lines.
    #[arg(long)]
    verdicts: Option<PathBuf>,
    /// UDP sockets shared by the gates' connections.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Most gate handshakes in flight at once before the load.
    #[arg(long, default_value_t = 16)]
    connect_window: usize,
    /// Keep-alive interval of each gate's connection (the idle timeout is five of them).
    #[arg(long, default_value = "1s", value_parser = run::parse_duration)]
    keep_alive: Duration,
    /// Keep the connected fleet quiet this long before the load (to measure idle connections).
    #[arg(long, default_value = "0s", value_parser = run::parse_duration)]
    hold: Duration,
    /// Exit with status 2 if any event was lost, falsely admitted, or any bad input admitted.
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn measure_propagation(a: PropagationArgs) -> anyhow::Result<ExitCode> {
    let token = std::fs::read_to_string(&a.token_file)
        .with_context(|| format!("reading {}", a.token_file.display()))?;
    let cfg = gatewarden_loadgen::propagation::PropagationConfig {
        admin: a.admin,
        token: token.trim().to_owned(),
        target: a.target,
        certs: a.certs,
        gate: a.gate,
        market: a.market,
        writes: a.writes,
        model: a.model,
        dim: a.dim,
        first_subject: a.first_subject,
        timeout: Duration::from_secs(a.timeout_s),
        pause: Duration::from_millis(a.pause_ms),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(gatewarden_loadgen::propagation::measure(&cfg))?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "propagation over {} writes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, mean {:.1} ms \
             ({} verdicts asked; p99 of the admitting verdict itself {:.1} ms)",
            report.writes,
            report.p50_ms,
            report.p99_ms,
            report.max_ms,
            report.mean_ms,
            report.probes,
            report.last_verdict_p99_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Population(a) => {
            let mut cfg = PopulationConfig {
                subjects: a.subjects,
                markets: a.markets,
                gates: a.gates,
                dim: a.dim,
                seed: a.seed,
                model: a.model,
                ..PopulationConfig::default()
            };
            if let Some(now) = a.now {
                cfg.now = UnixMillis(now);
            }
            let summary = population::generate(&cfg, &a.out)
                .with_context(|| format!("population into {}", a.out.display()))?;
            print!("{}", summary.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => run_fleet(a),
        Command::Propagation(a) => measure_propagation(a),
        Command::History(a) => write_history(a),
        Command::Strangers(a) => {
            anyhow::ensure!(a.count > 0, "--count must be at least 1");
            let cfg = population::load_config(&a.population)
                .with_context(|| format!("population in {}", a.population.display()))?;
            gatewarden_loadgen::strangers::write_strangers(&cfg, a.seed, a.count, &a.out)
                .with_context(|| format!("strangers into {}", a.out.display()))?;
            println!(
                "wrote {} strangers ({}-d, run seed {}) to {}",
                a.count,
                cfg.dim,
                a.seed,
                a.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write_history(a: HistoryArgs) -> anyhow::Result<ExitCode> {
    use gatewarden::clock::{Clock, SystemClock, parse_day};
    let last_day = match &a.last_day {
        Some(day) => parse_day(day).with_context(|| format!("--last-day {day}"))?,
        None => (SystemClock.now().0 / gatewarden::clock::DAY_MS) as i64 - 1,
    };
    let cfg = history::HistoryConfig {
        days: a.days,
        per_day: a.per_day,
        last_day,
        seed: a.seed,
    };
    let quiet = a.quiet;
    let total = u64::from(a.days) * a.per_day;
    let progress = move |days: u32, entries: u64| {
        if !quiet {
            eprintln!("history: {days}/{} days, {entries}/{total} entries", a.days);
        }
    };
    let summary = history::generate(&a.data, &cfg, &progress)
        .with_context(|| format!("history into {}", a.data.display()))?;
    println!(
        "wrote {} entries ({} admitted) over {} days into {} in {:.1} s ({:.0} entries/s)",
        summary.entries,
        summary.admitted,
        summary.days,
        a.data.display(),
        summary.seconds,
        summary.entries as f64 / summary.seconds.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

fn run_fleet(a: RunArgs) -> anyhow::Result<ExitCode> {
    let gates = match a.gates {
        Some(g) => g,
        None => population::load_config(&a.population)?.gates,
    };
    let cfg = RunConfig {
        targets: a.targets,
        server_name: a.server_name,
        certs: a.certs,
        population: a.population,
        gates,
        rate: a.rate,
        profile: a.profile,
        duration: a.duration,
        max_events: a.max_events,
        mix: a.mix,
        twists: Twists {
            impostor: a.impostors,
            fever: a.fever,
            wrong_zone: a.wrong_zone,
        },
        bad_input: a.bad_input,
        reply_timeout: a.reply_timeout,
        max_busy_retries: a.max_busy_retries,
        seed: a.seed,
        progress: !a.quiet,
        verdict_log: a.verdicts,
        sockets: a.sockets,
        connect_window: a.connect_window,
        keep_alive: a.keep_alive,
        hold: a.hold,
    };
    let report = run::run(&cfg)?;
    print!("{}", report.summary());
    if let Some(path) = &a.json {
        report
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.plot {
        report
            .write_plot_svg(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed =
        report.lost > 0 || report.accuracy.false_admit > 0 || report.bad_input.violations > 0;
    Ok(if a.strict && failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

//! In-process benchmark of the whole pipeline: queue, micro-batched matching, policy, group
//! commit to a real SQLite file with `synchronous=FULL` (or to PostgreSQL with
//! `synchronous_commit = on`, `--stores`), replies. No network.
//!
//! A gallery of `--subjects` people (d = 512 by default) is enrolled in a temporary folder;
//! then, for each batch limit B, the same stream of events (70% verify with ID card, 20%
//! identify, 10% staff sign-in) is pushed with a bounded number of events in flight, and the
//! report gives events/s, latency percentiles (submit to durable verdict), the group-commit
//! latency and where the time goes.
//!
//! ```sh
//! cargo run --release -p gatewarden --features testing --example pipeline_bench -- \
//!     --subjects 100000 --events 20000 --batches 1,16,64
//! ```
//!
//! `--stores sqlite,postgres:///db?host=/tmp/pg` runs the same events on each store in turn,
//! in the same run, and adds the CPU time per event: this process's, plus (for PostgreSQL)
//! that of every `postgres` process on the machine, read from `/proc` (Linux).

// A benchmark harness: a failed set-up step should stop it loudly, as in benches/.
#![allow(clippy::expect_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use gatewarden::model::GateInfo;
use gatewarden::testing::{FacePopulation, Rng};
use gatewarden::{Config, Engine, Reply};
use gatewarden_protocol::{
    Category, CodeColour, Credential, Direction, Event, FaceSample, GateId, HealthRecord, MarketId,
    Mode, SubjectId, SubjectRecord, SubjectStatus, TestResult, UnixMillis, ZoneId,
};

struct Args {
    subjects: usize,
    dim: usize,
    events: usize,
    in_flight: usize,
    batches: Vec<usize>,
    stores: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        subjects: 100_000,
        dim: 512,
        events: 20_000,
        in_flight: 512,
        batches: vec![1, 16, 64],
        stores: vec!["sqlite".to_owned()],
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--subjects" => args.subjects = value.parse().expect("--subjects N"),
            "--dim" => args.dim = value.parse().expect("--dim D"),
            "--events" => args.events = value.parse().expect("--events N"),
            "--in-flight" => args.in_flight = value.parse().expect("--in-flight N"),
            "--batches" => {
                args.batches = value
                    .split(',')
                    .map(|b| b.parse().expect("--batches 1,16,64"))
                    .collect()
            }
            "--stores" => args.stores = value.split(',').map(str::to_owned).collect(),
            other => panic!("unknown option {other}; see the example's docs"),
        }
    }
    args
}

const GATES: u32 = 100;
const MODEL: &str = "bench-face";

fn now() -> UnixMillis {
    gatewarden::clock::Clock::now(&gatewarden::clock::SystemClock)
}

fn config(dim: usize, batch: usize, store: &str) -> Config {
    let mut config = Config {
        store: Some(gatewarden::store::StoreLocation::parse(store).expect("--stores")),
        ..Config::default()
    };
    config.engine.dim = dim;
    config.engine.model = MODEL.to_owned();
    config.engine.max_batch = batch;
    config.engine.queue_capacity = 8192;
    config.engine.deadline_ms = 10_000; // measure latency, do not shed load
    // In process there is no network front to leave a core for: one matcher per core.
    config.engine.workers = std::thread::available_parallelism().map_or(1, usize::from);
    config
}

fn card(i: usize) -> String {
    format!("1101{i:014}")
}

fn enroll(engine: &Engine, population: &FacePopulation, n: usize) {
    let store = engine.store();
    let gates: Vec<GateInfo> = (1..=GATES)
        .map(|g| GateInfo {
            gate: GateId(g),
            market: MarketId(1 + g % 4),
            zone: ZoneId(1),
            name: String::new(),
        })
        .collect();
    store.upsert_gates(&gates).expect("gates");
    let t = now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let people: Vec<SubjectRecord> = chunk
            .iter()
            .map(|&i| SubjectRecord {
                subject: SubjectId(i as u64),
                category: if i % 10 == 0 {
                    Category::Staff
                } else {
                    Category::Shopper
                },
                home_market: MarketId(1),
                markets: vec![],
                zones: vec![],
                valid_from: None,
                valid_until: None,
                id_card: Some(card(i)),
                qr_tokens: vec![],
                status: SubjectStatus::Active,
            })
            .collect();
        store.upsert_subjects(&people).expect("subjects");
        let health: Vec<HealthRecord> = chunk
            .iter()
            .map(|&i| HealthRecord {
                subject: SubjectId(i as u64),
                test_at: Some(UnixMillis(t.0 - 3_600_000)),
                test_result: Some(TestResult::Negative),
                vaccine_doses: 3,
                health_code: CodeColour::Green,
                travel_code: CodeColour::Green,
                updated_at: t,
            })
            .collect();
        store.upsert_health(&health).expect("health");
        let rows: Vec<(SubjectId, &[f32])> = chunk
            .iter()
            .map(|&i| (SubjectId(i as u64), population.identity(i)))
            .collect();
        engine.enroll_templates(&rows, None).expect("templates");
        eprint!("\renrolled {} / {n}", chunk.last().map_or(0, |i| i + 1));
    }
    eprintln!();
    engine.gallery().compact().expect("compact");
}

fn event(rng: &mut Rng, population: &FacePopulation, n: usize, seq: u64) -> Event {
    let who = rng.below(n as u64) as usize;
    let probe = gatewarden::testing::around(rng, population.identity(who), 0.7);
    let roll = rng.below(100);
    let mode = match roll {
        0..70 => Mode::Verify {
            credential: Credential::IdCard(card(who)),
        },
        70..90 => Mode::Identify,
        _ => Mode::SignIn { credential: None },
    };
    Event {
        gate: GateId(1 + (seq % u64::from(GATES)) as u32),
        seq,
        captured_at: now(),
        mode,
        direction: Direction::Entry,
        face: Some(FaceSample {
            model: MODEL.to_owned(),
            embedding: probe,
            quality: 0.9,
            liveness: 0.9,
        }),
        temperature_c: Some(36.5),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn run(engine: &Engine, events: Vec<Event>, in_flight: usize) -> (f64, Vec<Duration>, usize) {
    let clock = gatewarden::clock::SystemClock;
    let started = gatewarden::clock::Clock::instant(&clock);
    let mut window: VecDeque<(Instant, gatewarden::Submission)> = VecDeque::new();
    let mut latencies = Vec::with_capacity(events.len());
    let mut busy = 0;
    let mut collect =
        |(t, s): (Instant, gatewarden::Submission), latencies: &mut Vec<Duration>| match s.wait() {
            Reply::Verdict(_) => latencies.push(t.elapsed()),
            _ => busy += 1,
        };
    for e in events {
        if window.len() >= in_flight {
            let front = window.pop_front().expect("window is full");
            collect(front, &mut latencies);
        }
        window.push_back((gatewarden::clock::Clock::instant(&clock), engine.submit(e)));
    }
    while let Some(front) = window.pop_front() {
        collect(front, &mut latencies);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    (secs, latencies, busy)
}

/// CPU time (user + system, seconds) of this process, and of every process named `postgres`.
fn cpu_seconds() -> (f64, f64) {
    // /proc/PID/stat: fields 14 and 15 are utime and stime in clock ticks (100 per second on
    // Linux's usual USER_HZ).
    let ticks = |stat: &str| -> Option<(String, f64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let name = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some((name, t / 100.0))
    };
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0.0, |(_, t)| t);
    let mut pg = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(stat) = std::fs::read_to_string(e.path().join("stat"))
                && let Some((name, t)) = ticks(&stat)
                && name == "postgres"
            {
                pg += t;
            }
        }
    }
    (own, pg)
}

fn main() {
    let args = parse_args();
    let root = std::env::temp_dir().join(format!("gatewarden-bench-{}", std::process::id()));
    let population = FacePopulation::new(42, args.subjects, args.dim);
    println!(
        "pipeline: {} subjects, d = {}, {} events per run (70% verify, 20% identify, 10% sign-in), {} in flight",
        args.subjects, args.dim, args.events, args.in_flight
    );
    println!(
        "{:>8} {:>5} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10} {:>9} {:>6} {:>11} {:>11}",
        "store",
        "B",
        "events/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "commit p50",
        "commit p99",
        "batch avg",
        "busy",
        "cpu us/ev",
        "pg cpu us/ev"
    );
    for (i, store) in args.stores.iter().enumerate() {
        let name = if store == "sqlite" {
            "sqlite"
        } else {
            "postgres"
        };
        let dir = root.join(i.to_string());
        {
            let engine = Engine::open(&dir, config(args.dim, 64, store)).expect("open");
            enroll(&engine, &population, args.subjects);
            engine.shutdown();
        }
        let mut seq = 1_u64;
        for &b in &args.batches {
            let engine = Engine::open(&dir, config(args.dim, b, store)).expect("open");
            let mut rng = Rng::new(7 + b as u64);
            let events: Vec<Event> = (0..args.events)
                .map(|_| {
                    seq += 1;
                    event(&mut rng, &population, args.subjects, seq)
                })
                .collect();
            let (own0, pg0) = cpu_seconds();
            let (secs, lat, busy) = run(&engine, events, args.in_flight);
            let (own1, pg1) = cpu_seconds();
            let stats = engine.stats();
            let per_event = |s: f64| s / args.events as f64 * 1e6;
            println!(
                "{:>8} {:>5} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}ms {:>8.2}ms {:>9.1} {:>6} {:>11.0} {:>11.0}",
                name,
                b,
                lat.len() as f64 / secs,
                percentile(&lat, 0.50),
                percentile(&lat, 0.99),
                percentile(&lat, 1.0),
                stats.commit_us.p50 as f64 / 1e3,
                stats.commit_us.p99 as f64 / 1e3,
                stats.batch_size.mean,
                busy,
                per_event(own1 - own0),
                per_event(pg1 - pg0),
            );
            eprintln!(
                "  {name} B={b}: queue wait mean {:.2} ms, matching per batch mean {:.2} ms, commit mean {:.2} ms over {:.0} records",
                stats.queue_wait_us.mean / 1e3,
                stats.matching_us.mean / 1e3,
                stats.commit_us.mean / 1e3,
                stats.commit_size.mean
            );
            engine.shutdown();
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

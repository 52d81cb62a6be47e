//! `gatewarden-loadgen propagation`: how long a registry write made at one node takes to
//! change a verdict at another (issue 14; run by `benches/cluster/propagation.sh`).
//!
//! Each round enrols a new person at node A through its admin HTTP API (the record with an
//! ID card, a health record, one face: three writes, as a site's enrolment desk makes them),
//! then a gate connected to node B over QUIC shows that person's card and face again and
//! again until B admits them. The round's latency runs from A's answer to the last write (the
//! write is committed) to B's admitting verdict, so it includes B's follower, one verdict and
//! a QUIC round trip; its resolution is one verdict (a few milliseconds: each is committed
//! before it is answered).
//!
//! Every round is a new person, so no policy rule that counts a person's entries can
//! interfere: before propagation B denies an unknown card, which counts for nobody. The
//! faces are random unit vectors (seeded); the probe is the enrolled face itself.
//!
//! Rounds are paused by a random time first: a round starts just after B applied the last
//! one, so without the pause every write would land just after one of B's polls, and a run
//! without notifications would measure the whole poll interval every time instead of its
//! spread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use gatewarden_protocol::{
    Credential, Decision, Direction, Event, FaceSample, GateId, Hello, MIN_PROTOCOL_VERSION,
    MarketId, Message, Mode, PROTOCOL_VERSION, SubjectId, UnixMillis, capability, encode_frame,
};

use crate::population::wall_clock;
use crate::run::client::{endpoint, exchange, gate_client_config, load_roots, transport_config};

/// What to measure against.
#[derive(Debug)]
pub struct PropagationConfig {
    /// Node A's admin HTTP API (`host:port`), where the writes go.
    pub admin: SocketAddr,
    /// Node A's admin token.
    pub token: String,
    /// Node B's QUIC address, where the verdicts come from.
    pub target: SocketAddr,
    /// The fleet's certificates (`ca.pem`, `gates/<gate>.pem`).
    pub certs: PathBuf,
    /// The gate at node B that shows the faces.
    pub gate: u32,
    /// That gate's market.
    pub market: u32,
    /// Rounds (one enrolment each).
    pub writes: usize,
    /// The site's face model id and dimension.
    pub model: String,
    /// The face dimension.
    pub dim: usize,
    /// The first subject id enrolled (then one more per round): ids the site does not use.
    pub first_subject: u64,
    /// The longest one round may wait for B before the run fails.
    pub timeout: Duration,
    /// Before each round a pause drawn uniformly from `[0, pause)`, so that writes do not
    /// fall at one phase of B's poll (see the module docs).
    pub pause: Duration,
}

/// The latencies measured, in milliseconds, in round order.
#[derive(Debug, serde::Serialize)]
pub struct PropagationReport {
    /// Rounds run.
    pub writes: usize,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest round.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Verdicts asked of B in all (those before propagation denied).
    pub probes: u64,
    /// The 99th percentile of the admitting verdict's own round trip (ask to answer): the
    /// part of a round's latency that is B deciding and committing, not propagation. A slow
    /// round with a slow last verdict was slowed by B's verdicts (its commits), not by B's
    /// follower.
    pub last_verdict_p99_ms: f64,
    /// Each round's latency.
    pub rounds_ms: Vec<f64>,
}

/// Runs the rounds.
///
/// # Errors
/// A refused write, a gate that cannot connect, or a round that B did not admit within the
/// timeout (with its last verdict).
pub async fn measure(cfg: &PropagationConfig) -> anyhow::Result<PropagationReport> {
    ensure!(cfg.writes > 0, "--writes must be at least 1");
    let conn = connect_gate(cfg).await?;
    // Seqs above any this gate has used before: the gate's time-ordered counter.
    let mut seq = wall_clock().0.saturating_mul(1000);
    let mut rounds = Vec::with_capacity(cfg.writes);
    let mut last_verdicts = Vec::with_capacity(cfg.writes);
    let mut probes = 0u64;
    for round in 0..cfg.writes {
        tokio::time::sleep(cfg.pause.mul_f64(uniform(round as u64))).await;
        let subject = cfg.first_subject + round as u64;
        let face = face(subject, cfg.dim);
        enrol(cfg, subject, &face).with_context(|| format!("enrolling {subject} at node A"))?;
        let written = Instant::now();
        let mut last = None;
        loop {
            seq += 1;
            probes += 1;
            let event = probe(cfg, subject, seq, &face);
            let mut frame = Vec::new();
            encode_frame(&Message::Event(event), &mut frame);
            let asked = Instant::now();
            let reply = exchange(&conn, &frame)
                .await
                .map_err(|e| anyhow::anyhow!("asking node B: {e}"))?;
            if let Message::Verdict(v) = &reply
                && v.decision == Decision::Admit
            {
                rounds.push(written.elapsed().as_secs_f64() * 1e3);
                last_verdicts.push(asked.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if written.elapsed() > cfg.timeout {
                bail!(
                    "node B did not admit subject {subject} within {:?} of its enrolment at \
                     node A; last answer {last:?}",
                    cfg.timeout
                );
            }
            last = Some(reply);
        }
    }
    conn.close(0u32.into(), b"done");
    Ok(report(rounds, &last_verdicts, probes))
}

/// A number in `[0, 1)` drawn from `n` (SplitMix64's finaliser): the same rounds pause alike.
fn uniform(n: u64) -> f64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

/// The nearest-rank percentile `q` of `values` (not empty).
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn report(rounds: Vec<f64>, last_verdicts: &[f64], probes: u64) -> PropagationReport {
    PropagationReport {
        writes: rounds.len(),
        p50_ms: percentile(&rounds, 0.50),
        p99_ms: percentile(&rounds, 0.99),
        max_ms: percentile(&rounds, 1.0),
        mean_ms: rounds.iter().sum::<f64>() / rounds.len() as f64,
        probes,
        last_verdict_p99_ms: percentile(last_verdicts, 0.99),
        rounds_ms: rounds,
    }
}

/// A QUIC connection of the gate to node B, past Hello.
async fn connect_gate(cfg: &PropagationConfig) -> anyhow::Result<quinn::Connection> {
    let roots = load_roots(&cfg.certs)?;
    let transport = transport_config(Duration::from_secs(5));
    let client = gate_client_config(&cfg.certs, cfg.gate, &roots, &transport)?;
    let endpoint = endpoint("0.0.0.0:0".parse()?, 1 << 20)?;
    // The node's certificate names its address (as `run` connects to an address).
    let conn = endpoint
        .connect_with(client, cfg.target, &cfg.target.ip().to_string())?
        .await
        .with_context(|| format!("connecting gate {} to {}", cfg.gate, cfg.target))?;
    let hello = Message::Hello(Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        gate: GateId(cfg.gate),
        market: MarketId(cfg.market),
        firmware: "gatewarden-loadgen/propagation".to_owned(),
        capabilities: capability::FACE | capability::ID_CARD,
    });
    let mut frame = Vec::new();
    encode_frame(&hello, &mut frame);
    match exchange(&conn, &frame).await {
        Ok(Message::HelloAck(_)) => Ok(conn),
        other => bail!("node B answered the gate's Hello with {other:?}"),
    }
}

/// A seeded random unit vector: the face of `subject`.
fn face(subject: u64, dim: usize) -> Vec<f32> {
    let mut x = subject.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / norm).collect()
}

fn id_card(subject: u64) -> String {
    format!("9{subject:017}")
}

fn probe(cfg: &PropagationConfig, subject: u64, seq: u64, face: &[f32]) -> Event {
    Event {
        gate: GateId(cfg.gate),
        seq,
        captured_at: wall_clock(),
        mode: Mode::Verify {
            credential: Credential::IdCard(id_card(subject)),
        },
        direction: Direction::Entry,
        face: Some(FaceSample {
            model: cfg.model.clone(),
            embedding: face.to_vec(),
            quality: 0.9,
            liveness: 0.95,
        }),
        temperature_c: Some(36.5),
    }
}

/// The three writes of an enrolment at node A.
fn enrol(cfg: &PropagationConfig, subject: u64, face: &[f32]) -> anyhow::Result<()> {
    let id = SubjectId(subject);
    let person = serde_json::json!([{
        "subject": id.0, "category": "shopper", "home_market": 1, "id_card": id_card(subject),
    }]);
    post(cfg, "/api/v1/subjects", &person)?;
    let now: UnixMillis = wall_clock();
    let health = serde_json::json!([{
        "subject": id.0, "test_at": now.0 - 60_000, "test_result": "negative",
        "vaccine_doses": 3, "health_code": "green", "travel_code": "green", "updated_at": now.0,
    }]);
    post(cfg, "/api/v1/health", &health)?;
    let templates = serde_json::json!({"model": cfg.model, "embeddings": [face]});
    post(
        cfg,
        &format!("/api/v1/subjects/{subject}/templates"),
        &templates,
    )
}

/// One HTTP/1.1 POST of JSON with the admin token; any status but 200 is an error.
fn post(cfg: &PropagationConfig, path: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    let body = body.to_string();
    let mut stream = TcpStream::connect(cfg.admin)
        .with_context(|| format!("connecting to node A's admin API at {}", cfg.admin))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        cfg.admin,
        cfg.token,
        body.len()
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply.split_whitespace().nth(1).unwrap_or("");
    ensure!(
        status == "200",
        "POST {path}: {}",
        reply.lines().next().unwrap_or("no answer")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_takes_nearest_rank_percentiles() {
        let rounds: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let r = report(rounds.clone(), &rounds, 250);
        assert_eq!((r.p50_ms, r.p99_ms, r.max_ms), (100.0, 198.0, 200.0));
        assert!((r.mean_ms - 100.5).abs() < 1e-9);
        assert_eq!(r.rounds_ms[0], 200.0, "rounds stay in their order");
        assert_eq!(r.last_verdict_p99_ms, 198.0);
        let one = report(vec![7.0], &[7.0], 1);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
    }

    #[test]
    fn pauses_are_spread_over_the_interval() {
        let draws: Vec<f64> = (0..1000).map(uniform).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let low = draws.iter().filter(|u| **u < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below one half");
    }
}

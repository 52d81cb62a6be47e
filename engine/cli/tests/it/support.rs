//! Fixtures: a small data folder with gates, people, health records and face templates, and
//! deterministic embeddings.

use std::path::Path;

use gatewarden::model::GateInfo;
use gatewarden::{Config, Engine};
use gatewarden_protocol::{
    Category, CodeColour, Credential, Direction, Event, FaceSample, GateId, HealthRecord, MarketId,
    Mode, SubjectId, SubjectRecord, SubjectStatus, TestResult, UnixMillis, ZoneId,
};

pub(crate) const DIM: usize = 128;
pub(crate) const MODEL: &str = "test-face";
pub(crate) const PEOPLE: u64 = 50;
pub(crate) const GATES: u32 = 4;

/// SplitMix64: tiny, seeded, good enough for test vectors.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// The enrolled face of a person (deterministic per id).
pub(crate) fn face_of(subject: u64) -> Vec<f32> {
    let mut rng = Rng::new(subject.wrapping_mul(7919) + 1);
    normalize((0..DIM).map(|_| rng.unit()).collect())
}

/// A fresh capture of a person's face: the template plus a little noise.
pub(crate) fn probe_of(subject: u64, nonce: u64) -> Vec<f32> {
    let mut rng = Rng::new(nonce ^ 0xABCD_EF01);
    let noisy: Vec<f32> = face_of(subject)
        .iter()
        .map(|x| x + 0.08 * rng.unit())
        .collect();
    normalize(noisy)
}

/// A face nobody enrolled.
pub(crate) fn stranger(nonce: u64) -> Vec<f32> {
    let mut rng = Rng::new(nonce.wrapping_mul(104_729) ^ 0x5555);
    normalize((0..DIM).map(|_| rng.unit()).collect())
}

pub(crate) fn config() -> Config {
    let mut config = Config::default();
    config.engine.dim = DIM;
    config.engine.model = MODEL.to_owned();
    config.engine.workers = 2;
    config
}

pub(crate) fn id_card(subject: u64) -> String {
    format!("11010119900101{subject:04}")
}

/// Registers gates 1..=GATES (market 1, zone = gate) and PEOPLE people with healthy records,
/// then enrolls one template each.
pub(crate) fn populate(engine: &Engine, now: UnixMillis) {
    let store = engine.store();
    let gates: Vec<GateInfo> = (1..=GATES)
        .map(|g| GateInfo {
            gate: GateId(g),
            market: MarketId(1),
            zone: ZoneId(g),
            name: format!("gate {g}"),
        })
        .collect();
    store.upsert_gates(&gates).unwrap();
    let people: Vec<SubjectRecord> = (1..=PEOPLE)
        .map(|s| SubjectRecord {
            subject: SubjectId(s),
            category: Category::Shopper,
            home_market: MarketId(1),
            markets: vec![],
            zones: vec![],
            valid_from: None,
            valid_until: None,
            id_card: Some(id_card(s)),
            qr_tokens: vec![],
            status: SubjectStatus::Active,
        })
        .collect();
    store.upsert_subjects(&people).unwrap();
    let health: Vec<HealthRecord> = (1..=PEOPLE)
        .map(|s| HealthRecord {
            subject: SubjectId(s),
            test_at: Some(UnixMillis(now.0 - 3_600_000)),
            test_result: Some(TestResult::Negative),
            vaccine_doses: 3,
            health_code: CodeColour::Green,
            travel_code: CodeColour::Green,
            updated_at: now,
        })
        .collect();
    store.upsert_health(&health).unwrap();
    let faces: Vec<(SubjectId, Vec<f32>)> =
        (1..=PEOPLE).map(|s| (SubjectId(s), face_of(s))).collect();
    let rows: Vec<(SubjectId, &[f32])> = faces.iter().map(|(s, v)| (*s, v.as_slice())).collect();
    let report = engine
        .enroll_templates(&rows, Some(&engine.gallery().snapshot()))
        .unwrap();
    assert_eq!(report.added, PEOPLE as usize);
}

pub(crate) fn open_populated(dir: &Path, now: UnixMillis) -> Engine {
    let engine = Engine::open(dir, config()).unwrap();
    populate(&engine, now);
    engine
}

fn face(embedding: Vec<f32>) -> Option<FaceSample> {
    Some(FaceSample {
        model: MODEL.to_owned(),
        embedding,
        quality: 0.9,
        liveness: 0.95,
    })
}

/// An ID card + face event of `subject` at `gate`.
pub(crate) fn verify_event(gate: u32, seq: u64, subject: u64, now: UnixMillis) -> Event {
    Event {
        gate: GateId(gate),
        seq,
        captured_at: now,
        mode: Mode::Verify {
            credential: Credential::IdCard(id_card(subject)),
        },
        direction: Direction::Entry,
        face: face(probe_of(subject, seq)),
        temperature_c: Some(36.5),
    }
}

/// A face-only event showing `embedding`.
pub(crate) fn identify_event(gate: u32, seq: u64, embedding: Vec<f32>, now: UnixMillis) -> Event {
    Event {
        gate: GateId(gate),
        seq,
        captured_at: now,
        mode: Mode::Identify,
        direction: Direction::Entry,
        face: face(embedding),
        temperature_c: None,
    }
}

/// Runs the `gatewarden` binary with `args` and `--data data`, without logs or input.
pub(crate) fn gw(args: &[&str], data: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gatewarden"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

//! Embeds the gatewarden engine in a program: a temporary data folder, two people enrolled,
//! a gate registered, two events submitted, verdicts printed.
//!
//! Run with: `cargo run -p gatewarden --example embed`

use gatewarden::model::GateInfo;
use gatewarden::{Config, Engine, Reply};
use gatewarden_protocol::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("gatewarden-example-{}", std::process::id()));
    let mut config = Config::default();
    config.engine.dim = 4; // a toy face model with 4-d embeddings
    let engine = Engine::open(&dir, config)?;
    let now = gatewarden::clock::Clock::now(&gatewarden::clock::SystemClock);
    let gate = GateInfo {
        gate: GateId(1),
        market: MarketId(1),
        zone: ZoneId(1),
        name: "north".into(),
    };
    engine.store().upsert_gates(&[gate])?;
    for (id, face) in [(1u64, [1.0, 0.0, 0.0, 0.0]), (2, [0.0, 1.0, 0.0, 0.0])] {
        let subject = SubjectRecord {
            subject: SubjectId(id),
            category: Category::Shopper,
            home_market: MarketId(1),
            markets: vec![],
            zones: vec![],
            valid_from: None,
            valid_until: None,
            id_card: None,
            qr_tokens: vec![],
            status: SubjectStatus::Active,
        };
        let template = FaceTemplate {
            model: "demo-face-v1".into(),
            embedding: face.to_vec(),
        };
        engine.enroll(&Enroll {
            subject,
            templates: vec![template],
        })?;
        engine.update_health(&UpdateHealth {
            records: vec![HealthRecord {
                subject: SubjectId(id),
                test_at: Some(now),
                test_result: Some(TestResult::Negative),
                vaccine_doses: 3,
                health_code: CodeColour::Green,
                travel_code: CodeColour::Green,
                updated_at: now,
            }],
        })?;
    }
    for (seq, face, temperature) in [
        (1, [0.9, 0.1, 0.0, 0.0], 36.6),
        (2, [0.1, 0.95, 0.0, 0.1], 38.5),
    ] {
        let event = Event {
            gate: GateId(1),
            seq,
            captured_at: now,
            mode: Mode::Identify,
            direction: Direction::Entry,
            face: Some(FaceSample {
                model: "demo-face-v1".into(),
                embedding: face.to_vec(),
                quality: 0.9,
                liveness: 0.9,
            }),
            temperature_c: Some(temperature),
        };
        match engine.submit_blocking(event) {
            Reply::Verdict(v) => println!(
                "event {seq}: {:?} {:?}: {}",
                v.decision, v.subject, v.display.text
            ),
            other => println!("event {seq}: {other:?}"),
        }
    }
    engine.shutdown();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

//! Deterministic sample messages, one per fixture file in `tests/data/v1` (and, for the one
//! message version 2 added, `tests/data/v2`). Embeddings have
//! dimension 4 so the hex in PROTOCOL.md stays readable. Never edit a sample whose fixture is
//! committed: a wire change adds a new fixture under a new version directory.

use gatewarden_protocol::*;

/// `(fixture name, message)` for every fixture: version 1's, then `redirect` (version 2).
pub(crate) fn all() -> Vec<(&'static str, Message)> {
    vec![
        ("hello", hello()),
        ("hello_ack", hello_ack()),
        ("event", event()),
        ("event_identify", event_identify()),
        ("event_sign_in", event_sign_in()),
        ("verdict", verdict()),
        (
            "busy",
            Message::Busy(Busy {
                retry_after_ms: 250,
            }),
        ),
        ("error", error()),
        ("redirect", redirect()),
        ("enroll", enroll()),
        ("enroll_ack", enroll_ack()),
        ("update_health", update_health()),
        ("update_health_ack", update_health_ack()),
        ("revoke", revoke()),
        ("revoke_ack", revoke_ack()),
    ]
}

const T0: u64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z

fn hello() -> Message {
    Message::Hello(Hello {
        min_version: 1,
        max_version: 1,
        gate: GateId(7),
        market: MarketId(3),
        firmware: "fw-2.1".to_owned(),
        capabilities: capability::FACE | capability::ID_CARD | capability::THERMOMETER,
    })
}

fn hello_ack() -> Message {
    Message::HelloAck(HelloAck {
        version: 1,
        embedding_dim: 4,
        model: "arcface".to_owned(),
        max_frame_len: 65_536,
    })
}

fn face() -> FaceSample {
    FaceSample {
        model: "arcface".to_owned(),
        embedding: vec![0.5, -0.5, 0.25, 1.0],
        quality: 0.75,
        liveness: 1.0,
    }
}

fn event() -> Message {
    Message::Event(Event {
        gate: GateId(7),
        seq: 42,
        captured_at: UnixMillis(T0),
        mode: Mode::Verify {
            credential: Credential::IdCard("A1234567".to_owned()),
        },
        direction: Direction::Entry,
        face: Some(face()),
        temperature_c: Some(36.5),
    })
}

fn event_identify() -> Message {
    Message::Event(Event {
        gate: GateId(7),
        seq: 43,
        captured_at: UnixMillis(T0 + 1_000),
        mode: Mode::Identify,
        direction: Direction::Exit,
        face: Some(face()),
        temperature_c: None,
    })
}

fn event_sign_in() -> Message {
    Message::Event(Event {
        gate: GateId(7),
        seq: 44,
        captured_at: UnixMillis(T0 + 2_000),
        mode: Mode::SignIn {
            credential: Some(Credential::StaffQr("QR9".to_owned())),
        },
        direction: Direction::Entry,
        face: None,
        temperature_c: None,
    })
}

fn verdict() -> Message {
    Message::Verdict(Verdict {
        gate: GateId(7),
        seq: 42,
        decision: Decision::Admit,
        subject: Some(SubjectId(9)),
        score: Some(0.75),
        checks: vec![
            Check {
                kind: CheckKind::FaceMatch,
                outcome: Outcome::Pass,
                value: Some(0.75),
                threshold: Some(0.5),
                detail: String::new(),
            },
            Check {
                kind: CheckKind::HealthCode,
                outcome: Outcome::Pass,
                value: None,
                threshold: None,
                detail: "green".to_owned(),
            },
        ],
        display: Display {
            colour: DisplayColour::Green,
            text: "Welcome".to_owned(),
        },
        decided_at: UnixMillis(T0 + 20),
        replayed: false,
    })
}

fn error() -> Message {
    Message::Error(ErrorReply::new(ErrorCode::GateMismatch, "gate 8 is not 7"))
}

fn redirect() -> Message {
    Message::Redirect(Redirect {
        market: MarketId(3),
        node: "node-b".to_owned(),
        addresses: vec!["10.0.0.2:4433".to_owned()],
        retry_after_ms: 0,
    })
}

fn enroll() -> Message {
    Message::Enroll(Enroll {
        subject: SubjectRecord {
            subject: SubjectId(9),
            category: Category::Merchant,
            home_market: MarketId(3),
            markets: vec![MarketId(3), MarketId(4)],
            zones: vec![ZoneId(2)],
            valid_from: Some(UnixMillis(T0)),
            valid_until: None,
            id_card: Some("A1234567".to_owned()),
            qr_tokens: vec![],
            status: SubjectStatus::Active,
        },
        templates: vec![FaceTemplate {
            model: "arcface".to_owned(),
            embedding: vec![0.5, -0.5, 0.25, 1.0],
        }],
    })
}

fn enroll_ack() -> Message {
    Message::EnrollAck(EnrollAck {
        subject: SubjectId(9),
        templates_added: 1,
        duplicate_of: None,
    })
}

fn update_health() -> Message {
    Message::UpdateHealth(UpdateHealth {
        records: vec![HealthRecord {
            subject: SubjectId(9),
            test_at: Some(UnixMillis(T0 - 86_400_000)),
            test_result: Some(TestResult::Negative),
            vaccine_doses: 3,
            health_code: CodeColour::Green,
            travel_code: CodeColour::Yellow,
            updated_at: UnixMillis(T0),
        }],
    })
}

fn update_health_ack() -> Message {
    Message::UpdateHealthAck(UpdateHealthAck {
        applied: 1,
        unknown_subjects: 0,
    })
}

fn revoke() -> Message {
    Message::Revoke(Revoke {
        subject: SubjectId(9),
        reason: "card lost".to_owned(),
    })
}

fn revoke_ack() -> Message {
    Message::RevokeAck(RevokeAck {
        subject: SubjectId(9),
        revoked: true,
    })
}

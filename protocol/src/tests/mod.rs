//! Unit tests of the crate: generators, round trips, framing, validation and codes.

mod codes;
mod framing;
mod roundtrip;
mod validation;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use crate::*;

/// Bytes of one encoded frame.
pub(super) fn frame(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out);
    out
}

/// Frame bytes for a message of `kind` with a hand-made body.
pub(super) fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len() + 1)
        .unwrap()
        .to_le_bytes()
        .to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

fn text(min: usize, max: usize) -> impl Strategy<Value = String> {
    // Printable characters of any script: up to 4 bytes each, so 60 chars stay under 256 bytes.
    proptest::string::string_regex(&format!("\\PC{{{min},{max}}}")).unwrap()
}

fn unit() -> impl Strategy<Value = f32> {
    0.0f32..=1.0
}

fn embedding() -> impl Strategy<Value = Vec<f32>> {
    vec(-1.0f32..1.0, 1..=24)
}

fn millis() -> impl Strategy<Value = UnixMillis> {
    any::<u64>().prop_map(UnixMillis)
}

pub(super) fn credential() -> impl Strategy<Value = Credential> {
    prop_oneof![
        text(1, 24).prop_map(Credential::IdCard),
        text(1, 24).prop_map(Credential::StaffQr),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        credential().prop_map(|credential| Mode::Verify { credential }),
        Just(Mode::Identify),
        option::of(credential()).prop_map(|credential| Mode::SignIn { credential }),
    ]
}

fn face() -> impl Strategy<Value = FaceSample> {
    (text(1, 12), embedding(), unit(), unit()).prop_map(|(model, embedding, quality, liveness)| {
        FaceSample {
            model,
            embedding,
            quality,
            liveness,
        }
    })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        text(0, 20),
        any::<u32>(),
    )
        .prop_map(|(a, b, gate, market, firmware, capabilities)| Hello {
            min_version: a.min(b),
            max_version: a.max(b),
            gate: GateId(gate),
            market: MarketId(market),
            firmware,
            capabilities,
        })
}

fn hello_ack() -> impl Strategy<Value = HelloAck> {
    (any::<u16>(), 1u32..=4096, text(1, 20), any::<u32>()).prop_map(
        |(version, embedding_dim, model, max_frame_len)| HelloAck {
            version,
            embedding_dim,
            model,
            max_frame_len,
        },
    )
}

pub(super) fn event() -> impl Strategy<Value = Event> {
    (
        any::<u32>(),
        any::<u64>(),
        millis(),
        mode(),
        select(Direction::ALL),
        option::of(face()),
        option::of(25.0f32..=45.0),
    )
        .prop_map(
            |(gate, seq, captured_at, mode, direction, face, temperature_c)| Event {
                gate: GateId(gate),
                seq,
                captured_at,
                mode,
                direction,
                face,
                temperature_c,
            },
        )
}

fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e6f64..1e6,
        Just(0.0),
        Just(-0.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE)
    ]
}

fn check() -> impl Strategy<Value = Check> {
    (
        select(CheckKind::ALL),
        select(Outcome::ALL),
        option::of(finite_f64()),
        option::of(finite_f64()),
        text(0, 30),
    )
        .prop_map(|(kind, outcome, value, threshold, detail)| Check {
            kind,
            outcome,
            value,
            threshold,
            detail,
        })
}

fn verdict() -> impl Strategy<Value = Verdict> {
    (
        (any::<u32>(), any::<u64>(), select(Decision::ALL)),
        option::of(any::<u64>().prop_map(SubjectId)),
        option::of(-1.0f32..=1.0),
        vec(check(), 0..=8),
        (select(DisplayColour::ALL), text(0, 30)),
        millis(),
        any::<bool>(),
    )
        .prop_map(
            |(
                (gate, seq, decision),
                subject,
                score,
                checks,
                (colour, text),
                decided_at,
                replayed,
            )| {
                Verdict {
                    gate: GateId(gate),
                    seq,
                    decision,
                    subject,
                    score,
                    checks,
                    display: Display { colour, text },
                    decided_at,
                    replayed,
                }
            },
        )
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (select(ErrorCode::ALL), text(0, 60)).prop_map(|(code, message)| ErrorReply { code, message })
}

/// A valid `host:port` address of a redirect.
fn address() -> impl Strategy<Value = String> {
    let host = prop_oneof![
        proptest::string::string_regex("[a-z0-9][a-z0-9.-]{0,30}").unwrap(),
        any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string()),
        any::<[u16; 8]>().prop_map(|w| format!("[{}]", std::net::Ipv6Addr::from(w))),
    ];
    (host, 1u16..=u16::MAX).prop_map(|(host, port)| format!("{host}:{port}"))
}

pub(super) fn redirect() -> impl Strategy<Value = Redirect> {
    prop_oneof![
        // A node that serves the market, with one or more addresses.
        (
            any::<u32>(),
            text(1, 20),
            vec(address(), 1..=MAX_REDIRECT_ADDRESSES),
            0u32..=60_000
        )
            .prop_map(|(market, node, addresses, retry_after_ms)| Redirect {
                market: MarketId(market),
                node,
                addresses,
                retry_after_ms,
            }),
        // No node serves it right now.
        (any::<u32>(), 1u32..=60_000).prop_map(|(market, retry_after_ms)| Redirect {
            market: MarketId(market),
            node: String::new(),
            addresses: vec![],
            retry_after_ms,
        }),
    ]
}

fn subject_record() -> impl Strategy<Value = SubjectRecord> {
    (
        (any::<u64>(), select(Category::ALL), any::<u32>()),
        vec(any::<u32>().prop_map(MarketId), 0..=6),
        vec(any::<u32>().prop_map(ZoneId), 0..=6),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        option::of(text(1, 18)),
        vec(text(1, 12), 0..=3),
        select(SubjectStatus::ALL),
    )
        .prop_map(
            |((subject, category, home), markets, zones, a, b, id_card, qr_tokens, status)| {
                // Keep the validity window ordered when both ends are present.
                let (valid_from, valid_until) = match (a, b) {
                    (Some(a), Some(b)) => (Some(a.min(b)), Some(a.max(b))),
                    other => other,
                };
                SubjectRecord {
                    subject: SubjectId(subject),
                    category,
                    home_market: MarketId(home),
                    markets,
                    zones,
                    valid_from: valid_from.map(UnixMillis),
                    valid_until: valid_until.map(UnixMillis),
                    id_card,
                    qr_tokens,
                    status,
                }
            },
        )
}

fn enroll() -> impl Strategy<Value = Enroll> {
    (
        subject_record(),
        vec(
            (text(1, 12), embedding())
                .prop_map(|(model, embedding)| FaceTemplate { model, embedding }),
            0..=4,
        ),
    )
        .prop_map(|(subject, templates)| Enroll { subject, templates })
}

fn health_record() -> impl Strategy<Value = HealthRecord> {
    (
        any::<u64>(),
        option::of(millis()),
        option::of(select(TestResult::ALL)),
        any::<u8>(),
        select(CodeColour::ALL),
        select(CodeColour::ALL),
        millis(),
    )
        .prop_map(
            |(
                subject,
                test_at,
                test_result,
                vaccine_doses,
                health_code,
                travel_code,
                updated_at,
            )| {
                HealthRecord {
                    subject: SubjectId(subject),
                    test_at,
                    test_result,
                    vaccine_doses,
                    health_code,
                    travel_code,
                    updated_at,
                }
            },
        )
}

/// Any valid message of any kind.
pub(super) fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello().prop_map(Message::Hello),
        hello_ack().prop_map(Message::HelloAck),
        event().prop_map(Message::Event),
        verdict().prop_map(Message::Verdict),
        (0u32..=60_000).prop_map(|retry_after_ms| Message::Busy(Busy { retry_after_ms })),
        error_reply().prop_map(Message::Error),
        redirect().prop_map(Message::Redirect),
        enroll().prop_map(Message::Enroll),
        (any::<u64>(), any::<u32>(), option::of(any::<u64>())).prop_map(|(s, n, d)| {
            Message::EnrollAck(EnrollAck {
                subject: SubjectId(s),
                templates_added: n,
                duplicate_of: d.map(SubjectId),
            })
        }),
        vec(health_record(), 0..=8)
            .prop_map(|records| Message::UpdateHealth(UpdateHealth { records })),
        (any::<u32>(), any::<u32>()).prop_map(|(applied, unknown_subjects)| {
            Message::UpdateHealthAck(UpdateHealthAck {
                applied,
                unknown_subjects,
            })
        }),
        (any::<u64>(), text(0, 40)).prop_map(|(s, reason)| Message::Revoke(Revoke {
            subject: SubjectId(s),
            reason
        })),
        (any::<u64>(), any::<bool>()).prop_map(|(s, revoked)| Message::RevokeAck(RevokeAck {
            subject: SubjectId(s),
            revoked
        })),
    ]
}

/// A valid event with a face, to mutate in tests.
pub(super) fn sample_event() -> Event {
    Event {
        gate: GateId(7),
        seq: 42,
        captured_at: UnixMillis(1_700_000_000_000),
        mode: Mode::Verify {
            credential: Credential::IdCard("110101199003074512".to_owned()),
        },
        direction: Direction::Entry,
        face: Some(FaceSample {
            model: "arcface-r100".to_owned(),
            embedding: vec![0.5, -0.5, 0.25, 0.0],
            quality: 0.9,
            liveness: 0.8,
        }),
        temperature_c: Some(36.6),
    }
}

/// A valid verdict with one check, to mutate in tests.
pub(super) fn sample_verdict() -> Verdict {
    Verdict {
        gate: GateId(7),
        seq: 42,
        decision: Decision::Admit,
        subject: Some(SubjectId(9)),
        score: Some(0.83),
        checks: vec![Check {
            kind: CheckKind::FaceMatch,
            outcome: Outcome::Pass,
            value: Some(0.83),
            threshold: Some(0.6),
            detail: String::new(),
        }],
        display: Display {
            colour: DisplayColour::Green,
            text: "welcome".to_owned(),
        },
        decided_at: UnixMillis(1_700_000_000_010),
        replayed: false,
    }
}

/// A valid redirect naming a node, to mutate in tests.
pub(super) fn sample_redirect() -> Redirect {
    Redirect {
        market: MarketId(3),
        node: "node-b".to_owned(),
        addresses: vec!["10.0.0.2:4433".to_owned(), "[fd00::2]:4433".to_owned()],
        retry_after_ms: 0,
    }
}

/// A valid subject record, to mutate in tests.
pub(super) fn sample_subject() -> SubjectRecord {
    SubjectRecord {
        subject: SubjectId(9),
        category: Category::Merchant,
        home_market: MarketId(3),
        markets: vec![MarketId(3)],
        zones: vec![],
        valid_from: Some(UnixMillis(1)),
        valid_until: Some(UnixMillis(2)),
        id_card: Some("110101199003074512".to_owned()),
        qr_tokens: vec!["qr-1".to_owned()],
        status: SubjectStatus::Active,
    }
}

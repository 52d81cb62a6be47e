//! One test per decode rule: each bad value is refused with a typed error naming the field.

use super::{frame, sample_event, sample_redirect, sample_subject, sample_verdict};
use crate::limits::*;
use crate::*;

/// Encodes `msg` (encoding does not validate) and returns the decoder's error.
fn decode_err(msg: impl Into<Message>) -> DecodeError {
    let msg = msg.into();
    let err = decode_frame(&frame(&msg)).unwrap_err();
    assert_eq!(
        msg.validate(),
        Err(err.clone()),
        "validate() and decode must agree"
    );
    err
}

fn assert_invalid(msg: impl Into<Message>, field: &str) {
    let err = decode_err(msg);
    match &err {
        DecodeError::Invalid { field: f, .. } | DecodeError::TooLong { field: f, .. } => {
            assert_eq!(*f, field, "{err}");
        }
        other => panic!("expected an invalid {field}, got {other:?}"),
    }
    assert_eq!(err.error_code(), ErrorCode::InvalidValue);
}

fn with_face(f: impl FnOnce(&mut FaceSample)) -> Event {
    let mut event = sample_event();
    f(event.face.as_mut().unwrap());
    event
}

#[test]
fn decode_rejects_nan_embedding() {
    let event = with_face(|face| face.embedding[2] = f32::NAN);
    assert_invalid(event.clone(), "face_sample.embedding");
    let text = decode_err(event).to_string();
    assert!(text.contains("index 2"), "{text}");
}

#[test]
fn decode_rejects_infinite_embedding() {
    assert_invalid(
        with_face(|face| face.embedding[0] = f32::NEG_INFINITY),
        "face_sample.embedding",
    );
}

#[test]
fn decode_rejects_empty_embedding() {
    assert_invalid(
        with_face(|face| face.embedding.clear()),
        "face_sample.embedding",
    );
}

#[test]
fn decode_rejects_oversized_embedding() {
    let event = with_face(|face| face.embedding = vec![0.0; MAX_EMBEDDING_DIM + 1]);
    let err = decode_err(event);
    assert_eq!(
        err,
        DecodeError::TooLong {
            field: "face_sample.embedding",
            len: MAX_EMBEDDING_DIM as u64 + 1,
            max: MAX_EMBEDDING_DIM as u64
        }
    );
    // PROTOCOL.md, "Precedence": decided while decoding, before any dimension comparison.
    assert_eq!(err.error_code(), ErrorCode::InvalidValue);
}

#[test]
fn decode_rejects_quality_out_of_range() {
    assert_invalid(with_face(|face| face.quality = 1.01), "face_sample.quality");
    assert_invalid(with_face(|face| face.quality = -0.1), "face_sample.quality");
}

#[test]
fn decode_rejects_nan_liveness() {
    assert_invalid(
        with_face(|face| face.liveness = f32::NAN),
        "face_sample.liveness",
    );
}

#[test]
fn decode_rejects_empty_face_model() {
    assert_invalid(with_face(|face| face.model.clear()), "face_sample.model");
}

#[test]
fn decode_rejects_implausible_temperature() {
    for t in [f32::NAN, f32::INFINITY, 24.9, 45.1, -3.0] {
        let mut event = sample_event();
        event.temperature_c = Some(t);
        assert_invalid(event, "event.temperature_c");
    }
}

#[test]
fn decode_rejects_empty_credential() {
    let mut event = sample_event();
    event.mode = Mode::SignIn {
        credential: Some(Credential::StaffQr(String::new())),
    };
    assert_invalid(event, "credential");
}

#[test]
fn decode_rejects_long_credential() {
    let mut event = sample_event();
    event.mode = Mode::Verify {
        credential: Credential::IdCard("9".repeat(MAX_STRING_LEN + 1)),
    };
    assert_invalid(event, "credential");
}

#[test]
fn decode_rejects_long_firmware() {
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        gate: GateId(1),
        market: MarketId(1),
        firmware: "f".repeat(MAX_STRING_LEN + 1),
        capabilities: 0,
    };
    assert_invalid(hello, "hello.firmware");
}

#[test]
fn decode_rejects_hello_min_version_above_max() {
    let hello = Hello {
        min_version: 3,
        max_version: 2,
        gate: GateId(1),
        market: MarketId(1),
        firmware: String::new(),
        capabilities: 0,
    };
    assert_invalid(hello, "hello.min_version");
}

#[test]
fn decode_rejects_bad_hello_ack() {
    let ack = HelloAck {
        version: 1,
        embedding_dim: 0,
        model: "m".to_owned(),
        max_frame_len: 65536,
    };
    assert_invalid(ack.clone(), "hello_ack.embedding_dim");
    assert_invalid(
        HelloAck {
            embedding_dim: 4097,
            ..ack.clone()
        },
        "hello_ack.embedding_dim",
    );
    assert_invalid(
        HelloAck {
            embedding_dim: 512,
            model: String::new(),
            ..ack
        },
        "hello_ack.model",
    );
}

#[test]
fn decode_rejects_nan_or_infinite_score() {
    let mut verdict = sample_verdict();
    verdict.score = Some(f32::NAN);
    assert_invalid(verdict.clone(), "verdict.score");
    verdict.score = Some(f32::INFINITY);
    assert_invalid(verdict, "verdict.score");
}

#[test]
fn decode_rejects_non_finite_check_numbers() {
    let mut verdict = sample_verdict();
    verdict.checks[0].value = Some(f64::NAN);
    assert_invalid(verdict.clone(), "check.value");
    verdict.checks[0].value = None;
    verdict.checks[0].threshold = Some(f64::INFINITY);
    assert_invalid(verdict, "check.threshold");
}

#[test]
fn decode_rejects_too_many_checks() {
    let mut verdict = sample_verdict();
    verdict.checks = vec![verdict.checks[0].clone(); MAX_CHECKS + 1];
    assert_invalid(verdict, "verdict.checks");
}

#[test]
fn decode_rejects_long_check_detail_and_display_text() {
    let mut verdict = sample_verdict();
    verdict.checks[0].detail = "d".repeat(MAX_STRING_LEN + 1);
    assert_invalid(verdict, "check.detail");
    let mut verdict = sample_verdict();
    verdict.display.text = "t".repeat(MAX_STRING_LEN + 1);
    assert_invalid(verdict, "display.text");
}

#[test]
fn decode_rejects_long_retry_hint() {
    assert_invalid(
        Busy {
            retry_after_ms: MAX_RETRY_AFTER_MS + 1,
        },
        "busy.retry_after_ms",
    );
}

#[test]
fn decode_rejects_long_error_message() {
    let reply = ErrorReply {
        code: ErrorCode::Internal,
        message: "e".repeat(MAX_STRING_LEN + 1),
    };
    assert_invalid(reply, "error.message");
}

fn enroll(subject: SubjectRecord, templates: Vec<FaceTemplate>) -> Enroll {
    Enroll { subject, templates }
}

fn template() -> FaceTemplate {
    FaceTemplate {
        model: "arcface-r100".to_owned(),
        embedding: vec![0.5, 0.5, 0.5, 0.5],
    }
}

#[test]
fn decode_rejects_too_many_templates() {
    assert_invalid(
        enroll(sample_subject(), vec![template(); MAX_TEMPLATES + 1]),
        "enroll.templates",
    );
}

#[test]
fn decode_rejects_bad_template() {
    let mut t = template();
    t.embedding[1] = f32::NAN;
    assert_invalid(enroll(sample_subject(), vec![t]), "face_template.embedding");
    let mut t = template();
    t.model.clear();
    assert_invalid(enroll(sample_subject(), vec![t]), "face_template.model");
}

#[test]
fn decode_rejects_inverted_validity() {
    let mut subject = sample_subject();
    subject.valid_from = Some(UnixMillis(10));
    subject.valid_until = Some(UnixMillis(9));
    assert_invalid(enroll(subject, vec![]), "subject_record.valid_from");
}

#[test]
fn decode_rejects_oversized_subject_lists() {
    let mut s = sample_subject();
    s.markets = vec![MarketId(1); MAX_MARKETS + 1];
    assert_invalid(enroll(s, vec![]), "subject_record.markets");
    let mut s = sample_subject();
    s.zones = vec![ZoneId(1); MAX_ZONES + 1];
    assert_invalid(enroll(s, vec![]), "subject_record.zones");
    let mut s = sample_subject();
    s.qr_tokens = vec!["q".to_owned(); MAX_QR_TOKENS + 1];
    assert_invalid(enroll(s, vec![]), "subject_record.qr_tokens");
}

#[test]
fn decode_rejects_empty_subject_credentials() {
    let mut s = sample_subject();
    s.id_card = Some(String::new());
    assert_invalid(enroll(s, vec![]), "subject_record.id_card");
    let mut s = sample_subject();
    s.qr_tokens = vec![String::new()];
    assert_invalid(enroll(s, vec![]), "subject_record.qr_tokens[]");
}

#[test]
fn decode_rejects_too_many_health_records() {
    let record = HealthRecord {
        subject: SubjectId(1),
        test_at: None,
        test_result: None,
        vaccine_doses: 0,
        health_code: CodeColour::Green,
        travel_code: CodeColour::Green,
        updated_at: UnixMillis(0),
    };
    let batch = UpdateHealth {
        records: vec![record; MAX_HEALTH_RECORDS + 1],
    };
    assert_invalid(batch, "update_health.records");
}

#[test]
fn decode_rejects_long_revoke_reason() {
    let revoke = Revoke {
        subject: SubjectId(1),
        reason: "r".repeat(MAX_STRING_LEN + 1),
    };
    assert_invalid(revoke, "revoke.reason");
}

/// Offset in the frame of the u64 at `body_offset`, after checking it holds `expected`.
fn patch_u64(bytes: &mut [u8], body_offset: usize, expected: u64, new: u64) {
    let at = FRAME_HEADER_LEN + body_offset;
    assert_eq!(bytes[at..at + 8], expected.to_le_bytes(), "layout changed");
    bytes[at..at + 8].copy_from_slice(&new.to_le_bytes());
}

fn hello_frame(firmware: &str) -> Vec<u8> {
    frame(&Message::Hello(Hello {
        min_version: 1,
        max_version: 1,
        gate: GateId(1),
        market: MarketId(1),
        firmware: firmware.to_owned(),
        capabilities: 0,
    }))
}

#[test]
fn decode_rejects_lying_string_length_before_allocating() {
    // Body: min 2 + max 2 + gate 4 + market 4, then the firmware length. Strings are read
    // as borrowed slices of the frame, so a length past the frame's end fails before any
    // allocation, whatever its size.
    for lie in [u64::MAX, 1 << 40, 200] {
        let mut bytes = hello_frame("ab");
        patch_u64(&mut bytes, 12, 2, lie);
        let err = decode_frame(&bytes).unwrap_err();
        assert!(
            matches!(err, DecodeError::Malformed { .. }),
            "{lie}: {err:?}"
        );
    }
}

#[test]
fn decode_rejects_lying_list_length_before_allocating() {
    // Event body: gate 4, seq 8, captured_at 8, mode (1 + 1 + 8 + 18), direction 1,
    // face tag 1, model (8 + 12): the embedding length is at 70.
    let mut bytes = frame(&Message::Event(sample_event()));
    patch_u64(&mut bytes, 70, 4, 1 << 60);
    assert_eq!(
        decode_frame(&bytes),
        Err(DecodeError::TooLong {
            field: "face_sample.embedding",
            len: 1 << 60,
            max: MAX_EMBEDDING_DIM as u64
        })
    );
}

#[test]
fn decode_rejects_invalid_utf8() {
    let mut bytes = hello_frame("ab");
    let at = FRAME_HEADER_LEN + 20;
    assert_eq!(&bytes[at..at + 2], b"ab");
    bytes[at] = 0xFF;
    let err = decode_frame(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidUtf8 {
            field: "hello.firmware",
            valid_up_to: 0
        }
    );
    // PROTOCOL.md section 4: invalid UTF-8 is invalid_value (102).
    assert_eq!(err.error_code(), ErrorCode::InvalidValue);
}

#[test]
fn decode_rejects_bad_option_tag_and_bool() {
    let mut bytes = frame(&Message::Verdict(sample_verdict()));
    // Body: gate 4, seq 8, decision 1: the subject's Option tag is at 13.
    assert_eq!(bytes[FRAME_HEADER_LEN + 13], 1);
    bytes[FRAME_HEADER_LEN + 13] = 2;
    assert_eq!(
        decode_frame(&bytes),
        Err(DecodeError::UnknownCode {
            field: "Option tag",
            code: 2
        })
    );
    let mut bytes = frame(&Message::Verdict(sample_verdict()));
    let last = bytes.len() - 1; // `replayed`
    bytes[last] = 7;
    let err = decode_frame(&bytes).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownCode {
            field: "bool",
            code: 7
        }
    );
    // PROTOCOL.md section 4: a bad bool or option tag is malformed (100).
    assert_eq!(err.error_code(), ErrorCode::Malformed);
}

#[test]
fn validation_errors_name_no_embedding_values() {
    let event = with_face(|face| {
        face.embedding = vec![0.123_456_7; 8];
        face.embedding[5] = f32::INFINITY;
    });
    let text = decode_err(event).to_string();
    assert!(!text.contains("0.123"), "{text}");
}

#[test]
fn redirect_addresses_split_into_host_and_port() {
    assert_eq!(
        Redirect::split_address("10.0.0.2:4433"),
        Some(("10.0.0.2", 4433))
    );
    assert_eq!(
        Redirect::split_address("node-b.example:1"),
        Some(("node-b.example", 1))
    );
    assert_eq!(
        Redirect::split_address("[fd00::2]:65535"),
        Some(("fd00::2", 65535))
    );
    for bad in [
        "",
        "10.0.0.2",
        "10.0.0.2:",
        ":4433",
        "10.0.0.2:0",
        "10.0.0.2:65536",
        "10.0.0.2:+443",
        "10.0.0.2:004433",
        "fd00::2:4433",
        "[fd00::2:4433",
        "[not-v6]:4433",
        "[]:4433",
        "host name:4433",
        "host/x:4433",
        "h\u{e9}te:4433",
    ] {
        assert_eq!(Redirect::split_address(bad), None, "{bad:?}");
    }
    let long = format!("{}:1", "a".repeat(MAX_STRING_LEN));
    assert_eq!(Redirect::split_address(&long), None);
}

#[test]
fn decode_rejects_bad_redirects() {
    assert_eq!(sample_redirect().validate(), Ok(()));
    let mut r = sample_redirect();
    r.addresses.push("nowhere".to_owned());
    assert_invalid(r, "redirect.addresses[]");
    let mut r = sample_redirect();
    r.addresses = vec!["10.0.0.9:1".to_owned(); MAX_REDIRECT_ADDRESSES + 1];
    assert_invalid(r, "redirect.addresses");
    let mut r = sample_redirect();
    r.node = "n".repeat(MAX_STRING_LEN + 1);
    assert_invalid(r, "redirect.node");
    // A node without addresses, or addresses without a node.
    let mut r = sample_redirect();
    r.addresses.clear();
    assert_invalid(r, "redirect.node");
    let mut r = sample_redirect();
    r.node.clear();
    assert_invalid(r, "redirect.node");
    let mut r = sample_redirect();
    r.retry_after_ms = MAX_RETRY_AFTER_MS + 1;
    assert_invalid(r, "redirect.retry_after_ms");
    // No owner: the gate must be told how long to wait.
    let none = Redirect {
        market: MarketId(3),
        node: String::new(),
        addresses: vec![],
        retry_after_ms: 0,
    };
    assert_invalid(none.clone(), "redirect.retry_after_ms");
    let wait = Redirect {
        retry_after_ms: 500,
        ..none
    };
    assert_eq!(wait.validate(), Ok(()));
}

#[test]
fn decode_refuses_a_lying_address_count_before_allocating() {
    // market, empty node, then an address count of u64::MAX.
    let mut body = 3u32.to_le_bytes().to_vec();
    body.extend(0u64.to_le_bytes());
    body.extend(u64::MAX.to_le_bytes());
    let err = decode_frame(&super::raw_frame(MessageKind::Redirect.to_code(), &body)).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooLong {
                field: "redirect.addresses",
                ..
            }
        ),
        "{err:?}"
    );
}

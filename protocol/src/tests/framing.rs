//! Frame-level behaviour: limits from the header, unknown kinds, trailing bytes, the
//! streaming decoder's error handling, and the worst-case message sizes.

use super::{frame, raw_frame, sample_event, sample_subject, sample_verdict};
use crate::limits::*;
use crate::*;

#[test]
fn decode_rejects_oversized_frame() {
    // Only the header is present: the limit is enforced before the body exists.
    let len = u32::try_from(MAX_FRAME_LEN).unwrap(); // + 4 header bytes = one over the limit
    let mut header = len.to_le_bytes().to_vec();
    header.push(MessageKind::Enroll.to_code());
    let err = decode_frame(&header).unwrap_err();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            len: MAX_FRAME_LEN as u64 + 4,
            max: MAX_FRAME_LEN as u64
        }
    );
    assert_eq!(err.error_code(), ErrorCode::FrameTooLarge);
    let mut decoder = FrameDecoder::new();
    decoder.push(&header[..4]);
    assert!(matches!(
        decoder.next(),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

#[test]
fn decode_rejects_gate_frame_over_gate_limit() {
    // 64 KiB + 1 is fine for an admin kind but too large for an event.
    let len = u32::try_from(MAX_GATE_FRAME_LEN - 4 + 1).unwrap();
    let mut header = len.to_le_bytes().to_vec();
    header.push(MessageKind::Event.to_code());
    assert_eq!(
        frame_len_hint(&header),
        Err(DecodeError::FrameTooLarge {
            len: MAX_GATE_FRAME_LEN as u64 + 1,
            max: MAX_GATE_FRAME_LEN as u64
        })
    );
    header[4] = MessageKind::Enroll.to_code();
    assert_eq!(frame_len_hint(&header), Ok(Some(MAX_GATE_FRAME_LEN + 1)));
}

#[test]
fn decoder_with_max_len_enforces_its_own_limit() {
    let bytes = frame(&Message::Event(sample_event()));
    let mut decoder = FrameDecoder::with_max_len(bytes.len() - 1);
    decoder.push(&bytes);
    assert!(matches!(
        decoder.next(),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    let mut decoder = FrameDecoder::with_max_len(bytes.len());
    decoder.push(&bytes);
    assert!(matches!(decoder.next(), Ok(Some(Message::Event(_)))));
}

#[test]
fn decode_rejects_zero_length_frame() {
    let err = decode_frame(&[0, 0, 0, 0]).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
}

#[test]
fn decode_rejects_unknown_kind() {
    for code in [0u8, 8, 15, 22, 255] {
        assert_eq!(
            decode_frame(&raw_frame(code, &[])),
            Err(DecodeError::UnknownKind(code))
        );
    }
}

#[test]
fn decode_rejects_trailing_bytes_after_frame() {
    let mut bytes = frame(&Message::Busy(Busy { retry_after_ms: 5 }));
    bytes.extend_from_slice(&[0, 0]);
    assert_eq!(
        decode_frame(&bytes),
        Err(DecodeError::TrailingBytes { count: 2 })
    );
}

#[test]
fn decode_rejects_trailing_bytes_inside_frame() {
    let mut body = 5u32.to_le_bytes().to_vec();
    body.push(0xAA);
    assert_eq!(
        decode_frame(&raw_frame(MessageKind::Busy.to_code(), &body)),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
}

#[test]
fn decode_rejects_empty_input() {
    assert_eq!(
        decode_frame(&[]),
        Err(DecodeError::Truncated {
            needed: 5,
            available: 0
        })
    );
}

#[test]
fn decoder_header_error_is_sticky() {
    let mut decoder = FrameDecoder::new();
    decoder.push(&raw_frame(99, &[1, 2, 3]));
    assert_eq!(decoder.next(), Err(DecodeError::UnknownKind(99)));
    assert!(decoder.is_failed());
    decoder.push(&frame(&Message::Busy(Busy { retry_after_ms: 1 })));
    assert_eq!(decoder.next(), Err(DecodeError::UnknownKind(99)));
    assert_eq!(decoder.buffered_len(), 0);
}

#[test]
fn decoder_skips_a_refused_body_and_goes_on() {
    let mut bad = sample_event();
    bad.temperature_c = Some(f32::NAN);
    let good = Message::Busy(Busy { retry_after_ms: 1 });
    let mut decoder = FrameDecoder::new();
    decoder.push(&frame(&Message::Event(bad)));
    decoder.push(&frame(&good));
    assert!(matches!(decoder.next(), Err(DecodeError::Invalid { .. })));
    assert!(!decoder.is_failed());
    assert_eq!(decoder.next(), Ok(Some(good)));
    assert_eq!(decoder.next(), Ok(None));
}

#[test]
fn frame_len_hint_needs_the_whole_header() {
    let bytes = frame(&Message::Busy(Busy { retry_after_ms: 1 }));
    for n in 0..FRAME_HEADER_LEN {
        assert_eq!(frame_len_hint(&bytes[..n]), Ok(None));
    }
    assert_eq!(frame_len_hint(&bytes), Ok(Some(bytes.len())));
}

fn body_len(msg: Message) -> usize {
    let bytes = frame(&msg);
    assert_eq!(
        decode_frame(&bytes),
        Ok(msg),
        "the largest valid message must decode"
    );
    bytes.len() - FRAME_HEADER_LEN
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

#[test]
fn worst_case_sizes_match_the_limits_table() {
    let max_face = FaceSample {
        model: long(MAX_STRING_LEN),
        embedding: vec![0.5; MAX_EMBEDDING_DIM],
        quality: 1.0,
        liveness: 1.0,
    };
    let event = Event {
        mode: Mode::SignIn {
            credential: Some(Credential::StaffQr(long(MAX_STRING_LEN))),
        },
        face: Some(max_face),
        ..sample_event()
    };
    assert_eq!(body_len(Message::Event(event)), EVENT_WIRE_MAX);

    let mut verdict = sample_verdict();
    verdict.checks = vec![
        Check {
            detail: long(MAX_STRING_LEN),
            ..verdict.checks[0].clone()
        };
        MAX_CHECKS
    ];
    verdict.display.text = long(MAX_STRING_LEN);
    assert_eq!(body_len(Message::Verdict(verdict)), VERDICT_WIRE_MAX);

    let subject = SubjectRecord {
        markets: vec![MarketId(1); MAX_MARKETS],
        zones: vec![ZoneId(1); MAX_ZONES],
        id_card: Some(long(MAX_STRING_LEN)),
        qr_tokens: vec![long(MAX_STRING_LEN); MAX_QR_TOKENS],
        ..sample_subject()
    };
    let template = FaceTemplate {
        model: long(MAX_STRING_LEN),
        embedding: vec![0.5; MAX_EMBEDDING_DIM],
    };
    let enroll = Enroll {
        subject,
        templates: vec![template; MAX_TEMPLATES],
    };
    assert_eq!(body_len(Message::Enroll(enroll)), ENROLL_WIRE_MAX);

    let record = HealthRecord {
        subject: SubjectId(1),
        test_at: Some(UnixMillis(1)),
        test_result: Some(TestResult::Negative),
        vaccine_doses: 3,
        health_code: CodeColour::Green,
        travel_code: CodeColour::Green,
        updated_at: UnixMillis(2),
    };
    let health = UpdateHealth {
        records: vec![record; MAX_HEALTH_RECORDS],
    };
    assert_eq!(
        body_len(Message::UpdateHealth(health)),
        UPDATE_HEALTH_WIRE_MAX
    );

    let hello = Hello {
        min_version: 1,
        max_version: 1,
        gate: GateId(1),
        market: MarketId(1),
        firmware: long(MAX_STRING_LEN),
        capabilities: capability::FACE,
    };
    assert_eq!(body_len(Message::Hello(hello)), HELLO_WIRE_MAX);
    let ack = HelloAck {
        version: 1,
        embedding_dim: 512,
        model: long(MAX_STRING_LEN),
        max_frame_len: MAX_GATE_FRAME_LEN as u32,
    };
    assert_eq!(body_len(Message::HelloAck(ack)), HELLO_ACK_WIRE_MAX);
    let error = ErrorReply::new(ErrorCode::Internal, long(MAX_STRING_LEN + 10));
    assert_eq!(body_len(Message::Error(error)), ERROR_WIRE_MAX);
    let revoke = Revoke {
        subject: SubjectId(1),
        reason: long(MAX_STRING_LEN),
    };
    assert_eq!(body_len(Message::Revoke(revoke)), REVOKE_WIRE_MAX);
}

//! Wire codes: explicit, unique, frozen; unknown codes are typed errors. Also version
//! negotiation and the error-code mapping.

use super::{frame, sample_event, sample_subject, sample_verdict};
use crate::*;

macro_rules! check_table {
    ($ty:ty, $repr:ty, [$($variant:ident = $code:literal),+ $(,)?]) => {{
        let expected: &[($ty, $repr)] = &[$((<$ty>::$variant, $code)),+];
        assert_eq!(<$ty>::ALL.len(), expected.len(), "{} table", stringify!($ty));
        for (variant, code) in expected {
            assert_eq!(variant.code(), *code, "{:?}", variant);
            assert_eq!(<$ty>::from_code(*code), Some(*variant));
            assert_eq!(<$ty>::from_name(variant.name()), Some(*variant));
        }
        let valid = (0..=<$repr>::MAX).filter(|c| <$ty>::from_code(*c).is_some()).count();
        assert_eq!(valid, expected.len(), "{}: codes must be unique", stringify!($ty));
    }};
}

#[test]
fn wire_codes_are_frozen() {
    check_table!(Direction, u8, [Entry = 1, Exit = 2]);
    check_table!(Decision, u8, [Admit = 1, Deny = 2, Escalate = 3]);
    check_table!(
        CheckKind,
        u8,
        [
            FaceMatch = 1,
            MatchMargin = 2,
            Liveness = 3,
            Credential = 4,
            SubjectStatus = 5,
            Blocklist = 6,
            Validity = 7,
            Market = 8,
            Zone = 9,
            Schedule = 10,
            Temperature = 11,
            HealthCode = 12,
            TravelCode = 13,
            TestAge = 14,
            Vaccination = 15,
            SignIn = 16,
            AntiPassback = 17,
            Frequency = 18,
            Occupancy = 19,
            Internal = 20,
        ]
    );
    check_table!(
        Outcome,
        u8,
        [Pass = 1, Fail = 2, Escalate = 3, NotChecked = 4]
    );
    check_table!(DisplayColour, u8, [Green = 1, Yellow = 2, Red = 3]);
    check_table!(
        ErrorCode,
        u16,
        [
            Malformed = 100,
            FrameTooLarge = 101,
            InvalidValue = 102,
            DimensionMismatch = 103,
            UnknownModel = 104,
            Unexpected = 105,
            SeqReused = 106,
            VersionUnsupported = 200,
            HelloRequired = 201,
            UnknownGate = 202,
            GateMismatch = 203,
            Forbidden = 204,
            Internal = 300,
            ShuttingDown = 301,
        ]
    );
    check_table!(
        Category,
        u8,
        [
            ServiceWorker = 1,
            Manager = 2,
            Staff = 3,
            Merchant = 4,
            Buyer = 5,
            Shopper = 6
        ]
    );
    check_table!(
        SubjectStatus,
        u8,
        [Active = 1, Revoked = 2, Blocklisted = 3]
    );
    check_table!(TestResult, u8, [Negative = 1, Positive = 2, Pending = 3]);
    check_table!(CodeColour, u8, [Green = 1, Yellow = 2, Red = 3]);
}

/// The frame offset of the one byte where `a` and `b` differ (they differ in one enum).
fn code_offset(a: &Message, b: &Message) -> usize {
    let (a, b) = (frame(a), frame(b));
    assert_eq!(a.len(), b.len());
    let diffs: Vec<usize> = (0..a.len()).filter(|i| a[*i] != b[*i]).collect();
    assert_eq!(
        diffs.len(),
        1,
        "messages must differ in exactly one code byte"
    );
    diffs[0]
}

fn assert_unknown_code(msg: &Message, at: usize, field: &str) {
    for bad in [0u8, 200] {
        let mut bytes = frame(msg);
        bytes[at] = bad;
        let err = decode_frame(&bytes).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownCode {
                field: match field {
                    "Direction" => "Direction",
                    "Decision" => "Decision",
                    "CheckKind" => "CheckKind",
                    "Outcome" => "Outcome",
                    "DisplayColour" => "DisplayColour",
                    "Category" => "Category",
                    "SubjectStatus" => "SubjectStatus",
                    "TestResult" => "TestResult",
                    "CodeColour" => "CodeColour",
                    "Mode" => "Mode",
                    "Credential" => "Credential",
                    other => panic!("unexpected field {other}"),
                },
                code: u64::from(bad)
            }
        );
        assert_eq!(err.error_code(), ErrorCode::Malformed);
    }
}

#[test]
fn decode_rejects_unknown_enum_codes() {
    let event = sample_event();
    let exit = Event {
        direction: Direction::Exit,
        ..event.clone()
    };
    let at = code_offset(&event.clone().into(), &exit.into());
    assert_unknown_code(&event.into(), at, "Direction");

    let verdict = sample_verdict();
    let mut other = verdict.clone();
    other.decision = Decision::Deny;
    let at = code_offset(&verdict.clone().into(), &other.into());
    assert_unknown_code(&verdict.clone().into(), at, "Decision");

    let mut other = verdict.clone();
    other.checks[0].kind = CheckKind::Liveness;
    let at = code_offset(&verdict.clone().into(), &other.into());
    assert_unknown_code(&verdict.clone().into(), at, "CheckKind");

    let mut other = verdict.clone();
    other.checks[0].outcome = Outcome::Fail;
    let at = code_offset(&verdict.clone().into(), &other.into());
    assert_unknown_code(&verdict.clone().into(), at, "Outcome");

    let mut other = verdict.clone();
    other.display.colour = DisplayColour::Red;
    let at = code_offset(&verdict.clone().into(), &other.into());
    assert_unknown_code(&verdict.into(), at, "DisplayColour");

    let enroll = Enroll {
        subject: sample_subject(),
        templates: vec![],
    };
    let mut other = enroll.clone();
    other.subject.category = Category::Buyer;
    let at = code_offset(&enroll.clone().into(), &other.into());
    assert_unknown_code(&enroll.clone().into(), at, "Category");
    let mut other = enroll.clone();
    other.subject.status = SubjectStatus::Revoked;
    let at = code_offset(&enroll.clone().into(), &other.into());
    assert_unknown_code(&enroll.into(), at, "SubjectStatus");

    let health = UpdateHealth {
        records: vec![HealthRecord {
            subject: SubjectId(1),
            test_at: Some(UnixMillis(5)),
            test_result: Some(TestResult::Negative),
            vaccine_doses: 2,
            health_code: CodeColour::Green,
            travel_code: CodeColour::Green,
            updated_at: UnixMillis(6),
        }],
    };
    let mut other = health.clone();
    other.records[0].test_result = Some(TestResult::Pending);
    let at = code_offset(&health.clone().into(), &other.into());
    assert_unknown_code(&health.clone().into(), at, "TestResult");
    let mut other = health.clone();
    other.records[0].travel_code = CodeColour::Red;
    let at = code_offset(&health.clone().into(), &other.into());
    assert_unknown_code(&health.into(), at, "CodeColour");
}

#[test]
fn decode_rejects_unknown_mode_and_credential_tags() {
    let event = sample_event();
    // Event body: gate 4, seq 8, captured_at 8, then the mode tag and the credential tag.
    let mode_at = FRAME_HEADER_LEN + 20;
    let bytes = frame(&event.clone().into());
    assert_eq!(bytes[mode_at..mode_at + 2], [1, 1], "Verify, IdCard");
    assert_unknown_code(&event.clone().into(), mode_at, "Mode");
    assert_unknown_code(&event.into(), mode_at + 1, "Credential");
}

#[test]
fn decode_rejects_unknown_error_code() {
    let reply = ErrorReply::new(ErrorCode::Internal, "x");
    let mut bytes = frame(&reply.into());
    let at = FRAME_HEADER_LEN;
    assert_eq!(bytes[at..at + 2], 300u16.to_le_bytes());
    bytes[at..at + 2].copy_from_slice(&999u16.to_le_bytes());
    assert_eq!(
        decode_frame(&bytes),
        Err(DecodeError::UnknownCode {
            field: "ErrorCode",
            code: 999
        })
    );
}

#[test]
fn error_codes_map_decode_errors() {
    let too_large = DecodeError::FrameTooLarge { len: 9, max: 8 };
    assert_eq!(too_large.error_code(), ErrorCode::FrameTooLarge);
    assert_eq!(
        DecodeError::UnknownKind(9).error_code(),
        ErrorCode::Malformed
    );
    let reply = DecodeError::TooLong {
        field: "hello.firmware",
        len: 300,
        max: 256,
    }
    .to_error_reply();
    assert_eq!(reply.code, ErrorCode::InvalidValue);
    assert!(
        reply.message.contains("hello.firmware"),
        "{}",
        reply.message
    );
    assert!(ErrorCode::Internal.is_transient());
    assert!(ErrorCode::ShuttingDown.is_transient());
    assert!(!ErrorCode::GateMismatch.is_transient());
}

#[test]
fn error_reply_new_cuts_at_a_char_boundary() {
    let reply = ErrorReply::new(ErrorCode::Internal, "é".repeat(200)); // 400 bytes
    assert!(reply.message.len() <= MAX_STRING_LEN);
    assert_eq!(reply.message.len(), 256);
    assert_eq!(reply.validate(), Ok(()));
}

fn hello(min_version: u16, max_version: u16) -> Hello {
    Hello {
        min_version,
        max_version,
        gate: GateId(1),
        market: MarketId(1),
        firmware: String::new(),
        capabilities: 0,
    }
}

#[test]
fn negotiate_picks_the_common_version() {
    assert_eq!(negotiate(&hello(1, 9)), Ok(PROTOCOL_VERSION));
    assert_eq!(negotiate(&hello(0, 1)), Ok(1));
    // A version-1 gate gets a version-1 connection: no Redirect is ever sent on it.
    assert_eq!(negotiate(&hello(1, 1)), Ok(1));
    assert_eq!(negotiate(&hello(1, 2)), Ok(2));
    assert_eq!(negotiate(&hello(2, 2)), Ok(2));
    assert_eq!(PROTOCOL_VERSION, Redirect::MIN_VERSION);
}

#[test]
fn negotiate_refuses_disjoint_ranges() {
    for (min, max) in [(3, 5), (0, 0), (4, 3)] {
        let reply = negotiate(&hello(min, max)).unwrap_err();
        assert_eq!(reply.code, ErrorCode::VersionUnsupported);
        assert!(
            reply.message.contains(&format!("{min}..={max}")),
            "{}",
            reply.message
        );
        assert!(reply.message.contains("1..=2"), "{}", reply.message);
    }
}

#[test]
fn debug_output_hides_personal_data() {
    let event = sample_event();
    let text = format!("{event:?}");
    assert!(!text.contains("110101199003074512"), "{text}");
    assert!(!text.contains("0.25"), "{text}"); // an embedding value
    let text = format!("{:?}", sample_subject());
    assert!(
        !text.contains("110101199003074512") && !text.contains("qr-1"),
        "{text}"
    );
}

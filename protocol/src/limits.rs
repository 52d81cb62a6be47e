//! Every limit of the protocol (versions 1 and 2), in one place.
//!
//! The decoder enforces each of these before it allocates for the field they bound, and
//! `PROTOCOL.md` lists the same numbers. The `*_WIRE_MAX` constants are the largest encoded
//! size of each message that passes validation; compile-time assertions prove that each fits
//! in its kind's frame limit, so a valid message can always be sent.

/// Bytes of the frame's length prefix (u32, little-endian).
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes of the frame header: the length prefix and the kind byte.
pub const FRAME_HEADER_LEN: usize = LENGTH_PREFIX_LEN + 1;
/// Largest whole frame (header included) of a gate message: `Hello`, `HelloAck`, `Event`,
/// `Verdict`, `Busy`, `Error`, `Redirect`.
pub const MAX_GATE_FRAME_LEN: usize = 64 * 1024;
/// Largest whole frame (header included) of an admin message: `Enroll`, `UpdateHealth`,
/// `Revoke` and their acks.
pub const MAX_ADMIN_FRAME_LEN: usize = 1024 * 1024;
/// Largest whole frame of any kind; the default limit of [`FrameDecoder`](crate::FrameDecoder).
pub const MAX_FRAME_LEN: usize = MAX_ADMIN_FRAME_LEN;

/// Largest embedding dimension (elements). The gallery fixes the actual dimension.
pub const MAX_EMBEDDING_DIM: usize = 4096;
/// Largest string, in UTF-8 bytes (firmware, model, credential, detail, text, message, reason).
pub const MAX_STRING_LEN: usize = 256;
/// Most checks in one verdict.
pub const MAX_CHECKS: usize = 64;
/// Most face templates in one `Enroll`.
pub const MAX_TEMPLATES: usize = 16;
/// Most health records in one `UpdateHealth`.
pub const MAX_HEALTH_RECORDS: usize = 10_000;
/// Most markets in one subject record.
pub const MAX_MARKETS: usize = 256;
/// Most zones in one subject record.
pub const MAX_ZONES: usize = 256;
/// Most staff-card QR tokens in one subject record.
pub const MAX_QR_TOKENS: usize = 16;
/// Lowest plausible body temperature reading, °C. Anything colder is a sensor fault.
pub const MIN_TEMPERATURE_C: f32 = 25.0;
/// Highest plausible body temperature reading, °C. Anything hotter is a sensor fault.
pub const MAX_TEMPERATURE_C: f32 = 45.0;
/// Longest retry hint in `Busy` and `Redirect`, milliseconds.
pub const MAX_RETRY_AFTER_MS: u32 = 60_000;
/// Most addresses in one `Redirect`.
pub const MAX_REDIRECT_ADDRESSES: usize = 8;

// Worst-case encoded sizes (bytes), following the layout in PROTOCOL.md.
const LEN: usize = 8; // u64 length prefix of strings and vectors
const STRING_WIRE_MAX: usize = LEN + MAX_STRING_LEN;
const CREDENTIAL_WIRE_MAX: usize = 1 + STRING_WIRE_MAX;
// SignIn: tag + Option tag + credential is the largest mode.
const MODE_WIRE_MAX: usize = 1 + 1 + CREDENTIAL_WIRE_MAX;
const FACE_WIRE_MAX: usize = STRING_WIRE_MAX + LEN + 4 * MAX_EMBEDDING_DIM + 4 + 4;
const CHECK_WIRE_MAX: usize = 1 + 1 + 9 + 9 + STRING_WIRE_MAX;
const TEMPLATE_WIRE_MAX: usize = STRING_WIRE_MAX + LEN + 4 * MAX_EMBEDDING_DIM;
const SUBJECT_WIRE_MAX: usize = 8
    + 1
    + 4
    + (LEN + 4 * MAX_MARKETS)
    + (LEN + 4 * MAX_ZONES)
    + 9
    + 9
    + (1 + STRING_WIRE_MAX)
    + (LEN + MAX_QR_TOKENS * STRING_WIRE_MAX)
    + 1;
const HEALTH_RECORD_WIRE: usize = 8 + 9 + 2 + 1 + 1 + 1 + 8;

/// Largest encoded `Hello` body.
pub const HELLO_WIRE_MAX: usize = 2 + 2 + 4 + 4 + STRING_WIRE_MAX + 4;
/// Largest encoded `HelloAck` body.
pub const HELLO_ACK_WIRE_MAX: usize = 2 + 4 + STRING_WIRE_MAX + 4;
/// Largest encoded `Event` body.
pub const EVENT_WIRE_MAX: usize = 4 + 8 + 8 + MODE_WIRE_MAX + 1 + (1 + FACE_WIRE_MAX) + (1 + 4);
/// Largest encoded `Verdict` body.
pub const VERDICT_WIRE_MAX: usize =
    4 + 8 + 1 + 9 + 5 + (LEN + MAX_CHECKS * CHECK_WIRE_MAX) + (1 + STRING_WIRE_MAX) + 8 + 1;
/// Largest encoded `Error` body.
pub const ERROR_WIRE_MAX: usize = 2 + STRING_WIRE_MAX;
/// Largest encoded `Redirect` body.
pub const REDIRECT_WIRE_MAX: usize =
    4 + STRING_WIRE_MAX + LEN + MAX_REDIRECT_ADDRESSES * STRING_WIRE_MAX + 4;
/// Largest encoded `Enroll` body.
pub const ENROLL_WIRE_MAX: usize = SUBJECT_WIRE_MAX + LEN + MAX_TEMPLATES * TEMPLATE_WIRE_MAX;
/// Largest encoded `UpdateHealth` body.
pub const UPDATE_HEALTH_WIRE_MAX: usize = LEN + MAX_HEALTH_RECORDS * HEALTH_RECORD_WIRE;
/// Largest encoded `Revoke` body.
pub const REVOKE_WIRE_MAX: usize = 8 + STRING_WIRE_MAX;

// A valid message always fits its frame.
const _: () = {
    let gate = MAX_GATE_FRAME_LEN - FRAME_HEADER_LEN;
    assert!(HELLO_WIRE_MAX <= gate);
    assert!(HELLO_ACK_WIRE_MAX <= gate);
    assert!(EVENT_WIRE_MAX <= gate);
    assert!(VERDICT_WIRE_MAX <= gate);
    assert!(ERROR_WIRE_MAX <= gate);
    assert!(REDIRECT_WIRE_MAX <= gate);
    let admin = MAX_ADMIN_FRAME_LEN - FRAME_HEADER_LEN;
    assert!(ENROLL_WIRE_MAX <= admin);
    assert!(UPDATE_HEALTH_WIRE_MAX <= admin);
    assert!(REVOKE_WIRE_MAX <= admin);
    assert!(MAX_FRAME_LEN <= u32::MAX as usize);
};

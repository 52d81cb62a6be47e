//! The messages of protocol version 1: plain data.
//!
//! These Rust types are the contract every other crate builds on. How each is laid out in bytes
//! is the codec's business (`codec.rs`) and is specified in `PROTOCOL.md`; the wire codes of
//! every enum are explicit (see `kind.rs` and the `code`/`from_code` functions) and never follow
//! declaration order.

use serde::{Deserialize, Serialize};

use crate::ids::{GateId, MarketId, SubjectId, UnixMillis, ZoneId};
use crate::limits::MAX_STRING_LEN;
use crate::wire::wire_enum;

/// Every message that travels in a frame. The frame header carries its [`MessageKind`] code.
///
/// [`MessageKind`]: crate::MessageKind
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Message {
    /// Gate → server, first message of a connection.
    Hello(Hello),
    /// Server → gate, the answer to `Hello`.
    HelloAck(HelloAck),
    /// Gate → server: one person at the gate.
    Event(Event),
    /// Server → gate: the answer to an `Event`.
    Verdict(Verdict),
    /// Server → gate: overloaded, retry the same event (same `seq`) later.
    Busy(Busy),
    /// Server → peer: the request was refused; see the code.
    Error(ErrorReply),
    /// Server → gate (protocol version 2 and later): this node does not serve the gate's
    /// market; reconnect where the message says. Nothing was decided.
    Redirect(Redirect),
    /// Admin → server: enroll (or re-enroll) a person and their face templates.
    Enroll(Enroll),
    /// Server → admin: the answer to `Enroll`.
    EnrollAck(EnrollAck),
    /// Admin → server: a batch of health records (the daily test-result feed).
    UpdateHealth(UpdateHealth),
    /// Server → admin: the answer to `UpdateHealth`.
    UpdateHealthAck(UpdateHealthAck),
    /// Admin → server: revoke a person's access everywhere.
    Revoke(Revoke),
    /// Server → admin: the answer to `Revoke`.
    RevokeAck(RevokeAck),
}

/// The gate introduces itself and the protocol versions it speaks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version the gate speaks.
    pub min_version: u16,
    /// Highest protocol version the gate speaks.
    pub max_version: u16,
    /// The gate's id; must equal the id in its certificate.
    pub gate: GateId,
    /// The market the gate believes it stands in; must match the server's gate registry.
    pub market: MarketId,
    /// Free-form firmware version, for the operators' logs.
    #[serde(deserialize_with = "crate::de::hello_firmware")]
    pub firmware: String,
    /// Capability bits (see [`capability`]).
    pub capabilities: u32,
}

/// Capability bits a gate announces in [`Hello::capabilities`].
pub mod capability {
    /// The gate has a camera and sends face samples.
    pub const FACE: u32 = 1 << 0;
    /// The gate reads resident ID cards.
    pub const ID_CARD: u32 = 1 << 1;
    /// The gate scans staff-card QR codes.
    pub const QR: u32 = 1 << 2;
    /// The gate has a thermometer.
    pub const THERMOMETER: u32 = 1 << 3;
}

/// The server accepts the gate and tells it what it expects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The protocol version chosen for this connection.
    pub version: u16,
    /// Dimension every embedding must have.
    pub embedding_dim: u32,
    /// The face model id every embedding must come from.
    #[serde(deserialize_with = "crate::de::hello_ack_model")]
    pub model: String,
    /// Largest frame (header included) the server accepts.
    pub max_frame_len: u32,
}

/// One person at a gate. Keyed by `(gate, seq)`: a retry reuses the same `seq`, and the server
/// answers a repeated key with the verdict it already recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The gate that saw the person; must be the connection's own gate.
    pub gate: GateId,
    /// Per-gate sequence number, strictly increasing for new events.
    pub seq: u64,
    /// When the gate captured the person.
    pub captured_at: UnixMillis,
    /// What the gate asks for.
    pub mode: Mode,
    /// Entering or leaving.
    pub direction: Direction,
    /// The face, if the camera took one.
    pub face: Option<FaceSample>,
    /// Forehead or wrist temperature in °C, if measured.
    pub temperature_c: Option<f32>,
}

/// What the gate asks the engine to do with an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// 1:1: the credential names the person; check the face against their templates.
    Verify {
        /// The card or QR code presented.
        credential: Credential,
    },
    /// 1:N: only a face; find who it is in the gallery.
    Identify,
    /// Daily staff sign-in by face (1:N), or by credential and face (1:1) when one is given.
    SignIn {
        /// The staff card, if scanned.
        credential: Option<Credential>,
    },
}

/// A credential read at the gate.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A resident ID card number, as read from the card. The engine stores only a keyed hash.
    IdCard(String),
    /// A staff-card QR token.
    StaffQr(String),
}

/// Direction through the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Into the market.
    Entry,
    /// Out of the market.
    Exit,
}

/// A face embedding produced by the gate's camera model.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceSample {
    /// Model id; must equal the gallery's model.
    #[serde(deserialize_with = "crate::de::face_sample_model")]
    pub model: String,
    /// The embedding; its length must equal the gallery's dimension, every value finite.
    #[serde(deserialize_with = "crate::de::face_sample_embedding")]
    pub embedding: Vec<f32>,
    /// Image quality score in [0, 1].
    pub quality: f32,
    /// Liveness (anti-spoofing) score in [0, 1].
    pub liveness: f32,
}

impl std::fmt::Debug for FaceSample {
    // Biometric data never reaches a log line: Debug shows the shape, not the values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceSample")
            .field("model", &self.model)
            .field("dim", &self.embedding.len())
            .field("quality", &self.quality)
            .field("liveness", &self.liveness)
            .finish()
    }
}

/// The engine's answer to an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The event's gate.
    pub gate: GateId,
    /// The event's sequence number.
    pub seq: u64,
    /// Admit, deny or escalate to staff.
    pub decision: Decision,
    /// The person the engine decided about, if it knows who it is.
    pub subject: Option<SubjectId>,
    /// The face score (cosine similarity) behind `subject`, if a face was matched.
    pub score: Option<f32>,
    /// Every check, in the order the policy ran them.
    #[serde(deserialize_with = "crate::de::verdict_checks")]
    pub checks: Vec<Check>,
    /// What the gate screen shows.
    pub display: Display,
    /// When the engine decided (server clock).
    pub decided_at: UnixMillis,
    /// True when this verdict was recorded earlier for the same `(gate, seq)` and is sent again.
    pub replayed: bool,
}

/// The overall decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Open the gate.
    Admit,
    /// Keep the gate closed.
    Deny,
    /// Keep the gate closed and call staff to look.
    Escalate,
}

/// One policy check and its outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Which check.
    pub kind: CheckKind,
    /// How it came out.
    pub outcome: Outcome,
    /// The measured value, where the check has a number (score, °C, hours, doses, count).
    pub value: Option<f64>,
    /// The threshold the value was held against, where there is one.
    pub threshold: Option<f64>,
    /// A short human explanation ("yellow", "zone 3 not assigned"); never biometric data.
    #[serde(deserialize_with = "crate::de::check_detail")]
    pub detail: String,
}

/// The checks a policy can run. Codes are explicit (see `from_code`) and never renumbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CheckKind {
    /// The face matched someone in the gallery (1:N) or the credential's holder (1:1).
    FaceMatch,
    /// The best subject's score exceeds the best other subject's by the margin.
    MatchMargin,
    /// Liveness score at or above the minimum.
    Liveness,
    /// The credential is known.
    Credential,
    /// The person is active (not revoked).
    SubjectStatus,
    /// The person is not blocklisted.
    Blocklist,
    /// Today lies within the person's validity window.
    Validity,
    /// The person's category may enter this market.
    Market,
    /// The gate's zone is one of the person's zones.
    Zone,
    /// Now lies within the category's schedule.
    Schedule,
    /// Temperature at or below the ceiling.
    Temperature,
    /// Health-code colour allowed.
    HealthCode,
    /// Travel-code colour allowed.
    TravelCode,
    /// Latest nucleic-acid test negative and recent enough.
    TestAge,
    /// Enough vaccine doses.
    Vaccination,
    /// Staff signed in today before working.
    SignIn,
    /// Entry/exit alternate (no passing a card back).
    AntiPassback,
    /// Entries today below the cap.
    Frequency,
    /// Market occupancy below the cap.
    Occupancy,
    /// The engine failed while deciding; the event fails closed.
    Internal,
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed; the decision cannot be Admit.
    Fail,
    /// The check is borderline and the policy sends it to staff.
    Escalate,
    /// The check did not apply or could not run (no face, no reading).
    NotChecked,
}

/// What the gate screen shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Display {
    /// Screen colour.
    pub colour: DisplayColour,
    /// Short text for the person at the gate.
    #[serde(deserialize_with = "crate::de::display_text")]
    pub text: String,
}

/// Screen colour, in the field's traffic-light convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisplayColour {
    /// Admitted.
    Green,
    /// Wait for staff.
    Yellow,
    /// Denied.
    Red,
}

/// The server is overloaded; the gate retries the same event after the hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// Milliseconds to wait before retrying.
    pub retry_after_ms: u32,
}

/// This node does not serve the gate's market: the answer to a `Hello`, or to an `Event` that
/// arrived after the market moved. Nothing was decided or recorded. Sent only on connections
/// that negotiated version [`Redirect::MIN_VERSION`] or later; a version-1 gate gets
/// [`ErrorCode::ShuttingDown`] instead (PROTOCOL.md, "Markets served elsewhere").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    /// The market concerned: the one the server's registry gives the gate.
    pub market: MarketId,
    /// Name of the node that serves the market now; empty when no node does.
    #[serde(deserialize_with = "crate::de::redirect_node")]
    pub node: String,
    /// Where that node takes gate connections, each `host:port` (IPv6 hosts in brackets),
    /// in the order to try them; empty exactly when `node` is.
    #[serde(deserialize_with = "crate::de::redirect_addresses")]
    pub addresses: Vec<String>,
    /// The least time to wait before connecting again, in milliseconds: 0 when a node is
    /// named, at least 1 when none is (then the gate reconnects to the nodes it knows).
    pub retry_after_ms: u32,
}

impl Redirect {
    /// The first protocol version that has this message.
    pub const MIN_VERSION: u16 = 2;
}

/// A refusal, with a machine code and a human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong; tells the peer what to do.
    pub code: ErrorCode,
    /// Human text naming the field and value at fault.
    #[serde(deserialize_with = "crate::de::error_message")]
    pub message: String,
}

/// Error codes. Codes are explicit (see `from_code`) and never renumbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame or message could not be decoded. Do not retry unchanged.
    Malformed,
    /// The frame exceeds the size limit. Do not retry unchanged.
    FrameTooLarge,
    /// No protocol version in common. Upgrade the gate.
    VersionUnsupported,
    /// An event arrived before a successful Hello on this connection.
    HelloRequired,
    /// The gate is not in the server's registry.
    UnknownGate,
    /// The message names another gate than the certificate's. Never retry.
    GateMismatch,
    /// The peer lacks the identity for this request (admin writes need an admin certificate).
    Forbidden,
    /// The embedding's dimension is not the gallery's.
    DimensionMismatch,
    /// The face model is not the gallery's.
    UnknownModel,
    /// A field is out of range (NaN, negative, too long); the message names it.
    InvalidValue,
    /// The server failed; retry later with the same `seq`.
    Internal,
    /// The server is shutting down; reconnect and retry with the same `seq`.
    ShuttingDown,
    /// The message kind is not valid in this direction or state.
    Unexpected,
    /// This `(gate, seq)` was already recorded for a different event: the gate reused a
    /// sequence number. Never decided, never recorded; the gate must move its counter past
    /// every `seq` it used before and send the event under a new one.
    SeqReused,
}

/// Enroll a person: their registry record and their face templates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enroll {
    /// Who, and what they may do.
    pub subject: SubjectRecord,
    /// Face templates to add (may be empty to update only the record).
    #[serde(deserialize_with = "crate::de::enroll_templates")]
    pub templates: Vec<FaceTemplate>,
}

/// A person in the shared registry.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectRecord {
    /// The person's id.
    pub subject: SubjectId,
    /// Their category, which selects the market's rules for them.
    pub category: Category,
    /// Their home market.
    pub home_market: MarketId,
    /// Markets they may enter; empty means every market.
    #[serde(deserialize_with = "crate::de::subject_record_markets")]
    pub markets: Vec<MarketId>,
    /// Zones they are assigned to; empty means every zone.
    #[serde(deserialize_with = "crate::de::subject_record_zones")]
    pub zones: Vec<ZoneId>,
    /// Start of validity, if limited.
    pub valid_from: Option<UnixMillis>,
    /// End of validity, if limited.
    pub valid_until: Option<UnixMillis>,
    /// Resident ID card number, if registered (stored only as a keyed hash).
    #[serde(deserialize_with = "crate::de::subject_record_id_card")]
    pub id_card: Option<String>,
    /// Staff-card QR tokens.
    #[serde(deserialize_with = "crate::de::subject_record_qr_tokens")]
    pub qr_tokens: Vec<String>,
    /// Active, revoked or blocklisted.
    pub status: SubjectStatus,
}

/// Person categories: the field report's five staff categories plus the public.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Category {
    /// Repair, security, food and cleaning workers.
    ServiceWorker,
    /// Market managers.
    Manager,
    /// Market staff.
    Staff,
    /// Merchants (stall holders).
    Merchant,
    /// Purchasing agents (bulk buyers).
    Buyer,
    /// Members of the public (shoppers).
    Shopper,
}

/// A person's standing in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubjectStatus {
    /// May enter, subject to policy.
    Active,
    /// Access withdrawn (lost card, left the job).
    Revoked,
    /// Barred from every market.
    Blocklisted,
}

/// One face template for enrollment.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceTemplate {
    /// Model id; must equal the gallery's model.
    #[serde(deserialize_with = "crate::de::face_template_model")]
    pub model: String,
    /// The embedding; length must equal the gallery's dimension, values finite.
    #[serde(deserialize_with = "crate::de::face_template_embedding")]
    pub embedding: Vec<f32>,
}

impl std::fmt::Debug for FaceTemplate {
    // Biometric data never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceTemplate")
            .field("model", &self.model)
            .field("dim", &self.embedding.len())
            .finish()
    }
}

/// The answer to `Enroll`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollAck {
    /// The enrolled person.
    pub subject: SubjectId,
    /// Templates added to the gallery.
    pub templates_added: u32,
    /// Another person whose face already matches a submitted template: the template was not
    /// added, for staff to resolve.
    pub duplicate_of: Option<SubjectId>,
}

/// A batch of health records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateHealth {
    /// Upserts, one per person.
    #[serde(deserialize_with = "crate::de::update_health_records")]
    pub records: Vec<HealthRecord>,
}

/// A person's health status, as fed daily by the health authority.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// Whose record.
    pub subject: SubjectId,
    /// When the latest nucleic-acid test was taken.
    pub test_at: Option<UnixMillis>,
    /// Its result.
    pub test_result: Option<TestResult>,
    /// Vaccine doses received.
    pub vaccine_doses: u8,
    /// Health-code colour.
    pub health_code: CodeColour,
    /// Travel-code colour.
    pub travel_code: CodeColour,
    /// When the authority issued this record.
    pub updated_at: UnixMillis,
}

/// A nucleic-acid test result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestResult {
    /// Negative.
    Negative,
    /// Positive.
    Positive,
    /// Taken, result not yet known.
    Pending,
}

/// Health- and travel-code colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CodeColour {
    /// No risk.
    Green,
    /// Elevated risk: usually escalated to staff.
    Yellow,
    /// High risk.
    Red,
}

/// The answer to `UpdateHealth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateHealthAck {
    /// Records applied.
    pub applied: u32,
    /// Records naming unknown subjects, not applied.
    pub unknown_subjects: u32,
}

/// Revoke a person everywhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoke {
    /// Whom.
    pub subject: SubjectId,
    /// Why, for the audit trail.
    #[serde(deserialize_with = "crate::de::revoke_reason")]
    pub reason: String,
}

/// The answer to `Revoke`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeAck {
    /// Whom.
    pub subject: SubjectId,
    /// False if the person was unknown.
    pub revoked: bool,
}

impl std::fmt::Debug for Credential {
    // Card numbers and QR tokens are personal data: Debug shows the kind and length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Self::IdCard(_) => "IdCard",
            Self::StaffQr(_) => "StaffQr",
        };
        write!(f, "{kind}(<{} bytes>)", self.as_str().len())
    }
}

impl std::fmt::Debug for SubjectRecord {
    // Card numbers and QR tokens are personal data: Debug shows whether they are present.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectRecord")
            .field("subject", &self.subject)
            .field("category", &self.category)
            .field("home_market", &self.home_market)
            .field("markets", &self.markets)
            .field("zones", &self.zones)
            .field("valid_from", &self.valid_from)
            .field("valid_until", &self.valid_until)
            .field("id_card", &self.id_card.as_ref().map(|_| "<redacted>"))
            .field("qr_tokens", &self.qr_tokens.len())
            .field("status", &self.status)
            .finish()
    }
}

impl ErrorReply {
    /// An error reply; `message` is cut at a character boundary to [`MAX_STRING_LEN`] bytes
    /// so that the reply always passes validation.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_STRING_LEN {
            let mut end = MAX_STRING_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { code, message }
    }
}

impl ErrorCode {
    /// True when the same request (same `seq`) may succeed later without change: the server
    /// failed or is shutting down (codes 300-399).
    pub const fn is_transient(self) -> bool {
        self.code() >= 300 && self.code() < 400
    }
}

macro_rules! message_from {
    ($($variant:ident($ty:ty)),+ $(,)?) => {
        $(
            impl From<$ty> for Message {
                fn from(m: $ty) -> Self {
                    Self::$variant(m)
                }
            }
        )+
    };
}

message_from!(
    Hello(Hello),
    HelloAck(HelloAck),
    Event(Event),
    Verdict(Verdict),
    Busy(Busy),
    Error(ErrorReply),
    Redirect(Redirect),
    Enroll(Enroll),
    EnrollAck(EnrollAck),
    UpdateHealth(UpdateHealth),
    UpdateHealthAck(UpdateHealthAck),
    Revoke(Revoke),
    RevokeAck(RevokeAck),
);

// Wire codes. Explicit, permanent, and listed in PROTOCOL.md; never renumber, only add.
wire_enum!(Direction: u8 {
    Entry = 1 => "entry",
    Exit = 2 => "exit",
});

wire_enum!(Decision: u8 {
    Admit = 1 => "admit",
    Deny = 2 => "deny",
    Escalate = 3 => "escalate",
});

wire_enum!(CheckKind: u8 {
    FaceMatch = 1 => "face_match",
    MatchMargin = 2 => "match_margin",
    Liveness = 3 => "liveness",
    Credential = 4 => "credential",
    SubjectStatus = 5 => "subject_status",
    Blocklist = 6 => "blocklist",
    Validity = 7 => "validity",
    Market = 8 => "market",
    Zone = 9 => "zone",
    Schedule = 10 => "schedule",
    Temperature = 11 => "temperature",
    HealthCode = 12 => "health_code",
    TravelCode = 13 => "travel_code",
    TestAge = 14 => "test_age",
    Vaccination = 15 => "vaccination",
    SignIn = 16 => "sign_in",
    AntiPassback = 17 => "anti_passback",
    Frequency = 18 => "frequency",
    Occupancy = 19 => "occupancy",
    Internal = 20 => "internal",
});

wire_enum!(Outcome: u8 {
    Pass = 1 => "pass",
    Fail = 2 => "fail",
    Escalate = 3 => "escalate",
    NotChecked = 4 => "not_checked",
});

wire_enum!(DisplayColour: u8 {
    Green = 1 => "green",
    Yellow = 2 => "yellow",
    Red = 3 => "red",
});

// Error codes come in classes: 1xx the request is at fault (do not resend it unchanged),
// 2xx the connection or identity is at fault, 3xx the server is (retry the same seq later).
wire_enum!(ErrorCode: u16 {
    Malformed = 100 => "malformed",
    FrameTooLarge = 101 => "frame_too_large",
    InvalidValue = 102 => "invalid_value",
    DimensionMismatch = 103 => "dimension_mismatch",
    UnknownModel = 104 => "unknown_model",
    Unexpected = 105 => "unexpected",
    SeqReused = 106 => "seq_reused",
    VersionUnsupported = 200 => "version_unsupported",
    HelloRequired = 201 => "hello_required",
    UnknownGate = 202 => "unknown_gate",
    GateMismatch = 203 => "gate_mismatch",
    Forbidden = 204 => "forbidden",
    Internal = 300 => "internal",
    ShuttingDown = 301 => "shutting_down",
});

wire_enum!(Category: u8 {
    ServiceWorker = 1 => "service_worker",
    Manager = 2 => "manager",
    Staff = 3 => "staff",
    Merchant = 4 => "merchant",
    Buyer = 5 => "buyer",
    Shopper = 6 => "shopper",
});

wire_enum!(SubjectStatus: u8 {
    Active = 1 => "active",
    Revoked = 2 => "revoked",
    Blocklisted = 3 => "blocklisted",
});

wire_enum!(TestResult: u8 {
    Negative = 1 => "negative",
    Positive = 2 => "positive",
    Pending = 3 => "pending",
});

wire_enum!(CodeColour: u8 {
    Green = 1 => "green",
    Yellow = 2 => "yellow",
    Red = 3 => "red",
});

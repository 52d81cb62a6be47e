//! Deliberately bad streams (`--bad-input F`) and the answer PROTOCOL.md promises for each.
//!
//! | kind | bytes | promised answer |
//! |---|---|---|
//! | `malformed` | a valid event frame cut in half (length prefix fixed up) | `Error Malformed` |
//! | `oversize` | a header announcing one byte more than `max_frame_len`, then that many bytes | `Error FrameTooLarge` |
//! | `nan_embedding` | an event whose embedding holds a NaN | `Error InvalidValue` |
//! | `wrong_dimension` | an event whose embedding is one element short | `Error DimensionMismatch` |
//! | `reused_seq` | an already-answered `(gate, seq)` with other content (fever, exit) | `Error SeqReused`: never the stored verdict, never a new one |
//! | `other_gate` | an event naming another gate than the connection's certificate | `Error GateMismatch` |
//!
//! Nothing here may be admitted, a reused `(gate, seq)` may get no verdict at all (the stored one
//! would be someone else's decision), and the connection must stay usable for the good events
//! that share it.

use gatewarden_protocol::{
    Decision, Direction, ErrorCode, Event, GateId, HelloAck, Message, encode_frame,
};

use super::client::ExchangeError;

/// Cap on the bytes of one oversize frame, in case a server announces a huge limit.
const OVERSIZE_CAP: usize = 16 << 20;

/// The kinds of bad input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadKind {
    Malformed,
    Oversize,
    NanEmbedding,
    WrongDimension,
    ReusedSeq,
    OtherGate,
}

impl BadKind {
    pub(crate) const ALL: [Self; 6] = [
        Self::Malformed,
        Self::Oversize,
        Self::NanEmbedding,
        Self::WrongDimension,
        Self::ReusedSeq,
        Self::OtherGate,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Oversize => "oversize",
            Self::NanEmbedding => "nan_embedding",
            Self::WrongDimension => "wrong_dimension",
            Self::ReusedSeq => "reused_seq",
            Self::OtherGate => "other_gate",
        }
    }
}

/// An event the server already answered on this gate.
#[derive(Clone, Debug)]
pub(crate) struct Answered {
    pub(crate) event: Event,
}

/// The promised answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Promise {
    Error(ErrorCode),
}

/// How a bad stream was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BadOutcome {
    /// As promised.
    Ok,
    /// Admitted, or a reused key answered with a verdict.
    Violation(String),
    /// Answered, but not as promised.
    Wrong(String),
    /// No answer.
    NoReply,
}

/// The bytes of a bad stream of `kind`, built from a good `event` of the connection's gate.
/// `ReusedSeq` without an answered event falls back to `Malformed`; the kind actually built
/// is returned.
pub(crate) fn build(
    kind: BadKind,
    mut event: Event,
    ack: &HelloAck,
    answered: Option<Answered>,
    other_gate: u32,
) -> (BadKind, Vec<u8>, Promise) {
    let mut frame = Vec::new();
    match (kind, answered) {
        (BadKind::ReusedSeq, Some(previous)) => {
            // Another event under a recorded key, as from a gate whose counter restarted.
            let mut reused = previous.event;
            reused.temperature_c = Some(39.5);
            reused.direction = Direction::Exit;
            encode_frame(&Message::Event(reused), &mut frame);
            (kind, frame, Promise::Error(ErrorCode::SeqReused))
        }
        (BadKind::Malformed | BadKind::ReusedSeq, _) => {
            encode_frame(&Message::Event(event), &mut frame);
            let body = frame.len() - 5;
            let keep = body / 2;
            frame.truncate(5 + keep);
            let len = u32::try_from(1 + keep).unwrap_or(u32::MAX);
            frame[..4].copy_from_slice(&len.to_le_bytes());
            (
                BadKind::Malformed,
                frame,
                Promise::Error(ErrorCode::Malformed),
            )
        }
        (BadKind::Oversize, _) => {
            encode_frame(&Message::Event(event), &mut frame);
            let kind_byte = frame[4];
            // The length counts the kind byte and the body; the whole frame is 4 bytes more,
            // so announcing `max_frame_len` exceeds the limit by 4.
            let announced = ack.max_frame_len;
            let mut bytes = announced.to_le_bytes().to_vec();
            bytes.push(kind_byte);
            let body = (announced as usize).saturating_sub(1).min(OVERSIZE_CAP);
            bytes.resize(bytes.len() + body, 0);
            (kind, bytes, Promise::Error(ErrorCode::FrameTooLarge))
        }
        (BadKind::NanEmbedding, _) => {
            if let Some(face) = &mut event.face
                && let Some(x) = face.embedding.get_mut(0)
            {
                *x = f32::NAN;
            }
            encode_frame(&Message::Event(event), &mut frame);
            (kind, frame, Promise::Error(ErrorCode::InvalidValue))
        }
        (BadKind::WrongDimension, _) => {
            if let Some(face) = &mut event.face {
                if face.embedding.len() > 1 {
                    face.embedding.pop();
                } else {
                    face.embedding.push(0.0);
                }
            }
            encode_frame(&Message::Event(event), &mut frame);
            (kind, frame, Promise::Error(ErrorCode::DimensionMismatch))
        }
        (BadKind::OtherGate, _) => {
            event.gate = GateId(other_gate);
            encode_frame(&Message::Event(event), &mut frame);
            (kind, frame, Promise::Error(ErrorCode::GateMismatch))
        }
    }
}

/// Classifies the reply to a bad stream.
pub(crate) fn judge(promise: Promise, reply: &Result<Message, ExchangeError>) -> BadOutcome {
    let msg = match reply {
        Err(ExchangeError::Transport(_)) => return BadOutcome::NoReply,
        Err(ExchangeError::Decode(e)) => {
            return BadOutcome::Wrong(format!("undecodable reply: {e}"));
        }
        Ok(m) => m,
    };
    match (promise, msg) {
        (Promise::Error(want), Message::Error(e)) if e.code == want => BadOutcome::Ok,
        (Promise::Error(ErrorCode::SeqReused), Message::Verdict(v)) => {
            BadOutcome::Violation(format!(
                "a reused (gate, seq) was answered with a verdict ({}, replayed {})",
                v.decision.name(),
                v.replayed
            ))
        }
        (Promise::Error(_), Message::Verdict(v)) if v.decision == Decision::Admit => {
            BadOutcome::Violation("admitted".into())
        }
        (_, other) => BadOutcome::Wrong(describe(other)),
    }
}

fn describe(m: &Message) -> String {
    match m {
        Message::Error(e) => format!("error {:?}: {}", e.code, e.message),
        Message::Verdict(v) => format!("verdict {}", v.decision.name()),
        Message::Busy(b) => format!("busy {} ms", b.retry_after_ms),
        other => format!("{:?}", other.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewarden_protocol::{
        Credential, DecodeError, Display, DisplayColour, ErrorReply, FaceSample, Mode, UnixMillis,
        Verdict, decode_frame,
    };

    fn event() -> Event {
        Event {
            gate: GateId(3),
            seq: 77,
            captured_at: UnixMillis(1_750_000_000_000),
            mode: Mode::Verify {
                credential: Credential::IdCard("110108195001010011".into()),
            },
            direction: Direction::Entry,
            face: Some(FaceSample {
                model: "demo-face-v1".into(),
                embedding: vec![0.5; 8],
                quality: 0.9,
                liveness: 0.9,
            }),
            temperature_c: Some(36.5),
        }
    }

    fn ack() -> HelloAck {
        HelloAck {
            version: 1,
            embedding_dim: 8,
            model: "demo-face-v1".into(),
            max_frame_len: 65_536,
        }
    }

    fn verdict(decision: Decision, replayed: bool) -> Message {
        Message::Verdict(Verdict {
            gate: GateId(3),
            seq: 77,
            decision,
            subject: None,
            score: None,
            checks: vec![],
            display: Display {
                colour: DisplayColour::Red,
                text: String::new(),
            },
            decided_at: UnixMillis(0),
            replayed,
        })
    }

    #[test]
    fn bad_frames_are_refused_by_the_decoder_as_promised() {
        // The protocol crate's own decoder must refuse the frame-level kinds with the promised
        // code; the value-level kinds decode (the server checks them against its gallery).
        let (_, bytes, p) = build(BadKind::Malformed, event(), &ack(), None, 4);
        assert_eq!(p, Promise::Error(ErrorCode::Malformed));
        assert_eq!(
            decode_frame(&bytes).unwrap_err().error_code(),
            ErrorCode::Malformed
        );

        let (_, bytes, p) = build(BadKind::Oversize, event(), &ack(), None, 4);
        assert_eq!(p, Promise::Error(ErrorCode::FrameTooLarge));
        assert_eq!(bytes.len(), 65_536 + 4);
        let e = gatewarden_protocol::frame_len_hint(&bytes[..5]);
        assert!(matches!(e, Err(DecodeError::FrameTooLarge { .. })), "{e:?}");

        let (_, bytes, _) = build(BadKind::NanEmbedding, event(), &ack(), None, 4);
        assert_eq!(
            decode_frame(&bytes).unwrap_err().error_code(),
            ErrorCode::InvalidValue
        );

        let (_, bytes, _) = build(BadKind::WrongDimension, event(), &ack(), None, 4);
        let Ok(Message::Event(e)) = decode_frame(&bytes) else {
            panic!("wrong-dimension event must decode")
        };
        assert_eq!(e.face.unwrap().embedding.len(), 7);

        let (_, bytes, _) = build(BadKind::OtherGate, event(), &ack(), None, 4);
        let Ok(Message::Event(e)) = decode_frame(&bytes) else {
            panic!("other-gate event must decode")
        };
        assert_eq!(e.gate, GateId(4));
    }

    #[test]
    fn reused_seq_reuses_the_key_and_falls_back_without_history() {
        let (kind, _, _) = build(BadKind::ReusedSeq, event(), &ack(), None, 4);
        assert_eq!(kind, BadKind::Malformed);
        let answered = Answered { event: event() };
        let (kind, bytes, p) = build(BadKind::ReusedSeq, event(), &ack(), Some(answered), 4);
        assert_eq!(kind, BadKind::ReusedSeq);
        assert_eq!(p, Promise::Error(ErrorCode::SeqReused));
        let Ok(Message::Event(e)) = decode_frame(&bytes) else {
            panic!("a reused seq must decode")
        };
        assert_eq!((e.gate, e.seq), (GateId(3), 77));
        assert_ne!(e, event());
    }

    #[test]
    fn judge_separates_ok_wrong_and_violations() {
        let code = |c| {
            Ok(Message::Error(ErrorReply {
                code: c,
                message: "x".into(),
            }))
        };
        let p = Promise::Error(ErrorCode::Malformed);
        assert_eq!(judge(p, &code(ErrorCode::Malformed)), BadOutcome::Ok);
        assert!(matches!(
            judge(p, &code(ErrorCode::InvalidValue)),
            BadOutcome::Wrong(_)
        ));
        assert!(matches!(
            judge(p, &Ok(verdict(Decision::Admit, false))),
            BadOutcome::Violation(_)
        ));
        assert!(matches!(
            judge(p, &Ok(verdict(Decision::Deny, false))),
            BadOutcome::Wrong(_)
        ));
        assert_eq!(
            judge(p, &Err(ExchangeError::Transport("reset".into()))),
            BadOutcome::NoReply
        );
        let r = Promise::Error(ErrorCode::SeqReused);
        assert_eq!(judge(r, &code(ErrorCode::SeqReused)), BadOutcome::Ok);
        for (decision, replayed) in [(Decision::Admit, true), (Decision::Deny, true)] {
            assert!(
                matches!(
                    judge(r, &Ok(verdict(decision, replayed))),
                    BadOutcome::Violation(_)
                ),
                "any verdict for a reused key fails open"
            );
        }
    }
}

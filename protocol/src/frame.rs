//! Framing: `u32 LE length | u8 kind | body`, where the length counts the kind byte and the
//! body. The length and kind are checked against the limits before any body byte is buffered
//! or allocated for.

use crate::codec;
use crate::error::DecodeError;
use crate::kind::MessageKind;
use crate::limits::{FRAME_HEADER_LEN, LENGTH_PREFIX_LEN, MAX_FRAME_LEN};
use crate::message::Message;

/// Appends one whole frame carrying `msg` to `out`.
///
/// Encoding does not validate: a test may build a frame the peer will refuse. Call
/// [`Message::validate`] first to check a message before sending it.
///
/// # Panics
///
/// If the encoded frame exceeds `u32::MAX` bytes (4 GiB), which no message within the limits
/// approaches (the largest valid frame is [`MAX_FRAME_LEN`]).
#[allow(clippy::expect_used)]
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
    out.push(msg.kind().to_code());
    codec::encode_body(msg, out);
    let len = out.len() - start - LENGTH_PREFIX_LEN;
    let len = u32::try_from(len).expect("a frame longer than 4 GiB (see # Panics)");
    out[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
}

/// Decodes exactly one complete frame: `bytes` must hold the whole frame and nothing more.
/// The message is validated (see [`Message::validate`]).
///
/// # Errors
///
/// [`DecodeError::Truncated`] if `bytes` is shorter than the frame,
/// [`DecodeError::TrailingBytes`] if longer, and any header, body or validation error.
pub fn decode_frame(bytes: &[u8]) -> Result<Message, DecodeError> {
    let Some((total, kind)) = parse_header(bytes, MAX_FRAME_LEN)? else {
        return Err(DecodeError::Truncated {
            needed: FRAME_HEADER_LEN as u64,
            available: bytes.len() as u64,
        });
    };
    if bytes.len() < total {
        return Err(DecodeError::Truncated {
            needed: total as u64,
            available: bytes.len() as u64,
        });
    }
    if bytes.len() > total {
        return Err(DecodeError::TrailingBytes {
            count: (bytes.len() - total) as u64,
        });
    }
    decode_body(kind, &bytes[FRAME_HEADER_LEN..])
}

/// The whole length (header included) of the frame that `header` starts, once its first
/// [`FRAME_HEADER_LEN`] bytes are known; `Ok(None)` while fewer are given. Lets a reader
/// read the header, check it, and then read exactly the rest.
///
/// # Errors
///
/// [`DecodeError::FrameTooLarge`], [`DecodeError::UnknownKind`], or
/// [`DecodeError::Malformed`] for a zero length.
pub fn frame_len_hint(header: &[u8]) -> Result<Option<usize>, DecodeError> {
    Ok(parse_header(header, MAX_FRAME_LEN)?.map(|(total, _)| total))
}

/// Reads frames out of a byte stream fed in arbitrary chunks; the messages and errors do not
/// depend on where the chunks split.
///
/// A header error (frame too large, zero length, unknown kind) loses the stream's framing, so
/// the decoder stops there and repeats that error. A frame whose body is refused is consumed:
/// its error is returned once and decoding goes on with the next frame.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
    max_len: usize,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// A decoder accepting frames up to [`MAX_FRAME_LEN`] (and each kind's own limit).
    pub fn new() -> Self {
        Self::with_max_len(MAX_FRAME_LEN)
    }

    /// A decoder accepting frames up to `max_len` bytes, header included (each kind's own
    /// limit still applies).
    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            max_len,
            failed: None,
        }
    }

    /// Appends received bytes. Ignored once the decoder has failed on a header.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    ///
    /// Any [`DecodeError`]; see the type docs for which ones stop the decoder.
    #[allow(clippy::should_implement_trait)] // fallible and needs &mut self; not an Iterator
    pub fn next(&mut self) -> Result<Option<Message>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let pending = &self.buf[self.pos..];
        let (total, kind) = match parse_header(pending, self.max_len) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(None),
            Err(err) => {
                self.failed = Some(err.clone());
                self.buf = Vec::new();
                self.pos = 0;
                return Err(err);
            }
        };
        if pending.len() < total {
            return Ok(None);
        }
        let result = decode_body(kind, &pending[FRAME_HEADER_LEN..total]);
        self.pos += total;
        result.map(Some)
    }

    /// True once a header error has stopped the decoder (every later `next` repeats it):
    /// the byte stream has lost its framing and the connection should be closed.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// `Some((whole frame length, kind))` once the header is complete, `None` before.
fn parse_header(bytes: &[u8], max: usize) -> Result<Option<(usize, MessageKind)>, DecodeError> {
    let [a, b, c, d, rest @ ..] = bytes else {
        return Ok(None);
    };
    let total = u64::from(u32::from_le_bytes([*a, *b, *c, *d])) + LENGTH_PREFIX_LEN as u64;
    if total > max as u64 {
        return Err(DecodeError::FrameTooLarge {
            len: total,
            max: max as u64,
        });
    }
    if total == LENGTH_PREFIX_LEN as u64 {
        return Err(DecodeError::Malformed {
            reason: "frame length 0: a frame holds at least its kind byte".to_owned(),
        });
    }
    let Some(code) = rest.first() else {
        return Ok(None);
    };
    let kind = MessageKind::try_from_code(*code).ok_or(DecodeError::UnknownKind(*code))?;
    let kind_max = kind.max_frame_len().min(max);
    if total > kind_max as u64 {
        return Err(DecodeError::FrameTooLarge {
            len: total,
            max: kind_max as u64,
        });
    }
    // `total <= max`, a usize, so the conversion is lossless.
    Ok(Some((total as usize, kind)))
}

fn decode_body(kind: MessageKind, body: &[u8]) -> Result<Message, DecodeError> {
    let msg = codec::decode_body(kind, body)?;
    msg.validate()?;
    Ok(msg)
}

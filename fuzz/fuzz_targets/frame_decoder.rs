//! Fuzz target: arbitrary bytes, pushed into `FrameDecoder` in arbitrary chunks, must never
//! panic, and must yield the same messages and errors as the same bytes pushed at once.
#![no_main]

use gatewarden_protocol::{DecodeError, FrameDecoder, Message};
use libfuzzer_sys::fuzz_target;

/// Everything a decoder yields for a byte stream cut into pieces by `cuts`.
fn drain(data: &[u8], mut cuts: impl FnMut(usize) -> usize) -> Vec<Result<Message, DecodeError>> {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        let n = cuts(rest.len()).min(rest.len());
        decoder.push(&rest[..n]);
        rest = &rest[n..];
        loop {
            match decoder.next() {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    if decoder.is_failed() {
                        // Header errors repeat forever; the stream is over.
                        return out;
                    }
                }
            }
        }
        if rest.is_empty() {
            return out;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes seed the chunk sizes; the rest is the stream.
    let (seed, stream) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]) as u64 | 1, rest),
        _ => return,
    };
    let whole = drain(stream, |len| len);
    let mut state = seed;
    let pieces = drain(stream, |_| {
        // xorshift: cheap, deterministic chunk sizes of 0..=64 bytes
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 65) as usize
    });
    assert_eq!(whole, pieces, "the decoder's output depends on chunking");
});

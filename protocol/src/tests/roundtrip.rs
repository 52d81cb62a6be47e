//! Property tests: every valid message survives encode → decode, in one piece or many.

use proptest::collection::vec;
use proptest::prelude::*;

use super::{frame, message};
use crate::limits::FRAME_HEADER_LEN;
use crate::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_frame_round_trip(msg in message()) {
        prop_assert_eq!(msg.validate(), Ok(()));
        let bytes = frame(&msg);
        let declared = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(declared + 4, bytes.len());
        prop_assert_eq!(bytes[4], msg.kind().to_code());
        prop_assert_eq!(frame_len_hint(&bytes[..FRAME_HEADER_LEN]), Ok(Some(bytes.len())));
        prop_assert_eq!(decode_frame(&bytes), Ok(msg));
    }

    #[test]
    fn prop_frame_decoder_split_independence(
        msgs in vec(message(), 1..5),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            encode_frame(m, &mut stream);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        for w in points.windows(2) {
            decoder.push(&stream[w[0]..w[1]]);
            while let Some(m) = decoder.next().unwrap() {
                out.push(m);
            }
        }
        prop_assert_eq!(out, msgs);
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn prop_truncation_at_every_offset_is_an_error(msg in message()) {
        let bytes = frame(&msg);
        for cut in 0..bytes.len() {
            let err = decode_frame(&bytes[..cut]).unwrap_err();
            prop_assert!(matches!(err, DecodeError::Truncated { .. }), "cut {}: {:?}", cut, err);
            let mut decoder = FrameDecoder::new();
            decoder.push(&bytes[..cut]);
            prop_assert_eq!(decoder.next(), Ok(None));
        }
    }

    #[test]
    fn prop_corrupt_bytes_never_panic(msg in message(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = frame(&msg);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        // Any outcome but a panic; a successful decode must re-encode to the same bytes.
        if let Ok(decoded) = decode_frame(&bytes) {
            prop_assert_eq!(frame(&decoded), bytes);
        }
    }

    #[test]
    fn prop_body_shortened_inside_frame_is_malformed(msg in message(), drop_n in 1usize..8) {
        // The frame header is rewritten to match, so only the body is short.
        let bytes = frame(&msg);
        let body = &bytes[FRAME_HEADER_LEN..];
        prop_assume!(body.len() >= drop_n);
        let short = super::raw_frame(bytes[4], &body[..body.len() - drop_n]);
        prop_assert!(decode_frame(&short).is_err());
    }
}

//! Fuzz target: `decode_frame` on arbitrary bytes must never panic; whatever it accepts must
//! re-encode to the same bytes (the encoding is canonical) and decode again to the same
//! message.
#![no_main]

use gatewarden_protocol::{decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_frame(data) {
        let mut again = Vec::new();
        encode_frame(&msg, &mut again);
        assert_eq!(again, data, "accepted bytes are not canonical");
        assert_eq!(decode_frame(&again), Ok(msg));
    }
});

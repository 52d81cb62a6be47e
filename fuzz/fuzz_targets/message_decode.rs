//! Fuzz target: `decode_frame` on arbitrary bytes must never panic; whatever it accepts must
//! re-encode to the same bytes (the encoding is canonical) and decode again to the same
//! message. Every address of an accepted `Redirect` must split into the host and port a gate
//! dials; and the address parser itself, fed the raw bytes as text, must never panic and must
//! give back what it split when the parts are joined again.
#![no_main]

use gatewarden_protocol::{Message, Redirect, decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_frame(data) {
        let mut again = Vec::new();
        encode_frame(&msg, &mut again);
        assert_eq!(again, data, "accepted bytes are not canonical");
        if let Message::Redirect(r) = &msg {
            for address in &r.addresses {
                assert!(
                    Redirect::split_address(address).is_some(),
                    "an accepted redirect carries an address a gate cannot dial"
                );
            }
        }
        assert_eq!(decode_frame(&again), Ok(msg));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Some((host, port)) = Redirect::split_address(text)
    {
        let joined = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        assert_eq!(Redirect::split_address(&joined), Some((host, port)));
    }
});

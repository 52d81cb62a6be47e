//! Arbitrary bytes as a gallery segment file: opening must return an error or a gallery, and
//! verifying and searching an opened one must not panic.
#![no_main]

use gatewarden::gallery::Gallery;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(gallery) = Gallery::from_bytes(data) {
        let _ = gallery.verify();
    }
});

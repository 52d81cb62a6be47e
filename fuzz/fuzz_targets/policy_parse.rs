//! Arbitrary text as a policy file: parsing must return a policy or an error with a line,
//! never panic.
#![no_main]

use gatewarden::policy::PolicyBook;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = PolicyBook::from_toml(text, "fuzz.toml");
    }
});

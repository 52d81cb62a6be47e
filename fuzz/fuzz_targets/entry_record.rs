//! Arbitrary bytes as a day partition's dictionary and one compact entry record: decoding
//! must give the record or a typed error, never panic or allocate without bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gatewarden::testing::decode_entry_record(data);
});

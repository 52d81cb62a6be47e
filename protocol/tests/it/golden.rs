//! Golden fixtures: the bytes of every sample message are frozen in `tests/data/v1`, and
//! those of the message version 2 added (`redirect`) in `tests/data/v2`: version 2 changed no
//! byte of version 1, so its other messages keep their version-1 fixtures.
//!
//! A missing fixture is written only when `GATEWARDEN_BLESS=1`; an existing one is never
//! overwritten. A change that alters any fixture's bytes is a wire change: it needs a new
//! protocol version and a new fixture directory, not an edit.

use std::path::PathBuf;

use gatewarden_protocol::*;

use crate::samples;

/// The fixture folder of each protocol version.
fn version_dirs() -> [PathBuf; 2] {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    [data.join("v1"), data.join("v2")]
}

/// The folder of fixture `name`: the protocol version that introduced its message.
pub(crate) fn fixture_dir(name: &str) -> PathBuf {
    let [v1, v2] = version_dirs();
    if name.starts_with(MessageKind::Redirect.name()) {
        v2
    } else {
        v1
    }
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out);
    out
}

/// Reads a fixture, writing it first if it is missing and blessing is on.
pub(crate) fn fixture(name: &str, msg: &Message) -> Vec<u8> {
    let path = fixture_dir(name).join(format!("{name}.bin"));
    if !path.exists() && std::env::var_os("GATEWARDEN_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(fixture_dir(name)).unwrap();
        std::fs::write(&path, encode(msg)).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; to create a missing fixture run with GATEWARDEN_BLESS=1",
            path.display()
        )
    })
}

#[test]
fn golden_fixtures_match_encoding() {
    for (name, msg) in samples::all() {
        let bytes = fixture(name, &msg);
        assert_eq!(
            encode(&msg),
            bytes,
            "{name}: encoding differs from the fixture"
        );
    }
}

#[test]
fn golden_fixtures_decode_to_samples() {
    for (name, msg) in samples::all() {
        let bytes = fixture(name, &msg);
        assert_eq!(decode_frame(&bytes).as_ref(), Ok(&msg), "{name}");
        assert_eq!(msg.validate(), Ok(()), "{name}: samples must be valid");
    }
}

#[test]
fn every_kind_has_a_fixture() {
    let names: Vec<&str> = samples::all().iter().map(|(n, _)| *n).collect();
    for kind in MessageKind::ALL {
        assert!(names.contains(&kind.name()), "no fixture for {kind:?}");
    }
    for (name, msg) in samples::all() {
        assert!(
            name.starts_with(msg.kind().name()),
            "{name} holds a {:?}",
            msg.kind()
        );
    }
}

#[test]
fn fixture_directory_holds_only_known_fixtures() {
    let known: Vec<PathBuf> = samples::all()
        .iter()
        .map(|(n, _)| fixture_dir(n).join(format!("{n}.bin")))
        .collect();
    for dir in version_dirs() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            assert!(known.contains(&path), "stray fixture {}", path.display());
        }
    }
}

#[test]
fn fixtures_stream_through_the_frame_decoder() {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for (name, msg) in samples::all() {
        stream.extend(fixture(name, &msg));
        expected.push(msg);
    }
    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    // Three bytes at a time: every header and body split somewhere.
    for chunk in stream.chunks(3) {
        decoder.push(chunk);
        while let Some(m) = decoder.next().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, expected);
}

//! PROTOCOL.md agrees with the code: its hex dumps are the fixtures' bytes, its annotated
//! layouts add up to the fixtures, and its code and limit tables list the real values.

use gatewarden_protocol::limits::*;
use gatewarden_protocol::*;

use crate::golden::fixture;
use crate::samples;

fn spec() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap()
}

/// `xxd -g1` output for `bytes`.
fn xxd(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, row) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = row
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!(
            "{:08x}: {:<47}  {}\n",
            i * 16,
            hex.join(" "),
            ascii
        ));
    }
    out
}

#[test]
fn spec_contains_every_fixture_hex_dump() {
    let spec = spec();
    for (name, msg) in samples::all() {
        let dump = format!("$ xxd -g1 {name}.bin\n{}", xxd(&fixture(name, &msg)));
        assert!(
            spec.contains(&dump),
            "PROTOCOL.md lacks the dump of {name}.bin; expected:\n{dump}"
        );
    }
}

/// The bytes of the annotated block after `<!-- annotated: name -->`: on each line, the
/// hex pairs before `#`.
fn annotated_bytes(spec: &str, name: &str) -> Option<Vec<u8>> {
    let marker = format!("<!-- annotated: {name} -->");
    let rest = &spec[spec.find(&marker)? + marker.len()..];
    let start = rest.find("```")?;
    let block = &rest[start + 3..];
    let block = &block[block.find('\n')? + 1..];
    let block = &block[..block.find("```")?];
    let mut bytes = Vec::new();
    for line in block.lines() {
        let data = line.split('#').next().unwrap_or("");
        for token in data.split_whitespace() {
            assert_eq!(token.len(), 2, "{name}: bad token {token:?} in {line:?}");
            bytes.push(u8::from_str_radix(token, 16).unwrap());
        }
    }
    Some(bytes)
}

#[test]
fn spec_annotated_layouts_match_fixtures() {
    let spec = spec();
    let mut found = 0;
    for (name, msg) in samples::all() {
        if let Some(bytes) = annotated_bytes(&spec, name) {
            assert_eq!(
                bytes,
                fixture(name, &msg),
                "annotated {name} differs from its fixture"
            );
            found += 1;
        }
    }
    assert!(
        found >= 3,
        "PROTOCOL.md should annotate at least 3 fixtures, found {found}"
    );
}

macro_rules! assert_table {
    ($spec:expr, $ty:ty) => {
        for v in <$ty>::ALL {
            let row = format!("| {} | `{}` |", v.code(), v.name());
            assert!(
                $spec.contains(&row),
                "PROTOCOL.md lacks {} row {row}",
                stringify!($ty)
            );
        }
    };
}

#[test]
fn spec_code_tables_match_code() {
    let spec = spec();
    for kind in MessageKind::ALL {
        let row = format!("| {} | `{}` |", kind.to_code(), kind.name());
        assert!(spec.contains(&row), "PROTOCOL.md lacks kind row {row}");
    }
    assert_table!(spec, Direction);
    assert_table!(spec, Decision);
    assert_table!(spec, CheckKind);
    assert_table!(spec, Outcome);
    assert_table!(spec, DisplayColour);
    assert_table!(spec, ErrorCode);
    assert_table!(spec, Category);
    assert_table!(spec, SubjectStatus);
    assert_table!(spec, TestResult);
    assert_table!(spec, CodeColour);
    // The tagged enums of section 5.3, by the tags the codec writes.
    let id_card = Credential::IdCard("A1".to_owned());
    let modes = [
        (
            Mode::Verify {
                credential: id_card.clone(),
            }
            .code(),
            "verify",
        ),
        (Mode::Identify.code(), "identify"),
        (Mode::SignIn { credential: None }.code(), "sign_in"),
        (id_card.code(), "id_card"),
        (Credential::StaffQr("Q1".to_owned()).code(), "staff_qr"),
    ];
    for (code, name) in modes {
        let row = format!("| {code} | `{name}` |");
        assert!(spec.contains(&row), "PROTOCOL.md lacks tag row {row}");
    }
}

#[test]
fn spec_limits_table_matches_code() {
    let spec = spec();
    let limits: [(&str, String); 15] = [
        ("MAX_GATE_FRAME_LEN", MAX_GATE_FRAME_LEN.to_string()),
        ("MAX_ADMIN_FRAME_LEN", MAX_ADMIN_FRAME_LEN.to_string()),
        ("MAX_EMBEDDING_DIM", MAX_EMBEDDING_DIM.to_string()),
        ("MAX_STRING_LEN", MAX_STRING_LEN.to_string()),
        ("MAX_CHECKS", MAX_CHECKS.to_string()),
        ("MAX_TEMPLATES", MAX_TEMPLATES.to_string()),
        ("MAX_HEALTH_RECORDS", MAX_HEALTH_RECORDS.to_string()),
        ("MAX_MARKETS", MAX_MARKETS.to_string()),
        ("MAX_ZONES", MAX_ZONES.to_string()),
        ("MAX_QR_TOKENS", MAX_QR_TOKENS.to_string()),
        ("MIN_TEMPERATURE_C", format!("{MIN_TEMPERATURE_C:.1}")),
        ("MAX_TEMPERATURE_C", format!("{MAX_TEMPERATURE_C:.1}")),
        ("MAX_RETRY_AFTER_MS", MAX_RETRY_AFTER_MS.to_string()),
        ("MAX_REDIRECT_ADDRESSES", MAX_REDIRECT_ADDRESSES.to_string()),
        ("PROTOCOL_VERSION", PROTOCOL_VERSION.to_string()),
    ];
    for (name, value) in limits {
        let row = format!("| `{name}` | {value} |");
        assert!(spec.contains(&row), "PROTOCOL.md lacks limit row {row}");
    }
    assert!(spec.contains(&format!("\"{}\"", std::str::from_utf8(ALPN).unwrap())));
}

#[test]
fn spec_worst_case_sizes_match_code() {
    let spec = spec();
    let sizes = [
        ("Hello", HELLO_WIRE_MAX),
        ("HelloAck", HELLO_ACK_WIRE_MAX),
        ("Event", EVENT_WIRE_MAX),
        ("Verdict", VERDICT_WIRE_MAX),
        ("Error", ERROR_WIRE_MAX),
        ("Redirect", REDIRECT_WIRE_MAX),
        ("Enroll", ENROLL_WIRE_MAX),
        ("UpdateHealth", UPDATE_HEALTH_WIRE_MAX),
        ("Revoke", REVOKE_WIRE_MAX),
    ];
    for (name, size) in sizes {
        let row = format!("| `{name}` | {size} |");
        assert!(spec.contains(&row), "PROTOCOL.md lacks size row {row}");
    }
}

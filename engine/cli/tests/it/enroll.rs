//! Enrolment through the real binary: `gatewarden enroll` (duplicate faces within one file,
//! refusals and the exit code, bad vectors named by file and row) and `gatewarden import
//! subjects` (duplicate ID cards, a file of the wrong kind).

use crate::support::gw;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gatewarden");
/// `gatewarden init`'s dimension.
const DIM: usize = 512;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A unit vector that is `seed`'s own face.
fn face(seed: u64) -> Vec<f32> {
    let mut rng = crate::support::Rng::new(seed.wrapping_mul(7919) + 11);
    let v: Vec<f32> = (0..DIM).map(|_| rng.unit()).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// A site with subjects 1..=9 imported.
fn site(tmp: &Path) -> std::path::PathBuf {
    let site = tmp.join("site");
    let out = Command::new(BIN)
        .args(["init", site.to_str().unwrap(), "--gates", "1"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let people = tmp.join("people.csv");
    let mut csv = String::from("subject,category,home_market\n");
    for s in 1..=9 {
        csv.push_str(&format!("{s},shopper,1\n"));
    }
    std::fs::write(&people, csv).unwrap();
    let out = gw(&["import", "subjects", people.to_str().unwrap()], &site);
    assert!(out.status.success(), "{}", text(&out.stderr));
    site
}

/// Writes `rows` (subject, vector) as faces.npy + ids.txt; returns their paths as strings.
fn files(tmp: &Path, name: &str, rows: &[(u64, Vec<f32>)]) -> (String, String) {
    let vectors = tmp.join(format!("{name}.npy"));
    let ids = tmp.join(format!("{name}.txt"));
    let data: Vec<f32> = rows.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let dim = rows.first().map_or(DIM, |(_, v)| v.len());
    gatewarden::npy::write_f32_matrix(&vectors, rows.len(), dim, &data).unwrap();
    let list: String = rows.iter().map(|(s, _)| format!("{s}\n")).collect();
    std::fs::write(&ids, list).unwrap();
    (
        vectors.to_str().unwrap().to_owned(),
        ids.to_str().unwrap().to_owned(),
    )
}

#[test]
fn enroll_refuses_one_face_for_two_people_in_one_file_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let site = site(tmp.path());
    // Rows 2 and 4 are the same face for subjects 2 and 4; subject 3 has two templates.
    let rows = vec![
        (1, face(1)),
        (2, face(2)),
        (3, face(3)),
        (4, face(2)),
        (3, face(3)),
    ];
    let (vectors, ids) = files(tmp.path(), "faces", &rows);
    let args = ["enroll", "--vectors", &vectors, "--subjects", &ids];
    let out = gw(&args, &site);
    assert!(!out.status.success(), "a refusal exited 0");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("enrolled 4 template(s); 1 refused"),
        "{stdout}"
    );
    assert!(
        stdout.contains("row 4 (subject 4) has the face of row 2 (subject 2)"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("--allow-refused"),
        "{}",
        text(&out.stderr)
    );

    // Again, in a second file: the face is now enrolled; --allow-refused exits 0.
    let (vectors, ids) = files(tmp.path(), "again", &[(5, face(1)), (6, face(6))]);
    let mut args = vec!["enroll", "--vectors", &vectors, "--subjects", &ids];
    args.push("--allow-refused");
    let out = gw(&args, &site);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("row 1 (subject 5) looks like enrolled subject 1"),
        "{stdout}"
    );
}

#[test]
fn enroll_names_the_file_and_rows_of_bad_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let site = site(tmp.path());
    let mut nan = face(2);
    nan[7] = f32::NAN;
    let rows = vec![(1, face(1)), (2, nan), (3, vec![0.0; DIM])];
    let (vectors, ids) = files(tmp.path(), "bad", &rows);
    let out = gw(
        &["enroll", "--vectors", &vectors, "--subjects", &ids],
        &site,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&vectors)
            && err.contains("row 2 has NaN")
            && err.contains("row 3 has only zeros"),
        "{err}"
    );
    assert!(err.contains("nothing was enrolled"), "{err}");

    let (vectors, ids) = files(tmp.path(), "short", &[(1, vec![0.5; 128])]);
    let out = gw(
        &["enroll", "--vectors", &vectors, "--subjects", &ids],
        &site,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&vectors) && err.contains("128 values") && err.contains("512"),
        "{err}"
    );
}

#[test]
fn import_skips_a_row_with_a_taken_id_card_only_with_skip_bad() {
    let tmp = tempfile::tempdir().unwrap();
    let site = site(tmp.path());
    let card = |n: u32| format!("11010119900101{n:04}");
    let first = tmp.path().join("first.csv");
    std::fs::write(
        &first,
        format!(
            "subject,category,home_market,id_card\n1,shopper,1,{}\n",
            card(1)
        ),
    )
    .unwrap();
    assert!(
        gw(&["import", "subjects", first.to_str().unwrap()], &site)
            .status
            .success()
    );
    // Row 3 reuses subject 1's card (in the registry); row 5 reuses row 2's (in the file).
    let second = tmp.path().join("second.csv");
    std::fs::write(
        &second,
        format!(
            "subject,category,home_market,id_card\n2,shopper,1,{}\n3,shopper,1,{}\n\
             4,shopper,1,{}\n5,shopper,1,{}\n",
            card(2),
            card(1),
            card(4),
            card(2)
        ),
    )
    .unwrap();
    let second = second.to_str().unwrap();
    let out = gw(&["import", "subjects", second], &site);
    assert!(!out.status.success(), "a taken card was imported");
    let err = text(&out.stderr);
    assert!(
        err.contains("line 3: its ID card already belongs to subject 1"),
        "{err}"
    );
    assert!(
        err.contains("line 5: its ID card is also on line 2"),
        "{err}"
    );
    assert!(
        !err.contains(&card(1)) && !err.contains(&card(2)),
        "card numbers leaked: {err}"
    );
    assert!(err.contains("nothing was imported"), "{err}");

    let out = gw(&["import", "subjects", second, "--skip-bad"], &site);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("imported 2 subjects"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_file_of_the_wrong_kind_is_one_line_with_a_count() {
    let tmp = tempfile::tempdir().unwrap();
    let site = site(tmp.path());
    let gates = tmp.path().join("gates.jsonl");
    let lines: String = (1..=25)
        .map(|g| format!("{{\"gate\": {g}, \"market\": 1, \"zone\": 1}}\n"))
        .collect();
    std::fs::write(&gates, lines).unwrap();
    let out = gw(&["import", "subjects", gates.to_str().unwrap()], &site);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let listed: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("unknown field"))
        .collect();
    assert_eq!(listed.len(), 1, "{err}");
    assert!(listed[0].contains("25 rows, lines 1 to 25"), "{err}");
    assert!(err.contains("is it a subject file?"), "{err}");
}

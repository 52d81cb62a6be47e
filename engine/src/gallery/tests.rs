//! Segment format, fault injection, compatibility fixtures, and the live gallery.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gatewarden_protocol::SubjectId;
use proptest::prelude::*;

use super::format::{FOOTER_LEN, HEADER_LEN};
use super::*;
use crate::testing::{FacePopulation, Rng, dot_f64, uniform_vectors};

const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn spec(dim: usize, precision: Precision, normalize: bool) -> SegmentSpec {
    SegmentSpec {
        dim,
        precision,
        normalize,
    }
}

fn write(
    path: &Path,
    dim: usize,
    data: &[f32],
    subjects: &[u64],
    precision: Precision,
) -> WriteStats {
    let src = SliceSource::new(dim, data, subjects, None).unwrap();
    write_segment(path, &spec(dim, precision, true), &src, &mut |_| {}).unwrap()
}

/// A small segment's bytes: 5 rows of dimension 8.
fn small_bytes(precision: Precision) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.gwg");
    write(
        &path,
        8,
        &uniform_vectors(1, 5, 8),
        &[10, 20, 10, 30, 20],
        precision,
    );
    std::fs::read(path).unwrap()
}

/// Every precision a segment can be written at.
const WRITTEN: [Precision; 3] = [Precision::F32, Precision::Int8, Precision::Binary];

#[test]
fn segment_round_trips() {
    for precision in WRITTEN {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.gwg");
        let data = uniform_vectors(7, 300, 37);
        let subjects: Vec<u64> = (0..300).map(|i| i % 17).collect();
        let stats = write(&path, 37, &data, &subjects, precision);
        let g = Gallery::open(&path).unwrap();
        g.verify().unwrap();
        assert_eq!((g.len(), g.dim(), g.precision()), (300, 37, precision));
        assert!(g.is_unit_norm());
        assert_eq!(g.max_template_id(), 299);
        assert_eq!(stats.bytes, std::fs::metadata(&path).unwrap().len());
        for i in [0, 1, 150, 299] {
            let v = g.vector(i).unwrap();
            let norm = dot_f64(&data[i * 37..(i + 1) * 37], &data[i * 37..(i + 1) * 37]).sqrt();
            for (a, b) in v.iter().zip(&data[i * 37..(i + 1) * 37]) {
                assert!((f64::from(*a) - f64::from(*b) / norm).abs() < 1e-6);
            }
        }
        assert_eq!(g.subjects(), &subjects[..]);
        assert_eq!(g.templates(), &(0..300).collect::<Vec<u64>>()[..]);
        let rows: Vec<usize> = g.rows_of(SubjectId(5)).collect();
        assert_eq!(rows, (0..300).filter(|i| i % 17 == 5).collect::<Vec<_>>());
        assert_eq!(g.rows_of(SubjectId(99)).count(), 0);
        let info = g.info();
        assert_eq!(
            (info.subjects, info.count, info.precision),
            (17, 300, precision.name())
        );
        assert_eq!(g.codes().is_some(), precision != Precision::F32);
        assert_eq!(g.bit_heads().is_some(), precision == Precision::Binary);
        assert_eq!(g.rows().unwrap().has_bits(), precision == Precision::Binary);
        if let Some(centre) = g.centre() {
            // Each row's code is its signs against the stored centre (the rows' mean).
            let words = info.bits_row_bytes as usize / 8;
            for i in [0, 7, 299] {
                let mut want = vec![0u64; words];
                crate::index::encode_bits(g.vector(i).unwrap(), centre, &mut want);
                assert_eq!(g.bit_code(i).unwrap(), want);
            }
            let mean = (0..300)
                .map(|i| f64::from(g.vector(i).unwrap()[3]))
                .sum::<f64>()
                / 300.0;
            assert!((f64::from(centre[3]) - mean).abs() < 1e-6);
        }
        let names: Vec<&str> = info.sections.iter().map(|s| s.name).collect();
        assert_eq!(
            names.contains(&"1-bit code tails"),
            precision == Precision::Binary
        );
        assert_eq!(names.contains(&"int8 codes"), precision != Precision::F32);
        assert!(
            info.sections
                .windows(2)
                .all(|w| w[0].offset + w[0].bytes <= w[1].offset)
        );
        assert_eq!(
            info.sections.last().map(|s| s.offset + s.bytes),
            Some(stats.bytes)
        );
        let fb = Gallery::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
        fb.verify().unwrap();
        assert_eq!(fb.vectors(), g.vectors());
        let resident = Gallery::load(&path).unwrap();
        resident.verify().unwrap();
        assert_eq!(
            (resident.vectors(), resident.codes()),
            (g.vectors(), g.codes())
        );
        assert_eq!(resident.path(), Some(path.clone()));
    }
}

#[test]
fn empty_segment_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.gwg");
    write(&path, 4, &[], &[], Precision::Int8);
    let g = Gallery::open(&path).unwrap();
    g.verify().unwrap();
    assert!(g.is_empty());
    assert_eq!(g.info().subjects, 0);
}

#[test]
fn open_rejects_truncation_at_every_header_and_footer_offset() {
    for precision in WRITTEN {
        let bytes = small_bytes(precision);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gwg");
        let cuts = (0..=HEADER_LEN + 8)
            .chain(bytes.len() - FOOTER_LEN - 8..bytes.len())
            .chain([bytes.len() / 2]);
        for cut in cuts {
            let err = Gallery::from_bytes(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    GalleryError::Truncated { .. } | GalleryError::Corrupt { .. }
                ),
                "cut {cut}: {err}"
            );
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(Gallery::open(&path).is_err(), "open at cut {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Gallery::from_bytes(&longer),
            Err(GalleryError::Corrupt { .. })
        ));
    }
}

#[test]
fn verify_detects_a_flipped_bit_in_every_byte() {
    for precision in WRITTEN {
        let bytes = small_bytes(precision);
        Gallery::from_bytes(&bytes).unwrap().verify().unwrap();
        for i in 0..bytes.len() {
            for bit in [0, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let r = Gallery::from_bytes(&b).and_then(|g| g.verify());
                assert!(
                    r.is_err(),
                    "{precision:?}: flipping bit {bit} of byte {i} went unnoticed"
                );
            }
        }
    }
}

#[test]
fn open_names_future_versions_and_foreign_files() {
    let mut b = small_bytes(Precision::F32);
    b[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let err = Gallery::from_bytes(&b).unwrap_err();
    assert!(
        matches!(err, GalleryError::Incompatible { found, .. } if found == FORMAT_VERSION + 1),
        "{err}"
    );
    assert!(err.to_string().contains("rebuild"));
    let err =
        Gallery::from_bytes(b"PK\x03\x04 definitely a zip file, not a gallery segment at all")
            .unwrap_err();
    assert!(matches!(err, GalleryError::NotAGallery { .. }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Gallery::open(&dir.path().join("missing")),
        Err(GalleryError::Io { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn prop_from_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        prop_assert!(fuzz_open(&bytes).is_err());
    }

    #[test]
    fn prop_mutated_segments_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                                         cut in any::<prop::sample::Index>()) {
        let mut b = small_bytes(Precision::Int8);
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        let n = b.len();
        b.truncate(n - cut.index(n / 8 + 1));
        if let Ok(g) = Gallery::from_bytes(&b) {
            let _ = g.verify();
            let _ = g.rows();
            let _ = g.rows_of(SubjectId(10)).count();
            let _ = g.info();
        }
    }
}

#[test]
fn segment_files_are_owner_only_and_no_temp_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.gwg");
    write(&path, 4, &[1.0; 8], &[1, 2], Precision::Int8);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn write_rejects_bad_rows_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.gwg");
    let mut data = vec![1.0f32; 12];
    data[5] = f32::NAN;
    let src = SliceSource::new(4, &data, &[1, 2, 3], None).unwrap();
    let err =
        write_segment(&path, &spec(4, Precision::Int8, false), &src, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, GalleryError::NonFinite { template: 1 }),
        "{err}"
    );
    let zeros = [0.0f32; 8];
    let src = SliceSource::new(4, &zeros, &[1, 2], None).unwrap();
    let err = write_segment(&path, &spec(4, Precision::F32, true), &src, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, GalleryError::ZeroVector { template: 0 }),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(SliceSource::new(4, &zeros, &[1], None).is_none());
}

/// Rows of the committed fixtures: 5 rows of dimension 8, subjects 10/20/10/30/20.
fn fixture_rows() -> (Vec<f32>, Vec<u64>) {
    let data = (0..40).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    (data, vec![10, 20, 10, 30, 20])
}

fn fixture_path(precision: Precision) -> PathBuf {
    Path::new(FIXTURE_DIR).join(format!(
        "gallery_v{FORMAT_VERSION}_{}.bin",
        precision.name()
    ))
}

/// Regenerates the compatibility fixtures of the *current* version. Run by hand only when
/// the format version is bumped: `cargo test -p gatewarden --lib write_fixtures -- --ignored`.
#[test]
#[ignore = "regenerates the committed compat fixtures; run by hand on a format version bump"]
fn write_fixtures() {
    std::fs::create_dir_all(FIXTURE_DIR).unwrap();
    let (data, subjects) = fixture_rows();
    for precision in WRITTEN {
        write(&fixture_path(precision), 8, &data, &subjects, precision);
    }
}

#[test]
fn compat_fixtures_open_with_todays_code() {
    let (data, subjects) = fixture_rows();
    let fixtures = [
        (1, Precision::F32),
        (1, Precision::Int8),
        (2, Precision::F32),
        (2, Precision::Int8),
        (2, Precision::Binary),
    ];
    for (version, precision) in fixtures {
        let path =
            Path::new(FIXTURE_DIR).join(format!("gallery_v{version}_{}.bin", precision.name()));
        let g = Gallery::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        g.verify().unwrap();
        assert_eq!(g.info().format_version, version);
        assert_eq!((g.dim(), g.len(), g.precision()), (8, 5, precision));
        assert_eq!(g.subjects(), &subjects[..]);
        let row2 = g.vector(2).unwrap();
        let norm = dot_f64(&data[16..24], &data[16..24]).sqrt();
        assert!((f64::from(row2[3]) - f64::from(data[19]) / norm).abs() < 1e-6);
    }
}

// ---- live gallery ----

fn opts(dim: usize, precision: Precision) -> GalleryOptions {
    GalleryOptions::new(dim, precision)
}

/// Inserts `pop`'s identities, two templates each, with template ids from `first`.
fn enroll(g: &LiveGallery, pop: &FacePopulation, people: std::ops::Range<usize>, first: u64) {
    let mut rng = Rng::new(first);
    let rows: Vec<(u64, SubjectId, Vec<f32>)> = people
        .flat_map(|i| [0, 1].map(|t| (i, t)))
        .enumerate()
        .map(|(k, (i, _))| (first + k as u64, pop.subject(i), pop.template(&mut rng, i)))
        .collect();
    let refs: Vec<(u64, SubjectId, &[f32])> = rows
        .iter()
        .map(|(t, s, v)| (*t, *s, v.as_slice()))
        .collect();
    g.insert_batch(&refs).unwrap();
}

#[test]
fn live_identifies_verifies_and_searches_across_segments_and_delta() {
    for precision in [
        Precision::F32,
        Precision::Int8,
        Precision::Binary,
        Precision::Auto,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let g = LiveGallery::open(&dir.path().join("gal"), opts(64, precision)).unwrap();
        let pop = FacePopulation::new(3, 200, 64);
        enroll(&g, &pop, 0..120, 1);
        g.compact().unwrap();
        enroll(&g, &pop, 120..200, 1000);
        let st = g.stats();
        assert_eq!((st.segments, st.delta_rows, st.rows), (1, 160, 400));
        let snap = g.snapshot();
        let probes = pop.probes(9, 40, 1.0);
        let qs: Vec<&[f32]> = probes.iter().map(|p| p.embedding.as_slice()).collect();
        let ids = snap.identify_batch(&qs);
        for (p, id) in probes.iter().zip(&ids) {
            let truth = pop.subject(p.truth.unwrap());
            let (best, score) = id.best.unwrap();
            assert_eq!(best, truth);
            let (other, second) = id.runner_up.unwrap();
            assert_ne!(other, truth);
            assert!(second <= score);
            let v = snap.verify(truth, &p.embedding).unwrap();
            assert!(
                (v - score).abs() < 1e-5,
                "verify scores the subject's best template"
            );
        }
        assert_eq!(snap.verify(SubjectId(1), qs[0]), None, "unknown subject");
        let top = snap.search(qs[0], 3);
        assert_eq!(top.len(), 3);
        assert_eq!(top[0].0, pop.subject(probes[0].truth.unwrap()));
        assert_eq!(
            top[1].0, top[0].0,
            "the subject's second template ranks next"
        );
        // Unnormalized, wrong-dimension and zero queries.
        let scaled: Vec<f32> = qs[0].iter().map(|x| x * 3.0).collect();
        let again = snap.identify_batch(&[&scaled])[0];
        assert_eq!(again.best.unwrap().0, ids[0].best.unwrap().0);
        assert!((again.best.unwrap().1 - ids[0].best.unwrap().1).abs() < 1e-5);
        let bad = snap.identify_batch(&[&[0.0; 64], &[1.0; 63]]);
        assert_eq!(bad, vec![Identification::default(); 2]);
    }
}

#[test]
fn live_remove_subject_survives_compaction_and_reopen() {
    for precision in [Precision::Int8, Precision::Binary] {
        live_remove_subject_survives_compaction_and_reopen_at(precision);
    }
}

fn live_remove_subject_survives_compaction_and_reopen_at(precision: Precision) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gal");
    let pop = FacePopulation::new(4, 50, 32);
    let probe = pop.genuine(&mut Rng::new(1), 7).embedding;
    {
        let g = LiveGallery::open(&path, opts(32, precision)).unwrap();
        enroll(&g, &pop, 0..30, 1);
        g.compact().unwrap();
        enroll(&g, &pop, 30..50, 100);
        g.remove_subject(pop.subject(7)); // in a segment
        g.remove_subject(pop.subject(40)); // in the delta
        let snap = g.snapshot();
        assert_eq!(snap.len(), 96);
        assert_eq!(snap.templates_of(pop.subject(7)), 0);
        assert_ne!(
            snap.identify_batch(&[&probe])[0].best.unwrap().0,
            pop.subject(7)
        );
        assert_eq!(snap.verify(pop.subject(40), &probe), None);
        g.compact().unwrap();
        assert_eq!(g.len(), 96);
        assert_eq!(g.watermark(), 139);
    }
    let mut mapped = opts(32, precision);
    mapped.resident = false;
    let g = LiveGallery::open(&path, mapped).unwrap();
    assert_eq!(g.len(), 96);
    assert_eq!(g.watermark(), 139);
    assert_eq!(g.snapshot().templates_of(pop.subject(7)), 0);
    assert_eq!(g.snapshot().templates_of(pop.subject(8)), 2);
    // Re-enrolling after removal works; replaying existing ids is a no-op.
    enroll(&g, &pop, 0..30, 1);
    assert_eq!(g.len(), 98, "only subject 7's templates were missing");
}

#[test]
fn live_merges_when_segments_pile_up_and_drops_dead_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(16, Precision::Int8);
    o.max_segments = 3;
    let g = LiveGallery::open(dir.path(), o).unwrap();
    let pop = FacePopulation::new(5, 40, 16);
    for round in 0..5 {
        enroll(&g, &pop, round * 8..round * 8 + 8, 1 + 100 * round as u64);
        g.compact().unwrap();
        assert!(g.stats().segments <= 3, "round {round}: {:?}", g.stats());
    }
    for i in 0..8 {
        g.remove_subject(pop.subject(i));
    }
    let s = g.compact().unwrap();
    assert_eq!(g.stats().deleted_rows, 0, "{s:?}");
    assert_eq!(g.len(), 64);
    let files = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".gwg")
    });
    assert_eq!(
        files.count(),
        g.stats().segments,
        "old segment files are deleted"
    );
}

#[test]
fn live_refuses_second_opener_other_dims_and_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let g = LiveGallery::open(dir.path(), opts(8, Precision::F32)).unwrap();
    assert!(matches!(
        LiveGallery::open(dir.path(), opts(8, Precision::F32)),
        Err(GalleryError::Locked { .. })
    ));
    let ok = [1.0f32; 8];
    let err = g
        .insert_batch(&[(1, SubjectId(1), &ok), (2, SubjectId(1), &[1.0; 7])])
        .unwrap_err();
    assert!(matches!(
        err,
        GalleryError::WrongDimension {
            template: 2,
            expected: 8,
            got: 7
        }
    ));
    assert!(g.is_empty(), "all or nothing");
    assert!(matches!(
        g.insert(3, SubjectId(1), &[f32::INFINITY; 8]),
        Err(GalleryError::NonFinite { .. })
    ));
    assert!(matches!(
        g.insert(4, SubjectId(1), &[0.0; 8]),
        Err(GalleryError::ZeroVector { .. })
    ));
    drop(g);
    let err = LiveGallery::open(dir.path(), opts(9, Precision::F32)).unwrap_err();
    assert!(
        matches!(
            err,
            GalleryError::DimMismatch {
                expected: 9,
                found: 8,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn live_folder_is_private_and_strays_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gal");
    {
        let g = LiveGallery::open(&path, opts(8, Precision::Int8)).unwrap();
        g.insert(1, SubjectId(1), &[1.0; 8]).unwrap();
        g.compact().unwrap();
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o700
    );
    std::fs::write(path.join("seg-99999999.gwg"), b"junk").unwrap();
    std::fs::write(path.join(".seg-00000009.gwg.1.0.tmp"), b"junk").unwrap();
    let g = LiveGallery::open(&path, opts(8, Precision::Int8)).unwrap();
    assert_eq!(g.len(), 1);
    assert!(!path.join("seg-99999999.gwg").exists());
    assert!(!path.join(".seg-00000009.gwg.1.0.tmp").exists());
}

#[test]
fn live_refuses_a_corrupt_segment_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let g = LiveGallery::open(dir.path(), opts(8, Precision::Int8)).unwrap();
        g.insert(1, SubjectId(1), &[1.0; 8]).unwrap();
        g.compact().unwrap();
    }
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gwg"))
        .unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    b[HEADER_LEN + 1] ^= 0x40;
    std::fs::write(&seg, b).unwrap();
    let err = LiveGallery::open(dir.path(), opts(8, Precision::Int8)).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn identify_applies_threshold_and_margin() {
    let dir = tempfile::tempdir().unwrap();
    let g = LiveGallery::open(dir.path(), opts(2, Precision::Int8)).unwrap();
    g.insert_batch(&[
        (1, SubjectId(1), &[1.0, 0.0]),
        (2, SubjectId(2), &[0.8, 0.6]),
    ])
    .unwrap();
    let snap = g.snapshot();
    let (s, score, margin) = snap.identify(&[1.0, 0.0], 0.9, 0.1).unwrap();
    assert_eq!(s, SubjectId(1));
    assert!((score - 1.0).abs() < 1e-6 && (margin - 0.2).abs() < 1e-5);
    assert_eq!(snap.identify(&[1.0, 0.0], 0.9, 0.3), None, "ambiguous");
    assert_eq!(
        snap.identify(&[0.0, 1.0], 0.9, 0.0),
        None,
        "below threshold"
    );
    let only = Identification {
        best: Some((SubjectId(4), 0.5)),
        runner_up: None,
    };
    assert_eq!(
        (only.margin(), only.accept(0.4, 10.0)),
        (Some(f32::INFINITY), Some(SubjectId(4)))
    );
    assert_eq!(Identification::default().margin(), None);
}

#[test]
fn fuzz_entry_accepts_a_valid_segment() {
    let info = fuzz_open(&small_bytes(Precision::Int8)).unwrap();
    assert_eq!((info.count, info.dim), (5, 8));
}

#[test]
fn live_ties_break_to_lower_subject() {
    let dir = tempfile::tempdir().unwrap();
    let g = LiveGallery::open(dir.path(), opts(4, Precision::Int8)).unwrap();
    let v = [0.5f32, 0.5, 0.5, 0.5];
    g.insert_batch(&[
        (1, SubjectId(9), &v),
        (2, SubjectId(3), &v),
        (3, SubjectId(5), &v),
    ])
    .unwrap();
    let id = g.snapshot().identify_batch(&[&v])[0];
    assert_eq!(id.best.unwrap().0, SubjectId(3));
    assert_eq!(id.runner_up.unwrap().0, SubjectId(5));
    g.compact().unwrap();
    assert_eq!(g.snapshot().identify_batch(&[&v])[0], id);
}

/// Readers see complete snapshots while a writer inserts, removes and compacts.
#[test]
fn live_readers_never_block_or_see_torn_state() {
    let dir = tempfile::tempdir().unwrap();
    let g = Arc::new(LiveGallery::open(dir.path(), opts(32, Precision::Int8)).unwrap());
    let pop = FacePopulation::new(8, 300, 32);
    enroll(&g, &pop, 0..10, 1);
    let anchor = pop.identity(0).to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (g, stop, anchor) = (g.clone(), stop.clone(), anchor.clone());
            let want = pop.subject(0);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let snap = g.snapshot();
                    assert_eq!(snap.identify_batch(&[&anchor])[0].best.unwrap().0, want);
                    assert_eq!(snap.templates_of(want), 2);
                    n += 1;
                }
                n
            })
        })
        .collect();
    for round in 1..15 {
        enroll(&g, &pop, round * 20..round * 20 + 20, round as u64 * 1000);
        g.remove_subject(pop.subject(round * 20));
        if round % 4 == 0 {
            g.compact().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(g.len(), 20 + 14 * 38);
}

#[test]
fn live_compaction_keeps_concurrent_inserts_and_removals() {
    let dir = tempfile::tempdir().unwrap();
    let g = Arc::new(LiveGallery::open(dir.path(), opts(16, Precision::Int8)).unwrap());
    let pop = FacePopulation::new(9, 400, 16);
    enroll(&g, &pop, 0..200, 1);
    let writer = {
        let (g, pop) = (g.clone(), pop.clone());
        std::thread::spawn(move || {
            for i in 200..400 {
                enroll(&g, &pop, i..i + 1, 10_000 + 2 * i as u64);
                if i % 3 == 0 {
                    g.remove_subject(pop.subject(i - 200));
                }
            }
        })
    };
    for _ in 0..5 {
        g.compact().unwrap();
    }
    writer.join().unwrap();
    g.compact().unwrap();
    let removed = (200..400).filter(|i| i % 3 == 0).count();
    assert_eq!(g.len(), 2 * (400 - removed));
    let snap = g.snapshot();
    for i in 0..400 {
        let want = if (200..400).contains(&(i + 200)) && (i + 200) % 3 == 0 {
            0
        } else {
            2
        };
        assert_eq!(snap.templates_of(pop.subject(i)), want, "person {i}");
    }
    drop(snap);
    let dir_path = g.dir().to_owned();
    drop(g);
    let g = LiveGallery::open(&dir_path, opts(16, Precision::Int8)).unwrap();
    assert_eq!(g.len(), 2 * (400 - removed));
}

#[test]
fn debug_output_has_no_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let g = LiveGallery::open(dir.path(), opts(4, Precision::Int8)).unwrap();
    g.insert(1, SubjectId(1), &[0.123_456, 0.5, 0.5, 0.5])
        .unwrap();
    let text = format!("{g:?} {:?}", g.snapshot());
    assert!(!text.contains("0.12"), "{text}");
}

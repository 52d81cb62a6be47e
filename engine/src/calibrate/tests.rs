//! Calibration against a score model known in closed form: random directions on the unit
//! sphere. The cosine of two independent uniform unit vectors in d dimensions has density
//! proportional to (1 - x²)^((d-3)/2) on [-1, 1], so with N templates the best non-mate score
//! of a leave-one-out probe has CDF F(t)^(N-1), and the threshold meeting a target FPIR p
//! solves F(t) = (1 - p)^(1/(N-1)). The tests compare the tool's answers with that.

use gatewarden_protocol::SubjectId;

use super::*;
use crate::gallery::{GalleryOptions, LiveGallery};
use crate::index::Precision;
use crate::policy::PolicyBook;

const DIM: usize = 32;

/// Uniform unit vectors (normalised Gaussians), seeded.
fn sphere(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SplitMix(seed);
    let mut uniform = move || ((rng.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (0..n)
        .map(|_| {
            let v: Vec<f64> = (0..DIM)
                .map(|_| {
                    // Box-Muller: one normal from two uniforms.
                    let (u, w) = (uniform(), uniform());
                    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * w).cos()
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| (x / norm) as f32).collect()
        })
        .collect()
}

fn gallery(dir: &Path, vectors: &[Vec<f32>]) -> LiveGallery {
    let g = LiveGallery::open(dir, GalleryOptions::new(DIM, Precision::F32)).unwrap();
    let rows: Vec<(u64, SubjectId, &[f32])> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64 + 1, SubjectId(i as u64 + 1), v.as_slice()))
        .collect();
    g.insert_batch(&rows).unwrap();
    g
}

/// P(cos <= t) for two uniform unit vectors in DIM dimensions (Simpson's rule).
fn cosine_cdf(t: f64) -> f64 {
    let density = |x: f64| (1.0 - x * x).max(0.0).powf((DIM as f64 - 3.0) / 2.0);
    let simpson = |a: f64, b: f64| {
        let n = 4000;
        let h = (b - a) / n as f64;
        let inner: f64 = (1..n)
            .map(|i| density(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
            .sum();
        (density(a) + density(b) + inner) * h / 3.0
    };
    simpson(-1.0, t) / simpson(-1.0, 1.0)
}

/// The threshold meeting FPIR `p` for leave-one-out probes over `n` templates, exactly.
fn model_threshold(p: f64, n: usize) -> f64 {
    let want = (1.0 - p).powf(1.0 / (n as f64 - 1.0));
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if cosine_cdf(mid) < want {
            lo = mid
        } else {
            hi = mid
        }
    }
    (lo + hi) / 2.0
}

#[test]
fn calibration_recovers_the_models_threshold_within_its_interval() {
    let n = 3000;
    let target = 0.05;
    let dir = tempfile::tempdir().unwrap();
    let g = gallery(dir.path(), &sphere(n, 1));
    let snap = g.snapshot();
    let probes = sample_probes(&snap, n, 7);
    assert_eq!(probes.len(), n);
    let mut calls = 0;
    let scores = Scores::new(nonmate_scores(&snap, &probes, 2, |done, total| {
        calls += 1;
        assert!(done <= total);
    }));
    assert_eq!(calls, n.div_ceil(BATCH));
    assert_eq!(scores.len(), n);
    let expected = model_threshold(target, n);
    let got = f64::from(scores.threshold_for(target).unwrap());
    let (lo, hi) = scores.threshold_interval(target).unwrap();
    // The stated tolerance: the model's threshold lies inside the 95% interval, and the
    // estimate is within 0.01 of it (cosines of this model spread over about ±0.6).
    assert!(
        f64::from(lo) <= expected && expected <= f64::from(hi),
        "model {expected:.4} outside [{lo:.4}, {hi:.4}] (estimate {got:.4})"
    );
    assert!(
        (got - expected).abs() < 0.01,
        "estimate {got:.4}, model {expected:.4}"
    );
    // The threshold's meaning: at most floor(target * n) probes at or above it.
    assert!(scores.at_or_above(got as f32) <= (target * n as f64) as usize);
    assert!(scores.share_at_or_above(got as f32 - 1e-3) > target - 2.0 / n as f64);
}

#[test]
fn the_best_of_n_model_predicts_fpir_at_twice_the_registry() {
    let n = 1500;
    let all = sphere(2 * n, 3);
    let t = model_threshold(0.1, n) as f32;
    let measure = |vectors: &[Vec<f32>]| {
        let dir = tempfile::tempdir().unwrap();
        let g = gallery(dir.path(), vectors);
        let snap = g.snapshot();
        let probes = sample_probes(&snap, n, 11);
        Scores::new(nonmate_scores(&snap, &probes, 1, |_, _| {}))
    };
    let today = measure(&all[..n]);
    let doubled = measure(&all);
    let predicted = fpir_at_scale(today.share_at_or_above(t), 2.0);
    let (lo, hi) = wilson(doubled.at_or_above(t), doubled.len());
    assert!(
        lo <= predicted && predicted <= hi,
        "predicted {predicted:.4}, measured {:.4} [{lo:.4}, {hi:.4}]",
        doubled.share_at_or_above(t)
    );
}

#[test]
fn rates_and_thresholds_read_off_sorted_scores() {
    let s = Scores::new(vec![0.1, f32::NAN, 0.4, 0.3, 0.2, 0.5]);
    assert_eq!(s.len(), 5);
    assert_eq!(s.share_at_or_above(0.3), 0.6);
    assert_eq!(s.share_below(0.3), 0.4);
    // 20% allows one score at or above: just above the second highest.
    assert_eq!(s.threshold_for(0.2), Some(0.4f32.next_up()));
    assert_eq!(s.threshold_for(0.0), Some(0.5f32.next_up()));
    assert_eq!(s.threshold_for(1.0), Some(0.1));
    assert_eq!(Scores::new(Vec::new()).threshold_for(0.1), None);
    assert!((fpir_at_scale(0.003, 10.0) - 0.029_6).abs() < 1e-4);
    assert!((target_today_for_scale(fpir_at_scale(0.01, 3.0), 3.0) - 0.01).abs() < 1e-12);
    let (lo, hi) = wilson(30, 10_000);
    assert!(lo < 0.003 && 0.003 < hi && hi - lo < 0.003, "{lo} {hi}");
}

#[test]
fn the_report_prints_the_change_and_never_claims_rates_without_mates() {
    let nonmates = Scores::new((0..1000).map(|i| i as f32 / 1000.0).collect());
    let book = PolicyBook::demo(); // identify_threshold 0.50
    let inputs = Inputs {
        nonmates: &nonmates,
        mates: &Scores::default(),
        mate_source: "none",
        policy: &book,
        target: 0.003,
        gallery_size: 1000,
        precision: "f32",
    };
    let r = CalibrationReport::new(&inputs);
    assert!((r.fpir - 0.5).abs() < 1e-9);
    assert_eq!(r.fnir, None);
    // Three of 1,000 may reach it: just above the fourth highest.
    assert_eq!(
        r.recommended_threshold,
        Some(nonmates.as_slice()[996].next_up())
    );
    assert!(
        r.change.starts_with("set identify_threshold = 1.00"),
        "{}",
        r.change
    );
    let text = r.render();
    assert!(text.contains("unknown (no mated scores)"), "{text}");
    let mates = Scores::new(vec![0.6, 0.7, 0.8, 0.45]);
    let r = CalibrationReport::new(&Inputs {
        mates: &mates,
        ..inputs
    });
    assert_eq!(r.fnir, Some(0.25));
    assert_eq!(r.thresholds[0].fnir_verify, Some(0.0));
    // Thirty low scores cannot bound FPIR below 0.003, but they never argue for lowering
    // the threshold either.
    let few = Scores::new((0..30).map(|i| i as f32 / 100.0).collect());
    let r = CalibrationReport::new(&Inputs {
        nonmates: &few,
        ..inputs
    });
    assert!(r.change.starts_with("no change needed"), "{}", r.change);
    assert!(r.change.contains("a larger --sample"), "{}", r.change);
}

#[test]
fn strangers_from_the_model_agree_with_the_estimate_and_others_do_not() {
    let n = 1500;
    let dir = tempfile::tempdir().unwrap();
    let g = gallery(dir.path(), &sphere(n, 21));
    let snap = g.snapshot();
    let probes = sample_probes(&snap, n, 5);
    let nonmates = Scores::new(nonmate_scores(&snap, &probes, 1, |_, _| {}));
    // Strangers from the same model: fresh uniform directions, never enrolled.
    let fresh = sphere(2000, 99);
    let rows: Vec<&[f32]> = fresh.iter().map(Vec::as_slice).collect();
    let mut calls = 0;
    let measured = Scores::new(stranger_scores(&snap, &rows, 2, |_, _| calls += 1));
    assert_eq!((measured.len(), calls), (2000, 2000usize.div_ceil(BATCH)));
    let check = check_strangers(&nonmates, &measured, &[0.5], "model");
    // 0.5 (nine in ten strangers reach it at d = 32, N = 1,500), and the thresholds where
    // the estimate is 10%, 1% and 0.1%.
    assert_eq!(check.rows.len(), 4, "{check:?}");
    assert!(check.agrees, "{}", check.render());
    let at_ten = nonmates.threshold_for(0.1).unwrap();
    let ten = check.rows.iter().find(|r| r.threshold == at_ten).unwrap();
    assert!((ten.estimated - 0.1).abs() < 0.01, "{ten:?}");
    assert!(
        ten.measured_interval.0 < 0.1 && 0.1 < ten.measured_interval.1,
        "{ten:?}"
    );
    // Strangers that all lean towards one enrolled person are not this model's strangers:
    // they score higher, and the check says so.
    let leaning: Vec<Vec<f32>> = fresh
        .iter()
        .map(|v| {
            let w: Vec<f32> = v.iter().zip(&probes[0].1).map(|(a, b)| a + b).collect();
            let norm = w.iter().map(|x| x * x).sum::<f32>().sqrt();
            w.iter().map(|x| x / norm).collect()
        })
        .collect();
    let rows: Vec<&[f32]> = leaning.iter().map(Vec::as_slice).collect();
    let measured = Scores::new(stranger_scores(&snap, &rows, 1, |_, _| {}));
    let check = check_strangers(&nonmates, &measured, &[], "leaning");
    assert!(!check.agrees, "{}", check.render());
    assert!(check.render().contains("DIFFERS"));
    // No strangers: nothing agrees.
    assert!(!check_strangers(&nonmates, &Scores::default(), &[0.5], "none").agrees);
}

#[test]
fn the_two_proportion_test_reads_sampling_noise_as_agreement() {
    assert_eq!(two_proportion_z(0, 100, 0, 300), 0.0);
    assert_eq!(two_proportion_z(5, 0, 1, 10), 0.0);
    // 10% of 1,000 against 11% of 1,000: well within noise.
    assert!(two_proportion_z(100, 1000, 110, 1000).abs() < 1.0);
    // 10% against 20% of 1,000 each: far outside.
    assert!(two_proportion_z(100, 1000, 200, 1000) < -5.0);
}

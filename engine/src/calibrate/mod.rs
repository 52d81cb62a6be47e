//! Threshold calibration at the live gallery size.
//!
//! **Non-mates, from the gallery itself.** A sample of enrolled templates is used as probes,
//! each searched over the whole gallery with the engine's own batched search and precision
//! (`GallerySnapshot::identify_batch_with`); the probe's own subject is left out by taking the
//! best score of any *other* subject. That best non-mate score is exactly what decides
//! whether a stranger is taken for someone enrolled, so the false-positive identification
//! rate at threshold `t` is the share of probes whose best non-mate score reaches `t`:
//! `FPIR(t) = #{s >= t} / n`, at today's gallery size N, without labelled data. (An enrolled
//! template is a clean capture; live probes are noisier, which makes strangers score a little
//! lower, so this errs on the safe side.)
//!
//! **Growth.** If the N non-mate scores of one probe behave as independent draws with CDF F,
//! the best of them has CDF F^N, and the best of kN has (F^N)^k. So FPIR at k times the
//! registry follows from today's without fitting anything: `FPIR_kN(t) = 1 - (1 - FPIR_N(t))^k`
//! (the *best-of-N model*; correlated faces such as twins make it optimistic).
//!
//! **Mates** come from the entry log (card-verified 1:1 scores: the card names the person, so
//! the score is a mated pair's; an impostor with someone else's card counts as a mate and
//! makes FNIR look worse, never better) or from a labelled set. `FNIR(t) = #{s < t} / m`;
//! at 1:N this ignores the (small) chance that a stranger outscores the mate.
//!
//! Confidence: FPIR's 95% interval is Wilson's score interval for a binomial proportion;
//! the threshold's is the pair of order statistics whose ranks bound the binomial count.
//!
//! **Checking the estimate.** Given faces of people known not to be enrolled (a site's own
//! test captures, or the load generator's strangers), [`stranger_scores`] measures FPIR
//! directly and [`check_strangers`] tests the estimate against it, threshold by threshold.

mod report;

use gatewarden_protocol::{CheckKind, Outcome, SubjectId, UnixMillis};

use std::path::Path;

use crate::Config;
use crate::gallery::{GalleryOptions, GallerySnapshot, Identification, LiveGallery};
use crate::store::{EntryArchive, Store, StoreError};

pub use report::{CalibrationReport, CurvePoint, Inputs, ThresholdRow};

/// Probes searched per batch: large enough for the batched scan to pay off, small enough to
/// report progress often.
pub const BATCH: usize = 256;

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_964;

/// Opens a stopped site's gallery as a server would (segments, then the templates the store
/// holds beyond them), for calibrating outside a server.
///
/// # Errors
/// [`GalleryError::Locked`](crate::gallery::GalleryError::Locked) while a server runs on the
/// site, and the store's and gallery's own errors.
pub fn open_site_gallery(data_dir: &Path, config: &Config) -> Result<LiveGallery, crate::Error> {
    let cfg = &config.engine;
    let location = config
        .store
        .clone()
        .unwrap_or(crate::store::StoreLocation::Sqlite);
    let store = Store::open_location(
        &location,
        &data_dir.join("store"),
        &cfg.credential_key_path(data_dir),
    )?;
    let gallery = LiveGallery::open(
        &data_dir.join("gallery"),
        GalleryOptions::new(cfg.dim, cfg.precision.into()),
    )?;
    crate::engine::load_templates(&store, &gallery)?;
    Ok(gallery)
}

/// Picks up to `n` probe templates from the gallery, spread at random (seeded) over its rows.
pub fn sample_probes(
    snapshot: &GallerySnapshot,
    n: usize,
    seed: u64,
) -> Vec<(SubjectId, Vec<f32>)> {
    let rows = snapshot.row_positions();
    if rows == 0 || n == 0 {
        return Vec::new();
    }
    let positions = if n >= rows {
        (0..rows).collect()
    } else {
        distinct_positions(rows, n, seed)
    };
    snapshot.templates_at(&positions)
}

/// `n` distinct positions below `rows` (n < rows), sorted.
fn distinct_positions(rows: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix(seed);
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < n {
        picked.insert((rng.next() % rows as u64) as usize);
    }
    picked.into_iter().collect()
}

/// SplitMix64: a tiny seeded generator, enough to spread probes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The best non-mate score of each probe: leave-one-out 1:N over the whole gallery, in
/// batches of [`BATCH`] on `threads` threads; `progress(done, total)` after each batch. A
/// probe for which the gallery holds no other subject gives no score.
pub fn nonmate_scores(
    snapshot: &GallerySnapshot,
    probes: &[(SubjectId, Vec<f32>)],
    threads: usize,
    progress: impl FnMut(usize, usize),
) -> Vec<f32> {
    let queries: Vec<&[f32]> = probes.iter().map(|(_, v)| v.as_slice()).collect();
    best_scores(snapshot, &queries, threads, progress, |i, id| {
        match id.best {
            Some((s, _)) if s == probes[i].0 => id.runner_up,
            other => other,
        }
        .map(|(_, score)| score)
    })
}

/// The best score of each stranger (a face of someone never enrolled) over the whole
/// gallery: what the 1:N search compares with the identify threshold, so the share at or
/// above `t` is the *measured* FPIR at `t`, the ground truth the leave-one-out estimate is
/// checked against ([`check_strangers`]).
pub fn stranger_scores(
    snapshot: &GallerySnapshot,
    strangers: &[&[f32]],
    threads: usize,
    progress: impl FnMut(usize, usize),
) -> Vec<f32> {
    best_scores(snapshot, strangers, threads, progress, |_, id| {
        id.best.map(|(_, score)| score)
    })
}

/// One score per query (where `pick` gives one), searched in batches of [`BATCH`].
fn best_scores(
    snapshot: &GallerySnapshot,
    queries: &[&[f32]],
    threads: usize,
    mut progress: impl FnMut(usize, usize),
    pick: impl Fn(usize, Identification) -> Option<f32>,
) -> Vec<f32> {
    let mut scores = Vec::with_capacity(queries.len());
    for (i, chunk) in queries.chunks(BATCH).enumerate() {
        let found = snapshot.identify_batch_with(chunk, threads.max(1));
        for (j, id) in found.into_iter().enumerate() {
            scores.extend(pick(i * BATCH + j, id));
        }
        progress((i * BATCH + chunk.len()).min(queries.len()), queries.len());
    }
    scores
}

/// Card-verified 1:1 scores recorded in `[since, until)`: entries whose card was known
/// (Credential passed) and whose face was live, with the FaceMatch score.
///
/// # Errors
/// The archive's read errors.
pub fn recorded_mate_scores(
    archive: &EntryArchive,
    since: UnixMillis,
    until: UnixMillis,
) -> Result<Vec<f32>, StoreError> {
    let mut out = Vec::new();
    archive.for_each(since, until, |e| {
        let outcome = |kind| e.checks.iter().find(|c| c.kind == kind);
        let card = outcome(CheckKind::Credential).is_some_and(|c| c.outcome == Outcome::Pass);
        let live = outcome(CheckKind::Liveness).is_some_and(|c| c.outcome == Outcome::Pass);
        if let Some(score) = outcome(CheckKind::FaceMatch).and_then(|c| c.value)
            && card
            && live
        {
            out.push(score as f32);
        }
    })?;
    Ok(out)
}

/// Scores sorted ascending, NaN dropped, with the rates read off them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores(Vec<f32>);

impl Scores {
    /// Sorts `scores` (dropping NaN).
    pub fn new(mut scores: Vec<f32>) -> Self {
        scores.retain(|s| !s.is_nan());
        scores.sort_by(f32::total_cmp);
        Self(scores)
    }

    /// How many scores.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many scores are at or above `t`.
    pub fn at_or_above(&self, t: f32) -> usize {
        self.0.len() - self.0.partition_point(|&s| s < t)
    }

    /// Share of scores at or above `t` (FPIR for non-mates); 0 when empty.
    pub fn share_at_or_above(&self, t: f32) -> f64 {
        ratio(self.at_or_above(t), self.0.len())
    }

    /// Share of scores below `t` (FNIR for mates); 0 when empty.
    pub fn share_below(&self, t: f32) -> f64 {
        ratio(self.0.len() - self.at_or_above(t), self.0.len())
    }

    /// The lowest threshold whose share at or above it is at most `target`: just above the
    /// score of rank `floor(target * n) + 1` from the top. `None` when there are no scores.
    pub fn threshold_for(&self, target: f64) -> Option<f32> {
        self.threshold_allowing(allowed(target, self.0.len()))
    }

    /// The threshold's 95% interval: the thresholds allowing the binomial count's bounds.
    pub fn threshold_interval(&self, target: f64) -> Option<(f32, f32)> {
        let n = self.0.len() as f64;
        let expected = target.clamp(0.0, 1.0) * n;
        let spread = Z95 * (expected * (1.0 - target.clamp(0.0, 1.0))).sqrt();
        let fewest = (expected - spread).floor().max(0.0) as usize;
        let most = (expected + spread).ceil() as usize;
        Some((
            self.threshold_allowing(most)?,
            self.threshold_allowing(fewest)?,
        ))
    }

    /// The lowest threshold with at most `k` scores at or above it.
    fn threshold_allowing(&self, k: usize) -> Option<f32> {
        let n = self.0.len();
        if n == 0 {
            return None;
        }
        if k >= n {
            return self.0.first().copied();
        }
        self.0.get(n - 1 - k).map(|s| s.next_up())
    }

    /// The scores, ascending.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }
}

fn allowed(target: f64, n: usize) -> usize {
    (target.clamp(0.0, 1.0) * n as f64 + 1e-9).floor() as usize
}

fn ratio(k: usize, n: usize) -> f64 {
    if n == 0 { 0.0 } else { k as f64 / n as f64 }
}

/// FPIR at `factor` times today's registry under the best-of-N model.
pub fn fpir_at_scale(fpir: f64, factor: f64) -> f64 {
    1.0 - (1.0 - fpir.clamp(0.0, 1.0)).powf(factor)
}

/// The FPIR today that gives `target` at `factor` times the registry (the inverse of
/// [`fpir_at_scale`]).
pub fn target_today_for_scale(target: f64, factor: f64) -> f64 {
    1.0 - (1.0 - target.clamp(0.0, 1.0)).powf(1.0 / factor)
}

/// Wilson's 95% score interval for `k` successes in `n` trials.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The leave-one-out estimate against strangers' measured FPIR at a few thresholds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StrangerCheck {
    /// Strangers searched.
    pub strangers: usize,
    /// Where they came from.
    pub source: String,
    /// One row per threshold compared, ascending.
    pub rows: Vec<StrangerRow>,
    /// True when every row agrees.
    pub agrees: bool,
}

/// Estimated and measured FPIR at one threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StrangerRow {
    /// The threshold.
    pub threshold: f32,
    /// FPIR estimated from the gallery's own templates (leave-one-out).
    pub estimated: f64,
    /// Its 95% Wilson interval.
    pub estimated_interval: (f64, f64),
    /// FPIR measured on the strangers.
    pub measured: f64,
    /// Its 95% Wilson interval.
    pub measured_interval: (f64, f64),
    /// The two-proportion z statistic of the difference (0 when both are 0 or 1).
    pub z: f64,
    /// `|z| <= 1.96`: the difference is within what sampling alone explains at 95%.
    pub agrees: bool,
}

/// Compares the estimate (`nonmates`, leave-one-out) with strangers' best scores at the
/// `thresholds` given (typically the policy's) and where the estimate is 10%, 1% and 0.1%,
/// so the check also runs where FPIR is large enough to be measured.
///
/// Agreement is a two-proportion z-test at 95%: the estimate and the measurement are two
/// binomial samples of one FPIR if their difference is within 1.96 standard errors of the
/// pooled proportion.
pub fn check_strangers(
    nonmates: &Scores,
    strangers: &Scores,
    thresholds: &[f32],
    source: &str,
) -> StrangerCheck {
    let mut at: Vec<f32> = thresholds
        .iter()
        .copied()
        .chain(
            [0.1, 0.01, 0.001]
                .iter()
                .filter_map(|&r| nonmates.threshold_for(r)),
        )
        .filter(|t| t.is_finite())
        .collect();
    at.sort_by(f32::total_cmp);
    at.dedup();
    let rows: Vec<StrangerRow> = at
        .into_iter()
        .map(|t| stranger_row(nonmates, strangers, t))
        .collect();
    StrangerCheck {
        strangers: strangers.len(),
        source: source.to_owned(),
        agrees: !strangers.is_empty() && rows.iter().all(|r| r.agrees),
        rows,
    }
}

impl StrangerCheck {
    /// The check for people: one line per threshold, then the verdict.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "\nestimate against {} strangers ({}):\n",
            self.strangers, self.source
        );
        for r in &self.rows {
            let ((el, eh), (ml, mh)) = (r.estimated_interval, r.measured_interval);
            let _ = writeln!(
                out,
                "  threshold {:.4}: estimated FPIR {:.5} (95% {el:.5} to {eh:.5}), measured \
                 {:.5} (95% {ml:.5} to {mh:.5}), z {:+.2} {}",
                r.threshold,
                r.estimated,
                r.measured,
                r.z,
                if r.agrees { "agrees" } else { "DIFFERS" }
            );
        }
        let _ = writeln!(
            out,
            "{}",
            if self.agrees {
                "the estimate agrees with the strangers at every threshold (two-proportion \
                 test, 95%)"
            } else {
                "the estimate DIFFERS from the strangers: the gallery's own templates are not \
                 a fair model of this site's strangers; trust the measured rates"
            }
        );
        out
    }
}

fn stranger_row(nonmates: &Scores, strangers: &Scores, t: f32) -> StrangerRow {
    let (k1, n1) = (nonmates.at_or_above(t), nonmates.len());
    let (k2, n2) = (strangers.at_or_above(t), strangers.len());
    let z = two_proportion_z(k1, n1, k2, n2);
    StrangerRow {
        threshold: t,
        estimated: ratio(k1, n1),
        estimated_interval: wilson(k1, n1),
        measured: ratio(k2, n2),
        measured_interval: wilson(k2, n2),
        z,
        agrees: n1 > 0 && n2 > 0 && z.abs() <= Z95,
    }
}

/// `(p1 - p2) / se` with the pooled proportion's standard error; 0 when the pooled
/// proportion is 0 or 1 (both samples agree exactly) or a sample is empty.
fn two_proportion_z(k1: usize, n1: usize, k2: usize, n2: usize) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 0.0;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (k1 + k2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        0.0
    } else {
        (k1 as f64 / n1f - k2 as f64 / n2f) / se
    }
}

/// A scheduled FPIR estimate at one threshold (the server's `/metrics`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FpirEstimate {
    /// The threshold the estimate is for (the default identify threshold).
    pub threshold: f32,
    /// Estimated FPIR at that threshold.
    pub fpir: f64,
    /// Lower end of its 95% interval.
    pub low: f64,
    /// Upper end of its 95% interval.
    pub high: f64,
    /// Probes used.
    pub probes: usize,
    /// Templates in the gallery.
    pub gallery_size: usize,
    /// When it was made.
    pub at: UnixMillis,
}

/// Estimates FPIR at `threshold` with `sample` probes on one thread (off the hot path).
pub fn estimate_fpir(
    snapshot: &GallerySnapshot,
    threshold: f32,
    sample: usize,
    seed: u64,
    at: UnixMillis,
) -> FpirEstimate {
    let probes = sample_probes(snapshot, sample, seed);
    let scores = Scores::new(nonmate_scores(snapshot, &probes, 1, |_, _| {}));
    let k = scores.at_or_above(threshold);
    let (low, high) = wilson(k, scores.len());
    FpirEstimate {
        threshold,
        fpir: scores.share_at_or_above(threshold),
        low,
        high,
        probes: scores.len(),
        gallery_size: snapshot.len(),
        at,
    }
}

#[cfg(test)]
mod tests;

//! The calibration report: today's thresholds' error rates, the threshold that meets the
//! target, and how FPIR moves as the registry grows.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Scores, fpir_at_scale, target_today_for_scale, wilson};
use crate::policy::PolicyBook;

/// The calibration of one site.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CalibrationReport {
    /// The FPIR asked for.
    pub target_fpir: f64,
    /// Templates in the gallery (N).
    pub gallery_size: usize,
    /// Non-mate probes searched.
    pub probes: usize,
    /// Mated scores behind FNIR (0: FNIR unknown).
    pub mates: usize,
    /// Where the mated scores came from.
    pub mate_source: String,
    /// The scan precision used.
    pub precision: String,
    /// FPIR at the default identify threshold.
    pub fpir: f64,
    /// FNIR at the default identify threshold (1:N), `None` without mated scores.
    pub fnir: Option<f64>,
    /// One row per distinct threshold set (the default, then each market with its own).
    pub thresholds: Vec<ThresholdRow>,
    /// The lowest identify threshold whose FPIR meets the target at today's size.
    pub recommended_threshold: Option<f32>,
    /// 95% interval of that threshold.
    pub threshold_interval: Option<(f32, f32)>,
    /// The safety margin: the interval's upper end minus the threshold.
    pub margin: Option<f32>,
    /// FNIR at the recommended threshold.
    pub fnir_at_recommended: Option<f64>,
    /// The threshold meeting the target if the registry doubles.
    pub threshold_for_2x: Option<f32>,
    /// The threshold meeting the target at ten times the registry.
    pub threshold_for_10x: Option<f32>,
    /// The extrapolation model, in words.
    pub model: String,
    /// The policy change to make, in words (never made by the tool).
    pub change: String,
    /// FPIR and FNIR against the threshold, for plots.
    pub curve: Vec<CurvePoint>,
}

/// Error rates at one set of thresholds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ThresholdRow {
    /// `default` or `market 7`.
    pub scope: String,
    /// The 1:N threshold.
    pub identify_threshold: f32,
    /// FPIR there, today.
    pub fpir: f64,
    /// 95% interval of FPIR.
    pub fpir_interval: (f64, f64),
    /// FPIR there if the registry doubles.
    pub fpir_2x: f64,
    /// FPIR there at ten times the registry.
    pub fpir_10x: f64,
    /// FNIR at the 1:N threshold, without mated scores `None`.
    pub fnir: Option<f64>,
    /// The 1:1 threshold.
    pub verify_threshold: f32,
    /// FNIR at the 1:1 threshold.
    pub fnir_verify: Option<f64>,
}

/// One point of the curves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CurvePoint {
    /// The threshold.
    pub threshold: f32,
    /// FPIR at it, today.
    pub fpir: f64,
    /// FPIR at it, ten times the registry.
    pub fpir_10x: f64,
    /// FNIR at it (0 without mated scores).
    pub fnir: f64,
}

/// What a report is made from.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// Best non-mate score per probe.
    pub nonmates: &'a Scores,
    /// Mated scores (maybe none).
    pub mates: &'a Scores,
    /// Where they came from.
    pub mate_source: &'a str,
    /// The policy in force.
    pub policy: &'a PolicyBook,
    /// The FPIR target.
    pub target: f64,
    /// Templates in the gallery.
    pub gallery_size: usize,
    /// The scan precision's name.
    pub precision: &'a str,
}

impl CalibrationReport {
    /// Builds the report.
    pub fn new(i: &Inputs<'_>) -> Self {
        let fnir = |t: f32| (!i.mates.is_empty()).then(|| i.mates.share_below(t));
        let thresholds = rows(i, &fnir);
        let current = i.policy.default_policy().identify_threshold();
        let recommended = i.nonmates.threshold_for(i.target);
        let interval = i.nonmates.threshold_interval(i.target);
        let scaled = |k: f64| {
            i.nonmates
                .threshold_for(target_today_for_scale(i.target, k))
        };
        let mut report = Self {
            target_fpir: i.target,
            gallery_size: i.gallery_size,
            probes: i.nonmates.len(),
            mates: i.mates.len(),
            mate_source: i.mate_source.to_owned(),
            precision: i.precision.to_owned(),
            fpir: i.nonmates.share_at_or_above(current),
            fnir: fnir(current),
            thresholds,
            recommended_threshold: recommended,
            threshold_interval: interval,
            margin: recommended.zip(interval).map(|(t, (_, hi))| hi - t),
            fnir_at_recommended: recommended.and_then(fnir),
            threshold_for_2x: scaled(2.0),
            threshold_for_10x: scaled(10.0),
            model: "best-of-N: the best of N independent non-mate scores has CDF F^N, so \
                    FPIR(kN) = 1 - (1 - FPIR(N))^k"
                .to_owned(),
            change: String::new(),
            curve: curve(i),
        };
        report.change = report.advice(current);
        report
    }

    /// The line to change in the policy, or why none is needed. The advice is judged
    /// against the threshold's 95% interval, so that a small sample never talks anyone into
    /// lowering a threshold.
    fn advice(&self, current: f32) -> String {
        let Some((_, high)) = self.threshold_interval else {
            return "no advice: no non-mate scores (is the gallery empty?)".to_owned();
        };
        if current >= high {
            let (_, fpir_high) = self
                .thresholds
                .first()
                .map_or((0.0, 1.0), |r| r.fpir_interval);
            let caveat = if fpir_high > self.target_fpir {
                format!(
                    "; {} probes bound FPIR there only to {fpir_high:.5}: a larger --sample \
                     narrows that",
                    self.probes
                )
            } else {
                String::new()
            };
            return format!(
                "no change needed: identify_threshold = {current} is at or above the threshold \
                 meeting FPIR {} (95% upper end {high:.4}){caveat}",
                self.target_fpir
            );
        }
        // Round the interval's upper end up to the policy's usual two decimals.
        let advised = (f64::from(high) * 100.0).ceil() / 100.0;
        format!(
            "set identify_threshold = {advised:.2} in [default] of the policy file (now \
             {current}); this tool never edits the policy"
        )
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "gallery: {} templates, precision {}; {} non-mate probes (leave-one-out 1:N); {} \
             mated scores ({})",
            self.gallery_size, self.precision, self.probes, self.mates, self.mate_source
        );
        let _ = writeln!(out, "target FPIR: {}", self.target_fpir);
        out.push_str("\ncurrent thresholds:\n");
        for r in &self.thresholds {
            render_row(&mut out, r);
        }
        out.push('\n');
        match (self.recommended_threshold, self.threshold_interval) {
            (Some(t), Some((lo, hi))) => {
                let _ = writeln!(
                    out,
                    "threshold meeting FPIR {} today: {t:.4} (95% interval {lo:.4} to {hi:.4}; \
                     margin {:.4}); FNIR there {}",
                    self.target_fpir,
                    self.margin.unwrap_or(0.0),
                    pct(self.fnir_at_recommended)
                );
            }
            _ => out.push_str("no threshold: no non-mate scores\n"),
        }
        let opt = |t: Option<f32>| t.map_or_else(|| "-".to_owned(), |t| format!("{t:.4}"));
        let _ = writeln!(
            out,
            "threshold meeting it at 2x the registry: {}; at 10x: {}",
            opt(self.threshold_for_2x),
            opt(self.threshold_for_10x)
        );
        let _ = writeln!(out, "model: {}", self.model);
        let _ = writeln!(out, "\n{}", self.change);
        out
    }
}

fn render_row(out: &mut String, r: &ThresholdRow) {
    let (lo, hi) = r.fpir_interval;
    let _ = writeln!(
        out,
        "  {:<10} identify {:.3}: FPIR {:.5} (95% {lo:.5} to {hi:.5}), at 2x {:.5}, at 10x {:.5}; \
         FNIR {}",
        r.scope,
        r.identify_threshold,
        r.fpir,
        r.fpir_2x,
        r.fpir_10x,
        pct(r.fnir)
    );
    let _ = writeln!(
        out,
        "  {:<10} verify   {:.3}: FNIR {}",
        "",
        r.verify_threshold,
        pct(r.fnir_verify)
    );
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(
        || "unknown (no mated scores)".to_owned(),
        |v| format!("{v:.5}"),
    )
}

/// The default's row, then one per market whose thresholds differ from it.
fn rows(i: &Inputs<'_>, fnir: &dyn Fn(f32) -> Option<f64>) -> Vec<ThresholdRow> {
    let row = |scope: String, p: &crate::policy::MarketPolicy| {
        let t = p.identify_threshold();
        let fpir = i.nonmates.share_at_or_above(t);
        ThresholdRow {
            scope,
            identify_threshold: t,
            fpir,
            fpir_interval: wilson(i.nonmates.at_or_above(t), i.nonmates.len()),
            fpir_2x: fpir_at_scale(fpir, 2.0),
            fpir_10x: fpir_at_scale(fpir, 10.0),
            fnir: fnir(t),
            verify_threshold: p.verify_threshold(),
            fnir_verify: fnir(p.verify_threshold()),
        }
    };
    let default = i.policy.default_policy();
    let mut out = vec![row("default".to_owned(), default)];
    for m in i.policy.overridden_markets() {
        let p = i.policy.for_market(m);
        let same = p.identify_threshold() == default.identify_threshold()
            && p.verify_threshold() == default.verify_threshold();
        if !same {
            out.push(row(format!("market {}", m.0), p));
        }
    }
    out
}

/// Rates every 0.01 over the scores' range (both sets).
fn curve(i: &Inputs<'_>) -> Vec<CurvePoint> {
    let all = i.nonmates.as_slice().iter().chain(i.mates.as_slice());
    let (lo, hi) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &s| {
        (lo.min(s), hi.max(s))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return Vec::new();
    }
    let first = (lo * 100.0).floor() as i32;
    let last = (hi * 100.0).ceil() as i32;
    (first..=last)
        .map(|c| {
            let t = c as f32 / 100.0;
            let fpir = i.nonmates.share_at_or_above(t);
            CurvePoint {
                threshold: t,
                fpir,
                fpir_10x: fpir_at_scale(fpir, 10.0),
                fnir: i.mates.share_below(t),
            }
        })
        .collect()
}

//! `gatewarden calibrate`: FPIR and FNIR of the site's face thresholds at its live gallery
//! size, the threshold that meets a target FPIR, and how FPIR moves as the registry grows.
//! It never edits the policy: it prints the change to make. See
//! [`gatewarden::calibrate`] for the method.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gatewarden::calibrate::{self, CalibrationReport, Inputs, Scores, StrangerCheck};
use gatewarden::clock::{Clock, DAY_MS, SystemClock};
use gatewarden::gallery::{GalleryError, GallerySnapshot};
use gatewarden::policy::PolicyBook;
use gatewarden::store::EntryArchive;
use gatewarden_loadgen::run::svg::escape;
use gatewarden_protocol::{SubjectId, UnixMillis};
use serde::Serialize;

/// Arguments of `gatewarden calibrate`.
#[derive(Debug, clap::Args)]
pub(crate) struct CalibrateArgs {
    /// Data folder (a stopped site: a running server exports its own estimate in /metrics).
    #[arg(long, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
    /// The false-positive identification rate to meet (NIST FRVT reports 0.003 for access
    /// control).
    #[arg(long, default_value_t = 0.003)]
    target_fpir: f64,
    /// Enrolled templates used as non-mate probes (leave-one-out 1:N over the whole gallery).
    #[arg(long, default_value_t = 10_000)]
    sample: usize,
    /// Seed of the probe sample.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Search threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Days of the entry log whose card-verified 1:1 scores are the mated pairs.
    #[arg(long, default_value_t = 30)]
    mate_days: u64,
    /// A labelled set of mated probes instead of the entry log: face embeddings (.npy, f32,
    /// one row each), with --mate-subjects naming each row's person.
    #[arg(long, value_name = "FILE.npy", requires = "mate_subjects")]
    mates: Option<PathBuf>,
    /// The person of each row of --mates (.npy u64 or text, one id a line).
    #[arg(long, value_name = "FILE", requires = "mates")]
    mate_subjects: Option<PathBuf>,
    /// Faces of people known not to be enrolled (.npy, f32, one row each): their best
    /// scores measure FPIR directly, and the report tests the estimate against it at the
    /// policy's thresholds and where the estimate is 10%, 1% and 0.1% (`strangers` in JSON).
    #[arg(long, value_name = "FILE.npy")]
    strangers: Option<PathBuf>,
    /// Print JSON (`fpir`, `fnir`, `recommended_threshold`, `thresholds`, `curve`, ...).
    #[arg(long)]
    json: bool,
    /// Write the error-rate plot (SVG) here.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// The JSON document: the report and the time it took.
#[derive(Serialize)]
struct JsonReport<'a> {
    seconds: f64,
    /// Of which opening the gallery (segments and the store's newer templates).
    seconds_open: f64,
    #[serde(flatten)]
    report: &'a CalibrationReport,
    /// The estimate against measured strangers, with --strangers.
    strangers: Option<&'a StrangerCheck>,
}

pub(crate) fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.target_fpir > 0.0 && args.target_fpir < 1.0,
        "--target-fpir {} must lie strictly between 0 and 1",
        args.target_fpir
    );
    anyhow::ensure!(args.sample > 0, "--sample must be at least 1");
    let config = super::site::open(&args.data)?;
    let policy = match &config.engine.policy {
        Some(path) => super::policy::load_or_report(&args.data.join(path))?,
        None => PolicyBook::demo(),
    };
    let started = SystemClock.instant();
    let gallery = calibrate::open_site_gallery(&args.data, &config).map_err(|e| match e {
        gatewarden::Error::Gallery(GalleryError::Locked { .. }) => anyhow::anyhow!(
            "the gallery of {} is in use: stop `gatewarden serve` to calibrate here (a running \
             server exports its own estimate as gatewarden_fpir_estimate in /metrics)",
            args.data.display()
        ),
        other => anyhow::Error::new(other).context("cannot open the site's gallery"),
    })?;
    let snapshot = gallery.snapshot();
    let seconds_open = SystemClock.instant().duration_since(started).as_secs_f64();
    anyhow::ensure!(
        snapshot.len() >= 2,
        "the gallery of {} holds {} template(s): calibration needs at least two people",
        args.data.display(),
        snapshot.len()
    );
    let nonmates = Scores::new(nonmates(&snapshot, &args));
    let (mates, source) = mates(&snapshot, &args, &config)?;
    let precision = snapshot.precision().resolve(snapshot.len()).name();
    let report = CalibrationReport::new(&Inputs {
        nonmates: &nonmates,
        mates: &Scores::new(mates),
        mate_source: &source,
        policy: &policy,
        target: args.target_fpir,
        gallery_size: snapshot.len(),
        precision,
    });
    let strangers = match &args.strangers {
        Some(path) => Some(check_strangers(&snapshot, &args, path, &nonmates, &policy)?),
        None => None,
    };
    let seconds = SystemClock.instant().duration_since(started).as_secs_f64();
    if let Some(path) = &args.plot {
        let current = policy.default_policy().identify_threshold();
        std::fs::write(path, plot(&report, current))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        let doc = JsonReport {
            seconds,
            seconds_open,
            report: &report,
            strangers: strangers.as_ref(),
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", report.render());
        if let Some(check) = &strangers {
            print!("{}", check.render());
        }
        println!("took {seconds:.1} s ({seconds_open:.1} s opening the gallery)");
    }
    Ok(())
}

fn nonmates(snapshot: &GallerySnapshot, args: &CalibrateArgs) -> Vec<f32> {
    let probes = calibrate::sample_probes(snapshot, args.sample, args.seed);
    with_progress("calibrating", "probes", |progress| {
        calibrate::nonmate_scores(snapshot, &probes, threads(args), progress)
    })
}

fn threads(args: &CalibrateArgs) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Runs `work` with a progress callback: on a terminal a live counter, elsewhere a line per
/// tenth.
fn with_progress<T>(
    what: &str,
    unit: &str,
    work: impl FnOnce(&mut dyn FnMut(usize, usize)) -> T,
) -> T {
    let tty = std::io::stderr().is_terminal();
    let mut last_tenth = 0;
    let mut progress = |done: usize, total: usize| {
        let tenth = done * 10 / total.max(1);
        if tty {
            eprint!("\r{what}: {done} / {total} {unit}");
        } else if tenth > last_tenth {
            last_tenth = tenth;
            eprintln!("{what}: {done} / {total} {unit}");
        }
    };
    let out = work(&mut progress);
    if tty {
        eprintln!();
    }
    out
}

/// Searches the strangers of `path` and tests the estimate against them.
fn check_strangers(
    snapshot: &GallerySnapshot,
    args: &CalibrateArgs,
    path: &Path,
    nonmates: &Scores,
    policy: &PolicyBook,
) -> anyhow::Result<StrangerCheck> {
    let matrix = gatewarden::npy::read_f32_matrix(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        matrix.dim == snapshot.dim(),
        "{} holds {}-dimensional faces, the gallery {}",
        path.display(),
        matrix.dim,
        snapshot.dim()
    );
    anyhow::ensure!(matrix.rows > 0, "{} holds no faces", path.display());
    if let Some(bad) = matrix
        .iter_rows()
        .position(|r| r.iter().any(|v| !v.is_finite()))
    {
        anyhow::bail!(
            "row {bad} of {} holds a value that is not a finite number",
            path.display()
        );
    }
    let rows: Vec<&[f32]> = matrix.iter_rows().collect();
    let scores = with_progress("strangers", "faces", |progress| {
        calibrate::stranger_scores(snapshot, &rows, threads(args), progress)
    });
    let mut thresholds: Vec<f32> = vec![policy.default_policy().identify_threshold()];
    thresholds.extend(
        policy
            .overridden_markets()
            .into_iter()
            .map(|m| policy.for_market(m).identify_threshold()),
    );
    Ok(calibrate::check_strangers(
        nonmates,
        &Scores::new(scores),
        &thresholds,
        &path.display().to_string(),
    ))
}

/// Mated scores: the labelled set if given, else the entry log's card-verified matches.
fn mates(
    snapshot: &GallerySnapshot,
    args: &CalibrateArgs,
    config: &gatewarden::Config,
) -> anyhow::Result<(Vec<f32>, String)> {
    if let (Some(vectors), Some(ids)) = (&args.mates, &args.mate_subjects) {
        return labelled_mates(snapshot, vectors, ids);
    }
    let store = args.data.join("store");
    let archive = EntryArchive::open_at(config.store.as_ref(), &store)
        .with_context(|| format!("cannot read the entry history in {}", store.display()))?;
    let now = SystemClock.now();
    let since = UnixMillis(now.0.saturating_sub(args.mate_days.saturating_mul(DAY_MS)));
    let scores = calibrate::recorded_mate_scores(&archive, since, UnixMillis(now.0 + 1))?;
    let source = format!(
        "card-verified 1:1 entries of the last {} days",
        args.mate_days
    );
    Ok((scores, source))
}

fn labelled_mates(
    snapshot: &GallerySnapshot,
    vectors: &Path,
    ids: &Path,
) -> anyhow::Result<(Vec<f32>, String)> {
    let matrix = gatewarden::npy::read_f32_matrix(vectors)
        .with_context(|| format!("cannot read {}", vectors.display()))?;
    let subjects =
        gatewarden::npy::read_ids(ids).with_context(|| format!("cannot read {}", ids.display()))?;
    anyhow::ensure!(
        matrix.rows == subjects.len(),
        "{} has {} rows but {} names {} people",
        vectors.display(),
        matrix.rows,
        ids.display(),
        subjects.len()
    );
    anyhow::ensure!(
        matrix.dim == snapshot.dim(),
        "{} holds {}-dimensional faces, the gallery {}",
        vectors.display(),
        matrix.dim,
        snapshot.dim()
    );
    let mut unknown = 0;
    let scores: Vec<f32> = matrix
        .iter_rows()
        .zip(&subjects)
        .filter_map(|(row, &id)| {
            let s = snapshot.verify(SubjectId(id), row);
            unknown += usize::from(s.is_none());
            s
        })
        .collect();
    anyhow::ensure!(
        unknown == 0,
        "{unknown} of the {} people in {} have no template in the gallery",
        subjects.len(),
        ids.display()
    );
    Ok((scores, format!("labelled set {}", vectors.display())))
}

/// A curve of the plot: its name, colour and rate.
type Series = (
    &'static str,
    &'static str,
    fn(&calibrate::CurvePoint) -> f64,
);

/// Error rates against the threshold on a log scale (a DET-style view: both error kinds, and
/// FPIR at ten times the registry), with the current and the recommended thresholds marked.
fn plot(r: &CalibrationReport, current: f32) -> String {
    const W: f64 = 720.0;
    const H: f64 = 420.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    let (t0, t1) = match (r.curve.first(), r.curve.last()) {
        (Some(a), Some(b)) if b.threshold > a.threshold => {
            (f64::from(a.threshold), f64::from(b.threshold))
        }
        _ => (0.0, 1.0),
    };
    let x = |t: f64| L + (t - t0) / (t1 - t0) * (W - L - R);
    // Rates from 1e-5 to 1, by decade; zero is drawn at the bottom.
    let y = |rate: f64| {
        let decades = rate.max(1e-5).log10().clamp(-5.0, 0.0);
        T + (-decades / 5.0) * (H - T - B)
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{L}\" y=\"22\" font-size=\"14\">{}</text>\n",
        escape(&format!(
            "Error rates against the identify threshold: {} templates, {} probes, {} mates",
            r.gallery_size, r.probes, r.mates
        ))
    );
    for d in 0..=5 {
        let yy = y(10f64.powi(-d));
        let _ = writeln!(
            s,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">1e-{d}</text>",
            W - R,
            L - 6.0,
            yy + 4.0
        );
    }
    let steps = 10;
    for i in 0..=steps {
        let t = t0 + (t1 - t0) * f64::from(i) / f64::from(steps);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.2}</text>",
            x(t),
            H - B + 18.0
        );
    }
    let series: [Series; 3] = [
        ("FPIR today", "#c0392b", |p| p.fpir),
        ("FPIR at 10x registry", "#e67e22", |p| p.fpir_10x),
        ("FNIR", "#2471a3", |p| p.fnir),
    ];
    for (i, (name, colour, rate)) in series.iter().enumerate() {
        if *name == "FNIR" && r.mates == 0 {
            continue;
        }
        let points: Vec<String> = r
            .curve
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(f64::from(p.threshold)), y(rate(p))))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{}</text>",
            points.join(" "),
            W - R - 170.0,
            T + 16.0 + 16.0 * i as f64,
            escape(name)
        );
    }
    let mut mark = |t: f64, label: &str, colour: &str| {
        let xx = x(t);
        let _ = writeln!(
            s,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{T}\" y2=\"{}\" stroke=\"{colour}\" \
             stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            H - B,
            xx + 4.0,
            H - B - 6.0,
            escape(label)
        );
    };
    mark(f64::from(current), &format!("current {current:.3}"), "#555");
    if let Some(t) = r.recommended_threshold {
        mark(
            f64::from(t),
            &format!("meets {} {t:.3}", r.target_fpir),
            "#1e8449",
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">identify threshold (cosine)</text>\n</svg>",
        (L + W - R) / 2.0,
        H - 10.0
    );
    s
}

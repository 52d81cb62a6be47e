//! `gatewarden search`: top-k of query vectors over a segment file, with timings. Exact at
//! f32 and int8; at binary precision the scores are exact but a row outside the shortlist
//! can be missed (see `gatewarden::index::flat`).
//!
//! Prints throughput and per-batch latency percentiles on stderr, and writes every query's
//! top-k, in query order, as `{"k": K, "results": [{"ids": [...], "scores": [...]}, ...]}`
//! (ids are the gallery's subject ids: row numbers for a gallery built without `--ids`), so
//! results can be checked against any other tool. Scores are raw inner products: queries are
//! not normalized (normalize them, and build with `--normalize`, for cosines).

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gatewarden::clock::{Clock, SystemClock};
use gatewarden::gallery::{Gallery, Precision};
use gatewarden::index::{BINARY_CANDIDATES, BatchPath, Kernels, SearchOptions, TopK, search};
use gatewarden::npy;
use serde::Serialize;

/// Arguments of `gatewarden search`.
#[derive(Debug, clap::Args)]
pub(crate) struct SearchArgs {
    /// Segment file (from `gatewarden gallery build`).
    #[arg(long)]
    gallery: PathBuf,
    /// float32 (Q, d) .npy of queries.
    #[arg(long)]
    queries: PathBuf,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Queries per search call (a micro-batch shares one pass over the gallery).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Threads each search is split over.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Scan precision: f32, int8, binary or auto (default: the best the gallery holds).
    #[arg(long, value_parser = super::gallery::parse_precision)]
    precision: Option<Precision>,
    /// Binary scans: rows shortlisted per query for the exact re-rank (at least 4k are).
    #[arg(long, default_value_t = BINARY_CANDIDATES)]
    candidates: usize,
    /// Binary scans: read every whole code instead of prefiltering on the code heads.
    #[arg(long)]
    no_prefilter: bool,
    /// Write every query's top-k here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the timing summary here as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Untimed batches run first (page faults, caches).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Verify the gallery's checksum before searching.
    #[arg(long)]
    verify: bool,
    /// Map the file (pre-faulted) instead of reading it into huge-page-backed memory.
    #[arg(long)]
    mapped: bool,
    /// f32 batch strategy: auto, blocked (SIMD tiles) or gemm (faer).
    #[arg(long, default_value = "auto", value_parser = parse_batch_path)]
    batch_path: BatchPath,
}

fn parse_batch_path(s: &str) -> Result<BatchPath, String> {
    match s {
        "auto" => Ok(BatchPath::Auto),
        "blocked" => Ok(BatchPath::Blocked),
        "gemm" => Ok(BatchPath::Gemm),
        other => Err(format!(
            "unknown batch path {other:?}: use auto, blocked or gemm"
        )),
    }
}

#[derive(Serialize)]
struct Results {
    k: usize,
    results: Vec<QueryResult>,
}

#[derive(Serialize)]
struct QueryResult {
    ids: Vec<u64>,
    scores: Vec<f32>,
}

/// Timing summary (`--report`).
#[derive(Serialize)]
struct Report {
    gallery_rows: usize,
    dim: usize,
    queries: usize,
    k: usize,
    batch: usize,
    threads: usize,
    precision: &'static str,
    isa: String,
    seconds: f64,
    queries_per_second: f64,
    batch_latency_ms_p50: f64,
    batch_latency_ms_p99: f64,
    batch_latency_ms_mean: f64,
}

pub(crate) fn run(args: SearchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.threads == 0 || args.candidates == 0 {
        bail!("--batch, --threads and --candidates must be at least 1");
    }
    let kernels = Kernels::select()?;
    let g = if args.mapped {
        Gallery::open_with(&args.gallery, true)?
    } else {
        Gallery::load(&args.gallery)?
    };
    if args.verify {
        g.verify()?;
    }
    let precision = args
        .precision
        .unwrap_or_else(|| g.precision())
        .resolve(g.len());
    if !g.supports(precision) {
        bail!(
            "{} has no {} codes; rebuild it with `gatewarden gallery build --precision {}` or search with --precision f32",
            args.gallery.display(),
            precision.name(),
            precision.name()
        );
    }
    let q = npy::read_f32_matrix(&args.queries)?;
    if q.dim != g.dim() {
        bail!(
            "queries have dimension {} but the gallery has {}",
            q.dim,
            g.dim()
        );
    }
    let rows = g
        .rows()
        .context("gallery rows are inconsistent; run `gatewarden gallery verify`")?;
    let parts = [rows];
    let opts = SearchOptions {
        precision,
        threads: args.threads,
        batch: args.batch_path,
        candidates: args.candidates,
        prefilter: !args.no_prefilter,
    };
    let queries: Vec<&[f32]> = q.iter_rows().collect();
    let batches: Vec<&[&[f32]]> = queries.chunks(args.batch).collect();
    for b in batches
        .iter()
        .cycle()
        .take(args.warmup.min(batches.len() * 4))
    {
        let _ = search(kernels, &parts, b, &TopK::new(args.k), &opts);
    }

    let clock = SystemClock;
    let mut latencies = Vec::with_capacity(batches.len());
    let mut results = Vec::with_capacity(queries.len());
    let start = clock.instant();
    for b in &batches {
        let t0 = clock.instant();
        let found = search(kernels, &parts, b, &TopK::new(args.k), &opts);
        latencies.push(clock.instant().duration_since(t0).as_secs_f64() * 1e3);
        results.extend(found);
    }
    let seconds = clock.instant().duration_since(start).as_secs_f64();

    latencies.sort_by(f64::total_cmp);
    let report = Report {
        gallery_rows: g.len(),
        dim: g.dim(),
        queries: queries.len(),
        k: args.k,
        batch: args.batch,
        threads: args.threads,
        precision: precision.name(),
        isa: kernels.isa().to_string(),
        seconds,
        queries_per_second: queries.len() as f64 / seconds.max(1e-12),
        batch_latency_ms_p50: percentile(&latencies, 0.50),
        batch_latency_ms_p99: percentile(&latencies, 0.99),
        batch_latency_ms_mean: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
    };
    eprintln!(
        "{} queries over {} rows (d={}, {}, {}, batch {}, {} thread(s)): {:.1} queries/s; batch latency p50 {:.3} ms, p99 {:.3} ms",
        report.queries,
        report.gallery_rows,
        report.dim,
        report.precision,
        report.isa,
        report.batch,
        report.threads,
        report.queries_per_second,
        report.batch_latency_ms_p50,
        report.batch_latency_ms_p99,
    );
    if let Some(path) = &args.report {
        write_json(path, &report)?;
    }
    if let Some(path) = &args.out {
        let results = Results {
            k: args.k,
            results: results
                .into_iter()
                .map(|t| {
                    let hits = t.into_hits();
                    QueryResult {
                        ids: hits.iter().map(|h| h.subject.0).collect(),
                        scores: hits.iter().map(|h| h.score).collect(),
                    }
                })
                .collect(),
        };
        write_json(path, &results)?;
    }
    Ok(())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    serde_json::to_writer(&mut w, value)?;
    w.write_all(b"\n")?;
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

//! `gatewarden enroll`: bulk face templates into the store (the truth) and the gallery.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gatewarden::Engine;
use gatewarden::clock::{Clock, SystemClock};
use gatewarden_protocol::SubjectId;

/// Arguments of `gatewarden enroll`.
#[derive(Debug, clap::Args)]
pub(crate) struct EnrollArgs {
    /// Templates: a float32 (N, dim) .npy file.
    #[arg(long)]
    vectors: PathBuf,
    /// Whose templates: a text file with one subject id per line (N lines), or a 1-D integer
    /// .npy file.
    #[arg(long)]
    subjects: PathBuf,
    /// Data folder.
    #[arg(long, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
    /// Skip the 1:N duplicate check against the faces already enrolled.
    #[arg(long)]
    no_duplicate_check: bool,
}

/// Templates per engine call: bounds memory and paces the progress line.
const CHUNK: usize = 5_000;

pub(crate) fn run(args: EnrollArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let config = super::site::open(&args.data)?;
    let _lock = super::site::SiteLock::acquire(&args.data, "gatewarden enroll")?;
    let engine = Engine::open(&args.data, config)
        .with_context(|| format!("cannot open data folder {}", args.data.display()))?;
    let report = enroll_files(
        &engine,
        &args.vectors,
        &args.subjects,
        !args.no_duplicate_check,
    )?;
    engine.shutdown();
    println!(
        "enrolled {} template(s); {} refused as duplicates of other people",
        report.added,
        report.duplicates.len()
    );
    for d in report.duplicates.iter().take(20) {
        println!(
            "  duplicate: subject {} looks like enrolled subject {} (score {:.3})",
            d.subject, d.existing, d.score
        );
    }
    Ok(())
}

/// Reads the two files and enrolls every row, with a progress line, then folds the new
/// templates into a gallery segment so the next start maps them instead of reloading them.
pub(crate) fn enroll_files(
    engine: &Engine,
    vectors: &Path,
    subjects: &Path,
    check_duplicates: bool,
) -> anyhow::Result<gatewarden::engine::BulkEnrollReport> {
    let matrix = gatewarden::npy::read_f32_matrix(vectors)
        .with_context(|| format!("cannot read {}", vectors.display()))?;
    let ids: Vec<SubjectId> = gatewarden::npy::read_ids(subjects)
        .with_context(|| format!("cannot read {}", subjects.display()))?
        .into_iter()
        .map(SubjectId)
        .collect();
    anyhow::ensure!(
        ids.len() == matrix.rows,
        "{} has {} rows but {} lists {} subjects; they must match line for line",
        vectors.display(),
        matrix.rows,
        subjects.display(),
        ids.len()
    );
    let dim = matrix.dim;
    // Duplicates are looked for among the faces enrolled before this file (see
    // Engine::enroll_templates for why not within the file).
    let before = check_duplicates.then(|| engine.gallery().snapshot());
    let mut total = gatewarden::engine::BulkEnrollReport::default();
    let started = SystemClock.instant();
    for (chunk_ids, chunk_rows) in ids.chunks(CHUNK).zip(matrix.data.chunks(CHUNK * dim)) {
        let rows: Vec<(SubjectId, &[f32])> = chunk_ids
            .iter()
            .copied()
            .zip(chunk_rows.chunks_exact(dim))
            .collect();
        let report = engine.enroll_templates(&rows, before.as_deref())?;
        total.added += report.added;
        total.duplicates.extend(report.duplicates);
        eprint!(
            "\renrolling: {} / {} templates ({:.0}/s)",
            total.added + total.duplicates.len(),
            ids.len(),
            (total.added + total.duplicates.len()) as f64
                / started.elapsed().as_secs_f64().max(1e-3)
        );
    }
    eprintln!();
    engine
        .gallery()
        .compact()
        .context("cannot fold new templates into a gallery segment")?;
    Ok(total)
}

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
    /// Skip the 1:N duplicate check (against the faces already enrolled and between the
    /// rows of the file).
    #[arg(long)]
    no_duplicate_check: bool,
    /// Exit 0 even when templates were refused as duplicates (they are still listed).
    #[arg(long)]
    allow_refused: bool,
}

/// Which faces a template is checked against before it is enrolled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DuplicateCheck {
    /// None.
    Off,
    /// The faces enrolled before the file.
    Enrolled,
    /// Those, and every earlier row of the file.
    EnrolledAndFile,
}

/// Templates per engine call: bounds memory and paces the progress line.
const CHUNK: usize = 5_000;

pub(crate) fn run(args: EnrollArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let config = super::site::open(&args.data)?;
    let _lock = super::site::SiteLock::acquire(&args.data, "gatewarden enroll")?;
    let engine = Engine::open(&args.data, config)
        .with_context(|| format!("cannot open data folder {}", args.data.display()))?;
    let check = if args.no_duplicate_check {
        DuplicateCheck::Off
    } else {
        DuplicateCheck::EnrolledAndFile
    };
    let report = enroll_files(&engine, &args.vectors, &args.subjects, check)?;
    engine.shutdown();
    println!(
        "enrolled {} template(s); {} refused as duplicates of other people",
        report.added,
        report.duplicates.len()
    );
    for d in report.duplicates.iter().take(20) {
        let row = d.index + 1;
        match d.existing_index {
            Some(first) => println!(
                "  duplicate: row {row} (subject {}) has the face of row {} (subject {}) of the \
                 same file (score {:.3}); only row {} was enrolled",
                d.subject,
                first + 1,
                d.existing,
                d.score,
                first + 1
            ),
            None => println!(
                "  duplicate: row {row} (subject {}) looks like enrolled subject {} (score {:.3})",
                d.subject, d.existing, d.score
            ),
        }
    }
    if report.duplicates.len() > 20 {
        println!("  ... and {} more", report.duplicates.len() - 20);
    }
    anyhow::ensure!(
        report.duplicates.is_empty() || args.allow_refused,
        "{} template(s) refused as duplicates (listed above; rows count from 1 in {}); resolve \
         them, or pass --allow-refused to accept a partial enrolment",
        report.duplicates.len(),
        args.vectors.display()
    );
    Ok(())
}

/// Reads the two files and enrolls every row, with a progress line, then folds the new
/// templates into a gallery segment so the next start maps them instead of reloading them.
/// Duplicates come back with their row numbers in the file ([`Duplicate::index`] counts from
/// 0 over the whole file).
///
/// [`Duplicate::index`]: gatewarden::engine::Duplicate::index
pub(crate) fn enroll_files(
    engine: &Engine,
    vectors: &Path,
    subjects: &Path,
    check: DuplicateCheck,
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
    check_vectors(vectors, &matrix, engine.config().dim)?;
    let before = (check == DuplicateCheck::Enrolled).then(|| engine.gallery().snapshot());
    let chunk = match check {
        // Small batches: each is searched against the gallery holding the earlier ones, and
        // pairwise within itself.
        DuplicateCheck::EnrolledAndFile => FILE_CHECK_CHUNK,
        _ => CHUNK,
    };
    let mut total = gatewarden::engine::BulkEnrollReport::default();
    let started = SystemClock.instant();
    for (c, (chunk_ids, chunk_rows)) in ids
        .chunks(chunk)
        .zip(matrix.data.chunks(chunk * dim))
        .enumerate()
    {
        let rows: Vec<(SubjectId, &[f32])> = chunk_ids
            .iter()
            .copied()
            .zip(chunk_rows.chunks_exact(dim))
            .collect();
        let report = match check {
            DuplicateCheck::EnrolledAndFile => engine.enroll_templates_unique(&rows),
            _ => engine.enroll_templates(&rows, before.as_deref()),
        }
        .with_context(|| {
            format!(
                "cannot enroll rows {} to {} of {}",
                c * chunk + 1,
                c * chunk + rows.len(),
                vectors.display()
            )
        })?;
        total.added += report.added;
        total
            .duplicates
            .extend(report.duplicates.into_iter().map(|mut d| {
                d.index += c * chunk;
                d.existing_index = d.existing_index.map(|i| i + c * chunk);
                d
            }));
        eprint!(
            "\renrolling: {} / {} templates ({:.0}/s)",
            total.added + total.duplicates.len(),
            ids.len(),
            (total.added + total.duplicates.len()) as f64
                / started.elapsed().as_secs_f64().max(1e-3)
        );
    }
    eprintln!();
    if check == DuplicateCheck::EnrolledAndFile {
        name_rows_in_file(&ids, &mut total);
    }
    engine
        .gallery()
        .compact()
        .context("cannot fold new templates into a gallery segment")?;
    Ok(total)
}

/// Rows per engine call with the in-file duplicate check.
const FILE_CHECK_CHUNK: usize = 256;

/// A face matched in an earlier batch of this file is reported as that row, not as "already
/// enrolled": the first row of the file that enrolled that person.
fn name_rows_in_file(ids: &[SubjectId], report: &mut gatewarden::engine::BulkEnrollReport) {
    let refused: std::collections::HashSet<usize> =
        report.duplicates.iter().map(|d| d.index).collect();
    let mut first_row = std::collections::HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        if !refused.contains(&i) {
            first_row.entry(*id).or_insert(i);
        }
    }
    for d in &mut report.duplicates {
        if d.existing_index.is_none() {
            d.existing_index = first_row.get(&d.existing).copied().filter(|r| *r < d.index);
        }
    }
}

/// Refuses a file of the wrong dimension, or with a row that is not a finite, non-zero
/// vector, naming the file and the rows (counted from 1, as the subjects file's lines).
fn check_vectors(path: &Path, matrix: &gatewarden::npy::Matrix, dim: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        matrix.dim == dim,
        "{} holds vectors of {} values, but the gallery's dimension is {dim} (`dim` in \
         gatewarden.toml); nothing was enrolled",
        path.display(),
        matrix.dim
    );
    if dim == 0 {
        return Ok(());
    }
    let bad: Vec<String> = matrix
        .data
        .chunks_exact(dim)
        .enumerate()
        .filter_map(|(i, v)| {
            let why = if v.iter().any(|x| x.is_nan()) {
                "NaN"
            } else if v.iter().any(|x| x.is_infinite()) {
                "an infinite value"
            } else if v.iter().all(|x| *x == 0.0) {
                "only zeros"
            } else {
                return None;
            };
            Some(format!("row {} has {why}", i + 1))
        })
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = bad.iter().take(10).map(String::as_str).collect();
    let more = match bad.len() {
        n if n > 10 => format!(" (and {} more)", n - 10),
        _ => String::new(),
    };
    anyhow::bail!(
        "{}: {}{more}; a face template must be finite and not all zeros; nothing was enrolled",
        path.display(),
        shown.join(", ")
    )
}

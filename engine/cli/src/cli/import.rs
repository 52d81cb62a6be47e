//! `gatewarden import subjects|gates|health FILE` and `gatewarden health import FILE`: registry
//! files into the store.
//!
//! A file is parsed whole before anything is written; if it has bad rows, nothing is applied
//! (unless `--skip-bad`), and the first bad rows are listed with their line numbers. The good
//! records then go to the store in one transaction: all or nothing.
//!
//! The store is opened directly, so an import locks the site first: while `gatewarden serve`
//! holds it, an import is refused (it would reach the store but not the server's caches) with
//! the admin API route that makes the same change through the server.

use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use gatewarden::clock::{Clock, SystemClock};
use gatewarden::model::GateInfo;
use gatewarden::store::Store;
use gatewarden::store::import::{ImportFormat, ImportRecord, ParsedFile, RowError, read_all};
use gatewarden_protocol::{Credential, HealthRecord, SubjectRecord};

/// Arguments of `gatewarden import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    #[command(subcommand)]
    what: ImportCommand,
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// People. Fields: subject, category, home_market (required), markets, zones, valid_from,
    /// valid_until, id_card, qr_tokens, status. CSV lists use ';'.
    Subjects(FileArgs),
    /// Gates. Fields: gate, market, zone (required), name.
    Gates(FileArgs),
    /// Health records; the same as `gatewarden health import`.
    Health(FileArgs),
}

/// Arguments of `gatewarden health`.
#[derive(Debug, clap::Args)]
pub(crate) struct HealthArgs {
    #[command(subcommand)]
    command: HealthCommand,
}

#[derive(Debug, Subcommand)]
enum HealthCommand {
    /// Apply the daily health feed (idempotent: records older than the stored ones are
    /// ignored). Fields: subject, test_at, test_result, vaccine_doses, health_code,
    /// travel_code, updated_at.
    Import(FileArgs),
}

#[derive(Debug, clap::Args)]
struct FileArgs {
    /// The file to import: CSV with a header row (.csv), or JSON Lines (.jsonl, .ndjson).
    file: PathBuf,
    /// Data folder.
    #[arg(long, default_value = super::DEFAULT_DATA)]
    data: PathBuf,
    /// Apply the good rows of a file that has bad ones (by default nothing is applied).
    #[arg(long)]
    skip_bad: bool,
    /// The file's format, when its extension does not say.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FormatArg {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Subject records.
    Subjects,
    /// Gate records.
    Gates,
    /// Health records.
    Health,
}

pub(crate) fn run(args: ImportArgs) -> anyhow::Result<()> {
    match args.what {
        ImportCommand::Subjects(f) => run_file(Kind::Subjects, &f),
        ImportCommand::Gates(f) => run_file(Kind::Gates, &f),
        ImportCommand::Health(f) => run_file(Kind::Health, &f),
    }
}

pub(crate) fn run_health(args: HealthArgs) -> anyhow::Result<()> {
    match args.command {
        HealthCommand::Import(f) => run_file(Kind::Health, &f),
    }
}

/// Imports one file into an open store, all or nothing, quietly (no progress line). For tools
/// such as the demo that already hold the store. Returns the summary line.
pub(crate) fn import_file(store: &Store, kind: Kind, path: &Path) -> anyhow::Result<String> {
    let format = format_of(path, None)?;
    let mut progress = Progress::off();
    match kind {
        Kind::Subjects => import_typed(store, path, format, &mut progress, SUBJECTS),
        Kind::Gates => import_typed(store, path, format, &mut progress, GATES),
        Kind::Health => import_typed(store, path, format, &mut progress, HEALTH),
    }
}

fn run_file(kind: Kind, args: &FileArgs) -> anyhow::Result<()> {
    let summary = match kind {
        Kind::Subjects => run_typed(args, SUBJECTS)?,
        Kind::Gates => run_typed(args, GATES)?,
        Kind::Health => run_typed(args, HEALTH)?,
    };
    println!("{summary}");
    Ok(())
}

fn run_typed<T: ImportRecord>(args: &FileArgs, steps: Steps<T>) -> anyhow::Result<String> {
    let format = format_of(&args.file, args.format)?;
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    // The site is checked first: a mistyped --data is refused before anything is read.
    let config = super::site::open(&args.data)?;
    let mut parsed = parse(&args.file, format, &mut progress)?;
    // Rows the registry refuses are listed with the file's own bad rows, all at once.
    let _lock = super::site::SiteLock::acquire(&args.data, "gatewarden import")?;
    let store = super::site::open_store(&args.data, &config)?;
    let refused = (steps.screen)(&store, &parsed);
    parsed.refuse_lines(refused);
    report_bad(&args.file, &parsed, args.skip_bad)?;
    apply(&store, &args.file, &parsed, &mut progress, steps.apply)
}

fn format_of(path: &Path, arg: Option<FormatArg>) -> anyhow::Result<ImportFormat> {
    match arg {
        Some(FormatArg::Csv) => Ok(ImportFormat::Csv),
        Some(FormatArg::Jsonl) => Ok(ImportFormat::JsonLines),
        None => ImportFormat::from_path(path).with_context(|| {
            format!(
                "cannot tell the format of {} from its extension; name it .csv, .jsonl or \
                 .ndjson, or pass --format csv|jsonl",
                path.display()
            )
        }),
    }
}

type Apply<T> = fn(&Store, &[T]) -> anyhow::Result<String>;

/// Rows the registry refuses although they parsed (a credential that belongs to someone
/// else), checked before anything is written.
type Screen<T> = fn(&Store, &ParsedFile<T>) -> Vec<RowError>;

/// What importing one kind of record takes besides parsing.
struct Steps<T> {
    screen: Screen<T>,
    apply: Apply<T>,
}

const SUBJECTS: Steps<SubjectRecord> = Steps {
    screen: screen_subjects,
    apply: apply_subjects,
};
const GATES: Steps<GateInfo> = Steps {
    screen: |_, _| Vec::new(),
    apply: apply_gates,
};
const HEALTH: Steps<HealthRecord> = Steps {
    screen: |_, _| Vec::new(),
    apply: apply_health,
};

fn import_typed<T: ImportRecord>(
    store: &Store,
    path: &Path,
    format: ImportFormat,
    progress: &mut Progress,
    steps: Steps<T>,
) -> anyhow::Result<String> {
    let mut parsed = parse(path, format, progress)?;
    let refused = (steps.screen)(store, &parsed);
    parsed.refuse_lines(refused);
    report_bad(path, &parsed, false)?;
    apply(store, path, &parsed, progress, steps.apply)
}

/// Parses the whole file; bad rows are collected, not reported.
fn parse<T: ImportRecord>(
    path: &Path,
    format: ImportFormat,
    progress: &mut Progress,
) -> anyhow::Result<ParsedFile<T>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let input = BufReader::with_capacity(1 << 18, file);
    let parsed = read_all::<T, _>(input, format, |rows, bytes| {
        progress.update(T::NAME, rows, bytes, size);
    })
    .with_context(|| format!("cannot import {}", path.display()))?;
    progress.finish();
    Ok(parsed)
}

/// Lists the bad rows, one line per distinct problem; fails unless they may be skipped.
fn report_bad<T: ImportRecord>(
    path: &Path,
    parsed: &ParsedFile<T>,
    skip_bad: bool,
) -> anyhow::Result<()> {
    if parsed.bad_rows == 0 {
        return Ok(());
    }
    for p in &parsed.problems {
        eprintln!("{}: {p}", path.display());
    }
    let listed: usize = parsed.problems.iter().map(|p| p.count).sum();
    if parsed.bad_rows > listed {
        eprintln!(
            "{}: ... and {} more bad rows",
            path.display(),
            parsed.bad_rows - listed
        );
    }
    if parsed.records.is_empty() && parsed.bad_rows > 1 && parsed.problems.len() == 1 {
        eprintln!(
            "{}: every row has the same problem: is it a {} file?",
            path.display(),
            T::NAME
        );
    }
    anyhow::ensure!(
        skip_bad,
        "{} bad row(s) in {}; nothing was imported. Fix them, or pass --skip-bad to import \
         the {} good row(s)",
        parsed.bad_rows,
        path.display(),
        parsed.records.len()
    );
    eprintln!(
        "skipping {} bad row(s); importing the {} good one(s)",
        parsed.bad_rows,
        parsed.records.len()
    );
    Ok(())
}

/// A subject whose ID card or QR token the registry gives to someone else.
fn screen_subjects(store: &Store, parsed: &ParsedFile<SubjectRecord>) -> Vec<RowError> {
    let mut refused = Vec::new();
    for (record, line) in parsed.records.iter().zip(&parsed.lines) {
        let cards = record
            .id_card
            .iter()
            .map(|c| ("ID card", Credential::IdCard(c.clone())));
        let qrs = record
            .qr_tokens
            .iter()
            .map(|t| ("staff QR token", Credential::StaffQr(t.clone())));
        for (kind, credential) in cards.chain(qrs) {
            match store.resolve_credential(&credential) {
                Some(holder) if holder != record.subject => {
                    refused.push(RowError {
                        line: *line,
                        reason: format!(
                            "its {kind} already belongs to subject {holder}; fix or revoke one \
                             of the two records"
                        ),
                    });
                    break;
                }
                _ => {}
            }
        }
    }
    refused
}

fn apply<T: ImportRecord>(
    store: &Store,
    path: &Path,
    parsed: &ParsedFile<T>,
    progress: &mut Progress,
    apply_fn: Apply<T>,
) -> anyhow::Result<String> {
    progress.note(&format!("writing {} records...", parsed.records.len()));
    let summary = apply_fn(store, &parsed.records)
        .with_context(|| format!("nothing from {} was imported", path.display()))?;
    progress.finish();
    let skipped = match parsed.bad_rows {
        0 => String::new(),
        n => format!(" ({n} bad rows skipped)"),
    };
    Ok(format!(
        "{summary} from {} into {} in {:.2} s{skipped}",
        path.display(),
        store.dir().display(),
        progress.elapsed().as_secs_f64()
    ))
}

fn apply_subjects(store: &Store, records: &[SubjectRecord]) -> anyhow::Result<String> {
    let n = store.upsert_subjects(records)?;
    Ok(format!("imported {n} subjects"))
}

fn apply_gates(store: &Store, records: &[GateInfo]) -> anyhow::Result<String> {
    let n = store.upsert_gates(records)?;
    Ok(format!("imported {n} gates"))
}

fn apply_health(store: &Store, records: &[HealthRecord]) -> anyhow::Result<String> {
    let ack = store.upsert_health(records)?;
    let stale = records.len() as u64 - u64::from(ack.applied) - u64::from(ack.unknown_subjects);
    Ok(format!(
        "applied {} health records ({} for unknown subjects not applied, {stale} older than the \
         stored ones ignored)",
        ack.applied, ack.unknown_subjects
    ))
}

/// A progress line on stderr, redrawn at most every half second, only on a terminal.
struct Progress {
    enabled: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    const EVERY: Duration = Duration::from_millis(500);

    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            started: SystemClock.instant(),
            last: None,
        }
    }

    fn off() -> Self {
        Self::new(false)
    }

    fn elapsed(&self) -> Duration {
        SystemClock
            .instant()
            .saturating_duration_since(self.started)
    }

    fn update(&mut self, what: &str, rows: usize, bytes: u64, size: u64) {
        if !self.enabled {
            return;
        }
        let now = SystemClock.instant();
        let since_start = now.saturating_duration_since(self.started);
        if since_start < Self::EVERY
            || self
                .last
                .is_some_and(|l| now.saturating_duration_since(l) < Self::EVERY)
        {
            return;
        }
        self.last = Some(now);
        let pct = (bytes * 100).checked_div(size).unwrap_or(0);
        let rate = rows as f64 / since_start.as_secs_f64().max(1e-3);
        self.note(&format!(
            "{what} rows: {rows} read ({pct}%), {rate:.0} rows/s"
        ));
    }

    fn note(&mut self, text: &str) {
        if self.enabled {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
            self.last.get_or_insert_with(|| SystemClock.instant());
        }
    }

    /// Clears the line, if one was drawn.
    fn finish(&mut self) {
        if self.enabled && self.last.take().is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

//! `gatewarden gallery build|inspect|verify`: single segment files from NumPy arrays.
//!
//! `build` reads a float32 `(N, d)` `.npy`, optionally ids (`.npy` int64/uint64 or text, one
//! per line; default: row numbers), and writes one segment file atomically, owner-only,
//! showing progress on stderr. Template ids are the row numbers, so search results can be
//! checked against any other tool that numbers rows.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use gatewarden::clock::{Clock, SystemClock};
use gatewarden::gallery::{
    Gallery, Precision, SegmentSpec, SliceSource, WriteProgress, write_segment,
};
use gatewarden::npy;

/// Arguments of `gatewarden gallery`.
#[derive(Debug, clap::Args)]
pub(crate) struct GalleryArgs {
    #[command(subcommand)]
    command: GalleryCommand,
}

#[derive(Debug, Subcommand)]
enum GalleryCommand {
    /// Build a gallery segment file from a float32 (N, d) .npy array.
    Build(BuildArgs),
    /// Print a segment file's header summary (O(1); does not check the data).
    Inspect(InspectArgs),
    /// Check a segment file's checksum and contents (reads the whole file).
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// float32 (N, d) array, C order, little-endian.
    #[arg(long)]
    vectors: PathBuf,
    /// Subject ids, one per row: 1-D int64/uint64 .npy or a text file (default: row numbers).
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Scale every row to unit length (scores become cosines).
    #[arg(long)]
    normalize: bool,
    /// `int8` also stores int8 codes for the quantized scan; `binary` int8 and 1-bit codes
    /// (f32 rows are always kept).
    #[arg(long, default_value = "int8", value_parser = parse_precision)]
    precision: Precision,
    /// Output segment file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// Segment file.
    gallery: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Segment file.
    gallery: PathBuf,
}

pub(crate) fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse()
}

pub(crate) fn run(args: GalleryArgs) -> anyhow::Result<()> {
    match args.command {
        GalleryCommand::Build(a) => build(&a),
        GalleryCommand::Inspect(a) => inspect(&a),
        GalleryCommand::Verify(a) => verify(&a.gallery),
    }
}

fn build(a: &BuildArgs) -> anyhow::Result<()> {
    let clock = SystemClock;
    let start = clock.instant();
    let m = npy::read_f32_matrix(&a.vectors)?;
    let subjects = match &a.ids {
        Some(p) => {
            let ids = npy::read_ids(p)?;
            if ids.len() != m.rows {
                bail!(
                    "{} has {} ids but {} has {} rows",
                    p.display(),
                    ids.len(),
                    a.vectors.display(),
                    m.rows
                );
            }
            ids
        }
        None => (0..m.rows as u64).collect(),
    };
    let source = SliceSource::new(m.dim, &m.data, &subjects, None)
        .with_context(|| format!("{} is empty or has zero columns", a.vectors.display()))?;
    let spec = SegmentSpec {
        dim: m.dim,
        precision: a.precision,
        normalize: a.normalize,
    };
    let mut bar = Progress::new(&a.out);
    let stats = write_segment(&a.out, &spec, &source, &mut |p| bar.show(p))
        .with_context(|| format!("building {}", a.out.display()))?;
    bar.finish();
    let secs = clock.instant().duration_since(start).as_secs_f64();
    eprintln!(
        "wrote {}: {} rows x {} ({}), {:.1} MiB, crc {:#010x}, {secs:.2} s",
        a.out.display(),
        stats.rows,
        m.dim,
        a.precision.name(),
        stats.bytes as f64 / (1 << 20) as f64,
        stats.crc,
    );
    Ok(())
}

fn inspect(a: &InspectArgs) -> anyhow::Result<()> {
    let g = Gallery::open(&a.gallery)?;
    let info = g.info();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("file            {}", a.gallery.display());
    println!("format version  {}", info.format_version);
    println!("rows            {}", info.count);
    println!("subjects        {}", info.subjects);
    println!("dimension       {}", info.dim);
    println!("precision       {}", info.precision);
    println!(
        "unit length     {}",
        if info.unit_norm { "yes" } else { "no" }
    );
    println!(
        "row stride      {} bytes (int8: {} bytes, 1-bit: {} bytes)",
        info.vector_stride_bytes, info.code_stride_bytes, info.bits_row_bytes
    );
    println!("max template id {}", info.max_template_id);
    println!("size            {} bytes", info.file_bytes);
    println!(
        "stored crc      {:#010x}  (run `gatewarden gallery verify` to check it)",
        info.stored_crc
    );
    println!("sections        offset        bytes");
    for s in &info.sections {
        println!("  {:<28} {:>12} {:>12}", s.name, s.offset, s.bytes);
    }
    Ok(())
}

fn verify(path: &Path) -> anyhow::Result<()> {
    let g = Gallery::open(path)?;
    g.verify()?;
    println!(
        "{}: ok ({} rows, checksum and contents verified)",
        path.display(),
        g.len()
    );
    Ok(())
}

/// A one-line progress display on stderr (redrawn in place on a terminal).
struct Progress {
    name: String,
    tty: bool,
    last_pct: Option<(&'static str, usize)>,
}

impl Progress {
    fn new(out: &Path) -> Self {
        Self {
            name: out.display().to_string(),
            tty: std::io::stderr().is_terminal(),
            last_pct: None,
        }
    }

    fn show(&mut self, p: WriteProgress) {
        let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
        if self.last_pct == Some((p.phase, pct)) || (!self.tty && !pct.is_multiple_of(25)) {
            return;
        }
        self.last_pct = Some((p.phase, pct));
        let mut err = std::io::stderr().lock();
        let end = if self.tty { "\r" } else { "\n" };
        let _ = write!(
            err,
            "building {}: {:<8} {:>3}% ({}/{} rows){end}",
            self.name, p.phase, pct, p.done, p.total
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

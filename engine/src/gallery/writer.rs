//! Writing segment files: streamed, checksummed, crash-safe.
//!
//! The file is written to a temporary name in the destination folder (created owner-only,
//! `create_new`), fsynced, renamed over the final name, and the folder is fsynced, so a
//! crash leaves either the old state or the complete new file, never a torn segment.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::GalleryError;
use super::format::{
    ElementType, FLAG_UNIT_NORM, FORMAT_VERSION, Header, Layout, MAX_DIM, encode_footer,
};
use crate::index::{Precision, code_words, encode_bits, quantize_into};

/// How to write a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSpec {
    /// Dimension of every row.
    pub dim: usize,
    /// `Int8` also stores int8 codes; `Binary` (and `Auto`) int8 and 1-bit codes (the f32
    /// rows are always stored, for the re-rank).
    pub precision: Precision,
    /// Scale every row to unit length (cosine scores); zero rows are then refused.
    pub normalize: bool,
}

/// Rows to write, addressed by index (so the writer can make several passes without
/// holding a copy).
pub trait RowSource: Sync {
    /// Number of rows.
    fn len(&self) -> usize;
    /// True if there are no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Row `i < len()`: its vector, subject id and template id.
    fn row(&self, i: usize) -> (&[f32], u64, u64);
}

/// Rows from a row-major slice with a subject id per row; template ids are the row numbers
/// unless given.
#[derive(Clone, Copy)]
pub struct SliceSource<'a> {
    dim: usize,
    data: &'a [f32],
    subjects: &'a [u64],
    templates: Option<&'a [u64]>,
}

impl<'a> SliceSource<'a> {
    /// A source, or `None` unless `data` holds exactly one `dim`-row per subject (and per
    /// template id, if given).
    pub fn new(
        dim: usize,
        data: &'a [f32],
        subjects: &'a [u64],
        templates: Option<&'a [u64]>,
    ) -> Option<Self> {
        let n = subjects.len();
        let ok = dim > 0
            && n.checked_mul(dim) == Some(data.len())
            && templates.is_none_or(|t| t.len() == n);
        ok.then_some(Self {
            dim,
            data,
            subjects,
            templates,
        })
    }
}

impl RowSource for SliceSource<'_> {
    fn len(&self) -> usize {
        self.subjects.len()
    }

    fn row(&self, i: usize) -> (&[f32], u64, u64) {
        let template = self.templates.map_or(i as u64, |t| t[i]);
        (
            &self.data[i * self.dim..(i + 1) * self.dim],
            self.subjects[i],
            template,
        )
    }
}

impl std::fmt::Debug for SliceSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliceSource")
            .field("dim", &self.dim)
            .field("rows", &self.subjects.len())
            .finish()
    }
}

/// Progress of a write, reported to a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteProgress {
    /// Which pass: `"vectors"`, `"codes"`, `"bits"`, `"ids"`, `"sync"`.
    pub phase: &'static str,
    /// Rows done in this pass.
    pub done: usize,
    /// Rows in total.
    pub total: usize,
}

/// What a write produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows written.
    pub rows: usize,
    /// File size.
    pub bytes: u64,
    /// CRC-32 stored in the footer.
    pub crc: u32,
    /// Highest template id.
    pub max_template_id: u64,
}

/// Writes a segment to `path` (replacing any file there) atomically.
///
/// # Errors
/// A row of the wrong dimension, with a non-finite value, or (with `normalize`) of zero
/// length; too many rows; or an I/O failure. No partial file is left behind.
pub fn write_segment(
    path: &Path,
    spec: &SegmentSpec,
    rows: &dyn RowSource,
    progress: &mut dyn FnMut(WriteProgress),
) -> Result<WriteStats, GalleryError> {
    if spec.dim == 0 || spec.dim > MAX_DIM {
        return Err(GalleryError::BadDimension {
            dim: spec.dim,
            max: MAX_DIM,
        });
    }
    let count = rows.len();
    if count > u32::MAX as usize {
        return Err(GalleryError::TooManyRows {
            count,
            max: u32::MAX as usize,
        });
    }
    let element = ElementType::for_precision(spec.precision);
    let layout = Layout::compute(spec.dim, count, element).ok_or(GalleryError::TooManyRows {
        count,
        max: u32::MAX as usize,
    })?;
    let tmp = temp_path(path);
    let result = write_file(&tmp, &layout, spec, rows, progress).and_then(|stats| {
        rename_durably(&tmp, path)?;
        Ok(stats)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A temporary name beside `path`, unique per process and call.
fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Renames `from` to `to` and fsyncs the folder, so that the rename itself is durable.
pub(crate) fn rename_durably(from: &Path, to: &Path) -> Result<(), GalleryError> {
    std::fs::rename(from, to).map_err(|source| GalleryError::Io {
        path: to.to_owned(),
        source,
    })?;
    sync_dir(to.parent().unwrap_or_else(|| Path::new(".")))
}

/// fsyncs a folder (makes renames and new names in it durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), GalleryError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| GalleryError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// A writer that checksums everything and tracks its position.
struct Out {
    w: BufWriter<File>,
    crc: crc32fast::Hasher,
    pos: u64,
}

impl Out {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc.update(b);
        self.pos += b.len() as u64;
        self.w.write_all(b)
    }

    /// Zero-pads up to `offset`.
    fn pad_to(&mut self, offset: u64) -> std::io::Result<()> {
        const ZEROS: [u8; 64] = [0; 64];
        while self.pos < offset {
            let n = (offset - self.pos).min(64) as usize;
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }
}

fn write_file(
    tmp: &Path,
    layout: &Layout,
    spec: &SegmentSpec,
    rows: &dyn RowSource,
    progress: &mut dyn FnMut(WriteProgress),
) -> Result<WriteStats, GalleryError> {
    let io = |source| GalleryError::Io {
        path: tmp.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io)?;
    let mut out = Out {
        w: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        pos: 0,
    };
    let n = rows.len();
    let max_template_id = (0..n).map(|i| rows.row(i).2).max().unwrap_or(0);
    let flags = if spec.normalize { FLAG_UNIT_NORM } else { 0 };
    let header = Header {
        version: FORMAT_VERSION,
        flags,
        max_template_id,
        layout: *layout,
    };
    out.put(&header.encode()).map_err(io)?;
    let report = |progress: &mut dyn FnMut(WriteProgress), phase, done| {
        if done % 4096 == 0 || done == n {
            progress(WriteProgress {
                phase,
                done,
                total: n,
            });
        }
    };

    // Pass 1: validated (and normalized) f32 rows, summed for the 1-bit codes' centre.
    let mut row_buf = vec![0f32; layout.vector_stride_bytes as usize / 4];
    let mut sum = vec![0f64; spec.dim];
    for i in 0..n {
        prepare_row(rows, i, spec, &mut row_buf)?;
        out.put(bytemuck::cast_slice(&row_buf)).map_err(io)?;
        for (s, &x) in sum.iter_mut().zip(&row_buf) {
            *s += f64::from(x);
        }
        report(progress, "vectors", i + 1);
    }
    // Pass 2: int8 codes and their [scale, norm, err, 0] parameters.
    if layout.element.has_codes() {
        out.pad_to(layout.codes_offset).map_err(io)?;
        let mut codes = vec![0i8; layout.code_stride_bytes as usize];
        let mut quant = Vec::with_capacity(n);
        for i in 0..n {
            prepare_row(rows, i, spec, &mut row_buf)?;
            quant.push(quantize_into(&row_buf[..spec.dim], &mut codes).to_stored());
            out.put(bytemuck::cast_slice(&codes)).map_err(io)?;
            report(progress, "codes", i + 1);
        }
        out.pad_to(layout.quant_offset).map_err(io)?;
        out.put(bytemuck::cast_slice(&quant)).map_err(io)?;
    }
    // Passes 3 and 4: the centre (the rows' mean), then every row's 1-bit code against it,
    // heads first, then tails (see the format table for why they are apart).
    if layout.element.has_bits() {
        let centre: Vec<f32> = sum.iter().map(|&s| (s / n.max(1) as f64) as f32).collect();
        out.pad_to(layout.centre_offset).map_err(io)?;
        out.put(bytemuck::cast_slice(&centre)).map_err(io)?;
        let words = code_words(spec.dim);
        let head = layout.bits_head_words as usize;
        let mut code = vec![0u64; words];
        for (offset, range) in [
            (layout.bits_offset, 0..head),
            (layout.bits_tail_offset, head..words),
        ] {
            out.pad_to(offset).map_err(io)?;
            for i in 0..n {
                prepare_row(rows, i, spec, &mut row_buf)?;
                encode_bits(&row_buf[..spec.dim], &centre, &mut code);
                out.put(bytemuck::cast_slice(&code[range.clone()]))
                    .map_err(io)?;
                report(progress, "bits", i + 1);
            }
        }
    }
    // Ids and the subject index.
    let templates: Vec<u64> = (0..n).map(|i| rows.row(i).2).collect();
    let subjects: Vec<u64> = (0..n).map(|i| rows.row(i).1).collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_unstable_by_key(|&r| (subjects[r as usize], templates[r as usize]));
    if let Some(w) = order.windows(2).find(|w| {
        templates[w[0] as usize] == templates[w[1] as usize]
            && subjects[w[0] as usize] == subjects[w[1] as usize]
    }) {
        return Err(GalleryError::DuplicateTemplate {
            template: templates[w[0] as usize],
        });
    }
    report(progress, "ids", n);
    out.pad_to(layout.templates_offset).map_err(io)?;
    out.put(bytemuck::cast_slice(&templates)).map_err(io)?;
    out.pad_to(layout.subjects_offset).map_err(io)?;
    out.put(bytemuck::cast_slice(&subjects)).map_err(io)?;
    out.pad_to(layout.order_offset).map_err(io)?;
    out.put(bytemuck::cast_slice(&order)).map_err(io)?;
    out.pad_to(layout.footer_offset).map_err(io)?;
    let crc = out.crc.clone().finalize();
    out.w.write_all(&encode_footer(crc)).map_err(io)?;
    let file = out.w.into_inner().map_err(|e| io(e.into_error()))?;
    progress(WriteProgress {
        phase: "sync",
        done: n,
        total: n,
    });
    file.sync_all().map_err(io)?;
    Ok(WriteStats {
        rows: n,
        bytes: layout.file_len(),
        crc,
        max_template_id,
    })
}

/// Copies row `i` into `buf` (zero padding after `dim`), checked and optionally normalized.
fn prepare_row(
    rows: &dyn RowSource,
    i: usize,
    spec: &SegmentSpec,
    buf: &mut [f32],
) -> Result<(), GalleryError> {
    let (v, _, template) = rows.row(i);
    if v.len() != spec.dim {
        return Err(GalleryError::WrongDimension {
            template,
            expected: spec.dim,
            got: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(GalleryError::NonFinite { template });
    }
    buf.fill(0.0);
    buf[..spec.dim].copy_from_slice(v);
    if spec.normalize && !normalize(&mut buf[..spec.dim]) {
        return Err(GalleryError::ZeroVector { template });
    }
    Ok(())
}

/// Scales `v` to unit length (norm computed in f64); false for a zero vector.
pub(crate) fn normalize(v: &mut [f32]) -> bool {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return false;
    }
    for x in v.iter_mut() {
        *x = (f64::from(*x) / norm) as f32;
    }
    true
}

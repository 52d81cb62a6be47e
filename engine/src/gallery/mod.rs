//! The gallery: enrolled face templates as memory-mapped immutable segment files, plus an
//! in-memory delta, searched through `Arc` snapshots.
//!
//! Templates live in the store (SQLite, the truth); the gallery is the derived, rebuildable
//! search structure. [`LiveGallery`] manages a folder of segments (see `live.rs` for the
//! concurrency design); [`Gallery`] is one segment file, usable alone (the `gatewarden
//! gallery` and `search` commands work on single files).
//!
//! # Segment file format, version 2
//!
//! Version 2 is version 1 plus element type 3 (1-bit codes) and the three header fields at
//! 104..128 that locate them. Version-1 files (element types 1 and 2, bytes 104..128 zero)
//! still open; a version-1 header naming element type 3 is refused as corrupt.
//!
//! All integers little-endian. Every section starts at a multiple of 64 bytes (zero padding
//! between sections), so with a page-aligned map each row is cache-line aligned and views are
//! checked casts, never pointer arithmetic.
//!
//! | Offset | Size | Field |
//! |---|---|---|
//! | 0 | 8 | magic `GWGALSEG` |
//! | 8 | 4 | format version (u32) = 2 (1 is still read) |
//! | 12 | 4 | header length (u32) = 128 |
//! | 16 | 4 | dimension `d` (u32, 1..=65536) |
//! | 20 | 1 | element type: 1 = f32 rows, 2 = f32 rows + int8 codes, 3 = f32 rows + int8 codes + 1-bit codes (version 2) |
//! | 21 | 1 | metric: 1 = inner product (cosine on unit rows) |
//! | 22 | 2 | flags (u16): bit 0 = rows normalized to unit length; other bits zero |
//! | 24 | 8 | row count `n` (u64, at most 2^32 - 1) |
//! | 32 | 4 | f32 row stride in bytes = round_up(4d, 64) |
//! | 36 | 4 | int8 row stride in bytes = round_up(d, 64), or 0 |
//! | 40 | 8 | offset of the f32 rows (= 128) |
//! | 48 | 8 | offset of the int8 codes, or 0 |
//! | 56 | 8 | offset of the per-row `[scale, norm, err, 0]` f32 quadruples, or 0 |
//! | 64 | 8 | offset of the template ids (`n` x u64) |
//! | 72 | 8 | offset of the subject ids (`n` x u64) |
//! | 80 | 8 | offset of the subject index (`n` x u32 row numbers sorted by (subject, template)) |
//! | 88 | 8 | offset of the footer |
//! | 96 | 8 | highest template id |
//! | 104 | 4 | 1-bit code length in bytes = 8 w with w = ceil(d / 64) words, or 0 (version 1: zero) |
//! | 108 | 4 | reserved, zero |
//! | 112 | 8 | offset of the 1-bit centre (`d` x f32, the rows' mean), or 0 (version 1: zero) |
//! | 120 | 8 | offset of the 1-bit code heads, or 0 (version 1: zero); the tails follow at the next multiple of 64 after `n x 8h` bytes, h = ceil(w / 2) |
//! | 128 | n x stride | f32 rows, zero-padded to the stride |
//! | ... | n x stride | int8 codes in [-127, 127] (element type 2) |
//! | ... | 16n | per row (element type 2): `scale = max abs / 127`, `norm = L2 norm`, `err = L2 norm of (row - scale * codes)`, 0 |
//! | ... | 4d | 1-bit centre (element type 3): the mean of the rows as written |
//! | ... | n x 8h | 1-bit code heads (element type 3): words `0..h` of every row's code, where bit `j % 64` of little-endian u64 word `j / 64` is set iff `row[j] > centre[j]` |
//! | ... | n x 8(w - h) | 1-bit code tails: words `h..w` of every row's code; bits past `d` are zero |
//! | ... | 8n | template ids |
//! | ... | 8n | subject ids |
//! | ... | 4n | subject index |
//! | footer | 4 | CRC-32 (IEEE, as `crc32fast`) of every byte before the footer |
//! | +4 | 4 | reserved, zero |
//! | +8 | 8 | magic `GWSEGEND` |
//!
//! Every offset is a function of `(d, n, element type)`; [`Gallery::open`] recomputes them
//! and refuses a file whose header disagrees, whose length is not exactly the layout's, or
//! whose footer magic is missing: O(1), without reading the data. [`Gallery::verify`] checks
//! the CRC and the contents in O(n). A file with another magic is foreign; a newer version
//! is refused with the supported range; nothing panics on any input
//! ([`Gallery::from_bytes`] is the fuzz entry point).
//!
//! # Folder layout
//!
//! ```text
//! gallery/            mode 0700
//!   LOCK              held (flock) while a process has the folder open
//!   MANIFEST.json     live segment files, their tombstoned rows, the watermark; replaced atomically
//!   seg-00000001.gwg  immutable segments, mode 0600
//! ```

mod format;
mod live;
mod manifest;
mod mmap;
mod segment;
mod writer;

use std::ops::RangeInclusive;
use std::path::PathBuf;

pub use format::{ElementType, FORMAT_VERSION, MAX_DIM, SUPPORTED_VERSIONS};
pub use live::{
    CompactStats, DELTA_CHUNK_ROWS, GalleryOptions, GallerySnapshot, GalleryStats, Identification,
    LiveGallery,
};
pub use manifest::MANIFEST_FILE;
pub use segment::{Gallery, GalleryInfo, SectionInfo};
pub use writer::{RowSource, SegmentSpec, SliceSource, WriteProgress, WriteStats, write_segment};

pub use crate::index::Precision;

/// Entry point of the `gallery_open` fuzz target: parses `data` as a segment, verifies it
/// and reads every view. Returns `Ok` or `Err` for any input; it must never panic.
///
/// # Errors
/// Whatever [`Gallery::from_bytes`] or [`Gallery::verify`] reports.
pub fn fuzz_open(data: &[u8]) -> Result<GalleryInfo, GalleryError> {
    let g = Gallery::from_bytes(data)?;
    let info = g.info();
    let _ = g.rows();
    let _ = g.rows_of(gatewarden_protocol::SubjectId(0)).count();
    g.verify()?;
    Ok(info)
}

/// An error opening, verifying, writing or updating a gallery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GalleryError {
    /// The dimension is not usable.
    #[error("dimension {dim} is not supported (1..={max})")]
    BadDimension {
        /// Requested.
        dim: usize,
        /// Largest supported.
        max: usize,
    },
    /// Header or contents are inconsistent.
    #[error("{path}: corrupt at byte {offset}: {what}")]
    Corrupt {
        /// The file.
        path: String,
        /// Where.
        offset: u64,
        /// What is wrong, and what to do.
        what: String,
    },
    /// The folder or file has another dimension than configured.
    #[error(
        "{path}: gallery dimension is {found} but {expected} is configured; rebuild the gallery or fix the configuration"
    )]
    DimMismatch {
        /// The folder or file.
        path: PathBuf,
        /// Configured.
        expected: usize,
        /// Found.
        found: usize,
    },
    /// The same (subject, template) pair appears twice in one segment.
    #[error("template {template} appears twice for the same subject")]
    DuplicateTemplate {
        /// The template id.
        template: u64,
    },
    /// The file's format version is not one this build reads.
    #[error(
        "{path}: gallery format version {found} is not supported (this build reads {supported:?}); rebuild the gallery with this version of gatewarden"
    )]
    Incompatible {
        /// The file.
        path: String,
        /// Version in the file.
        found: u32,
        /// Versions supported.
        supported: RangeInclusive<u32>,
    },
    /// A file or folder could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The forced instruction set is refused.
    #[error(transparent)]
    Isa(#[from] crate::index::IsaError),
    /// Another process has the folder open.
    #[error("{path}: gallery folder is in use by another process (LOCK is held); stop it first")]
    Locked {
        /// The folder.
        path: PathBuf,
    },
    /// The manifest is unreadable or inconsistent.
    #[error("{path}: {what}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A template has a non-finite value.
    #[error("template {template} has a non-finite value (NaN or infinity)")]
    NonFinite {
        /// The template id.
        template: u64,
    },
    /// The file does not start with the segment magic.
    #[error(
        "{path}: not a gatewarden gallery segment (wrong magic); build one with `gatewarden gallery build`"
    )]
    NotAGallery {
        /// The file.
        path: String,
    },
    /// More rows than a segment can index.
    #[error("{count} rows exceed the segment limit of {max}")]
    TooManyRows {
        /// Rows requested.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// The file is shorter than its header says.
    #[error(
        "{path}: truncated: {len} bytes, at least {need} expected; the file was cut short, rebuild it"
    )]
    Truncated {
        /// The file.
        path: String,
        /// Actual length.
        len: u64,
        /// Length needed.
        need: u64,
    },
    /// A template has the wrong number of values.
    #[error("template {template} has {got} values, the gallery's dimension is {expected}")]
    WrongDimension {
        /// The template id.
        template: u64,
        /// The gallery's dimension.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A template is all zeros (cannot be normalized).
    #[error("template {template} is a zero vector and cannot be normalized")]
    ZeroVector {
        /// The template id.
        template: u64,
    },
}

#[cfg(test)]
mod tests;

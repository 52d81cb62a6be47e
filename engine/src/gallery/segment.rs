//! One immutable segment file: open in O(1), verify in O(n), typed views of its sections.

use std::fs::File;
use std::path::{Path, PathBuf};

use gatewarden_protocol::SubjectId;

use super::GalleryError;
use super::format::{ElementType, FLAG_UNIT_NORM, FOOTER_LEN, HEADER_LEN, Header};
use super::mmap::Backing;
use crate::index::{Precision, RowQuant, RowsRef};

/// How a segment's bytes are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Residency {
    Mapped,
    MappedPopulated,
    Resident,
}

/// An immutable gallery segment: f32 rows (plus int8 codes, and 1-bit codes in binary
/// segments), their subject
/// and template ids, and a subject index for 1:1 lookups. See the format table in
/// [`crate::gallery`].
pub struct Gallery {
    label: String,
    backing: Backing,
    header: Header,
}

/// What `gatewarden gallery inspect` prints.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GalleryInfo {
    /// Format version of the file.
    pub format_version: u32,
    /// Dimension.
    pub dim: usize,
    /// Rows.
    pub count: usize,
    /// `f32` or `int8` (int8 segments also hold the f32 rows for re-ranking).
    pub precision: &'static str,
    /// True if rows were normalized to unit length when written.
    pub unit_norm: bool,
    /// Bytes per f32 row (64-byte aligned).
    pub vector_stride_bytes: u64,
    /// Bytes per int8 code row (0 without codes).
    pub code_stride_bytes: u64,
    /// Bytes per 1-bit code (heads and tails together; 0 without 1-bit codes).
    pub bits_row_bytes: u64,
    /// Highest template id in the segment.
    pub max_template_id: u64,
    /// Distinct subjects.
    pub subjects: usize,
    /// File size.
    pub file_bytes: u64,
    /// The CRC-32 stored in the footer.
    pub stored_crc: u32,
    /// Every section of the file, in file order.
    pub sections: Vec<SectionInfo>,
}

/// One section of a segment file, for `gallery inspect`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SectionInfo {
    /// What the section holds.
    pub name: &'static str,
    /// Where it starts.
    pub offset: u64,
    /// Its length in bytes (without the padding after it).
    pub bytes: u64,
}

impl Gallery {
    /// Maps a segment file read-only and checks its header, offsets and footer magic: O(1),
    /// no data is read. Call [`Gallery::verify`] before trusting the contents.
    ///
    /// # Errors
    /// I/O failure, or a truncated, foreign, future-version or corrupt file.
    pub fn open(path: &Path) -> Result<Self, GalleryError> {
        Self::open_with(path, false)
    }

    /// As [`Gallery::open`]; `populate` pre-faults every page (avoids page faults on the first
    /// searches, at the cost of reading the whole file now).
    ///
    /// # Errors
    /// As [`Gallery::open`].
    pub fn open_with(path: &Path, populate: bool) -> Result<Self, GalleryError> {
        Self::open_impl(
            path,
            if populate {
                Residency::MappedPopulated
            } else {
                Residency::Mapped
            },
        )
    }

    /// Reads the whole file into memory backed by transparent huge pages (see `mmap.rs` for
    /// why this scans faster than a map of the page cache), then checks the header as
    /// [`Gallery::open`] does. Searches never page-fault and an outside truncation of the
    /// file cannot crash the process.
    ///
    /// # Errors
    /// As [`Gallery::open`].
    pub fn load(path: &Path) -> Result<Self, GalleryError> {
        Self::open_impl(path, Residency::Resident)
    }

    fn open_impl(path: &Path, residency: Residency) -> Result<Self, GalleryError> {
        let io = |source| GalleryError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let label = path.display().to_string();
        if len < HEADER_LEN as u64 {
            // Too short to map meaningfully; decode the bytes for the precise error.
            let bytes = std::fs::read(path).map_err(io)?;
            return Err(Header::decode(&bytes, &label)
                .err()
                .unwrap_or(GalleryError::Truncated {
                    path: label,
                    len,
                    need: HEADER_LEN as u64,
                }));
        }
        let backing = match residency {
            Residency::Mapped => Backing::map(&file, false),
            Residency::MappedPopulated => Backing::map(&file, true),
            Residency::Resident => {
                let len = usize::try_from(len).map_err(|_| GalleryError::TooManyRows {
                    count: usize::MAX,
                    max: u32::MAX as usize,
                })?;
                Backing::load(&mut file, len)
            }
        }
        .map_err(io)?;
        let header = Header::decode(backing.bytes(), &label)?;
        Ok(Self {
            label,
            backing,
            header,
        })
    }

    /// Parses a segment from bytes (copied into an aligned buffer). Arbitrary input gives an
    /// error, never a panic: this is the `gallery_open` fuzz target's entry point.
    ///
    /// # Errors
    /// A truncated, foreign, future-version or corrupt segment.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GalleryError> {
        let label = "<memory>".to_string();
        let header = Header::decode(bytes, &label)?;
        Ok(Self {
            label,
            backing: Backing::copy_of(bytes),
            header,
        })
    }

    /// Checks everything `open` does not, in O(n): the CRC over all bytes before the footer,
    /// that the subject index is a sorted permutation, that codes are in [-127, 127], that
    /// every vector, scale and centre value is finite, and that 1-bit code padding is zero.
    ///
    /// # Errors
    /// `Corrupt` naming the first problem found and its byte offset.
    pub fn verify(&self) -> Result<(), GalleryError> {
        let l = &self.header.layout;
        let bytes = self.backing.bytes();
        let footer = l.footer_offset as usize;
        let stored = self.stored_crc();
        let actual = crc32fast::hash(&bytes[..footer]);
        if stored != actual {
            return Err(self.corrupt(
                l.footer_offset,
                format!("checksum mismatch: stored {stored:#010x}, computed {actual:#010x}; the file is damaged, rebuild it"),
            ));
        }
        self.verify_order()?;
        self.verify_values()
    }

    fn verify_order(&self) -> Result<(), GalleryError> {
        let (order, subjects, templates) = (self.order(), self.subjects(), self.templates());
        let n = self.len();
        let mut seen = vec![false; n];
        let mut prev: Option<(u64, u64)> = None;
        for (k, &r) in order.iter().enumerate() {
            let off = self.header.layout.order_offset + 4 * k as u64;
            let r = r as usize;
            if r >= n || std::mem::replace(&mut seen[r], true) {
                return Err(self.corrupt(
                    off,
                    format!("subject index entry {k} ({r}) is not a row or repeats"),
                ));
            }
            let key = (subjects[r], templates[r]);
            if prev.is_some_and(|p| p >= key) {
                return Err(self.corrupt(off, format!("subject index is not sorted at entry {k}")));
            }
            prev = Some(key);
        }
        let max = templates.iter().copied().max().unwrap_or(0);
        if max != self.header.max_template_id {
            return Err(self.corrupt(
                96,
                format!(
                    "max template id {} but rows hold {max}",
                    self.header.max_template_id
                ),
            ));
        }
        Ok(())
    }

    fn verify_values(&self) -> Result<(), GalleryError> {
        let l = &self.header.layout;
        for i in 0..self.len() {
            if self
                .vector(i)
                .is_some_and(|v| v.iter().any(|x| !x.is_finite()))
            {
                return Err(self.corrupt(
                    l.vectors_offset + i as u64 * l.vector_stride_bytes,
                    format!("row {i} holds a non-finite value"),
                ));
            }
        }
        if let Some(codes) = self.codes()
            && let Some(pos) = codes.iter().position(|&c| c == i8::MIN)
        {
            return Err(self.corrupt(
                l.codes_offset + pos as u64,
                "int8 code -128 is outside [-127, 127]".into(),
            ));
        }
        if let Some(q) = self.quant()
            && let Some(i) = q.iter().position(|&p| !RowQuant::is_valid(p))
        {
            return Err(self.corrupt(
                l.quant_offset + 16 * i as u64,
                format!("row {i} has invalid int8 parameters"),
            ));
        }
        self.verify_bits()
    }

    /// The centre is finite and no 1-bit code has a bit set past the dimension.
    fn verify_bits(&self) -> Result<(), GalleryError> {
        let l = &self.header.layout;
        let (Some(centre), Some((heads, head_words)), Some((tails, tail_words))) =
            (self.centre(), self.bit_heads(), self.bit_tails())
        else {
            return Ok(());
        };
        if let Some(j) = centre.iter().position(|x| !x.is_finite()) {
            return Err(self.corrupt(
                l.centre_offset + 4 * j as u64,
                format!("1-bit centre value {j} is not finite"),
            ));
        }
        let used = l.dim % 64;
        if used == 0 {
            return Ok(());
        }
        // Only a code's last word has bits past the dimension: the tail's, or the head's
        // when the whole code is one word.
        let (plane, words, offset) = if tail_words > 0 {
            (tails, tail_words, l.bits_tail_offset)
        } else {
            (heads, head_words, l.bits_offset)
        };
        for (i, row) in plane.chunks_exact(words.max(1)).enumerate() {
            if row[words - 1] >> used != 0 {
                return Err(self.corrupt(
                    offset + (8 * (i * words + words - 1)) as u64,
                    format!("row {i} has 1-bit code bits set past dimension {}", l.dim),
                ));
            }
        }
        Ok(())
    }

    fn corrupt(&self, offset: u64, what: String) -> GalleryError {
        GalleryError::Corrupt {
            path: self.label.clone(),
            offset,
            what,
        }
    }

    /// The path this segment was opened from (or `<memory>`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.header.layout.dim
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.header.layout.count
    }

    /// True if the segment has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `Binary` if the segment carries 1-bit codes (and int8 codes), `Int8` if it carries
    /// int8 codes, `F32` otherwise (the f32 rows are always there).
    pub fn precision(&self) -> Precision {
        self.header.layout.element.precision()
    }

    /// True if the segment can be scanned at `precision` (`Auto` and `F32` always can; the
    /// scan falls back to int8 where 1-bit codes are missing).
    pub fn supports(&self, precision: Precision) -> bool {
        let el = self.header.layout.element;
        match precision {
            Precision::Int8 => el.has_codes(),
            Precision::Binary => el.has_bits(),
            _ => true,
        }
    }

    /// True if rows were normalized to unit length when written.
    pub fn is_unit_norm(&self) -> bool {
        self.header.flags & FLAG_UNIT_NORM != 0
    }

    /// Highest template id stored.
    pub fn max_template_id(&self) -> u64 {
        self.header.max_template_id
    }

    /// The summary `gallery inspect` prints.
    pub fn info(&self) -> GalleryInfo {
        let l = &self.header.layout;
        let subjects = self
            .order()
            .windows(2)
            .filter(|w| self.subject_at(w[0]) != self.subject_at(w[1]))
            .count()
            + usize::from(!self.is_empty());
        GalleryInfo {
            format_version: self.header.version,
            dim: l.dim,
            count: l.count,
            precision: self.precision().name(),
            unit_norm: self.is_unit_norm(),
            vector_stride_bytes: l.vector_stride_bytes,
            code_stride_bytes: l.code_stride_bytes,
            bits_row_bytes: l.bits_row_bytes,
            max_template_id: self.header.max_template_id,
            subjects,
            file_bytes: l.file_len(),
            stored_crc: self.stored_crc(),
            sections: self.sections(),
        }
    }

    /// Every section present, in file order.
    fn sections(&self) -> Vec<SectionInfo> {
        let l = &self.header.layout;
        let n = l.count as u64;
        let all = [
            ("header", 0, HEADER_LEN as u64),
            ("f32 rows", l.vectors_offset, n * l.vector_stride_bytes),
            ("int8 codes", l.codes_offset, n * l.code_stride_bytes),
            ("int8 [scale, norm, err, 0]", l.quant_offset, 16 * n),
            ("1-bit centre", l.centre_offset, 4 * l.dim as u64),
            ("1-bit code heads", l.bits_offset, n * 8 * l.bits_head_words),
            (
                "1-bit code tails",
                l.bits_tail_offset,
                n * (l.bits_row_bytes - 8 * l.bits_head_words),
            ),
            ("template ids", l.templates_offset, 8 * n),
            ("subject ids", l.subjects_offset, 8 * n),
            ("subject index", l.order_offset, 4 * n),
            ("footer", l.footer_offset, FOOTER_LEN as u64),
        ];
        all.into_iter()
            .filter(|&(name, offset, _)| offset != 0 || name == "header")
            .map(|(name, offset, bytes)| SectionInfo {
                name,
                offset,
                bytes,
            })
            .collect()
    }

    fn stored_crc(&self) -> u32 {
        let f = self.header.layout.footer_offset as usize;
        let b = self.backing.bytes();
        u32::from_le_bytes([b[f], b[f + 1], b[f + 2], b[f + 3]])
    }

    fn section<T: bytemuck::Pod>(&self, offset: u64, count: usize) -> &[T] {
        let start = offset as usize;
        let end = start + count * size_of::<T>();
        // Offsets are checked against the layout at open and are multiples of 64 in a buffer
        // aligned to at least 8, so the cast cannot fail; an empty view is the safe fallback.
        self.backing
            .bytes()
            .get(start..end)
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .unwrap_or(&[])
    }

    fn f32_stride(&self) -> usize {
        self.header.layout.vector_stride_bytes as usize / 4
    }

    /// All f32 rows, `stride` floats apart (see [`Gallery::rows`]).
    pub fn vectors(&self) -> &[f32] {
        self.section(
            self.header.layout.vectors_offset,
            self.len() * self.f32_stride(),
        )
    }

    /// Row `i`'s f32 vector.
    pub fn vector(&self, i: usize) -> Option<&[f32]> {
        let s = self.f32_stride();
        self.vectors().get(i * s..i * s + self.dim())
    }

    /// int8 codes, `code_stride_bytes` apart, if the segment has them.
    pub fn codes(&self) -> Option<&[i8]> {
        let l = &self.header.layout;
        l.element
            .has_codes()
            .then(|| self.section(l.codes_offset, self.len() * l.code_stride_bytes as usize))
    }

    /// Per-row `[scale, norm, err, 0]`, if the segment has codes.
    pub fn quant(&self) -> Option<&[[f32; 4]]> {
        let l = &self.header.layout;
        l.element
            .has_codes()
            .then(|| self.section(l.quant_offset, self.len()))
    }

    /// The centre the 1-bit codes were taken against (`dim` values), if the segment has them.
    pub fn centre(&self) -> Option<&[f32]> {
        let l = &self.header.layout;
        l.element
            .has_bits()
            .then(|| self.section(l.centre_offset, l.dim))
    }

    /// The heads of the 1-bit codes (the first `words` words of every row's code) and
    /// `words`, if the segment has 1-bit codes.
    pub fn bit_heads(&self) -> Option<(&[u64], usize)> {
        let l = &self.header.layout;
        let words = l.bits_head_words as usize;
        l.element
            .has_bits()
            .then(|| (self.section(l.bits_offset, self.len() * words), words))
    }

    /// The tails of the 1-bit codes (the remaining `words` words of every row's code) and
    /// `words` (0 when a code is a single word), if the segment has 1-bit codes.
    pub fn bit_tails(&self) -> Option<(&[u64], usize)> {
        let l = &self.header.layout;
        let words = (l.bits_row_bytes / 8 - l.bits_head_words) as usize;
        l.element
            .has_bits()
            .then(|| (self.section(l.bits_tail_offset, self.len() * words), words))
    }

    /// Row `i`'s whole 1-bit code (head then tail), if the segment has 1-bit codes.
    pub fn bit_code(&self, i: usize) -> Option<Vec<u64>> {
        let ((heads, h), (tails, t)) = (self.bit_heads()?, self.bit_tails()?);
        let head = heads.get(i * h..(i + 1) * h)?;
        let tail = tails.get(i * t..(i + 1) * t)?;
        Some([head, tail].concat())
    }

    /// Subject id of every row.
    pub fn subjects(&self) -> &[u64] {
        self.section(self.header.layout.subjects_offset, self.len())
    }

    /// Template id of every row.
    pub fn templates(&self) -> &[u64] {
        self.section(self.header.layout.templates_offset, self.len())
    }

    /// Row numbers sorted by (subject, template).
    pub fn order(&self) -> &[u32] {
        self.section(self.header.layout.order_offset, self.len())
    }

    fn subject_at(&self, row: u32) -> Option<u64> {
        self.subjects().get(row as usize).copied()
    }

    /// Rows of `subject`, by binary search in the subject index: O(log n).
    pub fn rows_of(&self, subject: SubjectId) -> impl Iterator<Item = usize> + '_ {
        let order = self.order();
        let key = |r: &u32| self.subject_at(*r).unwrap_or(u64::MAX);
        let start = order.partition_point(|r| key(r) < subject.0);
        order[start..]
            .iter()
            .take_while(move |r| key(r) == subject.0)
            .map(|&r| r as usize)
    }

    /// The rows as the search sees them (with codes if the segment has them).
    pub fn rows(&self) -> Option<RowsRef<'_>> {
        let l = &self.header.layout;
        let rows = RowsRef::new(
            l.dim,
            self.vectors(),
            self.f32_stride(),
            self.subjects(),
            self.templates(),
        )?;
        let rows = match (self.codes(), self.quant()) {
            (Some(c), Some(q)) => rows.with_codes(c, l.code_stride_bytes as usize, q)?,
            _ => rows,
        };
        match (self.bit_heads(), self.bit_tails(), self.centre()) {
            (Some((heads, h)), Some((tails, t)), Some(c)) => rows.with_bits(heads, h, tails, t, c),
            _ => Some(rows),
        }
    }

    /// The path of the file (None for `from_bytes`).
    pub fn path(&self) -> Option<PathBuf> {
        (!matches!(self.backing, Backing::Owned { .. })).then(|| PathBuf::from(&self.label))
    }

    /// Element type on disk.
    pub fn element_type(&self) -> ElementType {
        self.header.layout.element
    }
}

impl std::fmt::Debug for Gallery {
    // Never prints row contents: templates are biometric data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gallery")
            .field("label", &self.label)
            .field("dim", &self.dim())
            .field("len", &self.len())
            .field("precision", &self.precision())
            .finish()
    }
}

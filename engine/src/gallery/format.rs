//! The segment file format, versions 1 and 2: header codec and section layout.
//!
//! The byte-offset table lives in the module docs of [`crate::gallery`]. The layout is a
//! pure function of `(dim, count, element type)`: `open` recomputes it and requires every
//! header offset to match, so a header can never point a view outside the file. Version 2
//! adds element type 3 (1-bit codes and their centre) and the header fields at 104..128 that
//! locate them; in version 1 those bytes are reserved zeros and element type 3 is refused.

use std::ops::RangeInclusive;

use super::GalleryError;
use crate::index::Precision;

/// First 8 bytes of every segment.
pub(crate) const MAGIC: [u8; 8] = *b"GWGALSEG";
/// Last 8 bytes of every segment.
pub(crate) const FOOTER_MAGIC: [u8; 8] = *b"GWSEGEND";
/// The format version this code writes.
pub const FORMAT_VERSION: u32 = 2;
/// Versions this code reads.
pub const SUPPORTED_VERSIONS: RangeInclusive<u32> = 1..=2;
/// Header size in bytes.
pub(crate) const HEADER_LEN: usize = 128;
/// Footer size in bytes.
pub(crate) const FOOTER_LEN: usize = 16;
/// Every section starts at a multiple of this.
pub(crate) const ALIGN: u64 = 64;
/// Largest dimension: keeps int8 dot products exact in i32 (65536 * 127 * 127 < 2^31).
pub const MAX_DIM: usize = 65_536;
/// Header flag: every row was normalized to unit length when written.
pub(crate) const FLAG_UNIT_NORM: u16 = 1;
/// Metric code: inner product (cosine for unit rows).
pub(crate) const METRIC_INNER_PRODUCT: u8 = 1;

/// What a segment stores per row.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElementType {
    /// f32 rows only.
    F32 = 1,
    /// f32 rows plus int8 codes with per-row `[scale, norm, err, 0]`.
    F32Int8 = 2,
    /// As `F32Int8`, plus a 1-bit code per dimension (sign after centring on the segment's
    /// mean) and the centre itself. Format version 2 and later.
    F32Int8Binary = 3,
}

impl ElementType {
    /// The on-disk code.
    pub fn to_code(self) -> u8 {
        self as u8
    }

    /// The element type for an on-disk code.
    pub fn try_from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::F32),
            2 => Some(Self::F32Int8),
            3 => Some(Self::F32Int8Binary),
            _ => None,
        }
    }

    /// True if rows carry int8 codes.
    pub fn has_codes(self) -> bool {
        matches!(self, Self::F32Int8 | Self::F32Int8Binary)
    }

    /// True if rows carry 1-bit codes.
    pub fn has_bits(self) -> bool {
        self == Self::F32Int8Binary
    }

    /// What a writer stores for a scan precision: f32 rows always, int8 codes for `Int8`,
    /// int8 and 1-bit codes for `Binary` and `Auto` (so the scan can be chosen later).
    pub fn for_precision(precision: Precision) -> Self {
        match precision {
            Precision::F32 => Self::F32,
            Precision::Int8 => Self::F32Int8,
            _ => Self::F32Int8Binary,
        }
    }

    /// The precision a segment of this type supports best.
    pub fn precision(self) -> Precision {
        match self {
            Self::F32 => Precision::F32,
            Self::F32Int8 => Precision::Int8,
            Self::F32Int8Binary => Precision::Binary,
        }
    }

    /// The first format version that has this element type.
    pub fn min_version(self) -> u32 {
        if self.has_bits() { 2 } else { 1 }
    }
}

/// Where every section lives, computed from `(dim, count, element type)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) dim: usize,
    pub(crate) count: usize,
    pub(crate) element: ElementType,
    pub(crate) vector_stride_bytes: u64,
    pub(crate) code_stride_bytes: u64,
    pub(crate) vectors_offset: u64,
    pub(crate) codes_offset: u64,
    pub(crate) quant_offset: u64,
    pub(crate) bits_row_bytes: u64,
    pub(crate) bits_head_words: u64,
    pub(crate) centre_offset: u64,
    pub(crate) bits_offset: u64,
    pub(crate) bits_tail_offset: u64,
    pub(crate) templates_offset: u64,
    pub(crate) subjects_offset: u64,
    pub(crate) order_offset: u64,
    pub(crate) footer_offset: u64,
}

impl Layout {
    /// The layout, or `None` if any offset would overflow u64.
    pub(crate) fn compute(dim: usize, count: usize, element: ElementType) -> Option<Self> {
        let n = count as u64;
        let vector_stride_bytes = align((dim as u64).checked_mul(4)?)?;
        let code_stride_bytes = if element.has_codes() {
            align(dim as u64)?
        } else {
            0
        };
        let vectors_offset = HEADER_LEN as u64;
        let mut end = vectors_offset.checked_add(n.checked_mul(vector_stride_bytes)?)?;
        let (codes_offset, quant_offset) = if element.has_codes() {
            let codes = align(end)?;
            let quant = align(codes.checked_add(n.checked_mul(code_stride_bytes)?)?)?;
            end = quant.checked_add(n.checked_mul(16)?)?;
            (codes, quant)
        } else {
            (0, 0)
        };
        // 1-bit codes are split in two planes: the head (first half of every code's words)
        // for all rows, then the tail, so a first pass can read the heads alone.
        let words = if element.has_bits() {
            (dim as u64).div_ceil(64)
        } else {
            0
        };
        let head_words = words.div_ceil(2);
        let (centre_offset, bits_offset, bits_tail_offset) = if element.has_bits() {
            let centre = align(end)?;
            let head = align(centre.checked_add((dim as u64).checked_mul(4)?)?)?;
            let tail = align(head.checked_add(n.checked_mul(8 * head_words)?)?)?;
            end = tail.checked_add(n.checked_mul(8 * (words - head_words))?)?;
            (centre, head, tail)
        } else {
            (0, 0, 0)
        };
        let templates_offset = align(end)?;
        let subjects_offset = align(templates_offset.checked_add(n.checked_mul(8)?)?)?;
        let order_offset = align(subjects_offset.checked_add(n.checked_mul(8)?)?)?;
        let footer_offset = align(order_offset.checked_add(n.checked_mul(4)?)?)?;
        footer_offset.checked_add(FOOTER_LEN as u64)?;
        Some(Self {
            dim,
            count,
            element,
            vector_stride_bytes,
            code_stride_bytes,
            vectors_offset,
            codes_offset,
            quant_offset,
            bits_row_bytes: 8 * words,
            bits_head_words: head_words,
            centre_offset,
            bits_offset,
            bits_tail_offset,
            templates_offset,
            subjects_offset,
            order_offset,
            footer_offset,
        })
    }

    /// Total file size.
    pub(crate) fn file_len(&self) -> u64 {
        self.footer_offset + FOOTER_LEN as u64
    }
}

fn align(x: u64) -> Option<u64> {
    x.checked_next_multiple_of(ALIGN)
}

/// The decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) flags: u16,
    pub(crate) max_template_id: u64,
    pub(crate) layout: Layout,
}

impl Header {
    /// Encodes the 128 header bytes.
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let l = &self.layout;
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..20].copy_from_slice(&(l.dim as u32).to_le_bytes());
        b[20] = l.element.to_code();
        b[21] = METRIC_INNER_PRODUCT;
        b[22..24].copy_from_slice(&self.flags.to_le_bytes());
        b[24..32].copy_from_slice(&(l.count as u64).to_le_bytes());
        b[32..36].copy_from_slice(&(l.vector_stride_bytes as u32).to_le_bytes());
        b[36..40].copy_from_slice(&(l.code_stride_bytes as u32).to_le_bytes());
        let offsets = [
            l.vectors_offset,
            l.codes_offset,
            l.quant_offset,
            l.templates_offset,
            l.subjects_offset,
            l.order_offset,
            l.footer_offset,
            self.max_template_id,
        ];
        for (k, v) in offsets.iter().enumerate() {
            b[40 + 8 * k..48 + 8 * k].copy_from_slice(&v.to_le_bytes());
        }
        if self.version >= 2 {
            b[104..108].copy_from_slice(&(l.bits_row_bytes as u32).to_le_bytes());
            b[112..120].copy_from_slice(&l.centre_offset.to_le_bytes());
            b[120..128].copy_from_slice(&l.bits_offset.to_le_bytes());
        }
        b
    }

    /// Decodes and checks a header against the file length, in O(1).
    pub(crate) fn decode(bytes: &[u8], path: &str) -> Result<Self, GalleryError> {
        let file_len = bytes.len() as u64;
        let min = (HEADER_LEN + FOOTER_LEN) as u64;
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            return Err(GalleryError::NotAGallery { path: path.into() });
        }
        if file_len < min {
            return Err(GalleryError::Truncated {
                path: path.into(),
                len: file_len,
                need: min,
            });
        }
        let corrupt = |offset: u64, what: String| GalleryError::Corrupt {
            path: path.into(),
            offset,
            what,
        };
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let version = u32_at(8);
        if version == 0 {
            return Err(corrupt(8, "format version 0".into()));
        }
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(GalleryError::Incompatible {
                path: path.into(),
                found: version,
                supported: SUPPORTED_VERSIONS,
            });
        }
        let header_len = u32_at(12);
        if header_len as usize != HEADER_LEN {
            return Err(corrupt(
                12,
                format!("header length {header_len}, expected {HEADER_LEN}"),
            ));
        }
        let dim = u32_at(16) as usize;
        if dim == 0 || dim > MAX_DIM {
            return Err(corrupt(
                16,
                format!("dimension {dim} outside 1..={MAX_DIM}"),
            ));
        }
        let element = ElementType::try_from_code(bytes[20])
            .ok_or_else(|| corrupt(20, format!("unknown element type code {}", bytes[20])))?;
        if element.min_version() > version {
            return Err(corrupt(
                20,
                format!(
                    "element type {} needs format version {}",
                    bytes[20],
                    element.min_version()
                ),
            ));
        }
        if bytes[21] != METRIC_INNER_PRODUCT {
            return Err(corrupt(21, format!("unknown metric code {}", bytes[21])));
        }
        let flags = u16::from_le_bytes([bytes[22], bytes[23]]);
        if flags & !FLAG_UNIT_NORM != 0 {
            return Err(corrupt(22, format!("unknown flags {flags:#06x}")));
        }
        let count = u64_at(24);
        if count > u64::from(u32::MAX) {
            return Err(corrupt(
                24,
                format!("row count {count} above the 2^32-1 limit"),
            ));
        }
        // Version 1 reserves 104..128; version 2 keeps 108..112 reserved.
        let reserved = if version == 1 {
            104..HEADER_LEN
        } else {
            108..112
        };
        if let Some(pos) = bytes[reserved.clone()].iter().position(|&b| b != 0) {
            return Err(corrupt(
                (reserved.start + pos) as u64,
                "reserved header bytes are not zero".into(),
            ));
        }
        let layout = Layout::compute(dim, count as usize, element)
            .ok_or_else(|| corrupt(24, format!("row count {count} x dimension {dim} overflows")))?;
        let found = [
            (
                32,
                u64::from(u32_at(32)),
                layout.vector_stride_bytes,
                "vector stride",
            ),
            (
                36,
                u64::from(u32_at(36)),
                layout.code_stride_bytes,
                "code stride",
            ),
            (40, u64_at(40), layout.vectors_offset, "vectors offset"),
            (48, u64_at(48), layout.codes_offset, "codes offset"),
            (56, u64_at(56), layout.quant_offset, "quantization offset"),
            (
                64,
                u64_at(64),
                layout.templates_offset,
                "template ids offset",
            ),
            (72, u64_at(72), layout.subjects_offset, "subject ids offset"),
            (80, u64_at(80), layout.order_offset, "subject order offset"),
            (88, u64_at(88), layout.footer_offset, "footer offset"),
            (
                104,
                u64::from(u32_at(104)),
                layout.bits_row_bytes,
                "1-bit code length",
            ),
            (
                112,
                u64_at(112),
                layout.centre_offset,
                "1-bit centre offset",
            ),
            (120, u64_at(120), layout.bits_offset, "1-bit codes offset"),
        ];
        for (off, got, want, what) in found {
            if got != want {
                return Err(corrupt(
                    off,
                    format!("{what} is {got}, the layout needs {want}"),
                ));
            }
        }
        let need = layout.file_len();
        if file_len < need {
            return Err(GalleryError::Truncated {
                path: path.into(),
                len: file_len,
                need,
            });
        }
        if file_len > need {
            return Err(corrupt(
                need,
                format!("{} unexpected bytes after the footer", file_len - need),
            ));
        }
        let f = layout.footer_offset as usize;
        if bytes[f + 8..f + 16] != FOOTER_MAGIC {
            return Err(corrupt(
                f as u64 + 8,
                "footer magic missing (truncated or overwritten)".into(),
            ));
        }
        if bytes[f + 4..f + 8] != [0; 4] {
            return Err(corrupt(
                f as u64 + 4,
                "reserved footer bytes are not zero".into(),
            ));
        }
        Ok(Self {
            version,
            flags,
            max_template_id: u64_at(96),
            layout,
        })
    }
}

/// The footer: CRC-32 (IEEE) of everything before it, reserved zeros, the end magic.
pub(crate) fn encode_footer(crc: u32) -> [u8; FOOTER_LEN] {
    let mut b = [0u8; FOOTER_LEN];
    b[..4].copy_from_slice(&crc.to_le_bytes());
    b[8..].copy_from_slice(&FOOTER_MAGIC);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_ordered() {
        for (dim, count, el) in [
            (512, 1000, ElementType::F32Int8),
            (3, 7, ElementType::F32),
            (1, 0, ElementType::F32Int8),
            (512, 1000, ElementType::F32Int8Binary),
            (65, 3, ElementType::F32Int8Binary),
        ] {
            let l = Layout::compute(dim, count, el).unwrap();
            let offs = [
                l.vectors_offset,
                l.templates_offset,
                l.subjects_offset,
                l.order_offset,
                l.footer_offset,
            ];
            assert!(offs.iter().all(|o| o % ALIGN == 0));
            assert!(offs.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(l.vector_stride_bytes % ALIGN, 0);
            if el.has_bits() {
                assert!(l.quant_offset < l.centre_offset && l.centre_offset < l.bits_offset);
                assert!(l.bits_offset <= l.bits_tail_offset);
                assert!(l.bits_tail_offset <= l.templates_offset);
                assert!(
                    [l.centre_offset, l.bits_offset, l.bits_tail_offset]
                        .iter()
                        .all(|o| o.is_multiple_of(ALIGN))
                );
                assert_eq!(l.bits_row_bytes, 8 * (dim as u64).div_ceil(64));
            }
        }
        assert!(Layout::compute(MAX_DIM, u32::MAX as usize, ElementType::F32Int8).is_some());
        assert!(Layout::compute(MAX_DIM, u32::MAX as usize, ElementType::F32Int8Binary).is_some());
    }

    fn file_for(h: &Header) -> Vec<u8> {
        let layout = h.layout;
        let mut file = vec![0u8; layout.file_len() as usize];
        file[..HEADER_LEN].copy_from_slice(&h.encode());
        let f = layout.footer_offset as usize;
        file[f..].copy_from_slice(&encode_footer(0));
        file
    }

    #[test]
    fn header_round_trips() {
        for (version, el) in [
            (1, ElementType::F32Int8),
            (2, ElementType::F32Int8),
            (2, ElementType::F32Int8Binary),
        ] {
            let layout = Layout::compute(16, 5, el).unwrap();
            let h = Header {
                version,
                flags: FLAG_UNIT_NORM,
                max_template_id: 77,
                layout,
            };
            assert_eq!(Header::decode(&file_for(&h), "t").unwrap(), h);
        }
    }

    #[test]
    fn version_1_refuses_binary_and_v2_fields() {
        let layout = Layout::compute(16, 5, ElementType::F32Int8Binary).unwrap();
        let h = Header {
            version: 2,
            flags: 0,
            max_template_id: 4,
            layout,
        };
        let mut file = file_for(&h);
        file[8..12].copy_from_slice(&1u32.to_le_bytes());
        let err = Header::decode(&file, "t").unwrap_err();
        assert!(
            matches!(err, GalleryError::Corrupt { offset: 20, .. }),
            "{err}"
        );
        // A version-1 header with anything in the v2 fields is corrupt.
        let v1 = Header {
            version: 1,
            layout: Layout::compute(16, 5, ElementType::F32Int8).unwrap(),
            ..h
        };
        let mut file = file_for(&v1);
        file[120] = 1;
        let err = Header::decode(&file, "t").unwrap_err();
        assert!(
            matches!(err, GalleryError::Corrupt { offset: 120, .. }),
            "{err}"
        );
        // A version-2 header whose code offset disagrees with the layout is corrupt.
        let mut file = file_for(&h);
        file[120] ^= 64;
        let err = Header::decode(&file, "t").unwrap_err();
        assert!(
            matches!(err, GalleryError::Corrupt { offset: 120, .. }),
            "{err}"
        );
    }
}

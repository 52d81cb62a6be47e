//! A minimal NumPy `.npy` (format 1.0) writer for float32 matrices, and a header parser used
//! by the tests to prove what the writer produced.
//!
//! Layout (numpy.lib.format): the magic `\x93NUMPY`, version bytes 1 and 0, a little-endian
//! u16 header length, then an ASCII Python dict literal padded with spaces and ending in `\n`
//! so that the data starts at a multiple of 64 bytes, then the data in C order.

use std::io::{self, Write};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
const ALIGN: usize = 64;

/// The complete header (magic through padding) for a float32 `(rows, cols)` C-order array.
pub(crate) fn f32_header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // 6 magic + 2 version + 2 length, then the dict, spaces and a final newline.
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let pad = (ALIGN - unpadded % ALIGN) % ALIGN;
    let header_len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(unpadded + pad);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    // The dict of any realistic shape is far below u16::MAX; the clamp keeps this total.
    out.extend_from_slice(&(header_len.min(usize::from(u16::MAX)) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

/// Appends float32 values in little-endian order.
pub(crate) fn write_f32s(w: &mut impl Write, values: &[f32]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    w.write_all(&bytes)
}

/// What a parsed header says.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) descr: String,
    pub(crate) fortran_order: bool,
    pub(crate) shape: Vec<usize>,
    pub(crate) data_offset: usize,
}

/// Parses a version 1.0 header (test helper; strict about what the writer produces).
#[cfg(test)]
pub(crate) fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing npy magic".into());
    }
    if bytes[6..8] != [1, 0] {
        return Err(format!("version {}.{} is not 1.0", bytes[6], bytes[7]));
    }
    let len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let end = 10 + len;
    let dict = std::str::from_utf8(bytes.get(10..end).ok_or("header truncated")?)
        .map_err(|e| e.to_string())?;
    if !dict.ends_with('\n') {
        return Err("header does not end with a newline".into());
    }
    let field = |key: &str| -> Result<&str, String> {
        let at = dict
            .find(&format!("'{key}': "))
            .ok_or_else(|| format!("no {key}"))?;
        Ok(&dict[at + key.len() + 4..])
    };
    let descr = field("descr")?;
    let descr = descr.trim_start_matches('\'');
    let descr = descr[..descr.find('\'').ok_or("bad descr")?].to_string();
    let fortran_order = field("fortran_order")?.starts_with("True");
    let shape = field("shape")?;
    let shape = &shape[1..shape.find(')').ok_or("bad shape")?];
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header {
        descr,
        fortran_order,
        shape,
        data_offset: end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parses_back() {
        for (rows, cols) in [
            (0, 512),
            (1, 1),
            (100_000, 512),
            (7, 128),
            (123_456_789, 4096),
        ] {
            let h = f32_header(rows, cols);
            assert_eq!(
                h.len() % 64,
                0,
                "header of {rows}x{cols} is {} bytes",
                h.len()
            );
            let parsed = parse_header(&h).unwrap();
            assert_eq!(parsed.descr, "<f4");
            assert!(!parsed.fortran_order);
            assert_eq!(parsed.shape, vec![rows, cols]);
            assert_eq!(parsed.data_offset, h.len());
        }
    }

    #[test]
    fn npy_data_is_little_endian_f32() {
        let mut out = f32_header(1, 2);
        write_f32s(&mut out, &[1.0, -2.5]).unwrap();
        let off = parse_header(&out).unwrap().data_offset;
        assert_eq!(&out[off..off + 4], &1.0f32.to_le_bytes());
        assert_eq!(&out[off + 4..], &(-2.5f32).to_le_bytes());
    }
}

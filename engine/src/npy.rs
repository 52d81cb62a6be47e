//! Reading and writing NumPy `.npy` files: what face pipelines produce.
//!
//! Supported: float32 matrices `(N, d)` in C order, little-endian (`'<f4'`), format versions
//! 1.0, 2.0 and 3.0; 1-D integer id arrays (`'<i8'`, `'<u8'`, `'<i4'`, `'<u4'`); and text id
//! files with one unsigned integer per line. Anything else is refused with a message saying
//! what was found and how to convert it (for example `arr.astype(np.float32)`).
//!
//! The format (numpy `lib/format.py`): the magic `\x93NUMPY`, a major and minor version byte,
//! a header length (u16 for 1.0, u32 for 2.0 and 3.0), then an ASCII (3.0: UTF-8) Python dict
//! literal `{'descr': '<f4', 'fortran_order': False, 'shape': (N, d), }` padded with spaces
//! and a newline so that the data starts at a multiple of 64 bytes.
//!
//! Files written here are created owner-only (0600): they usually hold face embeddings.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Longest header we accept; numpy itself caps headers far below this.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// An error reading or writing a `.npy` or id file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the `.npy` magic.
    #[error("{path}: not a .npy file (no \\x93NUMPY magic); save arrays with numpy.save")]
    NotNpy {
        /// The file.
        path: PathBuf,
    },
    /// A `.npy` format version other than 1.0, 2.0 or 3.0.
    #[error("{path}: unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },
    /// The header dict could not be parsed.
    #[error("{path}: malformed .npy header: {what}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The element type is not the one required.
    #[error("{path}: dtype {found:?} is not supported, expected {expected}")]
    WrongDtype {
        /// The file.
        path: PathBuf,
        /// The `descr` found.
        found: String,
        /// What is accepted, with a conversion hint.
        expected: &'static str,
    },
    /// The array is stored in Fortran (column-major) order.
    #[error("{path}: array is in Fortran order; save a C-order array (np.ascontiguousarray)")]
    FortranOrder {
        /// The file.
        path: PathBuf,
    },
    /// The array has the wrong number of dimensions.
    #[error("{path}: shape {found:?} is not supported, expected {expected}")]
    WrongShape {
        /// The file.
        path: PathBuf,
        /// The shape found.
        found: Vec<u64>,
        /// What is accepted.
        expected: &'static str,
    },
    /// The data section is shorter or longer than the shape says.
    #[error("{path}: data is {found_bytes} bytes but the header's shape needs {expected_bytes}")]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Bytes the shape implies.
        expected_bytes: u64,
        /// Bytes present.
        found_bytes: u64,
    },
    /// A text id file has a line that is not an unsigned integer.
    #[error("{path}:{line}: {text:?} is not an unsigned integer id")]
    BadId {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending text (truncated).
        text: String,
    },
    /// A signed id array holds a negative value.
    #[error("{path}: id at index {index} is negative ({value}); ids must be unsigned")]
    NegativeId {
        /// The file.
        path: PathBuf,
        /// Position in the array.
        index: usize,
        /// The value.
        value: i64,
    },
    /// Arguments to a writer do not describe a matrix.
    #[error("cannot write {path}: {rows} rows x {dim} columns needs {expected} floats, got {got}")]
    BadMatrix {
        /// The file.
        path: PathBuf,
        /// Rows requested.
        rows: usize,
        /// Columns requested.
        dim: usize,
        /// `rows * dim`.
        expected: usize,
        /// Floats supplied.
        got: usize,
    },
}

/// A row-major float32 matrix read from a `.npy` file.
#[derive(Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns (the embedding dimension).
    pub dim: usize,
    /// `rows * dim` values, row-major.
    pub data: Vec<f32>,
}

impl Matrix {
    /// Row `i` (panics if `i >= rows`, like slice indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Iterates over the rows.
    pub fn iter_rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim.max(1)).take(self.rows)
    }
}

impl std::fmt::Debug for Matrix {
    // Embeddings are biometric data: never print the values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matrix")
            .field("rows", &self.rows)
            .field("dim", &self.dim)
            .finish()
    }
}

/// The parsed header of a `.npy` file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
    data_offset: u64,
}

/// Reads a float32 `(N, d)` C-order little-endian `.npy` file.
///
/// # Errors
/// Any other dtype, order, rank or version, a short or long data section, or an I/O error.
pub fn read_f32_matrix(path: &Path) -> Result<Matrix, NpyError> {
    let mut file = open(path)?;
    let header = read_header(path, &mut file)?;
    if header.descr != "<f4" {
        return Err(NpyError::WrongDtype {
            path: path.to_owned(),
            found: header.descr,
            expected: "float32 '<f4' (convert with arr.astype('<f4'))",
        });
    }
    if header.fortran_order {
        return Err(NpyError::FortranOrder {
            path: path.to_owned(),
        });
    }
    let [rows, dim] = header.shape[..] else {
        return Err(NpyError::WrongShape {
            path: path.to_owned(),
            found: header.shape,
            expected: "a 2-D array (N, d)",
        });
    };
    let data = read_data::<f32>(path, &mut file, header.data_offset, rows.checked_mul(dim))?;
    Ok(Matrix {
        rows: rows as usize,
        dim: dim as usize,
        data,
    })
}

/// Reads ids: a 1-D integer `.npy` (int64, uint64, int32, uint32) or, for any other file, a
/// text file with one unsigned integer per line (blank lines are skipped).
///
/// # Errors
/// A bad dtype or shape, a negative id, a line that is not an integer, or an I/O error.
pub fn read_ids(path: &Path) -> Result<Vec<u64>, NpyError> {
    let mut file = open(path)?;
    let mut magic = [0u8; 6];
    let is_npy = matches!(file.read(&mut magic), Ok(6)) && &magic == MAGIC;
    drop(file);
    if is_npy {
        read_npy_ids(path)
    } else {
        read_text_ids(path)
    }
}

/// Writes a float32 `(rows, dim)` matrix as a version 1.0 `.npy` file, owner-only (0600).
///
/// # Errors
/// `data.len() != rows * dim`, or an I/O error.
pub fn write_f32_matrix(
    path: &Path,
    rows: usize,
    dim: usize,
    data: &[f32],
) -> Result<(), NpyError> {
    let expected = rows.saturating_mul(dim);
    if expected != data.len() {
        return Err(NpyError::BadMatrix {
            path: path.to_owned(),
            rows,
            dim,
            expected,
            got: data.len(),
        });
    }
    let mut writer = F32MatrixWriter::create(path, rows, dim)?;
    writer.write_rows(data)?;
    writer.finish()
}

/// Writes a float32 `(rows, dim)` matrix as a version 1.0 `.npy` file a block of rows at a
/// time, for matrices too large to hold in memory (a generated population of millions of
/// templates). The file is owner-only (0600); [`finish`](Self::finish) checks that exactly
/// `rows` rows arrived and syncs the file to disk.
#[derive(Debug)]
pub struct F32MatrixWriter {
    path: PathBuf,
    out: BufWriter<File>,
    rows: usize,
    dim: usize,
    /// Floats written so far.
    written: usize,
}

impl F32MatrixWriter {
    /// Creates (or truncates) `path` and writes the header of a `(rows, dim)` matrix.
    ///
    /// # Errors
    /// An I/O error.
    pub fn create(path: &Path, rows: usize, dim: usize) -> Result<Self, NpyError> {
        let dict =
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
        Ok(Self {
            out: create_npy(path, &dict)?,
            path: path.to_owned(),
            rows,
            dim,
            written: 0,
        })
    }

    /// Appends whole rows, row-major: `values.len()` must be a multiple of `dim`, and the rows
    /// written so far must not exceed `rows`.
    ///
    /// # Errors
    /// A partial row or too many rows (nothing is written then), or an I/O error.
    pub fn write_rows(&mut self, values: &[f32]) -> Result<(), NpyError> {
        let total = self.written.saturating_add(values.len());
        // With `dim` 0 only an empty slice is a whole number of rows.
        let partial_row = !values.len().is_multiple_of(self.dim);
        if partial_row || total > self.rows.saturating_mul(self.dim) {
            return Err(self.bad_matrix(total));
        }
        self.out
            .write_all(bytemuck::cast_slice(values))
            .map_err(io_err(&self.path))?;
        self.written = total;
        Ok(())
    }

    /// Flushes and syncs the file once every row is written.
    ///
    /// # Errors
    /// Fewer rows than the header announced, or an I/O error.
    pub fn finish(self) -> Result<(), NpyError> {
        if self.written != self.rows.saturating_mul(self.dim) {
            return Err(self.bad_matrix(self.written));
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_err(&self.path)(e.into_error()))?;
        file.sync_all().map_err(io_err(&self.path))
    }

    fn bad_matrix(&self, got: usize) -> NpyError {
        NpyError::BadMatrix {
            path: self.path.clone(),
            rows: self.rows,
            dim: self.dim,
            expected: self.rows.saturating_mul(self.dim),
            got,
        }
    }
}

/// Writes 1-D uint64 ids as a version 1.0 `.npy` file, owner-only (0600).
///
/// # Errors
/// An I/O error.
pub fn write_u64_ids(path: &Path, ids: &[u64]) -> Result<(), NpyError> {
    let dict = format!(
        "{{'descr': '<u8', 'fortran_order': False, 'shape': ({},), }}",
        ids.len()
    );
    write_npy(path, &dict, bytemuck::cast_slice(ids))
}

fn open(path: &Path) -> Result<File, NpyError> {
    File::open(path).map_err(|source| NpyError::Io {
        path: path.to_owned(),
        source,
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NpyError + '_ {
    move |source| NpyError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_npy_ids(path: &Path) -> Result<Vec<u64>, NpyError> {
    let mut file = open(path)?;
    let header = read_header(path, &mut file)?;
    if header.fortran_order && header.shape.len() > 1 {
        return Err(NpyError::FortranOrder {
            path: path.to_owned(),
        });
    }
    let [n] = header.shape[..] else {
        return Err(NpyError::WrongShape {
            path: path.to_owned(),
            found: header.shape,
            expected: "a 1-D array (N,)",
        });
    };
    let off = header.data_offset;
    match header.descr.as_str() {
        "<u8" => read_data::<u64>(path, &mut file, off, Some(n)),
        "<u4" => Ok(read_data::<u32>(path, &mut file, off, Some(n))?
            .into_iter()
            .map(u64::from)
            .collect()),
        "<i8" => signed_to_ids(path, read_data::<i64>(path, &mut file, off, Some(n))?),
        "<i4" => signed_to_ids(
            path,
            read_data::<i32>(path, &mut file, off, Some(n))?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        _ => Err(NpyError::WrongDtype {
            path: path.to_owned(),
            found: header.descr,
            expected: "int64 '<i8' or uint64 '<u8' (convert with arr.astype('<u8'))",
        }),
    }
}

fn signed_to_ids(path: &Path, ids: Vec<i64>) -> Result<Vec<u64>, NpyError> {
    if let Some((index, &value)) = ids.iter().enumerate().find(|&(_, &v)| v < 0) {
        return Err(NpyError::NegativeId {
            path: path.to_owned(),
            index,
            value,
        });
    }
    Ok(ids.into_iter().map(|v| v as u64).collect())
}

fn read_text_ids(path: &Path) -> Result<Vec<u64>, NpyError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let id = t.parse::<u64>().map_err(|_| NpyError::BadId {
            path: path.to_owned(),
            line: i + 1,
            text: t.chars().take(40).collect(),
        })?;
        ids.push(id);
    }
    Ok(ids)
}

/// Reads `count` little-endian elements starting at `offset`, checking the file size first so
/// that a lying header cannot make us allocate more than the file holds.
fn read_data<T: bytemuck::Pod + Default>(
    path: &Path,
    file: &mut File,
    offset: u64,
    count: Option<u64>,
) -> Result<Vec<T>, NpyError> {
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let found_bytes = file_len.saturating_sub(offset);
    let expected_bytes = count.and_then(|c| c.checked_mul(size_of::<T>() as u64));
    let Some(expected_bytes) = expected_bytes.filter(|&e| e == found_bytes) else {
        return Err(NpyError::SizeMismatch {
            path: path.to_owned(),
            expected_bytes: expected_bytes.unwrap_or(u64::MAX),
            found_bytes,
        });
    };
    let n = (expected_bytes / size_of::<T>() as u64) as usize;
    let mut out = vec![T::default(); n];
    file.read_exact(bytemuck::cast_slice_mut(&mut out))
        .map_err(io_err(path))?;
    Ok(out)
}

fn read_header(path: &Path, file: &mut File) -> Result<Header, NpyError> {
    let mut pre = [0u8; 8];
    file.read_exact(&mut pre).map_err(|_| NpyError::NotNpy {
        path: path.to_owned(),
    })?;
    if &pre[..6] != MAGIC {
        return Err(NpyError::NotNpy {
            path: path.to_owned(),
        });
    }
    let (major, minor) = (pre[6], pre[7]);
    let (len, prefix) = match (major, minor) {
        (1, 0) => {
            let mut b = [0u8; 2];
            file.read_exact(&mut b).map_err(io_err(path))?;
            (usize::from(u16::from_le_bytes(b)), 10u64)
        }
        (2, 0) | (3, 0) => {
            let mut b = [0u8; 4];
            file.read_exact(&mut b).map_err(io_err(path))?;
            (u32::from_le_bytes(b) as usize, 12u64)
        }
        _ => {
            return Err(NpyError::UnsupportedVersion {
                path: path.to_owned(),
                major,
                minor,
            });
        }
    };
    if len > MAX_HEADER_BYTES {
        return Err(bad_header(
            path,
            format!("header length {len} is implausibly large"),
        ));
    }
    let mut dict = vec![0u8; len];
    file.read_exact(&mut dict).map_err(io_err(path))?;
    let text = String::from_utf8(dict).map_err(|_| bad_header(path, "not UTF-8".into()))?;
    let mut header = parse_dict(&text).map_err(|what| bad_header(path, what))?;
    header.data_offset = prefix + len as u64;
    Ok(header)
}

fn bad_header(path: &Path, what: String) -> NpyError {
    NpyError::BadHeader {
        path: path.to_owned(),
        what,
    }
}

/// Parses the header dict. Only the three keys numpy writes are understood; their order is
/// free, as in numpy's own reader.
fn parse_dict(text: &str) -> Result<Header, String> {
    let t = text.trim();
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| "header is not a dict literal".to_string())?;
    let descr = value_after(inner, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|s| s.split_once('\''))
        .map(|(d, _)| d.to_string())
        .ok_or_else(|| "descr is not a quoted string".to_string())?;
    let fortran = value_after(inner, "fortran_order")?;
    let fortran_order = if fortran.starts_with("True") {
        true
    } else if fortran.starts_with("False") {
        false
    } else {
        return Err("fortran_order is neither True nor False".into());
    };
    let shape_text = value_after(inner, "shape")?;
    let shape_text = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| "shape is not a tuple".to_string())?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<u64>()
                .map_err(|_| format!("bad dimension {s:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Header {
        descr,
        fortran_order,
        shape,
        data_offset: 0,
    })
}

/// The text following `'key':` in the dict body.
fn value_after<'a>(dict: &'a str, key: &str) -> Result<&'a str, String> {
    for quote in ['\'', '"'] {
        let pat = format!("{quote}{key}{quote}");
        if let Some(pos) = dict.find(&pat) {
            let rest = dict[pos + pat.len()..].trim_start();
            if let Some(v) = rest.strip_prefix(':') {
                return Ok(v.trim_start());
            }
        }
    }
    Err(format!("missing key {key:?}"))
}

fn write_npy(path: &Path, dict: &str, data: &[u8]) -> Result<(), NpyError> {
    let mut w = create_npy(path, dict)?;
    let write = |w: &mut BufWriter<File>| -> std::io::Result<()> {
        w.write_all(data)?;
        w.flush()
    };
    write(&mut w).map_err(io_err(path))
}

/// Creates (or truncates) `path` owner-only and writes a version 1.0 header holding `dict`.
fn create_npy(path: &Path, dict: &str) -> Result<BufWriter<File>, NpyError> {
    // Pad so that magic + version + length + dict + '\n' is a multiple of 64 (numpy >= 1.21).
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let mut header = dict.to_string();
    header.extend(std::iter::repeat_n(' ', pad));
    header.push('\n');
    let hlen = u16::try_from(header.len())
        .map_err(|_| bad_header(path, "header longer than 65535 bytes".into()))?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    // `mode` applies only when the file is created; an older file would keep its bits.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let write = |w: &mut BufWriter<File>| -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&[1, 0])?;
        w.write_all(&hlen.to_le_bytes())?;
        w.write_all(header.as_bytes())
    };
    write(&mut w).map_err(io_err(path))?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_npy(dir: &Path, name: &str, major: u8, dict: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        let mut bytes = MAGIC.to_vec();
        bytes.extend([major, 0]);
        if major == 1 {
            bytes.extend((dict.len() as u16).to_le_bytes());
        } else {
            bytes.extend((dict.len() as u32).to_le_bytes());
        }
        bytes.extend(dict.as_bytes());
        bytes.extend(data);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn f32_matrix_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        write_f32_matrix(&path, 3, 4, &data).unwrap();
        let m = read_f32_matrix(&path).unwrap();
        assert_eq!((m.rows, m.dim), (3, 4));
        assert_eq!(m.data, data);
        assert_eq!(m.row(2), &data[8..12]);
        let bytes = std::fs::read(&path).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0, "data must start 64-aligned");
    }

    #[test]
    fn reads_versions_2_and_3() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|f| f.to_le_bytes()).collect();
        let dict = "{'shape': (1, 2), 'fortran_order': False, 'descr': '<f4'}\n";
        for v in [2, 3] {
            let p = raw_npy(dir.path(), &format!("v{v}.npy"), v, dict, &data);
            assert_eq!(read_f32_matrix(&p).unwrap().data, vec![1.0, 2.0]);
        }
    }

    #[test]
    fn rejects_f64_fortran_1d_future_and_short() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let f64p = raw_npy(
            d,
            "a.npy",
            1,
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }",
            &[0; 8],
        );
        assert!(matches!(
            read_f32_matrix(&f64p),
            Err(NpyError::WrongDtype { .. })
        ));
        let fo = raw_npy(
            d,
            "b.npy",
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 1), }",
            &[0; 4],
        );
        assert!(matches!(
            read_f32_matrix(&fo),
            Err(NpyError::FortranOrder { .. })
        ));
        let one = raw_npy(
            d,
            "c.npy",
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            &[0; 12],
        );
        assert!(matches!(
            read_f32_matrix(&one),
            Err(NpyError::WrongShape { .. })
        ));
        let fut = raw_npy(d, "d.npy", 4, "{}", &[]);
        assert!(matches!(
            read_f32_matrix(&fut),
            Err(NpyError::UnsupportedVersion { major: 4, .. })
        ));
        let short = raw_npy(
            d,
            "e.npy",
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
            &[0; 12],
        );
        assert!(matches!(
            read_f32_matrix(&short),
            Err(NpyError::SizeMismatch { .. })
        ));
        let huge = raw_npy(
            d,
            "f.npy",
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 2), }",
            &[],
        );
        assert!(matches!(
            read_f32_matrix(&huge),
            Err(NpyError::SizeMismatch { .. })
        ));
        std::fs::write(d.join("g.npy"), b"hello").unwrap();
        assert!(matches!(
            read_f32_matrix(&d.join("g.npy")),
            Err(NpyError::NotNpy { .. })
        ));
    }

    #[test]
    fn ids_from_npy_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = d.join("ids.npy");
        write_u64_ids(&p, &[5, 7, u64::MAX]).unwrap();
        assert_eq!(read_ids(&p).unwrap(), vec![5, 7, u64::MAX]);
        let neg: Vec<u8> = [3i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let np = raw_npy(
            d,
            "neg.npy",
            1,
            "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
            &neg,
        );
        assert!(matches!(
            read_ids(&np),
            Err(NpyError::NegativeId {
                index: 1,
                value: -1,
                ..
            })
        ));
        let t = d.join("ids.txt");
        std::fs::write(&t, "10\n 11 \n\n12\n").unwrap();
        assert_eq!(read_ids(&t).unwrap(), vec![10, 11, 12]);
        std::fs::write(&t, "10\nx1\n").unwrap();
        assert!(matches!(read_ids(&t), Err(NpyError::BadId { line: 2, .. })));
    }

    #[test]
    fn matrix_writer_streams_blocks_and_checks_the_row_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocks.npy");
        let data: Vec<f32> = (0..15).map(|i| i as f32 - 7.25).collect();
        let mut w = F32MatrixWriter::create(&path, 5, 3).unwrap();
        w.write_rows(&data[..6]).unwrap();
        w.write_rows(&[]).unwrap();
        w.write_rows(&data[6..]).unwrap();
        w.finish().unwrap();
        let m = read_f32_matrix(&path).unwrap();
        assert_eq!((m.rows, m.dim), (5, 3));
        assert_eq!(m.data, data);

        // A partial row, a row past the announced count, and a short matrix are refused.
        let mut w = F32MatrixWriter::create(&path, 2, 3).unwrap();
        assert!(matches!(
            w.write_rows(&data[..4]),
            Err(NpyError::BadMatrix { got: 4, .. })
        ));
        w.write_rows(&data[..6]).unwrap();
        assert!(matches!(
            w.write_rows(&data[..3]),
            Err(NpyError::BadMatrix { got: 9, .. })
        ));
        w.finish().unwrap();
        let mut w = F32MatrixWriter::create(&path, 2, 3).unwrap();
        w.write_rows(&data[..3]).unwrap();
        assert!(matches!(
            w.finish(),
            Err(NpyError::BadMatrix {
                expected: 6,
                got: 3,
                ..
            })
        ));
    }

    #[test]
    fn rewriting_a_loose_file_makes_it_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.npy");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_f32_matrix(&p, 1, 2, &[1.0, 2.0]).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_f32_matrix(&p).unwrap().data, vec![1.0, 2.0]);
    }

    #[test]
    fn written_files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        write_f32_matrix(&p, 1, 1, &[1.0]).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn debug_hides_values() {
        let m = Matrix {
            rows: 1,
            dim: 2,
            data: vec![0.123, 0.456],
        };
        assert!(!format!("{m:?}").contains("0.123"));
    }
}

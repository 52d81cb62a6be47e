//! Scoring kernels and their run-time dispatch.
//!
//! A [`Kernels`] value is a table of function pointers for one instruction set ([`Isa`]).
//! It can only be obtained through [`Kernels::for_isa`], [`Kernels::scalar`],
//! [`Kernels::detect`], [`Kernels::select`] or [`Kernels::available`], each of which checks
//! the CPU first, so *holding a table proves the CPU supports it* (memchr's pattern). The
//! search code copies the table once and calls through it, so the hot loop pays no feature
//! test, atomic load or branch.
//!
//! The kernels score a block of gallery rows against one query ([`F32Block`], [`I8Block`])
//! or against several queries at once ([`F32Multi`], [`I8Multi`]: each row is loaded once
//! from memory and used for every query, which turns the memory-bound scan into a
//! compute-bound one). Block constructors validate every length, so the SIMD code can rely
//! on them.
//!
//! int8 kernels compute the exact integer dot product of codes in `[-127, 127]`; the caller
//! turns it into an approximate score and an error bound (see [`crate::index::quant`]).
//!
//! 1-bit kernels ([`BitBlock`], [`BitMulti`], [`BitGather`]) compute Hamming distances between codes stored
//! as little-endian `u64` words (see [`crate::index::bits`]): `popcount(q ^ r)`, exact
//! integers, so every table must return exactly the scalar oracle's values.
//!
//! `GATEWARDEN_ISA=scalar|avx2|avx512|neon` forces a table ([`Kernels::select`] reads it once);
//! an unknown value or an instruction set the CPU lacks is refused, never silently replaced.
//!
//! | Isa | Requires | f32 | int8 | 1-bit |
//! |---|---|---|---|---|
//! | `avx512` | AVX-512 F, BW, VNNI + FMA + POPCNT | 512-bit FMA, 4 accumulators | `vpdpbusd` | `vpopcntq` if VPOPCNTDQ, else the AVX2 kernel |
//! | `avx2` | AVX2 + FMA + POPCNT | 256-bit FMA, 4 accumulators | `vpmaddubsw` sign trick | nibble-LUT `vpshufb` + `vpsadbw`, beside scalar `popcnt` |
//! | `neon` | aarch64 NEON (always) | `vfmaq_f32` | `vmull_s8` + `vpadalq_s16` | `vcnt` + `vpadal` |
//! | `scalar` | nothing | `zip().map().sum()` | same, in i32 | `count_ones` |

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

mod scalar;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_endian = "big")]
compile_error!(
    "gatewarden reads little-endian gallery files by mapping them; big-endian hosts are not supported"
);

/// Environment variable that forces a kernel table.
pub const ISA_ENV: &str = "GATEWARDEN_ISA";

/// Which instruction set a kernel table targets (reported in stats and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// ARMv8 Advanced SIMD.
    Aarch64Neon,
    /// Portable Rust, no SIMD intrinsics: the reference every other table is tested against.
    Scalar,
    /// x86-64 AVX2 with FMA.
    X86Avx2,
    /// x86-64 AVX-512 (F, BW, VNNI) with FMA.
    X86Avx512,
}

impl Isa {
    /// Every instruction set, in preference order (best first).
    pub const ALL: [Self; 4] = [
        Self::X86Avx512,
        Self::X86Avx2,
        Self::Aarch64Neon,
        Self::Scalar,
    ];

    /// The name used by `GATEWARDEN_ISA` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aarch64Neon => "neon",
            Self::Scalar => "scalar",
            Self::X86Avx2 => "avx2",
            Self::X86Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = IsaError;

    fn from_str(s: &str) -> Result<Self, IsaError> {
        Self::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| IsaError::Unknown {
                value: s.chars().take(32).collect(),
            })
    }
}

/// A requested instruction set cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IsaError {
    /// The name is not one of `scalar`, `avx2`, `avx512`, `neon`.
    #[error("unknown instruction set {value:?}: use one of auto, scalar, avx2, avx512, neon")]
    Unknown {
        /// What was asked for.
        value: String,
    },
    /// The CPU (or this build's target) lacks the instruction set.
    #[error("this CPU does not support the {isa} kernels; unset {ISA_ENV} or choose another")]
    Unsupported {
        /// What was asked for.
        isa: Isa,
    },
}

/// One query against `n` rows of the same element type (row `i` starts at `i * stride`,
/// and has as many elements as the query): f32 values, int8 codes or 1-bit code words.
#[derive(Clone, Copy)]
pub struct RowBlock<'a, T> {
    query: &'a [T],
    rows: &'a [T],
    stride: usize,
    n: usize,
}

/// One f32 query against `n` rows of f32.
pub type F32Block<'a> = RowBlock<'a, f32>;
/// One int8 query against `n` rows of int8 codes.
pub type I8Block<'a> = RowBlock<'a, i8>;
/// One 1-bit query code against `n` rows of codes (in 64-bit words).
pub type BitBlock<'a> = RowBlock<'a, u64>;

impl<'a, T> RowBlock<'a, T> {
    /// A block, or `None` unless `stride >= query.len()` and `rows` holds `n` rows.
    pub fn new(query: &'a [T], rows: &'a [T], stride: usize, n: usize) -> Option<Self> {
        rows_fit(query.len(), rows.len(), stride, n).then_some(Self {
            query,
            rows,
            stride,
            n,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True if the block has no rows.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The query (its length is every row's).
    pub fn query(&self) -> &'a [T] {
        self.query
    }

    /// Row `i < len()`, as many elements as the query.
    pub fn row(&self, i: usize) -> &'a [T] {
        &self.rows[i * self.stride..i * self.stride + self.query.len()]
    }

    fn truncated(self, n: usize) -> Self {
        Self {
            n: self.n.min(n),
            ..self
        }
    }
}

/// `nq` queries (query `j` starts at `j * qstride`) against `n` rows (row `i` at
/// `i * stride`), each `dim` elements of one type; the kernels write `out[i * nq + j]`.
///
/// The batched scan: a block of rows stays in L1 while every query of the micro-batch is
/// compared with it, so the rows stream from memory once per batch, not once per query. For
/// 1-bit codes, `dim` counts 64-bit words.
#[derive(Clone, Copy)]
pub struct MultiBlock<'a, T> {
    queries: &'a [T],
    qstride: usize,
    nq: usize,
    rows: &'a [T],
    stride: usize,
    n: usize,
    dim: usize,
}

/// `nq` f32 queries against `n` rows of f32.
pub type F32Multi<'a> = MultiBlock<'a, f32>;
/// `nq` int8 queries against `n` rows of int8 codes.
pub type I8Multi<'a> = MultiBlock<'a, i8>;
/// `nq` 1-bit query codes against `n` rows of codes.
pub type BitMulti<'a> = MultiBlock<'a, u64>;

impl<'a, T> MultiBlock<'a, T> {
    /// A block, or `None` unless both strides are `>= dim` and both slices hold their rows.
    pub fn new(
        dim: usize,
        queries: &'a [T],
        qstride: usize,
        nq: usize,
        rows: &'a [T],
        stride: usize,
        n: usize,
    ) -> Option<Self> {
        (rows_fit(dim, queries.len(), qstride, nq) && rows_fit(dim, rows.len(), stride, n))
            .then_some(Self {
                queries,
                qstride,
                nq,
                rows,
                stride,
                n,
                dim,
            })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True if the block has no rows.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Number of queries.
    pub fn queries(&self) -> usize {
        self.nq
    }

    /// Query `j < queries()`.
    pub fn query(&self, j: usize) -> &'a [T] {
        &self.queries[j * self.qstride..j * self.qstride + self.dim]
    }

    /// Row `i < len()`.
    pub fn row(&self, i: usize) -> &'a [T] {
        &self.rows[i * self.stride..i * self.stride + self.dim]
    }

    fn truncated(self, n: usize) -> Self {
        Self {
            n: self.n.min(n),
            ..self
        }
    }
}

/// One 1-bit query code against rows picked from a plane of codes (row `r` starts at
/// `r * stride`): the second pass of the binary scan, where the picked rows are a scattered
/// 1-2% of the plane and each costs a cache miss, so the kernels prefetch ahead.
#[derive(Clone, Copy)]
pub struct BitGather<'a> {
    query: &'a [u64],
    rows: &'a [u64],
    stride: usize,
    picks: &'a [u32],
}

impl<'a> BitGather<'a> {
    /// A gather, or `None` unless `stride >= query.len()` and every pick is a whole row of
    /// `rows`.
    pub fn new(query: &'a [u64], rows: &'a [u64], stride: usize, picks: &'a [u32]) -> Option<Self> {
        let whole_row = |r: &u32| {
            (*r as usize)
                .checked_mul(stride)
                .and_then(|start| start.checked_add(query.len()))
                .is_some_and(|end| end <= rows.len())
        };
        let fits = stride >= query.len() && picks.iter().all(whole_row);
        fits.then_some(Self {
            query,
            rows,
            stride,
            picks,
        })
    }

    /// Number of picked rows.
    pub fn len(&self) -> usize {
        self.picks.len()
    }

    /// True if no row is picked.
    pub fn is_empty(&self) -> bool {
        self.picks.is_empty()
    }

    /// The query (its length is every row's).
    pub fn query(&self) -> &'a [u64] {
        self.query
    }

    /// The picked row indices.
    pub fn picks(&self) -> &'a [u32] {
        self.picks
    }

    /// Row `r` of the plane (any pick), as many words as the query.
    pub fn row(&self, r: u32) -> &'a [u64] {
        let start = r as usize * self.stride;
        &self.rows[start..start + self.query.len()]
    }

    fn truncated(self, n: usize) -> Self {
        Self {
            picks: &self.picks[..self.picks.len().min(n)],
            ..self
        }
    }
}

/// True if `len` elements hold `n` rows of `dim` values spaced `stride` apart.
fn rows_fit(dim: usize, len: usize, stride: usize, n: usize) -> bool {
    if stride < dim {
        return false;
    }
    match n.checked_sub(1) {
        None => true,
        Some(last) => last
            .checked_mul(stride)
            .and_then(|x| x.checked_add(dim))
            .is_some_and(|need| need <= len),
    }
}

type DotF32 = fn(&[f32], &[f32]) -> f32;
type ScoreF32 = fn(&F32Block<'_>, &mut [f32]);
type ScoreI8 = fn(&I8Block<'_>, &mut [i32]);
type MultiF32 = fn(&F32Multi<'_>, &mut [f32]);
type MultiI8 = fn(&I8Multi<'_>, &mut [i32]);
type Hamming = fn(&BitBlock<'_>, &mut [u32]);
type MultiHamming = fn(&BitMulti<'_>, &mut [u32]);
type HammingGather = fn(&BitGather<'_>, &mut [u32]);
type AtMost = fn(&[u32], u32, &mut [u32]) -> usize;

/// A table of scoring kernels for one instruction set.
///
/// Constructible only through the checked constructors, so holding one proves the CPU
/// supports [`Kernels::isa`].
#[derive(Clone, Copy)]
pub struct Kernels {
    isa: Isa,
    dot_f32: DotF32,
    score_f32: ScoreF32,
    score_i8: ScoreI8,
    multi_f32: MultiF32,
    multi_i8: MultiI8,
    hamming: Hamming,
    multi_hamming: MultiHamming,
    hamming_gather: HammingGather,
    at_most: AtMost,
}

impl Kernels {
    /// The portable table; always available. It is the oracle the others are tested against.
    pub fn scalar() -> Self {
        Self {
            isa: Isa::Scalar,
            dot_f32: scalar::dot_f32,
            score_f32: scalar::score_f32,
            score_i8: scalar::score_i8,
            multi_f32: scalar::multi_f32,
            multi_i8: scalar::multi_i8,
            hamming: scalar::hamming,
            multi_hamming: scalar::multi_hamming,
            hamming_gather: scalar::hamming_gather,
            at_most: scalar::at_most,
        }
    }

    /// The table for `isa`, or `None` if this CPU (or build target) lacks it.
    pub fn for_isa(isa: Isa) -> Option<Self> {
        match isa {
            Isa::Scalar => Some(Self::scalar()),
            #[cfg(target_arch = "x86_64")]
            Isa::X86Avx2 => x86_64::avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::X86Avx512 => x86_64::avx512(),
            #[cfg(target_arch = "aarch64")]
            Isa::Aarch64Neon => aarch64::neon(),
            #[allow(unreachable_patterns)] // which arms exist depends on the target
            _ => None,
        }
    }

    /// Every table this CPU supports, best first (the scalar table is always last).
    pub fn available() -> impl Iterator<Item = Self> {
        Isa::ALL.into_iter().filter_map(Self::for_isa)
    }

    /// The best table for this CPU, ignoring `GATEWARDEN_ISA`; detected once and cached.
    pub fn detect() -> &'static Self {
        static BEST: OnceLock<Kernels> = OnceLock::new();
        BEST.get_or_init(|| Self::available().next().unwrap_or_else(Self::scalar))
    }

    /// The table to run with: `GATEWARDEN_ISA` if set (read once; `auto` or empty means
    /// detect), otherwise the best the CPU supports.
    ///
    /// # Errors
    /// The variable names an unknown instruction set or one this CPU lacks.
    pub fn select() -> Result<&'static Self, IsaError> {
        static SELECTED: OnceLock<Result<Kernels, IsaError>> = OnceLock::new();
        SELECTED
            .get_or_init(|| {
                let value = std::env::var(ISA_ENV).unwrap_or_default();
                Self::from_setting(&value)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The table for a configuration value: `auto` (or empty) detects, otherwise the named
    /// instruction set, refused if unsupported.
    ///
    /// # Errors
    /// Unknown name, or an instruction set this CPU lacks.
    pub fn from_setting(value: &str) -> Result<Self, IsaError> {
        let value = value.trim();
        if value.is_empty() || value.eq_ignore_ascii_case("auto") {
            return Ok(*Self::detect());
        }
        let isa: Isa = value.parse()?;
        Self::for_isa(isa).ok_or(IsaError::Unsupported { isa })
    }

    /// The instruction set of this table.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Inner product of the common prefix of `a` and `b`.
    #[inline]
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        (self.dot_f32)(&a[..n], &b[..n])
    }

    /// Scores the block's rows against its query into `out[..min(len, out.len())]`.
    #[inline]
    pub fn score_f32(&self, block: &F32Block<'_>, out: &mut [f32]) {
        let b = block.truncated(out.len());
        (self.score_f32)(&b, &mut out[..b.n]);
    }

    /// Integer dot products of the block's code rows with its query codes.
    #[inline]
    pub fn score_i8(&self, block: &I8Block<'_>, out: &mut [i32]) {
        let b = block.truncated(out.len());
        (self.score_i8)(&b, &mut out[..b.n]);
    }

    /// Scores every row against every query: `out[i * nq + j]`, for as many whole rows as
    /// `out` holds.
    #[inline]
    pub fn multi_f32(&self, block: &F32Multi<'_>, out: &mut [f32]) {
        let b = block.truncated(out.len().checked_div(block.nq).unwrap_or(0));
        (self.multi_f32)(&b, &mut out[..b.n * b.nq]);
    }

    /// Integer dot products of every row with every query: `out[i * nq + j]`.
    #[inline]
    pub fn multi_i8(&self, block: &I8Multi<'_>, out: &mut [i32]) {
        let b = block.truncated(out.len().checked_div(block.nq).unwrap_or(0));
        (self.multi_i8)(&b, &mut out[..b.n * b.nq]);
    }

    /// Hamming distances of the block's code rows to its query code.
    #[inline]
    pub fn hamming(&self, block: &BitBlock<'_>, out: &mut [u32]) {
        let b = block.truncated(out.len());
        (self.hamming)(&b, &mut out[..b.n]);
    }

    /// Hamming distances of every row to every query: `out[i * nq + j]`.
    #[inline]
    pub fn multi_hamming(&self, block: &BitMulti<'_>, out: &mut [u32]) {
        let b = block.truncated(out.len().checked_div(block.nq).unwrap_or(0));
        (self.multi_hamming)(&b, &mut out[..b.n * b.nq]);
    }

    /// Hamming distances of the gather's picked rows to its query: `out[i]` for pick `i`.
    #[inline]
    pub fn hamming_gather(&self, gather: &BitGather<'_>, out: &mut [u32]) {
        let g = gather.truncated(out.len());
        (self.hamming_gather)(&g, &mut out[..g.len()]);
    }

    /// Writes the indices `i` with `dist[i] <= limit` to the front of `picked`, in order,
    /// and returns how many there are (only the first `picked.len()` distances are read).
    ///
    /// The filter after a Hamming scan: almost every row misses the limit, so the SIMD
    /// tables compare 8 or 16 distances at once and visit only the ones that pass.
    #[inline]
    pub fn at_most(&self, dist: &[u32], limit: u32, picked: &mut [u32]) -> usize {
        let n = dist.len().min(picked.len());
        (self.at_most)(&dist[..n], limit, &mut picked[..n])
    }
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels")
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;

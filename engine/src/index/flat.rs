//! Exact flat search over a list of row sets (segments and delta chunks).
//!
//! # Paths
//!
//! - **f32, one query**: the single-query kernel over blocks of rows; a row is offered to the
//!   collector only if it reaches the collector's bar, so the top-k upkeep costs almost
//!   nothing next to the 2 KiB a 512-d row takes to stream in.
//! - **f32, a batch**: rows are loaded once per block and scored against every query, either
//!   by the register-tiled multi-query kernel or by a faer GEMM (`rows x queries^T`); the
//!   choice follows [`BatchPath`], and `Auto` picks by batch size from measurements (see
//!   [`GEMM_MIN_QUERIES`]).
//! - **int8**: the int8 kernels score codes; each row gets an interval `[lb, ub]` that holds
//!   its exact f32 score ([`crate::index::quant`]). A collector of lower bounds gives a bar;
//!   rows whose `ub` reaches it are kept as candidates and re-ranked with exact f32 dot
//!   products at the end. A row left out has `ub` below the k-th best (or the runner-up's)
//!   lower bound, so it cannot be in the exact answer: the final result *equals* exact f32
//!   search, ties included.
//! - **binary** (see `flat/binary.rs`): Hamming distances of 1-bit codes shortlist the
//!   candidates, which are re-ranked exactly (int8 intervals, then f32 where an interval can
//!   still reach the bar). Scores returned are always exact f32 scores of real rows, so the
//!   approximation can only *miss* a row, never invent one or misstate its score.
//!
//! Work splits across `threads` scoped threads by row ranges; collectors merge exactly.

use std::ops::Range;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use gatewarden_protocol::SubjectId;

use super::kernels::{F32Block, F32Multi, I8Block, I8Multi, Kernels};
use super::quant::{QueryQuant, widen};
use super::topk::{Collector, Hit};

/// Rows scored per kernel call: big enough to amortize the call, small enough that the
/// score buffer (`BLOCK_ROWS x queries`) stays in L1/L2.
const BLOCK_ROWS: usize = 256;

/// Rows per kernel call in the single-query int8 scan. The interval checks run between
/// kernel calls, when no row load is in flight; short blocks keep the memory stream busy
/// through them (measured at N = 1M: 17.8 ms with 32 rows against 19.2 ms with 256).
const I8_SINGLE_BLOCK_ROWS: usize = 32;

/// From this many queries on, `BatchPath::Auto` uses the faer GEMM for f32 batches; below it
/// the SIMD multi-query kernel. Measured with `cargo bench -p benches --bench search`
/// (`f32_blocked` / `f32_gemm`, N = 10k, d = 512, AMD EPYC Zen 4, AVX-512): the kernel takes
/// 0.73 / 0.88 / 1.48 ms for 2 / 4 / 8 queries against GEMM's 2.19 / 2.32 / 2.44 ms (faer's
/// packing does not pay off on a memory-bound scan); from 16 queries GEMM wins (2.39 against
/// 2.82 ms; 7.52 against 8.30 ms at 64). See benches/README.md.
pub const GEMM_MIN_QUERIES: usize = 16;

/// Element type scanned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Precision {
    /// Exact f32 scan.
    #[default]
    F32,
    /// int8 scan (per-row scale) then exact f32 re-rank: same answers, a quarter of the bytes.
    Int8,
    /// 1-bit code scan, then an exact re-rank of a shortlist: exact scores, a 32nd of the f32
    /// bytes; a row outside the shortlist is missed (see [`BINARY_CANDIDATES`]).
    Binary,
    /// `Int8` below [`AUTO_BINARY_MIN_ROWS`] rows, `Binary` from there.
    Auto,
}

impl Precision {
    /// `"f32"`, `"int8"`, `"binary"` or `"auto"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
            Self::Binary => "binary",
            Self::Auto => "auto",
        }
    }

    /// The precision a scan over `rows` rows runs at: `Auto` resolved, others unchanged.
    pub fn resolve(self, rows: usize) -> Self {
        match self {
            Self::Auto if rows >= AUTO_BINARY_MIN_ROWS => Self::Binary,
            Self::Auto => Self::Int8,
            other => other,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "int8" | "i8" | "sq8" => Ok(Self::Int8),
            "binary" | "1bit" | "bits" => Ok(Self::Binary),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown precision {other:?}: use auto, f32, int8 or binary"
            )),
        }
    }
}

/// How f32 batches are scored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchPath {
    /// By batch size (see [`GEMM_MIN_QUERIES`]).
    #[default]
    Auto,
    /// Always the register-tiled SIMD kernel.
    Blocked,
    /// Always faer's GEMM (for batches of two or more).
    Gemm,
}

/// Search settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchOptions {
    /// Scan precision. `Int8` falls back to exact f32 on row sets without codes.
    pub precision: Precision,
    /// Threads to split the rows over (1 = the calling thread only).
    pub threads: usize,
    /// f32 batch strategy.
    pub batch: BatchPath,
    /// Binary scans: rows shortlisted per query for the exact re-rank (at least four times
    /// the collector's size is used; see [`BINARY_CANDIDATES`]).
    pub candidates: usize,
    /// Binary scans: a first pass over the code heads alone prunes rows before the tails are
    /// read (see `flat/binary.rs`); `false` reads every whole code.
    pub prefilter: bool,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            precision: Precision::F32,
            threads: 1,
            batch: BatchPath::Auto,
            candidates: BINARY_CANDIDATES,
            prefilter: true,
        }
    }
}

/// int8 codes of a row set: `stride` bytes per row, plus per-row scale and L1 norm.
#[derive(Clone, Copy)]
pub struct CodesRef<'a> {
    codes: &'a [i8],
    stride: usize,
    quant: &'a [[f32; 4]],
}

/// 1-bit codes of a row set, split in two planes (every row's first `head_words` words, then
/// every row's remaining `tail_words`), and the centre they were taken against.
#[derive(Clone, Copy)]
pub struct BitsRef<'a> {
    heads: &'a [u64],
    head_words: usize,
    tails: &'a [u64],
    tail_words: usize,
    centre: &'a [f32],
}

/// A borrowed set of gallery rows: a segment's or a delta chunk's.
///
/// Constructors check every length, so the search can index without further checks.
#[derive(Clone, Copy)]
pub struct RowsRef<'a> {
    dim: usize,
    vectors: &'a [f32],
    stride: usize,
    subjects: &'a [u64],
    templates: &'a [u64],
    codes: Option<CodesRef<'a>>,
    bits: Option<BitsRef<'a>>,
    deleted: Option<&'a [u64]>,
}

impl<'a> RowsRef<'a> {
    /// Rows of `dim` f32 at `stride` spacing, one per subject id; `None` if lengths disagree.
    pub fn new(
        dim: usize,
        vectors: &'a [f32],
        stride: usize,
        subjects: &'a [u64],
        templates: &'a [u64],
    ) -> Option<Self> {
        let n = subjects.len();
        let ok = dim > 0 && templates.len() == n && fits(dim, vectors.len(), stride, n);
        ok.then_some(Self {
            dim,
            vectors,
            stride,
            subjects,
            templates,
            codes: None,
            bits: None,
            deleted: None,
        })
    }

    /// Adds int8 codes (`stride` bytes per row) and per-row `[scale, norm, err, 0]` (see
    /// [`crate::index::quant`]).
    pub fn with_codes(
        mut self,
        codes: &'a [i8],
        stride: usize,
        quant: &'a [[f32; 4]],
    ) -> Option<Self> {
        let n = self.len();
        (quant.len() == n && fits(self.dim, codes.len(), stride, n)).then(|| {
            self.codes = Some(CodesRef {
                codes,
                stride,
                quant,
            });
            self
        })
    }

    /// Adds 1-bit codes (see [`crate::index::bits`]) taken against `centre` (`dim` values):
    /// `heads` holds every row's first `head_words = ceil(words / 2)` words, `tails` every
    /// row's remaining `tail_words`, where `words = ceil(dim / 64)`.
    pub fn with_bits(
        mut self,
        heads: &'a [u64],
        head_words: usize,
        tails: &'a [u64],
        tail_words: usize,
        centre: &'a [f32],
    ) -> Option<Self> {
        let n = self.len();
        let words = super::bits::code_words(self.dim);
        let ok = centre.len() == self.dim
            && head_words == words.div_ceil(2)
            && head_words + tail_words == words
            && fits(head_words, heads.len(), head_words, n)
            && fits(tail_words, tails.len(), tail_words, n);
        ok.then(|| {
            self.bits = Some(BitsRef {
                heads,
                head_words,
                tails,
                tail_words,
                centre,
            });
            self
        })
    }

    /// Marks rows deleted: bit `i % 64` of word `i / 64` set means row `i` is skipped.
    pub fn with_deleted(mut self, words: &'a [u64]) -> Option<Self> {
        (words.len() >= self.len().div_ceil(64)).then(|| {
            self.deleted = Some(words);
            self
        })
    }

    /// Number of rows (deleted ones included).
    pub fn len(&self) -> usize {
        self.subjects.len()
    }

    /// True if there are no rows.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// True if the set carries int8 codes.
    pub fn has_codes(&self) -> bool {
        self.codes.is_some()
    }

    /// True if the set carries 1-bit codes.
    pub fn has_bits(&self) -> bool {
        self.bits.is_some()
    }

    /// Row `i`'s vector.
    pub fn vector(&self, i: usize) -> &'a [f32] {
        &self.vectors[i * self.stride..i * self.stride + self.dim]
    }

    /// Row `i`'s subject.
    pub fn subject(&self, i: usize) -> SubjectId {
        SubjectId(self.subjects[i])
    }

    /// Row `i`'s template id.
    pub fn template(&self, i: usize) -> u64 {
        self.templates[i]
    }

    /// True if row `i` is deleted.
    #[inline]
    pub fn is_deleted(&self, i: usize) -> bool {
        self.deleted.is_some_and(|w| w[i / 64] >> (i % 64) & 1 == 1)
    }

    fn hit(&self, i: usize, score: f32) -> Hit {
        Hit {
            score,
            subject: SubjectId(self.subjects[i]),
            template: self.templates[i],
        }
    }
}

fn fits(dim: usize, len: usize, stride: usize, n: usize) -> bool {
    stride >= dim
        && match n.checked_sub(1) {
            None => true,
            Some(last) => last
                .checked_mul(stride)
                .and_then(|x| x.checked_add(dim))
                .is_some_and(|e| e <= len),
        }
}

/// A contiguous range of rows of one part.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Task {
    part: usize,
    rows: Range<usize>,
}

/// An int8 candidate for exact re-ranking.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    ub: f32,
    part: u32,
    row: u32,
}

/// One query's int8 scan state: lower bounds collected so far, their bar (mirrored as a
/// plain float for the hot compare), and the candidates for re-ranking.
struct Int8State<C> {
    lbs: C,
    bar: f32,
    cands: Vec<Candidate>,
    prune_at: usize,
}

impl<C: Collector> Int8State<C> {
    fn new(empty: &C) -> Self {
        Self {
            lbs: empty.clone(),
            bar: empty.bar(),
            cands: Vec::new(),
            prune_at: 1024,
        }
    }

    /// A row whose score lies in `[a - h, a + h]` and may reach the bar.
    #[inline]
    fn consider(&mut self, part: &RowsRef<'_>, part_index: usize, row: usize, a: f32, h: f32) {
        let ub = a + h;
        if ub < self.bar || part.is_deleted(row) {
            return;
        }
        if a - h >= self.bar {
            self.lbs.offer(part.hit(row, a - h));
            self.bar = self.lbs.bar();
        }
        self.cands.push(Candidate {
            ub,
            part: part_index as u32,
            row: row as u32,
        });
        if self.cands.len() >= self.prune_at {
            let bar = self.bar;
            self.cands.retain(|c| c.ub >= bar);
            self.prune_at = (2 * self.cands.len()).max(1024);
        }
    }
}

/// Searches `parts` for every query, collecting into clones of `empty`.
///
/// Queries whose length differs from the parts' dimension, or that hold a non-finite value,
/// get `empty` back unchanged. Parts whose dimension differs from the first part's are
/// skipped (the gallery never builds such a list).
pub fn search<C: Collector>(
    kernels: &Kernels,
    parts: &[RowsRef<'_>],
    queries: &[&[f32]],
    empty: &C,
    opts: &SearchOptions,
) -> Vec<C> {
    let mut out = vec![empty.clone(); queries.len()];
    let Some(dim) = parts.first().map(RowsRef::dim) else {
        return out;
    };
    let valid: Vec<usize> = (0..queries.len())
        .filter(|&j| queries[j].len() == dim && queries[j].iter().all(|x| x.is_finite()))
        .collect();
    if valid.is_empty() {
        return out;
    }
    let packed: Vec<f32> = valid
        .iter()
        .flat_map(|&j| queries[j].iter().copied())
        .collect();
    let parts: Vec<RowsRef<'_>> = parts.iter().copied().filter(|p| p.dim == dim).collect();
    let total: usize = parts.iter().map(RowsRef::len).sum();
    let precision = opts.precision.resolve(total);
    // Binary scans need codes: row sets without them (older segments, the delta) are
    // scanned at int8 precision, exactly, and the results merged.
    let (coded, plain): (Vec<RowsRef<'_>>, Vec<RowsRef<'_>>) = if precision == Precision::Binary {
        parts.iter().partition(|p| p.has_bits())
    } else {
        (Vec::new(), parts)
    };
    let scan_of = |parts| Scan {
        kernels,
        parts,
        dim,
        packed: &packed,
        nq: valid.len(),
        opts,
    };
    let threads = opts.threads.max(1);
    let mut found = match precision {
        Precision::F32 => scan_of(&plain).f32_parallel(&split(&plain, threads), empty),
        _ => scan_of(&plain).int8(&split(&plain, threads), empty),
    };
    if !coded.is_empty() {
        let binary = scan_of(&coded).binary(&split(&coded, threads), empty);
        for (f, b) in found.iter_mut().zip(binary) {
            f.absorb(b);
        }
    }
    for (j, c) in valid.into_iter().zip(found) {
        out[j] = c;
    }
    out
}

/// Splits all rows into `threads` nearly equal runs of tasks.
fn split(parts: &[RowsRef<'_>], threads: usize) -> Vec<Vec<Task>> {
    let total: usize = parts.iter().map(RowsRef::len).sum();
    let per = total.div_ceil(threads).max(BLOCK_ROWS);
    let mut plans = vec![Vec::new()];
    let mut room = per;
    for (p, part) in parts.iter().enumerate() {
        let mut start = 0;
        while start < part.len() {
            if room == 0 {
                plans.push(Vec::new());
                room = per;
            }
            let end = part.len().min(start + room);
            room -= end - start;
            if let Some(plan) = plans.last_mut() {
                plan.push(Task {
                    part: p,
                    rows: start..end,
                });
            }
            start = end;
        }
    }
    plans
}

/// Runs `f` on every plan, one scoped thread per plan beyond the first.
fn fan_out<T: Send>(plans: &[Vec<Task>], f: impl Fn(&[Task]) -> T + Sync) -> Vec<T> {
    if plans.len() <= 1 {
        return plans.iter().map(|p| f(p)).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = plans[1..].iter().map(|p| s.spawn(|| f(p))).collect();
        let mut results = vec![f(&plans[0])];
        for h in handles {
            match h.join() {
                Ok(r) => results.push(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results
    })
}

struct Scan<'s, 'a> {
    kernels: &'s Kernels,
    parts: &'s [RowsRef<'a>],
    dim: usize,
    packed: &'s [f32],
    nq: usize,
    opts: &'s SearchOptions,
}

impl Scan<'_, '_> {
    fn query(&self, j: usize) -> &[f32] {
        &self.packed[j * self.dim..(j + 1) * self.dim]
    }

    fn f32_parallel<C: Collector>(&self, plans: &[Vec<Task>], empty: &C) -> Vec<C> {
        let mut per_thread = fan_out(plans, |tasks| self.f32_scan(tasks, empty)).into_iter();
        let mut merged = per_thread
            .next()
            .unwrap_or_else(|| vec![empty.clone(); self.nq]);
        for other in per_thread {
            for (m, o) in merged.iter_mut().zip(other) {
                m.absorb(o);
            }
        }
        merged
    }

    fn use_gemm(&self) -> bool {
        match self.opts.batch {
            BatchPath::Auto => self.nq >= GEMM_MIN_QUERIES,
            BatchPath::Blocked => false,
            BatchPath::Gemm => self.nq >= 2,
        }
    }

    /// Exact f32 scores of `n` rows from `start` of `part` into `buf[i * nq + j]`.
    fn f32_block(&self, part: &RowsRef<'_>, start: usize, n: usize, buf: &mut [f32]) {
        let rows = &part.vectors[start * part.stride..];
        if self.nq == 1 {
            if let Some(b) = F32Block::new(self.query(0), rows, part.stride, n) {
                self.kernels.score_f32(&b, &mut buf[..n]);
            }
        } else if self.use_gemm() {
            gemm_block(
                rows,
                part.stride,
                n,
                self.dim,
                self.packed,
                self.nq,
                &mut buf[..n * self.nq],
            );
        } else if let Some(b) = F32Multi::new(
            self.dim,
            self.packed,
            self.dim,
            self.nq,
            rows,
            part.stride,
            n,
        ) {
            self.kernels.multi_f32(&b, &mut buf[..n * self.nq]);
        }
    }

    fn f32_scan<C: Collector>(&self, tasks: &[Task], empty: &C) -> Vec<C> {
        let mut cols = vec![empty.clone(); self.nq];
        // Mirror of every collector's bar, so the common case (a row that cannot enter) is
        // one compare against a plain array.
        let mut bars = vec![empty.bar(); self.nq];
        let mut buf = vec![0f32; BLOCK_ROWS * self.nq];
        for task in tasks {
            let part = &self.parts[task.part];
            for start in task.rows.clone().step_by(BLOCK_ROWS) {
                let n = BLOCK_ROWS.min(task.rows.end - start);
                self.f32_block(part, start, n, &mut buf);
                for (i, scores) in buf[..n * self.nq].chunks_exact(self.nq).enumerate() {
                    for (j, &s) in scores.iter().enumerate() {
                        if s >= bars[j] && !part.is_deleted(start + i) {
                            cols[j].offer(part.hit(start + i, s));
                            bars[j] = cols[j].bar();
                        }
                    }
                }
            }
        }
        cols
    }

    fn int8<C: Collector>(&self, plans: &[Vec<Task>], empty: &C) -> Vec<C> {
        let quants: Vec<QueryQuant> = (0..self.nq)
            .map(|j| QueryQuant::new(self.query(j)))
            .collect();
        let codes: Vec<i8> = quants
            .iter()
            .flat_map(|q| q.codes().iter().copied())
            .collect();
        let mut per_thread =
            fan_out(plans, |tasks| self.int8_scan(tasks, &quants, &codes, empty)).into_iter();
        let (mut bars, mut cands) = per_thread.next().unwrap_or_default();
        for (b, c) in per_thread {
            for (m, o) in bars.iter_mut().zip(b) {
                m.absorb(o);
            }
            for (m, o) in cands.iter_mut().zip(c) {
                m.extend(o);
            }
        }
        bars.iter()
            .zip(cands)
            .enumerate()
            .map(|(j, (bar, cands))| self.rerank(j, bar.bar(), cands, empty))
            .collect()
    }

    /// Exact f32 scores for the candidates that can still matter.
    fn rerank<C: Collector>(&self, j: usize, bar: f32, mut cands: Vec<Candidate>, empty: &C) -> C {
        cands.retain(|c| c.ub >= bar);
        cands.sort_unstable_by_key(|c| (c.part, c.row));
        let mut out = empty.clone();
        let q = self.query(j);
        for c in cands {
            let part = &self.parts[c.part as usize];
            let row = c.row as usize;
            out.offer(part.hit(row, self.kernels.dot_f32(q, part.vector(row))));
        }
        out
    }

    /// Per query: a collector of lower bounds (its bar) and the candidates reaching it.
    fn int8_scan<C: Collector>(
        &self,
        tasks: &[Task],
        quants: &[QueryQuant],
        codes: &[i8],
        empty: &C,
    ) -> (Vec<C>, Vec<Vec<Candidate>>) {
        let nq = self.nq;
        let mut states: Vec<Int8State<C>> = (0..nq).map(|_| Int8State::new(empty)).collect();
        // Query coefficients as plain arrays so the per-row interval loop vectorizes.
        let qscale: Vec<f32> = quants.iter().map(QueryQuant::scale).collect();
        let qnorm: Vec<f32> = quants.iter().map(|q| q.coefs().0).collect();
        let qerr: Vec<f32> = quants.iter().map(|q| q.coefs().1).collect();
        let (mut approx, mut half) = (vec![0f32; nq], vec![0f32; nq]);
        let block = if nq == 1 {
            I8_SINGLE_BLOCK_ROWS
        } else {
            BLOCK_ROWS
        };
        let mut ibuf = vec![0i32; BLOCK_ROWS * nq];
        let mut fbuf = vec![0f32; BLOCK_ROWS * nq];
        for task in tasks {
            let part = &self.parts[task.part];
            for start in task.rows.clone().step_by(block) {
                let n = block.min(task.rows.end - start);
                let Some(c) = part.codes else {
                    // A row set without codes: exact scores, zero-width intervals.
                    self.f32_block(part, start, n, &mut fbuf);
                    for (i, scores) in fbuf[..n * nq].chunks_exact(nq).enumerate() {
                        for (st, &s) in states.iter_mut().zip(scores) {
                            st.consider(part, task.part, start + i, s, 0.0);
                        }
                    }
                    continue;
                };
                self.i8_block(c, codes, quants, start, n, &mut ibuf);
                let quant = &c.quant[start..start + n];
                if let [st] = &mut states[..] {
                    // One query: scalars only, the common case of the pipeline.
                    let (qs, qn, qe) = (qscale[0], qnorm[0], qerr[0]);
                    for (i, (&[rs, rn, re, _], &dot)) in quant.iter().zip(&ibuf[..n]).enumerate() {
                        let a = qs * rs * dot as f32;
                        let h = widen(a, qn * rn + qe * re);
                        if a + h >= st.bar {
                            st.consider(part, task.part, start + i, a, h);
                        }
                    }
                    continue;
                }
                for (i, &[rs, rn, re, _]) in quant.iter().enumerate() {
                    let dots = &ibuf[i * nq..(i + 1) * nq];
                    for j in 0..nq {
                        let a = qscale[j] * rs * dots[j] as f32;
                        approx[j] = a;
                        half[j] = widen(a, qnorm[j] * rn + qerr[j] * re);
                    }
                    for (j, st) in states.iter_mut().enumerate() {
                        if approx[j] + half[j] >= st.bar {
                            st.consider(part, task.part, start + i, approx[j], half[j]);
                        }
                    }
                }
            }
        }
        states.into_iter().map(|s| (s.lbs, s.cands)).unzip()
    }

    fn i8_block(
        &self,
        c: CodesRef<'_>,
        codes: &[i8],
        quants: &[QueryQuant],
        start: usize,
        n: usize,
        buf: &mut [i32],
    ) {
        let rows = &c.codes[start * c.stride..];
        if self.nq == 1 {
            if let Some(b) = I8Block::new(quants[0].codes(), rows, c.stride, n) {
                self.kernels.score_i8(&b, &mut buf[..n]);
            }
        } else if let Some(b) = I8Multi::new(self.dim, codes, self.dim, self.nq, rows, c.stride, n)
        {
            self.kernels.multi_i8(&b, &mut buf[..n * self.nq]);
        }
    }
}

/// `out[i * nq + j] = row_i . query_j` through faer's GEMM.
fn gemm_block(
    rows: &[f32],
    stride: usize,
    n: usize,
    dim: usize,
    queries: &[f32],
    nq: usize,
    out: &mut [f32],
) {
    if n == 0 || nq == 0 {
        return;
    }
    let lhs = MatRef::from_row_major_slice_with_stride(rows, n, dim, stride);
    let rhs = MatRef::from_column_major_slice_with_stride(queries, dim, nq, dim);
    let dst = MatMut::from_row_major_slice_mut(&mut out[..n * nq], n, nq);
    matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
}

mod binary;
pub use binary::{AUTO_BINARY_MIN_ROWS, BINARY_CANDIDATES, PREFILTER_SHARE};

#[cfg(test)]
mod tests;

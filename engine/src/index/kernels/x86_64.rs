//! AVX2+FMA and AVX-512 (F, BW, VNNI) kernels.
//!
//! Every kernel is a safe `#[target_feature]` function; the only `unsafe` left is (a) the
//! raw loads, each from a fixed-size array reference or a masked tail whose mask covers
//! exactly the slice, and (b) one call per table entry, reachable only through a table
//! that [`avx2()`] or [`avx512()`] built after detecting the features.
//!
//! Shapes (why):
//! - single query: four independent accumulators per row hide the FMA latency; the scan is
//!   memory-bound, so the per-row horizontal sum is free;
//! - several queries (AVX-512): below 16 queries the scan is still memory-bound, so rows go
//!   one at a time in address order against tiles of up to 4 queries; from 16 on, 4 rows x 4
//!   queries register tiles use each loaded chunk four times, and the sixteen partial vectors
//!   are reduced together with a transpose-add (about 3 instructions per result instead of 8);
//! - int8 on AVX-512: `vpdpbusd` multiplies unsigned by signed bytes, so rows are flipped to
//!   `r + 128` with one xor and the exact `128 * sum(q)` is subtracted at the end;
//! - int8 on AVX2: `vpmaddubsw(|q|, sign(r, q))`; with codes in [-127, 127] a pair sum is at
//!   most 2 * 127 * 127 = 32258, so the i16 saturation never triggers.
//! - 1-bit on AVX2: no vector popcount, so each nibble of `q ^ r` indexes a 16-entry table
//!   with `vpshufb`; byte counts (at most 8 per chunk) add up in bytes for up to 31 chunks
//!   before one `vpsadbw` widens them to u64 lanes; densely packed 4-word code heads go eight
//!   rows per step, half of them by the scalar `popcnt` (`hamming_dense4`).
//! - 1-bit on AVX-512: `vpopcntq` where the CPU has VPOPCNTDQ (a 512-d code is one load, one
//!   xor, one popcount and a reduction per row; densely packed 4-word code heads go eight
//!   rows per step, see `hamming_dense4`); without it the AVX-512 table uses the AVX2 kernel.
#![allow(unsafe_code)]

use super::{BitBlock, BitGather, BitMulti, F32Block, F32Multi, I8Block, I8Multi, Isa, Kernels};

/// The AVX2+FMA table, if the CPU has both.
pub(super) fn avx2() -> Option<Kernels> {
    let ok = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("popcnt");
    ok.then_some(Kernels {
        isa: Isa::X86Avx2,
        dot_f32: entry::avx2_dot_f32,
        score_f32: entry::avx2_score_f32,
        score_i8: entry::avx2_score_i8,
        multi_f32: entry::avx2_multi_f32,
        multi_i8: entry::avx2_multi_i8,
        hamming: entry::avx2_hamming,
        multi_hamming: entry::avx2_multi_hamming,
        hamming_gather: entry::popcnt_hamming_gather,
        at_most: entry::avx2_at_most,
    })
}

/// The AVX-512 table, if the CPU has AVX-512 F, BW and VNNI plus FMA.
pub(super) fn avx512() -> Option<Kernels> {
    let ok = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("popcnt");
    let avx2 = is_x86_feature_detected!("avx2");
    let vpopcnt = is_x86_feature_detected!("avx512vpopcntdq") && avx2;
    let (hamming, multi_hamming): (super::Hamming, super::MultiHamming) = if vpopcnt {
        (entry::vpopcnt_hamming, entry::vpopcnt_multi_hamming)
    } else if avx2 {
        (entry::avx2_hamming, entry::avx2_multi_hamming)
    } else {
        (super::scalar::hamming, super::scalar::multi_hamming)
    };
    ok.then_some(Kernels {
        isa: Isa::X86Avx512,
        hamming,
        multi_hamming,
        dot_f32: entry::avx512_dot_f32,
        score_f32: entry::avx512_score_f32,
        score_i8: entry::avx512_score_i8,
        multi_f32: entry::avx512_multi_f32,
        multi_i8: entry::avx512_multi_i8,
        hamming_gather: entry::popcnt_hamming_gather,
        at_most: entry::avx512_at_most,
    })
}

/// Safe table entries. Each is installed only by the constructor above that detected its
/// features, which is what every SAFETY comment below relies on.
mod entry {
    use super::{
        BitBlock, BitGather, BitMulti, F32Block, F32Multi, I8Block, I8Multi, avx2, avx512, gather,
        vpopcnt,
    };

    macro_rules! entries {
        ($isa:ident: $($name:ident => $f:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)*) => {
            $(
                pub(super) fn $name($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: this entry is only stored in tables built after detecting every
                    // feature the callee enables: the `avx2` and `avx512` entries in the table
                    // of that name, the `gather` entry (POPCNT) in both, and both
                    // constructors detect POPCNT.
                    unsafe { $isa::$f($($arg),*) }
                }
            )*
        };
    }

    entries!(avx2:
        avx2_dot_f32 => dot_f32(a: &[f32], b: &[f32]) -> f32;
        avx2_score_f32 => score_f32(b: &F32Block<'_>, out: &mut [f32]);
        avx2_score_i8 => score_i8(b: &I8Block<'_>, out: &mut [i32]);
        avx2_multi_f32 => multi_f32(b: &F32Multi<'_>, out: &mut [f32]);
        avx2_multi_i8 => multi_i8(b: &I8Multi<'_>, out: &mut [i32]);
        avx2_hamming => hamming(b: &BitBlock<'_>, out: &mut [u32]);
        avx2_multi_hamming => multi_hamming(b: &BitMulti<'_>, out: &mut [u32]);
        avx2_at_most => at_most(dist: &[u32], limit: u32, picked: &mut [u32]) -> usize;
    );
    entries!(avx512:
        avx512_dot_f32 => dot_f32(a: &[f32], b: &[f32]) -> f32;
        avx512_score_f32 => score_f32(b: &F32Block<'_>, out: &mut [f32]);
        avx512_score_i8 => score_i8(b: &I8Block<'_>, out: &mut [i32]);
        avx512_multi_f32 => multi_f32(b: &F32Multi<'_>, out: &mut [f32]);
        avx512_multi_i8 => multi_i8(b: &I8Multi<'_>, out: &mut [i32]);
        avx512_at_most => at_most(dist: &[u32], limit: u32, picked: &mut [u32]) -> usize;
    );
    entries!(gather:
        popcnt_hamming_gather => hamming_gather(g: &BitGather<'_>, out: &mut [u32]);
    );

    pub(super) fn vpopcnt_hamming(b: &BitBlock<'_>, out: &mut [u32]) {
        // SAFETY: only stored in the table `x86_64::avx512()` built, and only after
        // detecting AVX-512 F, VPOPCNTDQ and AVX2 there.
        unsafe { vpopcnt::hamming(b, out) }
    }

    pub(super) fn vpopcnt_multi_hamming(b: &BitMulti<'_>, out: &mut [u32]) {
        // SAFETY: only stored in the table `x86_64::avx512()` built, and only after
        // detecting AVX-512 F, VPOPCNTDQ and AVX2 there.
        unsafe { vpopcnt::multi_hamming(b, out) }
    }
}

fn scalar_dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

fn scalar_hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(&x, &y)| (x ^ y).count_ones()).sum()
}

mod avx2 {
    use std::arch::x86_64::*;

    use super::{
        BitBlock, BitMulti, F32Block, F32Multi, I8Block, I8Multi, scalar_dot_i8, scalar_hamming,
    };

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load_u64(a: &[u64; 4]) -> __m256i {
        // SAFETY: `a` is 32 readable bytes; loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }

    /// Per-byte popcounts of `v` (each at most 8), by nibble lookup.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn byte_popcounts(v: __m256i) -> __m256i {
        let lut = _mm256_setr_epi8(
            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2,
            3, 3, 4,
        );
        let low = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(v, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
        _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi))
    }

    /// `popcount(q ^ r)` over the common prefix of two codes.
    #[target_feature(enable = "avx2,fma")]
    fn hamming_words(q: &[u64], r: &[u64]) -> u32 {
        let n = q.len().min(r.len());
        let (qc, qt) = q[..n].as_chunks::<4>();
        let (rc, rt) = r[..n].as_chunks::<4>();
        let zero = _mm256_setzero_si256();
        let mut total = zero;
        // Byte counts add up to at most 31 * 8 = 248 before they are widened.
        for (q31, r31) in qc.chunks(31).zip(rc.chunks(31)) {
            let mut bytes = zero;
            for (x, y) in q31.iter().zip(r31) {
                let v = _mm256_xor_si256(load_u64(x), load_u64(y));
                bytes = _mm256_add_epi8(bytes, byte_popcounts(v));
            }
            total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, zero));
        }
        let s = _mm_add_epi64(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256::<1>(total),
        );
        let s = _mm_add_epi64(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si64(s) as u32 + scalar_hamming(qt, rt)
    }

    #[target_feature(enable = "avx2,fma,popcnt")]
    pub(super) fn hamming(b: &BitBlock<'_>, out: &mut [u32]) {
        let done = if let (Ok(q), true) = (<&[u64; 4]>::try_from(b.query()), b.stride == 4) {
            hamming_dense4(q, b.rows, out)
        } else {
            0
        };
        for (i, o) in out.iter_mut().enumerate().skip(done) {
            *o = hamming_words(b.query(), b.row(i));
        }
    }

    /// Densely packed 4-word codes (the code heads at d = 512), eight rows per step: four
    /// by nibble lookup, whose `vpsadbw` sums (four u64 each) are added across rows with two
    /// unpack/add rounds and one cross-lane add instead of a horizontal sum per row, and
    /// four by the scalar `popcnt`, which runs on the integer units while the vector units
    /// do the others. The lookup costs about eleven vector instructions per row, so the scan
    /// was compute-bound: at N = 1M (one query, `GATEWARDEN_ISA=avx2`, Zen 4) all eight by
    /// lookup took 1.75 ms a query, four and four 1.59 ms, two by `popcnt` 1.64 ms, eight
    /// 1.71-1.80 ms. Returns how many rows it scored.
    #[target_feature(enable = "avx2,fma,popcnt")]
    fn hamming_dense4(q: &[u64; 4], rows: &[u64], out: &mut [u32]) -> usize {
        let qv = load_u64(q);
        let zero = _mm256_setzero_si256();
        let low_dwords = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        const SIMD: usize = 4;
        const SCALAR: usize = 4;
        const ROWS: usize = SIMD + SCALAR;
        let steps = (rows.len() / (4 * ROWS)).min(out.len() / ROWS);
        let (groups, _) = rows[..steps * 4 * ROWS].as_chunks::<{ 4 * ROWS }>();
        let (outs, _) = out[..steps * ROWS].as_chunks_mut::<ROWS>();
        for (g, o) in groups.iter().zip(outs) {
            let (r, _) = g.as_chunks::<4>();
            let sad = |k: usize| {
                let v = _mm256_xor_si256(load_u64(&r[k]), qv);
                _mm256_sad_epu8(byte_popcounts(v), zero)
            };
            let (s0, s1, s2, s3) = (sad(0), sad(1), sad(2), sad(3));
            let t01 =
                _mm256_add_epi64(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
            let t23 =
                _mm256_add_epi64(_mm256_unpacklo_epi64(s2, s3), _mm256_unpackhi_epi64(s2, s3));
            let sums = _mm256_add_epi64(
                _mm256_permute2x128_si256::<0x20>(t01, t23),
                _mm256_permute2x128_si256::<0x31>(t01, t23),
            );
            let packed = _mm256_permutevar8x32_epi32(sums, low_dwords);
            let (first, rest) = o.split_at_mut(SIMD);
            if let Ok(first) = <&mut [u32; 4]>::try_from(first) {
                store4(first, _mm256_castsi256_si128(packed));
            }
            for (k, d) in rest.iter_mut().enumerate() {
                let row = &r[SIMD + k];
                *d = (row[0] ^ q[0]).count_ones()
                    + (row[1] ^ q[1]).count_ones()
                    + (row[2] ^ q[2]).count_ones()
                    + (row[3] ^ q[3]).count_ones();
            }
        }
        steps * ROWS
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store4(o: &mut [u32; 4], v: __m128i) {
        // SAFETY: `o` is 16 writable bytes; storeu has no alignment requirement.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), v) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn multi_hamming(b: &BitMulti<'_>, out: &mut [u32]) {
        let nq = b.queries();
        for (i, row_out) in out.chunks_exact_mut(nq.max(1)).enumerate() {
            let row = b.row(i);
            for (j, o) in row_out.iter_mut().enumerate() {
                *o = hamming_words(b.query(j), row);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load(a: &[f32; 8]) -> __m256 {
        // SAFETY: `a` is 8 readable f32; loadu has no alignment requirement.
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load_tail(a: &[f32]) -> __m256 {
        let n = a.len().min(7) as i32;
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
        // SAFETY: the mask enables lanes 0..a.len() (< 8), all inside `a`; vmaskmov does not
        // touch masked-off lanes, so no byte past the slice is read.
        unsafe { _mm256_maskload_ps(a.as_ptr(), mask) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load_i8(a: &[i8; 32]) -> __m256i {
        // SAFETY: `a` is 32 readable bytes; loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum_ps(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ac, at) = a[..n].as_chunks::<8>();
        let (bc, bt) = b[..n].as_chunks::<8>();
        let mut acc = [_mm256_setzero_ps(); 4];
        let whole = ac.len() / 4 * 4;
        for (a4, b4) in ac[..whole].chunks_exact(4).zip(bc[..whole].chunks_exact(4)) {
            for u in 0..4 {
                acc[u] = _mm256_fmadd_ps(load(&a4[u]), load(&b4[u]), acc[u]);
            }
        }
        for (x, y) in ac[whole..].iter().zip(&bc[whole..]) {
            acc[0] = _mm256_fmadd_ps(load(x), load(y), acc[0]);
        }
        if !at.is_empty() {
            acc[1] = _mm256_fmadd_ps(load_tail(at), load_tail(bt), acc[1]);
        }
        hsum_ps(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn score_f32(b: &F32Block<'_>, out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot_f32(b.query(), b.row(i));
        }
    }

    /// Exact `q . r` for codes in [-127, 127] (sign trick, see the module docs).
    #[target_feature(enable = "avx2,fma")]
    fn dot_i8(q: &[i8], r: &[i8]) -> i32 {
        let n = q.len().min(r.len());
        let (qc, qt) = q[..n].as_chunks::<32>();
        let (rc, rt) = r[..n].as_chunks::<32>();
        let ones = _mm256_set1_epi16(1);
        let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let step = |acc: __m256i, x: &[i8; 32], y: &[i8; 32]| {
            let qv = load_i8(x);
            let prod = _mm256_maddubs_epi16(_mm256_abs_epi8(qv), _mm256_sign_epi8(load_i8(y), qv));
            _mm256_add_epi32(acc, _mm256_madd_epi16(prod, ones))
        };
        let pairs = qc.len() / 2;
        for k in 0..pairs {
            a0 = step(a0, &qc[2 * k], &rc[2 * k]);
            a1 = step(a1, &qc[2 * k + 1], &rc[2 * k + 1]);
        }
        if qc.len() % 2 == 1 {
            let k = qc.len() - 1;
            a0 = step(a0, &qc[k], &rc[k]);
        }
        hsum_epi32(_mm256_add_epi32(a0, a1)) + scalar_dot_i8(qt, rt)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn score_i8(b: &I8Block<'_>, out: &mut [i32]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot_i8(b.query(), b.row(i));
        }
    }

    /// A `R x Q` tile of f32 dot products (R rows starting at `i`, Q queries at `j`).
    #[target_feature(enable = "avx2,fma")]
    fn tile_f32<const R: usize, const Q: usize>(
        b: &F32Multi<'_>,
        i: usize,
        j: usize,
        out: &mut [f32],
    ) {
        let mut rows: [&[f32]; R] = [&[]; R];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = b.row(i + r);
        }
        let mut qs: [&[f32]; Q] = [&[]; Q];
        for (q, qr) in qs.iter_mut().enumerate() {
            *qr = b.query(j + q);
        }
        let mut acc = [[_mm256_setzero_ps(); Q]; R];
        let mut rc: [&[[f32; 8]]; R] = [&[]; R];
        for r in 0..R {
            rc[r] = rows[r].as_chunks::<8>().0;
        }
        let mut qc: [&[[f32; 8]]; Q] = [&[]; Q];
        for q in 0..Q {
            qc[q] = qs[q].as_chunks::<8>().0;
        }
        let chunks = rows[0].len() / 8;
        for c in 0..chunks {
            let mut rv = [_mm256_setzero_ps(); R];
            for r in 0..R {
                rv[r] = load(&rc[r][c]);
            }
            for q in 0..Q {
                let qv = load(&qc[q][c]);
                for r in 0..R {
                    acc[r][q] = _mm256_fmadd_ps(rv[r], qv, acc[r][q]);
                }
            }
        }
        let tail = chunks * 8;
        if tail < rows[0].len() {
            let mut rv = [_mm256_setzero_ps(); R];
            for r in 0..R {
                rv[r] = load_tail(&rows[r][tail..]);
            }
            for q in 0..Q {
                let qv = load_tail(&qs[q][tail..]);
                for r in 0..R {
                    acc[r][q] = _mm256_fmadd_ps(rv[r], qv, acc[r][q]);
                }
            }
        }
        let nq = b.queries();
        for r in 0..R {
            for q in 0..Q {
                out[(i + r) * nq + j + q] = hsum_ps(acc[r][q]);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn multi_f32(b: &F32Multi<'_>, out: &mut [f32]) {
        let (n, nq) = (b.len(), b.queries());
        let mut i = 0;
        while i + 2 <= n {
            let mut j = 0;
            while j + 4 <= nq {
                tile_f32::<2, 4>(b, i, j, out);
                j += 4;
            }
            while j < nq {
                tile_f32::<2, 1>(b, i, j, out);
                j += 1;
            }
            i += 2;
        }
        if i < n {
            for j in 0..nq {
                tile_f32::<1, 1>(b, i, j, out);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn tile_i8<const R: usize, const Q: usize>(
        b: &I8Multi<'_>,
        i: usize,
        j: usize,
        out: &mut [i32],
    ) {
        let mut rows: [&[i8]; R] = [&[]; R];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = b.row(i + r);
        }
        let mut qs: [&[i8]; Q] = [&[]; Q];
        for (q, qr) in qs.iter_mut().enumerate() {
            *qr = b.query(j + q);
        }
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); Q]; R];
        let mut rc: [&[[i8; 32]]; R] = [&[]; R];
        for r in 0..R {
            rc[r] = rows[r].as_chunks::<32>().0;
        }
        let mut qc: [&[[i8; 32]]; Q] = [&[]; Q];
        for q in 0..Q {
            qc[q] = qs[q].as_chunks::<32>().0;
        }
        let chunks = rows[0].len() / 32;
        for c in 0..chunks {
            let mut rv = [_mm256_setzero_si256(); R];
            for r in 0..R {
                rv[r] = load_i8(&rc[r][c]);
            }
            for q in 0..Q {
                let qv = load_i8(&qc[q][c]);
                let qa = _mm256_abs_epi8(qv);
                for r in 0..R {
                    let p = _mm256_maddubs_epi16(qa, _mm256_sign_epi8(rv[r], qv));
                    acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(p, ones));
                }
            }
        }
        let tail = chunks * 32;
        let nq = b.queries();
        for r in 0..R {
            for q in 0..Q {
                out[(i + r) * nq + j + q] =
                    hsum_epi32(acc[r][q]) + scalar_dot_i8(&rows[r][tail..], &qs[q][tail..]);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn multi_i8(b: &I8Multi<'_>, out: &mut [i32]) {
        let (n, nq) = (b.len(), b.queries());
        let mut i = 0;
        while i + 2 <= n {
            let mut j = 0;
            while j + 4 <= nq {
                tile_i8::<2, 4>(b, i, j, out);
                j += 4;
            }
            while j < nq {
                tile_i8::<2, 1>(b, i, j, out);
                j += 1;
            }
            i += 2;
        }
        if i < n {
            for j in 0..nq {
                tile_i8::<1, 1>(b, i, j, out);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load_u32(a: &[u32; 8]) -> __m256i {
        // SAFETY: `a` is 32 readable bytes; loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }

    /// `COMPRESS[m]`: the lanes set in the 8-bit mask `m`, moved to the front, for
    /// `vpermd` (8 KiB, stays in L1 during a scan).
    static COMPRESS: [[u32; 8]; 256] = compress_table();

    const fn compress_table() -> [[u32; 8]; 256] {
        let mut table = [[0u32; 8]; 256];
        let mut m = 0;
        while m < 256 {
            let (mut lane, mut n) = (0, 0);
            while lane < 8 {
                if m & (1 << lane) != 0 {
                    table[m][n] = lane as u32;
                    n += 1;
                }
                lane += 1;
            }
            m += 1;
        }
        table
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store_u32(o: &mut [u32; 8], v: __m256i) {
        // SAFETY: `o` is 32 writable bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), v) }
    }

    /// Eight distances per compare, and no branch per row: the passing lanes' indices are
    /// moved to the front with one `vpermd` (table [`COMPRESS`]) and all eight lanes are
    /// stored at the output's end, which then advances by the pass count (a branch per
    /// group mispredicted on a third of the groups at the prefilter's 1/64 pass rate).
    /// AVX2 compares only signed lanes, so both sides get their sign bit flipped, which
    /// orders u32 values as i32 ones.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn at_most(dist: &[u32], limit: u32, picked: &mut [u32]) -> usize {
        let flip = _mm256_set1_epi32(i32::MIN);
        let lim = _mm256_xor_si256(_mm256_set1_epi32(limit as i32), flip);
        let (eights, rest) = dist.as_chunks::<8>();
        let mut index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let step = _mm256_set1_epi32(8);
        let mut n = 0;
        for e in eights {
            let above = _mm256_cmpgt_epi32(_mm256_xor_si256(load_u32(e), flip), lim);
            let pass = !(_mm256_movemask_ps(_mm256_castsi256_ps(above)) as u32) & 0xff;
            let moved = _mm256_permutevar8x32_epi32(index, load_u32(&COMPRESS[pass as usize]));
            // n <= 8 * (groups before this one), so these eight lanes lie inside `picked`,
            // which is as long as `dist`.
            if let Some(out) = picked
                .get_mut(n..n + 8)
                .and_then(|o| <&mut [u32; 8]>::try_from(o).ok())
            {
                store_u32(out, moved);
            }
            n += pass.count_ones() as usize;
            index = _mm256_add_epi32(index, step);
        }
        let base = 8 * eights.len();
        for (j, &d) in rest.iter().enumerate() {
            if d <= limit {
                picked[n] = (base + j) as u32;
                n += 1;
            }
        }
        n
    }
}

mod avx512 {
    use std::arch::x86_64::*;

    use super::{F32Block, F32Multi, I8Block, I8Multi};

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn load(a: &[f32; 16]) -> __m512 {
        // SAFETY: `a` is 16 readable f32; loadu has no alignment requirement.
        unsafe { _mm512_loadu_ps(a.as_ptr()) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn load_tail(a: &[f32]) -> __m512 {
        let k = ((1u32 << a.len().min(15)) - 1) as __mmask16;
        // SAFETY: the mask enables lanes 0..a.len() (< 16), all inside `a`; AVX-512 masked
        // loads suppress faults on masked-off lanes, so nothing past the slice is touched.
        unsafe { _mm512_maskz_loadu_ps(k, a.as_ptr()) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn load_i8(a: &[i8; 64]) -> __m512i {
        // SAFETY: `a` is 64 readable bytes; loadu has no alignment requirement.
        unsafe { _mm512_loadu_epi8(a.as_ptr()) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn load_i8_tail(a: &[i8]) -> __m512i {
        let k: __mmask64 = (1u64 << a.len().min(63)) - 1;
        // SAFETY: the mask enables bytes 0..a.len() (< 64), all inside `a`; masked-off bytes
        // are not accessed (fault suppression).
        unsafe { _mm512_maskz_loadu_epi8(k, a.as_ptr()) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ac, at) = a[..n].as_chunks::<16>();
        let (bc, bt) = b[..n].as_chunks::<16>();
        let mut acc = [_mm512_setzero_ps(); 4];
        let whole = ac.len() / 4 * 4;
        for (a4, b4) in ac[..whole].chunks_exact(4).zip(bc[..whole].chunks_exact(4)) {
            for u in 0..4 {
                acc[u] = _mm512_fmadd_ps(load(&a4[u]), load(&b4[u]), acc[u]);
            }
        }
        for (x, y) in ac[whole..].iter().zip(&bc[whole..]) {
            acc[0] = _mm512_fmadd_ps(load(x), load(y), acc[0]);
        }
        if !at.is_empty() {
            acc[1] = _mm512_fmadd_ps(load_tail(at), load_tail(bt), acc[1]);
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    pub(super) fn score_f32(b: &F32Block<'_>, out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot_f32(b.query(), b.row(i));
        }
    }

    /// `sum(q)` over the codes, for the `r + 128` correction.
    fn code_sum(q: &[i8]) -> i32 {
        q.iter().map(|&x| i32::from(x)).sum()
    }

    /// `sum((r + 128) * q)` via `vpdpbusd`; the caller subtracts `128 * sum(q)`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    fn biased_dot_i8(q: &[i8], r: &[i8]) -> i32 {
        let n = q.len().min(r.len());
        let (qc, qt) = q[..n].as_chunks::<64>();
        let (rc, rt) = r[..n].as_chunks::<64>();
        let flip = _mm512_set1_epi8(i8::MIN);
        // Two named accumulators (not an array indexed at run time, which would live on
        // the stack and chain every row through a store-forward).
        let (mut a0, mut a1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let pairs = qc.len() / 2;
        for k in 0..pairs {
            let (x0, x1) = (&qc[2 * k], &qc[2 * k + 1]);
            let (y0, y1) = (&rc[2 * k], &rc[2 * k + 1]);
            a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(load_i8(y0), flip), load_i8(x0));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_xor_si512(load_i8(y1), flip), load_i8(x1));
        }
        if qc.len() % 2 == 1 {
            let k = qc.len() - 1;
            a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(load_i8(&rc[k]), flip), load_i8(&qc[k]));
        }
        if !qt.is_empty() {
            // Masked-off bytes load as 0; the row's become 128 after the flip, times q = 0.
            let ru = _mm512_xor_si512(load_i8_tail(rt), flip);
            a1 = _mm512_dpbusd_epi32(a1, ru, load_i8_tail(qt));
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1))
    }

    /// One row at a time, in address order: the scan is memory-bound, and reading rows
    /// sequentially is what the hardware prefetcher follows best (interleaving four rows'
    /// chunks measured 2x slower at N = 100k, and software prefetching 4 to 64 rows ahead
    /// 10-40% slower).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    pub(super) fn score_i8(b: &I8Block<'_>, out: &mut [i32]) {
        let q = b.query();
        let bias = 128 * code_sum(q);
        for (i, o) in out.iter_mut().enumerate() {
            *o = biased_dot_i8(q, b.row(i)) - bias;
        }
    }

    /// Per 128-bit lane: `[a0+a2, b0+b2, a1+a3, b1+b3]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn pair_ps(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    }

    /// Per 128-bit lane: the partial sums of four accumulators, in order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn quad_ps(ab: __m512, cd: __m512) -> __m512 {
        let (x, y) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
        )
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn pair_epi32(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn quad_epi32(ab: __m512i, cd: __m512i) -> __m512i {
        _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd))
    }

    fn flatten16_ps(acc: &[[__m512; 4]; 4]) -> [__m512; 16] {
        let mut out = [acc[0][0]; 16];
        for m in 0..16 {
            out[m] = acc[m / 4][m % 4];
        }
        out
    }

    fn flatten16_epi32(acc: &[[__m512i; 4]; 4]) -> [__m512i; 16] {
        let mut out = [acc[0][0]; 16];
        for m in 0..16 {
            out[m] = acc[m / 4][m % 4];
        }
        out
    }

    /// Lane `m` of the result is the horizontal sum of `acc[m]` (transpose-add, see docs).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn reduce16_ps(acc: &[__m512; 16]) -> __m512 {
        let mut u = [_mm512_setzero_ps(); 4];
        for g in 0..4 {
            let a = &acc[4 * g..4 * g + 4];
            u[g] = quad_ps(pair_ps(a[0], a[1]), pair_ps(a[2], a[3]));
        }
        let s01 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(u[0], u[1]),
            _mm512_shuffle_f32x4::<0xDD>(u[0], u[1]),
        );
        let s23 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(u[2], u[3]),
            _mm512_shuffle_f32x4::<0xDD>(u[2], u[3]),
        );
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(s01, s23),
            _mm512_shuffle_f32x4::<0xDD>(s01, s23),
        )
    }

    /// Integer twin of [`reduce16_ps`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn reduce16_epi32(acc: &[__m512i; 16]) -> __m512i {
        let mut u = [_mm512_setzero_si512(); 4];
        for g in 0..4 {
            let a = &acc[4 * g..4 * g + 4];
            u[g] = quad_epi32(pair_epi32(a[0], a[1]), pair_epi32(a[2], a[3]));
        }
        let s01 = _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0x88>(u[0], u[1]),
            _mm512_shuffle_i32x4::<0xDD>(u[0], u[1]),
        );
        let s23 = _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0x88>(u[2], u[3]),
            _mm512_shuffle_i32x4::<0xDD>(u[2], u[3]),
        );
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0x88>(s01, s23),
            _mm512_shuffle_i32x4::<0xDD>(s01, s23),
        )
    }

    /// Below this many queries the multi-query kernels take rows one at a time (memory-bound
    /// regime); from it on, 4 x 4 register tiles (compute-bound regime).
    const SEQUENTIAL_BELOW_QUERIES: usize = 16;

    /// Accumulates an `R x Q` tile of f32 products over the whole dimension.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn acc_f32<const R: usize, const Q: usize>(
        rows: &[&[f32]; R],
        qs: &[&[f32]; Q],
    ) -> [[__m512; Q]; R] {
        let mut acc = [[_mm512_setzero_ps(); Q]; R];
        let (_, tail) = rows[0].as_chunks::<16>();
        let mut rc: [&[[f32; 16]]; R] = [&[]; R];
        for r in 0..R {
            rc[r] = rows[r].as_chunks::<16>().0;
        }
        let mut qc: [&[[f32; 16]]; Q] = [&[]; Q];
        for q in 0..Q {
            qc[q] = qs[q].as_chunks::<16>().0;
        }
        let chunks = rows[0].len() / 16;
        for c in 0..chunks {
            let mut rv = [_mm512_setzero_ps(); R];
            for r in 0..R {
                rv[r] = load(&rc[r][c]);
            }
            for q in 0..Q {
                let qv = load(&qc[q][c]);
                for r in 0..R {
                    acc[r][q] = _mm512_fmadd_ps(rv[r], qv, acc[r][q]);
                }
            }
        }
        if !tail.is_empty() {
            let t = chunks * 16;
            let mut rv = [_mm512_setzero_ps(); R];
            for r in 0..R {
                rv[r] = load_tail(&rows[r][t..]);
            }
            for q in 0..Q {
                let qv = load_tail(&qs[q][t..]);
                for r in 0..R {
                    acc[r][q] = _mm512_fmadd_ps(rv[r], qv, acc[r][q]);
                }
            }
        }
        acc
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    fn tile4x4_f32(b: &F32Multi<'_>, i: usize, j: usize, out: &mut [f32]) {
        let rows = [b.row(i), b.row(i + 1), b.row(i + 2), b.row(i + 3)];
        let qs = [b.query(j), b.query(j + 1), b.query(j + 2), b.query(j + 3)];
        let acc = acc_f32::<4, 4>(&rows, &qs);
        let flat = flatten16_ps(&acc);
        let mut sums = [0f32; 16];
        store16_ps(&mut sums, reduce16_ps(&flat));
        let nq = b.queries();
        for r in 0..4 {
            out[(i + r) * nq + j..(i + r) * nq + j + 4].copy_from_slice(&sums[4 * r..4 * r + 4]);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    fn tile_f32<const R: usize, const Q: usize>(
        b: &F32Multi<'_>,
        i: usize,
        j: usize,
        out: &mut [f32],
    ) {
        let mut rows: [&[f32]; R] = [&[]; R];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = b.row(i + r);
        }
        let mut qs: [&[f32]; Q] = [&[]; Q];
        for (q, qr) in qs.iter_mut().enumerate() {
            *qr = b.query(j + q);
        }
        let acc = acc_f32::<R, Q>(&rows, &qs);
        let nq = b.queries();
        for r in 0..R {
            for q in 0..Q {
                out[(i + r) * nq + j + q] = _mm512_reduce_add_ps(acc[r][q]);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    pub(super) fn multi_f32(b: &F32Multi<'_>, out: &mut [f32]) {
        let (n, nq) = (b.len(), b.queries());
        let mut i = 0;
        // Few queries: the scan is still memory-bound, so rows go one at a time in address
        // order (the prefetcher follows one stream; four interleaved rows read at half speed).
        while nq >= SEQUENTIAL_BELOW_QUERIES && i + 4 <= n {
            let mut j = 0;
            while j + 4 <= nq {
                tile4x4_f32(b, i, j, out);
                j += 4;
            }
            match nq - j {
                3 => tile_f32::<4, 3>(b, i, j, out),
                2 => tile_f32::<4, 2>(b, i, j, out),
                1 => tile_f32::<4, 1>(b, i, j, out),
                _ => {}
            }
            i += 4;
        }
        while i < n {
            let mut j = 0;
            while j + 4 <= nq {
                tile_f32::<1, 4>(b, i, j, out);
                j += 4;
            }
            match nq - j {
                3 => tile_f32::<1, 3>(b, i, j, out),
                2 => tile_f32::<1, 2>(b, i, j, out),
                1 => tile_f32::<1, 1>(b, i, j, out),
                _ => {}
            }
            i += 1;
        }
    }

    /// Accumulates an `R x Q` tile of biased int8 products (`(r + 128) * q`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn acc_i8<const R: usize, const Q: usize>(
        rows: &[&[i8]; R],
        qs: &[&[i8]; Q],
    ) -> [[__m512i; Q]; R] {
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut acc = [[_mm512_setzero_si512(); Q]; R];
        let mut rc: [&[[i8; 64]]; R] = [&[]; R];
        for r in 0..R {
            rc[r] = rows[r].as_chunks::<64>().0;
        }
        let mut qc: [&[[i8; 64]]; Q] = [&[]; Q];
        for q in 0..Q {
            qc[q] = qs[q].as_chunks::<64>().0;
        }
        let chunks = rows[0].len() / 64;
        for c in 0..chunks {
            let mut rv = [_mm512_setzero_si512(); R];
            for r in 0..R {
                rv[r] = _mm512_xor_si512(load_i8(&rc[r][c]), flip);
            }
            for q in 0..Q {
                let qv = load_i8(&qc[q][c]);
                for r in 0..R {
                    acc[r][q] = _mm512_dpbusd_epi32(acc[r][q], rv[r], qv);
                }
            }
        }
        let t = chunks * 64;
        if t < rows[0].len() {
            let mut rv = [_mm512_setzero_si512(); R];
            for r in 0..R {
                rv[r] = _mm512_xor_si512(load_i8_tail(&rows[r][t..]), flip);
            }
            for q in 0..Q {
                let qv = load_i8_tail(&qs[q][t..]);
                for r in 0..R {
                    acc[r][q] = _mm512_dpbusd_epi32(acc[r][q], rv[r], qv);
                }
            }
        }
        acc
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    fn tile4x4_i8(b: &I8Multi<'_>, bias: &[i32], i: usize, j: usize, out: &mut [i32]) {
        let rows = [b.row(i), b.row(i + 1), b.row(i + 2), b.row(i + 3)];
        let qs = [b.query(j), b.query(j + 1), b.query(j + 2), b.query(j + 3)];
        let acc = acc_i8::<4, 4>(&rows, &qs);
        let flat = flatten16_epi32(&acc);
        let mut sums = [0i32; 16];
        store16_epi32(&mut sums, reduce16_epi32(&flat));
        let nq = b.queries();
        for r in 0..4 {
            for q in 0..4 {
                out[(i + r) * nq + j + q] = sums[4 * r + q] - bias[j + q];
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    fn tile_i8<const R: usize, const Q: usize>(
        b: &I8Multi<'_>,
        bias: &[i32],
        i: usize,
        j: usize,
        out: &mut [i32],
    ) {
        let mut rows: [&[i8]; R] = [&[]; R];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = b.row(i + r);
        }
        let mut qs: [&[i8]; Q] = [&[]; Q];
        for (q, qr) in qs.iter_mut().enumerate() {
            *qr = b.query(j + q);
        }
        let acc = acc_i8::<R, Q>(&rows, &qs);
        let nq = b.queries();
        for r in 0..R {
            for q in 0..Q {
                out[(i + r) * nq + j + q] = _mm512_reduce_add_epi32(acc[r][q]) - bias[j + q];
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    pub(super) fn multi_i8(b: &I8Multi<'_>, out: &mut [i32]) {
        let (n, nq) = (b.len(), b.queries());
        let bias: Vec<i32> = (0..nq).map(|j| 128 * code_sum(b.query(j))).collect();
        let mut i = 0;
        // Few queries: the scan is still memory-bound, so rows go one at a time in address
        // order (the prefetcher follows one stream; four interleaved rows read at half speed).
        while nq >= SEQUENTIAL_BELOW_QUERIES && i + 4 <= n {
            let mut j = 0;
            while j + 4 <= nq {
                tile4x4_i8(b, &bias, i, j, out);
                j += 4;
            }
            match nq - j {
                3 => tile_i8::<4, 3>(b, &bias, i, j, out),
                2 => tile_i8::<4, 2>(b, &bias, i, j, out),
                1 => tile_i8::<4, 1>(b, &bias, i, j, out),
                _ => {}
            }
            i += 4;
        }
        while i < n {
            let mut j = 0;
            while j + 4 <= nq {
                tile_i8::<1, 4>(b, &bias, i, j, out);
                j += 4;
            }
            match nq - j {
                3 => tile_i8::<1, 3>(b, &bias, i, j, out),
                2 => tile_i8::<1, 2>(b, &bias, i, j, out),
                1 => tile_i8::<1, 1>(b, &bias, i, j, out),
                _ => {}
            }
            i += 1;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn store16_ps(dst: &mut [f32; 16], v: __m512) {
        // SAFETY: `dst` is 16 writable f32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn store16_epi32(dst: &mut [i32; 16], v: __m512i) {
        // SAFETY: `dst` is 16 writable i32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_epi32(dst.as_mut_ptr(), v) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn load_u32(a: &[u32; 16]) -> __m512i {
        // SAFETY: `a` is 64 readable bytes; loadu has no alignment requirement.
        unsafe { _mm512_loadu_epi32(a.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    #[inline]
    fn store_u32(o: &mut [u32; 16], v: __m512i) {
        // SAFETY: `o` is 64 writable bytes; storeu has no alignment requirement.
        unsafe { _mm512_storeu_epi32(o.as_mut_ptr().cast(), v) }
    }

    /// Sixteen distances per unsigned compare into a mask register, and no branch per row:
    /// the passing lanes' indices are compressed to the front in a register (`vpcompressd`
    /// to memory is microcoded and slow on Zen 4) and all sixteen lanes are stored at the
    /// output's end, which then advances by the pass count.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    pub(super) fn at_most(dist: &[u32], limit: u32, picked: &mut [u32]) -> usize {
        let lim = _mm512_set1_epi32(limit as i32);
        let (sixteens, rest) = dist.as_chunks::<16>();
        let mut index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let step = _mm512_set1_epi32(16);
        let mut n = 0;
        for e in sixteens {
            let pass = _mm512_cmple_epu32_mask(load_u32(e), lim);
            let moved = _mm512_maskz_compress_epi32(pass, index);
            // n <= 16 * (groups before this one), so these sixteen lanes lie inside
            // `picked`, which is as long as `dist`.
            if let Some(out) = picked
                .get_mut(n..n + 16)
                .and_then(|o| <&mut [u32; 16]>::try_from(o).ok())
            {
                store_u32(out, moved);
            }
            n += pass.count_ones() as usize;
            index = _mm512_add_epi32(index, step);
        }
        let base = 16 * sixteens.len();
        for (j, &d) in rest.iter().enumerate() {
            if d <= limit {
                picked[n] = (base + j) as u32;
                n += 1;
            }
        }
        n
    }
}

mod vpopcnt {
    use std::arch::x86_64::*;

    use super::{BitBlock, BitMulti};

    #[target_feature(enable = "avx512f,avx512vpopcntdq,avx2")]
    #[inline]
    fn load(a: &[u64; 8]) -> __m512i {
        // SAFETY: `a` is 64 readable bytes; loadu has no alignment requirement.
        unsafe { _mm512_loadu_epi64(a.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx512f,avx512vpopcntdq,avx2")]
    #[inline]
    fn load_tail(a: &[u64]) -> __m512i {
        let k = ((1u32 << a.len().min(7)) - 1) as __mmask8;
        // SAFETY: the mask enables words 0..a.len() (< 8), all inside `a`; AVX-512 masked
        // loads suppress faults on masked-off lanes, so nothing past the slice is touched.
        unsafe { _mm512_maskz_loadu_epi64(k, a.as_ptr().cast()) }
    }

    /// `popcount(q ^ r)` over the common prefix of two codes.
    #[target_feature(enable = "avx512f,avx512vpopcntdq,avx2")]
    fn hamming_words(q: &[u64], r: &[u64]) -> u32 {
        let n = q.len().min(r.len());
        let (qc, qt) = q[..n].as_chunks::<8>();
        let (rc, rt) = r[..n].as_chunks::<8>();
        let mut acc = _mm512_setzero_si512();
        for (x, y) in qc.iter().zip(rc) {
            let v = _mm512_xor_si512(load(x), load(y));
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(v));
        }
        if !qt.is_empty() {
            let v = _mm512_xor_si512(load_tail(qt), load_tail(rt));
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(v));
        }
        _mm512_reduce_add_epi64(acc) as u32
    }

    #[target_feature(enable = "avx512f,avx512vpopcntdq,avx2")]
    pub(super) fn hamming(b: &BitBlock<'_>, out: &mut [u32]) {
        let done = if let (Ok(q), true) = (<&[u64; 4]>::try_from(b.query()), b.stride == 4) {
            hamming_dense4(q, b.rows, out)
        } else {
            0
        };
        for (i, o) in out.iter_mut().enumerate().skip(done) {
            *o = hamming_words(b.query(), b.row(i));
        }
    }

    /// Densely packed 4-word codes (the code heads at d = 512), eight rows per step: two rows
    /// per 64-byte load, per-word counts narrowed to bytes (`vpmovqb`), then summed four
    /// bytes at a time (`vpmaddubsw`, `vpmaddwd`) into eight row distances, stored at once.
    /// About 3 instructions per row instead of 9. Returns how many rows it scored.
    #[target_feature(enable = "avx512f,avx512vpopcntdq,avx2")]
    fn hamming_dense4(q: &[u64; 4], rows: &[u64], out: &mut [u32]) -> usize {
        let q2 = _mm512_broadcast_i64x4(load4(q));
        let ones8 = _mm256_set1_epi8(1);
        let ones16 = _mm256_set1_epi16(1);
        let steps = (rows.len() / 32).min(out.len() / 8);
        let (groups, _) = rows[..steps * 32].as_chunks::<32>();
        let (outs, _) = out[..steps * 8].as_chunks_mut::<8>();
        for (g, o) in groups.iter().zip(outs) {
            let (pairs, _) = g.as_chunks::<8>();
            let bytes = |k: usize| {
                let v = _mm512_xor_si512(load(&pairs[k]), q2);
                _mm512_cvtepi64_epi8(_mm512_popcnt_epi64(v))
            };
            let lo = _mm_unpacklo_epi64(bytes(0), bytes(1));
            let hi = _mm_unpacklo_epi64(bytes(2), bytes(3));
            let all = _mm256_set_m128i(hi, lo);
            let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(all, ones8), ones16);
            store8(o, sums);
        }
        steps * 8
    }

    #[target_feature(enable = "avx512f,avx512vpopcntdq,avx2")]
    #[inline]
    fn load4(a: &[u64; 4]) -> __m256i {
        // SAFETY: `a` is 32 readable bytes; loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx512f,avx512vpopcntdq,avx2")]
    #[inline]
    fn store8(o: &mut [u32; 8], v: __m256i) {
        // SAFETY: `o` is 32 writable bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), v) }
    }

    #[target_feature(enable = "avx512f,avx512vpopcntdq,avx2")]
    pub(super) fn multi_hamming(b: &BitMulti<'_>, out: &mut [u32]) {
        let nq = b.queries();
        for (i, row_out) in out.chunks_exact_mut(nq.max(1)).enumerate() {
            let row = b.row(i);
            for (j, o) in row_out.iter_mut().enumerate() {
                *o = hamming_words(b.query(j), row);
            }
        }
    }
}

/// The second pass of the binary scan: scattered rows, scored with the scalar `popcnt`
/// (four words of a code tail need no vector) while the rows a few picks ahead are
/// prefetched, so their cache misses overlap instead of queueing one after another.
mod gather {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};

    use super::BitGather;

    /// How many picks ahead to prefetch: enough misses in flight to cover DRAM latency
    /// (about 100 ns) at a few nanoseconds per row.
    const AHEAD: usize = 16;

    #[target_feature(enable = "popcnt")]
    pub(super) fn hamming_gather(g: &BitGather<'_>, out: &mut [u32]) {
        let picks = g.picks();
        let q = g.query();
        for (i, (&r, o)) in picks.iter().zip(out).enumerate() {
            if let Some(&ahead) = picks.get(i + AHEAD) {
                let row = g.row(ahead);
                // SAFETY: `row` is a live slice, so its pointer is valid; a prefetch only
                // hints the cache and never faults or writes.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().cast()) };
            }
            let row = g.row(r);
            *o = q.iter().zip(row).map(|(&a, &b)| (a ^ b).count_ones()).sum();
        }
    }
}

//! NEON kernels (aarch64).
//!
//! Same shape as the x86 single-query kernels: four independent `vfmaq_f32` accumulators
//! for f32; int8 products widened with `vmull_s8` (127 * 127 fits i16) and pair-added into
//! i32 lanes with `vpadalq_s16`. 1-bit codes: `vcntq_u8` counts the bits of `q ^ r` per byte
//! and `vpadalq_u8` folds them into u16 lanes (at most 16 per lane per chunk, so no lane can
//! overflow below 4096 chunks, far beyond `MAX_DIM`). The multi-query kernels run the single-query kernel per
//! pair: simple, and still correct; register tiling as on x86 is future work.
//!
//! This file is compiled only for aarch64 targets; the development machines are x86-64, so
//! it is exercised by the `neon_matches_scalar` tests on ARM hosts only.
#![allow(unsafe_code)]

use std::arch::aarch64::*;

use super::{BitBlock, BitMulti, F32Block, F32Multi, I8Block, I8Multi, Isa, Kernels};

/// The NEON table, if the CPU has NEON (every mainstream aarch64 CPU does).
pub(super) fn neon() -> Option<Kernels> {
    std::arch::is_aarch64_feature_detected!("neon").then_some(Kernels {
        isa: Isa::Aarch64Neon,
        dot_f32: entry_dot_f32,
        score_f32: entry_score_f32,
        score_i8: entry_score_i8,
        multi_f32: entry_multi_f32,
        multi_i8: entry_multi_i8,
        hamming: entry_hamming,
        multi_hamming: entry_multi_hamming,
        // Scattered reads and a mostly-false compare: the portable code is as good here.
        hamming_gather: super::scalar::hamming_gather,
        at_most: super::scalar::at_most,
    })
}

fn entry_hamming(b: &BitBlock<'_>, out: &mut [u32]) {
    // SAFETY: only stored in the table `neon()` built after detecting NEON.
    unsafe { hamming(b, out) }
}

fn entry_multi_hamming(b: &BitMulti<'_>, out: &mut [u32]) {
    // SAFETY: only stored in the table `neon()` built after detecting NEON.
    unsafe { multi_hamming(b, out) }
}

fn entry_dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only stored in the table `neon()` built after detecting NEON.
    unsafe { dot_f32(a, b) }
}

fn entry_score_f32(b: &F32Block<'_>, out: &mut [f32]) {
    // SAFETY: only stored in the table `neon()` built after detecting NEON.
    unsafe { score_f32(b, out) }
}

fn entry_score_i8(b: &I8Block<'_>, out: &mut [i32]) {
    // SAFETY: only stored in the table `neon()` built after detecting NEON.
    unsafe { score_i8(b, out) }
}

fn entry_multi_f32(b: &F32Multi<'_>, out: &mut [f32]) {
    // SAFETY: only stored in the table `neon()` built after detecting NEON.
    unsafe { multi_f32(b, out) }
}

fn entry_multi_i8(b: &I8Multi<'_>, out: &mut [i32]) {
    // SAFETY: only stored in the table `neon()` built after detecting NEON.
    unsafe { multi_i8(b, out) }
}

#[target_feature(enable = "neon")]
#[inline]
fn load(a: &[f32; 4]) -> float32x4_t {
    // SAFETY: `a` is 4 readable f32; vld1q has no alignment requirement beyond f32's.
    unsafe { vld1q_f32(a.as_ptr()) }
}

#[target_feature(enable = "neon")]
#[inline]
fn load_i8(a: &[i8; 16]) -> int8x16_t {
    // SAFETY: `a` is 16 readable bytes.
    unsafe { vld1q_s8(a.as_ptr()) }
}

#[target_feature(enable = "neon")]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ac, at) = a[..n].as_chunks::<4>();
    let (bc, bt) = b[..n].as_chunks::<4>();
    let mut acc = [vdupq_n_f32(0.0); 4];
    let whole = ac.len() / 4 * 4;
    for (a4, b4) in ac[..whole].chunks_exact(4).zip(bc[..whole].chunks_exact(4)) {
        for u in 0..4 {
            acc[u] = vfmaq_f32(acc[u], load(&a4[u]), load(&b4[u]));
        }
    }
    for (x, y) in ac[whole..].iter().zip(&bc[whole..]) {
        acc[0] = vfmaq_f32(acc[0], load(x), load(y));
    }
    let s = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    vaddvq_f32(s) + at.iter().zip(bt).map(|(&x, &y)| x * y).sum::<f32>()
}

#[target_feature(enable = "neon")]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (ac, at) = a[..n].as_chunks::<16>();
    let (bc, bt) = b[..n].as_chunks::<16>();
    let mut acc = [vdupq_n_s32(0); 2];
    for (x, y) in ac.iter().zip(bc) {
        let (xv, yv) = (load_i8(x), load_i8(y));
        acc[0] = vpadalq_s16(acc[0], vmull_s8(vget_low_s8(xv), vget_low_s8(yv)));
        acc[1] = vpadalq_s16(acc[1], vmull_high_s8(xv, yv));
    }
    let tail: i32 = at
        .iter()
        .zip(bt)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum();
    vaddvq_s32(vaddq_s32(acc[0], acc[1])) + tail
}

#[target_feature(enable = "neon")]
fn score_f32(b: &F32Block<'_>, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_f32(b.query(), b.row(i));
    }
}

#[target_feature(enable = "neon")]
fn score_i8(b: &I8Block<'_>, out: &mut [i32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_i8(b.query(), b.row(i));
    }
}

#[target_feature(enable = "neon")]
fn multi_f32(b: &F32Multi<'_>, out: &mut [f32]) {
    let nq = b.queries();
    for (i, row_out) in out.chunks_exact_mut(nq.max(1)).enumerate() {
        for (j, o) in row_out.iter_mut().enumerate() {
            *o = dot_f32(b.query(j), b.row(i));
        }
    }
}

#[target_feature(enable = "neon")]
fn multi_i8(b: &I8Multi<'_>, out: &mut [i32]) {
    let nq = b.queries();
    for (i, row_out) in out.chunks_exact_mut(nq.max(1)).enumerate() {
        for (j, o) in row_out.iter_mut().enumerate() {
            *o = dot_i8(b.query(j), b.row(i));
        }
    }
}

#[target_feature(enable = "neon")]
#[inline]
fn load_u64(a: &[u64; 2]) -> uint64x2_t {
    // SAFETY: `a` is 2 readable u64; vld1q has no alignment requirement beyond u64's.
    unsafe { vld1q_u64(a.as_ptr()) }
}

/// `popcount(q ^ r)` over the common prefix of two codes.
#[target_feature(enable = "neon")]
fn hamming_words(q: &[u64], r: &[u64]) -> u32 {
    let n = q.len().min(r.len());
    let (qc, qt) = q[..n].as_chunks::<2>();
    let (rc, rt) = r[..n].as_chunks::<2>();
    let mut acc = vdupq_n_u16(0);
    for (x, y) in qc.iter().zip(rc) {
        let v = veorq_u64(load_u64(x), load_u64(y));
        acc = vpadalq_u8(acc, vcntq_u8(vreinterpretq_u8_u64(v)));
    }
    let tail: u32 = qt.iter().zip(rt).map(|(&x, &y)| (x ^ y).count_ones()).sum();
    vaddlvq_u16(acc) + tail
}

#[target_feature(enable = "neon")]
fn hamming(b: &BitBlock<'_>, out: &mut [u32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = hamming_words(b.query(), b.row(i));
    }
}

#[target_feature(enable = "neon")]
fn multi_hamming(b: &BitMulti<'_>, out: &mut [u32]) {
    let nq = b.queries();
    for (i, row_out) in out.chunks_exact_mut(nq.max(1)).enumerate() {
        let row = b.row(i);
        for (j, o) in row_out.iter_mut().enumerate() {
            *o = hamming_words(b.query(j), row);
        }
    }
}

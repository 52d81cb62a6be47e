//! The portable kernels: boring on purpose, because every SIMD table is checked against them.

use super::{BitBlock, BitGather, BitMulti, F32Block, F32Multi, I8Block, I8Multi};

pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

pub(super) fn score_f32(b: &F32Block<'_>, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_f32(b.query(), b.row(i));
    }
}

pub(super) fn score_i8(b: &I8Block<'_>, out: &mut [i32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_i8(b.query(), b.row(i));
    }
}

pub(super) fn multi_f32(b: &F32Multi<'_>, out: &mut [f32]) {
    let nq = b.queries();
    for (i, row_out) in out.chunks_exact_mut(nq.max(1)).enumerate() {
        for (j, o) in row_out.iter_mut().enumerate() {
            *o = dot_f32(b.query(j), b.row(i));
        }
    }
}

pub(super) fn multi_i8(b: &I8Multi<'_>, out: &mut [i32]) {
    let nq = b.queries();
    for (i, row_out) in out.chunks_exact_mut(nq.max(1)).enumerate() {
        for (j, o) in row_out.iter_mut().enumerate() {
            *o = dot_i8(b.query(j), b.row(i));
        }
    }
}

pub(super) fn hamming_words(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(&x, &y)| (x ^ y).count_ones()).sum()
}

pub(super) fn hamming(b: &BitBlock<'_>, out: &mut [u32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = hamming_words(b.query(), b.row(i));
    }
}

pub(super) fn multi_hamming(b: &BitMulti<'_>, out: &mut [u32]) {
    let nq = b.queries();
    for (i, row_out) in out.chunks_exact_mut(nq.max(1)).enumerate() {
        for (j, o) in row_out.iter_mut().enumerate() {
            *o = hamming_words(b.query(j), b.row(i));
        }
    }
}

pub(super) fn hamming_gather(g: &BitGather<'_>, out: &mut [u32]) {
    for (&r, o) in g.picks().iter().zip(out) {
        *o = hamming_words(g.query(), g.row(r));
    }
}

pub(super) fn at_most(dist: &[u32], limit: u32, picked: &mut [u32]) -> usize {
    let mut n = 0;
    for (i, &d) in dist.iter().enumerate() {
        if d <= limit {
            picked[n] = i as u32;
            n += 1;
        }
    }
    n
}

//! Each kernel, per available instruction set (always including the scalar reference), at
//! d = 128 and 512: one query against a block of 256 rows (rows in L2, so this measures
//! compute, not memory), and 16 queries against the same block; 1-bit Hamming kernels the
//! same way (256 code heads of `d / 128` words, as the prefilter reads them).
#![forbid(unsafe_code)]
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use benches::BenchGallery;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gatewarden::index::Kernels;
use gatewarden::index::kernels::{BitBlock, BitMulti, F32Block, F32Multi, I8Block, I8Multi};
use gatewarden::index::{code_words, encode_bits, quantize_into};

const ROWS: usize = 256;
const QUERIES: usize = 16;

fn kernels(c: &mut Criterion) {
    for dim in [128, 512] {
        let g = BenchGallery::new(1, ROWS, dim);
        let probes = g.probes(2, QUERIES);
        let packed: Vec<f32> = probes.iter().flatten().copied().collect();
        let mut qcodes = vec![0i8; dim * QUERIES];
        for (j, p) in probes.iter().enumerate() {
            quantize_into(p, &mut qcodes[j * dim..(j + 1) * dim]);
        }
        let mut group = c.benchmark_group(format!("kernels/d{dim}"));
        group.throughput(Throughput::Elements(ROWS as u64));
        let blocks = (
            F32Block::new(&probes[0], g.vectors(), g.stride(), ROWS),
            I8Block::new(&qcodes[..dim], g.codes(), g.code_stride(), ROWS),
            F32Multi::new(dim, &packed, dim, QUERIES, g.vectors(), g.stride(), ROWS),
            I8Multi::new(dim, &qcodes, dim, QUERIES, g.codes(), g.code_stride(), ROWS),
        );
        let (Some(f), Some(i), Some(fm), Some(im)) = blocks else {
            unreachable!("the bench gallery holds {ROWS} rows of dimension {dim}");
        };
        let words = code_words(dim).div_ceil(2);
        let mut qbits = vec![0u64; words * QUERIES];
        for (j, p) in probes.iter().enumerate() {
            let mut code = vec![0u64; code_words(dim)];
            encode_bits(p, &vec![0f32; dim], &mut code);
            qbits[j * words..(j + 1) * words].copy_from_slice(&code[..words]);
        }
        let bit_blocks = (
            BitBlock::new(&qbits[..words], g.bit_heads(), words, ROWS),
            BitMulti::new(words, &qbits, words, QUERIES, g.bit_heads(), words, ROWS),
        );
        let (Some(hb), Some(hm)) = bit_blocks else {
            unreachable!("the bench gallery holds {ROWS} codes of {words} words");
        };
        for k in Kernels::available() {
            let isa = k.isa().name();
            let mut out = vec![0f32; ROWS * QUERIES];
            group.bench_function(BenchmarkId::new("score_f32", isa), |b| {
                b.iter(|| k.score_f32(&f, &mut out))
            });
            let mut iout = vec![0i32; ROWS * QUERIES];
            group.bench_function(BenchmarkId::new("score_i8", isa), |b| {
                b.iter(|| k.score_i8(&i, &mut iout))
            });
            group.bench_function(BenchmarkId::new("multi_f32_x16", isa), |b| {
                b.iter(|| k.multi_f32(&fm, &mut out))
            });
            group.bench_function(BenchmarkId::new("multi_i8_x16", isa), |b| {
                b.iter(|| k.multi_i8(&im, &mut iout))
            });
            let mut hout = vec![0u32; ROWS * QUERIES];
            group.bench_function(BenchmarkId::new("hamming", isa), |b| {
                b.iter(|| k.hamming(&hb, &mut hout))
            });
            group.bench_function(BenchmarkId::new("multi_hamming_x16", isa), |b| {
                b.iter(|| k.multi_hamming(&hm, &mut hout))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);

//! Exact search at N = 10k and 100k, d = 512, f32 and int8, one query and batches of 16, 64
//! and 256 (one thread), plus the f32 batch paths side by side (register-tiled SIMD scan vs
//! faer GEMM) that set `GEMM_MIN_QUERIES`.
#![forbid(unsafe_code)]
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use benches::BenchGallery;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gatewarden::index::{BatchPath, Kernels, Precision, SearchOptions, TopK, search};

const DIM: usize = 512;

fn run(c: &mut Criterion) {
    let k = Kernels::detect();
    for n in [10_000, 100_000] {
        let g = BenchGallery::new(7, n, DIM);
        let probes = g.probes(8, 256);
        let parts = [g.rows()];
        let mut group = c.benchmark_group(format!("search/n{n}"));
        group.sample_size(10);
        for precision in [Precision::F32, Precision::Int8] {
            for batch in [1usize, 16, 64, 256] {
                let qs: Vec<&[f32]> = probes[..batch].iter().map(Vec::as_slice).collect();
                let opts = SearchOptions {
                    precision,
                    threads: 1,
                    batch: BatchPath::Auto,
                };
                group.throughput(Throughput::Elements(batch as u64));
                group.bench_function(BenchmarkId::new(precision.name(), batch), |b| {
                    b.iter(|| search(k, &parts, &qs, &TopK::new(10), &opts))
                });
            }
        }
        if n == 10_000 {
            for path in [BatchPath::Blocked, BatchPath::Gemm] {
                for batch in [2usize, 4, 8, 16, 64] {
                    let qs: Vec<&[f32]> = probes[..batch].iter().map(Vec::as_slice).collect();
                    let opts = SearchOptions {
                        precision: Precision::F32,
                        threads: 1,
                        batch: path,
                    };
                    group.throughput(Throughput::Elements(batch as u64));
                    let name = format!(
                        "f32_{}",
                        if path == BatchPath::Gemm {
                            "gemm"
                        } else {
                            "blocked"
                        }
                    );
                    group.bench_function(BenchmarkId::new(name, batch), |b| {
                        b.iter(|| search(k, &parts, &qs, &TopK::new(10), &opts))
                    });
                }
            }
        }
        group.finish();
    }
}

criterion_group!(benches, run);
criterion_main!(benches);

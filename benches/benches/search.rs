//! Search at N = 10k and 100k (and 1M for binary and int8 with `GW_BENCH_1M=1`), d = 512,
//! f32, int8 and binary, one query and batches of 16, 64 and 256 (one thread), plus the f32
//! batch paths side by side (register-tiled SIMD scan vs faer GEMM) that set
//! `GEMM_MIN_QUERIES`. The f32/int8/binary figures at each size set `AUTO_BINARY_MIN_ROWS`.
#![forbid(unsafe_code)]
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use benches::BenchGallery;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gatewarden::index::{
    BINARY_CANDIDATES, BatchPath, Kernels, Precision, SearchOptions, TopK, search,
};

const DIM: usize = 512;

fn run(c: &mut Criterion) {
    let k = Kernels::detect();
    let big = std::env::var_os("GW_BENCH_1M").is_some();
    let sizes: &[usize] = if big {
        &[10_000, 100_000, 1_000_000]
    } else {
        &[10_000, 100_000]
    };
    for &n in sizes {
        let g = BenchGallery::new(7, n, DIM);
        let probes = g.probes(8, 256);
        let parts = [g.rows()];
        let mut group = c.benchmark_group(format!("search/n{n}"));
        group.sample_size(10);
        let precisions: &[Precision] = if n >= 1_000_000 {
            &[Precision::Int8, Precision::Binary]
        } else {
            &[Precision::F32, Precision::Int8, Precision::Binary]
        };
        for &precision in precisions {
            for batch in [1usize, 16, 64, 256] {
                let qs: Vec<&[f32]> = probes[..batch].iter().map(Vec::as_slice).collect();
                let opts = SearchOptions {
                    precision,
                    threads: 1,
                    batch: BatchPath::Auto,
                    candidates: BINARY_CANDIDATES,
                    prefilter: true,
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
                        candidates: BINARY_CANDIDATES,
                        prefilter: true,
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

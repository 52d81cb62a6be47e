//! Shared fixtures for the criterion benches: seeded face-like galleries held in memory in the
//! same layout as a segment file, so the benches measure the kernels and the scan, not I/O.
#![forbid(unsafe_code)]

use gatewarden::index::{RowsRef, code_words, encode_bits, quantize_into};
use gatewarden::testing::FacePopulation;

/// A gallery of `n` face-like identities (unit vectors) with int8 and 1-bit codes.
pub struct BenchGallery {
    dim: usize,
    stride: usize,
    code_stride: usize,
    vectors: Vec<f32>,
    codes: Vec<i8>,
    quant: Vec<[f32; 4]>,
    heads: Vec<u64>,
    tails: Vec<u64>,
    centre: Vec<f32>,
    subjects: Vec<u64>,
    templates: Vec<u64>,
    population: FacePopulation,
}

impl BenchGallery {
    /// `n` identities of dimension `dim`, seeded.
    pub fn new(seed: u64, n: usize, dim: usize) -> Self {
        let population = FacePopulation::new(seed, n, dim);
        let stride = dim.next_multiple_of(16);
        let code_stride = dim.next_multiple_of(64);
        let mut vectors = vec![0f32; n * stride];
        let mut codes = vec![0i8; n * code_stride];
        let mut quant = Vec::with_capacity(n);
        for i in 0..n {
            let row = population.identity(i);
            vectors[i * stride..i * stride + dim].copy_from_slice(row);
            quant.push(
                quantize_into(row, &mut codes[i * code_stride..(i + 1) * code_stride]).to_stored(),
            );
        }
        let mut sum = vec![0f64; dim];
        for i in 0..n {
            for (s, &x) in sum.iter_mut().zip(population.identity(i)) {
                *s += f64::from(x);
            }
        }
        let centre: Vec<f32> = sum.iter().map(|&s| (s / n.max(1) as f64) as f32).collect();
        let words = code_words(dim);
        let (mut heads, mut tails) = (Vec::new(), Vec::new());
        let mut code = vec![0u64; words];
        for i in 0..n {
            encode_bits(population.identity(i), &centre, &mut code);
            heads.extend_from_slice(&code[..words.div_ceil(2)]);
            tails.extend_from_slice(&code[words.div_ceil(2)..]);
        }
        let subjects = (0..n as u64).collect();
        let templates = (0..n as u64).collect();
        Self {
            heads,
            tails,
            centre,
            dim,
            stride,
            code_stride,
            vectors,
            codes,
            quant,
            subjects,
            templates,
            population,
        }
    }

    /// The rows as the search sees them (with int8 and 1-bit codes).
    pub fn rows(&self) -> RowsRef<'_> {
        RowsRef::new(
            self.dim,
            &self.vectors,
            self.stride,
            &self.subjects,
            &self.templates,
        )
        .and_then(|r| r.with_codes(&self.codes, self.code_stride, &self.quant))
        .and_then(|r| {
            let (words, h) = (code_words(self.dim), code_words(self.dim).div_ceil(2));
            r.with_bits(&self.heads, h, &self.tails, words - h, &self.centre)
        })
        .unwrap_or_else(|| unreachable!("lengths are built consistent above"))
    }

    /// `count` probes (70% genuine), seeded.
    pub fn probes(&self, seed: u64, count: usize) -> Vec<Vec<f32>> {
        self.population
            .probes(seed, count, 0.7)
            .into_iter()
            .map(|p| p.embedding)
            .collect()
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// f32 rows, `stride()` apart.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// int8 codes, `code_stride()` apart.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// The heads of the 1-bit codes, `ceil(code_words(dim) / 2)` words apart.
    pub fn bit_heads(&self) -> &[u64] {
        &self.heads
    }

    /// Floats per f32 row.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Bytes per code row.
    pub fn code_stride(&self) -> usize {
        self.code_stride
    }
}

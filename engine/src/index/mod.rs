//! Nearest-neighbour search: SIMD kernels, int8 quantization, 1-bit codes, top-k collectors.
//!
//! - [`kernels`]: dot-product kernels for f32 and int8 per instruction set, chosen once at
//!   start-up by CPU detection ([`Kernels::select`]), each property-tested against the scalar
//!   reference.
//! - [`quant`]: int8 codes with a per-row scale and the rigorous error bound that lets an
//!   int8 scan return exactly the f32 answer.
//! - [`bits`]: 1-bit codes (signs after centring) whose Hamming distances shortlist rows
//!   for an exact re-rank at registry scale.
//! - [`topk`]: [`TopK`] and [`BestTwo`] (best subject and best *other* subject, for the
//!   margin rule), with deterministic ties.
//! - [`flat`]: the scan itself over segments and delta chunks ([`RowsRef`]), one query or a
//!   batch, on one or several threads.
//!
//! Scores are inner products; for unit vectors (the gallery normalizes) they are cosines,
//! higher is more similar.

pub mod bits;
pub mod flat;
pub mod kernels;
pub mod quant;
pub mod topk;

pub use bits::{code_words, encode_bits};
pub use flat::{
    AUTO_BINARY_MIN_ROWS, BINARY_CANDIDATES, BatchPath, BitsRef, CodesRef, GEMM_MIN_QUERIES,
    PREFILTER_SHARE, Precision, RowsRef, SearchOptions, search,
};
pub use kernels::{Isa, IsaError, Kernels};
pub use quant::{QueryQuant, RowQuant, quantize_into};
pub use topk::{BestTwo, Collector, Hit, TopK};

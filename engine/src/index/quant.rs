//! int8 quantization with a per-row scale, and the error bound that makes the int8 scan exact.
//!
//! A vector `x` is stored as codes `c = round(x / s)` with `s = max|x| / 127`, so every code
//! is in `[-127, 127]` and every element's error is at most `s / 2`. Queries are quantized
//! the same way. For a row `r` (scale `s_r`) and a query `q` (scale `s_q`, dequantized
//! `q^ = s_q c_q`):
//!
//! ```text
//! r.q - s_r s_q (c_r . c_q) = r.(q - q^) + (r - r^).q^
//! |r.q - s_r s_q (c_r . c_q)| <= s_q/2 * |r|_1 + s_r/2 * |q^|_1
//! ```
//!
//! The exact f32 re-rank score itself may differ from the real dot product by at most
//! `gamma_d * sum|r_i q_i| <= gamma_d * max|r| * |q|_1` (`gamma_d = d u / (1 - d u)`, `u =
//! 2^-24`), which is added, plus a relative slack for the arithmetic of the bound itself.
//! So every row's f32 score lies in `[lb, ub]`, and the search re-ranks exactly the rows
//! whose `ub` reaches the best lower bounds: the result equals exact f32 search. The integer
//! dot product is exact in i32 for `d <= 65536` (65536 * 127 * 127 < 2^31).

/// Per-row quantization parameters, stored beside the codes (as `[scale, l1]` f32 pairs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowQuant {
    /// Scale: `max|x| / 127` (0 for a zero row).
    pub scale: f32,
    /// `sum |x_i|` of the original f32 row.
    pub l1: f32,
}

impl RowQuant {
    /// From the stored `[scale, l1]` pair.
    #[inline]
    pub fn from_pair(p: [f32; 2]) -> Self {
        Self { scale: p[0], l1: p[1] }
    }

    /// The stored `[scale, l1]` pair.
    pub fn to_pair(self) -> [f32; 2] {
        [self.scale, self.l1]
    }
}

/// Quantizes `x` into `codes` (the first `x.len()` of them; the rest are zeroed).
pub fn quantize_into(x: &[f32], codes: &mut [i8]) -> RowQuant {
    let max = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
    codes.fill(0);
    if !(max > 0.0 && max.is_finite()) || x.iter().any(|v| !v.is_finite()) {
        return RowQuant::default();
    }
    let scale = max / 127.0;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (v / scale).round().clamp(-127.0, 127.0) as i8;
    }
    let l1 = x.iter().map(|&v| f64::from(v.abs())).sum::<f64>();
    RowQuant { scale, l1: l1 as f32 }
}

/// A quantized query and the coefficients of its error bound.
#[derive(Clone)]
pub struct QueryQuant {
    codes: Vec<i8>,
    scale: f32,
    /// Multiplies a row's `l1`: `s_q / 2` with slack.
    coef_l1: f32,
    /// Multiplies a row's scale: `|q^|_1 / 2` plus the f32 re-rank rounding term.
    coef_scale: f32,
}

impl QueryQuant {
    /// Quantizes `q`.
    pub fn new(q: &[f32]) -> Self {
        let mut codes = vec![0i8; q.len()];
        let rq = quantize_into(q, &mut codes);
        let code_l1: f64 = codes.iter().map(|&c| f64::from(c.unsigned_abs())).sum();
        let l1_hat = f64::from(rq.scale) * code_l1;
        let u = f64::from(f32::EPSILON) / 2.0;
        let d = q.len() as f64;
        let gamma = d * u / (1.0 - d * u).max(0.5);
        // Slack of 1e-4 relative covers the f32 rounding of scales, codes and this formula.
        let half = 0.5 * (1.0 + 1e-4);
        Self {
            codes,
            scale: rq.scale,
            coef_l1: (half * f64::from(rq.scale)) as f32,
            coef_scale: (half * l1_hat + gamma * 127.0 * f64::from(rq.l1) * 1.01) as f32,
        }
    }

    /// The query codes.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// The interval `[lb, ub]` that holds the row's exact f32 score, from the integer dot
    /// product of the codes.
    #[inline]
    pub fn interval(&self, dot: i32, row: RowQuant) -> (f32, f32) {
        let approx = self.scale * row.scale * dot as f32;
        let bound = self.coef_l1 * row.l1 + self.coef_scale * row.scale;
        let bound = bound + 1e-6 * (approx.abs() + bound) + f32::MIN_POSITIVE;
        (approx - bound, approx + bound)
    }
}

impl std::fmt::Debug for QueryQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryQuant").field("dim", &self.codes.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::index::Kernels;
    use crate::testing::{Rng, dot_f64, uniform_vectors};

    #[test]
    fn codes_span_full_range() {
        let x = [0.5f32, -1.0, 0.25, 0.0];
        let mut c = [0i8; 6];
        let q = quantize_into(&x, &mut c);
        assert_eq!(c, [64, -127, 32, 0, 0, 0]);
        assert!((q.scale - 1.0 / 127.0).abs() < 1e-9);
        assert!((q.l1 - 1.75).abs() < 1e-6);
    }

    #[test]
    fn zero_and_nonfinite_rows_quantize_to_zero() {
        let mut c = [1i8; 3];
        assert_eq!(quantize_into(&[0.0; 3], &mut c), RowQuant::default());
        assert_eq!(c, [0; 3]);
        assert_eq!(quantize_into(&[f32::NAN, 1.0, 0.0], &mut c).scale, 0.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The interval always contains both the real dot product and the f32 kernel's.
        #[test]
        fn prop_interval_contains_exact_score(dim in 1usize..700, seed in any::<u64>(), unit in any::<bool>()) {
            let mut rng = Rng::new(seed);
            let (q, r) = if unit {
                (rng.unit_vector(dim), rng.unit_vector(dim))
            } else {
                (uniform_vectors(seed, 1, dim), uniform_vectors(seed ^ 1, 1, dim))
            };
            let qq = QueryQuant::new(&q);
            let mut codes = vec![0i8; dim];
            let rq = quantize_into(&r, &mut codes);
            let dot: i32 = codes.iter().zip(qq.codes()).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
            let (lb, ub) = qq.interval(dot, rq);
            let real = dot_f64(&q, &r) as f32;
            prop_assert!(lb <= real && real <= ub, "{lb} <= {real} <= {ub}");
            for k in Kernels::available() {
                let s = k.dot_f32(&q, &r);
                prop_assert!(lb <= s && s <= ub, "{}: {lb} <= {s} <= {ub}", k.isa());
            }
        }
    }
}

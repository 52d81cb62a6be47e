//! int8 quantization with a per-row scale, and the error bound that makes the int8 scan exact.
//!
//! A vector `x` is stored as codes `c = round(x / s)` with `s = max|x| / 127`, so every code
//! is in `[-127, 127]`. Beside the codes each row keeps `[s, |x|, |x - s c|, 0]`: its scale,
//! its L2 norm and the L2 norm of its *actual* quantization error. Queries are quantized the
//! same way. With `r^ = s_r c_r` and `q^ = s_q c_q` (Cauchy-Schwarz twice):
//!
//! ```text
//! r.q - s_r s_q (c_r . c_q) = r.(q - q^) + (r - r^).q^
//! |r.q - s_r s_q (c_r . c_q)| <= |r| |q - q^| + |r - r^| |q^|
//! ```
//!
//! The exact f32 re-rank score itself may differ from the real dot product by at most
//! `gamma_d * sum|r_i q_i| <= gamma_d |r| |q|` (`gamma_d = d u / (1 - d u)`, `u = 2^-24`),
//! which is added, plus a relative slack for the f32 arithmetic of the bound itself. So every
//! row's f32 score lies in `[lb, ub]`, and the search re-ranks exactly the rows whose `ub`
//! reaches the best lower bounds: the result equals exact f32 search. For 512-d unit vectors
//! the bound is about 0.016, where the per-element (L1) bound would be about 0.023, so fewer
//! rows need re-ranking. The integer dot product is exact in i32 for `d <= 65536`
//! (65536 * 127 * 127 < 2^31).

/// Per-row quantization parameters, stored beside the codes as `[scale, norm, err, 0]`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowQuant {
    /// Scale: `max|x| / 127` (0 for a zero row).
    pub scale: f32,
    /// `|x|`, the row's L2 norm (rounded up).
    pub norm: f32,
    /// `|x - scale * codes|`, the L2 norm of the quantization error (rounded up).
    pub err: f32,
}

/// Rounds a non-negative f64 up to an f32 that is not smaller.
fn up(x: f64) -> f32 {
    let f = x as f32;
    if f64::from(f) < x { f.next_up() } else { f }
}

impl RowQuant {
    /// From the stored `[scale, norm, err, reserved]` quadruple.
    #[inline]
    pub fn from_stored(p: [f32; 4]) -> Self {
        Self {
            scale: p[0],
            norm: p[1],
            err: p[2],
        }
    }

    /// The stored `[scale, norm, err, 0]` quadruple.
    pub fn to_stored(self) -> [f32; 4] {
        [self.scale, self.norm, self.err, 0.0]
    }

    /// True if the stored values are usable (finite, non-negative).
    pub fn is_valid(p: [f32; 4]) -> bool {
        p[..3].iter().all(|v| v.is_finite() && *v >= 0.0) && p[3] == 0.0
    }
}

/// Quantizes `x` into `codes` (the first `x.len()` of them; the rest are zeroed). A zero or
/// non-finite `x` gives zero codes and zero parameters.
pub fn quantize_into(x: &[f32], codes: &mut [i8]) -> RowQuant {
    let max = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
    codes.fill(0);
    if !(max > 0.0 && max.is_finite()) || x.iter().any(|v| !v.is_finite()) {
        return RowQuant::default();
    }
    let scale = max / 127.0;
    let (mut norm2, mut err2) = (0f64, 0f64);
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (v / scale).round().clamp(-127.0, 127.0) as i8;
        let e = f64::from(v) - f64::from(scale) * f64::from(*c);
        norm2 += f64::from(v) * f64::from(v);
        err2 += e * e;
    }
    // The f64 sums are exact to ~1e-16 relative; the 1e-12 margin covers them.
    RowQuant {
        scale,
        norm: up(norm2.sqrt() * (1.0 + 1e-12)),
        err: up(err2.sqrt() * (1.0 + 1e-12)),
    }
}

/// A quantized query and the coefficients of its error bound.
#[derive(Clone)]
pub struct QueryQuant {
    codes: Vec<i8>,
    scale: f32,
    /// Multiplies a row's norm: `|q - q^| + gamma_d |q|`.
    coef_norm: f32,
    /// Multiplies a row's error norm: `|q^|`.
    coef_err: f32,
}

impl QueryQuant {
    /// Quantizes `q`.
    pub fn new(q: &[f32]) -> Self {
        let mut codes = vec![0i8; q.len()];
        let rq = quantize_into(q, &mut codes);
        let s = f64::from(rq.scale);
        let qhat = codes
            .iter()
            .map(|&c| (s * f64::from(c)).powi(2))
            .sum::<f64>()
            .sqrt();
        let u = f64::from(f32::EPSILON) / 2.0;
        let d = q.len() as f64;
        let gamma = d * u / (1.0 - d * u).max(0.5);
        let slack = 1.0 + 1e-5;
        Self {
            codes,
            scale: rq.scale,
            coef_norm: up((f64::from(rq.err) + gamma * f64::from(rq.norm)) * slack),
            coef_err: up(qhat * slack),
        }
    }

    /// The query codes.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// The query's scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The bound's coefficients: `(coef_norm, coef_err)`, so that the half-width of a row's
    /// interval is `coef_norm * row.norm + coef_err * row.err` (before [`widen`]).
    pub fn coefs(&self) -> (f32, f32) {
        (self.coef_norm, self.coef_err)
    }

    /// The interval `[lb, ub]` that holds the row's exact f32 score, from the integer dot
    /// product of the codes.
    #[inline]
    pub fn interval(&self, dot: i32, row: RowQuant) -> (f32, f32) {
        let approx = self.scale * row.scale * dot as f32;
        let bound = widen(approx, self.coef_norm * row.norm + self.coef_err * row.err);
        (approx - bound, approx + bound)
    }
}

/// Adds the slack that covers the f32 rounding of `approx` and `bound` themselves.
#[inline]
pub fn widen(approx: f32, bound: f32) -> f32 {
    bound + 1e-6 * (approx.abs() + bound) + 1e-30
}

impl std::fmt::Debug for QueryQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryQuant")
            .field("dim", &self.codes.len())
            .finish_non_exhaustive()
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
        assert!((f64::from(q.norm) - 1.3125f64.sqrt()).abs() < 1e-6);
        assert!(q.err > 0.0 && q.err < 0.01);
    }

    #[test]
    fn zero_and_nonfinite_rows_quantize_to_zero() {
        let mut c = [1i8; 3];
        assert_eq!(quantize_into(&[0.0; 3], &mut c), RowQuant::default());
        assert_eq!(c, [0; 3]);
        assert_eq!(
            quantize_into(&[f32::NAN, 1.0, 0.0], &mut c),
            RowQuant::default()
        );
        assert!(!RowQuant::is_valid([f32::NAN, 0.0, 0.0, 0.0]));
        assert!(RowQuant::is_valid(
            quantize_into(&[1.0, 2.0], &mut c).to_stored()
        ));
    }

    #[test]
    fn unit_vector_bound_is_tight_enough_to_matter() {
        let mut rng = Rng::new(4);
        let (q, r) = (rng.unit_vector(512), rng.unit_vector(512));
        let qq = QueryQuant::new(&q);
        let mut codes = vec![0i8; 512];
        let rq = quantize_into(&r, &mut codes);
        let (lb, ub) = qq.interval(0, rq);
        assert!(ub - lb < 0.05, "half-width {}", (ub - lb) / 2.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The interval always contains both the real dot product and every f32 kernel's.
        #[test]
        fn prop_interval_contains_exact_score(dim in 1usize..700, seed in any::<u64>(), unit in any::<bool>(), scale in -8i32..8) {
            let mut rng = Rng::new(seed);
            let (q, mut r) = if unit {
                (rng.unit_vector(dim), rng.unit_vector(dim))
            } else {
                (uniform_vectors(seed, 1, dim), uniform_vectors(seed ^ 1, 1, dim))
            };
            let f = 2f32.powi(scale);
            r.iter_mut().for_each(|x| *x *= f);
            let qq = QueryQuant::new(&q);
            let mut codes = vec![0i8; dim];
            let rq = quantize_into(&r, &mut codes);
            let dot: i32 = codes.iter().zip(qq.codes()).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
            let (lb, ub) = qq.interval(dot, rq);
            let real = dot_f64(&q, &r);
            prop_assert!(f64::from(lb) <= real && real <= f64::from(ub), "{lb} <= {real} <= {ub}");
            for k in Kernels::available() {
                let s = k.dot_f32(&q, &r);
                prop_assert!(lb <= s && s <= ub, "{}: {lb} <= {s} <= {ub}", k.isa());
            }
        }
    }
}

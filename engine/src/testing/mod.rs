//! Seeded generators and naive oracles for tests, benches, fuzzing and the load generator.
//!
//! Everything here is deterministic in its seed, so a failing case can be replayed and the
//! comparison scripts can regenerate the same data. The random source is SplitMix64 (small,
//! fast, good enough for test data; not for anything secret).
//!
//! Face-like data follows the model used by `benches/compare`: an *identity* is a random unit
//! vector; an enrolled *template* and a *genuine probe* are the identity plus independent
//! noise, scaled so that their cosine to the identity is a chosen value; an *impostor* probe
//! is an unrelated random unit vector. In 512 dimensions two random unit vectors have a
//! cosine of about 0 ± 0.044, so genuine and impostor scores are well apart, as with a real
//! face model.

use gatewarden_protocol::SubjectId;

/// SplitMix64: a tiny seeded generator (Steele, Lea and Flood, 2014).
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform float in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// A uniform integer in `0..n` (`n > 0`; returns 0 for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for test data and branch-free.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A standard normal sample (Box-Muller).
    pub fn gaussian(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A vector of `dim` independent standard normal samples.
    pub fn gaussian_vector(&mut self, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| self.gaussian() as f32).collect()
    }

    /// A uniformly random direction: a unit vector in `dim` dimensions (`dim > 0`).
    pub fn unit_vector(&mut self, dim: usize) -> Vec<f32> {
        let mut v = self.gaussian_vector(dim);
        normalize(&mut v);
        v
    }
}

/// Scales `v` to unit length in place (leaves a zero vector unchanged). Returns the old norm.
pub fn normalize(v: &mut [f32]) -> f64 {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
    norm
}

/// `n` random unit vectors of `dim` floats, row-major, seeded.
pub fn unit_vectors(seed: u64, n: usize, dim: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        out.extend(rng.unit_vector(dim));
    }
    out
}

/// `n` vectors of `dim` uniform floats in `[-1, 1)`, row-major, seeded. Not normalized: for
/// kernel tests, where magnitudes should vary.
pub fn uniform_vectors(seed: u64, n: usize, dim: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n * dim)
        .map(|_| rng.uniform(-1.0, 1.0) as f32)
        .collect()
}

/// Mixes `identity` with fresh noise so that the result (unit length) has cosine `cos` to it.
///
/// `identity` must be unit length. The noise is a random direction made orthogonal to the
/// identity, so the cosine is exact up to rounding.
pub fn around(rng: &mut Rng, identity: &[f32], cos: f64) -> Vec<f32> {
    let mut noise = rng.gaussian_vector(identity.len());
    let along: f64 = noise
        .iter()
        .zip(identity)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum();
    for (n, &i) in noise.iter_mut().zip(identity) {
        *n = (f64::from(*n) - along * f64::from(i)) as f32;
    }
    normalize(&mut noise);
    let sin = (1.0 - cos * cos).max(0.0).sqrt();
    let mut out: Vec<f32> = identity
        .iter()
        .zip(&noise)
        .map(|(&i, &n)| (cos * f64::from(i) + sin * f64::from(n)) as f32)
        .collect();
    normalize(&mut out);
    out
}

/// A seeded population of face-like identities with enrolled templates and probes.
#[derive(Clone, Debug)]
pub struct FacePopulation {
    dim: usize,
    identities: Vec<f32>,
}

/// One generated probe and what it truly is.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The embedding (unit length).
    pub embedding: Vec<f32>,
    /// The identity it was drawn around, or `None` for an impostor.
    pub truth: Option<usize>,
    /// Cosine to the true identity (genuine probes only).
    pub cos: Option<f64>,
}

impl FacePopulation {
    /// `n` identities in `dim` dimensions, seeded.
    pub fn new(seed: u64, n: usize, dim: usize) -> Self {
        Self {
            dim,
            identities: unit_vectors(seed, n, dim),
        }
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.identities.len() / self.dim.max(1)
    }

    /// True if there are no identities.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The identity vector of person `i` (unit length).
    pub fn identity(&self, i: usize) -> &[f32] {
        &self.identities[i * self.dim..(i + 1) * self.dim]
    }

    /// All identities, row-major.
    pub fn identities(&self) -> &[f32] {
        &self.identities
    }

    /// The subject id used for person `i` in generated galleries (`1000 + i`, so that row
    /// numbers and subject ids differ and mix-ups show in tests).
    pub fn subject(&self, i: usize) -> SubjectId {
        SubjectId(1000 + i as u64)
    }

    /// An enrolled template of person `i`: cosine 0.85-0.95 to the identity.
    pub fn template(&self, rng: &mut Rng, i: usize) -> Vec<f32> {
        let cos = rng.uniform(0.85, 0.95);
        around(rng, self.identity(i), cos)
    }

    /// A genuine probe of person `i`: cosine 0.6-0.75 to the identity.
    pub fn genuine(&self, rng: &mut Rng, i: usize) -> Probe {
        let cos = rng.uniform(0.6, 0.75);
        Probe {
            embedding: around(rng, self.identity(i), cos),
            truth: Some(i),
            cos: Some(cos),
        }
    }

    /// An impostor probe: a random unit vector unrelated to every identity.
    pub fn impostor(&self, rng: &mut Rng) -> Probe {
        Probe {
            embedding: rng.unit_vector(self.dim),
            truth: None,
            cos: None,
        }
    }

    /// `n` probes: genuine with probability `genuine_share` (of a uniformly chosen person),
    /// impostors otherwise.
    pub fn probes(&self, seed: u64, n: usize, genuine_share: f64) -> Vec<Probe> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                if rng.next_f64() < genuine_share && !self.is_empty() {
                    let i = rng.below(self.len() as u64) as usize;
                    self.genuine(&mut rng, i)
                } else {
                    self.impostor(&mut rng)
                }
            })
            .collect()
    }
}

/// Exact inner product in f64: the oracle the kernels are checked against.
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

/// Naive top-k by inner product over row-major `rows` (`dim` floats each), with the
/// workspace's tie rule: higher score first, then lower subject, then lower row. Returns
/// `(row, score)`; scores are computed in f64 and rounded.
pub fn naive_top_k(
    rows: &[f32],
    dim: usize,
    subjects: &[u64],
    query: &[f32],
    k: usize,
) -> Vec<(usize, f32)> {
    let mut all: Vec<(usize, f64)> = rows
        .chunks_exact(dim.max(1))
        .enumerate()
        .map(|(i, row)| (i, dot_f64(row, query)))
        .collect();
    all.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then(subjects[a.0].cmp(&subjects[b.0]))
            .then(a.0.cmp(&b.0))
    });
    all.truncate(k);
    all.into_iter().map(|(i, s)| (i, s as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_per_seed() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.iter().all(|&x| x == a[0]));
        let mut r1 = Rng::new(1);
        let mut r2 = Rng::new(2);
        assert_ne!(r1.next_u64(), r2.next_u64());
    }

    #[test]
    fn around_hits_requested_cosine() {
        let mut rng = Rng::new(3);
        let id = rng.unit_vector(512);
        for cos in [0.6, 0.7, 0.9] {
            let v = around(&mut rng, &id, cos);
            assert!((dot_f64(&v, &id) - cos).abs() < 1e-4);
            assert!((dot_f64(&v, &v) - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn genuine_probes_score_above_impostors() {
        let pop = FacePopulation::new(11, 50, 256);
        let mut rng = Rng::new(5);
        let g = pop.genuine(&mut rng, 3);
        let imp = pop.impostor(&mut rng);
        assert!(dot_f64(&g.embedding, pop.identity(3)) > 0.55);
        assert!(dot_f64(&imp.embedding, pop.identity(3)).abs() < 0.35);
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(9);
        assert!((0..1000).all(|_| rng.below(7) < 7));
        assert_eq!(rng.below(0), 0);
    }
}

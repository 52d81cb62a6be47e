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
//! face model. [`FacePopulation`] holds its identities in memory; [`IndexedFaces`] derives
//! each person's faces from their index alone, for populations too large to hold (the load
//! generator's millions of people) and so that person 17 is the same in any population size.

use gatewarden_protocol::SubjectId;

#[cfg(feature = "postgres")]
pub mod postgres;

/// The SplitMix64 finalizer: a bijective mix of 64 bits, so distinct inputs give distinct
/// outputs. Also useful to derive seeds and to spread counters.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

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

    /// An independent generator for `(seed, tag, index)`: one tag per kind of randomness, so
    /// two uses never share a sequence, and one index per item, so item 42 does not depend on
    /// how items 0..41 were drawn (or on how many items there are).
    pub fn stream(seed: u64, tag: u64, index: u64) -> Self {
        // Nested mixing: each layer is a bijection, so distinct indexes under one tag give
        // distinct seeds, and the tag is folded in before the index, which cannot cancel it.
        let inner = mix64(tag.wrapping_mul(0xA24B_AED4_963E_E407) ^ mix64(index));
        Self::new(mix64(seed ^ inner))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
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

    /// A uniform index into a slice of length `len` (0 for an empty one).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// An exponential sample with the given mean (inter-arrival times of a Poisson process).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        let u = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        -mean * u.ln()
    }

    /// An index drawn with probability proportional to `weights`. Weights that are negative or
    /// not finite count as 0; if none is positive, the answer is 0.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let usable = |w: f64| w.is_finite() && w > 0.0;
        let total: f64 = weights.iter().copied().filter(|&w| usable(w)).sum();
        if total <= 0.0 {
            return 0;
        }
        let mut x = self.next_f64() * total;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate() {
            if !usable(w) {
                continue;
            }
            last = i;
            if x < w {
                return i;
            }
            x -= w;
        }
        // Rounding can leave `x` a hair above the last weight: it belongs to the last bucket.
        last
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

    /// A vector of `dim` independent standard normal samples by Marsaglia's polar method: one
    /// logarithm and one square root per two samples and no cosine, so about three times as
    /// fast as [`Rng::gaussian_vector`], which draws one sample per `ln`, `sqrt` and `cos`.
    /// The same distribution, but a different sequence from the same seed: for noise that
    /// nothing stored depends on (a gate capture's), never for identities or templates, which
    /// must stay what the prepared galleries enrolled.
    pub fn gaussian_vector_polar(&mut self, dim: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(dim + 1);
        while out.len() < dim {
            let u = 2.0 * self.next_f64() - 1.0;
            let v = 2.0 * self.next_f64() - 1.0;
            let s = u * u + v * v;
            // A point outside the unit disc, or at its centre, is drawn again (21% of draws).
            if s >= 1.0 || s == 0.0 {
                continue;
            }
            let scale = (-2.0 * s.ln() / s).sqrt();
            out.push((u * scale) as f32);
            out.push((v * scale) as f32);
        }
        out.truncate(dim);
        out
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
    let noise = rng.gaussian_vector(identity.len());
    mix(identity, noise, cos)
}

/// [`around`] with noise from [`Rng::gaussian_vector_polar`]: the same distribution of
/// results, drawn faster, but other vectors from the same `rng`. For gate captures, which the
/// load generator draws by the thousand a second and nothing stores.
pub fn capture_around(rng: &mut Rng, identity: &[f32], cos: f64) -> Vec<f32> {
    let noise = rng.gaussian_vector_polar(identity.len());
    mix(identity, noise, cos)
}

/// Unit vector at cosine `cos` to unit vector `identity`, in the plane of `identity` and the
/// part of `noise` orthogonal to it.
fn mix(identity: &[f32], mut noise: Vec<f32>, cos: f64) -> Vec<f32> {
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

/// Faces of a population derived from each person's index alone, never held in memory.
///
/// Person `i`'s identity comes from its own random stream, so it is the same in a population
/// of 100 or of 10 million. An enrolled template has cosine [`TEMPLATE_COS`](Self::TEMPLATE_COS)
/// to the identity and a gate capture [`PROBE_COS`](Self::PROBE_COS), so a genuine
/// template-probe pair scores about `0.9 × 0.8 = 0.72` (spread about 0.012 at d = 512), and an
/// impostor pair about 0 ± 1/√d: far on either side of any sane threshold, so a matcher has no
/// excuse for a wrong answer.
///
/// Streams used, under the population's seed: [`IDENTITY_STREAM`](Self::IDENTITY_STREAM),
/// [`TEMPLATE_STREAM`](Self::TEMPLATE_STREAM) and [`IMPOSTOR_STREAM`](Self::IMPOSTOR_STREAM).
/// Other users of [`Rng::stream`] with the same seed must pick other tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedFaces {
    seed: u64,
    dim: usize,
}

impl IndexedFaces {
    /// Cosine of an enrolled template (a controlled-light photo) to the identity.
    pub const TEMPLATE_COS: f64 = 0.9;
    /// Cosine of a gate capture (uncontrolled light and pose) to the identity.
    pub const PROBE_COS: f64 = 0.8;
    /// Stream tag of enrolled people's identities.
    pub const IDENTITY_STREAM: u64 = 0xFACE_0001;
    /// Stream tag of the enrolment photos' noise.
    pub const TEMPLATE_STREAM: u64 = 0xFACE_0002;
    /// Stream tag of never-enrolled people's identities.
    pub const IMPOSTOR_STREAM: u64 = 0xFACE_0003;

    /// The faces of the population with this seed, in `dim` dimensions.
    pub fn new(seed: u64, dim: usize) -> Self {
        Self { seed, dim }
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The identity (true face, unit length) of enrolled person `index`.
    pub fn identity(&self, index: u64) -> Vec<f32> {
        Rng::stream(self.seed, Self::IDENTITY_STREAM, index).unit_vector(self.dim)
    }

    /// The enrolled template (unit length) of person `index`.
    pub fn template(&self, index: u64) -> Vec<f32> {
        let mut rng = Rng::stream(self.seed, Self::TEMPLATE_STREAM, index);
        around(&mut rng, &self.identity(index), Self::TEMPLATE_COS)
    }

    /// A gate capture of enrolled person `index`, its noise drawn from `rng` (so each capture
    /// of one person differs).
    pub fn genuine_probe(&self, index: u64, rng: &mut Rng) -> Vec<f32> {
        capture_around(rng, &self.identity(index), Self::PROBE_COS)
    }

    /// A gate capture of never-enrolled person `index`: an identity from a stream disjoint from
    /// every enrolled person's, plus capture noise from `rng`.
    pub fn impostor_probe(&self, index: u64, rng: &mut Rng) -> Vec<f32> {
        let identity = Rng::stream(self.seed, Self::IMPOSTOR_STREAM, index).unit_vector(self.dim);
        capture_around(rng, &identity, Self::PROBE_COS)
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

/// Decodes fuzzer bytes as a partition's dictionary and one compact entry record (the
/// `entry_record` fuzz target): `n:u8`, then `n` forms each as `len:u8 bytes`, then the body.
/// Returns whether it decoded; it must never panic.
pub fn decode_entry_record(data: &[u8]) -> bool {
    crate::store::decode_record_for_fuzzing(data)
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
    fn splitmix_matches_the_published_reference() {
        // First output of SplitMix64 from state 0, from the reference implementation.
        assert_eq!(Rng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn streams_are_independent_and_reproducible() {
        let first = |seed, tag, index| Rng::stream(seed, tag, index).next_u64();
        let x = first(1, 2, 5);
        assert_eq!(x, first(1, 2, 5));
        assert_ne!(x, first(1, 2, 6));
        assert_ne!(x, first(1, 3, 5));
        assert_ne!(x, first(2, 2, 5));
        // Swapping tag and index must not give the same stream.
        assert_ne!(first(1, 2, 3), first(1, 3, 2));
    }

    fn moments(xs: &[f64]) -> (f64, f64) {
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        (mean, var)
    }

    #[test]
    fn gaussian_and_exponential_have_their_moments() {
        let mut rng = Rng::new(3);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.gaussian()).collect();
        let (mean, var) = moments(&xs);
        assert!(mean.abs() < 0.01, "gaussian mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "gaussian variance {var}");
        let polar: Vec<f64> = rng
            .gaussian_vector_polar(n)
            .into_iter()
            .map(f64::from)
            .collect();
        assert_eq!(polar.len(), n);
        let (mean, var) = moments(&polar);
        assert!(mean.abs() < 0.01, "polar mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "polar variance {var}");
        // Gaussian tails, not just its variance: the fourth moment of N(0, 1) is 3.
        let fourth = polar.iter().map(|x| x.powi(4)).sum::<f64>() / n as f64;
        assert!((fourth - 3.0).abs() < 0.1, "polar fourth moment {fourth}");
        // An odd length keeps one sample of the last pair.
        assert_eq!(rng.gaussian_vector_polar(7).len(), 7);
        let ys: Vec<f64> = (0..n).map(|_| rng.exponential(2.5)).collect();
        assert!(ys.iter().all(|y| y.is_finite() && *y >= 0.0));
        let mean = ys.iter().sum::<f64>() / n as f64;
        assert!((mean - 2.5).abs() < 0.03, "exponential mean {mean}");
    }

    #[test]
    fn weighted_and_chance_follow_their_probabilities() {
        let mut rng = Rng::new(4);
        let mut counts = [0u32; 4];
        let mut heads = 0u32;
        for _ in 0..30_000 {
            counts[rng.weighted(&[1.0, 0.0, 2.0, f64::NAN])] += 1;
            heads += u32::from(rng.chance(0.25));
        }
        assert_eq!((counts[1], counts[3]), (0, 0));
        let ratio = f64::from(counts[2]) / f64::from(counts[0]);
        assert!((ratio - 2.0).abs() < 0.1, "ratio {ratio}");
        let share = f64::from(heads) / 30_000.0;
        assert!((share - 0.25).abs() < 0.015, "chance share {share}");
        assert_eq!(rng.weighted(&[0.0, -1.0]), 0);
        assert_eq!(rng.weighted(&[]), 0);
        assert_eq!(rng.index(0), 0);
        assert!((0..1000).all(|_| rng.index(3) < 3));
    }

    #[test]
    fn indexed_faces_depend_on_the_index_alone() {
        let faces = IndexedFaces::new(9, 128);
        let t = faces.template(3);
        assert_eq!(t, faces.template(3));
        assert_ne!(t, faces.template(4));
        assert_ne!(t, IndexedFaces::new(10, 128).template(3));
        assert!((dot_f64(&t, &t) - 1.0).abs() < 1e-5);
        assert!((dot_f64(&t, &faces.identity(3)) - IndexedFaces::TEMPLATE_COS).abs() < 1e-4);
        let p = faces.genuine_probe(3, &mut Rng::new(1));
        assert!((dot_f64(&p, &faces.identity(3)) - IndexedFaces::PROBE_COS).abs() < 1e-4);
        assert_ne!(p, faces.genuine_probe(3, &mut Rng::new(2)));
    }

    #[test]
    fn indexed_genuine_pairs_score_far_above_impostor_pairs() {
        let faces = IndexedFaces::new(9, 512);
        let mut rng = Rng::new(7);
        let (mut genuine_min, mut genuine_sum, mut impostor_max) = (f64::INFINITY, 0.0, 0.0f64);
        let n = 500u64;
        for i in 0..n {
            let t = faces.template(i);
            let g = dot_f64(&t, &faces.genuine_probe(i, &mut rng));
            genuine_min = genuine_min.min(g);
            genuine_sum += g;
            let imp = dot_f64(&t, &faces.impostor_probe(i, &mut rng));
            impostor_max = impostor_max.max(imp.abs());
        }
        let genuine_mean = genuine_sum / n as f64;
        assert!(
            (genuine_mean - 0.72).abs() < 0.01,
            "genuine mean {genuine_mean}"
        );
        assert!(genuine_min > 0.6, "genuine min {genuine_min}");
        assert!(impostor_max < 0.25, "impostor max {impostor_max}");
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(9);
        assert!((0..1000).all(|_| rng.below(7) < 7));
        assert_eq!(rng.below(0), 0);
    }
}

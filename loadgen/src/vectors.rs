//! Synthetic faces: identities, enrollment templates, gate probes and impostors.
//!
//! The model: every person has an identity, a random unit vector (isotropic Gaussian,
//! normalized). A photo of the person is `normalize(identity + noise)`, where the noise is
//! Gaussian with total norm about `sigma`. Two photos of one person then have cosine about
//! `1 / (sqrt(1 + σe²) · sqrt(1 + σp²))`; photos of two different people have cosine about
//! 0 with standard deviation `1 / sqrt(dim)` (0.044 at d = 512).
//!
//! Enrollment photos are taken under controlled light (σe = 0.5), gate captures are not
//! (σp = 0.75): genuine scores centre near 0.72 with a spread of about 0.03, far above the
//! demo policy's thresholds (verify 0.45, identify 0.50), and the best impostor among 100k
//! people scores about 0.2, far below them. A correct engine therefore has no excuse for a
//! wrong answer, and any accuracy error the load generator reports is the engine's.

use crate::rng::{Rng, Stream};

/// Noise norm of an enrollment photo.
pub(crate) const ENROLL_SIGMA: f64 = 0.5;
/// Noise norm of a gate capture.
pub(crate) const PROBE_SIGMA: f64 = 0.75;

/// Scales `v` to unit length (left as is if it is all zeros).
pub(crate) fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Cosine similarity of two vectors (0 if either is zero).
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Writes `dim` Gaussian values with total expected norm `sigma` into `out` (adding them when
/// `add` is true).
fn gaussian_into(rng: &mut Rng, sigma: f64, out: &mut [f32], add: bool) {
    let scale = sigma / (out.len().max(1) as f64).sqrt();
    for x in out.iter_mut() {
        let g = (rng.gaussian() * scale) as f32;
        if add {
            *x += g;
        } else {
            *x = g;
        }
    }
}

/// The identity (true face) of subject index `index`.
pub(crate) fn identity(seed: u64, index: u64, dim: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dim];
    gaussian_into(
        &mut Rng::stream(seed, Stream::Identity, index),
        1.0,
        &mut v,
        false,
    );
    normalize(&mut v);
    v
}

/// The enrolled template of subject index `index`: one enrollment photo of their identity.
pub(crate) fn template_into(seed: u64, index: u64, out: &mut [f32]) {
    gaussian_into(
        &mut Rng::stream(seed, Stream::Identity, index),
        1.0,
        out,
        false,
    );
    normalize(out);
    gaussian_into(
        &mut Rng::stream(seed, Stream::Enroll, index),
        ENROLL_SIGMA,
        out,
        true,
    );
    normalize(out);
}

/// A gate capture of a person whose identity is `identity`, with noise from `rng`.
pub(crate) fn probe(identity: &[f32], rng: &mut Rng) -> Vec<f32> {
    let mut v = identity.to_vec();
    gaussian_into(rng, PROBE_SIGMA, &mut v, true);
    normalize(&mut v);
    v
}

/// A capture of a never-enrolled person: a fresh identity plus capture noise. The identity
/// stream (`Impostor`) is disjoint from every enrolled identity's stream.
pub(crate) fn impostor(seed: u64, index: u64, dim: usize, rng: &mut Rng) -> Vec<f32> {
    let mut id = vec![0.0f32; dim];
    gaussian_into(
        &mut Rng::stream(seed, Stream::Impostor, index),
        1.0,
        &mut id,
        false,
    );
    normalize(&mut id);
    probe(&id, rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(xs: &[f64]) -> (f64, f64, f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (mean, sd, min, max)
    }

    #[test]
    fn genuine_probe_cosine_is_in_the_designed_band() {
        let dim = 512;
        let mut t = vec![0.0f32; dim];
        let scores: Vec<f64> = (0..2000u64)
            .map(|i| {
                template_into(9, i, &mut t);
                let p = probe(&identity(9, i, dim), &mut Rng::stream(9, Stream::Probe, i));
                cosine(&t, &p)
            })
            .collect();
        let (mean, sd, min, _) = stats(&scores);
        assert!((0.65..=0.78).contains(&mean), "mean genuine cosine {mean}");
        assert!(sd < 0.05, "sd {sd}");
        // Far above the demo policy's identify threshold (0.50).
        assert!(min > 0.55, "min genuine cosine {min}");
    }

    #[test]
    fn impostor_cosine_is_near_zero() {
        let dim = 512;
        let mut t = vec![0.0f32; dim];
        let mut scores = Vec::new();
        for i in 0..200u64 {
            template_into(9, i, &mut t);
            for k in 0..20u64 {
                let p = impostor(9, i * 20 + k, dim, &mut Rng::stream(9, Stream::Probe, k));
                scores.push(cosine(&t, &p));
            }
        }
        let (mean, sd, _, max) = stats(&scores);
        assert!(mean.abs() < 0.01, "mean impostor cosine {mean}");
        assert!(sd < 0.06, "sd {sd}");
        assert!(max < 0.35, "max impostor cosine {max}");
    }

    #[test]
    fn vectors_are_unit_and_deterministic() {
        let a = identity(1, 3, 128);
        let norm: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(a, identity(1, 3, 128));
        assert_ne!(a, identity(1, 4, 128));
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}

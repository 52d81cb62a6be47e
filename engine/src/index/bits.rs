//! 1-bit codes: one bit per dimension, set where the value exceeds the segment's centre.
//!
//! A segment stores its rows' mean (the *centre*) and, per row, the signs of `x - centre`
//! packed into little-endian `u64` words (bit `j % 64` of word `j / 64` is dimension `j`;
//! bits past the dimension are zero). A query is encoded against the same centre, and the
//! Hamming distance between two codes estimates the angle between the centred vectors
//! (`E[hamming] / d = angle / pi` for isotropic data), so a small distance marks a likely
//! neighbour. Centring matters for real embeddings, which share a common direction: without
//! it most sign bits would be the same for every row and carry no information.
//!
//! The code is only a filter: the search re-ranks its candidates with exact scores (see
//! [`crate::index::flat`]), so no per-row correction factors are stored. A random or PCA
//! rotation before taking signs was considered (it balances or orders the information per
//! bit); on the benchmark data, whose identities are isotropic, a rotation cannot change the
//! distribution of Hamming distances, so it would cost a d x d product per row and per query
//! for no gain there. The format keeps room for it (a new element type).

/// Words per code for `dim` dimensions.
pub fn code_words(dim: usize) -> usize {
    dim.div_ceil(64)
}

/// Writes the 1-bit code of `x` against `centre` into `out` (zeroed first; dimensions past
/// `out`'s capacity or `centre`'s length are ignored).
pub fn encode_bits(x: &[f32], centre: &[f32], out: &mut [u64]) {
    out.fill(0);
    for (j, (&v, &c)) in x.iter().zip(centre).enumerate() {
        if v > c
            && let Some(w) = out.get_mut(j / 64)
        {
            *w |= 1 << (j % 64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Kernels;
    use crate::index::kernels::BitBlock;
    use crate::testing::Rng;

    #[test]
    fn bits_follow_the_centre() {
        let mut out = [u64::MAX; 2];
        encode_bits(&[1.0, -1.0, 0.5, 0.0], &[0.0, 0.0, 0.5, -0.1], &mut out);
        assert_eq!(out, [0b1001, 0]);
        let x: Vec<f32> = (0..70).map(|i| i as f32).collect();
        encode_bits(&x, &[-1.0; 70], &mut out);
        assert_eq!(out, [u64::MAX, 0b11_1111]);
        assert_eq!(code_words(512), 8);
        assert_eq!(code_words(65), 2);
    }

    #[test]
    fn hamming_tracks_the_angle() {
        // Near vectors have small distances, unrelated ones about d / 2.
        let mut rng = Rng::new(3);
        let d = 512;
        let a = rng.unit_vector(d);
        let near = crate::testing::around(&mut rng, &a, 0.9);
        let far = rng.unit_vector(d);
        let centre = vec![0f32; d];
        let code = |v: &[f32]| {
            let mut c = vec![0u64; code_words(d)];
            encode_bits(v, &centre, &mut c);
            c
        };
        let (ca, cn, cf) = (code(&a), code(&near), code(&far));
        let rows = [cn, cf].concat();
        let block = BitBlock::new(&ca, &rows, code_words(d), 2).unwrap();
        let mut out = [0u32; 2];
        Kernels::scalar().hamming(&block, &mut out);
        // angle(0.9) / pi = 0.144 -> ~74 of 512; unrelated ~256 +- 11.
        assert!(out[0] < 110, "near {}", out[0]);
        assert!((200..312).contains(&out[1]), "far {}", out[1]);
    }
}

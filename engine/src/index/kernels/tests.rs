//! Every available kernel table against the scalar oracle (and the scalar table against f64).
//!
//! Lengths run from 0 past three vector widths plus 7 (64 int8 lanes on AVX-512), rows and
//! queries start at odd offsets inside their buffers, strides are padded by random amounts,
//! and dimensions are random. f32 results must agree within a relative bound on the
//! rounding of a dot product; int8 results are integers and must be identical.

use proptest::prelude::*;

use super::*;
use crate::testing::Rng;

/// Largest length tested: 3 x 64 int8 lanes + 7.
const MAX_LEN: usize = 3 * 64 + 7;

fn f32_data(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
}

fn i8_data(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n)
        .map(|_| rng.below(255) as i32 - 127)
        .map(|x| x as i8)
        .collect()
}

/// Allowed difference between two f32 dot products of the same vectors.
fn tolerance(a: &[f32], b: &[f32]) -> f32 {
    let mag: f32 = a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum();
    1e-5 * mag + 1e-6
}

#[derive(Debug, Clone)]
struct Case {
    dim: usize,
    n: usize,
    nq: usize,
    pad: usize,
    offset: usize,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..=MAX_LEN,
        0usize..9,
        0usize..10,
        0usize..5,
        0usize..4,
        any::<u64>(),
    )
        .prop_map(|(dim, n, nq, pad, offset, seed)| Case {
            dim,
            n,
            nq,
            pad,
            offset,
            seed,
        })
}

fn check_f32(k: Kernels, c: &Case) -> Result<(), TestCaseError> {
    let s = Kernels::scalar();
    let mut rng = Rng::new(c.seed);
    let stride = c.dim + c.pad;
    let rows_buf = f32_data(&mut rng, c.offset + c.n * stride);
    let q_buf = f32_data(&mut rng, c.offset + c.nq.max(1) * stride);
    let rows = &rows_buf[c.offset..];
    let queries = &q_buf[c.offset..];
    let query = &queries[..c.dim];

    let d1 = k.dot_f32(query, &rows[..c.dim.min(rows.len())]);
    let d0 = s.dot_f32(query, &rows[..c.dim.min(rows.len())]);
    let tol = tolerance(query, &rows[..c.dim.min(rows.len())]);
    prop_assert!((d1 - d0).abs() <= tol, "dot {d1} vs {d0}");

    let block = F32Block::new(query, rows, stride, c.n).unwrap();
    let (mut a, mut b) = (vec![0f32; c.n], vec![0f32; c.n]);
    k.score_f32(&block, &mut a);
    s.score_f32(&block, &mut b);
    for i in 0..c.n {
        let tol = tolerance(query, block.row(i));
        prop_assert!((a[i] - b[i]).abs() <= tol, "row {i}: {} vs {}", a[i], b[i]);
    }

    let multi = F32Multi::new(c.dim, queries, stride, c.nq, rows, stride, c.n).unwrap();
    let (mut a, mut b) = (vec![0f32; c.n * c.nq], vec![0f32; c.n * c.nq]);
    k.multi_f32(&multi, &mut a);
    s.multi_f32(&multi, &mut b);
    for i in 0..c.n {
        for j in 0..c.nq {
            let tol = tolerance(multi.query(j), multi.row(i));
            let (x, y) = (a[i * c.nq + j], b[i * c.nq + j]);
            prop_assert!((x - y).abs() <= tol, "row {i} query {j}: {x} vs {y}");
        }
    }
    Ok(())
}

fn check_i8(k: Kernels, c: &Case) -> Result<(), TestCaseError> {
    let s = Kernels::scalar();
    let mut rng = Rng::new(c.seed ^ 0x5555);
    let stride = c.dim + c.pad;
    let rows_buf = i8_data(&mut rng, c.offset + c.n * stride);
    let q_buf = i8_data(&mut rng, c.offset + c.nq.max(1) * stride);
    let rows = &rows_buf[c.offset..];
    let queries = &q_buf[c.offset..];

    let block = I8Block::new(&queries[..c.dim], rows, stride, c.n).unwrap();
    let (mut a, mut b) = (vec![0i32; c.n], vec![0i32; c.n]);
    k.score_i8(&block, &mut a);
    s.score_i8(&block, &mut b);
    prop_assert_eq!(&a, &b);

    let multi = I8Multi::new(c.dim, queries, stride, c.nq, rows, stride, c.n).unwrap();
    let (mut a, mut b) = (vec![0i32; c.n * c.nq], vec![0i32; c.n * c.nq]);
    k.multi_i8(&multi, &mut a);
    s.multi_i8(&multi, &mut b);
    prop_assert_eq!(&a, &b);
    Ok(())
}

/// Largest code length tested, in words: 3 x 8 (one AVX-512 vector) + 7.
const MAX_WORDS: usize = 3 * 8 + 7;

fn check_bits(k: Kernels, c: &Case) -> Result<(), TestCaseError> {
    let s = Kernels::scalar();
    let mut rng = Rng::new(c.seed ^ 0xb175);
    let words = c.dim % (MAX_WORDS + 1);
    let stride = words + c.pad;
    let rows_buf: Vec<u64> = (0..c.offset + c.n * stride)
        .map(|_| rng.next_u64())
        .collect();
    let q_buf: Vec<u64> = (0..c.offset + c.nq.max(1) * stride)
        .map(|_| rng.next_u64())
        .collect();
    let rows = &rows_buf[c.offset..];
    let queries = &q_buf[c.offset..];

    let block = BitBlock::new(&queries[..words], rows, stride, c.n).unwrap();
    let (mut a, mut b) = (vec![0u32; c.n], vec![0u32; c.n]);
    k.hamming(&block, &mut a);
    s.hamming(&block, &mut b);
    prop_assert_eq!(&a, &b);

    let multi = BitMulti::new(words, queries, stride, c.nq, rows, stride, c.n).unwrap();
    let (mut a, mut b) = (vec![0u32; c.n * c.nq], vec![0u32; c.n * c.nq]);
    k.multi_hamming(&multi, &mut a);
    s.multi_hamming(&multi, &mut b);
    prop_assert_eq!(&a, &b);

    // Scattered picks (repeats allowed, any order) score as the block does.
    let mut block_scores = vec![0u32; c.n];
    s.hamming(&block, &mut block_scores);
    let picks: Vec<u32> = (0..c.n).map(|_| rng.below(c.n as u64) as u32).collect();
    let gather = BitGather::new(&queries[..words], rows, stride, &picks).unwrap();
    let (mut a, mut b) = (vec![0u32; c.n], vec![0u32; c.n]);
    k.hamming_gather(&gather, &mut a);
    s.hamming_gather(&gather, &mut b);
    prop_assert_eq!(&a, &b);
    let want: Vec<u32> = picks.iter().map(|&r| block_scores[r as usize]).collect();
    prop_assert_eq!(&a, &want);

    // The filter at a few limits around the distances seen.
    let limit = block_scores.first().copied().unwrap_or(0);
    for limit in [0, limit, limit.saturating_add(3), u32::MAX] {
        check_at_most(k, &block_scores, limit)?;
    }
    Ok(())
}

fn check_at_most(k: Kernels, dist: &[u32], limit: u32) -> Result<(), TestCaseError> {
    let (mut a, mut b) = (vec![0u32; dist.len()], vec![0u32; dist.len()]);
    let na = k.at_most(dist, limit, &mut a);
    let nb = Kernels::scalar().at_most(dist, limit, &mut b);
    let want: Vec<u32> = (0..dist.len() as u32)
        .filter(|&i| dist[i as usize] <= limit)
        .collect();
    prop_assert_eq!(&a[..na], &want[..], "{} limit {}", k.isa(), limit);
    prop_assert_eq!(&b[..nb], &want[..]);
    Ok(())
}

/// The filter on full-range u32 distances (the AVX2 table compares signed lanes, so values
/// on both sides of 2^31 matter) at every length around its steps of 8 and 16.
fn at_most_full_range(k: Kernels) {
    let mut rng = Rng::new(91);
    for n in 0..70 {
        let dist: Vec<u32> = (0..n)
            .map(|_| match rng.below(4) {
                0 => rng.below(16) as u32,
                1 => u32::MAX - rng.below(16) as u32,
                2 => (1 << 31) + rng.below(3) as u32 - 1,
                _ => rng.next_u64() as u32,
            })
            .collect();
        for limit in [0, 7, (1 << 31) - 1, 1 << 31, u32::MAX - 8, u32::MAX] {
            check_at_most(k, &dist, limit).unwrap();
        }
        // A shorter output reads a prefix of the distances only.
        let mut short = vec![0u32; n / 2];
        let m = k.at_most(&dist, u32::MAX, &mut short);
        assert_eq!(m, n / 2, "{} n {n}", k.isa());
    }
}

#[test]
fn gather_refuses_picks_outside_the_plane() {
    let rows = vec![0u64; 4 * 3];
    let q = [0u64; 4];
    assert!(BitGather::new(&q, &rows, 4, &[0, 1, 2]).is_some());
    assert!(BitGather::new(&q, &rows, 4, &[3]).is_none());
    assert!(BitGather::new(&q, &rows, 4, &[u32::MAX]).is_none());
    assert!(
        BitGather::new(&q, &rows, 3, &[0]).is_none(),
        "stride below the code length"
    );
    assert!(BitGather::new(&q, &rows, 4, &[]).is_some());
}

fn extremes_bits(k: Kernels) {
    // Identical, complementary and half-differing codes at every tail length.
    for words in [1, 3, 4, 7, 8, 9, 16, 31, 64] {
        let ones = vec![u64::MAX; words];
        let rows: Vec<u64> = [
            vec![u64::MAX; words],
            vec![0; words],
            vec![0xFFFF_FFFF; words],
        ]
        .concat();
        let block = BitBlock::new(&ones, &rows, words, 3).unwrap();
        let mut out = [0u32; 3];
        k.hamming(&block, &mut out);
        let bits = 64 * words as u32;
        assert_eq!(out, [0, bits, bits / 2], "{} words {words}", k.isa());
    }
}

/// Densely packed 4-word codes (the code heads at d = 512), the AVX-512 eight-row path,
/// at every count around its step of eight.
fn dense_heads(k: Kernels) {
    let mut rng = Rng::new(77);
    for n in 0..41 {
        let rows: Vec<u64> = (0..4 * n).map(|_| rng.next_u64()).collect();
        let q: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        let block = BitBlock::new(&q, &rows, 4, n).unwrap();
        let (mut a, mut b) = (vec![0u32; n], vec![0u32; n]);
        k.hamming(&block, &mut a);
        Kernels::scalar().hamming(&block, &mut b);
        assert_eq!(a, b, "{} n {n}", k.isa());
        // A shorter output scores a prefix only.
        let mut short = vec![0u32; n / 2];
        k.hamming(&block, &mut short);
        assert_eq!(short, b[..n / 2], "{} n {n} truncated", k.isa());
    }
}

fn extremes_i8(k: Kernels) {
    // All +127 / -127 (the largest products), and zero queries, at every tail length.
    for dim in [1, 31, 32, 63, 64, 65, 127, 512, 513] {
        for (qv, rv) in [(127i8, 127i8), (-127, 127), (-127, -127), (0, -127)] {
            let q = vec![qv; dim];
            let rows = vec![rv; dim * 3];
            let block = I8Block::new(&q, &rows, dim, 3).unwrap();
            let mut out = [0i32; 3];
            k.score_i8(&block, &mut out);
            let want = i32::from(qv) * i32::from(rv) * dim as i32;
            assert_eq!(out, [want; 3], "{} dim {dim} q {qv} r {rv}", k.isa());
        }
    }
}

macro_rules! isa_tests {
    ($name:ident, $isa:expr) => {
        mod $name {
            use super::*;

            fn kernels() -> Option<Kernels> {
                let k = Kernels::for_isa($isa);
                if k.is_none() {
                    eprintln!(
                        "{} kernels not available on this CPU; nothing to compare",
                        $isa
                    );
                }
                k
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(256))]
                #[test]
                fn f32_matches_scalar(c in case()) {
                    if let Some(k) = kernels() { check_f32(k, &c)?; }
                }

                #[test]
                fn i8_matches_scalar(c in case()) {
                    if let Some(k) = kernels() { check_i8(k, &c)?; }
                }

                #[test]
                fn bits_match_scalar(c in case()) {
                    if let Some(k) = kernels() { check_bits(k, &c)?; }
                }
            }

            #[test]
            fn bits_extremes_match_exact() {
                if let Some(k) = kernels() {
                    extremes_bits(k);
                }
            }

            #[test]
            fn at_most_matches_exact_on_full_range() {
                if let Some(k) = kernels() {
                    at_most_full_range(k);
                }
            }

            #[test]
            fn bits_dense_heads_match_scalar() {
                if let Some(k) = kernels() {
                    dense_heads(k);
                }
            }

            #[test]
            fn i8_extremes_match_exact() {
                if let Some(k) = kernels() {
                    extremes_i8(k);
                }
            }
        }
    };
}

isa_tests!(avx512_matches_scalar, Isa::X86Avx512);
isa_tests!(avx2_matches_scalar, Isa::X86Avx2);
isa_tests!(neon_matches_scalar, Isa::Aarch64Neon);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn scalar_matches_f64_oracle(dim in 0..=MAX_LEN, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let a = f32_data(&mut rng, dim);
        let b = f32_data(&mut rng, dim);
        let got = Kernels::scalar().dot_f32(&a, &b);
        let want = crate::testing::dot_f64(&a, &b);
        prop_assert!((f64::from(got) - want).abs() <= f64::from(tolerance(&a, &b)));
    }
}

#[test]
fn scalar_hamming_counts_differing_bits() {
    let q = [0b1011u64, 1 << 63];
    let rows = [0b0001u64, 1 << 63, 0, 0];
    let block = BitBlock::new(&q, &rows, 2, 2).unwrap();
    let mut out = [0u32; 2];
    Kernels::scalar().hamming(&block, &mut out);
    assert_eq!(out, [2, 3 + 1]);
}

#[test]
fn scalar_is_always_available_and_last() {
    let all: Vec<Isa> = Kernels::available().map(|k| k.isa()).collect();
    assert_eq!(all.last(), Some(&Isa::Scalar));
    assert_eq!(
        Kernels::for_isa(Isa::Scalar).map(|k| k.isa()),
        Some(Isa::Scalar)
    );
}

#[test]
fn setting_parses_and_refuses() {
    assert_eq!(Kernels::from_setting("scalar").unwrap().isa(), Isa::Scalar);
    assert_eq!(
        Kernels::from_setting("auto").unwrap().isa(),
        Kernels::detect().isa()
    );
    assert!(matches!(
        Kernels::from_setting("sse9"),
        Err(IsaError::Unknown { .. })
    ));
    for isa in Isa::ALL {
        match Kernels::for_isa(isa) {
            Some(_) => assert_eq!(Kernels::from_setting(isa.name()).unwrap().isa(), isa),
            None => assert_eq!(
                Kernels::from_setting(isa.name()).unwrap_err(),
                IsaError::Unsupported { isa }
            ),
        }
    }
}

#[test]
fn blocks_reject_short_buffers() {
    let q = [0f32; 4];
    assert!(F32Block::new(&q, &[0.0; 7], 4, 2).is_none());
    assert!(F32Block::new(&q, &[0.0; 8], 4, 2).is_some());
    assert!(
        F32Block::new(&q, &[0.0; 8], 3, 1).is_none(),
        "stride below dim"
    );
    assert!(F32Block::new(&q, &[], 4, 0).is_some());
    assert!(
        F32Block::new(&q, &[0.0; 8], usize::MAX, 2).is_none(),
        "overflow"
    );
    let qb = [0u64; 2];
    assert!(BitBlock::new(&qb, &[0; 3], 2, 2).is_none());
    assert!(BitBlock::new(&qb, &[0; 4], 2, 2).is_some());
    assert!(
        BitMulti::new(2, &qb, 2, 2, &[0; 4], 2, 2).is_none(),
        "queries too short"
    );
    let qi = [0i8; 4];
    assert!(
        I8Multi::new(4, &qi, 4, 2, &[0; 8], 4, 2).is_none(),
        "queries too short"
    );
}

#[test]
fn output_shorter_than_block_is_truncated_not_a_panic() {
    let q = [1f32; 3];
    let rows = [1f32; 9];
    let block = F32Block::new(&q, &rows, 3, 3).unwrap();
    for k in Kernels::available() {
        let mut out = [0f32; 2];
        k.score_f32(&block, &mut out);
        assert_eq!(out, [3.0, 3.0]);
    }
}

/// The per-ISA tests above skip (and say so on stderr) an instruction set this CPU lacks, so a
/// broken CPU detection would pass them all by testing nothing but the scalar table. CI reads
/// the host's best instruction set from `/proc/cpuinfo`, independently of this crate, into
/// `GATEWARDEN_EXPECT_ISA`; this fails unless that is the set the tests above exercised.
#[test]
fn the_hosts_best_isa_is_the_one_tested() {
    let Ok(expected) = std::env::var("GATEWARDEN_EXPECT_ISA") else {
        eprintln!("GATEWARDEN_EXPECT_ISA is not set: not checking which kernels this host tests");
        return;
    };
    let best = Kernels::available().next().map(|k| k.isa().name());
    assert_eq!(
        best,
        Some(expected.trim()),
        "the host's CPU has {expected} but the kernel tests exercised {best:?}"
    );
}

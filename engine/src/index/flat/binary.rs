//! The binary scan: Hamming distances of 1-bit codes shortlist rows, which are then re-ranked
//! exactly.
//!
//! # The candidate rule
//!
//! Codes are stored in two planes: every row's *head* (the first half of its words), then
//! every row's *tail*. For each query, with `c = max(candidates, 4 * collector size)`:
//!
//! 1. **Prefilter** (when [`SearchOptions::prefilter`] is on and codes have a tail): the scan
//!    reads only the heads and keeps every row whose head distance is at most the `c1`-th
//!    smallest, ties included, `c1 = max(16 c, rows / PREFILTER_SHARE)`. At d = 512 that
//!    reads 32 of the 64 bytes of every code.
//! 2. **Shortlist**: the kept rows' whole-code distances (head + tail); every row at most
//!    the `c`-th smallest, ties included, is a candidate (all rows if there are fewer).
//! 3. **Exact re-rank**: each candidate's int8 interval `[lb, ub]` (see
//!    [`crate::index::quant`]) first, then f32 scores only where `ub` reaches the best lower
//!    bounds, as the int8 scan does.
//!
//! Both cut-offs depend only on the distances, never on scan order, block size or thread
//! count, so results do not either.
//!
//! Why a prefilter works without a rotation: for a random direction the head distance of an
//! unrelated row is about `h/2 +- sqrt(h)/2` bits (h = 256 at d = 512: 128 +- 8), while a
//! genuine probe's true template (cosine >= 0.5 to the probe, angle <= 60 degrees) sits at
//! about `h/3 +- 7.5` or less: keeping the best 1/64 of rows (head distance below about
//! 111) keeps such a template with probability above 99.97% even in that worst case.
//!
//! [`SearchOptions::prefilter`]: super::SearchOptions::prefilter
//!
use super::{Collector, Int8State, RowsRef, Scan, Task, fan_out};
use crate::index::bits::{code_words, encode_bits};
use crate::index::kernels::{BitBlock, BitGather, I8Block, Kernels};
use crate::index::quant::{QueryQuant, widen};

/// Default shortlist size per query. Re-ranking 64 rows (int8 intervals, a few f32 dot
/// products) costs microseconds next to the scan; the seeded face-like tests (genuine probes
/// at cosine 0.6-0.75 to their identity, enrolled templates at 0.85-0.95) find the exact top-1
/// for every genuine probe with 64 and with 8, and so did every genuine probe of the 1M race
/// (`benches/compare/run.sh --race binary`, see benches/README.md).
pub const BINARY_CANDIDATES: usize = 64;

/// From this many rows on, `Precision::Auto` scans 1-bit codes instead of int8 codes.
///
/// The binary scan is faster at every size measured (one query, 1 thread, AVX-512, a loaded
/// machine: 0.36 against 3.05 ms at 100k rows, 4.3 against 67 ms at 1M), but only the int8
/// scan is exact (the binary scan's scores are exact too, but its shortlist can miss). `auto`
/// keeps exactness while the exact scan costs less than the rest of the server's work per
/// event, and switches where it would cost more. Measured end to end (`GATEWARDEN_ISA=avx2`,
/// 1,000 gates, the load generator on the same two cores): at 100k people int8 took 0.72 ms
/// of server CPU per verdict against 0.43 ms with binary (0.3 ms of it the rest of the
/// server), and the highest sustainable rate was 2,500 ev/s with int8 against 4,000 with
/// binary (`benches/overload/run.sh`, benches/README.md). At 50k the int8 scan costs about
/// half the rest.
pub const AUTO_BINARY_MIN_ROWS: usize = 100_000;

/// The prefilter keeps at least one row in this many (see the module docs).
pub const PREFILTER_SHARE: usize = 64;

/// Rows at the start of the first part whose head distances estimate each query's prefilter
/// cut-off before the scan, so the scan offers few rows that a later one pushes out.
/// The cut-off's rank in the sample is about 256 at the 1/64 share, so its error is about
/// sqrt(256) = 16 rows, 6%.
const LIMIT_SAMPLE_ROWS: usize = 16_384;

/// Bits added to the sampled cut-off. Each bit near the cut-off holds about a fifth of the
/// rows kept, so one bit covers about three times the sample's rank error, and a too-low
/// start (which costs a second scan, never a different result) is rare. Every row within
/// the start limit is offered until enough closer ones are seen, so the margin costs time:
/// at N = 1M, one query, AVX2, 1.75 ms with four bits and 8,192 sampled rows, 1.52 ms with
/// one bit (`benches/compare/run.sh --race binary`).
const LIMIT_MARGIN: u32 = 1;

/// Rows per kernel call: 256 rows of 512-d codes are 16 KiB, which stays in L1 while every
/// query of a batch is compared with them.
const BIT_BLOCK_ROWS: usize = 256;

/// One query's shortlist: every row offered with a distance at most `limit`, where `limit`
/// shrinks to the smallest distance that still keeps `want` rows (ties included).
#[derive(Clone, Debug)]
pub(super) struct Shortlist {
    want: usize,
    limit: u32,
    /// `counts[d]`: rows kept at distance `d <= limit`.
    counts: Vec<u32>,
    /// Rows kept at distance `<= limit`.
    kept: usize,
    rows: Vec<(u32, u32, u32)>,
    prune_at: usize,
}

impl Shortlist {
    pub(super) fn new(want: usize, max_distance: u32) -> Self {
        Self {
            want: want.max(1),
            limit: max_distance,
            counts: vec![0; max_distance as usize + 1],
            kept: 0,
            rows: Vec::new(),
            prune_at: want.max(1).saturating_mul(4).saturating_add(64),
        }
    }

    /// A shortlist that ignores rows beyond `limit` from the start. If fewer than `want` rows
    /// are within it, [`Shortlist::is_short`] says so and the result is not the rule's.
    pub(super) fn with_limit(want: usize, max_distance: u32, limit: u32) -> Self {
        let mut list = Self::new(want, max_distance);
        list.limit = limit.min(max_distance);
        list
    }

    /// True if fewer than `want` rows were kept (all rows seen, or a start limit too low).
    pub(super) fn is_short(&self) -> bool {
        self.kept < self.want
    }

    /// The largest distance still worth offering.
    #[inline]
    pub(super) fn limit(&self) -> u32 {
        self.limit
    }

    /// Adds a row at `distance`; rows beyond [`Shortlist::limit`] are ignored.
    #[inline]
    pub(super) fn offer(&mut self, distance: u32, part: u32, row: u32) {
        if distance > self.limit {
            return;
        }
        self.counts[distance as usize] += 1;
        self.kept += 1;
        self.rows.push((distance, part, row));
        // Lower the limit while the rows strictly below it are already enough.
        while self.limit > 0 && self.kept - self.counts[self.limit as usize] as usize >= self.want {
            self.kept -= self.counts[self.limit as usize] as usize;
            self.counts[self.limit as usize] = 0;
            self.limit -= 1;
        }
        if self.rows.len() >= self.prune_at {
            let limit = self.limit;
            self.rows.retain(|r| r.0 <= limit);
            self.prune_at =
                (2 * self.rows.len()).max(self.want.saturating_mul(4).saturating_add(64));
        }
    }

    /// Folds in the shortlist of another part of the scan (same `want`).
    pub(super) fn absorb(&mut self, other: Self) {
        for (d, part, row) in other.rows {
            self.offer(d, part, row);
        }
    }

    /// The shortlisted (part, row) pairs, in address order.
    pub(super) fn into_rows(self) -> Vec<(u32, u32)> {
        self.into_scored()
            .into_iter()
            .map(|(_, p, r)| (p, r))
            .collect()
    }

    /// The shortlisted (distance, part, row) triples, in address order.
    pub(super) fn into_scored(self) -> Vec<(u32, u32, u32)> {
        let limit = self.limit;
        let mut rows: Vec<(u32, u32, u32)> =
            self.rows.into_iter().filter(|r| r.0 <= limit).collect();
        rows.sort_unstable_by_key(|&(_, p, r)| (p, r));
        rows
    }
}

impl Scan<'_, '_> {
    /// Binary search over parts that all carry 1-bit codes.
    pub(super) fn binary<C: Collector>(&self, plans: &[Vec<Task>], empty: &C) -> Vec<C> {
        let words = code_words(self.dim);
        let head_words = words.div_ceil(2);
        // Each part has its own centre, so each has its own query codes (nq x words).
        let qcodes: Vec<Vec<u64>> = self
            .parts
            .iter()
            .map(|p| {
                let mut codes = vec![0u64; self.nq * words];
                if let Some(b) = p.bits {
                    for (j, c) in codes.chunks_exact_mut(words.max(1)).enumerate() {
                        encode_bits(self.query(j), b.centre, c);
                    }
                }
                codes
            })
            .collect();
        let want = self.opts.candidates.max(empty.size().saturating_mul(4));
        let total: usize = self.parts.iter().map(|p| p.len()).sum();
        let prefilter = self.opts.prefilter && words > head_words;
        let (first_want, first_max) = if prefilter {
            let keep = want.saturating_mul(16).max(total / PREFILTER_SHARE);
            (keep, 64 * head_words as u32)
        } else {
            (want, 64 * words as u32)
        };
        let scan = |starts: &[u32]| {
            let firsts: Vec<Shortlist> = starts
                .iter()
                .map(|&limit| Shortlist::with_limit(first_want, first_max, limit))
                .collect();
            let mut per_thread = fan_out(plans, |tasks| {
                self.bit_scan(tasks, &qcodes, words, prefilter, &firsts)
            })
            .into_iter();
            let mut lists = per_thread.next().unwrap_or_else(|| firsts.clone());
            for other in per_thread {
                for (m, o) in lists.iter_mut().zip(other) {
                    m.absorb(o);
                }
            }
            lists
        };
        let starts = if prefilter {
            self.sampled_limits(&qcodes, words, first_want, first_max)
        } else {
            vec![first_max; self.nq]
        };
        let mut lists = scan(&starts);
        // A start limit below the true cut-off keeps too few rows: scan again from the top, so
        // the shortlist is always exactly the rule's.
        if lists
            .iter()
            .zip(&starts)
            .any(|(l, &s)| s < first_max && l.is_short())
        {
            lists = scan(&vec![first_max; self.nq]);
        }
        lists
            .into_iter()
            .enumerate()
            .map(|(j, list)| {
                let rows = if prefilter {
                    let second = Shortlist::new(want, 64 * words as u32);
                    self.add_tails(j, list.into_scored(), &qcodes, words, second)
                        .into_rows()
                } else {
                    list.into_rows()
                };
                self.rerank_shortlist(j, rows, empty)
            })
            .collect()
    }

    /// First-pass shortlists per query over `tasks`: head distances with `heads_only`,
    /// whole-code distances otherwise.
    ///
    /// A batch goes block by block: each block of codes (8 KiB of heads at d = 512) stays in
    /// L1 while every query of the batch is compared with it by the single-query kernel,
    /// whose dense eight-row path costs about a third of the instructions of scoring rows
    /// against several queries at once (measured at N = 1M on a loaded machine: 136 queries/s
    /// in batches of 64 through `multi_hamming`, 260 this way).
    fn bit_scan(
        &self,
        tasks: &[Task],
        qcodes: &[Vec<u64>],
        words: usize,
        heads_only: bool,
        firsts: &[Shortlist],
    ) -> Vec<Shortlist> {
        let mut lists = firsts.to_vec();
        let mut head = vec![0u32; BIT_BLOCK_ROWS];
        let mut tail = vec![0u32; BIT_BLOCK_ROWS];
        let mut picked = vec![0u32; BIT_BLOCK_ROWS];
        for task in tasks {
            let part = &self.parts[task.part];
            let Some(bits) = part.bits else { continue };
            let (h, t) = (bits.head_words, bits.tail_words);
            let tails = !heads_only && t > 0;
            for start in task.rows.clone().step_by(BIT_BLOCK_ROWS) {
                let n = BIT_BLOCK_ROWS.min(task.rows.end - start);
                let (head_rows, tail_rows) = (&bits.heads[start * h..], &bits.tails[start * t..]);
                for (list, q) in lists.iter_mut().zip(qcodes[task.part].chunks_exact(words)) {
                    if let Some(b) = BitBlock::new(&q[..h], head_rows, h, n) {
                        self.kernels.hamming(&b, &mut head[..n]);
                    }
                    if tails && let Some(b) = BitBlock::new(&q[h..], tail_rows, t, n) {
                        self.kernels.hamming(&b, &mut tail[..n]);
                        for (d, &x) in head.iter_mut().zip(&tail[..n]) {
                            *d += x;
                        }
                    }
                    let at = (part, task.part);
                    offer_block(self.kernels, list, at, start, &head[..n], &mut picked);
                }
            }
        }
        lists
    }

    /// Per query, a start limit for the prefilter: the head distance at the cut-off's rank in
    /// a sample of the first part's rows, plus [`LIMIT_MARGIN`]; `max` (no limit) when the
    /// gallery is too small for a sample to say anything.
    fn sampled_limits(&self, qcodes: &[Vec<u64>], words: usize, want: usize, max: u32) -> Vec<u32> {
        let total: usize = self.parts.iter().map(|p| p.len()).sum();
        let sampled = self
            .parts
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.bits.map(|b| (i, b, p.len().min(LIMIT_SAMPLE_ROWS))));
        let Some((part, bits, m)) = sampled else {
            return vec![max; self.nq];
        };
        if total < want.saturating_mul(4) || m < LIMIT_SAMPLE_ROWS.min(total) {
            return vec![max; self.nq];
        }
        let rank = ((want as u128 * m as u128 / total as u128) as usize).min(m - 1);
        let h = bits.head_words;
        let mut dist = vec![0u32; m];
        qcodes[part]
            .chunks_exact(words)
            .map(|q| {
                let Some(b) = BitBlock::new(&q[..h], bits.heads, h, m) else {
                    return max;
                };
                self.kernels.hamming(&b, &mut dist);
                let (_, &mut at, _) = dist.select_nth_unstable(rank);
                at.saturating_add(LIMIT_MARGIN).min(max)
            })
            .collect()
    }

    /// Whole-code distances of query `j`'s prefiltered rows (sorted by part, then row): each
    /// part's picked tails are scored where they lie, by the gather kernel, which prefetches
    /// ahead. The rows are a scattered 1-2% of the tail plane, so each is a cache miss; the
    /// earlier copy of each tail into a dense block serialized those misses (`perf` at
    /// N = 1M: the copy took a quarter of the query).
    fn add_tails(
        &self,
        j: usize,
        rows: Vec<(u32, u32, u32)>,
        qcodes: &[Vec<u64>],
        words: usize,
        mut list: Shortlist,
    ) -> Shortlist {
        let mut picks: Vec<u32> = Vec::new();
        let mut dist: Vec<u32> = Vec::new();
        for same_part in rows.chunk_by(|a, b| a.1 == b.1) {
            let part_index = same_part[0].1 as usize;
            let Some(bits) = self.parts[part_index].bits else {
                continue;
            };
            picks.clear();
            picks.extend(same_part.iter().map(|&(_, _, r)| r));
            dist.clear();
            dist.resize(picks.len(), 0);
            let q = &qcodes[part_index][j * words..(j + 1) * words];
            match BitGather::new(&q[bits.head_words..], bits.tails, bits.tail_words, &picks) {
                Some(g) => self.kernels.hamming_gather(&g, &mut dist),
                // Unreachable for rows the scan produced; scoring heads alone would be
                // wrong, so such rows are dropped rather than mis-ranked.
                None => continue,
            }
            for (&(d, p, r), &t) in same_part.iter().zip(&dist) {
                list.offer(d + t, p, r);
            }
        }
        list
    }

    /// Exact scores for the shortlist of query `j`: int8 intervals first, f32 where needed.
    fn rerank_shortlist<C: Collector>(&self, j: usize, rows: Vec<(u32, u32)>, empty: &C) -> C {
        let query = self.query(j);
        let quant = QueryQuant::new(query);
        let (coef_norm, coef_err) = quant.coefs();
        let mut state = Int8State::new(empty);
        let mut dot = [0i32; 1];
        for (p, r) in rows {
            let (part, row) = (&self.parts[p as usize], r as usize);
            let codes = part.codes.and_then(|c| {
                I8Block::new(quant.codes(), &c.codes[row * c.stride..], c.stride, 1)
                    .map(|b| (b, c.quant[row]))
            });
            match codes {
                Some((block, [rs, rn, re, _])) => {
                    self.kernels.score_i8(&block, &mut dot);
                    let a = quant.scale() * rs * dot[0] as f32;
                    let h = widen(a, coef_norm * rn + coef_err * re);
                    state.consider(part, p as usize, row, a, h);
                }
                None => {
                    let s = self.kernels.dot_f32(query, part.vector(row));
                    state.consider(part, p as usize, row, s, 0.0);
                }
            }
        }
        let bar = state.lbs.bar();
        self.rerank(j, bar, state.cands, empty)
    }
}

/// Offers a block's rows (from `start` of part `part_index`) to `list`. Almost every row
/// misses the limit, so the kernels' [`Kernels::at_most`] compares 8 or 16 at once and only
/// the passing rows are visited: `perf` at N = 1M showed a portable filter (minimum of
/// eight, then a branch-free pick) costing as much as the Hamming kernel itself. The limit
/// read at the block's start can only be higher than the current one, so no row is lost;
/// `offer` checks the current limit again.
///
/// [`Kernels::at_most`]: crate::index::kernels::Kernels::at_most
fn offer_block(
    kernels: &Kernels,
    list: &mut Shortlist,
    (part, part_index): (&RowsRef<'_>, usize),
    start: usize,
    dist: &[u32],
    picked: &mut [u32],
) {
    let n = kernels.at_most(dist, list.limit(), picked);
    for &i in &picked[..n] {
        let i = i as usize;
        if !part.is_deleted(start + i) {
            list.offer(dist[i], part_index as u32, (start + i) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortlist_keeps_the_want_smallest_with_ties_in_any_order() {
        let dists = [9u32, 3, 7, 3, 12, 0, 7, 7, 5, 64, 1];
        let forward: Vec<(u32, u32)> = dists.iter().zip(0..).map(|(&d, r)| (d, r)).collect();
        let backward: Vec<(u32, u32)> = forward.iter().rev().copied().collect();
        let mut by_distance = forward.clone();
        by_distance.sort_unstable();
        for want in 1..=dists.len() + 2 {
            let mut sorted = dists.to_vec();
            sorted.sort_unstable();
            let cutoff = sorted.get(want - 1).copied().unwrap_or(u32::MAX);
            let expect: Vec<(u32, u32)> = forward
                .iter()
                .filter(|(d, _)| *d <= cutoff)
                .map(|&(_, r)| (0, r))
                .collect();
            for order in [&forward, &backward, &by_distance] {
                let mut list = Shortlist::new(want, 64);
                for &(d, r) in order {
                    list.offer(d, 0, r);
                }
                assert_eq!(list.into_rows(), expect, "want {want}, order {order:?}");
            }
            // Split in two and merged: the same set.
            let (mut a, mut b) = (Shortlist::new(want, 64), Shortlist::new(want, 64));
            for &(d, r) in &forward {
                if r % 2 == 0 {
                    a.offer(d, 0, r)
                } else {
                    b.offer(d, 0, r)
                }
            }
            a.absorb(b);
            assert_eq!(a.into_rows(), expect, "merged, want {want}");
        }
    }

    #[test]
    fn shortlist_prunes_and_stays_exact_over_many_rows() {
        let mut rng = crate::testing::Rng::new(5);
        let dists: Vec<u32> = (0..20_000).map(|_| rng.below(513) as u32).collect();
        let mut list = Shortlist::new(64, 512);
        for (r, &d) in dists.iter().enumerate() {
            list.offer(d, 1, r as u32);
        }
        let mut sorted = dists.clone();
        sorted.sort_unstable();
        let cutoff = sorted[63];
        let want = dists.iter().filter(|&&d| d <= cutoff).count();
        let rows = list.into_rows();
        assert_eq!(rows.len(), want);
        assert!(
            rows.iter()
                .all(|&(p, r)| p == 1 && dists[r as usize] <= cutoff)
        );
    }
}

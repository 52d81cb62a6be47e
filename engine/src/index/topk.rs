//! Result collectors with deterministic ties: top-k rows, and the best two subjects.
//!
//! Order: higher score first; equal scores go to the lower subject id, then to the lower
//! template id. Template ids are unique in a gallery, so the order is total and results do
//! not depend on scan order, block size or thread count.

use std::cmp::Ordering;

use gatewarden_protocol::SubjectId;

/// One scored gallery row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Similarity (inner product; cosine for unit vectors).
    pub score: f32,
    /// The row's subject.
    pub subject: SubjectId,
    /// The row's template id (for a gallery built from a file: its row number).
    pub template: u64,
}

impl Hit {
    /// The workspace's result order: `Less` means `self` ranks first.
    pub fn rank_cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.subject.cmp(&other.subject))
            .then(self.template.cmp(&other.template))
    }

    fn ranks_before(&self, other: &Self) -> bool {
        self.rank_cmp(other) == Ordering::Less
    }
}

/// Accumulates hits; the scan offers a row only if its score reaches [`Collector::bar`].
pub trait Collector: Clone + Send + Sync {
    /// Rows scoring below this cannot change the result.
    fn bar(&self) -> f32;
    /// Considers one hit.
    fn offer(&mut self, hit: Hit);
    /// Folds in a collector that saw other rows (results of a split scan).
    fn absorb(&mut self, other: Self);
    /// How many rows the result holds at most (shortlists are sized from it).
    fn size(&self) -> usize {
        1
    }
}

/// The `k` best rows.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    hits: Vec<Hit>,
}

impl TopK {
    /// An empty collector for `k` rows.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            hits: Vec::with_capacity(k.min(4096) + 1),
        }
    }

    /// The hits so far, best first.
    pub fn hits(&self) -> &[Hit] {
        &self.hits
    }

    /// The hits, best first.
    pub fn into_hits(self) -> Vec<Hit> {
        self.hits
    }
}

impl Collector for TopK {
    #[inline]
    fn bar(&self) -> f32 {
        if self.k == 0 {
            f32::INFINITY
        } else if self.hits.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.hits[self.k - 1].score
        }
    }

    fn offer(&mut self, hit: Hit) {
        if self.k == 0 || (self.hits.len() == self.k && !hit.ranks_before(&self.hits[self.k - 1])) {
            return;
        }
        let at = self.hits.partition_point(|h| h.ranks_before(&hit));
        self.hits.insert(at, hit);
        self.hits.truncate(self.k);
    }

    fn absorb(&mut self, other: Self) {
        for h in other.hits {
            self.offer(h);
        }
    }

    fn size(&self) -> usize {
        self.k
    }
}

/// The best row overall, and the best row of any *other* subject (for the margin rule).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BestTwo {
    best: Option<Hit>,
    runner_up: Option<Hit>,
}

impl BestTwo {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The best hit.
    pub fn best(&self) -> Option<Hit> {
        self.best
    }

    /// The best hit whose subject differs from the best hit's.
    pub fn runner_up(&self) -> Option<Hit> {
        self.runner_up
    }
}

impl Collector for BestTwo {
    #[inline]
    fn bar(&self) -> f32 {
        self.runner_up.map_or(f32::NEG_INFINITY, |h| h.score)
    }

    // Invariant: `best` is the best hit seen; `runner_up` the best hit seen whose subject
    // differs from `best`'s. A new overall best of another subject demotes the old best,
    // which was better than anything else of a subject other than the new one.
    fn offer(&mut self, hit: Hit) {
        let Some(best) = self.best else {
            self.best = Some(hit);
            return;
        };
        if hit.subject == best.subject {
            if hit.ranks_before(&best) {
                self.best = Some(hit);
            }
        } else if hit.ranks_before(&best) {
            self.runner_up = Some(best);
            self.best = Some(hit);
        } else if self.runner_up.is_none_or(|r| hit.ranks_before(&r)) {
            self.runner_up = Some(hit);
        }
    }

    fn absorb(&mut self, other: Self) {
        // The union's best two subjects are among each side's best two (see `offer`).
        for h in [other.best, other.runner_up].into_iter().flatten() {
            self.offer(h);
        }
    }

    fn size(&self) -> usize {
        2
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hit(score: f32, subject: u64, template: u64) -> Hit {
        Hit {
            score,
            subject: SubjectId(subject),
            template,
        }
    }

    fn sorted(mut v: Vec<Hit>) -> Vec<Hit> {
        v.sort_by(Hit::rank_cmp);
        v
    }

    fn hits_strategy() -> impl Strategy<Value = Vec<Hit>> {
        // Few distinct scores and subjects, so ties and repeated subjects are common.
        prop::collection::vec((0u8..6, 0u64..5), 0..40).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(t, (s, subj))| hit(f32::from(s) * 0.25, subj, t as u64))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn prop_topk_matches_sort(hits in hits_strategy(), k in 0usize..8, split in 0usize..40) {
            let mut want = sorted(hits.clone());
            want.truncate(k);
            let mut one = TopK::new(k);
            hits.iter().for_each(|&h| one.offer(h));
            prop_assert_eq!(one.hits(), &want[..]);
            let (a, b) = hits.split_at(split.min(hits.len()));
            let (mut x, mut y) = (TopK::new(k), TopK::new(k));
            a.iter().for_each(|&h| x.offer(h));
            b.iter().rev().for_each(|&h| y.offer(h));
            x.absorb(y);
            prop_assert_eq!(x.hits(), &want[..]);
        }

        #[test]
        fn prop_best_two_matches_naive(hits in hits_strategy(), split in 0usize..40) {
            let all = sorted(hits.clone());
            let best = all.first().copied();
            let runner = best.and_then(|b| all.iter().find(|h| h.subject != b.subject).copied());
            let (a, b) = hits.split_at(split.min(hits.len()));
            let (mut x, mut y) = (BestTwo::new(), BestTwo::new());
            a.iter().rev().for_each(|&h| x.offer(h));
            b.iter().for_each(|&h| y.offer(h));
            x.absorb(y);
            prop_assert_eq!(x.best(), best);
            prop_assert_eq!(x.runner_up(), runner);
        }
    }

    #[test]
    fn ties_go_to_lower_subject_then_template() {
        let mut t = TopK::new(2);
        t.offer(hit(0.5, 9, 1));
        t.offer(hit(0.5, 3, 7));
        t.offer(hit(0.5, 3, 2));
        assert_eq!(t.hits(), &[hit(0.5, 3, 2), hit(0.5, 3, 7)]);
    }

    #[test]
    fn bars() {
        let mut t = TopK::new(1);
        assert_eq!(t.bar(), f32::NEG_INFINITY);
        t.offer(hit(0.3, 1, 1));
        assert_eq!(t.bar(), 0.3);
        assert_eq!(TopK::new(0).bar(), f32::INFINITY);
        let mut b = BestTwo::new();
        b.offer(hit(0.9, 1, 1));
        b.offer(hit(0.8, 1, 2));
        assert_eq!(
            b.bar(),
            f32::NEG_INFINITY,
            "same subject is not a runner-up"
        );
        b.offer(hit(0.1, 2, 3));
        assert_eq!(b.bar(), 0.1);
    }
}

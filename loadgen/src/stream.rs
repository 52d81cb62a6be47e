//! The load generator's random streams, drawn from the engine's seeded generator
//! ([`gatewarden::testing::Rng`]).
//!
//! One tag per kind of randomness, so two uses never share a sequence, and one index per item,
//! so subject 17 is the same person in a population of 100 or 100,000 and event 42 of a run
//! does not depend on how events 0..41 were drawn. Faces come from
//! [`gatewarden::testing::IndexedFaces`], which has stream tags of its own.

use gatewarden::testing::Rng;

/// Stream tags, one per kind of randomness the load generator draws itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    /// A subject's registry record and health state.
    Subject = 1,
    /// The noise of one gate capture (per run seed and event index).
    Probe = 2,
    /// The plan of one event: who, where, how.
    Plan = 3,
    /// Arrival times.
    Arrivals = 4,
    /// Samples used to measure the population's score distributions.
    Sample = 5,
    /// Bad-input streams.
    BadInput = 6,
}

impl Stream {
    /// The generator of item `index` of this kind under `seed`.
    pub(crate) fn rng(self, seed: u64, index: u64) -> Rng {
        Rng::stream(seed, self as u64, index)
    }
}

#[cfg(test)]
mod tests {
    use gatewarden::testing::IndexedFaces;

    use super::*;

    #[test]
    fn tags_do_not_collide_with_the_face_streams() {
        let faces = [
            IndexedFaces::IDENTITY_STREAM,
            IndexedFaces::TEMPLATE_STREAM,
            IndexedFaces::IMPOSTOR_STREAM,
        ];
        let ours = [
            Stream::Subject,
            Stream::Probe,
            Stream::Plan,
            Stream::Arrivals,
            Stream::Sample,
            Stream::BadInput,
        ];
        let mut tags: Vec<u64> = ours.iter().map(|s| *s as u64).collect();
        tags.extend(faces);
        let n = tags.len();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), n, "two kinds of randomness share a stream tag");
    }

    #[test]
    fn each_kind_and_index_has_its_own_sequence() {
        let first = |s: Stream, i| s.rng(7, i).next_u64();
        assert_eq!(first(Stream::Plan, 3), first(Stream::Plan, 3));
        assert_ne!(first(Stream::Plan, 3), first(Stream::Plan, 4));
        assert_ne!(first(Stream::Plan, 3), first(Stream::Probe, 3));
    }
}

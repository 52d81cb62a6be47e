//! Today's counters that the policy needs: entries per person and market, who is inside,
//! who has signed in, and each market's occupancy.
//!
//! Kept in memory, updated when a verdict is decided (so two quick events of one person see
//! each other), read back from the entry records at start-up (from the committed counters'
//! snapshot and the records after it when there is one, counters.rs), and reset when the
//! local day changes. Pure: the day and times are arguments.

use gatewarden_protocol::{Decision, Direction, MarketId, SubjectId, UnixMillis};

use crate::clock::UtcOffset;
use crate::policy::{MarketState, PersonState};
use crate::store::{ModeKind, Passage};

// The keys are ids the registry assigns, not input an outsider chooses, so a keyed hash buys
// nothing; rebuilding the counters late in a busy day (5.1 million passages) spent most of its
// time in `observe`, much of it hashing.
type HashMap<K, V> = rustc_hash::FxHashMap<K, V>;
type HashSet<T> = rustc_hash::FxHashSet<T>;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PersonDay {
    entries: u32,
    inside: Option<bool>,
}

/// One admitted or refused event, as far as the counters care.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Observation {
    pub(crate) subject: Option<SubjectId>,
    pub(crate) market: MarketId,
    pub(crate) mode: ModeKind,
    pub(crate) direction: Direction,
    pub(crate) decision: Decision,
    pub(crate) at: UnixMillis,
}

/// The day's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    day: Option<i64>,
    people: HashMap<(SubjectId, MarketId), PersonDay>,
    signed_in: HashSet<SubjectId>,
    occupancy: HashMap<MarketId, u32>,
}

impl Tally {
    /// Today's counters, rebuilt from today's entry records, and how many passages that read.
    ///
    /// # Errors
    /// A store failure.
    pub(crate) fn rebuild(
        store: &crate::store::Store,
        now: UnixMillis,
        offset: UtcOffset,
    ) -> Result<(Self, u64), crate::store::StoreError> {
        let mut tally = Self::default();
        let mut read = 0;
        let (day_start, _) = offset.day_bounds(now);
        store.for_each_passage_since(day_start, None, |p| {
            tally.observe_passage(p, offset);
            read += 1;
        })?;
        Ok((tally, read))
    }

    /// Today's counters of `markets` only, rebuilt from their entry records.
    ///
    /// # Errors
    /// A store failure.
    pub(crate) fn rebuild_markets(
        store: &crate::store::Store,
        markets: &[MarketId],
        now: UnixMillis,
        offset: UtcOffset,
    ) -> Result<Self, crate::store::StoreError> {
        let mut tally = Self::default();
        let (day_start, _) = offset.day_bounds(now);
        store.for_each_passage_since(day_start, Some(markets), |p| {
            tally.observe_passage(p, offset);
        })?;
        Ok(tally)
    }

    pub(crate) fn observe_passage(&mut self, p: &Passage, offset: UtcOffset) {
        self.observe(
            &Observation {
                subject: Some(p.subject),
                market: p.market,
                mode: p.mode,
                direction: p.direction,
                decision: Decision::Admit,
                at: p.at,
            },
            offset,
        );
    }

    /// Replaces the counters of `markets` with `fresh`'s, a rebuild of those markets only
    /// ([`Tally::rebuild_markets`]); the other markets' counters stay as they are. Sign-ins are
    /// the person's, not a market's, and only accumulate within a day: `fresh`'s are added.
    pub(crate) fn replace_markets(
        &mut self,
        markets: &[MarketId],
        fresh: Self,
        now: UnixMillis,
        offset: UtcOffset,
    ) {
        self.roll(now, offset);
        self.people
            .retain(|(_, market), _| !markets.contains(market));
        self.occupancy.retain(|market, _| !markets.contains(market));
        if fresh.day.is_some() && fresh.day != self.day {
            return; // rebuilt across midnight: today's counters of these markets start empty
        }
        self.people.extend(fresh.people);
        self.occupancy.extend(fresh.occupancy);
        self.signed_in.extend(fresh.signed_in);
    }

    /// Forgets yesterday when `now` falls on a new local day.
    fn roll(&mut self, now: UnixMillis, offset: UtcOffset) {
        let today = offset.day_of(now);
        if self.day != Some(today) {
            self.day = Some(today);
            self.people.clear();
            self.signed_in.clear();
            self.occupancy.clear();
        }
    }

    /// The person's counters at `market` for the policy.
    pub(crate) fn person(
        &mut self,
        subject: SubjectId,
        market: MarketId,
        now: UnixMillis,
        offset: UtcOffset,
    ) -> PersonState {
        self.roll(now, offset);
        let day = self
            .people
            .get(&(subject, market))
            .copied()
            .unwrap_or_default();
        PersonState {
            entries_today: day.entries,
            inside: day.inside,
            signed_in_today: self.signed_in.contains(&subject),
        }
    }

    /// The market's counters for the policy.
    pub(crate) fn market(
        &mut self,
        market: MarketId,
        now: UnixMillis,
        offset: UtcOffset,
    ) -> MarketState {
        self.roll(now, offset);
        MarketState {
            occupancy: self.occupancy.get(&market).copied().unwrap_or(0),
        }
    }

    /// Counts an event. Only admitted events of a known person move the counters.
    pub(crate) fn observe(&mut self, o: &Observation, offset: UtcOffset) {
        let Some(subject) = o.subject else { return };
        if o.decision != Decision::Admit {
            return;
        }
        match self.day {
            // A late retry from an earlier day does not count today.
            Some(today) if offset.day_of(o.at) < today => return,
            Some(today) if offset.day_of(o.at) == today => {}
            _ => self.roll(o.at, offset),
        }
        if o.mode == ModeKind::SignIn {
            self.signed_in.insert(subject);
        }
        let day = self.people.entry((subject, o.market)).or_default();
        let occupancy = self.occupancy.entry(o.market).or_insert(0);
        match o.direction {
            Direction::Entry => {
                day.entries += 1;
                if day.inside != Some(true) {
                    *occupancy += 1;
                }
                day.inside = Some(true);
            }
            Direction::Exit => {
                if day.inside == Some(true) {
                    *occupancy = occupancy.saturating_sub(1);
                }
                day.inside = Some(false);
            }
        }
    }
}

/// Bytes of one person's counters in [`Tally::encode`]: subject, market, entries, inside.
const PERSON_BYTES: usize = 8 + 4 + 4 + 1;

impl Tally {
    /// Appends the counters to `out`, little-endian: the day (`i64::MIN` for none), then the
    /// people (a count, then subject, market, entries and inside: 0 unknown, 1 out, 2 in),
    /// the signed-in subjects (a count, then each), and the occupancy (a count, then market
    /// and count). The snapshot file's body (counters.rs), which checksums it.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.day.unwrap_or(i64::MIN).to_le_bytes());
        put_len(out, self.people.len());
        for (&(subject, market), day) in &self.people {
            out.extend_from_slice(&subject.0.to_le_bytes());
            out.extend_from_slice(&market.0.to_le_bytes());
            out.extend_from_slice(&day.entries.to_le_bytes());
            out.push(match day.inside {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            });
        }
        put_len(out, self.signed_in.len());
        for subject in &self.signed_in {
            out.extend_from_slice(&subject.0.to_le_bytes());
        }
        put_len(out, self.occupancy.len());
        for (market, count) in &self.occupancy {
            out.extend_from_slice(&market.0.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
    }

    /// Counters that [`Tally::encode`] wrote at the start of `input`, which is advanced past
    /// them; `None` for bytes it could not have written (a count beyond the bytes left, an
    /// unknown inside code, the same key twice).
    pub(crate) fn decode(input: &mut &[u8]) -> Option<Self> {
        let day = i64::from_le_bytes(take(input)?);
        let mut tally = Self {
            day: (day != i64::MIN).then_some(day),
            ..Self::default()
        };
        let people = take_len(input, PERSON_BYTES)?;
        tally.people.reserve(people);
        for _ in 0..people {
            let subject = SubjectId(u64::from_le_bytes(take(input)?));
            let market = MarketId(u32::from_le_bytes(take(input)?));
            let entries = u32::from_le_bytes(take(input)?);
            let inside = match take::<1>(input)?[0] {
                0 => None,
                1 => Some(false),
                2 => Some(true),
                _ => return None,
            };
            let day = PersonDay { entries, inside };
            if tally.people.insert((subject, market), day).is_some() {
                return None;
            }
        }
        for _ in 0..take_len(input, 8)? {
            if !tally
                .signed_in
                .insert(SubjectId(u64::from_le_bytes(take(input)?)))
            {
                return None;
            }
        }
        for _ in 0..take_len(input, 8)? {
            let market = MarketId(u32::from_le_bytes(take(input)?));
            let count = u32::from_le_bytes(take(input)?);
            if tally.occupancy.insert(market, count).is_some() {
                return None;
            }
        }
        Some(tally)
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // No day has four billion people in it: the registry itself could not hold them.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

/// A count of records of `record_bytes` each, refused if more than the bytes left could hold
/// (a damaged count must not reserve gigabytes).
fn take_len(input: &mut &[u8], record_bytes: usize) -> Option<usize> {
    let len = u32::from_le_bytes(take(input)?) as usize;
    (len.checked_mul(record_bytes)? <= input.len()).then_some(len)
}

/// The next `N` bytes of `input`, which is advanced past them.
pub(crate) fn take<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = input.split_first_chunk::<N>()?;
    *input = rest;
    Some(*head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{DAY_MS, HOUR_MS};

    const OFFSET: UtcOffset = UtcOffset(480);

    fn obs(subject: u64, direction: Direction, decision: Decision, at: u64) -> Observation {
        Observation {
            subject: Some(SubjectId(subject)),
            market: MarketId(1),
            mode: ModeKind::Verify,
            direction,
            decision,
            at: UnixMillis(at),
        }
    }

    #[test]
    fn admitted_entries_count_and_occupy() {
        let mut t = Tally::default();
        let now = 100 * DAY_MS;
        t.observe(&obs(7, Direction::Entry, Decision::Admit, now), OFFSET);
        t.observe(&obs(8, Direction::Entry, Decision::Admit, now), OFFSET);
        t.observe(&obs(9, Direction::Entry, Decision::Deny, now), OFFSET);
        let p = t.person(SubjectId(7), MarketId(1), UnixMillis(now), OFFSET);
        assert_eq!((p.entries_today, p.inside), (1, Some(true)));
        assert_eq!(t.market(MarketId(1), UnixMillis(now), OFFSET).occupancy, 2);
        t.observe(&obs(7, Direction::Exit, Decision::Admit, now + 1), OFFSET);
        assert_eq!(t.market(MarketId(1), UnixMillis(now), OFFSET).occupancy, 1);
        let denied = t.person(SubjectId(9), MarketId(1), UnixMillis(now), OFFSET);
        assert_eq!(denied.entries_today, 0);
    }

    #[test]
    fn a_new_day_resets_counters() {
        let mut t = Tally::default();
        let now = 100 * DAY_MS;
        t.observe(&obs(7, Direction::Entry, Decision::Admit, now), OFFSET);
        let tomorrow = UnixMillis(now + DAY_MS + HOUR_MS);
        assert_eq!(
            t.person(SubjectId(7), MarketId(1), tomorrow, OFFSET)
                .entries_today,
            0
        );
        assert_eq!(t.market(MarketId(1), tomorrow, OFFSET).occupancy, 0);
    }

    #[test]
    fn replacing_a_market_keeps_the_others() {
        let now = 100 * DAY_MS;
        let mut t = Tally::default();
        let mut elsewhere = obs(8, Direction::Entry, Decision::Admit, now);
        elsewhere.market = MarketId(2);
        t.observe(&obs(7, Direction::Entry, Decision::Admit, now), OFFSET);
        t.observe(&elsewhere, OFFSET);
        // Market 1 as the entry log has it: person 7 went out, person 9 came in.
        let mut fresh = Tally::default();
        fresh.observe(&obs(7, Direction::Entry, Decision::Admit, now), OFFSET);
        fresh.observe(&obs(7, Direction::Exit, Decision::Admit, now + 1), OFFSET);
        fresh.observe(&obs(9, Direction::Entry, Decision::Admit, now + 2), OFFSET);
        t.replace_markets(&[MarketId(1)], fresh, UnixMillis(now + 3), OFFSET);
        let at = UnixMillis(now + 3);
        assert_eq!(t.market(MarketId(1), at, OFFSET).occupancy, 1);
        assert_eq!(
            t.person(SubjectId(7), MarketId(1), at, OFFSET).inside,
            Some(false)
        );
        assert_eq!(
            t.person(SubjectId(9), MarketId(1), at, OFFSET).inside,
            Some(true)
        );
        assert_eq!(
            t.market(MarketId(2), at, OFFSET).occupancy,
            1,
            "market 2 untouched"
        );
        assert_eq!(
            t.person(SubjectId(8), MarketId(2), at, OFFSET).inside,
            Some(true)
        );
    }

    #[test]
    fn sign_in_is_remembered_for_the_day() {
        let mut t = Tally::default();
        let now = 100 * DAY_MS;
        let mut o = obs(7, Direction::Entry, Decision::Admit, now);
        o.mode = ModeKind::SignIn;
        t.observe(&o, OFFSET);
        assert!(
            t.person(SubjectId(7), MarketId(2), UnixMillis(now), OFFSET)
                .signed_in_today
        );
    }

    #[test]
    fn counters_encode_and_decode_to_themselves() {
        let now = 100 * DAY_MS;
        let mut t = Tally::default();
        let empty = {
            let mut bytes = Vec::new();
            t.encode(&mut bytes);
            Tally::decode(&mut bytes.as_slice())
        };
        assert_eq!(empty, Some(Tally::default()));
        t.observe(&obs(7, Direction::Entry, Decision::Admit, now), OFFSET);
        t.observe(&obs(7, Direction::Exit, Decision::Admit, now + 1), OFFSET);
        t.observe(&obs(8, Direction::Entry, Decision::Admit, now + 2), OFFSET);
        let mut signs_in = obs(9, Direction::Entry, Decision::Admit, now + 3);
        signs_in.mode = ModeKind::SignIn;
        signs_in.market = MarketId(2);
        t.observe(&signs_in, OFFSET);
        let mut bytes = Vec::new();
        t.encode(&mut bytes);
        bytes.extend_from_slice(b"next");
        let mut input = bytes.as_slice();
        assert_eq!(Tally::decode(&mut input), Some(t.clone()));
        assert_eq!(input, b"next", "decode stops at the end of the counters");
        // Every cut short, and an unknown inside code, is refused, never misread.
        let mut body = Vec::new();
        t.encode(&mut body);
        for cut in 0..body.len() {
            assert_eq!(Tally::decode(&mut &body[..cut]), None, "cut at {cut}");
        }
        let inside = 8 + 4 + PERSON_BYTES - 1;
        body[inside] = 3;
        assert_eq!(Tally::decode(&mut body.as_slice()), None);
        // A count no file could hold is refused before anything is reserved.
        let mut huge = Vec::new();
        huge.extend_from_slice(&5i64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Tally::decode(&mut huge.as_slice()), None);
    }
}

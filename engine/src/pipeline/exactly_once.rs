//! Exactly-once: the one place that decides whether an event is new, a retry of a recorded
//! event, or a *different* event under a reused `(gate, seq)`.
//!
//! Three facts carry it:
//! - the **claim** ([`InFlightClaim`]): while an event with a key is being decided, a second
//!   event with that key is answered Busy (its retry then finds the record);
//! - the **high-water mark** per gate (the highest committed `seq`): a `seq` above it cannot
//!   have been recorded, so a new event costs no store lookup. It is loaded from the store at
//!   start and advanced by the committer before it replies, so a gate absent from it has no
//!   entries at all;
//! - the **fingerprint** ([`EventIdentity`]): a keyed digest of everything the event carried,
//!   stored with its record. A key at or below the mark is looked up on a worker thread (never
//!   on the submitter's, which may be an async task); the recorded verdict answers it only if
//!   the fingerprints are equal. Otherwise the gate reused a `seq` for another event (a counter
//!   reset by a factory reset or a restored image): it gets `seq_reused`, is counted, and is
//!   neither decided nor recorded. Returning the old verdict there would admit a stranger
//!   under someone else's decision.
//!
//! The store's `UNIQUE (gate, seq)` is the last line, within one day partition: a record that
//! loses the race to an earlier one of the same day comes back `Duplicate` from the committer,
//! which settles it by the same comparison ([`look_up`]). Across days (a retry decided after
//! midnight) nothing in SQLite stops a second record: there the claim and the high-water mark
//! with the store's seq directory, which knows every day holding a gate's seq, are what keep
//! a key recorded once.

use std::sync::Arc;

use dashmap::DashMap;
use gatewarden_protocol::{Credential, ErrorCode, ErrorReply, Event, GateId, Mode, Verdict};

use super::Reply;
use crate::store::{EventFingerprint, ModeKind, RecordedEntry, Store, StoreError};

/// Version tag of the canonical bytes; a change of layout must change it.
const CANONICAL_VERSION: u8 = 1;

/// The keys accepted but not yet answered.
type InFlightKeys = Arc<DashMap<(GateId, u64), ()>>;

/// The claims in flight and the committed high-water marks.
pub(super) struct ExactlyOnce {
    inflight: InFlightKeys,
    committed: DashMap<GateId, u64>,
}

impl ExactlyOnce {
    /// Loads every gate's highest recorded `seq` from the store.
    pub(super) fn load(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            inflight: InFlightKeys::default(),
            committed: store.max_seq_per_gate()?.into_iter().collect(),
        })
    }

    /// No claims and no recorded keys (a fresh store).
    #[cfg(test)]
    pub(super) fn empty() -> Self {
        Self {
            inflight: InFlightKeys::default(),
            committed: DashMap::new(),
        }
    }

    /// Claims `key`, or `None` if an event with that key is being decided now.
    pub(super) fn claim(&self, key: (GateId, u64)) -> Option<InFlightClaim> {
        InFlightClaim::take(&self.inflight, key)
    }

    /// Whether `(gate, seq)` may already be recorded: false for a `seq` above the gate's
    /// high-water mark, and for a gate that never had an entry.
    pub(super) fn may_be_recorded(&self, gate: GateId, seq: u64) -> bool {
        self.committed.get(&gate).is_some_and(|hwm| seq <= *hwm)
    }

    /// Notes that `(gate, seq)` is now recorded. Called before the event's reply is sent, so
    /// any retry that follows the reply sees it.
    pub(super) fn recorded(&self, gate: GateId, seq: u64) {
        self.committed
            .entry(gate)
            .and_modify(|s| *s = (*s).max(seq))
            .or_insert(seq);
    }
}

/// An accepted event's claim on its `(gate, seq)`: while it lives, a duplicate of the key gets
/// `Busy`. Dropping it frees the key, so every path that ends an event — a reply sent, or the
/// job dropped by a panic outside the guarded calls — lets the gate's retry through.
pub(super) struct InFlightClaim {
    keys: InFlightKeys,
    key: (GateId, u64),
}

impl InFlightClaim {
    fn take(keys: &InFlightKeys, key: (GateId, u64)) -> Option<Self> {
        match keys.entry(key) {
            dashmap::Entry::Occupied(_) => None,
            dashmap::Entry::Vacant(slot) => {
                slot.insert(());
                Some(Self {
                    keys: Arc::clone(keys),
                    key,
                })
            }
        }
    }
}

impl Drop for InFlightClaim {
    fn drop(&mut self) {
        self.keys.remove(&self.key);
    }
}

/// What identifies an event beyond its key: its fingerprint, and the two facts that entries
/// recorded before fingerprints existed can still be compared on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EventIdentity {
    pub(super) fingerprint: EventFingerprint,
    captured_at: u64,
    mode: ModeKind,
}

impl EventIdentity {
    /// The identity of `event`, its fingerprint keyed by the store's credential key.
    pub(super) fn of(store: &Store, event: &Event) -> Self {
        let mut bytes =
            Vec::with_capacity(64 + 4 * event.face.as_ref().map_or(0, |f| f.embedding.len()));
        canonical_bytes(event, &mut bytes);
        Self {
            fingerprint: store.event_fingerprint(&bytes),
            captured_at: event.captured_at.0,
            mode: ModeKind::from(&event.mode),
        }
    }

    /// Whether the recorded entry is this event.
    fn matches(&self, recorded: &RecordedEntry) -> bool {
        match recorded.fingerprint {
            Some(fingerprint) => fingerprint == self.fingerprint,
            // Recorded before fingerprints: the best evidence left is the capture time and mode.
            None => recorded.captured_at.0 == self.captured_at && recorded.mode == self.mode,
        }
    }
}

/// What the entry log says about an event whose key may be recorded.
#[derive(Debug)]
pub(super) enum Recorded {
    /// Nothing recorded under the key: decide the event.
    Nothing,
    /// This very event was recorded: answer with its verdict (marked `replayed`).
    Retry(Verdict),
    /// Another event was recorded under the key.
    Reused,
}

/// Looks `(gate, seq)` up in the entry log and compares it with `identity`. Blocking: call it
/// from a pipeline thread.
pub(super) fn look_up(
    store: &Store,
    gate: GateId,
    seq: u64,
    identity: &EventIdentity,
) -> Result<Recorded, StoreError> {
    Ok(match store.recorded_entry(gate, seq)? {
        None => Recorded::Nothing,
        Some(recorded) if identity.matches(&recorded) => Recorded::Retry(recorded.verdict),
        Some(_) => Recorded::Reused,
    })
}

/// The reply to a reused key.
pub(super) fn reused_reply(gate: GateId, seq: u64) -> Reply {
    Reply::Error(ErrorReply::new(
        ErrorCode::SeqReused,
        format!(
            "gate {gate} seq {seq} is already recorded for a different event; move the gate's \
             counter past every seq it used before and send this event with a new seq"
        ),
    ))
}

/// Everything the event carried, in a fixed layout: little-endian integers, length-prefixed
/// strings, floats by bit pattern, a tag before every optional or variant field. A retry that
/// resends the same event produces the same bytes.
fn canonical_bytes(event: &Event, out: &mut Vec<u8>) {
    out.clear();
    out.push(CANONICAL_VERSION);
    out.extend_from_slice(&event.gate.0.to_le_bytes());
    out.extend_from_slice(&event.seq.to_le_bytes());
    out.extend_from_slice(&event.captured_at.0.to_le_bytes());
    match &event.mode {
        Mode::Verify { credential } => {
            out.push(1);
            put_credential(out, credential);
        }
        Mode::Identify => out.push(2),
        Mode::SignIn { credential: None } => out.push(3),
        Mode::SignIn {
            credential: Some(credential),
        } => {
            out.push(4);
            put_credential(out, credential);
        }
    }
    out.push(event.direction.code());
    match &event.face {
        None => out.push(0),
        Some(face) => {
            out.push(1);
            put_str(out, &face.model);
            out.extend_from_slice(&(face.embedding.len() as u64).to_le_bytes());
            for v in &face.embedding {
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            out.extend_from_slice(&face.quality.to_bits().to_le_bytes());
            out.extend_from_slice(&face.liveness.to_bits().to_le_bytes());
        }
    }
    match event.temperature_c {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.to_bits().to_le_bytes());
        }
    }
}

fn put_credential(out: &mut Vec<u8>, credential: &Credential) {
    let (tag, text) = match credential {
        Credential::IdCard(number) => (1, number),
        Credential::StaffQr(token) => (2, token),
    };
    out.push(tag);
    put_str(out, text);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use gatewarden_protocol::{Direction, FaceSample, MarketId, UnixMillis};

    use super::*;

    const KEY: (GateId, u64) = (GateId(3), 17);

    fn event() -> Event {
        Event {
            gate: KEY.0,
            seq: KEY.1,
            captured_at: UnixMillis(1_700_000_000_000),
            mode: Mode::Verify {
                credential: Credential::IdCard("110101199003071234".into()),
            },
            direction: Direction::Entry,
            face: Some(FaceSample {
                model: "m".into(),
                embedding: vec![0.25, -0.5, 0.75],
                quality: 0.9,
                liveness: 0.95,
            }),
            temperature_c: Some(36.6),
        }
    }

    fn bytes(e: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        canonical_bytes(e, &mut out);
        out
    }

    #[test]
    fn a_key_is_claimed_once_until_its_claim_is_dropped() {
        let keys = InFlightKeys::default();
        let claim = InFlightClaim::take(&keys, KEY).unwrap();
        assert!(InFlightClaim::take(&keys, KEY).is_none());
        assert!(InFlightClaim::take(&keys, (GateId(3), 18)).is_some());
        drop(claim);
        assert!(InFlightClaim::take(&keys, KEY).is_some());
    }

    #[test]
    fn the_same_event_has_the_same_bytes() {
        assert_eq!(bytes(&event()), bytes(&event()));
    }

    #[test]
    fn every_field_changes_the_bytes() {
        let base = bytes(&event());
        type Change = Box<dyn Fn(&mut Event)>;
        let variants: Vec<Change> = vec![
            Box::new(|e| e.captured_at.0 += 1),
            Box::new(|e| e.mode = Mode::Identify),
            Box::new(|e| {
                e.mode = Mode::Verify {
                    credential: Credential::StaffQr("110101199003071234".into()),
                }
            }),
            Box::new(|e| {
                e.mode = Mode::Verify {
                    credential: Credential::IdCard("110101199003071235".into()),
                }
            }),
            Box::new(|e| e.mode = Mode::SignIn { credential: None }),
            Box::new(|e| e.direction = Direction::Exit),
            Box::new(|e| e.face = None),
            Box::new(|e| e.face.as_mut().unwrap().embedding[1] = -0.5001),
            Box::new(|e| e.face.as_mut().unwrap().model = "n".into()),
            Box::new(|e| e.face.as_mut().unwrap().liveness = 0.5),
            Box::new(|e| e.face.as_mut().unwrap().quality = 0.5),
            Box::new(|e| e.temperature_c = None),
            Box::new(|e| e.temperature_c = Some(38.0)),
            Box::new(|e| e.seq += 1),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut e = event();
            change(&mut e);
            assert_ne!(bytes(&e), base, "variant {i} left the bytes unchanged");
        }
    }

    #[test]
    fn a_legacy_record_is_compared_on_capture_time_and_mode() {
        let identity = EventIdentity {
            fingerprint: EventFingerprint([7; 16]),
            captured_at: 1000,
            mode: ModeKind::Identify,
        };
        let mut recorded = RecordedEntry {
            verdict: crate::policy::internal_error(KEY.0, KEY.1, UnixMillis(1), "test"),
            fingerprint: None,
            captured_at: UnixMillis(1000),
            mode: ModeKind::Identify,
            market: MarketId(1),
            policy: None,
        };
        assert!(identity.matches(&recorded));
        recorded.captured_at = UnixMillis(1001);
        assert!(!identity.matches(&recorded));
        recorded.captured_at = UnixMillis(1000);
        recorded.mode = ModeKind::Verify;
        assert!(!identity.matches(&recorded));
        recorded.mode = ModeKind::Identify;
        recorded.fingerprint = Some(EventFingerprint([8; 16]));
        assert!(
            !identity.matches(&recorded),
            "a fingerprint decides when present"
        );
        recorded.fingerprint = Some(EventFingerprint([7; 16]));
        assert!(identity.matches(&recorded));
    }
}

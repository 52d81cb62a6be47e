//! The committer: the one thread that writes entry records. It takes whatever records are
//! waiting (up to a limit), commits them in one transaction, and only then releases their
//! verdicts. While it waits for one fsync, the next group fills up behind it, so the cost of
//! a sync is shared by every event that arrived meanwhile.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Receiver;
use gatewarden_protocol::GateId;

use super::exactly_once::{self, EventIdentity, Recorded};
use super::{Reply, Responder, Shared};
use crate::store::{CommitOutcome, EntryRecord, EntryWriter};

/// A decided event waiting to become durable.
pub(super) struct Decided {
    pub(super) record: EntryRecord,
    /// Compared with the stored record if the key turns out to be recorded already.
    pub(super) identity: EventIdentity,
    pub(super) reply: Responder,
    pub(super) enqueued: Instant,
}

/// The committer loop; returns when every worker has gone and the channel is drained.
pub(super) fn run(shared: &Shared, rx: &Receiver<Decided>, mut writer: EntryWriter, max: usize) {
    let mut records = Vec::with_capacity(max);
    let mut waiters = Vec::with_capacity(max);
    while let Ok(first) = rx.recv() {
        push(first, &mut records, &mut waiters);
        while records.len() < max {
            match rx.try_recv() {
                Ok(d) => push(d, &mut records, &mut waiters),
                Err(_) => break,
            }
        }
        commit_group(shared, &mut writer, &mut records, &mut waiters);
    }
}

struct Waiter {
    reply: Responder,
    identity: EventIdentity,
    enqueued: Instant,
}

fn push(d: Decided, records: &mut Vec<EntryRecord>, waiters: &mut Vec<Waiter>) {
    records.push(d.record);
    waiters.push(Waiter {
        reply: d.reply,
        identity: d.identity,
        enqueued: d.enqueued,
    });
}

fn commit_group(
    shared: &Shared,
    writer: &mut EntryWriter,
    records: &mut Vec<EntryRecord>,
    waiters: &mut Vec<Waiter>,
) {
    let started = shared.clock.instant();
    let result = writer.commit(records);
    let done = shared.clock.instant();
    shared
        .stats
        .commit
        .record(done.saturating_duration_since(started));
    shared.stats.commit_size.record_value(records.len() as u64);
    let (outcomes, failure) = match result {
        Ok(outcomes) => (outcomes.into_iter().map(Some).collect(), None),
        Err(e) => (e.recorded, Some(e.error)),
    };
    if let Some(err) = &failure {
        // Nothing is acknowledged that is not on disk: every event of the group that was not
        // recorded gets an error and the gate retries it with the same seq. (A group that
        // straddles midnight is two transactions; the first may have been recorded.)
        let lost = outcomes.iter().filter(|o| o.is_none()).count();
        if matches!(err, crate::store::StoreError::LeaseLost { .. }) {
            // Another node took the markets: expected once per takeover, not a failure of
            // this node's store.
            tracing::warn!(error = %err, not_recorded = lost, "records refused by the lease fence");
        } else {
            tracing::error!(error = %err, records = records.len(), not_recorded = lost, "group commit failed");
            shared.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    if failure.is_some() || outcomes.iter().any(|o| *o != Some(CommitOutcome::Inserted)) {
        // A duplicate or an unrecorded event was counted when decided but is not a new entry.
        shared.resync_tally();
    }
    for ((record, waiter), outcome) in records.drain(..).zip(waiters.drain(..)).zip(outcomes) {
        let reply = match outcome {
            Some(outcome) => settle(shared, record, &waiter.identity, outcome),
            None => Shared::internal_error(format!(
                "could not record the entry ({}); retry with the same seq",
                failure
                    .as_ref()
                    .map_or_else(String::new, ToString::to_string)
            )),
        };
        shared
            .stats
            .end_to_end
            .record(done.saturating_duration_since(waiter.enqueued));
        waiter.reply.send(reply);
    }
}

/// The reply for a committed record: its verdict; or, if the key was already recorded (a
/// retry that raced its original, or a reused key), what [`Shared::settle_recorded`] says.
fn settle(
    shared: &Shared,
    record: EntryRecord,
    identity: &EventIdentity,
    outcome: CommitOutcome,
) -> Reply {
    let (gate, seq) = (record.verdict.gate, record.verdict.seq);
    let reply = match outcome {
        CommitOutcome::Inserted => {
            shared.stats.count_verdict(&record.verdict, record.market);
            Reply::Verdict(record.verdict)
        }
        _ => match exactly_once::look_up(&shared.store, gate, seq, identity) {
            Ok(Recorded::Nothing) => {
                Shared::internal_error("entry record vanished; retry".to_owned())
            }
            Ok(found) => shared.settle_recorded(found, gate, seq),
            Err(e) => Shared::internal_error(format!("cannot read the entry record ({e}); retry")),
        },
    };
    shared.keys.recorded(gate, seq);
    reply
}

impl Shared {
    /// The reply to an event whose key the entry log holds: the recorded verdict for a retry,
    /// `seq_reused` for a different event. Each is counted.
    pub(super) fn settle_recorded(&self, found: Recorded, gate: GateId, seq: u64) -> Reply {
        match found {
            Recorded::Retry(verdict) => {
                self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                Reply::Verdict(verdict)
            }
            Recorded::Reused => {
                self.stats.seq_reused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    gate = gate.0,
                    seq,
                    "seq reused for a different event; refused"
                );
                exactly_once::reused_reply(gate, seq)
            }
            Recorded::Nothing => {
                Self::internal_error("no entry record to settle; retry".to_owned())
            }
        }
    }
}

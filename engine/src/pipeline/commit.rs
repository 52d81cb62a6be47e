//! The committer: the one thread that writes entry records. It takes whatever records are
//! waiting (up to a limit), commits them in one transaction, and only then releases their
//! verdicts. While it waits for one fsync, the next group fills up behind it, so the cost of
//! a sync is shared by every event that arrived meanwhile.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Receiver;
use gatewarden_protocol::{MarketId, Verdict};

use super::{Reply, Responder, Shared};
use crate::store::{CommitOutcome, EntryRecord, EntryWriter};

/// A decided event waiting to become durable.
pub(super) struct Decided {
    pub(super) record: EntryRecord,
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
    enqueued: Instant,
}

fn push(d: Decided, records: &mut Vec<EntryRecord>, waiters: &mut Vec<Waiter>) {
    records.push(d.record);
    waiters.push(Waiter {
        reply: d.reply,
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
    match result {
        Ok(outcomes) => {
            if outcomes
                .iter()
                .any(|o| !matches!(o, CommitOutcome::Inserted))
            {
                // A duplicate was counted when decided but is not a new entry.
                shared.resync_tally();
            }
            for ((record, waiter), outcome) in
                records.drain(..).zip(waiters.drain(..)).zip(outcomes)
            {
                let reply = settle(shared, record.verdict, record.market, outcome);
                shared
                    .stats
                    .end_to_end
                    .record(done.saturating_duration_since(waiter.enqueued));
                waiter.reply.send(reply);
            }
        }
        Err(err) => {
            // Nothing is acknowledged that is not on disk: every event of the group gets an
            // error and the gate retries it with the same seq.
            tracing::error!(error = %err, records = records.len(), "group commit failed");
            shared.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            records.clear();
            for waiter in waiters.drain(..) {
                waiter.reply.send(Shared::internal_error(format!(
                    "could not record the entry ({err}); retry with the same seq"
                )));
            }
            shared.resync_tally();
        }
    }
}

/// The reply for a committed record: its verdict, or, if the key was already recorded (a
/// retry that raced its original), the verdict recorded first.
fn settle(shared: &Shared, verdict: Verdict, market: MarketId, outcome: CommitOutcome) -> Reply {
    let (gate, seq) = (verdict.gate, verdict.seq);
    let reply = match outcome {
        CommitOutcome::Inserted => {
            shared.stats.count_verdict(&verdict, market);
            Reply::Verdict(verdict)
        }
        _ => match shared.store.verdict_for(gate, seq) {
            Ok(Some(mut first)) => {
                shared.stats.replayed.fetch_add(1, Ordering::Relaxed);
                first.replayed = true;
                Reply::Verdict(first)
            }
            Ok(None) => Shared::internal_error("entry record vanished; retry".to_owned()),
            Err(e) => Shared::internal_error(format!("cannot read the entry record ({e}); retry")),
        },
    };
    shared
        .committed_seq
        .entry(gate)
        .and_modify(|s| *s = (*s).max(seq))
        .or_insert(seq);
    reply
}

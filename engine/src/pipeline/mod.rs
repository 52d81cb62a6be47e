//! The matching pipeline: bounded queue → matcher workers (micro-batches) → group commit →
//! reply. Plain std threads and crossbeam channels; no async runtime, so the engine embeds in
//! any program.
//!
//! ```text
//!  submit ──try_send──► [bounded queue] ──► worker × N: take a micro-batch (batch.rs)
//!    │ full, or standing queue ⇒ Busy          │ expired ⇒ Busy
//!    │                                         ├─ 1:N identify: one batched gallery search
//!    │                                         ├─ 1:1 verify: the credential holder's templates
//!    │                                         └─ policy::decide (panics fail closed)
//!    │                                         ▼
//!    │                        [commit channel] ──► committer: one transaction per group
//!    │                                                      (synchronous=FULL)
//!    ◄──────────── oneshot reply, sent only after the record is durable ◄──┘
//! ```
//!
//! Invariants:
//! - a verdict is released only after its entry record committed;
//! - every accepted event gets exactly one reply (verdict, Busy or error); if the process is
//!   killed first, the gate's retry with the same `(gate, seq)` gets the recorded verdict, or
//!   a fresh decision if nothing was recorded. (A panic outside the guarded decide and commit
//!   calls drops the event: its submitter sees a lost reply, and the key's claim is freed
//!   with it, so the gate's retry is decided afresh.)
//! - a full queue, or a standing one (even its quickest events waited past the admission
//!   target, admission.rs), answers at once; nothing waits unboundedly.

pub mod admission;
pub mod batch;
mod commit;
pub mod stats;
pub(crate) mod tally;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use crossbeam_channel::{Sender, TrySendError};
use dashmap::DashMap;
use gatewarden_protocol::{Busy, ErrorCode, ErrorReply, Event, GateId, Verdict};

use crate::clock::{Clock, UtcOffset};
use crate::gallery::LiveGallery;
use crate::model::GateInfo;
use crate::policy::PolicyBook;
use crate::store::Store;

pub use batch::BatchPolicy;
pub use stats::StatsSnapshot;

/// The engine's answer to one submitted event.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// The decision, durable on disk.
    Verdict(Verdict),
    /// Overloaded: retry the same event after the hint.
    Busy(Busy),
    /// Refused or failed; the code says whether to retry.
    Error(ErrorReply),
}

/// One event travelling through the pipeline.
pub(crate) struct Job {
    pub(crate) event: Event,
    pub(crate) gate: GateInfo,
    pub(crate) enqueued: Instant,
    pub(crate) deadline: Instant,
    pub(crate) reply: Responder,
}

/// The keys accepted but not yet answered.
pub(crate) type InFlightKeys = Arc<DashMap<(GateId, u64), ()>>;

/// An accepted event's claim on its `(gate, seq)`: while it lives, a duplicate of the key gets
/// `Busy`. Dropping it frees the key, so every path that ends an event — a reply sent, or the
/// job dropped by a panic outside the guarded calls — lets the gate's retry through.
pub(crate) struct InFlightClaim {
    keys: InFlightKeys,
    key: (GateId, u64),
}

impl InFlightClaim {
    /// Claims `key`, or `None` if it is already in flight.
    pub(crate) fn take(keys: &InFlightKeys, key: (GateId, u64)) -> Option<Self> {
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

/// Where an event's reply goes, holding the event's claim until the reply is sent.
pub(crate) struct Responder {
    reply: oneshot::Sender<Reply>,
    _claim: InFlightClaim,
}

impl Responder {
    pub(crate) fn new(reply: oneshot::Sender<Reply>, claim: InFlightClaim) -> Self {
        Self {
            reply,
            _claim: claim,
        }
    }

    /// Sends the reply (the gate may have gone: nothing was promised to it then), then frees
    /// the key.
    pub(crate) fn send(self, reply: Reply) {
        let _ = self.reply.send(reply);
    }
}

/// State shared by the submit path, the workers and the committer.
pub(crate) struct Shared {
    pub(crate) store: Arc<Store>,
    pub(crate) gallery: Arc<LiveGallery>,
    pub(crate) policies: ArcSwap<PolicyBook>,
    pub(crate) tally: Mutex<tally::Tally>,
    pub(crate) stats: stats::PipelineStats,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) offset: UtcOffset,
    /// Keys accepted but not yet answered: a duplicate in flight gets Busy.
    pub(crate) inflight: InFlightKeys,
    /// Highest committed seq per gate: a seq above it is new and needs no store lookup.
    pub(crate) committed_seq: DashMap<GateId, u64>,
    pub(crate) busy_retry_ms: u32,
    /// When to refuse at the door (see admission.rs).
    pub(crate) admission: admission::Admission,
}

impl Shared {
    /// A Busy reply whose hint grows with the queue.
    pub(crate) fn busy(&self, depth: usize, capacity: usize) -> Busy {
        let base = self.busy_retry_ms.max(1);
        let mut load = u32::try_from(depth.saturating_mul(4) / capacity.max(1)).unwrap_or(4);
        if self.admission.is_standing() {
            // Shedding: the queue is short on purpose, so its depth understates the overload.
            load = load.max(3);
        }
        Busy {
            retry_after_ms: base
                .saturating_mul(1 + load)
                .min(gatewarden_protocol::limits::MAX_RETRY_AFTER_MS),
        }
    }

    /// Rebuilds today's counters from the entry log. The counters move when a verdict is
    /// decided; when its record then fails to commit (or was already recorded), the log is the
    /// truth to return to. Rare, so a full rebuild is cheaper than tracking undo records.
    pub(crate) fn resync_tally(&self) {
        match tally::Tally::rebuild(&self.store, self.clock.now(), self.offset) {
            Ok(fresh) => {
                *self
                    .tally
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
            }
            Err(e) => tracing::error!(error = %e, "cannot rebuild today's counters"),
        }
    }

    pub(crate) fn internal_error(message: String) -> Reply {
        Reply::Error(ErrorReply::new(ErrorCode::Internal, message))
    }
}

/// Sizing of the pipeline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PipelineSizes {
    pub(crate) queue_capacity: usize,
    pub(crate) workers: usize,
    pub(crate) batch: BatchPolicy,
    pub(crate) commit_max: usize,
}

/// The running pipeline: its threads and the queue's sending side.
pub(crate) struct Pipeline {
    shared: Arc<Shared>,
    queue: Option<Sender<Job>>,
    capacity: usize,
    workers: Vec<JoinHandle<()>>,
    committer: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the committer and the matcher workers.
    pub(crate) fn start(shared: Arc<Shared>, sizes: PipelineSizes) -> Result<Self, PipelineError> {
        let writer = shared.store.entry_writer()?;
        let (queue_tx, queue_rx) = crossbeam_channel::bounded::<Job>(sizes.queue_capacity);
        // The hand-off to the committer holds at most one group: when commits fall behind,
        // workers wait, the queue fills, and events expire into Busy instead of piling up
        // between matching and the disk, where no deadline applies.
        let (commit_tx, commit_rx) = crossbeam_channel::bounded(sizes.commit_max);
        let committer = {
            let shared = Arc::clone(&shared);
            let max = sizes.commit_max;
            std::thread::Builder::new()
                .name("gw-commit".into())
                .spawn(move || commit::run(&shared, &commit_rx, writer, max))?
        };
        let mut workers = Vec::with_capacity(sizes.workers);
        for i in 0..sizes.workers.max(1) {
            let shared = Arc::clone(&shared);
            let rx = queue_rx.clone();
            let tx = commit_tx.clone();
            let batch = sizes.batch;
            workers.push(
                std::thread::Builder::new()
                    .name(format!("gw-match-{i}"))
                    .spawn(move || worker::run(&shared, &rx, &tx, batch))?,
            );
        }
        Ok(Self {
            shared,
            queue: Some(queue_tx),
            capacity: sizes.queue_capacity,
            workers,
            committer: Some(committer),
        })
    }

    /// Queues a job; a full queue answers Busy at once.
    pub(crate) fn enqueue(&self, job: Job) {
        let Some(queue) = &self.queue else {
            Self::refuse_shutting_down(&self.shared, job);
            return;
        };
        let depth = queue.len();
        if !self.shared.admission.admit(depth) {
            // A standing queue would hold this event near its deadline: refuse it now,
            // before it costs anything, rather than after its wait.
            self.shared
                .stats
                .rejected_busy
                .fetch_add(1, Ordering::Relaxed);
            let busy = self.shared.busy(depth, self.capacity);
            self.shared.finish_unrecorded(job, Reply::Busy(busy));
            return;
        }
        match queue.try_send(job) {
            Ok(()) => {
                self.shared.stats.submitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(job)) => {
                self.shared
                    .stats
                    .rejected_busy
                    .fetch_add(1, Ordering::Relaxed);
                let busy = self.shared.busy(queue.len(), self.capacity);
                self.shared.finish_unrecorded(job, Reply::Busy(busy));
            }
            Err(TrySendError::Disconnected(job)) => Self::refuse_shutting_down(&self.shared, job),
        }
    }

    fn refuse_shutting_down(shared: &Shared, job: Job) {
        let reply = Reply::Error(ErrorReply::new(
            ErrorCode::ShuttingDown,
            "the engine is shutting down; retry with the same seq",
        ));
        shared.finish_unrecorded(job, reply);
    }

    /// Queue depth and capacity.
    pub(crate) fn queue_fill(&self) -> (usize, usize) {
        (self.queue.as_ref().map_or(0, Sender::len), self.capacity)
    }

    /// Stops taking events, lets the workers finish what is queued, waits for the last group
    /// commit, and joins every thread.
    pub(crate) fn shutdown(&mut self) {
        self.queue = None; // workers see the disconnect once the queue is empty
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    /// Answers a job that will not be recorded (Busy, shutdown); its key is freed.
    pub(crate) fn finish_unrecorded(&self, job: Job, reply: Reply) {
        job.reply.send(reply);
    }
}

/// The pipeline could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The store refused a writer connection.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A thread could not be spawned.
    #[error("cannot start pipeline thread: {0}")]
    Spawn(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: (GateId, u64) = (GateId(3), 17);

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
    fn a_responder_frees_its_key_whether_it_replies_or_is_dropped() {
        let keys = InFlightKeys::default();
        let (tx, rx) = oneshot::channel();
        Responder::new(tx, InFlightClaim::take(&keys, KEY).unwrap())
            .send(Reply::Busy(Busy { retry_after_ms: 5 }));
        assert!(matches!(rx.recv(), Ok(Reply::Busy(_))));
        assert!(keys.is_empty());
        // Dropped without a reply (a panic on the way): the submitter sees the loss and the
        // gate's retry is not refused as a duplicate.
        let (tx, rx) = oneshot::channel::<Reply>();
        drop(Responder::new(tx, InFlightClaim::take(&keys, KEY).unwrap()));
        assert!(rx.recv().is_err());
        assert!(keys.is_empty());
    }
}

//! The matching pipeline: bounded queue → matcher workers (micro-batches) → group commit →
//! reply. Plain std threads and crossbeam channels; no async runtime, so the engine embeds in
//! any program.
//!
//! ```text
//!  submit (submit.rs) ──try_send──► [bounded queue] ──► worker × N: a micro-batch (batch.rs)
//!    │ bad input ⇒ error                       │ expired ⇒ Busy
//!    │ key in flight, full or standing ⇒ Busy  ├─ key may be recorded ⇒ entry log: retry ⇒
//!    │                                         │    recorded verdict; other event ⇒ seq_reused
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
//! - a recorded `(gate, seq)` answers only the event it was recorded for (exactly_once.rs):
//!   a different event under it gets `seq_reused` and is neither decided nor recorded;
//! - submitting never blocks and never reads SQLite (entry-log lookups run on the workers),
//!   and shutdown holds no lock while it drains, so submitters racing it get `ShuttingDown`;
//! - a full queue, or a standing one (even its quickest events waited past the admission
//!   target, admission.rs), answers at once; nothing waits unboundedly.

pub mod admission;
pub mod batch;
mod commit;
pub(crate) mod counters;
mod exactly_once;
pub mod stats;
mod submit;
mod tally;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Sender, TrySendError};
use gatewarden_protocol::{Busy, ErrorCode, ErrorReply, Event, Verdict};

use crate::clock::{Clock, UtcOffset};
use crate::config::EngineConfig;
use crate::gallery::LiveGallery;
use crate::model::GateInfo;
use crate::policy::PolicyBook;
use crate::store::Store;

pub use batch::BatchPolicy;
pub use stats::{CountersStart, StatsSnapshot};
pub use submit::Submission;

use exactly_once::{EventIdentity, ExactlyOnce, InFlightClaim};

/// Rebuilds the counters of the given markets from the entry log (see
/// [`Pipeline::market_rebuilder`]).
pub(crate) type MarketRebuilder = Arc<
    dyn Fn(&[gatewarden_protocol::MarketId]) -> Result<(), crate::store::StoreError> + Send + Sync,
>;

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
struct Job {
    event: Event,
    gate: GateInfo,
    /// The event's fingerprint and the facts a legacy record is compared on.
    identity: EventIdentity,
    /// The key is at or below the gate's high-water mark: a worker looks it up in the entry
    /// log before deciding (a retry, or a reused key).
    may_be_recorded: bool,
    enqueued: Instant,
    deadline: Instant,
    reply: Responder,
}

/// Where an event's reply goes, holding the event's claim until the reply is sent.
struct Responder {
    reply: oneshot::Sender<Reply>,
    _claim: InFlightClaim,
}

impl Responder {
    fn new(reply: oneshot::Sender<Reply>, claim: InFlightClaim) -> Self {
        Self {
            reply,
            _claim: claim,
        }
    }

    /// Frees the key, then sends the reply (the gate may have gone: nothing was promised to
    /// it then). In that order, so that a submitter that retries the moment it has the reply
    /// finds the key free (and, for a recorded event, the high-water mark already moved).
    fn send(self, reply: Reply) {
        let Self { reply: tx, _claim } = self;
        drop(_claim);
        let _ = tx.send(reply);
    }
}

/// What an event's face must be to be matched: the gallery's model and dimension.
struct FaceRules {
    model: String,
    dim: usize,
}

/// State shared by the submit path, the workers and the committer.
struct Shared {
    store: Arc<Store>,
    gallery: Arc<LiveGallery>,
    policies: Arc<ArcSwap<PolicyBook>>,
    tally: Mutex<tally::Tally>,
    /// Held by every rebuild of counters from the log, across its read and its swap: a full
    /// resync whose read began before a takeover committed must not land after that takeover's
    /// per-market rebuild and put back counters without the old owner's last records.
    rebuilding: Mutex<()>,
    /// The committed counters' snapshot (counters.rs), read by rebuilds; none on PostgreSQL,
    /// or with `counters_snapshot_ms = 0`.
    snapshot: Option<PathBuf>,
    /// How start-up read today's counters (for the statistics).
    counters_start: CountersStart,
    stats: stats::PipelineStats,
    clock: Arc<dyn Clock>,
    offset: UtcOffset,
    /// Claims, high-water marks and the replay check.
    keys: ExactlyOnce,
    face: FaceRules,
    deadline: Duration,
    busy_retry_ms: u32,
    /// When to refuse at the door (see admission.rs).
    admission: admission::Admission,
}

impl Shared {
    /// A Busy reply whose hint grows with the queue.
    fn busy(&self, depth: usize, capacity: usize) -> Busy {
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

    /// Reads today's counters back from the entry log (the committed counters' snapshot and
    /// what was recorded after it, when there is one; else the whole day). The counters move
    /// when a verdict is decided; when its record then fails to commit (or was already
    /// recorded), the log is the truth to return to. Rare, so reading it back is cheaper than
    /// tracking undo records.
    fn resync_tally(&self) {
        let _one_rebuild_at_a_time = self
            .rebuilding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let snapshot = self.snapshot.as_deref();
        match counters::today(&self.store, snapshot, self.clock.now(), self.offset) {
            Ok(counters::Today { tally: fresh, .. }) => {
                *self.tally.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
            }
            Err(e) => tracing::error!(error = %e, "cannot rebuild today's counters"),
        }
    }

    /// Rebuilds today's counters of `markets` from their entry records and puts them in
    /// place of what this node had for them, and raises their gates' high-water marks to what
    /// the log holds; the other markets' counters are not touched, and their events go on
    /// being decided meanwhile.
    fn rebuild_markets(
        &self,
        markets: &[gatewarden_protocol::MarketId],
    ) -> Result<(), crate::store::StoreError> {
        let _one_rebuild_at_a_time = self
            .rebuilding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = self.clock.now();
        let fresh = tally::Tally::rebuild_markets(&self.store, markets, now, self.offset)?;
        // The markets' gates may have recorded events at their previous node: learn their
        // high-water marks, so that a retry of such an event is looked up in the entry log
        // before it is decided (not decided, counted, and only then found to be a duplicate).
        for (gate, seq) in self.store.max_seq_per_gate()? {
            if self
                .store
                .gate(gate)
                .is_some_and(|g| markets.contains(&g.market))
            {
                self.keys.recorded(gate, seq);
            }
        }
        self.tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace_markets(markets, fresh, now, self.offset);
        Ok(())
    }

    fn internal_error(message: String) -> Reply {
        Reply::Error(ErrorReply::new(ErrorCode::Internal, message))
    }

    /// Answers a job that will not be recorded (Busy, replay, shutdown); its key is freed.
    fn finish_unrecorded(&self, job: Job, reply: Reply) {
        job.reply.send(reply);
    }
}

/// The shared parts of an engine that the pipeline decides with.
pub(crate) struct PipelineParts {
    pub(crate) store: Arc<Store>,
    pub(crate) gallery: Arc<LiveGallery>,
    pub(crate) policies: Arc<ArcSwap<PolicyBook>>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Where the committed counters' snapshot is (counters.rs), if there is one.
    pub(crate) snapshot: Option<PathBuf>,
}

/// The running pipeline: its threads and the queue's sending side.
///
/// Every method takes `&self`. Shutdown takes the queue's sender under a write lock held only
/// for that moment, then joins the threads with no lock held, so a submitter racing a
/// shutdown gets `ShuttingDown` at once instead of waiting for the drain.
pub(crate) struct Pipeline {
    shared: Arc<Shared>,
    queue: RwLock<Option<Sender<Job>>>,
    capacity: usize,
    /// The workers, then the committer (it ends once every worker has).
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pipeline {
    /// Reads today's counters (from the snapshot and what followed it, if there is one) and
    /// the high-water marks from the store, then starts the committer and the matcher
    /// workers. Also returns the committed counters, for the maintenance thread to keep and
    /// save (none without a snapshot).
    pub(crate) fn start(
        parts: PipelineParts,
        cfg: &EngineConfig,
    ) -> Result<(Self, Option<counters::CommittedCounters>), PipelineError> {
        let PipelineParts {
            store,
            gallery,
            policies,
            clock,
            snapshot,
        } = parts;
        let offset = cfg.utc_offset();
        let today = counters::today(&store, snapshot.as_deref(), clock.now(), offset)?;
        let shared = Arc::new(Shared {
            tally: Mutex::new(today.tally),
            rebuilding: Mutex::new(()),
            snapshot,
            counters_start: today.start,
            keys: ExactlyOnce::load(&store)?,
            admission: admission::Admission::for_deadline(
                cfg.deadline(),
                cfg.max_batch,
                clock.instant(),
            ),
            store,
            gallery,
            policies,
            stats: stats::PipelineStats::default(),
            clock,
            offset,
            face: FaceRules {
                model: cfg.model.clone(),
                dim: cfg.dim,
            },
            deadline: cfg.deadline(),
            busy_retry_ms: cfg.busy_retry_ms,
        });
        let batch = BatchPolicy::new(cfg.max_batch, Duration::from_millis(cfg.max_wait_ms));
        let threads = spawn_threads(&shared, cfg, batch)?;
        let pipeline = Self {
            shared,
            queue: RwLock::new(Some(threads.queue)),
            capacity: cfg.queue_capacity,
            threads: Mutex::new(threads.handles),
        };
        Ok((pipeline, today.committed))
    }

    /// Queues a job; a full or standing queue answers Busy at once.
    fn enqueue(&self, job: Job) {
        let queue = self.queue.read().unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = queue.as_ref() else {
            drop(queue);
            Self::refuse_shutting_down(&self.shared, job);
            return;
        };
        let depth = queue.len();
        if !self.shared.admission.admit(depth) {
            // A standing queue would hold this event near its deadline: refuse it now,
            // before it costs anything, rather than after its wait.
            self.refuse_busy(job, depth);
            return;
        }
        match queue.try_send(job) {
            Ok(()) => {
                self.shared.stats.submitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(job)) => self.refuse_busy(job, queue.len()),
            Err(TrySendError::Disconnected(job)) => Self::refuse_shutting_down(&self.shared, job),
        }
    }

    /// The `Busy` an event arriving now would get at the door (the queue stands and is deeper
    /// than admission lets pass), counted as a refusal; `None` if it would be queued. The
    /// server asks this from a request's frame header alone, so that while the pipeline
    /// sheds, a refusal costs neither reading nor decoding the event.
    pub(crate) fn refuse_at_door(&self) -> Option<Busy> {
        if !self.shared.admission.is_standing() {
            return None;
        }
        let (depth, capacity) = self.queue_fill();
        if self.shared.admission.admit(depth) {
            return None;
        }
        self.shared
            .stats
            .rejected_busy
            .fetch_add(1, Ordering::Relaxed);
        Some(self.shared.busy(depth, capacity))
    }

    /// Whether admission currently finds the queue standing (the pipeline is shedding).
    pub(crate) fn is_shedding(&self) -> bool {
        self.shared.admission.is_standing()
    }

    fn refuse_busy(&self, job: Job, depth: usize) {
        self.shared
            .stats
            .rejected_busy
            .fetch_add(1, Ordering::Relaxed);
        let busy = self.shared.busy(depth, self.capacity);
        self.shared.finish_unrecorded(job, Reply::Busy(busy));
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
        let queue = self.queue.read().unwrap_or_else(PoisonError::into_inner);
        (queue.as_ref().map_or(0, Sender::len), self.capacity)
    }

    /// Pipeline counters.
    /// A handle that rebuilds markets' counters ([`Shared::rebuild_markets`]), for a market
    /// directory that takes markets over while the pipeline runs.
    pub(crate) fn market_rebuilder(&self) -> MarketRebuilder {
        let shared = Arc::clone(&self.shared);
        Arc::new(move |markets| shared.rebuild_markets(markets))
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        let (depth, capacity) = self.queue_fill();
        StatsSnapshot {
            history: self.shared.store.history_counters(),
            registry: self.shared.store.registry_follow_counters(),
            policy_version: self.shared.policies.load().version().to_string(),
            counters_start: self.shared.counters_start.clone(),
            ..self.shared.stats.snapshot(depth, capacity)
        }
    }

    /// Stops taking events, lets the workers finish what is queued, waits for the last group
    /// commit, and joins every thread. Safe to call more than once and from several threads.
    pub(crate) fn shutdown(&self) {
        // Workers see the disconnect once the queue is empty. The write lock is held only to
        // take the sender, never while joining.
        let sender = self
            .queue
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(sender);
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The queue's sending side and the threads behind it.
struct Threads {
    queue: Sender<Job>,
    handles: Vec<JoinHandle<()>>,
}

fn spawn_threads(
    shared: &Arc<Shared>,
    cfg: &EngineConfig,
    batch: BatchPolicy,
) -> Result<Threads, PipelineError> {
    let writer = shared.store.entry_writer()?;
    let (queue_tx, queue_rx) = crossbeam_channel::bounded::<Job>(cfg.queue_capacity);
    // The hand-off to the committer holds at most one group: when commits fall behind for
    // long, workers wait, the queue fills, and events expire into Busy instead of piling up
    // between matching and the disk, where no deadline applies. A group is large enough
    // (commit_max) that one slow sync delays the events behind it rather than refusing them.
    let (commit_tx, commit_rx) = crossbeam_channel::bounded(cfg.commit_max);
    let committer = {
        let shared = Arc::clone(shared);
        let max = cfg.commit_max;
        std::thread::Builder::new()
            .name("gw-commit".into())
            .spawn(move || commit::run(&shared, &commit_rx, writer, max))?
    };
    let mut handles = Vec::with_capacity(cfg.worker_count() + 1);
    for i in 0..cfg.worker_count().max(1) {
        let shared = Arc::clone(shared);
        let rx = queue_rx.clone();
        let tx = commit_tx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("gw-match-{i}"))
                .spawn(move || worker::run(&shared, &rx, &tx, batch))?,
        );
    }
    handles.push(committer);
    Ok(Threads {
        queue: queue_tx,
        handles,
    })
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
    use gatewarden_protocol::GateId;

    use super::*;

    #[test]
    fn a_responder_frees_its_key_whether_it_replies_or_is_dropped() {
        let keys = ExactlyOnce::empty();
        let key = (GateId(3), 17);
        let (tx, rx) = oneshot::channel();
        Responder::new(tx, keys.claim(key).unwrap()).send(Reply::Busy(Busy { retry_after_ms: 5 }));
        assert!(matches!(rx.recv(), Ok(Reply::Busy(_))));
        assert!(keys.claim(key).is_some());
        // Dropped without a reply (a panic on the way): the submitter sees the loss and the
        // gate's retry is not refused as a duplicate.
        let (tx, rx) = oneshot::channel::<Reply>();
        drop(Responder::new(tx, keys.claim(key).unwrap()));
        assert!(rx.recv().is_err());
        assert!(keys.claim(key).is_some());
    }
}

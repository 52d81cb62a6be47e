//! A matcher worker: takes a micro-batch, matches every face in it (one batched 1:N search
//! for all identify events, per-subject scoring for verify events), runs the policy, and hands
//! each record to the committer. Any panic while deciding fails closed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gatewarden_protocol::{Credential, Event, Mode, SubjectId, UnixMillis, Verdict};

use super::commit::Decided;
use super::exactly_once::{self, Recorded};
use super::tally::Observation;
use super::{BatchPolicy, Job, Reply, Shared};
use crate::gallery::{GallerySnapshot, Identification};
use crate::policy::{self, CredentialLookup, DecisionInput, FaceResult, PolicyBook, PolicyVersion};
use crate::store::{EntryRecord, ModeKind};

/// The worker loop; returns when the queue is closed and drained.
pub(super) fn run(
    shared: &Shared,
    queue: &Receiver<Job>,
    commit: &Sender<Decided>,
    batch: BatchPolicy,
) {
    let mut jobs = Vec::with_capacity(batch.max_events);
    while let Ok(first) = queue.recv() {
        jobs.push(first);
        fill_batch(shared, queue, &mut jobs, batch);
        process(shared, std::mem::take(&mut jobs), commit);
        jobs.reserve(batch.max_events);
    }
}

/// Waits for more events until the batch is full or the first one has waited long enough,
/// then takes whatever is already queued (free company) up to the limit.
fn fill_batch(shared: &Shared, queue: &Receiver<Job>, jobs: &mut Vec<Job>, batch: BatchPolicy) {
    let first_at = shared.clock.instant();
    while let Some(wait) = batch.wait_for_more(jobs.len(), first_at, shared.clock.instant()) {
        match queue.recv_timeout(wait) {
            Ok(job) => jobs.push(job),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    while jobs.len() < batch.max_events {
        match queue.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

fn process(shared: &Shared, jobs: Vec<Job>, commit: &Sender<Decided>) {
    let started = shared.clock.instant();
    // The admission rule wants the smallest wait of each interval; a batch's smallest is its
    // newest event's, so one observation per batch carries it.
    if let Some(quickest) = jobs
        .iter()
        .map(|j| started.saturating_duration_since(j.enqueued))
        .min()
    {
        shared.admission.observe(quickest, started);
    }
    let (live, expired): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|j| j.deadline > started);
    for job in expired {
        // Waited past its deadline: a late verdict is worse than a quick retry.
        shared.stats.expired.fetch_add(1, Ordering::Relaxed);
        let busy = shared.busy(1, 1);
        shared.finish_unrecorded(job, Reply::Busy(busy));
    }
    let live = answer_recorded(shared, live);
    if live.is_empty() {
        return;
    }
    shared.stats.batch_size.record_value(live.len() as u64);
    for job in &live {
        shared
            .stats
            .queue_wait
            .record(started.saturating_duration_since(job.enqueued));
    }
    // Events that need no 1:N search (card + face, no face) are decided and sent to the
    // committer first, so they do not wait for the batch's gallery scan.
    let (search, quick): (Vec<Job>, Vec<Job>) = live.into_iter().partition(needs_search);
    for group in [quick, search] {
        if group.is_empty() {
            continue;
        }
        let t = shared.clock.instant();
        // One policy snapshot for the whole group: a reload swaps the book between groups,
        // never within one, so its version is the version of every verdict decided here.
        let policies = shared.policies.load();
        let (verdicts, decided) = decide_all(shared, &policies, &group);
        shared
            .stats
            .matching
            .record(shared.clock.instant().saturating_duration_since(t));
        // Verdicts that failed closed were not decided by the policy: they record none.
        let version = decided.then(|| policies.version());
        send_to_commit(group, verdicts, version, commit);
    }
}

/// Answers the events whose key the entry log already holds (a retry gets its recorded
/// verdict, a reused key `seq_reused`) and returns the rest, to be decided. Only keys at or
/// below their gate's high-water mark are looked up.
fn answer_recorded(shared: &Shared, jobs: Vec<Job>) -> Vec<Job> {
    let mut undecided = Vec::with_capacity(jobs.len());
    for job in jobs {
        if !job.may_be_recorded {
            undecided.push(job);
            continue;
        }
        let (gate, seq) = (job.event.gate, job.event.seq);
        match exactly_once::look_up(&shared.store, gate, seq, &job.identity) {
            Ok(Recorded::Nothing) => undecided.push(job),
            Ok(found) => {
                let reply = shared.settle_recorded(found, gate, seq);
                shared.finish_unrecorded(job, reply);
            }
            Err(e) => shared.finish_unrecorded(
                job,
                Shared::internal_error(format!(
                    "cannot read the entry log ({e}); retry with the same seq"
                )),
            ),
        }
    }
    undecided
}

/// Whether an event needs the 1:N gallery search (a face and no credential).
fn needs_search(job: &Job) -> bool {
    let by_face_alone = match &job.event.mode {
        Mode::Identify => true,
        Mode::SignIn { credential } => credential.is_none(),
        Mode::Verify { .. } => false,
    };
    by_face_alone && job.event.face.is_some()
}

fn send_to_commit(
    jobs: Vec<Job>,
    verdicts: Vec<Verdict>,
    policy: Option<&PolicyVersion>,
    commit: &Sender<Decided>,
) {
    for (job, verdict) in jobs.into_iter().zip(verdicts) {
        let record = EntryRecord {
            market: job.gate.market,
            zone: job.gate.zone,
            mode: ModeKind::from(&job.event.mode),
            direction: job.event.direction,
            captured_at: job.event.captured_at,
            fingerprint: job.identity.fingerprint,
            policy: policy.cloned(),
            verdict,
        };
        let decided = Decided {
            record,
            identity: job.identity,
            reply: job.reply,
            enqueued: job.enqueued,
        };
        if let Err(lost) = commit.send(decided) {
            // The committer is gone (only at shutdown after a crash of its thread): the event
            // is answered with an error, never silently dropped.
            lost.into_inner().reply.send(Shared::internal_error(
                "the entry log is unavailable; retry with the same seq".to_owned(),
            ));
        }
    }
}

/// What one event needs from the gallery.
#[derive(Clone, Copy, Debug)]
enum FaceNeed {
    None,
    Identify,
    Verify(SubjectId),
}

/// Decides every live job; a panic anywhere fails the affected events closed. The flag says
/// whether the policy decided them (false when they failed closed).
fn decide_all(shared: &Shared, policies: &PolicyBook, jobs: &[Job]) -> (Vec<Verdict>, bool) {
    let now = shared.clock.now();
    let attempt = catch_unwind(AssertUnwindSafe(|| {
        let snapshot = shared.gallery.snapshot();
        let lookups: Vec<CredentialLookup> = jobs
            .iter()
            .map(|j| lookup_credential(shared, &j.event))
            .collect();
        let needs: Vec<FaceNeed> = jobs
            .iter()
            .zip(&lookups)
            .map(|(j, l)| face_need(&j.event, *l))
            .collect();
        let identified = identify_batch(&snapshot, jobs, &needs);
        jobs.iter()
            .zip(lookups)
            .zip(needs.iter().zip(identified))
            .map(|((job, lookup), (need, ident))| {
                let face = face_result(&snapshot, &job.event, *need, ident);
                decide_one(shared, policies, job, lookup, face, now)
            })
            .collect::<Vec<_>>()
    }));
    match attempt {
        Ok(verdicts) => (verdicts, true),
        Err(_) => {
            // Verdicts decided before the panic were counted; none of them will be recorded.
            shared.resync_tally();
            shared
                .stats
                .internal_errors
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            let failed = jobs
                .iter()
                .map(|j| policy::internal_error(j.event.gate, j.event.seq, now, "matching failed"))
                .collect();
            (failed, false)
        }
    }
}

fn lookup_credential(shared: &Shared, event: &Event) -> CredentialLookup {
    let credential: Option<&Credential> = match &event.mode {
        Mode::Verify { credential } => Some(credential),
        Mode::SignIn { credential } => credential.as_ref(),
        Mode::Identify => None,
    };
    match credential {
        None => CredentialLookup::NotPresented,
        Some(c) => shared
            .store
            .resolve_credential(c)
            .map_or(CredentialLookup::Unknown, CredentialLookup::Resolved),
    }
}

fn face_need(event: &Event, lookup: CredentialLookup) -> FaceNeed {
    if event.face.is_none() {
        return FaceNeed::None;
    }
    match lookup {
        CredentialLookup::Resolved(subject) => FaceNeed::Verify(subject),
        CredentialLookup::NotPresented => FaceNeed::Identify,
        // An unknown card is refused whatever the face says.
        _ => FaceNeed::None,
    }
}

/// One batched 1:N search for every identify event; results in job order (None elsewhere).
fn identify_batch(
    snapshot: &GallerySnapshot,
    jobs: &[Job],
    needs: &[FaceNeed],
) -> Vec<Option<Identification>> {
    let queries: Vec<&[f32]> = jobs
        .iter()
        .zip(needs)
        .filter(|(_, n)| matches!(n, FaceNeed::Identify))
        .filter_map(|(j, _)| j.event.face.as_ref().map(|f| f.embedding.as_slice()))
        .collect();
    let mut found = if queries.is_empty() {
        Vec::new()
    } else {
        snapshot.identify_batch(&queries)
    }
    .into_iter();
    needs
        .iter()
        .map(|n| match n {
            FaceNeed::Identify => found.next(),
            _ => None,
        })
        .collect()
}

fn face_result(
    snapshot: &GallerySnapshot,
    event: &Event,
    need: FaceNeed,
    identified: Option<Identification>,
) -> FaceResult {
    match (need, &event.face, identified) {
        (FaceNeed::Verify(subject), Some(face), _) => FaceResult::Verified {
            subject,
            score: snapshot.verify(subject, &face.embedding),
        },
        (FaceNeed::Identify, _, Some(id)) => FaceResult::Identified {
            best: id.best,
            runner_up: id.runner_up,
        },
        _ => FaceResult::NoFace,
    }
}

/// The person the verdict is about: the credential's holder, else the best face match.
fn candidate(lookup: CredentialLookup, face: &FaceResult) -> Option<SubjectId> {
    match (lookup, face) {
        (CredentialLookup::Resolved(subject), _) => Some(subject),
        (_, FaceResult::Identified { best, .. }) => best.map(|(s, _)| s),
        _ => None,
    }
}

/// Runs the policy for one event under the tally lock, so that two events of the same person
/// (anti-passback, frequency) or market (occupancy) are decided one after the other.
fn decide_one(
    shared: &Shared,
    policies: &PolicyBook,
    job: &Job,
    lookup: CredentialLookup,
    face: FaceResult,
    now: UnixMillis,
) -> Verdict {
    let subject_id = candidate(lookup, &face);
    let subject = subject_id.and_then(|s| shared.store.subject(s));
    let health = subject_id.and_then(|s| shared.store.health(s));
    let market = job.gate.market;
    let mut tally = shared.tally.lock().unwrap_or_else(PoisonError::into_inner);
    let person = subject_id
        .map(|s| tally.person(s, market, now, shared.offset))
        .unwrap_or_default();
    let market_state = tally.market(market, now, shared.offset);
    let input = DecisionInput {
        event: &job.event,
        gate: &job.gate,
        credential: lookup,
        face,
        subject: subject.as_deref(),
        health: health.as_ref(),
        person,
        market: market_state,
        utc_offset: shared.offset,
    };
    let policy = policies.for_market(market);
    let verdict = catch_unwind(AssertUnwindSafe(|| policy::decide(&input, policy, now)))
        .unwrap_or_else(|_| {
            shared.stats.internal_errors.fetch_add(1, Ordering::Relaxed);
            policy::internal_error(job.event.gate, job.event.seq, now, "policy failed")
        });
    tally.observe(
        &Observation {
            subject: verdict.subject,
            market,
            mode: ModeKind::from(&job.event.mode),
            direction: job.event.direction,
            decision: verdict.decision,
            at: now,
        },
        shared.offset,
    );
    verdict
}

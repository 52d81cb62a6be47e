//! The registry follower: on the PostgreSQL store, each node's thread that carries registry
//! writes made at any node (enrolments, health records, revocations and reinstatements,
//! gates) into this node's cache and gallery.
//!
//! - It has its own thread (`gw-follow`) and its own connection, which `LISTEN`s for the
//!   change notifications (`[engine] registry_notify`).
//! - It reads the change log (`store::pg::changes`) when a notification wakes it, and in any
//!   case every `[engine] registry_poll_ms` (500 ms by default): notifications are not
//!   durable (one sent while the connection was down is lost), the poll is the guarantee. So a
//!   write at any node reaches this node's verdicts within the poll interval plus one read,
//!   notifications or not.
//! - Each round rereads the subjects, credentials, health records and gates the changes name
//!   into the cache, and loads the templates added since into the live gallery (whose inserts
//!   are idempotent per template id). Changes this node made itself are applied again, which
//!   rereads what it already holds.
//! - When the database goes away it logs a warning, waits (100 ms, doubling to 5 s) and
//!   reconnects; the watermark is the store's, so the new connection reads on from where the
//!   old one stopped and nothing written meanwhile is missed.
//!
//! Logs name counts and ids of the change log only: never a record, never an embedding.
//! SQLite stores have no follower: one node holds the registry.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use gatewarden_protocol::SubjectId;

use crate::clock::{Clock, SystemClock};
use crate::gallery::LiveGallery;
use crate::store::{ChangeFeed, Store, StoreError};

/// How often the waiting thread looks whether it is asked to stop.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// The first wait before reconnecting; doubled on each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Templates loaded into the gallery per insert.
const TEMPLATE_CHUNK: usize = 1024;

/// What the follower follows into.
pub(crate) struct FollowParts {
    pub(crate) store: Arc<Store>,
    pub(crate) gallery: Arc<LiveGallery>,
    /// Read the change log at least this often.
    pub(crate) poll: Duration,
    /// Also wake on change notifications.
    pub(crate) listen: bool,
}

/// The running follower; stops (and is joined) on [`Follower::stop`] or drop.
pub(crate) struct Follower {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts the follower when the store has a change log to follow (PostgreSQL); `None`
    /// otherwise.
    pub(crate) fn start(parts: FollowParts) -> std::io::Result<Option<Self>> {
        if parts.store.registry_follow_counters().is_none() {
            return Ok(None);
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("gw-follow".into())
            .spawn(move || run(&parts, &stop_rx))?;
        Ok(Some(Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        }))
    }

    /// Stops the thread after the round it is in, if any, and joins it.
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take()); // seen at the next stop check
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a follow session ended.
enum Ended {
    Stopped,
    Failed(StoreError),
}

fn run(parts: &FollowParts, stop: &Receiver<()>) {
    let mut backoff = FIRST_BACKOFF;
    // Templates read from the change log but not yet loaded (a failure in between): loaded
    // first by the next session, since the watermark has moved past their change.
    let mut templates_after = None;
    loop {
        let mut connected = false;
        match follow(parts, stop, &mut connected, &mut templates_after) {
            Ended::Stopped => return,
            Ended::Failed(e) => {
                if connected {
                    backoff = FIRST_BACKOFF;
                }
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "registry follower lost the database; reconnecting"
                );
            }
        }
        match stop.recv_timeout(backoff) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The monotonic time. The follower's waits are real waits on a connection (its notifications
/// and the poll), so it reads the system's clock, not the engine's (which tests may hold
/// still).
fn now() -> Instant {
    SystemClock.instant()
}

/// One connection's life: catch up, then wait for notifications or the poll and apply.
fn follow(
    parts: &FollowParts,
    stop: &Receiver<()>,
    connected: &mut bool,
    templates_after: &mut Option<u64>,
) -> Ended {
    let mut feed = match parts.store.change_feed(parts.listen) {
        Ok(Some(feed)) => feed,
        Ok(None) => return Ended::Stopped,
        Err(e) => return Ended::Failed(e),
    };
    tracing::info!(
        listen = parts.listen,
        poll_ms = parts.poll.as_millis() as u64,
        "registry follower connected"
    );
    let mut next_poll = now();
    loop {
        if now() >= next_poll {
            if let Err(e) = apply(parts, &mut feed, templates_after) {
                return Ended::Failed(e);
            }
            // Only a session that applied something resets the back-off: a change that fails
            // every time after connecting must not reconnect ten times a second.
            *connected = true;
            next_poll = now() + parts.poll;
        }
        let wait = next_poll.saturating_duration_since(now()).min(STOP_CHECK);
        match feed.wait(wait) {
            // A change was committed somewhere: read it now.
            Ok(true) => next_poll = now(),
            Ok(false) => {}
            Err(e) => return Ended::Failed(e),
        }
        match stop.try_recv() {
            Err(TryRecvError::Empty) => {}
            Ok(()) | Err(TryRecvError::Disconnected) => return Ended::Stopped,
        }
    }
}

/// Reads and applies every change above the watermark: the cache in the store, the templates
/// here.
fn apply(
    parts: &FollowParts,
    feed: &mut ChangeFeed,
    templates_after: &mut Option<u64>,
) -> Result<(), StoreError> {
    let applied = parts.store.apply_changes(feed)?;
    if let Some(after) = applied.templates_after {
        *templates_after = Some(templates_after.map_or(after, |t| t.min(after)));
    }
    if let Some(after) = *templates_after {
        load_templates_after(parts, after)?;
        *templates_after = None;
    }
    if applied.changes > 0 {
        tracing::debug!(changes = applied.changes, "registry changes applied");
    }
    Ok(())
}

/// Puts the templates with ids above `after` into the gallery (those it has are skipped by
/// the gallery itself). A template the gallery refuses (wrong dimension: a node with another
/// model wrote it) is logged by id and left out, as at start-up it would stop the engine.
fn load_templates_after(parts: &FollowParts, after: u64) -> Result<(), StoreError> {
    let mut pending: Vec<(u64, SubjectId, Vec<f32>)> = Vec::with_capacity(TEMPLATE_CHUNK);
    let flush = |pending: &mut Vec<(u64, SubjectId, Vec<f32>)>| {
        let rows: Vec<(u64, SubjectId, &[f32])> = pending
            .iter()
            .map(|(id, s, v)| (*id, *s, v.as_slice()))
            .collect();
        if let Err(e) = parts.gallery.insert_batch(&rows) {
            // One by one, so that one bad template does not keep the others out.
            for row in &rows {
                if let Err(e) = parts.gallery.insert_batch(std::slice::from_ref(row)) {
                    tracing::error!(template = row.0, error = %e, "a template from the registry was refused by the gallery");
                }
            }
            tracing::warn!(error = %e, "a batch of templates from the registry was loaded one by one");
        }
        pending.clear();
    };
    parts
        .store
        .for_each_template_since(after, |id, subject, v| {
            pending.push((id, subject, v.to_vec()));
            if pending.len() == TEMPLATE_CHUNK {
                flush(&mut pending);
            }
        })?;
    flush(&mut pending);
    Ok(())
}

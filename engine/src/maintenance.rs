//! The engine's maintenance thread: periodic work that must not run on the event path.
//!
//! - **Checkpoints** of the entry log, every `checkpoint_interval_ms`: the entry writer never
//!   checkpoints (a checkpoint on the commit path was most of the slowdown of a long history),
//!   so this thread copies the write-ahead log into the partition from its own connection,
//!   passively (without waiting for the writer), then restarts the log, holding the next
//!   commit back while it copies and syncs the last few hundred frames (tens of
//!   milliseconds; more when the disk is slow to sync), so that the log's size stays bounded.
//! - **Retention**, at start-up and then hourly: entry partitions older than
//!   `[retention] entry_days` are deleted as whole files.
//! - **Today's committed counters**, every `counters_snapshot_ms` (SQLite store): the
//!   passages recorded since the last time are read into the thread's own copy of the
//!   counters, which is saved to `store/counters.snap`, so that a restart reads only what was
//!   recorded after it (pipeline/counters.rs).
//! - **Gallery compaction**, checked every `maintenance_interval_ms`: the live gallery's
//!   in-memory delta (online enrolments) and its tombstones are folded into a segment file
//!   once they reach `compact_after` rows. Without it every online enrolment would stay in
//!   memory for good: memory grows, each restart replays them, every 1:1 verification scans
//!   them.
//!
//! The thread wakes every checkpoint interval, or at once when asked to stop; a task that
//! fails is logged and tried again on the next wake, never fatal.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::clock::Clock;
use crate::gallery::LiveGallery;
use crate::pipeline::counters::CommittedCounters;
use crate::store::{Checkpointer, Store};

/// How often retention looks for expired partitions (and once at start-up).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the maintenance thread looks after.
pub(crate) struct MaintenanceParts {
    pub(crate) gallery: Arc<LiveGallery>,
    pub(crate) store: Arc<Store>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Fold the delta once it holds this many rows.
    pub(crate) compact_after: usize,
    /// How often to look at the gallery's delta.
    pub(crate) interval: Duration,
    /// How often to checkpoint the entry log.
    pub(crate) checkpoint_interval: Duration,
    /// Days of entries kept.
    pub(crate) entry_days: u32,
    /// Today's committed counters and their snapshot, if kept.
    pub(crate) counters: Option<CountersUpkeep>,
}

/// The committed counters the thread keeps, and where and how often it saves them.
pub(crate) struct CountersUpkeep {
    pub(crate) counters: CommittedCounters,
    pub(crate) path: std::path::PathBuf,
    pub(crate) every: Duration,
    /// The position ([`CommittedCounters::position`]) of the last save: a quiet site does not
    /// rewrite the same file every few seconds.
    pub(crate) saved: Option<(i64, crate::store::PassageMarks)>,
}

/// The running maintenance thread; stops (and is joined) on [`Maintenance::stop`] or drop.
pub(crate) struct Maintenance {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts the thread.
    pub(crate) fn start(parts: MaintenanceParts) -> std::io::Result<Self> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("gw-maintain".into())
            .spawn(move || run(parts, &stop_rx))?;
        Ok(Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread after the task it is running, if any, and joins it.
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take()); // the thread sees the disconnect at once
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(mut parts: MaintenanceParts, stop: &Receiver<()>) {
    let mut counters = parts.counters.take();
    let parts = &parts;
    let mut checkpointer = Checkpointer::default();
    let start = parts.clock.instant();
    let (mut next_prune, mut next_compact) = (start, start + parts.interval);
    let mut next_snapshot = start + counters.as_ref().map_or(Duration::ZERO, |c| c.every);
    // (`every` is at most a day, engine.rs: these sums cannot overflow.)
    loop {
        let now = parts.clock.instant();
        if now >= next_prune {
            prune(parts);
            next_prune = now + PRUNE_EVERY;
        }
        checkpoint(parts, &mut checkpointer);
        if let Some(upkeep) = counters.as_mut().filter(|_| now >= next_snapshot) {
            save_counters(parts, upkeep);
            next_snapshot = now + upkeep.every;
        }
        if now >= next_compact {
            compact_if_due(parts);
            next_compact = now + parts.interval;
        }
        match stop.recv_timeout(parts.checkpoint_interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // The engine stops this thread after its pipeline has drained: a last save makes the next
    // start read nothing after the snapshot.
    if let Some(upkeep) = counters.as_mut() {
        save_counters(parts, upkeep);
    }
}

/// Deletes the expired entry partitions (each is logged by the store).
fn prune(parts: &MaintenanceParts) {
    if let Err(e) = parts
        .store
        .prune_entries(parts.clock.now(), parts.entry_days)
    {
        tracing::error!(error = %e, "retention failed; will retry");
    }
}

fn checkpoint(parts: &MaintenanceParts, checkpointer: &mut Checkpointer) {
    if let Err(e) = parts
        .store
        .checkpoint_entries(checkpointer, parts.clock.now())
    {
        // A new connection next time: the old one may be what failed.
        *checkpointer = Checkpointer::default();
        tracing::error!(error = %e, "entry log checkpoint failed; will retry");
    }
}

/// Reads what was recorded since the last time into the committed counters and saves them,
/// unless nothing was. A failure is logged and tried again at the next pass (a failed reading
/// makes the counters start over from the whole day then); meanwhile a restart reads more of
/// the day after an older snapshot, nothing worse.
fn save_counters(parts: &MaintenanceParts, upkeep: &mut CountersUpkeep) {
    let saved = upkeep
        .counters
        .catch_up(&parts.store, parts.clock.now())
        .and_then(|_| {
            let (day, marks) = upkeep.counters.position();
            if upkeep
                .saved
                .as_ref()
                .is_some_and(|(saved_day, saved_marks)| *saved_day == day && saved_marks == marks)
            {
                return Ok(());
            }
            upkeep.counters.save(&upkeep.path)?;
            upkeep.saved = Some((day, marks.clone()));
            Ok(())
        });
    if let Err(e) = saved {
        tracing::error!(error = %e, "cannot save today's counters; will retry");
    }
}

/// Compacts the gallery when its delta has reached the threshold. (Tombstones are folded by
/// the same compaction; they do not trigger one, since a segment keeps tombstones below its
/// rewrite ratio and would trigger it again and again.)
fn compact_if_due(parts: &MaintenanceParts) {
    let pending = parts.gallery.stats().delta_rows;
    if pending < parts.compact_after {
        return;
    }
    match parts.gallery.compact() {
        Ok(done) => tracing::info!(
            rows_written = done.rows_written,
            rows_dropped = done.rows_dropped,
            segments = done.segments_after,
            bytes = done.bytes_written,
            "gallery compacted"
        ),
        Err(e) => tracing::error!(error = %e, pending, "gallery compaction failed; will retry"),
    }
}

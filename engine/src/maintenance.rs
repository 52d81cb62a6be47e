//! The engine's maintenance thread: periodic work that must not run on the event path.
//!
//! Today it folds the live gallery's in-memory delta (online enrolments) and its tombstones
//! into a segment file once they reach `compact_after` rows. Without it, every online
//! enrolment would stay in memory for good: memory grows, each restart replays them from the
//! store, and every 1:1 verification scans them. Later periodic work (WAL checkpoints,
//! retention) belongs here too.
//!
//! The thread wakes every `maintenance_interval_ms`, or at once when asked to stop; a task
//! that fails is logged and tried again on the next wake, never fatal.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::gallery::LiveGallery;

/// What the maintenance thread looks after.
pub(crate) struct MaintenanceParts {
    pub(crate) gallery: Arc<LiveGallery>,
    /// Fold the delta once it holds this many rows.
    pub(crate) compact_after: usize,
    pub(crate) interval: Duration,
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
            .spawn(move || run(&parts, &stop_rx))?;
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

fn run(parts: &MaintenanceParts, stop: &Receiver<()>) {
    loop {
        match stop.recv_timeout(parts.interval) {
            Err(RecvTimeoutError::Timeout) => compact_if_due(parts),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
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

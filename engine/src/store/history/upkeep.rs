//! Keeping the history in shape while it is written: checkpoints (off the commit path),
//! retention (whole partitions deleted), and statistics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rusqlite::Connection;
use serde::Serialize;

use super::partition::{self, Day};
use super::{History, day_of};
use crate::clock::Clock;
use crate::store::schema::{self, Role};
use crate::store::{SqliteStore, StoreError};

/// A partition deleted by retention.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrunedPartition {
    /// Its UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// How many entries it held.
    pub entries: u64,
    /// How many bytes its files took.
    pub bytes: u64,
}

/// One partition in [`HistoryStats`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionStats {
    /// Its UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Entries in it.
    pub entries: u64,
    /// Bytes of its database file (indexes included).
    pub bytes: u64,
    /// Bytes of its write-ahead log.
    pub wal_bytes: u64,
}

/// What the history holds, as `gatewarden store stats` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryStats {
    /// Every partition, oldest first.
    pub partitions: Vec<PartitionStats>,
    /// Entries in all of them.
    pub entries: u64,
    /// Bytes of their database files.
    pub bytes: u64,
    /// Bytes on disk per entry, indexes and dictionaries included (`None` with no entries).
    pub bytes_per_entry: Option<f64>,
    /// Bytes of their write-ahead logs.
    pub wal_bytes: u64,
    /// The oldest day held.
    pub oldest_day: Option<String>,
    /// The newest day held.
    pub newest_day: Option<String>,
}

/// The longest a checkpoint waits for readers of an older snapshot (and, meanwhile, holds
/// new commits back) before it gives up until the next pass.
const CHECKPOINT_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Passive rounds in one pass, at most; the restart follows the last of them regardless, so
/// that the log starts over every pass and commits keep overwriting the file it already has.
/// A log that grows instead makes every commit's sync allocate, and slows it. Skipping the
/// restart while a reader held an older snapshot (to spare the gate its wait for that reader)
/// was tried and not kept: retrying gates' retries read the log, and in the one retry proof
/// run with it the 2x run collapsed (313,698 Busy), as runs with a growing log did.
const PASSIVE_ROUNDS: usize = 8;

/// The restart goes ahead after a passive round that found at most this many new frames (of
/// 4 KiB) to copy: such a round is short, so the writer appended about as few meanwhile, and
/// the restart holds commits back only while it copies and syncs those.
const RESTART_BACKLOG_FRAMES: i64 = 256;

/// The size of a file, 0 if it does not exist.
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

pub(crate) fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The first day retention keeps when it keeps `entry_days` days, today included.
pub(crate) fn first_kept_day(today: Day, entry_days: u32) -> Day {
    today - Day::from(entry_days.max(1)) + 1
}

impl History {
    /// Deletes every partition older than the `entry_days` days ending today (UTC), as whole
    /// files. Logs and counts each.
    ///
    /// # Errors
    /// File-system failures; partitions deleted before the failure stay deleted.
    pub(crate) fn prune(
        &self,
        today: Day,
        entry_days: u32,
    ) -> Result<Vec<PrunedPartition>, StoreError> {
        let keep_from = first_kept_day(today, entry_days);
        let expired: Vec<Day> = self
            .all()
            .iter()
            .map(|p| p.day)
            .filter(|d| *d < keep_from)
            .collect();
        let mut pruned = Vec::with_capacity(expired.len());
        for day in expired {
            let Some(part) = self.get(day) else { continue };
            // A count that fails must not keep expired personal data: delete it all the same.
            let entries = part.entry_count().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot count an expired partition; deleting it anyway");
                0
            });
            let files = [
                part.path.clone(),
                sidecar(&part.path, "-wal"),
                sidecar(&part.path, "-shm"),
            ];
            let bytes = files.iter().map(|f| file_len(f)).sum();
            // Under the commit gate, so that no writer commits into it while it goes; then
            // unregistered, so that no new query or lookup reaches it. Queries already reading
            // it finish on their open file.
            let gate = self
                .commit_gate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.unregister(day);
            drop(part);
            for f in &files {
                match std::fs::remove_file(f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(StoreError::Io {
                            path: f.clone(),
                            source,
                        });
                    }
                }
            }
            drop(gate);
            let day = crate::clock::format_day(day);
            tracing::info!(day, entries, bytes, "entry partition deleted by retention");
            self.counters
                .pruned_partitions
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .pruned_entries
                .fetch_add(entries, Ordering::Relaxed);
            pruned.push(PrunedPartition {
                day,
                entries,
                bytes,
            });
        }
        if !pruned.is_empty() {
            crate::store::fsutil::sync_dir(&self.dir)?;
        }
        Ok(pruned)
    }
}

/// The maintenance thread's checkpointing connections, one per partition with a log.
#[derive(Default)]
pub struct Checkpointer {
    conns: BTreeMap<Day, Connection>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("open_days", &self.conns.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What one checkpoint pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Partitions checkpointed.
    pub partitions: usize,
    /// Total log bytes before the pass.
    pub wal_bytes_before: u64,
    /// Total log bytes after it.
    pub wal_bytes_after: u64,
}

impl History {
    /// Checkpoints every partition that has a write-ahead log.
    ///
    /// The newest (the one being written) first gets passive checkpoints, which copy what
    /// they can without waiting for the writer or any reader. That alone never lets the log
    /// start over under steady load: by the time one finishes the writer has appended more,
    /// and SQLite restarts the log only once every frame is copied. So after the passive
    /// rounds (see `catch_up_and_restart`) a restart checkpoint copies the rest while holding
    /// new commits back (the history's commit gate) for that short while, and lets the
    /// writer's next commit start the log from the top. It waits at most `CHECKPOINT_WAIT`
    /// for readers of an older snapshot; if they are still there it gives up, and the next
    /// pass tries again. Older partitions are no longer written: their log is folded in and
    /// truncated to nothing, and their connection closed.
    fn checkpoint(
        &self,
        cp: &mut Checkpointer,
        newest: Day,
    ) -> Result<CheckpointReport, StoreError> {
        cp.conns.retain(|day, _| self.get(*day).is_some());
        let mut report = CheckpointReport::default();
        for part in self.all() {
            let wal = sidecar(&part.path, "-wal");
            let before = file_len(&wal);
            report.wal_bytes_before += before;
            if before == 0 {
                continue;
            }
            let conn = match cp.conns.entry(part.day) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let conn = schema::open_connection(&part.path, Role::Checkpointer)?;
                    conn.busy_timeout(CHECKPOINT_WAIT)
                        .map_err(|e| StoreError::from_sqlite(&part.path, "checkpointing", e))?;
                    v.insert(conn)
                }
            };
            if part.day >= newest {
                let held = catch_up_and_restart(conn, &part.path, &self.commit_gate)?;
                let held_us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
                self.counters
                    .restart_hold_max_us
                    .fetch_max(held_us, Ordering::Relaxed);
            } else {
                checkpoint_once(conn, &part.path, "TRUNCATE")?;
            }
            if part.day < newest {
                cp.conns.remove(&part.day);
            }
            report.partitions += 1;
            report.wal_bytes_after += file_len(&wal);
        }
        let c = &self.counters;
        c.checkpoints.fetch_add(1, Ordering::Relaxed);
        c.wal_bytes.store(report.wal_bytes_after, Ordering::Relaxed);
        c.wal_peak_bytes
            .fetch_max(report.wal_bytes_before, Ordering::Relaxed);
        Ok(report)
    }
}

/// Passive checkpoints (which never hold the writer back) until one finds little new to copy,
/// then a restart checkpoint behind the commit gate for the rest, so that commits wait only
/// for that rest to be copied and synced; returns how long they waited. A restart copies
/// what the writer appended during the last passive round, and syncs the file: the file's
/// pages are scattered, and on a virtual disk that sync took over 100 ms when the restart
/// followed a round of a whole second's log (issue 13: at 6,000 events a second, every pass
/// then stalled the commits long enough for the queue to stand and shed). After a round
/// that found only a few hundred new frames, the restart held commits back for tens of
/// milliseconds, more when the disk is slow to sync.
fn catch_up_and_restart(
    conn: &Connection,
    path: &Path,
    commit_gate: &std::sync::Mutex<()>,
) -> Result<std::time::Duration, StoreError> {
    let mut catch_up = CatchUp::default();
    for _ in 0..PASSIVE_ROUNDS {
        let (log, copied) = checkpoint_once(conn, path, "PASSIVE")?;
        if catch_up.round(log, copied) == Next::Restart {
            break;
        }
    }
    let _gate = commit_gate
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A measurement for /metrics, not a decision: the system's monotonic clock will do.
    let clock = crate::clock::SystemClock;
    let held = clock.instant();
    checkpoint_once(conn, path, "RESTART")?;
    Ok(clock.instant().saturating_duration_since(held))
}

/// What a pass does after a passive round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Another round: the last one gained on the writer, or a reader of an older snapshot
    /// kept it from copying the whole log (the next round may find the reader gone). After
    /// the pass's last round: the restart regardless, with what that round left.
    Round,
    /// The restart, now: the last round found little new to copy, or stopped gaining.
    Restart,
}

/// Judges passive rounds by what each found to copy beyond the previous one's copy: the
/// writer's appends while that round ran (the whole log, for the first round). The restart's
/// copy will find about as much as the last round took time.
#[derive(Debug)]
struct CatchUp {
    /// Frames copied by the previous round (0 before the first).
    copied_before: i64,
    /// Frames the previous round found (unbounded before the first).
    found_before: i64,
}

impl Default for CatchUp {
    fn default() -> Self {
        Self {
            copied_before: 0,
            found_before: i64::MAX,
        }
    }
}

impl CatchUp {
    /// A round reported `log` frames in the log, `copied` of them copied. Each round syncs the
    /// files, so a round never takes less than a sync; once rounds stop shrinking, more of them
    /// only add syncs, and the restart goes ahead with what the last one found. A log shorter
    /// than the last copy started over (the writer does that itself once every frame was
    /// copied and nobody reads the log): all of it is new.
    fn round(&mut self, log: i64, copied: i64) -> Next {
        let found = if log < self.copied_before {
            log
        } else {
            log - self.copied_before
        };
        let shrinking = found < self.found_before;
        self.copied_before = copied;
        self.found_before = found;
        if copied < log {
            Next::Round
        } else if found <= RESTART_BACKLOG_FRAMES || !shrinking {
            Next::Restart
        } else {
            Next::Round
        }
    }
}

/// One checkpoint; returns (frames in the log, frames copied). A checkpoint that could not
/// finish (readers in the way past `CHECKPOINT_WAIT`) is not an error: its row says busy, and
/// the next pass goes on.
fn checkpoint_once(conn: &Connection, path: &Path, mode: &str) -> Result<(i64, i64), StoreError> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
    .map_err(|e| StoreError::from_sqlite(path, "checkpointing", e))
}

/// Statistics of the partitions in `entries_dir`, read without opening the store (so that
/// `gatewarden store stats` works while the server runs).
///
/// # Errors
/// A partition that cannot be read.
pub fn history_stats_in(entries_dir: &Path) -> Result<HistoryStats, StoreError> {
    let mut files: Vec<(Day, PathBuf)> = Vec::new();
    match std::fs::read_dir(entries_dir) {
        Ok(dir) => {
            for entry in dir {
                let entry = entry.map_err(|source| StoreError::Io {
                    path: entries_dir.to_owned(),
                    source,
                })?;
                if let Some(day) = entry.file_name().to_str().and_then(partition::day_of_file) {
                    files.push((day, entry.path()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StoreError::Io {
                path: entries_dir.to_owned(),
                source,
            });
        }
    }
    files.sort();
    let mut partitions = Vec::with_capacity(files.len());
    for (day, path) in files {
        let part = partition::Partition::new(day, path);
        if let Some(stats) = partition_stats(&part)? {
            partitions.push(stats);
        }
    }
    Ok(summarise(partitions))
}

/// One partition's figures; `None` if retention deleted it since it was listed.
fn partition_stats(part: &partition::Partition) -> Result<Option<PartitionStats>, StoreError> {
    let entries = match part.entry_count() {
        Ok(n) => n,
        Err(_) if !part.path.exists() => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(PartitionStats {
        day: crate::clock::format_day(part.day),
        entries,
        bytes: file_len(&part.path),
        wal_bytes: file_len(&sidecar(&part.path, "-wal")),
    }))
}

pub(crate) fn summarise(partitions: Vec<PartitionStats>) -> HistoryStats {
    let entries = partitions.iter().map(|p| p.entries).sum();
    let bytes = partitions.iter().map(|p| p.bytes).sum();
    HistoryStats {
        entries,
        bytes,
        bytes_per_entry: (entries > 0).then(|| bytes as f64 / entries as f64),
        wal_bytes: partitions.iter().map(|p| p.wal_bytes).sum(),
        oldest_day: partitions.first().map(|p| p.day.clone()),
        newest_day: partitions.last().map(|p| p.day.clone()),
        partitions,
    }
}

/// The history's counters, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HistoryCounters {
    /// Partitions deleted by retention since start-up.
    pub pruned_partitions: u64,
    /// Entries in them.
    pub pruned_entries: u64,
    /// Checkpoint passes run.
    pub checkpoints: u64,
    /// Checkpoint passes that failed.
    pub checkpoint_failures: u64,
    /// Total write-ahead log bytes after the last pass.
    pub wal_bytes: u64,
    /// The largest total seen before a pass.
    pub wal_peak_bytes: u64,
    /// The longest a checkpoint held commits back (µs), while it made a log start over.
    pub restart_hold_max_us: u64,
}

impl SqliteStore {
    /// Deletes the entry partitions older than the `entry_days` days ending on `now`'s UTC day
    /// (today included): see `[retention] entry_days`.
    ///
    /// # Errors
    /// File-system failures; partitions deleted before the failure stay deleted.
    pub(crate) fn prune_entries(
        &self,
        now: gatewarden_protocol::UnixMillis,
        entry_days: u32,
    ) -> Result<Vec<PrunedPartition>, StoreError> {
        // Staff resolutions of escalations expire with the entries they resolve; always, so
        // that a partition that cannot be deleted does not keep them too.
        let keep_from = first_kept_day(day_of(now), entry_days);
        let cutoff =
            gatewarden_protocol::UnixMillis(u64::try_from(keep_from).unwrap_or(0) * super::DAY_MS);
        let resolutions = self.prune_resolutions(cutoff);
        let pruned = self.history.prune(day_of(now), entry_days)?;
        resolutions?;
        Ok(pruned)
    }

    /// One checkpoint pass over the partitions (the maintenance thread calls it; nothing on
    /// the commit path does).
    ///
    /// # Errors
    /// SQLite failures; counted, and the next pass tries again.
    pub(crate) fn checkpoint_entries(
        &self,
        cp: &mut Checkpointer,
        now: gatewarden_protocol::UnixMillis,
    ) -> Result<CheckpointReport, StoreError> {
        let result = self.history.checkpoint(cp, day_of(now));
        if result.is_err() {
            self.history
                .counters
                .checkpoint_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Entries per partition, bytes per entry, log sizes, oldest and newest day.
    ///
    /// # Errors
    /// A partition that cannot be read.
    pub(crate) fn history_stats(&self) -> Result<HistoryStats, StoreError> {
        let mut partitions = Vec::new();
        for part in self.history.all() {
            if let Some(stats) = partition_stats(&part)? {
                partitions.push(stats);
            }
        }
        Ok(summarise(partitions))
    }

    /// The history's counters since start-up.
    pub(crate) fn history_counters(&self) -> HistoryCounters {
        let c = &self.history.counters;
        HistoryCounters {
            pruned_partitions: c.pruned_partitions.load(Ordering::Relaxed),
            pruned_entries: c.pruned_entries.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            checkpoint_failures: c.checkpoint_failures.load(Ordering::Relaxed),
            wal_bytes: c.wal_bytes.load(Ordering::Relaxed),
            wal_peak_bytes: c.wal_peak_bytes.load(Ordering::Relaxed),
            restart_hold_max_us: c.restart_hold_max_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CatchUp, Next, RESTART_BACKLOG_FRAMES};

    #[test]
    fn a_short_first_round_restarts_at_once() {
        let mut c = CatchUp::default();
        let n = RESTART_BACKLOG_FRAMES;
        assert_eq!(c.round(n, n), Next::Restart);
    }

    #[test]
    fn a_long_backlog_restarts_after_a_round_that_found_little_new() {
        let mut c = CatchUp::default();
        // A second's log: long to copy, and the writer went on meanwhile.
        assert_eq!(c.round(30_000, 30_000), Next::Round);
        // It appended 3,000 frames during that round: still too many to copy behind the gate.
        assert_eq!(c.round(33_000, 33_000), Next::Round);
        // This round was short: the writer appended little meanwhile.
        assert_eq!(c.round(33_200, 33_200), Next::Restart);
    }

    #[test]
    fn rounds_that_stop_shrinking_restart_with_what_the_last_found() {
        let mut c = CatchUp::default();
        assert_eq!(c.round(30_000, 30_000), Next::Round);
        assert_eq!(c.round(31_000, 31_000), Next::Round);
        // Each round takes a sync, and the writer appends as much during it: more rounds
        // would only add syncs.
        assert_eq!(c.round(32_000, 32_000), Next::Restart);
    }

    #[test]
    fn a_round_a_reader_held_back_is_followed_by_another() {
        let mut c = CatchUp::default();
        assert_eq!(c.round(10_000, 4_000), Next::Round);
        let mut c = CatchUp::default();
        assert_eq!(c.round(30_000, 30_000), Next::Round);
        assert_eq!(c.round(30_100, 30_050), Next::Round);
    }

    #[test]
    fn a_log_that_started_over_is_new_from_its_first_frame() {
        let mut c = CatchUp::default();
        assert_eq!(c.round(10_000, 10_000), Next::Round);
        assert_eq!(c.round(40, 40), Next::Restart);
        let mut c = CatchUp::default();
        assert_eq!(c.round(10_000, 10_000), Next::Round);
        // Started over and already longer than the backlog rule allows.
        assert_eq!(c.round(5_000, 5_000), Next::Round);
    }
}

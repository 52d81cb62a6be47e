//! The entry history: one SQLite file per UTC day under `store/entries/`.
//!
//! ```text
//! DATA/store/entries/2026-12-03.db (+ -wal, -shm)   yesterday, sealed in practice
//! DATA/store/entries/2026-12-04.db (+ -wal, -shm)   today: the entry writer's only target
//! ```
//!
//! Why days in files of their own:
//! - the write path touches only today's small indexes, however long the history is: a
//!   record's cost does not grow with months of history;
//! - a query over a range opens only the days in it;
//! - retention deletes whole files: no `DELETE` of millions of rows, no free pages left
//!   holding personal data.
//!
//! Modules:
//! - `partition`: one day's file, its schema and its read connections;
//! - `record`: the compact record body (checks and screen, dictionary-coded);
//! - `writer`: the group-commit [`EntryWriter`](crate::store::EntryWriter) and the bulk loader;
//! - `upkeep`: checkpoints, retention, statistics;
//! - `archive`: reading past entries read-only (replay, calibration);
//! - `legacy`: moving the entries of a schema-2 store into partitions.
//!
//! The seq directory ([`SeqDirectory`]) says which days hold a gate's seq: it is loaded from
//! every partition's `gate_seqs` at open and kept up to date by the writer, so that looking
//! up a recorded `(gate, seq)` opens one partition, not every one.

pub(crate) mod archive;
pub(crate) mod legacy;
pub(crate) mod partition;
pub(crate) mod record;
pub(crate) mod upkeep;
pub(crate) mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use gatewarden_protocol::{GateId, UnixMillis};

use super::StoreError;
use super::fsutil;
use partition::{Day, Partition};

/// Name of the partition directory inside the store directory.
pub const ENTRIES_DIR: &str = "entries";

pub(crate) const DAY_MS: u64 = 86_400_000;

/// The UTC day of `t`.
pub(crate) fn day_of(t: UnixMillis) -> Day {
    (t.0 / DAY_MS) as Day
}

/// The partitions and the seq directory. Shared by the store, its entry writers and the
/// maintenance thread.
pub(crate) struct History {
    pub(crate) dir: PathBuf,
    parts: RwLock<BTreeMap<Day, Arc<Partition>>>,
    pub(crate) seqs: SeqDirectory,
    pub(crate) counters: Counters,
    /// Held by an entry writer for each transaction, and by the checkpointer while it makes
    /// the log start over (which needs a moment without a writer). Without it a writer that
    /// commits back to back would starve the restart, and the log would grow without end.
    pub(crate) commit_gate: Mutex<()>,
    /// Held while a writer opens (and maybe creates) a day's file: two writers creating the
    /// same new day at once would race on its schema and its switch to WAL.
    pub(crate) open_lock: Mutex<()>,
}

/// What the history did since start-up, for `/metrics`.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) pruned_partitions: AtomicU64,
    pub(crate) pruned_entries: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) checkpoint_failures: AtomicU64,
    /// The write-ahead logs' total size after the last checkpoint pass.
    pub(crate) wal_bytes: AtomicU64,
    /// The largest total the checkpoint pass has seen before checkpointing.
    pub(crate) wal_peak_bytes: AtomicU64,
    /// The longest a checkpoint held the commit gate to make a log start over (µs).
    pub(crate) restart_hold_max_us: AtomicU64,
}

impl History {
    /// Opens `dir` (creating it owner-only), checks every partition in it, and loads the seq
    /// directory.
    ///
    /// # Errors
    /// A partition that is not one (or is damaged), or file-system and SQLite failures.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        fsutil::create_private_dir(dir)?;
        let history = Self {
            dir: dir.to_owned(),
            parts: RwLock::new(BTreeMap::new()),
            seqs: SeqDirectory::default(),
            counters: Counters::default(),
            commit_gate: Mutex::new(()),
            open_lock: Mutex::new(()),
        };
        for (day, path) in partition_files(dir)? {
            crate::store::schema::check_file(&path)?;
            // Opening it for writing creates the schema of a file left empty by a crash, and
            // refuses a file that is not a partition.
            let conn =
                partition::open_for_writing(&path, crate::store::schema::Role::Checkpointer)?;
            let part = Arc::new(Partition::new(day, path));
            for (gate, min, max) in part.gate_seqs(&conn)? {
                history.seqs.note(GateId(gate), day, min, max);
            }
            drop(conn);
            history.write_parts().insert(day, part);
        }
        Ok(history)
    }

    /// The partition of `day`, if there is one.
    pub(crate) fn get(&self, day: Day) -> Option<Arc<Partition>> {
        self.read_parts().get(&day).cloned()
    }

    /// The partitions that may hold entries decided in `[since, until)`, oldest first.
    pub(crate) fn in_range(&self, since: UnixMillis, until: UnixMillis) -> Vec<Arc<Partition>> {
        if until.0 <= since.0 {
            return Vec::new();
        }
        let last = day_of(UnixMillis(until.0 - 1));
        self.read_parts()
            .range(day_of(since)..=last)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Every partition, oldest first.
    pub(crate) fn all(&self) -> Vec<Arc<Partition>> {
        self.read_parts().values().cloned().collect()
    }

    /// Whether any partition holds entries.
    pub(crate) fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Registers the partition of `day` once its file exists with its schema.
    pub(crate) fn register(&self, day: Day) -> Arc<Partition> {
        self.write_parts()
            .entry(day)
            .or_insert_with(|| Arc::new(Partition::new(day, self.path_of(day))))
            .clone()
    }

    /// Forgets the partition of `day` (before its files are deleted).
    pub(crate) fn unregister(&self, day: Day) -> Option<Arc<Partition>> {
        let removed = self.write_parts().remove(&day);
        self.seqs.forget(day);
        removed
    }

    /// Where the partition of `day` lives.
    pub(crate) fn path_of(&self, day: Day) -> PathBuf {
        self.dir.join(partition::file_name(day))
    }

    fn read_parts(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Day, Arc<Partition>>> {
        self.parts.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_parts(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Day, Arc<Partition>>> {
        self.parts.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The partition files in `dir`, by day. Other files are left alone, except the -wal and -shm
/// of a partition whose database file is gone (a prune interrupted by a crash), which are
/// deleted.
fn partition_files(dir: &Path) -> Result<Vec<(Day, PathBuf)>, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(day) = partition::day_of_file(name) {
            found.push((day, entry.path()));
        } else if let Some(db) = name
            .strip_suffix("-wal")
            .or_else(|| name.strip_suffix("-shm"))
            .filter(|db| partition::day_of_file(db).is_some())
            && !dir.join(db).exists()
        {
            orphans.push(entry.path());
        }
    }
    for path in orphans {
        std::fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
    }
    found.sort();
    Ok(found)
}

/// Which days hold which seqs of each gate. A gate's seqs rise over time, so a seq is almost
/// always in one day's range; after a counter reset it may be in several, and every one of
/// them is searched.
#[derive(Default)]
pub(crate) struct SeqDirectory {
    spans: Mutex<HashMap<GateId, Vec<SeqSpan>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SeqSpan {
    day: Day,
    min: u64,
    max: u64,
}

impl SeqDirectory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GateId, Vec<SeqSpan>>> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `day` holds seqs `min..=max` of `gate` (widening what it knew).
    pub(crate) fn note(&self, gate: GateId, day: Day, min: u64, max: u64) {
        let mut spans = self.lock();
        let list = spans.entry(gate).or_default();
        match list.iter_mut().find(|s| s.day == day) {
            Some(s) => {
                s.min = s.min.min(min);
                s.max = s.max.max(max);
            }
            None => {
                list.push(SeqSpan { day, min, max });
                list.sort_by_key(|s| s.day);
            }
        }
    }

    /// The days whose range of `gate` holds `seq`, newest first.
    pub(crate) fn days_holding(&self, gate: GateId, seq: u64) -> Vec<Day> {
        self.lock().get(&gate).map_or_else(Vec::new, |list| {
            list.iter()
                .rev()
                .filter(|s| (s.min..=s.max).contains(&seq))
                .map(|s| s.day)
                .collect()
        })
    }

    /// Every gate's highest recorded seq.
    pub(crate) fn max_per_gate(&self) -> Vec<(GateId, u64)> {
        self.lock()
            .iter()
            .filter_map(|(gate, list)| list.iter().map(|s| s.max).max().map(|m| (*gate, m)))
            .collect()
    }

    fn forget(&self, day: Day) {
        let mut spans = self.lock();
        spans.retain(|_, list| {
            list.retain(|s| s.day != day);
            !list.is_empty()
        });
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod history_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seq_directory_finds_every_day_holding_a_seq() {
        let d = SeqDirectory::default();
        let g = GateId(7);
        d.note(g, 10, 1, 100);
        d.note(g, 11, 101, 250);
        d.note(g, 11, 90, 90); // a late retry recorded after midnight
        d.note(g, 12, 1, 5); // the gate's counter was reset
        assert_eq!(d.days_holding(g, 3), vec![12, 10]);
        assert_eq!(d.days_holding(g, 95), vec![11, 10]);
        assert_eq!(d.days_holding(g, 200), vec![11]);
        assert_eq!(d.days_holding(g, 251), Vec::<Day>::new());
        assert_eq!(d.days_holding(GateId(8), 1), Vec::<Day>::new());
        assert_eq!(d.max_per_gate(), vec![(g, 250)]);
        d.forget(11);
        assert_eq!(d.max_per_gate(), vec![(g, 100)]);
        d.forget(10);
        d.forget(12);
        assert!(d.is_empty());
    }

    #[test]
    fn days_are_utc() {
        assert_eq!(day_of(UnixMillis(0)), 0);
        assert_eq!(day_of(UnixMillis(DAY_MS - 1)), 0);
        assert_eq!(day_of(UnixMillis(DAY_MS)), 1);
        assert_eq!(partition::file_name(20_426), "2025-12-04.db");
        assert_eq!(partition::day_of_file("2025-12-04.db"), Some(20_426));
        assert_eq!(partition::day_of_file("2025-12-04.db-wal"), None);
        assert_eq!(partition::day_of_file("notes.db"), None);
        assert_eq!(
            partition::day_of_file("2025-12-4.db"),
            None,
            "not canonical"
        );
        assert_eq!(
            partition::day_of_file("02025-12-04.db"),
            None,
            "not canonical"
        );
    }
}

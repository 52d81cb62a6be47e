//! Today's counters as the entry log has them, and their snapshot, `store/counters.snap`.
//!
//! Start-up used to rebuild today's counters (tally.rs) from every passage of the day before
//! the server listened: O(the day's entries), 5.25 s at 12.1 million entries on the 2-core
//! box, and each second of it also held back every gate of a restart's reconnect storm. Now the
//! maintenance thread keeps a second copy of the counters built from committed passages only,
//! reads just the rows recorded since its last reading ([`Store::for_each_passage_after`]:
//! the day files by row id, from a mark per file), and saves it every
//! `[engine] counters_snapshot_ms`. Start-up reads the snapshot, then the rows after its
//! marks: O(the entries of the last few seconds).
//!
//! Why the snapshot can be trusted:
//! - it holds what the log held up to its marks, never a decision that has not committed
//!   (the live counters move when a verdict is decided, before its commit, so they cannot be
//!   saved as they are);
//! - it is used only when it is whole (its CRC-32 matches), of today's local day under the
//!   same UTC offset, and every mark's row is still in its day file with the same
//!   `(gate, seq)`; otherwise start-up reads the whole day, as before, and says why;
//! - it is written to a temporary file that is renamed over the old one, owner-only (it says
//!   who is inside). It is not synced: a sync every few seconds would compete with the commits'
//!   own. After a power cut it may be older than the log, which is harmless (a snapshot is
//!   right up to its marks, and only committed, hence synced, rows are behind them; the rows
//!   after them are read), or torn, which its checksum catches.
//!
//! Equal to a whole-day reading, which counts a local day's two UTC day files one after the
//! other: should a file gain rows after a later file already has a mark (an event decided just
//! before UTC midnight that committed after the next UTC day's first; a clock stepped back; a
//! bulk load into a stopped site), the counters start over from the whole day. So do they
//! when a marked file no longer holds its mark (retention deleted it, or it was replaced), and
//! after a failed reading, which may have counted part of a file.
//!
//! On PostgreSQL there are no marks (ids of several nodes commit out of order), no snapshot,
//! and start-up reads the day's passages as before.
//!
//! File format, little-endian: the magic `GWCNTR01`, the local day (`i64`), the UTC offset in
//! minutes (`i32`), the marks (a `u32` count, then UTC day, row id, gate and seq, each `i64`),
//! the counters ([`Tally::encode`]), and the CRC-32 of everything before it (`u32`).

use std::io::Write;
use std::path::{Path, PathBuf};

use gatewarden_protocol::UnixMillis;

use super::stats::CountersStart;
use super::tally::{Tally, take};
use crate::clock::UtcOffset;
use crate::store::{PassageMark, PassageMarks, Store, StoreError};

/// The snapshot's file name, in the store directory.
pub(crate) const SNAPSHOT_FILE: &str = "counters.snap";

const MAGIC: &[u8; 8] = b"GWCNTR01";

/// A larger file is not read: 17 bytes per person and market visited today, so a gigabyte is
/// some 60 million, far beyond any site's day.
const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// Why a start read the whole day when there was no snapshot to read.
const NO_SNAPSHOT: &str = "no snapshot yet";

/// Bytes of one mark: UTC day, row id, gate, seq.
const MARK_BYTES: usize = 4 * 8;

/// Today's counters built from committed passages, and where in each day file they stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommittedCounters {
    tally: Tally,
    marks: PassageMarks,
    /// The local day the counters are of.
    day: i64,
    offset: UtcOffset,
}

/// How [`CommittedCounters::load`] got today's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// From the snapshot, and the passages recorded after it.
    Snapshot {
        /// Passages read after the snapshot's marks (all of the day's, if the reading found
        /// rows committed out of order and started over).
        passages_after: u64,
    },
    /// From every passage of the day.
    Rebuilt {
        /// Why the snapshot was not used.
        why: String,
        /// Passages read.
        passages: u64,
    },
}

impl CommittedCounters {
    /// No counters yet, for the local day of `now`.
    fn empty(now: UnixMillis, offset: UtcOffset) -> Self {
        Self {
            tally: Tally::default(),
            marks: PassageMarks::new(),
            day: offset.day_of(now),
            offset,
        }
    }

    /// Today's counters as the entry log has them: the snapshot at `snapshot`, if it is
    /// usable, and the passages recorded after it; otherwise every passage of the day.
    ///
    /// # Errors
    /// A store failure while reading passages (a snapshot that cannot be used is not an
    /// error: it is read around, and [`Origin::Rebuilt`] says why).
    pub(crate) fn load(
        store: &Store,
        snapshot: &Path,
        now: UnixMillis,
        offset: UtcOffset,
    ) -> Result<(Self, Origin), StoreError> {
        match Self::read(store, snapshot, now, offset) {
            Ok(mut counters) => {
                let passages_after = counters.catch_up(store, now)?;
                Ok((counters, Origin::Snapshot { passages_after }))
            }
            Err(why) => {
                let mut counters = Self::empty(now, offset);
                let passages = counters.catch_up(store, now)?;
                Ok((counters, Origin::Rebuilt { why, passages }))
            }
        }
    }

    /// The snapshot at `path` if it can be used today; otherwise why not.
    fn read(
        store: &Store,
        path: &Path,
        now: UnixMillis,
        offset: UtcOffset,
    ) -> Result<Self, String> {
        let bytes = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NO_SNAPSHOT.to_owned());
            }
            Ok(meta) if meta.len() > MAX_SNAPSHOT_BYTES => {
                return Err("the snapshot is larger than any this version writes".to_owned());
            }
            Ok(_) => std::fs::read(path),
            Err(e) => Err(e),
        }
        .map_err(|e| format!("{}: {e}", path.display()))?;
        let counters = Self::decode(&bytes).ok_or("the snapshot is damaged")?;
        if counters.offset != offset {
            return Err("the snapshot is of another UTC offset".to_owned());
        }
        if counters.day != offset.day_of(now) {
            return Err("the snapshot is of another day".to_owned());
        }
        match counters.marks_hold(store) {
            Ok(true) => Ok(counters),
            Ok(false) => Err("a day file changed since the snapshot".to_owned()),
            Err(e) => Err(format!("cannot check the snapshot's marks: {e}")),
        }
    }

    /// Reads the passages recorded since the last reading into the counters. Starts over from
    /// the whole day when the local day has changed, when a marked day file no longer holds
    /// its mark, or when the reading found rows committed out of the order a whole-day reading
    /// counts them in (module docs). Returns how many passages it read.
    ///
    /// # Errors
    /// A store failure. The counters then start over at the next call: the failed reading may
    /// have counted part of a file whose mark did not move.
    pub(crate) fn catch_up(&mut self, store: &Store, now: UnixMillis) -> Result<u64, StoreError> {
        let fresh = Self::empty(now, self.offset);
        if self.day != fresh.day || !self.marks_hold(store)? {
            *self = fresh.clone();
        }
        let before = self.marks.clone();
        let mut read = self.read_after_marks(store, now);
        if read.is_ok() && !committed_in_order(&before, &self.marks) {
            *self = fresh.clone();
            read = self.read_after_marks(store, now);
        }
        if read.is_err() {
            *self = fresh;
        }
        read
    }

    fn marks_hold(&self, store: &Store) -> Result<bool, StoreError> {
        for (&day, mark) in &self.marks {
            if !store.passage_mark_holds(day, mark)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn read_after_marks(&mut self, store: &Store, now: UnixMillis) -> Result<u64, StoreError> {
        let (since, _) = self.offset.day_bounds(now);
        let (tally, offset) = (&mut self.tally, self.offset);
        let mut read = 0;
        store.for_each_passage_after(since, &mut self.marks, |p| {
            tally.observe_passage(p, offset);
            read += 1;
        })?;
        Ok(read)
    }

    /// The local day of the counters, and where in each day file they stop: what a save
    /// would write besides the counters, which follow from them.
    pub(crate) fn position(&self) -> (i64, &PassageMarks) {
        (self.day, &self.marks)
    }

    /// The counters.
    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Writes the snapshot to `path`: a temporary file beside it (owner-only), renamed over
    /// it. Not synced (see the module docs).
    ///
    /// # Errors
    /// File-system failures; the previous snapshot, if any, is then left as it was.
    pub(crate) fn save(&self, path: &Path) -> Result<(), StoreError> {
        let io = |e| StoreError::Io {
            path: path.to_owned(),
            source: e,
        };
        let temporary = temporary_path(path);
        // Left over from a save that was interrupted: it is not the snapshot, just in the way.
        match std::fs::remove_file(&temporary) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(io)?;
        file.write_all(&self.encode()).map_err(io)?;
        drop(file);
        std::fs::rename(&temporary, path).map_err(io)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.marks.len() * MARK_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.day.to_le_bytes());
        out.extend_from_slice(&self.offset.0.to_le_bytes());
        let marks = u32::try_from(self.marks.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&marks.to_le_bytes());
        for (day, mark) in &self.marks {
            for field in [*day, mark.id, mark.gate, mark.seq] {
                out.extend_from_slice(&field.to_le_bytes());
            }
        }
        self.tally.encode(&mut out);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (body, crc) = bytes.split_last_chunk::<4>()?;
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return None;
        }
        let mut input = body;
        if &take::<8>(&mut input)? != MAGIC {
            return None;
        }
        let day = i64::from_le_bytes(take(&mut input)?);
        let offset = UtcOffset(i32::from_le_bytes(take(&mut input)?));
        let count = u32::from_le_bytes(take(&mut input)?) as usize;
        if count.checked_mul(MARK_BYTES)? > input.len() {
            return None;
        }
        let mut marks = PassageMarks::new();
        for _ in 0..count {
            let mut field = || take::<8>(&mut input).map(i64::from_le_bytes);
            let (part, id, gate, seq) = (field()?, field()?, field()?, field()?);
            marks.insert(part, PassageMark { id, gate, seq });
        }
        let tally = Tally::decode(&mut input)?;
        input.is_empty().then_some(Self {
            tally,
            marks,
            day,
            offset,
        })
    }
}

/// True unless a reading that moved the marks from `before` to `after` read rows of a day
/// file after a later day file already had a mark: those rows are counted after the later
/// file's, where a whole-day reading counts them before.
fn committed_in_order(before: &PassageMarks, after: &PassageMarks) -> bool {
    let Some(&latest_marked) = before.keys().next_back() else {
        return true;
    };
    after
        .iter()
        .filter(|(day, mark)| before.get(day) != Some(mark))
        .all(|(&day, _)| day >= latest_marked)
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Today's counters for the pipeline, how they were read, and the committed counters the
/// maintenance thread goes on keeping (with a snapshot only).
pub(crate) struct Today {
    pub(crate) tally: Tally,
    pub(crate) start: CountersStart,
    pub(crate) committed: Option<CommittedCounters>,
}

/// Today's counters for the pipeline at start-up, or after a commit failed: from the snapshot
/// and what was recorded after it when there is one (`snapshot`), else from the whole day.
///
/// # Errors
/// A store failure while reading passages.
pub(crate) fn today(
    store: &Store,
    snapshot: Option<&Path>,
    now: UnixMillis,
    offset: UtcOffset,
) -> Result<Today, StoreError> {
    let Some(path) = snapshot else {
        let (tally, passages_read) = Tally::rebuild(store, now, offset)?;
        let why = if store.supports_passage_marks() {
            "snapshots are off (counters_snapshot_ms = 0)"
        } else {
            "the PostgreSQL store keeps no snapshot"
        };
        return Ok(Today {
            tally,
            start: CountersStart {
                from_snapshot: false,
                passages_read,
                why_not_snapshot: Some(why.to_owned()),
            },
            committed: None,
        });
    };
    let (counters, origin) = CommittedCounters::load(store, path, now, offset)?;
    let start = match origin {
        Origin::Snapshot { passages_after } => {
            tracing::info!(
                passages_after,
                "today's counters: the snapshot, and what followed it"
            );
            CountersStart {
                from_snapshot: true,
                passages_read: passages_after,
                why_not_snapshot: None,
            }
        }
        Origin::Rebuilt { why, passages } => {
            if why == NO_SNAPSHOT {
                tracing::info!(passages, why, "today's counters: read from the whole day");
            } else {
                tracing::warn!(
                    passages,
                    why,
                    "today's counters: snapshot not used, read the whole day"
                );
            }
            CountersStart {
                from_snapshot: false,
                passages_read: passages,
                why_not_snapshot: Some(why),
            }
        }
    };
    Ok(Today {
        tally: counters.tally().clone(),
        start,
        committed: Some(counters),
    })
}

#[cfg(test)]
mod tests {
    use gatewarden_protocol::{Decision, Direction, MarketId, SubjectId};

    use super::*;
    use crate::store::ModeKind;
    use crate::store::tests::{T0, entry, open};

    const OFFSET: UtcOffset = UtcOffset(480);
    const HOUR_S: u64 = 3600;

    fn at(s: u64) -> UnixMillis {
        UnixMillis(T0 + s * 1000)
    }

    /// Records `(subject, direction, decision, mode, at_s)` rows at gate `gate`, seqs from
    /// `first_seq` on.
    fn record(
        store: &Store,
        gate: u32,
        first_seq: u64,
        rows: &[(Option<u64>, Direction, Decision, ModeKind, u64)],
    ) {
        let mut writer = store.entry_writer().unwrap();
        let records: Vec<_> = rows
            .iter()
            .zip(first_seq..)
            .map(|(&(subject, direction, decision, mode, at_s), seq)| {
                let mut e = entry(gate, seq, 1, subject, decision, mode, at_s);
                e.direction = direction;
                e
            })
            .collect();
        writer.commit(&records).unwrap();
    }

    /// T0 is 20:26 UTC, so with UTC+8 the local day holds the rest of T0's UTC day (until
    /// 3 h 33 min after T0) and the next UTC day's first 16 hours: two day files.
    fn morning(store: &Store) {
        use {Decision::*, Direction::*, ModeKind::*};
        record(
            store,
            1,
            1,
            &[
                (Some(7), Entry, Admit, Verify, 10),
                (Some(8), Entry, Admit, Identify, 20),
                (Some(9), Entry, Deny, Verify, 30),
                (Some(7), Exit, Admit, Verify, 40),
                (None, Entry, Deny, Identify, 50),
            ],
        );
    }

    /// After UTC midnight: the local day's second day file.
    fn afternoon(store: &Store) {
        use {Decision::*, Direction::*, ModeKind::*};
        record(
            store,
            2,
            1,
            &[
                (Some(8), Exit, Admit, Identify, 4 * HOUR_S),
                (Some(7), Entry, Admit, Verify, 4 * HOUR_S + 10),
                (Some(10), Entry, Admit, SignIn, 4 * HOUR_S + 20),
            ],
        );
    }

    /// A store in a temporary folder (removed when the first value is dropped) and where its
    /// snapshot goes.
    fn site() -> (tempfile::TempDir, Store, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let path = dir.path().join(SNAPSHOT_FILE);
        (dir, store, path)
    }

    /// Records the morning, and saves its counters to `path`.
    fn saved_morning(store: &Store, path: &Path) -> CommittedCounters {
        morning(store);
        let (counters, _) = CommittedCounters::load(store, path, at(60), OFFSET).unwrap();
        counters.save(path).unwrap();
        counters
    }

    fn whole_day(store: &Store, now: UnixMillis) -> Tally {
        Tally::rebuild(store, now, OFFSET).unwrap().0
    }

    #[test]
    fn the_snapshot_and_what_followed_it_are_the_whole_day() {
        let (_dir, store, path) = site();
        morning(&store);
        let (first, origin) = CommittedCounters::load(&store, &path, at(60), OFFSET).unwrap();
        assert_eq!(
            origin,
            Origin::Rebuilt {
                why: NO_SNAPSHOT.to_owned(),
                passages: 3
            }
        );
        assert_eq!(first.tally(), &whole_day(&store, at(60)));
        first.save(&path).unwrap();
        afternoon(&store);
        let later = at(5 * HOUR_S);
        let (counters, origin) = CommittedCounters::load(&store, &path, later, OFFSET).unwrap();
        assert_eq!(origin, Origin::Snapshot { passages_after: 3 });
        assert_eq!(counters.tally(), &whole_day(&store, later));
        assert_ne!(counters.tally(), first.tally());
        assert_eq!(
            counters.marks.len(),
            2,
            "two day files: {:?}",
            counters.marks
        );
        // Caught up, the counters read nothing more until something is recorded.
        let mut caught_up = counters.clone();
        assert_eq!(caught_up.catch_up(&store, later).unwrap(), 0);
        assert_eq!(caught_up, counters);
    }

    #[test]
    fn a_damaged_snapshot_is_read_around_and_says_so() {
        let (_dir, store, path) = site();
        saved_morning(&store, &path);
        afternoon(&store);
        let good = std::fs::read(&path).unwrap();
        let later = at(5 * HOUR_S);
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x10;
        let torn = [0, 4, 12, good.len() / 2, good.len() - 1];
        let damaged = torn
            .iter()
            .map(|&len| good[..len].to_vec())
            .chain([flipped, b"GWCNTR01 but nothing else".to_vec()]);
        for bytes in damaged {
            std::fs::write(&path, &bytes).unwrap();
            let (read, origin) = CommittedCounters::load(&store, &path, later, OFFSET).unwrap();
            assert_eq!(
                origin,
                Origin::Rebuilt {
                    why: "the snapshot is damaged".to_owned(),
                    passages: 6
                },
                "{} bytes",
                bytes.len()
            );
            assert_eq!(read.tally(), &whole_day(&store, later));
        }
    }

    #[test]
    fn a_snapshot_of_another_day_offset_or_file_is_not_used() {
        let (_dir, store, path) = site();
        saved_morning(&store, &path);
        let why = |now, offset| match CommittedCounters::load(&store, &path, now, offset) {
            Ok((_, Origin::Rebuilt { why, .. })) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            why(at(24 * HOUR_S), OFFSET),
            "the snapshot is of another day"
        );
        assert_eq!(
            why(at(60), UtcOffset(0)),
            "the snapshot is of another UTC offset"
        );
        // Another store's day file under the same name: its row at the mark is another event.
        let other_dir = tempfile::tempdir().unwrap();
        let other = open(other_dir.path());
        use {Decision::*, Direction::*, ModeKind::*};
        record(&other, 5, 100, &[(Some(3), Entry, Admit, Verify, 15); 5]);
        let (read, origin) = CommittedCounters::load(&other, &path, at(60), OFFSET).unwrap();
        assert_eq!(
            origin,
            Origin::Rebuilt {
                why: "a day file changed since the snapshot".to_owned(),
                passages: 5
            }
        );
        assert_eq!(read.tally(), &whole_day(&other, at(60)));
        // A store without that day file at all.
        let empty_dir = tempfile::tempdir().unwrap();
        let empty = open(empty_dir.path());
        let (_, origin) = CommittedCounters::load(&empty, &path, at(60), OFFSET).unwrap();
        assert!(
            matches!(&origin, Origin::Rebuilt { why, .. } if why.contains("day file changed")),
            "{origin:?}"
        );
    }

    #[test]
    fn a_new_local_day_starts_from_nothing() {
        let (_dir, store, path) = site();
        morning(&store);
        let (mut counters, _) = CommittedCounters::load(&store, &path, at(60), OFFSET).unwrap();
        assert_ne!(counters.tally(), &Tally::default());
        // Local midnight is 19 h 33 min after T0.
        let tomorrow = at(20 * HOUR_S);
        assert_eq!(counters.catch_up(&store, tomorrow).unwrap(), 0);
        assert_eq!(counters.tally(), &Tally::default());
        assert_eq!(counters.day, OFFSET.day_of(tomorrow));
    }

    #[cfg(unix)]
    #[test]
    fn the_snapshot_is_owner_only_and_replaces_a_leftover() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store, path) = site();
        morning(&store);
        std::fs::write(temporary_path(&path), b"an interrupted save").unwrap();
        let (counters, _) = CommittedCounters::load(&store, &path, at(60), OFFSET).unwrap();
        counters.save(&path).unwrap();
        counters.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!temporary_path(&path).exists());
        assert_eq!(
            CommittedCounters::decode(&std::fs::read(&path).unwrap()),
            Some(counters)
        );
    }

    /// Bytes with a good checksum that this version still refuses: decoding checks more than
    /// the CRC.
    #[test]
    fn a_well_checksummed_file_with_the_wrong_contents_is_refused() {
        let (_dir, store, path) = site();
        morning(&store);
        let (counters, _) = CommittedCounters::load(&store, &path, at(60), OFFSET).unwrap();
        let good = counters.encode();
        assert_eq!(CommittedCounters::decode(&good), Some(counters));
        let resealed = |mut body: Vec<u8>| {
            body.truncate(body.len() - 4);
            let crc = crc32fast::hash(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            body
        };
        let mut magic = good.clone();
        magic[7] = b'2';
        let mut trailing = good.clone();
        trailing.splice(good.len() - 4..good.len() - 4, [0u8]);
        let mut marks = good;
        marks[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        for bad in [magic, trailing, marks] {
            assert_eq!(CommittedCounters::decode(&resealed(bad)), None);
        }
    }

    /// The local day's first day file starts at UTC midnight, hours before the local day: its
    /// earlier rows are skipped, the first time and after the marks alike.
    #[test]
    fn rows_before_the_local_day_are_not_counted() {
        use {Decision::*, Direction::*, ModeKind::*};
        let (_dir, store, path) = site();
        // Local midnight is 19 h 33 min after T0; UTC midnight 3 h 33 min after it.
        let (yesterday, today) = (4 * HOUR_S, 20 * HOUR_S);
        record(
            &store,
            1,
            1,
            &[
                (Some(7), Entry, Admit, Verify, yesterday),
                (Some(8), Entry, Admit, Verify, today),
            ],
        );
        let now = at(today + 60);
        let (counters, origin) = CommittedCounters::load(&store, &path, now, OFFSET).unwrap();
        assert_eq!(
            origin,
            Origin::Rebuilt {
                why: NO_SNAPSHOT.to_owned(),
                passages: 1
            }
        );
        counters.save(&path).unwrap();
        // A late retry of yesterday, recorded today in the same file, and one of today.
        record(
            &store,
            1,
            3,
            &[
                (Some(9), Entry, Admit, Verify, yesterday + 1),
                (Some(10), Entry, Admit, Verify, today + 1),
            ],
        );
        let (counters, origin) = CommittedCounters::load(&store, &path, now, OFFSET).unwrap();
        assert_eq!(origin, Origin::Snapshot { passages_after: 1 });
        assert_eq!(counters.tally(), &whole_day(&store, now));
    }

    /// A row committed to the earlier day file after the later one was read into the counters
    /// would be counted after the later file's rows; a whole-day reading counts it before. The
    /// counters notice and read the whole day again.
    #[test]
    fn a_row_committed_out_of_file_order_makes_the_counters_start_over() {
        use {Decision::*, Direction::*, ModeKind::*};
        let (_dir, store, path) = site();
        morning(&store);
        afternoon(&store); // person 8 leaves
        let later = at(5 * HOUR_S);
        let (counters, _) = CommittedCounters::load(&store, &path, later, OFFSET).unwrap();
        counters.save(&path).unwrap();
        // Decided before UTC midnight, committed only now: person 8 came in again before
        // leaving. In decision order 8 is outside; counted last, 8 would be inside.
        record(&store, 3, 1, &[(Some(8), Entry, Admit, Verify, 100)]);
        let (counters, _) = CommittedCounters::load(&store, &path, later, OFFSET).unwrap();
        let mut whole = whole_day(&store, later);
        assert_eq!(counters.tally(), &whole);
        let eight = whole.person(SubjectId(8), MarketId(1), later, OFFSET);
        assert_eq!(eight.inside, Some(false));
    }
}

//! What-if tools over the site's own data: policy replay ([`replay`]) re-decides recorded
//! entries under another policy and reports what would change; nothing is written.
//!
//! The per-entry logic is [`policy::replay`](crate::policy::replay) (pure); this module
//! drives it over a read-only [`EntryArchive`] and aggregates the report
//! ([`ReplayReport`]), for the `gatewarden policy replay` command and the admin API alike.

mod report;

use gatewarden_protocol::{MarketId, UnixMillis};

use crate::clock::{DAY_MS, UtcOffset};
use crate::policy::PolicyBook;
use crate::policy::replay::replay_entry;
use crate::store::{EntryArchive, StoreError};

pub use report::{CheckRow, Example, GroupRow, HourRow, ReplayReport, Transition};

/// Which entries to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayRange {
    /// Entries decided at or after this.
    pub since: UnixMillis,
    /// Entries decided before this.
    pub until: UnixMillis,
    /// Only this market's entries, if set.
    pub market: Option<MarketId>,
    /// How many changed entries to show as examples.
    pub examples: usize,
}

/// The local days of `first..=last` that no day partition covers.
pub fn missing_days(archive: &EntryArchive, offset: UtcOffset, first: i64, last: i64) -> Vec<i64> {
    let have = archive.days();
    let covered = |local: i64| {
        let since = offset.day_start(local).0 / DAY_MS;
        let until = offset.day_start(local + 1).0.saturating_sub(1) / DAY_MS;
        have.iter()
            .any(|&d| (since..=until).contains(&(d.max(0) as u64)))
    };
    (first..=last).filter(|&d| !covered(d)).collect()
}

/// Re-decides every entry of `range` under `book`, reading `archive` only; `progress` hears
/// the number of entries read so far every few thousand entries.
///
/// # Errors
/// The archive's read errors ([`StoreError`]).
pub fn replay(
    archive: &EntryArchive,
    book: &PolicyBook,
    offset: UtcOffset,
    range: &ReplayRange,
    mut progress: impl FnMut(u64),
) -> Result<ReplayReport, StoreError> {
    let categories = archive.categories()?;
    let mut report = ReplayReport::new(book.version().as_str(), offset, range.examples);
    let mut read = 0u64;
    archive.for_each(range.since, range.until, |entry| {
        read += 1;
        if read.is_multiple_of(10_000) {
            progress(read);
        }
        if range.market.is_some_and(|m| m != entry.market) {
            return;
        }
        let category = entry.subject.and_then(|s| categories.get(&s).copied());
        let policy = book.for_market(entry.market);
        let replayed = replay_entry(entry, category, policy, offset);
        report.add(entry, category, &replayed);
    })?;
    progress(read);
    Ok(report.finish())
}

//! The questions the district asks of the entry records: a person's trajectory across markets,
//! entry frequency, today's staff sign-ins, and who was near whom (contacts).
//!
//! Every query filters and orders by `decided_at` (the server's clock, which is the same for
//! every gate, unlike the gates' own capture times); ranges are half-open, `[since, until)`.
//! A query reads only the day partitions its range touches, one after the other, and merges
//! what each returns.

use std::collections::{HashMap, HashSet};

use gatewarden_protocol::{
    Category, Decision, Direction, GateId, MarketId, SubjectId, UnixMillis, ZoneId,
};
use rusqlite::params;
use serde::Serialize;

use super::codes;
use super::entries::ENTRY_COLUMNS;
use super::history::partition::Partition;
use super::{EntryRow, ModeKind, SqliteStore, StoreError, from_sql_u64, sql_time, to_sql_u64};

/// How often one subject was admitted into a market in a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrequencyRow {
    /// Who.
    pub subject: SubjectId,
    /// Their category, if they are in the registry.
    #[serde(serialize_with = "codes::ser_opt")]
    pub category: Option<Category>,
    /// Admitted entries (direction `Entry`, sign-ins not counted).
    pub entries: u32,
    /// The first of them.
    pub first_at: UnixMillis,
    /// The last of them.
    pub last_at: UnixMillis,
}

/// A staff member's first admitted sign-in in a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignInRow {
    /// Who signed in.
    pub subject: SubjectId,
    /// Their category, if they are in the registry.
    #[serde(serialize_with = "codes::ser_opt")]
    pub category: Option<Category>,
    /// When they first signed in.
    pub first_at: UnixMillis,
    /// Where.
    pub gate: GateId,
    /// The gate's zone.
    pub zone: ZoneId,
}

/// Another person admitted to the same market within the window of one of the subject's
/// admitted passages: one row per person and market.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContactRow {
    /// The other person.
    pub subject: SubjectId,
    /// Their category, if they are in the registry.
    #[serde(serialize_with = "codes::ser_opt")]
    pub category: Option<Category>,
    /// Where they met.
    pub market: MarketId,
    /// The other person's first passage in the window.
    pub first_at: UnixMillis,
    /// The other person's last passage in the window.
    pub last_at: UnixMillis,
    /// How many of the other person's passages fell in a window.
    pub passages: u32,
    /// The smallest time between one of their passages and one of the subject's, in ms.
    pub closest_ms: u64,
}

/// `decision = admit`, as partitions store it.
const ADMIT: u8 = Decision::Admit.code();
/// `direction = entry`.
const ENTRY: u8 = Direction::Entry.code();
/// `mode = sign_in`.
const SIGN_IN: u8 = ModeKind::SignIn.code();

impl SqliteStore {
    /// Every entry record of `subject` decided in `[since, until)`, in time order: admitted or
    /// not, at every market.
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] for an undecodable row.
    pub(crate) fn trajectory(
        &self,
        subject: SubjectId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<EntryRow>, StoreError> {
        let mut out = Vec::new();
        for part in self.history.in_range(since, until) {
            let conn = part.readers.get()?;
            let sql = |e| StoreError::from_sqlite(&part.path, "querying a trajectory", e);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM entries
                     WHERE subject = ?1 AND decided_at >= ?2 AND decided_at < ?3
                     ORDER BY decided_at, id"
                ))
                .map_err(sql)?;
            let mut rows = stmt
                .query(params![
                    to_sql_u64(subject.0),
                    sql_time(since),
                    sql_time(until)
                ])
                .map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                out.push(self.entry_from_row(&part, &conn, row)?);
            }
        }
        Ok(out)
    }

    /// Admitted entries into `market` per subject in `[since, until)`, for subjects with at
    /// least `min` of them; most entries first (ties by subject id). Sign-ins and exits are
    /// not entries.
    ///
    /// # Errors
    /// SQLite failures.
    pub(crate) fn frequency(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
        min: u32,
    ) -> Result<Vec<FrequencyRow>, StoreError> {
        // Each day is counted in its own partition, then the days are added up here.
        let mut counts: HashMap<u64, (u32, i64, i64)> = HashMap::new();
        for part in self.history.in_range(since, until) {
            let conn = part.readers.get()?;
            let sql = |e| StoreError::from_sqlite(&part.path, "querying entry frequency", e);
            // A day wholly inside the range needs no time filter, and then the (market,
            // subject, ...) index hands the rows over grouped: no sort. The days at the edges
            // of the range filter by time through the (market, decided_at, ...) index.
            let whole_day = part.is_within(since, until);
            let (index, time_filter) = if whole_day {
                ("entries_market_subject", "")
            } else {
                ("entries_market", "AND decided_at >= ?2 AND decided_at < ?3")
            };
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT subject, count(*), min(decided_at), max(decided_at)
                     FROM entries INDEXED BY {index}
                     WHERE market = ?1 {time_filter}
                       AND decision = {ADMIT} AND direction = {ENTRY} AND mode != {SIGN_IN}
                       AND subject IS NOT NULL
                     GROUP BY subject"
                ))
                .map_err(sql)?;
            let mut rows = if whole_day {
                stmt.query(params![market.0])
            } else {
                stmt.query(params![market.0, sql_time(since), sql_time(until)])
            }
            .map_err(sql)?;
            while let Some(r) = rows.next().map_err(sql)? {
                let subject = from_sql_u64(r.get(0).map_err(sql)?);
                let n = u32::try_from(r.get::<_, i64>(1).map_err(sql)?).unwrap_or(u32::MAX);
                let (first, last): (i64, i64) = (r.get(2).map_err(sql)?, r.get(3).map_err(sql)?);
                let c = counts.entry(subject).or_insert((0, first, last));
                c.0 = c.0.saturating_add(n);
                c.1 = c.1.min(first);
                c.2 = c.2.max(last);
            }
        }
        let mut out: Vec<FrequencyRow> = counts
            .into_iter()
            .filter(|(_, (n, _, _))| *n >= min)
            .map(|(subject, (n, first, last))| {
                let subject = SubjectId(subject);
                FrequencyRow {
                    subject,
                    category: self.category_of(subject),
                    entries: n,
                    first_at: millis(first),
                    last_at: millis(last),
                }
            })
            .collect();
        out.sort_by(|a, b| b.entries.cmp(&a.entries).then(a.subject.cmp(&b.subject)));
        Ok(out)
    }

    /// Each subject's first admitted sign-in at `market` in `[since, until)`, in time order.
    ///
    /// # Errors
    /// SQLite failures.
    pub(crate) fn signins(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<SignInRow>, StoreError> {
        let mut first: HashMap<u64, (i64, u32, u32)> = HashMap::new();
        for part in self.history.in_range(since, until) {
            let conn = part.readers.get()?;
            let sql = |e| StoreError::from_sqlite(&part.path, "querying sign-ins", e);
            // With min(), SQLite takes the bare columns gate and zone from the row holding
            // the minimum: the gate of the first sign-in.
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT subject, min(decided_at), gate, zone FROM entries
                     WHERE market = ?1 AND decided_at >= ?2 AND decided_at < ?3
                       AND mode = {SIGN_IN} AND decision = {ADMIT} AND subject IS NOT NULL
                     GROUP BY subject"
                ))
                .map_err(sql)?;
            let mut rows = stmt
                .query(params![market.0, sql_time(since), sql_time(until)])
                .map_err(sql)?;
            while let Some(r) = rows.next().map_err(sql)? {
                let subject = from_sql_u64(r.get(0).map_err(sql)?);
                let seen = (
                    r.get(1).map_err(sql)?,
                    r.get(2).map_err(sql)?,
                    r.get(3).map_err(sql)?,
                );
                // Partitions come oldest first, so the first one seen is the earliest.
                first.entry(subject).or_insert(seen);
            }
        }
        let mut out: Vec<SignInRow> = first
            .into_iter()
            .map(|(subject, (at, gate, zone))| {
                let subject = SubjectId(subject);
                SignInRow {
                    subject,
                    category: self.category_of(subject),
                    first_at: millis(at),
                    gate: GateId(gate),
                    zone: ZoneId(zone),
                }
            })
            .collect();
        out.sort_by(|a, b| a.first_at.cmp(&b.first_at).then(a.subject.cmp(&b.subject)));
        Ok(out)
    }

    /// Everyone admitted to the same market within `window_ms` (either side) of one of
    /// `subject`'s admitted passages decided in `[since, until)`; one row per person and
    /// market, ordered by the first meeting.
    ///
    /// # Errors
    /// SQLite failures.
    pub(crate) fn contacts(
        &self,
        subject: SubjectId,
        window_ms: u64,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<ContactRow>, StoreError> {
        // The subject's admitted passages, then for each a range scan of (market, decided_at)
        // in every partition the window touches: a window may straddle midnight.
        let passages: Vec<(MarketId, UnixMillis)> = self
            .trajectory(subject, since, until)?
            .into_iter()
            .filter(|e| e.decision == Decision::Admit)
            .map(|e| (e.market, e.decided_at))
            .collect();
        let mut met: HashMap<(u64, u32), Meeting> = HashMap::new();
        for (market, at) in passages {
            let lo = UnixMillis(at.0.saturating_sub(window_ms));
            let hi = UnixMillis(at.0.saturating_add(window_ms));
            for part in self
                .history
                .in_range(lo, UnixMillis(hi.0.saturating_add(1)))
            {
                self.meetings_in(&part, subject, market, at, (lo, hi), &mut met)?;
            }
        }
        let mut out: Vec<ContactRow> = met
            .into_iter()
            .map(|((other, market), m)| {
                let other = SubjectId(other);
                ContactRow {
                    subject: other,
                    category: self.category_of(other),
                    market: MarketId(market),
                    first_at: millis(m.first),
                    last_at: millis(m.last),
                    passages: u32::try_from(m.ids.len()).unwrap_or(u32::MAX),
                    closest_ms: m.closest,
                }
            })
            .collect();
        out.sort_by(|a, b| a.first_at.cmp(&b.first_at).then(a.subject.cmp(&b.subject)));
        Ok(out)
    }

    /// Adds to `met` the admitted passages of others at `market` in `[lo, hi]` of one
    /// partition.
    fn meetings_in(
        &self,
        part: &Partition,
        subject: SubjectId,
        market: MarketId,
        at: UnixMillis,
        (lo, hi): (UnixMillis, UnixMillis),
        met: &mut HashMap<(u64, u32), Meeting>,
    ) -> Result<(), StoreError> {
        let conn = part.readers.get()?;
        let sql = |e| StoreError::from_sqlite(&part.path, "querying contacts", e);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT subject, decided_at, id FROM entries
                 WHERE market = ?1 AND decided_at BETWEEN ?2 AND ?3
                   AND decision = {ADMIT} AND subject IS NOT NULL AND subject != ?4"
            ))
            .map_err(sql)?;
        let mut rows = stmt
            .query(params![
                market.0,
                sql_time(lo),
                sql_time(hi),
                to_sql_u64(subject.0)
            ])
            .map_err(sql)?;
        while let Some(r) = rows.next().map_err(sql)? {
            let other = from_sql_u64(r.get(0).map_err(sql)?);
            let t: i64 = r.get(1).map_err(sql)?;
            let key = (part.day, r.get::<_, i64>(2).map_err(sql)?);
            let m = met.entry((other, market.0)).or_insert(Meeting {
                first: t,
                last: t,
                closest: u64::MAX,
                ids: HashSet::new(),
            });
            m.first = m.first.min(t);
            m.last = m.last.max(t);
            m.closest = m.closest.min(t.abs_diff(sql_time(at)));
            m.ids.insert(key);
        }
        Ok(())
    }

    fn category_of(&self, subject: SubjectId) -> Option<Category> {
        self.cache.subjects.get(&subject).map(|r| r.category)
    }
}

/// Another person's passages near the subject's, at one market.
struct Meeting {
    first: i64,
    last: i64,
    closest: u64,
    /// Their passages by (day, row id): one passage near two of the subject's counts once.
    ids: HashSet<(i64, i64)>,
}

fn millis(t: i64) -> UnixMillis {
    UnixMillis(t.max(0) as u64)
}

//! The questions the district asks of the entry records: a person's trajectory across markets,
//! entry frequency, today's staff sign-ins, and who was near whom (contacts).
//!
//! Every query filters and orders by `decided_at` (the server's clock, which is the same for
//! every gate, unlike the gates' own capture times); ranges are half-open, `[since, until)`.

use gatewarden_protocol::{Category, GateId, MarketId, SubjectId, UnixMillis, ZoneId};
use rusqlite::params;
use serde::Serialize;

use super::codes;
use super::entries::ENTRY_COLUMNS;
use super::{EntryRow, Store, StoreError, from_sql_u64, sql_time, to_sql_u64};

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

impl Store {
    /// Every entry record of `subject` decided in `[since, until)`, in time order: admitted or
    /// not, at every market.
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] for an undecodable row.
    pub fn trajectory(
        &self,
        subject: SubjectId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<EntryRow>, StoreError> {
        let conn = self.readers.get()?;
        let sql = |e| self.sql_err("querying a trajectory", e);
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
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql)? {
            out.push(self.entry_from_row(row)?);
        }
        Ok(out)
    }

    /// Admitted entries into `market` per subject in `[since, until)`, for subjects with at
    /// least `min` of them; most entries first (ties by subject id). Sign-ins and exits are
    /// not entries.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn frequency(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
        min: u32,
    ) -> Result<Vec<FrequencyRow>, StoreError> {
        let conn = self.readers.get()?;
        let sql = |e| self.sql_err("querying entry frequency", e);
        let mut stmt = conn
            .prepare_cached(
                "SELECT subject, count(*) AS n, min(decided_at), max(decided_at) FROM entries
                 WHERE market = ?1 AND decided_at >= ?2 AND decided_at < ?3
                   AND decision = 'admit' AND direction = 'entry' AND mode != 'sign_in'
                   AND subject IS NOT NULL
                 GROUP BY subject HAVING n >= ?4
                 ORDER BY n DESC, subject",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(
                params![market.0, sql_time(since), sql_time(until), min],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (subject, n, first, last) = row.map_err(sql)?;
            let subject = SubjectId(from_sql_u64(subject));
            out.push(FrequencyRow {
                subject,
                category: self.category_of(subject),
                entries: u32::try_from(n).unwrap_or(u32::MAX),
                first_at: millis(first),
                last_at: millis(last),
            });
        }
        Ok(out)
    }

    /// Each subject's first admitted sign-in at `market` in `[since, until)`, in time order.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn signins(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<SignInRow>, StoreError> {
        let conn = self.readers.get()?;
        let sql = |e| self.sql_err("querying sign-ins", e);
        // With min(), SQLite takes the bare columns gate and zone from the row holding the
        // minimum: the gate of the first sign-in.
        let mut stmt = conn
            .prepare_cached(
                "SELECT subject, min(decided_at) AS first, gate, zone FROM signins
                 WHERE market = ?1 AND decided_at >= ?2 AND decided_at < ?3
                 GROUP BY subject ORDER BY first, subject",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(params![market.0, sql_time(since), sql_time(until)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, u32>(3)?,
                ))
            })
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (subject, first, gate, zone) = row.map_err(sql)?;
            let subject = SubjectId(from_sql_u64(subject));
            out.push(SignInRow {
                subject,
                category: self.category_of(subject),
                first_at: millis(first),
                gate: GateId(gate),
                zone: ZoneId(zone),
            });
        }
        Ok(out)
    }

    /// Everyone admitted to the same market within `window_ms` (either side) of one of
    /// `subject`'s admitted passages decided in `[since, until)`; one row per person and
    /// market, ordered by the first meeting.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn contacts(
        &self,
        subject: SubjectId,
        window_ms: u64,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<ContactRow>, StoreError> {
        let conn = self.readers.get()?;
        let sql = |e| self.sql_err("querying contacts", e);
        // `s` walks the subject's passages through (subject, decided_at); for each, `o` is a
        // range scan of (market, decided_at).
        let mut stmt = conn
            .prepare_cached(
                "SELECT o.subject, o.market, min(o.decided_at) AS first, max(o.decided_at),
                        count(DISTINCT o.id), min(abs(o.decided_at - s.decided_at))
                 FROM entries AS s JOIN entries AS o
                   ON o.market = s.market
                  AND o.decided_at BETWEEN s.decided_at - ?2 AND s.decided_at + ?2
                 WHERE s.subject = ?1 AND s.decision = 'admit'
                   AND s.decided_at >= ?3 AND s.decided_at < ?4
                   AND o.decision = 'admit' AND o.subject IS NOT NULL AND o.subject != ?1
                 GROUP BY o.subject, o.market
                 ORDER BY first, o.subject",
            )
            .map_err(sql)?;
        let window = i64::try_from(window_ms).unwrap_or(i64::MAX / 4);
        let rows = stmt
            .query_map(
                params![
                    to_sql_u64(subject.0),
                    window,
                    sql_time(since),
                    sql_time(until)
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                },
            )
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (other, market, first, last, n, closest) = row.map_err(sql)?;
            let other = SubjectId(from_sql_u64(other));
            out.push(ContactRow {
                subject: other,
                category: self.category_of(other),
                market: MarketId(market),
                first_at: millis(first),
                last_at: millis(last),
                passages: u32::try_from(n).unwrap_or(u32::MAX),
                closest_ms: closest.max(0) as u64,
            });
        }
        Ok(out)
    }

    fn category_of(&self, subject: SubjectId) -> Option<Category> {
        self.cache.subjects.get(&subject).map(|r| r.category)
    }
}

fn millis(t: i64) -> UnixMillis {
    UnixMillis(t.max(0) as u64)
}

//! Escalations and how staff resolved them.
//!
//! An escalated verdict ("please wait for staff") is recorded in the entry log like any other.
//! What staff decided afterwards is a *resolution*, kept in the registry database beside the
//! audit trail and keyed by the escalation's `(gate, seq)`: one per escalation, written once
//! and never changed, with who resolved it, when, and a note. The entry log stays what the
//! gates were told; a resolution is what happened next.
//!
//! Resolutions are personal data like entries, and expire with them (`prune_entries`).

use std::collections::HashMap;

use gatewarden_protocol::{Check, Decision, GateId, MarketId, Outcome, SubjectId, UnixMillis};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::entries::ENTRY_COLUMNS;
use super::{EntryRow, SqliteStore, StoreError, from_sql_u64, sql_time, to_sql_u64};

/// `decision = escalate`, as partitions store it.
const ESCALATE: u8 = Decision::Escalate.code();

/// What staff decided about an escalated person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedAs {
    /// Staff let the person in.
    Admitted,
    /// Staff turned the person away.
    TurnedAway,
}

impl ResolvedAs {
    /// The name the API and the database use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::TurnedAway => "turned_away",
        }
    }

    /// The outcome named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "admitted" => Some(Self::Admitted),
            "turned_away" => Some(Self::TurnedAway),
            _ => None,
        }
    }
}

/// How staff resolved one escalation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// The escalation's gate.
    pub gate: GateId,
    /// The escalation's seq at that gate.
    pub seq: u64,
    /// Whom the escalation was about, if known.
    pub subject: Option<SubjectId>,
    /// The gate's market.
    pub market: MarketId,
    /// When the escalation was decided.
    pub escalated_at: UnixMillis,
    /// What staff decided.
    pub outcome: ResolvedAs,
    /// Who resolved it (the name staff gave).
    pub by: String,
    /// Why, or anything staff noted; may be empty.
    pub note: String,
    /// When it was resolved.
    pub at: UnixMillis,
}

/// Which escalations a listing holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscalationState {
    /// Only those staff have not resolved.
    Open,
    /// Only resolved ones.
    Resolved,
    /// Both.
    Any,
}

impl EscalationState {
    pub(super) fn admits(self, resolution: Option<&Resolution>) -> bool {
        match self {
            Self::Open => resolution.is_none(),
            Self::Resolved => resolution.is_some(),
            Self::Any => true,
        }
    }
}

/// One escalated entry with the checks that escalated or failed, and its resolution if staff
/// resolved it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Escalation {
    /// The entry.
    pub entry: EntryRow,
    /// The checks whose outcome was `escalate` or `fail`, in policy order.
    pub checks: Vec<Check>,
    /// How staff resolved it; `None` while it is open.
    pub resolution: Option<Resolution>,
}

const RESOLUTION_COLUMNS: &str =
    "gate, seq, subject, market, escalated_at, outcome, resolved_by, note, resolved_at";

impl SqliteStore {
    /// The escalations at `market` decided in `[since, until)` in `state`, newest first, at
    /// most `limit`, each with its resolution if there is one.
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] for an undecodable row.
    pub(crate) fn escalations(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
        state: EscalationState,
        limit: usize,
    ) -> Result<Vec<Escalation>, StoreError> {
        let mut resolved = self.resolutions_where(
            "market = ?1 AND escalated_at >= ?2 AND escalated_at < ?3",
            params![market.0, sql_time(since), sql_time(until)],
        )?;
        let mut out = Vec::new();
        // Newest day first, newest entry first within it, so `limit` keeps the latest.
        for part in self.history.in_range(since, until).into_iter().rev() {
            let conn = part.readers.get()?;
            let sql = |e| StoreError::from_sqlite(&part.path, "querying escalations", e);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM entries
                     WHERE market = ?1 AND decided_at >= ?2 AND decided_at < ?3
                       AND decision = {ESCALATE}
                     ORDER BY decided_at DESC, id DESC"
                ))
                .map_err(sql)?;
            let mut rows = stmt
                .query(params![market.0, sql_time(since), sql_time(until)])
                .map_err(sql)?;
            while let Some(row) = rows.next().map_err(sql)? {
                if out.len() >= limit {
                    return Ok(out);
                }
                let (entry, body) = self.decode_row(&part, &conn, row)?;
                let resolution = resolved.remove(&(entry.gate, entry.seq));
                if !state.admits(resolution.as_ref()) {
                    continue;
                }
                let checks = body
                    .checks
                    .into_iter()
                    .filter(|c| matches!(c.outcome, Outcome::Escalate | Outcome::Fail))
                    .collect();
                out.push(Escalation {
                    entry,
                    checks,
                    resolution,
                });
            }
        }
        Ok(out)
    }

    /// Records how staff resolved an escalation. Returns `None` when it is recorded, or the
    /// resolution already on record (which is kept: a resolution is never overwritten).
    ///
    /// # Errors
    /// SQLite failures; nothing is recorded then.
    pub(crate) fn resolve_escalation(
        &self,
        r: &Resolution,
    ) -> Result<Option<Resolution>, StoreError> {
        let mut conn = self.writer();
        let sql = |e| self.sql_err("recording a resolution", e);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let inserted = tx
            .execute(
                &format!(
                    "INSERT INTO resolutions ({RESOLUTION_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (gate, seq) DO NOTHING"
                ),
                params![
                    r.gate.0,
                    to_sql_u64(r.seq),
                    r.subject.map(|s| to_sql_u64(s.0)),
                    r.market.0,
                    sql_time(r.escalated_at),
                    r.outcome.name(),
                    r.by,
                    r.note,
                    sql_time(r.at),
                ],
            )
            .map_err(sql)?;
        if inserted == 1 {
            tx.commit().map_err(sql)?;
            return Ok(None);
        }
        let existing = tx
            .query_row(
                &format!(
                    "SELECT {RESOLUTION_COLUMNS} FROM resolutions WHERE gate = ?1 AND seq = ?2"
                ),
                params![r.gate.0, to_sql_u64(r.seq)],
                resolution_from_row,
            )
            .optional()
            .map_err(sql)?;
        Ok(existing)
    }

    /// The resolutions of escalations about `subject` decided in `[since, until)`, in time
    /// order.
    ///
    /// # Errors
    /// SQLite failures.
    pub(crate) fn resolutions_of(
        &self,
        subject: SubjectId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<Resolution>, StoreError> {
        let mut out: Vec<Resolution> = self
            .resolutions_where(
                "subject = ?1 AND escalated_at >= ?2 AND escalated_at < ?3",
                params![to_sql_u64(subject.0), sql_time(since), sql_time(until)],
            )?
            .into_values()
            .collect();
        out.sort_by_key(|r| (r.escalated_at, r.gate, r.seq));
        Ok(out)
    }

    /// Deletes the resolutions of escalations decided before `before`; returns how many.
    ///
    /// # Errors
    /// SQLite failures.
    pub(crate) fn prune_resolutions(&self, before: UnixMillis) -> Result<usize, StoreError> {
        self.writer()
            .execute(
                "DELETE FROM resolutions WHERE escalated_at < ?1",
                [sql_time(before)],
            )
            .map_err(|e| self.sql_err("deleting expired resolutions", e))
    }

    fn resolutions_where(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
    ) -> Result<HashMap<(GateId, u64), Resolution>, StoreError> {
        let conn = self.readers.get()?;
        let sql = |e| self.sql_err("reading resolutions", e);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {RESOLUTION_COLUMNS} FROM resolutions WHERE {filter}"
            ))
            .map_err(sql)?;
        let rows = stmt.query_map(args, resolution_from_row).map_err(sql)?;
        let mut out = HashMap::new();
        for r in rows {
            let r = r.map_err(sql)?;
            out.insert((r.gate, r.seq), r);
        }
        Ok(out)
    }
}

fn resolution_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Resolution> {
    let outcome: String = row.get(5)?;
    let outcome = ResolvedAs::from_name(&outcome).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            5,
            rusqlite::types::Type::Text,
            format!("unknown resolution {outcome:?}").into(),
        )
    })?;
    let time = |idx| -> rusqlite::Result<UnixMillis> {
        Ok(UnixMillis(row.get::<_, i64>(idx)?.max(0) as u64))
    };
    Ok(Resolution {
        gate: GateId(row.get(0)?),
        seq: from_sql_u64(row.get(1)?),
        subject: row
            .get::<_, Option<i64>>(2)?
            .map(|s| SubjectId(from_sql_u64(s))),
        market: MarketId(row.get(3)?),
        escalated_at: time(4)?,
        outcome,
        by: row.get(6)?,
        note: row.get(7)?,
        at: time(8)?,
    })
}

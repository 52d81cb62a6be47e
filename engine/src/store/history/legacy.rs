//! Moving the entries of a schema-2 store (one `entries` table in `gatewarden.db`, each verdict
//! as JSON) into day partitions, as the step before schema version 3 drops that table.
//!
//! Crash-safe by construction: the partitions are written first (a record already moved is a
//! duplicate and skipped), and the old table is dropped only in the migration's transaction
//! afterwards. A crash in between repeats the move at the next start.

use std::path::Path;
use std::sync::Arc;

use gatewarden_protocol::{Direction, MarketId, UnixMillis, Verdict, ZoneId};
use rusqlite::{Connection, params};

use super::History;
use super::writer::{RecordRef, SqliteEntryWriter};
use crate::store::schema::Role;
use crate::store::{EntryRecord, EventFingerprint, ModeKind, StoreError};

/// Rows read and written per transaction.
const CHUNK: i64 = 20_000;

/// Moves every row of the old `entries` table into partitions; returns how many there were.
pub(crate) fn move_entries(
    conn: &Connection,
    db: &Path,
    history: &Arc<History>,
) -> Result<u64, StoreError> {
    let sql = |e| StoreError::from_sqlite(db, "moving entries into day partitions", e);
    let total: i64 = conn
        .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
        .map_err(sql)?;
    if total == 0 {
        return Ok(0);
    }
    tracing::info!(
        entries = total,
        "moving entry records into day partitions (once)"
    );
    let mut loader = SqliteEntryWriter::new(history.clone(), Role::BulkLoader);
    let mut stmt = conn
        .prepare(
            "SELECT id, market, zone, mode, direction, captured_at, verdict, fingerprint
             FROM entries WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .map_err(sql)?;
    let (mut after, mut moved) = (i64::MIN, 0i64);
    loop {
        let mut chunk: Vec<(EntryRecord, Option<EventFingerprint>)> = Vec::new();
        let mut rows = stmt.query(params![after, CHUNK]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            after = row.get(0).map_err(sql)?;
            chunk.push(legacy_record(row).map_err(|e| match e {
                Bad::Sql(e) => sql(e),
                Bad::Corrupt(detail) => StoreError::Corrupt {
                    path: db.to_owned(),
                    detail: format!("entry {after}: {detail}"),
                },
            })?);
        }
        if chunk.is_empty() {
            break;
        }
        let refs: Vec<RecordRef<'_>> = chunk
            .iter()
            .map(|(record, fingerprint)| RecordRef {
                record,
                fingerprint: fingerprint.as_ref(),
            })
            .collect();
        loader.commit_refs(&refs).map_err(|e| e.error)?;
        moved += chunk.len() as i64;
        tracing::info!(moved, of = total, "moving entry records");
    }
    loader.finish()?;
    Ok(moved as u64)
}

enum Bad {
    Sql(rusqlite::Error),
    Corrupt(String),
}

fn legacy_record(row: &rusqlite::Row<'_>) -> Result<(EntryRecord, Option<EventFingerprint>), Bad> {
    let get_text = |i| row.get::<_, String>(i).map_err(Bad::Sql);
    let mode = get_text(3)?;
    let mode =
        ModeKind::from_name(&mode).ok_or_else(|| Bad::Corrupt(format!("unknown mode {mode:?}")))?;
    let direction = get_text(4)?;
    let direction = Direction::from_name(&direction)
        .ok_or_else(|| Bad::Corrupt(format!("unknown direction {direction:?}")))?;
    let captured_at: i64 = row.get(5).map_err(Bad::Sql)?;
    let verdict: Verdict = serde_json::from_str(&get_text(6)?)
        .map_err(|e| Bad::Corrupt(format!("the verdict does not decode: {e}")))?;
    let fingerprint: Option<Vec<u8>> = row.get(7).map_err(Bad::Sql)?;
    let fingerprint = fingerprint
        .map(|b| {
            <[u8; 16]>::try_from(b.as_slice())
                .map(EventFingerprint)
                .map_err(|_| Bad::Corrupt(format!("a {}-byte fingerprint", b.len())))
        })
        .transpose()?;
    let record = EntryRecord {
        market: MarketId(row.get(1).map_err(Bad::Sql)?),
        zone: ZoneId(row.get(2).map_err(Bad::Sql)?),
        mode,
        direction,
        captured_at: UnixMillis(captured_at.max(0) as u64),
        // Not written: the partition stores `fingerprint` (None for schema-1 rows).
        fingerprint: EventFingerprint([0; 16]),
        // The old table did not record which policy decided.
        policy: None,
        verdict: Verdict {
            replayed: false,
            ..verdict
        },
    };
    Ok((record, fingerprint))
}

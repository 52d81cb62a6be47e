//! The in-memory copy of the registry that the pipeline reads per event. Loaded once at open;
//! afterwards every registry write updates SQLite first and this cache second, under the
//! writer lock, so the cache never shows what is not on disk. On PostgreSQL the follower also
//! puts here the rows that other nodes' writes changed (`pg::changes`), under the same lock.

use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use gatewarden_protocol::{
    CodeColour, GateId, HealthRecord, MarketId, SubjectId, SubjectRecord, TestResult, UnixMillis,
    ZoneId,
};
use rusqlite::{Connection, Row};

use super::codes::Named;
use super::{StoreError, from_sql_u64};
use crate::model::GateInfo;

/// The keyed hashes of one subject's credentials, as stored.
#[derive(Debug, Default)]
pub(super) struct CredentialHashes {
    pub(super) id_card: Option<[u8; 32]>,
    pub(super) qr_tokens: Vec<[u8; 32]>,
}

/// The hot registry.
#[derive(Default)]
pub(super) struct Cache {
    /// Records without the ID-card number (it is not kept anywhere in clear).
    pub(super) subjects: DashMap<SubjectId, Arc<SubjectRecord>>,
    pub(super) id_cards: DashMap<[u8; 32], SubjectId>,
    /// The reverse of `id_cards`, to drop a subject's old card when its record is replaced.
    pub(super) id_card_of: DashMap<SubjectId, [u8; 32]>,
    /// Staff QR tokens by keyed hash, and each subject's hashes (to drop them on replace).
    pub(super) qr_tokens: DashMap<[u8; 32], SubjectId>,
    pub(super) qr_of: DashMap<SubjectId, Vec<[u8; 32]>>,
    pub(super) health: DashMap<SubjectId, HealthRecord>,
    pub(super) gates: DashMap<GateId, GateInfo>,
}

impl Cache {
    /// Reads the whole registry.
    pub(super) fn load(conn: &Connection, db: &Path) -> Result<Self, StoreError> {
        let cache = Self::default();
        cache.load_credentials(conn, db)?;
        cache.load_subjects(conn, db)?;
        cache.load_health(conn, db)?;
        cache.load_gates(conn, db)?;
        Ok(cache)
    }

    /// Puts a subject's record and credential hashes in place of its old ones.
    pub(super) fn replace_subject(&self, record: SubjectRecord, hashes: CredentialHashes) {
        let id = record.subject;
        if let Some((_, old)) = self.qr_of.remove(&id) {
            for hash in &old {
                self.qr_tokens.remove_if(hash, |_, holder| *holder == id);
            }
        }
        if let Some((_, old_hash)) = self.id_card_of.remove(&id) {
            self.id_cards
                .remove_if(&old_hash, |_, holder| *holder == id);
        }
        for hash in &hashes.qr_tokens {
            self.qr_tokens.insert(*hash, id);
        }
        if !hashes.qr_tokens.is_empty() {
            self.qr_of.insert(id, hashes.qr_tokens);
        }
        if let Some(hash) = hashes.id_card {
            self.id_cards.insert(hash, id);
            self.id_card_of.insert(id, hash);
        }
        self.subjects.insert(id, Arc::new(record));
    }

    /// Loads the credential hashes.
    fn load_credentials(&self, conn: &Connection, db: &Path) -> Result<(), StoreError> {
        let sql = |e| StoreError::from_sqlite(db, "loading credentials", e);
        let mut stmt = conn
            .prepare("SELECT kind, key, subject FROM credentials")
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let kind: String = row.get(0).map_err(sql)?;
            let key: Vec<u8> = row.get(1).map_err(sql)?;
            let subject = SubjectId(from_sql_u64(row.get(2).map_err(sql)?));
            let hash: [u8; 32] = key
                .try_into()
                .map_err(|_| corrupt(db, format!("a {kind} hash is not 32 bytes")))?;
            match kind.as_str() {
                "id_card" => {
                    self.id_cards.insert(hash, subject);
                    self.id_card_of.insert(subject, hash);
                }
                "staff_qr_hmac" => {
                    self.qr_tokens.insert(hash, subject);
                    self.qr_of.entry(subject).or_default().push(hash);
                }
                other => return Err(corrupt(db, format!("unknown credential kind {other:?}"))),
            }
        }
        Ok(())
    }

    fn load_subjects(&self, conn: &Connection, db: &Path) -> Result<(), StoreError> {
        let sql = |e| StoreError::from_sqlite(db, "loading subjects", e);
        let mut stmt = conn
            .prepare(
                "SELECT id, category, home_market, markets, zones, valid_from, valid_until, status
                 FROM subjects",
            )
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let record = subject_from_row(row).map_err(|e| match e {
                Decode::Sql(e) => sql(e),
                Decode::Bad(detail) => corrupt(db, detail),
            })?;
            self.subjects.insert(record.subject, Arc::new(record));
        }
        Ok(())
    }

    fn load_health(&self, conn: &Connection, db: &Path) -> Result<(), StoreError> {
        let sql = |e| StoreError::from_sqlite(db, "loading health records", e);
        let mut stmt = conn
            .prepare(
                "SELECT subject, test_at, test_result, vaccine_doses, health_code, travel_code,
                        updated_at
                 FROM health",
            )
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let record = health_from_row(row).map_err(|e| match e {
                Decode::Sql(e) => sql(e),
                Decode::Bad(detail) => corrupt(db, detail),
            })?;
            self.health.insert(record.subject, record);
        }
        Ok(())
    }

    fn load_gates(&self, conn: &Connection, db: &Path) -> Result<(), StoreError> {
        let sql = |e| StoreError::from_sqlite(db, "loading gates", e);
        let mut stmt = conn
            .prepare("SELECT id, market, zone, name FROM gates")
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let gate = GateInfo {
                gate: GateId(row.get(0).map_err(sql)?),
                market: MarketId(row.get(1).map_err(sql)?),
                zone: ZoneId(row.get(2).map_err(sql)?),
                name: row.get(3).map_err(sql)?,
            };
            self.gates.insert(gate.gate, gate);
        }
        Ok(())
    }
}

fn corrupt(db: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: db.to_owned(),
        detail: detail.into(),
    }
}

/// A row that SQLite could not deliver, or delivered with a value gatewarden never writes.
enum Decode {
    Sql(rusqlite::Error),
    Bad(String),
}

impl From<rusqlite::Error> for Decode {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

fn text_code<T: Named>(row: &Row<'_>, idx: usize, what: &str) -> Result<T, Decode> {
    let s = row
        .get_ref(idx)?
        .as_str()
        .map_err(|e| Decode::Bad(format!("{what}: {e}")))?;
    T::from_label(s).ok_or_else(|| Decode::Bad(format!("unknown {what} {s:?}")))
}

fn id_list<T>(row: &Row<'_>, idx: usize, what: &str, wrap: fn(u32) -> T) -> Result<Vec<T>, Decode> {
    let s = row
        .get_ref(idx)?
        .as_str()
        .map_err(|e| Decode::Bad(format!("{what}: {e}")))?;
    let ids: Vec<u32> =
        serde_json::from_str(s).map_err(|e| Decode::Bad(format!("{what} {s:?}: {e}")))?;
    Ok(ids.into_iter().map(wrap).collect())
}

fn opt_time(row: &Row<'_>, idx: usize) -> Result<Option<UnixMillis>, Decode> {
    let v: Option<i64> = row.get(idx)?;
    Ok(v.map(|t| UnixMillis(t.max(0) as u64)))
}

fn subject_from_row(row: &Row<'_>) -> Result<SubjectRecord, Decode> {
    Ok(SubjectRecord {
        subject: SubjectId(from_sql_u64(row.get(0)?)),
        category: text_code(row, 1, "category")?,
        home_market: MarketId(row.get(2)?),
        markets: id_list(row, 3, "markets", MarketId)?,
        zones: id_list(row, 4, "zones", ZoneId)?,
        valid_from: opt_time(row, 5)?,
        valid_until: opt_time(row, 6)?,
        id_card: None,
        qr_tokens: Vec::new(),
        status: text_code(row, 7, "status")?,
    })
}

fn health_from_row(row: &Row<'_>) -> Result<HealthRecord, Decode> {
    let test_result = match row
        .get_ref(2)?
        .as_str_or_null()
        .map_err(|e| Decode::Bad(format!("test_result: {e}")))?
    {
        None => None,
        Some(s) => Some(
            TestResult::from_label(s)
                .ok_or_else(|| Decode::Bad(format!("unknown test result {s:?}")))?,
        ),
    };
    let colour = |idx, what| -> Result<CodeColour, Decode> { text_code(row, idx, what) };
    Ok(HealthRecord {
        subject: SubjectId(from_sql_u64(row.get(0)?)),
        test_at: opt_time(row, 1)?,
        test_result,
        vaccine_doses: row.get(3)?,
        health_code: colour(4, "health code")?,
        travel_code: colour(5, "travel code")?,
        updated_at: UnixMillis(row.get::<_, i64>(6)?.max(0) as u64),
    })
}

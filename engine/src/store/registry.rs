//! Registry reads (from the cache) and writes (SQLite first, then the cache): subjects and
//! their credentials, health records, gates, revocation.

use std::sync::Arc;

use gatewarden_protocol::{
    Category, Credential, GateId, HealthRecord, MarketId, SubjectId, SubjectRecord, SubjectStatus,
    TestResult, UnixMillis, UpdateHealthAck,
};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use super::cache::{Cache, CredentialHashes};
use super::key::CredentialKey;
use super::{SqliteStore, StoreError, from_sql_u64, sql_time, to_sql_u64};
use crate::model::GateInfo;

pub(super) const KIND_ID_CARD: &str = "id_card";

/// The categories that work at a market (and sign in daily), as opposed to its visitors.
pub(super) fn is_staff(category: Category) -> bool {
    matches!(
        category,
        Category::ServiceWorker | Category::Manager | Category::Staff | Category::Merchant
    )
}
pub(super) const KIND_QR: &str = "staff_qr_hmac";

impl Cache {
    /// A subject's record (without its credentials, which are kept only as hashes).
    pub(super) fn subject(&self, id: SubjectId) -> Option<Arc<SubjectRecord>> {
        self.subjects.get(&id).map(|r| Arc::clone(&r))
    }

    /// The subject a credential belongs to, looked up by its keyed hash.
    pub(super) fn resolve_credential(
        &self,
        key: &CredentialKey,
        credential: &Credential,
    ) -> Option<SubjectId> {
        match credential {
            Credential::IdCard(number) => {
                let hash = key.hash_id_card(number);
                self.id_cards.get(&hash).map(|s| *s)
            }
            Credential::StaffQr(token) => {
                let hash = key.hash_qr_token(token);
                self.qr_tokens.get(&hash).map(|s| *s)
            }
        }
    }

    pub(super) fn health(&self, id: SubjectId) -> Option<HealthRecord> {
        self.health.get(&id).map(|h| h.clone())
    }

    pub(super) fn gate(&self, id: GateId) -> Option<GateInfo> {
        self.gates.get(&id).map(|g| g.clone())
    }

    pub(super) fn gates(&self) -> Vec<GateInfo> {
        let mut gates: Vec<GateInfo> = self.gates.iter().map(|g| g.clone()).collect();
        gates.sort_by_key(|g| g.gate);
        gates
    }

    pub(super) fn market_staff(&self, market: MarketId) -> Vec<Arc<SubjectRecord>> {
        let mut staff: Vec<Arc<SubjectRecord>> = self
            .subjects
            .iter()
            .filter(|r| r.home_market == market && is_staff(r.category))
            .map(|r| Arc::clone(&r))
            .collect();
        staff.sort_by_key(|r| r.subject);
        staff
    }

    pub(super) fn subject_ids(&self) -> Vec<SubjectId> {
        let mut ids: Vec<SubjectId> = self.subjects.iter().map(|r| *r.key()).collect();
        ids.sort_unstable();
        ids
    }

    /// See [`Store::find_status_lift`](super::Store::find_status_lift).
    pub(super) fn find_status_lift(
        &self,
        records: &[SubjectRecord],
    ) -> Option<(usize, StoreError)> {
        records.iter().enumerate().find_map(|(i, new)| {
            let old = self.subject(new.subject)?;
            lifts(old.status, new.status).then(|| {
                let error = StoreError::StatusLift {
                    subject: new.subject,
                    from: old.status,
                    to: new.status,
                };
                (i, error)
            })
        })
    }

    pub(super) fn refuse_status_lift(&self, records: &[SubjectRecord]) -> Result<(), StoreError> {
        match self.find_status_lift(records) {
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }
}

impl SqliteStore {
    /// Inserts or replaces subject records, in one transaction. Each record replaces the
    /// stored one entirely, credentials included: a record without `id_card` removes the
    /// subject's card. Returns the number of records written.
    ///
    /// # Errors
    /// [`StoreError::CredentialTaken`] if a card or token belongs to another subject,
    /// [`StoreError::Invalid`] for an empty card or token, [`StoreError::StatusLift`] for a
    /// record that would lift a revocation or blocklisting; nothing is written then.
    pub(crate) fn upsert_subjects(&self, records: &[SubjectRecord]) -> Result<usize, StoreError> {
        let mut conn = self.writer();
        // Under the writer lock, so no revocation can slip in between this check and the write.
        self.cache.refuse_status_lift(records)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql_err("starting a subject upsert", e))?;
        let mut hashes = Vec::with_capacity(records.len());
        for record in records {
            hashes.push(self.write_subject(&tx, record)?);
        }
        tx.commit()
            .map_err(|e| self.sql_err("committing subjects", e))?;
        for (record, hash) in records.iter().zip(hashes) {
            self.cache.replace_subject(cached_copy(record), hash);
        }
        Ok(records.len())
    }

    /// Writes one subject row and its credentials; returns its ID-card hash.
    fn write_subject(
        &self,
        tx: &Transaction<'_>,
        r: &SubjectRecord,
    ) -> Result<CredentialHashes, StoreError> {
        let sql = |e| self.sql_err("writing a subject", e);
        let ids = |v: Vec<u32>| serde_json::to_string(&v).unwrap_or_else(|_| "[]".to_owned());
        tx.prepare_cached(
            "INSERT INTO subjects (id, category, home_market, markets, zones, valid_from,
                                   valid_until, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET
                category = excluded.category, home_market = excluded.home_market,
                markets = excluded.markets, zones = excluded.zones,
                valid_from = excluded.valid_from, valid_until = excluded.valid_until,
                status = excluded.status",
        )
        .and_then(|mut s| {
            s.execute(params![
                to_sql_u64(r.subject.0),
                r.category.name(),
                r.home_market.0,
                ids(r.markets.iter().map(|m| m.0).collect()),
                ids(r.zones.iter().map(|z| z.0).collect()),
                r.valid_from.map(sql_time),
                r.valid_until.map(sql_time),
                r.status.name(),
            ])
        })
        .map_err(sql)?;
        tx.prepare_cached("DELETE FROM credentials WHERE subject = ?1")
            .and_then(|mut s| s.execute([to_sql_u64(r.subject.0)]))
            .map_err(sql)?;
        let id_card = match &r.id_card {
            Some(number) => {
                if number.trim().is_empty() {
                    return Err(invalid(r.subject, "ID card", "the number is empty"));
                }
                let hash = self.key.hash_id_card(number);
                self.write_credential(tx, r.subject, KIND_ID_CARD, &hash)?;
                Some(hash)
            }
            None => None,
        };
        let mut qr_tokens = Vec::with_capacity(r.qr_tokens.len());
        for token in &r.qr_tokens {
            if token.is_empty() {
                return Err(invalid(r.subject, "staff QR token", "the token is empty"));
            }
            let hash = self.key.hash_qr_token(token);
            self.write_credential(tx, r.subject, KIND_QR, &hash)?;
            qr_tokens.push(hash);
        }
        qr_tokens.sort_unstable();
        qr_tokens.dedup();
        Ok(CredentialHashes { id_card, qr_tokens })
    }

    fn write_credential(
        &self,
        tx: &Transaction<'_>,
        subject: SubjectId,
        kind: &'static str,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let sql = |e| self.sql_err("writing a credential", e);
        let holder: Option<i64> = tx
            .prepare_cached("SELECT subject FROM credentials WHERE kind = ?1 AND key = ?2")
            .and_then(|mut s| s.query_row(params![kind, key], |r| r.get(0)).optional())
            .map_err(sql)?;
        match holder.map(|h| SubjectId(from_sql_u64(h))) {
            Some(h) if h == subject => Ok(()), // the same token listed twice
            Some(holder) => Err(StoreError::CredentialTaken {
                kind: if kind == KIND_ID_CARD {
                    "ID card"
                } else {
                    "staff QR token"
                },
                subject,
                holder,
            }),
            None => tx
                .prepare_cached("INSERT INTO credentials (kind, key, subject) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![kind, key, to_sql_u64(subject.0)]))
                .map(drop)
                .map_err(sql),
        }
    }

    /// Applies health records in one transaction. Idempotent: a record older than the stored
    /// one (by `updated_at`) is ignored, so replaying a feed changes nothing. Records of
    /// unknown subjects are counted in `unknown_subjects` and not applied; stale records are
    /// counted in neither field.
    ///
    /// # Errors
    /// SQLite failures; nothing is applied then.
    pub(crate) fn upsert_health(
        &self,
        records: &[HealthRecord],
    ) -> Result<UpdateHealthAck, StoreError> {
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql_err("starting a health upsert", e))?;
        let mut applied = Vec::new();
        let mut unknown = 0u32;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO health (subject, test_at, test_result, vaccine_doses, health_code,
                                         travel_code, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (subject) DO UPDATE SET
                        test_at = excluded.test_at, test_result = excluded.test_result,
                        vaccine_doses = excluded.vaccine_doses,
                        health_code = excluded.health_code, travel_code = excluded.travel_code,
                        updated_at = excluded.updated_at
                     WHERE excluded.updated_at >= health.updated_at",
                )
                .map_err(|e| self.sql_err("preparing the health upsert", e))?;
            for r in records {
                if !self.cache.subjects.contains_key(&r.subject) {
                    unknown += 1;
                    continue;
                }
                let changed = stmt
                    .execute(params![
                        to_sql_u64(r.subject.0),
                        r.test_at.map(sql_time),
                        r.test_result.map(TestResult::name),
                        r.vaccine_doses,
                        r.health_code.name(),
                        r.travel_code.name(),
                        sql_time(r.updated_at),
                    ])
                    .map_err(|e| self.sql_err("writing a health record", e))?;
                if changed > 0 {
                    applied.push(r);
                }
            }
        }
        tx.commit()
            .map_err(|e| self.sql_err("committing health records", e))?;
        let ack = UpdateHealthAck {
            applied: u32::try_from(applied.len()).unwrap_or(u32::MAX),
            unknown_subjects: unknown,
        };
        // In order, so that of two records for one subject in a batch the later applied wins,
        // as it did in SQLite.
        for r in applied {
            self.cache.health.insert(r.subject, r.clone());
        }
        Ok(ack)
    }

    pub(crate) fn find_status_lift(
        &self,
        records: &[SubjectRecord],
    ) -> Option<(usize, StoreError)> {
        self.cache.find_status_lift(records)
    }

    /// Lifts a revocation or blocklisting: the subject becomes active again, and the audit
    /// trail records who asked and why. Returns the status it had, or `None` if the subject is
    /// unknown (an active subject is left as it is, and nothing is recorded).
    ///
    /// # Errors
    /// SQLite failures; nothing is changed then.
    pub(crate) fn reinstate(
        &self,
        id: SubjectId,
        reason: &str,
        now: UnixMillis,
    ) -> Result<Option<SubjectStatus>, StoreError> {
        let mut conn = self.writer();
        let Some(current) = self.cache.subject(id) else {
            return Ok(None);
        };
        if current.status == SubjectStatus::Active {
            return Ok(Some(SubjectStatus::Active));
        }
        let sql = |e| self.sql_err("reinstating a subject", e);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        tx.execute(
            "UPDATE subjects SET status = 'active' WHERE id = ?1",
            [to_sql_u64(id.0)],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO revocations (subject, reason, at, action) VALUES (?1, ?2, ?3, 'reinstate')",
            params![to_sql_u64(id.0), reason, sql_time(now)],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        let mut record = (*current).clone();
        record.status = SubjectStatus::Active;
        self.cache.subjects.insert(id, Arc::new(record));
        Ok(Some(current.status))
    }

    /// Revokes a subject everywhere and records why in the audit trail. A blocklisted subject
    /// stays blocklisted (the stronger bar); the revocation is still recorded. Returns false
    /// if the subject is unknown.
    ///
    /// # Errors
    /// SQLite failures; nothing is changed then.
    pub(crate) fn revoke(
        &self,
        id: SubjectId,
        reason: &str,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer();
        let Some(current) = self.cache.subject(id) else {
            return Ok(false);
        };
        let sql = |e| self.sql_err("revoking a subject", e);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        tx.execute(
            "UPDATE subjects SET status = 'revoked' WHERE id = ?1 AND status = 'active'",
            [to_sql_u64(id.0)],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO revocations (subject, reason, at) VALUES (?1, ?2, ?3)",
            params![to_sql_u64(id.0), reason, sql_time(now)],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        if current.status == SubjectStatus::Active {
            let mut record = (*current).clone();
            record.status = SubjectStatus::Revoked;
            self.cache.subjects.insert(id, Arc::new(record));
        }
        Ok(true)
    }

    /// Inserts or replaces gates, in one transaction. Returns the number written.
    ///
    /// # Errors
    /// SQLite failures; nothing is written then.
    pub(crate) fn upsert_gates(&self, gates: &[GateInfo]) -> Result<usize, StoreError> {
        let mut conn = self.writer();
        let sql = |e| self.sql_err("writing gates", e);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO gates (id, market, zone, name) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (id) DO UPDATE SET
                        market = excluded.market, zone = excluded.zone, name = excluded.name",
                )
                .map_err(sql)?;
            for g in gates {
                stmt.execute(params![g.gate.0, g.market.0, g.zone.0, g.name])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        for g in gates {
            self.cache.gates.insert(g.gate, g.clone());
        }
        Ok(gates.len())
    }
}

/// The cached form of a record: no card number, no tokens (the cache holds their hashes).
pub(super) fn cached_copy(r: &SubjectRecord) -> SubjectRecord {
    let mut copy = r.clone();
    copy.id_card = None;
    copy.qr_tokens.clear();
    copy
}

pub(super) fn invalid(subject: SubjectId, what: &'static str, reason: &str) -> StoreError {
    StoreError::Invalid {
        subject,
        what,
        reason: reason.to_owned(),
    }
}

/// Whether going from `old` to `new` lifts a revocation or blocklisting.
pub(super) fn lifts(old: SubjectStatus, new: SubjectStatus) -> bool {
    match old {
        SubjectStatus::Active => false,
        SubjectStatus::Revoked => new == SubjectStatus::Active,
        SubjectStatus::Blocklisted => new != SubjectStatus::Blocklisted,
    }
}

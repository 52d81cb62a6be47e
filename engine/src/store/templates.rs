//! Face templates: the truth from which the gallery is derived. Each is a row of
//! little-endian f32 in a BLOB, with an id that only grows, so the gallery can catch up from
//! the highest id it has folded in (its watermark).

use gatewarden_protocol::SubjectId;
use rusqlite::{TransactionBehavior, params};

use super::cache::Cache;
use super::{SqliteStore, StoreError, from_sql_u64, to_sql_u64};

impl SqliteStore {
    /// Adds templates `(subject, model, embedding)` in one transaction and returns their new
    /// ids, ascending. Keep batches to a few thousand rows: the entry writer waits while this
    /// transaction holds the database's write lock.
    ///
    /// # Errors
    /// [`StoreError::UnknownSubject`] for a subject not in the registry, and
    /// [`StoreError::Invalid`] for an empty model or embedding or a non-finite value; nothing
    /// is added then.
    pub(crate) fn add_templates(
        &self,
        rows: &[(SubjectId, &str, &[f32])],
    ) -> Result<Vec<u64>, StoreError> {
        for (i, (subject, model, embedding)) in rows.iter().enumerate() {
            check_template(&self.cache, i, *subject, model, embedding)?;
        }
        let mut conn = self.writer();
        let sql = |e| self.sql_err("adding templates", e);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let mut ids = Vec::with_capacity(rows.len());
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO templates (subject, model, dim, vector) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql)?;
            let mut bytes = Vec::new();
            for (subject, model, embedding) in rows {
                bytes.clear();
                bytes.extend(embedding.iter().flat_map(|v| v.to_le_bytes()));
                stmt.execute(params![
                    to_sql_u64(subject.0),
                    model,
                    embedding.len(),
                    bytes
                ])
                .map_err(sql)?;
                ids.push(from_sql_u64(tx.last_insert_rowid()));
            }
        }
        tx.commit().map_err(sql)?;
        Ok(ids)
    }

    /// Calls `f(id, subject, embedding)` for every template with `id > watermark`, in
    /// ascending id order, and returns how many it visited. Rows are decoded one at a time
    /// into one reused buffer, so a gallery of any size streams through in constant memory.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a vector whose length is not a whole number of f32.
    pub(crate) fn for_each_template_since(
        &self,
        watermark: u64,
        mut f: impl FnMut(u64, SubjectId, &[f32]),
    ) -> Result<u64, StoreError> {
        let conn = self.readers.get()?;
        let sql = |e| self.sql_err("reading templates", e);
        let mut stmt = conn
            .prepare_cached("SELECT id, subject, vector FROM templates WHERE id > ?1 ORDER BY id")
            .map_err(sql)?;
        let mut rows = stmt.query([to_sql_u64(watermark)]).map_err(sql)?;
        let mut buf: Vec<f32> = Vec::new();
        let mut count = 0u64;
        while let Some(row) = rows.next().map_err(sql)? {
            let id = from_sql_u64(row.get(0).map_err(sql)?);
            let subject = SubjectId(from_sql_u64(row.get(1).map_err(sql)?));
            let blob = row.get_ref(2).and_then(|v| Ok(v.as_blob()?)).map_err(sql)?;
            let (chunks, rest) = blob.as_chunks::<4>();
            if !rest.is_empty() {
                return Err(self.corrupt(format!(
                    "template {id} has {} bytes, not a whole number of f32",
                    blob.len()
                )));
            }
            buf.clear();
            buf.extend(chunks.iter().map(|c| f32::from_le_bytes(*c)));
            f(id, subject, &buf);
            count += 1;
        }
        Ok(count)
    }

    /// How many templates the store holds.
    ///
    /// # Errors
    /// SQLite failures.
    pub(crate) fn template_count(&self) -> Result<u64, StoreError> {
        let conn = self.readers.get()?;
        conn.query_row("SELECT count(*) FROM templates", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.sql_err("counting templates", e))
    }
}

/// Refuses a template that names an unknown subject or holds no usable values.
pub(super) fn check_template(
    cache: &Cache,
    index: usize,
    subject: SubjectId,
    model: &str,
    embedding: &[f32],
) -> Result<(), StoreError> {
    if !cache.subjects.contains_key(&subject) {
        return Err(StoreError::UnknownSubject(subject));
    }
    let invalid = |reason: String| StoreError::Invalid {
        subject,
        what: "template",
        reason,
    };
    if model.is_empty() {
        return Err(invalid(format!("template {index} has an empty model id")));
    }
    if embedding.is_empty() {
        return Err(invalid(format!("template {index} has no values")));
    }
    // The position only: the value is biometric data.
    if let Some(at) = embedding.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!(
            "template {index} has a non-finite value at index {at}"
        )));
    }
    Ok(())
}

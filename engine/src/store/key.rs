//! The credential key: 32 random bytes in `credential.key`, the HMAC-SHA256 key under which
//! ID-card numbers and staff QR tokens are hashed (and event fingerprints made). Neither the
//! number nor the token is ever stored; a gate presents it, the engine hashes it, and the hash
//! finds the subject. The key can live apart from the store (`engine.credential_key`), so a
//! backup of the store alone reveals neither.
//!
//! The database keeps a short check value of the key, so that a store opened with the wrong or
//! a regenerated key is refused instead of silently failing every ID-card lookup.

use std::fs;
use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension};

use super::{StoreError, fsutil};

const KEY_LEN: usize = 32;
/// The label hashed to derive the key check stored in `meta`.
const CHECK_LABEL: &[u8] = b"gatewarden credential key check v1";
pub(super) const CHECK_META: &str = "credential_key_check";
/// Domain separation: a QR-token hash never equals an ID-card hash, nor a fingerprint either.
const QR_LABEL: &[u8] = b"gatewarden staff qr v1\0";
/// Domain separation: an event fingerprint can never equal a credential hash.
const FINGERPRINT_LABEL: &[u8] = b"gatewarden event fingerprint v1\0";

/// The HMAC key of ID-card hashes.
pub(super) struct CredentialKey {
    key: hmac::Key,
}

impl CredentialKey {
    fn new(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// The stored form of an ID-card number: the HMAC of its normalised text.
    pub(super) fn hash_id_card(&self, number: &str) -> [u8; 32] {
        let normalised = normalise_id_card(number);
        let tag = hmac::sign(&self.key, normalised.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The stored form of a staff QR token: the HMAC of its bytes, under its own label. Tokens
    /// are matched exactly (unlike card numbers, they are not normalised).
    pub(super) fn hash_qr_token(&self, token: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(QR_LABEL);
        ctx.update(token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// A keyed 128-bit digest of an event's canonical bytes. Keyed, because the bytes hold an
    /// ID-card number: an unkeyed hash of a few guessable fields would give the number away.
    pub(super) fn fingerprint(&self, canonical: &[u8]) -> [u8; 16] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(FINGERPRINT_LABEL);
        ctx.update(canonical);
        let mut out = [0u8; 16];
        out.copy_from_slice(&ctx.sign().as_ref()[..16]);
        out
    }

    fn check_value(&self) -> String {
        let tag = hmac::sign(&self.key, CHECK_LABEL);
        tag.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Card readers differ in case and padding (`...123x` vs `...123X`); hash one form.
pub(super) fn normalise_id_card(number: &str) -> String {
    number.trim().to_ascii_uppercase()
}

/// Loads the key file, or creates it when the store holds no ID-card hashes yet, and checks it
/// against the check value recorded in the database.
pub(super) fn load_or_create(
    conn: &Connection,
    db: &Path,
    path: &Path,
    history_has_entries: bool,
) -> Result<CredentialKey, StoreError> {
    let sql = |op| move |e| StoreError::from_sqlite(db, op, e);
    let recorded: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [CHECK_META], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql("reading the credential key check"))?;
    load_or_create_with(
        path,
        recorded,
        || Ok(history_has_entries || has_id_cards(conn, db)?),
        |check| {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [CHECK_META, check],
            )
            .map(drop)
            .map_err(sql("recording the credential key check"))
        },
    )
}

/// The backend-independent part of [`load_or_create`]: `recorded` is the check value the
/// database holds, `has_hashes` says whether anything in it was made with the key (credential
/// hashes, fingerprinted entries), and `record` stores a new check value.
pub(super) fn load_or_create_with(
    path: &Path,
    recorded: Option<String>,
    mut has_hashes: impl FnMut() -> Result<bool, StoreError>,
    record: impl FnOnce(&str) -> Result<(), StoreError>,
) -> Result<CredentialKey, StoreError> {
    let key = match fs::read(path) {
        Ok(bytes) if bytes.len() == KEY_LEN => CredentialKey::new(&bytes),
        Ok(bytes) => {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("the key file has {} bytes, expected {KEY_LEN}", bytes.len()),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if recorded.is_some() && has_hashes()? {
                return Err(StoreError::KeyMissing {
                    path: path.to_owned(),
                });
            }
            create(path)?
        }
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let check = key.check_value();
    match recorded {
        Some(r) if r == check => {}
        Some(_) if has_hashes()? => {
            return Err(StoreError::KeyMismatch {
                path: path.to_owned(),
            });
        }
        // No hash depends on the old key (or there was none): record this one.
        _ => record(&check)?,
    }
    Ok(key)
}

/// Whether the registry holds credential hashes (ID cards, staff QR tokens) made with the key.
/// With those, or with entries (whose fingerprints are keyed), a lost or different key cannot
/// be replaced silently.
fn has_id_cards(conn: &Connection, db: &Path) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM credentials WHERE kind IN ('id_card', 'staff_qr_hmac'))",
        [],
        |r| r.get(0),
    )
    .map_err(|e| StoreError::from_sqlite(db, "looking for keyed hashes", e))
}

/// Replaces staff QR tokens stored in clear (schema version 1 kept them so) by their keyed
/// hashes, in one transaction. Idempotent: hashed rows have their own kind.
pub(super) fn hash_clear_qr_tokens(
    conn: &mut Connection,
    db: &Path,
    key: &CredentialKey,
) -> Result<usize, StoreError> {
    let sql = |e| StoreError::from_sqlite(db, "hashing staff QR tokens", e);
    let tx = conn.transaction().map_err(sql)?;
    let clear: Vec<(Vec<u8>, i64)> = {
        let mut stmt = tx
            .prepare("SELECT key, subject FROM credentials WHERE kind = 'staff_qr'")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)?
    };
    for (token, subject) in &clear {
        let token = std::str::from_utf8(token).map_err(|_| StoreError::Corrupt {
            path: db.to_owned(),
            detail: "a staff QR token is not UTF-8".to_owned(),
        })?;
        tx.execute(
            "INSERT OR REPLACE INTO credentials (kind, key, subject) VALUES ('staff_qr_hmac', ?1, ?2)",
            rusqlite::params![&key.hash_qr_token(token)[..], subject],
        )
        .map_err(sql)?;
    }
    tx.execute("DELETE FROM credentials WHERE kind = 'staff_qr'", [])
        .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(clear.len())
}

fn create(path: &Path) -> Result<CredentialKey, StoreError> {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Io {
            path: path.to_owned(),
            source: std::io::Error::other("the system random generator failed"),
        })?;
    fsutil::write_new_private(path, &bytes)?;
    Ok(CredentialKey::new(&bytes))
}

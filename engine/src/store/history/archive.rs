//! Reading the entry history without touching it: every file opened read-only, nothing
//! created, no schema check that could write, no checkpoint on close.
//!
//! For tools that look back over past entries (policy replay, threshold calibration) while a
//! server may be writing today's partition, or on a copy of a site. A store opened the usual
//! way ([`Store::open`](crate::store::Store::open)) migrates, creates missing files and
//! checkpoints; this reader does none of that.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use gatewarden_protocol::{
    Category, Check, Decision, Direction, GateId, MarketId, SubjectId, UnixMillis, ZoneId,
};
use rusqlite::{Connection, OpenFlags};

use super::partition::{Day, Partition, day_of_file};
use crate::store::codes::Named;
use crate::store::entries::{ENTRY_COLUMNS, decode_entry};
use crate::store::{DB_FILE, ENTRIES_DIR, ModeKind, StoreError, from_sql_u64, sql_time};

/// One recorded entry with everything the record holds: where, when, what, and every check
/// with its value and threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedEntry {
    /// The gate.
    pub gate: GateId,
    /// The event's sequence number at that gate.
    pub seq: u64,
    /// The gate's market.
    pub market: MarketId,
    /// The gate's zone.
    pub zone: ZoneId,
    /// Whom the verdict was about, if anyone was identified.
    pub subject: Option<SubjectId>,
    /// The recorded decision.
    pub decision: Decision,
    /// What the event asked for.
    pub mode: ModeKind,
    /// Entering or leaving.
    pub direction: Direction,
    /// When the gate captured the person.
    pub captured_at: UnixMillis,
    /// When the engine decided (the `now` of the decision).
    pub decided_at: UnixMillis,
    /// Every check of the verdict, in policy order.
    pub checks: Vec<Check>,
}

/// The history of one store, read-only.
#[derive(Debug)]
pub struct EntryArchive {
    store_dir: PathBuf,
    days: BTreeMap<Day, PathBuf>,
}

impl EntryArchive {
    /// Lists the day partitions of the store in `store_dir` (normally `DATA/store`), opening
    /// none of them yet.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the entries folder cannot be listed (a store without one has no
    /// history and gives an empty archive).
    pub fn open(store_dir: &Path) -> Result<Self, StoreError> {
        let dir = store_dir.join(ENTRIES_DIR);
        let mut days = BTreeMap::new();
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    store_dir: store_dir.to_owned(),
                    days,
                });
            }
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        for entry in listing {
            let entry = entry.map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
            if let Some(day) = entry.file_name().to_str().and_then(day_of_file) {
                days.insert(day, entry.path());
            }
        }
        Ok(Self {
            store_dir: store_dir.to_owned(),
            days,
        })
    }

    /// The archive of the site whose store is at `location` (`None`: SQLite) in `store_dir`.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] for a PostgreSQL store: the archive reads SQLite day files
    /// (policy replay and calibration from recorded entries are not there yet); otherwise as
    /// [`EntryArchive::open`].
    pub fn open_at(
        location: Option<&crate::store::StoreLocation>,
        store_dir: &Path,
    ) -> Result<Self, StoreError> {
        match location {
            None | Some(crate::store::StoreLocation::Sqlite) => Self::open(store_dir),
            Some(_) => Err(StoreError::Unsupported {
                what: "reading the entry history for policy replay or calibration",
            }),
        }
    }

    /// The archive of an open store's history; see [`EntryArchive::open_at`].
    ///
    /// # Errors
    /// As [`EntryArchive::open_at`].
    pub fn of_store(store: &crate::store::Store) -> Result<Self, StoreError> {
        match store.backend_name() {
            "sqlite" => Self::open(store.dir()),
            _ => Err(StoreError::Unsupported {
                what: "reading the entry history for policy replay or calibration",
            }),
        }
    }

    /// The UTC days that have a partition, oldest first.
    pub fn days(&self) -> Vec<i64> {
        self.days.keys().copied().collect()
    }

    /// Calls `f` for every entry decided in `[since, until)`, day by day, in decision order
    /// within a day. Returns how many entries it visited.
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] for a record that does not decode.
    pub fn for_each(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        mut f: impl FnMut(&ArchivedEntry),
    ) -> Result<u64, StoreError> {
        if until.0 <= since.0 {
            return Ok(0);
        }
        let first = super::day_of(since);
        let last = super::day_of(UnixMillis(until.0 - 1));
        let mut visited = 0;
        for (&day, path) in self.days.range(first..=last) {
            visited += read_partition(day, path, since, until, &mut f)?;
        }
        Ok(visited)
    }

    /// Every registered person's category, from the registry as it is now (entries do not
    /// record it).
    ///
    /// # Errors
    /// SQLite failures, or [`StoreError::Corrupt`] for a category this build does not know.
    pub fn categories(&self) -> Result<HashMap<SubjectId, Category>, StoreError> {
        let path = self.store_dir.join(DB_FILE);
        let conn = open_read_only(&path)?;
        let sql = |e| StoreError::from_sqlite(&path, "reading the registry", e);
        let mut stmt = conn
            .prepare("SELECT id, category FROM subjects")
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        let mut out = HashMap::new();
        while let Some(row) = rows.next().map_err(sql)? {
            let id = SubjectId(from_sql_u64(row.get(0).map_err(sql)?));
            let name: String = row.get(1).map_err(sql)?;
            let category = Category::from_label(&name).ok_or_else(|| StoreError::Corrupt {
                path: path.clone(),
                detail: format!("person {} has an unknown category {name:?}", id.0),
            })?;
            out.insert(id, category);
        }
        Ok(out)
    }
}

/// A read-only connection that creates nothing, and never checkpoints: a reader must not
/// write a byte of a store another process may be writing.
fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let err = |op| move |e| StoreError::from_sqlite(path, op, e);
    let conn = Connection::open_with_flags(path, flags).map_err(err("opening read-only"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err("setting the busy timeout"))?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(err("setting connection options"))?;
    Ok(conn)
}

fn read_partition(
    day: Day,
    path: &Path,
    since: UnixMillis,
    until: UnixMillis,
    f: &mut impl FnMut(&ArchivedEntry),
) -> Result<u64, StoreError> {
    let conn = open_read_only(path)?;
    // The form cache of a partition object; its read pool is never used here.
    let part = Partition::new(day, path.to_owned());
    let sql = |e| StoreError::from_sqlite(path, "reading entries", e);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE decided_at >= ?1 AND decided_at < ?2 \
             ORDER BY decided_at, id"
        ))
        .map_err(sql)?;
    let mut rows = stmt
        .query([sql_time(since), sql_time(until)])
        .map_err(sql)?;
    let mut visited = 0;
    while let Some(row) = rows.next().map_err(sql)? {
        f(&decode(&part, &conn, row)?);
        visited += 1;
    }
    Ok(visited)
}

fn decode(
    part: &Partition,
    conn: &Connection,
    row: &rusqlite::Row<'_>,
) -> Result<ArchivedEntry, StoreError> {
    let (e, body) = decode_entry(part, conn, row)?;
    Ok(ArchivedEntry {
        gate: e.gate,
        seq: e.seq,
        market: e.market,
        zone: e.zone,
        subject: e.subject,
        decision: e.decision,
        mode: e.mode,
        direction: e.direction,
        captured_at: e.captured_at,
        decided_at: e.decided_at,
        checks: body.checks,
    })
}

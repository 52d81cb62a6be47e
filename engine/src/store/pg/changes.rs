//! The registry's change log (`registry_changes`, schema version 3): how every node's cache and
//! gallery follow registry writes made at any node.
//!
//! # Writing
//!
//! Every registry write of [`PgStore`] (subjects, health records, revocations and
//! reinstatements, gates, templates) runs [`lock`] first in its transaction and [`record`]
//! last: one row per changed thing (ids only, never personal data) and one `NOTIFY
//! gatewarden_registry`, which PostgreSQL delivers to the listeners when, and only if, the
//! transaction commits. Between the two, under the lock, it rereads the rows it is about into
//! the cache ([`PgStore::reread`]): its checks against the cache (an upload that would lift a
//! revocation, a health record for someone unknown, a revocation or reinstatement) then judge
//! the database's rows, not a copy the follower has not brought up to date yet.
//!
//! # The watermark gap, and why a lock closes it
//!
//! A follower reads `WHERE id > watermark` and moves its watermark to the highest id read. Ids
//! come from a sequence when a row is inserted, but transactions commit in any order: were
//! two writers free to interleave, one could take id 7, another id 8 and commit first, and a
//! follower reading in between would see 8, move to 8, and never read 7. [`lock`] takes a
//! transaction-level advisory lock before anything is written, so registry writes of every
//! node run one at a time: each takes its ids after the previous one committed (a committed
//! transaction is visible before it releases its locks), so ids commit in id order, and a
//! snapshot that shows id `n` shows every id below it. The cost: registry writes queue behind
//! each other across nodes. They are rare administrative writes (enrolments, health feeds,
//! revocations), each a few milliseconds, never on the event path (entries are not registry
//! writes and take no such lock). A look-back window would avoid the queue but re-read every
//! change for its length on every poll and still miss a transaction slower than the window.
//!
//! # Following
//!
//! [`ChangeFeed`] is a follower's own connection: it `LISTEN`s (unless told not to) and reads
//! the changes above the store's follow watermark; [`PgStore::apply_changes`] rereads the rows
//! they name and puts them in the cache, and tells the caller from which template id to load
//! the gallery. A notification only wakes the follower early: the poll every interval is the
//! guarantee, since notifications sent while a connection was down are lost. Applying a
//! change rereads the current row, so applying one twice, or one this node wrote itself, is
//! harmless.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use gatewarden_protocol::{GateId, SubjectId};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{GenericClient, IsolationLevel, Transaction};

use super::{
    CredentialKind, Db, PgClient, PgStore, gate_from_row, health_from_row, pg, subject_from_row,
};
use crate::store::cache::CredentialHashes;
use crate::store::{RegistryFollowCounters, StoreError, from_sql_u64, to_sql_u64};

/// `pg_advisory_xact_lock` key of registry writes: "GWRG".
const REGISTRY_LOCK: i64 = 0x4757_5247;

/// The channel of the change notifications.
const CHANNEL: &str = "gatewarden_registry";

/// The `application_name` of a follower's connection (visible in `pg_stat_activity`).
pub(crate) const FOLLOWER_APPLICATION: &str = "gatewarden-follower";

/// Most changes read per query; a longer backlog is read in several.
const READ_LIMIT: i64 = 10_000;

/// What a change row names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    /// A subject's record, credentials or status (`key`: the subject id).
    Subject,
    /// A subject's health record (`key`: the subject id).
    Health,
    /// A gate (`key`: the gate id).
    Gate,
    /// Templates added (`key`: every one has a greater id).
    Templates,
}

impl ChangeKind {
    fn name(self) -> &'static str {
        match self {
            Self::Subject => "subject",
            Self::Health => "health",
            Self::Gate => "gate",
            Self::Templates => "templates",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "subject" => Self::Subject,
            "health" => Self::Health,
            "gate" => Self::Gate,
            "templates" => Self::Templates,
            _ => return None,
        })
    }
}

/// Serialises registry writes across nodes (see the module docs). Call it first in the
/// transaction, before anything takes an id.
pub(super) fn lock(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REGISTRY_LOCK])
        .map(drop)
        .map_err(pg("locking the registry for a write"))
}

/// Records that `keys` of `kind` changed, and notifies the followers on commit.
pub(super) fn record(
    tx: &mut Transaction<'_>,
    kind: ChangeKind,
    keys: &[i64],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let op = pg("recording a registry change");
    tx.execute(
        "INSERT INTO registry_changes (kind, key, at)
         SELECT $1, k, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
         FROM unnest($2::bigint[]) AS k",
        &[&kind.name(), &keys],
    )
    .map_err(&op)?;
    // Identical notifications of one transaction are folded into one by PostgreSQL.
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .map(drop)
        .map_err(&op)
}

/// The highest change id visible to `client`'s snapshot: where a cache loaded in the same
/// snapshot starts following.
pub(super) fn latest(client: &mut impl GenericClient) -> Result<i64, StoreError> {
    client
        .query_one("SELECT coalesce(max(id), 0) FROM registry_changes", &[])
        .and_then(|r| r.try_get(0))
        .map_err(pg("reading the registry change log"))
}

/// One change read from the log.
#[derive(Clone, Copy, Debug)]
struct Change {
    id: i64,
    kind: ChangeKind,
    key: i64,
    /// How long ago it was written, by the database's clock (ms).
    age_ms: i64,
}

/// The follower's counters, kept by the store so that its stats can show them.
#[derive(Default)]
pub(super) struct FollowState {
    /// The highest change applied (or, before any, the one the cache was loaded at).
    pub(super) watermark: AtomicI64,
    applied: AtomicU64,
    lag_ms: AtomicU64,
    polls: AtomicU64,
    notifications: AtomicU64,
    connects: AtomicU64,
}

impl FollowState {
    pub(super) fn at(watermark: i64) -> Self {
        let state = Self::default();
        state.watermark.store(watermark, Ordering::Relaxed);
        state
    }

    pub(super) fn snapshot(&self) -> RegistryFollowCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RegistryFollowCounters {
            watermark: u64::try_from(self.watermark.load(Ordering::Relaxed)).unwrap_or(0),
            applied: get(&self.applied),
            lag_ms: get(&self.lag_ms),
            polls: get(&self.polls),
            notifications: get(&self.notifications),
            connects: get(&self.connects),
        }
    }
}

/// A follower's own connection to the change log.
pub(crate) struct ChangeFeed {
    client: PgClient,
    state: Arc<FollowState>,
}

impl ChangeFeed {
    /// Connects, and `LISTEN`s when `listen`.
    pub(super) fn connect(
        db: &Db,
        state: Arc<FollowState>,
        listen: bool,
    ) -> Result<Self, StoreError> {
        let mut client = db.connect_as(FOLLOWER_APPLICATION)?;
        if listen {
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .map_err(pg("listening for registry changes"))?;
        }
        state.connects.fetch_add(1, Ordering::Relaxed);
        Ok(Self { client, state })
    }

    /// Waits up to `timeout` for a change notification; true if one (or more) came. Without
    /// `LISTEN` none ever comes and this just waits.
    ///
    /// # Errors
    /// The connection failed.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        let op = pg("waiting for registry changes");
        let (first, count) = {
            let mut notifications = self.client.notifications();
            let first = notifications.timeout_iter(timeout).next().map_err(&op)?;
            // Drain the others already here: one read covers them all.
            let mut count = u64::from(first.is_some());
            if first.is_some() {
                let mut pending = notifications.iter();
                while pending.next().map_err(&op)?.is_some() {
                    count += 1;
                }
            }
            (first, count)
        };
        if first.is_none() {
            if self.client.is_closed() {
                // A lost connection shows as silence here; a statement gives its error, which
                // makes the caller reconnect.
                self.client.simple_query("").map_err(&op)?;
            }
            return Ok(false);
        }
        self.state.notifications.fetch_add(count, Ordering::Relaxed);
        Ok(true)
    }

    /// The changes above `after`, oldest first, at most [`READ_LIMIT`].
    fn read(&mut self, after: i64) -> Result<Vec<Change>, StoreError> {
        let op = pg("reading registry changes");
        let rows = self
            .client
            .query(
                "SELECT id, kind, key,
                        (extract(epoch FROM clock_timestamp()) * 1000)::bigint - at
                 FROM registry_changes WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &READ_LIMIT],
            )
            .map_err(&op)?;
        self.state.polls.fetch_add(1, Ordering::Relaxed);
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get(1).map_err(&op)?;
                Ok(Change {
                    id: row.try_get(0).map_err(&op)?,
                    kind: ChangeKind::from_name(&kind).ok_or_else(|| StoreError::Corrupt {
                        path: "registry_changes".into(),
                        detail: format!("unknown change kind {kind:?}"),
                    })?,
                    key: row.try_get(2).map_err(&op)?,
                    age_ms: row.try_get(3).map_err(&op)?,
                })
            })
            .collect()
    }
}

/// What a round of [`PgStore::apply_changes`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AppliedChanges {
    /// Changes read and applied.
    pub(crate) changes: usize,
    /// Templates with ids above this were added: load them into the gallery.
    pub(crate) templates_after: Option<u64>,
}

/// Registry rows by id (what a batch of changes names, deduplicated).
#[derive(Default)]
pub(super) struct Rows {
    subjects: BTreeSet<i64>,
    health: BTreeSet<i64>,
    gates: BTreeSet<i64>,
    templates_after: Option<i64>,
}

impl Rows {
    /// Subjects (their records, credentials and health records).
    pub(super) fn subjects(ids: impl IntoIterator<Item = SubjectId>) -> Self {
        let subjects: BTreeSet<i64> = ids.into_iter().map(|s| to_sql_u64(s.0)).collect();
        Self {
            health: subjects.clone(),
            subjects,
            ..Self::default()
        }
    }

    fn of(changes: &[Change]) -> Self {
        let mut named = Self::default();
        for c in changes {
            match c.kind {
                ChangeKind::Subject => {
                    named.subjects.insert(c.key);
                }
                ChangeKind::Health => {
                    named.health.insert(c.key);
                }
                ChangeKind::Gate => {
                    named.gates.insert(c.key);
                }
                ChangeKind::Templates => {
                    named.templates_after =
                        Some(named.templates_after.map_or(c.key, |t| t.min(c.key)));
                }
            }
        }
        named
    }
}

impl PgStore {
    /// A follower's connection (`LISTEN`ing when `listen`).
    pub(crate) fn change_feed(&self, listen: bool) -> Result<ChangeFeed, StoreError> {
        ChangeFeed::connect(&self.db, Arc::clone(&self.follow), listen)
    }

    /// Reads every change above the follow watermark, puts the rows they name in the cache,
    /// and moves the watermark. Templates are the caller's: see
    /// [`AppliedChanges::templates_after`].
    pub(crate) fn apply_changes(
        &self,
        feed: &mut ChangeFeed,
    ) -> Result<AppliedChanges, StoreError> {
        let mut applied = AppliedChanges::default();
        loop {
            let after = self.follow.watermark.load(Ordering::Relaxed);
            let changes = feed.read(after)?;
            let Some(last) = changes.last().copied() else {
                return Ok(applied);
            };
            let named = Rows::of(&changes);
            self.refresh_cache(&mut feed.client, &named)?;
            if let Some(t) = named.templates_after {
                let t = from_sql_u64(t);
                applied.templates_after = Some(applied.templates_after.map_or(t, |a| a.min(t)));
            }
            applied.changes += changes.len();
            self.follow
                .applied
                .fetch_add(changes.len() as u64, Ordering::Relaxed);
            self.follow
                .lag_ms
                .store(u64::try_from(last.age_ms).unwrap_or(0), Ordering::Relaxed);
            self.follow.watermark.store(last.id, Ordering::Relaxed);
            if changes.len() < READ_LIMIT as usize {
                return Ok(applied);
            }
        }
    }

    /// Rereads the named subjects (with credentials), health records and gates in one
    /// snapshot and puts them in the cache. Under the registry writer's lock, so that a write
    /// of this node cannot slip between this read and its cache update and be overwritten by
    /// the older row.
    fn refresh_cache(&self, client: &mut PgClient, named: &Rows) -> Result<(), StoreError> {
        if named.subjects.is_empty() && named.health.is_empty() && named.gates.is_empty() {
            return Ok(());
        }
        let _writes = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(pg("rereading changed registry rows"))?;
        self.reread(&mut tx, named)?;
        tx.commit().map_err(pg("rereading changed registry rows"))
    }

    /// Puts the rows `named` as `tx` sees them in the cache. A registry write of this node
    /// calls it first, under the registry lock, for the subjects it is about: its checks
    /// against the cache (a revoked person uploaded as active, a health record of someone
    /// enrolled moments ago at another node) then judge the database's rows, not a copy that
    /// the follower has not brought up to date yet.
    pub(super) fn reread(&self, tx: &mut Transaction<'_>, named: &Rows) -> Result<(), StoreError> {
        let op = pg("rereading changed registry rows");
        let subjects: Vec<i64> = named.subjects.iter().copied().collect();
        let mut hashes = self.credentials_of(tx, &subjects)?;
        let rows = tx
            .query(
                &*format!(
                    "SELECT {} FROM subjects WHERE id = ANY($1)",
                    super::SUBJECT_COLUMNS
                ),
                &[&subjects],
            )
            .map_err(&op)?;
        for row in rows {
            let record = subject_from_row(&self.db, &row)?;
            let hash = hashes.remove(&record.subject).unwrap_or_default();
            self.cache.replace_subject(record, hash);
        }
        let health: Vec<i64> = named.health.iter().copied().collect();
        for row in tx
            .query(
                &*format!(
                    "SELECT {} FROM health WHERE subject = ANY($1)",
                    super::HEALTH_COLUMNS
                ),
                &[&health],
            )
            .map_err(&op)?
        {
            let record = health_from_row(&self.db, &row)?;
            self.cache.health.insert(record.subject, record);
        }
        let gates: Vec<i64> = named.gates.iter().copied().collect();
        for row in tx
            .query(
                &*format!(
                    "SELECT {} FROM gates WHERE id = ANY($1)",
                    super::GATE_COLUMNS
                ),
                &[&gates],
            )
            .map_err(&op)?
        {
            let gate = gate_from_row(&self.db, &row)?;
            self.cache.gates.insert(gate.gate, gate);
        }
        Ok(())
    }

    /// The credential hashes of `subjects`, as stored.
    fn credentials_of(
        &self,
        tx: &mut Transaction<'_>,
        subjects: &[i64],
    ) -> Result<HashMap<SubjectId, CredentialHashes>, StoreError> {
        let op = pg("rereading credentials");
        let mut out: HashMap<SubjectId, CredentialHashes> = HashMap::new();
        for row in tx
            .query(
                "SELECT kind, key, subject FROM credentials WHERE subject = ANY($1)",
                &[&subjects],
            )
            .map_err(&op)?
        {
            let (kind, hash, subject) = super::credential_from_row(&self.db, &row)?;
            let entry = out.entry(subject).or_default();
            match kind {
                CredentialKind::IdCard => entry.id_card = Some(hash),
                CredentialKind::Qr => entry.qr_tokens.push(hash),
            }
        }
        for hashes in out.values_mut() {
            hashes.qr_tokens.sort_unstable();
        }
        Ok(out)
    }
}

/// Change-log keys of subject ids.
pub(super) fn subject_keys(ids: impl IntoIterator<Item = SubjectId>) -> Vec<i64> {
    ids.into_iter().map(|s| to_sql_u64(s.0)).collect()
}

/// Change-log keys of gate ids.
pub(super) fn gate_keys(ids: impl IntoIterator<Item = GateId>) -> Vec<i64> {
    ids.into_iter().map(|g| i64::from(g.0)).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gatewarden_protocol::{GateId, MarketId, ZoneId};

    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::model::GateInfo;
    use crate::testing::postgres;

    fn waiting_for_the_registry_lock(client: &mut ::postgres::Client) -> bool {
        client
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND NOT granted AND objid = $1",
                &[&(REGISTRY_LOCK as u32)],
            )
            .and_then(|r| r.try_get::<_, i64>(0))
            .unwrap()
            > 0
    }

    /// The classic gap of a watermark over a sequence: a write that took the lower id but
    /// commits later. Here a registry write holds its change (id n) uncommitted while another
    /// node writes; that write must wait for it, so no follower can see n + 1 without n.
    #[test]
    fn a_change_committed_late_is_not_skipped_by_a_follower() {
        let Some(server) = postgres::shared() else {
            return;
        };
        let url = server.database().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("credential.key");
        let a = Arc::new(PgStore::open(&url, dir.path(), &key).unwrap());
        let b = PgStore::open(&url, dir.path(), &key).unwrap();
        let mut slow = a.db.connect(true).unwrap();
        let mut observer = a.db.connect(true).unwrap();

        // The slow writer takes the lock and id 1, and does not commit yet.
        let mut tx = slow.transaction().unwrap();
        lock(&mut tx).unwrap();
        record(&mut tx, ChangeKind::Gate, &[9]).unwrap();

        // Meanwhile node a writes a gate, on a thread: it must queue behind the slow writer.
        let writer = {
            let a = Arc::clone(&a);
            std::thread::spawn(move || {
                a.upsert_gates(&[GateInfo {
                    gate: GateId(1),
                    market: MarketId(1),
                    zone: ZoneId(1),
                    name: "gate 1".to_owned(),
                }])
                .unwrap()
            })
        };
        let deadline = SystemClock.instant() + Duration::from_secs(30);
        while !waiting_for_the_registry_lock(&mut observer) {
            assert!(
                !writer.is_finished(),
                "the second write committed while the first held its change uncommitted"
            );
            assert!(
                SystemClock.instant() < deadline,
                "the second write never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        // A follower reading now sees neither write, so its watermark stays below both.
        let mut feed = b.change_feed(false).unwrap();
        assert_eq!(b.apply_changes(&mut feed).unwrap().changes, 0);
        assert_eq!(b.follow.watermark.load(Ordering::Relaxed), 0);

        tx.commit().unwrap();
        writer.join().unwrap();
        let applied = b.apply_changes(&mut feed).unwrap();
        assert_eq!(applied.changes, 2, "both, the late one included");
        assert!(b.cache.gates.contains_key(&GateId(1)));
        let order: Vec<(i64, i64)> = observer
            .query("SELECT id, key FROM registry_changes ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(order, vec![(1, 9), (2, 1)], "ids in commit order");
    }

    /// Writes from two nodes at once while a follower reads: the follower's watermark never
    /// passes a change it has not read.
    #[test]
    fn a_follower_reads_every_change_of_concurrent_writers() {
        let Some(server) = postgres::shared() else {
            return;
        };
        let url = server.database().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("credential.key");
        let nodes: Vec<Arc<PgStore>> = (0..2)
            .map(|_| Arc::new(PgStore::open(&url, dir.path(), &key).unwrap()))
            .collect();
        let follower = PgStore::open(&url, dir.path(), &key).unwrap();
        let writers: Vec<_> = nodes
            .iter()
            .enumerate()
            .flat_map(|(n, node)| (0..2).map(move |t| (n, t, Arc::clone(node))))
            .map(|(n, t, node)| {
                std::thread::spawn(move || {
                    for i in 0..25u32 {
                        let id = 1 + (n as u32 * 2 + t) * 100 + i;
                        node.upsert_gates(&[GateInfo {
                            gate: GateId(id),
                            market: MarketId(1),
                            zone: ZoneId(1),
                            name: format!("gate {id}"),
                        }])
                        .unwrap();
                    }
                })
            })
            .collect();
        let mut feed = follower.change_feed(true).unwrap();
        let mut applied = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            applied += follower.apply_changes(&mut feed).unwrap().changes;
        }
        for w in writers {
            w.join().unwrap();
        }
        applied += follower.apply_changes(&mut feed).unwrap().changes;
        assert_eq!(applied, 100);
        assert_eq!(
            follower.cache.gates.len(),
            100,
            "every gate reached the follower"
        );
    }
}

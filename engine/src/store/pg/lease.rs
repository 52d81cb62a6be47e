//! Market leases in PostgreSQL: the statements on `market_leases` (schema version 2), and the
//! fence that the entry writer checks in its commit's transaction.
//!
//! Every decision about who holds a market is one conditional `UPDATE` judged by the
//! database's clock (`clock_timestamp()`), so two nodes racing for a market serialise on its
//! row and only one wins. Each acquisition adds one to the row's `epoch`: the fencing token.
//! The policy (what to renew, what to take, when to answer `Here`) is `cluster::lease`'s; this
//! file only says it in SQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gatewarden_protocol::MarketId;

use super::{Db, PgClient, pg};
use crate::store::StoreError;

/// Makes a row for every market the gates table names and for `$1` (the nodes' preferred
/// markets). A new row is free from now: its preferred node may take it at once, any other
/// node after the takeover grace.
const ADD_MARKETS: &str = "
INSERT INTO market_leases (market)
SELECT DISTINCT market FROM gates
UNION SELECT unnest($1::bigint[])
ON CONFLICT (market) DO NOTHING";

/// Extends the leases this node holds, each only at the epoch it was taken with: a lease that
/// another node took since (a higher epoch) is not this node's any more.
const RENEW: &str = "
UPDATE market_leases l
SET expires_at = clock_timestamp() + $2::bigint * interval '1 millisecond'
FROM unnest($3::bigint[], $4::bigint[]) AS h(market, epoch)
WHERE l.market = h.market AND l.epoch = h.epoch AND l.holder = $1
RETURNING l.market, l.epoch";

/// Takes every market whose lease has run out: at once for the markets this node prefers
/// (`$3`), after a further grace (`$4` ms) for the others, so that a starting or returning
/// node gets its own markets first. Waits on the row lock of a commit that is fencing on the
/// old lease, so the old holder's last records are in before the new holder reads the log.
const ACQUIRE: &str = "
UPDATE market_leases
SET holder = $1, epoch = epoch + 1, acquired_at = clock_timestamp(),
    expires_at = clock_timestamp() + $2::bigint * interval '1 millisecond'
WHERE expires_at < clock_timestamp()
      - CASE WHEN market = ANY($3::bigint[]) THEN interval '0'
             ELSE $4::bigint * interval '1 millisecond' END
RETURNING market, epoch";

/// Ends leases now (a node that stops cleanly): another node may take them at once.
const RELEASE: &str = "
UPDATE market_leases l SET expires_at = clock_timestamp() - interval '1 day'
FROM unnest($2::bigint[], $3::bigint[]) AS h(market, epoch)
WHERE l.market = h.market AND l.epoch = h.epoch AND l.holder = $1";

const READ: &str = "
SELECT market, holder, epoch, expires_at < clock_timestamp() FROM market_leases ORDER BY market";

/// The fence of a commit: which of the batch's markets this node still holds at the epoch it
/// believes, locking those rows (`FOR SHARE`) until the commit ends, so that no takeover can
/// happen between the check and the commit.
pub(super) const FENCE: &str = "
SELECT market FROM market_leases
WHERE holder = $1
  AND (market, epoch) IN (SELECT * FROM unnest($2::bigint[], $3::bigint[]))
FOR SHARE";

/// A market and the epoch of its lease.
pub(crate) type Held = (MarketId, u64);

/// One row of `market_leases` as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub(crate) market: MarketId,
    /// The node that holds (or last held) it; `None`: never held.
    pub(crate) holder: Option<String>,
    pub(crate) epoch: u64,
    /// The lease has run out by the database's clock.
    pub(crate) expired: bool,
}

/// This node's side of the lease table, on a connection of its own (the renewal thread's).
pub(crate) struct LeaseTable {
    db: Arc<Db>,
    node: String,
    /// `None` after a failure: the next call reconnects.
    client: Option<PgClient>,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("database", &self.db.redacted)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn columns(held: &[Held]) -> (Vec<i64>, Vec<i64>) {
    held.iter()
        .map(|(m, e)| (i64::from(m.0), i64::try_from(*e).unwrap_or(i64::MAX)))
        .unzip()
}

impl LeaseTable {
    /// Connects now, so that a database that cannot be reached fails the start.
    pub(crate) fn connect(db: Arc<Db>, node: &str) -> Result<Self, StoreError> {
        let client = db.connect(true)?;
        Ok(Self {
            db,
            node: node.to_owned(),
            client: Some(client),
        })
    }

    /// Runs `f` on the connection; a failure drops it so that the next call reconnects.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut PgClient) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.db.connect(true)?);
        }
        let Some(client) = self.client.as_mut() else {
            unreachable!("connected just above");
        };
        let out = f(client);
        if out.is_err() {
            self.client = None;
        }
        out
    }

    /// Makes rows for the gates' markets and `preferred`.
    pub(crate) fn add_markets(&mut self, preferred: &[MarketId]) -> Result<(), StoreError> {
        let markets: Vec<i64> = preferred.iter().map(|m| i64::from(m.0)).collect();
        self.with(|c| {
            c.execute(ADD_MARKETS, &[&markets])
                .map_err(pg("adding market leases"))?;
            Ok(())
        })
    }

    /// Extends `held` by `ttl` from now (the database's now); returns those still this node's.
    pub(crate) fn renew(&mut self, held: &[Held], ttl: Duration) -> Result<Vec<Held>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let (markets, epochs) = columns(held);
        let node = self.node.clone();
        self.with(|c| {
            let rows = c
                .query(RENEW, &[&node, &millis(ttl), &markets, &epochs])
                .map_err(pg("renewing market leases"))?;
            rows.iter().map(|r| held_of(r, 1)).collect()
        })
    }

    /// Takes the markets whose leases ran out (see [`ACQUIRE`]); returns them with their new
    /// epochs.
    pub(crate) fn acquire(
        &mut self,
        preferred: &[MarketId],
        ttl: Duration,
        grace: Duration,
    ) -> Result<Vec<Held>, StoreError> {
        let preferred: Vec<i64> = preferred.iter().map(|m| i64::from(m.0)).collect();
        let node = self.node.clone();
        self.with(|c| {
            let rows = c
                .query(ACQUIRE, &[&node, &millis(ttl), &preferred, &millis(grace)])
                .map_err(pg("taking market leases"))?;
            rows.iter().map(|r| held_of(r, 1)).collect()
        })
    }

    /// Ends `held` now, so that another node need not wait for them to run out.
    pub(crate) fn release(&mut self, held: &[Held]) -> Result<(), StoreError> {
        let (markets, epochs) = columns(held);
        let node = self.node.clone();
        self.with(|c| {
            c.execute(RELEASE, &[&node, &markets, &epochs])
                .map_err(pg("releasing market leases"))?;
            Ok(())
        })
    }

    /// Every market's lease.
    pub(crate) fn read(&mut self) -> Result<Vec<LeaseRow>, StoreError> {
        self.with(|c| {
            let op = pg("reading market leases");
            let rows = c.query(READ, &[]).map_err(&op)?;
            rows.iter()
                .map(|r| {
                    let (market, epoch) = held_of(r, 2)?;
                    Ok(LeaseRow {
                        market,
                        epoch,
                        holder: r.try_get(1).map_err(&op)?,
                        expired: r.try_get(3).map_err(&op)?,
                    })
                })
                .collect()
        })
    }
}

/// The market (column 0) and epoch (column `epoch`) of a row.
fn held_of(row: &postgres::Row, epoch: usize) -> Result<Held, StoreError> {
    let op = pg("reading market leases");
    let market: i64 = row.try_get(0).map_err(&op)?;
    let epoch: i64 = row.try_get(epoch).map_err(&op)?;
    let market = u32::try_from(market).map_err(|_| StoreError::Corrupt {
        path: std::path::PathBuf::from("market_leases"),
        detail: format!("market id {market} is out of range"),
    })?;
    Ok((MarketId(market), u64::try_from(epoch).unwrap_or(0)))
}

/// The epochs of the leases this node holds, as its entry writer fences commits with: set by
/// the lease directory, read by the writer once per commit.
#[derive(Debug)]
pub(crate) struct LeaseFence {
    node: String,
    epochs: ArcSwap<HashMap<MarketId, u64>>,
}

impl LeaseFence {
    /// A fence for `node` holding nothing yet (every record is refused until it holds).
    pub(crate) fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            epochs: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The node's name, as in `market_leases.holder`.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Sets what the node holds now.
    pub(crate) fn set(&self, held: HashMap<MarketId, u64>) {
        self.epochs.store(Arc::new(held));
    }

    /// The epoch at which the node holds `market`, if it does.
    pub(crate) fn epoch(&self, market: MarketId) -> Option<u64> {
        self.epochs.load().get(&market).copied()
    }
}

#[cfg(test)]
mod tests;

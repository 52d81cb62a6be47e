//! Market leases in PostgreSQL: a [`MarketDirectory`] in which a node serves a market while it
//! holds the market's lease, and a dead node's markets pass to the nodes still alive.
//!
//! # How it keeps the guarantees of [`MarketDirectory`]
//!
//! - **One owner at a time.** `market_leases` (PostgreSQL schema version 2) has one row per
//!   market. Every change of holder is one conditional `UPDATE` judged by the database's clock
//!   (`clock_timestamp()`): renew only at the epoch this node took the market with, take only
//!   a lease that has run out (`store::pg::lease`). Each take adds one to the row's `epoch`.
//! - **The holder stops before another can start.** A renewal (or take) that succeeds makes
//!   the lease run until `database now + ttl`. The node answers `Here` only until
//!   `sent + ttl - margin`, measured on its own monotonic clock from the moment it *sent* that
//!   statement, so a slow round trip shortens its lease, never lengthens it; `margin` is a
//!   tenth of `ttl` and covers the two clocks running at slightly different rates.
//! - **The commit is fenced** (so the margin need not cover an event's decision and commit):
//!   the node's entry writer, in the transaction of every group commit, locks the lease rows
//!   of the batch's markets `FOR SHARE` where `holder` is this node and `epoch` the epoch it
//!   holds; the records of a market that fails are not recorded, and their events get an
//!   error, never a verdict ([`StoreError::LeaseLost`]);
//!   the gate retries with the same seq and is sent to the new owner. A take waits on those
//!   row locks, so every record the old holder committed is in the log before the new holder
//!   reads it.
//!   The epoch a commit is fenced with is the one the node holds when it commits. An event
//!   admitted under an earlier epoch of the same node would pass only if the node lost the
//!   market and took it back while the event waited: that takes more than a `ttl`, while
//!   `[engine] deadline_ms` bounds the wait and the configuration requires `ttl_ms` above it.
//! - **A dead node's markets go.** It stops renewing; its leases run out after `ttl`. Any live
//!   node then takes them: at once the node that lists the market in its `[[cluster.nodes]]
//!   markets` (its preferred markets), any other node `ttl` later (the grace lets a starting
//!   or restarting node get its own markets first instead of racing every other node for
//!   them). Among the others the first `UPDATE` to run wins. So a dead node's markets are
//!   served again within about `2 * ttl + renew` (or `ttl + renew` where their preferred
//!   node is alive), plus the rebuild.
//! - **The new owner rebuilds before it answers `Here`.** A market taken is `Unowned` (gates
//!   retry after `min(unowned_retry_ms, renew_ms)`) until this node has rebuilt its day
//!   counters (occupancy, anti-passback, frequency, sign-ins) from the entry log, and learned
//!   its gates' last recorded seqs, so that their retries are answered from the log
//!   ([`crate::Engine::rebuild_market_counters`]); the other markets are served meanwhile.
//!   The rebuild runs at every take, so counters left from an earlier time this node held
//!   the market are never reused.
//! - **A node that comes back** takes only leases that have run out, its own old ones
//!   included (its name alone proves nothing: it may be a second process under the same
//!   name). Markets another node took meanwhile stay there while that node lives: there is no
//!   hand-back, which keeps every move a takeover of a lease that ran out, with one rule to
//!   reason about. A node that stops cleanly ([`LeaseDirectory::release`]) ends its leases at
//!   once, so a planned restart moves its markets without waiting for the `ttl`.
//!
//! `owner` answers from memory (an `ArcSwap` of the last view plus a monotonic deadline per
//! market held); the renewal runs on a thread of its own with a connection of its own, every
//! `renew_ms`: add rows for new markets (`gates` is the list of markets; the nodes' preferred
//! markets too), renew, take what ran out, rebuild what was taken, read the table, publish.
//! A database that cannot be reached makes the renewal fail; the node's leases then end on
//! its own clock and it answers `Unowned` for them, while the database lets another node take
//! them after `ttl`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use gatewarden_protocol::MarketId;

use super::{MarketDirectory, Node, Ownership};
use crate::clock::Clock;
use crate::config::{ClusterConfig, ConfigError, LeaseConfig};
use crate::error::Error;
use crate::pipeline::MarketRebuilder;
use crate::store::{Held, LeaseFence, LeaseRow, LeaseTable, Store, StoreError};

/// Who serves each market, by lease. See the module docs.
#[derive(Debug)]
pub struct LeaseDirectory {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    node: String,
    /// Every node of `[cluster]`, by name: where a market held elsewhere sends its gates.
    nodes: HashMap<String, Arc<Node>>,
    preferred: Vec<MarketId>,
    ttl: Duration,
    renew: Duration,
    margin: Duration,
    grace: Duration,
    unowned: Duration,
    view: ArcSwap<View>,
    fence: Arc<LeaseFence>,
    rebuild: MarketRebuilder,
    /// The monotonic clock the lease deadlines are measured on.
    clock: Arc<dyn Clock>,
    stop: Mutex<bool>,
    wake: Condvar,
    takeovers: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseDirectory")
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .field("renew", &self.renew)
            .finish_non_exhaustive()
    }
}

/// What `owner` answers from: the last published view.
#[derive(Debug, Default)]
struct View {
    markets: HashMap<MarketId, Answer>,
}

#[derive(Clone, Debug)]
enum Answer {
    /// Held here, counters rebuilt: `Here` until `until` (this node's monotonic clock).
    Here {
        epoch: u64,
        until: Instant,
    },
    Elsewhere(Arc<Node>),
    Unowned,
}

/// A lease this node holds, as the renewal thread keeps it.
#[derive(Clone, Copy, Debug)]
struct Lease {
    epoch: u64,
    /// When this node stops answering `Here`: the send time of the last successful renewal
    /// or take, plus `ttl - margin`.
    until: Instant,
    /// The market's counters were rebuilt since this take.
    rebuilt: bool,
}

impl LeaseDirectory {
    /// Connects to the lease table, fences `store`'s entry commits, runs one round (so that
    /// on return the node holds the free markets it prefers, rebuilt), and starts renewing on
    /// a thread of its own. `rebuild` rebuilds the counters of markets taken
    /// ([`crate::Engine::start_leases`] passes the engine's).
    ///
    /// # Errors
    /// [`Error::Config`] for a `[cluster]` without `leases`; [`Error::Store`] on SQLite, if the
    /// database cannot be reached, or if `store` is already fenced by another directory.
    pub(crate) fn start(
        cluster: &ClusterConfig,
        store: &Store,
        rebuild: MarketRebuilder,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, Error> {
        cluster.validate()?;
        let leases = cluster.leases.ok_or_else(|| ConfigError::Invalid {
            field: "cluster.leases",
            reason: "market leases need a [cluster.leases] section".to_owned(),
        })?;
        let mut table = store.lease_table(&cluster.node)?;
        let fence = Arc::new(LeaseFence::new(&cluster.node));
        store.fence_commits(Arc::clone(&fence))?;
        let inner = Arc::new(Inner::new(cluster, leases, fence, rebuild, clock));
        let mut held = BTreeMap::new();
        inner.round(&mut table, &mut held)?;
        let runner = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("gw-lease".to_owned())
            .spawn(move || runner.run(&mut table, &mut held))
            .map_err(|source| Error::Io {
                path: "the gw-lease thread".into(),
                source,
            })?;
        Ok(Arc::new(Self {
            inner,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// This node's addresses in `[cluster]`: where the other nodes send its markets' gates.
    pub fn addresses(&self) -> Vec<String> {
        self.inner
            .nodes
            .get(&self.inner.node)
            .map(|n| n.addresses.clone())
            .unwrap_or_default()
    }

    /// The markets this node answers `Here` for now, in order.
    pub fn markets_here(&self) -> Vec<MarketId> {
        let now = self.inner.clock.instant();
        let mut here: Vec<MarketId> = self
            .inner
            .view
            .load()
            .markets
            .iter()
            .filter(|(_, a)| matches!(a, Answer::Here { until, .. } if now < *until))
            .map(|(m, _)| *m)
            .collect();
        here.sort_unstable();
        here
    }

    /// The epoch of this node's lease of `market`, while it answers `Here` for it.
    pub fn epoch(&self, market: MarketId) -> Option<u64> {
        match self.inner.view.load().markets.get(&market) {
            Some(Answer::Here { epoch, until }) if self.inner.clock.instant() < *until => {
                Some(*epoch)
            }
            _ => None,
        }
    }

    /// How many markets this node has taken (and rebuilt) since it started.
    pub fn takeovers(&self) -> u64 {
        self.inner.takeovers.load(Ordering::Relaxed)
    }

    /// Stops renewing: the leases this node holds run out after their `ttl`, as if it had
    /// died, and it stops answering `Here` for them on its own clock before that. Idempotent.
    pub fn stop(&self) {
        *self
            .inner
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.inner.wake.notify_all();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Stops renewing, stops answering `Here`, and ends this node's leases in the database at
    /// once, so that other nodes take its markets without waiting for the `ttl`. Call it only
    /// once the engine has recorded its last event ([`crate::Engine::shutdown`]): a record
    /// committed after the release would be refused by the fence anyway.
    ///
    /// # Errors
    /// The database could not be reached: the leases then run out after their `ttl`.
    pub fn release(&self, store: &Store) -> Result<(), StoreError> {
        self.stop();
        let held: Vec<Held> = self
            .inner
            .view
            .load()
            .markets
            .iter()
            .filter_map(|(m, a)| match a {
                Answer::Here { epoch, .. } => Some((*m, *epoch)),
                _ => None,
            })
            .collect();
        self.inner.view.store(Arc::new(View::default()));
        self.inner.fence.set(HashMap::new());
        if held.is_empty() {
            return Ok(());
        }
        store.lease_table(&self.inner.node)?.release(&held)?;
        tracing::info!(markets = ?held.iter().map(|h| h.0.0).collect::<Vec<_>>(), "market leases released");
        Ok(())
    }
}

impl Drop for LeaseDirectory {
    fn drop(&mut self) {
        self.stop();
    }
}

impl MarketDirectory for LeaseDirectory {
    fn owner(&self, market: MarketId) -> Ownership {
        let unowned = Ownership::Unowned {
            retry_after: self.inner.unowned,
        };
        match self.inner.view.load().markets.get(&market) {
            Some(Answer::Here { until, .. }) if self.inner.clock.instant() < *until => {
                Ownership::Here
            }
            Some(Answer::Elsewhere(node)) => Ownership::Elsewhere(Arc::clone(node)),
            _ => unowned,
        }
    }
}

impl Inner {
    fn new(
        cluster: &ClusterConfig,
        leases: LeaseConfig,
        fence: Arc<LeaseFence>,
        rebuild: MarketRebuilder,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let nodes = cluster
            .nodes
            .iter()
            .map(|n| {
                let node = Node {
                    name: n.name.clone(),
                    addresses: n.addresses.clone(),
                };
                (n.name.clone(), Arc::new(node))
            })
            .collect();
        let preferred = cluster
            .nodes
            .iter()
            .filter(|n| n.name == cluster.node)
            .flat_map(|n| n.markets.iter().map(|m| MarketId(*m)))
            .collect();
        let (ttl, renew) = (leases.ttl(), leases.renew());
        Self {
            node: cluster.node.clone(),
            nodes,
            preferred,
            ttl,
            renew,
            margin: ttl / 10,
            grace: ttl,
            // A market between owners is free again at the next renewal round at the latest.
            unowned: Duration::from_millis(u64::from(cluster.unowned_retry_ms)).min(renew),
            view: ArcSwap::from_pointee(View::default()),
            fence,
            rebuild,
            clock,
            stop: Mutex::new(false),
            wake: Condvar::new(),
            takeovers: AtomicU64::new(0),
        }
    }

    /// The renewal thread: a round every `renew`, until stopped.
    fn run(&self, table: &mut LeaseTable, held: &mut BTreeMap<MarketId, Lease>) {
        let mut failing = false;
        // A round every `renew` from the start of the last one, however long that one took.
        let mut next = self.clock.instant() + self.renew;
        loop {
            {
                let stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner);
                let wait = next.saturating_duration_since(self.clock.instant());
                let (stop, _) = self
                    .wake
                    .wait_timeout_while(stop, wait, |stop| !*stop)
                    .unwrap_or_else(PoisonError::into_inner);
                if *stop {
                    return;
                }
            }
            next = self.clock.instant() + self.renew;
            match self.round(table, held) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("market leases renewed again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot renew market leases; this node stops serving its markets when they run out");
                }
                Err(_) => {}
            }
        }
    }

    /// One round: new markets, renew, take, rebuild, read, publish.
    fn round(
        &self,
        table: &mut LeaseTable,
        held: &mut BTreeMap<MarketId, Lease>,
    ) -> Result<(), Error> {
        table.add_markets(&self.preferred)?;
        self.renew_held(table, held)?;
        self.take_free(table, held)?;
        self.rebuild_taken(held);
        let rows = table.read()?;
        self.publish(&rows, held);
        Ok(())
    }

    fn renew_held(
        &self,
        table: &mut LeaseTable,
        held: &mut BTreeMap<MarketId, Lease>,
    ) -> Result<(), StoreError> {
        let mine: Vec<Held> = held.iter().map(|(m, l)| (*m, l.epoch)).collect();
        let sent = self.clock.instant();
        let renewed: HashMap<MarketId, u64> = table.renew(&mine, self.ttl)?.into_iter().collect();
        let until = sent + self.ttl - self.margin;
        held.retain(|market, lease| {
            if renewed.get(market) == Some(&lease.epoch) {
                lease.until = until;
                true
            } else {
                tracing::info!(
                    market = market.0,
                    epoch = lease.epoch,
                    "market lease lost: another node holds it now"
                );
                false
            }
        });
        Ok(())
    }

    fn take_free(
        &self,
        table: &mut LeaseTable,
        held: &mut BTreeMap<MarketId, Lease>,
    ) -> Result<(), StoreError> {
        let sent = self.clock.instant();
        let taken = table.acquire(&self.preferred, self.ttl, self.grace)?;
        let until = sent + self.ttl - self.margin;
        for (market, epoch) in taken {
            held.insert(
                market,
                Lease {
                    epoch,
                    until,
                    rebuilt: false,
                },
            );
        }
        Ok(())
    }

    /// Rebuilds the counters of the markets taken and not yet rebuilt; a failure leaves them
    /// `Unowned` until a later round succeeds.
    fn rebuild_taken(&self, held: &mut BTreeMap<MarketId, Lease>) {
        let pending: Vec<MarketId> = held
            .iter()
            .filter(|(_, l)| !l.rebuilt)
            .map(|(m, _)| *m)
            .collect();
        if pending.is_empty() {
            return;
        }
        // The fence must know the new epochs before any event of these markets is decided.
        self.fence
            .set(held.iter().map(|(m, l)| (*m, l.epoch)).collect());
        let started = self.clock.instant();
        match (self.rebuild)(&pending) {
            Ok(()) => {
                for market in &pending {
                    if let Some(lease) = held.get_mut(market) {
                        lease.rebuilt = true;
                    }
                }
                self.takeovers
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                tracing::info!(
                    markets = ?pending.iter().map(|m| m.0).collect::<Vec<_>>(),
                    epochs = ?pending.iter().filter_map(|m| held.get(m).map(|l| l.epoch)).collect::<Vec<_>>(),
                    rebuilt_ms = started.elapsed().as_millis() as u64,
                    "took market leases; their counters were rebuilt from the entry log"
                );
            }
            Err(e) => tracing::warn!(
                markets = ?pending.iter().map(|m| m.0).collect::<Vec<_>>(),
                error = %e,
                "took market leases but cannot rebuild their counters; not serving them yet"
            ),
        }
    }

    /// Publishes the round's view: the fence first (it may only widen before `Here` does),
    /// then the answers.
    fn publish(&self, rows: &[LeaseRow], held: &mut BTreeMap<MarketId, Lease>) {
        // A row that says another holder or epoch wins over what this node believed.
        for row in rows {
            if let Some(lease) = held.get(&row.market)
                && (row.holder.as_deref() != Some(&self.node) || row.epoch != lease.epoch)
            {
                tracing::info!(
                    market = row.market.0,
                    "market lease lost: another node holds it now"
                );
                held.remove(&row.market);
            }
        }
        self.fence
            .set(held.iter().map(|(m, l)| (*m, l.epoch)).collect());
        let mut markets = HashMap::with_capacity(rows.len());
        for row in rows {
            let answer = match (held.get(&row.market), &row.holder) {
                (Some(l), _) if l.rebuilt => Answer::Here {
                    epoch: l.epoch,
                    until: l.until,
                },
                (Some(_), _) => Answer::Unowned,
                (None, Some(holder)) if !row.expired && holder != &self.node => self
                    .nodes
                    .get(holder)
                    .map_or(Answer::Unowned, |n| Answer::Elsewhere(Arc::clone(n))),
                (None, _) => Answer::Unowned,
            };
            markets.insert(row.market, answer);
        }
        self.view.store(Arc::new(View { markets }));
    }
}

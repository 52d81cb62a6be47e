//! Which node serves which market: the seam between one gatewarden node and several.
//!
//! A market's occupancy, anti-passback and frequency counters must have one home, so each
//! market is served (its events decided) by one node at a time. The QUIC front asks a
//! [`MarketDirectory`] about the gate's market when the gate says Hello and again for every
//! event, and when the answer is not [`Ownership::Here`] it answers with a `Redirect` (or, to a
//! version-1 gate, `shutting_down`) instead of deciding (PROTOCOL.md, "Markets served
//! elsewhere"). The market asked about is always the one the registry gives the
//! certificate's gate, so a gate cannot talk its way into another market's node.
//!
//! [`Engine::submit`](crate::Engine::submit) does not ask: ownership is a property of the
//! node's front, not of the library. A program that embeds the engine on several nodes asks
//! its directory before it submits, as the QUIC front does.
//!
//! Implementations:
//!
//! - [`SingleNode`]: every market is served here. The default when `gatewarden.toml` has no
//!   `[cluster]` section: one node, exactly the behaviour before clusters existed. Its answer
//!   is a constant, so the per-event question costs one indirect call.
//! - [`StaticDirectory`]: the `[cluster]` section: this node's name, every node's addresses and
//!   the markets each serves. It can be replaced while serving ([`StaticDirectory::replace`],
//!   `serve` does it on SIGHUP), which is how an operator moves a market by hand: first the
//!   old owner's file (it stops admitting the market's events and redirects its gates), then,
//!   once the events it admitted before are decided (a second is ample: the queue wait is
//!   bounded by `[engine] deadline_ms`, a group commit takes milliseconds), the new owner's.
//!   Nothing in a static table notices a dead node; that is the lease's job.
//! - [`lease::LeaseDirectory`] (`[cluster.leases]`, with the PostgreSQL store; cargo feature
//!   `postgres`): a market is served by the node that holds its lease in PostgreSQL; a dead
//!   node's leases run out and the live nodes take its markets, rebuilding their counters
//!   first. See [`MarketDirectory`] for what it must guarantee and the module for how it does.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use gatewarden_protocol::MarketId;

use crate::config::{ClusterConfig, ConfigError};

#[cfg(feature = "postgres")]
pub mod lease;

/// Answers, for a market, which node serves it right now.
///
/// The server calls [`owner`](Self::owner) once per Hello and once per event, on the async
/// threads that serve the gates: it must answer from memory, without I/O or a lock that I/O
/// holds (a lease implementation renews in the background and publishes what it holds, e.g.
/// through an `ArcSwap`).
///
/// # What an implementation must guarantee
///
/// At most one node answers [`Ownership::Here`] for a market at any instant, including across
/// failures: the counters of a market must never be advanced by two nodes at once. A
/// lease-based implementation therefore:
///
/// - **has one owner at a time**: the lease is a row per market, taken and renewed with a
///   conditional write (`UPDATE .. WHERE holder = me OR expires_at < now()`), judged by the
///   database's clock, never by the nodes' clocks;
/// - **stops before another can start**: the holder answers `Here` only until
///   `renewed_at + ttl - margin`, measured on its own monotonic clock from the moment it
///   *sent* the renewal that succeeded (so a slow round trip shortens its lease, never
///   lengthens it). The margin covers the holder's clock running slow against the database's,
///   plus the longest time an event admitted under `Here` can take to become durable: the
///   server checks ownership when it admits an event, and the engine decides and commits it
///   afterwards (the queue wait is bounded by `[engine] deadline_ms`, the commit is not). So
///   either the margin exceeds that whole bound, or, better, the store fences the commit: the
///   entry records carry the lease's epoch and the commit fails if the epoch is no longer
///   current;
/// - **lets a dead node's markets go**: a node that dies stops renewing, its leases expire
///   after `ttl`, and another node may take them; the new owner rebuilds the market's day
///   counters from the entry log before it answers `Here`.
///
/// While no node holds a market's lease, the answer is [`Ownership::Unowned`] with a pause
/// that lets the takeover finish; a gate told so waits and asks again.
pub trait MarketDirectory: Send + Sync + fmt::Debug {
    /// Who serves `market` now.
    fn owner(&self, market: MarketId) -> Ownership;
}

/// Who serves a market.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ownership {
    /// Another node: the gate is sent there.
    Elsewhere(Arc<Node>),
    /// This node: decide the market's events.
    Here,
    /// No node right now (a takeover is under way, or the market is assigned to nobody): the
    /// gate waits `retry_after` and asks again.
    Unowned {
        /// How long the gate waits before its next attempt (at least 1 ms on the wire).
        retry_after: Duration,
    },
}

/// A node of the site as its gates reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's name (`[[cluster.nodes]] name`).
    pub name: String,
    /// Where it takes gate connections, `host:port` each, in the order to try them.
    pub addresses: Vec<String>,
}

/// One node serves every market: the behaviour without a `[cluster]` section.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleNode;

impl MarketDirectory for SingleNode {
    #[inline]
    fn owner(&self, _market: MarketId) -> Ownership {
        Ownership::Here
    }
}

/// The `[cluster]` section of `gatewarden.toml`: a fixed table of which node serves which
/// market, replaceable while serving. See the module docs.
#[derive(Debug)]
pub struct StaticDirectory {
    table: ArcSwap<Table>,
}

#[derive(Debug)]
struct Table {
    /// This node's name.
    node: String,
    /// This node's own addresses, as the other nodes send its gates to it.
    addresses: Vec<String>,
    /// Every assigned market: `None` for this node, the owner otherwise.
    owners: HashMap<MarketId, Option<Arc<Node>>>,
    /// The pause given for markets no node serves.
    unowned: Duration,
}

/// What [`StaticDirectory::replace`] changed for this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectoryChange {
    /// Markets this node serves from now on and did not before.
    pub gained: Vec<MarketId>,
    /// Markets this node served and no longer does.
    pub lost: Vec<MarketId>,
}

impl StaticDirectory {
    /// The table of a validated `[cluster]` section ([`ClusterConfig::validate`]).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a section that does not validate.
    pub fn new(config: &ClusterConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            table: ArcSwap::from_pointee(Table::from_config(config)?),
        })
    }

    /// This node's name.
    pub fn node(&self) -> String {
        self.table.load().node.clone()
    }

    /// This node's addresses in the table: where the other nodes send the gates of its
    /// markets.
    pub fn addresses(&self) -> Vec<String> {
        self.table.load().addresses.clone()
    }

    /// The markets this node serves, in order.
    pub fn markets_here(&self) -> Vec<MarketId> {
        self.table.load().here()
    }

    /// Every assigned market and the name of the node that serves it, in market order.
    pub fn assignments(&self) -> BTreeMap<MarketId, String> {
        let table = self.table.load();
        table
            .owners
            .iter()
            .map(|(market, owner)| {
                let node = owner.as_ref().map_or(&table.node, |n| &n.name);
                (*market, node.clone())
            })
            .collect()
    }

    /// Replaces the table atomically: every later question gets the new answer, and an event
    /// admitted before the swap was admitted under the old one. The node's own name may not
    /// change (restart for that).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a section that does not validate or renames this node;
    /// the table in force then stays.
    pub fn replace(&self, config: &ClusterConfig) -> Result<DirectoryChange, ConfigError> {
        let next = Table::from_config(config)?;
        let current = self.table.load();
        if next.node != current.node {
            return Err(ConfigError::Invalid {
                field: "cluster.node",
                reason: format!(
                    "this node is {:?}; a reload cannot make it {:?} (restart it for that)",
                    current.node, next.node
                ),
            });
        }
        let (before, after) = (current.here(), next.here());
        let change = DirectoryChange {
            gained: after
                .iter()
                .filter(|m| !before.contains(m))
                .copied()
                .collect(),
            lost: before
                .iter()
                .filter(|m| !after.contains(m))
                .copied()
                .collect(),
        };
        self.table.store(Arc::new(next));
        Ok(change)
    }
}

impl MarketDirectory for StaticDirectory {
    fn owner(&self, market: MarketId) -> Ownership {
        let table = self.table.load();
        match table.owners.get(&market) {
            Some(None) => Ownership::Here,
            Some(Some(node)) => Ownership::Elsewhere(Arc::clone(node)),
            None => Ownership::Unowned {
                retry_after: table.unowned,
            },
        }
    }
}

impl Table {
    fn from_config(config: &ClusterConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut owners = HashMap::new();
        for node in &config.nodes {
            let owner = (node.name != config.node).then(|| {
                Arc::new(Node {
                    name: node.name.clone(),
                    addresses: node.addresses.clone(),
                })
            });
            for market in &node.markets {
                owners.insert(MarketId(*market), owner.clone());
            }
        }
        let addresses = config
            .nodes
            .iter()
            .find(|n| n.name == config.node)
            .map(|n| n.addresses.clone())
            .unwrap_or_default();
        Ok(Self {
            node: config.node.clone(),
            addresses,
            owners,
            unowned: Duration::from_millis(u64::from(config.unowned_retry_ms)),
        })
    }

    fn here(&self) -> Vec<MarketId> {
        let mut here: Vec<MarketId> = self
            .owners
            .iter()
            .filter(|(_, owner)| owner.is_none())
            .map(|(market, _)| *market)
            .collect();
        here.sort_unstable();
        here
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Config;

    fn cluster(text: &str) -> ClusterConfig {
        Config::from_toml(text, Path::new("x.toml"))
            .unwrap()
            .cluster
            .unwrap()
    }

    const TWO: &str = r#"
[cluster]
node = "a"
unowned_retry_ms = 1500
[[cluster.nodes]]
name = "a"
addresses = ["127.0.0.1:4433"]
markets = [1, 3]
[[cluster.nodes]]
name = "b"
addresses = ["127.0.0.1:4434", "[::1]:4434"]
markets = [2]
"#;

    #[test]
    fn single_node_serves_every_market() {
        for m in [0, 1, u32::MAX] {
            assert_eq!(SingleNode.owner(MarketId(m)), Ownership::Here);
        }
    }

    #[test]
    fn static_directory_answers_from_the_table() {
        let dir = StaticDirectory::new(&cluster(TWO)).unwrap();
        assert_eq!(dir.node(), "a");
        assert_eq!(dir.addresses(), ["127.0.0.1:4433"]);
        assert_eq!(dir.owner(MarketId(1)), Ownership::Here);
        assert_eq!(dir.owner(MarketId(3)), Ownership::Here);
        assert_eq!(
            dir.owner(MarketId(2)),
            Ownership::Elsewhere(Arc::new(Node {
                name: "b".to_owned(),
                addresses: vec!["127.0.0.1:4434".to_owned(), "[::1]:4434".to_owned()],
            }))
        );
        assert_eq!(
            dir.owner(MarketId(9)),
            Ownership::Unowned {
                retry_after: Duration::from_millis(1500)
            }
        );
        assert_eq!(dir.markets_here(), [MarketId(1), MarketId(3)]);
        let names: Vec<(u32, String)> = dir
            .assignments()
            .into_iter()
            .map(|(m, n)| (m.0, n))
            .collect();
        let want: Vec<(u32, String)> = vec![(1, "a".into()), (2, "b".into()), (3, "a".into())];
        assert_eq!(names, want);
    }

    #[test]
    fn replace_moves_markets_and_keeps_the_node_name() {
        let dir = StaticDirectory::new(&cluster(TWO)).unwrap();
        // Market 1 moves to b; a takes market 2.
        let moved = TWO
            .replace("markets = [1, 3]", "markets = [2, 3]")
            .replace("markets = [2]", "markets = [1]");
        let change = dir.replace(&cluster(&moved)).unwrap();
        assert_eq!(change.gained, [MarketId(2)]);
        assert_eq!(change.lost, [MarketId(1)]);
        assert_eq!(dir.owner(MarketId(2)), Ownership::Here);
        assert!(matches!(dir.owner(MarketId(1)), Ownership::Elsewhere(n) if n.name == "b"));
        // Another node's file cannot be loaded into this one.
        let other = TWO.replacen("node = \"a\"", "node = \"b\"", 1);
        let err = dir.replace(&cluster(&other)).unwrap_err();
        assert!(err.to_string().contains("restart"), "{err}");
        assert_eq!(
            dir.owner(MarketId(2)),
            Ownership::Here,
            "the table in force stays"
        );
    }
}

//! Domain records shared by the store, the policy and the pipeline.

use gatewarden_protocol::{GateId, MarketId, ZoneId};
use serde::{Deserialize, Serialize};

/// A gate in the registry: where it stands. The server refuses gates it does not know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateInfo {
    /// The gate's id (its certificate names it).
    pub gate: GateId,
    /// The market it stands in.
    pub market: MarketId,
    /// The zone it guards.
    pub zone: ZoneId,
    /// A human name ("north entrance").
    #[serde(default)]
    pub name: String,
}

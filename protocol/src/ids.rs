//! Identifier and unit newtypes. Each is a plain integer on the wire (little-endian, fixed
//! width); the newtype keeps a gate id from being passed where a market id is meant.

use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A gate (one face terminal). Its certificate names it; a gate can act only as itself.
    GateId(u32)
);
id_newtype!(
    /// A market (or station, or campus): the unit that has one policy and one occupancy.
    MarketId(u32)
);
id_newtype!(
    /// An enrolled person. One registry is shared by every market.
    SubjectId(u64)
);
id_newtype!(
    /// A zone inside a market (a hall, a loading dock). Gates stand in zones; staff are
    /// assigned zones.
    ZoneId(u32)
);
id_newtype!(
    /// Wall-clock time as milliseconds since the Unix epoch (UTC). The protocol never reads a
    /// clock: the sender stamps it.
    UnixMillis(u64)
);

impl UnixMillis {
    /// Milliseconds elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

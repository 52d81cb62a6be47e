//! The policy file's layout and how its layers merge into one [`MarketPolicy`] per market.
//!
//! Every key is declared once, in the `layers!` invocation below; the macro derives the
//! `[default]` table (every key required), a market table (every key optional), a category
//! table (rule keys only, optional) and the merge code from that one list, so a key cannot be
//! added to one layer and forgotten in another.

use std::collections::{BTreeMap, HashMap};

use gatewarden_protocol::{Category, MarketId};
use serde::Deserialize;
use toml::Spanned;

use super::values::{
    Band, Cap, Celsius, CodeRule, Doses, Hours, Margin, MarketKey, OffOr, OverCap, Schedule, Score,
    Unit,
};
use super::{MarketPolicy, PolicyBook, PolicyError};

macro_rules! layers {
    (
        market { $($(#[$md:meta])* $m:ident: $mt:ty,)* }
        rules { $($(#[$rd:meta])* $r:ident: $rt:ty,)* }
    ) => {
        /// The market-wide settings of one market's policy.
        #[derive(Clone, Debug, PartialEq)]
        pub(crate) struct MarketSettings {
            $($(#[$md])* pub(crate) $m: $mt,)*
        }

        /// The rules for one category of person in one market.
        #[derive(Clone, Debug, PartialEq)]
        pub(crate) struct CategoryRules {
            $($(#[$rd])* pub(crate) $r: $rt,)*
        }

        /// `[default]`: every key is required, so no check is left on an implicit value.
        #[derive(Clone, Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawDefault {
            $($m: $mt,)*
            $($r: $rt,)*
            #[serde(default)]
            categories: RawCategories,
        }

        /// `[markets.<id>]`: any key of `[default]`, each optional.
        #[derive(Clone, Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawMarket {
            $(#[serde(default)] $m: Option<$mt>,)*
            $(#[serde(default)] $r: Option<$rt>,)*
            #[serde(default)]
            categories: RawCategories,
        }

        /// `[….categories.<category>]`: any rule key, each optional.
        #[derive(Clone, Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawRules {
            $(#[serde(default)] $r: Option<$rt>,)*
        }

        impl RawDefault {
            /// The default with a market's keys put in its place (categories key by key).
            fn patched(&self, m: &RawMarket) -> Self {
                Self {
                    $($m: m.$m.clone().unwrap_or_else(|| self.$m.clone()),)*
                    $($r: m.$r.clone().unwrap_or_else(|| self.$r.clone()),)*
                    categories: self.categories.patched(&m.categories),
                }
            }

            fn settings(&self) -> MarketSettings {
                MarketSettings { $($m: self.$m.clone(),)* }
            }

            fn base_rules(&self) -> CategoryRules {
                CategoryRules { $($r: self.$r.clone(),)* }
            }
        }

        impl RawRules {
            /// These rules with `over`'s keys put in their place.
            fn patched(&self, over: &Self) -> Self {
                Self { $($r: over.$r.clone().or_else(|| self.$r.clone()),)* }
            }
        }

        impl CategoryRules {
            /// These rules with a category's keys put in their place.
            fn patched(&self, p: &RawRules) -> Self {
                Self { $($r: p.$r.clone().unwrap_or_else(|| self.$r.clone()),)* }
            }
        }
    };
}

layers! {
    market {
        /// 1:N: the best score must reach this.
        identify_threshold: Score,
        /// 1:1: the credential holder's best template score must reach this.
        verify_threshold: Score,
        /// Scores this far below a threshold escalate instead of failing (0: none do).
        borderline_band: Band,
        /// 1:N: best minus best other subject below this escalates.
        margin: Margin,
        /// Liveness below this fails.
        liveness_min: Unit,
        /// Refuse events without a credential (face alone is not enough).
        require_credential: bool,
        /// Temperature above this fails.
        temperature_ceiling_c: OffOr<Celsius>,
        /// Health-code colours.
        health_code: OffOr<CodeRule>,
        /// Travel-code colours.
        travel_code: OffOr<CodeRule>,
        /// People inside the market at which entries stop.
        occupancy_cap: OffOr<Cap>,
        /// What an entry at the occupancy cap gets.
        over_occupancy: OverCap,
    }
    rules {
        /// The gate's zone must be one of the person's zones.
        zones_enforced: bool,
        /// Vaccine doses needed (0: not checked).
        min_vaccine_doses: Doses,
        /// Oldest negative test accepted, in hours.
        max_test_age_hours: OffOr<Hours>,
        /// When the category may pass, in local time.
        schedule: Schedule,
        /// Staff must have signed in today before an entry.
        sign_in_required: bool,
        /// Entries and exits must alternate.
        anti_passback: bool,
        /// Admitted entries per person per day at this market.
        max_entries_per_day: OffOr<Cap>,
    }
}

/// `categories` tables, one optional table per category.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategories {
    #[serde(default)]
    service_worker: Option<RawRules>,
    #[serde(default)]
    manager: Option<RawRules>,
    #[serde(default)]
    staff: Option<RawRules>,
    #[serde(default)]
    merchant: Option<RawRules>,
    #[serde(default)]
    buyer: Option<RawRules>,
    #[serde(default)]
    shopper: Option<RawRules>,
}

impl RawCategories {
    /// Key-by-key merge: a market's category keys replace the default's for that category.
    fn patched(&self, over: &Self) -> Self {
        let merge = |a: &Option<RawRules>, b: &Option<RawRules>| match (a, b) {
            (Some(a), Some(b)) => Some(a.patched(b)),
            (a, b) => b.clone().or_else(|| a.clone()),
        };
        Self {
            service_worker: merge(&self.service_worker, &over.service_worker),
            manager: merge(&self.manager, &over.manager),
            staff: merge(&self.staff, &over.staff),
            merchant: merge(&self.merchant, &over.merchant),
            buyer: merge(&self.buyer, &over.buyer),
            shopper: merge(&self.shopper, &over.shopper),
        }
    }

    /// In the order of [`category_index`].
    fn in_order(&self) -> [&Option<RawRules>; CATEGORIES] {
        [
            &self.service_worker,
            &self.manager,
            &self.staff,
            &self.merchant,
            &self.buyer,
            &self.shopper,
        ]
    }
}

/// Number of categories with their own rules.
pub(crate) const CATEGORIES: usize = 6;

/// Where a category's rules sit in [`MarketPolicy`]; `None` for a category this build does
/// not know (the protocol's enum is non-exhaustive), which then gets the market's base rules.
pub(crate) fn category_index(c: Category) -> Option<usize> {
    match c {
        Category::ServiceWorker => Some(0),
        Category::Manager => Some(1),
        Category::Staff => Some(2),
        Category::Merchant => Some(3),
        Category::Buyer => Some(4),
        Category::Shopper => Some(5),
        _ => None,
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default: RawDefault,
    #[serde(default)]
    markets: BTreeMap<MarketKey, Spanned<RawMarket>>,
}

impl RawDefault {
    fn build(&self) -> MarketPolicy {
        let base = self.base_rules();
        let categories = self
            .categories
            .in_order()
            .map(|p| p.as_ref().map_or_else(|| base.clone(), |p| base.patched(p)));
        MarketPolicy {
            settings: self.settings(),
            base,
            categories,
        }
    }
}

/// Parses a policy file; `origin` names it in errors.
pub(crate) fn parse(text: &str, origin: &str) -> Result<PolicyBook, PolicyError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        PolicyError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            reason: e.message().to_owned(),
        }
    })?;
    let default = raw.default.build();
    let markets: HashMap<MarketId, MarketPolicy> = raw
        .markets
        .iter()
        .map(|(key, m)| (MarketId(key.0), raw.default.patched(m.get_ref()).build()))
        .collect();
    Ok(PolicyBook { default, markets })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let offset = offset.min(bytes.len());
    let before = &bytes[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_chars() {
        let text = "a = 1\nb = \"é\"\nc = 3";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'c' follows "b = \"é\"\n": é is two bytes but one column.
        let c = text.find('c').unwrap();
        assert_eq!(line_col(text, c), (3, 1));
        assert_eq!(line_col(text, c + 4), (3, 5));
        assert_eq!(line_col(text, 10_000), (3, 6));
    }
}

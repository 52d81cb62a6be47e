//! The policy file's layout, how it is read (every problem at once) and how its layers merge
//! into one [`MarketPolicy`] per market.
//!
//! Every key is declared once, in the `layers!` invocation below; the macro derives the
//! resolved structs, the table readers (every key optional while reading; `[default]` must set
//! them all) and the merge code from that one list, so a key cannot be added to one layer and
//! forgotten in another.
//!
//! Reading does not stop at the first problem: the document is parsed into spanned tables
//! first, then every key is read on its own, so one run reports every unknown key, bad value
//! and missing key with its line and column. A syntax error stops there (with every syntax
//! error the parser recovered from): what follows a broken line cannot be trusted to mean
//! what it says.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use gatewarden_protocol::{Category, MarketId};
use ring::digest;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::values::{
    Band, Cap, Celsius, CodeAge, CodeRule, Doses, Hours, Margin, MarketKey, OffOr, Refusal,
    Schedule, Score, Unit,
};
use super::{MarketPolicy, PolicyBook, PolicyError, PolicyVersion, Problem};

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

        /// `[default]` or `[markets.<id>]` as written: every key optional while reading
        /// (`[default]` is then checked for completeness).
        #[derive(Clone, Debug, Default)]
        struct RawMarket {
            $($m: Option<$mt>,)*
            $($r: Option<$rt>,)*
            categories: RawCategories,
            /// Keys written in the table, good or bad (a refused value is not also missing).
            written: Vec<&'static str>,
        }

        /// `[….categories.<category>]`: any rule key, each optional.
        #[derive(Clone, Debug, Default)]
        struct RawRules {
            $($r: Option<$rt>,)*
        }

        /// Keys of a market table (and of `[default]`), in declaration order.
        const MARKET_KEYS: &[&str] = &[$(stringify!($m),)* $(stringify!($r),)* "categories"];
        /// Keys a category table may set.
        const RULE_KEYS: &[&str] = &[$(stringify!($r),)*];

        impl RawMarket {
            /// Reads `key` into its slot; false when no such key exists at this level
            /// (`categories` is read by the caller).
            fn read(&mut self, key: &str, value: Spanned<DeValue<'_>>, p: &mut Problems<'_>) -> bool {
                match key {
                    $(stringify!($m) => {
                        self.$m = p.value(value);
                        self.written.push(stringify!($m));
                    })*
                    $(stringify!($r) => {
                        self.$r = p.value(value);
                        self.written.push(stringify!($r));
                    })*
                    _ => return false,
                }
                true
            }

            /// Keys this table does not write at all.
            fn unwritten(&self) -> Vec<&'static str> {
                MARKET_KEYS
                    .iter()
                    .copied()
                    .filter(|k| *k != "categories" && !self.written.contains(k))
                    .collect()
            }

            /// This table with `m`'s keys put in their place (categories key by key).
            fn patched(&self, m: &Self) -> Self {
                Self {
                    $($m: m.$m.clone().or_else(|| self.$m.clone()),)*
                    $($r: m.$r.clone().or_else(|| self.$r.clone()),)*
                    categories: self.categories.patched(&m.categories),
                    written: Vec::new(),
                }
            }

            /// `None` unless every market key is set.
            fn settings(&self) -> Option<MarketSettings> {
                Some(MarketSettings { $($m: self.$m.clone()?,)* })
            }

            /// `None` unless every rule key is set.
            fn base_rules(&self) -> Option<CategoryRules> {
                Some(CategoryRules { $($r: self.$r.clone()?,)* })
            }
        }

        impl RawRules {
            /// Reads `key` into its slot; false when it is not a rule key.
            fn read(&mut self, key: &str, value: Spanned<DeValue<'_>>, p: &mut Problems<'_>) -> bool {
                match key {
                    $(stringify!($r) => self.$r = p.value(value),)*
                    _ => return false,
                }
                true
            }

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
        /// Oldest health code accepted (hours since the record's update).
        health_code_max_age: OffOr<CodeAge>,
        /// Travel-code colours.
        travel_code: OffOr<CodeRule>,
        /// Oldest travel code accepted (hours since the record's update).
        travel_code_max_age: OffOr<CodeAge>,
        /// What a health or travel code older than its maximum age gets.
        stale_code: Refusal,
        /// People inside the market at which entries stop.
        occupancy_cap: OffOr<Cap>,
        /// What an entry at the occupancy cap gets.
        over_occupancy: Refusal,
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

/// Category table names, in the order of [`category_index`].
pub(crate) const CATEGORY_NAMES: [&str; CATEGORIES] = [
    "service_worker",
    "manager",
    "staff",
    "merchant",
    "buyer",
    "shopper",
];

/// `categories` tables, one optional table per category, in [`category_index`] order.
#[derive(Clone, Debug, Default)]
struct RawCategories([Option<RawRules>; CATEGORIES]);

impl RawCategories {
    /// Key-by-key merge: a market's category keys replace the default's for that category.
    fn patched(&self, over: &Self) -> Self {
        Self(std::array::from_fn(|i| match (&self.0[i], &over.0[i]) {
            (Some(a), Some(b)) => Some(a.patched(b)),
            (a, b) => b.clone().or_else(|| a.clone()),
        }))
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

impl RawMarket {
    /// The resolved policy; `None` unless every key is set (the caller has checked that
    /// `[default]` sets them all, so a market patched over it has them too).
    fn build(&self) -> Option<MarketPolicy> {
        let base = self.base_rules()?;
        let categories = self
            .categories
            .0
            .each_ref()
            .map(|p| p.as_ref().map_or_else(|| base.clone(), |p| base.patched(p)));
        Some(MarketPolicy {
            settings: self.settings()?,
            base,
            categories,
        })
    }
}

/// Problems found so far, each with its position.
struct Problems<'a> {
    text: &'a str,
    origin: &'a str,
    found: Vec<Problem>,
}

impl<'a> Problems<'a> {
    fn new(text: &'a str, origin: &'a str) -> Self {
        Self {
            text,
            origin,
            found: Vec::new(),
        }
    }

    fn at(&mut self, span: Range<usize>, reason: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.found.push(Problem {
            origin: self.origin.to_owned(),
            line,
            column,
            reason: reason.into(),
        });
    }

    fn toml(&mut self, e: &toml::de::Error, fallback: Range<usize>) {
        self.at(e.span().unwrap_or(fallback), e.message());
    }

    /// Reads one value into its type, recording the problem (at the innermost span the
    /// deserializer knows) if it is refused.
    fn value<T: DeserializeOwned>(&mut self, value: Spanned<DeValue<'_>>) -> Option<T> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.toml(&e, span);
                None
            }
        }
    }

    /// The value as a table, or a problem naming `what` it should have been.
    fn table<'i>(&mut self, value: Spanned<DeValue<'i>>, what: &str) -> Option<DeTable<'i>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(t) => Some(t),
            other => {
                let found = other.type_str();
                self.at(span, format!("{what} must be a table, not a {found}"));
                None
            }
        }
    }

    /// Every problem in file order, or `Ok` when there is none.
    fn finish(mut self) -> Result<(), PolicyError> {
        if self.found.is_empty() {
            return Ok(());
        }
        self.found.sort_by_key(|p| (p.line, p.column));
        self.found.dedup();
        Err(PolicyError::Invalid {
            problems: self.found,
        })
    }
}

/// What to say about an unknown `key` among `known`: the likely intended key if one is close
/// (a typo, a missing suffix), else the whole list.
fn suggest(key: &str, known: &[&str]) -> String {
    let close = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2 || (key.len() >= 4 && k.starts_with(key)))
        .min();
    match close {
        Some((_, k)) => format!("did you mean `{k}`?"),
        None => format!("the keys are {}", key_list(known)),
    }
}

/// Levenshtein distance in characters (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// A readable list of keys for a message.
fn key_list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a `[default]` or `[markets.<id>]` table; `name` is how messages name it.
fn read_market(table: DeTable<'_>, name: &str, p: &mut Problems<'_>) -> RawMarket {
    let mut raw = RawMarket::default();
    for (key, value) in table {
        let key_span = key.span();
        let key = key.into_inner();
        if key == "categories" {
            if let Some(t) = p.table(value, &format!("{name}.categories")) {
                raw.categories = read_categories(t, name, p);
            }
        } else if !raw.read(&key, value, p) {
            let reason = format!(
                "unknown key `{key}` in {name}; {}",
                suggest(&key, MARKET_KEYS)
            );
            p.at(key_span, reason);
        }
    }
    raw
}

fn read_categories(table: DeTable<'_>, name: &str, p: &mut Problems<'_>) -> RawCategories {
    let mut raw = RawCategories::default();
    for (key, value) in table {
        let key_span = key.span();
        let key = key.into_inner();
        let Some(i) = CATEGORY_NAMES.iter().position(|c| *c == key) else {
            let reason = format!(
                "unknown category `{key}` in {name}.categories; {}",
                suggest(&key, &CATEGORY_NAMES).replace("the keys are", "the categories are")
            );
            p.at(key_span, reason);
            continue;
        };
        let what = format!("{name}.categories.{key}");
        let Some(t) = p.table(value, &what) else {
            continue;
        };
        let mut rules = RawRules::default();
        for (k, v) in t {
            let span = k.span();
            let k = k.into_inner();
            if rules.read(&k, v, p) {
                continue;
            }
            let reason = if MARKET_KEYS.contains(&&*k) {
                format!(
                    "`{k}` applies to a whole market and cannot be set per category \
                     (in {what}); a category may set {}",
                    key_list(RULE_KEYS)
                )
            } else {
                format!("unknown key `{k}` in {what}; {}", suggest(&k, RULE_KEYS))
            };
            p.at(span, reason);
        }
        raw.0[i] = Some(rules);
    }
    raw
}

/// Parses a policy file; `origin` names it in errors. Reports every problem it finds.
pub(crate) fn parse(text: &str, origin: &str) -> Result<PolicyBook, PolicyError> {
    let mut p = Problems::new(text, origin);
    let (root, syntax) = DeTable::parse_recoverable(text);
    for e in &syntax {
        p.toml(e, 0..0);
    }
    p = match p.finish() {
        Ok(()) => Problems::new(text, origin),
        Err(e) => return Err(e),
    };
    let mut default = None;
    let mut markets = BTreeMap::new();
    for (key, value) in root.into_inner() {
        let key_span = key.span();
        match &**key.get_ref() {
            "default" => {
                if let Some(t) = p.table(value, "[default]") {
                    default = Some((read_market(t, "[default]", &mut p), key_span));
                }
            }
            "markets" => {
                let Some(t) = p.table(value, "markets") else {
                    continue;
                };
                for (id, m) in t {
                    let id_span = id.span();
                    let id = id.into_inner();
                    let name = format!("[markets.{id}]");
                    let Some(t) = p.table(m, &name) else {
                        continue;
                    };
                    let raw = read_market(t, &name, &mut p);
                    match MarketKey::try_from(id.into_owned()) {
                        Ok(k) => {
                            markets.insert(MarketId(k.0), raw);
                        }
                        Err(reason) => p.at(id_span, reason),
                    }
                }
            }
            other => {
                let reason =
                    format!("unknown table `{other}`; a policy has [default] and [markets.<id>]");
                p.at(key_span, reason);
            }
        }
    }
    let Some((default, default_span)) = default else {
        p.at(
            0..0,
            "missing [default] table: it sets every key (see `gatewarden init` for an example)",
        );
        return Err(p
            .finish()
            .err()
            .unwrap_or(PolicyError::Incomplete { market: None }));
    };
    for key in default.unwritten() {
        p.at(
            default_span.clone(),
            format!("missing key `{key}` in [default]; [default] must set every key"),
        );
    }
    p.finish()?;
    // Every key of [default] is written and none was refused, so every build below is
    // complete; `Incomplete` names the market if that ever stops being true.
    let resolved = default
        .build()
        .ok_or(PolicyError::Incomplete { market: None })?;
    let mut by_market = HashMap::with_capacity(markets.len());
    for (id, m) in &markets {
        let policy = default
            .patched(m)
            .build()
            .ok_or(PolicyError::Incomplete { market: Some(*id) })?;
        by_market.insert(*id, policy);
    }
    Ok(PolicyBook {
        default: resolved,
        markets: by_market,
        version: version_of(text),
    })
}

/// The policy's version: the first 12 hex digits of the SHA-256 of its canonical form (every
/// table's keys sorted, comments, blank lines and number spellings gone), so reformatting or
/// commenting a file keeps its version and any change of meaning changes it. Called only on
/// text that parsed.
fn version_of(text: &str) -> PolicyVersion {
    let mut canonical = String::with_capacity(text.len());
    match toml::from_str::<toml::Table>(text) {
        Ok(table) => canonical_table(&table, &mut canonical),
        // Unreachable for a document that parsed; hashing the text keeps this total.
        Err(_) => canonical.push_str(text),
    }
    let digest = digest::digest(&digest::SHA256, canonical.as_bytes());
    let hex: String = digest
        .as_ref()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    PolicyVersion(hex)
}

/// Writes `table` with its keys in sorted order whatever order the map keeps (toml's
/// `preserve_order` feature may be on through another crate).
fn canonical_table(table: &toml::Table, out: &mut String) {
    let mut keys: Vec<&String> = table.keys().collect();
    keys.sort();
    out.push('{');
    for key in keys {
        out.push_str(&format!("{key:?}="));
        if let Some(v) = table.get(key) {
            canonical_value(v, out);
        }
        out.push(',');
    }
    out.push('}');
}

fn canonical_value(value: &toml::Value, out: &mut String) {
    use toml::Value;
    match value {
        Value::String(s) => out.push_str(&format!("{s:?}")),
        Value::Integer(i) => out.push_str(&i.to_string()),
        // `{:?}` is the shortest text that reads back as the same f64 and always has a
        // decimal point or exponent, so 5e-2 and 0.050 agree and 1.0 differs from 1.
        Value::Float(f) => out.push_str(&format!("{f:?}")),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Datetime(d) => out.push_str(&format!("@{d}")),
        Value::Array(a) => {
            out.push('[');
            for v in a {
                canonical_value(v, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Table(t) => canonical_table(t, out),
    }
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
    fn unknown_keys_get_the_closest_known_key() {
        assert_eq!(
            suggest("liveness", MARKET_KEYS),
            "did you mean `liveness_min`?"
        );
        assert_eq!(
            suggest("identfy_threshold", MARKET_KEYS),
            "did you mean `identify_threshold`?"
        );
        assert_eq!(
            suggest("shoper", &CATEGORY_NAMES),
            "did you mean `shopper`?"
        );
        let far = suggest("colour", RULE_KEYS);
        assert!(far.starts_with("the keys are `zones_enforced`"), "{far}");
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

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

//! The admission policy: configuration (TOML) in, one pure [`decide()`] function per event.
//!
//! A [`PolicyBook`] holds one [`MarketPolicy`] per market: a default plus per-market
//! overrides, each with per-category rules. [`decide()`] runs every check on one event and
//! returns the [`Verdict`]: the decision, every check with its value and threshold, and what
//! the gate screen shows. It reads no clock (time is an argument), does no I/O and never
//! panics; only [`PolicyBook::load`] reads a file.
//!
//! # The policy file
//!
//! ```toml
//! [default]                        # every key below is required here
//! identify_threshold = 0.50        # 1:N: best cosine score must reach this       [-1, 1]
//! verify_threshold = 0.45          # 1:1: score against the card holder           [-1, 1]
//! borderline_band = 0.03           # scores this far below a threshold escalate   [0, 1]
//! margin = 0.05                    # 1:N: best minus best other subject, else escalate [0, 2]
//! liveness_min = 0.5               # below: deny                                  [0, 1]
//! require_credential = true        # face alone is not enough: an ID card or QR is needed
//! temperature_ceiling_c = 37.3     # above: deny; or "off"                        [30, 45]
//! health_code = { pass = ["green"], escalate = ["yellow"] }   # other colours deny; or "off"
//! health_code_max_age = 24         # hours since the record's update; or "off"     [1, 2160]
//! travel_code = { pass = ["green"], escalate = ["yellow"] }
//! travel_code_max_age = 72         # as health_code_max_age
//! stale_code = "escalate"          # a code older than its max age: "deny" or "escalate"
//! occupancy_cap = 5000             # entries stop at this many inside; or "off"
//! over_occupancy = "escalate"      # at the cap: "deny" or "escalate"
//! # Rules per person; each may be overridden per category (below).
//! zones_enforced = false           # the gate's zone must be one of the person's zones
//! min_vaccine_doses = 0            # 0: not checked                               [0, 10]
//! max_test_age_hours = 24          # latest test negative and at most this old; or "off"
//! schedule = "always"              # or daily windows in local time: ["05:00-11:00", "22:00-02:00"]
//! sign_in_required = false         # staff: an entry needs today's sign-in first
//! anti_passback = false            # entries and exits must alternate
//! max_entries_per_day = 20         # admitted entries per person per day; or "off"
//!
//! [default.categories.merchant]    # service_worker, manager, staff, merchant, buyer, shopper
//! zones_enforced = true
//! min_vaccine_doses = 3
//! sign_in_required = true
//!
//! [markets.7]                      # market 7: any [default] key, replaced key by key
//! occupancy_cap = 800
//! [markets.7.categories.buyer]
//! schedule = ["04:00-10:00"]
//! ```
//!
//! Resolution for market M and category C: start from `[default]`, replace the keys that
//! `[markets.M]` sets (its `categories` tables merge into the default's key by key), then
//! replace the rule keys that the merged `categories.C` table sets. Unknown keys, unknown
//! categories, values out of range, empty or malformed schedule windows, a colour listed
//! under both `pass` and `escalate`, and market ids that are not plain numbers are refused
//! with the file, line, column and reason ([`PolicyError::Invalid`]); every problem in the
//! file is reported at once, not only the first.
//!
//! **Version.** Every book has a [`PolicyVersion`]: the first 12 hex digits of the SHA-256 of
//! the file's canonical form (keys sorted, comments and layout gone), so reformatting a file
//! keeps its version and any change of meaning changes it. [`PolicyBook::summary`] says in
//! plain words what the policy does per market and category (`gatewarden policy check`).
//!
//! # The checks, in verdict order
//!
//! Every verdict lists these nineteen checks, in this order (the order of [`CheckKind`]).
//! A check that is switched off, or has nothing to look at, reports `NotChecked` with the
//! reason in its detail.
//!
//! | Check | Value / threshold | Fails (or escalates) when |
//! |---|---|---|
//! | FaceMatch | score / identify or verify threshold | no face; score below threshold (escalates within `borderline_band`); 1:1 holder has no templates; face of someone other than the card's holder |
//! | MatchMargin | lead / margin | 1:N lead over the best other subject below `margin` (escalates) |
//! | Liveness | liveness / min | below `liveness_min` |
//! | Credential | | a presented credential is unknown (FaceMatch is then NotChecked); none presented and `require_credential` |
//! | SubjectStatus | | revoked; identified but not in the registry |
//! | Blocklist | | blocklisted |
//! | Validity | | now outside `[valid_from, valid_until]` (both inclusive) |
//! | Market | | the person's market list is not empty and lacks the gate's market |
//! | Zone | | `zones_enforced` and the person's zones are not empty and lack the gate's zone |
//! | Schedule | local minute of day | now outside every window (local time via the input's UTC offset) |
//! | Temperature | °C / ceiling | above the ceiling, or a non-finite reading; no reading: NotChecked |
//! | HealthCode | age in hours / max age | colour not in `pass` (escalates if in `escalate`); no health record; record older than `health_code_max_age` (`stale_code`: fail or escalate); the detail names the colour |
//! | TravelCode | age in hours / max age | as HealthCode, with `travel_code_max_age` |
//! | TestAge | hours / max hours | no test, result not negative, or older than the max |
//! | Vaccination | doses / min | fewer doses than the minimum (minimum 0: NotChecked) |
//! | SignIn | | `sign_in_required`, an entry, and no sign-in today (a sign-in event is exempt) |
//! | AntiPassback | | entry while inside, exit after an exit today (a sign-in event is exempt) |
//! | Frequency | entries today / cap | entries today ≥ cap |
//! | Occupancy | occupancy / cap | entry with occupancy ≥ cap (`over_occupancy`: fail or escalate) |
//!
//! Decision: any Fail → Deny; else any Escalate → Escalate; else Admit. The screen is red,
//! yellow or green and names the first failing (else first escalating) check in plain words,
//! e.g. "Test older than 24 h".
//!
//! **Identity.** FaceMatch, Liveness and Credential establish who the person is. An unknown
//! credential, a failed face match or a failed liveness check leaves no one to check: the
//! person-specific checks (SubjectStatus to Frequency) report NotChecked "Not identified",
//! the verdict names no subject, and the decision is Deny. A missing credential under
//! `require_credential` fails, but the face still identifies the person, so the record names
//! them.
//!
//! **Exits.** Leaving is always allowed unless anti-passback forbids it: on an exit the
//! person-specific checks, Temperature and Occupancy report NotChecked "Exit"; identity and
//! AntiPassback still run. With no passage today both directions pass anti-passback, since
//! someone who came in before midnight must be able to leave.
//!
//! **Fail closed.** NaN or infinite scores, liveness or temperatures fail their check; a
//! health record filed under another subject counts as none. [`internal_error`] builds the
//! Deny verdict the pipeline records when deciding itself fails.

mod decide;
mod file;
pub mod replay;
mod summary;
mod values;

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use gatewarden_protocol::{Category, MarketId};

pub use decide::{
    CredentialLookup, DecisionInput, FaceResult, MarketState, PersonState, decide, internal_error,
};

use file::{CATEGORIES, CategoryRules, MarketSettings, category_index};

#[cfg(doc)]
use gatewarden_protocol::{CheckKind, Verdict};

/// The largest policy file [`PolicyBook::load`] reads; policies are a few kilobytes.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The text of the embedded demo policy (`engine/policies/demo.toml`), for `gatewarden init`.
pub const DEMO_POLICY_TOML: &str = include_str!("../../policies/demo.toml");

/// Every market's policy: a default and per-market overrides, resolved at load time.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyBook {
    default: MarketPolicy,
    markets: HashMap<MarketId, MarketPolicy>,
    version: PolicyVersion,
}

impl PolicyBook {
    /// Parses a policy file's text; `origin` (the file name) prefixes error messages.
    ///
    /// # Errors
    /// [`PolicyError::Invalid`] with the line, column and reason of every problem found.
    ///
    /// # Examples
    /// ```
    /// use gatewarden::policy::PolicyBook;
    /// use gatewarden_protocol::MarketId;
    ///
    /// let mut text = include_str!("../../policies/demo.toml").to_owned();
    /// text.push_str("[markets.3]\nidentify_threshold = 0.6\n");
    /// let book = PolicyBook::from_toml(&text, "demo.toml")?;
    /// assert_eq!(book.for_market(MarketId(3)).identify_threshold(), 0.6);
    /// assert_eq!(book.for_market(MarketId(4)).identify_threshold(), 0.5);
    ///
    /// let bad = text.replace("margin = 0.05", "margin = 3.0").replace("liveness_min", "liveness");
    /// let err = PolicyBook::from_toml(&bad, "bad.toml").unwrap_err();
    /// let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
    /// assert_eq!(lines.len(), 3, "{err}");
    /// assert_eq!(
    ///     lines[0],
    ///     "bad.toml:7:2: missing key `liveness_min` in [default]; [default] must set every key"
    /// );
    /// assert_eq!(lines[1], "bad.toml:13:10: match margin 3 is outside [0, 2]");
    /// assert_eq!(
    ///     lines[2],
    ///     "bad.toml:14:1: unknown key `liveness` in [default]; did you mean `liveness_min`?"
    /// );
    /// # Ok::<(), gatewarden::policy::PolicyError>(())
    /// ```
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, PolicyError> {
        file::parse(text, origin)
    }

    /// Reads and parses one policy file.
    ///
    /// # Errors
    /// [`PolicyError::Read`] if the file cannot be read, [`PolicyError::TooLarge`] past
    /// 1 MiB, [`PolicyError::Invalid`] if its content is refused.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let read_err = |source| PolicyError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_FILE_BYTES {
            return Err(PolicyError::TooLarge {
                path: path.to_owned(),
                len,
                max: MAX_FILE_BYTES,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let origin = path
            .file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy();
        Self::from_toml(&text, &origin)
    }

    /// The embedded demo policy (`engine/policies/demo.toml`), the contract the load
    /// generator's population is built against.
    pub fn demo() -> Self {
        #[allow(clippy::expect_used)]
        // The text is a compile-time constant and the unit test `demo_policy_parses` proves
        // it parses, so this cannot fail at run time.
        Self::from_toml(DEMO_POLICY_TOML, "demo.toml").expect("the embedded demo policy parses")
    }

    /// The policy for `market`: its override if the file has one, else the default.
    pub fn for_market(&self, market: MarketId) -> &MarketPolicy {
        self.markets.get(&market).unwrap_or(&self.default)
    }

    /// The policy for markets without an override.
    pub fn default_policy(&self) -> &MarketPolicy {
        &self.default
    }

    /// Markets with their own `[markets.<id>]` table, in ascending order.
    pub fn overridden_markets(&self) -> Vec<MarketId> {
        let mut ids: Vec<MarketId> = self.markets.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The version of the file this book was read from (see the module docs).
    pub fn version(&self) -> &PolicyVersion {
        &self.version
    }

    /// What the policy does, in plain words: the market-wide settings and a line per
    /// category, for the default and for each market with its own table.
    pub fn summary(&self) -> String {
        summary::render(self)
    }
}

/// A policy's version: the first 12 hex digits of the SHA-256 of its canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyVersion(String);

impl PolicyVersion {
    /// The 12 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A version as the entry log stored it.
    pub(crate) fn from_stored(text: String) -> Self {
        Self(text)
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One problem in a policy file: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Problem {
    /// The file name (or whatever the caller passed as origin).
    pub origin: String,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, and the accepted range or form where there is one.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin, self.line, self.column, self.reason
        )
    }
}

/// The problems, one per line.
fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One market's resolved policy: market-wide settings and the rules for each category.
#[derive(Clone, Debug, PartialEq)]
pub struct MarketPolicy {
    settings: MarketSettings,
    /// Rules for a category the file does not name (and for categories this build does not
    /// know).
    base: CategoryRules,
    /// Rules per category, in [`category_index`] order.
    categories: [CategoryRules; CATEGORIES],
}

impl MarketPolicy {
    /// 1:N: the lowest best score that identifies a person.
    pub fn identify_threshold(&self) -> f32 {
        self.settings.identify_threshold.0.cmp
    }

    /// 1:1: the lowest score that verifies a credential's holder.
    pub fn verify_threshold(&self) -> f32 {
        self.settings.verify_threshold.0.cmp
    }

    /// Scores this far below a threshold escalate instead of failing. A matcher that drops
    /// candidates early must keep those above `identify_threshold() - borderline_band()`.
    pub fn borderline_band(&self) -> f32 {
        self.settings.borderline_band.0.cmp
    }

    /// 1:N: the lead the best subject needs over the best other subject.
    pub fn margin(&self) -> f32 {
        self.settings.margin.0.cmp
    }

    /// True when a face alone (no credential) is refused.
    pub fn requires_credential(&self) -> bool {
        self.settings.require_credential
    }

    /// True when `category` must sign in before an entry.
    pub fn requires_sign_in(&self, category: Category) -> bool {
        self.rules_for(category).sign_in_required
    }

    fn rules_for(&self, category: Category) -> &CategoryRules {
        category_index(category)
            .and_then(|i| self.categories.get(i))
            .unwrap_or(&self.base)
    }
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is implausibly large for a policy.
    #[error("policy file {} is {len} bytes, more than the {max} allowed", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The content is refused: syntax, unknown keys, missing keys or bad values. Displays
    /// as one `file:line:column: reason` line per problem.
    #[error("{}", lines(.problems))]
    Invalid {
        /// Every problem found, in file order (never empty).
        problems: Vec<Problem>,
    },
    /// The engine runs the embedded demo policy, so there is no file to reload.
    #[error(
        "this engine runs the embedded demo policy, so there is no file to reload; set \
         `policy = \"policy.toml\"` under [engine] in gatewarden.toml and restart"
    )]
    NotConfigured,
    /// Group or others may write the policy file.
    #[error(
        "policy file {} is writable by group or others (mode {mode:o}): whoever can write it \
         decides who is admitted; run `chmod go-w {}` and reload again",
        path.display(),
        path.display()
    )]
    WritableByOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A resolved market policy lacks a key although `[default]` sets them all: a bug in
    /// this build, never the file's fault.
    #[error(
        "internal error: the policy for {} is incomplete after a complete [default]; please \
         report this with the policy file",
        market.map_or_else(|| "[default]".to_owned(), |m| format!("market {}", m.0))
    )]
    Incomplete {
        /// The market, `None` for the default.
        market: Option<MarketId>,
    },
}

impl PolicyError {
    /// The problems of an [`Invalid`](Self::Invalid) file; none for the other errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

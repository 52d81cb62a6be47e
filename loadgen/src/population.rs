//! A seeded synthetic population and its files: who the people are, their faces, their health
//! records, the gates, and the ground truth.
//!
//! Everything is a pure function of [`PopulationConfig`]: subject `i` is drawn from its own
//! random stream, so `run` regenerates the same people from `population.json` without reading
//! the big files back, and subject 17 is the same person in a population of 100 or 100,000.
//!
//! Files written into the output folder (owner-only, mode 0600; they hold biometric and
//! personal data):
//!
//! | file | content |
//! |---|---|
//! | `subjects.jsonl` | one registry record per person |
//! | `health.jsonl` | one health record per person who has one |
//! | `gates.jsonl` | gates `1..=G`, round-robin over markets `1..=M`, zones `1..=4` |
//! | `templates.npy` | float32 `(N, dim)`, one enrollment template per person, C order |
//! | `template_subjects.txt` | the subject id of each template row, one per line |
//! | `truth.jsonl` | per person: persona and the answer to an ordinary event of theirs |
//! | `population.json` | the config (to regenerate) and measured score statistics |
//!
//! Ground truth is valid for events within 24 h of `now`: eligible people's tests were taken
//! 1-20 h before `now` and the demo policy accepts tests up to 48 h old.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use gatewarden::clock::{Clock, DAY_MS, HOUR_MS, SystemClock, civil_from_days};
use gatewarden::npy::F32MatrixWriter;
use gatewarden::testing::{IndexedFaces, Rng, dot_f64};
use gatewarden_protocol::{Category, CodeColour, SubjectStatus, TestResult, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::stream::Stream;
use crate::truth::{self, Face, Facts};
/// Zones per market.
pub(crate) const ZONES: u32 = 4;
/// The most subjects the id-card scheme keeps unique (20,000 birth dates × 1,000 serials).
const MAX_SUBJECTS: usize = 20_000_000;
/// Version of `population.json`. 2: faces and people drawn from the engine's generators
/// (`gatewarden::testing`); a version 1 folder's templates no longer match the faces a run
/// regenerates, so it is refused and must be generated again.
const FORMAT: u32 = 2;

/// How a population is made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PopulationConfig {
    /// Enrolled people.
    pub subjects: usize,
    /// Markets, numbered `1..=markets`.
    pub markets: u32,
    /// Gates, numbered `1..=gates`.
    pub gates: u32,
    /// Embedding dimension.
    pub dim: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Face model id written into every event (the gallery's model).
    pub model: String,
    /// The population's "now": health records and validity windows are placed around it.
    pub now: UnixMillis,
    /// Fractions of each persona.
    #[serde(default)]
    pub personas: PersonaMix,
}

impl Default for PopulationConfig {
    /// 100k people, 10 markets, 1,000 gates, d = 512, seed 1, model `demo-face-v1`, and `now`
    /// read from the system clock.
    fn default() -> Self {
        Self {
            subjects: 100_000,
            markets: 10,
            gates: 1_000,
            dim: 512,
            seed: 1,
            model: "demo-face-v1".into(),
            now: wall_clock(),
            personas: PersonaMix::default(),
        }
    }
}

/// The current wall-clock time.
pub(crate) fn wall_clock() -> UnixMillis {
    SystemClock.now()
}

/// Fractions of each persona (they need not sum to 1: they are weights).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PersonaMix {
    /// Negative test within 24 h, green codes, vaccinated: admitted.
    pub eligible: f64,
    /// Negative test 72 h old: denied.
    pub stale_test: f64,
    /// Positive test: denied.
    pub positive: f64,
    /// A worker (zoned category) with no vaccine dose: denied ("no vaccine, no work").
    pub unvaccinated_worker: f64,
    /// Yellow health code: escalated.
    pub yellow_code: f64,
    /// Yellow travel code: escalated.
    pub yellow_travel: f64,
    /// Red health code: denied.
    pub red_code: f64,
    /// Status revoked: denied.
    pub revoked: f64,
    /// Status blocklisted: denied.
    pub blocklisted: f64,
    /// Validity ended before `now`: denied.
    pub expired: f64,
    /// No health record at all: denied.
    pub no_health_record: f64,
}

impl Default for PersonaMix {
    fn default() -> Self {
        Self {
            eligible: 0.85,
            stale_test: 0.03,
            positive: 0.01,
            unvaccinated_worker: 0.02,
            yellow_code: 0.02,
            yellow_travel: 0.01,
            red_code: 0.01,
            revoked: 0.02,
            blocklisted: 0.01,
            expired: 0.01,
            no_health_record: 0.01,
        }
    }
}

impl PersonaMix {
    fn weights(&self) -> [f64; Persona::ALL.len()] {
        [
            self.eligible,
            self.stale_test,
            self.positive,
            self.unvaccinated_worker,
            self.yellow_code,
            self.yellow_travel,
            self.red_code,
            self.revoked,
            self.blocklisted,
            self.expired,
            self.no_health_record,
        ]
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct PopulationSummary {
    /// The output folder.
    pub dir: PathBuf,
    /// People written.
    pub subjects: usize,
    /// Template rows written (one per person).
    pub templates: usize,
    /// Gates written.
    pub gates: u32,
    /// Markets.
    pub markets: u32,
    /// People per persona.
    pub personas: BTreeMap<String, usize>,
    /// People per category.
    pub categories: BTreeMap<String, usize>,
    /// People per expected answer to an ordinary event.
    pub expected: BTreeMap<String, usize>,
    /// Score statistics measured on a sample.
    pub scores: ScoreStats,
    /// Seconds spent.
    pub elapsed_s: f64,
}

impl PopulationSummary {
    /// A compact human-readable block.
    pub fn summary(&self) -> String {
        let join = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "population: {} subjects, {} templates, {} gates over {} markets in {:.1} s -> {}\n  \
             personas: {}\n  categories: {}\n  expected: {}\n  \
             genuine cosine mean {:.3} (min {:.3}), impostor cosine mean {:.3} sd {:.3} max {:.3}\n",
            self.subjects,
            self.templates,
            self.gates,
            self.markets,
            self.elapsed_s,
            self.dir.display(),
            join(&self.personas),
            join(&self.categories),
            join(&self.expected),
            self.scores.genuine_mean,
            self.scores.genuine_min,
            self.scores.impostor_mean,
            self.scores.impostor_sd,
            self.scores.impostor_max,
        )
    }
}

/// Cosine statistics measured on a sample of the population.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreStats {
    /// Genuine pairs sampled (template vs a fresh capture of the same person).
    pub genuine_pairs: usize,
    /// Mean genuine cosine.
    pub genuine_mean: f64,
    /// Lowest genuine cosine seen.
    pub genuine_min: f64,
    /// Impostor pairs sampled (template vs a never-enrolled face).
    pub impostor_pairs: usize,
    /// Mean impostor cosine.
    pub impostor_mean: f64,
    /// Standard deviation of the impostor cosine.
    pub impostor_sd: f64,
    /// Highest impostor cosine seen.
    pub impostor_max: f64,
}

/// Why a population could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PopulationError {
    /// A configuration value is out of range.
    #[error("invalid population config: {what}")]
    InvalidConfig {
        /// Which value and why.
        what: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, so it is not also a `source`).
        cause: io::Error,
    },
    /// `population.json` is not what this version writes.
    #[error(
        "{path}: not a population description: {what}; regenerate it with `gatewarden-loadgen population`"
    )]
    BadDescription {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// `templates.npy` could not be written (the message names the file).
    #[error(transparent)]
    Templates(#[from] gatewarden::npy::NpyError),
}

/// Writes the population described by `cfg` into `out` (created mode 0700 if missing).
///
/// # Errors
/// An invalid configuration, or a file that cannot be written.
pub fn generate(cfg: &PopulationConfig, out: &Path) -> anyhow::Result<PopulationSummary> {
    let started = Instant::now();
    let pop = Population::build(cfg)?;
    create_private_dir(out)?;
    write_jsonl(
        &out.join("subjects.jsonl"),
        pop.subjects.iter().map(SubjectLine::from),
    )?;
    write_jsonl(
        &out.join("health.jsonl"),
        pop.subjects
            .iter()
            .filter_map(|s| s.health.as_ref().map(|h| HealthLine::new(s.id, h))),
    )?;
    write_jsonl(
        &out.join("gates.jsonl"),
        pop.gates.iter().map(GateLine::from),
    )?;
    let truths: Vec<TruthLine> = pop.subjects.iter().map(|s| pop.truth_line(s)).collect();
    write_jsonl(&out.join("truth.jsonl"), truths.iter())?;
    write_template_ids(&out.join("template_subjects.txt"), &pop.subjects)?;
    write_templates(&out.join("templates.npy"), cfg)?;
    let scores = measure_scores(cfg);

    let mut expected = BTreeMap::new();
    for t in &truths {
        *expected.entry(t.expected.to_string()).or_insert(0) += 1;
    }
    let summary = PopulationSummary {
        dir: out.to_path_buf(),
        subjects: pop.subjects.len(),
        templates: pop.subjects.len(),
        gates: cfg.gates,
        markets: cfg.markets,
        personas: count(pop.subjects.iter().map(|s| s.persona.as_str())),
        categories: count(pop.subjects.iter().map(|s| s.category.name())),
        expected,
        scores,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    write_description(&out.join("population.json"), cfg, &summary)?;
    Ok(summary)
}

/// Reads the configuration back from a population folder's `population.json`.
///
/// # Errors
/// A missing or unreadable file, or one written by another format version.
pub fn load_config(dir: &Path) -> Result<PopulationConfig, PopulationError> {
    let path = dir.join("population.json");
    let text = fs::read_to_string(&path).map_err(|cause| PopulationError::Io {
        path: path.clone(),
        cause,
    })?;
    let bad = |what: String| PopulationError::BadDescription {
        path: path.clone(),
        what,
    };
    let desc: Description = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if desc.format != FORMAT {
        return Err(bad(format!(
            "format {} (this version reads {FORMAT})",
            desc.format
        )));
    }
    validate(&desc.config)?;
    Ok(desc.config)
}

fn count<'a>(it: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for k in it {
        *m.entry(k.to_string()).or_insert(0) += 1;
    }
    m
}

fn validate(cfg: &PopulationConfig) -> Result<(), PopulationError> {
    let bad = |what: String| Err(PopulationError::InvalidConfig { what });
    if cfg.subjects == 0 || cfg.subjects > MAX_SUBJECTS {
        return bad(format!(
            "subjects {} not in 1..={MAX_SUBJECTS}",
            cfg.subjects
        ));
    }
    if cfg.markets == 0 || cfg.gates == 0 {
        return bad(format!(
            "markets {} and gates {} must be at least 1",
            cfg.markets, cfg.gates
        ));
    }
    if cfg.dim == 0 || cfg.dim > 65_536 {
        return bad(format!("dim {} not in 1..=65536", cfg.dim));
    }
    if cfg.model.is_empty() || cfg.model.len() > 64 {
        return bad(format!("model id {:?} must be 1 to 64 bytes", cfg.model));
    }
    let w = cfg.personas.weights();
    if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
        return bad("persona fractions must be finite, non-negative and not all zero".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The people.

/// Population shares of each category (the people are the protocol's [`Category`]).
const CATEGORY_SHARES: [(Category, f64); 6] = [
    (Category::ServiceWorker, 0.10),
    (Category::Manager, 0.03),
    (Category::Staff, 0.07),
    (Category::Merchant, 0.25),
    (Category::Buyer, 0.15),
    (Category::Shopper, 0.40),
];

/// What the demo policy says about a category.
pub(crate) trait DemoCategory {
    /// Workers: bound to zones at their home market, and "no vaccine, no work".
    fn is_zoned(&self) -> bool;
    /// Vaccine doses the demo policy requires.
    fn required_doses(&self) -> u8;
}

impl DemoCategory for Category {
    fn is_zoned(&self) -> bool {
        matches!(
            self,
            Self::ServiceWorker | Self::Manager | Self::Staff | Self::Merchant
        )
    }

    fn required_doses(&self) -> u8 {
        if self.is_zoned() { 2 } else { 0 }
    }
}

/// What kind of case a person is, which fixes their health record and standing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Persona {
    Eligible,
    StaleTest,
    Positive,
    UnvaccinatedWorker,
    YellowCode,
    YellowTravel,
    RedCode,
    Revoked,
    Blocklisted,
    Expired,
    NoHealthRecord,
}

impl Persona {
    /// In the order of [`PersonaMix::weights`].
    const ALL: [Self; 11] = [
        Self::Eligible,
        Self::StaleTest,
        Self::Positive,
        Self::UnvaccinatedWorker,
        Self::YellowCode,
        Self::YellowTravel,
        Self::RedCode,
        Self::Revoked,
        Self::Blocklisted,
        Self::Expired,
        Self::NoHealthRecord,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Eligible => "eligible",
            Self::StaleTest => "stale_test",
            Self::Positive => "positive",
            Self::UnvaccinatedWorker => "unvaccinated_worker",
            Self::YellowCode => "yellow_code",
            Self::YellowTravel => "yellow_travel",
            Self::RedCode => "red_code",
            Self::Revoked => "revoked",
            Self::Blocklisted => "blocklisted",
            Self::Expired => "expired",
            Self::NoHealthRecord => "no_health_record",
        }
    }
}

/// A health record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Health {
    pub(crate) test_at: Option<u64>,
    pub(crate) test_result: Option<TestResult>,
    pub(crate) vaccine_doses: u8,
    pub(crate) health_code: CodeColour,
    pub(crate) travel_code: CodeColour,
    pub(crate) updated_at: u64,
}

/// One person.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Subject {
    /// Row in `templates.npy`, and the index of the person's random streams.
    pub(crate) index: u64,
    /// Subject id (`index + 1`).
    pub(crate) id: u64,
    pub(crate) category: Category,
    pub(crate) home_market: u32,
    pub(crate) markets: Vec<u32>,
    pub(crate) zones: Vec<u32>,
    pub(crate) valid_from: Option<u64>,
    pub(crate) valid_until: Option<u64>,
    pub(crate) id_card: String,
    pub(crate) qr_token: Option<String>,
    pub(crate) status: SubjectStatus,
    pub(crate) persona: Persona,
    pub(crate) health: Option<Health>,
}

/// One gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gate {
    pub(crate) gate: u32,
    pub(crate) market: u32,
    pub(crate) zone: u32,
}

impl Gate {
    /// Gate `g` of a fleet over `markets` markets: round-robin over markets first, then zones,
    /// so any prefix `1..=n` of the gates covers as many markets as it can.
    pub(crate) fn nth(g: u32, markets: u32) -> Self {
        let i = g.saturating_sub(1);
        let markets = markets.max(1);
        Self {
            gate: g,
            market: i % markets + 1,
            zone: (i / markets) % ZONES + 1,
        }
    }
}

/// The whole population in memory, without face vectors (those are regenerated on demand).
#[derive(Clone, Debug)]
pub(crate) struct Population {
    pub(crate) cfg: PopulationConfig,
    pub(crate) subjects: Vec<Subject>,
    pub(crate) gates: Vec<Gate>,
}

impl Population {
    /// Draws every person of `cfg`.
    pub(crate) fn build(cfg: &PopulationConfig) -> Result<Self, PopulationError> {
        validate(cfg)?;
        let gates: Vec<Gate> = (1..=cfg.gates).map(|g| Gate::nth(g, cfg.markets)).collect();
        // Zones that have at least one gate, per market: workers are assigned only zones they
        // can actually pass through.
        let mut zones_by_market = vec![Vec::new(); cfg.markets as usize + 1];
        for g in &gates {
            let z = &mut zones_by_market[g.market as usize];
            if !z.contains(&g.zone) {
                z.push(g.zone);
            }
        }
        let subjects = (0..cfg.subjects as u64)
            .map(|i| draw_subject(cfg, i, &zones_by_market))
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            subjects,
            gates,
        })
    }

    /// The answer to an ordinary event of `s` (own face, a gate of their own zone, normal
    /// temperature, at `now`).
    fn truth_line(&self, s: &Subject) -> TruthLine {
        let gate = self
            .gates
            .iter()
            .find(|g| {
                (s.markets.is_empty() || s.markets.contains(&g.market))
                    && (!s.category.is_zoned() || s.zones.is_empty() || s.zones.contains(&g.zone))
            })
            .copied()
            .unwrap_or_else(|| Gate {
                gate: 0,
                market: s.home_market,
                zone: s.zones.first().copied().unwrap_or(1),
            });
        let facts = Facts {
            subject: Some(s),
            face: Face::Genuine,
            gate: &gate,
            temperature_c: Some(36.5),
            at: self.cfg.now.0,
        };
        TruthLine {
            subject: s.id,
            persona: s.persona.as_str(),
            category: s.category.name(),
            expected: truth::expected(&facts).decision.name(),
        }
    }
}

fn draw_subject(cfg: &PopulationConfig, index: u64, zones_by_market: &[Vec<u32>]) -> Subject {
    let mut rng = Stream::Subject.rng(cfg.seed, index);
    let persona = Persona::ALL[rng.weighted(&cfg.personas.weights())];
    // An unvaccinated worker is, by definition, in a zoned category.
    let weights = CATEGORY_SHARES.map(|(category, share)| {
        if persona == Persona::UnvaccinatedWorker && !category.is_zoned() {
            0.0
        } else {
            share
        }
    });
    let category = CATEGORY_SHARES[rng.weighted(&weights)].0;
    let home_market = rng.below(u64::from(cfg.markets)) as u32 + 1;
    let (markets, zones) = if category.is_zoned() {
        (
            vec![home_market],
            draw_zones(&mut rng, &zones_by_market[home_market as usize]),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let now = cfg.now.0;
    let days = |rng: &mut Rng, lo: f64, hi: f64| (rng.uniform(lo, hi) * DAY_MS as f64) as u64;
    let (valid_from, valid_until) = if persona == Persona::Expired {
        (
            Some(now.saturating_sub(400 * DAY_MS)),
            Some(now.saturating_sub(days(&mut rng, 1.0, 60.0))),
        )
    } else if category == Category::Shopper {
        (None, None)
    } else {
        (
            Some(now.saturating_sub(days(&mut rng, 30.0, 720.0))),
            Some(now + days(&mut rng, 30.0, 365.0)),
        )
    };
    let id = index + 1;
    let qr_token =
        (category != Category::Shopper).then(|| format!("GWQR{id:010X}{:016X}", rng.next_u64()));
    let status = match persona {
        Persona::Revoked => SubjectStatus::Revoked,
        Persona::Blocklisted => SubjectStatus::Blocklisted,
        _ => SubjectStatus::Active,
    };
    let health = draw_health(&mut rng, now, category, persona);
    Subject {
        index,
        id,
        category,
        home_market,
        markets,
        zones,
        valid_from,
        valid_until,
        id_card: id_card(index, &mut rng),
        qr_token,
        status,
        persona,
        health,
    }
}

/// One or two distinct zones among those that have gates (any zone if none has).
fn draw_zones(rng: &mut Rng, available: &[u32]) -> Vec<u32> {
    let all: Vec<u32> = (1..=ZONES).collect();
    let pool = if available.is_empty() {
        &all[..]
    } else {
        available
    };
    let first = pool[rng.index(pool.len())];
    let mut zones = vec![first];
    if pool.len() > 1 && rng.chance(0.4) {
        let rest: Vec<u32> = pool.iter().copied().filter(|z| *z != first).collect();
        zones.push(rest[rng.index(rest.len())]);
    }
    zones.sort_unstable();
    zones
}

fn draw_health(rng: &mut Rng, now: u64, category: Category, persona: Persona) -> Option<Health> {
    if persona == Persona::NoHealthRecord {
        return None;
    }
    let hours = |rng: &mut Rng, lo: f64, hi: f64| (rng.uniform(lo, hi) * HOUR_MS as f64) as u64;
    let test_at = match persona {
        Persona::StaleTest => now.saturating_sub(72 * HOUR_MS + hours(rng, 0.0, 12.0)),
        _ => now.saturating_sub(hours(rng, 1.0, 20.0)),
    };
    let test_result = if persona == Persona::Positive {
        TestResult::Positive
    } else {
        TestResult::Negative
    };
    let vaccine_doses = if persona == Persona::UnvaccinatedWorker {
        0
    } else if category.is_zoned() {
        [2, 3][rng.weighted(&[0.3, 0.7])]
    } else {
        [0, 1, 2, 3][rng.weighted(&[0.1, 0.1, 0.3, 0.5])]
    };
    let health_code = match persona {
        Persona::YellowCode => CodeColour::Yellow,
        Persona::RedCode => CodeColour::Red,
        _ => CodeColour::Green,
    };
    let travel_code = if persona == Persona::YellowTravel {
        CodeColour::Yellow
    } else {
        CodeColour::Green
    };
    Some(Health {
        test_at: Some(test_at),
        test_result: Some(test_result),
        vaccine_doses,
        health_code,
        travel_code,
        updated_at: (test_at + hours(rng, 0.2, 1.0)).min(now),
    })
}

/// A synthetic 18-character resident ID number: a Beijing district code, a birth date, a
/// serial and the ISO 7064 MOD 11-2 check character (a digit or `X`). Unique per index:
/// `(index × 7919) mod 20000` is a bijection on `0..20000` (7919 is prime, coprime to 20000),
/// and the serial is `index / 20000`.
fn id_card(index: u64, rng: &mut Rng) -> String {
    const DISTRICTS: [&str; 8] = [
        "110101", "110102", "110105", "110106", "110107", "110108", "110111", "110114",
    ];
    let district = DISTRICTS[rng.index(DISTRICTS.len())];
    let (y, m, d) = civil_from_days(-7305 + ((index * 7919) % 20_000) as i64);
    let body = format!("{district}{y:04}{m:02}{d:02}{:03}", (index / 20_000) % 1000);
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

// ---------------------------------------------------------------------------------------------
// Files.

#[derive(Serialize)]
struct SubjectLine<'a> {
    subject: u64,
    category: &'static str,
    home_market: u32,
    markets: &'a [u32],
    zones: &'a [u32],
    valid_from: Option<u64>,
    valid_until: Option<u64>,
    id_card: Option<&'a str>,
    qr_tokens: Vec<&'a str>,
    status: &'static str,
}

impl<'a> From<&'a Subject> for SubjectLine<'a> {
    fn from(s: &'a Subject) -> Self {
        Self {
            subject: s.id,
            category: s.category.name(),
            home_market: s.home_market,
            markets: &s.markets,
            zones: &s.zones,
            valid_from: s.valid_from,
            valid_until: s.valid_until,
            id_card: Some(&s.id_card),
            qr_tokens: s.qr_token.as_deref().into_iter().collect(),
            status: s.status.name(),
        }
    }
}

#[derive(Serialize)]
struct HealthLine {
    subject: u64,
    test_at: Option<u64>,
    test_result: Option<&'static str>,
    vaccine_doses: u8,
    health_code: &'static str,
    travel_code: &'static str,
    updated_at: u64,
}

impl HealthLine {
    fn new(subject: u64, h: &Health) -> Self {
        Self {
            subject,
            test_at: h.test_at,
            test_result: h.test_result.map(TestResult::name),
            vaccine_doses: h.vaccine_doses,
            health_code: h.health_code.name(),
            travel_code: h.travel_code.name(),
            updated_at: h.updated_at,
        }
    }
}

#[derive(Serialize)]
struct GateLine {
    gate: u32,
    market: u32,
    zone: u32,
    name: String,
}

impl From<&Gate> for GateLine {
    fn from(g: &Gate) -> Self {
        Self {
            gate: g.gate,
            market: g.market,
            zone: g.zone,
            name: format!("market {} zone {} gate {}", g.market, g.zone, g.gate),
        }
    }
}

#[derive(Serialize)]
struct TruthLine {
    subject: u64,
    persona: &'static str,
    category: &'static str,
    expected: &'static str,
}

/// The content of `population.json`.
#[derive(Serialize, Deserialize)]
struct Description {
    format: u32,
    generator: String,
    config: PopulationConfig,
    /// Cosine of each enrolled template to its person's identity.
    template_cos: f64,
    /// Cosine of each gate capture to its person's identity.
    probe_cos: f64,
    #[serde(default)]
    scores: ScoreStats,
    #[serde(default)]
    personas: BTreeMap<String, usize>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PopulationError + '_ {
    move |cause| PopulationError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn create_private_dir(dir: &Path) -> Result<(), PopulationError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Creates (or truncates) `path` readable and writable by the owner only.
pub(crate) fn create_private_file(path: &Path) -> io::Result<BufWriter<File>> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only when the file is created; an older file keeps its bits otherwise.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

fn finish(w: BufWriter<File>) -> io::Result<()> {
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

fn write_jsonl<T: Serialize>(
    path: &Path,
    lines: impl Iterator<Item = T>,
) -> Result<(), PopulationError> {
    let write = || -> io::Result<()> {
        let mut w = create_private_file(path)?;
        for line in lines {
            serde_json::to_writer(&mut w, &line)?;
            w.write_all(b"\n")?;
        }
        finish(w)
    };
    write().map_err(io_err(path))
}

fn write_template_ids(path: &Path, subjects: &[Subject]) -> Result<(), PopulationError> {
    let write = || -> io::Result<()> {
        let mut w = create_private_file(path)?;
        for s in subjects {
            writeln!(w, "{}", s.id)?;
        }
        finish(w)
    };
    write().map_err(io_err(path))
}

/// Writes `templates.npy`, computing rows on every core in blocks so memory stays bounded.
fn write_templates(path: &Path, cfg: &PopulationConfig) -> Result<(), PopulationError> {
    const BLOCK: usize = 4096;
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    let faces = IndexedFaces::new(cfg.seed, cfg.dim);
    let write = || -> Result<(), gatewarden::npy::NpyError> {
        let mut w = F32MatrixWriter::create(path, cfg.subjects, cfg.dim)?;
        let mut block = vec![0.0f32; BLOCK * cfg.dim];
        for start in (0..cfg.subjects).step_by(BLOCK) {
            let rows = BLOCK.min(cfg.subjects - start);
            let buf = &mut block[..rows * cfg.dim];
            let per_thread = rows.div_ceil(threads) * cfg.dim;
            std::thread::scope(|scope| {
                for (t, chunk) in buf.chunks_mut(per_thread).enumerate() {
                    let first = start + t * (per_thread / cfg.dim);
                    scope.spawn(move || {
                        for (r, row) in chunk.chunks_mut(cfg.dim).enumerate() {
                            row.copy_from_slice(&faces.template((first + r) as u64));
                        }
                    });
                }
            });
            w.write_rows(buf)?;
        }
        w.finish()
    };
    Ok(write()?)
}

/// Genuine and impostor cosines on a sample, so the summary shows the score model's margins.
fn measure_scores(cfg: &PopulationConfig) -> ScoreStats {
    // Templates and probes are unit vectors, so their inner product is their cosine.
    let faces = IndexedFaces::new(cfg.seed, cfg.dim);
    let n = cfg.subjects.min(1000) as u64;
    let mut genuine = Vec::with_capacity(n as usize);
    let mut templates = Vec::new();
    for i in 0..n {
        let template = faces.template(i);
        let p = faces.genuine_probe(i, &mut Stream::Sample.rng(cfg.seed, i));
        genuine.push(dot_f64(&template, &p));
        if i < 200 {
            templates.push(template);
        }
    }
    let mut impostor = Vec::new();
    for k in 0..200u64 {
        // Sample impostors from the top of the index space, away from any run's impostors.
        let mut rng = Stream::Sample.rng(cfg.seed, u64::MAX - k);
        let face = faces.impostor_probe(u64::MAX - k, &mut rng);
        impostor.extend(templates.iter().map(|t| dot_f64(t, &face)));
    }
    let mean = |xs: &[f64]| {
        if xs.is_empty() {
            0.0
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    };
    let im = mean(&impostor);
    let sd = (mean(
        &impostor
            .iter()
            .map(|x| (x - im).powi(2))
            .collect::<Vec<_>>(),
    ))
    .sqrt();
    ScoreStats {
        genuine_pairs: genuine.len(),
        genuine_mean: mean(&genuine),
        genuine_min: genuine.iter().copied().fold(f64::INFINITY, f64::min),
        impostor_pairs: impostor.len(),
        impostor_mean: im,
        impostor_sd: sd,
        impostor_max: impostor.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

fn write_description(
    path: &Path,
    cfg: &PopulationConfig,
    s: &PopulationSummary,
) -> Result<(), PopulationError> {
    let desc = Description {
        format: FORMAT,
        generator: format!("gatewarden-loadgen {}", env!("CARGO_PKG_VERSION")),
        config: cfg.clone(),
        template_cos: IndexedFaces::TEMPLATE_COS,
        probe_cos: IndexedFaces::PROBE_COS,
        scores: s.scores.clone(),
        personas: s.personas.clone(),
    };
    let write = || -> io::Result<()> {
        let mut w = create_private_file(path)?;
        serde_json::to_writer_pretty(&mut w, &desc)?;
        w.write_all(b"\n")?;
        finish(w)
    };
    write().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use gatewarden::store::import::{ImportFormat, ImportRecord, RowReader};
    use gatewarden_protocol::{HealthRecord, SubjectRecord};

    use super::*;

    /// Every record of a JSON Lines import file, through the engine's import reader.
    fn import_all<T: ImportRecord>(path: &Path) -> Vec<T> {
        let file = io::BufReader::new(File::open(path).unwrap());
        let mut reader = RowReader::<_, T>::new(file, ImportFormat::JsonLines).unwrap();
        let mut records = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            records.push(record.unwrap_or_else(|e| panic!("{}: {e:?}", path.display())));
        }
        records
    }

    fn cfg(subjects: usize) -> PopulationConfig {
        PopulationConfig {
            subjects,
            markets: 5,
            gates: 100,
            dim: 64,
            seed: 42,
            model: "demo-face-v1".into(),
            now: UnixMillis(1_750_000_000_000),
            personas: PersonaMix::default(),
        }
    }

    #[test]
    fn population_is_deterministic_and_prefix_stable() {
        let a = Population::build(&cfg(500)).unwrap();
        let b = Population::build(&cfg(500)).unwrap();
        let c = Population::build(&cfg(100)).unwrap();
        assert_eq!(a.subjects, b.subjects);
        assert_eq!(&a.subjects[..100], &c.subjects[..]);
        let mut other = cfg(500);
        other.seed = 43;
        assert_ne!(Population::build(&other).unwrap().subjects, a.subjects);
    }

    #[test]
    fn persona_and_category_fractions_follow_the_mix() {
        let n = 40_000;
        let pop = Population::build(&cfg(n)).unwrap();
        let frac =
            |p: Persona| pop.subjects.iter().filter(|s| s.persona == p).count() as f64 / n as f64;
        let mix = PersonaMix::default();
        for (p, w) in Persona::ALL.iter().zip(mix.weights()) {
            let f = frac(*p);
            assert!((f - w).abs() < 0.01 + w * 0.1, "{p:?}: {f} vs {w}");
        }
        let shoppers = pop
            .subjects
            .iter()
            .filter(|s| s.category == Category::Shopper)
            .count();
        assert!((shoppers as f64 / n as f64 - 0.40).abs() < 0.02);
        for s in &pop.subjects {
            if s.persona == Persona::UnvaccinatedWorker {
                assert!(s.category.is_zoned());
                assert_eq!(s.health.as_ref().unwrap().vaccine_doses, 0);
            }
            if s.category.is_zoned() {
                assert_eq!(s.markets, vec![s.home_market]);
                assert!((1..=2).contains(&s.zones.len()));
                assert!(s.qr_token.is_some());
            } else {
                assert!(s.markets.is_empty() && s.zones.is_empty());
            }
            assert_eq!(s.id_card.len(), 18);
        }
    }

    #[test]
    fn truth_per_persona_matches_the_policy() {
        let pop = Population::build(&cfg(20_000)).unwrap();
        for s in &pop.subjects {
            let want = match s.persona {
                Persona::Eligible => "admit",
                Persona::YellowCode | Persona::YellowTravel => "escalate",
                _ => "deny",
            };
            assert_eq!(
                pop.truth_line(s).expected,
                want,
                "{:?} {:?}",
                s.persona,
                s.category
            );
        }
    }

    #[test]
    fn id_cards_are_unique_and_checked() {
        let pop = Population::build(&cfg(30_000)).unwrap();
        let mut cards: Vec<&str> = pop.subjects.iter().map(|s| s.id_card.as_str()).collect();
        cards.sort_unstable();
        cards.dedup();
        assert_eq!(cards.len(), 30_000);
        // A published example of the check-digit scheme: 11010519491231002X.
        let w = [7u32, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
        let sum: u32 = "11010519491231002"
            .bytes()
            .zip(w)
            .map(|(b, w)| u32::from(b - b'0') * w)
            .sum();
        assert_eq!(b"10X98765432"[(sum % 11) as usize], b'X');
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-7305), (1950, 1, 1));
    }

    #[test]
    fn gates_cover_markets_and_zones() {
        let g: Vec<Gate> = (1..=40).map(|g| Gate::nth(g, 10)).collect();
        assert_eq!(
            g[0],
            Gate {
                gate: 1,
                market: 1,
                zone: 1
            }
        );
        assert_eq!(
            g[10],
            Gate {
                gate: 11,
                market: 1,
                zone: 2
            }
        );
        assert_eq!(
            g[39],
            Gate {
                gate: 40,
                market: 10,
                zone: 4
            }
        );
    }

    #[test]
    fn generate_writes_every_file_privately() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pop");
        let summary = generate(&cfg(300), &out).unwrap();
        assert_eq!(summary.subjects, 300);
        for f in [
            "subjects.jsonl",
            "health.jsonl",
            "gates.jsonl",
            "templates.npy",
            "template_subjects.txt",
            "truth.jsonl",
            "population.json",
        ] {
            let meta = fs::metadata(out.join(f)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        }
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Read back with the reader the engine's import uses.
        let templates = gatewarden::npy::read_f32_matrix(&out.join("templates.npy")).unwrap();
        assert_eq!((templates.rows, templates.dim), (300, 64));
        // Row 7 is subject 8's template; the rows span several writer threads.
        assert_eq!(templates.row(7), &IndexedFaces::new(42, 64).template(7)[..]);
        assert_eq!(
            templates.row(299),
            &IndexedFaces::new(42, 64).template(299)[..]
        );
        let ids = fs::read_to_string(out.join("template_subjects.txt")).unwrap();
        assert_eq!(ids.lines().nth(7), Some("8"));

        // The registry and health files read back through the engine's own importer, as
        // `gatewarden import` reads them, and say what the population holds.
        let pop = Population::build(&cfg(300)).unwrap();
        let subjects: Vec<SubjectRecord> = import_all(&out.join("subjects.jsonl"));
        assert_eq!(subjects.len(), 300);
        for (record, s) in subjects.iter().zip(&pop.subjects) {
            assert_eq!(record.subject.0, s.id);
            assert_eq!(record.category, s.category);
            assert_eq!(record.status, s.status);
            assert_eq!(record.home_market.0, s.home_market);
            assert_eq!(record.id_card.as_deref(), Some(s.id_card.as_str()));
            assert_eq!(
                record.qr_tokens,
                s.qr_token.iter().cloned().collect::<Vec<_>>()
            );
        }
        let health: Vec<HealthRecord> = import_all(&out.join("health.jsonl"));
        let with_health: Vec<&Subject> =
            pop.subjects.iter().filter(|s| s.health.is_some()).collect();
        assert_eq!(health.len(), with_health.len());
        for (record, s) in health.iter().zip(with_health) {
            let h = s.health.as_ref().unwrap();
            assert_eq!(record.subject.0, s.id);
            assert_eq!(record.test_result, h.test_result);
            assert_eq!(record.vaccine_doses, h.vaccine_doses);
            assert_eq!(
                (record.health_code, record.travel_code),
                (h.health_code, h.travel_code)
            );
        }
        assert_eq!(
            fs::read_to_string(out.join("truth.jsonl"))
                .unwrap()
                .lines()
                .count(),
            300
        );
        assert_eq!(
            fs::read_to_string(out.join("gates.jsonl"))
                .unwrap()
                .lines()
                .count(),
            100
        );
        assert_eq!(load_config(&out).unwrap(), cfg(300));
    }

    #[test]
    fn invalid_config_is_refused() {
        let mut c = cfg(10);
        c.dim = 0;
        assert!(matches!(
            Population::build(&c),
            Err(PopulationError::InvalidConfig { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_config(dir.path()),
            Err(PopulationError::Io { .. })
        ));
    }
}

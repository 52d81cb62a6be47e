//! `gatewarden-loadgen history`: months of past entry records for an existing site, in bulk,
//! so that a benchmark starts from a store that has lived.
//!
//! The entries are realistic because they are decided, not invented: each past event (a
//! person of the site's registry at one of its gates) goes through the engine's own policy
//! ([`gatewarden::policy::decide`]) with the site's policy file, so every entry carries the
//! same checks, values, thresholds and explanations a live one would. What is drawn:
//!
//! - **When**: a day's events follow the rush: a morning peak (06:00-09:00 local, 45%), an
//!   evening one (16:00-19:00, 25%), the rest spread over 05:00-21:00.
//! - **Who**: regulars (a fifth of the registry) make four fifths of the visits, at a gate of
//!   their own markets when they have any. Staff sign in once each morning at their
//!   home market.
//! - **How**: 70% verify (credential and face), 20% identify (face only), 10% sign-ins; 20%
//!   of passages are exits; genuine face scores around 0.78; 1% of readings are a fever.
//! - **Keys**: gate `g`'s seqs on day `d` start at `d`'s first millisecond × 1000, the
//!   scheme `gatewarden-loadgen run` uses with its start time, so past and live keys never
//!   collide.
//!
//! Days are written by two threads in parallel through the store's bulk loader (no fsync per
//! transaction; each day is synced once at the end), then the store is closed. The site must
//! not be served meanwhile: the generator takes the site lock as every writer does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use gatewarden::clock::{DAY_MS, HOUR_MS, UtcOffset};
use gatewarden::config::Config;
use gatewarden::model::GateInfo;
use gatewarden::policy::{
    CredentialLookup, DecisionInput, FaceResult, MarketState, PersonState, PolicyBook, decide,
};
use gatewarden::site_lock::{SiteLock, SiteLockError};
use gatewarden::store::{EntryRecord, EventFingerprint, ModeKind, Store};
use gatewarden::testing::Rng;
use gatewarden_protocol::{
    Category, Credential, Decision, Direction, Event, FaceSample, HealthRecord, Mode, SubjectId,
    SubjectRecord, UnixMillis,
};

/// Records per bulk transaction.
const CHUNK: usize = 20_000;
/// Threads writing days.
const THREADS: usize = 2;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryConfig {
    /// Days of history, ending with `last_day`.
    pub days: u32,
    /// Entries per day.
    pub per_day: u64,
    /// Days since 1970-01-01 (UTC) of the newest day written; default yesterday.
    pub last_day: i64,
    /// Seed of everything random.
    pub seed: u64,
}

/// What was generated.
#[derive(Clone, Debug, PartialEq)]
pub struct HistorySummary {
    /// Days written.
    pub days: u32,
    /// Entries written.
    pub entries: u64,
    /// Admitted among them.
    pub admitted: u64,
    /// Seconds it took.
    pub seconds: f64,
}

/// The site as the generator sees it.
struct Site {
    gates: Vec<GateInfo>,
    /// Gates per market, for people bound to their markets.
    gates_by_market: HashMap<u32, Vec<usize>>,
    people: Vec<Arc<SubjectRecord>>,
    /// Health records by person (index into `people`).
    health: Vec<Option<HealthRecord>>,
    /// Staff per home market, for sign-ins.
    staff_by_market: HashMap<u32, Vec<usize>>,
    policies: PolicyBook,
    offset: UtcOffset,
    model: String,
}

/// Writes the history into the site at `data`. `progress(days_done, entries_done)` is called
/// after every day.
///
/// # Errors
/// A site that cannot be opened or is being served, an empty registry or gate list, or a
/// store failure.
pub fn generate(
    data: &Path,
    cfg: &HistoryConfig,
    progress: &(dyn Fn(u32, u64) + Sync),
) -> anyhow::Result<HistorySummary> {
    anyhow::ensure!(cfg.days > 0, "--days must be at least 1");
    anyhow::ensure!(cfg.per_day > 0, "--per-day must be at least 1");
    let _lock = lock_site(data)?;
    let config = Config::load_from_data_dir(data)?;
    let store = Store::open_with_key(
        &data.join("store"),
        &config.engine.credential_key_path(data),
    )?;
    let site = Site::load(&store, data, &config)?;
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let (entries, admitted, days_done) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let days: Vec<i64> = (0..i64::from(cfg.days))
        .map(|i| cfg.last_day - i64::from(cfg.days) + 1 + i)
        .collect();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let mut loader = store.bulk_entry_loader();
                    while let Some(&day) = days.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let (n, ok) = write_day(&site, cfg, day, &mut loader)?;
                        entries.fetch_add(n, Ordering::Relaxed);
                        admitted.fetch_add(ok, Ordering::Relaxed);
                        let done = days_done.fetch_add(1, Ordering::Relaxed) + 1;
                        progress(done as u32, entries.load(Ordering::Relaxed));
                    }
                    loader.finish()?;
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a history thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(HistorySummary {
        days: cfg.days,
        entries: entries.into_inner(),
        admitted: admitted.into_inner(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Site {
    fn load(store: &Store, data: &Path, config: &Config) -> anyhow::Result<Self> {
        let gates = store.gates();
        anyhow::ensure!(
            !gates.is_empty(),
            "{} has no gates: import them first (gatewarden import gates)",
            data.display()
        );
        let mut people: Vec<Arc<SubjectRecord>> = store
            .subject_ids()
            .into_iter()
            .filter_map(|id| store.subject(id))
            .collect();
        anyhow::ensure!(
            !people.is_empty(),
            "{} has no subjects: import them first (gatewarden import subjects)",
            data.display()
        );
        people.sort_by_key(|p| p.subject);
        let health = people.iter().map(|p| store.health(p.subject)).collect();
        let mut gates_by_market: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, g) in gates.iter().enumerate() {
            gates_by_market.entry(g.market.0).or_default().push(i);
        }
        let mut staff_by_market: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, p) in people.iter().enumerate() {
            if is_staff(p.category) {
                staff_by_market.entry(p.home_market.0).or_default().push(i);
            }
        }
        let policies = match &config.engine.policy {
            Some(path) => PolicyBook::load(&data.join(path))?,
            None => PolicyBook::demo(),
        };
        Ok(Self {
            gates,
            gates_by_market,
            people,
            health,
            staff_by_market,
            policies,
            offset: config.engine.utc_offset(),
            model: config.engine.model.clone(),
        })
    }
}

fn is_staff(c: Category) -> bool {
    matches!(
        c,
        Category::ServiceWorker | Category::Manager | Category::Staff | Category::Merchant
    )
}

/// One past event before it is decided.
struct Draft {
    at: u64,
    gate: usize,
    person: usize,
    mode: ModeKind,
    direction: Direction,
}

/// Draws, decides and writes one day; returns (entries, admitted).
fn write_day(
    site: &Site,
    cfg: &HistoryConfig,
    day: i64,
    loader: &mut gatewarden::store::EntryWriter,
) -> anyhow::Result<(u64, u64)> {
    let mut rng = Rng::stream(cfg.seed, 0x4849_5354, day as u64);
    let day_start = (day as u64) * DAY_MS;
    let mut drafts = draw_day(site, cfg, day_start, &mut rng);
    drafts.sort_by_key(|d| d.at);
    let mut seqs: HashMap<usize, u64> = HashMap::new();
    let mut people: HashMap<(usize, u32), PersonState> = HashMap::new();
    let mut occupancy: HashMap<u32, u32> = HashMap::new();
    let (mut written, mut admitted) = (0u64, 0u64);
    let mut chunk: Vec<EntryRecord> = Vec::with_capacity(CHUNK);
    for d in drafts {
        let seq = seqs.entry(d.gate).or_insert(day_start * 1000);
        *seq += 1;
        let gate = &site.gates[d.gate];
        let person_key = (d.person, gate.market.0);
        let state = people.get(&person_key).copied().unwrap_or_default();
        let inside = occupancy.entry(gate.market.0).or_default();
        let record = decide_draft(site, &d, *seq, state, *inside, &mut rng);
        if record.verdict.decision == Decision::Admit {
            admitted += 1;
            let p = people.entry(person_key).or_default();
            match (record.mode, record.direction) {
                (ModeKind::SignIn, _) => p.signed_in_today = true,
                (_, Direction::Entry) => {
                    p.entries_today += 1;
                    p.inside = Some(true);
                    *inside += 1;
                }
                (_, Direction::Exit) => {
                    p.inside = Some(false);
                    *inside = inside.saturating_sub(1);
                }
            }
        }
        chunk.push(record);
        if chunk.len() == CHUNK {
            written += commit(loader, &mut chunk)?;
        }
    }
    written += commit(loader, &mut chunk)?;
    Ok((written, admitted))
}

fn commit(
    loader: &mut gatewarden::store::EntryWriter,
    chunk: &mut Vec<EntryRecord>,
) -> anyhow::Result<u64> {
    if chunk.is_empty() {
        return Ok(0);
    }
    loader.commit(chunk).map_err(|e| e.error)?;
    let n = chunk.len() as u64;
    chunk.clear();
    Ok(n)
}

/// A day's events: sign-ins of staff in the morning, then passages through the rush.
fn draw_day(site: &Site, cfg: &HistoryConfig, day_start: u64, rng: &mut Rng) -> Vec<Draft> {
    let local_midnight = day_start as i64 - site.offset.offset_ms();
    let at_local = |hours: f64| (local_midnight + (hours * HOUR_MS as f64) as i64).max(0) as u64;
    let signins = cfg.per_day / 10;
    let mut out = Vec::with_capacity(cfg.per_day as usize);
    let markets: Vec<&u32> = site.staff_by_market.keys().collect();
    for _ in 0..signins {
        let Some(&&market) = markets.get(rng.index(markets.len().max(1))) else {
            break;
        };
        let staff = &site.staff_by_market[&market];
        let person = staff[rng.index(staff.len())];
        let gate = pick_gate(site, site.gates_by_market.get(&market), rng);
        out.push(Draft {
            at: at_local(rng.uniform(5.5, 8.5)),
            gate,
            person,
            mode: ModeKind::SignIn,
            direction: Direction::Entry,
        });
    }
    while (out.len() as u64) < cfg.per_day {
        let hour = match rng.next_f64() {
            x if x < 0.45 => rng.uniform(6.0, 9.0),
            x if x < 0.70 => rng.uniform(16.0, 19.0),
            _ => rng.uniform(5.0, 21.0),
        };
        // Regulars: a fifth of the people (the first fifth, by id) make four fifths of the
        // visits; with 100k people and 150k entries a day, a regular passes about six times a
        // day, anyone else every few days.
        let n = site.people.len();
        let regulars = (n / 5).max(1);
        let person = if rng.chance(0.8) {
            rng.index(regulars)
        } else {
            rng.index(n)
        };
        let p = &site.people[person];
        let own = p
            .markets
            .first()
            .and_then(|m| site.gates_by_market.get(&m.0));
        let gate = pick_gate(site, own, rng);
        out.push(Draft {
            at: at_local(hour),
            gate,
            person,
            mode: if rng.chance(0.78) {
                ModeKind::Verify
            } else {
                ModeKind::Identify
            },
            direction: if rng.chance(0.2) {
                Direction::Exit
            } else {
                Direction::Entry
            },
        });
    }
    out
}

/// A gate among `own` (a person's market's), or any gate.
fn pick_gate(site: &Site, own: Option<&Vec<usize>>, rng: &mut Rng) -> usize {
    match own {
        Some(g) if !g.is_empty() => g[rng.index(g.len())],
        _ => rng.index(site.gates.len()),
    }
}

/// Runs the site's policy on a draft, as the pipeline would have.
fn decide_draft(
    site: &Site,
    d: &Draft,
    seq: u64,
    person: PersonState,
    occupancy: u32,
    rng: &mut Rng,
) -> EntryRecord {
    let gate = &site.gates[d.gate];
    let subject = &site.people[d.person];
    let id = subject.subject;
    let score = (0.78 + rng.uniform(-0.08, 0.08)) as f32;
    let (mode, credential, face) = match d.mode {
        ModeKind::Verify => (
            Mode::Verify {
                credential: Credential::IdCard(String::new()),
            },
            CredentialLookup::Resolved(id),
            FaceResult::Verified {
                subject: id,
                score: Some(score),
            },
        ),
        ModeKind::Identify => (
            Mode::Identify,
            CredentialLookup::NotPresented,
            identified(site, id, score, rng),
        ),
        ModeKind::SignIn => (
            Mode::SignIn { credential: None },
            CredentialLookup::NotPresented,
            identified(site, id, score, rng),
        ),
    };
    let temperature = if rng.chance(0.01) {
        rng.uniform(37.6, 38.6)
    } else {
        rng.uniform(36.0, 37.0)
    } as f32;
    let event = Event {
        gate: gate.gate,
        seq,
        captured_at: UnixMillis(d.at.saturating_sub(30)),
        mode,
        direction: d.direction,
        // The policy reads the face's liveness and quality, never its embedding.
        face: Some(FaceSample {
            model: site.model.clone(),
            embedding: Vec::new(),
            quality: rng.uniform(0.7, 1.0) as f32,
            liveness: rng.uniform(0.85, 1.0) as f32,
        }),
        temperature_c: Some(temperature),
    };
    let health = site.health[d.person].as_ref().map(|h| as_of(h, d.at));
    let input = DecisionInput {
        event: &event,
        gate,
        credential,
        face,
        subject: Some(subject),
        health: health.as_ref(),
        person,
        market: MarketState { occupancy },
        utc_offset: site.offset,
    };
    let at = UnixMillis(d.at);
    let verdict = decide(&input, site.policies.for_market(gate.market), at);
    let mut fingerprint = [0u8; 16];
    fingerprint[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    fingerprint[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    EntryRecord {
        verdict,
        market: gate.market,
        zone: gate.zone,
        mode: d.mode,
        direction: d.direction,
        captured_at: event.captured_at,
        fingerprint: EventFingerprint(fingerprint),
        policy: Some(site.policies.version().clone()),
    }
}

/// The record moved to `at`, keeping its ages: a test taken 5 h before the record was
/// updated is 5 h old at `at`, so each person keeps their standing on every past day.
fn as_of(h: &HealthRecord, at: u64) -> HealthRecord {
    let shift = |t: UnixMillis| UnixMillis(at.saturating_sub(h.updated_at.0.saturating_sub(t.0)));
    HealthRecord {
        test_at: h.test_at.map(shift),
        updated_at: UnixMillis(at),
        ..h.clone()
    }
}

fn identified(site: &Site, id: SubjectId, score: f32, rng: &mut Rng) -> FaceResult {
    let other = site.people[rng.index(site.people.len())].subject;
    FaceResult::Identified {
        best: Some((id, score)),
        runner_up: (other != id).then(|| (other, (0.25 + rng.uniform(0.0, 0.15)) as f32)),
    }
}

/// Takes the site lock every gatewarden writer takes (`DATA/site.lock`): the history must not
/// be written while a server runs on the site.
fn lock_site(data: &Path) -> anyhow::Result<SiteLock> {
    anyhow::ensure!(
        data.join(gatewarden::config::CONFIG_FILE).exists(),
        "{} is not a gatewarden site (no gatewarden.toml): create it with gatewarden init",
        data.display()
    );
    SiteLock::acquire(data, "gatewarden-loadgen history").map_err(|e| match e {
        SiteLockError::Held { .. } => {
            anyhow::anyhow!(
                "{} is locked: {e}; stop it before writing history",
                data.display()
            )
        }
        e => e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewarden_protocol::{CodeColour, GateId, MarketId, SubjectStatus, TestResult, ZoneId};

    const DAY: i64 = 20_000; // 2024-10-04

    /// A site with 4 gates over 2 markets, 40 people (every fourth a merchant), health records.
    fn site(dir: &Path) {
        std::fs::write(dir.join("gatewarden.toml"), "").unwrap();
        let store = Store::open(&dir.join("store")).unwrap();
        let gates: Vec<GateInfo> = (1..=4)
            .map(|g| GateInfo {
                gate: GateId(g),
                market: MarketId(1 + g % 2),
                zone: ZoneId(1),
                name: String::new(),
            })
            .collect();
        store.upsert_gates(&gates).unwrap();
        let people: Vec<SubjectRecord> = (1..=40u64)
            .map(|id| SubjectRecord {
                subject: SubjectId(id),
                category: if id % 4 == 0 {
                    Category::Merchant
                } else {
                    Category::Shopper
                },
                home_market: MarketId(1 + (id % 2) as u32),
                markets: vec![],
                zones: vec![],
                valid_from: None,
                valid_until: None,
                id_card: None,
                qr_tokens: vec![],
                status: SubjectStatus::Active,
            })
            .collect();
        store.upsert_subjects(&people).unwrap();
        let now = (DAY as u64) * DAY_MS;
        let health: Vec<HealthRecord> = (1..=40u64)
            .map(|id| HealthRecord {
                subject: SubjectId(id),
                test_at: Some(UnixMillis(now - 5 * HOUR_MS)),
                test_result: Some(TestResult::Negative),
                vaccine_doses: 3,
                health_code: CodeColour::Green,
                travel_code: CodeColour::Green,
                updated_at: UnixMillis(now),
            })
            .collect();
        store.upsert_health(&health).unwrap();
    }

    #[test]
    fn writes_decided_days_that_the_store_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        site(dir.path());
        let cfg = HistoryConfig {
            days: 3,
            per_day: 500,
            last_day: DAY,
            seed: 1,
        };
        let calls = std::sync::Mutex::new(Vec::new());
        let summary =
            generate(dir.path(), &cfg, &|d, n| calls.lock().unwrap().push((d, n))).unwrap();
        assert_eq!(summary.entries, 1_500);
        assert!(
            summary.admitted > 0 && summary.admitted < 1_500,
            "{summary:?}"
        );
        assert_eq!(calls.lock().unwrap().len(), 3, "progress after every day");
        let store = Store::open(&dir.path().join("store")).unwrap();
        let stats = store.history_stats().unwrap();
        assert_eq!(stats.entries, 1_500);
        // Every entry was decided by the policy: all its checks are there.
        let mut rows = 0;
        let mut signins = 0;
        store
            .for_each_entry_since(UnixMillis(0), |row| {
                rows += 1;
                signins += usize::from(row.mode == ModeKind::SignIn);
                assert!(row.decided_at.0 < (DAY as u64 + 2) * DAY_MS);
            })
            .unwrap();
        assert_eq!(rows, 1_500);
        assert!(signins > 0);
        let (gate, seq) = store.max_seq_per_gate().unwrap()[0];
        let v = store.verdict_for(gate, seq).unwrap().unwrap();
        assert!(v.checks.len() >= 18, "{} checks", v.checks.len());
        // Keys stay below what `run` would use today.
        assert!(seq < (DAY as u64 + 2) * DAY_MS * 1000);
        // The same days again: nothing is written twice.
        drop(store);
        generate(dir.path(), &cfg, &|_, _| {}).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        assert_eq!(store.history_stats().unwrap().entries, 1_500);
    }

    #[test]
    fn refuses_a_site_in_use_or_without_people() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HistoryConfig {
            days: 1,
            per_day: 10,
            last_day: DAY,
            seed: 1,
        };
        let err = generate(dir.path(), &cfg, &|_, _| {}).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a gatewarden site"),
            "{err:#}"
        );
        std::fs::write(dir.path().join("gatewarden.toml"), "").unwrap();
        let err = generate(dir.path(), &cfg, &|_, _| {}).unwrap_err();
        assert!(format!("{err:#}").contains("no gates"), "{err:#}");
        site(dir.path());
        let held = SiteLock::acquire(dir.path(), "a test").unwrap();
        let err = generate(dir.path(), &cfg, &|_, _| {}).unwrap_err();
        assert!(format!("{err:#}").contains("locked"), "{err:#}");
        drop(held);
        assert!(generate(dir.path(), &cfg, &|_, _| {}).is_ok());
    }
}

//! The plan of each event: who comes to which gate, how, with which face, and what a correct
//! engine must answer.
//!
//! Event `i` of a run is drawn from its own stream `(run seed, Plan, i)`, so plans do not
//! depend on timing. Who: a random person (sign-ins: a random worker); where: a gate the
//! person may use (workers: their home market and one of their zones; the public: any gate);
//! plus the event twists of the run's [`Twists`]: a stranger's face (impostor), a fever, a
//! worker at a gate outside their zones. The answer comes from [`truth::expected`] on the
//! chosen facts, at the event's capture time.
//!
//! The demo policy caps admitted entries at 50 per person per day; the planner keeps every
//! person below [`ADMIT_BUDGET`] expected admits per run (re-drawing the person), so a run
//! never reaches the cap on its own. Many runs on one data folder in one day with a small
//! population can still reach it; use a larger population or a fresh folder.

use std::collections::HashMap;

use gatewarden::testing::{IndexedFaces, Rng};
use gatewarden_protocol::{
    Credential, Decision, Direction, Event, FaceSample, GateId, Mode, UnixMillis,
};

use crate::population::{DemoCategory, Gate, Persona, Population, Subject};
use crate::stream::Stream;
use crate::truth::{self, Expected, Face, Facts};

use super::{Mix, Twists};

/// Most expected admits of one person in one run.
pub(crate) const ADMIT_BUDGET: u16 = 40;
/// Re-draws of a person before the planner takes whoever it has.
const REDRAWS: usize = 8;
/// A fever reading (°C).
const FEVER_C: f32 = 38.4;

/// Which request the event makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModeKind {
    Verify,
    Identify,
    SignIn,
}

impl ModeKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Identify => "identify",
            Self::SignIn => "signin",
        }
    }
}

/// The twist an event carries, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Twist {
    None,
    Fever,
    Impostor,
    WrongZone,
}

impl Twist {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Fever => "fever",
            Self::Impostor => "impostor",
            Self::WrongZone => "wrong_zone",
        }
    }
}

/// One planned event (its `seq` is set by the dispatcher, which owns the per-gate counters).
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Index into the run's active gates.
    pub(crate) gate: usize,
    pub(crate) event: Event,
    pub(crate) expected: Expected,
    pub(crate) mode: ModeKind,
    pub(crate) twist: Twist,
    pub(crate) persona: Option<Persona>,
}

/// Draws plans for one run.
#[derive(Debug)]
pub(crate) struct Planner<'a> {
    pop: &'a Population,
    gates: &'a [Gate],
    run_seed: u64,
    mix: [f64; 3],
    twists: Twists,
    workers: Vec<usize>,
    /// Active gate indexes per (market, zone).
    by_market_zone: HashMap<(u32, u32), Vec<usize>>,
    /// Expected admits per person so far.
    admits: Vec<u16>,
}

impl<'a> Planner<'a> {
    /// A planner over `pop`, sending through `gates` (the run's active gates).
    pub(crate) fn new(
        pop: &'a Population,
        gates: &'a [Gate],
        run_seed: u64,
        mix: Mix,
        twists: Twists,
    ) -> Self {
        let workers = pop
            .subjects
            .iter()
            .enumerate()
            .filter(|(_, s)| s.category.is_zoned())
            .map(|(i, _)| i)
            .collect();
        let mut by_market_zone: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
        for (i, g) in gates.iter().enumerate() {
            by_market_zone
                .entry((g.market, g.zone))
                .or_default()
                .push(i);
        }
        Self {
            pop,
            gates,
            run_seed,
            mix: [
                f64::from(mix.verify),
                f64::from(mix.identify),
                f64::from(mix.signin),
            ],
            twists,
            workers,
            by_market_zone,
            admits: vec![0; pop.subjects.len()],
        }
    }

    /// The plan of event `index`, captured at `at_ms` (unix ms).
    pub(crate) fn plan(&mut self, index: u64, at_ms: u64) -> Plan {
        let mut rng = Stream::Plan.rng(self.run_seed, index);
        let mut mode =
            [ModeKind::Verify, ModeKind::Identify, ModeKind::SignIn][rng.weighted(&self.mix)];
        if mode == ModeKind::SignIn && self.workers.is_empty() {
            mode = ModeKind::Verify;
        }
        if rng.chance(self.twists.impostor) {
            return self.impostor_plan(&mut rng, index, mode, at_ms);
        }
        let (subject, gate, twist) = self.pick_person(&mut rng, mode);
        let s = &self.pop.subjects[subject];
        let fever = s.persona == Persona::Eligible && rng.chance(self.twists.fever);
        let temperature = if fever {
            FEVER_C
        } else {
            normal_temperature(&mut rng)
        };
        let credential = credential_for(&mut rng, s, mode);
        let embedding = IndexedFaces::new(self.pop.cfg.seed, self.pop.cfg.dim)
            .genuine_probe(s.index, &mut Stream::Probe.rng(self.run_seed, index));
        let g = self.gates[gate];
        let facts = Facts {
            subject: Some(s),
            face: Face::Genuine,
            gate: &g,
            temperature_c: Some(temperature),
            at: at_ms,
        };
        let expected = truth::expected(&facts);
        if expected.decision == Decision::Admit {
            self.admits[subject] = self.admits[subject].saturating_add(1);
        }
        let twist = if fever { Twist::Fever } else { twist };
        Plan {
            gate,
            event: self.event(&mut rng, g, mode, credential, embedding, temperature, at_ms),
            expected,
            mode,
            twist,
            persona: Some(s.persona),
        }
    }

    /// A stranger's face: with a real person's card (verify), or alone (identify, sign-in).
    fn impostor_plan(&self, rng: &mut Rng, index: u64, mode: ModeKind, at_ms: u64) -> Plan {
        let gate = rng.index(self.gates.len());
        let g = self.gates[gate];
        let holder = (mode == ModeKind::Verify)
            .then(|| &self.pop.subjects[rng.index(self.pop.subjects.len())]);
        let credential = holder.and_then(|s| credential_for(rng, s, ModeKind::Verify));
        let embedding = crate::strangers::stranger_face(&self.pop.cfg, self.run_seed, index);
        let temperature = normal_temperature(rng);
        let facts = Facts {
            subject: holder,
            face: Face::Impostor,
            gate: &g,
            temperature_c: Some(temperature),
            at: at_ms,
        };
        Plan {
            gate,
            event: self.event(rng, g, mode, credential, embedding, temperature, at_ms),
            expected: truth::expected(&facts),
            mode,
            twist: Twist::Impostor,
            persona: holder.map(|s| s.persona),
        }
    }

    /// Who comes and through which gate: re-draws people who used up their admit budget or
    /// have no gate among the active ones.
    fn pick_person(&self, rng: &mut Rng, mode: ModeKind) -> (usize, usize, Twist) {
        let mut fallback = None;
        for _ in 0..REDRAWS {
            let subject = if mode == ModeKind::SignIn {
                self.workers[rng.index(self.workers.len())]
            } else {
                rng.index(self.pop.subjects.len())
            };
            let s = &self.pop.subjects[subject];
            let wrong_zone = s.category.is_zoned() && rng.chance(self.twists.wrong_zone);
            let gate = self.pick_gate(rng, s, wrong_zone);
            fallback.get_or_insert((subject, gate));
            if let Some(gate) = gate
                && self.admits[subject] < ADMIT_BUDGET
            {
                return (
                    subject,
                    gate,
                    if wrong_zone {
                        Twist::WrongZone
                    } else {
                        Twist::None
                    },
                );
            }
        }
        // Nobody fits (tiny population or a fleet with few gates): take the first draw at any
        // gate; the truth is computed from the facts either way.
        let (subject, gate) = fallback.unwrap_or((0, None));
        (
            subject,
            gate.unwrap_or_else(|| rng.index(self.gates.len())),
            Twist::None,
        )
    }

    /// A gate `s` may use (or, with `wrong_zone`, a gate of their market outside their zones).
    fn pick_gate(&self, rng: &mut Rng, s: &Subject, wrong_zone: bool) -> Option<usize> {
        if !s.category.is_zoned() {
            return Some(rng.index(self.gates.len()));
        }
        let lists: Vec<&Vec<usize>> = (1..=crate::population::ZONES)
            .filter(|z| s.zones.contains(z) != wrong_zone)
            .filter_map(|z| self.by_market_zone.get(&(s.home_market, z)))
            .collect();
        let total: usize = lists.iter().map(|l| l.len()).sum();
        if total == 0 {
            return None;
        }
        let mut k = rng.index(total);
        for l in lists {
            if k < l.len() {
                return Some(l[k]);
            }
            k -= l.len();
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        rng: &mut Rng,
        gate: Gate,
        mode: ModeKind,
        credential: Option<Credential>,
        embedding: Vec<f32>,
        temperature: f32,
        at_ms: u64,
    ) -> Event {
        let mode = match (mode, credential) {
            (ModeKind::Verify, Some(credential)) => Mode::Verify { credential },
            (ModeKind::SignIn, credential) => Mode::SignIn { credential },
            _ => Mode::Identify,
        };
        Event {
            gate: GateId(gate.gate),
            seq: 0,
            captured_at: UnixMillis(at_ms),
            mode,
            direction: Direction::Entry,
            face: Some(FaceSample {
                model: self.pop.cfg.model.clone(),
                embedding,
                quality: rng.uniform(0.6, 0.99) as f32,
                liveness: rng.uniform(0.8, 0.99) as f32,
            }),
            temperature_c: Some(temperature),
        }
    }
}

/// A normal reading in 36.0..37.0 °C, to one decimal like a real thermometer.
fn normal_temperature(rng: &mut Rng) -> f32 {
    (rng.uniform(360.0, 370.0).round() / 10.0) as f32
}

/// The credential presented: card holders with a staff card use it half the time.
fn credential_for(rng: &mut Rng, s: &Subject, mode: ModeKind) -> Option<Credential> {
    let qr = s.qr_token.as_ref().filter(|_| rng.chance(0.5));
    match mode {
        ModeKind::Verify => Some(match qr {
            Some(token) => Credential::StaffQr(token.clone()),
            None => Credential::IdCard(s.id_card.clone()),
        }),
        ModeKind::SignIn => qr.map(|t| Credential::StaffQr(t.clone())),
        ModeKind::Identify => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::{PersonaMix, PopulationConfig};

    fn population(subjects: usize, gates: u32) -> Population {
        Population::build(&PopulationConfig {
            subjects,
            markets: 4,
            gates,
            dim: 32,
            seed: 5,
            model: "demo-face-v1".into(),
            now: UnixMillis(1_750_000_000_000),
            personas: PersonaMix::default(),
        })
        .unwrap()
    }

    #[test]
    fn plans_follow_the_mix_and_respect_zones() {
        let pop = population(5_000, 64);
        let mut planner = Planner::new(&pop, &pop.gates, 11, Mix::default(), Twists::default());
        let now = pop.cfg.now.0 + 60_000;
        let plans: Vec<Plan> = (0..20_000).map(|i| planner.plan(i, now)).collect();
        let share = |f: &dyn Fn(&Plan) -> bool| {
            plans.iter().filter(|p| f(p)).count() as f64 / plans.len() as f64
        };
        assert!((share(&|p| p.mode == ModeKind::Verify) - 0.70).abs() < 0.02);
        assert!((share(&|p| p.mode == ModeKind::SignIn) - 0.10).abs() < 0.02);
        assert!((share(&|p| p.twist == Twist::Impostor) - 0.02).abs() < 0.006);
        assert!(share(&|p| p.twist == Twist::Fever) > 0.004);
        assert!(share(&|p| p.twist == Twist::WrongZone) > 0.002);
        let admits = share(&|p| p.expected.decision == Decision::Admit);
        assert!((0.75..0.90).contains(&admits), "admit share {admits}");
        for p in &plans {
            let g = pop.gates[p.gate];
            assert_eq!(p.event.gate, GateId(g.gate));
            assert_eq!(p.event.face.as_ref().unwrap().embedding.len(), 32);
            assert!(p.event.validate().is_ok(), "{:?}", p.event);
            match p.twist {
                Twist::Impostor => assert_eq!(p.expected.decision, Decision::Deny),
                Twist::Fever | Twist::WrongZone => assert_eq!(p.expected.decision, Decision::Deny),
                Twist::None => {
                    let s = &pop.subjects[p.expected.subject.unwrap() as usize - 1];
                    if s.category.is_zoned() {
                        assert_eq!(g.market, s.home_market);
                        assert!(s.zones.contains(&g.zone));
                    }
                    if p.mode == ModeKind::SignIn {
                        assert!(s.category.is_zoned());
                    }
                }
            }
            if p.twist == Twist::Impostor && p.mode != ModeKind::Verify {
                assert_eq!(p.expected.subject, None);
                assert_eq!(p.event.mode.credential(), None);
            }
        }
    }

    #[test]
    fn plans_are_reproducible_and_keep_the_admit_budget() {
        let pop = population(50, 16);
        let mut a = Planner::new(&pop, &pop.gates, 3, Mix::default(), Twists::default());
        let mut b = Planner::new(&pop, &pop.gates, 3, Mix::default(), Twists::default());
        let now = pop.cfg.now.0;
        for i in 0..500 {
            let (x, y) = (a.plan(i, now), b.plan(i, now));
            assert_eq!(x.event, y.event);
            assert_eq!(x.expected, y.expected);
        }
        // 50 people, 1000 more events: nobody gets beyond the budget unless no one fits.
        for i in 500..1500 {
            a.plan(i, now);
        }
        let over = a.admits.iter().filter(|n| **n > ADMIT_BUDGET).count();
        assert!(over <= 2, "{over} people over the admit budget");
    }

    #[test]
    fn planner_copes_with_a_single_gate() {
        let pop = population(200, 1);
        let mut p = Planner::new(&pop, &pop.gates, 1, Mix::default(), Twists::default());
        for i in 0..300 {
            let plan = p.plan(i, pop.cfg.now.0);
            assert_eq!(plan.gate, 0);
        }
    }
}

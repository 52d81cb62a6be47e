//! The library API: [`Engine`]. The server, the CLI and the demo use only this; a program that
//! embeds gatewarden gets the same.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use gatewarden_protocol::{
    Busy, Decision, Enroll, EnrollAck, Event, GateId, MarketId, Revoke, RevokeAck, SubjectId,
    UnixMillis, UpdateHealth, UpdateHealthAck,
};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, EngineConfig};
use crate::error::Error;
use crate::gallery::{GalleryOptions, GallerySnapshot, LiveGallery};
use crate::maintenance::{CountersUpkeep, Maintenance, MaintenanceParts};
pub use crate::pipeline::Submission;
use crate::pipeline::{Pipeline, PipelineParts, Reply, StatsSnapshot};
use crate::policy::{PolicyBook, PolicyError, PolicyVersion};
use crate::store::{
    ContactRow, EntryRow, Escalation, EscalationState, FrequencyRow, Resolution, ResolvedAs,
    SignInRow, Store, StoreLocation,
};

/// Templates inserted into the gallery per snapshot swap when loading from the store.
const LOAD_CHUNK: usize = 4096;

/// A running engine: store, gallery, policy and pipeline over one data folder.
///
/// ```no_run
/// # fn main() -> Result<(), gatewarden::Error> {
/// let engine = gatewarden::Engine::open("gatewarden-data", gatewarden::Config::default())?;
/// println!("{} subjects enrolled", engine.store().subject_count());
/// engine.shutdown();
/// # Ok(()) }
/// ```
pub struct Engine {
    store: Arc<Store>,
    gallery: Arc<LiveGallery>,
    policies: Arc<ArcSwap<PolicyBook>>,
    clock: Arc<dyn Clock>,
    pipeline: Pipeline,
    maintenance: Mutex<Maintenance>,
    /// Follows other nodes' registry writes (PostgreSQL store only).
    #[cfg(feature = "postgres")]
    follower: Mutex<Option<crate::follow::Follower>>,
    config: EngineConfig,
    data_dir: PathBuf,
    /// Serializes enrollments so the duplicate check sees every earlier template.
    enroll_lock: Mutex<()>,
    /// Serializes policy reloads, so the "previous" version each one reports is the one it
    /// replaced.
    reload_lock: Mutex<()>,
}

impl Engine {
    /// Opens (creating if needed) the data folder and starts the pipeline.
    ///
    /// # Errors
    /// An unusable store, gallery, policy or configuration, each with a message that says what
    /// is wrong.
    pub fn open(data_dir: impl AsRef<Path>, config: Config) -> Result<Self, Error> {
        Self::open_with_clock(data_dir, config, Arc::new(SystemClock))
    }

    /// [`Engine::open`] with an explicit clock (tests drive a `ManualClock`).
    ///
    /// # Errors
    /// As [`Engine::open`].
    pub fn open_with_clock(
        data_dir: impl AsRef<Path>,
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let data_dir = data_dir.as_ref().to_owned();
        create_private_dir(&data_dir)?;
        let retention = config.retention;
        retention.validate()?;
        let cfg = config.engine;
        let location = config.store.unwrap_or(StoreLocation::Sqlite);
        let store = Arc::new(Store::open_location(
            &location,
            &data_dir.join("store"),
            &cfg.credential_key_path(&data_dir),
        )?);
        let gallery_dir = data_dir.join("gallery");
        let gallery = Arc::new(
            LiveGallery::open(
                &gallery_dir,
                GalleryOptions::new(cfg.dim, cfg.precision.into()),
            )
            .map_err(|e| rebuild_hint(e, gallery_dir))?,
        );
        load_templates(&store, &gallery)?;
        let policies = match &cfg.policy {
            Some(path) => PolicyBook::load(&data_dir.join(path))?,
            None => PolicyBook::demo(),
        };
        let policies = Arc::new(ArcSwap::from_pointee(policies));
        let snapshot = (cfg.counters_snapshot_ms > 0 && store.supports_passage_marks())
            .then(|| store.dir().join(crate::pipeline::counters::SNAPSHOT_FILE));
        let (pipeline, committed) = Pipeline::start(
            PipelineParts {
                store: Arc::clone(&store),
                gallery: Arc::clone(&gallery),
                policies: Arc::clone(&policies),
                clock: Arc::clone(&clock),
                snapshot: snapshot.clone(),
            },
            &cfg,
        )?;
        if snapshot.is_none() {
            remove_stale_snapshot(&store.dir().join(crate::pipeline::counters::SNAPSHOT_FILE));
        }
        let counters = snapshot
            .zip(committed)
            .map(|(path, counters)| CountersUpkeep {
                counters,
                path,
                // Clamped as the configuration file's check would: a library caller's
                // Config is not checked, and a sum past the clock's range would panic.
                every: std::time::Duration::from_millis(
                    cfg.counters_snapshot_ms
                        .min(crate::config::MAX_COUNTERS_SNAPSHOT_MS),
                ),
                saved: None,
            });
        let maintenance = Maintenance::start(MaintenanceParts {
            gallery: Arc::clone(&gallery),
            store: Arc::clone(&store),
            clock: Arc::clone(&clock),
            compact_after: cfg.compact_after,
            interval: std::time::Duration::from_millis(cfg.maintenance_interval_ms),
            checkpoint_interval: std::time::Duration::from_millis(cfg.checkpoint_interval_ms),
            entry_days: retention.entry_days,
            counters,
        })
        .map_err(crate::pipeline::PipelineError::Spawn)?;
        #[cfg(feature = "postgres")]
        let follower = crate::follow::Follower::start(crate::follow::FollowParts {
            store: Arc::clone(&store),
            gallery: Arc::clone(&gallery),
            poll: std::time::Duration::from_millis(cfg.registry_poll_ms.max(1)),
            listen: cfg.registry_notify,
        })
        .map_err(crate::pipeline::PipelineError::Spawn)?;
        tracing::info!(
            store = store.backend_name(),
            subjects = store.subject_count(),
            templates = gallery.len(),
            workers = cfg.worker_count(),
            policy_version = %policies.load().version(),
            "engine open"
        );
        Ok(Self {
            store,
            gallery,
            policies,
            clock,
            pipeline,
            maintenance: Mutex::new(maintenance),
            #[cfg(feature = "postgres")]
            follower: Mutex::new(follower),
            config: cfg,
            data_dir,
            enroll_lock: Mutex::new(()),
            reload_lock: Mutex::new(()),
        })
    }

    /// Submits one event. The returned [`Submission`] is both a future (`.await` it) and a
    /// blocking handle ([`Submission::wait`]). Invalid events and overload are answered at
    /// once; others after their record is durable. A retry of a recorded event gets the
    /// recorded verdict; a different event under a recorded `(gate, seq)` gets `seq_reused`.
    /// Never blocks, so it may be called from an async task.
    pub fn submit(&self, event: Event) -> Submission {
        self.pipeline.submit(event)
    }

    /// The `Busy` an event arriving now would be refused with at the door, counted as a
    /// refusal, or `None` if it would be queued. Lets a front refuse a request before reading
    /// its body while the pipeline sheds (see [`crate::pipeline::admission`]).
    pub fn refuse_at_door(&self) -> Option<Busy> {
        self.pipeline.refuse_at_door()
    }

    /// Whether the pipeline is shedding: its queue stands (even its quickest events waited
    /// past the admission target), so new events beyond a short queue get `Busy`.
    pub fn is_shedding(&self) -> bool {
        self.pipeline.is_shedding()
    }

    /// Submits and waits for the reply.
    pub fn submit_blocking(&self, event: Event) -> Reply {
        self.submit(event).wait()
    }

    /// Enrolls (or updates) a person and adds their templates. A template whose face already
    /// matches another person above the identify threshold is not added: it is reported in
    /// `duplicate_of` for staff to resolve.
    ///
    /// # Errors
    /// Wrong model or dimension, non-finite values, or a store failure.
    pub fn enroll(&self, request: &Enroll) -> Result<EnrollAck, Error> {
        let _guard = self
            .enroll_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for t in &request.templates {
            self.validate_template(&t.model, &t.embedding)?;
        }
        let subject = request.subject.subject;
        self.store
            .upsert_subjects(std::slice::from_ref(&request.subject))?;
        let rows: Vec<(SubjectId, &[f32])> = request
            .templates
            .iter()
            .map(|t| (subject, t.embedding.as_slice()))
            .collect();
        let snapshot = self.gallery.snapshot();
        let report = self.add_templates_checked(&rows, Some(&snapshot))?;
        Ok(EnrollAck {
            subject,
            templates_added: u32::try_from(report.added).unwrap_or(u32::MAX),
            duplicate_of: report.duplicates.first().map(|d| d.existing),
        })
    }

    /// Adds many templates at once (the bulk importer). With `duplicates_in`, each template is
    /// searched in that gallery snapshot (typically taken before an import began); one that
    /// matches another person above the identify threshold is skipped and reported. Checking
    /// against the faces enrolled before the import keeps a bulk load linear in its size;
    /// checking every row against every other row of the same file would be quadratic.
    ///
    /// # Errors
    /// Wrong dimension, non-finite values, unknown subjects, or a store failure.
    pub fn enroll_templates(
        &self,
        rows: &[(SubjectId, &[f32])],
        duplicates_in: Option<&GallerySnapshot>,
    ) -> Result<BulkEnrollReport, Error> {
        self.enroll_checked(rows, duplicates_in, false)
    }

    /// [`Engine::enroll_templates`] against the live gallery (every face enrolled so far, the
    /// earlier batches of a file included), and also against the earlier rows of `rows`
    /// itself: of two rows with one face and different people, the later one is refused and
    /// reported with the earlier one's index ([`Duplicate::existing_index`]). Feeding a file
    /// in batches of a few hundred rows catches every duplicate within it at the cost of a
    /// search per row over the gallery as it grows.
    ///
    /// # Errors
    /// As [`Engine::enroll_templates`].
    pub fn enroll_templates_unique(
        &self,
        rows: &[(SubjectId, &[f32])],
    ) -> Result<BulkEnrollReport, Error> {
        self.enroll_checked(rows, None, true)
    }

    fn enroll_checked(
        &self,
        rows: &[(SubjectId, &[f32])],
        duplicates_in: Option<&GallerySnapshot>,
        within: bool,
    ) -> Result<BulkEnrollReport, Error> {
        let _guard = self
            .enroll_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (subject, v) in rows {
            self.validate_template(&self.config.model, v)?;
            if self.store.subject(*subject).is_none() {
                return Err(Error::Invalid(format!(
                    "subject {subject} is not in the registry; import subjects first"
                )));
            }
        }
        if within {
            let mut report = BulkEnrollReport::default();
            let keep = self.drop_duplicates_within(rows, &mut report);
            // Taken under the lock: every face enrolled so far, earlier batches included.
            let live = self.gallery.snapshot();
            let mut more =
                self.add_templates_checked(&keep, Some(duplicates_in.unwrap_or(&live)))?;
            // Indices of the second pass are into `keep`; map them back to `rows`.
            let positions: Vec<usize> = (0..rows.len())
                .filter(|i| !report.duplicates.iter().any(|d| d.index == *i))
                .collect();
            for d in &mut more.duplicates {
                d.index = positions.get(d.index).copied().unwrap_or(d.index);
            }
            report.added = more.added;
            report.duplicates.extend(more.duplicates);
            report.duplicates.sort_by_key(|d| d.index);
            return Ok(report);
        }
        self.add_templates_checked(rows, duplicates_in)
    }

    /// The identify threshold a duplicate face is judged by (the default policy's).
    fn duplicate_threshold(&self) -> f32 {
        self.policies
            .load()
            .for_market(MarketId(0))
            .identify_threshold()
    }

    /// Splits off rows whose face matches an earlier kept row of another person (cosine
    /// similarity at or above the identify threshold), pairwise.
    fn drop_duplicates_within<'a>(
        &self,
        rows: &[(SubjectId, &'a [f32])],
        report: &mut BulkEnrollReport,
    ) -> Vec<(SubjectId, &'a [f32])> {
        let threshold = self.duplicate_threshold();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let mut kept: Vec<(usize, SubjectId, &'a [f32], f32)> = Vec::with_capacity(rows.len());
        for (i, (subject, v)) in rows.iter().enumerate() {
            let n = norm(v);
            let clash = kept.iter().find_map(|(j, other, w, m)| {
                if other == subject {
                    return None;
                }
                let dot: f32 = v.iter().zip(*w).map(|(a, b)| a * b).sum();
                let score = dot / (n * m);
                (score >= threshold).then_some((*j, *other, score))
            });
            match clash {
                Some((j, existing, score)) => report.duplicates.push(Duplicate {
                    subject: *subject,
                    existing,
                    score,
                    index: i,
                    existing_index: Some(j),
                }),
                None => kept.push((i, *subject, v, n)),
            }
        }
        kept.into_iter().map(|(_, s, v, _)| (s, v)).collect()
    }

    fn add_templates_checked(
        &self,
        rows: &[(SubjectId, &[f32])],
        duplicates_in: Option<&GallerySnapshot>,
    ) -> Result<BulkEnrollReport, Error> {
        let mut report = BulkEnrollReport::default();
        let keep: Vec<(SubjectId, &[f32])> = match duplicates_in {
            Some(snapshot) => self.drop_duplicates(snapshot, rows, &mut report),
            None => rows.to_vec(),
        };
        let model = self.config.model.as_str();
        let store_rows: Vec<(SubjectId, &str, &[f32])> =
            keep.iter().map(|(s, v)| (*s, model, *v)).collect();
        let ids = self.store.add_templates(&store_rows)?;
        let gallery_rows: Vec<(u64, SubjectId, &[f32])> = ids
            .iter()
            .zip(&keep)
            .map(|(id, (s, v))| (*id, *s, *v))
            .collect();
        self.gallery.insert_batch(&gallery_rows)?;
        report.added = gallery_rows.len();
        Ok(report)
    }

    /// Splits off templates that already match another person in the gallery.
    fn drop_duplicates<'a>(
        &self,
        snapshot: &GallerySnapshot,
        rows: &[(SubjectId, &'a [f32])],
        report: &mut BulkEnrollReport,
    ) -> Vec<(SubjectId, &'a [f32])> {
        if snapshot.is_empty() {
            return rows.to_vec();
        }
        let threshold = self.duplicate_threshold();
        let mut keep = Vec::with_capacity(rows.len());
        for (c, chunk) in rows.chunks(256).enumerate() {
            let queries: Vec<&[f32]> = chunk.iter().map(|(_, v)| *v).collect();
            let found = snapshot.identify_batch(&queries);
            for (i, ((subject, v), found)) in chunk.iter().zip(found).enumerate() {
                let clash = [found.best, found.runner_up]
                    .into_iter()
                    .flatten()
                    .find(|(other, score)| other != subject && *score >= threshold);
                match clash {
                    Some((existing, score)) => report.duplicates.push(Duplicate {
                        subject: *subject,
                        existing,
                        score,
                        index: c * 256 + i,
                        existing_index: None,
                    }),
                    None => keep.push((*subject, *v)),
                }
            }
        }
        keep
    }

    fn validate_template(&self, model: &str, v: &[f32]) -> Result<(), Error> {
        if model != self.config.model {
            return Err(Error::UnknownModel {
                found: model.to_owned(),
                expected: self.config.model.clone(),
            });
        }
        if v.len() != self.config.dim {
            return Err(Error::DimensionMismatch {
                found: v.len(),
                expected: self.config.dim,
            });
        }
        if v.iter().any(|x| !x.is_finite()) || v.iter().all(|x| *x == 0.0) {
            return Err(Error::Invalid(
                "template has non-finite values or is all zeros".to_owned(),
            ));
        }
        Ok(())
    }

    /// Applies a batch of health records (idempotent upserts).
    ///
    /// # Errors
    /// A store failure.
    pub fn update_health(&self, request: &UpdateHealth) -> Result<UpdateHealthAck, Error> {
        Ok(self.store.upsert_health(&request.records)?)
    }

    /// Revokes a person everywhere. Their templates stay in the gallery so that their face is
    /// still recognised, and refused by name, rather than mistaken for someone else.
    ///
    /// # Errors
    /// A store failure.
    pub fn revoke(&self, request: &Revoke) -> Result<RevokeAck, Error> {
        let now = self.clock.now();
        let revoked = self.store.revoke(request.subject, &request.reason, now)?;
        Ok(RevokeAck {
            subject: request.subject,
            revoked,
        })
    }

    /// Lifts a revocation or blocklisting: the one way a person becomes active again (imports
    /// and uploads are refused that). The audit trail records the reason. Returns the status
    /// the person had, or `None` if nobody has that id.
    ///
    /// # Errors
    /// A store failure.
    pub fn reinstate(
        &self,
        subject: SubjectId,
        reason: &str,
    ) -> Result<Option<gatewarden_protocol::SubjectStatus>, Error> {
        Ok(self.store.reinstate(subject, reason, self.clock.now())?)
    }

    /// A person's entries across every market.
    ///
    /// # Errors
    /// A store failure.
    pub fn trajectory(
        &self,
        subject: SubjectId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<EntryRow>, Error> {
        Ok(self.store.trajectory(subject, since, until)?)
    }

    /// Admitted entries per person at a market in a time range, most first.
    ///
    /// # Errors
    /// A store failure.
    pub fn frequency(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
        min: u32,
    ) -> Result<Vec<FrequencyRow>, Error> {
        Ok(self.store.frequency(market, since, until, min)?)
    }

    /// Staff sign-ins at a market in a time range.
    ///
    /// # Errors
    /// A store failure.
    pub fn signins(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<SignInRow>, Error> {
        Ok(self.store.signins(market, since, until)?)
    }

    /// Everyone admitted to the same market within `window_ms` of the person's visits.
    ///
    /// # Errors
    /// A store failure.
    pub fn contacts(
        &self,
        subject: SubjectId,
        window_ms: u64,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<ContactRow>, Error> {
        Ok(self.store.contacts(subject, window_ms, since, until)?)
    }

    /// The escalations at a market in a time range (open, resolved or both), newest first (at
    /// most `limit`), with how staff resolved each one that is resolved.
    ///
    /// # Errors
    /// A store failure.
    pub fn escalations(
        &self,
        market: MarketId,
        since: UnixMillis,
        until: UnixMillis,
        state: EscalationState,
        limit: usize,
    ) -> Result<Vec<Escalation>, Error> {
        Ok(self.store.escalations(market, since, until, state, limit)?)
    }

    /// Records how staff resolved the escalation recorded as `(gate, seq)`: who, when, what
    /// they decided and why. A resolution is written once; a second one is refused with the
    /// first in the answer.
    ///
    /// # Errors
    /// An empty or oversize name or note ([`Error::Invalid`]), or a store failure.
    pub fn resolve_escalation(&self, request: &ResolveEscalation) -> Result<Resolved, Error> {
        request.validate()?;
        let Some(entry) = self.store.recorded_entry(request.gate, request.seq)? else {
            return Ok(Resolved::NoSuchEntry);
        };
        if entry.verdict.decision != Decision::Escalate {
            return Ok(Resolved::NotEscalated(entry.verdict.decision));
        }
        let resolution = Resolution {
            gate: request.gate,
            seq: request.seq,
            subject: entry.verdict.subject,
            market: entry.market,
            escalated_at: entry.verdict.decided_at,
            outcome: request.outcome,
            by: request.by.trim().to_owned(),
            note: request.note.trim().to_owned(),
            at: self.clock.now(),
        };
        Ok(match self.store.resolve_escalation(&resolution)? {
            None => {
                tracing::info!(
                    gate = %resolution.gate,
                    seq = resolution.seq,
                    outcome = resolution.outcome.name(),
                    "escalation resolved"
                );
                Resolved::Recorded(resolution)
            }
            Some(first) => Resolved::AlreadyResolved(first),
        })
    }

    /// How staff resolved the escalations about a person in a time range, in time order.
    ///
    /// # Errors
    /// A store failure.
    pub fn resolutions_of(
        &self,
        subject: SubjectId,
        since: UnixMillis,
        until: UnixMillis,
    ) -> Result<Vec<Resolution>, Error> {
        Ok(self.store.resolutions_of(subject, since, until)?)
    }

    /// The registry and entry log, for imports and ad-hoc queries.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The live gallery.
    pub fn gallery(&self) -> &LiveGallery {
        &self.gallery
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The policy in force now (a reload swaps it; this copy stays as it was).
    pub fn policies(&self) -> Arc<PolicyBook> {
        self.policies.load_full()
    }

    /// Replaces the policy book; events already deciding keep the old one.
    pub fn set_policies(&self, policies: PolicyBook) {
        tracing::info!(version = %policies.version(), "policy replaced");
        self.policies.store(Arc::new(policies));
    }

    /// The version of the policy in force. Each matcher batch decides all its events under
    /// one policy snapshot, so a verdict's version is the one in force when its batch began.
    pub fn policy_version(&self) -> PolicyVersion {
        self.policies.load().version().clone()
    }

    /// The version of the policy in force and what it does in plain words
    /// ([`PolicyBook::summary`]), from one snapshot.
    pub fn policy_summary(&self) -> (PolicyVersion, String) {
        let book = self.policies.load();
        (book.version().clone(), book.summary())
    }

    /// Rereads the configured policy file and puts it in force, atomically: the whole book
    /// is swapped at once, so every event (every matcher batch) is decided by either the old
    /// policy or the new one, never a mix; a file that is refused changes nothing.
    ///
    /// # Errors
    /// [`PolicyError::NotConfigured`] when the engine runs the embedded demo policy;
    /// [`PolicyError::WritableByOthers`] when group or others may write the file; otherwise
    /// what [`PolicyBook::load`] refuses, with every problem of the file.
    pub fn reload_policy(&self) -> Result<PolicyReload, PolicyError> {
        let _guard = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = self.policy_version();
        let result =
            self.config
                .policy
                .as_ref()
                .map_or(Err(PolicyError::NotConfigured), |relative| {
                    let path = self.data_dir.join(relative);
                    refuse_writable_by_others(&path)?;
                    Ok((PolicyBook::load(&path)?, path))
                });
        match result {
            Ok((book, path)) => {
                let version = book.version().clone();
                self.policies.store(Arc::new(book));
                tracing::info!(%version, %previous, path = %path.display(), "policy reloaded");
                Ok(PolicyReload {
                    changed: version != previous,
                    version,
                    previous,
                    path,
                })
            }
            Err(e) => {
                match e.problems() {
                    [] => tracing::warn!(
                        version = %previous,
                        error = %e,
                        "policy reload refused; the policy in force is unchanged"
                    ),
                    problems => {
                        tracing::warn!(
                            version = %previous,
                            problems = problems.len(),
                            "policy reload refused; the policy in force is unchanged"
                        );
                        for p in problems {
                            tracing::warn!("policy problem: {p}");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Rebuilds today's counters (occupancy, anti-passback, frequency) of `markets` from the
    /// entry log, and learns their gates' last recorded seqs, while the engine goes on deciding
    /// the other markets' events. A node that takes markets over calls it before it decides
    /// their events.
    ///
    /// # Errors
    /// [`Error::Store`] if the entry log cannot be read; the counters in place stay.
    pub fn rebuild_market_counters(&self, markets: &[MarketId]) -> Result<(), Error> {
        (self.pipeline.market_rebuilder())(markets).map_err(Error::from)
    }

    /// Starts market leases in the PostgreSQL store for this node ([`crate::cluster::lease`]):
    /// the returned directory answers who serves each market, renews on a thread of its own,
    /// rebuilds the counters of every market it takes before it answers `Here` for it, and
    /// fences this engine's entry commits by the leases' epochs.
    ///
    /// # Errors
    /// [`Error::Config`] without `[cluster.leases]`; [`Error::Store`] on SQLite, if the
    /// database cannot be reached, or if leases were already started on this engine.
    #[cfg(feature = "postgres")]
    pub fn start_leases(
        &self,
        cluster: &crate::config::ClusterConfig,
    ) -> Result<Arc<crate::cluster::lease::LeaseDirectory>, Error> {
        crate::cluster::lease::LeaseDirectory::start(
            cluster,
            &self.store,
            self.pipeline.market_rebuilder(),
            Arc::clone(&self.clock),
        )
    }

    /// Pipeline counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.pipeline.stats()
    }

    /// Stops taking events, decides and records everything already queued, and joins the
    /// pipeline's threads. Events submitted afterwards get `ShuttingDown`.
    pub fn shutdown(&self) {
        #[cfg(feature = "postgres")]
        if let Some(follower) = self
            .follower
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            follower.stop();
        }
        self.pipeline.shutdown();
        self.maintenance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What [`Engine::reload_policy`] did.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct PolicyReload {
    /// The version now in force.
    #[serde(serialize_with = "display")]
    pub version: PolicyVersion,
    /// The version it replaced.
    #[serde(serialize_with = "display")]
    pub previous: PolicyVersion,
    /// False when the file's meaning did not change (same version).
    pub changed: bool,
    /// The file read.
    pub path: PathBuf,
}

fn display<S: serde::Serializer>(v: &PolicyVersion, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_str())
}

/// Refuses a policy file that group or others may write: whoever can write it decides who is
/// admitted.
fn refuse_writable_by_others(path: &Path) -> Result<(), PolicyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| PolicyError::Read {
                path: path.to_owned(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(PolicyError::WritableByOthers {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The result of a bulk enrollment.
#[derive(Clone, Debug, Default)]
pub struct BulkEnrollReport {
    /// Templates added.
    pub added: usize,
    /// Templates refused because the face already belongs to someone else.
    pub duplicates: Vec<Duplicate>,
}

/// A template whose face matches another enrolled person.
#[derive(Clone, Copy, Debug)]
pub struct Duplicate {
    /// The person being enrolled.
    pub subject: SubjectId,
    /// The person already enrolled with that face.
    pub existing: SubjectId,
    /// Their similarity.
    pub score: f32,
    /// The refused template's index in the rows passed in.
    pub index: usize,
    /// When the face matched is another row of the same call
    /// ([`Engine::enroll_templates_unique`]): that row's index.
    pub existing_index: Option<usize>,
}

/// Deletes a counters snapshot that nothing will read or update (snapshots turned off, or
/// the site moved to PostgreSQL): it holds personal data (who was inside, who signed in).
fn remove_stale_snapshot(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed the unused counters snapshot"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            path = %path.display(),
            error = %e,
            "cannot remove the unused counters snapshot"
        ),
    }
}

/// Adds "delete the folder to rebuild it" to the gallery errors that deleting it cures.
fn rebuild_hint(e: crate::gallery::GalleryError, dir: PathBuf) -> Error {
    use crate::gallery::GalleryError as G;
    match e {
        G::Corrupt { .. }
        | G::DimMismatch { .. }
        | G::DuplicateTemplate { .. }
        | G::Incompatible { .. }
        | G::Manifest { .. }
        | G::NonFinite { .. }
        | G::NotAGallery { .. }
        | G::Truncated { .. }
        | G::WrongDimension { .. }
        | G::ZeroVector { .. } => Error::GalleryRebuild { dir, source: e },
        // A segment the manifest lists but the folder lacks (or cannot read).
        G::Io { ref path, .. } if path != &dir => Error::GalleryRebuild { dir, source: e },
        other => Error::Gallery(other),
    }
}

/// Replays templates the gallery does not have yet from the store (the truth).
pub(crate) fn load_templates(store: &Store, gallery: &LiveGallery) -> Result<(), Error> {
    let mut pending: Vec<(u64, SubjectId, Vec<f32>)> = Vec::with_capacity(LOAD_CHUNK);
    let mut failed = None;
    store.for_each_template_since(gallery.watermark(), |id, subject, v| {
        if failed.is_some() {
            return;
        }
        pending.push((id, subject, v.to_vec()));
        if pending.len() == LOAD_CHUNK {
            failed = flush_templates(gallery, &mut pending).err();
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    flush_templates(gallery, &mut pending)
}

fn flush_templates(
    gallery: &LiveGallery,
    pending: &mut Vec<(u64, SubjectId, Vec<f32>)>,
) -> Result<(), Error> {
    let rows: Vec<(u64, SubjectId, &[f32])> = pending
        .iter()
        .map(|(id, s, v)| (*id, *s, v.as_slice()))
        .collect();
    gallery.insert_batch(&rows)?;
    pending.clear();
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })
}

/// The longest staff name a resolution keeps, in characters.
pub const MAX_RESOLVER_CHARS: usize = 64;
/// The longest note a resolution keeps, in characters.
pub const MAX_NOTE_CHARS: usize = 500;

/// Staff's resolution of one escalation ([`Engine::resolve_escalation`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveEscalation {
    /// The escalation's gate.
    pub gate: GateId,
    /// The escalation's seq at that gate.
    pub seq: u64,
    /// What staff decided.
    pub outcome: ResolvedAs,
    /// Who resolved it: not blank, at most [`MAX_RESOLVER_CHARS`] characters.
    pub by: String,
    /// Why; may be empty, at most [`MAX_NOTE_CHARS`] characters.
    pub note: String,
}

impl ResolveEscalation {
    fn validate(&self) -> Result<(), Error> {
        let by = self.by.trim();
        if by.is_empty() {
            return Err(Error::Invalid(
                "by is empty: give the name of the staff member who resolved the escalation"
                    .to_owned(),
            ));
        }
        if by.chars().count() > MAX_RESOLVER_CHARS {
            return Err(Error::Invalid(format!(
                "by is longer than {MAX_RESOLVER_CHARS} characters"
            )));
        }
        if self.note.trim().chars().count() > MAX_NOTE_CHARS {
            return Err(Error::Invalid(format!(
                "note is longer than {MAX_NOTE_CHARS} characters"
            )));
        }
        Ok(())
    }
}

/// What [`Engine::resolve_escalation`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resolved {
    /// The resolution is recorded (durably: the registry database is synced on commit).
    Recorded(Resolution),
    /// The escalation was already resolved; the first resolution stands.
    AlreadyResolved(Resolution),
    /// Nothing is recorded under that `(gate, seq)`.
    NoSuchEntry,
    /// The entry was not an escalation (its decision is given).
    NotEscalated(Decision),
}

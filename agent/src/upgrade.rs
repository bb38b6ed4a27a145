//! The local upgrade transaction (DESIGN.md, "The local upgrade transaction"):
//! one path for every trigger — a raised declared version, `update DOMAIN`
//! (autoUpdate), a server `UpgradeCommand` / `RollbackCommand`, and
//! `ccfleet-agent upgrade DOMAIN`.
//!
//! Decide, then act: [`machine`] decides, purely, whether a request runs and
//! which phase follows each phase; [`Upgrader`] performs each phase's effect
//! (abra, Docker, the snapshot store, the HTTP probe) after writing the phase
//! to the journal, so that an agent killed at any point finds the operation at
//! start and finishes it ([`Upgrader::resume`], called by the daemon). An operation id
//! that was journaled before is never run again: its recorded result is
//! returned.
//!
//! Stateful apps are undeployed and their volumes snapshotted and verified
//! before anything changes ("no verified snapshot, no upgrade"); an unhealthy
//! target is undeployed, its volumes restored exactly, and the version that
//! ran before deployed again and health-gated. Every ROLLED_BACK, FAILED and
//! HELD outcome writes an alert (`agent::alerts`); a later success clears it.
//!
//! The caller holds the app's lock (`Reconciler`), and `agent::abra`
//! serialises abra calls per recipe.

pub mod machine;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_proto::{error_chain, CoopVersion, Domain, VersionChange};
use serde::Serialize;

use crate::alerts::{self, Alert, Severity};
use crate::config::{AgentConfig, AppConfig, ProbeScheme};
use crate::docker::DockerError;
use crate::health::{docker_verdict, Check, GatePolicy, GateVerdict, HealthGate, HttpProbe, ProbeTarget};
use crate::journal::{self, AppRecord, Journal, JournalError, OperationRecord, Outcome, Phase, Trigger};
use crate::reconcile::{AppState, Reconciler};
use crate::snapshot::{SnapshotError, SnapshotStore, VolumeSource};

pub use machine::{Ask, Plan, StepResult};

/// How long a stack must show no running container before its volumes are
/// copied or restored (see [`Upgrader::undeploy`]).
const UNDEPLOY_SETTLE: Duration = Duration::from_secs(3);

/// Finished operations kept in the journal, so that a re-delivered command
/// id is recognised; far more than a rollout re-delivers.
const KEEP_FINISHED_OPERATIONS: usize = 1000;

/// Environment variable naming the test pause directory (see [`PauseHook`]).
pub const PAUSE_DIR_ENV: &str = "CCFLEET_TEST_PAUSE_DIR";

/// Where the transaction's durable events go (the outbox, in the daemon).
pub trait Events: Send + Sync + std::fmt::Debug {
    /// Stores `body` durably for the server; false when it could not.
    fn push(&self, body: Body) -> bool;
}

/// Events for a reconciler without a server link (tests in process): logged only.
#[derive(Debug)]
pub struct LogEvents;

impl Events for LogEvents {
    fn push(&self, body: Body) -> bool {
        tracing::debug!(?body, "event (no outbox)");
        true
    }
}

/// A request to run the transaction for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRequest {
    /// The server's operation id, or `local-<hex>` (see [`local_operation_id`]).
    pub id: String,
    pub ask: Ask,
    /// A server command's deadline: the target's health gate stops waiting
    /// when it passes (the rollback's gate is never cut short).
    pub deadline: Option<Duration>,
}

/// A new local operation id.
pub fn local_operation_id() -> String {
    format!("local-{}", ccfleet_proto::tls::random_hex(8))
}

/// The longest operation id accepted.
pub const MAX_OPERATION_ID: usize = 128;

/// Checks an operation id from outside (`upgrade --operation-id`, a server
/// command) before anything is touched: it names the operation's snapshot
/// directory, so it follows the snapshot store's rule
/// (`[A-Za-z0-9][A-Za-z0-9_.-]*`), at most 128 bytes.
pub fn check_operation_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_OPERATION_ID {
        return Err(format!(
            "invalid operation id {id:?}: is longer than {MAX_OPERATION_ID} bytes"
        ));
    }
    crate::snapshot::check_name("operation id", id).map_err(|error| error.to_string())
}

/// How an operation ended, for the caller (and `upgrade --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperationReport {
    pub operation_id: String,
    pub domain: Domain,
    pub outcome: Outcome,
    /// The version running before; `None` when the app was not deployed.
    pub from: Option<CoopVersion>,
    pub to: CoopVersion,
    /// The version observed running afterwards.
    pub running: Option<CoopVersion>,
    pub reason: String,
    pub snapshot: Option<PathBuf>,
    /// The result was recorded earlier (a re-delivered operation id): nothing ran now.
    pub replayed: bool,
}

/// What [`Upgrader::run`] did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunResult {
    /// Journaled and finished (or finished earlier, for a known id).
    Finished(Box<OperationReport>),
    /// An automatic trigger must leave the app alone (nothing journaled).
    LeftAlone { reason: String },
    /// Refused before anything moved (`machine::refuse`): nothing journaled,
    /// no alert; the asker gets the reason as an error.
    Refused { reason: String },
}

/// The test-only pause hook. Compiled in always but inert unless
/// `CCFLEET_TEST_PAUSE_DIR` is set: then, before each phase's effect, the
/// agent creates `<dir>/<phase>.reached`, and if `<dir>/<phase>.hold` exists
/// it waits until `<dir>/<phase>.go` exists. Crash tests use it to SIGKILL
/// the agent inside a phase, and to corrupt a snapshot between its copy and
/// its verification, without sleeping.
#[derive(Debug, Clone, Default)]
pub struct PauseHook {
    dir: Option<PathBuf>,
}

impl PauseHook {
    pub fn from_environment() -> PauseHook {
        PauseHook {
            dir: std::env::var_os(PAUSE_DIR_ENV).map(PathBuf::from),
        }
    }

    pub async fn before(&self, step: &str) {
        let Some(dir) = &self.dir else { return };
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(format!("{step}.reached")), b"");
        if !dir.join(format!("{step}.hold")).exists() {
            return;
        }
        tracing::warn!(step, "test pause hook: holding until {step}.go exists");
        let go = dir.join(format!("{step}.go"));
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        while !go.exists() {
            ticker.tick().await;
        }
    }
}

/// Settings of the transaction (from `[agent]`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub snapshots_dir: PathBuf,
    pub alerts_dir: PathBuf,
    pub snapshot_retention: usize,
    pub min_healthy_time: Duration,
    pub probe_address: std::net::SocketAddr,
    pub probe_scheme: ProbeScheme,
    /// How often Docker and the probe are polled during a health gate.
    pub poll_interval: Duration,
}

impl Settings {
    pub fn from_agent(agent: &AgentConfig) -> Settings {
        Settings {
            snapshots_dir: agent.state_dir.join("snapshots"),
            alerts_dir: agent.alerts_dir.clone(),
            snapshot_retention: agent.snapshot_retention,
            min_healthy_time: agent.min_healthy_time,
            probe_address: agent.probe_address,
            probe_scheme: agent.probe_scheme,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Runs the transaction. One per agent, shared by the reconcilers that
/// replace each other on reloads.
#[derive(Debug)]
pub struct Upgrader {
    journal: Journal,
    snapshots: SnapshotStore,
    settings: Settings,
    events: Arc<dyn Events>,
    pause: PauseHook,
    /// Built on first use: building it cannot fail in practice, and a failure
    /// then fails the health gate with the reason instead of the agent.
    probe: OnceLock<Result<HttpProbe, String>>,
}

/// Why the transaction could not go on at all (the journal or the outbox).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the journal failed: {}", error_chain(.0))]
    Journal(#[from] JournalError),
    #[error("operation {id} concerns {journaled}, not {asked}")]
    WrongApp {
        id: String,
        journaled: Domain,
        asked: Domain,
    },
}

impl Upgrader {
    pub fn new(journal: Journal, settings: Settings, events: Arc<dyn Events>) -> Upgrader {
        Upgrader {
            journal,
            snapshots: SnapshotStore::new(settings.snapshots_dir.clone()),
            settings,
            events,
            pause: PauseHook::from_environment(),
            probe: OnceLock::new(),
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// Runs `request` for `app`; the caller holds the app's lock.
    pub async fn run(
        &self,
        reconciler: &Reconciler,
        app: &AppConfig,
        request: &OperationRequest,
    ) -> Result<RunResult, UpgradeError> {
        if let Some(record) = self.journal.operation(&request.id)? {
            if record.domain != app.domain {
                return Err(UpgradeError::WrongApp {
                    id: request.id.clone(),
                    journaled: record.domain,
                    asked: app.domain.clone(),
                });
            }
            if record.result().is_some() && record.reported {
                tracing::info!(operation = %record.id, "operation already finished: returning its recorded result");
                let mut report = self.report_of(&record, None);
                report.replayed = true;
                return Ok(RunResult::Finished(Box::new(report)));
            }
            // Journaled but unfinished (interrupted before the start-up
            // resume reached it): finish it, never start it again.
            let record = self.drive(reconciler, app, record, true, None).await?;
            return Ok(RunResult::Finished(Box::new(self.report_of(&record, None))));
        }

        let observed = reconciler.observe(app).await;
        let running = match observed.state {
            AppState::NotDeployed | AppState::Unknown => None,
            _ => observed.observed_version.clone(),
        };
        let app_record = self.journal.app(&app.domain)?;
        let facts = machine::AppFacts {
            declared: app.version.clone(),
            running: running.clone(),
            stateful: app.stateful,
            allow_major: app.allow_major,
            fleet_managed: app.fleet_managed,
        };
        let plan = machine::plan(&request.ask, &facts, &app_record);
        tracing::info!(app = %app.domain, operation = %request.id, %plan, "upgrade planned");
        let mut record = OperationRecord {
            format: journal::FORMAT,
            id: request.id.clone(),
            domain: app.domain.clone(),
            recipe: app.recipe.clone(),
            trigger: request.ask.trigger,
            from: running.clone().unwrap_or_else(|| request.ask.target.clone()),
            to: request.ask.target.clone(),
            stateful: app.stateful,
            phase: Phase::Accepted,
            failure: None,
            snapshot: None,
            snapshot_verified: false,
            started_at: journal::now_seconds(),
            finished_at: None,
            reported: false,
        };
        match plan {
            Plan::LeaveAlone { reason } => return Ok(RunResult::LeftAlone { reason }),
            Plan::Finish { outcome, reason } => {
                record.phase = Phase::Done { outcome, reason };
            }
            Plan::AlreadyThere { version } => {
                let reason = match self.gate(reconciler, app, &version, None, false).await {
                    StepResult::Ok => None,
                    StepResult::Failed(reason) | StepResult::Refused(reason) => Some(reason),
                };
                record.phase = match reason {
                    None => Phase::Done {
                        outcome: Outcome::Succeeded,
                        reason: format!("already running {version}, healthy"),
                    },
                    Some(reason) => Phase::Done {
                        outcome: Outcome::Failed,
                        reason: format!("already running {version}, but it is unhealthy: {reason}"),
                    },
                };
            }
            Plan::Run { from } => {
                if let Some(reason) = self.preflight(reconciler, app, &request.ask, &facts, &from).await {
                    tracing::warn!(app = %app.domain, operation = %request.id, %reason, "upgrade refused before anything moved");
                    // A rollout waits for every host's result: it gets one
                    // (HELD, journaled and reported as any other).
                    if !matches!(request.ask.trigger, Trigger::FleetUpgrade | Trigger::FleetRollback) {
                        return Ok(RunResult::Refused { reason });
                    }
                    record.phase = Phase::Done {
                        outcome: Outcome::Held,
                        reason,
                    };
                }
            }
        }
        let gate_deadline = request.deadline.map(|deadline| Instant::now() + deadline);
        let record = self.drive(reconciler, app, record, false, gate_deadline).await?;
        let mut report = self.report_of(&record, running);
        report.running = reconciler.observe(app).await.observed_version;
        Ok(RunResult::Finished(Box::new(report)))
    }

    /// What `machine::refuse` needs, read before anything moves: the
    /// recipe's releases (after `abra recipe fetch`) and, for a stateful app,
    /// whether its stack has volumes. What cannot be read is not held against
    /// the request.
    async fn preflight(
        &self,
        reconciler: &Reconciler,
        app: &AppConfig,
        ask: &Ask,
        facts: &machine::AppFacts,
        from: &CoopVersion,
    ) -> Option<String> {
        let releases = match reconciler.abra().available_versions(&app.recipe).await {
            Ok(releases) => Some(releases),
            Err(error) => {
                tracing::warn!(recipe = %app.recipe, error = %error_chain(&error), "cannot read the recipe's releases");
                None
            }
        };
        let has_volumes = if app.stateful {
            match reconciler.docker().stack_volumes(&app.domain.stack_name()).await {
                Ok(volumes) => Some(!volumes.is_empty()),
                Err(error) => {
                    tracing::warn!(app = %app.domain, error = %error_chain(&error), "cannot list the stack's volumes");
                    None
                }
            }
        } else {
            None
        };
        let preflight = machine::Preflight {
            releases: releases.as_deref(),
            has_volumes,
        };
        machine::refuse(ask, facts, from, &preflight)
    }

    /// Finishes one operation found unfinished in the journal at start; the
    /// caller holds the app's lock. `app` is the app's current declaration;
    /// `None` (no longer declared) finishes the operation as FAILED with that
    /// reason, touching nothing.
    pub async fn resume(
        &self,
        reconciler: &Reconciler,
        app: Option<&AppConfig>,
        record: OperationRecord,
    ) -> Result<OperationReport, UpgradeError> {
        let Some(app) = app else {
            let mut record = record;
            if record.result().is_none() {
                record.phase = Phase::Done {
                    outcome: Outcome::Failed,
                    reason: format!(
                        "interrupted during {}, and the app is no longer declared: nothing was resumed",
                        record.phase.name()
                    ),
                };
                self.journal.write_operation(&record)?;
            }
            let declared = record.to.clone();
            self.finish(&record, &declared)?;
            return Ok(self.report_of(&record, None));
        };
        tracing::warn!(operation = %record.id, app = %app.domain, phase = record.phase.name(), "resuming an unfinished operation");
        let record = self.drive(reconciler, app, record, true, None).await?;
        Ok(self.report_of(&record, None))
    }

    /// Journals a request for an app this host does not declare as SKIPPED
    /// (so that a re-delivery replays it) and reports it.
    pub fn skip_undeclared(
        &self,
        id: &str,
        domain: Domain,
        target: CoopVersion,
        trigger: Trigger,
    ) -> Result<OperationReport, UpgradeError> {
        if let Some(record) = self.journal.operation(id)? {
            let mut report = self.report_of(&record, None);
            report.replayed = true;
            return Ok(report);
        }
        let record = OperationRecord {
            format: journal::FORMAT,
            id: id.to_owned(),
            domain: domain.clone(),
            recipe: "undeclared".parse().expect("a valid recipe name"),
            trigger,
            from: target.clone(),
            to: target,
            stateful: false,
            phase: Phase::Done {
                outcome: Outcome::Skipped,
                reason: format!("{domain} is not an app declared on this host"),
            },
            failure: None,
            snapshot: None,
            snapshot_verified: false,
            started_at: journal::now_seconds(),
            finished_at: None,
            reported: false,
        };
        self.journal.write_operation(&record)?;
        let declared = record.to.clone();
        self.finish(&record, &declared)?;
        Ok(self.report_of(&record, None))
    }

    fn report_of(&self, record: &OperationRecord, from: Option<CoopVersion>) -> OperationReport {
        let (outcome, reason) = record
            .result()
            .map(|(outcome, reason)| (outcome, reason.to_owned()))
            .unwrap_or((Outcome::Failed, "unfinished".into()));
        OperationReport {
            operation_id: record.id.clone(),
            domain: record.domain.clone(),
            outcome,
            from: from.or_else(|| Some(record.from.clone())),
            to: record.to.clone(),
            running: None,
            reason,
            snapshot: record.snapshot.clone(),
            replayed: false,
        }
    }

    /// Runs phases until done: each phase is journaled (and reported as
    /// progress) before its effect runs. `resumed`: the record was found
    /// unfinished, so it continues where [`machine::resume`] says.
    async fn drive(
        &self,
        reconciler: &Reconciler,
        app: &AppConfig,
        mut record: OperationRecord,
        resumed: bool,
        gate_deadline: Option<Instant>,
    ) -> Result<OperationRecord, UpgradeError> {
        if resumed {
            let (phase, failure) = machine::resume(&record);
            record.phase = phase;
            record.failure = failure;
        }
        let mut last_wire_phase = None;
        loop {
            self.journal.write_operation(&record)?;
            if record.result().is_some() {
                break;
            }
            let wire_phase = wire_phase(&record.phase);
            if last_wire_phase != Some(wire_phase) {
                last_wire_phase = Some(wire_phase);
                self.events.push(Body::Progress(pb::OperationProgress {
                    operation_id: record.id.clone(),
                    domain: record.domain.to_string(),
                    phase: wire_phase as i32,
                    message: format!("{} -> {}: {}", record.from, record.to, record.phase.name()),
                }));
            }
            self.pause.before(record.phase.name()).await;
            tracing::info!(operation = %record.id, app = %record.domain, phase = record.phase.name(), "upgrade phase");
            let result = self.effect(reconciler, app, &mut record, gate_deadline).await;
            if result != StepResult::Ok {
                tracing::warn!(operation = %record.id, phase = record.phase.name(), %result, "upgrade phase did not succeed");
            }
            let (phase, failure) = machine::transition(&record, result);
            record.phase = phase;
            record.failure = failure;
        }
        self.finish(&record, &app.version)?;
        Ok(record)
    }

    /// Performs the effect of `record.phase`.
    async fn effect(
        &self,
        reconciler: &Reconciler,
        app: &AppConfig,
        record: &mut OperationRecord,
        gate_deadline: Option<Instant>,
    ) -> StepResult {
        match record.phase {
            Phase::Accepted | Phase::Healthy | Phase::Done { .. } => StepResult::Ok,
            Phase::Undeploying | Phase::RollbackUndeploying => self.undeploy(reconciler, app).await,
            Phase::Snapshotting => self.take_snapshot(reconciler, app, record).await,
            Phase::VerifyingSnapshot => self.verify_snapshot(reconciler, app, record).await,
            Phase::Deploying => self.deploy_target(reconciler, app, record).await,
            Phase::Verifying => self.gate(reconciler, app, &record.to, gate_deadline, true).await,
            Phase::Restoring => self.restore(reconciler, app, record).await,
            Phase::RollbackDeploying => {
                match reconciler
                    .abra()
                    .deploy(&app.recipe, &app.domain, &record.from, true)
                    .await
                {
                    Ok(_) => StepResult::Ok,
                    Err(error) => StepResult::Failed(error_chain(&error)),
                }
            }
            // Returning to the version that ran before: patience rather than
            // Docker's verdict, since failing here leaves the app FAILED.
            Phase::RollbackVerifying => self.gate(reconciler, app, &record.from, None, false).await,
        }
    }

    /// `abra app undeploy` when the stack runs, then waits (bounded by the
    /// app's deploy timeout) until no container of it runs.
    async fn undeploy(&self, reconciler: &Reconciler, app: &AppConfig) -> StepResult {
        let stack = app.domain.stack_name();
        let docker = reconciler.docker();
        let observed = reconciler.observe(app).await;
        if observed.state != AppState::NotDeployed {
            if let Err(error) = reconciler.abra().undeploy(&app.recipe, &app.domain).await {
                // A concurrent removal may have won; what counts is below.
                if reconciler.observe(app).await.state != AppState::NotDeployed {
                    return StepResult::Failed(error_chain(&error));
                }
            }
        }
        let deadline = Instant::now() + app.deploy_timeout;
        let mut ticker = tokio::time::interval(self.settings.poll_interval);
        // Swarm removes a service at once but shuts its tasks down on its
        // own time: a task that was still being prepared can start its
        // container a moment after the removal (seen in the crash tests: a
        // migration written after the restore). So the stack must show no
        // running container for a settle time, not just once.
        let mut quiet_since: Option<Instant> = None;
        loop {
            ticker.tick().await;
            match docker.running_containers(&stack).await {
                Ok(0) => {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= UNDEPLOY_SETTLE {
                        return StepResult::Ok;
                    }
                    continue;
                }
                Ok(count) if Instant::now() >= deadline => {
                    return StepResult::Failed(format!(
                        "{count} container(s) of stack {stack} still run {} after the undeploy",
                        humantime::format_duration(app.deploy_timeout)
                    ))
                }
                Ok(_) => quiet_since = None,
                Err(error) if Instant::now() >= deadline => return StepResult::Failed(error_chain(&error)),
                Err(error) => tracing::debug!(%error, "cannot count the stack's containers yet"),
            }
        }
    }

    async fn volumes(&self, reconciler: &Reconciler, app: &AppConfig) -> Result<Vec<VolumeSource>, StepResult> {
        let volumes = reconciler
            .docker()
            .stack_volumes(&app.domain.stack_name())
            .await
            .map_err(|error: DockerError| StepResult::Failed(error_chain(&error)))?;
        if let Some(volume) = volumes.iter().find(|volume| volume.driver != "local") {
            return Err(StepResult::Refused(format!(
                "volume {} uses the {:?} driver; only local volumes can be snapshotted",
                volume.name, volume.driver
            )));
        }
        Ok(volumes
            .into_iter()
            .map(|volume| VolumeSource {
                name: volume.name,
                mountpoint: volume.mountpoint,
            })
            .collect())
    }

    async fn take_snapshot(
        &self,
        reconciler: &Reconciler,
        app: &AppConfig,
        record: &mut OperationRecord,
    ) -> StepResult {
        let volumes = match self.volumes(reconciler, app).await {
            Ok(volumes) => volumes,
            Err(result) => return result,
        };
        if let Some(refused) = refuse_without_volumes(&app.domain.stack_name(), &volumes) {
            return refused;
        }
        let store = self.snapshots.clone();
        let (domain, id) = (app.domain.clone(), record.id.clone());
        record.snapshot = Some(self.snapshots.dir_of(&domain, &id));
        // The directory is journaled before the copy starts, so a crash in
        // the middle leaves a record that names it.
        if let Err(error) = self.journal.write_operation(record) {
            return StepResult::Failed(error_chain(&error));
        }
        let taken = tokio::task::spawn_blocking(move || store.take(&domain, &id, &volumes)).await;
        match taken {
            Ok(Ok(snapshot)) => {
                tracing::info!(app = %app.domain, dir = %snapshot.dir.display(), bytes = snapshot.manifest.total_bytes, "snapshot taken");
                StepResult::Ok
            }
            Ok(Err(error @ SnapshotError::NoRoom { .. })) => StepResult::Refused(error_chain(&error)),
            Ok(Err(error)) => StepResult::Failed(error_chain(&error)),
            Err(panic) => StepResult::Failed(format!("the snapshot task failed: {panic}")),
        }
    }

    async fn verify_snapshot(
        &self,
        reconciler: &Reconciler,
        app: &AppConfig,
        record: &mut OperationRecord,
    ) -> StepResult {
        if record.snapshot.is_none() {
            return StepResult::Ok;
        }
        let volumes = match self.volumes(reconciler, app).await {
            Ok(volumes) => volumes,
            Err(result) => return result,
        };
        let store = self.snapshots.clone();
        let (domain, id) = (app.domain.clone(), record.id.clone());
        let verified = tokio::task::spawn_blocking(move || {
            let snapshot = store.open(&domain, &id)?.ok_or_else(|| SnapshotError::Manifest {
                path: store.dir_of(&domain, &id),
                detail: "the snapshot has no manifest".into(),
            })?;
            store.verify(&snapshot, &volumes)
        })
        .await;
        match verified {
            Ok(Ok(())) => {
                record.snapshot_verified = true;
                StepResult::Ok
            }
            Ok(Err(error)) => StepResult::Failed(error_chain(&error)),
            Err(panic) => StepResult::Failed(format!("the verification task failed: {panic}")),
        }
    }

    async fn restore(&self, reconciler: &Reconciler, app: &AppConfig, record: &OperationRecord) -> StepResult {
        if record.snapshot.is_none() {
            return StepResult::Ok;
        }
        let volumes = match self.volumes(reconciler, app).await {
            Ok(volumes) => volumes,
            Err(StepResult::Refused(reason)) => return StepResult::Failed(reason),
            Err(result) => return result,
        };
        let store = self.snapshots.clone();
        let (domain, id) = (app.domain.clone(), record.id.clone());
        let restored = tokio::task::spawn_blocking(move || {
            let snapshot = store.open(&domain, &id)?.ok_or_else(|| SnapshotError::Manifest {
                path: store.dir_of(&domain, &id),
                detail: "the snapshot has no manifest".into(),
            })?;
            store.restore(&snapshot, &volumes)
        })
        .await;
        match restored {
            Ok(Ok(())) => StepResult::Ok,
            Ok(Err(error)) => StepResult::Failed(error_chain(&error)),
            Err(panic) => StepResult::Failed(format!("the restore task failed: {panic}")),
        }
    }

    /// Deploys the target. A stateful app was undeployed for its snapshot,
    /// so abra deploys the target afresh (`deploy -f`); a running stateless
    /// app moves with `abra app upgrade` (or `rollback` to an older version).
    async fn deploy_target(&self, reconciler: &Reconciler, app: &AppConfig, record: &OperationRecord) -> StepResult {
        let abra = reconciler.abra();
        let deployed = if record.stateful {
            abra.deploy(&app.recipe, &app.domain, &record.to, true).await
        } else {
            match record.from.change_to(&record.to) {
                VersionChange::Compatible | VersionChange::Major => {
                    abra.upgrade(&app.recipe, &app.domain, &record.to).await
                }
                VersionChange::Downgrade => abra.rollback(&app.recipe, &app.domain, &record.to).await,
                VersionChange::Same => abra.deploy(&app.recipe, &app.domain, &record.to, true).await,
            }
        };
        match deployed {
            Ok(_) => StepResult::Ok,
            Err(error) => StepResult::Failed(error_chain(&error)),
        }
    }

    /// The health gate on `version`: converged at it (every service's
    /// replicas running its spec, containers with a healthcheck healthy) and,
    /// when the app has a health path, the HTTP probe answering an accepted
    /// status — continuously for the minimum healthy time, within the app's
    /// health timeout.
    /// With `fail_fast`, Docker's verdict on the version just deployed
    /// (`health::docker_verdict`) fails the gate at once.
    async fn gate(
        &self,
        reconciler: &Reconciler,
        app: &AppConfig,
        version: &CoopVersion,
        deadline: Option<Instant>,
        fail_fast: bool,
    ) -> StepResult {
        let timeout = match deadline {
            Some(deadline) => app.health.timeout.min(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1)),
            ),
            None => app.health.timeout,
        };
        let at_version = AppConfig {
            version: version.clone(),
            ..app.clone()
        };
        let mut gate = HealthGate::new(
            GatePolicy {
                min_healthy: self.settings.min_healthy_time,
                timeout,
            },
            Instant::now(),
        );
        let mut ticker = tokio::time::interval(self.settings.poll_interval);
        loop {
            ticker.tick().await;
            let check = self.check(reconciler, &at_version, fail_fast).await;
            match gate.observe(Instant::now(), check) {
                GateVerdict::Healthy { after } => {
                    tracing::info!(app = %app.domain, %version, after = %humantime::format_duration(round_seconds(after)), "health gate passed");
                    return StepResult::Ok;
                }
                GateVerdict::TimedOut { reason } => {
                    return StepResult::Failed(format!(
                        "not healthy within {}: {reason}",
                        humantime::format_duration(timeout)
                    ))
                }
                GateVerdict::Failed { reason, after } => {
                    tracing::warn!(app = %app.domain, %version, after = %humantime::format_duration(round_seconds(after)), %reason, "docker decided: the health gate failed early");
                    return StepResult::Failed(format!(
                        "docker's verdict after {}: {reason}",
                        humantime::format_duration(round_seconds(after))
                    ));
                }
                GateVerdict::Waiting {
                    healthy_for,
                    time_left,
                    last_reason,
                } => tracing::debug!(
                    app = %app.domain,
                    healthy_for = %humantime::format_duration(round_seconds(healthy_for)),
                    time_left = %humantime::format_duration(round_seconds(time_left)),
                    last_reason = last_reason.as_deref().unwrap_or("-"),
                    "health gate waiting"
                ),
            }
        }
    }

    async fn check(&self, reconciler: &Reconciler, app: &AppConfig, fail_fast: bool) -> Check {
        let (observed, stack) = reconciler.observe_with_stack(app).await;
        let verdict = stack
            .filter(|_| fail_fast)
            .and_then(|stack| docker_verdict(&stack, &app.version.to_string()));
        if let Some(reason) = verdict {
            return Check::Definitive { reason };
        }
        if !observed.is_converged_at_declared() {
            return Check::Unhealthy {
                reason: format!("not converged at {}: {}", app.version, observed.summary()),
            };
        }
        let Some(path) = &app.health.path else {
            return Check::Healthy;
        };
        let probe = self
            .probe
            .get_or_init(|| HttpProbe::new().map_err(|error| error_chain(&error)));
        let probe = match probe {
            Ok(probe) => probe,
            Err(reason) => return Check::Unhealthy { reason: reason.clone() },
        };
        let target = ProbeTarget {
            domain: app.domain.clone(),
            path: path.clone(),
            address: self.settings.probe_address,
            scheme: match self.settings.probe_scheme {
                ProbeScheme::Http => crate::health::ProbeScheme::Http,
                ProbeScheme::Https => crate::health::ProbeScheme::Https,
            },
            accepted_statuses: app.health.accepted_statuses.clone(),
            request_timeout: Duration::from_secs(5),
        };
        probe.probe(&target).await
    }

    /// Records what a finished operation means for its app (last good
    /// version, fleet target, rolled-back targets), writes or clears its
    /// alert, prunes snapshots, and reports the result once.
    fn finish(&self, record: &OperationRecord, declared: &CoopVersion) -> Result<(), UpgradeError> {
        let Some((outcome, reason)) = record.result() else {
            return Ok(());
        };
        if record.reported {
            return Ok(());
        }
        let mut record = record.clone();
        if record.finished_at.is_none() {
            record.finished_at = Some(journal::now_seconds());
            self.journal.write_operation(&record)?;
        }
        let app_record = self.journal.update_app(&record.domain, |app: &mut AppRecord| {
            machine::record_outcome(app, &record, declared)
        })?;
        if !machine::changed_nothing(&record) {
            self.alert(&record, outcome, reason);
        }
        if outcome != Outcome::Skipped {
            self.prune_snapshots(&record, outcome, &app_record);
        }
        let pushed = self.events.push(Body::Result(pb::OperationResult {
            operation_id: record.id.clone(),
            domain: record.domain.to_string(),
            outcome: alerts::wire_outcome(outcome) as i32,
            from_version: record.from.to_string(),
            to_version: match outcome {
                Outcome::Succeeded => record.to.to_string(),
                Outcome::Skipped => String::new(),
                _ => record.from.to_string(),
            },
            message: reason.chars().take(4000).collect(),
        }));
        if pushed {
            tracing::info!(operation = %record.id, %outcome, "result recorded for the server");
            record.reported = true;
            self.journal.write_operation(&record)?;
        }
        tracing::info!(operation = %record.id, app = %record.domain, %outcome, reason, "upgrade finished");
        match self.journal.prune_operations(KEEP_FINISHED_OPERATIONS) {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "old operation records removed from the journal"),
            Err(error) => tracing::warn!(%error, "cannot prune the journal's operations"),
        }
        Ok(())
    }

    fn alert(&self, record: &OperationRecord, outcome: Outcome, reason: &str) {
        let dir = &self.settings.alerts_dir;
        match outcome {
            Outcome::Succeeded => match alerts::clear(dir, record.domain.as_str()) {
                Ok(true) => {
                    self.events.push(Body::Alert(alerts::cleared_event(
                        record.domain.as_str(),
                        record.recipe.as_str(),
                        &record.id,
                    )));
                }
                Ok(false) => {}
                Err(error) => tracing::error!(%error, "cannot clear the app's alert"),
            },
            Outcome::RolledBack | Outcome::Failed | Outcome::Held => {
                let alert = Alert {
                    domain: record.domain.to_string(),
                    recipe: record.recipe.to_string(),
                    from: record.from.to_string(),
                    to: record.to.to_string(),
                    outcome,
                    severity: Severity::of(outcome),
                    reason: reason.to_owned(),
                    operation_id: record.id.clone(),
                    snapshot_path: record.snapshot.clone().filter(|_| record.snapshot_verified),
                    time: alerts::now(),
                };
                match alerts::write(dir, &alert) {
                    Ok(path) => tracing::warn!(alert = %path.display(), "alert written"),
                    Err(error) => tracing::error!(%error, "cannot write the app's alert"),
                }
                self.events.push(Body::Alert(alert.to_event()));
            }
            Outcome::Skipped => {}
        }
    }

    /// Keeps the newest snapshots per the retention, and always those of the
    /// FAILED operations since the app's last success (the operator needs
    /// them until then, even after a later alert replaced theirs) and the one
    /// named by the app's open FAILED alert.
    fn prune_snapshots(&self, record: &OperationRecord, outcome: Outcome, app_record: &AppRecord) {
        let open_alert = alerts::read(&self.settings.alerts_dir, record.domain.as_str())
            .filter(|alert| alert.outcome == Outcome::Failed)
            .map(|alert| alert.operation_id);
        let mut protect: Vec<&str> = open_alert.iter().map(String::as_str).collect();
        protect.extend(app_record.failed_operations.iter().map(String::as_str));
        if outcome == Outcome::Failed {
            protect.push(record.id.as_str());
        }
        match self
            .snapshots
            .prune(&record.domain, self.settings.snapshot_retention, &protect)
        {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::info!(deleted = %display_paths(&deleted), "old snapshots removed")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error_chain(&error), "cannot prune snapshots"),
        }
    }

    /// Where the app's snapshots are, newest first, for `status`.
    pub fn snapshot_dirs(&self, domain: &Domain) -> Vec<PathBuf> {
        self.snapshots
            .list(domain)
            .map(|infos| {
                infos
                    .into_iter()
                    .filter(|info| info.complete)
                    .map(|info| info.dir)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The snapshots directory of this agent.
    pub fn snapshots_root(&self) -> &Path {
        &self.settings.snapshots_dir
    }
}

/// Paths for a log line, comma-separated.
fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `duration` to whole seconds, for messages.
fn round_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// A stateful app whose stack has no volume cannot be snapshotted: its
/// upgrade is refused (HELD) rather than run without a copy of its data.
fn refuse_without_volumes(stack: &str, volumes: &[VolumeSource]) -> Option<StepResult> {
    volumes.is_empty().then(|| {
        StepResult::Refused(format!(
            "stateful but no volumes of stack {stack} found: cannot snapshot; set stateful = false if it keeps no data"
        ))
    })
}

/// The wire phase a journal phase reports as.
fn wire_phase(phase: &Phase) -> pb::OperationPhase {
    match phase {
        Phase::Accepted => pb::OperationPhase::Accepted,
        Phase::Undeploying | Phase::Snapshotting | Phase::VerifyingSnapshot => pb::OperationPhase::Snapshotting,
        Phase::Deploying => pb::OperationPhase::Deploying,
        Phase::Verifying | Phase::Healthy | Phase::Done { .. } => pb::OperationPhase::Verifying,
        Phase::RollbackUndeploying | Phase::Restoring | Phase::RollbackDeploying | Phase::RollbackVerifying => {
            pb::OperationPhase::RollingBack
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_follow_the_snapshot_directory_rule() {
        let long = "a".repeat(129);
        let rows = [
            "local-3f68e324d0bb66a0",
            "ghost-lq2x1k.0.rollback",
            "op_1",
            "",
            ".hidden",
            "-op",
            "op/../../etc",
            "op 1",
            "op:1",
            "op\n1",
            "é",
            long.as_str(),
        ];
        let lines: Vec<String> = rows
            .iter()
            .map(|id| {
                let shown = format!("{id:?}").replace(&long, "a*129");
                match check_operation_id(id) {
                    Ok(()) => format!("{shown}: ok"),
                    Err(error) => format!("{shown}: {}", error.replace(&long, "a*129")),
                }
            })
            .collect();
        expect_test::expect![[r#"
            "local-3f68e324d0bb66a0": ok
            "ghost-lq2x1k.0.rollback": ok
            "op_1": ok
            "": invalid operation id "": is empty
            ".hidden": invalid operation id ".hidden": must start with a letter or digit
            "-op": invalid operation id "-op": must start with a letter or digit
            "op/../../etc": invalid operation id "op/../../etc": may contain only letters, digits, '_', '.' and '-'
            "op 1": invalid operation id "op 1": may contain only letters, digits, '_', '.' and '-'
            "op:1": invalid operation id "op:1": may contain only letters, digits, '_', '.' and '-'
            "op\n1": invalid operation id "op\n1": may contain only letters, digits, '_', '.' and '-'
            "é": invalid operation id "é": must start with a letter or digit
            "a*129": invalid operation id "a*129": is longer than 128 bytes"#]]
        .assert_eq(&lines.join("\n"));
        // Every accepted id names a snapshot directory.
        let store = SnapshotStore::new("/tmp/snapshots".into());
        for id in rows.iter().filter(|id| check_operation_id(id).is_ok()) {
            let dir = store.dir_of(&"blog.example.org".parse().unwrap(), id);
            assert_eq!(dir.parent().unwrap(), Path::new("/tmp/snapshots/blog.example.org"));
        }
    }

    /// The snapshot of a FAILED operation is kept after later outcomes
    /// replaced its alert, whatever the retention, until a success.
    #[test]
    fn a_failed_operations_snapshot_is_kept_until_the_app_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            snapshots_dir: dir.path().join("snapshots"),
            alerts_dir: dir.path().join("alerts"),
            snapshot_retention: 1,
            min_healthy_time: Duration::from_secs(1),
            probe_address: "127.0.0.1:9".parse().unwrap(),
            probe_scheme: ProbeScheme::Http,
            poll_interval: Duration::from_millis(100),
        };
        let journal = Journal::open(&dir.path().join("state"), &dir.path().join("abra")).unwrap();
        let upgrader = Upgrader::new(journal, settings, Arc::new(LogEvents));
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("post.md"), "data").unwrap();
        let domain: Domain = "blog.example.org".parse().unwrap();
        let declared: CoopVersion = "1.0.0+5.0".parse().unwrap();
        let finish = |id: &str, to: &str, outcome: Outcome| {
            let volumes = [VolumeSource {
                name: "blog_example_org_data".into(),
                mountpoint: volume.clone(),
            }];
            upgrader.snapshots.take(&domain, id, &volumes).unwrap();
            let record = OperationRecord {
                format: journal::FORMAT,
                id: id.into(),
                domain: domain.clone(),
                recipe: "ghost".parse().unwrap(),
                trigger: Trigger::Operator,
                from: declared.clone(),
                to: to.parse().unwrap(),
                stateful: true,
                phase: Phase::Done {
                    outcome,
                    reason: "why".into(),
                },
                failure: None,
                snapshot: Some(upgrader.snapshots.dir_of(&domain, id)),
                snapshot_verified: true,
                started_at: 0,
                finished_at: None,
                reported: false,
            };
            upgrader.journal.write_operation(&record).unwrap();
            upgrader.finish(&record, &declared).unwrap();
            let mut kept: Vec<String> = upgrader
                .snapshots
                .list(&domain)
                .unwrap()
                .into_iter()
                .map(|info| info.operation_id)
                .collect();
            kept.sort();
            kept
        };
        assert_eq!(finish("op-1", "1.1.0+5.1", Outcome::Failed), ["op-1"]);
        // Later outcomes replace the FAILED alert; its snapshot stays.
        assert_eq!(finish("op-2", "1.2.0+5.2", Outcome::RolledBack), ["op-1", "op-2"]);
        assert_eq!(finish("op-3", "1.3.0+5.3", Outcome::Held), ["op-1", "op-3"]);
        // A success releases it.
        assert_eq!(finish("op-4", "1.0.0+5.0", Outcome::Succeeded), ["op-4"]);
    }

    #[test]
    fn a_stateful_app_without_volumes_is_refused_its_snapshot() {
        assert_eq!(
            refuse_without_volumes("blog_example_org", &[]),
            Some(StepResult::Refused(
                "stateful but no volumes of stack blog_example_org found: cannot snapshot; \
                 set stateful = false if it keeps no data"
                    .into()
            ))
        );
        let volume = VolumeSource {
            name: "blog_example_org_content".into(),
            mountpoint: "/var/lib/docker/volumes/blog_example_org_content/_data".into(),
        };
        assert_eq!(refuse_without_volumes("blog_example_org", &[volume]), None);
    }
}

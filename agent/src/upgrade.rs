//! The local upgrade transaction (ARCHITECTURE.md):
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
//! Effects reach abra and Docker through the [`Host`] they are given. The
//! caller holds the app's lock (`Reconciler`), and `agent::abra`
//! serialises abra calls per recipe.

mod bookkeeping;
mod effects;
pub mod machine;
pub mod model;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_proto::{error_chain, CoopVersion, Domain};
use serde::Serialize;

use crate::config::{AgentConfig, AppConfig, ProbeScheme};
use crate::health::HttpProbe;
use crate::host::{AppState, Host};
use crate::journal::{self, Journal, JournalError};
use crate::snapshot::SnapshotStore;
use model::{OperationRecord, Outcome, Phase, Trigger};

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
    ccfleet_proto::OperationId::local(&ccfleet_proto::tls::random_hex(8)).into()
}

pub use ccfleet_proto::domain::MAX_OPERATION_ID;

/// Checks an operation id from outside (`upgrade --operation-id`, a server
/// command) before anything is touched: it names the operation's snapshot
/// directory, so it follows [`ccfleet_proto::OperationId`]'s rule, which is
/// stricter than the snapshot store's (`[A-Za-z0-9][A-Za-z0-9_.-]*`, at most
/// 128 bytes rather than 255).
pub fn check_operation_id(id: &str) -> Result<(), String> {
    ccfleet_proto::OperationId::parse(id).map_err(|error| error.to_string())?;
    debug_assert!(crate::snapshot::check_name("operation id", id).is_ok());
    Ok(())
}

/// How an operation ended, for the caller (and `upgrade --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperationReport {
    pub operation_id: String,
    pub domain: Domain,
    pub outcome: Outcome,
    /// The version running before; `None` when the app was not deployed.
    pub from: Option<CoopVersion>,
    /// The version asked for, whatever the outcome.
    pub to: CoopVersion,
    /// The version running now (observed after the operation, or, for a
    /// replayed result, when it was asked again); `None` when nothing runs.
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
        host: &Host,
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
                let mut report = self.report_of(&record, None, running_version(&host.observe(app).await));
                report.replayed = true;
                return Ok(RunResult::Finished(Box::new(report)));
            }
            // Journaled but unfinished (interrupted before the start-up
            // resume reached it): finish it, never start it again.
            let (record, after) = self.drive(host, app, record, true, None).await?;
            return Ok(RunResult::Finished(Box::new(self.report_of(&record, None, after))));
        }

        let running = running_version(&host.observe(app).await);
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
            format: model::FORMAT,
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
                let reason = match self.gate(host, app, &version, None, false).await {
                    StepResult::Ok | StepResult::SnapshotVerified => None,
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
                if let Some(reason) = self.preflight(host, app, &request.ask, &facts, &from).await {
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
        let (record, after) = self.drive(host, app, record, false, gate_deadline).await?;
        Ok(RunResult::Finished(Box::new(self.report_of(&record, running, after))))
    }

    /// What `machine::refuse` needs, read before anything moves: the
    /// recipe's releases (after `abra recipe fetch`) and, for a stateful app,
    /// whether its stack has volumes. What cannot be read is not held against
    /// the request.
    async fn preflight(
        &self,
        host: &Host,
        app: &AppConfig,
        ask: &Ask,
        facts: &machine::AppFacts,
        from: &CoopVersion,
    ) -> Option<String> {
        let releases = match host.abra().available_versions(&app.recipe).await {
            Ok(releases) => Some(releases),
            Err(error) => {
                tracing::warn!(recipe = %app.recipe, error = %error_chain(&error), "cannot read the recipe's releases");
                None
            }
        };
        let has_volumes = if app.stateful {
            match host.docker().stack_volumes(&app.stack_name()).await {
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
        host: &Host,
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
            self.finish(&record, &declared, None)?;
            return Ok(self.report_of(&record, None, None));
        };
        tracing::warn!(operation = %record.id, app = %app.domain, phase = record.phase.name(), "resuming an unfinished operation");
        let (record, after) = self.drive(host, app, record, true, None).await?;
        Ok(self.report_of(&record, None, after))
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
            let mut report = self.report_of(&record, None, None);
            report.replayed = true;
            return Ok(report);
        }
        let record = OperationRecord {
            format: model::FORMAT,
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
        self.finish(&record, &declared, None)?;
        Ok(self.report_of(&record, None, None))
    }

    /// Runs phases until done: each phase is journaled (and reported as
    /// progress) before its effect runs. `resumed`: the record was found
    /// unfinished, so it continues where [`machine::resume`] says. Returns
    /// the finished record and the version observed running after it, which
    /// its result reports.
    async fn drive(
        &self,
        host: &Host,
        app: &AppConfig,
        mut record: OperationRecord,
        resumed: bool,
        gate_deadline: Option<Instant>,
    ) -> Result<(OperationRecord, Option<CoopVersion>), UpgradeError> {
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
            let result = match record.phase {
                Phase::Snapshotting => match self.snapshot_volumes(host, app).await {
                    Err(result) => result,
                    Ok(volumes) => {
                        record = machine::with_snapshot_dir(&record, self.snapshots.dir_of(&app.domain, &record.id));
                        // The directory is journaled before the copy starts, so
                        // a crash in the middle leaves a record that names it.
                        match self.journal.write_operation(&record) {
                            Ok(()) => self.take_snapshot(app, &record, volumes).await,
                            Err(error) => StepResult::Failed(error_chain(&error)),
                        }
                    }
                },
                _ => self.effect(host, app, &record, gate_deadline).await,
            };
            if !matches!(result, StepResult::Ok | StepResult::SnapshotVerified) {
                tracing::warn!(operation = %record.id, phase = record.phase.name(), %result, "upgrade phase did not succeed");
            }
            record = machine::advance(&record, result);
        }
        let running = running_version(&host.observe(app).await);
        self.finish(&record, &app.version, running.as_ref())?;
        Ok((record, running))
    }
}

/// The version an observation shows running: none for an app that is not
/// deployed or could not be seen.
fn running_version(observed: &crate::host::ObservedApp) -> Option<CoopVersion> {
    match observed.state {
        AppState::NotDeployed | AppState::Unknown => None,
        _ => observed.observed_version.clone(),
    }
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
    use std::path::Path;

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
}

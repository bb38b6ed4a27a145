//! Makes each declared app true on this host, and says how each one stands.
//!
//! [`Reconciler::reconcile_app`] creates the app with abra if it is missing,
//! writes the env keys the config owns, inserts declared secrets (and rotates
//! those whose file changed, `reconcile::secrets`), deploys the
//! pinned version, moves a deployed app up to its desired version (max of
//! declared and fleet target) through the upgrade transaction
//! (`agent::upgrade`), never down, then waits, polling Docker, until the app
//! is converged or its `deploy_timeout` runs out. What to do about the
//! version is decided by the pure [`plan::version_step`].
//!
//! One operation per app at a time (a per-app async mutex), so that the
//! server, the local `apply` and the agent's own loop may ask concurrently;
//! `agent::abra` separately serialises abra calls per recipe.
//!
//! (Over 600 lines: one app's reconcile steps read top to bottom in one place; the
//! decisions they take are already apart, in `reconcile/plan.rs` and `reconcile/secrets.rs`.)

pub use crate::host::observe;
pub mod plan;
pub mod secrets;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccfleet_proto::{error_chain, CoopVersion, Domain, RecipeName};
use serde::{Deserialize, Serialize};

use crate::abra::{Abra, AbraError};
use crate::config::{AppConfig, Config};
use crate::docker::Docker;
use crate::host::Host;
use crate::journal::{Journal, JournalError, PendingWork};
use crate::upgrade::model::{Outcome, Trigger};
use crate::upgrade::{self, Ask, Events, OperationRequest, RunResult, Upgrader};

pub use crate::host::{AppState, ObservedApp};

/// How often Docker is polled while waiting for an app to converge.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Drives abra and reads Docker for the declared apps of this host.
#[derive(Debug)]
pub struct Reconciler {
    /// abra, Docker and observation, shared with the upgrade transaction.
    host: Host,
    apps: Vec<AppConfig>,
    /// Shared with the reconciler that replaces this one on a config reload
    /// (see [`Reconciler::reconfigured`]).
    app_locks: Arc<Mutex<HashMap<Domain, Arc<tokio::sync::Mutex<()>>>>>,
    poll_interval: Duration,
    /// The upgrade transaction, shared across reloads.
    upgrader: Arc<Upgrader>,
}

/// One thing `reconcile_app` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum ReconcileAction {
    /// `abra app new`: the app had no env file.
    Created,
    /// These owned env keys were written (their values changed).
    EnvKeysWritten {
        keys: Vec<String>,
    },
    /// Declared secrets inserted from their files.
    SecretsInserted {
        names: Vec<String>,
    },
    /// `abra app secret generate --all` for the recipe's other secrets.
    SecretsGenerated,
    /// Declared secrets whose file changed, inserted as their next version
    /// (`SECRET_<NAME>_VERSION` bumped); the app is redeployed.
    SecretsRotated {
        names: Vec<String>,
    },
    /// First deploy of the pinned version.
    Deployed {
        version: CoopVersion,
    },
    /// `deploy -f` of the pinned version: the env changed, or the running
    /// version could not be read, or only the upstream part differs.
    Redeployed {
        version: CoopVersion,
        reason: String,
    },
    Upgraded {
        from: CoopVersion,
        to: CoopVersion,
    },
    /// Nothing needed doing.
    AlreadyConverged,
    /// Nothing was run, but Docker had not converged yet: the agent waited.
    WaitedForConvergence,
}

impl fmt::Display for ReconcileAction {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReconcileAction::Created => write!(formatter, "created"),
            ReconcileAction::EnvKeysWritten { keys } => write!(formatter, "wrote env keys {}", keys.join(", ")),
            ReconcileAction::SecretsInserted { names } => write!(formatter, "inserted secrets {}", names.join(", ")),
            ReconcileAction::SecretsGenerated => write!(formatter, "generated the other secrets"),
            ReconcileAction::SecretsRotated { names } => write!(formatter, "rotated secrets {}", names.join(", ")),
            ReconcileAction::Deployed { version } => write!(formatter, "deployed {version}"),
            ReconcileAction::Redeployed { version, reason } => write!(formatter, "redeployed {version} ({reason})"),
            ReconcileAction::Upgraded { from, to } => write!(formatter, "upgraded {from} -> {to}"),
            ReconcileAction::AlreadyConverged => write!(formatter, "already converged"),
            ReconcileAction::WaitedForConvergence => write!(formatter, "waited for convergence"),
        }
    }
}

/// What `reconcile_app` did, and how the app stood at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileOutcome {
    pub domain: Domain,
    /// In the order they happened; never empty.
    pub actions: Vec<ReconcileAction>,
    /// The last observation: converged at the declared version.
    pub observed: ObservedApp,
}

impl ReconcileOutcome {
    /// `created, deployed 1.0.0+1.0` and the like.
    pub fn summary(&self) -> String {
        self.actions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why an app could not be reconciled. The message is complete on its own
/// (it includes abra's output tail), since it is what reports carry.
#[derive(Debug, thiserror::Error)]
#[error("{domain}: {kind}")]
pub struct ReconcileError {
    pub domain: Domain,
    pub kind: ReconcileErrorKind,
    /// What had been done before the failure.
    pub actions: Vec<ReconcileAction>,
    /// The app ran nothing before this reconcile (it was created, or found
    /// undeployed, and was to be deployed for the first time).
    pub first_deploy: bool,
}

/// The reasons [`ReconcileError`] gives.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileErrorKind {
    #[error("cannot {step}: {}", error_chain(error))]
    Abra { step: String, error: Box<AbraError> },
    /// `abra app secret insert` failed (an alert of its own).
    #[error("cannot {step}: {}", error_chain(error))]
    SecretInsert { step: String, error: Box<AbraError> },
    #[error("the app's env file names recipe {found:?}, the configuration declares {declared}: refusing to touch it")]
    RecipeMismatch { declared: RecipeName, found: String },
    #[error("cannot observe the app: {reason}")]
    Observe { reason: String },
    #[error("not converged at {declared} within {}: {}", humantime::format_duration(*timeout), observed.summary())]
    NotConverged {
        declared: CoopVersion,
        timeout: Duration,
        observed: Box<ObservedApp>,
    },
    #[error("skipped: it depends on {dependency}, which failed: {reason}")]
    DependencyFailed { dependency: Domain, reason: String },
    #[error("cannot read secret {name} from {}: {reason}", path.display())]
    SecretFile {
        name: String,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot rotate secret {name}: {reason}")]
    SecretVersion { name: String, reason: String },
    /// Declared secrets the recipe names no version for: nothing was inserted.
    #[error(
        "recipe {recipe} declares no {} (its .env.sample has no such line): no secret inserted",
        names.iter().map(|name| format!("secret {name} (SECRET_{}_VERSION)", name.to_uppercase())).collect::<Vec<_>>().join(", ")
    )]
    SecretUndeclared { names: Vec<String>, recipe: RecipeName },
    #[error("cannot {step}: {}", error_chain(error))]
    Journal { step: String, error: Box<JournalError> },
    /// The upgrade transaction ran and did not reach the target; it reported
    /// its own result and alert.
    #[error("upgrade to {to} {outcome} (operation {operation_id}): {reason}")]
    UpgradeNotApplied {
        operation_id: String,
        to: CoopVersion,
        outcome: Outcome,
        reason: String,
    },
    /// The desired version is held back (it was rolled back before, is a
    /// major move that is not allowed, or a FAILED operation blocks the app);
    /// nothing ran.
    #[error("{to} is not applied: {reason}")]
    HeldBack { to: CoopVersion, reason: String },
    /// A FAILED operation blocks the app; nothing ran. The operation raised
    /// its alert; the reconcile raises one only if no open alert names it.
    #[error("{to} is not applied: {reason}")]
    Blocked {
        to: CoopVersion,
        operation_id: String,
        reason: String,
    },
    #[error("the upgrade transaction failed: {reason}")]
    Upgrade { reason: String },
}

impl ReconcileError {
    /// abra's output, when the failure was abra's.
    pub fn abra_output(&self) -> Option<&crate::process::CommandOutput> {
        match &self.kind {
            ReconcileErrorKind::Abra { error, .. } | ReconcileErrorKind::SecretInsert { error, .. } => error.output(),
            _ => None,
        }
    }
}

impl ReconcileErrorKind {
    /// Whether the failure was already reported by the upgrade transaction
    /// (or is a standing hold): the reconcile must not report it again.
    pub fn reported_elsewhere(&self) -> bool {
        matches!(
            self,
            ReconcileErrorKind::UpgradeNotApplied { .. }
                | ReconcileErrorKind::HeldBack { .. }
                | ReconcileErrorKind::Blocked { .. }
        )
    }
}

impl Reconciler {
    /// A reconciler for `apps`, driving `abra`, observing through `docker`,
    /// and moving versions through `upgrader`.
    pub fn new(abra: Abra, docker: Docker, apps: Vec<AppConfig>, upgrader: Arc<Upgrader>) -> Reconciler {
        let journal = upgrader.journal().clone();
        Reconciler {
            host: Host::new(abra, docker, journal),
            apps,
            app_locks: Arc::default(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            upgrader,
        }
    }

    /// A reconciler for a reloaded `config` that shares this one's per-app
    /// and per-recipe locks: an operation still running on the old
    /// reconciler and one started on the new one never overlap.
    pub fn reconfigured(&self, config: &Config) -> Reconciler {
        Reconciler {
            host: self.host.reconfigured(&config.abra),
            apps: config.apps.clone(),
            app_locks: Arc::clone(&self.app_locks),
            poll_interval: self.poll_interval,
            upgrader: Arc::clone(&self.upgrader),
        }
    }

    /// A reconciler for the apps and abra settings of `config`, whose
    /// transaction events are only logged (no server link).
    pub fn from_config(config: &Config, docker: Docker) -> Reconciler {
        Reconciler::from_config_with_events(config, docker, Arc::new(upgrade::LogEvents))
    }

    /// A reconciler for `config` whose transaction events go to `events`.
    pub fn from_config_with_events(config: &Config, docker: Docker, events: Arc<dyn Events>) -> Reconciler {
        let journal = Journal::at(&config.agent.state_dir);
        let upgrader = Upgrader::new(journal, upgrade::Settings::from_agent(&config.agent), events);
        Reconciler::new(
            Abra::new(&config.abra).with_docker(docker.clone()),
            docker,
            config.apps.clone(),
            Arc::new(upgrader),
        )
    }

    pub fn upgrader(&self) -> &Upgrader {
        &self.upgrader
    }

    pub fn journal(&self) -> &Journal {
        self.upgrader.journal()
    }

    /// Runs the upgrade transaction for `app` (taking its lock).
    pub async fn run_operation(
        &self,
        app: &AppConfig,
        request: &OperationRequest,
    ) -> Result<RunResult, upgrade::UpgradeError> {
        let _app_guard = self.lock_app(&app.domain).await;
        self.upgrader.run(&self.host, app, request).await
    }

    /// Polls Docker this often while waiting for convergence (default 1s).
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Reconciler {
        self.poll_interval = poll_interval;
        self
    }

    /// The declared apps, sorted by domain.
    pub fn apps(&self) -> &[AppConfig] {
        &self.apps
    }

    /// abra, Docker and observation, as the upgrade transaction sees them.
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn abra(&self) -> &Abra {
        self.host.abra()
    }

    pub fn docker(&self) -> &Docker {
        self.host.docker()
    }

    /// How `app` stands in Docker now. Never fails: when Docker cannot be
    /// asked, the app is [`AppState::Unknown`] with the reason as drift.
    pub async fn observe(&self, app: &AppConfig) -> ObservedApp {
        self.host.observe(app).await
    }

    /// Every declared app, in declaration order (sorted by domain).
    pub async fn observe_all(&self) -> Vec<ObservedApp> {
        futures::future::join_all(self.apps.iter().map(|app| self.observe(app))).await
    }

    /// Makes `app` true on this host (see the module comment), returning what
    /// was done, or why it failed with what had been done before.
    pub async fn reconcile_app(&self, app: &AppConfig) -> Result<ReconcileOutcome, ReconcileError> {
        let _app_guard = self.lock_app(&app.domain).await;
        let mut actions = Vec::new();
        let mut first_deploy = false;
        let result = self.reconcile_locked(app, &mut actions, &mut first_deploy).await;
        match result {
            Ok(observed) => {
                if actions.is_empty() {
                    actions.push(ReconcileAction::AlreadyConverged);
                }
                tracing::info!(
                    app = %app.domain,
                    actions = %actions.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                    "reconciled"
                );
                Ok(ReconcileOutcome {
                    domain: app.domain.clone(),
                    actions,
                    observed,
                })
            }
            Err(kind) => {
                let error = ReconcileError {
                    domain: app.domain.clone(),
                    kind,
                    actions,
                    first_deploy,
                };
                tracing::warn!(error = %error, "reconcile failed");
                Err(error)
            }
        }
    }

    /// Reconciles every declared app, dependencies first: apps whose
    /// dependencies are done run concurrently; an app whose dependency failed
    /// is skipped with [`ReconcileErrorKind::DependencyFailed`]. Results come
    /// in declaration order.
    pub async fn reconcile_all(&self) -> Vec<(Domain, Result<ReconcileOutcome, ReconcileError>)> {
        let mut results: BTreeMap<Domain, Result<ReconcileOutcome, ReconcileError>> = BTreeMap::new();
        let mut pending: Vec<&AppConfig> = self.apps.iter().collect();
        while !pending.is_empty() {
            let (ready, waiting): (Vec<&AppConfig>, Vec<&AppConfig>) = pending
                .into_iter()
                .partition(|app| app.depends_on.iter().all(|dependency| results.contains_key(dependency)));
            pending = waiting;
            if ready.is_empty() {
                // The config refuses cycles and unknown dependencies, so this
                // only guards against a reconciler built from unchecked apps.
                for app in pending.drain(..) {
                    let dependency = app.depends_on.first().cloned().unwrap_or_else(|| app.domain.clone());
                    let error = ReconcileError {
                        domain: app.domain.clone(),
                        kind: ReconcileErrorKind::DependencyFailed {
                            dependency,
                            reason: "it is not declared, or the dependencies form a cycle".into(),
                        },
                        actions: Vec::new(),
                        first_deploy: false,
                    };
                    results.insert(app.domain.clone(), Err(error));
                }
                break;
            }
            let mut runnable = Vec::new();
            for app in ready {
                let failed = app
                    .depends_on
                    .iter()
                    .find_map(|dependency| match results.get(dependency) {
                        Some(Err(error)) => Some((dependency.clone(), error.kind.to_string())),
                        _ => None,
                    });
                match failed {
                    Some((dependency, reason)) => {
                        let error = ReconcileError {
                            domain: app.domain.clone(),
                            kind: ReconcileErrorKind::DependencyFailed { dependency, reason },
                            actions: Vec::new(),
                            first_deploy: false,
                        };
                        results.insert(app.domain.clone(), Err(error));
                    }
                    None => runnable.push(app),
                }
            }
            let outcomes = futures::future::join_all(runnable.iter().map(|app| self.reconcile_app(app))).await;
            for (app, outcome) in runnable.into_iter().zip(outcomes) {
                results.insert(app.domain.clone(), outcome);
            }
        }
        self.apps
            .iter()
            .filter_map(|app| results.remove(&app.domain).map(|result| (app.domain.clone(), result)))
            .collect()
    }

    /// One reconcile; `first_deploy` is set once it is known that nothing of
    /// the app ran before (for the alert a failure raises).
    async fn reconcile_locked(
        &self,
        app: &AppConfig,
        actions: &mut Vec<ReconcileAction>,
        first_deploy: &mut bool,
    ) -> Result<ObservedApp, ReconcileErrorKind> {
        let abra_step = |step: &str| {
            let step = step.to_owned();
            move |error: AbraError| ReconcileErrorKind::Abra {
                step,
                error: Box::new(error),
            }
        };
        self.host
            .abra()
            .ensure_server()
            .await
            .map_err(abra_step("add the local server to abra"))?;

        let existing = self
            .abra()
            .read_env_file(&app.domain)
            .map_err(abra_step("read the app's env file"))?;
        let created = existing.is_none();
        *first_deploy = created;
        let journal = self.journal();
        let pending = |work, owed| {
            journal
                .set_pending(&app.domain, work, owed)
                .map_err(|error| ReconcileErrorKind::Journal {
                    step: "record the app's pending work".into(),
                    error: Box::new(error),
                })
        };
        if let Some(env) = &existing {
            check_recipe(app, env)?;
        } else {
            // Owed from before `app new`, so that a failure or crash between
            // creating the app and inserting its secrets is resumed, never
            // forgotten.
            pending(PendingWork::Secrets, true)?;
            self.host
                .abra()
                .app_new(&app.recipe, &app.version, &app.domain)
                .await
                .map_err(abra_step("create the app (abra app new)"))?;
            actions.push(ReconcileAction::Created);
        }

        // A redeploy is owed from before the env keys are written (and the
        // secrets rotated) until the stack runs with them: a failed or
        // interrupted redeploy is retried at the next reconcile instead of
        // being taken for convergence.
        let redeploy_owed = !created && journal.is_pending(&app.domain, PendingWork::Redeploy);
        if !created {
            pending(PendingWork::Redeploy, true)?;
        }
        let changed_keys = self
            .abra()
            .write_env_keys(
                &app.recipe,
                &app.domain,
                app.env.iter().map(|(key, value)| (key.as_str(), value.as_str())),
            )
            .await
            .map_err(abra_step("write the app's env keys"))?;
        if !changed_keys.is_empty() {
            actions.push(ReconcileAction::EnvKeysWritten {
                keys: changed_keys.clone(),
            });
        }

        // Secrets are set up when the app is created, or after a failure in
        // doing so; otherwise those whose file changed are rotated (a new
        // secret version: Docker refuses to overwrite an existing one).
        let secrets_owed = created || journal.is_pending(&app.domain, PendingWork::Secrets);
        let rotated = if secrets_owed {
            Vec::new()
        } else {
            self.rotate_secrets(app, actions).await?
        };
        let needs_redeploy = redeploy_owed || !changed_keys.is_empty() || !rotated.is_empty();
        if !needs_redeploy {
            pending(PendingWork::Redeploy, false)?;
        }
        if secrets_owed {
            // Owed only from `app new` until the set-up is done: the app's
            // creation is unfinished, so nothing of it runs yet.
            *first_deploy = true;
            self.set_up_secrets(app, actions).await?;
            pending(PendingWork::Secrets, false)?;
        }
        let redeploy_reason = if rotated.is_empty() {
            "env keys changed"
        } else {
            "secrets rotated"
        };

        let before = self.observe(app).await;
        let app_record = journal.app(&app.domain).map_err(|error| ReconcileErrorKind::Journal {
            step: "read the app's journal record".into(),
            error: Box::new(error),
        })?;
        let desired = plan::desired_version(&app.version, app_record.fleet_target.as_ref());
        let blocked_by = app_record.blocked_by.as_deref();
        let expected = match plan::version_step(
            &before,
            &desired,
            (needs_redeploy && !created).then_some(redeploy_reason),
            blocked_by,
        ) {
            plan::VersionStep::CannotObserve { reason } => return Err(ReconcileErrorKind::Observe { reason }),
            plan::VersionStep::Blocked { operation_id, version } => {
                let alert = self.upgrader.settings().alerts_dir.join(format!("{}.json", app.domain));
                return Err(ReconcileErrorKind::Blocked {
                    to: version,
                    operation_id: operation_id.clone(),
                    reason: format!(
                        "blocked by failed operation {operation_id} (alert {}): an operator must act \
                         (ccfleet-agent upgrade {} --to VERSION, or restore by hand)",
                        alert.display(),
                        app.domain
                    ),
                });
            }
            plan::VersionStep::Deploy { version } => {
                *first_deploy = true;
                self.host
                    .abra()
                    .deploy(&app.recipe, &app.domain, &version, false)
                    .await
                    .map_err(abra_step("deploy the app (abra app deploy)"))?;
                actions.push(ReconcileAction::Deployed {
                    version: version.clone(),
                });
                version
            }
            plan::VersionStep::Redeploy { version, reason } => {
                self.redeploy(app, &version, &reason, actions).await?;
                version
            }
            plan::VersionStep::Keep { version } => version,
            plan::VersionStep::Upgrade { from, to } => {
                let request = OperationRequest {
                    id: upgrade::local_operation_id(),
                    ask: Ask {
                        trigger: Trigger::Declared,
                        target: to.clone(),
                        allow_major: false,
                    },
                    deadline: None,
                };
                match self.upgrader.run(&self.host, app, &request).await {
                    Err(error) => {
                        return Err(ReconcileErrorKind::Upgrade {
                            reason: error.to_string(),
                        })
                    }
                    Ok(RunResult::LeftAlone { reason } | RunResult::Refused { reason }) => {
                        return Err(ReconcileErrorKind::HeldBack { to, reason })
                    }
                    Ok(RunResult::Finished(report)) if report.outcome == Outcome::Succeeded => {
                        actions.push(ReconcileAction::Upgraded { from, to: to.clone() });
                        to
                    }
                    Ok(RunResult::Finished(report)) => {
                        return Err(ReconcileErrorKind::UpgradeNotApplied {
                            operation_id: report.operation_id,
                            to,
                            outcome: report.outcome,
                            reason: report.reason,
                        })
                    }
                }
            }
        };

        let observed = self.wait_converged(app, &expected, before).await?;
        // Converged with the env as written: whatever path led here
        // (deploy, upgrade, rollback, redeploy) applied it.
        pending(PendingWork::Redeploy, false)?;
        if actions.is_empty() && !observed.1 {
            actions.push(ReconcileAction::WaitedForConvergence);
        }
        Ok(observed.0)
    }

    async fn redeploy(
        &self,
        app: &AppConfig,
        version: &CoopVersion,
        reason: &str,
        actions: &mut Vec<ReconcileAction>,
    ) -> Result<(), ReconcileErrorKind> {
        self.host
            .abra()
            .deploy(&app.recipe, &app.domain, version, true)
            .await
            .map_err(|error| ReconcileErrorKind::Abra {
                step: "redeploy the app (abra app deploy -f)".into(),
                error: Box::new(error),
            })?;
        actions.push(ReconcileAction::Redeployed {
            version: version.clone(),
            reason: reason.into(),
        });
        Ok(())
    }

    /// Polls Docker until the app is converged at the declared version, or
    /// fails when `deploy_timeout` runs out. Returns the last observation and
    /// whether `first` (taken before anything was run) already was converged.
    async fn wait_converged(
        &self,
        app: &AppConfig,
        expected: &CoopVersion,
        first: ObservedApp,
    ) -> Result<(ObservedApp, bool), ReconcileErrorKind> {
        // Converged at the version that should run (which may be above the
        // declared one); the observation still reports drift against the
        // declaration.
        let at_expected = AppConfig {
            version: expected.clone(),
            ..app.clone()
        };
        let converged = |observed: &ObservedApp| {
            observed.state == AppState::Converged && observed.observed_version.as_ref() == Some(expected)
        };
        let deadline = tokio::time::Instant::now() + app.deploy_timeout;
        let converged_at_first = converged(&first);
        // The first tick completes at once: observe straight after the deploy,
        // then once per poll interval until converged or the deadline.
        let mut ticker = tokio::time::interval(self.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let observed = self.observe(app).await;
            if converged(&observed) {
                return Ok((observed, converged_at_first));
            }
            if tokio::time::Instant::now() >= deadline {
                let observed = self.observe(&at_expected).await;
                return Err(ReconcileErrorKind::NotConverged {
                    declared: expected.clone(),
                    timeout: app.deploy_timeout,
                    observed: Box::new(observed),
                });
            }
            tracing::debug!(app = %app.domain, observed = %observed.summary(), "waiting for convergence");
        }
    }

    /// Waits for and holds the app's lock: one operation per app at a time.
    pub async fn lock_app(&self, domain: &Domain) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.app_locks.lock().expect("app lock map is never poisoned");
            Arc::clone(locks.entry(domain.clone()).or_default())
        };
        lock.lock_owned().await
    }
}

/// An existing app must be of the declared recipe: redeploying another
/// recipe's app under this name would destroy it.
fn check_recipe(app: &AppConfig, env: &crate::abra::EnvFile) -> Result<(), ReconcileErrorKind> {
    match env.app_type() {
        Some(app_type) if app_type.recipe != app.recipe.as_str() => Err(ReconcileErrorKind::RecipeMismatch {
            declared: app.recipe.clone(),
            found: app_type.recipe,
        }),
        _ => Ok(()),
    }
}

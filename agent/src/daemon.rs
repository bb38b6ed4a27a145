//! `ccfleet-agent run`: the long-running agent. It owns the event loop that
//! sequences everything on this host: periodic and requested reconciles,
//! upgrade operations (local and from the server), the outbox, the server
//! link, the control socket, and configuration reloads on SIGHUP. Docker is
//! observed by a task of its own, so a slow engine never stalls the loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_proto::{CoopVersion, Domain, RecipeName};
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{AppConfig, Config};
use crate::control::{self, AppOutcome, Request, Response};
use crate::docker::Docker;
use crate::journal::{Journal, Outcome, Phase, Trigger};
use crate::link::{Link, LinkStatus};
use crate::outbox::Outbox;
use crate::progress;
use crate::reconcile::{AppState, ObservedApp, ReconcileAction, ReconcileError, ReconcileOutcome, Reconciler};
use crate::upgrade::{self, Ask, Events, OperationReport, OperationRequest, RunResult};

/// How long known available versions of a recipe are used before abra is
/// asked again (observations never run abra themselves).
const VERSIONS_REFRESH: Duration = Duration::from_secs(5 * 60);

/// Facts about an app beyond Docker's, for the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppExtras {
    /// Newest available version within the running (else declared) major.
    pub available_version: Option<CoopVersion>,
    /// Newest available version, any major.
    pub available_newest: Option<CoopVersion>,
    pub pinned_by_host: bool,
    pub fleet_target: Option<CoopVersion>,
}

/// Newest of `versions` within `base`'s major, and newest overall.
pub fn newest_available(versions: &[CoopVersion], base: &CoopVersion) -> (Option<CoopVersion>, Option<CoopVersion>) {
    let same_major = versions
        .iter()
        .filter(|version| version.recipe_version().major == base.recipe_version().major)
        .max()
        .cloned();
    (same_major, versions.iter().max().cloned())
}

/// Converts the agent's observation to the wire type, at the link's edge.
pub fn to_wire(app: &ObservedApp, extras: &AppExtras) -> pb::ObservedApp {
    let state = match app.state {
        AppState::Converged => pb::AppState::Converged,
        AppState::Converging => pb::AppState::Converging,
        AppState::Degraded => pb::AppState::Degraded,
        AppState::NotDeployed => pb::AppState::NotDeployed,
        AppState::Unknown => pb::AppState::Unspecified,
    };
    pb::ObservedApp {
        domain: app.domain.to_string(),
        recipe: app.recipe.to_string(),
        observed_version: app
            .observed_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        declared_version: app
            .declared_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        state: state as i32,
        desired_replicas: app.desired_replicas,
        running_replicas: app.running_replicas,
        drift: app.drift.clone(),
        chaos: app.chaos,
        available_version: extras
            .available_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        available_newest: extras
            .available_newest
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        pinned_by_host: extras.pinned_by_host,
        fleet_target: extras
            .fleet_target
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// The transaction's events go to the outbox.
struct OutboxEvents {
    outbox: Arc<Outbox>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for OutboxEvents {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("OutboxEvents")
    }
}

impl Events for OutboxEvents {
    fn push(&self, body: Body) -> bool {
        let pushed = self.outbox.push(body);
        match pushed {
            Ok(_) => {
                self.changed.notify_one();
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot write to the outbox");
                false
            }
        }
    }
}

/// Counts operations in flight, so that a stop waits for them (bounded).
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    changed: Notify,
}

struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(Arc::clone(self))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// This host's facts for the server.
async fn host_facts(config: &Config, docker: &Docker) -> pb::HostFacts {
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("PRETTY_NAME=")
                    .map(|value| value.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.to_owned());
    let hostname = ccfleet_proto::system_hostname();
    let docker_version = match docker.engine_version().await {
        Ok(version) => version,
        Err(error) => {
            tracing::warn!(%error, "cannot read the Docker engine version");
            String::new()
        }
    };
    pb::HostFacts {
        hostname,
        os,
        arch: std::env::consts::ARCH.to_owned(),
        docker_version,
        labels: config.host.labels.clone().into_iter().collect(),
    }
}

/// Loads and fully checks the configuration, as `check-config` does.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    config.validate_files(path)?;
    Ok(config)
}

/// Shared state of the running agent.
struct Agent {
    config_path: PathBuf,
    reconciler: watch::Sender<Arc<Reconciler>>,
    outbox: Arc<Outbox>,
    outbox_changed: Arc<Notify>,
    inventory: watch::Sender<pb::Inventory>,
    observations: Mutex<Vec<ObservedApp>>,
    link_status: watch::Receiver<LinkStatus>,
    /// Asks the observation loop to look now (after a reconcile).
    observe_now: Notify,
    /// The last failure pushed per app, so a persistent failure is reported once.
    last_failure: Mutex<HashMap<Domain, String>>,
    periodic_reconcile_running: AtomicBool,
    host_id: String,
    /// The configuration the agent started with: its `[server]`, `[host]`
    /// and `[agent]` sections are fixed until a restart.
    started_with: Config,
    in_flight: Arc<InFlight>,
    /// The inventory last stored in the outbox.
    pushed_inventory: Mutex<pb::Inventory>,
    /// Available versions per recipe, and when abra was last asked.
    versions: Mutex<HashMap<RecipeName, (Instant, Vec<CoopVersion>)>>,
}

impl Agent {
    /// Stores a durable event; false (and logged) when the outbox cannot.
    fn push(&self, body: Body) -> bool {
        let pushed = self.outbox.push(body);
        match pushed {
            Ok(_) => {
                self.outbox_changed.notify_one();
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot write to the outbox");
                false
            }
        }
    }

    /// Records what a reconcile did as durable operation results: changes as
    /// SUCCEEDED, failures as FAILED (once per distinct failure).
    fn report(&self, results: &[(Domain, Result<ReconcileOutcome, ReconcileError>)]) {
        for (domain, result) in results {
            let operation_id = format!("local-{}", ccfleet_proto::tls::random_hex(8));
            match result {
                Ok(outcome) => {
                    self.last_failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(domain);
                    let changed = outcome.actions.iter().any(|action| {
                        !matches!(
                            action,
                            ReconcileAction::AlreadyConverged | ReconcileAction::WaitedForConvergence
                        )
                    });
                    // An upgrade reported its own result under its own operation id.
                    let upgraded = outcome
                        .actions
                        .iter()
                        .any(|action| matches!(action, ReconcileAction::Upgraded { .. }));
                    if !changed || upgraded {
                        continue;
                    }
                    let (from, to) = outcome
                        .actions
                        .iter()
                        .fold((None, None), |(from, to), action| match action {
                            ReconcileAction::Upgraded { from: f, to: t } => (from.or(Some(f.clone())), Some(t.clone())),
                            ReconcileAction::Deployed { version } | ReconcileAction::Redeployed { version, .. } => {
                                (from, Some(version.clone()))
                            }
                            _ => (from, to),
                        });
                    self.push(Body::Result(pb::OperationResult {
                        operation_id,
                        domain: domain.to_string(),
                        outcome: pb::OperationOutcome::Succeeded as i32,
                        from_version: from.map(|v| v.to_string()).unwrap_or_default(),
                        to_version: to.map(|v| v.to_string()).unwrap_or_default(),
                        message: outcome.summary(),
                    }));
                }
                Err(error) if error.kind.reported_elsewhere() => {}
                Err(error) => {
                    let message: String = error.to_string().chars().take(4000).collect();
                    let mut failures = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
                    if failures.get(domain) == Some(&message) {
                        continue;
                    }
                    failures.insert(domain.clone(), message.clone());
                    drop(failures);
                    self.push(Body::Result(pb::OperationResult {
                        operation_id,
                        domain: domain.to_string(),
                        outcome: pb::OperationOutcome::Failed as i32,
                        message,
                        ..Default::default()
                    }));
                }
            }
        }
    }

    /// Reconciles one app or all, reports, and asks for a fresh observation.
    async fn reconcile(&self, app: Option<&AppConfig>) -> Vec<(Domain, Result<ReconcileOutcome, ReconcileError>)> {
        let reconciler = self.reconciler.borrow().clone();
        let results = match app {
            Some(app) => vec![(app.domain.clone(), reconciler.reconcile_app(app).await)],
            None => reconciler.reconcile_all().await,
        };
        self.report(&results);
        self.observe_now.notify_one();
        results
    }

    /// Inventory facts beyond Docker's for `app`.
    fn extras(&self, reconciler: &Reconciler, app: &ObservedApp) -> AppExtras {
        let Some(config) = reconciler.apps().iter().find(|config| config.domain == app.domain) else {
            return AppExtras::default();
        };
        let record = reconciler.journal().app(&app.domain).unwrap_or_default();
        let base = app.observed_version.as_ref().unwrap_or(&config.version);
        let (available_version, available_newest) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&config.recipe)
            .map(|(_, versions)| newest_available(versions, base))
            .unwrap_or_default();
        AppExtras {
            available_version,
            available_newest,
            pinned_by_host: !config.fleet_managed,
            fleet_target: record.fleet_target,
        }
    }

    /// Asks abra for the recipe's available versions and caches them.
    async fn refresh_versions(&self, reconciler: &Reconciler, recipe: &RecipeName) -> Option<Vec<CoopVersion>> {
        match reconciler.abra().available_versions(recipe).await {
            Ok(versions) => {
                self.versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(recipe.clone(), (Instant::now(), versions.clone()));
                Some(versions)
            }
            Err(error) => {
                tracing::warn!(%recipe, error = %ccfleet_proto::error_chain(&error), "cannot read the recipe's available versions");
                // Not asked again before the refresh interval either.
                self.versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(recipe.clone())
                    .or_insert_with(|| (Instant::now(), Vec::new()))
                    .0 = Instant::now();
                None
            }
        }
    }

    /// Refreshes the versions of recipes not asked about for a while.
    async fn refresh_stale_versions(&self, reconciler: &Reconciler) {
        let mut recipes: Vec<RecipeName> = reconciler.apps().iter().map(|app| app.recipe.clone()).collect();
        recipes.sort();
        recipes.dedup();
        for recipe in recipes {
            let stale = self
                .versions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&recipe)
                .is_none_or(|(asked, _)| asked.elapsed() >= VERSIONS_REFRESH);
            if stale {
                self.refresh_versions(reconciler, &recipe).await;
            }
        }
    }

    /// Reads Docker; pushes an inventory event when the picture changed.
    async fn observe(&self) {
        let reconciler = self.reconciler.borrow().clone();
        let observed = reconciler.observe_all().await;
        let inventory = pb::Inventory {
            apps: observed
                .iter()
                .map(|app| to_wire(app, &self.extras(&reconciler, app)))
                .collect(),
        };
        *self.observations.lock().unwrap_or_else(|p| p.into_inner()) = observed;
        if *self.pushed_inventory.lock().unwrap_or_else(|p| p.into_inner()) == inventory {
            return;
        }
        self.inventory.send_replace(inventory.clone());
        // Remembered only once stored, so a failed write is retried at the
        // next observation instead of being forgotten.
        if self.push(Body::Inventory(pb::InventoryUpdate {
            inventory: Some(inventory.clone()),
        })) {
            *self.pushed_inventory.lock().unwrap_or_else(|p| p.into_inner()) = inventory;
        }
    }

    fn declared(&self, domain: &str) -> Result<AppConfig, String> {
        let reconciler = self.reconciler.borrow().clone();
        reconciler
            .apps()
            .iter()
            .find(|app| app.domain.as_str() == domain)
            .cloned()
            .ok_or_else(|| format!("{domain:?} is not an app declared in {}", self.config_path.display()))
    }

    fn status(&self) -> serde_json::Value {
        let reconciler = self.reconciler.borrow().clone();
        let observations = self.observations.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let outbox = &self.outbox;
        serde_json::json!({
            "host_id": self.host_id,
            "server": *self.link_status.borrow(),
            "outbox": {"last_seq": outbox.last_seq(), "pending": outbox.pending_count().unwrap_or(0)},
            "snapshots_dir": reconciler.upgrader().snapshots_root(),
            "alerts_dir": reconciler.upgrader().settings().alerts_dir,
            "apps": reconciler.apps().iter().map(|app| {
                let observed = observations.iter().find(|o| o.domain == app.domain);
                let record = reconciler.journal().app(&app.domain).unwrap_or_default();
                let extras = observed.map(|observed| self.extras(&reconciler, observed)).unwrap_or_default();
                serde_json::json!({
                    "domain": app.domain,
                    "recipe": app.recipe,
                    "declared_version": app.version.to_string(),
                    "observed": observed,
                    "fleet_managed": app.fleet_managed,
                    "available_version": extras.available_version,
                    "available_newest": extras.available_newest,
                    "last_good": record.last_good,
                    "fleet_target": record.fleet_target,
                    "held_back": record.rolled_back,
                    "blocked_by": record.blocked_by,
                    "alert": crate::alerts::read(&reconciler.upgrader().settings().alerts_dir, app.domain.as_str()),
                    "snapshots": reconciler.upgrader().snapshot_dirs(&app.domain),
                })
            }).collect::<Vec<_>>(),
        })
    }
}

fn outcome_lines(results: &[(Domain, Result<ReconcileOutcome, ReconcileError>)]) -> Vec<AppOutcome> {
    results
        .iter()
        .map(|(domain, result)| match result {
            Ok(outcome) => AppOutcome {
                domain: domain.to_string(),
                ok: true,
                message: outcome.summary(),
            },
            Err(error) => AppOutcome {
                domain: domain.to_string(),
                ok: false,
                message: error.to_string(),
            },
        })
        .collect()
}

struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    ccfleet_proto::tls::install_crypto_provider();
    let config = load_config(config_path)?;
    let docker = Docker::connect().await.context("cannot reach the Docker Engine")?;
    let facts = host_facts(&config, &docker).await;
    crate::abra::Abra::new(&config.abra).log_version().await;
    let journal = Journal::open(&config.agent.state_dir, &config.abra.dir).context("cannot open the journal")?;
    let outbox = Outbox::open(&config.agent.state_dir.join("outbox")).context("cannot open the outbox")?;
    let outbox = Arc::new(outbox);
    let outbox_changed = Arc::new(Notify::new());
    let events = Arc::new(OutboxEvents {
        outbox: outbox.clone(),
        changed: outbox_changed.clone(),
    });
    let reconciler = Arc::new(Reconciler::from_config_with_events(&config, docker.clone(), events));
    let unfinished = journal.unfinished().context("cannot read the journal")?;
    let (reconciler_sender, _) = watch::channel(reconciler.clone());
    let (inventory_sender, inventory_receiver) = watch::channel(pb::Inventory::default());
    let (status_sender, status_receiver) = watch::channel(LinkStatus::default());
    let (shutdown_sender, shutdown) = watch::channel(false);

    let agent = Arc::new(Agent {
        config_path: config_path.to_owned(),
        reconciler: reconciler_sender,
        outbox: outbox.clone(),
        outbox_changed: outbox_changed.clone(),
        inventory: inventory_sender,
        observations: Mutex::new(Vec::new()),
        link_status: status_receiver,
        observe_now: Notify::new(),
        last_failure: Mutex::new(HashMap::new()),
        periodic_reconcile_running: AtomicBool::new(false),
        host_id: config.host.id.to_string(),
        started_with: config.clone(),
        in_flight: Arc::default(),
        versions: Mutex::new(HashMap::new()),
        pushed_inventory: Mutex::new(pb::Inventory::default()),
    });

    // Operations a previous run left unfinished are finished before anything
    // else may touch their apps: their locks are taken now, before the first
    // reconcile can ask for them.
    if !unfinished.is_empty() {
        // Once per app: its lock is not re-entrant, and one app may have
        // several unfinished operations (resumed in order under one guard).
        let guards = lock_each_app_once(&unfinished, |domain| reconciler.lock_app(domain)).await;
        let agent = agent.clone();
        let in_flight = agent.in_flight.enter();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let _guards = guards;
            let reconciler = agent.reconciler.borrow().clone();
            for record in unfinished {
                let app = reconciler
                    .apps()
                    .iter()
                    .find(|app| app.domain == record.domain)
                    .cloned();
                match reconciler.upgrader().resume(&reconciler, app.as_ref(), record).await {
                    Ok(report) => {
                        tracing::info!(operation = %report.operation_id, outcome = %report.outcome, reason = %report.reason, "resumed operation finished")
                    }
                    Err(error) => tracing::error!(%error, "cannot resume an unfinished operation"),
                }
            }
            agent.observe_now.notify_one();
        });
    }

    // Observe once before connecting, so the first Hello carries the truth.
    agent.observe().await;

    let (commands, mut incoming_commands) = mpsc::channel::<pb::Command>(64);
    let link = Link {
        server_url: config.server.url.clone(),
        host_id: config.host.id.clone(),
        state_dir: config.agent.state_dir.clone(),
        join_token_file: config.server.join_token_file.clone(),
        facts,
        outbox,
        outbox_changed,
        inventory: inventory_receiver,
        status: status_sender,
        commands,
    };
    let link_task = tokio::spawn(link.run(shutdown.clone()));

    let listener = control::bind(&config.agent.control_socket).with_context(|| {
        format!(
            "cannot create the control socket {}",
            config.agent.control_socket.display()
        )
    })?;
    let (requests, mut incoming) = mpsc::channel(16);
    let control_task = tokio::spawn(control::serve(listener, requests));
    control::notify_ready();

    // Docker is observed off the loop below: a slow engine delays only the
    // inventory, never signals, commands or control requests.
    let observe_task = {
        let agent = agent.clone();
        let interval = config.agent.observe_interval;
        tokio::spawn(async move {
            let mut observe_timer = tokio::time::interval(interval);
            observe_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = observe_timer.tick() => {
                        let reconciler = agent.reconciler.borrow().clone();
                        agent.refresh_stale_versions(&reconciler).await;
                    }
                    _ = agent.observe_now.notified() => {}
                }
                agent.observe().await;
            }
        })
    };

    let mut reconcile_timer = tokio::time::interval(config.agent.reconcile_interval);
    reconcile_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(host = %config.host.id, apps = config.apps.len(), "agent running");

    loop {
        tokio::select! {
            _ = reconcile_timer.tick() => {
                if !agent.periodic_reconcile_running.swap(true, Ordering::SeqCst) {
                    let agent = agent.clone();
                    let in_flight = agent.in_flight.enter();
                    tokio::spawn(async move {
                        let _in_flight = in_flight;
                        // Cleared on drop, so that even a panicking reconcile
                        // does not stop the periodic ones for good.
                        let _running = ClearOnDrop(&agent.periodic_reconcile_running);
                        agent.reconcile(None).await;
                    });
                }
            }
            Some((request, answer)) = incoming.recv() => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    let progress = answer.progress();
                    let _ = answer.send(handle_request(&agent, request, progress).await);
                });
            }
            Some(command) = incoming_commands.recv() => {
                let agent = agent.clone();
                let in_flight = agent.in_flight.enter();
                tokio::spawn(async move {
                    let _in_flight = in_flight;
                    handle_command(&agent, command).await;
                });
            }
            _ = hangup.recv() => reload(&agent),
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("agent shutting down");
    control_task.abort();
    observe_task.abort();
    let _ = std::fs::remove_file(&config.agent.control_socket);
    // An operation in flight (abra mid-deploy, a health gate) is given time
    // to finish; after the bound, the process exits and its journal record,
    // written before each step, makes the next start finish it ("interrupted").
    let stop_timeout = config.agent.stop_timeout;
    let waited = tokio::time::timeout(stop_timeout, async {
        loop {
            let changed = agent.in_flight.changed.notified();
            if agent.in_flight.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            changed.await;
        }
    })
    .await;
    if waited.is_err() {
        let unfinished: Vec<String> = reconciler
            .journal()
            .unfinished()
            .map(|records| {
                records
                    .into_iter()
                    .map(|record| format!("{} ({})", record.id, record.phase.name()))
                    .collect()
            })
            .unwrap_or_default();
        tracing::warn!(
            ?unfinished,
            "operations still in flight after {}: they are recorded as interrupted and finished at the next start",
            humantime::format_duration(stop_timeout)
        );
    }
    // The link goes last, so that results of operations finished above still
    // reach the server when it is connected.
    let _ = shutdown_sender.send(true);
    let _ = link_task.await;
    Ok(())
}

/// Re-reads the configuration; keeps the old one if the new one is invalid.
fn reload(agent: &Arc<Agent>) {
    let reconciler = agent.reconciler.borrow().clone();
    match load_config(&agent.config_path) {
        Ok(config) => {
            tracing::info!(apps = config.apps.len(), "configuration reloaded");
            let fixed = &agent.started_with;
            if config.server != fixed.server || config.host != fixed.host || config.agent != fixed.agent {
                tracing::warn!(
                    "the [server], [host] and [agent] sections changed: they take effect when the agent restarts; \
                     the apps and [abra] take effect now"
                );
            }
            // The new reconciler shares the old one's locks, so a reconcile
            // still running on the old one never overlaps a new one.
            agent
                .reconciler
                .send_replace(Arc::new(reconciler.reconfigured(&config)));
            let agent = agent.clone();
            tokio::spawn(async move {
                agent.reconcile(None).await;
            });
        }
        Err(error) => tracing::error!("configuration not reloaded, keeping the running one: {error:#}"),
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often the picture of a waiting client's apps is looked at; what is
/// sent, and when, is `progress::Reporter`'s decision.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// While the returned guard lives, looks every few seconds at each app of
/// `domains`: the operation and phase under way (from the journal) and
/// Docker's latest picture (from the observation task, so no extra Docker
/// calls). A line goes to `progress` when that changed, and a short "still
/// waiting" line at most every 30 s otherwise (`progress::Reporter`); while
/// the health gate runs, its limit is the app's health timeout.
fn report_progress(
    agent: &Arc<Agent>,
    domains: Vec<Domain>,
    progress: Option<mpsc::Sender<String>>,
) -> Option<AbortOnDrop> {
    let progress = progress?;
    let agent = agent.clone();
    Some(AbortOnDrop(tokio::spawn(async move {
        let started = Instant::now();
        let mut reporters: HashMap<Domain, progress::Reporter> = HashMap::new();
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let reconciler = agent.reconciler.borrow().clone();
            let unfinished = reconciler.journal().unfinished().unwrap_or_default();
            for domain in &domains {
                let record = unfinished.iter().rev().find(|record| &record.domain == domain);
                let doing = record.map_or_else(
                    || "reconciling".to_owned(),
                    |record| format!("upgrade {} -> {}: {}", record.from, record.to, record.phase.name()),
                );
                let gate_limit = record
                    .filter(|record| matches!(record.phase, Phase::Verifying | Phase::RollbackVerifying))
                    .and_then(|_| reconciler.apps().iter().find(|app| &app.domain == domain))
                    .map(|app| app.health.timeout);
                let observed = agent
                    .observations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|observed| &observed.domain == domain)
                    .map(ObservedApp::summary)
                    .unwrap_or_else(|| "not observed yet".into());
                let picture = progress::Picture { doing, observed };
                let reporter = reporters.entry(domain.clone()).or_default();
                let Some(line) = reporter.observe(domain.as_str(), picture, started.elapsed(), gate_limit) else {
                    continue;
                };
                if progress.send(line).await.is_err() {
                    return;
                }
            }
        }
    })))
}

async fn handle_request(agent: &Arc<Agent>, request: Request, progress: Option<mpsc::Sender<String>>) -> Response {
    match request {
        Request::Status => Response {
            ok: true,
            message: String::new(),
            apps: vec![],
            status: Some(agent.status()),
            operation: None,
        },
        Request::Apply { app, wait, .. } => {
            let app = match app.as_deref().map(|domain| agent.declared(domain)).transpose() {
                Ok(app) => app,
                Err(message) => return Response::error(message),
            };
            let domains = match &app {
                Some(app) => vec![app.domain.clone()],
                None => agent
                    .reconciler
                    .borrow()
                    .apps()
                    .iter()
                    .map(|app| app.domain.clone())
                    .collect(),
            };
            let _progress = wait
                .then(|| report_progress(agent, domains, progress.clone()))
                .flatten();
            let in_flight = agent.in_flight.enter();
            if !wait {
                let agent = agent.clone();
                tokio::spawn(async move {
                    let _in_flight = in_flight;
                    agent.reconcile(app.as_ref()).await;
                });
                return Response::ok("reconcile started");
            }
            let results = agent.reconcile(app.as_ref()).await;
            drop(in_flight);
            let apps = outcome_lines(&results);
            let failed = apps.iter().filter(|outcome| !outcome.ok).count();
            Response {
                ok: failed == 0,
                message: if failed == 0 {
                    "converged".into()
                } else {
                    format!("{failed} app(s) failed")
                },
                apps,
                status: None,
                operation: None,
            }
        }
        Request::Update { app } => {
            let app = match agent.declared(&app) {
                Ok(app) => app,
                Err(message) => return Response::error(message),
            };
            let _in_flight = agent.in_flight.enter();
            update(agent, &app).await
        }
        Request::Upgrade {
            app,
            to,
            major,
            wait,
            operation_id,
            ..
        } => {
            if let Some(Err(reason)) = operation_id.as_deref().map(upgrade::check_operation_id) {
                return Response::error(format!("--operation-id: {reason}"));
            }
            let app = match agent.declared(&app) {
                Ok(app) => app,
                Err(message) => return Response::error(message),
            };
            let _progress = wait
                .then(|| report_progress(agent, vec![app.domain.clone()], progress.clone()))
                .flatten();
            let reconciler = agent.reconciler.borrow().clone();
            let target = match to.as_deref().map(str::parse::<CoopVersion>).transpose() {
                Err(error) => return Response::error(format!("--to: {error}")),
                Ok(Some(target)) => target,
                Ok(None) => {
                    let Some(available) = agent.refresh_versions(&reconciler, &app.recipe).await else {
                        return Response::error(format!(
                            "cannot read the available versions of {}: give the version with --to",
                            app.recipe
                        ));
                    };
                    let running = reconciler.observe(&app).await.observed_version;
                    match upgrade::machine::newest_target(
                        &available,
                        &app.version,
                        running.as_ref(),
                        major || app.allow_major,
                    ) {
                        Some(target) => target,
                        None => {
                            return Response::ok(format!(
                                "{}: nothing newer than {} is available{}",
                                app.domain,
                                running.as_ref().unwrap_or(&app.version),
                                if major || app.allow_major {
                                    ""
                                } else {
                                    " in its major (--major to look further)"
                                }
                            ))
                        }
                    }
                }
            };
            let operation_id = operation_id.unwrap_or_else(upgrade::local_operation_id);
            let request = OperationRequest {
                id: operation_id.clone(),
                ask: Ask {
                    trigger: Trigger::Operator,
                    target,
                    allow_major: major,
                },
                deadline: None,
            };
            let in_flight = agent.in_flight.enter();
            if !wait {
                let agent = agent.clone();
                tokio::spawn(async move {
                    let _in_flight = in_flight;
                    if let Err(error) = run_operation(&agent, &app, &request).await {
                        tracing::error!(operation = %request.id, %error, "upgrade failed");
                    }
                });
                return Response::ok(format!("upgrade started as operation {operation_id}"));
            }
            let report = run_operation(agent, &app, &request).await;
            drop(in_flight);
            operation_response(report)
        }
    }
}

/// Runs one operation for a declared app and asks for a fresh observation.
async fn run_operation(agent: &Arc<Agent>, app: &AppConfig, request: &OperationRequest) -> Result<RunResult, String> {
    let reconciler = agent.reconciler.borrow().clone();
    let result = reconciler
        .run_operation(app, request)
        .await
        .map_err(|error| error.to_string());
    agent.observe_now.notify_one();
    result
}

fn operation_response(result: Result<RunResult, String>) -> Response {
    match result {
        Err(message) => Response::error(message),
        Ok(RunResult::LeftAlone { reason }) => Response::ok(format!("left alone: {reason}")),
        Ok(RunResult::Refused { reason }) => Response::error(format!("refused, nothing was touched: {reason}")),
        Ok(RunResult::Finished(report)) => report_response(&report),
    }
}

fn report_response(report: &OperationReport) -> Response {
    let ok = report.outcome == Outcome::Succeeded;
    let mut message = format!(
        "{}: {} {} -> {} (operation {}{})",
        report.domain,
        report.outcome,
        report.from.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
        report.to,
        report.operation_id,
        if report.replayed { ", recorded earlier" } else { "" }
    );
    if !report.reason.is_empty() {
        message.push_str(": ");
        message.push_str(&report.reason);
    }
    Response {
        ok,
        message,
        apps: vec![],
        status: None,
        operation: serde_json::to_value(report).ok(),
    }
}

/// `update DOMAIN` (the autoUpdate timer): converge, then move to the newest
/// available version of the same major (any with `allow_major`), never below
/// the declared version, through the transaction.
async fn update(agent: &Arc<Agent>, app: &AppConfig) -> Response {
    if !app.auto_update {
        return Response::error(format!(
            "{}: auto_update is off, so its scheduled update does nothing (use ccfleet-agent upgrade)",
            app.domain
        ));
    }
    let results = agent.reconcile(Some(app)).await;
    if let Some((_, Err(_))) = results.first() {
        return Response {
            ok: false,
            message: "the app could not be reconciled before its update".into(),
            apps: outcome_lines(&results),
            status: None,
            operation: None,
        };
    }
    let reconciler = agent.reconciler.borrow().clone();
    let Some(available) = agent.refresh_versions(&reconciler, &app.recipe).await else {
        return Response::error(format!("cannot read the available versions of {}", app.recipe));
    };
    let running = reconciler.observe(app).await.observed_version;
    let Some(target) = upgrade::machine::newest_target(&available, &app.version, running.as_ref(), app.allow_major)
    else {
        return Response::ok(format!(
            "{}: up to date at {}",
            app.domain,
            running.as_ref().unwrap_or(&app.version)
        ));
    };
    let request = OperationRequest {
        id: upgrade::local_operation_id(),
        ask: Ask {
            trigger: Trigger::AutoUpdate,
            target,
            allow_major: false,
        },
        deadline: None,
    };
    operation_response(run_operation(agent, app, &request).await)
}

/// A server command: the same transaction, under the server's operation id.
/// Its result travels through the outbox, once per operation id.
async fn handle_command(agent: &Arc<Agent>, command: pb::Command) {
    let id = command.operation_id.clone();
    let (domain, version, trigger, allow_major, deadline) = match command.kind {
        Some(pb::command::Kind::Upgrade(upgrade)) => (
            upgrade.domain,
            upgrade.version,
            Trigger::FleetUpgrade,
            upgrade.allow_major,
            // 0: no deadline of the rollout's own.
            (upgrade.deadline_seconds > 0).then(|| Duration::from_secs(u64::from(upgrade.deadline_seconds))),
        ),
        Some(pb::command::Kind::Rollback(rollback)) => {
            (rollback.domain, rollback.version, Trigger::FleetRollback, false, None)
        }
        None => {
            tracing::warn!(operation = %id, "a server command without a kind: ignored");
            return;
        }
    };
    let refuse = |message: String| {
        tracing::warn!(operation = %id, %message, "server command refused");
        agent.push(Body::Result(pb::OperationResult {
            operation_id: id.clone(),
            domain: domain.clone(),
            outcome: pb::OperationOutcome::Skipped as i32,
            message,
            ..Default::default()
        }));
    };
    if id.is_empty() {
        tracing::warn!("a server command without an operation id: ignored");
        return;
    }
    if let Err(reason) = upgrade::check_operation_id(&id) {
        return refuse(reason);
    }
    let parsed_domain = match domain.parse::<Domain>() {
        Ok(parsed) => parsed,
        Err(error) => return refuse(format!("invalid domain: {error}")),
    };
    let target = match version.parse::<CoopVersion>() {
        Ok(target) => target,
        Err(error) => return refuse(format!("invalid version: {error}")),
    };
    let reconciler = agent.reconciler.borrow().clone();
    let Some(app) = reconciler
        .apps()
        .iter()
        .find(|app| app.domain == parsed_domain)
        .cloned()
    else {
        if let Err(error) = reconciler
            .upgrader()
            .skip_undeclared(&id, parsed_domain, target, trigger)
        {
            tracing::error!(%error, "cannot journal a skipped command");
        }
        return;
    };
    let request = OperationRequest {
        id: id.clone(),
        ask: Ask {
            trigger,
            target,
            allow_major,
        },
        deadline,
    };
    match run_operation(agent, &app, &request).await {
        Ok(RunResult::Finished(report)) => tracing::info!(
            operation = %id,
            outcome = %report.outcome,
            replayed = report.replayed,
            reason = %report.reason,
            "server command finished"
        ),
        Ok(RunResult::LeftAlone { reason }) => {
            tracing::info!(operation = %id, %reason, "server command left the app alone")
        }
        Ok(RunResult::Refused { reason }) => tracing::warn!(operation = %id, %reason, "server command refused"),
        Err(error) => tracing::error!(operation = %id, %error, "server command failed"),
    }
}

/// Takes the lock of every app named by `records` once, in domain order
/// (a tokio mutex is not re-entrant: locking an app twice would wait forever).
async fn lock_each_app_once<'a, Guard, Lock>(
    records: &'a [crate::journal::OperationRecord],
    lock: impl Fn(&'a Domain) -> Lock,
) -> Vec<Guard>
where
    Lock: std::future::Future<Output = Guard>,
{
    let domains: std::collections::BTreeSet<&Domain> = records.iter().map(|record| &record.domain).collect();
    let mut guards = Vec::with_capacity(domains.len());
    for domain in domains {
        guards.push(lock(domain).await);
    }
    guards
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use ccfleet_proto::Domain;

    use super::lock_each_app_once;
    use crate::journal::{OperationRecord, Outcome, Phase, Trigger, FORMAT};

    fn unfinished(id: &str, domain: &str) -> OperationRecord {
        OperationRecord {
            format: FORMAT,
            id: id.into(),
            domain: domain.parse().unwrap(),
            recipe: "ghost".parse().unwrap(),
            trigger: Trigger::Declared,
            from: "1.0.0+5.0".parse().unwrap(),
            to: "1.1.0+5.1".parse().unwrap(),
            stateful: true,
            phase: Phase::Done {
                outcome: Outcome::RolledBack,
                reason: "x".into(),
            },
            failure: None,
            snapshot: None,
            snapshot_verified: false,
            started_at: 0,
            finished_at: None,
            reported: false,
        }
    }

    /// Two unfinished operations of one app (and one of another): start-up
    /// takes each app's lock once instead of waiting on itself forever.
    #[tokio::test]
    async fn two_unfinished_operations_of_one_app_lock_it_once() {
        let records = [
            unfinished("op-1", "blog.example.org"),
            unfinished("op-2", "chat.example.org"),
            unfinished("op-3", "blog.example.org"),
        ];
        let locks: HashMap<Domain, Arc<tokio::sync::Mutex<()>>> = records
            .iter()
            .map(|record| (record.domain.clone(), Arc::default()))
            .collect();
        let locked = tokio::time::timeout(
            Duration::from_secs(10),
            lock_each_app_once(&records, |domain| Arc::clone(&locks[domain]).lock_owned()),
        )
        .await
        .expect("locking the apps of the unfinished operations never finished");
        assert_eq!(locked.len(), 2);
        for lock in locks.values() {
            assert!(lock.try_lock().is_err(), "every app is locked");
        }
    }
}

//! `ccfleet-agent run`: the long-running agent. It owns the event loop that
//! sequences everything on this host: periodic and requested reconciles,
//! upgrade operations (local and from the server), the outbox, the server
//! link, the control socket, and configuration reloads on SIGHUP. Docker is
//! observed by a task of its own, so a slow engine never stalls the loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use ccfleet_proto::pb::{self};
use ccfleet_proto::{CoopVersion, Domain, RecipeName};
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{AppConfig, Config};
use crate::control::{self};
use crate::docker::Docker;
use crate::journal::Journal;
use crate::link::{Link, LinkStatus};
use crate::outbox::Outbox;
use crate::reconcile::{ObservedApp, ReconcileError, ReconcileOutcome, Reconciler};

mod alerting;
mod commands;
mod inventory;
mod report;
mod requests;

use commands::handle_command;
pub use inventory::{newest_available, to_wire, AppExtras};
use report::OutboxEvents;
use requests::handle_request;

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
    /// Whether each stateful app's stack has volumes, and at which running
    /// version Docker was asked (volumes change only with a deploy).
    volumes: Mutex<HashMap<Domain, (CoopVersion, bool)>>,
}

impl Agent {
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
    // The state directory and every snapshot in it must be the agent's own
    // and 0700 before anything is read from or written to them.
    crate::snapshot::secure_state_dir(&config.agent.state_dir).context("cannot use the state directory")?;
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
        volumes: Mutex::new(HashMap::new()),
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
                match reconciler
                    .upgrader()
                    .resume(reconciler.host(), app.as_ref(), record)
                    .await
                {
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
            unfinished = %unfinished.join(", "),
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

/// Takes the lock of every app named by `records` once, in domain order
/// (a tokio mutex is not re-entrant: locking an app twice would wait forever).
async fn lock_each_app_once<'a, Guard, Lock>(
    records: &'a [crate::upgrade::model::OperationRecord],
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
    use crate::upgrade::model::{OperationRecord, Outcome, Phase, Trigger, FORMAT};

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

//! One campaign run's effects: the real server on a fresh data directory,
//! simulated agents, rollouts started and steered through the real CLI, the
//! plan's faults injected at their times, and the history recorded for
//! `check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::agent::CampaignAgent;
use super::{Fault, History, HostKind, Operator, Plan, ShownHost, FROM, TO};
use crate::disk::SmallDisk;
use crate::server::{enroll, run_cli, TestServer};
use ccfleet_proto::pb::{self, admin_client::AdminClient};

/// The CLI on a blocking thread (agents keep running); `None` when it fails
/// (the server may be down mid-kill).
async fn cli_json(url: &str, credentials: &Path, args: &[&str]) -> Option<Value> {
    let (url, credentials) = (url.to_owned(), credentials.to_path_buf());
    let mut all = vec!["--json".to_owned()];
    all.extend(args.iter().map(|arg| arg.to_string()));
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        run_cli(&url, &credentials, &args)
    })
    .await
    .ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

fn shown(rollout: &Value) -> Vec<ShownHost> {
    let mut hosts: Vec<ShownHost> = rollout["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .map(|host| ShownHost {
                    host_id: host["host_id"].as_str().unwrap_or_default().to_owned(),
                    wave: host["wave"].as_u64().unwrap_or_default() as u32,
                    outcome: host["outcome"].as_str().unwrap_or_default().to_owned(),
                    message: host["message"].as_str().unwrap_or_default().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    hosts
}

fn ended(state: &str) -> bool {
    matches!(state, "completed" | "halted" | "aborted")
}

/// What one run did, for the report.
#[derive(Debug, Default)]
pub struct Outcome {
    pub histories: Vec<History>,
    /// Faults injected by kind (a fault aimed at an offline host is not).
    pub injected: BTreeMap<&'static str, u32>,
    /// Hosts by behaviour (healthy, failing-health, slow-health, ...).
    pub hosts: BTreeMap<&'static str, u32>,
    /// Final rollout states by name.
    pub states: BTreeMap<String, u32>,
    /// The server's log, for a failing run.
    pub log: String,
    /// The fleet could not be set up (enrolled and online) on a machine this
    /// busy: no rollout ran, so no invariant was checked.
    pub setup_failed: Option<String>,
    /// The server process's state (`/proc/PID/status`, each thread's state)
    /// when a rollout had not ended by its bound.
    pub diagnosis: Option<String>,
}

impl Outcome {
    fn setup_failed(error: anyhow::Error, server: &TestServer) -> Outcome {
        Outcome {
            setup_failed: Some(format!("{error:#}")),
            log: server.log(),
            ..Outcome::default()
        }
    }
}

/// Enrols as the real agent does, retrying while the server is unavailable
/// (a machine this busy drops a connection now and then) for up to 30 s.
async fn enroll_retrying(url: &str, token: &str, host_id: &str) -> anyhow::Result<ccfleet_proto::tls::Credential> {
    let start = Instant::now();
    loop {
        match enroll(url, token, host_id).await {
            Ok(credential) => return Ok(credential),
            Err(status) if status.code() == tonic::Code::Unavailable && start.elapsed() < Duration::from_secs(30) => {
                // The agent's enrolment backoff, not a synchronisation.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => anyhow::bail!("enrolling {host_id}: {status}"),
        }
    }
}

/// Runs `plan` with `faults` (the plan's, or a shrunk subset) in `directory`.
pub async fn run(plan: &Plan, faults: &[Fault], directory: &Path) -> anyhow::Result<Outcome> {
    let begun = Instant::now();
    let phase = |name: &str| {
        if std::env::var_os("CAMPAIGN_PHASES").is_some() {
            eprintln!("seed {} {name} at {:.2} s", plan.seed, begun.elapsed().as_secs_f64());
        }
    };
    let data: PathBuf = directory.join("data");
    // A run that fills the disk gets a small disk of its own under the store.
    let disk = faults
        .iter()
        .any(|fault| matches!(fault, Fault::DiskFull { .. }))
        // 64 MiB: room for a run's store, little enough to fill at once.
        .then(|| blocking(|| SmallDisk::mount(&data, "size=64m")))
        .transpose()?;
    let mut server = blocking(|| TestServer::start(&data, &[]));
    let port = server.address.port();
    let (url, credentials) = (server.url(), server.admin_credential_path());
    let token = blocking(|| server.create_token(&["--uses", &plan.hosts.len().to_string(), "--ttl", "1h"]));
    let mut agents = Vec::new();
    for host in &plan.hosts {
        let credential = match enroll_retrying(&url, &token, &host.id).await {
            Ok(credential) => credential,
            Err(error) => return Ok(Outcome::setup_failed(error, &server)),
        };
        agents.push(CampaignAgent::start(
            url.clone(),
            credential,
            host,
            FROM,
            plan.derive_target,
        ));
    }
    phase("enrolled");
    let mut admin = Admin::new(&url, &server.admin_credential())?;
    if let Err(error) = wait_online(&mut admin, agents.len()).await {
        return Ok(Outcome::setup_failed(error, &server));
    }
    phase("online");
    // Offline hosts were seen once (their inventory is known), then vanish.
    let mut live: Vec<Option<CampaignAgent>> = Vec::new();
    for (agent, host) in agents.into_iter().zip(&plan.hosts) {
        if host.kind == HostKind::Offline {
            agent.stop().await;
            live.push(None);
        } else {
            live.push(Some(agent));
        }
    }
    let online = plan.hosts.iter().filter(|host| host.kind != HostKind::Offline).count();
    if let Err(error) = wait_online(&mut admin, online).await {
        return Ok(Outcome::setup_failed(error, &server));
    }

    let mut rollouts: Vec<(String, String)> = Vec::new();
    for recipe in super::RECIPES {
        if plan.online(recipe) == 0 {
            continue;
        }
        let (canary, batch, max_failures) = (
            plan.canary.to_string(),
            plan.batch.to_string(),
            plan.max_failures.to_string(),
        );
        let deadline = format!("{}s", plan.host_deadline.as_secs());
        let mut args = vec!["upgrade", recipe];
        if !plan.derive_target {
            args.extend(["--to", TO]);
        }
        args.extend([
            "--canary",
            &canary,
            "--batch",
            &batch,
            "--max-failures",
            &max_failures,
            "--host-deadline",
            &deadline,
        ]);
        if plan.pause_after_canary {
            args.push("--pause-after-canary");
        }
        if plan.rollback_on_halt {
            args.push("--rollback-on-halt");
        }
        let selector = plan.site.map(|site| format!("{}={site}", super::SITE_LABEL));
        if let Some(selector) = &selector {
            args.extend(["--hosts", selector]);
        }
        let started = cli_json(&url, &credentials, &args)
            .await
            .ok_or_else(|| anyhow::anyhow!("ccfleet upgrade {recipe} failed"))?;
        rollouts.push((recipe.to_owned(), started["id"].as_str().unwrap_or_default().to_owned()));
    }

    // The runner watches through the Admin API (cheaper than a CLI process
    // per poll); what it checks at the end it reads with the CLI.
    let mut admin = Admin::new(&url, &server.admin_credential())?;
    let mut outcome = Outcome::default();
    for host in &plan.hosts {
        *outcome.hosts.entry(host.kind.name()).or_default() += 1;
    }
    phase("started");
    let start = Instant::now();
    let bound = rollouts
        .iter()
        .map(|(recipe, _)| plan.bound(recipe))
        .max()
        .unwrap_or_default();
    let mut pending: Vec<Fault> = faults.to_vec();
    // By time: the loop injects the first pending fault once it is due, so a
    // later fault ahead of it would hold back every fault behind it (sorting
    // by kind did: every kill went first and a pause due before a kill struck
    // the server started after it).
    pending.sort_by_key(|fault| (fault.at_ms(), *fault));
    let mut aborted = false;
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    // While the disk is full: when it is freed, and whether the server is
    // down (killed, or stopped on its own) until then. Only a server that
    // stopped after a fill is started again by the runner: one that dies
    // otherwise stays down, and the run's invariants say so.
    let mut full_until: Option<Instant> = None;
    let mut filled = false;
    let mut down = false;
    while start.elapsed() < bound {
        let now = start.elapsed().as_millis() as u64;
        if full_until.is_some_and(|until| Instant::now() >= until) {
            full_until = None;
            if let Some(disk) = &disk {
                disk.free();
            }
        }
        if full_until.is_none() && (down || (filled && server.wait_exit(Duration::ZERO).is_some())) {
            if !down {
                // It stopped on its own: the full disk's doing.
                *outcome.injected.entry("server-stopped-on-full-disk").or_default() += 1;
            }
            server = blocking(|| TestServer::start_on(&data, port, &[]));
            (down, filled) = (false, false);
        }
        while pending.first().is_some_and(|fault| fault.at_ms() <= now) {
            let fault = pending.remove(0);
            let injected = match fault {
                Fault::ServerKill { .. } => {
                    blocking(|| server.kill_in_place());
                    // On a full disk the start would fail: it waits for the room.
                    if full_until.is_some() {
                        down = true;
                    } else {
                        server = blocking(|| TestServer::start_on(&data, port, &[]));
                    }
                    true
                }
                Fault::DiskFull { for_ms, .. } => match &disk {
                    Some(disk) if full_until.is_none() => {
                        blocking(|| disk.fill());
                        filled = true;
                        full_until = Some(Instant::now() + Duration::from_millis(for_ms));
                        true
                    }
                    _ => false,
                },
                Fault::ServerPause { for_ms, .. } => {
                    pause(server.pid(), Duration::from_millis(for_ms));
                    true
                }
                Fault::AgentRestart { host, .. } => live
                    .get(host)
                    .and_then(Option::as_ref)
                    .map(CampaignAgent::crash_and_restart)
                    .is_some(),
                Fault::Link { host, fault, .. } => live
                    .get(host)
                    .and_then(Option::as_ref)
                    .map(|agent| agent.inject(fault))
                    .is_some(),
            };
            if injected {
                *outcome.injected.entry(fault.kind()).or_default() += 1;
            }
        }
        if let Operator::Abort { at_ms } = plan.operator {
            if !aborted && now >= at_ms {
                for (_, id) in &rollouts {
                    // an already-ended rollout refuses; that is fine
                    let _ = cli_json(&url, &credentials, &["rollout", "abort", id]).await;
                }
                aborted = true;
            }
        }
        for (_, id) in &rollouts {
            if states.get(id).is_some_and(|state| ended(state)) {
                continue;
            }
            if let Some(rollout) = admin.rollout(id).await {
                let state = state_name(rollout.state);
                if state == "paused" && rollout.current_wave == 0 {
                    let _ = cli_json(&url, &credentials, &["rollout", "promote", id]).await;
                }
                states.insert(id.clone(), state.to_owned());
            }
        }
        if rollouts.len() == states.values().filter(|state| ended(state)).count() {
            break;
        }
        // The poll's pace; every wait ends on the observed state or the bound.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if rollouts.len() != states.values().filter(|state| ended(state)).count() {
        // For the report: whether the server was running, stopped or gone
        // when the bound passed.
        outcome.diagnosis = Some(process_state(server.pid()));
    }
    // The disk has room again and the server runs, for what follows.
    if let Some(disk) = &disk {
        disk.free();
    }
    if down {
        server = blocking(|| TestServer::start_on(&data, port, &[]));
        filled = false;
    }
    let mut after_fill = AfterFill {
        data: data.clone(),
        port,
        exposed: filled,
        restarts: 0,
    };
    after_fill.keep_up(&mut server);
    // Rollbacks on halt run after the halt: give them the host deadline to land.
    phase("ended");
    let settle = Instant::now();
    while settle.elapsed() < plan.host_deadline * 2 + Duration::from_secs(10) {
        after_fill.keep_up(&mut server);
        let mut settled = true;
        for (_, id) in &rollouts {
            let Some(rollout) = admin.rollout(id).await else {
                settled = false;
                continue;
            };
            // An abort lets hosts in flight finish or reach their host deadline.
            settled &= !rollout.hosts.iter().any(|host| {
                matches!(
                    pb::HostOutcome::try_from(host.outcome),
                    Ok(pb::HostOutcome::Dispatched | pb::HostOutcome::Upgrading)
                )
            });
            let halted_with_rollback = rollout.state == pb::RolloutState::Halted as i32 && plan.rollback_on_halt;
            for host in &rollout.hosts {
                let index = plan.hosts.iter().position(|plan| plan.id == host.host_id);
                let Some(Some(agent)) = index.and_then(|index| live.get(index)) else {
                    continue;
                };
                // Every host it moved comes back, also one whose result came
                // after its deadline (shown timed out, rolled back all the
                // same): the rollback may still be on its way to the agent
                // (seed 10289).
                if halted_with_rollback {
                    settled &= agent.version() == FROM;
                }
                // A rollback the agent ran is shown once its result is in.
                let rolled_back = agent
                    .executed()
                    .iter()
                    .any(|operation| operation.starts_with(&format!("{id}.")) && operation.ends_with(".rollback"));
                if rolled_back {
                    settled &= host.outcome == pb::HostOutcome::RolledBack as i32;
                }
            }
        }
        if settled {
            break;
        }
        // The poll's pace; the loop ends on the observed state or its bound.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Once every agent has reported everything, `versions` lists what each host runs.
    phase("settled");
    let (model, listed) = settle_versions(
        &mut admin,
        &url,
        &credentials,
        plan,
        &live,
        &mut server,
        &mut after_fill,
    )
    .await;
    phase("listed");
    for (recipe, id) in &rollouts {
        let mut history = History {
            recipe: recipe.clone(),
            ..History::default()
        };
        let mut shown_now = cli_json(&url, &credentials, &["rollout", "show", id]).await;
        if shown_now.is_none() {
            after_fill.keep_up(&mut server);
            shown_now = cli_json(&url, &credentials, &["rollout", "show", id]).await;
        }
        if let Some(rollout) = shown_now {
            let state = rollout["state"].as_str().unwrap_or_default().to_owned();
            *outcome.states.entry(state.clone()).or_default() += 1;
            if ended(&state) {
                history.state = Some(state);
            }
            history.target = rollout["target_version"].as_str().unwrap_or_default().to_owned();
            history.shown = shown(&rollout);
        }
        for (host, agent) in plan.hosts.iter().zip(&live) {
            if host.recipe != recipe {
                continue;
            }
            history.versions.insert(host.id.clone(), model[&host.id].clone());
            history.listed.insert(host.id.clone(), listed.get(&host.id).cloned());
            let Some(agent) = agent else {
                continue;
            };
            history.received.insert(
                host.id.clone(),
                agent
                    .received()
                    .into_iter()
                    .map(|received| format!("{} {}", received.kind, received.operation_id))
                    .collect(),
            );
            history.upgrade_ids.insert(
                host.id.clone(),
                agent
                    .received()
                    .into_iter()
                    .filter(|received| received.kind == "upgrade")
                    .map(|received| received.operation_id)
                    .collect(),
            );
            history.executed.insert(host.id.clone(), agent.executed());
            history.acknowledged.insert(host.id.clone(), agent.acknowledged());
        }
        outcome.histories.push(history);
    }
    if after_fill.restarts > 0 {
        *outcome.injected.entry("server-stopped-on-full-disk").or_default() += after_fill.restarts;
    }
    phase("recorded");
    // The store always reopens, and shows what it showed.
    let server = blocking(|| {
        server.kill();
        TestServer::start_on(&data, port, &[])
    });
    for ((_, id), history) in rollouts.iter().zip(outcome.histories.iter_mut()) {
        if let Some(rollout) = cli_json(&url, &credentials, &["rollout", "show", id]).await {
            history.shown_after_reopen = Some((
                rollout["state"].as_str().unwrap_or_default().to_owned(),
                shown(&rollout),
            ));
        }
    }
    outcome.log = server.log();
    phase("reopened");
    for agent in live.into_iter().flatten() {
        agent.stop().await;
    }
    drop(server);
    drop(disk);
    Ok(outcome)
}

/// A server that lived through a full disk stops at its next write, room or
/// not (sled refuses every write after a failed one), which may come after
/// the rollouts ended (seed 11810): from then on the runner starts it again
/// whenever it finds it stopped, as the service manager would.
struct AfterFill {
    data: PathBuf,
    port: u16,
    /// The running server lived through a fill.
    exposed: bool,
    restarts: u32,
}

impl AfterFill {
    fn keep_up(&mut self, server: &mut TestServer) {
        if self.exposed && server.wait_exit(Duration::ZERO).is_some() {
            *server = blocking(|| TestServer::start_on(&self.data, self.port, &[]));
            self.exposed = false;
            self.restarts += 1;
        }
    }
}

async fn wait_online(admin: &mut Admin, expected: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if admin.online().await == Some(expected) {
            return Ok(());
        }
        // The poll's pace; the loop ends on the observed count.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{expected} hosts never became online together")
}

/// The runner's own Admin client: one mTLS channel that reconnects after
/// server restarts, each call bounded (a paused server answers nothing).
struct Admin {
    client: AdminClient<tonic::transport::Channel>,
}

impl Admin {
    fn new(url: &str, credential: &ccfleet_proto::tls::Credential) -> anyhow::Result<Admin> {
        let channel = ccfleet_proto::tls::mtls_endpoint(url, credential)?.connect_lazy();
        Ok(Admin {
            client: AdminClient::new(channel).max_decoding_message_size(ccfleet_proto::MAX_ADMIN_RESPONSE_BYTES),
        })
    }

    async fn bounded<T>(
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Option<T> {
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(response)) => Some(response.into_inner()),
            _ => None,
        }
    }

    async fn rollout(&mut self, id: &str) -> Option<pb::Rollout> {
        Self::bounded(self.client.get_rollout(pb::GetRolloutRequest { id: id.to_owned() })).await
    }

    /// How many hosts are online (the fleet fits one page).
    async fn online(&mut self) -> Option<usize> {
        let hosts = Self::bounded(self.client.list_hosts(pb::ListHostsRequest::default())).await?;
        Some(
            hosts
                .hosts
                .iter()
                .filter(|host| host.status == pb::HostStatus::Online as i32)
                .count(),
        )
    }

    /// Host -> the version `recipe`'s listing shows it at.
    async fn versions(&mut self, recipe: &str) -> Option<BTreeMap<String, String>> {
        let request = pb::RecipeVersionsRequest {
            recipe: recipe.to_owned(),
            ..Default::default()
        };
        let answer = Self::bounded(self.client.recipe_versions(request)).await?;
        if !answer.next_page_token.is_empty() {
            return None;
        }
        Some(
            answer
                .versions
                .iter()
                .flat_map(|group| {
                    group
                        .apps
                        .iter()
                        .map(|app| (app.host_id.clone(), group.version.clone()))
                })
                .collect(),
        )
    }
}

/// The process's state and each thread's, from `/proc`.
fn process_state(pid: u32) -> String {
    let state = |path: std::path::PathBuf| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("State:"))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "State: gone".to_owned())
    };
    let mut threads: BTreeMap<String, u32> = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            *threads.entry(state(task.path().join("status"))).or_default() += 1;
        }
    }
    format!(
        "server pid {pid}: {}; threads {threads:?}",
        state(format!("/proc/{pid}/status").into())
    )
}

fn state_name(state: i32) -> &'static str {
    match pb::RolloutState::try_from(state) {
        Ok(pb::RolloutState::Running) => "running",
        Ok(pb::RolloutState::Paused) => "paused",
        Ok(pb::RolloutState::Completed) => "completed",
        Ok(pb::RolloutState::Halted) => "halted",
        Ok(pb::RolloutState::Aborted) => "aborted",
        _ => "unknown",
    }
}

/// Runs a blocking call (a server start waits for its first line, a kill
/// for the exit, a CLI call for its answer, a fill for the disk) without
/// holding a runtime worker: the runner shares two workers among its jobs
/// and every simulated agent, and a held worker starves their reconnects and
/// timers.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

/// SIGSTOPs the server `pid` now and SIGCONTs it after `duration`, from a
/// task of its own (the runner's own CLI calls wait while it is stopped).
fn pause(pid: u32, duration: Duration) {
    let signal = move |name: &'static str| {
        std::process::Command::new("kill")
            .args([name, &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
    };
    let stopped = blocking(|| signal("-STOP"));
    if !stopped.as_ref().is_ok_and(|status| status.success()) {
        eprintln!("fault-campaign: kill -STOP {pid} failed: {stopped:?}");
    }
    tokio::spawn(async move {
        // The pause's length is the fault itself. A kill meanwhile leaves no
        // process to continue, which is fine.
        tokio::time::sleep(duration).await;
        let _ = tokio::task::spawn_blocking(move || signal("-CONT")).await;
    });
}

/// Waits (up to 20 s) until every agent is settled and the server lists
/// each host at the version it runs, then reads `ccfleet versions <recipe>
/// --json` for each recipe; returns the runner's model (host -> version) and
/// that listing (host -> version).
async fn settle_versions(
    admin: &mut Admin,
    url: &str,
    credentials: &Path,
    plan: &Plan,
    live: &[Option<CampaignAgent>],
    server: &mut TestServer,
    after_fill: &mut AfterFill,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let recipes: Vec<&str> = super::RECIPES
        .into_iter()
        .filter(|recipe| plan.hosts.iter().any(|host| host.recipe == *recipe))
        .collect();
    let model = || -> BTreeMap<String, String> {
        plan.hosts
            .iter()
            .zip(live)
            .map(|(host, agent)| {
                (
                    host.id.clone(),
                    agent.as_ref().map_or(FROM.to_owned(), CampaignAgent::version),
                )
            })
            .collect()
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        after_fill.keep_up(server);
        let settled = live.iter().flatten().all(CampaignAgent::settled);
        let mut listed = BTreeMap::new();
        for recipe in &recipes {
            listed.extend(admin.versions(recipe).await.unwrap_or_default());
        }
        if settled && listed == model() {
            break;
        }
        // The poll's pace; the loop ends on the observed listing or the deadline.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut listed = BTreeMap::new();
    for recipe in recipes {
        let mut versions = cli_json(url, credentials, &["versions", recipe]).await;
        if versions.is_none() {
            after_fill.keep_up(server);
            versions = cli_json(url, credentials, &["versions", recipe]).await;
        }
        let Some(versions) = versions else {
            continue;
        };
        for group in versions["versions"].as_array().into_iter().flatten() {
            let version = group["version"].as_str().unwrap_or("unknown");
            for app in group["apps"].as_array().into_iter().flatten() {
                if let Some(host) = app["host_id"].as_str() {
                    listed.insert(host.to_owned(), version.to_owned());
                }
            }
        }
    }
    (model(), listed)
}

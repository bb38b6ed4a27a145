//! Control socket requests (`apply`, `update`, `upgrade`, `status`) and the
//! progress lines a waiting client hears.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccfleet_proto::{CoopVersion, Domain};
use tokio::sync::mpsc;

use super::Agent;
use crate::config::AppConfig;
use crate::control::{AgentStatus, AppOutcome, AppStatus, OutboxStatus, Request, Response};
use crate::reconcile::{ObservedApp, ReconcileError, ReconcileOutcome};
use crate::upgrade::model::{Outcome, Trigger};
use crate::upgrade::{self, Ask, OperationReport, OperationRequest, RunResult};

impl Agent {
    pub(super) fn declared(&self, domain: &str) -> Result<AppConfig, String> {
        let reconciler = self.reconciler.borrow().clone();
        reconciler
            .apps()
            .iter()
            .find(|app| app.domain.as_str() == domain)
            .cloned()
            .ok_or_else(|| format!("{domain:?} is not an app declared in {}", self.config_path.display()))
    }

    pub(super) fn status(&self) -> AgentStatus {
        let reconciler = self.reconciler.borrow().clone();
        let observations = self.observations.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let upgrader = reconciler.upgrader();
        let alerts_dir = upgrader.settings().alerts_dir.clone();
        let apps = reconciler
            .apps()
            .iter()
            .map(|app| {
                let observed = observations.iter().find(|o| o.domain == app.domain).cloned();
                let record = reconciler.journal().app(&app.domain).unwrap_or_default();
                let extras = observed
                    .as_ref()
                    .map(|observed| self.extras(&reconciler, observed))
                    .unwrap_or_default();
                AppStatus {
                    domain: app.domain.clone(),
                    recipe: app.recipe.clone(),
                    declared_version: app.version.clone(),
                    observed,
                    fleet_managed: app.fleet_managed,
                    available_version: extras.available_version,
                    available_newest: extras.available_newest,
                    last_good: record.last_good,
                    fleet_target: record.fleet_target,
                    held_back: record.rolled_back,
                    blocked_by: record.blocked_by,
                    alert: crate::alerts::read(&alerts_dir, app.domain.as_str()),
                    snapshots: upgrader.snapshot_dirs(&app.domain),
                }
            })
            .collect();
        AgentStatus {
            host_id: self.host_id.clone(),
            server: self.link_status.borrow().clone(),
            outbox: OutboxStatus {
                last_seq: self.outbox.last_seq(),
                pending: self.outbox.pending_count().unwrap_or(0),
            },
            snapshots_dir: upgrader.snapshots_root().to_owned(),
            alerts_dir,
            apps,
        }
    }
}

pub(super) fn outcome_lines(results: &[(Domain, Result<ReconcileOutcome, ReconcileError>)]) -> Vec<AppOutcome> {
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

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a waiting client hears how its apps stand.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// While the returned guard lives, sends `progress` a line per app of
/// `domains` every few seconds: the operation and phase under way (from the
/// journal), Docker's latest picture (from the observation task, so no
/// extra Docker calls), and the time spent.
fn report_progress(
    agent: &Arc<Agent>,
    domains: Vec<Domain>,
    progress: Option<mpsc::Sender<String>>,
) -> Option<AbortOnDrop> {
    let progress = progress?;
    let agent = agent.clone();
    Some(AbortOnDrop(tokio::spawn(async move {
        let started = Instant::now();
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let reconciler = agent.reconciler.borrow().clone();
            let unfinished = reconciler.journal().unfinished().unwrap_or_default();
            for domain in &domains {
                let doing = unfinished
                    .iter()
                    .rev()
                    .find(|record| &record.domain == domain)
                    .map_or_else(
                        || "reconciling".to_owned(),
                        |record| format!("upgrade {} -> {}: {}", record.from, record.to, record.phase.name()),
                    );
                let observed = agent
                    .observations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|observed| &observed.domain == domain)
                    .map(ObservedApp::summary)
                    .unwrap_or_else(|| "not observed yet".into());
                let line = format!(
                    "{domain}: {doing}; {observed} ({} elapsed)",
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
                );
                if progress.send(line).await.is_err() {
                    return;
                }
            }
        }
    })))
}

pub(super) async fn handle_request(
    agent: &Arc<Agent>,
    request: Request,
    progress: Option<mpsc::Sender<String>>,
) -> Response {
    match request {
        Request::Status => Response {
            ok: true,
            message: String::new(),
            apps: vec![],
            status: Some(Box::new(agent.status())),
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
pub(super) async fn run_operation(
    agent: &Arc<Agent>,
    app: &AppConfig,
    request: &OperationRequest,
) -> Result<RunResult, String> {
    let reconciler = agent.reconciler.borrow().clone();
    let result = reconciler
        .run_operation(app, request)
        .await
        .map_err(|error| error.to_string());
    agent.observe_now.notify_one();
    result
}

pub(super) fn operation_response(result: Result<RunResult, String>) -> Response {
    match result {
        Err(message) => Response::error(message),
        Ok(RunResult::LeftAlone { reason }) => Response::ok(format!("left alone: {reason}")),
        Ok(RunResult::Finished(report)) => report_response(&report),
    }
}

pub(super) fn report_response(report: &OperationReport) -> Response {
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
pub(super) async fn update(agent: &Arc<Agent>, app: &AppConfig) -> Response {
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

//! The dashboard's routes: each fetches what it shows from the Admin API,
//! turns it into `model` values and renders an askama template
//! (`cli/templates/dashboard/`). Rollout actions go through a confirmation
//! page and a form carrying the CSRF token.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use ccfleet_proto::pb;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::model::{self, Bar, Matrix, Progress};
use super::security::same_secret;
use super::Dashboard;

type Shared = State<Arc<Dashboard>>;

pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/matrix", get(matrix))
        .route("/hosts/{host}/apps/{domain}", get(app_detail))
        .route("/rollouts", get(rollouts))
        .route("/rollouts/{id}", get(rollout_detail))
        .route("/rollouts/{id}/events", get(rollout_events))
        .route("/rollouts/{id}/do/{action}", get(confirm_action).post(perform_action))
        .route("/alerts", get(alerts))
        .route("/audit", get(audit))
        .route("/assets/dashboard.css", get(stylesheet))
        .route("/assets/dashboard.js", get(script))
        .fallback(not_found)
        .with_state(dashboard)
}

const STYLESHEET: &str = include_str!("assets/dashboard.css");
const SCRIPT: &str = include_str!("assets/dashboard.js");

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLESHEET).into_response()
}

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

/// The parts of the page around the content.
pub struct Frame {
    pub title: String,
    pub nav: &'static str,
    pub server: String,
    pub rendered_at: String,
}

fn frame(dashboard: &Dashboard, title: impl Into<String>, nav: &'static str) -> Frame {
    Frame {
        title: title.into(),
        nav,
        server: dashboard.server_url.clone(),
        rendered_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    }
}

/// A page that could not be made: the server refused or could not be reached.
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl From<tonic::Status> for PageError {
    fn from(status: tonic::Status) -> PageError {
        let http = match status.code() {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        PageError {
            status: http,
            message: format!("the ccfleet server answered: {}", status.message()),
        }
    }
}

impl From<askama::Error> for PageError {
    fn from(error: askama::Error) -> PageError {
        PageError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("cannot render the page: {error}"),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/message.html")]
struct MessagePage {
    title: String,
    message: String,
}

fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
    let page = MessagePage {
        title: title.to_owned(),
        message: message.to_owned(),
    };
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => (status, message.to_owned()).into_response(),
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        message_page(self.status, "cannot show this page", &self.message)
    }
}

/// The answer to a request the guard refused.
pub fn refusal(status: u16, reason: &str) -> Response {
    message_page(
        StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
        "refused",
        reason,
    )
}

async fn not_found() -> Response {
    message_page(StatusCode::NOT_FOUND, "not found", "no such page")
}

fn page<T: Template>(template: T) -> Result<Response, PageError> {
    Ok(Html(template.render()?).into_response())
}

#[derive(Debug, Deserialize, Default)]
struct PageQuery {
    /// The gRPC listing's page token.
    #[serde(default)]
    page: String,
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    recipe: Option<String>,
}

/// Page sizes the dashboard asks for: what the listing allows, 1 to 10,000.
fn page_size(requested: Option<u32>, default: u32) -> u32 {
    requested.unwrap_or(default).clamp(1, 10_000)
}

async fn all_hosts(dashboard: &Dashboard) -> Result<Vec<pb::Host>, PageError> {
    let mut client = dashboard.client.clone();
    let mut hosts = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListHostsRequest {
            page_size: 10_000,
            page_token,
        };
        let response = client.list_hosts(request).await?.into_inner();
        hosts.extend(response.hosts);
        page_token = response.next_page_token;
        if page_token.is_empty() {
            return Ok(hosts);
        }
    }
}

async fn all_apps(dashboard: &Dashboard, recipe: &str) -> Result<Vec<pb::HostApp>, PageError> {
    let mut client = dashboard.client.clone();
    let mut apps = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListAppsRequest {
            recipe: recipe.to_owned(),
            page_size: 10_000,
            page_token,
        };
        let response = client.list_apps(request).await?.into_inner();
        apps.extend(response.apps);
        page_token = response.next_page_token;
        if page_token.is_empty() {
            return Ok(apps);
        }
    }
}

async fn open_alerts(dashboard: &Dashboard, host: &str) -> Result<Vec<pb::Alert>, PageError> {
    let request = pb::ListAlertsRequest {
        host_id: host.to_owned(),
    };
    Ok(dashboard.client.clone().list_alerts(request).await?.into_inner().alerts)
}

// --- overview -----------------------------------------------------------------

pub struct HostRow {
    pub host_id: String,
    pub status: &'static str,
    pub last_seen: String,
    pub last_seen_ago: String,
    pub labels: Vec<String>,
    pub app_count: u32,
    pub agent_version: String,
    pub open_alerts: usize,
}

pub struct RecipeChart {
    pub recipe: String,
    pub apps: usize,
    pub bars: Vec<Bar>,
    pub height: u32,
}

#[derive(Template)]
#[template(path = "dashboard/overview.html")]
struct OverviewPage {
    frame: Frame,
    hosts_total: usize,
    online: usize,
    offline: usize,
    apps_total: usize,
    alerts_total: usize,
    critical: usize,
    rows: Vec<HostRow>,
    next_page: Option<String>,
    charts: Vec<RecipeChart>,
    bar_area: u32,
    bar_height: u32,
}

async fn overview(State(dashboard): Shared, Query(query): Query<PageQuery>) -> Result<Response, PageError> {
    let now = SystemTime::now();
    let every_host = all_hosts(&dashboard).await?;
    let online = every_host
        .iter()
        .filter(|host| model::host_status(host.status) == "online")
        .count();
    let alerts = open_alerts(&dashboard, "").await?;
    let mut alerts_per_host: HashMap<&str, usize> = HashMap::new();
    for alert in &alerts {
        *alerts_per_host.entry(alert.host_id.as_str()).or_default() += 1;
    }
    let response = dashboard
        .client
        .clone()
        .list_hosts(pb::ListHostsRequest {
            page_size: page_size(query.page_size, 100),
            page_token: query.page.clone(),
        })
        .await?
        .into_inner();
    let rows = response
        .hosts
        .iter()
        .map(|host| {
            let facts = host.facts.clone().unwrap_or_default();
            // As `ccfleet hosts`: the host's own labels, overridden by the admin's token labels.
            let labels: BTreeMap<String, String> = facts.labels.into_iter().chain(host.labels.clone()).collect();
            HostRow {
                host_id: host.host_id.clone(),
                status: model::host_status(host.status),
                last_seen: model::time(host.last_seen.as_ref()).unwrap_or_else(|| "never".into()),
                last_seen_ago: host
                    .last_seen
                    .as_ref()
                    .map(|seen| model::ago(model::system_time(seen), now))
                    .unwrap_or_default(),
                labels: labels.iter().map(|(key, value)| format!("{key}={value}")).collect(),
                app_count: host.app_count,
                agent_version: host.agent_version.clone(),
                open_alerts: alerts_per_host.get(host.host_id.as_str()).copied().unwrap_or(0),
            }
        })
        .collect();
    let apps = all_apps(&dashboard, "").await?;
    let mut per_recipe: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for host_app in &apps {
        let Some(app) = &host_app.app else { continue };
        let version = if app.observed_version.is_empty() {
            "unknown".to_owned()
        } else {
            app.observed_version.clone()
        };
        *per_recipe
            .entry(app.recipe.clone())
            .or_default()
            .entry(version)
            .or_default() += 1;
    }
    let charts = per_recipe
        .into_iter()
        .map(|(recipe, versions)| {
            let mut counts: Vec<(String, usize)> = versions.into_iter().collect();
            counts.sort_by(|(a, _), (b, _)| version_order(b, a));
            let bars = model::version_bars(&counts);
            RecipeChart {
                recipe,
                apps: counts.iter().map(|(_, count)| count).sum(),
                height: bars.len() as u32 * (model::BAR_HEIGHT + 6),
                bars,
            }
        })
        .collect();
    page(OverviewPage {
        frame: frame(&dashboard, "Fleet overview", "overview"),
        hosts_total: every_host.len(),
        online,
        offline: every_host.len() - online,
        apps_total: apps.len(),
        alerts_total: alerts.len(),
        critical: alerts
            .iter()
            .filter(|alert| model::severity(alert.severity) == "critical")
            .count(),
        rows,
        next_page: (!response.next_page_token.is_empty()).then(|| model::query_value(&response.next_page_token)),
        charts,
        bar_area: model::BAR_AREA,
        bar_height: model::BAR_HEIGHT,
    })
}

/// Newest first as the server orders versions: recipe semver (`1.4.0+6.43.0`
/// by its first part), "unknown" last, text order between unparsable ones.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |text: &str| {
        let core = text.split('+').next().unwrap_or(text);
        let parts: Vec<u64> = core.split('.').map_while(|part| part.parse().ok()).collect();
        (text != "unknown", parts)
    };
    parse(a).cmp(&parse(b)).then_with(|| a.cmp(b))
}

// --- version matrix -------------------------------------------------------------

#[derive(Template)]
#[template(path = "dashboard/matrix.html")]
pub struct MatrixPage {
    frame: Frame,
    matrix: Matrix,
    recipe: String,
    next_page: Option<String>,
    page_size: u32,
}

/// Renders the matrix page of one page of apps: what the benchmark measures.
pub fn render_matrix(
    server: &str,
    apps: &[pb::HostApp],
    alerts: &[pb::Alert],
    next_page_token: &str,
    page_size: u32,
) -> Result<String, askama::Error> {
    let outcomes: BTreeMap<(String, String), &'static str> = alerts
        .iter()
        .filter_map(|alert| {
            Some((
                (alert.host_id.clone(), alert.domain.clone()),
                model::operation_outcome(alert.outcome)?,
            ))
        })
        .collect();
    MatrixPage {
        frame: Frame {
            title: "Version matrix".into(),
            nav: "matrix",
            server: server.to_owned(),
            rendered_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        },
        matrix: model::matrix(apps, &outcomes),
        recipe: String::new(),
        next_page: (!next_page_token.is_empty()).then(|| model::query_value(next_page_token)),
        page_size,
    }
    .render()
}

async fn matrix(State(dashboard): Shared, Query(query): Query<PageQuery>) -> Result<Response, PageError> {
    let recipe = query.recipe.clone().unwrap_or_default();
    let size = page_size(query.page_size, 1000);
    let response = dashboard
        .client
        .clone()
        .list_apps(pb::ListAppsRequest {
            recipe: recipe.clone(),
            page_size: size,
            page_token: query.page.clone(),
        })
        .await?
        .into_inner();
    let alerts = open_alerts(&dashboard, "").await?;
    let outcomes: BTreeMap<(String, String), &'static str> = alerts
        .iter()
        .filter_map(|alert| {
            Some((
                (alert.host_id.clone(), alert.domain.clone()),
                model::operation_outcome(alert.outcome)?,
            ))
        })
        .collect();
    page(MatrixPage {
        frame: frame(&dashboard, "Version matrix", "matrix"),
        matrix: model::matrix(&response.apps, &outcomes),
        recipe: model::query_value(&recipe),
        next_page: (!response.next_page_token.is_empty()).then(|| model::query_value(&response.next_page_token)),
        page_size: size,
    })
}

// --- app detail -------------------------------------------------------------------

pub struct OperationRow {
    pub updated_at: String,
    pub operation_id: String,
    pub phase: &'static str,
    pub outcome: &'static str,
    pub from_version: String,
    pub to_version: String,
    pub message: String,
}

pub struct AlertRow {
    pub raised_at: String,
    pub host_id: String,
    pub domain: String,
    pub recipe: String,
    pub severity: &'static str,
    pub outcome: &'static str,
    pub from_version: String,
    pub to_version: String,
    pub reason: String,
    pub operation_id: String,
    pub snapshot_path: String,
}

fn alert_row(alert: &pb::Alert) -> AlertRow {
    AlertRow {
        raised_at: model::time(alert.raised_at.as_ref()).unwrap_or_else(|| "-".into()),
        host_id: alert.host_id.clone(),
        domain: alert.domain.clone(),
        recipe: alert.recipe.clone(),
        severity: model::severity(alert.severity),
        outcome: model::operation_outcome(alert.outcome).unwrap_or("-"),
        from_version: or_dash(&alert.from_version),
        to_version: or_dash(&alert.to_version),
        reason: alert.message.clone(),
        operation_id: alert.operation_id.clone(),
        snapshot_path: alert.snapshot_path.clone(),
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

#[derive(Template)]
#[template(path = "dashboard/app.html")]
struct AppPage {
    frame: Frame,
    host_id: String,
    host_status: &'static str,
    domain: String,
    recipe: String,
    version: String,
    declared: String,
    available: String,
    available_newest: String,
    state: &'static str,
    cell_state: &'static str,
    replicas: String,
    drift: Vec<String>,
    pinned: bool,
    chaos: bool,
    fleet_target: String,
    observed_at: String,
    alert: Option<AlertRow>,
    operations: Vec<OperationRow>,
}

async fn app_detail(
    State(dashboard): Shared,
    Path((host, domain)): Path<(String, String)>,
) -> Result<Response, PageError> {
    // Apps are listed by host id, then domain: the walk stops past the host.
    let mut client = dashboard.client.clone();
    let mut page_token = String::new();
    let found = 'walk: loop {
        let response = client
            .list_apps(pb::ListAppsRequest {
                recipe: String::new(),
                page_size: 10_000,
                page_token,
            })
            .await?
            .into_inner();
        for host_app in response.apps {
            if host_app.host_id > host {
                break 'walk None;
            }
            if host_app.host_id == host && host_app.app.as_ref().is_some_and(|app| app.domain == domain) {
                break 'walk Some(host_app);
            }
        }
        page_token = response.next_page_token;
        if page_token.is_empty() {
            break None;
        }
    };
    let Some(host_app) = found else {
        return Err(PageError {
            status: StatusCode::NOT_FOUND,
            message: format!("no app {domain} on host {host}"),
        });
    };
    let app = host_app.app.clone().unwrap_or_default();
    let alert = open_alerts(&dashboard, &host)
        .await?
        .into_iter()
        .find(|alert| alert.domain == domain);
    let operations = client
        .list_operations(pb::ListOperationsRequest {
            host_id: host.clone(),
            domain: domain.clone(),
            limit: 20,
        })
        .await?
        .into_inner()
        .operations;
    let state = model::app_state(app.state);
    let declared_differs = !app.declared_version.is_empty() && app.declared_version != app.observed_version;
    let cell_state = model::cell_state(
        state,
        !app.drift.is_empty(),
        declared_differs,
        alert.as_ref().and_then(|alert| model::operation_outcome(alert.outcome)),
    );
    page(AppPage {
        frame: frame(&dashboard, format!("{domain} on {host}"), "matrix"),
        host_status: model::host_status(host_app.host_status),
        host_id: host,
        domain,
        recipe: app.recipe.clone(),
        version: or_dash(&app.observed_version),
        declared: or_dash(&app.declared_version),
        available: or_dash(&app.available_version),
        available_newest: or_dash(&app.available_newest),
        state,
        cell_state: cell_state.name(),
        replicas: format!("{}/{}", app.running_replicas, app.desired_replicas),
        drift: app.drift.clone(),
        pinned: app.pinned_by_host,
        chaos: app.chaos,
        fleet_target: or_dash(&app.fleet_target),
        observed_at: model::time(host_app.observed_at.as_ref()).unwrap_or_else(|| "-".into()),
        alert: alert.as_ref().map(alert_row),
        operations: operations
            .iter()
            .map(|operation| OperationRow {
                updated_at: model::time(operation.updated_at.as_ref()).unwrap_or_else(|| "-".into()),
                operation_id: operation.operation_id.clone(),
                phase: model::operation_phase(operation.phase),
                outcome: model::operation_outcome(operation.outcome).unwrap_or("running"),
                from_version: or_dash(&operation.from_version),
                to_version: or_dash(&operation.to_version),
                message: operation.message.clone(),
            })
            .collect(),
    })
}

// --- rollouts ---------------------------------------------------------------------

pub struct RolloutRow {
    pub id: String,
    pub recipe: String,
    pub target_version: String,
    pub state: &'static str,
    pub done: usize,
    pub failed: usize,
    pub total: usize,
    pub created_by: String,
    pub created_at: String,
}

fn counts(rollout: &pb::Rollout) -> (usize, usize, usize) {
    let mut done = 0;
    let mut failed = 0;
    for host in &rollout.hosts {
        match model::progress_of(model::host_outcome(host.outcome)) {
            Progress::Done => done += 1,
            Progress::Failed => failed += 1,
            Progress::Pending => {}
        }
    }
    (done, failed, rollout.hosts.len())
}

#[derive(Template)]
#[template(path = "dashboard/rollouts.html")]
struct RolloutsPage {
    frame: Frame,
    rows: Vec<RolloutRow>,
}

async fn rollouts(State(dashboard): Shared) -> Result<Response, PageError> {
    let response = dashboard
        .client
        .clone()
        .list_rollouts(pb::ListRolloutsRequest::default())
        .await?
        .into_inner();
    let rows = response
        .rollouts
        .iter()
        .map(|rollout| {
            let (done, failed, total) = counts(rollout);
            RolloutRow {
                id: rollout.id.clone(),
                recipe: rollout.recipe.clone(),
                target_version: rollout.target_version.clone(),
                state: model::rollout_state(rollout.state),
                done,
                failed,
                total,
                created_by: rollout.created_by.clone(),
                created_at: model::time(rollout.created_at.as_ref()).unwrap_or_else(|| "-".into()),
            }
        })
        .collect();
    page(RolloutsPage {
        frame: frame(&dashboard, "Rollouts", "rollouts"),
        rows,
    })
}

pub struct RolloutHostRow {
    pub host_id: String,
    pub domain: String,
    pub outcome: &'static str,
    pub progress: &'static str,
    pub from_version: String,
    pub to_version: String,
    pub message: String,
    pub updated_at: String,
}

pub struct Wave {
    pub number: u32,
    pub name: String,
    pub current: bool,
    pub hosts: Vec<RolloutHostRow>,
}

/// The live part of a rollout's page, rendered again for every update the
/// watch stream brings.
#[derive(Template)]
#[template(path = "dashboard/rollout_body.html")]
pub struct RolloutBody {
    id: String,
    recipe: String,
    target_version: String,
    state: &'static str,
    sentence: String,
    reason: String,
    created_by: String,
    created_at: String,
    updated_at: String,
    done: usize,
    failed: usize,
    pending: usize,
    total: usize,
    settled: usize,
    canary: String,
    batch: String,
    budget: String,
    pause_after_canary: bool,
    wave_interval: u32,
    host_deadline: u32,
    progress_deadline: u32,
    rollback_on_halt: bool,
    actions: Vec<(&'static str, &'static str)>,
    waves: Vec<Wave>,
    lines: [String; 3],
    chart_width: u32,
    chart_height: u32,
    chart_span: String,
}

fn quantity(quantity: Option<&pb::HostQuantity>) -> String {
    match quantity.and_then(|quantity| quantity.quantity) {
        Some(pb::host_quantity::Quantity::Count(count)) => format!("{count} host(s)"),
        Some(pb::host_quantity::Quantity::Percent(percent)) => format!("{percent}% of hosts"),
        None => "-".into(),
    }
}

/// The rollout's state in one plain sentence.
pub fn state_sentence(state: &str, current_wave: u32, waves: u32, pause_after_canary: bool, reason: &str) -> String {
    let wave = if current_wave == 0 {
        "the canary wave".to_owned()
    } else {
        format!("wave {} of {}", current_wave + 1, waves)
    };
    match state {
        "running" if current_wave == 0 && pause_after_canary => {
            format!("Running {wave}; it stops after this wave until someone promotes it.")
        }
        "running" => format!("Running {wave}."),
        "paused" => format!(
            "Paused at {wave}: no host is sent an upgrade until the rollout is resumed (hosts in flight finish). \
             Promote opens the canary gate."
        ),
        "completed" => "Completed: every host has its result.".into(),
        "halted" => format!("Halted: {reason}"),
        "aborted" => format!("Aborted: {reason}"),
        other => format!("State {other}."),
    }
}

pub fn rollout_body(rollout: &pb::Rollout, now: SystemTime) -> RolloutBody {
    let strategy = rollout.strategy.unwrap_or_default();
    let state = model::rollout_state(rollout.state);
    let (done, failed, total) = counts(rollout);
    let wave_count = rollout.hosts.iter().map(|host| host.wave + 1).max().unwrap_or(0);
    let mut waves: Vec<Wave> = (0..wave_count)
        .map(|number| Wave {
            number,
            name: if number == 0 {
                "Wave 1 (canary)".into()
            } else {
                format!("Wave {}", number + 1)
            },
            current: number == rollout.current_wave && (state == "running" || state == "paused"),
            hosts: Vec::new(),
        })
        .collect();
    let mut finished = Vec::new();
    for host in &rollout.hosts {
        let outcome = model::host_outcome(host.outcome);
        let progress = model::progress_of(outcome);
        let updated = host.updated_at.as_ref().map(model::system_time).unwrap_or(now);
        finished.push((progress, updated));
        waves[host.wave as usize].hosts.push(RolloutHostRow {
            host_id: host.host_id.clone(),
            domain: host.domain.clone(),
            outcome,
            progress: match progress {
                Progress::Done => "done",
                Progress::Failed => "failed",
                Progress::Pending => "pending",
            },
            from_version: or_dash(&host.from_version),
            to_version: or_dash(&host.to_version),
            message: host.message.clone(),
            updated_at: model::time(host.updated_at.as_ref()).unwrap_or_else(|| "-".into()),
        });
    }
    let created = rollout.created_at.as_ref().map(model::system_time).unwrap_or(now);
    let end = if state == "running" || state == "paused" {
        now
    } else {
        rollout.updated_at.as_ref().map(model::system_time).unwrap_or(now)
    };
    let series = model::progress_series(created, &finished, end);
    let span = series.last().map(|point| point.at).unwrap_or(0);
    let actions: Vec<(&'static str, &'static str)> = match state {
        "running" => vec![("pause", "Pause"), ("promote", "Promote"), ("abort", "Abort")],
        "paused" => vec![("resume", "Resume"), ("promote", "Promote"), ("abort", "Abort")],
        _ => Vec::new(),
    };
    let budget = match (strategy.max_failures, strategy.max_failure_ratio) {
        (0, ratio) if ratio <= 0.0 => "no failure allowed".to_owned(),
        (count, ratio) if ratio > 0.0 => {
            format!("halts after {count} failed host(s) or {:.0}% of hosts", ratio * 100.0)
        }
        (count, _) => format!("halts after {count} failed host(s)"),
    };
    RolloutBody {
        id: rollout.id.clone(),
        recipe: rollout.recipe.clone(),
        target_version: rollout.target_version.clone(),
        state,
        sentence: state_sentence(
            state,
            rollout.current_wave,
            wave_count,
            strategy.pause_after_canary,
            &rollout.reason,
        ),
        reason: rollout.reason.clone(),
        created_by: rollout.created_by.clone(),
        created_at: model::time(rollout.created_at.as_ref()).unwrap_or_else(|| "-".into()),
        updated_at: model::time(rollout.updated_at.as_ref()).unwrap_or_else(|| "-".into()),
        done,
        failed,
        pending: total - done - failed,
        total,
        settled: done + failed,
        canary: quantity(strategy.canary.as_ref()),
        batch: quantity(strategy.batch.as_ref()),
        budget,
        pause_after_canary: strategy.pause_after_canary,
        wave_interval: strategy.wave_interval_seconds,
        host_deadline: strategy.host_deadline_seconds,
        progress_deadline: strategy.progress_deadline_seconds,
        rollback_on_halt: strategy.rollback_on_halt,
        actions,
        waves,
        lines: model::progress_lines(&series),
        chart_width: model::CHART_WIDTH,
        chart_height: model::CHART_HEIGHT,
        chart_span: humantime::format_duration(std::time::Duration::from_secs(span)).to_string(),
    }
}

#[derive(Template)]
#[template(path = "dashboard/rollout.html")]
struct RolloutPage {
    frame: Frame,
    id: String,
    body: String,
}

async fn rollout_detail(State(dashboard): Shared, Path(id): Path<String>) -> Result<Response, PageError> {
    let rollout = dashboard
        .client
        .clone()
        .get_rollout(pb::GetRolloutRequest { id: id.clone() })
        .await?
        .into_inner();
    let body = rollout_body(&rollout, SystemTime::now()).render()?;
    page(RolloutPage {
        frame: frame(&dashboard, format!("Rollout {id}"), "rollouts"),
        id,
        body,
    })
}

/// Server-sent events for one rollout: the rendered live part, every time
/// the server's watch stream brings a new state; `end` when the stream ends.
async fn rollout_events(State(dashboard): Shared, Path(id): Path<String>) -> Result<Response, PageError> {
    let mut stream = dashboard
        .client
        .clone()
        .watch_rollout(pb::GetRolloutRequest { id })
        .await?
        .into_inner();
    let (sender, receiver) = mpsc::channel(4);
    let mut stopping = dashboard.stopping.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = async { stopping.wait_for(|stopping| *stopping).await.is_ok() } => break,
                message = stream.message() => match message {
                    Ok(Some(rollout)) => match rollout_body(&rollout, SystemTime::now()).render() {
                        Ok(html) => Event::default().event("rollout").data(html),
                        Err(error) => Event::default().event("failure").data(format!("cannot render the rollout: {error}")),
                    },
                    Ok(None) => {
                        let _ = sender.send(Ok(Event::default().event("end").data("the rollout's watch ended"))).await;
                        break;
                    }
                    Err(status) => {
                        let _ = sender
                            .send(Ok(Event::default().event("failure").data(format!("the watch failed: {}", status.message()))))
                            .await;
                        break;
                    }
                },
            };
            if sender.send(Ok(event)).await.is_err() {
                break;
            }
        }
    });
    let events: ReceiverStream<Result<Event, Infallible>> = ReceiverStream::new(receiver);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

// --- actions ------------------------------------------------------------------------

fn action_label(action: &str) -> Option<&'static str> {
    match action {
        "pause" => Some("Pause"),
        "resume" => Some("Resume"),
        "promote" => Some("Promote"),
        "abort" => Some("Abort"),
        _ => None,
    }
}

fn action_explanation(action: &str) -> &'static str {
    match action {
        "pause" => "No host is sent an upgrade until the rollout is resumed; hosts in flight finish.",
        "resume" => "Dispatching continues where it stopped.",
        "promote" => "Opens the canary gate and skips the rest of a wait between waves.",
        _ => "Ends the rollout for good: hosts in flight finish, nothing else is sent. It cannot be restarted.",
    }
}

#[derive(Template)]
#[template(path = "dashboard/confirm.html")]
struct ConfirmPage {
    frame: Frame,
    id: String,
    recipe: String,
    target_version: String,
    state: &'static str,
    action: String,
    label: &'static str,
    explanation: &'static str,
    csrf: String,
}

async fn confirm_action(
    State(dashboard): Shared,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let Some(label) = action_label(&action) else {
        return Err(unknown_action(&action));
    };
    let rollout = dashboard
        .client
        .clone()
        .get_rollout(pb::GetRolloutRequest { id: id.clone() })
        .await?
        .into_inner();
    page(ConfirmPage {
        frame: frame(&dashboard, format!("{label} rollout {id}?"), "rollouts"),
        id,
        recipe: rollout.recipe,
        target_version: rollout.target_version,
        state: model::rollout_state(rollout.state),
        explanation: action_explanation(&action),
        action,
        label,
        csrf: dashboard.secrets.csrf.clone(),
    })
}

fn unknown_action(action: &str) -> PageError {
    PageError {
        status: StatusCode::NOT_FOUND,
        message: format!("unknown action {action:?}: pause, resume, promote or abort"),
    }
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

async fn perform_action(
    State(dashboard): Shared,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, PageError> {
    if !same_secret(&form.csrf, &dashboard.secrets.csrf) {
        return Err(PageError {
            status: StatusCode::FORBIDDEN,
            message: "missing or wrong CSRF token: submit the action from the dashboard's confirmation page".into(),
        });
    }
    if form.reason.chars().count() > 500 {
        return Err(PageError {
            status: StatusCode::BAD_REQUEST,
            message: "reason too long: at most 500 characters".into(),
        });
    }
    let reason = if form.reason.trim().is_empty() {
        "from the dashboard".to_owned()
    } else {
        form.reason.trim().to_owned()
    };
    let request = pb::RolloutActionRequest { id: id.clone(), reason };
    let mut client = dashboard.client.clone();
    match action.as_str() {
        "pause" => client.pause_rollout(request).await?,
        "resume" => client.resume_rollout(request).await?,
        "promote" => client.promote_rollout(request).await?,
        "abort" => client.abort_rollout(request).await?,
        _ => return Err(unknown_action(&action)),
    };
    Ok(Redirect::to(&format!("/rollouts/{}", model::query_value(&id))).into_response())
}

// --- alerts and audit ---------------------------------------------------------------------

#[derive(Template)]
#[template(path = "dashboard/alerts.html")]
struct AlertsPage {
    frame: Frame,
    rows: Vec<AlertRow>,
}

async fn alerts(State(dashboard): Shared) -> Result<Response, PageError> {
    let alerts = open_alerts(&dashboard, "").await?;
    page(AlertsPage {
        frame: frame(&dashboard, "Alerts", "alerts"),
        rows: alerts.iter().map(alert_row).collect(),
    })
}

pub struct AuditRow {
    pub at: String,
    pub who: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Template)]
#[template(path = "dashboard/audit.html")]
struct AuditPage {
    frame: Frame,
    rows: Vec<AuditRow>,
    limit: u32,
    more: u32,
}

async fn audit(State(dashboard): Shared, Query(query): Query<AuditQuery>) -> Result<Response, PageError> {
    let limit = query.limit.unwrap_or(200).clamp(1, 10_000);
    let response = dashboard
        .client
        .clone()
        .list_audit(pb::ListAuditRequest { since: None, limit })
        .await?
        .into_inner();
    let rows: Vec<AuditRow> = response
        .entries
        .iter()
        .map(|entry| AuditRow {
            at: model::time(entry.at.as_ref()).unwrap_or_else(|| "-".into()),
            who: entry.who.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            detail: entry.detail.clone(),
        })
        .collect();
    page(AuditPage {
        frame: frame(&dashboard, "Audit log", "audit"),
        more: if rows.len() as u32 >= limit {
            (limit * 4).min(10_000)
        } else {
            0
        },
        rows,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_newest_first_with_unknown_last() {
        let mut versions = vec!["unknown", "1.10.0+2", "1.9.0+3", "2.0.0+1", "1.9.0+2"];
        versions.sort_by(|a, b| version_order(b, a));
        assert_eq!(versions, ["2.0.0+1", "1.10.0+2", "1.9.0+3", "1.9.0+2", "unknown"]);
    }

    #[test]
    fn rollout_states_read_plainly() {
        let cases = [
            (
                "running",
                0,
                3,
                true,
                "",
                "Running the canary wave; it stops after this wave until someone promotes it.",
            ),
            ("running", 1, 3, false, "", "Running wave 2 of 3."),
            ("halted", 2, 3, false, "2 hosts failed", "Halted: 2 hosts failed"),
            ("completed", 2, 3, false, "", "Completed: every host has its result."),
        ];
        for (state, wave, waves, gate, reason, expect) in cases {
            assert_eq!(state_sentence(state, wave, waves, gate, reason), expect);
        }
        assert!(state_sentence("paused", 1, 3, false, "").starts_with("Paused at wave 2 of 3"));
    }

    #[test]
    fn the_live_part_counts_hosts_and_offers_the_actions_of_its_state() {
        let host = |name: &str, wave: u32, outcome: pb::HostOutcome| pb::RolloutHost {
            host_id: name.into(),
            domain: format!("app.{name}"),
            wave,
            outcome: outcome as i32,
            ..Default::default()
        };
        let mut rollout = pb::Rollout {
            id: "r1".into(),
            recipe: "ghost".into(),
            state: pb::RolloutState::Paused as i32,
            hosts: vec![
                host("a", 0, pb::HostOutcome::Succeeded),
                host("b", 1, pb::HostOutcome::Failed),
                host("c", 1, pb::HostOutcome::Pending),
            ],
            current_wave: 1,
            ..Default::default()
        };
        let body = rollout_body(&rollout, SystemTime::now());
        assert_eq!((body.done, body.failed, body.pending, body.total), (1, 1, 1, 3));
        let actions: Vec<&str> = body.actions.iter().map(|(action, _)| *action).collect();
        assert_eq!(actions, ["resume", "promote", "abort"]);
        assert_eq!(body.waves.len(), 2);
        assert!(body.waves[1].current);
        let html = body.render().unwrap();
        assert!(html.contains("/rollouts/r1/do/resume"), "{html}");
        rollout.state = pb::RolloutState::Completed as i32;
        assert!(rollout_body(&rollout, SystemTime::now()).actions.is_empty());
    }
}

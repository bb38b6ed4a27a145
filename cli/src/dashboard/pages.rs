//! The dashboard's routes: each fetches what it shows from the Admin API,
//! turns it into `model` values and renders an askama template
//! (`cli/templates/dashboard/`). The rollout pages are in `rollouts`, an
//! app's, the alerts and the audit log in `records`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ccfleet_proto::pb;
use serde::Deserialize;

use super::frame::{frame, message_page, open_alerts, page, Frame, PageError};
use super::model::{self, Bar, Matrix};
use super::{records, rollouts, Dashboard};

type Shared = State<Arc<Dashboard>>;

pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/matrix", get(matrix))
        .route("/hosts/{host}/apps/{domain}", get(records::app_detail))
        .route("/rollouts", get(rollouts::list))
        .route("/rollouts/{id}", get(rollouts::detail))
        .route("/rollouts/{id}/events", get(rollouts::events))
        .route(
            "/rollouts/{id}/do/{action}",
            get(rollouts::confirm_action).post(rollouts::perform_action),
        )
        .route("/alerts", get(records::alerts))
        .route("/audit", get(records::audit))
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

async fn not_found() -> Response {
    message_page(StatusCode::NOT_FOUND, "not found", "no such page")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_newest_first_with_unknown_last() {
        let mut versions = vec!["unknown", "1.10.0+2", "1.9.0+3", "2.0.0+1", "1.9.0+2"];
        versions.sort_by(|a, b| version_order(b, a));
        assert_eq!(versions, ["2.0.0+1", "1.10.0+2", "1.9.0+3", "1.9.0+2", "unknown"]);
    }
}

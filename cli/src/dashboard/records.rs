//! The pages of one app (versions, alert, snapshot, recent operations), of
//! the fleet's open alerts, and of the audit log.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use ccfleet_proto::pb;
use serde::Deserialize;

use super::frame::{alert_row, frame, open_alerts, or_dash, page, AlertRow, Frame, OperationRow, PageError};
use super::model;
use super::Dashboard;

type Shared = State<Arc<Dashboard>>;

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

pub async fn app_detail(
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
                running_version: or_dash(&operation.running_version),
                message: operation.message.clone(),
            })
            .collect(),
    })
}

// --- alerts and audit ---------------------------------------------------------------------

#[derive(Template)]
#[template(path = "dashboard/alerts.html")]
struct AlertsPage {
    frame: Frame,
    rows: Vec<AlertRow>,
}

pub async fn alerts(State(dashboard): Shared) -> Result<Response, PageError> {
    let alerts = super::frame::alerts(&dashboard, "", true).await?;
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
pub struct AuditQuery {
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

pub async fn audit(State(dashboard): Shared, Query(query): Query<AuditQuery>) -> Result<Response, PageError> {
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

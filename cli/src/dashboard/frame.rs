//! What every dashboard page shares: the frame around the content, the error and
//! refusal pages, the rendering of a template into a response, and the rows of alerts
//! and operations that several pages show.

use std::time::SystemTime;

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use ccfleet_proto::pb;

use super::model;
use super::Dashboard;

/// The parts of the page around the content.
pub struct Frame {
    pub title: String,
    pub nav: &'static str,
    pub server: String,
    pub rendered_at: String,
}

pub fn frame(dashboard: &Dashboard, title: impl Into<String>, nav: &'static str) -> Frame {
    Frame {
        title: title.into(),
        nav,
        server: dashboard.server_url.clone(),
        rendered_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    }
}

/// A page that could not be made: the server refused or could not be reached.
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
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

pub fn message_page(status: StatusCode, title: &str, message: &str) -> Response {
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

pub fn page<T: Template>(template: T) -> Result<Response, PageError> {
    Ok(Html(template.render()?).into_response())
}

/// The open alerts of one host (or all, `host` empty), every page.
pub async fn open_alerts(dashboard: &Dashboard, host: &str) -> Result<Vec<pb::Alert>, PageError> {
    alerts(dashboard, host, false).await
}

/// Alerts of one host (or all), every page, newest first; `all`:
/// acknowledged and resolved ones too.
pub async fn alerts(dashboard: &Dashboard, host: &str, all: bool) -> Result<Vec<pb::Alert>, PageError> {
    let mut alerts = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListAlertsRequest {
            host_id: host.to_owned(),
            all,
            page_size: 0,
            page_token,
        };
        let response = dashboard.client.clone().list_alerts(request).await?.into_inner();
        alerts.extend(response.alerts);
        page_token = response.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    model::sort_alerts(&mut alerts);
    Ok(alerts)
}

pub struct OperationRow {
    pub updated_at: String,
    pub operation_id: String,
    pub phase: &'static str,
    pub outcome: &'static str,
    pub from_version: String,
    pub to_version: String,
    pub running_version: String,
    pub message: String,
}

pub struct AlertRow {
    pub id: String,
    /// "open", "acknowledged" or "resolved", with who and why when acknowledged.
    pub state: &'static str,
    pub state_detail: String,
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

pub fn alert_row(alert: &pb::Alert) -> AlertRow {
    let state = match pb::AlertState::try_from(alert.state) {
        Ok(pb::AlertState::Open) => "open",
        Ok(pb::AlertState::Acknowledged) => "acknowledged",
        Ok(pb::AlertState::Resolved) => "resolved",
        _ => "unknown",
    };
    let state_detail = match state {
        "acknowledged" => format!(
            "by {} until {}: {}",
            alert.acknowledged_by,
            model::time(alert.acknowledged_until.as_ref()).unwrap_or_else(|| "the app fails again or recovers".into()),
            alert.acknowledged_reason
        ),
        "resolved" => model::time(alert.resolved_at.as_ref()).unwrap_or_default(),
        _ => String::new(),
    };
    AlertRow {
        id: alert.id.clone(),
        state,
        state_detail,
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

pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

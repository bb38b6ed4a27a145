//! What the CLI prints: stable JSON documents for scripts (`--json`) and
//! tables for people. The JSON field names are part of the CLI's interface
//! (README.md, "JSON output"); the wire types never leak into it.

use ccfleet_proto::pb;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct HostJson {
    pub host_id: String,
    /// "online" or "offline".
    pub status: &'static str,
    /// RFC 3339, UTC.
    pub last_seen: Option<String>,
    pub registered_at: Option<String>,
    pub agent_version: String,
    pub app_count: u32,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub docker_version: String,
    /// Labels from the host's join token and the agent's configuration.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Expiry of the host's certificate (RFC 3339); null if never enrolled.
    pub certificate_not_after: Option<String>,
    /// Highest durable event sequence number the server stored for the host.
    pub last_event_seq: u64,
}

#[derive(Debug, Serialize)]
pub struct AppJson {
    pub host_id: String,
    pub host_status: &'static str,
    pub domain: String,
    pub recipe: String,
    /// Version read from Docker; null when unknown.
    pub version: Option<String>,
    /// Version the host's configuration pins; null when undeclared.
    pub declared_version: Option<String>,
    /// "converged", "converging", "degraded", "not_deployed" or "unknown".
    pub state: &'static str,
    pub replicas: String,
    pub drift: Vec<String>,
    pub chaos: bool,
    pub observed_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VersionGroupJson {
    /// null for apps whose version is unknown.
    pub version: Option<String>,
    pub apps: Vec<AppJson>,
}

#[derive(Debug, Serialize)]
pub struct VersionsJson {
    pub recipe: String,
    pub versions: Vec<VersionGroupJson>,
}

fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    let timestamp = timestamp?;
    let time = std::time::UNIX_EPOCH + std::time::Duration::new(timestamp.seconds.max(0) as u64, 0);
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

fn status(value: i32) -> &'static str {
    match pb::HostStatus::try_from(value) {
        Ok(pb::HostStatus::Online) => "online",
        _ => "offline",
    }
}

fn state(value: i32) -> &'static str {
    match pb::AppState::try_from(value) {
        Ok(pb::AppState::Converged) => "converged",
        Ok(pb::AppState::Converging) => "converging",
        Ok(pb::AppState::Degraded) => "degraded",
        Ok(pb::AppState::NotDeployed) => "not_deployed",
        _ => "unknown",
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

pub fn host(host: &pb::Host) -> HostJson {
    let facts = host.facts.clone().unwrap_or_default();
    HostJson {
        host_id: host.host_id.clone(),
        status: status(host.status),
        last_seen: time(host.last_seen.as_ref()),
        registered_at: time(host.registered_at.as_ref()),
        agent_version: host.agent_version.clone(),
        app_count: host.app_count,
        hostname: facts.hostname,
        os: facts.os,
        arch: facts.arch,
        docker_version: facts.docker_version,
        // Token labels first; the agent's own labels win on conflict.
        labels: host.labels.clone().into_iter().chain(facts.labels).collect(),
        certificate_not_after: time(host.certificate_not_after.as_ref()),
        last_event_seq: host.last_event_seq,
    }
}

pub fn app(host_app: &pb::HostApp) -> AppJson {
    let app = host_app.app.clone().unwrap_or_default();
    AppJson {
        host_id: host_app.host_id.clone(),
        host_status: status(host_app.host_status),
        domain: app.domain,
        recipe: app.recipe,
        version: non_empty(&app.observed_version),
        declared_version: non_empty(&app.declared_version),
        state: state(app.state),
        replicas: format!("{}/{}", app.running_replicas, app.desired_replicas),
        drift: app.drift,
        chaos: app.chaos,
        observed_at: time(host_app.observed_at.as_ref()),
    }
}

pub fn versions(response: &pb::RecipeVersionsResponse) -> VersionsJson {
    VersionsJson {
        recipe: response.recipe.clone(),
        versions: response
            .versions
            .iter()
            .map(|group| VersionGroupJson {
                version: non_empty(&group.version),
                apps: group.apps.iter().map(app).collect(),
            })
            .collect(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    table
}

fn or_dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}

pub fn hosts_table(hosts: &[HostJson]) -> String {
    let mut table = table(&["HOST", "STATUS", "APPS", "AGENT", "LAST SEEN", "LABELS"]);
    for host in hosts {
        let labels: Vec<String> = host.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.add_row(vec![
            host.host_id.clone(),
            host.status.to_owned(),
            host.app_count.to_string(),
            host.agent_version.clone(),
            or_dash(&host.last_seen),
            labels.join(","),
        ]);
    }
    table.to_string()
}

pub fn apps_table(apps: &[AppJson]) -> String {
    let mut table = table(&[
        "HOST", "APP", "RECIPE", "VERSION", "DECLARED", "STATE", "REPLICAS", "DRIFT",
    ]);
    for app in apps {
        table.add_row(vec![
            format!(
                "{}{}",
                app.host_id,
                if app.host_status == "offline" { " (offline)" } else { "" }
            ),
            app.domain.clone(),
            app.recipe.clone(),
            or_dash(&app.version),
            or_dash(&app.declared_version),
            app.state.to_owned(),
            app.replicas.clone(),
            app.drift.join("; "),
        ]);
    }
    table.to_string()
}

pub fn versions_table(versions: &VersionsJson) -> String {
    let mut table = table(&["VERSION", "HOSTS", "APPS"]);
    for group in &versions.versions {
        let hosts: std::collections::BTreeSet<&str> = group.apps.iter().map(|app| app.host_id.as_str()).collect();
        let apps: Vec<String> = group
            .apps
            .iter()
            .map(|app| format!("{} ({})", app.domain, app.host_id))
            .collect();
        table.add_row(vec![
            group.version.clone().unwrap_or_else(|| "unknown".into()),
            hosts.len().to_string(),
            apps.join("\n"),
        ]);
    }
    table.to_string()
}

#[derive(Debug, Serialize)]
pub struct TokenJson {
    pub id: String,
    pub created_at: Option<String>,
    pub expires_at: Option<String>,
    pub uses_left: u32,
    pub revoked: bool,
    pub labels: std::collections::BTreeMap<String, String>,
}

pub fn token(info: &pb::JoinTokenInfo) -> TokenJson {
    TokenJson {
        id: info.id.clone(),
        created_at: time(info.created_at.as_ref()),
        expires_at: time(info.expires_at.as_ref()),
        uses_left: info.uses_left,
        revoked: info.revoked,
        labels: info.labels.clone().into_iter().collect(),
    }
}

pub fn tokens_table(tokens: &[TokenJson]) -> String {
    let mut table = table(&["ID", "EXPIRES", "USES LEFT", "REVOKED", "LABELS"]);
    for token in tokens {
        let labels: Vec<String> = token.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.add_row(vec![
            token.id.clone(),
            or_dash(&token.expires_at),
            token.uses_left.to_string(),
            if token.revoked { "yes" } else { "no" }.to_owned(),
            labels.join(","),
        ]);
    }
    table.to_string()
}

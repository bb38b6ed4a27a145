//! What the CLI prints: stable JSON documents for scripts (`--json`) and
//! tables for people. The JSON field names are part of the CLI's interface
//! (README.md, "JSON output"); the wire types never leak into it.

use ccfleet_proto::pb;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
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
    /// Labels from the host's join token and the agent's configuration;
    /// where both name a key, the token's (the admin's) value wins.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Labels an admin gave through the join token.
    pub token_labels: std::collections::BTreeMap<String, String>,
    /// Labels the host reports about itself (its agent configuration).
    pub host_labels: std::collections::BTreeMap<String, String>,
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
    /// Newest version available to the host within the running major; null when unknown.
    pub available_version: Option<String>,
    /// Newest version available to the host, any major; null when unknown.
    pub available_newest: Option<String>,
    /// True when the host pins the app (`fleetManaged = false`): rollouts skip it.
    pub pinned_by_host: bool,
    /// The fleet rollout target the agent recorded for the app; null if none.
    pub fleet_target: Option<String>,
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
        // The host's own labels first, so that the admin's token labels
        // override them: a host must not relabel itself into another site.
        labels: facts.labels.clone().into_iter().chain(host.labels.clone()).collect(),
        token_labels: host.labels.clone().into_iter().collect(),
        host_labels: facts.labels.into_iter().collect(),
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
        available_version: non_empty(&app.available_version),
        available_newest: non_empty(&app.available_newest),
        pinned_by_host: app.pinned_by_host,
        fleet_target: non_empty(&app.fleet_target),
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

/// Adds one page of a `RecipeVersions` answer to the pages before it: a
/// version group cut by the page end continues as the first group of the
/// next page, and becomes one group again here.
pub fn append_version_page(all: &mut pb::RecipeVersionsResponse, page: pb::RecipeVersionsResponse) {
    all.recipe = page.recipe;
    for group in page.versions {
        match all.versions.last_mut() {
            Some(last) if last.version == group.version => last.apps.extend(group.apps),
            _ => all.versions.push(group),
        }
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
        add_row(
            &mut table,
            vec![
                host.host_id.clone(),
                host.status.to_owned(),
                host.app_count.to_string(),
                host.agent_version.clone(),
                or_dash(&host.last_seen),
                labels.join(","),
            ],
        );
    }
    table.to_string()
}

/// Longest drift text a table cell shows; `--json` carries it whole.
const DRIFT_CELL_CHARS: usize = 60;

/// The apps table, as wide as the terminal (when printing to one): long drift
/// texts are cut to [`DRIFT_CELL_CHARS`] and the columns wrapped to fit.
pub fn apps_table(apps: &[AppJson]) -> String {
    apps_table_with_width(apps, None)
}

/// [`apps_table`] at a fixed width (tests; `None` asks the terminal).
pub fn apps_table_with_width(apps: &[AppJson], width: Option<u16>) -> String {
    let mut table = table(&[
        "HOST",
        "APP",
        "RECIPE",
        "VERSION",
        "DECLARED",
        "AVAILABLE",
        "STATE",
        "REPLICAS",
        "DRIFT",
    ]);
    table.set_content_arrangement(ContentArrangement::Dynamic);
    if let Some(width) = width {
        table.set_width(width);
    }
    for app in apps {
        let available = match (&app.available_version, &app.available_newest) {
            (Some(same_major), Some(newest)) if newest != same_major => format!("{same_major} ({newest})"),
            (Some(same_major), _) => same_major.clone(),
            (None, Some(newest)) => format!("({newest})"),
            (None, None) => "-".into(),
        };
        add_row(
            &mut table,
            vec![
                format!(
                    "{}{}",
                    app.host_id,
                    if app.host_status == "offline" { " (offline)" } else { "" }
                ),
                format!("{}{}", app.domain, if app.pinned_by_host { " (pinned)" } else { "" }),
                app.recipe.clone(),
                or_dash(&app.version),
                or_dash(&app.declared_version),
                available,
                app.state.to_owned(),
                app.replicas.clone(),
                shorten(&app.drift.join("; "), DRIFT_CELL_CHARS),
            ],
        );
    }
    table.to_string()
}

/// `text` cut to at most `limit` characters, marked with `…` when cut.
fn shorten(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub fn versions_table(versions: &VersionsJson) -> String {
    let mut table = table(&["VERSION", "HOSTS", "APPS"]);
    for group in &versions.versions {
        let hosts: std::collections::BTreeSet<&str> = group.apps.iter().map(|app| app.host_id.as_str()).collect();
        let apps: Vec<String> = group
            .apps
            .iter()
            .map(|app| printable(&format!("{} ({})", app.domain, app.host_id)))
            .collect();
        // One app per line: the line breaks are ours, each app is escaped.
        table.add_row(vec![
            printable(&group.version.clone().unwrap_or_else(|| "unknown".into())),
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
        add_row(
            &mut table,
            vec![
                token.id.clone(),
                or_dash(&token.expires_at),
                token.uses_left.to_string(),
                if token.revoked { "yes" } else { "no" }.to_owned(),
                labels.join(","),
            ],
        );
    }
    table.to_string()
}

/// Text from the server made safe for a terminal: control characters and
/// invisible direction overrides are shown escaped (`\u{1b}`), never
/// interpreted. The server strips them already; this holds even against a
/// server (or a record) that did not.
pub fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for character in text.chars() {
        if is_unprintable(character) {
            shown.extend(character.escape_unicode());
        } else {
            shown.push(character);
        }
    }
    shown
}

fn is_unprintable(character: char) -> bool {
    character.is_control()
        || matches!(
            character,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// Adds a row whose every cell is [`printable`]; every table goes through it.
fn add_row(table: &mut Table, cells: Vec<String>) {
    table.add_row(cells.iter().map(|cell| printable(cell)).collect::<Vec<_>>());
}

fn outcome(value: i32) -> Option<&'static str> {
    match pb::OperationOutcome::try_from(value) {
        Ok(pb::OperationOutcome::Succeeded) => Some("succeeded"),
        Ok(pb::OperationOutcome::RolledBack) => Some("rolled_back"),
        Ok(pb::OperationOutcome::Held) => Some("held"),
        Ok(pb::OperationOutcome::Failed) => Some("failed"),
        Ok(pb::OperationOutcome::Skipped) => Some("skipped"),
        Ok(pb::OperationOutcome::Unspecified) | Err(_) => None,
    }
}

fn phase(value: i32) -> &'static str {
    match pb::OperationPhase::try_from(value) {
        Ok(pb::OperationPhase::Accepted) => "accepted",
        Ok(pb::OperationPhase::Snapshotting) => "snapshotting",
        Ok(pb::OperationPhase::Deploying) => "deploying",
        Ok(pb::OperationPhase::Verifying) => "verifying",
        Ok(pb::OperationPhase::RollingBack) => "rolling_back",
        Ok(pb::OperationPhase::Unspecified) | Err(_) => "unknown",
    }
}

#[derive(Debug, Serialize)]
pub struct AlertJson {
    pub host_id: String,
    pub domain: String,
    /// null when the agent did not say.
    pub recipe: Option<String>,
    /// "warning", "critical" or "unknown".
    pub severity: &'static str,
    /// "rolled_back", "held", "failed", ...; null when the agent did not say.
    pub outcome: Option<&'static str>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    /// Why, for people; never parse it.
    pub reason: String,
    pub operation_id: Option<String>,
    /// Where the agent keeps the snapshot taken before the operation.
    pub snapshot_path: Option<String>,
    /// RFC 3339, UTC.
    pub raised_at: Option<String>,
}

pub fn alert(alert: &pb::Alert) -> AlertJson {
    AlertJson {
        host_id: alert.host_id.clone(),
        domain: alert.domain.clone(),
        recipe: non_empty(&alert.recipe),
        severity: match pb::AlertSeverity::try_from(alert.severity) {
            Ok(pb::AlertSeverity::Warning) => "warning",
            Ok(pb::AlertSeverity::Critical) => "critical",
            _ => "unknown",
        },
        outcome: outcome(alert.outcome),
        from_version: non_empty(&alert.from_version),
        to_version: non_empty(&alert.to_version),
        reason: alert.message.clone(),
        operation_id: non_empty(&alert.operation_id),
        snapshot_path: non_empty(&alert.snapshot_path),
        raised_at: time(alert.raised_at.as_ref()),
    }
}

pub fn alerts_table(alerts: &[AlertJson]) -> String {
    if alerts.is_empty() {
        return "no open alerts".into();
    }
    let mut table = table(&["RAISED", "HOST", "APP", "SEVERITY", "OUTCOME", "FROM", "TO", "REASON"]);
    for alert in alerts {
        add_row(
            &mut table,
            vec![
                or_dash(&alert.raised_at),
                alert.host_id.clone(),
                alert.domain.clone(),
                alert.severity.to_owned(),
                alert.outcome.unwrap_or("-").to_owned(),
                or_dash(&alert.from_version),
                or_dash(&alert.to_version),
                alert.reason.clone(),
            ],
        );
    }
    table.to_string()
}

#[derive(Debug, Serialize)]
pub struct OperationJson {
    pub host_id: String,
    pub operation_id: String,
    pub domain: String,
    /// Last phase reported: "accepted", "snapshotting", "deploying",
    /// "verifying", "rolling_back" or "unknown".
    pub phase: &'static str,
    /// null while the operation runs; else "succeeded", "rolled_back",
    /// "held", "failed" or "skipped".
    pub outcome: Option<&'static str>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub message: String,
    /// RFC 3339, UTC.
    pub updated_at: Option<String>,
}

pub fn operation(operation: &pb::Operation) -> OperationJson {
    OperationJson {
        host_id: operation.host_id.clone(),
        operation_id: operation.operation_id.clone(),
        domain: operation.domain.clone(),
        phase: phase(operation.phase),
        outcome: outcome(operation.outcome),
        from_version: non_empty(&operation.from_version),
        to_version: non_empty(&operation.to_version),
        message: operation.message.clone(),
        updated_at: time(operation.updated_at.as_ref()),
    }
}

pub fn operations_table(operations: &[OperationJson]) -> String {
    if operations.is_empty() {
        return "no operations recorded".into();
    }
    let mut table = table(&[
        "UPDATED",
        "HOST",
        "APP",
        "OPERATION",
        "PHASE",
        "OUTCOME",
        "FROM",
        "TO",
        "MESSAGE",
    ]);
    for operation in operations {
        add_row(
            &mut table,
            vec![
                or_dash(&operation.updated_at),
                operation.host_id.clone(),
                operation.domain.clone(),
                operation.operation_id.clone(),
                operation.phase.to_owned(),
                operation.outcome.unwrap_or("running").to_owned(),
                or_dash(&operation.from_version),
                or_dash(&operation.to_version),
                operation.message.clone(),
            ],
        );
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_pages_merge_into_groups() {
        let app = |host: &str| pb::HostApp {
            host_id: host.into(),
            ..Default::default()
        };
        let group = |version: &str, hosts: &[&str]| pb::VersionGroup {
            version: version.into(),
            apps: hosts.iter().map(|host| app(host)).collect(),
        };
        let page = |groups: Vec<pb::VersionGroup>| pb::RecipeVersionsResponse {
            recipe: "ghost".into(),
            versions: groups,
            next_page_token: String::new(),
        };
        let mut all = pb::RecipeVersionsResponse::default();
        append_version_page(
            &mut all,
            page(vec![group("2.0.0", &["a"]), group("1.0.0", &["a", "b"])]),
        );
        append_version_page(&mut all, page(vec![group("1.0.0", &["c"]), group("", &["a"])]));
        append_version_page(&mut all, page(vec![group("", &["b"])]));
        let summary: Vec<(String, Vec<String>)> = all
            .versions
            .iter()
            .map(|group| {
                (
                    group.version.clone(),
                    group.apps.iter().map(|app| app.host_id.clone()).collect(),
                )
            })
            .collect();
        let expected = vec![
            ("2.0.0".to_owned(), vec!["a".to_owned()]),
            ("1.0.0".to_owned(), vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]),
            (String::new(), vec!["a".to_owned(), "b".to_owned()]),
        ];
        assert_eq!(summary, expected);
        assert_eq!(all.recipe, "ghost");
    }

    #[test]
    fn terminal_controls_are_shown_escaped() {
        let cases = [
            ("converged", "converged"),
            ("\u{1b}[2J", "\\u{1b}[2J"),
            ("\u{1b}]52;c;aGk=\u{7}", "\\u{1b}]52;c;aGk=\\u{7}"),
            ("a\nb", "a\\u{a}b"),
            ("\u{9b}x", "\\u{9b}x"),
            ("ab\u{202e}c", "ab\\u{202e}c"),
            ("日本 ☃", "日本 ☃"),
        ];
        for (input, shown) in cases {
            assert_eq!(printable(input), shown, "{input:?}");
        }
    }

    #[test]
    fn the_apps_table_fits_its_width_and_cuts_drift_that_json_keeps_whole() {
        let drift = format!("declared 1.0.0+1, running 1.1.0+1 by rollout r-1; {}", "x".repeat(200));
        let app = AppJson {
            host_id: "web-1".into(),
            host_status: "online",
            domain: "blog.example.org".into(),
            recipe: "ghost".into(),
            version: Some("1.1.0+1".into()),
            declared_version: Some("1.0.0+1".into()),
            state: "converged",
            replicas: "1/1".into(),
            drift: vec![drift.clone()],
            chaos: false,
            observed_at: None,
            available_version: Some("1.2.0+1".into()),
            available_newest: Some("2.0.0+1".into()),
            pinned_by_host: true,
            fleet_target: Some("1.1.0+1".into()),
        };
        let table = apps_table_with_width(std::slice::from_ref(&app), Some(100));
        for line in table.lines() {
            assert!(line.chars().count() <= 100, "a line wider than 100 columns:\n{table}");
        }
        assert!(!table.contains(&"x".repeat(61)), "drift not cut:\n{table}");
        assert!(table.contains('…'), "{table}");
        let json = serde_json::to_value(&app).unwrap();
        assert_eq!(json["drift"][0], drift);
        assert_eq!(json["available_version"], "1.2.0+1");
        assert_eq!(json["available_newest"], "2.0.0+1");
        assert_eq!(json["pinned_by_host"], true);
        assert_eq!(json["fleet_target"], "1.1.0+1");
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
    }

    #[test]
    fn tables_never_carry_escape_sequences() {
        let host = HostJson {
            host_id: "web-1".into(),
            status: "online",
            last_seen: None,
            registered_at: None,
            agent_version: "\u{1b}]0;owned\u{7}".into(),
            app_count: 0,
            hostname: String::new(),
            os: String::new(),
            arch: String::new(),
            docker_version: String::new(),
            labels: [("site".to_owned(), "\u{1b}[2Jx".to_owned())].into(),
            token_labels: Default::default(),
            host_labels: Default::default(),
            certificate_not_after: None,
            last_event_seq: 0,
        };
        let table = hosts_table(&[host]);
        assert!(!table.contains('\u{1b}') && !table.contains('\u{7}'), "{table}");
    }
}

//! The fleet's inventory for people and scripts: hosts, apps, versions of a
//! recipe and join tokens, as JSON documents and tables.

use ccfleet::names::{app_state, host_status};
use ccfleet_proto::pb;
use serde::Serialize;

use super::table::{non_empty, or_dash, printable, terminal_width, time, Fit, Grid};

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

pub fn host(host: &pb::Host) -> HostJson {
    let facts = host.facts.clone().unwrap_or_default();
    HostJson {
        host_id: host.host_id.clone(),
        status: host_status(host.status),
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
        host_status: host_status(host_app.host_status),
        domain: app.domain,
        recipe: app.recipe,
        version: non_empty(&app.observed_version),
        declared_version: non_empty(&app.declared_version),
        state: app_state(app.state),
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

pub fn hosts_grid(hosts: &[HostJson]) -> Grid {
    let mut grid = Grid::new(&[
        ("HOST", Fit::Whole),
        ("STATUS", Fit::Whole),
        ("APPS", Fit::Whole),
        ("AGENT", Fit::Whole),
        ("LAST SEEN", Fit::Whole),
        ("LABELS", Fit::Cut),
    ]);
    for host in hosts {
        let labels: Vec<String> = host.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        grid.row(vec![
            host.host_id.clone(),
            host.status.to_owned(),
            host.app_count.to_string(),
            host.agent_version.clone(),
            or_dash(&host.last_seen),
            labels.join(","),
        ]);
    }
    grid
}

/// What `ccfleet hosts` says when the fleet has no host yet.
pub const NO_HOSTS: &str = "no hosts yet: create a join token with `ccfleet token create`";

/// The hosts table, as wide as the terminal (or 100 columns when not printing to one).
pub fn hosts_table(hosts: &[HostJson]) -> String {
    if hosts.is_empty() {
        return NO_HOSTS.into();
    }
    hosts_grid(hosts).render(terminal_width())
}

/// Under an apps table whose AVAILABLE column shows two versions.
pub const AVAILABLE_LEGEND: &str = "AVAILABLE: newest release in the running major (newest of any major)";

pub fn apps_grid(apps: &[AppJson]) -> Grid {
    let mut grid = Grid::new(&[
        ("HOST", Fit::Whole),
        ("APP", Fit::Whole),
        ("RECIPE", Fit::Whole),
        ("VERSION", Fit::Whole),
        ("DECLARED", Fit::Whole),
        ("AVAILABLE", Fit::Whole),
        ("STATE", Fit::Whole),
        ("DRIFT", Fit::Cut),
    ]);
    for app in apps {
        let available = match (&app.available_version, &app.available_newest) {
            (Some(same_major), Some(newest)) if newest != same_major => format!("{same_major} ({newest})"),
            (Some(same_major), _) => same_major.clone(),
            (None, Some(newest)) => format!("({newest})"),
            (None, None) => "-".into(),
        };
        grid.row(vec![
            format!(
                "{}{}",
                app.host_id,
                if app.host_status == "offline" { " (offline)" } else { "" }
            ),
            format!("{}{}", app.domain, if app.pinned_by_host { " (pinned)" } else { "" }),
            app.recipe.clone(),
            version_cell(app),
            or_dash(&app.declared_version),
            available,
            format!("{} {}", app.state, app.replicas),
            app.drift.join("; "),
        ]);
    }
    grid
}

/// The running version, marked `(fleet target)` when a fleet rollout put the
/// app above its declared version: the rule at work (the declaration is a
/// floor), not drift.
fn version_cell(app: &AppJson) -> String {
    match (&app.version, &app.fleet_target) {
        (Some(version), Some(target)) if version == target && app.declared_version.as_ref() != Some(version) => {
            format!("{version} (fleet target)")
        }
        (version, _) => or_dash(version),
    }
}

/// The apps table, as wide as the terminal (or 100 columns when not printing
/// to one): long drift texts are cut with `…`; versions, domains and ids stay whole.
pub fn apps_table(apps: &[AppJson]) -> String {
    apps_table_with_width(apps, None)
}

/// [`apps_table`] at a fixed width (tests; `None` asks the terminal).
pub fn apps_table_with_width(apps: &[AppJson], width: Option<u16>) -> String {
    let table = apps_grid(apps).render(width.unwrap_or_else(terminal_width));
    let two_versions = apps
        .iter()
        .any(|app| app.available_newest.is_some() && app.available_newest != app.available_version);
    if two_versions {
        format!("{table}\n{AVAILABLE_LEGEND}")
    } else {
        table
    }
}

pub fn versions_grid(versions: &VersionsJson) -> Grid {
    let mut grid = Grid::new(&[("VERSION", Fit::Whole), ("HOSTS", Fit::Whole), ("APPS", Fit::Whole)]);
    for group in &versions.versions {
        let hosts: std::collections::BTreeSet<&str> = group.apps.iter().map(|app| app.host_id.as_str()).collect();
        // One app per line: the line breaks are ours, each app is escaped.
        let apps: Vec<String> = group
            .apps
            .iter()
            .map(|app| format!("{} ({})", app.domain, app.host_id))
            .collect();
        grid.row_of_lines(vec![
            vec![group.version.clone().unwrap_or_else(|| "unknown".into())],
            vec![hosts.len().to_string()],
            apps,
        ]);
    }
    grid
}

pub fn versions_table(versions: &VersionsJson) -> String {
    versions_grid(versions).render(terminal_width())
}

/// What `ccfleet versions R` and `ccfleet apps --recipe R` say when no host
/// runs `recipe`, naming the recipes the fleet does run.
pub fn no_such_recipe(recipe: &str, known: &std::collections::BTreeSet<String>) -> String {
    let known = if known.is_empty() {
        "none yet".to_owned()
    } else {
        known.iter().map(|name| printable(name)).collect::<Vec<_>>().join(", ")
    };
    format!("no host runs recipe {} (known recipes: {known})", printable(recipe))
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

pub fn tokens_grid(tokens: &[TokenJson]) -> Grid {
    let mut grid = Grid::new(&[
        ("ID", Fit::Whole),
        ("EXPIRES", Fit::Whole),
        ("USES LEFT", Fit::Whole),
        ("REVOKED", Fit::Whole),
        ("LABELS", Fit::Cut),
    ]);
    for token in tokens {
        let labels: Vec<String> = token.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        grid.row(vec![
            token.id.clone(),
            or_dash(&token.expires_at),
            token.uses_left.to_string(),
            if token.revoked { "yes" } else { "no" }.to_owned(),
            labels.join(","),
        ]);
    }
    grid
}

pub fn tokens_table(tokens: &[TokenJson]) -> String {
    tokens_grid(tokens).render(terminal_width())
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
        // Versions and domains whole (on more lines at their spaces), drift cut.
        expect_test::expect![[r#"
            ┌───────┬──────────────────┬────────┬─────────┬──────────┬───────────┬───────────────┬─────────────┐
            │ HOST  ┆ APP              ┆ RECIPE ┆ VERSION ┆ DECLARED ┆ AVAILABLE ┆ STATE         ┆ DRIFT       │
            ╞═══════╪══════════════════╪════════╪═════════╪══════════╪═══════════╪═══════════════╪═════════════╡
            │ web-1 ┆ blog.example.org ┆ ghost  ┆ 1.1.0+1 ┆ 1.0.0+1  ┆ 1.2.0+1   ┆ converged 1/1 ┆ declared 1… │
            │       ┆ (pinned)         ┆        ┆ (fleet  ┆          ┆ (2.0.0+1) ┆               ┆             │
            │       ┆                  ┆        ┆ target) ┆          ┆           ┆               ┆             │
            └───────┴──────────────────┴────────┴─────────┴──────────┴───────────┴───────────────┴─────────────┘
            AVAILABLE: newest release in the running major (newest of any major)"#]]
        .assert_eq(&table);
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

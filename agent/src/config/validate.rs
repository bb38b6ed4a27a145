//! Turns the raw file into a [`Config`]: every string into its validated type,
//! defaults filled in, and the rules that span fields (unique domains,
//! `depends_on`, no dependency cycle), collecting every problem.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};

use super::checks::{
    absolute_path, check_abra_binary, check_abra_server, check_env_key, check_env_value, check_health_path,
    check_label_key, check_printable, check_secret_name, check_server_url, parse_duration, MAX_LABEL_VALUE_LENGTH,
    MAX_SCHEDULE_LENGTH,
};
use super::raw::{RawApp, RawConfig};
use super::schema::{
    AbraConfig, AgentConfig, AppConfig, Config, HealthConfig, HostConfig, ProbeScheme, ServerConfig,
    DEFAULT_ABRA_BINARY, DEFAULT_ABRA_SERVER, DEFAULT_ALERTS_DIR, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONTROL_SOCKET,
    DEFAULT_DEPLOY_TIMEOUT, DEFAULT_HEALTH_TIMEOUT, DEFAULT_MIN_HEALTHY_TIME, DEFAULT_OBSERVE_INTERVAL,
    DEFAULT_PROBE_ADDRESS, DEFAULT_RECONCILE_INTERVAL, DEFAULT_SNAPSHOT_RETENTION, DEFAULT_STATE_DIR,
    DEFAULT_STOP_TIMEOUT, MAX_SNAPSHOT_RETENTION,
};
use super::Problem;

/// Collects problems for one part of the file.
struct Collector<'a> {
    app: Option<String>,
    problems: &'a mut Vec<Problem>,
}

impl Collector<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            app: self.app.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Runs a parser, recording its error against `field`.
    fn parse<T, E: fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|error| self.push(field, error.to_string())).ok()
    }

    fn absolute_path(&mut self, field: &str, text: &str) -> Option<PathBuf> {
        self.parse(field, absolute_path(text))
    }

    fn duration(&mut self, field: &str, text: Option<&str>, default: Duration) -> Option<Duration> {
        match text {
            None => Some(default),
            Some(text) => self.parse(field, parse_duration(text)),
        }
    }
}

/// Turns the raw file into a [`Config`], or every problem found.
pub(super) fn validate(raw: RawConfig, hostname: &str) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut top = Collector {
        app: None,
        problems: &mut problems,
    };

    let url = top.parse("server.url", check_server_url(&raw.server.url));
    let join_token_file = match &raw.server.join_token_file {
        None => Some(None),
        Some(text) => top.absolute_path("server.join_token_file", text).map(Some),
    };

    let host_id = match &raw.host.id {
        Some(text) => top.parse("host.id", text.parse::<HostId>()),
        None => top.parse(
            "host.id",
            hostname
                .trim()
                .to_lowercase()
                .parse::<HostId>()
                .map_err(|error| format!("not set, and the hostname cannot serve as the default: {error}")),
        ),
    };
    for (key, value) in &raw.host.labels {
        let _ = top.parse(&format!("host.labels.{key}"), check_label_key(key));
        let _ = top.parse(
            &format!("host.labels.{key}"),
            check_printable("label value", value, MAX_LABEL_VALUE_LENGTH),
        );
    }

    let mut path_or_default = |field: &str, text: &Option<String>, default: &str| match text {
        Some(text) => top.absolute_path(field, text),
        None => Some(PathBuf::from(default)),
    };
    let state_dir = path_or_default("agent.state_dir", &raw.agent.state_dir, DEFAULT_STATE_DIR);
    let control_socket = path_or_default(
        "agent.control_socket",
        &raw.agent.control_socket,
        DEFAULT_CONTROL_SOCKET,
    );
    let alerts_dir = path_or_default("agent.alerts_dir", &raw.agent.alerts_dir, DEFAULT_ALERTS_DIR);
    let reconcile_interval = top.duration(
        "agent.reconcile_interval",
        raw.agent.reconcile_interval.as_deref(),
        DEFAULT_RECONCILE_INTERVAL,
    );
    let observe_interval = top.duration(
        "agent.observe_interval",
        raw.agent.observe_interval.as_deref(),
        DEFAULT_OBSERVE_INTERVAL,
    );

    let snapshot_retention = match raw.agent.snapshot_retention {
        None => Some(DEFAULT_SNAPSHOT_RETENTION),
        Some(count) if (1..=MAX_SNAPSHOT_RETENTION).contains(&count) => usize::try_from(count).ok(),
        Some(count) => {
            top.push(
                "agent.snapshot_retention",
                format!("{count} is out of range: keep 1 to {MAX_SNAPSHOT_RETENTION} snapshots per app"),
            );
            None
        }
    };
    let min_healthy_time = top.duration(
        "agent.min_healthy_time",
        raw.agent.min_healthy_time.as_deref(),
        DEFAULT_MIN_HEALTHY_TIME,
    );
    let probe_address = top.parse(
        "agent.probe_address",
        raw.agent
            .probe_address
            .as_deref()
            .unwrap_or(DEFAULT_PROBE_ADDRESS)
            .parse::<SocketAddr>()
            .map_err(|error| format!("not an address with a port (write e.g. \"127.0.0.1:443\"): {error}")),
    );
    let probe_scheme = raw.agent.probe_scheme.unwrap_or(ProbeScheme::Https);
    let stop_timeout = top.duration(
        "agent.stop_timeout",
        raw.agent.stop_timeout.as_deref(),
        DEFAULT_STOP_TIMEOUT,
    );

    let abra_binary = top.parse(
        "abra.binary",
        check_abra_binary(raw.abra.binary.as_deref().unwrap_or(DEFAULT_ABRA_BINARY)),
    );
    let abra_dir = match (&raw.abra.dir, &state_dir) {
        (Some(text), _) => top.absolute_path("abra.dir", text),
        (None, Some(state_dir)) => Some(state_dir.join("abra")),
        (None, None) => None,
    };
    let abra_server = top.parse(
        "abra.server",
        check_abra_server(raw.abra.server.as_deref().unwrap_or(DEFAULT_ABRA_SERVER)),
    );
    let command_timeout = top.duration(
        "abra.command_timeout",
        raw.abra.command_timeout.as_deref(),
        DEFAULT_COMMAND_TIMEOUT,
    );

    let apps = validate_apps(raw.app, &mut problems);

    match (
        url,
        join_token_file,
        host_id,
        state_dir,
        control_socket,
        alerts_dir,
        abra_binary,
        abra_dir,
        abra_server,
        command_timeout,
        apps,
        reconcile_interval,
        observe_interval,
        (snapshot_retention, min_healthy_time, probe_address, stop_timeout),
    ) {
        (
            Some(url),
            Some(join_token_file),
            Some(id),
            Some(state_dir),
            Some(control_socket),
            Some(alerts_dir),
            Some(binary),
            Some(dir),
            Some(server),
            Some(command_timeout),
            Some(apps),
            Some(reconcile_interval),
            Some(observe_interval),
            (Some(snapshot_retention), Some(min_healthy_time), Some(probe_address), Some(stop_timeout)),
        ) if problems.is_empty() => Ok(Config {
            server: ServerConfig { url, join_token_file },
            host: HostConfig {
                id,
                labels: raw.host.labels,
            },
            agent: AgentConfig {
                state_dir,
                control_socket,
                alerts_dir,
                reconcile_interval,
                observe_interval,
                snapshot_retention,
                min_healthy_time,
                probe_address,
                probe_scheme,
                stop_timeout,
            },
            abra: AbraConfig {
                binary,
                dir,
                server,
                command_timeout,
                no_domain_checks: raw.abra.no_domain_checks,
            },
            apps,
        }),
        _ => Err(problems),
    }
}

/// Validates every app on its own, then the rules between apps: unique
/// domains, `depends_on` naming other declared apps, no dependency cycle.
fn validate_apps(raw_apps: Vec<RawApp>, problems: &mut Vec<Problem>) -> Option<Vec<AppConfig>> {
    let problems_before = problems.len();
    let mut apps = Vec::new();
    let mut first_index_of: BTreeMap<Domain, usize> = BTreeMap::new();
    for (index, raw) in raw_apps.into_iter().enumerate() {
        let domain = raw.domain.parse::<Domain>();
        let subject = match &domain {
            Ok(domain) => format!("app {:?}", domain.as_str()),
            Err(_) => format!("app[{index}]"),
        };
        let mut collector = Collector {
            app: Some(subject),
            problems,
        };
        let domain = collector.parse("domain", domain);
        if let Some(domain) = &domain {
            if let Some(first) = first_index_of.get(domain) {
                collector.push("domain", format!("declared twice (app[{first}] and app[{index}])"));
            } else {
                first_index_of.insert(domain.clone(), index);
            }
        }
        if let Some(app) = validate_app(raw, domain, &mut collector) {
            apps.push(app);
        }
    }
    let declared: BTreeSet<&Domain> = first_index_of.keys().collect();
    for app in &apps {
        let mut collector = Collector {
            app: Some(format!("app {:?}", app.domain.as_str())),
            problems,
        };
        for dependency in &app.depends_on {
            if dependency == &app.domain {
                collector.push("depends_on", "an app cannot depend on itself");
            } else if !declared.contains(dependency) {
                collector.push(
                    "depends_on",
                    format!("{:?} is not an app declared in this file", dependency.as_str()),
                );
            }
        }
    }
    if problems.len() == problems_before {
        if let Some(cycle) = find_dependency_cycle(&apps) {
            let path: Vec<&str> = cycle.iter().map(|domain| domain.as_str()).collect();
            problems.push(Problem {
                app: Some(format!("app {:?}", path[0])),
                field: "depends_on".into(),
                message: format!("dependency cycle: {}", path.join(" -> ")),
            });
        }
    }
    apps.sort_by(|left, right| left.domain.cmp(&right.domain));
    (problems.len() == problems_before).then_some(apps)
}

fn validate_app(raw: RawApp, domain: Option<Domain>, collector: &mut Collector<'_>) -> Option<AppConfig> {
    let recipe = collector.parse("recipe", raw.recipe.parse::<RecipeName>());
    let version = collector.parse("version", raw.version.parse::<CoopVersion>());
    let schedule = match (&raw.schedule, raw.auto_update) {
        (None, true) => {
            collector.push(
                "schedule",
                "required when auto_update is true (systemd OnCalendar text, e.g. \"Sun 04:00\")",
            );
            None
        }
        (None, false) => Some(None),
        (Some(text), _) if text.trim().is_empty() => {
            collector.push("schedule", "must not be empty");
            None
        }
        (Some(text), _) => collector
            .parse("schedule", check_printable("schedule", text, MAX_SCHEDULE_LENGTH))
            .map(|()| Some(text.clone())),
    };
    let deploy_timeout = collector.duration("deploy_timeout", raw.deploy_timeout.as_deref(), DEFAULT_DEPLOY_TIMEOUT);

    let mut depends_on = BTreeSet::new();
    for text in &raw.depends_on {
        if let Some(dependency) = collector.parse("depends_on", text.parse::<Domain>()) {
            depends_on.insert(dependency);
        }
    }
    for (key, value) in &raw.env {
        let field = format!("env.{key}");
        let _ = collector.parse(&field, check_env_key(key));
        let _ = collector.parse(&field, check_env_value(value));
    }
    let mut secrets = BTreeMap::new();
    for (name, path) in &raw.secrets {
        let field = format!("secrets.{name}");
        let name_ok = collector.parse(&field, check_secret_name(name)).is_some();
        if let Some(path) = collector.absolute_path(&field, path) {
            if name_ok {
                secrets.insert(name.clone(), path);
            }
        }
    }
    let _ = domain
        .as_ref()
        .map(|domain| collector.parse("domain", super::checks::secret_name_fits(domain, secrets.keys())));
    let health_path = match &raw.health.path {
        None => Some(None),
        Some(path) => collector.parse("health.path", check_health_path(path)).map(Some),
    };
    let mut accepted_statuses = Vec::new();
    match &raw.health.accepted_statuses {
        None => accepted_statuses.push(200),
        Some(statuses) if statuses.is_empty() => {
            collector.push("health.accepted_statuses", "must list at least one status")
        }
        Some(statuses) => {
            for status in statuses {
                match u16::try_from(*status) {
                    Ok(status) if (100..=599).contains(&status) => accepted_statuses.push(status),
                    _ => collector.push(
                        "health.accepted_statuses",
                        format!("{status} is not an HTTP status (100 to 599)"),
                    ),
                }
            }
            accepted_statuses.sort_unstable();
            accepted_statuses.dedup();
        }
    }
    let health_timeout = collector.duration("health.timeout", raw.health.timeout.as_deref(), DEFAULT_HEALTH_TIMEOUT);

    Some(AppConfig {
        domain: domain?,
        recipe: recipe?,
        version: version?,
        stateful: raw.stateful,
        auto_update: raw.auto_update,
        schedule: schedule?,
        allow_major: raw.allow_major,
        fleet_managed: raw.fleet_managed,
        deploy_timeout: deploy_timeout?,
        depends_on: depends_on.into_iter().collect(),
        env: raw.env,
        secrets,
        health: HealthConfig {
            path: health_path?,
            accepted_statuses,
            timeout: health_timeout?,
        },
    })
}

/// The first dependency cycle found (as `a -> b -> a`), if any. Runs only on
/// apps whose `depends_on` all name other declared apps.
fn find_dependency_cycle(apps: &[AppConfig]) -> Option<Vec<Domain>> {
    let edges: BTreeMap<&Domain, &[Domain]> = apps
        .iter()
        .map(|app| (&app.domain, app.depends_on.as_slice()))
        .collect();
    let mut finished: BTreeSet<&Domain> = BTreeSet::new();
    for start in edges.keys() {
        let mut path: Vec<&Domain> = Vec::new();
        if let Some(cycle) = visit(start, &edges, &mut path, &mut finished) {
            return Some(cycle);
        }
    }
    None
}

fn visit<'a>(
    node: &'a Domain,
    edges: &BTreeMap<&'a Domain, &'a [Domain]>,
    path: &mut Vec<&'a Domain>,
    finished: &mut BTreeSet<&'a Domain>,
) -> Option<Vec<Domain>> {
    if let Some(position) = path.iter().position(|on_path| *on_path == node) {
        let mut cycle: Vec<Domain> = path[position..].iter().map(|domain| (*domain).clone()).collect();
        cycle.push(node.clone());
        return Some(cycle);
    }
    if finished.contains(node) {
        return None;
    }
    path.push(node);
    for next in edges.get(node).copied().unwrap_or_default() {
        if let Some(cycle) = visit(next, edges, path, finished) {
            return Some(cycle);
        }
    }
    path.pop();
    finished.insert(node);
    None
}

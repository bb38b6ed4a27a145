//! What an app's Docker observation means: converged, converging, degraded or
//! not deployed, which version runs, and how that drifts from the declaration.
//!
//! Pure functions over `docker::StackObservation`, so every rule is tested
//! without an engine.

use std::fmt;

use ccfleet_proto::{CoopVersion, Domain, RecipeName};
use serde::{Deserialize, Serialize};

use crate::config::AppConfig;
use crate::docker::{ContainerHealth, StackObservation};

/// One app as observed on this host, next to what is declared for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedApp {
    pub domain: Domain,
    pub recipe: RecipeName,
    /// From the `coop-cloud.<stack>.version` label; `None` when not deployed,
    /// unlabelled, or when the label does not parse (then `drift` quotes it).
    pub observed_version: Option<CoopVersion>,
    /// The version the configuration pins.
    pub declared_version: Option<CoopVersion>,
    pub state: AppState,
    /// Summed over the stack's services.
    pub desired_replicas: u32,
    /// Summed over the stack's services: tasks running the current spec.
    pub running_replicas: u32,
    /// Why observed differs from declared, one reason each; empty when converged at the declared version.
    pub drift: Vec<String>,
    /// A chaos deploy (unreleased recipe code) is running.
    pub chaos: bool,
}

/// How an app's stack stands in Docker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Every service has its desired replicas running the current spec, no
    /// update is in flight, and every container with a healthcheck is healthy.
    Converged,
    /// Docker is still getting there: an update is rolling, or tasks and
    /// healthchecks are starting without any failure yet.
    Converging,
    /// Short of replicas with a reason: a task failed, a container is
    /// unhealthy, or an update paused on a failure.
    Degraded,
    /// The stack has no services.
    NotDeployed,
    /// Docker could not be asked.
    Unknown,
}

impl fmt::Display for AppState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            AppState::Converged => "converged",
            AppState::Converging => "converging",
            AppState::Degraded => "degraded",
            AppState::NotDeployed => "not deployed",
            AppState::Unknown => "unknown",
        })
    }
}

impl ObservedApp {
    /// Converged, at the declared version.
    pub fn is_converged_at_declared(&self) -> bool {
        self.state == AppState::Converged
            && self.observed_version.is_some()
            && self.observed_version == self.declared_version
    }

    /// One line for people: state, version, replicas, and drift.
    pub fn summary(&self) -> String {
        let version = self
            .observed_version
            .as_ref()
            .map_or_else(|| "no version".to_owned(), ToString::to_string);
        let mut summary = format!(
            "{}, {version}, {}/{} replicas",
            self.state, self.running_replicas, self.desired_replicas
        );
        if !self.drift.is_empty() {
            summary.push_str("; drift: ");
            summary.push_str(&self.drift.join("; "));
        }
        summary
    }
}

/// The app as seen when Docker could not be asked.
pub fn unknown(app: &AppConfig, reason: &str) -> ObservedApp {
    ObservedApp {
        domain: app.domain.clone(),
        recipe: app.recipe.clone(),
        observed_version: None,
        declared_version: Some(app.version.clone()),
        state: AppState::Unknown,
        desired_replicas: 0,
        running_replicas: 0,
        drift: vec![format!("cannot observe: {reason}")],
        chaos: false,
    }
}

/// Interprets one observation of the app's stack.
pub fn classify(app: &AppConfig, stack: &StackObservation) -> ObservedApp {
    let declared = &app.version;
    let mut observed = ObservedApp {
        domain: app.domain.clone(),
        recipe: app.recipe.clone(),
        observed_version: None,
        declared_version: Some(declared.clone()),
        state: AppState::NotDeployed,
        desired_replicas: 0,
        running_replicas: 0,
        drift: Vec::new(),
        chaos: stack.chaos(),
    };
    if stack.services.is_empty() {
        observed.drift.push("not deployed".into());
        return observed;
    }

    let version_key = format!("coop-cloud.{}.version", stack.stack);
    match stack.version_label() {
        None if stack.app_service().is_none() => observed.drift.push(format!(
            "the stack has no {}_app service to carry {version_key}",
            stack.stack
        )),
        None => observed
            .drift
            .push(format!("no {version_key} label on {}_app", stack.stack)),
        Some(text) => match text.parse::<CoopVersion>() {
            Ok(version) => {
                if version != *declared {
                    observed.drift.push(format!("declared {declared}, running {version}"));
                }
                observed.observed_version = Some(version);
            }
            Err(error) => observed
                .drift
                .push(format!("version label {version_key}={text:?} does not parse: {error}")),
        },
    }
    if observed.chaos {
        let chaos_version = stack.chaos_version().unwrap_or("unknown");
        observed.drift.push(format!(
            "chaos deploy (unreleased recipe code {chaos_version}) is running"
        ));
    }

    for service in stack.services.values() {
        observed.desired_replicas = observed.desired_replicas.saturating_add(service.desired_replicas);
        observed.running_replicas = observed
            .running_replicas
            .saturating_add(service.running_replicas.min(service.desired_replicas));
    }

    // Reasons why the stack is short, most telling first.
    let mut failures: Vec<String> = Vec::new();
    for container in &stack.containers {
        if container.health == ContainerHealth::Unhealthy {
            failures.push(format!("container {} is unhealthy", container.name));
        }
    }
    let mut in_flight = false;
    for service in stack.services.values() {
        if service.update_in_flight() {
            in_flight = true;
        }
        let short = service.running_replicas < service.desired_replicas;
        if short {
            if let Some(state) = &service.update_state {
                if state.ends_with("paused") {
                    let message = service.update_message.as_deref().unwrap_or("no reason given");
                    failures.push(format!("{} update {state}: {message}", service.name));
                }
            }
            if let Some(error) = &service.last_task_error {
                failures.push(format!("{} task failed: {error}", service.name));
            }
        }
    }
    let starting_containers = stack
        .containers
        .iter()
        .any(|container| container.health == ContainerHealth::Starting);
    let all_running = observed.running_replicas >= observed.desired_replicas;

    observed.state = if in_flight {
        AppState::Converging
    } else if all_running && failures.is_empty() && !starting_containers {
        AppState::Converged
    } else if !failures.is_empty() {
        AppState::Degraded
    } else {
        AppState::Converging
    };
    if observed.state != AppState::Converged {
        let mut reason = format!(
            "not converged: {}/{} replicas",
            observed.running_replicas, observed.desired_replicas
        );
        if in_flight {
            reason.push_str(", update in flight");
        }
        if !failures.is_empty() {
            reason.push_str(" (");
            reason.push_str(&failures.join("; "));
            reason.push(')');
        }
        observed.drift.push(reason);
    }
    observed
}

/// An app a fleet rollout put above its declared version runs where the
/// rules say it should (the declaration is a floor, not a ceiling): that is
/// not drift, and the plain "declared X, running Y" reason is dropped. The
/// app's `fleet_target` says why; drift stays for what needs a human.
pub fn explain_fleet_drift(observed: &mut ObservedApp, declared: &CoopVersion, fleet_target: Option<&CoopVersion>) {
    let (Some(running), Some(target)) = (&observed.observed_version, fleet_target) else {
        return;
    };
    if running != target || running <= declared {
        return;
    }
    let plain = format!("declared {declared}, running {running}");
    observed.drift.retain(|reason| *reason != plain);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::docker::{ContainerObservation, ServiceObservation};

    fn app() -> AppConfig {
        let text = r#"
            [server]
            url = "https://fleet.example.org"
            [[app]]
            domain = "blog.example.org"
            recipe = "fixture-web"
            version = "1.1.0+1.1"
        "#;
        let config = crate::config::Config::from_toml_str_with_hostname(text, "agent.toml".as_ref(), "host").unwrap();
        config.apps[0].clone()
    }

    fn service(name: &str, running: u32, desired: u32) -> ServiceObservation {
        ServiceObservation {
            name: name.into(),
            labels: BTreeMap::new(),
            desired_replicas: desired,
            running_replicas: running,
            update_state: None,
            update_message: None,
            last_task_error: None,
            current_spec_failures: 0,
            current_spec_error: None,
        }
    }

    fn stack(version: Option<&str>, services: Vec<ServiceObservation>) -> StackObservation {
        let mut services: BTreeMap<String, ServiceObservation> = services
            .into_iter()
            .map(|service| (service.name.clone(), service))
            .collect();
        if let (Some(version), Some(app)) = (version, services.get_mut("blog_example_org_app")) {
            app.labels
                .insert("coop-cloud.blog_example_org.version".into(), version.into());
        }
        StackObservation {
            stack: "blog_example_org".into(),
            services,
            containers: Vec::new(),
        }
    }

    fn check(stack: StackObservation, expect: (AppState, Option<&str>, &[&str])) {
        let observed = classify(&app(), &stack);
        let version = observed.observed_version.as_ref().map(ToString::to_string);
        assert_eq!(
            (observed.state, version.as_deref(), observed.drift.clone()),
            (
                expect.0,
                expect.1,
                expect.2.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            ),
            "{stack:?}"
        );
    }

    const APP: &str = "blog_example_org_app";

    #[test]
    fn converged_at_declared_version_has_no_drift() {
        check(
            stack(
                Some("1.1.0+1.1"),
                vec![service(APP, 1, 1), service("blog_example_org_db", 1, 1)],
            ),
            (AppState::Converged, Some("1.1.0+1.1"), &[]),
        );
    }

    #[test]
    fn nothing_deployed() {
        check(stack(None, vec![]), (AppState::NotDeployed, None, &["not deployed"]));
    }

    #[test]
    fn other_version_is_drift() {
        check(
            stack(Some("1.0.0+1.0"), vec![service(APP, 1, 1)]),
            (
                AppState::Converged,
                Some("1.0.0+1.0"),
                &["declared 1.1.0+1.1, running 1.0.0+1.0"],
            ),
        );
    }

    #[test]
    fn unparsable_or_missing_label() {
        let parse_error = "5.2_1".parse::<CoopVersion>().unwrap_err();
        check(
            stack(Some("5.2_1"), vec![service(APP, 1, 1)]),
            (
                AppState::Converged,
                None,
                &[&format!(
                    "version label coop-cloud.blog_example_org.version=\"5.2_1\" does not parse: {parse_error}"
                )],
            ),
        );
        check(
            stack(None, vec![service(APP, 1, 1)]),
            (
                AppState::Converged,
                None,
                &["no coop-cloud.blog_example_org.version label on blog_example_org_app"],
            ),
        );
    }

    #[test]
    fn update_in_flight_is_converging() {
        let mut updating = service(APP, 1, 1);
        updating.update_state = Some("updating".into());
        check(
            stack(Some("1.1.0+1.1"), vec![updating]),
            (
                AppState::Converging,
                Some("1.1.0+1.1"),
                &["not converged: 1/1 replicas, update in flight"],
            ),
        );
    }

    #[test]
    fn paused_alone_is_not_failure() {
        let mut paused = service(APP, 1, 1);
        paused.update_state = Some("paused".into());
        check(
            stack(Some("1.1.0+1.1"), vec![paused]),
            (AppState::Converged, Some("1.1.0+1.1"), &[]),
        );
    }

    #[test]
    fn paused_and_short_is_degraded() {
        let mut paused = service(APP, 0, 1);
        paused.update_state = Some("paused".into());
        paused.update_message = Some("update paused due to failure".into());
        paused.last_task_error = Some("task: non-zero exit (137)".into());
        check(
            stack(Some("1.1.0+1.1"), vec![paused]),
            (
                AppState::Degraded,
                Some("1.1.0+1.1"),
                &[
                    "not converged: 0/1 replicas (blog_example_org_app update paused: update paused due to failure; \
                   blog_example_org_app task failed: task: non-zero exit (137))",
                ],
            ),
        );
    }

    #[test]
    fn starting_is_converging_and_unhealthy_is_degraded() {
        let mut starting = stack(Some("1.1.0+1.1"), vec![service(APP, 0, 1)]);
        starting.containers.push(ContainerObservation {
            name: "blog_example_org_app.1.x".into(),
            service: Some(APP.into()),
            health: ContainerHealth::Starting,
            current_spec: true,
        });
        check(
            starting.clone(),
            (
                AppState::Converging,
                Some("1.1.0+1.1"),
                &["not converged: 0/1 replicas"],
            ),
        );
        starting.containers[0].health = ContainerHealth::Unhealthy;
        check(
            starting,
            (
                AppState::Degraded,
                Some("1.1.0+1.1"),
                &["not converged: 0/1 replicas (container blog_example_org_app.1.x is unhealthy)"],
            ),
        );
    }

    #[test]
    fn chaos_is_reported() {
        let mut chaos = stack(Some("1.1.0+1.1"), vec![service(APP, 1, 1)]);
        let labels = &mut chaos.services.get_mut(APP).unwrap().labels;
        labels.insert("coop-cloud.blog_example_org.chaos".into(), "true".into());
        labels.insert("coop-cloud.blog_example_org.chaos-version".into(), "1a2b3c".into());
        let observed = classify(&app(), &chaos);
        assert!(observed.chaos);
        assert_eq!(
            observed.drift,
            ["chaos deploy (unreleased recipe code 1a2b3c) is running"]
        );
    }
}

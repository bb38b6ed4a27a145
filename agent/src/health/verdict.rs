//! Docker's verdict on a deploy: a pure reading of one stack observation that
//! says when Swarm has already decided that the version just deployed fails,
//! so the health gate can stop waiting for its timeout.
//!
//! Definitive (each reason quotes Docker's own words), in this order:
//! - a task of the current spec rejected because its image cannot be had
//!   (`No such image`, `pull access denied`, ...), while the service is short;
//! - `rollback_started` or `rollback_paused` on any service, and
//!   `rollback_completed` once the app service no longer carries the target's
//!   version label (Swarm's `failure_action: rollback` undid the deploy);
//! - an update `paused` on a service that is short of replicas of its current
//!   spec (Swarm's `failure_action: pause` after a task of the new spec failed);
//! - [`TASK_FAILURE_BOUND`] or more failed tasks of the current spec while the
//!   service is short (a crash loop);
//! - a container of the current spec `unhealthy` (Docker says so only after
//!   the healthcheck's retries have failed, outside its `start_period`).
//!
//! Not definitive: a task that failed and was restarted into a running one
//! (the service is not short), a `paused` left over on a service that runs all
//! its replicas, containers still `starting`, and anything about tasks or
//! containers of an older spec that Swarm is still replacing.

use crate::docker::{ContainerHealth, StackObservation};

/// Failed tasks of the version just deployed after which a service that is
/// still short of replicas counts as a crash loop. Three: one failure may be a
/// race at start, two a slow dependency; by the third restart Swarm's restart
/// policy has already waited twice and nothing has changed.
pub const TASK_FAILURE_BOUND: u32 = 3;

/// Task errors that mean the image cannot be had on this node, as Docker and
/// registries word them (a substring, compared ignoring case).
const IMAGE_ERRORS: &[&str] = &[
    "no such image",
    "pull access denied",
    "manifest unknown",
    "repository does not exist",
    "not found: manifest",
];

/// Why Docker has decided that `target` (the version label the deploy set on
/// the app service) fails on `stack`; `None` while it has not.
pub fn docker_verdict(stack: &StackObservation, target: &str) -> Option<String> {
    let app_at_target = stack.version_label() == Some(target);
    for service in stack.services.values() {
        let name = &service.name;
        let short = service.running_replicas < service.desired_replicas;
        let message = service.update_message.as_deref().unwrap_or("no message");
        // What the failing task said, added to Swarm's update message, which
        // names only the task.
        let task_error = service
            .current_spec_error
            .as_deref()
            .filter(|_| short)
            .map(|error| format!("; last task error: {error}"))
            .unwrap_or_default();
        if let Some(error) = service.current_spec_error.as_deref().filter(|_| short) {
            let lowered = error.to_ascii_lowercase();
            if IMAGE_ERRORS.iter().any(|needle| lowered.contains(needle)) {
                return Some(format!("{name} cannot get its image (task rejected: {error})"));
            }
        }
        match service.update_state.as_deref() {
            Some(state @ ("rollback_started" | "rollback_paused")) => {
                return Some(format!("swarm is rolling back {name} ({state}: {message})"));
            }
            Some(state @ "rollback_completed") if !app_at_target => {
                return Some(format!("swarm rolled back {name} ({state}: {message})"));
            }
            Some(state @ "paused") if short => {
                return Some(format!(
                    "swarm paused the update of {name} ({state}: {message}{task_error})"
                ));
            }
            _ => {}
        }
        if short && service.current_spec_failures >= TASK_FAILURE_BOUND {
            let error = service.current_spec_error.as_deref().unwrap_or("no error given");
            return Some(format!(
                "{name}: {} tasks of the new spec failed (last: {error})",
                service.current_spec_failures
            ));
        }
    }
    stack
        .containers
        .iter()
        .find(|container| container.current_spec && container.health == ContainerHealth::Unhealthy)
        .map(|container| {
            format!(
                "container {} is unhealthy (its healthcheck failed all its retries)",
                container.name
            )
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use expect_test::{expect, Expect};

    use super::*;
    use crate::docker::{ContainerObservation, ServiceObservation};

    const STACK: &str = "blog_example_org";
    const APP: &str = "blog_example_org_app";
    const TARGET: &str = "1.2.0+1.2";

    /// A stack with the app service at `label`, changed by `edit`, read for
    /// [`TARGET`]; renders the verdict or "waiting".
    fn check(label: &str, edit: impl FnOnce(&mut ServiceObservation, &mut Vec<ContainerObservation>), expect: Expect) {
        let mut service = ServiceObservation {
            name: APP.into(),
            labels: BTreeMap::from([(format!("coop-cloud.{STACK}.version"), label.to_owned())]),
            desired_replicas: 1,
            running_replicas: 1,
            update_state: Some("completed".into()),
            update_message: Some("update completed".into()),
            last_task_error: None,
            current_spec_failures: 0,
            current_spec_error: None,
        };
        let mut containers = Vec::new();
        edit(&mut service, &mut containers);
        let stack = StackObservation {
            stack: STACK.into(),
            services: BTreeMap::from([(APP.to_owned(), service)]),
            containers,
        };
        let rendered = docker_verdict(&stack, TARGET).unwrap_or_else(|| "waiting".into());
        expect.assert_eq(&rendered);
    }

    fn container(health: ContainerHealth, current_spec: bool) -> ContainerObservation {
        ContainerObservation {
            name: format!("{APP}.1.abc"),
            service: Some(APP.into()),
            health,
            current_spec,
        }
    }

    const PAUSED: &str = "update paused due to failure or early termination of task x4e";

    #[test]
    fn a_converged_or_converging_stack_is_not_decided() {
        check(TARGET, |_, _| {}, expect!["waiting"]);
        check(
            TARGET,
            |service, containers| {
                service.update_state = Some("updating".into());
                service.running_replicas = 0;
                containers.push(container(ContainerHealth::Starting, true));
            },
            expect!["waiting"],
        );
    }

    #[test]
    fn a_paused_update_of_a_short_service_is_swarms_verdict() {
        check(
            TARGET,
            |service, _| {
                service.update_state = Some("paused".into());
                service.update_message = Some(PAUSED.into());
                service.running_replicas = 0;
            },
            expect!["swarm paused the update of blog_example_org_app (paused: update paused due to failure or early termination of task x4e)"],
        );
        check(
            TARGET,
            |service, _| {
                service.update_state = Some("paused".into());
                service.update_message = Some(PAUSED.into());
                service.running_replicas = 0;
                service.current_spec_failures = 1;
                service.current_spec_error = Some("task: non-zero exit (1)".into());
            },
            expect!["swarm paused the update of blog_example_org_app (paused: update paused due to failure or early termination of task x4e; last task error: task: non-zero exit (1))"],
        );
        // Left over after a restart that recovered: every replica runs.
        check(
            TARGET,
            |service, _| {
                service.update_state = Some("paused".into());
                service.update_message = Some(PAUSED.into());
            },
            expect!["waiting"],
        );
    }

    #[test]
    fn swarms_own_rollback_is_its_verdict() {
        check(
            TARGET,
            |service, _| {
                service.update_state = Some("rollback_started".into());
                service.update_message = Some("update rolled back due to failure or early termination of task x4e".into());
            },
            expect!["swarm is rolling back blog_example_org_app (rollback_started: update rolled back due to failure or early termination of task x4e)"],
        );
        check(
            "1.1.0+1.1",
            |service, _| {
                service.update_state = Some("rollback_completed".into());
                service.update_message = Some("rollback completed".into());
            },
            expect!["swarm rolled back blog_example_org_app (rollback_completed: rollback completed)"],
        );
        // A rollback of an earlier deploy, seen while checking the version it returned to.
        check(
            TARGET,
            |service, _| {
                service.update_state = Some("rollback_completed".into());
                service.update_message = Some("rollback completed".into());
            },
            expect!["waiting"],
        );
    }

    #[test]
    fn an_image_that_cannot_be_had_is_decided_at_once() {
        check(
            TARGET,
            |service, _| {
                service.running_replicas = 0;
                service.current_spec_failures = 1;
                service.current_spec_error = Some("No such image: ccfleet-fixture-web:missing".into());
            },
            expect![
                "blog_example_org_app cannot get its image (task rejected: No such image: ccfleet-fixture-web:missing)"
            ],
        );
        check(
            TARGET,
            |service, _| {
                service.running_replicas = 0;
                service.current_spec_failures = 1;
                service.current_spec_error = Some("pull access denied for example/app, repository does not exist".into());
            },
            expect!["blog_example_org_app cannot get its image (task rejected: pull access denied for example/app, repository does not exist)"],
        );
    }

    #[test]
    fn repeated_task_failures_of_the_new_spec_are_a_crash_loop() {
        for failures in [1, 2] {
            check(
                TARGET,
                |service, _| {
                    service.running_replicas = 0;
                    service.current_spec_failures = failures;
                    service.current_spec_error = Some("task: non-zero exit (1)".into());
                },
                expect!["waiting"],
            );
        }
        check(
            TARGET,
            |service, _| {
                service.running_replicas = 0;
                service.current_spec_failures = TASK_FAILURE_BOUND;
                service.current_spec_error = Some("task: non-zero exit (1)".into());
            },
            expect!["blog_example_org_app: 3 tasks of the new spec failed (last: task: non-zero exit (1))"],
        );
        // Failed three times, then a restart recovered: not decided.
        check(
            TARGET,
            |service, _| {
                service.current_spec_failures = 4;
                service.current_spec_error = Some("task: non-zero exit (1)".into());
            },
            expect!["waiting"],
        );
    }

    #[test]
    fn an_unhealthy_container_counts_only_for_the_new_spec() {
        check(
            TARGET,
            |_, containers| containers.push(container(ContainerHealth::Unhealthy, true)),
            expect!["container blog_example_org_app.1.abc is unhealthy (its healthcheck failed all its retries)"],
        );
        check(
            TARGET,
            |_, containers| containers.push(container(ContainerHealth::Unhealthy, false)),
            expect!["waiting"],
        );
    }
}

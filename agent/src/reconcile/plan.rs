//! What a reconcile does about an app's version, as a pure function of what
//! Docker shows, the desired version and the work owed: the decision half of
//! `Reconciler::reconcile_app`, tested as a table.
//!
//! The desired version is max(declared, fleet target) (ARCHITECTURE.md, "Bird's-eye view":
//! who decides an app's version): a running version above it is kept (drift,
//! never a downgrade), one below it is moved up by the upgrade transaction.

use ccfleet_proto::{CoopVersion, VersionChange};

use super::{AppState, ObservedApp};

/// The version step a reconcile takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionStep {
    /// Docker could not be asked: fail with the reason.
    CannotObserve { reason: String },
    /// Not deployed: first deploy of the desired version.
    Deploy { version: CoopVersion },
    /// `deploy -f` of `version` (the env changed, the running version is
    /// unknown, or only its upstream part differs).
    Redeploy { version: CoopVersion, reason: String },
    /// Below the desired version: the upgrade transaction moves it.
    Upgrade { from: CoopVersion, to: CoopVersion },
    /// Nothing to run; wait until converged at `version`.
    Keep { version: CoopVersion },
    /// A FAILED operation may have left the app undeployed or on half-restored
    /// volumes: nothing is deployed outside the transaction until an operator
    /// acts and an operation succeeds.
    Blocked { operation_id: String, version: CoopVersion },
}

/// The max of the declared version and the fleet target.
pub fn desired_version(declared: &CoopVersion, fleet_target: Option<&CoopVersion>) -> CoopVersion {
    match fleet_target {
        Some(target) if target > declared => target.clone(),
        _ => declared.clone(),
    }
}

pub use crate::host::observe::explain_fleet_drift;

/// Decides the version step. `redeploy_owed`: why the running stack must be
/// redeployed (owned env keys changed, secrets rotated, or a redeploy failed
/// before) when the app existed before this reconcile. `blocked_by`: the
/// FAILED operation the app's journal record names.
pub fn version_step(
    observed: &ObservedApp,
    desired: &CoopVersion,
    redeploy_owed: Option<&str>,
    blocked_by: Option<&str>,
) -> VersionStep {
    let running = match (&observed.state, &observed.observed_version) {
        (AppState::Unknown, _) => {
            return VersionStep::CannotObserve {
                reason: observed.drift.join("; "),
            }
        }
        _ if blocked_by.is_some() => {
            return VersionStep::Blocked {
                operation_id: blocked_by.unwrap_or_default().to_owned(),
                version: desired.clone(),
            }
        }
        (AppState::NotDeployed, _) => {
            return VersionStep::Deploy {
                version: desired.clone(),
            }
        }
        (_, None) => {
            return VersionStep::Redeploy {
                version: desired.clone(),
                reason: "the running version is unknown".into(),
            }
        }
        (_, Some(running)) => running,
    };
    let keep_running = || {
        if let Some(reason) = redeploy_owed {
            VersionStep::Redeploy {
                version: running.clone(),
                reason: reason.into(),
            }
        } else {
            VersionStep::Keep {
                version: running.clone(),
            }
        }
    };
    match running.change_to(desired) {
        VersionChange::Same if running == desired => keep_running(),
        VersionChange::Same => VersionStep::Redeploy {
            version: desired.clone(),
            reason: "only the upstream part of the version differs".into(),
        },
        VersionChange::Compatible | VersionChange::Major => VersionStep::Upgrade {
            from: running.clone(),
            to: desired.clone(),
        },
        // Never below what runs: only an explicit rollback moves an app down.
        VersionChange::Downgrade => keep_running(),
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    fn version(text: &str) -> CoopVersion {
        text.parse().unwrap()
    }

    fn observed(state: AppState, running: Option<&str>) -> ObservedApp {
        ObservedApp {
            domain: "blog.example.org".parse().unwrap(),
            recipe: "ghost".parse().unwrap(),
            observed_version: running.map(version),
            declared_version: Some(version("1.0.0+5.0")),
            state,
            desired_replicas: 1,
            running_replicas: 1,
            drift: if state == AppState::Unknown {
                vec!["cannot observe: docker is down".into()]
            } else {
                vec![]
            },
            chaos: false,
        }
    }

    #[test]
    fn version_steps() {
        let rows = [
            (AppState::Unknown, None, "1.0.0+5.0", false),
            (AppState::NotDeployed, None, "1.0.0+5.0", false),
            (AppState::Converged, None, "1.0.0+5.0", false),
            (AppState::Converged, Some("1.0.0+5.0"), "1.0.0+5.0", false),
            (AppState::Converged, Some("1.0.0+5.0"), "1.0.0+5.0", true),
            (AppState::Converging, Some("1.0.0+5.0"), "1.0.0+5.1", false),
            (AppState::Converged, Some("1.0.0+5.0"), "1.1.0+5.1", true),
            (AppState::Degraded, Some("1.0.0+5.0"), "2.0.0+6.0", false),
            (AppState::Converged, Some("1.1.0+5.1"), "1.0.0+5.0", false),
            (AppState::Converged, Some("1.1.0+5.1"), "1.0.0+5.0", true),
        ];
        let blocked_rows = [
            (AppState::Unknown, None, "1.0.0+5.0", false),
            (AppState::NotDeployed, None, "1.0.0+5.0", false),
            (AppState::Degraded, Some("1.0.0+5.0"), "1.1.0+5.1", true),
            (AppState::Converged, Some("1.0.0+5.0"), "1.0.0+5.0", false),
        ];
        let rows = rows
            .into_iter()
            .map(|row| (row, None))
            .chain(blocked_rows.into_iter().map(|row| (row, Some("op-9"))));
        let lines: Vec<String> = rows
            .into_iter()
            .map(|((state, running, desired, owed), blocked)| {
                let reason = owed.then_some("env keys changed");
                let step = match version_step(&observed(state, running), &version(desired), reason, blocked) {
                    VersionStep::CannotObserve { reason } => format!("cannot observe: {reason}"),
                    VersionStep::Deploy { version } => format!("deploy {version}"),
                    VersionStep::Redeploy { version, reason } => format!("redeploy {version} ({reason})"),
                    VersionStep::Upgrade { from, to } => format!("upgrade {from} -> {to}"),
                    VersionStep::Keep { version } => format!("keep {version}"),
                    VersionStep::Blocked { operation_id, version } => {
                        format!("blocked by {operation_id} (desired {version})")
                    }
                };
                format!(
                    "{state} {} desired {desired} owed={owed}{}: {step}",
                    running.unwrap_or("-"),
                    blocked.map(|id| format!(" blocked_by={id}")).unwrap_or_default()
                )
            })
            .collect();
        expect![[r#"
            unknown - desired 1.0.0+5.0 owed=false: cannot observe: cannot observe: docker is down
            not deployed - desired 1.0.0+5.0 owed=false: deploy 1.0.0+5.0
            converged - desired 1.0.0+5.0 owed=false: redeploy 1.0.0+5.0 (the running version is unknown)
            converged 1.0.0+5.0 desired 1.0.0+5.0 owed=false: keep 1.0.0+5.0
            converged 1.0.0+5.0 desired 1.0.0+5.0 owed=true: redeploy 1.0.0+5.0 (env keys changed)
            converging 1.0.0+5.0 desired 1.0.0+5.1 owed=false: redeploy 1.0.0+5.1 (only the upstream part of the version differs)
            converged 1.0.0+5.0 desired 1.1.0+5.1 owed=true: upgrade 1.0.0+5.0 -> 1.1.0+5.1
            degraded 1.0.0+5.0 desired 2.0.0+6.0 owed=false: upgrade 1.0.0+5.0 -> 2.0.0+6.0
            converged 1.1.0+5.1 desired 1.0.0+5.0 owed=false: keep 1.1.0+5.1
            converged 1.1.0+5.1 desired 1.0.0+5.0 owed=true: redeploy 1.1.0+5.1 (env keys changed)
            unknown - desired 1.0.0+5.0 owed=false blocked_by=op-9: cannot observe: cannot observe: docker is down
            not deployed - desired 1.0.0+5.0 owed=false blocked_by=op-9: blocked by op-9 (desired 1.0.0+5.0)
            degraded 1.0.0+5.0 desired 1.1.0+5.1 owed=true blocked_by=op-9: blocked by op-9 (desired 1.1.0+5.1)
            converged 1.0.0+5.0 desired 1.0.0+5.0 owed=false blocked_by=op-9: blocked by op-9 (desired 1.0.0+5.0)"#]].assert_eq(&lines.join("\n"));
    }

    #[test]
    fn running_the_fleet_target_above_the_declaration_is_not_drift() {
        let mut app = observed(AppState::Converged, Some("1.1.0+5.1"));
        app.drift = vec![
            "declared 1.0.0+5.0, running 1.1.0+5.1".into(),
            "not converged: 0/1 replicas".into(),
        ];
        let mut other = app.clone();
        explain_fleet_drift(&mut app, &version("1.0.0+5.0"), Some(&version("1.1.0+5.1")));
        assert_eq!(app.drift, ["not converged: 0/1 replicas"]);
        other.drift.truncate(1);
        // Not the rollout's target: the plain drift stays.
        explain_fleet_drift(&mut other, &version("1.0.0+5.0"), Some(&version("1.2.0+5.2")));
        assert_eq!(other.drift, ["declared 1.0.0+5.0, running 1.1.0+5.1"]);
    }

    #[test]
    fn the_desired_version_is_the_max_of_declared_and_fleet_target() {
        let declared = version("1.1.0+5.1");
        assert_eq!(desired_version(&declared, None), declared);
        assert_eq!(desired_version(&declared, Some(&version("1.0.0+5.0"))), declared);
        assert_eq!(
            desired_version(&declared, Some(&version("1.2.0+5.2"))),
            version("1.2.0+5.2")
        );
    }
}

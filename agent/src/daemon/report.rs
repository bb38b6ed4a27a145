//! Reporting to the server through the outbox: the transaction's events, and
//! what a reconcile did as durable operation results (decided by the pure
//! [`reconcile_report`]) and as alerts (`daemon/alerting.rs`).

use std::sync::Arc;

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_proto::Domain;
use tokio::sync::Notify;

use super::Agent;
use crate::outbox::Outbox;
use crate::reconcile::{ReconcileAction, ReconcileError, ReconcileOutcome};
use crate::upgrade::Events;

/// The transaction's events go to the outbox.
pub(super) struct OutboxEvents {
    pub(super) outbox: Arc<Outbox>,
    pub(super) changed: Arc<Notify>,
}

impl std::fmt::Debug for OutboxEvents {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("OutboxEvents")
    }
}

impl Events for OutboxEvents {
    fn push(&self, body: Body) -> bool {
        let pushed = self.outbox.push(body);
        match pushed {
            Ok(_) => {
                self.changed.notify_one();
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot write to the outbox");
                false
            }
        }
    }
}

impl Agent {
    /// Stores a durable event; false (and logged) when the outbox cannot.
    pub(super) fn push(&self, body: Body) -> bool {
        let pushed = self.outbox.push(body);
        match pushed {
            Ok(_) => {
                self.outbox_changed.notify_one();
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot write to the outbox");
                false
            }
        }
    }

    /// Records what a reconcile did as durable operation results: changes as
    /// SUCCEEDED, failures as FAILED (once per distinct failure).
    pub(super) fn report(&self, results: &[(Domain, Result<ReconcileOutcome, ReconcileError>)]) {
        let reconciler = self.reconciler.borrow().clone();
        for (domain, result) in results {
            let operation_id = format!("local-{}", ccfleet_proto::tls::random_hex(8));
            if let Some(app) = reconciler.apps().iter().find(|app| &app.domain == domain) {
                self.alert(&reconciler.upgrader().settings().alerts_dir, app, result, &operation_id);
            }
            let report = {
                let mut failures = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
                let report = reconcile_report(domain, result, failures.get(domain).map(String::as_str), operation_id);
                match &report.last_failure {
                    LastFailure::Keep => {}
                    LastFailure::Clear => {
                        failures.remove(domain);
                    }
                    LastFailure::Set(message) => {
                        failures.insert(domain.clone(), message.clone());
                    }
                }
                report
            };
            if let Some(result) = report.result {
                self.push(Body::Result(result));
            }
        }
    }
}

/// What one app's reconcile result means for the server.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ReconcileReport {
    /// The operation result to store, if any.
    pub(super) result: Option<pb::OperationResult>,
    /// What becomes of the app's last reported failure.
    pub(super) last_failure: LastFailure,
}

/// The app's last reported failure after a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LastFailure {
    Keep,
    Clear,
    Set(String),
}

/// Decides what a reconcile of `domain` reports: a change as SUCCEEDED
/// (unless nothing changed, or an upgrade reported its own result under its
/// own operation id), a failure as FAILED unless it is the one reported last
/// (`last_failure`) or the upgrade transaction reported it already.
pub(super) fn reconcile_report(
    domain: &Domain,
    result: &Result<ReconcileOutcome, ReconcileError>,
    last_failure: Option<&str>,
    operation_id: String,
) -> ReconcileReport {
    match result {
        Ok(outcome) => {
            let changed = outcome.actions.iter().any(|action| {
                !matches!(
                    action,
                    ReconcileAction::AlreadyConverged | ReconcileAction::WaitedForConvergence
                )
            });
            let upgraded = outcome
                .actions
                .iter()
                .any(|action| matches!(action, ReconcileAction::Upgraded { .. }));
            let result = (changed && !upgraded).then(|| {
                let (from, to) = outcome
                    .actions
                    .iter()
                    .fold((None, None), |(from, to), action| match action {
                        ReconcileAction::Upgraded { from: f, to: t } => (from.or(Some(f.clone())), Some(t.clone())),
                        ReconcileAction::Deployed { version } | ReconcileAction::Redeployed { version, .. } => {
                            (from, Some(version.clone()))
                        }
                        _ => (from, to),
                    });
                let to = to.map(|v| v.to_string()).unwrap_or_default();
                pb::OperationResult {
                    operation_id,
                    domain: domain.to_string(),
                    outcome: pb::OperationOutcome::Succeeded as i32,
                    from_version: from.map(|v| v.to_string()).unwrap_or_default(),
                    // Deployed and converged: what was asked for runs.
                    running_version: to.clone(),
                    to_version: to,
                    message: outcome.summary(),
                }
            });
            ReconcileReport {
                result,
                last_failure: LastFailure::Clear,
            }
        }
        Err(error) if error.kind.reported_elsewhere() => ReconcileReport {
            result: None,
            last_failure: LastFailure::Keep,
        },
        Err(error) => {
            let message: String = error.to_string().chars().take(4000).collect();
            if last_failure == Some(message.as_str()) {
                return ReconcileReport {
                    result: None,
                    last_failure: LastFailure::Keep,
                };
            }
            ReconcileReport {
                result: Some(pb::OperationResult {
                    operation_id,
                    domain: domain.to_string(),
                    outcome: pb::OperationOutcome::Failed as i32,
                    message: message.clone(),
                    ..Default::default()
                }),
                last_failure: LastFailure::Set(message),
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::host::{AppState, ObservedApp};
    use crate::reconcile::ReconcileErrorKind;

    /// One reconcile's result, as `Agent::report` is given it.
    pub(crate) type Reconciled = Result<ReconcileOutcome, ReconcileError>;

    pub(crate) fn version(text: &str) -> ccfleet_proto::CoopVersion {
        text.parse().unwrap()
    }

    #[allow(clippy::result_large_err)] // the type the reports are made of
    pub(crate) fn outcome(actions: Vec<ReconcileAction>) -> Reconciled {
        let domain: Domain = "blog.example.org".parse().unwrap();
        Ok(ReconcileOutcome {
            domain: domain.clone(),
            actions,
            observed: ObservedApp {
                domain,
                recipe: "ghost".parse().unwrap(),
                observed_version: Some(version("1.0.0+5.0")),
                declared_version: Some(version("1.0.0+5.0")),
                state: AppState::Converged,
                desired_replicas: 1,
                running_replicas: 1,
                drift: vec![],
                chaos: false,
            },
        })
    }

    #[allow(clippy::result_large_err)] // the type the reports are made of
    pub(crate) fn failure(kind: ReconcileErrorKind) -> Reconciled {
        first_failure(kind, false)
    }

    #[allow(clippy::result_large_err)] // the type the reports are made of
    pub(crate) fn first_failure(kind: ReconcileErrorKind, first_deploy: bool) -> Reconciled {
        Err(ReconcileError {
            domain: "blog.example.org".parse().unwrap(),
            kind,
            actions: vec![],
            first_deploy,
        })
    }

    #[test]
    fn what_a_reconcile_reports() {
        let observe = || ReconcileErrorKind::Observe {
            reason: "docker is down".into(),
        };
        let down = "blog.example.org: cannot observe the app: docker is down";
        let failed = format!("FAILED  ->  {down:?} set");
        let rows: Vec<(&str, Reconciled, Option<&str>, &str)> = vec![
            (
                "nothing to do",
                outcome(vec![ReconcileAction::AlreadyConverged]),
                None,
                "- clear",
            ),
            (
                "only waited",
                outcome(vec![ReconcileAction::WaitedForConvergence]),
                Some(down),
                "- clear",
            ),
            (
                "deployed",
                outcome(vec![
                    ReconcileAction::Created,
                    ReconcileAction::Deployed {
                        version: version("1.0.0+5.0"),
                    },
                ]),
                None,
                "SUCCEEDED  -> 1.0.0+5.0 \"created, deployed 1.0.0+5.0\" clear",
            ),
            (
                "redeployed",
                outcome(vec![ReconcileAction::Redeployed {
                    version: version("1.0.0+5.0"),
                    reason: "env keys changed".into(),
                }]),
                None,
                "SUCCEEDED  -> 1.0.0+5.0 \"redeployed 1.0.0+5.0 (env keys changed)\" clear",
            ),
            (
                "upgraded: the transaction reported it",
                outcome(vec![ReconcileAction::Upgraded {
                    from: version("1.0.0+5.0"),
                    to: version("1.1.0+5.1"),
                }]),
                None,
                "- clear",
            ),
            ("a new failure", failure(observe()), None, &failed),
            (
                "another failure",
                failure(observe()),
                Some("blog.example.org: other"),
                &failed,
            ),
            ("the same failure again", failure(observe()), Some(down), "- keep"),
            (
                "held back: reported elsewhere",
                failure(ReconcileErrorKind::HeldBack {
                    to: version("2.0.0+6.0"),
                    reason: "major".into(),
                }),
                None,
                "- keep",
            ),
        ];
        let domain: Domain = "blog.example.org".parse().unwrap();
        for (name, result, last, expected) in rows {
            let report = reconcile_report(&domain, &result, last, "local-1".into());
            let shown = match &report.result {
                None => "-".to_owned(),
                Some(result) => {
                    assert_eq!(
                        (result.operation_id.as_str(), result.domain.as_str()),
                        ("local-1", "blog.example.org")
                    );
                    format!(
                        "{} {} -> {} {:?}",
                        result.outcome().as_str_name().trim_start_matches("OPERATION_OUTCOME_"),
                        result.from_version,
                        result.to_version,
                        result.message
                    )
                }
            };
            let last = match &report.last_failure {
                LastFailure::Keep => "keep".to_owned(),
                LastFailure::Clear => "clear".to_owned(),
                LastFailure::Set(message) => {
                    assert_eq!(Some(message), report.result.as_ref().map(|result| &result.message));
                    "set".to_owned()
                }
            };
            assert_eq!(format!("{shown} {last}"), expected, "{name}");
        }
    }
}

//! What a reconcile means for the app's alert: a failed first deploy, a
//! blocked app and a failed secret insert raise one (the pure
//! [`reconcile_alert`]); the file and the server's event are written at this
//! edge, as the upgrade transaction writes its own.

use std::path::Path;

use ccfleet_proto::pb::agent_message::Body;

use super::Agent;
use crate::alerts::{self, Alert, AlertKind, Severity};
use crate::config::AppConfig;
use crate::reconcile::{ReconcileError, ReconcileErrorKind, ReconcileOutcome};
use crate::upgrade::model::Outcome;

impl Agent {
    /// Raises, keeps or clears the app's alert as [`reconcile_alert`] decides.
    pub(super) fn alert(
        &self,
        alerts_dir: &Path,
        app: &AppConfig,
        result: &Result<ReconcileOutcome, ReconcileError>,
        operation_id: &str,
    ) {
        let domain = app.domain.as_str();
        let open = alerts::read(alerts_dir, domain);
        match reconcile_alert(app, result, open.as_ref(), operation_id, &alerts::now()) {
            AlertStep::Keep => {}
            AlertStep::Raise(alert) => {
                match alerts::write(alerts_dir, &alert) {
                    Ok(path) => tracing::warn!(alert = %path.display(), reason = %alert.reason, "alert written"),
                    Err(error) => tracing::error!(%error, "cannot write the app's alert"),
                }
                self.push(Body::Alert(alert.to_event()));
            }
            AlertStep::Clear => match alerts::clear(alerts_dir, domain) {
                Ok(true) => {
                    tracing::info!(app = domain, "alert cleared: the app reconciled");
                    self.push(Body::Alert(alerts::cleared_event(
                        domain,
                        app.recipe.as_str(),
                        operation_id,
                    )));
                }
                Ok(false) => {}
                Err(error) => tracing::error!(%error, "cannot clear the app's alert"),
            },
        }
    }
}

/// What a reconcile's result means for the app's alert file.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum AlertStep {
    /// Leave the file (and the server) as they are.
    Keep,
    /// Write this alert, replacing the open one, and send it (boxed: the
    /// other steps carry nothing).
    Raise(Box<Alert>),
    /// Remove the open alert and send its clearing.
    Clear,
}

/// Decides the alert of a reconcile of `app`, given its open alert: a
/// failed first deploy (critical), a blocked app whose open alert does not
/// name the blocking operation (critical), a failed secret insert (critical
/// on a first deploy, otherwise a warning: the old secret still runs) raise
/// one, unless the same one is open; a success clears an alert a reconcile
/// raised (an upgrade's waits for a successful operation). `operation_id`
/// is the id the reconcile's result is reported under; `now` is RFC 3339.
pub(super) fn reconcile_alert(
    app: &AppConfig,
    result: &Result<ReconcileOutcome, ReconcileError>,
    open: Option<&Alert>,
    operation_id: &str,
    now: &str,
) -> AlertStep {
    let error = match result {
        Ok(_) if open.is_some_and(|alert| alert.kind.from_reconcile()) => return AlertStep::Clear,
        Ok(_) => return AlertStep::Keep,
        Err(error) => error,
    };
    let reason = |prefix: &str| -> String { format!("{prefix}: {}", error.kind).chars().take(4000).collect() };
    let (kind, severity, to, operation_id, reason) = match &error.kind {
        ReconcileErrorKind::Blocked {
            to,
            operation_id: blocking,
            reason: why,
        } => {
            if open.is_some_and(|alert| &alert.operation_id == blocking) {
                return AlertStep::Keep;
            }
            (
                AlertKind::Blocked,
                Severity::Critical,
                to.to_string(),
                blocking.clone(),
                why.chars().take(4000).collect(),
            )
        }
        ReconcileErrorKind::SecretInsert { .. } => (
            AlertKind::SecretInsert,
            if error.first_deploy {
                Severity::Critical
            } else {
                Severity::Warning
            },
            app.version.to_string(),
            operation_id.to_owned(),
            reason("secret insert failed"),
        ),
        kind if error.first_deploy && !kind.reported_elsewhere() => (
            AlertKind::FirstDeploy,
            Severity::Critical,
            app.version.to_string(),
            operation_id.to_owned(),
            reason("first deploy failed"),
        ),
        _ => return AlertStep::Keep,
    };
    if open.is_some_and(|alert| alert.kind == kind && alert.severity == severity && alert.reason == reason) {
        return AlertStep::Keep;
    }
    AlertStep::Raise(Box::new(Alert {
        domain: app.domain.to_string(),
        recipe: app.recipe.to_string(),
        from: String::new(),
        to,
        running: None,
        outcome: Outcome::Failed,
        severity,
        reason,
        operation_id,
        snapshot_path: None,
        time: now.to_owned(),
        kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::report::tests::{failure, first_failure, outcome, version, Reconciled};
    use crate::reconcile::ReconcileAction;

    fn app() -> AppConfig {
        let text = r#"
            [server]
            url = "https://fleet.example.org"
            [[app]]
            domain = "blog.example.org"
            recipe = "ghost"
            version = "1.0.0+5.0"
        "#;
        let config = crate::config::Config::from_toml_str_with_hostname(text, "agent.toml".as_ref(), "host").unwrap();
        config.apps[0].clone()
    }

    fn open_alert(kind: AlertKind, operation_id: &str, reason: &str, severity: Severity) -> Alert {
        Alert {
            domain: "blog.example.org".into(),
            recipe: "ghost".into(),
            from: String::new(),
            to: "1.0.0+5.0".into(),
            running: None,
            outcome: Outcome::Failed,
            severity,
            reason: reason.into(),
            operation_id: operation_id.into(),
            snapshot_path: None,
            time: "2026-12-07T15:00:00Z".into(),
            kind,
        }
    }

    #[test]
    fn what_a_reconcile_alerts() {
        let app_new = || ReconcileErrorKind::Abra {
            step: "create the app (abra app new)".into(),
            error: Box::new(crate::abra::AbraError::Io {
                action: "unknown recipe ghost",
                path: "/abra".into(),
                source: std::io::Error::other("x"),
            }),
        };
        let insert = || ReconcileErrorKind::SecretInsert {
            step: "insert secret api_key (abra app secret insert)".into(),
            error: Box::new(crate::abra::AbraError::Io {
                action: "refused",
                path: "/abra".into(),
                source: std::io::Error::other("x"),
            }),
        };
        let blocked = || ReconcileErrorKind::Blocked {
            to: version("1.0.0+5.0"),
            operation_id: "op-fail".into(),
            reason: "blocked by failed operation op-fail: an operator must act".into(),
        };
        let first_reason = "first deploy failed: cannot create the app (abra app new): /abra: unknown recipe ghost: x";
        let upgrade_alert = open_alert(AlertKind::Upgrade, "op-1", "rolled back", Severity::Warning);
        let same_first = open_alert(AlertKind::FirstDeploy, "local-0", first_reason, Severity::Critical);
        let failed_op = open_alert(AlertKind::Upgrade, "op-fail", "the rollback failed", Severity::Critical);
        let raised_first = format!("raise first_deploy critical local-1 {first_reason}");
        let rows: Vec<(&str, Reconciled, Option<&Alert>, &str)> = vec![
            (
                "success, no alert",
                outcome(vec![ReconcileAction::AlreadyConverged]),
                None,
                "keep",
            ),
            (
                "success keeps an upgrade's alert",
                outcome(vec![ReconcileAction::AlreadyConverged]),
                Some(&upgrade_alert),
                "keep",
            ),
            (
                "success clears a reconcile's alert",
                outcome(vec![ReconcileAction::Created]),
                Some(&same_first),
                "clear",
            ),
            (
                "a failed first deploy",
                first_failure(app_new(), true),
                None,
                &raised_first,
            ),
            (
                "the same failed first deploy again",
                first_failure(app_new(), true),
                Some(&same_first),
                "keep",
            ),
            (
                "a failed first deploy replaces an upgrade's alert",
                first_failure(app_new(), true),
                Some(&upgrade_alert),
                &raised_first,
            ),
            (
                "the same failure on a running app: not alerted",
                failure(app_new()),
                None,
                "keep",
            ),
            (
                "a held-back target on a first deploy: reported elsewhere",
                first_failure(
                    ReconcileErrorKind::HeldBack {
                        to: version("2.0.0+6.0"),
                        reason: "major".into(),
                    },
                    true,
                ),
                None,
                "keep",
            ),
            (
                "a failed secret insert on a first deploy",
                first_failure(insert(), true),
                None,
                "raise secret_insert critical local-1 secret insert failed: cannot insert secret api_key \
                 (abra app secret insert): /abra: refused: x",
            ),
            (
                "a failed secret rotation: the old secret runs",
                failure(insert()),
                None,
                "raise secret_insert warning local-1 secret insert failed: cannot insert secret api_key \
                 (abra app secret insert): /abra: refused: x",
            ),
            (
                "blocked, the failed operation's alert open",
                failure(blocked()),
                Some(&failed_op),
                "keep",
            ),
            (
                "blocked, no alert open",
                failure(blocked()),
                None,
                "raise blocked critical op-fail blocked by failed operation op-fail: an operator must act",
            ),
            (
                "blocked, another alert replaced the failed one's",
                failure(blocked()),
                Some(&upgrade_alert),
                "raise blocked critical op-fail blocked by failed operation op-fail: an operator must act",
            ),
        ];
        for (name, result, open, expected) in rows {
            let step = reconcile_alert(&app(), &result, open, "local-1", "2026-12-07T16:00:00Z");
            let shown = match step {
                AlertStep::Keep => "keep".to_owned(),
                AlertStep::Clear => "clear".to_owned(),
                AlertStep::Raise(alert) => {
                    assert_eq!(
                        (
                            alert.outcome,
                            alert.to.as_str(),
                            alert.recipe.as_str(),
                            alert.time.as_str()
                        ),
                        (Outcome::Failed, "1.0.0+5.0", "ghost", "2026-12-07T16:00:00Z"),
                        "{name}"
                    );
                    format!(
                        "raise {} {} {} {}",
                        serde_json::to_value(alert.kind).unwrap().as_str().unwrap(),
                        serde_json::to_value(alert.severity).unwrap().as_str().unwrap(),
                        alert.operation_id,
                        alert.reason
                    )
                }
            };
            assert_eq!(shown, expected, "{name}");
        }
    }
}

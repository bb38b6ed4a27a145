//! What hosts reported about their operations: open alerts and the
//! operations log, as JSON documents and tables.

use ccfleet::names::{operation_outcome as outcome, operation_phase as phase};
use ccfleet_proto::pb;
use serde::Serialize;

use super::table::{non_empty, or_dash, terminal_width, time, Fit, Grid};

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
    /// Running before the operation.
    pub from_version: Option<String>,
    /// Asked for.
    pub to_version: Option<String>,
    /// Running after the operation; null when the host did not say.
    pub running_version: Option<String>,
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
        running_version: non_empty(&alert.running_version),
        reason: alert.message.clone(),
        operation_id: non_empty(&alert.operation_id),
        snapshot_path: non_empty(&alert.snapshot_path),
        raised_at: time(alert.raised_at.as_ref()),
    }
}

pub fn alerts_grid(alerts: &[AlertJson]) -> Grid {
    let mut grid = Grid::new(&[
        ("RAISED", Fit::Whole),
        ("HOST", Fit::Whole),
        ("APP", Fit::Whole),
        // Severity and outcome, and the two versions, share a column each: whole
        // values wrap at their spaces, so the table fits 100 columns without
        // breaking a version or a domain.
        ("ALERT", Fit::Whole),
        ("FROM -> TO", Fit::Whole),
        ("REASON", Fit::Cut),
    ]);
    for alert in alerts {
        grid.row(vec![
            or_dash(&alert.raised_at),
            alert.host_id.clone(),
            alert.domain.clone(),
            format!("{} {}", alert.severity, alert.outcome.unwrap_or("-")),
            format!("{} -> {}", or_dash(&alert.from_version), or_dash(&alert.to_version)),
            alert.reason.clone(),
        ]);
    }
    grid
}

pub fn alerts_table(alerts: &[AlertJson]) -> String {
    if alerts.is_empty() {
        return "no open alerts".into();
    }
    alerts_grid(alerts).render(terminal_width())
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
    /// Running before the operation.
    pub from_version: Option<String>,
    /// Asked for, whatever the outcome.
    pub to_version: Option<String>,
    /// Running after the operation; null while it runs or when the host
    /// did not say.
    pub running_version: Option<String>,
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
        running_version: non_empty(&operation.running_version),
        message: operation.message.clone(),
        updated_at: time(operation.updated_at.as_ref()),
    }
}

pub fn operations_grid(operations: &[OperationJson]) -> Grid {
    let mut grid = Grid::new(&[
        ("UPDATED", Fit::Whole),
        ("HOST", Fit::Whole),
        ("APP", Fit::Whole),
        ("OPERATION", Fit::Whole),
        ("PHASE", Fit::Whole),
        ("OUTCOME", Fit::Whole),
        ("FROM", Fit::Whole),
        ("TO", Fit::Whole),
        ("MESSAGE", Fit::Cut),
    ]);
    for operation in operations {
        grid.row(vec![
            or_dash(&operation.updated_at),
            operation.host_id.clone(),
            operation.domain.clone(),
            operation.operation_id.clone(),
            operation.phase.to_owned(),
            operation.outcome.unwrap_or("running").to_owned(),
            or_dash(&operation.from_version),
            or_dash(&operation.to_version),
            operation.message.clone(),
        ]);
    }
    grid
}

pub fn operations_table(operations: &[OperationJson]) -> String {
    if operations.is_empty() {
        return "no operations recorded".into();
    }
    operations_grid(operations).render(terminal_width())
}

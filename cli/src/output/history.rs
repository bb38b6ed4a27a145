//! What hosts reported about their operations: alerts and the operations
//! log, as JSON documents and tables.

use ccfleet::names::{operation_outcome as outcome, operation_phase as phase};
use ccfleet_proto::pb;
use serde::Serialize;

use super::table::{non_empty, or_dash, terminal_width, time, Fit, Grid};

#[derive(Debug, Serialize)]
pub struct AlertJson {
    /// The alert's short id, for `ccfleet alerts ack ID`.
    pub id: String,
    /// "open", "acknowledged", "resolved" or "unknown".
    pub state: &'static str,
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
    /// The admin who acknowledged it, why, when and until when (null: until
    /// the app fails again or recovers); null unless acknowledged.
    pub acknowledged_by: Option<String>,
    pub acknowledged_reason: Option<String>,
    pub acknowledged_at: Option<String>,
    pub acknowledged_until: Option<String>,
    /// RFC 3339, UTC; null unless resolved.
    pub resolved_at: Option<String>,
}

fn alert_state(value: i32) -> &'static str {
    match pb::AlertState::try_from(value) {
        Ok(pb::AlertState::Open) => "open",
        Ok(pb::AlertState::Acknowledged) => "acknowledged",
        Ok(pb::AlertState::Resolved) => "resolved",
        Ok(pb::AlertState::Unspecified) | Err(_) => "unknown",
    }
}

pub fn alert(alert: &pb::Alert) -> AlertJson {
    let acknowledged = alert.acknowledged_at.is_some();
    AlertJson {
        id: alert.id.clone(),
        state: alert_state(alert.state),
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
        acknowledged_by: acknowledged.then(|| alert.acknowledged_by.clone()),
        acknowledged_reason: acknowledged.then(|| alert.acknowledged_reason.clone()),
        acknowledged_at: time(alert.acknowledged_at.as_ref()),
        acknowledged_until: time(alert.acknowledged_until.as_ref()),
        resolved_at: time(alert.resolved_at.as_ref()),
    }
}

pub use ccfleet::dashboard::model::sort_alerts;

pub fn alerts_grid(alerts: &[AlertJson]) -> Grid {
    let mut grid = Grid::new(&[
        ("ID", Fit::Whole),
        ("RAISED", Fit::Whole),
        ("HOST", Fit::Whole),
        ("APP", Fit::Whole),
        // Severity, outcome and state, and the two versions, share a column
        // each, and the time wraps between date and time: whole values wrap
        // at their spaces, so the table fits 100 columns without breaking a
        // version or a domain.
        ("ALERT", Fit::Whole),
        ("FROM -> TO", Fit::Whole),
        ("REASON", Fit::Cut),
    ]);
    for alert in alerts {
        grid.row(vec![
            alert.id.clone(),
            alert
                .raised_at
                .as_ref()
                .map_or_else(|| "-".into(), |at| at.replacen('T', " ", 1)),
            alert.host_id.clone(),
            alert.domain.clone(),
            format!("{} {} {}", alert.severity, alert.outcome.unwrap_or("-"), alert.state),
            format!("{} -> {}", or_dash(&alert.from_version), or_dash(&alert.to_version)),
            alert.reason.clone(),
        ]);
    }
    grid
}

/// The alerts table; `all`: acknowledged and resolved ones were asked for too.
pub fn alerts_table(alerts: &[AlertJson], all: bool) -> String {
    if alerts.is_empty() {
        return if all { "no alerts" } else { "no open alerts" }.into();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn wire(id: &str, host: &str, state: pb::AlertState, received: i64) -> pb::Alert {
        pb::Alert {
            id: id.into(),
            state: state as i32,
            host_id: host.into(),
            domain: "blog.coop.example".into(),
            severity: pb::AlertSeverity::Critical as i32,
            outcome: pb::OperationOutcome::RolledBack as i32,
            from_version: "1.3.0+6.42.0-alpine".into(),
            to_version: "1.4.0+6.43.0-alpine".into(),
            message: "health gate failed: GET /ghost/api/admin/site/ answered 502".into(),
            raised_at: timestamp(received),
            received_at: timestamp(received),
            ..Default::default()
        }
    }

    #[test]
    fn the_alerts_table_shows_id_and_state_within_100_columns_without_breaking_names() {
        let alerts: Vec<AlertJson> = [
            wire("7", "web-1", pb::AlertState::Open, 1_800_000_000),
            wire("12345", "web-2", pb::AlertState::Acknowledged, 1_800_000_100),
            wire("3", "web-3", pb::AlertState::Resolved, 1_800_000_200),
        ]
        .iter()
        .map(alert)
        .collect();
        let table = alerts_grid(&alerts).render(100);
        for line in table.lines() {
            assert!(line.chars().count() <= 100, "wider than 100 columns:\n{table}");
        }
        for whole in [
            "blog.coop.example",
            "1.3.0+6.42.0-alpine",
            "1.4.0+6.43.0-alpine",
            "acknowledged",
            "resolved",
            "12345",
            "2027-01-15",
        ] {
            assert!(table.contains(whole), "{whole} is not shown whole:\n{table}");
        }
        assert_eq!(alerts_table(&[], false), "no open alerts");
        assert_eq!(alerts_table(&[], true), "no alerts");
    }

    #[test]
    fn alerts_sort_newest_first_by_receive_time() {
        let mut alerts = vec![
            wire("1", "web-1", pb::AlertState::Open, 10),
            wire("2", "web-2", pb::AlertState::Open, 30),
            wire("3", "web-0", pb::AlertState::Open, 20),
            pb::Alert {
                received_at: None,
                ..wire("4", "web-4", pb::AlertState::Open, 25)
            },
        ];
        sort_alerts(&mut alerts);
        let ids: Vec<&str> = alerts.iter().map(|alert| alert.id.as_str()).collect();
        assert_eq!(ids, ["2", "4", "3", "1"]);
    }
}

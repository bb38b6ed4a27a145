//! Notifications as the store queues them: what happened (an alert opened,
//! escalated or resolved; a rollout completed or halted), about what, and
//! its idempotency key. `notify::decide` makes them, `notify::render` turns
//! them into what a webhook receives.

use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};
use serde::{Deserialize, Serialize};

use super::{AlertRecord, AlertSeverityRecord, OperationOutcomeRecord, RolloutStateRecord, UnixMillis};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    AlertOpened,
    AlertEscalated,
    AlertResolved,
    RolloutCompleted,
    RolloutHalted,
}

impl NotificationKind {
    pub fn name(self) -> &'static str {
        match self {
            NotificationKind::AlertOpened => "alert_opened",
            NotificationKind::AlertEscalated => "alert_escalated",
            NotificationKind::AlertResolved => "alert_resolved",
            NotificationKind::RolloutCompleted => "rollout_completed",
            NotificationKind::RolloutHalted => "rollout_halted",
        }
    }
}

/// The alert a notification is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertNotice {
    pub host_id: HostId,
    pub domain: Domain,
    pub recipe: Option<RecipeName>,
    pub severity: AlertSeverityRecord,
    pub outcome: OperationOutcomeRecord,
    pub from_version: Option<CoopVersion>,
    pub to_version: Option<CoopVersion>,
    pub reason: String,
    pub operation_id: Option<String>,
    pub raised_at: UnixMillis,
}

impl AlertNotice {
    pub fn of(alert: &AlertRecord) -> AlertNotice {
        AlertNotice {
            host_id: alert.host_id.clone(),
            domain: alert.domain.clone(),
            recipe: alert.recipe.clone(),
            severity: alert.severity,
            outcome: alert.outcome,
            from_version: alert.from_version.clone(),
            to_version: alert.to_version.clone(),
            reason: alert.reason.clone(),
            operation_id: alert.operation_id.clone(),
            raised_at: alert.raised_at,
        }
    }
}

/// The rollout a notification is about, counted by host outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutNotice {
    pub id: String,
    pub recipe: RecipeName,
    pub target: CoopVersion,
    pub state: RolloutStateRecord,
    pub reason: String,
    pub hosts: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
}

/// One queued notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRecord {
    /// The idempotency key: the same event always gets the same id, so a
    /// receiver can drop a repeated delivery.
    pub id: String,
    pub kind: NotificationKind,
    /// When the server queued it.
    pub created_at: UnixMillis,
    pub alert: Option<AlertNotice>,
    pub rollout: Option<RolloutNotice>,
}

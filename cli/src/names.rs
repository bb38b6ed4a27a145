//! The names `ccfleet --json`, the tables and the dashboard give to the
//! wire's enum values: one list, so that a state is spelled the same on every
//! screen. A value this client does not know (from a newer server) is
//! "unknown" (an operation outcome: none).

use ccfleet_proto::pb;

pub fn host_status(value: i32) -> &'static str {
    match pb::HostStatus::try_from(value) {
        Ok(pb::HostStatus::Online) => "online",
        _ => "offline",
    }
}

pub fn app_state(value: i32) -> &'static str {
    match pb::AppState::try_from(value) {
        Ok(pb::AppState::Converged) => "converged",
        Ok(pb::AppState::Converging) => "converging",
        Ok(pb::AppState::Degraded) => "degraded",
        Ok(pb::AppState::NotDeployed) => "not_deployed",
        _ => "unknown",
    }
}

pub fn operation_outcome(value: i32) -> Option<&'static str> {
    match pb::OperationOutcome::try_from(value) {
        Ok(pb::OperationOutcome::Succeeded) => Some("succeeded"),
        Ok(pb::OperationOutcome::RolledBack) => Some("rolled_back"),
        Ok(pb::OperationOutcome::Held) => Some("held"),
        Ok(pb::OperationOutcome::Failed) => Some("failed"),
        Ok(pb::OperationOutcome::Skipped) => Some("skipped"),
        _ => None,
    }
}

pub fn operation_phase(value: i32) -> &'static str {
    match pb::OperationPhase::try_from(value) {
        Ok(pb::OperationPhase::Accepted) => "accepted",
        Ok(pb::OperationPhase::Snapshotting) => "snapshotting",
        Ok(pb::OperationPhase::Deploying) => "deploying",
        Ok(pb::OperationPhase::Verifying) => "verifying",
        Ok(pb::OperationPhase::RollingBack) => "rolling_back",
        _ => "unknown",
    }
}

pub fn severity(value: i32) -> &'static str {
    match pb::AlertSeverity::try_from(value) {
        Ok(pb::AlertSeverity::Warning) => "warning",
        Ok(pb::AlertSeverity::Critical) => "critical",
        _ => "unknown",
    }
}

pub fn host_outcome(value: i32) -> &'static str {
    match pb::HostOutcome::try_from(value) {
        Ok(pb::HostOutcome::Pending) => "pending",
        Ok(pb::HostOutcome::Dispatched) => "dispatched",
        Ok(pb::HostOutcome::Upgrading) => "upgrading",
        Ok(pb::HostOutcome::Succeeded) => "succeeded",
        Ok(pb::HostOutcome::RolledBack) => "rolled_back",
        Ok(pb::HostOutcome::Held) => "held",
        Ok(pb::HostOutcome::Failed) => "failed",
        Ok(pb::HostOutcome::Skipped) => "skipped",
        Ok(pb::HostOutcome::TimedOut) => "timed_out",
        _ => "unknown",
    }
}

pub fn rollout_state(value: i32) -> &'static str {
    match pb::RolloutState::try_from(value) {
        Ok(pb::RolloutState::Running) => "running",
        Ok(pb::RolloutState::Paused) => "paused",
        Ok(pb::RolloutState::Completed) => "completed",
        Ok(pb::RolloutState::Halted) => "halted",
        Ok(pb::RolloutState::Aborted) => "aborted",
        _ => "unknown",
    }
}

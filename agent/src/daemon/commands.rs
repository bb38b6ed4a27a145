//! Server commands (`UpgradeCommand`, `RollbackCommand`): the same
//! transaction as a local upgrade, under the server's operation id.

use std::sync::Arc;
use std::time::Duration;

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_proto::{CoopVersion, Domain};

use super::requests::run_operation;
use super::Agent;
use crate::upgrade::model::Trigger;
use crate::upgrade::{self, Ask, OperationRequest, RunResult};

/// A server command: the same transaction, under the server's operation id.
/// Its result travels through the outbox, once per operation id.
pub(super) async fn handle_command(agent: &Arc<Agent>, command: pb::Command) {
    let id = command.operation_id.clone();
    let (domain, version, trigger, allow_major, deadline) = match command.kind {
        Some(pb::command::Kind::Upgrade(upgrade)) => (
            upgrade.domain,
            upgrade.version,
            Trigger::FleetUpgrade,
            upgrade.allow_major,
            // 0: no deadline of the rollout's own.
            (upgrade.deadline_seconds > 0).then(|| Duration::from_secs(u64::from(upgrade.deadline_seconds))),
        ),
        Some(pb::command::Kind::Rollback(rollback)) => {
            (rollback.domain, rollback.version, Trigger::FleetRollback, false, None)
        }
        None => {
            tracing::warn!(operation = %id, "a server command without a kind: ignored");
            return;
        }
    };
    let refuse = |message: String| {
        tracing::warn!(operation = %id, %message, "server command refused");
        agent.push(Body::Result(pb::OperationResult {
            operation_id: id.clone(),
            domain: domain.clone(),
            outcome: pb::OperationOutcome::Skipped as i32,
            message,
            ..Default::default()
        }));
    };
    if id.is_empty() {
        tracing::warn!("a server command without an operation id: ignored");
        return;
    }
    if let Err(reason) = upgrade::check_operation_id(&id) {
        return refuse(reason);
    }
    let parsed_domain = match domain.parse::<Domain>() {
        Ok(parsed) => parsed,
        Err(error) => return refuse(format!("invalid domain: {error}")),
    };
    let target = match version.parse::<CoopVersion>() {
        Ok(target) => target,
        Err(error) => return refuse(format!("invalid version: {error}")),
    };
    let reconciler = agent.reconciler.borrow().clone();
    let Some(app) = reconciler
        .apps()
        .iter()
        .find(|app| app.domain == parsed_domain)
        .cloned()
    else {
        if let Err(error) = reconciler
            .upgrader()
            .skip_undeclared(&id, parsed_domain, target, trigger)
        {
            tracing::error!(%error, "cannot journal a skipped command");
        }
        return;
    };
    let request = OperationRequest {
        id: id.clone(),
        ask: Ask {
            trigger,
            target,
            allow_major,
        },
        deadline,
    };
    match run_operation(agent, &app, &request).await {
        Ok(RunResult::Finished(report)) => tracing::info!(
            operation = %id,
            outcome = %report.outcome,
            replayed = report.replayed,
            reason = %report.reason,
            "server command finished"
        ),
        Ok(RunResult::LeftAlone { reason }) => {
            tracing::info!(operation = %id, %reason, "server command left the app alone")
        }
        Err(error) => tracing::error!(operation = %id, %error, "server command failed"),
    }
}

//! The upgrade transaction's records, apart from how they are stored: one
//! operation (`OperationRecord`: phase, failure, snapshot), its outcome and
//! trigger, and what the agent remembers per app between operations
//! (`AppRecord`). `upgrade::machine` decides over them; `journal` encodes
//! and stores them.

use std::path::PathBuf;

use ccfleet_proto::{CoopVersion, Domain, RecipeName};
use serde::{Deserialize, Serialize};

/// The format of every record; a record of another format is refused.
pub const FORMAT: u32 = 1;

/// The final outcome of an operation (the wire contract's outcomes, spelt
/// as the wire and the CLI spell them: `ROLLED_BACK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Succeeded,
    RolledBack,
    Held,
    Failed,
    Skipped,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Outcome::Succeeded => "SUCCEEDED",
            Outcome::RolledBack => "ROLLED_BACK",
            Outcome::Held => "HELD",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "SKIPPED",
        })
    }
}

/// Who asked for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The declared version was raised (`apply`, the periodic reconcile).
    Declared,
    /// `ccfleet-agent update DOMAIN` (the autoUpdate timer).
    AutoUpdate,
    /// `ccfleet-agent upgrade DOMAIN`.
    Operator,
    /// A server `UpgradeCommand`.
    FleetUpgrade,
    /// A server `RollbackCommand`.
    FleetRollback,
}

/// Where an operation stands. Each phase is written before its effect runs
/// (`agent::upgrade::machine` says what follows each one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Journaled, nothing done yet.
    Accepted,
    /// `abra app undeploy`, then waiting until no container of the stack runs.
    Undeploying,
    /// Copying the stack's volumes into the snapshot.
    Snapshotting,
    /// Checking the snapshot against a fresh walk of the volumes.
    VerifyingSnapshot,
    /// abra deploys the target version.
    Deploying,
    /// The health gate on the target version.
    Verifying,
    /// The target passed its health gate; recording it as last good.
    Healthy,
    /// Rolling back: undeploying the target before restoring the volumes.
    RollbackUndeploying,
    /// Rolling back: restoring every volume from the verified snapshot.
    Restoring,
    /// Rolling back: deploying the version that ran before.
    RollbackDeploying,
    /// Rolling back: the health gate on the version that ran before.
    RollbackVerifying,
    /// Finished with this outcome; `reported` in the record says whether the
    /// result reached the outbox.
    Done { outcome: Outcome, reason: String },
}

impl Phase {
    /// A short name, used for the test pause hook's files and in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Undeploying => "undeploying",
            Phase::Snapshotting => "snapshotting",
            Phase::VerifyingSnapshot => "verifying-snapshot",
            Phase::Deploying => "deploying",
            Phase::Verifying => "verifying",
            Phase::Healthy => "healthy",
            Phase::RollbackUndeploying => "rollback-undeploying",
            Phase::Restoring => "restoring",
            Phase::RollbackDeploying => "rollback-deploying",
            Phase::RollbackVerifying => "rollback-verifying",
            Phase::Done { .. } => "done",
        }
    }
}

/// Why the way forward was abandoned, and what the outcome is once the
/// version that ran before is healthy again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub outcome_when_recovered: Outcome,
    pub reason: String,
}

/// One upgrade (or explicit rollback) of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    pub format: u32,
    /// The server's operation id, or `local-<hex>`.
    pub id: String,
    pub domain: Domain,
    pub recipe: RecipeName,
    pub trigger: Trigger,
    /// The version running (and healthy) before; the rollback target.
    pub from: CoopVersion,
    pub to: CoopVersion,
    /// Volumes are snapshotted before and restored on rollback.
    pub stateful: bool,
    pub phase: Phase,
    pub failure: Option<Failure>,
    /// `<state_dir>/snapshots/<domain>/<operation>/` once taken.
    pub snapshot: Option<PathBuf>,
    /// The snapshot was verified against the volumes: restoring it is safe.
    pub snapshot_verified: bool,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub finished_at: Option<u64>,
    /// The result was pushed to the outbox (it reaches the server from there).
    pub reported: bool,
}

impl OperationRecord {
    /// The outcome and reason, once done.
    pub fn result(&self) -> Option<(Outcome, &str)> {
        match &self.phase {
            Phase::Done { outcome, reason } => Some((*outcome, reason)),
            _ => None,
        }
    }
}

/// A target that was rolled back, and the declared version at the time: it is
/// not tried again automatically until the declared version changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBackTarget {
    pub version: CoopVersion,
    pub declared_then: CoopVersion,
    pub operation_id: String,
    pub reason: String,
    /// How that operation ended (records written before this field: ROLLED_BACK).
    #[serde(default = "rolled_back_outcome")]
    pub outcome: Outcome,
}

fn rolled_back_outcome() -> Outcome {
    Outcome::RolledBack
}

/// What the agent remembers about one app between operations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The newest version that passed a health gate on this host.
    pub last_good: Option<CoopVersion>,
    /// The target of the last fleet `UpgradeCommand` that succeeded; the
    /// desired version is max(declared, this).
    pub fleet_target: Option<CoopVersion>,
    pub rolled_back: Vec<RolledBackTarget>,
    /// The FAILED operation that may have left the app undeployed or on
    /// half-restored volumes: no reconcile deploys it until a later operation
    /// succeeds.
    #[serde(default)]
    pub blocked_by: Option<String>,
    /// FAILED operations since the last success: their snapshots are kept.
    #[serde(default)]
    pub failed_operations: Vec<String>,
}

impl AppRecord {
    /// Whether automatic triggers (reconcile, timer) must leave `target` alone.
    pub fn holds_back(&self, target: &CoopVersion, declared: &CoopVersion) -> Option<&RolledBackTarget> {
        self.rolled_back
            .iter()
            .find(|entry| &entry.version == target && &entry.declared_then == declared)
    }
}

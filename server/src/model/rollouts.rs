//! A rollout as the server keeps it: a header (strategy, state, reason) and
//! the record of each of its hosts. `rollout::machine` changes these; the
//! store writes them (`store::rollouts`).

use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};
use serde::{Deserialize, Serialize};

use super::UnixMillis;

/// State of a whole rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStateRecord {
    Running,
    Paused,
    Completed,
    Halted,
    Aborted,
}

impl RolloutStateRecord {
    /// Completed, halted and aborted rollouts never dispatch an upgrade again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutStateRecord::Completed | RolloutStateRecord::Halted | RolloutStateRecord::Aborted
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            RolloutStateRecord::Running => "running",
            RolloutStateRecord::Paused => "paused",
            RolloutStateRecord::Completed => "completed",
            RolloutStateRecord::Halted => "halted",
            RolloutStateRecord::Aborted => "aborted",
        }
    }
}

/// Outcome of a rollout on one app of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostOutcomeRecord {
    Pending,
    Dispatched,
    Upgrading,
    Succeeded,
    RolledBack,
    Held,
    Failed,
    Skipped,
    TimedOut,
}

impl HostOutcomeRecord {
    /// A command is out and no result has arrived.
    pub fn is_in_flight(self) -> bool {
        matches!(self, HostOutcomeRecord::Dispatched | HostOutcomeRecord::Upgrading)
    }

    pub fn is_terminal(self) -> bool {
        !self.is_in_flight() && self != HostOutcomeRecord::Pending
    }

    /// Outcomes that spend the failure budget.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            HostOutcomeRecord::RolledBack
                | HostOutcomeRecord::Held
                | HostOutcomeRecord::Failed
                | HostOutcomeRecord::TimedOut
        )
    }
}

/// A number of hosts, or a percentage of a rollout's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantityRecord {
    Count(u32),
    Percent(u32),
}

/// How a rollout proceeds. Durations in milliseconds; zero means "none".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyRecord {
    pub canary: QuantityRecord,
    pub batch: QuantityRecord,
    /// Halt when this many hosts failed (0: no count limit).
    pub max_failures: u32,
    /// Halt when this fraction of hosts failed, in parts per million (0: no
    /// ratio limit). An integer, so that the record survives storage exactly.
    pub max_failure_ppm: u32,
    pub pause_after_canary: bool,
    pub wave_interval_ms: u64,
    pub host_deadline_ms: u64,
    pub progress_deadline_ms: u64,
    pub rollback_on_halt: bool,
    pub allow_major: bool,
}

/// Where the rollback of one host stands (after a halt with rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStateRecord {
    Dispatched,
    Succeeded,
    Failed,
    TimedOut,
}

/// A rollback command sent to a host that had succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRecord {
    pub operation_id: String,
    /// The version the host ran before the rollout.
    pub version: CoopVersion,
    pub dispatched_at: UnixMillis,
    pub state: RollbackStateRecord,
}

/// One app of one host in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutHostRecord {
    pub host_id: HostId,
    pub domain: Domain,
    /// 0 is the canary wave.
    pub wave: u32,
    pub outcome: HostOutcomeRecord,
    /// Version observed when the rollout was planned; once the upgrade
    /// succeeded, the version the host reported running before it (what a
    /// rollback returns it to).
    pub from_version: Option<CoopVersion>,
    /// Version the host's operation was asked to reach, as the host reported
    /// it (in records stored before `running_version`, what ran after).
    pub to_version: Option<CoopVersion>,
    /// Version the host reported running after its operation.
    #[serde(default)]
    pub running_version: Option<CoopVersion>,
    pub message: String,
    pub updated_at: UnixMillis,
    /// Minted and stored when the host is dispatched; never changes after.
    pub operation_id: Option<String>,
    pub dispatched_at: Option<UnixMillis>,
    pub rollback: Option<RollbackRecord>,
    /// The upgrade succeeded after the host had timed out: the host runs the
    /// target (a rollback on halt includes it), yet it still counts as failed.
    #[serde(default)]
    pub succeeded_late: bool,
}

/// A rollout: what it targets, how, and where every host stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: String,
    pub recipe: RecipeName,
    pub target: CoopVersion,
    pub state: RolloutStateRecord,
    pub strategy: StrategyRecord,
    pub hosts: Vec<RolloutHostRecord>,
    /// Index of the wave in progress.
    pub current_wave: u32,
    /// Number of waves that carry commands.
    pub wave_count: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// Why it halted or was aborted, or why it waits.
    pub reason: String,
    pub created_by: String,
    /// An operator paused it.
    pub paused_by_operator: bool,
    /// The canary wave finished and `pause_after_canary` waits for promote.
    pub awaiting_promotion: bool,
    /// Promote was given (the canary gate is open).
    pub promoted: bool,
    /// When the next wave may start (wave interval).
    pub next_wave_at: Option<UnixMillis>,
    /// Last dispatch or host progress, for the progress deadline.
    pub last_progress_at: UnixMillis,
}

impl RolloutRecord {
    /// The record without its hosts: what the store keeps as the rollout's
    /// header, and what the engine compares to tell whether it changed.
    pub fn header(&self) -> RolloutRecord {
        // Destructured, so that a new field cannot be left out.
        let RolloutRecord {
            id,
            recipe,
            target,
            state,
            strategy,
            hosts: _,
            current_wave,
            wave_count,
            created_at,
            updated_at,
            reason,
            created_by,
            paused_by_operator,
            awaiting_promotion,
            promoted,
            next_wave_at,
            last_progress_at,
        } = self;
        RolloutRecord {
            id: id.clone(),
            recipe: recipe.clone(),
            target: target.clone(),
            state: *state,
            strategy: strategy.clone(),
            hosts: Vec::new(),
            current_wave: *current_wave,
            wave_count: *wave_count,
            created_at: *created_at,
            updated_at: *updated_at,
            reason: reason.clone(),
            created_by: created_by.clone(),
            paused_by_operator: *paused_by_operator,
            awaiting_promotion: *awaiting_promotion,
            promoted: *promoted,
            next_wave_at: *next_wave_at,
            last_progress_at: *last_progress_at,
        }
    }
}

/// A rollout's hosts counted by outcome: what a completion or halt notice
/// reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutTally {
    pub hosts: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
}

impl RolloutTally {
    pub fn of(hosts: &[RolloutHostRecord]) -> RolloutTally {
        let count =
            |wanted: fn(HostOutcomeRecord) -> bool| hosts.iter().filter(|host| wanted(host.outcome)).count() as u32;
        RolloutTally {
            hosts: hosts.len() as u32,
            succeeded: count(|outcome| outcome == HostOutcomeRecord::Succeeded),
            failed: count(HostOutcomeRecord::is_failure),
            skipped: count(|outcome| outcome == HostOutcomeRecord::Skipped),
        }
    }
}

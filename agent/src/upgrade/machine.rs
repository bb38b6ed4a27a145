//! The upgrade transaction's decisions, as pure functions over plain values:
//! whether a request runs at all ([`plan`]), which phase follows a phase and
//! the result of its effect ([`transition`]), and where an operation found
//! unfinished at start goes ([`resume`]). `agent::upgrade` performs the
//! effects and journals every phase before it runs; nothing here touches abra,
//! Docker or the file system, so every rule is a row in a table test.

use std::path::PathBuf;

use ccfleet_proto::{CoopVersion, VersionChange};

use super::model::{AppRecord, Failure, OperationRecord, Outcome, Phase, RolledBackTarget, Trigger};

/// What was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub trigger: Trigger,
    pub target: CoopVersion,
    /// `--major` locally, `allow_major` in a server command.
    pub allow_major: bool,
}

impl Ask {
    /// Automatic triggers (the declared version, the timer) respect the
    /// rolled-back hold; an operator or a rollout asking again overrides it.
    pub fn is_automatic(&self) -> bool {
        matches!(self.trigger, Trigger::Declared | Trigger::AutoUpdate)
    }

    fn is_fleet(&self) -> bool {
        matches!(self.trigger, Trigger::FleetUpgrade | Trigger::FleetRollback)
    }
}

/// The app as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFacts {
    pub declared: CoopVersion,
    pub running: Option<CoopVersion>,
    pub stateful: bool,
    /// `allow_major` on the app.
    pub allow_major: bool,
    pub fleet_managed: bool,
}

/// Whether and how a request runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Journal an operation from `from` to the target and run it.
    Run { from: CoopVersion },
    /// The app already runs the target: check its health, record it as last good.
    AlreadyThere { version: CoopVersion },
    /// Finish at once with this outcome (journaled, reported, alerted as any other).
    Finish { outcome: Outcome, reason: String },
    /// Nothing to journal: an automatic trigger must leave this target alone.
    LeaveAlone { reason: String },
}

impl std::fmt::Display for Plan {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::Run { from } => write!(formatter, "run from {from}"),
            Plan::AlreadyThere { version } => write!(formatter, "already running {version}: check its health"),
            Plan::Finish { outcome, reason } => write!(formatter, "finish {outcome}: {reason}"),
            Plan::LeaveAlone { reason } => write!(formatter, "leave alone: {reason}"),
        }
    }
}

/// Decides whether `ask` runs for an app standing as `app` with `record`.
pub fn plan(ask: &Ask, app: &AppFacts, record: &AppRecord) -> Plan {
    let finish = |outcome, reason: String| Plan::Finish { outcome, reason };
    if ask.is_fleet() && !app.fleet_managed {
        return finish(Outcome::Skipped, "pinned by host configuration".into());
    }
    let Some(running) = &app.running else {
        // A FAILED operation may have left the app undeployed: an operator
        // deploying a version through the transaction is how it recovers.
        if ask.trigger == Trigger::Operator && record.blocked_by.is_some() {
            return Plan::Run {
                from: ask.target.clone(),
            };
        }
        return finish(
            Outcome::Skipped,
            "the app is not deployed on this host (or its version label cannot be read)".into(),
        );
    };
    let change = running.change_to(&ask.target);
    if change == VersionChange::Same && running == &ask.target {
        return Plan::AlreadyThere {
            version: running.clone(),
        };
    }
    let major_allowed = app.allow_major || ask.allow_major;
    // A rollout never moves an app down: one already above its target counts as done.
    if ask.trigger == Trigger::FleetUpgrade && change == VersionChange::Downgrade {
        return finish(
            Outcome::Succeeded,
            format!("already at {running}, newer than the target {}", ask.target),
        );
    }
    if ask.is_automatic() {
        if change == VersionChange::Downgrade {
            return Plan::LeaveAlone {
                reason: format!(
                    "running {running}, above {}: only an explicit rollback moves an app down",
                    ask.target
                ),
            };
        }
        // A HELD target is retried once its cause may be gone; only a major
        // hold stands while the major is still not allowed.
        let held = record
            .holds_back(&ask.target, &app.declared)
            .filter(|held| held.outcome != Outcome::Held || (change == VersionChange::Major && !major_allowed));
        if let Some(held) = held {
            let ended = match held.outcome {
                Outcome::Held => "held",
                Outcome::Failed => "failed",
                _ => "rolled back",
            };
            return Plan::LeaveAlone {
                reason: format!(
                    "{} was {ended} by operation {} ({}); not retried until the declared version changes, \
                     a newer version appears, or an operator asks (ccfleet-agent upgrade --to)",
                    held.version, held.operation_id, held.reason
                ),
            };
        }
    }
    if change == VersionChange::Major && !major_allowed {
        return finish(
            Outcome::Held,
            format!(
                "{running} -> {} changes the recipe's major version: allow it with allow_major on the app, \
                 --major on the command line, or a rollout started with --major",
                ask.target
            ),
        );
    }
    Plan::Run { from: running.clone() }
}

/// What is known, before anything moves, about a request that [`plan`]
/// would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight<'a> {
    /// The recipe's releases after a fetch; `None` when they could not be read.
    pub releases: Option<&'a [CoopVersion]>,
    /// Whether the app's stack has volumes; `None` when Docker could not say.
    pub has_volumes: Option<bool>,
}

/// Why a request that [`plan`] would run must be refused before its first
/// effect (nothing undeployed, nothing journaled, no alert), or `None`:
/// a target that is not a release of the recipe (naming the nearest ones), a
/// move down across a major without an explicit yes, a stateful app whose
/// stack has no volumes to snapshot.
pub fn refuse(ask: &Ask, app: &AppFacts, from: &CoopVersion, preflight: &Preflight<'_>) -> Option<String> {
    if let Some(releases) = preflight.releases.filter(|releases| !releases.is_empty()) {
        if !releases.contains(&ask.target) {
            return Some(format!(
                "{} is not a release of the recipe (nearest: {})",
                ask.target,
                crate::abra::versions::nearest_releases(releases, &ask.target)
            ));
        }
    }
    if from.change_to(&ask.target) == VersionChange::Downgrade
        && ask.target.recipe_version().major < from.recipe_version().major
        && !(app.allow_major || ask.allow_major)
    {
        return Some(format!(
            "{from} -> {} moves down across the recipe's major version: allow it with allow_major on \
             the app or --major on the command line",
            ask.target
        ));
    }
    if app.stateful && preflight.has_volumes == Some(false) {
        return Some(
            "stateful but the stack has no volumes: cannot snapshot, so nothing was stopped; \
             set stateful = false if it keeps no data"
                .to_owned(),
        );
    }
    None
}

/// Whether a finished operation changed nothing on the app: a rollout
/// target below what runs is SUCCEEDED without a deploy (see [`plan`]).
pub fn changed_nothing(record: &OperationRecord) -> bool {
    record.trigger == Trigger::FleetUpgrade
        && record.to < record.from
        && matches!(record.result(), Some((Outcome::Succeeded, _)))
}

/// What a finished operation means for its app's record: the last good
/// version, the fleet target, the targets automatic triggers leave alone,
/// and whether the app is blocked by a FAILED operation. `declared` is the
/// app's declared version when the operation finished.
pub fn record_outcome(app: &mut AppRecord, record: &OperationRecord, declared: &CoopVersion) {
    let Some((outcome, reason)) = record.result() else {
        return;
    };
    if changed_nothing(record) {
        return;
    }
    match outcome {
        Outcome::Succeeded => {
            app.last_good = Some(record.to.clone());
            app.rolled_back.retain(|entry| entry.version != record.to);
            app.blocked_by = None;
            app.failed_operations.clear();
            match record.trigger {
                Trigger::FleetUpgrade => app.fleet_target = Some(record.to.clone()),
                // A rollout's rollback withdraws its target, or the next
                // reconcile would move the app up again.
                Trigger::FleetRollback => app.fleet_target = None,
                // An explicit move below the rollout's target withdraws it
                // too: desired = max(declared, target) would undo it.
                _ => {
                    if app.fleet_target.as_ref().is_some_and(|target| &record.to < target) {
                        app.fleet_target = None;
                    }
                }
            }
        }
        Outcome::RolledBack | Outcome::Failed | Outcome::Held => {
            app.last_good.get_or_insert_with(|| record.from.clone());
            app.rolled_back.retain(|entry| entry.version != record.to);
            app.rolled_back.push(RolledBackTarget {
                version: record.to.clone(),
                declared_then: declared.clone(),
                operation_id: record.id.clone(),
                reason: reason.to_owned(),
                outcome,
            });
            if outcome == Outcome::Failed {
                app.blocked_by = Some(record.id.clone());
                if !app.failed_operations.contains(&record.id) {
                    app.failed_operations.push(record.id.clone());
                }
            }
        }
        Outcome::Skipped => {}
    }
}

/// The version `update DOMAIN` (autoUpdate) or `upgrade DOMAIN` without
/// `--to` moves to: the newest available version above what runs, never
/// below the declared version, within the running version's major unless
/// `allow_major`. `None`: nothing newer.
pub fn newest_target(
    available: &[CoopVersion],
    declared: &CoopVersion,
    running: Option<&CoopVersion>,
    allow_major: bool,
) -> Option<CoopVersion> {
    let base = running.unwrap_or(declared);
    available
        .iter()
        .filter(|version| *version >= declared && *version > base)
        .filter(|version| allow_major || version.same_major(base))
        .max()
        .cloned()
}

/// The result of one phase's effect: the facts it found, never a change to
/// the record (only [`advance`] changes the record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    Ok,
    /// `VerifyingSnapshot`: the snapshot matches the volumes, so restoring
    /// it is safe (an operation without a snapshot answers `Ok`).
    SnapshotVerified,
    /// The effect failed; the reason is for people.
    Failed(String),
    /// The effect was refused by policy or circumstance, with nothing lost
    /// (no room for the snapshot, a volume driver that cannot be copied):
    /// the operation ends HELD once the old version runs again.
    Refused(String),
}

impl std::fmt::Display for StepResult {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepResult::Ok => formatter.write_str("ok"),
            StepResult::SnapshotVerified => formatter.write_str("snapshot verified"),
            StepResult::Failed(reason) => write!(formatter, "failed: {reason}"),
            StepResult::Refused(reason) => write!(formatter, "refused: {reason}"),
        }
    }
}

/// The record once `record.phase`'s effect answered `result`: the facts
/// the effect found recorded, and the next phase and failure as
/// [`transition`] says.
pub fn advance(record: &OperationRecord, result: StepResult) -> OperationRecord {
    let mut next = record.clone();
    if record.phase == Phase::VerifyingSnapshot && result == StepResult::SnapshotVerified {
        next.snapshot_verified = true;
    }
    let (phase, failure) = transition(record, result);
    next.phase = phase;
    next.failure = failure;
    next
}

/// The record once the snapshot directory `dir` is chosen, journaled before
/// the copy starts so that a crash in the middle leaves a record that names it.
pub fn with_snapshot_dir(record: &OperationRecord, dir: PathBuf) -> OperationRecord {
    OperationRecord {
        snapshot: Some(dir),
        ..record.clone()
    }
}

/// The phase after `record.phase` given its effect's result, with the
/// record's `failure` updated. A phase never moves backwards, and every path
/// ends in [`Phase::Done`].
pub fn transition(record: &OperationRecord, result: StepResult) -> (Phase, Option<Failure>) {
    use Phase::*;
    // A verified snapshot is a fact for [`advance`]; the way on is as for `Ok`.
    let failure = record.failure.clone();
    let fail = |outcome, reason: String| {
        Some(Failure {
            outcome_when_recovered: outcome,
            reason,
        })
    };
    // Where a rollback starts: with a verified snapshot, the target may have
    // changed the volumes, so they are restored; without one, redeploying the
    // old version is all there is to do.
    let rollback_start = if record.stateful && record.snapshot_verified {
        RollbackUndeploying
    } else {
        RollbackDeploying
    };
    let done = |outcome, reason: String| Done { outcome, reason };
    match (&record.phase, result) {
        (Accepted, _) if record.stateful => (Undeploying, failure),
        (Accepted, _) => (Deploying, failure),
        (Undeploying, StepResult::Ok | StepResult::SnapshotVerified) => (Snapshotting, failure),
        (Undeploying, StepResult::Failed(reason) | StepResult::Refused(reason)) => (
            RollbackDeploying,
            fail(
                Outcome::Failed,
                format!("cannot stop the app for its snapshot: {reason}"),
            ),
        ),
        (Snapshotting, StepResult::Ok | StepResult::SnapshotVerified) => (VerifyingSnapshot, failure),
        (Snapshotting | VerifyingSnapshot, StepResult::Refused(reason)) => (
            RollbackDeploying,
            fail(Outcome::Held, format!("no snapshot, no upgrade: {reason}")),
        ),
        (Snapshotting | VerifyingSnapshot, StepResult::Failed(reason)) => (
            RollbackDeploying,
            fail(Outcome::Failed, format!("no verified snapshot, no upgrade: {reason}")),
        ),
        (VerifyingSnapshot, StepResult::Ok | StepResult::SnapshotVerified) => (Deploying, failure),
        (Deploying, StepResult::Ok | StepResult::SnapshotVerified) => (Verifying, failure),
        (Deploying, StepResult::Failed(reason) | StepResult::Refused(reason)) => (
            rollback_start,
            fail(Outcome::RolledBack, format!("deploying {} failed: {reason}", record.to)),
        ),
        (Verifying, StepResult::Ok | StepResult::SnapshotVerified) => (Healthy, failure),
        (Verifying, StepResult::Failed(reason) | StepResult::Refused(reason)) => (
            rollback_start,
            fail(
                Outcome::RolledBack,
                format!("{} failed its health gate: {reason}", record.to),
            ),
        ),
        (Healthy, _) => (done(Outcome::Succeeded, String::new()), failure),
        (RollbackUndeploying, StepResult::Ok | StepResult::SnapshotVerified) => (Restoring, failure),
        (Restoring, StepResult::Ok | StepResult::SnapshotVerified) => (RollbackDeploying, failure),
        (RollbackDeploying, StepResult::Ok | StepResult::SnapshotVerified) => (RollbackVerifying, failure),
        (RollbackVerifying, StepResult::Ok | StepResult::SnapshotVerified) => {
            let (outcome, reason) = failure
                .as_ref()
                .map(|failure| (failure.outcome_when_recovered, failure.reason.clone()))
                .unwrap_or((Outcome::RolledBack, "rolled back".into()));
            (done(outcome, reason), failure)
        }
        (
            RollbackUndeploying | Restoring | RollbackDeploying | RollbackVerifying,
            StepResult::Failed(reason) | StepResult::Refused(reason),
        ) => {
            let before = failure
                .as_ref()
                .map(|failure| format!("{}; ", failure.reason))
                .unwrap_or_default();
            let what = match record.phase {
                RollbackUndeploying => "cannot stop it to restore its volumes",
                Restoring => "restoring its volumes failed",
                RollbackDeploying => "deploying it failed",
                _ => "it is unhealthy too",
            };
            let kept = record
                .snapshot
                .as_ref()
                .map(|path| format!("; the snapshot is kept at {}", path.display()))
                .unwrap_or_default();
            (
                done(
                    Outcome::Failed,
                    format!("{before}the rollback to {} failed: {what}: {reason}{kept}", record.from),
                ),
                failure,
            )
        }
        (Done { outcome, reason }, _) => (done(*outcome, reason.clone()), failure),
    }
}

/// Where an operation found unfinished at start continues. One that had
/// recorded "healthy" is finished as SUCCEEDED; any other is rolled back to
/// the version that ran before (restoring the volumes when a verified
/// snapshot exists and the target may have run), reported ROLLED_BACK with
/// the reason "interrupted" — or, if it was already rolling back for a
/// reason, with that reason.
pub fn resume(record: &OperationRecord) -> (Phase, Option<Failure>) {
    use Phase::*;
    let interrupted = Some(Failure {
        outcome_when_recovered: Outcome::RolledBack,
        reason: format!("interrupted during {}", record.phase.name()),
    });
    match &record.phase {
        Done { .. } | Healthy => (record.phase.clone(), record.failure.clone()),
        // The volumes were only read so far.
        Accepted | Undeploying | Snapshotting | VerifyingSnapshot => (RollbackDeploying, interrupted),
        Deploying | Verifying if record.stateful && record.snapshot_verified => (RollbackUndeploying, interrupted),
        Deploying | Verifying => (RollbackDeploying, interrupted),
        // A rollback starts over: each of its steps may be repeated safely.
        RollbackUndeploying | Restoring | RollbackDeploying | RollbackVerifying => {
            let failure = record.failure.clone().or(interrupted);
            if record.stateful && record.snapshot_verified {
                (RollbackUndeploying, failure)
            } else {
                (RollbackDeploying, failure)
            }
        }
    }
}

#[cfg(test)]
mod tests;

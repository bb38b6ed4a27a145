//! Table tests of the transaction's decisions: one row per rule.

use expect_test::{expect, Expect};

use super::*;
use crate::upgrade::model::{RolledBackTarget, FORMAT};

fn version(text: &str) -> CoopVersion {
    text.parse().unwrap()
}

fn record(phase: Phase, stateful: bool, verified: bool, failure: Option<(Outcome, &str)>) -> OperationRecord {
    OperationRecord {
        format: FORMAT,
        id: "op-1".into(),
        domain: "blog.example.org".parse().unwrap(),
        recipe: "ghost".parse().unwrap(),
        trigger: Trigger::FleetUpgrade,
        from: version("1.0.0+5.0"),
        to: version("1.1.0+5.1"),
        stateful,
        phase,
        failure: failure.map(|(outcome, reason)| Failure {
            outcome_when_recovered: outcome,
            reason: reason.into(),
        }),
        snapshot: verified.then(|| "/var/lib/ccfleet-agent/snapshots/blog.example.org/op-1".into()),
        snapshot_verified: verified,
        started_at: 0,
        finished_at: None,
        reported: false,
    }
}

fn render((phase, failure): (Phase, Option<Failure>)) -> String {
    let phase = match &phase {
        Phase::Done { outcome, reason } => format!("done {outcome} {reason:?}"),
        other => other.name().to_owned(),
    };
    match failure {
        Some(failure) => format!(
            "{phase} [when recovered: {} {:?}]",
            failure.outcome_when_recovered, failure.reason
        ),
        None => phase,
    }
}

/// Renders every row `(phase, stateful, verified, result)` as one line.
fn check_transitions(rows: &[(Phase, bool, bool, StepResult)], expect: Expect) {
    let lines: Vec<String> = rows
        .iter()
        .map(|(phase, stateful, verified, result)| {
            let record = record(phase.clone(), *stateful, *verified, None);
            format!(
                "{} stateful={stateful} verified={verified} {result:?} -> {}",
                phase.name(),
                render(transition(&record, result.clone()))
            )
        })
        .collect();
    expect.assert_eq(&lines.join("\n"));
}

#[test]
fn the_way_forward() {
    use Phase::*;
    check_transitions(
        &[
            (Accepted, true, false, StepResult::Ok),
            (Accepted, false, false, StepResult::Ok),
            (Undeploying, true, false, StepResult::Ok),
            (Snapshotting, true, false, StepResult::Ok),
            (VerifyingSnapshot, true, true, StepResult::Ok),
            (Deploying, true, true, StepResult::Ok),
            (Verifying, true, true, StepResult::Ok),
            (Healthy, true, true, StepResult::Ok),
        ],
        expect![[r#"
            accepted stateful=true verified=false Ok -> undeploying
            accepted stateful=false verified=false Ok -> deploying
            undeploying stateful=true verified=false Ok -> snapshotting
            snapshotting stateful=true verified=false Ok -> verifying-snapshot
            verifying-snapshot stateful=true verified=true Ok -> deploying
            deploying stateful=true verified=true Ok -> verifying
            verifying stateful=true verified=true Ok -> healthy
            healthy stateful=true verified=true Ok -> done SUCCEEDED """#]],
    );
}

#[test]
fn no_verified_snapshot_no_upgrade() {
    use Phase::*;
    check_transitions(
        &[
            (Undeploying, true, false, StepResult::Failed("abra exited 1".into())),
            (
                Snapshotting,
                true,
                false,
                StepResult::Refused("needs 3 GiB, 1 GiB free".into()),
            ),
            (
                Snapshotting,
                true,
                false,
                StepResult::Refused("volume db uses driver nfs".into()),
            ),
            (Snapshotting, true, false, StepResult::Failed("cannot read /x".into())),
            (
                VerifyingSnapshot,
                true,
                false,
                StepResult::Failed("a.txt differs".into()),
            ),
        ],
        expect![[r#"
            undeploying stateful=true verified=false Failed("abra exited 1") -> rollback-deploying [when recovered: FAILED "cannot stop the app for its snapshot: abra exited 1"]
            snapshotting stateful=true verified=false Refused("needs 3 GiB, 1 GiB free") -> rollback-deploying [when recovered: HELD "no snapshot, no upgrade: needs 3 GiB, 1 GiB free"]
            snapshotting stateful=true verified=false Refused("volume db uses driver nfs") -> rollback-deploying [when recovered: HELD "no snapshot, no upgrade: volume db uses driver nfs"]
            snapshotting stateful=true verified=false Failed("cannot read /x") -> rollback-deploying [when recovered: FAILED "no verified snapshot, no upgrade: cannot read /x"]
            verifying-snapshot stateful=true verified=false Failed("a.txt differs") -> rollback-deploying [when recovered: FAILED "no verified snapshot, no upgrade: a.txt differs"]"#]],
    );
}

#[test]
fn unhealthy_targets_roll_back_restoring_only_verified_snapshots() {
    use Phase::*;
    check_transitions(
        &[
            (Deploying, true, true, StepResult::Failed("abra exited 1".into())),
            (
                Verifying,
                true,
                true,
                StepResult::Failed("GET /health answered 404".into()),
            ),
            (Verifying, false, false, StepResult::Failed("not converged".into())),
            (RollbackUndeploying, true, true, StepResult::Ok),
            (Restoring, true, true, StepResult::Ok),
            (RollbackDeploying, true, true, StepResult::Ok),
        ],
        expect![[r#"
            deploying stateful=true verified=true Failed("abra exited 1") -> rollback-undeploying [when recovered: ROLLED_BACK "deploying 1.1.0+5.1 failed: abra exited 1"]
            verifying stateful=true verified=true Failed("GET /health answered 404") -> rollback-undeploying [when recovered: ROLLED_BACK "1.1.0+5.1 failed its health gate: GET /health answered 404"]
            verifying stateful=false verified=false Failed("not converged") -> rollback-deploying [when recovered: ROLLED_BACK "1.1.0+5.1 failed its health gate: not converged"]
            rollback-undeploying stateful=true verified=true Ok -> restoring
            restoring stateful=true verified=true Ok -> rollback-deploying
            rollback-deploying stateful=true verified=true Ok -> rollback-verifying"#]],
    );
}

#[test]
fn a_recovered_rollback_ends_with_the_recorded_outcome_and_a_failed_one_fails() {
    let rows = [
        (
            Phase::RollbackVerifying,
            Some((Outcome::RolledBack, "1.1.0+5.1 failed its health gate")),
            StepResult::Ok,
        ),
        (
            Phase::RollbackVerifying,
            Some((Outcome::Held, "no snapshot, no upgrade: no room")),
            StepResult::Ok,
        ),
        (
            Phase::RollbackVerifying,
            Some((Outcome::RolledBack, "bad")),
            StepResult::Failed("not converged".into()),
        ),
        (
            Phase::Restoring,
            Some((Outcome::RolledBack, "bad")),
            StepResult::Failed("disk full".into()),
        ),
        (
            Phase::RollbackDeploying,
            Some((Outcome::RolledBack, "bad")),
            StepResult::Failed("abra exited 1".into()),
        ),
    ];
    let lines: Vec<String> = rows
        .into_iter()
        .map(|(phase, failure, result)| {
            let name = phase.name();
            render(transition(&record(phase, true, true, failure), result))
                .split(" [")
                .next()
                .map(|line| format!("{name}: {line}"))
                .unwrap()
        })
        .collect();
    expect![[r#"
        rollback-verifying: done ROLLED_BACK "1.1.0+5.1 failed its health gate"
        rollback-verifying: done HELD "no snapshot, no upgrade: no room"
        rollback-verifying: done FAILED "bad; the rollback to 1.0.0+5.0 failed: it is unhealthy too: not converged; the snapshot is kept at /var/lib/ccfleet-agent/snapshots/blog.example.org/op-1"
        restoring: done FAILED "bad; the rollback to 1.0.0+5.0 failed: restoring its volumes failed: disk full; the snapshot is kept at /var/lib/ccfleet-agent/snapshots/blog.example.org/op-1"
        rollback-deploying: done FAILED "bad; the rollback to 1.0.0+5.0 failed: deploying it failed: abra exited 1; the snapshot is kept at /var/lib/ccfleet-agent/snapshots/blog.example.org/op-1""#]].assert_eq(&lines.join("\n"));
}

#[test]
fn unfinished_operations_resume_safely() {
    use Phase::*;
    let rows = [
        (Accepted, true, false, None),
        (Undeploying, true, false, None),
        (Snapshotting, true, false, None),
        (VerifyingSnapshot, true, false, None),
        (Deploying, true, true, None),
        (Verifying, true, true, None),
        (Verifying, false, false, None),
        (Healthy, true, true, None),
        (
            Restoring,
            true,
            true,
            Some((Outcome::RolledBack, "1.1.0+5.1 failed its health gate")),
        ),
        (RollbackVerifying, false, false, None),
        (
            Done {
                outcome: Outcome::RolledBack,
                reason: "x".into(),
            },
            true,
            true,
            None,
        ),
    ];
    let lines: Vec<String> = rows
        .into_iter()
        .map(|(phase, stateful, verified, failure)| {
            let name = phase.name();
            format!(
                "{name} stateful={stateful} verified={verified} -> {}",
                render(resume(&record(phase, stateful, verified, failure)))
            )
        })
        .collect();
    expect![[r#"
        accepted stateful=true verified=false -> rollback-deploying [when recovered: ROLLED_BACK "interrupted during accepted"]
        undeploying stateful=true verified=false -> rollback-deploying [when recovered: ROLLED_BACK "interrupted during undeploying"]
        snapshotting stateful=true verified=false -> rollback-deploying [when recovered: ROLLED_BACK "interrupted during snapshotting"]
        verifying-snapshot stateful=true verified=false -> rollback-deploying [when recovered: ROLLED_BACK "interrupted during verifying-snapshot"]
        deploying stateful=true verified=true -> rollback-undeploying [when recovered: ROLLED_BACK "interrupted during deploying"]
        verifying stateful=true verified=true -> rollback-undeploying [when recovered: ROLLED_BACK "interrupted during verifying"]
        verifying stateful=false verified=false -> rollback-deploying [when recovered: ROLLED_BACK "interrupted during verifying"]
        healthy stateful=true verified=true -> healthy
        restoring stateful=true verified=true -> rollback-undeploying [when recovered: ROLLED_BACK "1.1.0+5.1 failed its health gate"]
        rollback-verifying stateful=false verified=false -> rollback-deploying [when recovered: ROLLED_BACK "interrupted during rollback-verifying"]
        done stateful=true verified=true -> done ROLLED_BACK "x""#]].assert_eq(&lines.join("\n"));
}

fn facts(running: Option<&str>) -> AppFacts {
    AppFacts {
        declared: version("1.0.0+5.0"),
        running: running.map(version),
        stateful: true,
        allow_major: false,
        fleet_managed: true,
    }
}

fn check_plans(rows: &[(Trigger, &str, bool, AppFacts, AppRecord)], expect: Expect) {
    let lines: Vec<String> = rows
        .iter()
        .map(|(trigger, target, allow_major, app, record)| {
            let ask = Ask {
                trigger: *trigger,
                target: version(target),
                allow_major: *allow_major,
            };
            let running = app.running.as_ref().map_or("-".into(), ToString::to_string);
            let plan = match plan(&ask, app, record) {
                Plan::Run { from } => format!("run from {from}"),
                Plan::AlreadyThere { version } => format!("already at {version}"),
                Plan::Finish { outcome, reason } => format!("{outcome}: {reason}"),
                Plan::LeaveAlone { reason } => format!("leave alone: {reason}"),
            };
            format!("{trigger:?} {running} -> {target} major={allow_major}: {plan}")
        })
        .collect();
    expect.assert_eq(&lines.join("\n"));
}

#[test]
fn which_requests_run() {
    let pinned = AppFacts {
        fleet_managed: false,
        ..facts(Some("1.0.0+5.0"))
    };
    let allows_major = AppFacts {
        allow_major: true,
        ..facts(Some("1.0.0+5.0"))
    };
    let rolled_back = AppRecord {
        rolled_back: vec![RolledBackTarget {
            version: version("1.1.0+5.1"),
            declared_then: version("1.0.0+5.0"),
            operation_id: "op-0".into(),
            reason: "unhealthy".into(),
            outcome: Outcome::RolledBack,
        }],
        ..AppRecord::default()
    };
    let none = AppRecord::default;
    check_plans(
        &[
            (Trigger::Declared, "1.1.0+5.1", false, facts(Some("1.0.0+5.0")), none()),
            (Trigger::Declared, "1.0.0+5.0", false, facts(Some("1.0.0+5.0")), none()),
            (Trigger::Declared, "1.0.0+5.0", false, facts(Some("1.1.0+5.1")), none()),
            (
                Trigger::AutoUpdate,
                "1.1.0+5.1",
                false,
                facts(Some("1.0.0+5.0")),
                rolled_back.clone(),
            ),
            (
                Trigger::Operator,
                "1.1.0+5.1",
                false,
                facts(Some("1.0.0+5.0")),
                rolled_back.clone(),
            ),
            (
                Trigger::FleetUpgrade,
                "1.1.0+5.1",
                false,
                facts(Some("1.0.0+5.0")),
                rolled_back,
            ),
            (Trigger::FleetUpgrade, "1.1.0+5.1", false, pinned.clone(), none()),
            (Trigger::FleetRollback, "0.9.0+4.0", false, pinned, none()),
            (
                Trigger::FleetRollback,
                "0.9.0+4.0",
                false,
                facts(Some("1.0.0+5.0")),
                none(),
            ),
            (Trigger::Operator, "0.9.0+4.0", false, facts(Some("1.0.0+5.0")), none()),
            (
                Trigger::FleetUpgrade,
                "2.0.0+6.0",
                false,
                facts(Some("1.0.0+5.0")),
                none(),
            ),
            (
                Trigger::FleetUpgrade,
                "2.0.0+6.0",
                true,
                facts(Some("1.0.0+5.0")),
                none(),
            ),
            (Trigger::Declared, "2.0.0+6.0", false, facts(Some("1.0.0+5.0")), none()),
            (Trigger::Declared, "2.0.0+6.0", false, allows_major, none()),
            (Trigger::Operator, "1.1.0+5.1", false, facts(None), none()),
            (Trigger::Operator, "1.0.0+5.1", false, facts(Some("1.0.0+5.0")), none()),
        ],
        expect![[r#"
            Declared 1.0.0+5.0 -> 1.1.0+5.1 major=false: run from 1.0.0+5.0
            Declared 1.0.0+5.0 -> 1.0.0+5.0 major=false: already at 1.0.0+5.0
            Declared 1.1.0+5.1 -> 1.0.0+5.0 major=false: leave alone: running 1.1.0+5.1, above 1.0.0+5.0: only an explicit rollback moves an app down
            AutoUpdate 1.0.0+5.0 -> 1.1.0+5.1 major=false: leave alone: 1.1.0+5.1 was rolled back by operation op-0 (unhealthy); not retried until the declared version changes, a newer version appears, or an operator asks (ccfleet-agent upgrade --to)
            Operator 1.0.0+5.0 -> 1.1.0+5.1 major=false: run from 1.0.0+5.0
            FleetUpgrade 1.0.0+5.0 -> 1.1.0+5.1 major=false: run from 1.0.0+5.0
            FleetUpgrade 1.0.0+5.0 -> 1.1.0+5.1 major=false: SKIPPED: pinned by host configuration
            FleetRollback 1.0.0+5.0 -> 0.9.0+4.0 major=false: SKIPPED: pinned by host configuration
            FleetRollback 1.0.0+5.0 -> 0.9.0+4.0 major=false: run from 1.0.0+5.0
            Operator 1.0.0+5.0 -> 0.9.0+4.0 major=false: run from 1.0.0+5.0
            FleetUpgrade 1.0.0+5.0 -> 2.0.0+6.0 major=false: HELD: 1.0.0+5.0 -> 2.0.0+6.0 changes the recipe's major version: allow it with allow_major on the app, --major on the command line, or a rollout started with --major
            FleetUpgrade 1.0.0+5.0 -> 2.0.0+6.0 major=true: run from 1.0.0+5.0
            Declared 1.0.0+5.0 -> 2.0.0+6.0 major=false: HELD: 1.0.0+5.0 -> 2.0.0+6.0 changes the recipe's major version: allow it with allow_major on the app, --major on the command line, or a rollout started with --major
            Declared 1.0.0+5.0 -> 2.0.0+6.0 major=false: run from 1.0.0+5.0
            Operator - -> 1.1.0+5.1 major=false: SKIPPED: the app is not deployed on this host (or its version label cannot be read)
            Operator 1.0.0+5.0 -> 1.0.0+5.1 major=false: run from 1.0.0+5.0"#]],
    );
}

fn held(version_text: &str, outcome: Outcome) -> AppRecord {
    AppRecord {
        rolled_back: vec![RolledBackTarget {
            version: version(version_text),
            declared_then: version("1.0.0+5.0"),
            operation_id: "op-0".into(),
            reason: "the reason".into(),
            outcome,
        }],
        ..AppRecord::default()
    }
}

#[test]
fn a_rollout_never_moves_an_app_down() {
    check_plans(
        &[
            (
                Trigger::FleetUpgrade,
                "1.0.0+5.0",
                false,
                facts(Some("1.2.0+5.2")),
                AppRecord::default(),
            ),
            (
                Trigger::FleetUpgrade,
                "0.9.0+4.0",
                true,
                facts(Some("1.0.0+5.0")),
                AppRecord::default(),
            ),
            // An explicit rollback still moves down.
            (
                Trigger::FleetRollback,
                "1.0.0+5.0",
                false,
                facts(Some("1.2.0+5.2")),
                AppRecord::default(),
            ),
        ],
        expect![[r#"
            FleetUpgrade 1.2.0+5.2 -> 1.0.0+5.0 major=false: SUCCEEDED: already at 1.2.0+5.2, newer than the target 1.0.0+5.0
            FleetUpgrade 1.0.0+5.0 -> 0.9.0+4.0 major=true: SUCCEEDED: already at 1.0.0+5.0, newer than the target 0.9.0+4.0
            FleetRollback 1.2.0+5.2 -> 1.0.0+5.0 major=false: run from 1.2.0+5.2"#]],
    );
}

#[test]
fn a_held_target_is_retried_once_its_cause_may_be_gone() {
    let allows_major = AppFacts {
        allow_major: true,
        ..facts(Some("1.0.0+5.0"))
    };
    check_plans(
        &[
            // No room for the snapshot last time: tried again.
            (
                Trigger::AutoUpdate,
                "1.1.0+5.1",
                false,
                facts(Some("1.0.0+5.0")),
                held("1.1.0+5.1", Outcome::Held),
            ),
            // A major hold stands while the major is not allowed ...
            (
                Trigger::Declared,
                "2.0.0+6.0",
                false,
                facts(Some("1.0.0+5.0")),
                held("2.0.0+6.0", Outcome::Held),
            ),
            // ... and goes once allow_major is set, the declared version unchanged.
            (
                Trigger::Declared,
                "2.0.0+6.0",
                false,
                allows_major,
                held("2.0.0+6.0", Outcome::Held),
            ),
            (
                Trigger::AutoUpdate,
                "1.1.0+5.1",
                false,
                facts(Some("1.0.0+5.0")),
                held("1.1.0+5.1", Outcome::Failed),
            ),
        ],
        expect![[r#"
            AutoUpdate 1.0.0+5.0 -> 1.1.0+5.1 major=false: run from 1.0.0+5.0
            Declared 1.0.0+5.0 -> 2.0.0+6.0 major=false: leave alone: 2.0.0+6.0 was held by operation op-0 (the reason); not retried until the declared version changes, a newer version appears, or an operator asks (ccfleet-agent upgrade --to)
            Declared 1.0.0+5.0 -> 2.0.0+6.0 major=false: run from 1.0.0+5.0
            AutoUpdate 1.0.0+5.0 -> 1.1.0+5.1 major=false: leave alone: 1.1.0+5.1 was failed by operation op-0 (the reason); not retried until the declared version changes, a newer version appears, or an operator asks (ccfleet-agent upgrade --to)"#]],
    );
}

#[test]
fn an_operator_recovers_an_app_a_failed_operation_left_undeployed() {
    let blocked = AppRecord {
        blocked_by: Some("op-0".into()),
        ..AppRecord::default()
    };
    check_plans(
        &[
            (Trigger::Operator, "1.0.0+5.0", false, facts(None), blocked.clone()),
            (Trigger::FleetUpgrade, "1.0.0+5.0", false, facts(None), blocked.clone()),
            (Trigger::Declared, "1.0.0+5.0", false, facts(None), blocked),
        ],
        expect![[r#"
            Operator - -> 1.0.0+5.0 major=false: run from 1.0.0+5.0
            FleetUpgrade - -> 1.0.0+5.0 major=false: SKIPPED: the app is not deployed on this host (or its version label cannot be read)
            Declared - -> 1.0.0+5.0 major=false: SKIPPED: the app is not deployed on this host (or its version label cannot be read)"#]],
    );
}

/// Applies finished operations one after another to an app record and
/// renders the record after each.
fn check_outcomes(start: AppRecord, rows: &[(Trigger, &str, &str, Outcome, &str)], expect: Expect) {
    let mut app = start;
    let lines: Vec<String> = rows
        .iter()
        .map(|(trigger, from, to, outcome, id)| {
            let mut operation = record(
                Phase::Done {
                    outcome: *outcome,
                    reason: "why".into(),
                },
                true,
                true,
                None,
            );
            operation.id = (*id).into();
            operation.trigger = *trigger;
            operation.from = version(from);
            operation.to = version(to);
            record_outcome(&mut app, &operation, &version("1.0.0+5.0"));
            let held: Vec<String> = app
                .rolled_back
                .iter()
                .map(|entry| format!("{}={}", entry.version, entry.outcome))
                .collect();
            format!(
                "{id} {trigger:?} {from} -> {to} {outcome}: last_good={} fleet_target={} blocked_by={} failed={:?} held={held:?}",
                app.last_good.as_ref().map_or("-".into(), ToString::to_string),
                app.fleet_target.as_ref().map_or("-".into(), ToString::to_string),
                app.blocked_by.as_deref().unwrap_or("-"),
                app.failed_operations,
            )
        })
        .collect();
    expect.assert_eq(&lines.join("\n"));
}

#[test]
fn what_a_finished_operation_records_for_its_app() {
    use Outcome::*;
    use Trigger::*;
    check_outcomes(
        AppRecord::default(),
        &[
            (FleetUpgrade, "1.0.0+5.0", "1.2.0+5.2", Succeeded, "op-1"),
            // A rollout target below what runs changes nothing.
            (FleetUpgrade, "1.2.0+5.2", "1.1.0+5.1", Succeeded, "op-2"),
            // An operator's downgrade below the rollout's target withdraws the target.
            (Operator, "1.2.0+5.2", "1.0.0+5.0", Succeeded, "op-3"),
            (FleetUpgrade, "1.0.0+5.0", "1.2.0+5.2", Succeeded, "op-4"),
            // Not below it: the target stays.
            (Operator, "1.2.0+5.2", "1.3.0+5.3", Succeeded, "op-5"),
            (Declared, "1.3.0+5.3", "1.4.0+5.4", Failed, "op-6"),
            (AutoUpdate, "1.3.0+5.3", "1.5.0+5.5", Held, "op-7"),
            (Operator, "1.3.0+5.3", "1.6.0+5.6", Failed, "op-8"),
            (FleetUpgrade, "1.3.0+5.3", "1.6.0+5.6", RolledBack, "op-9"),
            // A success unblocks the app and releases the kept snapshots.
            (Operator, "1.3.0+5.3", "1.3.0+5.3", Succeeded, "op-10"),
        ],
        expect![[r#"
            op-1 FleetUpgrade 1.0.0+5.0 -> 1.2.0+5.2 SUCCEEDED: last_good=1.2.0+5.2 fleet_target=1.2.0+5.2 blocked_by=- failed=[] held=[]
            op-2 FleetUpgrade 1.2.0+5.2 -> 1.1.0+5.1 SUCCEEDED: last_good=1.2.0+5.2 fleet_target=1.2.0+5.2 blocked_by=- failed=[] held=[]
            op-3 Operator 1.2.0+5.2 -> 1.0.0+5.0 SUCCEEDED: last_good=1.0.0+5.0 fleet_target=- blocked_by=- failed=[] held=[]
            op-4 FleetUpgrade 1.0.0+5.0 -> 1.2.0+5.2 SUCCEEDED: last_good=1.2.0+5.2 fleet_target=1.2.0+5.2 blocked_by=- failed=[] held=[]
            op-5 Operator 1.2.0+5.2 -> 1.3.0+5.3 SUCCEEDED: last_good=1.3.0+5.3 fleet_target=1.2.0+5.2 blocked_by=- failed=[] held=[]
            op-6 Declared 1.3.0+5.3 -> 1.4.0+5.4 FAILED: last_good=1.3.0+5.3 fleet_target=1.2.0+5.2 blocked_by=op-6 failed=["op-6"] held=["1.4.0+5.4=FAILED"]
            op-7 AutoUpdate 1.3.0+5.3 -> 1.5.0+5.5 HELD: last_good=1.3.0+5.3 fleet_target=1.2.0+5.2 blocked_by=op-6 failed=["op-6"] held=["1.4.0+5.4=FAILED", "1.5.0+5.5=HELD"]
            op-8 Operator 1.3.0+5.3 -> 1.6.0+5.6 FAILED: last_good=1.3.0+5.3 fleet_target=1.2.0+5.2 blocked_by=op-8 failed=["op-6", "op-8"] held=["1.4.0+5.4=FAILED", "1.5.0+5.5=HELD", "1.6.0+5.6=FAILED"]
            op-9 FleetUpgrade 1.3.0+5.3 -> 1.6.0+5.6 ROLLED_BACK: last_good=1.3.0+5.3 fleet_target=1.2.0+5.2 blocked_by=op-8 failed=["op-6", "op-8"] held=["1.4.0+5.4=FAILED", "1.5.0+5.5=HELD", "1.6.0+5.6=ROLLED_BACK"]
            op-10 Operator 1.3.0+5.3 -> 1.3.0+5.3 SUCCEEDED: last_good=1.3.0+5.3 fleet_target=1.2.0+5.2 blocked_by=- failed=[] held=["1.4.0+5.4=FAILED", "1.5.0+5.5=HELD", "1.6.0+5.6=ROLLED_BACK"]"#]],
    );
}

#[test]
fn app_records_of_older_agents_read_with_defaults() {
    let old = r#"{"last_good": "1.0.0+5.0", "fleet_target": null,
        "rolled_back": [{"version": "1.1.0+5.1", "declared_then": "1.0.0+5.0", "operation_id": "op-0", "reason": "x"}]}"#;
    let app: AppRecord = serde_json::from_str(old).unwrap();
    assert_eq!(app.rolled_back[0].outcome, Outcome::RolledBack);
    assert_eq!(app.blocked_by, None);
    assert!(app.failed_operations.is_empty());
}

#[test]
fn newest_targets_stay_within_the_major_and_above_the_declared_version() {
    let available: Vec<CoopVersion> = [
        "0.9.0+1",
        "1.0.0+5.0",
        "1.1.0+5.1",
        "1.2.0+5.2",
        "2.0.0+6.0",
        "2.1.0+6.1",
    ]
    .into_iter()
    .map(version)
    .collect();
    let rows = [
        ("1.0.0+5.0", Some("1.0.0+5.0"), false),
        ("1.0.0+5.0", Some("1.0.0+5.0"), true),
        ("1.0.0+5.0", Some("1.2.0+5.2"), false),
        ("1.0.0+5.0", Some("2.1.0+6.1"), true),
        ("1.0.0+5.0", None, false),
        ("2.0.0+6.0", Some("1.2.0+5.2"), false),
        ("3.0.0+7.0", Some("2.1.0+6.1"), true),
    ];
    let lines: Vec<String> = rows
        .into_iter()
        .map(|(declared, running, allow_major)| {
            let target = newest_target(
                &available,
                &version(declared),
                running.map(version).as_ref(),
                allow_major,
            );
            format!(
                "declared {declared} running {} major={allow_major}: {}",
                running.unwrap_or("-"),
                target.map_or("nothing newer".into(), |target| target.to_string())
            )
        })
        .collect();
    expect![[r#"
        declared 1.0.0+5.0 running 1.0.0+5.0 major=false: 1.2.0+5.2
        declared 1.0.0+5.0 running 1.0.0+5.0 major=true: 2.1.0+6.1
        declared 1.0.0+5.0 running 1.2.0+5.2 major=false: nothing newer
        declared 1.0.0+5.0 running 2.1.0+6.1 major=true: nothing newer
        declared 1.0.0+5.0 running - major=false: 1.2.0+5.2
        declared 2.0.0+6.0 running 1.2.0+5.2 major=false: nothing newer
        declared 3.0.0+7.0 running 2.1.0+6.1 major=true: nothing newer"#]]
    .assert_eq(&lines.join("\n"));
}

/// Only the snapshot's verification records the snapshot as verified, and
/// only the chosen directory names it; `advance` moves on as `transition` says.
#[test]
fn effects_facts_change_the_record_only_through_advance() {
    use Phase::*;
    let rows = [
        (VerifyingSnapshot, StepResult::SnapshotVerified, true, Deploying),
        (VerifyingSnapshot, StepResult::Ok, false, Deploying),
        (Snapshotting, StepResult::SnapshotVerified, false, VerifyingSnapshot),
        (Deploying, StepResult::SnapshotVerified, false, Verifying),
        (
            VerifyingSnapshot,
            StepResult::Failed("copy differs".into()),
            false,
            RollbackDeploying,
        ),
    ];
    for (phase, result, verified, next_phase) in rows {
        let mut before = record(phase.clone(), true, false, None);
        before.snapshot = Some("/snapshots/blog.example.org/op-1".into());
        let next = advance(&before, result.clone());
        assert_eq!(next.snapshot_verified, verified, "{phase:?} {result:?}");
        assert_eq!(next.phase, next_phase, "{phase:?} {result:?}");
        assert_eq!((next.phase.clone(), next.failure.clone()), transition(&before, result));
        assert_eq!(next.snapshot, before.snapshot);
    }
    let chosen = with_snapshot_dir(&record(Snapshotting, true, false, None), "/snapshots/x/op-1".into());
    assert_eq!(
        chosen.snapshot.as_deref(),
        Some(std::path::Path::new("/snapshots/x/op-1"))
    );
    assert_eq!((chosen.phase, chosen.snapshot_verified), (Snapshotting, false));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn step_result() -> impl Strategy<Value = StepResult> {
        prop_oneof![
            4 => Just(StepResult::Ok),
            2 => Just(StepResult::SnapshotVerified),
            1 => Just(StepResult::Failed("failed".into())),
            1 => Just(StepResult::Refused("refused".into())),
        ]
    }

    /// Where a phase sits on the way: rollbacks come after the way forward.
    fn rank(phase: &Phase) -> u8 {
        match phase {
            Phase::Accepted => 0,
            Phase::Undeploying => 1,
            Phase::Snapshotting => 2,
            Phase::VerifyingSnapshot => 3,
            Phase::Deploying => 4,
            Phase::Verifying => 5,
            Phase::Healthy => 6,
            Phase::RollbackUndeploying => 7,
            Phase::Restoring => 8,
            Phase::RollbackDeploying => 9,
            Phase::RollbackVerifying => 10,
            Phase::Done { .. } => 11,
        }
    }

    proptest! {
        /// Whatever each effect answers, an operation moves forward only,
        /// ends in `done` within a dozen steps, restores only from a verified
        /// snapshot, and succeeds only by passing its health gate.
        #[test]
        fn every_operation_ends_and_never_moves_backwards(
            stateful in any::<bool>(),
            results in proptest::collection::vec(step_result(), 12),
        ) {
            let mut record = record(Phase::Accepted, stateful, false, None);
            let mut passed_gate = false;
            for result in results {
                if record.result().is_some() {
                    break;
                }
                if record.phase == Phase::Verifying && matches!(result, StepResult::Ok | StepResult::SnapshotVerified) {
                    passed_gate = true;
                }
                let verified_here = record.phase == Phase::VerifyingSnapshot && result == StepResult::SnapshotVerified;
                let next = advance(&record, result);
                prop_assert!(rank(&next.phase) > rank(&record.phase), "{:?} -> {:?}", record.phase, next.phase);
                // Only the snapshot's verification records it as verified.
                prop_assert_eq!(next.snapshot_verified, record.snapshot_verified || verified_here);
                if next.phase == Phase::Restoring {
                    prop_assert!(next.snapshot_verified);
                }
                record = next;
            }
            prop_assert!(record.result().is_some(), "not done: {:?}", record.phase);
            if let Some((Outcome::Succeeded, _)) = record.result() {
                prop_assert!(passed_gate);
            }
        }

        /// An operation found unfinished at any phase resumes to `done` the
        /// same way, and never resumes forward past a health gate it did not pass.
        #[test]
        fn a_resumed_operation_never_skips_the_gate(
            stateful in any::<bool>(),
            verified in any::<bool>(),
            phase in 0_usize..11,
        ) {
            let phases = [
                Phase::Accepted, Phase::Undeploying, Phase::Snapshotting, Phase::VerifyingSnapshot,
                Phase::Deploying, Phase::Verifying, Phase::Healthy, Phase::RollbackUndeploying,
                Phase::Restoring, Phase::RollbackDeploying, Phase::RollbackVerifying,
            ];
            let record = record(phases[phase].clone(), stateful, verified, None);
            let (resumed, failure) = resume(&record);
            if record.phase == Phase::Healthy {
                prop_assert_eq!(resumed, Phase::Healthy);
            } else {
                prop_assert!(rank(&resumed) >= rank(&Phase::RollbackUndeploying), "{:?}", resumed);
                prop_assert!(failure.is_some());
                if resumed == Phase::RollbackUndeploying {
                    prop_assert!(stateful && verified);
                }
            }
        }
    }
}

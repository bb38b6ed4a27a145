//! Table tests for the rollout state machine, and property tests over random
//! event sequences for each invariant of issue 9.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::model::{QuantityRecord, StrategyRecord};
use crate::rollout::plan::{plan, resolve, Candidate};

fn strategy() -> StrategyRecord {
    StrategyRecord {
        canary: QuantityRecord::Count(1),
        batch: QuantityRecord::Count(2),
        max_failures: 1,
        max_failure_ppm: 0,
        pause_after_canary: false,
        wave_interval_ms: 0,
        host_deadline_ms: 60_000,
        progress_deadline_ms: 0,
        rollback_on_halt: false,
        allow_major: false,
    }
}

fn host(index: usize) -> HostId {
    format!("h{index}").parse().unwrap()
}

fn rollout(hosts: usize, strategy: StrategyRecord) -> RolloutRecord {
    planned(
        (0..hosts).map(|index| (host(index), format!("app.h{index}.example.org"))),
        strategy,
    )
}

/// The rollout planned for these (host, domain) apps, all online at 1.0.0+a.
fn planned(apps: impl Iterator<Item = (HostId, String)>, strategy: StrategyRecord) -> RolloutRecord {
    let candidates = apps
        .map(|(host_id, domain)| Candidate {
            host_id,
            domain: domain.parse().unwrap(),
            online: true,
            observed: Some("1.0.0+a".parse().unwrap()),
            pinned_by_host: false,
            canary: false,
            unsnapshottable: false,
        })
        .collect();
    plan(
        "ghost-t1".into(),
        "ghost".parse().unwrap(),
        "1.1.0+b".parse().unwrap(),
        strategy,
        candidates,
        None,
        "admin".into(),
        0,
    )
    .unwrap()
}

fn result(delivery: &Delivery, outcome: OperationOutcomeRecord) -> Event {
    Event::Result {
        host_id: delivery.host_id.clone(),
        operation_id: delivery.operation_id.clone(),
        outcome,
        from_version: None,
        to_version: None,
        running_version: None,
        message: format!("{outcome:?}"),
    }
}

/// A result that reports the version the host ran before the operation.
fn result_from(delivery: &Delivery, outcome: OperationOutcomeRecord, from: &str) -> Event {
    match result(delivery, outcome) {
        Event::Result {
            host_id,
            operation_id,
            outcome,
            to_version,
            running_version,
            message,
            ..
        } => Event::Result {
            host_id,
            operation_id,
            outcome,
            from_version: Some(from.parse().unwrap()),
            to_version,
            running_version,
            message,
        },
        other => other,
    }
}

fn hosts_of(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| match &delivery.command {
            Command::Upgrade { .. } => format!("{} upgrade {}", delivery.host_id, delivery.operation_id),
            Command::Rollback { version, .. } => format!("{} rollback to {version}", delivery.host_id),
        })
        .collect()
}

fn outcomes(rollout: &RolloutRecord) -> String {
    rollout
        .hosts
        .iter()
        .map(|host| format!("{:?}", host.outcome))
        .collect::<Vec<_>>()
        .join(" ")
}

use OperationOutcomeRecord::{Failed, RolledBack, Succeeded};

#[test]
fn canary_then_batches_move_every_host() {
    let mut rollout = rollout(5, strategy());
    let canary = apply(&mut rollout, Event::Tick, 1).unwrap();
    assert_eq!(hosts_of(&canary), ["h0 upgrade ghost-t1.0"]);
    let wave_1 = apply(&mut rollout, result(&canary[0], Succeeded), 2).unwrap();
    assert_eq!(hosts_of(&wave_1), ["h1 upgrade ghost-t1.1", "h2 upgrade ghost-t1.2"]);
    assert!(apply(&mut rollout, result(&wave_1[1], Succeeded), 3)
        .unwrap()
        .is_empty());
    let wave_2 = apply(&mut rollout, result(&wave_1[0], Succeeded), 4).unwrap();
    assert_eq!(hosts_of(&wave_2), ["h3 upgrade ghost-t1.3", "h4 upgrade ghost-t1.4"]);
    for delivery in &wave_2 {
        apply(&mut rollout, result(delivery, Succeeded), 5).unwrap();
    }
    assert_eq!(rollout.state, RolloutStateRecord::Completed);
    assert_eq!(outcomes(&rollout), "Succeeded Succeeded Succeeded Succeeded Succeeded");
    assert!(is_settled(&rollout));
}

#[test]
fn a_failure_halts_in_flight_hosts_finish_and_succeeded_hosts_roll_back() {
    let mut rollout = rollout(
        5,
        StrategyRecord {
            rollback_on_halt: true,
            ..strategy()
        },
    );
    let canary = apply(&mut rollout, Event::Tick, 1).unwrap();
    let wave_1 = apply(&mut rollout, result(&canary[0], Succeeded), 2).unwrap();
    let rollbacks = apply(&mut rollout, result(&wave_1[0], RolledBack), 3).unwrap();
    assert_eq!(rollout.state, RolloutStateRecord::Halted);
    assert_eq!(rollout.reason, "1 host(s) failed, the failure budget is 1");
    assert_eq!(hosts_of(&rollbacks), ["h0 rollback to 1.0.0+a"]);
    assert!(!is_settled(&rollout), "h2 and h0's rollback are out");
    // h2 was in flight: it finishes, and as it succeeded it goes back too.
    let late = apply(&mut rollout, result(&wave_1[1], Succeeded), 4).unwrap();
    assert_eq!(hosts_of(&late), ["h2 rollback to 1.0.0+a"]);
    apply(&mut rollout, result(&rollbacks[0], Succeeded), 5).unwrap();
    apply(&mut rollout, result(&late[0], Failed), 6).unwrap();
    assert_eq!(outcomes(&rollout), "RolledBack RolledBack Failed Pending Pending");
    assert_eq!(rollout.hosts[2].message, "rollback to 1.0.0+a failed: Failed");
    assert!(is_settled(&rollout));
    assert!(
        apply(&mut rollout, Event::Resume, 7).is_err(),
        "nothing restarts a halted rollout"
    );
}

/// Found by the fault campaign, seed 205: a server restart halted a rollout
/// while its hosts were still reconnecting; their rollbacks timed out before
/// they were back and were never sent again, so they kept the target.
#[test]
fn seed_205_a_rollback_whose_deadline_passed_while_its_host_was_away_goes_out_when_it_returns() {
    let mut rollout = rollout(
        3,
        StrategyRecord {
            rollback_on_halt: true,
            ..strategy()
        },
    );
    let canary = apply(&mut rollout, Event::Tick, 1).unwrap();
    let wave_1 = apply(&mut rollout, result(&canary[0], Succeeded), 2).unwrap();
    let rollbacks = apply(&mut rollout, result(&wave_1[0], RolledBack), 3).unwrap();
    assert_eq!(hosts_of(&rollbacks), ["h0 rollback to 1.0.0+a"]);
    apply(&mut rollout, result(&wave_1[1], RolledBack), 4).unwrap();
    // h0 is away past the host deadline of its rollback.
    apply(&mut rollout, Event::Tick, 3 + 60_000).unwrap();
    assert_eq!(
        rollout.hosts[0].rollback.as_ref().map(|rollback| rollback.state),
        Some(RollbackStateRecord::TimedOut)
    );
    assert_eq!(
        rollout.hosts[0].message,
        "no rollback result within the host deadline of 60s"
    );
    assert!(is_settled(&rollout), "nothing is in flight: watchers may stop");
    assert!(
        owes_rollback(&rollout) && is_kept(&rollout),
        "but h0 may still run the target"
    );
    // When h0 returns, its rollback goes out again with the same operation id.
    let again = outstanding(&rollout, 70_000);
    assert_eq!(hosts_of(&again), ["h0 rollback to 1.0.0+a"]);
    assert_eq!(again[0].operation_id, rollbacks[0].operation_id);
    // Its late result counts: h0 is rolled back and nothing is owed any more.
    apply(&mut rollout, result(&again[0], Succeeded), 70_001).unwrap();
    assert_eq!(outcomes(&rollout), "RolledBack RolledBack RolledBack");
    assert_eq!(
        rollout.hosts[0].message,
        "rolled back to 1.0.0+a after the rollout halted"
    );
    assert!(!owes_rollback(&rollout) && !is_kept(&rollout));
    assert!(outstanding(&rollout, 70_002).is_empty());
    // A completed or aborted rollout owes nothing.
    let mut aborted = rollout.clone();
    aborted.state = RolloutStateRecord::Aborted;
    aborted.hosts[0].rollback.as_mut().unwrap().state = RollbackStateRecord::TimedOut;
    assert!(!owes_rollback(&aborted) && outstanding(&aborted, 70_003).is_empty());
}

#[test]
fn a_rollback_returns_a_host_to_the_version_it_reported_running_before_its_upgrade() {
    let mut rollout = rollout(
        3,
        StrategyRecord {
            rollback_on_halt: true,
            ..strategy()
        },
    );
    // Planned at 1.0.0+a; by the time its command ran, h0 had moved to 1.0.3+a.
    let canary = apply(&mut rollout, Event::Tick, 1).unwrap();
    let wave_1 = apply(&mut rollout, result_from(&canary[0], Succeeded, "1.0.3+a"), 2).unwrap();
    assert_eq!(rollout.hosts[0].from_version, Some("1.0.3+a".parse().unwrap()));
    // A failure reports its own from_version, which does not matter: nothing rolls it back.
    let rollbacks = apply(&mut rollout, result_from(&wave_1[0], RolledBack, "1.0.9+a"), 3).unwrap();
    assert_eq!(hosts_of(&rollbacks), ["h0 rollback to 1.0.3+a"]);
    assert_eq!(rollout.hosts[1].from_version, Some("1.0.0+a".parse().unwrap()));
    // A result without from_version (an older agent) keeps the planned one.
    let late = apply(&mut rollout, result(&wave_1[1], Succeeded), 4).unwrap();
    assert_eq!(hosts_of(&late), ["h2 rollback to 1.0.0+a"]);
}

#[test]
fn pause_after_canary_waits_for_promote() {
    let mut rollout = rollout(
        3,
        StrategyRecord {
            pause_after_canary: true,
            ..strategy()
        },
    );
    let canary = apply(&mut rollout, Event::Tick, 1).unwrap();
    assert!(apply(&mut rollout, result(&canary[0], Succeeded), 2)
        .unwrap()
        .is_empty());
    assert_eq!(rollout.state, RolloutStateRecord::Paused);
    assert_eq!(rollout.reason, "the canary wave finished; waiting for promote");
    assert!(
        apply(&mut rollout, Event::Resume, 3).unwrap().is_empty(),
        "resume does not open the canary gate"
    );
    let wave_1 = apply(&mut rollout, Event::Promote, 4).unwrap();
    assert_eq!(hosts_of(&wave_1).len(), 2);
    assert_eq!(rollout.state, RolloutStateRecord::Running);
}

#[test]
fn pause_beats_promote_and_abort_beats_pause() {
    let mut rollout = rollout(
        5,
        StrategyRecord {
            pause_after_canary: true,
            ..strategy()
        },
    );
    let canary = apply(&mut rollout, Event::Tick, 1).unwrap();
    apply(&mut rollout, Event::Pause, 2).unwrap();
    apply(&mut rollout, result(&canary[0], Succeeded), 3).unwrap();
    assert!(apply(&mut rollout, Event::Promote, 4).unwrap().is_empty());
    assert_eq!(rollout.state, RolloutStateRecord::Paused, "pause beats promote");
    assert_eq!(rollout.reason, "paused by an operator");
    let wave_1 = apply(&mut rollout, Event::Resume, 5).unwrap();
    assert_eq!(hosts_of(&wave_1).len(), 2, "promoted earlier, so resume moves on");
    apply(&mut rollout, Event::Pause, 6).unwrap();
    apply(
        &mut rollout,
        Event::Abort {
            reason: "bad release".into(),
        },
        7,
    )
    .unwrap();
    assert_eq!(rollout.state, RolloutStateRecord::Aborted);
    assert_eq!(rollout.reason, "aborted: bad release");
    for event in [
        Event::Resume,
        Event::Promote,
        Event::Pause,
        Event::Abort { reason: String::new() },
    ] {
        assert_eq!(
            apply(&mut rollout, event, 8).unwrap_err().to_string(),
            "rollout ghost-t1 is aborted; nothing restarts or changes it"
        );
    }
    // In-flight hosts still report; nothing new is sent.
    assert!(apply(&mut rollout, result(&wave_1[0], Succeeded), 9)
        .unwrap()
        .is_empty());
    assert!(apply(&mut rollout, result(&wave_1[1], Succeeded), 9)
        .unwrap()
        .is_empty());
    assert_eq!(outcomes(&rollout), "Succeeded Succeeded Succeeded Pending Pending");
    assert!(is_settled(&rollout));
    assert!(outstanding(&rollout, 8).is_empty());
}

#[test]
fn a_host_past_its_deadline_times_out_and_counts_as_a_failure() {
    let mut rollout = rollout(3, strategy());
    let canary = apply(&mut rollout, Event::Tick, 1000).unwrap();
    assert!(apply(&mut rollout, Event::Tick, 60_999).unwrap().is_empty());
    assert_eq!(rollout.hosts[0].outcome, HostOutcomeRecord::Dispatched);
    apply(&mut rollout, Event::Tick, 61_000).unwrap();
    assert_eq!(rollout.hosts[0].outcome, HostOutcomeRecord::TimedOut);
    assert_eq!(rollout.hosts[0].message, "no result within the host deadline of 60s");
    assert_eq!(rollout.state, RolloutStateRecord::Halted);
    // A late success is remembered, but the host still counts as failed.
    assert!(
        apply(&mut rollout, result_from(&canary[0], Succeeded, "1.0.2+a"), 62_000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(rollout.hosts[0].outcome, HostOutcomeRecord::TimedOut);
    assert!(rollout.hosts[0].succeeded_late);
    assert_eq!(rollout.hosts[0].from_version, Some("1.0.2+a".parse().unwrap()));
    assert_eq!(failures(&rollout), 1);
    // A late failure after the time-out changes nothing.
    let mut failed_late = rollout.clone();
    failed_late.hosts[0].succeeded_late = false;
    let before = failed_late.clone();
    apply(&mut failed_late, result(&canary[0], Failed), 62_000).unwrap();
    assert_eq!(failed_late, before);
}

#[test]
fn a_late_success_after_a_time_out_is_rolled_back_when_the_rollout_halts() {
    let with_rollback = StrategyRecord {
        rollback_on_halt: true,
        max_failures: 2,
        ..strategy()
    };
    // Halted before the late success: the rollback goes out at once.
    let mut halted = rollout(
        3,
        StrategyRecord {
            max_failures: 1,
            ..with_rollback.clone()
        },
    );
    let canary = apply(&mut halted, Event::Tick, 0).unwrap();
    assert!(
        apply(&mut halted, Event::Tick, 60_000).unwrap().is_empty(),
        "nothing had moved"
    );
    assert_eq!(halted.state, RolloutStateRecord::Halted);
    assert!(is_settled(&halted));
    let late = apply(&mut halted, result_from(&canary[0], Succeeded, "1.0.2+a"), 70_000).unwrap();
    assert_eq!(hosts_of(&late), ["h0 rollback to 1.0.2+a"]);
    assert!(!is_settled(&halted), "the rollback is out");
    apply(&mut halted, result(&late[0], Succeeded), 71_000).unwrap();
    assert_eq!(halted.hosts[0].outcome, HostOutcomeRecord::RolledBack);
    assert_eq!(failures(&halted), 1, "still a failure after its rollback");
    assert!(is_settled(&halted));

    // Running when the late success comes: the halt later rolls it back too.
    let mut rollout = rollout(3, with_rollback);
    let canary = apply(&mut rollout, Event::Tick, 0).unwrap();
    let wave_1 = apply(&mut rollout, Event::Tick, 60_000).unwrap();
    assert_eq!(rollout.state, RolloutStateRecord::Running, "1 failure, the budget is 2");
    assert_eq!(hosts_of(&wave_1), ["h1 upgrade ghost-t1.1", "h2 upgrade ghost-t1.2"]);
    assert!(
        apply(&mut rollout, result_from(&canary[0], Succeeded, "1.0.2+a"), 61_000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(failures(&rollout), 1);
    let rollbacks = apply(&mut rollout, result(&wave_1[0], Failed), 62_000).unwrap();
    assert_eq!(rollout.state, RolloutStateRecord::Halted);
    assert_eq!(hosts_of(&rollbacks), ["h0 rollback to 1.0.2+a"]);
    assert_eq!(failures(&rollout), 2);
}

#[test]
fn a_redelivery_carries_the_time_left_of_the_host_deadline() {
    let mut rollout = rollout(2, strategy());
    let canary = apply(&mut rollout, Event::Tick, 1_000).unwrap();
    assert!(matches!(
        canary[0].command,
        Command::Upgrade {
            deadline_seconds: 60,
            ..
        }
    ));
    let deadline_of = |rollout: &RolloutRecord, now| match &outstanding(rollout, now)[0].command {
        Command::Upgrade { deadline_seconds, .. } => *deadline_seconds,
        other => panic!("expected an upgrade, got {other:?}"),
    };
    assert_eq!(deadline_of(&rollout, 1_000), 60);
    assert_eq!(
        deadline_of(&rollout, 40_500),
        20,
        "20.5 s left: whole seconds, never more"
    );
    assert_eq!(deadline_of(&rollout, 60_900), 1, "at least 1 s");
    assert_eq!(deadline_of(&rollout, 61_000), 1);
}

#[test]
fn duplicate_and_unknown_results_change_nothing() {
    let mut rollout = rollout(3, strategy());
    let canary = apply(&mut rollout, Event::Tick, 1).unwrap();
    apply(&mut rollout, result(&canary[0], Succeeded), 2).unwrap();
    let before = rollout.clone();
    apply(&mut rollout, result(&canary[0], Failed), 3).unwrap();
    let stranger = Delivery {
        host_id: host(1),
        operation_id: "ghost-t1.0".into(),
        command: canary[0].command.clone(),
    };
    apply(&mut rollout, result(&stranger, Failed), 3).unwrap();
    assert_eq!(rollout, before);
}

#[test]
fn waves_wait_for_the_interval_unless_promoted() {
    let mut rollout = rollout(
        5,
        StrategyRecord {
            wave_interval_ms: 10_000,
            ..strategy()
        },
    );
    let canary = apply(&mut rollout, Event::Tick, 0).unwrap();
    assert!(apply(&mut rollout, result(&canary[0], Succeeded), 1_000)
        .unwrap()
        .is_empty());
    assert_eq!(rollout.next_wave_at, Some(11_000));
    assert!(apply(&mut rollout, Event::Tick, 10_999).unwrap().is_empty());
    let wave_1 = apply(&mut rollout, Event::Tick, 11_000).unwrap();
    assert_eq!(hosts_of(&wave_1).len(), 2);
    for delivery in &wave_1 {
        apply(&mut rollout, result(delivery, Succeeded), 12_000).unwrap();
    }
    assert_eq!(rollout.next_wave_at, Some(22_000));
    assert_eq!(
        apply(&mut rollout, Event::Promote, 13_000).unwrap().len(),
        2,
        "promote skips the wait"
    );
}

#[test]
fn the_progress_deadline_halts_a_stalled_rollout() {
    let mut rollout = rollout(
        2,
        StrategyRecord {
            host_deadline_ms: 0,
            progress_deadline_ms: 30_000,
            ..strategy()
        },
    );
    let canary = apply(&mut rollout, Event::Tick, 0).unwrap();
    apply(
        &mut rollout,
        Event::Progress {
            host_id: canary[0].host_id.clone(),
            operation_id: canary[0].operation_id.clone(),
        },
        20_000,
    )
    .unwrap();
    assert_eq!(rollout.hosts[0].outcome, HostOutcomeRecord::Upgrading);
    apply(&mut rollout, Event::Tick, 49_999).unwrap();
    assert_eq!(rollout.state, RolloutStateRecord::Running);
    apply(&mut rollout, Event::Tick, 50_000).unwrap();
    assert_eq!(rollout.state, RolloutStateRecord::Halted);
    assert_eq!(rollout.reason, "no progress for 30s (progress deadline)");
}

#[test]
fn a_failure_ratio_sets_the_budget() {
    let check = |hosts, count, ratio, expect| {
        let rollout = rollout(
            hosts,
            StrategyRecord {
                max_failures: count,
                max_failure_ppm: ratio,
                ..strategy()
            },
        );
        assert_eq!(
            failure_limit(&rollout),
            expect,
            "{hosts} hosts, count {count}, ratio {ratio}"
        );
    };
    check(10, 1, 0, 1);
    check(10, 0, 200_000, 2);
    check(10, 3, 500_000, 3);
    check(10, 0, 10_000, 1);
    check(10, 0, 0, 1);
}

#[test]
fn a_restarted_server_redelivers_with_the_original_operation_ids() {
    let mut rollout = rollout(
        4,
        StrategyRecord {
            batch: QuantityRecord::Count(3),
            ..strategy()
        },
    );
    let canary = apply(&mut rollout, Event::Tick, 0).unwrap();
    let wave_1 = apply(&mut rollout, result(&canary[0], Succeeded), 1).unwrap();
    apply(&mut rollout, result(&wave_1[1], Succeeded), 2).unwrap();
    let stored = serde_json::to_string(&rollout).unwrap();
    let reloaded: RolloutRecord = serde_json::from_str(&stored).unwrap();
    assert_eq!(reloaded, rollout);
    let again = outstanding(&reloaded, 1);
    assert_eq!(again, vec![wave_1[0].clone(), wave_1[2].clone()]);
}

// ---------------------------------------------------------------------------
// Property tests: random strategies and random event sequences.

#[derive(Debug, Clone)]
enum Step {
    Tick(u64),
    /// A result for the host at this position (modulo the host count), with
    /// its current operation id, or a made-up one.
    Result {
        host: usize,
        outcome: u8,
        stale: bool,
    },
    Progress(usize),
    Pause,
    Resume,
    Promote,
    Abort,
    /// The server stops and starts again: the record goes through storage.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u64..40_000).prop_map(Step::Tick),
        8 => (0usize..40, 0u8..10, proptest::bool::weighted(0.1))
            .prop_map(|(host, outcome, stale)| Step::Result { host, outcome, stale }),
        1 => (0usize..40).prop_map(Step::Progress),
        1 => Just(Step::Pause),
        1 => Just(Step::Resume),
        1 => Just(Step::Promote),
        1 => Just(Step::Abort),
        1 => Just(Step::Restart),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 0..80)
}

fn quantity() -> impl Strategy<Value = QuantityRecord> {
    prop_oneof![
        (1u32..6).prop_map(QuantityRecord::Count),
        (1u32..=100).prop_map(QuantityRecord::Percent)
    ]
}

fn random_strategy() -> impl Strategy<Value = StrategyRecord> {
    (
        quantity(),
        quantity(),
        0u32..4,
        prop_oneof![Just(0u32), 50_000u32..600_000],
        any::<bool>(),
        prop_oneof![Just(0u64), 1_000u64..20_000],
        prop_oneof![Just(0u64), 5_000u64..60_000],
        any::<bool>(),
    )
        .prop_map(
            |(canary, batch, max_failures, ratio, pause_after_canary, interval, deadline, rollback)| StrategyRecord {
                canary,
                batch,
                max_failures,
                max_failure_ppm: ratio,
                pause_after_canary,
                wave_interval_ms: interval,
                host_deadline_ms: deadline,
                progress_deadline_ms: 0,
                rollback_on_halt: rollback,
                allow_major: false,
            },
        )
}

fn outcome_of(code: u8) -> OperationOutcomeRecord {
    match code {
        0..=5 => Succeeded,
        6 => RolledBack,
        7 => Failed,
        8 => OperationOutcomeRecord::Held,
        _ => OperationOutcomeRecord::Skipped,
    }
}

/// The invariants of issue 9, each checked by its own property test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invariant {
    /// No host gets two operation ids; re-deliveries (also after a restart) reuse the stored one.
    OneOperationIdPerHost,
    /// A wave never exceeds its size, and no later wave starts early.
    WaveSizes,
    /// Failures never exceed the budget by more than the hosts in flight when it was reached.
    FailureBudget,
    /// Abort beats pause beats promote.
    Precedence,
    /// Nothing restarts a completed, halted or aborted rollout.
    FinalStaysFinal,
    /// A rollback returns a host to the version it reported running before its
    /// upgrade, and after a halt with rollback every host that ran the target
    /// (also after its deadline) is rolled back.
    RollbackTarget,
}

/// The version the host at `index` reports running before its upgrade: not the
/// planned 1.0.0+a (it moved between planning and dispatch).
fn ran_before(index: usize) -> CoopVersion {
    format!("1.0.{}+a", index + 1).parse().unwrap()
}

/// The event `step` sends to `rollout` (time passes by its ticks): a result
/// names the operation its host holds (its rollback's, if any), or a stale
/// or unminted id. `None` for a restart, which each test does its own way.
fn event_of(step: &Step, rollout: &RolloutRecord, hosts: usize, now: &mut UnixMillis) -> Option<Event> {
    Some(match *step {
        Step::Tick(dt) => {
            *now += dt;
            Event::Tick
        }
        Step::Result { host, outcome, stale } => {
            let index = host % hosts;
            let target = &rollout.hosts[index];
            let operation_id = match (&target.rollback, &target.operation_id) {
                _ if stale => format!("{}.{}", rollout.id, index + 1),
                (Some(rollback), _) => rollback.operation_id.clone(),
                (None, Some(operation_id)) => operation_id.clone(),
                (None, None) => format!("{}.{index}", rollout.id),
            };
            Event::Result {
                host_id: target.host_id.clone(),
                operation_id,
                outcome: outcome_of(outcome),
                from_version: Some(ran_before(index)),
                to_version: None,
                running_version: None,
                message: String::new(),
            }
        }
        Step::Progress(host) => {
            let target = &rollout.hosts[host % hosts];
            Event::Progress {
                host_id: target.host_id.clone(),
                operation_id: target.operation_id.clone().unwrap_or_default(),
            }
        }
        Step::Pause => Event::Pause,
        Step::Resume => Event::Resume,
        Step::Promote => Event::Promote,
        Step::Abort => Event::Abort { reason: "test".into() },
        Step::Restart => return None,
    })
}

/// Runs `steps` against a rollout, checking `invariant` after each.
fn run(hosts: usize, strategy: StrategyRecord, steps: Vec<Step>, invariant: Invariant) -> Result<(), TestCaseError> {
    use Invariant::*;
    let mut rollout = rollout(hosts, strategy.clone());
    let canary_size = resolve(strategy.canary, hosts);
    let batch_size = resolve(strategy.batch, hosts);
    let limit = failure_limit(&rollout);
    let mut now = 0;
    let mut minted: BTreeMap<usize, String> = BTreeMap::new();
    let mut minted_rollbacks: BTreeMap<usize, String> = BTreeMap::new();
    let mut upgrade_deliveries: BTreeMap<String, usize> = BTreeMap::new();
    let mut failure_cap: Option<usize> = None;
    // Hosts that reported their upgrade succeeded, in time or after their deadline.
    let mut ran_target: BTreeSet<usize> = BTreeSet::new();
    let mut steps = steps;
    steps.insert(0, Step::Tick(0));
    for step in steps {
        let before = rollout.clone();
        let mut succeeded = None;
        let event = match event_of(&step, &rollout, hosts, &mut now) {
            Some(event) => {
                // A result of the upgrade the host holds, in flight or timed out, that succeeded.
                if let (
                    Step::Result { host, .. },
                    Event::Result {
                        operation_id, outcome, ..
                    },
                ) = (&step, &event)
                {
                    let index = host % hosts;
                    let target = &rollout.hosts[index];
                    let ran = target.rollback.is_none()
                        && target.operation_id.as_ref() == Some(operation_id)
                        && (target.outcome.is_in_flight() || target.outcome == HostOutcomeRecord::TimedOut)
                        && *outcome == Succeeded;
                    succeeded = ran.then_some(index);
                }
                event
            }
            None => {
                let stored = serde_json::to_vec(&rollout).unwrap();
                rollout = serde_json::from_slice(&stored).unwrap();
                prop_assert_eq!(&rollout, &before, "the record survives storage unchanged");
                if invariant != OneOperationIdPerHost {
                    continue;
                }
                for delivery in outstanding(&rollout, now) {
                    let index = rollout
                        .hosts
                        .iter()
                        .position(|host| host.host_id == delivery.host_id)
                        .unwrap();
                    let expected = match delivery.command {
                        Command::Upgrade { deadline_seconds, .. } => {
                            // The time left of the host deadline, not all of it again.
                            let host = &rollout.hosts[index];
                            let deadline = rollout.strategy.host_deadline_ms;
                            if deadline > 0 {
                                let left = (host.dispatched_at.unwrap() + deadline).saturating_sub(now);
                                prop_assert!(
                                    u64::from(deadline_seconds) * 1000 <= left.max(1000),
                                    "{}s re-delivered with {}ms left",
                                    deadline_seconds,
                                    left
                                );
                            }
                            prop_assert!(deadline_seconds >= 1);
                            minted.get(&index)
                        }
                        Command::Rollback { .. } => minted_rollbacks.get(&index),
                    };
                    prop_assert_eq!(
                        Some(&delivery.operation_id),
                        expected,
                        "re-delivery keeps the original id"
                    );
                }
                continue;
            }
        };
        let was_paused_by_operator = before.paused_by_operator && !before.state.is_final();
        let is_promote = event == Event::Promote;
        let is_abort = matches!(event, Event::Abort { .. });
        let applied = apply(&mut rollout, event, now);
        if invariant == FinalStaysFinal && before.state.is_final() && applied.is_err() {
            prop_assert_eq!(&rollout, &before, "a refused action changes nothing");
        }
        let deliveries = applied.unwrap_or_default();

        // Nothing restarts a final rollout; an aborted one sends nothing at all.
        if invariant == FinalStaysFinal && before.state.is_final() {
            prop_assert_eq!(rollout.state, before.state);
            let only_rollbacks = deliveries.iter().all(|d| matches!(d.command, Command::Rollback { .. }));
            prop_assert!(only_rollbacks, "a final rollout sends no upgrade");
        }
        if invariant == FinalStaysFinal && before.state == RolloutStateRecord::Aborted {
            prop_assert!(deliveries.is_empty());
        }
        // Abort beats pause beats promote.
        if invariant == Precedence && is_abort && !before.state.is_final() {
            prop_assert_eq!(
                rollout.state,
                RolloutStateRecord::Aborted,
                "abort wins over any pause or gate"
            );
        }
        if invariant == Precedence && is_promote && was_paused_by_operator {
            prop_assert!(
                rollout.state != RolloutStateRecord::Running,
                "promote does not undo a pause"
            );
        }
        // One operation id per host, for good; deliveries carry the stored id.
        for (index, host) in rollout.hosts.iter().enumerate() {
            if let Some(operation_id) = &host.operation_id {
                let first = minted.entry(index).or_insert_with(|| operation_id.clone());
                prop_assert!(invariant != OneOperationIdPerHost || first == operation_id);
            }
            if let Some(rollback) = &host.rollback {
                let first = minted_rollbacks
                    .entry(index)
                    .or_insert_with(|| rollback.operation_id.clone());
                prop_assert!(invariant != OneOperationIdPerHost || *first == rollback.operation_id);
            }
        }
        for delivery in deliveries.iter().filter(|_| invariant == OneOperationIdPerHost) {
            let index = rollout
                .hosts
                .iter()
                .position(|host| host.host_id == delivery.host_id)
                .unwrap();
            match delivery.command {
                Command::Upgrade { .. } => {
                    prop_assert_eq!(Some(&delivery.operation_id), minted.get(&index));
                    *upgrade_deliveries.entry(delivery.operation_id.clone()).or_default() += 1;
                }
                Command::Rollback { .. } => {
                    prop_assert_eq!(Some(&delivery.operation_id), minted_rollbacks.get(&index));
                }
            }
        }
        prop_assert!(
            invariant != OneOperationIdPerHost || upgrade_deliveries.values().all(|count| *count == 1),
            "no upgrade is dispatched twice"
        );
        if invariant == RollbackTarget {
            ran_target.extend(succeeded);
            if rollout.state == RolloutStateRecord::Halted && rollout.strategy.rollback_on_halt {
                for &index in &ran_target {
                    prop_assert!(
                        rollout.hosts[index].rollback.is_some(),
                        "host {} ran the target and is not rolled back",
                        index
                    );
                }
            }
            for delivery in &deliveries {
                if let Command::Rollback { version, .. } = &delivery.command {
                    let index = rollout
                        .hosts
                        .iter()
                        .position(|host| host.host_id == delivery.host_id)
                        .unwrap();
                    prop_assert_eq!(version, &ran_before(index), "rollback target of host {}", index);
                }
            }
        }
        if invariant == WaveSizes {
            let mut per_wave: BTreeMap<u32, usize> = BTreeMap::new();
            for host in rollout.hosts.iter().filter(|host| host.operation_id.is_some()) {
                *per_wave.entry(host.wave).or_default() += 1;
                prop_assert!(host.wave <= rollout.current_wave, "a later wave started early");
            }
            for (wave, count) in per_wave {
                let size = if wave == 0 { canary_size } else { batch_size };
                prop_assert!(count <= size, "wave {} has {} hosts, its size is {}", wave, count, size);
            }
        }
        if invariant == FailureBudget {
            let failed = failures(&rollout);
            let in_flight_now = rollout.hosts.iter().filter(|host| host.outcome.is_in_flight()).count();
            if failure_cap.is_none() && (failed >= limit || rollout.state.is_final()) {
                failure_cap = Some(failed + in_flight_now);
                if failed >= limit {
                    prop_assert!(rollout.state.is_final(), "reaching the budget halts");
                }
            }
            match failure_cap {
                Some(cap) => prop_assert!(failed <= cap, "failures {} beyond {}", failed, cap),
                None => prop_assert!(failed < limit),
            }
            if failed >= limit && before.state.is_final() {
                let only_rollbacks = deliveries.iter().all(|d| matches!(d.command, Command::Rollback { .. }));
                prop_assert!(only_rollbacks, "nothing new is dispatched past the budget");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn no_host_gets_two_operation_ids(hosts in 1usize..25, strategy in random_strategy(), steps in steps()) {
        run(hosts, strategy, steps, Invariant::OneOperationIdPerHost)?;
    }

    #[test]
    fn a_wave_never_exceeds_its_size(hosts in 1usize..25, strategy in random_strategy(), steps in steps()) {
        run(hosts, strategy, steps, Invariant::WaveSizes)?;
    }

    #[test]
    fn the_failure_budget_is_overrun_by_no_more_than_the_hosts_in_flight(
        hosts in 1usize..25,
        strategy in random_strategy(),
        steps in steps(),
    ) {
        run(hosts, strategy, steps, Invariant::FailureBudget)?;
    }

    #[test]
    fn abort_beats_pause_beats_promote(hosts in 1usize..25, strategy in random_strategy(), steps in steps()) {
        run(hosts, strategy, steps, Invariant::Precedence)?;
    }

    #[test]
    fn nothing_restarts_a_completed_halted_or_aborted_rollout(
        hosts in 1usize..25,
        strategy in random_strategy(),
        steps in steps(),
    ) {
        run(hosts, strategy, steps, Invariant::FinalStaysFinal)?;
    }

    #[test]
    fn every_host_that_ran_the_target_is_rolled_back_to_the_version_it_ran_before(
        hosts in 1usize..25,
        strategy in random_strategy(),
        steps in steps(),
    ) {
        run(hosts, strategy, steps, Invariant::RollbackTarget)?;
    }

    /// Successful hosts only, no operator: every rollout completes.
    #[test]
    fn rollouts_of_healthy_hosts_complete(hosts in 1usize..40, canary in quantity(), batch in quantity()) {
        let mut rollout = rollout(hosts, StrategyRecord { canary, batch, ..strategy() });
        let mut pending = apply(&mut rollout, Event::Tick, 0).unwrap();
        let mut now = 0;
        while let Some(delivery) = pending.pop() {
            now += 1;
            pending.extend(apply(&mut rollout, result(&delivery, Succeeded), now).unwrap());
        }
        prop_assert_eq!(rollout.state, RolloutStateRecord::Completed);
        prop_assert!(rollout.hosts.iter().all(|host| host.outcome == HostOutcomeRecord::Succeeded));
    }
}

#[test]
fn the_failure_budget_and_the_failures_count_hosts_not_apps() {
    // h0 claims eight apps of the recipe; h1 to h4 run one each.
    let mut candidates: Vec<Candidate> = (0..8)
        .map(|index| Candidate {
            host_id: host(0),
            domain: format!("app{index}.h0.example.org").parse().unwrap(),
            online: true,
            observed: Some("1.0.0+a".parse().unwrap()),
            pinned_by_host: false,
            canary: false,
            unsnapshottable: false,
        })
        .collect();
    candidates.extend((1..5).map(|index| Candidate {
        host_id: host(index),
        domain: format!("app.h{index}.example.org").parse().unwrap(),
        online: true,
        observed: Some("1.0.0+a".parse().unwrap()),
        pinned_by_host: false,
        canary: false,
        unsnapshottable: false,
    }));
    let strategy = StrategyRecord {
        max_failures: 0,
        max_failure_ppm: 400_000,
        ..strategy()
    };
    let mut rollout = plan(
        "ghost-t1".into(),
        "ghost".parse().unwrap(),
        "1.1.0+b".parse().unwrap(),
        strategy,
        candidates,
        None,
        "admin".into(),
        0,
    )
    .unwrap();
    // 40 % of 5 hosts is 2 (of 12 apps it would be 5).
    assert_eq!(failure_limit(&rollout), 2);
    // Every app of h0 failing is one failed host.
    for app in rollout.hosts.iter_mut().filter(|app| app.host_id == host(0)) {
        app.operation_id = Some(format!("op-{}", app.domain));
        app.outcome = HostOutcomeRecord::Failed;
    }
    assert_eq!(failures(&rollout), 1);
}

// ---------------------------------------------------------------------------
// The index of a tracked rollout: after every event it must say what a full
// look at the hosts says, and the tracked rollout must change exactly as a
// plain record does.

/// Applies `steps` to a plain record and to a [`TrackedRollout`] side by side.
fn run_tracked(hosts: usize, strategy: StrategyRecord, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut plain = rollout(hosts, strategy);
    let mut tracked = TrackedRollout::new(plain.clone());
    let mut now = 0;
    let mut steps = steps;
    steps.insert(0, Step::Tick(0));
    for step in steps {
        let event = match event_of(&step, &plain, hosts, &mut now) {
            Some(event) => event,
            None => {
                // A restarted server builds the index afresh from the stored record.
                let stored = serde_json::to_vec(tracked.record()).unwrap();
                tracked = TrackedRollout::new(serde_json::from_slice(&stored).unwrap());
                continue;
            }
        };
        let before = plain.clone();
        let expected = apply(&mut plain, event.clone(), now);
        let applied = tracked.apply(event, now);
        prop_assert_eq!(tracked.record(), &plain);
        let applied = match (expected, applied) {
            (Ok(expected), Ok(applied)) => {
                prop_assert_eq!(&applied.deliveries, &expected);
                applied
            }
            (Err(expected), Err(refused)) => {
                prop_assert_eq!(refused, expected);
                continue;
            }
            (expected, applied) => {
                return Err(TestCaseError::fail(format!("{expected:?} but {applied:?}")));
            }
        };
        // What the event reports as changed is what changed, as it was.
        let changed: Vec<usize> = (0..hosts)
            .filter(|&position| before.hosts[position] != plain.hosts[position])
            .collect();
        match &applied.before {
            None => prop_assert_eq!(&plain, &before),
            Some(reported) => {
                prop_assert_eq!(&reported.header, &before.header());
                let positions: Vec<usize> = reported.hosts.iter().map(|(position, _)| *position).collect();
                prop_assert_eq!(&positions, &changed);
                for (position, host) in &reported.hosts {
                    prop_assert_eq!(host, &before.hosts[*position]);
                }
                // Putting it back gives the record before the event.
                let mut undone = tracked.clone();
                undone.restore(reported.header.clone(), reported.hosts.clone());
                prop_assert_eq!(undone.record(), &before);
            }
        }
        // The counts equal a full look at the hosts.
        prop_assert_eq!(&tracked.index, &Index::of(&plain));
        prop_assert_eq!(tracked.in_flight(), in_flight(&plain));
        prop_assert_eq!(tracked.is_settled(), is_settled(&plain));
        prop_assert_eq!(tracked.owes_rollback(), owes_rollback(&plain));
        prop_assert_eq!(tracked.is_kept(), is_kept(&plain));
        prop_assert_eq!(tracked.tally(), RolloutTally::of(&plain.hosts));
        prop_assert_eq!(tracked.index.failed_hosts, failures(&plain));
        prop_assert_eq!(
            failure_budget(&plain.strategy, tracked.index.taking_part_hosts),
            failure_limit(&plain)
        );
        for host in &plain.hosts {
            let all: Vec<Delivery> = outstanding(&plain, now)
                .into_iter()
                .filter(|delivery| delivery.host_id == host.host_id)
                .collect();
            prop_assert_eq!(tracked.outstanding_to(&host.host_id, now), all);
        }
    }
    Ok(())
}

/// Hosts that run several apps of the recipe: `apps` apps each.
fn multi_app_rollout(hosts: usize, apps: usize, strategy: StrategyRecord) -> RolloutRecord {
    planned(
        (0..hosts * apps).map(|index| {
            (
                host(index / apps),
                format!("app{}.h{}.example.org", index % apps, index / apps),
            )
        }),
        strategy,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_tracked_rollout_changes_as_a_record_does_and_its_index_never_goes_stale(
        hosts in 1usize..25,
        strategy in random_strategy(),
        steps in steps(),
    ) {
        run_tracked(hosts, strategy, steps)?;
    }

    /// Hosts with several apps: failures and the budget count hosts, not apps.
    #[test]
    fn the_index_counts_hosts_with_several_apps_once(
        hosts in 1usize..8,
        apps in 1usize..4,
        strategy in random_strategy(),
        outcomes in proptest::collection::vec((0usize..32, 0u8..10), 0..40),
    ) {
        let plain = multi_app_rollout(hosts, apps, strategy);
        let mut tracked = TrackedRollout::new(plain);
        let mut now = 0;
        for (position, outcome) in outcomes {
            now += 7_000;
            let position = position % tracked.hosts.len();
            let target = &tracked.hosts[position];
            let event = match &target.operation_id {
                Some(operation_id) => Event::Result {
                    host_id: target.host_id.clone(),
                    operation_id: target
                        .rollback
                        .as_ref()
                        .map_or_else(|| operation_id.clone(), |rollback| rollback.operation_id.clone()),
                    outcome: outcome_of(outcome),
                    from_version: Some(ran_before(position)),
                    to_version: None,
                    running_version: None,
                    message: String::new(),
                },
                None => Event::Tick,
            };
            let mut plain = tracked.record().clone();
            let expected = apply(&mut plain, event.clone(), now).unwrap();
            prop_assert_eq!(tracked.apply(event, now).unwrap().deliveries, expected);
            prop_assert_eq!(tracked.record(), &plain);
            prop_assert_eq!(&tracked.index, &Index::of(&plain));
            prop_assert_eq!(tracked.index.failed_hosts, failures(&plain));
        }
    }
}

#[test]
fn a_tracked_rollout_looks_only_at_the_hosts_an_event_touches() {
    let mut tracked = TrackedRollout::new(rollout(
        1000,
        StrategyRecord {
            batch: QuantityRecord::Count(100),
            max_failures: 5,
            ..strategy()
        },
    ));
    let canary = tracked.apply(Event::Tick, 1).unwrap();
    assert_eq!(canary.before.as_ref().map(|before| before.hosts.len()), Some(1));
    let wave_1 = tracked.apply(result(&canary.deliveries[0], Succeeded), 2).unwrap();
    assert_eq!(wave_1.deliveries.len(), 100);
    let before = wave_1.before.unwrap();
    assert_eq!(before.hosts.len(), 101, "the canary's result and the wave it started");
    // A result in the middle of a wave changes one host; a tick with no
    // deadline due changes nothing.
    let one = tracked.apply(result(&wave_1.deliveries[50], Succeeded), 3).unwrap();
    assert!(one.deliveries.is_empty());
    let positions: Vec<usize> = one
        .before
        .unwrap()
        .hosts
        .iter()
        .map(|(position, _)| *position)
        .collect();
    assert_eq!(positions, [51]);
    assert!(tracked.apply(Event::Tick, 4).unwrap().before.is_none());
    // A result for a position whose operation id is another host's changes nothing.
    let stranger = Delivery {
        host_id: host(3),
        ..wave_1.deliveries[0].clone()
    };
    assert!(tracked.apply(result(&stranger, Failed), 5).unwrap().before.is_none());
    // The host deadline: only the hosts in flight time out.
    tracked.apply(Event::Tick, 2 + 60_000).unwrap();
    assert_eq!(tracked.state, RolloutStateRecord::Halted);
    assert_eq!(
        tracked
            .hosts
            .iter()
            .filter(|host| host.outcome == HostOutcomeRecord::TimedOut)
            .count(),
        99
    );
}

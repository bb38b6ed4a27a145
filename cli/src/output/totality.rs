//! Property tests: every formatter is total over whatever a server or a
//! host may send (times far in the future or before 1970, unknown enum
//! values, control characters, long text), and every table fits its width.

use ccfleet_proto::pb;
use proptest::prelude::*;
use unicode_width::UnicodeWidthStr;

use super::rollout::{audit_grid, dry_run_grid, rollout_hosts_grid, rollout_json, rollouts_grid, AuditJson};
use super::table::Grid;
use super::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.+-]{0,12}",
        "[ -~\\x00-\\x1f\\x7f\\u{9b}\\u{202e}\\u{200b}é日本☃]{0,40}",
        "[a-z ]{80,300}",
    ]
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let seconds = prop_oneof![
        Just(1_i64 << 62),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(-1_i64),
        any::<i64>(),
        0_i64..4_000_000_000
    ];
    proptest::option::of((seconds, any::<i32>()).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }))
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![0_i32..12, any::<i32>()]
}

fn host() -> impl Strategy<Value = pb::Host> {
    (
        text(),
        enum_value(),
        timestamp(),
        text(),
        any::<u32>(),
        (text(), text()),
        timestamp(),
        any::<u64>(),
    )
        .prop_map(
            |(host_id, status, last_seen, agent_version, app_count, (key, value), not_after, last_event_seq)| {
                pb::Host {
                    host_id,
                    status,
                    last_seen,
                    registered_at: last_seen,
                    agent_version,
                    facts: Some(pb::HostFacts {
                        labels: [(key.clone(), value.clone())].into(),
                        ..Default::default()
                    }),
                    app_count,
                    labels: [(value, key)].into(),
                    certificate_not_after: not_after,
                    last_event_seq,
                }
            },
        )
}

fn host_app() -> impl Strategy<Value = pb::HostApp> {
    (
        (text(), enum_value(), text(), text()),
        (text(), text(), enum_value(), any::<u32>(), any::<u32>()),
        (
            proptest::collection::vec(text(), 0..3),
            text(),
            text(),
            any::<bool>(),
            text(),
        ),
        timestamp(),
    )
        .prop_map(
            |(
                (host_id, host_status, domain, recipe),
                (observed_version, declared_version, state, running_replicas, desired_replicas),
                (drift, available_version, available_newest, pinned_by_host, fleet_target),
                observed_at,
            )| pb::HostApp {
                host_id,
                host_status,
                app: Some(pb::ObservedApp {
                    domain,
                    recipe,
                    observed_version,
                    declared_version,
                    state,
                    running_replicas,
                    desired_replicas,
                    drift,
                    available_version,
                    available_newest,
                    pinned_by_host,
                    fleet_target,
                    ..Default::default()
                }),
                observed_at,
            },
        )
}

fn alert() -> impl Strategy<Value = pb::Alert> {
    (
        (text(), text(), enum_value(), text(), timestamp()),
        (text(), text(), text(), text(), enum_value(), text()),
        (text(), enum_value(), text(), timestamp(), timestamp()),
    )
        .prop_map(
            |(
                (host_id, domain, severity, message, raised_at),
                (operation_id, recipe, from_version, to_version, outcome, snapshot_path),
                (id, state, acknowledged_reason, acknowledged_until, resolved_at),
            )| {
                pb::Alert {
                    id,
                    state,
                    acknowledged_by: acknowledged_reason.clone(),
                    acknowledged_reason,
                    acknowledged_at: acknowledged_until,
                    acknowledged_until,
                    resolved_at,
                    host_id,
                    domain,
                    severity,
                    message,
                    received_at: raised_at,
                    reported_raised_at_seconds: raised_at.map(|time| time.seconds),
                    raised_at,
                    operation_id,
                    recipe,
                    running_version: from_version.clone(),
                    from_version,
                    to_version,
                    outcome,
                    snapshot_path,
                }
            },
        )
}

fn operation() -> impl Strategy<Value = pb::Operation> {
    (
        (text(), text(), text(), enum_value(), enum_value()),
        (text(), text(), text(), timestamp()),
    )
        .prop_map(
            |((host_id, operation_id, domain, phase, outcome), (from_version, to_version, message, updated_at))| {
                pb::Operation {
                    host_id,
                    operation_id,
                    domain,
                    phase,
                    outcome,
                    running_version: from_version.clone(),
                    from_version,
                    to_version,
                    message,
                    updated_at,
                }
            },
        )
}

fn rollout() -> impl Strategy<Value = pb::Rollout> {
    let host = (
        (text(), text(), any::<u32>(), enum_value()),
        (text(), text(), text(), timestamp()),
    )
        .prop_map(
            |((host_id, domain, wave, outcome), (from_version, to_version, message, updated_at))| pb::RolloutHost {
                host_id,
                domain,
                wave,
                outcome,
                running_version: to_version.clone(),
                from_version,
                to_version,
                message,
                updated_at,
            },
        );
    (
        (text(), text(), text(), enum_value(), any::<u32>()),
        (timestamp(), text(), text(), proptest::collection::vec(host, 0..4)),
        (any::<bool>(), enum_value()),
    )
        .prop_map(
            |(
                (id, recipe, target_version, state, current_wave),
                (created_at, reason, created_by, hosts),
                (paused_by_operator, canary_gate),
            )| {
                pb::Rollout {
                    id,
                    recipe,
                    target_version,
                    state,
                    strategy: None,
                    hosts,
                    current_wave,
                    created_at,
                    updated_at: created_at,
                    reason,
                    created_by,
                    paused_by_operator,
                    canary_gate,
                }
            },
        )
}

/// Every line of `table` at most `width` terminal columns, and free of raw
/// control characters.
fn assert_fits(table: &str, width: u16) -> Result<(), TestCaseError> {
    for line in table.lines() {
        prop_assert!(
            line.width() <= usize::from(width),
            "a line wider than {width}:\n{table}"
        );
    }
    prop_assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "a raw control character:\n{table}"
    );
    Ok(())
}

fn check(grid: Grid, width: u16) -> Result<(), TestCaseError> {
    assert_fits(&grid.render(width), width)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn inventory_formatters_are_total(
        hosts in proptest::collection::vec(host(), 0..4),
        apps in proptest::collection::vec(host_app(), 0..4),
        width in 100_u16..200,
    ) {
        let hosts: Vec<HostJson> = hosts.iter().map(host_json).collect();
        serde_json::to_string(&hosts).unwrap();
        check(hosts_grid(&hosts), width)?;
        let apps_json: Vec<AppJson> = apps.iter().map(app).collect();
        serde_json::to_string(&apps_json).unwrap();
        check(apps_grid(&apps_json), width)?;
        let response = pb::RecipeVersionsResponse {
            recipe: "ghost".into(),
            versions: vec![pb::VersionGroup { version: "1.0.0".into(), apps }],
            next_page_token: String::new(),
        };
        let versions = versions(&response);
        serde_json::to_string(&versions).unwrap();
        check(versions_grid(&versions), width)?;
    }

    #[test]
    fn history_formatters_are_total(
        alerts in proptest::collection::vec(alert(), 0..4),
        operations in proptest::collection::vec(operation(), 0..4),
        width in 100_u16..200,
    ) {
        let alerts: Vec<AlertJson> = alerts.iter().map(alert_json).collect();
        serde_json::to_string(&alerts).unwrap();
        check(alerts_grid(&alerts), width)?;
        let operations: Vec<OperationJson> = operations.iter().map(operation_json).collect();
        serde_json::to_string(&operations).unwrap();
        check(operations_grid(&operations), width)?;
    }

    #[test]
    fn rollout_formatters_are_total(rollouts in proptest::collection::vec(rollout(), 0..3), width in 100_u16..200, detail in text(), at in timestamp()) {
        let rollouts: Vec<_> = rollouts.iter().map(rollout_json).collect();
        serde_json::to_string(&rollouts).unwrap();
        check(rollouts_grid(&rollouts), width)?;
        for rollout in &rollouts {
            check(rollout_hosts_grid(rollout), width)?;
            check(dry_run_grid(rollout), width)?;
            for line in super::rollout::progress_lines(None, rollout) {
                prop_assert!(!line.chars().any(|c| c.is_control() && c != '\n'), "{line}");
            }
        }
        let audit = [AuditJson { at: time(at.as_ref()), who: detail.clone(), action: detail.clone(), target: detail.clone(), detail }];
        check(audit_grid(&audit), width)?;
    }
}

fn host_json(host: &pb::Host) -> HostJson {
    super::host(host)
}

fn alert_json(alert: &pb::Alert) -> AlertJson {
    super::alert(alert)
}

fn operation_json(operation: &pb::Operation) -> OperationJson {
    super::operation(operation)
}

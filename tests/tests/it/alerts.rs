//! Alerts and operation records end to end: a test agent sends them over the
//! real stream to the real server, and the real CLI lists them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_tests::server::{observed, TestAgent, TestServer};
use ccfleet_tests::wait_for;
use serde_json::{json, Value};

fn alert_event(domain: &str, raised_at_seconds: i64, reason: &str) -> pb::AlertEvent {
    let mut event = pb::AlertEvent {
        domain: domain.into(),
        recipe: "ghost".into(),
        from_version: "1.3.0+6.42.0-alpine".into(),
        to_version: "1.4.0+6.43.0-alpine".into(),
        running_version: "1.3.0+6.42.0-alpine".into(),
        outcome: pb::OperationOutcome::RolledBack as i32,
        severity: pb::AlertSeverity::Warning as i32,
        reason: reason.into(),
        operation_id: "op-1".into(),
        snapshot_path: "/var/lib/ccfleet-agent/snapshots/blog.coop.example/op-1".into(),
        raised_at: Some(Default::default()),
        cleared: false,
    };
    if let Some(raised_at) = event.raised_at.as_mut() {
        raised_at.seconds = raised_at_seconds;
    }
    event
}

async fn send_alert(agent: &mut TestAgent, seq: u64, alert: pb::AlertEvent) -> Result<u64, tonic::Status> {
    agent
        .send(pb::AgentMessage {
            seq,
            body: Some(Body::Alert(alert)),
        })
        .await;
    agent.next_ack().await
}

fn summary(alerts: &Value) -> Vec<String> {
    alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| {
            format!(
                "{} {}",
                alert["host_id"].as_str().unwrap(),
                alert["domain"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_stored_once_listed_newest_first_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let apps = vec![observed("blog.coop.example", "ghost", "1.3.0+6.42.0-alpine")];
    let mut web1 = TestAgent::connect(server.channel_for("web-1").await, "web-1", apps.clone())
        .await
        .unwrap();
    let mut web2 = TestAgent::connect(server.channel_for("web-2").await, "web-2", apps)
        .await
        .unwrap();
    assert_eq!(server.cli_json(&["alerts"]), json!([]));

    // A reason that tries to clear the admin's screen and write the clipboard.
    let hostile = "health check failed\u{1b}[2J\u{1b}]52;c;aGk=\u{7}: 502";
    assert_eq!(
        send_alert(&mut web1, 1, alert_event("blog.coop.example", 1_000, hostile))
            .await
            .unwrap(),
        1
    );
    let alerts = server.cli_json(&["alerts"]);
    assert_eq!(
        alerts,
        json!([{
            "host_id": "web-1",
            "domain": "blog.coop.example",
            "recipe": "ghost",
            "severity": "warning",
            "outcome": "rolled_back",
            "from_version": "1.3.0+6.42.0-alpine",
            "to_version": "1.4.0+6.43.0-alpine",
            "running_version": "1.3.0+6.42.0-alpine",
            "reason": "health check failed[2J]52;c;aGk=: 502",
            "operation_id": "op-1",
            "snapshot_path": "/var/lib/ccfleet-agent/snapshots/blog.coop.example/op-1",
            "raised_at": "1970-01-01T00:16:40Z",
        }])
    );
    let table = server.cli(&["alerts"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("blog.coop.example") && table.contains("rolled_back"),
        "{table}"
    );
    assert!(!table.contains('\u{1b}') && !table.contains('\u{7}'), "{table:?}");

    // The same sequence number again is acknowledged and changes nothing.
    assert_eq!(
        send_alert(&mut web1, 1, alert_event("blog.coop.example", 5_000, "other"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(server.cli_json(&["alerts"])[0]["raised_at"], "1970-01-01T00:16:40Z");

    // A newer raise replaces the app's alert; web-2's is newer still.
    let mut critical = alert_event("blog.coop.example", 2_000, "rollback unhealthy too");
    critical.severity = pb::AlertSeverity::Critical as i32;
    critical.outcome = pb::OperationOutcome::Failed as i32;
    assert_eq!(send_alert(&mut web1, 2, critical).await.unwrap(), 2);
    assert_eq!(
        send_alert(&mut web2, 1, alert_event("blog.coop.example", 3_000, "held"))
            .await
            .unwrap(),
        1
    );
    let alerts = server.cli_json(&["alerts"]);
    assert_eq!(summary(&alerts), ["web-2 blog.coop.example", "web-1 blog.coop.example"]);
    assert_eq!(alerts[1]["severity"], "critical");
    assert_eq!(alerts[1]["outcome"], "failed");
    assert_eq!(
        summary(&server.cli_json(&["alerts", "--host", "web-1"])),
        ["web-1 blog.coop.example"]
    );

    // A clear removes web-1's alert and nothing else.
    let mut cleared = alert_event("blog.coop.example", 4_000, "");
    cleared.cleared = true;
    assert_eq!(send_alert(&mut web1, 3, cleared).await.unwrap(), 3);
    assert_eq!(summary(&server.cli_json(&["alerts"])), ["web-2 blog.coop.example"]);
    assert_eq!(server.cli_json(&["alerts", "--host", "web-1"]), json!([]));

    // An invalid alert is refused whole, naming the field, and stores nothing.
    let status = send_alert(&mut web1, 4, alert_event("Not A Domain", 5_000, "x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("alert.domain: invalid app domain"),
        "{status:?}"
    );
    assert_eq!(server.cli_json(&["alerts", "--host", "web-1"]), json!([]));

    // Filtering by an unknown host is an empty list; by an invalid one, a usage error.
    assert_eq!(server.cli_json(&["alerts", "--host", "web-9"]), json!([]));
    assert_eq!(server.cli(&["alerts", "--host", "Web 9"]).status.code(), Some(2));
}

fn progress(operation_id: &str, domain: &str, message: &str) -> Body {
    Body::Progress(pb::OperationProgress {
        operation_id: operation_id.into(),
        domain: domain.into(),
        phase: pb::OperationPhase::Deploying as i32,
        message: message.into(),
    })
}

fn result(operation_id: &str, domain: &str, outcome: pb::OperationOutcome) -> Body {
    Body::Result(pb::OperationResult {
        operation_id: operation_id.into(),
        domain: domain.into(),
        outcome: outcome as i32,
        from_version: "1.3.0+6.42.0-alpine".into(),
        to_version: "1.4.0+6.43.0-alpine".into(),
        running_version: if outcome == pb::OperationOutcome::Succeeded {
            "1.4.0+6.43.0-alpine".into()
        } else {
            "1.3.0+6.42.0-alpine".into()
        },
        message: "done".into(),
    })
}

async fn send_event(agent: &mut TestAgent, seq: u64, body: Body) {
    agent.send(pb::AgentMessage { seq, body: Some(body) }).await;
    assert_eq!(agent.next_ack().await.expect("event acknowledged"), seq);
}

fn now_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

/// Waits until the wall clock has moved past the millisecond of the last
/// event, so the next one is stored with a later time.
async fn clock_moves_on() {
    let start = now_millis();
    wait_for("the clock to move on", Duration::from_secs(5), || async move {
        if now_millis() > start + 1 {
            Ok(())
        } else {
            Err("same millisecond".into())
        }
    })
    .await;
}

fn operation_summary(operations: &Value) -> Vec<String> {
    operations
        .as_array()
        .unwrap()
        .iter()
        .map(|operation| {
            format!(
                "{} {} {} {}",
                operation["host_id"].as_str().unwrap(),
                operation["domain"].as_str().unwrap(),
                operation["operation_id"].as_str().unwrap(),
                operation["outcome"].as_str().unwrap_or("running"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_are_listed_newest_first_filtered_bounded_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, &["--operation-quota", "5"]);
    let mut web1 = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    let mut web2 = TestAgent::connect(server.channel_for("web-2").await, "web-2", vec![])
        .await
        .unwrap();
    assert_eq!(server.cli_json(&["operations"]), json!([]));

    send_event(&mut web1, 1, progress("op-a", "blog.coop.example", "deploying")).await;
    clock_moves_on().await;
    send_event(&mut web2, 1, progress("op-c", "blog.coop.example", "deploying")).await;
    clock_moves_on().await;
    send_event(&mut web1, 2, progress("op-b", "wiki.coop.example", "deploying")).await;
    clock_moves_on().await;
    send_event(
        &mut web1,
        3,
        result("op-a", "blog.coop.example", pb::OperationOutcome::Succeeded),
    )
    .await;

    let all = server.cli_json(&["operations"]);
    assert_eq!(
        operation_summary(&all),
        [
            "web-1 blog.coop.example op-a succeeded",
            "web-1 wiki.coop.example op-b running",
            "web-2 blog.coop.example op-c running",
        ]
    );
    assert_eq!(all[0]["phase"], "deploying");
    assert_eq!(all[0]["from_version"], "1.3.0+6.42.0-alpine");
    assert_eq!(all[1]["outcome"], Value::Null);
    assert_eq!(
        operation_summary(&server.cli_json(&["operations", "--host", "web-1"])),
        [
            "web-1 blog.coop.example op-a succeeded",
            "web-1 wiki.coop.example op-b running"
        ]
    );
    assert_eq!(
        operation_summary(&server.cli_json(&["operations", "--app", "blog.coop.example"])),
        [
            "web-1 blog.coop.example op-a succeeded",
            "web-2 blog.coop.example op-c running"
        ]
    );
    assert_eq!(
        operation_summary(&server.cli_json(&["operations", "--host", "web-2", "--app", "wiki.coop.example"])),
        Vec::<String>::new()
    );
    assert_eq!(
        operation_summary(&server.cli_json(&["operations", "--limit", "1"])),
        ["web-1 blog.coop.example op-a succeeded"]
    );
    assert_eq!(server.cli(&["operations", "--limit", "0"]).status.code(), Some(2));
    let table = String::from_utf8(server.cli(&["operations"]).stdout).unwrap();
    assert!(table.contains("op-b") && table.contains("running"), "{table}");

    // A host writing many operations keeps at most its quota (5, pruned in
    // steps of 1): the newest survive, web-2's records are untouched.
    for number in 0..20u64 {
        send_event(
            &mut web1,
            4 + number,
            progress(&format!("flood-{number}"), "blog.coop.example", "x"),
        )
        .await;
    }
    let web1_operations = server.cli_json(&["operations", "--host", "web-1"]);
    let ids: Vec<&str> = web1_operations
        .as_array()
        .unwrap()
        .iter()
        .map(|operation| operation["operation_id"].as_str().unwrap())
        .collect();
    assert!((5..=6).contains(&ids.len()), "{ids:?}");
    assert!(
        ids.contains(&"flood-19") && !ids.contains(&"flood-0") && !ids.contains(&"op-a"),
        "{ids:?}"
    );
    assert_eq!(
        server
            .cli_json(&["operations", "--host", "web-2"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Retention: a server started with a retention shorter than the records'
    // age prunes them at start.
    drop((web1, web2));
    server.kill();
    clock_moves_on().await;
    let server = TestServer::start(&data, &["--operation-retention", "1ms"]);
    wait_for("old operation records to be pruned", Duration::from_secs(10), || {
        let listed = server.cli_json(&["operations"]);
        async move {
            if listed == json!([]) {
                Ok(())
            } else {
                Err(listed.to_string())
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_from_a_host_far_in_the_future_is_bounded_and_the_listing_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let apps = vec![
        observed("blog.coop.example", "ghost", "1.3.0+6.42.0-alpine"),
        observed("wiki.coop.example", "ghost", "1.3.0+6.42.0-alpine"),
    ];
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", apps)
        .await
        .unwrap();
    let before = SystemTime::now();
    // 2^62 seconds: far beyond any calendar a formatter knows.
    let far = 1_i64 << 62;
    assert_eq!(
        send_alert(&mut agent, 1, alert_event("blog.coop.example", far, "from the future"))
            .await
            .unwrap(),
        1
    );
    // A second alert, received later with an honest time: listed first,
    // since listings follow the server's receive time.
    let honest = before.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(
        send_alert(&mut agent, 2, alert_event("wiki.coop.example", honest, "now"))
            .await
            .unwrap(),
        2
    );
    let after = SystemTime::now();

    for args in [&["alerts"][..], &["alerts", "--json"][..]] {
        let output = server.cli(args);
        assert!(
            output.status.success(),
            "ccfleet {args:?}: {:?} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let listed = server.cli_json(&["alerts"]);
    assert_eq!(summary(&listed), ["web-1 wiki.coop.example", "web-1 blog.coop.example"]);
    // The stored time is the receive time; the host's value stays visible
    // through the API.
    let shown = humantime::parse_rfc3339(listed[1]["raised_at"].as_str().unwrap()).unwrap();
    let floor = before - Duration::from_secs(1);
    assert!(shown >= floor && shown <= after, "{shown:?}");
    let channel = server.channel_as(&server.admin_credential()).await;
    let alerts = pb::admin_client::AdminClient::new(channel)
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alerts;
    let future = alerts.iter().find(|alert| alert.domain == "blog.coop.example").unwrap();
    assert_eq!(future.reported_raised_at_seconds, Some(far));
    assert_eq!(future.raised_at, future.received_at);
    let present = alerts.iter().find(|alert| alert.domain == "wiki.coop.example").unwrap();
    assert_eq!(present.reported_raised_at_seconds, None);
    assert_eq!(present.raised_at.as_ref().unwrap().seconds, honest);
}

//! Alerts and operation records end to end: a test agent sends them over the
//! real stream to the real server, and the real CLI lists them; the real
//! agent on the real Docker Engine raises the alerts of a reconcile (a failed
//! first deploy, a failed secret insert) and clears them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_tests::agent::AgentProcess;
use ccfleet_tests::docker::{DockerTest, V1_0};
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
            "id": "1",
            "state": "open",
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
            "acknowledged_by": null,
            "acknowledged_reason": null,
            "acknowledged_at": null,
            "acknowledged_until": null,
            "resolved_at": null,
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

/// The one alert of `domain` in a `ccfleet --json alerts` listing.
fn alert_of<'a>(alerts: &'a Value, domain: &str) -> &'a Value {
    alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|alert| alert["domain"] == domain)
        .unwrap_or_else(|| panic!("no alert of {domain} in {alerts}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_acknowledged_audited_reopened_by_a_new_failure_and_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let blog = "blog.coop.example";
    let apps = vec![observed(blog, "ghost", "1.3.0+6.42.0-alpine")];
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", apps)
        .await
        .unwrap();
    send_alert(&mut agent, 1, alert_event(blog, 1_000, "health check failed"))
        .await
        .unwrap();
    let open = server.cli_json(&["alerts"]);
    let id = alert_of(&open, blog)["id"].as_str().unwrap().to_owned();
    assert_eq!(alert_of(&open, blog)["state"], "open");
    let table = String::from_utf8(server.cli(&["alerts"]).stdout).unwrap();
    assert!(table.contains(" ID ") && table.contains(" open"), "{table}");

    // Acknowledged for a day: gone from `ccfleet alerts`, shown with --all,
    // in the audit log under the admin's name with the reason and expiry.
    let before = SystemTime::now();
    let acked = server.cli_json(&["alerts", "ack", &id, "--reason", "known; fix on Monday", "--for", "24h"]);
    assert_eq!(acked["state"], "acknowledged", "{acked}");
    assert_eq!(acked["acknowledged_by"], "admin");
    let until = humantime::parse_rfc3339(acked["acknowledged_until"].as_str().unwrap()).unwrap();
    let day = Duration::from_secs(24 * 3600);
    assert!(
        until >= before + day - Duration::from_secs(1) && until <= SystemTime::now() + day,
        "{acked}"
    );
    assert_eq!(server.cli_json(&["alerts"]), json!([]));
    let all = server.cli_json(&["alerts", "--all"]);
    assert_eq!(alert_of(&all, blog)["state"], "acknowledged");
    assert_eq!(alert_of(&all, blog)["acknowledged_reason"], "known; fix on Monday");
    let audit = server.cli_json(&["audit"]);
    let entry = &audit[0];
    assert_eq!(
        (&entry["who"], &entry["action"], &entry["target"]),
        (&json!("admin"), &json!("alert.ack"), &json!(id)),
        "{audit}"
    );
    let detail = entry["detail"].as_str().unwrap();
    assert!(
        detail.contains("known; fix on Monday") && detail.contains("until 20"),
        "{detail}"
    );

    // The same failure reported again stays acknowledged, with the same id.
    send_alert(&mut agent, 2, alert_event(blog, 2_000, "health check failed again"))
        .await
        .unwrap();
    assert_eq!(server.cli_json(&["alerts"]), json!([]));
    let all = server.cli_json(&["alerts", "--all"]);
    assert_eq!(alert_of(&all, blog)["reason"], "health check failed again");
    assert_eq!(alert_of(&all, blog)["id"], id.as_str());

    // A new failure (another operation) re-opens it, same id.
    let mut other = alert_event(blog, 3_000, "another upgrade failed");
    other.operation_id = "op-2".into();
    send_alert(&mut agent, 3, other).await.unwrap();
    let open = server.cli_json(&["alerts"]);
    assert_eq!(alert_of(&open, blog)["state"], "open");
    assert_eq!(alert_of(&open, blog)["id"], id.as_str());
    assert_eq!(alert_of(&open, blog)["acknowledged_by"], Value::Null);

    // The app's next success resolves it: kept, with its time, under --all.
    let mut cleared = alert_event(blog, 4_000, "");
    cleared.cleared = true;
    send_alert(&mut agent, 4, cleared).await.unwrap();
    assert_eq!(server.cli_json(&["alerts"]), json!([]));
    let all = server.cli_json(&["alerts", "--all"]);
    assert_eq!(alert_of(&all, blog)["state"], "resolved");
    assert!(alert_of(&all, blog)["resolved_at"].is_string(), "{all}");
    let table = String::from_utf8(server.cli(&["alerts", "--all"]).stdout).unwrap();
    assert!(table.contains("resolved"), "{table}");

    // A resolved alert, an unknown id and a missing reason are refused.
    for (args, code, says) in [
        (vec!["alerts", "ack", id.as_str(), "--reason", "x"], 4, "is resolved"),
        (
            vec!["alerts", "ack", "999", "--reason", "x"],
            4,
            "there is no alert 999",
        ),
        (vec!["alerts", "ack", "x1", "--reason", "x"], 4, "not an alert id"),
        (
            vec!["alerts", "ack", "1", "--reason", "x", "--for", "100d"],
            4,
            "at most 90 days",
        ),
        (vec!["alerts", "ack", "1"], 2, "--reason"),
    ] {
        let output = server.cli(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }

    // A failure after the resolution is a new alert with a new id.
    let mut again = alert_event(blog, 5_000, "failed once more");
    again.operation_id = "op-3".into();
    send_alert(&mut agent, 5, again).await.unwrap();
    let open = server.cli_json(&["alerts"]);
    assert_eq!(alert_of(&open, blog)["state"], "open");
    assert_ne!(alert_of(&open, blog)["id"], id.as_str());
}

/// The resident set of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The bytes of every file under `path`.
fn bytes_under(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() {
                bytes_under(&entry.path())
            } else {
                metadata.len()
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_alerts_for_distinct_domains_is_held_to_the_quota_and_the_listing_answers() {
    const FLOOD: u64 = 20_000;
    const SLACK: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, &["--metrics-listen", "127.0.0.1:0"]);
    let blog = "blog.coop.example";
    let apps = vec![
        observed(blog, "ghost", "1.3.0+6.42.0-alpine"),
        observed("wiki.coop.example", "ghost", "1.3.0+6.42.0-alpine"),
    ];
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", apps)
        .await
        .unwrap();
    // Sent without waiting for each acknowledgement, as a hostile host would
    // (up to 256 in flight, so that the connection never looks idle while
    // the server works through a full flow-control window).
    let mut next = 1;
    let mut acknowledged = 0;
    while acknowledged < FLOOD {
        while next <= FLOOD && next - acknowledged <= 256 {
            let body = Body::Alert(alert_event(&format!("app{next}.flood.example"), 1_000, "flood"));
            agent
                .send(pb::AgentMessage {
                    seq: next,
                    body: Some(body),
                })
                .await;
            next += 1;
        }
        acknowledged = agent.next_ack().await.expect("every event is acknowledged");
    }
    // An app the host runs still gets its alert past the slack.
    send_alert(&mut agent, FLOOD + 1, alert_event(blog, 2_000, "health check failed"))
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let output = server.cli(&["alerts"]);
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed = server.cli_json(&["alerts", "--all"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(
        listed.len(),
        SLACK + 1,
        "the slack for unlisted apps, and the listed app"
    );
    assert_eq!(listed[0]["domain"], blog, "newest first");
    // Every page is followed: a page size of 5 lists the same alerts.
    let paged = server.cli_json(&["--page-size", "5", "alerts", "--all"]);
    assert_eq!(paged.as_array().unwrap(), listed);
    let page = ccfleet_tests::server::scrape_metrics(server.metrics_address.expect("metrics"));
    assert_eq!(
        ccfleet_tests::server::metric_value(&page, "ccfleet_alerts_refused_total"),
        Some(FLOOD - SLACK as u64)
    );
    assert!(
        server.log().contains("alert refused"),
        "the refusal is logged with its reason"
    );
    // The whole data directory: the store is all it holds.
    let store_bytes = bytes_under(&data);
    let rss = rss_kib(server.pid());
    eprintln!(
        "flood of {FLOOD} alerts: store {} KiB, server RSS {rss} KiB, `ccfleet alerts` {} ms",
        store_bytes / 1024,
        elapsed.as_millis()
    );
    assert!(store_bytes < 64 << 20, "the store holds {store_bytes} bytes");
    assert!(rss < 256 * 1024, "the server's resident set is {rss} KiB");
}

/// The alert file the real agent keeps for `domain` under `test`'s alerts directory.
fn alert_file(test: &DockerTest, domain: &str) -> Option<Value> {
    std::fs::read(test.path().join("alerts").join(format!("{domain}.json")))
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
}

/// The server's open alerts of `domain`, as `ccfleet alerts --json` lists them.
fn server_alerts_of(server: &TestServer, domain: &str) -> Vec<Value> {
    server
        .cli_json(&["alerts"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|alert| alert["domain"] == domain)
        .cloned()
        .collect()
}

/// An agent config on `server` declaring a stateless fixture app of `recipe`
/// and a `fixture-secrets` app with its secret file.
fn failing_config(server: &TestServer, test: &DockerTest, web: &str, recipe: &str, secrets: &str) -> String {
    let token_file = test.path().join("token");
    if !token_file.exists() {
        std::fs::write(&token_file, server.create_token(&["--uses", "1"])).unwrap();
    }
    let secret_file = test.path().join("api_key");
    std::fs::write(&secret_file, "first value").unwrap();
    test.agent_config_with(
        "observe_interval = \"1s\"\nreconcile_interval = \"1h\"\n",
        &format!(
            "[[app]]\ndomain = {web:?}\nrecipe = {recipe:?}\nversion = {V1_0:?}\nstateful = false\n\
             deploy_timeout = \"90s\"\n\n\
             [[app]]\ndomain = {secrets:?}\nrecipe = \"fixture-secrets\"\nversion = \"1.0.0+1.0\"\n\
             stateful = false\ndeploy_timeout = \"90s\"\nsecrets = {{ api_key = {:?} }}\n",
            secret_file.display().to_string()
        ),
    )
    .replace(
        "url = \"https://fleet.example.org\"",
        &format!(
            "url = {:?}\njoin_token_file = {:?}",
            server.url(),
            token_file.display().to_string()
        ),
    )
}

/// A first deploy that fails (a recipe abra does not know) and a secret
/// insert that fails each raise a critical alert, on the host and in
/// `ccfleet alerts`; the same failure again changes nothing; the apps' next
/// successful reconcile clears both. The agent's log (stderr to a file, not
/// a terminal) carries no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_deploy_and_a_failed_secret_insert_raise_alerts_until_they_succeed() {
    let mut test = DockerTest::new("alfirst");
    let (web, secrets) = (test.domain("web"), test.domain("sec"));
    let server = TestServer::start(&test.path().join("data"), &[]);
    let config = test.path().join("agent.toml");
    std::fs::write(&config, failing_config(&server, &test, &web, "fixture-wbe", &secrets)).unwrap();
    std::fs::create_dir_all(test.abra_dir()).unwrap();
    std::fs::write(test.abra_dir().join("fail-next-secret-insert"), b"").unwrap();
    let agent = AgentProcess::start(&config, &test.path().join("control.sock"));

    // The agent's first reconcile, at start, fails both.
    wait_for("both alert files", Duration::from_secs(120), || {
        let found = (alert_file(&test, &web).is_some(), alert_file(&test, &secrets).is_some());
        let log = agent.log();
        async move {
            match found {
                (true, true) => Ok(()),
                _ => Err(format!(
                    "{found:?}\n{}",
                    log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
                )),
            }
        }
    })
    .await;
    let first = alert_file(&test, &web).expect("an alert for the failed first deploy");
    assert_eq!(first["kind"], "first_deploy", "{first}");
    assert_eq!(first["outcome"], "FAILED");
    assert_eq!(first["severity"], "critical");
    assert_eq!(first["to"], V1_0);
    let reason = first["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("first deploy failed: cannot create the app (abra app new)")
            && reason.contains("unknown recipe fixture-wbe"),
        "{reason}"
    );
    let insert = alert_file(&test, &secrets).expect("an alert for the failed secret insert");
    assert_eq!(insert["kind"], "secret_insert", "{insert}");
    assert_eq!(
        insert["severity"], "critical",
        "nothing of a first deploy runs: {insert}"
    );
    let reason = insert["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("secret insert failed: cannot insert secret api_key") && reason.contains("on purpose"),
        "{reason}"
    );

    // Both are visible from the workstation.
    wait_for("the server to list both alerts", Duration::from_secs(60), || {
        let (web_alerts, secret_alerts) = (server_alerts_of(&server, &web), server_alerts_of(&server, &secrets));
        async move {
            match (web_alerts.as_slice(), secret_alerts.as_slice()) {
                ([web], [secret])
                    if web["outcome"] == "failed"
                        && web["severity"] == "critical"
                        && web["to_version"] == V1_0
                        && secret["outcome"] == "failed" =>
                {
                    Ok(())
                }
                _ => Err(format!("{web_alerts:?} {secret_alerts:?}")),
            }
        }
    })
    .await;
    let table = String::from_utf8(server.cli(&["alerts"]).stdout).unwrap();
    assert!(table.contains("docker-test") && table.contains("critical"), "{table}");

    // The same failure again fails `apply` and leaves the alert as it was.
    let written = std::fs::read(test.path().join("alerts").join(format!("{web}.json"))).unwrap();
    let output = agent.command(&["apply", &web, "--wait"]);
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("unknown recipe fixture-wbe"), "{said}");
    assert_eq!(
        std::fs::read(test.path().join("alerts").join(format!("{web}.json"))).unwrap(),
        written
    );

    // The operator fixes the recipe's name; the secret insert works this
    // time: both apps reconcile, and their alerts are cleared.
    std::fs::write(&config, failing_config(&server, &test, &web, "fixture-web", &secrets)).unwrap();
    agent.reload();
    let output = agent.command(&["apply", "--wait"]);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log()
    );
    assert_eq!(alert_file(&test, &web), None);
    assert_eq!(alert_file(&test, &secrets), None);
    wait_for("the server to clear both alerts", Duration::from_secs(60), || {
        let left = [server_alerts_of(&server, &web), server_alerts_of(&server, &secrets)].concat();
        async move { left.is_empty().then_some(()).ok_or_else(|| format!("{left:?}")) }
    })
    .await;

    let log = agent.log();
    assert!(log.contains("alert written"), "{log}");
    assert!(!log.contains("\u{1b}["), "colour codes in a log that is not a terminal");
}

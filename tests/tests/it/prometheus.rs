//! The shipped Prometheus rules (`contrib/prometheus/ccfleet.rules.yml`),
//! checked by the real `promtool test rules` over series scraped from a real
//! server: once with an empty fleet, once with a critical and a warning
//! alert open, a halted rollout and a webhook queue that is stuck and has
//! dropped notifications.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_tests::docker::free_port;
use ccfleet_tests::server::{metric_value, run_cli, scrape_metrics, TestAgent, TestServer};
use ccfleet_tests::simulated::{Behaviour, SimulatedAgent};
use ccfleet_tests::wait_for;

const DEADLINE: Duration = Duration::from_secs(60);

fn rules_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .join("contrib/prometheus/ccfleet.rules.yml")
}

/// promtool, or a failure that says how to get it.
fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output();
    assert!(
        found.is_ok_and(|output| output.status.success()),
        "promtool is missing: install Debian's prometheus package (`sudo apt-get install prometheus`), \
         or run scripts/test, which installs it"
    );
    Command::new("promtool")
}

/// The samples of a scrape: `(series, value)`, in page order.
fn samples(page: &str) -> Vec<(String, String)> {
    let body = page.split_once("\r\n\r\n").map_or(page, |(_, body)| body);
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.to_owned()))
        })
        .collect()
}

fn alert(domain: &str, severity: pb::AlertSeverity) -> pb::AgentMessage {
    pb::AgentMessage {
        seq: 0,
        body: Some(Body::Alert(pb::AlertEvent {
            domain: domain.into(),
            recipe: "ghost".into(),
            from_version: "1.3.0".into(),
            to_version: "1.4.0".into(),
            running_version: "1.3.0".into(),
            outcome: pb::OperationOutcome::RolledBack as i32,
            severity: severity as i32,
            reason: "health check failed".into(),
            operation_id: format!("op-{domain}"),
            snapshot_path: String::new(),
            raised_at: Some(prost_types::Timestamp { seconds: 100, nanos: 0 }),
            cleared: false,
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rules_fire_on_series_scraped_from_a_real_server() {
    let mut promtool_check = promtool();
    let checked = promtool_check
        .args(["check", "rules"])
        .arg(rules_file())
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");

    let directory = tempfile::tempdir().unwrap();
    // Nobody listens on this webhook, and the queue holds one notification.
    let webhook = format!("http://127.0.0.1:{}/hook", free_port());
    let server = TestServer::start(
        &directory.path().join("data"),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--notify-webhook",
            &webhook,
            "--notify-queue-limit",
            "1",
        ],
    );
    let metrics = server.metrics_address.unwrap();
    let before = samples(&scrape_metrics(metrics));

    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    for (seq, (domain, severity)) in [
        ("a.coop.example", pb::AlertSeverity::Critical),
        ("b.coop.example", pb::AlertSeverity::Warning),
    ]
    .into_iter()
    .enumerate()
    {
        let mut message = alert(domain, severity);
        message.seq = seq as u64 + 1;
        agent.send(message).await;
        assert_eq!(agent.next_ack().await.unwrap(), seq as u64 + 1);
    }
    let credential = server.enroll("app-0").await;
    let app = SimulatedAgent::start(
        server.url(),
        credential,
        "app-0",
        "fixture",
        "1.0.0",
        Behaviour {
            outcome: pb::OperationOutcome::RolledBack,
            ..Behaviour::default()
        },
    );
    let (url, credentials) = (server.url(), server.admin_credential_path());
    wait_for("app-0 online", DEADLINE, || async {
        let (url, credentials) = (url.clone(), credentials.clone());
        let hosts = tokio::task::spawn_blocking(move || run_cli(&url, &credentials, &["--json", "hosts"]))
            .await
            .unwrap();
        let hosts = String::from_utf8_lossy(&hosts.stdout).to_string();
        if hosts.contains("app-0") && hosts.contains("\"online\"") {
            Ok(())
        } else {
            Err(hosts)
        }
    })
    .await;
    let halted = tokio::task::spawn_blocking(move || {
        run_cli(
            &url,
            &credentials,
            &["upgrade", "fixture", "--to", "1.1.0", "--max-failures", "1", "--follow"],
        )
    })
    .await
    .unwrap();
    assert_eq!(halted.status.code(), Some(6), "{halted:?}");
    app.stop().await;

    let page = scrape_metrics(metrics);
    let value = |sample: &str| metric_value(&page, sample).unwrap_or_else(|| panic!("{sample} in\n{page}"));
    assert_eq!(value("ccfleet_alerts_open{severity=\"critical\"}"), 1);
    assert_eq!(value("ccfleet_alerts_open{severity=\"warning\"}"), 1);
    assert_eq!(value("ccfleet_rollouts{state=\"halted\"}"), 1);
    let queued = value("ccfleet_notifications_queued");
    assert_eq!(queued, 1, "the queue holds its limit");
    assert_eq!(
        value("ccfleet_notifications_dropped_total"),
        2,
        "two alerts and a halt, one kept"
    );
    assert!(
        server
            .log()
            .contains("notification queue full: dropped its oldest notification undelivered"),
        "{}",
        server.log()
    );
    let after = samples(&page);
    assert_eq!(
        before.iter().map(|(series, _)| series).collect::<Vec<_>>(),
        after.iter().map(|(series, _)| series).collect::<Vec<_>>(),
        "the same series before and after: no label grows with the fleet"
    );

    // The first scrape at 0m, the second from 1m on, one sample a minute.
    let mut input_series = String::new();
    for ((series, first), (_, second)) in before.iter().zip(&after) {
        let _ = writeln!(
            input_series,
            "      - series: '{series}'\n        values: '{first} {second}x90'"
        );
    }
    let none = |at: &str| {
        [
            "CcfleetAppCritical",
            "CcfleetAppRolledBack",
            "CcfleetRolloutHalted",
            "CcfleetRolloutPausedLong",
            "CcfleetNotificationsDropped",
            "CcfleetNotificationsStuck",
            "CcfleetNotificationsRejected",
            "CcfleetStoreStalled",
        ]
        .iter()
        .map(|name| format!("      - eval_time: {at}\n        alertname: {name}\n        exp_alerts: []\n"))
        .collect::<String>()
    };
    let firing = |name: &str, labels: &str, summary: &str, description: &str| {
        format!(
            "      - eval_time: 40m\n        alertname: {name}\n        exp_alerts:\n          - exp_labels: {{{labels}}}\n            \
             exp_annotations:\n              summary: {summary:?}\n              description: {description:?}\n"
        )
    };
    let mut tests = none("0m");
    tests.push_str(&firing(
        "CcfleetAppCritical",
        "severity: critical",
        "1 app(s) may be down after a failed upgrade and rollback",
        "Run `ccfleet alerts` to see which apps, on which hosts, and why.",
    ));
    tests.push_str(&firing(
        "CcfleetAppRolledBack",
        "severity: warning",
        "1 app(s) run an older version after a rolled-back or held upgrade",
        "Run `ccfleet alerts` to see which apps and why.",
    ));
    tests.push_str(&firing(
        "CcfleetRolloutHalted",
        "severity: warning, state: halted",
        "A ccfleet rollout halted",
        "Run `ccfleet rollout ls` and `ccfleet rollout show ID` to see which hosts failed.",
    ));
    tests.push_str(&firing(
        "CcfleetNotificationsDropped",
        "severity: warning",
        "ccfleet dropped undelivered webhook notifications (queue full)",
        "A webhook has been unreachable for long; the oldest notifications were dropped. See the server log.",
    ));
    tests.push_str(&firing(
        "CcfleetNotificationsStuck",
        "severity: warning",
        &format!("{queued} ccfleet notification(s) undelivered for 30 minutes"),
        "A webhook does not answer; the server log names it and the error.",
    ));
    // Before their `for`, the slower rules wait.
    tests.push_str(
        "      - eval_time: 10m\n        alertname: CcfleetAppRolledBack\n        exp_alerts: []\n\
         \x20     - eval_time: 20m\n        alertname: CcfleetNotificationsStuck\n        exp_alerts: []\n",
    );
    for name in [
        "CcfleetRolloutPausedLong",
        "CcfleetNotificationsRejected",
        "CcfleetStoreStalled",
    ] {
        tests.push_str(&format!(
            "      - eval_time: 40m\n        alertname: {name}\n        exp_alerts: []\n"
        ));
    }
    let test_file = directory.path().join("ccfleet.rules.test.yml");
    let document = format!(
        "rule_files:\n  - {:?}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{input_series}    alert_rule_test:\n{tests}",
        rules_file().display().to_string()
    );
    std::fs::write(&test_file, &document).unwrap();
    let tested = promtool().args(["test", "rules"]).arg(&test_file).output().unwrap();
    assert!(
        tested.status.success(),
        "promtool test rules failed:\n{}{}\n--- the test file:\n{document}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
}

//! Webhook notifications end to end: the real server posts to a receiver
//! on 127.0.0.1 in this test. Alerts (from a test agent over the real
//! stream) and rollouts (simulated agents, the real CLI) arrive signed, with
//! an idempotency key, as JSON and as one line of text; a receiver that is
//! down gets everything once it is back; a server killed with undelivered
//! notifications delivers them after its restart; the secret is never in
//! the log or in `--help`.

use std::process::Output;
use std::time::Duration;

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_tests::docker::free_port;
use ccfleet_tests::server::{metric_value, observed, run_cli, scrape_metrics, TestAgent, TestServer};
use ccfleet_tests::simulated::{Behaviour, SimulatedAgent};
use ccfleet_tests::wait_for;
use ccfleet_tests::webhook::{hmac_sha256_hex, Receiver};

const DEADLINE: Duration = Duration::from_secs(60);
const SECRET: &str = "correct-horse-battery-staple-7f3a";

fn alert(domain: &str, severity: pb::AlertSeverity, raised_at: i64, cleared: bool) -> pb::AlertEvent {
    pb::AlertEvent {
        domain: domain.into(),
        recipe: "ghost".into(),
        from_version: "1.3.0+6.42.0".into(),
        to_version: "1.4.0+6.43.0".into(),
        running_version: "1.3.0+6.42.0".into(),
        outcome: pb::OperationOutcome::RolledBack as i32,
        severity: severity as i32,
        reason: "health check failed: 502".into(),
        operation_id: "op-1".into(),
        snapshot_path: String::new(),
        raised_at: Some(timestamp(raised_at)),
        cleared,
    }
}

fn timestamp(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

async fn send_alert(agent: &mut TestAgent, seq: u64, alert: pb::AlertEvent) {
    agent
        .send(pb::AgentMessage {
            seq,
            body: Some(Body::Alert(alert)),
        })
        .await;
    assert_eq!(agent.next_ack().await.unwrap(), seq, "the alert is stored");
}

/// The CLI on a blocking thread, so simulated agents keep running meanwhile.
async fn cli(server: &TestServer, args: &[&str]) -> Output {
    let (url, credentials) = (server.url(), server.admin_credential_path());
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&url, &credentials, &args)
    })
    .await
    .unwrap()
}

fn metric(server: &TestServer, sample: &str) -> Option<u64> {
    metric_value(&scrape_metrics(server.metrics_address.expect("metrics")), sample)
}

async fn wait_for_requests(receiver: &Receiver, path: &str, count: usize) -> Vec<ccfleet_tests::webhook::Received> {
    wait_for(&format!("{count} requests on {path}"), DEADLINE, || async {
        let received = receiver.received_on(path);
        if received.len() >= count {
            Ok(received)
        } else {
            Err(format!("{} received", received.len()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_rollouts_reach_webhooks_signed_as_json_and_as_text() {
    let directory = tempfile::tempdir().unwrap();
    let secret_file = directory.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let receiver = Receiver::start();
    let (json_url, text_url) = (receiver.url("/json"), format!("text+{}", receiver.url("/text")));
    let server = TestServer::start(
        &directory.path().join("data"),
        &[
            "--notify-webhook",
            &json_url,
            "--notify-webhook",
            &text_url,
            "--notify-secret-file",
            secret_file.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );

    // An alert opens, escalates and resolves.
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    let blog = "blog.coop.example";
    send_alert(&mut agent, 1, alert(blog, pb::AlertSeverity::Warning, 1_000, false)).await;
    send_alert(&mut agent, 2, alert(blog, pb::AlertSeverity::Critical, 2_000, false)).await;
    send_alert(&mut agent, 3, alert(blog, pb::AlertSeverity::Critical, 3_000, true)).await;

    // A rollout completes, the next one halts.
    let credential = server.enroll("app-0").await;
    let app = SimulatedAgent::start(
        server.url(),
        credential,
        "app-0",
        "fixture",
        "1.0.0",
        Behaviour::default(),
    );
    wait_for("app-0 online", DEADLINE, || async {
        let hosts = cli(&server, &["--json", "hosts"]).await;
        let hosts = String::from_utf8_lossy(&hosts.stdout).to_string();
        if hosts.contains("\"online\"") && hosts.contains("app-0") {
            Ok(())
        } else {
            Err(hosts)
        }
    })
    .await;
    let completed = cli(&server, &["upgrade", "fixture", "--to", "1.1.0", "--follow"]).await;
    assert_eq!(completed.status.code(), Some(0), "{completed:?}\n{}", server.log());
    app.set_behaviour(Behaviour {
        outcome: pb::OperationOutcome::RolledBack,
        ..Behaviour::default()
    });
    let halted = cli(
        &server,
        &["upgrade", "fixture", "--to", "1.2.0", "--max-failures", "1", "--follow"],
    )
    .await;
    assert_eq!(halted.status.code(), Some(6), "{halted:?}\n{}", server.log());

    let json = wait_for_requests(&receiver, "/json", 5).await;
    let text = wait_for_requests(&receiver, "/text", 5).await;
    let kinds: Vec<String> = json
        .iter()
        .map(|request| request.json()["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "alert_opened",
            "alert_escalated",
            "alert_resolved",
            "rollout_completed",
            "rollout_halted"
        ]
    );
    for request in json.iter().chain(&text) {
        // The signature is HMAC-SHA256 of the body under the secret, checked
        // here by an implementation of our own.
        let signature = request.header("x-ccfleet-signature").expect("a signature header");
        assert_eq!(
            signature,
            format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &request.body))
        );
        // A body changed on the way no longer matches it.
        let mut tampered = request.body.clone();
        tampered[0] ^= 1;
        assert_ne!(
            signature,
            format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &tampered))
        );
        assert_ne!(
            signature,
            format!("sha256={}", hmac_sha256_hex(b"another secret", &request.body))
        );
        assert!(request.header("idempotency-key").is_some(), "{request:?}");
    }
    let first = json[0].json();
    assert_eq!(first["version"], 1);
    assert_eq!(first["id"], "alert:web-1:blog.coop.example:1000000:opened");
    assert_eq!(json[0].header("idempotency-key"), first["id"].as_str());
    assert_eq!(json[0].header("x-ccfleet-event"), Some("alert_opened"));
    assert_eq!(json[0].header("content-type"), Some("application/json"));
    assert_eq!(first["alert"]["host_id"], "web-1");
    assert_eq!(first["alert"]["severity"], "warning");
    assert_eq!(first["alert"]["to_version"], "1.4.0+6.43.0");
    assert_eq!(first["alert"]["raised_at"], "1970-01-01T00:16:40Z");
    let halted_body = json[4].json();
    assert_eq!(halted_body["rollout"]["state"], "halted");
    assert_eq!(halted_body["rollout"]["target"], "1.2.0");
    assert_eq!(halted_body["rollout"]["failed"], 1);

    let lines: Vec<String> = text.iter().map(|request| request.text()).collect();
    for line in &lines {
        assert!(line.starts_with("[ccfleet] ") && !line.contains('\n'), "{line:?}");
    }
    assert_eq!(
        lines[0],
        "[ccfleet] warning alert on web-1: blog.coop.example (ghost) 1.3.0+6.42.0 -> 1.4.0+6.43.0 rolled_back: health check failed: 502"
    );
    assert!(
        lines[3].contains("of fixture to 1.1.0 completed (1 succeeded"),
        "{}",
        lines[3]
    );
    assert!(lines[4].contains("of fixture to 1.2.0 halted: "), "{}", lines[4]);
    assert_eq!(text[0].header("content-type"), Some("text/plain; charset=utf-8"));
    // The JSON body carries the same line for chat webhooks.
    assert_eq!(first["text"], lines[0]);

    assert_eq!(
        metric(&server, "ccfleet_notification_attempts_total{outcome=\"delivered\"}"),
        Some(10)
    );
    assert_eq!(metric(&server, "ccfleet_notifications_queued"), Some(0));
    assert_eq!(metric(&server, "ccfleet_rollouts{state=\"halted\"}"), Some(1));
    assert_eq!(metric(&server, "ccfleet_rollouts{state=\"completed\"}"), Some(1));
    assert_eq!(metric(&server, "ccfleet_alerts_open{severity=\"critical\"}"), Some(0));

    // The secret is in no log line, and `--help` never shows one.
    let log = server.log();
    assert!(log.contains("notification delivered"), "{log}");
    assert!(!log.contains(SECRET), "the secret leaked into the log");
    assert!(
        !log.contains("/json") && !log.contains("/text"),
        "webhook paths stay out of the log"
    );
    let help = std::process::Command::new(ccfleet_tests::binary("ccfleet-server"))
        .args(["run", "--help"])
        .env("CCFLEET_NOTIFY_SECRET", SECRET)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--notify-secret-file"), "{help}");
    assert!(!help.contains(SECRET), "{help}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_everything_when_back_and_a_killed_server_delivers_after_restart() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    // Nothing listens here yet: the receiver is down.
    let port = free_port();
    // Given in a webhooks file, as URLs that carry a token should be.
    let webhooks = directory.path().join("webhooks");
    std::fs::write(&webhooks, format!("# the receiver\n\nhttp://127.0.0.1:{port}/hook\n")).unwrap();
    let args = [
        "--notify-webhooks-file",
        webhooks.to_str().unwrap(),
        "--notify-max-retry-delay",
        "1s",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let server = TestServer::start(&data, &args);
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    let domains = ["a.coop.example", "b.coop.example", "c.coop.example"];
    send_alert(&mut agent, 1, alert(domains[0], pb::AlertSeverity::Warning, 10, false)).await;
    send_alert(&mut agent, 2, alert(domains[1], pb::AlertSeverity::Warning, 20, false)).await;
    wait_for("a failed attempt", DEADLINE, || async {
        match metric(&server, "ccfleet_notification_attempts_total{outcome=\"retried\"}") {
            Some(retried) if retried >= 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(metric(&server, "ccfleet_notifications_queued"), Some(2));

    // Up: both arrive, in order, once.
    let receiver = Receiver::start_on(port);
    let received = wait_for_requests(&receiver, "/hook", 2).await;
    let ids: Vec<String> = received
        .iter()
        .map(|request| request.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        [
            "alert:web-1:a.coop.example:10000:opened",
            "alert:web-1:b.coop.example:20000:opened"
        ]
    );
    wait_for("an empty queue", DEADLINE, || async {
        match metric(&server, "ccfleet_notifications_queued") {
            Some(0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        received
            .iter()
            .all(|request| request.header("x-ccfleet-signature").is_none()),
        "no secret, no signature"
    );

    // Down again; a third alert is stored and not delivered; SIGKILL.
    drop(receiver);
    send_alert(&mut agent, 3, alert(domains[2], pb::AlertSeverity::Critical, 30, false)).await;
    let retried_before = metric(&server, "ccfleet_notification_attempts_total{outcome=\"retried\"}").unwrap_or(0);
    wait_for("a failed attempt for the third", DEADLINE, || async {
        match metric(&server, "ccfleet_notification_attempts_total{outcome=\"retried\"}") {
            Some(retried) if retried > retried_before => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    drop(agent);
    server.kill();

    // The restarted server still holds it and delivers it once the receiver is up.
    let server = TestServer::start(&data, &args);
    assert_eq!(metric(&server, "ccfleet_notifications_queued"), Some(1));
    let receiver = Receiver::start_on(port);
    let received = wait_for_requests(&receiver, "/hook", 1).await;
    assert_eq!(received[0].json()["id"], "alert:web-1:c.coop.example:30000:opened");
    assert_eq!(received[0].json()["alert"]["severity"], "critical");
    wait_for("an empty queue after the restart", DEADLINE, || async {
        match metric(&server, "ccfleet_notifications_queued") {
            Some(0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[test]
fn bad_webhook_arguments_are_refused_with_a_clear_error() {
    let directory = tempfile::tempdir().unwrap();
    let secret_file = directory.path().join("secret");
    std::fs::write(&secret_file, "\n").unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(ccfleet_tests::binary("ccfleet-server"))
            .arg("run")
            .arg("--data")
            .arg(directory.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        // A flag error, whether clap or the server's own check refused it.
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        stderr
    };
    let plain = run(&["--notify-webhook", "http://hooks.example.org/t/secret-token"]);
    assert!(
        plain.contains("plain http is allowed only to a loopback address"),
        "{plain}"
    );
    let empty = run(&[
        "--notify-webhook",
        "https://hooks.example.org/t",
        "--notify-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    assert!(
        empty.contains("the webhook secret file") && empty.contains("is empty"),
        "{empty}"
    );
    let good_secret = directory.path().join("good-secret");
    std::fs::write(&good_secret, "s3cret").unwrap();
    let lonely = run(&["--notify-secret-file", good_secret.to_str().unwrap()]);
    assert!(
        lonely.contains("--notify-secret-file is given but no webhook"),
        "{lonely}"
    );
    let twice = run(&[
        "--notify-webhook",
        "https://hooks.example.org/t",
        "--notify-webhook",
        "https://hooks.example.org/t",
    ]);
    assert!(twice.contains("is given twice"), "{twice}");
    let file = directory.path().join("webhooks");
    std::fs::write(&file, "# ours\n\nhttp://hooks.example.org/t\n").unwrap();
    let in_file = run(&["--notify-webhooks-file", file.to_str().unwrap()]);
    assert!(
        in_file.contains(&format!("{} line 3", file.display())) && in_file.contains("plain http"),
        "{in_file}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_never_answers_does_not_slow_the_agents_stream() {
    let directory = tempfile::tempdir().unwrap();
    // Accepts connections (the kernel's backlog) and never answers: each
    // request waits for the 10 s request timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    let server = TestServer::start(
        &directory.path().join("data"),
        &["--notify-webhook", &url, "--metrics-listen", "127.0.0.1:0"],
    );
    // The host runs the 20 apps (its alert quota follows its inventory).
    let apps = (1..=20u64)
        .map(|seq| observed(&format!("app{seq}.coop.example"), "ghost", "1.3.0"))
        .collect();
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", apps)
        .await
        .unwrap();
    for seq in 1..=20u64 {
        let domain = format!("app{seq}.coop.example");
        send_alert(
            &mut agent,
            seq,
            alert(&domain, pb::AlertSeverity::Warning, seq as i64, false),
        )
        .await;
    }
    // Every event was stored and acknowledged while the first request was
    // still waiting for its answer.
    let attempts: u64 = ["delivered", "retried", "rejected"]
        .iter()
        .map(|outcome| {
            metric(
                &server,
                &format!("ccfleet_notification_attempts_total{{outcome=\"{outcome}\"}}"),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(attempts, 0, "{}", server.log());
    assert_eq!(metric(&server, "ccfleet_notifications_queued"), Some(20));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_with_an_untrusted_certificate_gets_nothing() {
    use tokio_rustls::rustls;
    ccfleet_proto::tls::install_crypto_provider();
    // A receiver on localhost with a self-signed certificate: in no
    // system's roots, so the server must refuse it before it sends a body.
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (handshakes, mut handshake_results) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let result = acceptor
                .accept(stream)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string());
            let _ = handshakes.send(result);
        }
    });

    let directory = tempfile::tempdir().unwrap();
    let url = format!("https://localhost:{port}/hook");
    let server = TestServer::start(
        &directory.path().join("data"),
        &["--notify-webhook", &url, "--metrics-listen", "127.0.0.1:0"],
    );
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    send_alert(
        &mut agent,
        1,
        alert("a.coop.example", pb::AlertSeverity::Warning, 1, false),
    )
    .await;
    let handshake = tokio::time::timeout(DEADLINE, handshake_results.recv())
        .await
        .expect("the server tries the webhook")
        .unwrap();
    // The client aborted the handshake: no request, no body was sent.
    assert!(handshake.is_err(), "the server accepted a self-signed certificate");
    wait_for("a failed attempt", DEADLINE, || async {
        match metric(&server, "ccfleet_notification_attempts_total{outcome=\"retried\"}") {
            Some(retried) if retried >= 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        metric(&server, "ccfleet_notification_attempts_total{outcome=\"delivered\"}"),
        Some(0)
    );
    assert_eq!(metric(&server, "ccfleet_notifications_queued"), Some(1));
}

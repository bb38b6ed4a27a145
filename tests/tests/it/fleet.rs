//! The foundation's vertical slice: test agents stream to the real server,
//! the real CLI shows exactly what they reported, state survives a killed
//! server, and silent or departed hosts go offline.

use std::time::Duration;

use ccfleet_proto::pb;
use ccfleet_tests::disk::SmallDisk;
use ccfleet_tests::server::{observed, run_cli, TestAgent, TestServer};
use ccfleet_tests::wait_for;
use serde_json::{json, Value};

fn fleet_inventories() -> Vec<(&'static str, Vec<pb::ObservedApp>)> {
    vec![
        (
            "web-1",
            vec![
                observed("blog.coop.example", "ghost", "1.3.0+6.42.0-alpine"),
                observed("wiki.coop.example", "hedgedoc", "2.1.0+1.10.0"),
            ],
        ),
        (
            "web-2",
            vec![
                observed("news.coop.example", "ghost", "1.4.0+6.43.0-alpine"),
                observed("chat.coop.example", "matrix-synapse", "5.0.0+v1.120.0"),
            ],
        ),
        (
            "web-3",
            vec![observed("blog.other.example", "ghost", "1.3.0+6.42.0-alpine")],
        ),
    ]
}

/// (host, status, app_count) for every host in `ccfleet --json hosts`.
fn host_summary(hosts: &Value) -> Vec<(String, String, u64)> {
    hosts
        .as_array()
        .expect("hosts is a JSON array")
        .iter()
        .map(|host| {
            (
                host["host_id"].as_str().unwrap().to_owned(),
                host["status"].as_str().unwrap().to_owned(),
                host["app_count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn app_summary(apps: &Value) -> Vec<String> {
    apps.as_array()
        .expect("apps is a JSON array")
        .iter()
        .map(|app| {
            format!(
                "{} {} {} {}",
                app["host_id"].as_str().unwrap(),
                app["domain"].as_str().unwrap(),
                app["recipe"].as_str().unwrap(),
                app["version"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

fn summary(rows: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    rows.iter()
        .map(|(host, status, count)| (host.to_string(), status.to_string(), *count))
        .collect()
}

async fn wait_for_hosts(server: &TestServer, expected: Vec<(String, String, u64)>) {
    wait_for("the host list", Duration::from_secs(30), || {
        let actual = host_summary(&server.cli_json(&["hosts"]));
        let expected = expected.clone();
        async move {
            if actual == expected {
                Ok(())
            } else {
                Err(format!("{actual:?}"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_are_shown_exactly_and_survive_a_killed_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, &[]);
    let mut agents = Vec::new();
    for (host, apps) in fleet_inventories() {
        let agent = TestAgent::connect(server.channel_for(host).await, host, apps)
            .await
            .expect("hello accepted");
        assert_eq!(agent.welcome.last_seq, 0, "a new host has no stored events");
        agents.push(agent);
    }

    let hosts = server.cli_json(&["hosts"]);
    assert_eq!(
        host_summary(&hosts),
        summary(&[("web-1", "online", 2), ("web-2", "online", 2), ("web-3", "online", 1)])
    );
    assert_eq!(hosts[0]["agent_version"], "0.1.0-test");
    assert_eq!(hosts[0]["labels"], json!({"site": "test"}));
    assert_eq!(hosts[0]["os"], "NixOS 25.05");

    let apps = server.cli_json(&["apps"]);
    assert_eq!(
        app_summary(&apps),
        [
            "web-1 blog.coop.example ghost 1.3.0+6.42.0-alpine",
            "web-1 wiki.coop.example hedgedoc 2.1.0+1.10.0",
            "web-2 chat.coop.example matrix-synapse 5.0.0+v1.120.0",
            "web-2 news.coop.example ghost 1.4.0+6.43.0-alpine",
            "web-3 blog.other.example ghost 1.3.0+6.42.0-alpine",
        ]
    );
    assert_eq!(apps[0]["state"], "converged");
    assert_eq!(apps[0]["replicas"], "1/1");
    assert_eq!(
        app_summary(&server.cli_json(&["apps", "--recipe", "ghost"])),
        [
            "web-1 blog.coop.example ghost 1.3.0+6.42.0-alpine",
            "web-2 news.coop.example ghost 1.4.0+6.43.0-alpine",
            "web-3 blog.other.example ghost 1.3.0+6.42.0-alpine",
        ]
    );

    let versions = server.cli_json(&["versions", "ghost"]);
    let groups: Vec<(String, Vec<String>)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|group| {
            let hosts = group["apps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|app| app["host_id"].as_str().unwrap().to_owned())
                .collect();
            (group["version"].as_str().unwrap().to_owned(), hosts)
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("1.4.0+6.43.0-alpine".to_string(), vec!["web-2".to_string()]),
            (
                "1.3.0+6.42.0-alpine".to_string(),
                vec!["web-1".to_string(), "web-3".to_string()]
            ),
        ],
        "newest first, hosts grouped by version"
    );
    assert_eq!(versions["recipe"], "ghost");

    // An inventory update is acknowledged once it is stored; the people's
    // table shows it too.
    let web1 = &mut agents[0];
    let acked = web1
        .send_inventory(1, vec![observed("blog.coop.example", "ghost", "1.4.0+6.43.0-alpine")])
        .await
        .expect("update accepted");
    assert_eq!(acked, 1);
    let versions = server.cli_json(&["versions", "ghost"]);
    let hosts_of = |index: usize| -> Vec<String> {
        versions["versions"][index]["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|app| {
                format!(
                    "{} {}",
                    app["host_id"].as_str().unwrap(),
                    app["domain"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(versions["versions"][0]["version"], "1.4.0+6.43.0-alpine");
    assert_eq!(hosts_of(0), ["web-1 blog.coop.example", "web-2 news.coop.example"]);
    assert_eq!(hosts_of(1), ["web-3 blog.other.example"], "web-1 left the 1.3.0 group");
    // The people's table: the newest version's row lists the moved app.
    let table = String::from_utf8(server.cli(&["versions", "ghost"]).stdout).unwrap();
    let newest_row = table.split("1.3.0+6.42.0-alpine").next().unwrap();
    assert!(newest_row.contains("blog.coop.example (web-1)"), "{table}");

    // SIGKILL: whatever was acknowledged must be on disk.
    server.kill();
    drop(agents);
    let server = TestServer::start(&data, &[]);
    assert_eq!(
        host_summary(&server.cli_json(&["hosts"])),
        summary(&[
            ("web-1", "offline", 1),
            ("web-2", "offline", 2),
            ("web-3", "offline", 1)
        ]),
        "every host is known after the restart, and offline until it reconnects"
    );
    assert_eq!(
        app_summary(&server.cli_json(&["apps", "--recipe", "ghost"])),
        [
            "web-1 blog.coop.example ghost 1.4.0+6.43.0-alpine",
            "web-2 news.coop.example ghost 1.4.0+6.43.0-alpine",
            "web-3 blog.other.example ghost 1.3.0+6.42.0-alpine",
        ]
    );

    // The agent reconnects and learns which events the server already has.
    let web1 = TestAgent::connect(
        server.channel_for("web-1").await,
        "web-1",
        vec![observed("blog.coop.example", "ghost", "1.4.0+6.43.0-alpine")],
    )
    .await
    .unwrap();
    assert_eq!(web1.welcome.last_seq, 1);
    assert_eq!(
        host_summary(&server.cli_json(&["hosts"]))[0],
        ("web-1".to_string(), "online".to_string(), 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_host_goes_offline_after_the_heartbeat_timeout_and_a_live_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &dir.path().join("data"),
        &["--heartbeat-interval", "1s", "--heartbeat-timeout", "3s"],
    );
    let silent = TestAgent::connect(server.channel_for("silent").await, "silent", vec![])
        .await
        .unwrap();
    let live = TestAgent::connect(server.channel_for("live").await, "live", vec![])
        .await
        .unwrap();
    assert_eq!(live.welcome.heartbeat_interval_seconds, 1);
    wait_for_hosts(&server, summary(&[("live", "online", 0), ("silent", "online", 0)])).await;

    // The live agent heartbeats at the interval the server asked for; the
    // silent one keeps its stream open but sends nothing.
    let heartbeats = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        loop {
            ticker.tick().await;
            live.heartbeat().await;
        }
    });
    wait_for_hosts(&server, summary(&[("live", "online", 0), ("silent", "offline", 0)])).await;
    heartbeats.abort();
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_host_is_shown_offline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &dir.path().join("data"),
        &["--heartbeat-interval", "1s", "--heartbeat-timeout", "3s"],
    );
    let agent = TestAgent::connect(
        server.channel_for("leaving").await,
        "leaving",
        vec![observed("a.coop.example", "ghost", "1.0.0")],
    )
    .await
    .unwrap();
    wait_for_hosts(&server, summary(&[("leaving", "online", 1)])).await;
    drop(agent);
    wait_for_hosts(&server, summary(&[("leaving", "offline", 1)])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_events_are_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    agent
        .send_inventory(1, vec![observed("a.coop.example", "ghost", "1.0.0")])
        .await
        .unwrap();
    agent
        .send_inventory(2, vec![observed("a.coop.example", "ghost", "1.1.0")])
        .await
        .unwrap();
    // A re-delivered older event (outbox replay after a reconnect) is
    // answered with the watermark, which covers it, but must not roll the
    // stored state back.
    assert_eq!(
        agent
            .send_inventory(1, vec![observed("a.coop.example", "ghost", "1.0.0")])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        app_summary(&server.cli_json(&["apps"])),
        ["web-1 a.coop.example ghost 1.1.0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_input_is_refused_with_the_reason_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);

    let refused = |result: Result<TestAgent, tonic::Status>| match result {
        Ok(_) => panic!("the server accepted bad input"),
        Err(status) => (status.code(), status.message().to_owned()),
    };

    let (code, message) = refused(TestAgent::connect(server.channel_for("web-1").await, "web;reboot", vec![]).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(
        message.starts_with("hello.host_id: invalid host id \"web;reboot\": character ';'"),
        "{message}"
    );

    let (code, message) = refused(TestAgent::connect(server.channel_for("web-1").await, "../etc", vec![]).await);
    assert_eq!(code, tonic::Code::InvalidArgument, "{message}");

    let bad_version = vec![observed("a.coop.example", "ghost", "4.32.1_2")];
    let (_, message) = refused(TestAgent::connect(server.channel_for("web-1").await, "web-1", bad_version).await);
    assert!(
        message.contains("inventory.apps[0].observed_version") && message.contains("old-style"),
        "{message}"
    );

    let bad_domain = vec![observed("a.coop.example/../../x", "ghost", "1.0.0")];
    let (_, message) = refused(TestAgent::connect(server.channel_for("web-1").await, "web-1", bad_domain).await);
    assert!(message.contains("inventory.apps[0].domain"), "{message}");

    let twice = vec![
        observed("a.coop.example", "ghost", "1.0.0"),
        observed("a.coop.example", "ghost", "1.0.0"),
    ];
    let (_, message) = refused(TestAgent::connect(server.channel_for("web-1").await, "web-1", twice).await);
    assert!(message.contains("appears twice"), "{message}");

    let heartbeat_first = pb::AgentMessage {
        seq: 0,
        body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {})),
    };
    let (code, message) =
        refused(TestAgent::connect_with(server.channel_for("web-1").await, heartbeat_first, "web-1").await);
    assert_eq!(
        (code, message.as_str()),
        (
            tonic::Code::InvalidArgument,
            "the first message on an agent stream must be a hello"
        )
    );

    // Larger than the explicit 4 MiB message limit.
    let huge = vec![pb::ObservedApp {
        drift: vec!["x".repeat(4096); 1100],
        ..observed("a.coop.example", "ghost", "1.0.0")
    }];
    let (code, message) = refused(TestAgent::connect(server.channel_for("web-1").await, "web-1", huge).await);
    assert!(
        matches!(code, tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "{code:?} {message}"
    );

    assert_eq!(
        host_summary(&server.cli_json(&["hosts"])),
        summary(&[("web-1", "offline", 0)]),
        "the enrolment is all that is stored: no refused hello changed it"
    );

    // Mid-stream: a valid host sending a bad event is cut off, its stored state unchanged.
    let mut agent = TestAgent::connect(
        server.channel_for("web-1").await,
        "web-1",
        vec![observed("a.coop.example", "ghost", "1.0.0")],
    )
    .await
    .unwrap();
    let status = agent
        .send_inventory(1, vec![observed("a.coop.example", "gh ost", "1.0.0")])
        .await
        .unwrap_err();
    assert!(status.message().contains("inventory.apps[0].recipe"), "{status:?}");
    let mut agent = TestAgent::connect(server.channel_for("web-2").await, "web-2", vec![])
        .await
        .unwrap();
    let status = agent.send_inventory(0, vec![]).await.unwrap_err();
    assert!(status.message().contains("sequence number"), "{status:?}");
    assert_eq!(
        app_summary(&server.cli_json(&["apps"])),
        ["web-1 a.coop.example ghost 1.0.0"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reports_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.anonymous_channel().await);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ccfleet.v1.Agent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[test]
fn the_cli_reports_a_dead_server_in_one_line_with_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let (url, credential) = (server.url(), server.admin_credential_path());
    server.kill();
    let output = run_cli(&url, &credential, &["hosts"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: cannot reach the ccfleet server at {url}: Connection refused"
        )),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn the_cli_refuses_bad_names_before_calling_the_server() {
    let output = run_cli(
        "https://127.0.0.1:9",
        std::path::Path::new("/nonexistent"),
        &["versions", "../ghost"],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("invalid recipe name \"../ghost\""), "{stderr}");
}

#[test]
fn the_cli_explains_a_missing_credential() {
    let output = run_cli(
        "https://127.0.0.1:9",
        std::path::Path::new("/nonexistent/admin.toml"),
        &["hosts"],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: cannot read the admin credential /nonexistent/admin.toml"),
        "{stderr}"
    );
}

#[test]
fn the_cli_ships_completions_and_a_man_page_without_a_server() {
    let nowhere = std::path::Path::new("/nonexistent/admin.toml");
    let bash = run_cli("https://127.0.0.1:9", nowhere, &["completions", "bash"]);
    assert!(bash.status.success(), "{}", String::from_utf8_lossy(&bash.stderr));
    let script = String::from_utf8(bash.stdout).unwrap();
    assert!(script.contains("_ccfleet()") && script.contains("versions"), "{script}");
    let man = run_cli("https://127.0.0.1:9", nowhere, &["man"]);
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(page.contains(".TH ccfleet 1") && page.contains("Exit codes"), "{page}");
}

/// Every page the main page refers to exists: one per subcommand, for all
/// three binaries, and each binary prints its completion scripts.
#[test]
fn every_binary_writes_a_man_page_per_subcommand_and_completions() {
    let directory = tempfile::tempdir().unwrap();
    let expected: [(&str, &[&str]); 3] = [
        (
            "ccfleet",
            &[
                "ccfleet.1",
                "ccfleet-upgrade.1",
                "ccfleet-rollout.1",
                "ccfleet-rollout-show.1",
                "ccfleet-token-create.1",
            ],
        ),
        (
            "ccfleet-agent",
            &[
                "ccfleet-agent.1",
                "ccfleet-agent-status.1",
                "ccfleet-agent-check-config.1",
            ],
        ),
        (
            "ccfleet-server",
            &["ccfleet-server.1", "ccfleet-server-run.1", "ccfleet-server-init.1"],
        ),
    ];
    for (binary, pages) in expected {
        let out = directory.path().join(binary);
        std::fs::create_dir(&out).unwrap();
        let output = std::process::Command::new(ccfleet_tests::binary(binary))
            .args(["man", "--out"])
            .arg(&out)
            .env("CCFLEET_CREDENTIALS", "/nonexistent/admin.toml")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{binary}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for page in pages {
            let text = std::fs::read_to_string(out.join(page)).unwrap_or_else(|error| panic!("{page}: {error}"));
            assert!(text.contains(".TH"), "{page} is not roff:\n{text}");
        }
        for shell in ["bash", "zsh", "fish"] {
            let output = std::process::Command::new(ccfleet_tests::binary(binary))
                .args(["completions", shell])
                .env("CCFLEET_CREDENTIALS", "/nonexistent/admin.toml")
                .output()
                .unwrap();
            let script = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && script.contains(binary),
                "{binary} {shell}: {script}"
            );
        }
    }
    // The main page names its subcommands' pages, which now exist.
    let main = std::fs::read_to_string(directory.path().join("ccfleet/ccfleet.1")).unwrap();
    assert!(main.contains("ccfleet\\-upgrade(1)"), "{main}");
}

#[test]
fn a_subcommand_lists_its_own_options_apart_from_the_global_ones() {
    let nowhere = std::path::Path::new("/nonexistent/admin.toml");
    let help = run_cli("https://127.0.0.1:9", nowhere, &["upgrade", "--help"]);
    let text = String::from_utf8(help.stdout).unwrap();
    let (own, global) = text.split_once("Global options:").unwrap_or_else(|| panic!("{text}"));
    // The global options end at the blank line before the command's after-help text.
    let global = global.split("\n\n").next().unwrap_or_default();
    assert!(own.contains("--canary") && !own.contains("--credentials"), "{text}");
    assert!(
        global.contains("--credentials") && global.contains("--json") && !global.contains("--canary"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--metrics-listen", "127.0.0.1:0"]);
    let address = server.metrics_address.expect("the server printed its metrics address");
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    agent
        .send_inventory(1, vec![observed("a.coop.example", "ghost", "1.0.0")])
        .await
        .unwrap();
    agent
        .send_inventory(1, vec![observed("a.coop.example", "ghost", "1.0.0")])
        .await
        .unwrap();
    let response = ccfleet_tests::server::scrape_metrics(address);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    for line in [
        "ccfleet_agents_connected 1",
        "ccfleet_hosts 1",
        "ccfleet_enrollments_total{outcome=\"succeeded\"} 1",
        "ccfleet_agent_streams_total{outcome=\"accepted\"} 1",
        "ccfleet_agent_events_total{outcome=\"applied\"} 1",
        "ccfleet_agent_events_total{outcome=\"duplicate\"} 1",
    ] {
        assert!(response.lines().any(|l| l == line), "missing {line:?} in:\n{response}");
    }

    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(ccfleet_tests::binary("ccfleet-server"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "0.0.0.0:0",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a flag error, as clap's own");
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing to serve metrics on 0.0.0.0:0"));
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

/// `ccfleet-server run` with `args` on a fresh data directory, expected to
/// refuse to start: its exit code and stderr.
fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(ccfleet_tests::binary("ccfleet-server"))
        .arg("run")
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_server_exits_2_on_flag_errors_found_after_parsing_and_1_when_it_cannot_start() {
    let flag_errors: [(&[&str], &str); 6] = [
        // Refused by clap itself.
        (&["--heartbeat-interval", "soon"], "invalid value 'soon'"),
        // Refused after parsing: values that contradict each other, a URL.
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--idle-timeout",
                "10s",
                "--keepalive-interval",
                "20s",
            ],
            "--idle-timeout (10s) must be longer than --keepalive-interval (20s)",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "30s",
                "--heartbeat-timeout",
                "30s",
            ],
            "--heartbeat-timeout (30s) must be longer than --heartbeat-interval (30s)",
        ),
        (
            &["--listen", "127.0.0.1:0", "--host-certificate-lifetime", "1s"],
            "--host-certificate-lifetime must be at least 3s",
        ),
        (
            &["--listen", "127.0.0.1:0", "--public-url", "http://fleet.example.org"],
            "invalid server URL \"http://fleet.example.org\"",
        ),
        (
            &["--listen", "127.0.0.1:0", "--notify-max-retry-delay", "10ms"],
            "--notify-max-retry-delay must be at least 1s",
        ),
    ];
    for (args, said) in flag_errors {
        let (code, stderr) = refused_start(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    // A start that fails for another reason (the address is taken) is 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (code, stderr) = refused_start(&["--listen", &address]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {address}")), "{stderr}");
}

/// A progress event `seq` of operation `op-kill` on `blog.coop.example`.
fn progress_event(seq: u64, message: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        seq,
        body: Some(pb::agent_message::Body::Progress(pb::OperationProgress {
            operation_id: "op-kill".into(),
            domain: "blog.coop.example".into(),
            phase: pb::OperationPhase::Deploying as i32,
            message: message.into(),
        })),
    }
}

/// The stored operations as `host operation message`.
fn operation_messages(server: &TestServer) -> Vec<String> {
    server
        .cli_json(&["operations"])
        .as_array()
        .unwrap()
        .iter()
        .map(|operation| {
            format!(
                "{} {} {}",
                operation["host_id"].as_str().unwrap(),
                operation["operation_id"].as_str().unwrap(),
                operation["message"].as_str().unwrap()
            )
        })
        .collect()
}

/// Acknowledgements are a durability watermark (agent.proto, `Ack`): an
/// event the server received and stored but had not flushed when it was
/// SIGKILLed is not acknowledged; the agent keeps it, re-sends it to the
/// restarted server, and it is stored once.
#[tokio::test]
async fn an_event_killed_between_receipt_and_flush_is_resent_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A window far longer than the test: only another write's flush could
    // cover the event, and nothing else writes meanwhile.
    let server = TestServer::start(&data, &["--commit-window", "60s"]);
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    assert_eq!(agent.welcome.last_seq, 0);
    agent.send(progress_event(1, "step 1")).await;
    // Received and stored (readers see it), not flushed.
    wait_for("the server to store the event", Duration::from_secs(30), || {
        let stored = operation_messages(&server);
        async move {
            match stored.as_slice() {
                [_] => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let answer = tokio::time::timeout(Duration::ZERO, agent.inbound.message()).await;
    assert!(answer.is_err(), "answered before any flush: {answer:?}");
    server.kill();

    let server = TestServer::start(&data, &[]);
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    // Lost with the process, or written out by sled before the kill: either
    // way the agent still holds it, since no watermark covered it.
    assert!(agent.welcome.last_seq <= 1, "{:?}", agent.welcome);
    agent.send(progress_event(1, "step 1")).await;
    assert_eq!(agent.next_ack().await.unwrap(), 1, "the re-sent event is covered");
    assert_eq!(operation_messages(&server), ["web-1 op-kill step 1"]);
    // Once more, as after another reconnect: still stored once, and the
    // answer is the watermark.
    agent.send(progress_event(2, "step 2")).await;
    assert_eq!(agent.next_ack().await.unwrap(), 2);
    agent.send(progress_event(1, "step 1")).await;
    assert_eq!(agent.next_ack().await.unwrap(), 2, "a re-send below the watermark");
    assert_eq!(operation_messages(&server), ["web-1 op-kill step 2"]);
}

/// A disk that fills under the store (a 16 MiB tmpfs): sled refuses every
/// write after its first failed one, even once there is room again, so the
/// server stops with the reason and exits 1 (the service manager starts it
/// again). It refuses to start while the disk is full; once there is room it
/// starts with every acknowledged event, and the event it never acknowledged
/// is re-sent by the agent and stored once.
#[tokio::test]
async fn a_full_disk_stops_the_server_with_the_reason_and_a_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = SmallDisk::mount(&data, "size=16m").unwrap();
    let mut server = TestServer::start(&data, &[]);
    let port = server.address.port();
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    agent.send(progress_event(1, "step 1")).await;
    assert_eq!(agent.next_ack().await.unwrap(), 1);

    let full = disk.fill();
    assert_eq!(full.raw_os_error(), Some(28), "filling the disk: {full}");
    // Events until one is not acknowledged (the first few may still fit in
    // the page sled's log had begun).
    let mut acknowledged = 1;
    for seq in 2..=1000 {
        agent
            .send(progress_event(seq, &format!("step {seq} {}", "x".repeat(400))))
            .await;
        match tokio::time::timeout(Duration::from_secs(30), agent.next_ack()).await {
            Ok(Ok(watermark)) if watermark == seq => acknowledged = seq,
            _ => break,
        }
    }
    let status = server
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the server still runs on a full disk; its log:\n{}", server.log()));
    let log = server.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("the store cannot write: stopping"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(acknowledged < 1000, "a thousand events acknowledged on a full disk");

    // While the disk is full, a start is refused with the reason.
    let refused = std::process::Command::new(ccfleet_tests::binary("ccfleet-server"))
        .arg("run")
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open the store") && stderr.contains("No space left on device"),
        "{stderr}"
    );

    disk.free();
    let server = TestServer::start_on(&data, port, &[]);
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    // Every acknowledged event is there; the next one may or may not be
    // (sled may have written part of its log before the error), and the
    // agent, which holds it, sends it again.
    let next = acknowledged + 1;
    assert!(
        (acknowledged..=next).contains(&agent.welcome.last_seq),
        "acknowledged up to {acknowledged}: {:?}",
        agent.welcome
    );
    agent.send(progress_event(next, &format!("step {next} again"))).await;
    assert_eq!(agent.next_ack().await.unwrap(), next);
    let stored = operation_messages(&server);
    assert!(
        stored == [format!("web-1 op-kill step {next} again")] || agent.welcome.last_seq == next,
        "{stored:?} after {:?}",
        agent.welcome
    );
    // And the store writes again.
    server.create_token(&["--uses", "1"]);
}

/// Events sent close together are covered by one flush and answered with
/// one watermark, never a lower one later. (The first few may each ride on
/// a flush of their own: the host's enrolment and hello are urgent writes,
/// and on a loaded machine they can still be flushing as the events come.)
#[tokio::test]
async fn one_flush_covers_many_events_with_one_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--commit-window", "5s"]);
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    for seq in 1..=20 {
        agent.send(progress_event(seq, &format!("step {seq}"))).await;
    }
    let mut watermarks = Vec::new();
    while watermarks.last() != Some(&20) {
        watermarks.push(agent.next_ack().await.unwrap());
    }
    assert!(watermarks.is_sorted(), "{watermarks:?}");
    let widest = watermarks
        .iter()
        .scan(0, |before, &watermark| {
            Some(watermark - std::mem::replace(before, watermark))
        })
        .max()
        .unwrap_or(0);
    assert!(
        widest >= 10,
        "20 events sent within the 5 s window, no acknowledgement covered 10 of them: {watermarks:?}"
    );
    assert_eq!(operation_messages(&server), ["web-1 op-kill step 20"]);
}

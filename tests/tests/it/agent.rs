//! The real agent binary with the real server: enrolment, certificate
//! renewal, refusing bad configurations, and, on the real Docker Engine
//! through the abra test double, converging apps, picking up a changed
//! version and delivering its outbox across a server outage.

use std::path::Path;
use std::time::Duration;

use ccfleet_tests::agent::{agent_command, AgentProcess};
use ccfleet_tests::docker::{DockerTest, FIXTURE_RECIPE, V1_0, V1_1};
use ccfleet_tests::server::TestServer;
use ccfleet_tests::wait_for;
use serde_json::Value;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn enroll_command(url: &str, token_file: &str, data: &str, host_id: &str) -> std::process::Output {
    agent_command(&[
        "enroll",
        "--server",
        url,
        "--token-file",
        token_file,
        "--data",
        data,
        "--host-id",
        host_id,
    ])
}

fn write_token(server: &TestServer, path: &Path) {
    std::fs::write(path, server.create_token(&["--uses", "1"])).unwrap();
}

/// An agent config for the server at `url`, enrolling with the token in
/// `token_file`, with no apps, its state under `dir`.
fn agent_config(url: &str, dir: &Path, host_id: &str, token_file: &Path) -> String {
    format!(
        "[server]\nurl = {url:?}\njoin_token_file = {token:?}\n\n[host]\nid = {host_id:?}\n\n\
         [agent]\nstate_dir = {state:?}\ncontrol_socket = {socket:?}\nalerts_dir = {alerts:?}\nobserve_interval = \"1s\"\n",
        token = token_file.display().to_string(),
        state = dir.join("state").display().to_string(),
        socket = dir.join("control.sock").display().to_string(),
        alerts = dir.join("alerts").display().to_string(),
    )
}

fn host_row(server: &TestServer, host_id: &str) -> Option<Value> {
    let hosts = server.cli_json(&["hosts"]);
    hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|host| host["host_id"] == host_id)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_pins_the_ca_stores_the_identity_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let impostor = TestServer::start(&dir.path().join("impostor"), &[]);
    let token_file = dir.path().join("token");
    write_token(&server, &token_file);
    let data = dir.path().join("agent");
    let data_text = data.display().to_string();
    let token_text = token_file.display().to_string();

    // A token for this fleet, used against another server, is refused before anything is sent.
    let output = enroll_command(&impostor.url(), &token_text, &data_text, "web-1");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("does not match the join token's fingerprint"),
        "{}",
        stderr(&output)
    );
    assert!(!data.join("identity.toml").exists());

    let output = enroll_command(&server.url(), &token_text, &data_text, "web-1");
    assert!(output.status.success(), "{}", stderr(&output));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(data.join("identity.toml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(host_row(&server, "web-1").is_some());

    let output = enroll_command(&server.url(), &token_text, &data_text, "web-1");
    assert!(
        stderr(&output).contains("already holds an identity"),
        "{}",
        stderr(&output)
    );

    std::fs::write(&token_file, "ccf1.garbage").unwrap();
    let other = dir.path().join("other").display().to_string();
    let output = enroll_command(&server.url(), &token_text, &other, "web-2");
    assert!(
        stderr(&output).contains(&format!("the join token in {token_text} is unusable")),
        "{}",
        stderr(&output)
    );
}

/// An operation id names the operation's snapshot directory: one that
/// cannot is refused by the command line before the agent is asked anything
/// (here there is no agent at all: the socket does not exist).
#[test]
fn upgrade_refuses_an_operation_id_that_cannot_name_a_snapshot_directory() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock").display().to_string();
    for (id, expected) in [
        ("../escape", "must start with a letter or digit"),
        ("op/1", "may contain only letters, digits"),
        ("op 1", "may contain only letters, digits"),
    ] {
        let output = agent_command(&[
            "upgrade",
            "blog.example.org",
            "--to",
            "1.0.0+1.0",
            "--operation-id",
            id,
            "--socket",
            &socket,
        ]);
        // A usage error: 2, as for `ccfleet`.
        assert_eq!(output.status.code(), Some(2), "{id}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(&format!("--operation-id: invalid operation id {id:?}: {expected}")),
            "{id}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn run_refuses_bad_configurations_with_the_reason_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let base = format!(
        "[server]\nurl = \"https://127.0.0.1:9\"\n[host]\nid = \"web-1\"\n[agent]\nstate_dir = {:?}\ncontrol_socket = {:?}\n",
        state.display().to_string(),
        dir.path().join("control.sock").display().to_string()
    );
    let app = |domain: &str, recipe: &str, version: &str| {
        format!("[[app]]\ndomain = {domain:?}\nrecipe = {recipe:?}\nversion = {version:?}\n")
    };
    let cases = [
        (app("blog.example.org;reboot", "ghost", "1.0.0"), "character ';'"),
        (app("blog.example.org", "../ghost", "1.0.0"), "invalid recipe name"),
        (app("blog.example.org", "ghost", "4.32.1_2"), "old-style"),
        (
            format!(
                "{}{}",
                app("blog.example.org", "ghost", "1.0.0"),
                app("blog.example.org", "ghost", "1.1.0")
            ),
            "declared twice",
        ),
        (
            format!("{}colour = \"blue\"\n", app("blog.example.org", "ghost", "1.0.0")),
            "unknown field `colour`",
        ),
        (
            format!(
                "{}[app.secrets]\ndb_password = \"/nonexistent/secret\"\n",
                app("blog.example.org", "ghost", "1.0.0")
            ),
            "/nonexistent/secret",
        ),
    ];
    for (index, (apps, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{index}.toml"));
        std::fs::write(&path, format!("{base}{apps}")).unwrap();
        for subcommand in [&["run", "--config"][..], &["check-config"][..]] {
            let mut args = subcommand.to_vec();
            let path_text = path.display().to_string();
            args.push(&path_text);
            let output = agent_command(&args);
            // A configuration error: 2, as for `ccfleet`.
            assert_eq!(output.status.code(), Some(2), "{args:?} {}", stderr(&output));
            assert!(
                stderr(&output).contains(expected),
                "{args:?}: expected {expected:?} in {}",
                stderr(&output)
            );
        }
        assert!(!state.exists(), "a refused config created the state directory");
        assert!(!dir.path().join("control.sock").exists());
    }
}

/// `examples/agent.toml` (the configuration for a host without NixOS) is
/// accepted by `check-config` as it is, once its secret files exist, and
/// shows every key of `[agent]` and `[abra]`.
#[test]
fn the_example_agent_configuration_is_accepted_and_complete() {
    let example_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent.toml");
    let example = std::fs::read_to_string(&example_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The example's secrets live under /run/secrets/ccfleet/; here, in a temporary directory.
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for name in ["join-token", "blog-db-password"] {
        assert!(example.contains(&format!("\"/run/secrets/ccfleet/{name}\"")), "{name}");
        std::fs::write(secrets.join(name), "not a real secret").unwrap();
    }
    let config = dir.path().join("agent.toml");
    let secrets_prefix = format!("{}/", secrets.display());
    std::fs::write(&config, example.replace("/run/secrets/ccfleet/", &secrets_prefix)).unwrap();

    let output = agent_command(&["check-config", &config.display().to_string()]);
    assert!(
        output.status.success(),
        "check-config refused the example: {}",
        stderr(&output)
    );
    let normalised: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(normalised["host"]["id"], "web-1");
    let domains: Vec<&str> = normalised["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|app| app["domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["blog.example.org", "traefik.example.org"]);
    for section in ["agent", "abra"] {
        for key in normalised[section].as_object().unwrap().keys() {
            assert!(
                example.contains(&format!("\n{key} = ")),
                "the example does not show {section}.{key}"
            );
        }
    }
    assert!(
        example.contains("\nno_domain_checks = "),
        "the example does not show abra.no_domain_checks"
    );
}

/// `check-config` warns (exit 0, the configuration still printed) about a
/// recipe the local abra does not know and a version that is not a release
/// of its recipe, naming the nearest names, once abra's state is readable;
/// before abra fetched anything it says nothing.
#[test]
fn check_config_names_the_nearest_recipe_and_releases_for_a_typo() {
    let dir = tempfile::tempdir().unwrap();
    let abra_dir = dir.path().join("abra");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nurl = \"https://fleet.example.org\"\n\n[host]\nid = \"web-1\"\n\n\
             [agent]\nstate_dir = {state:?}\n\n[abra]\ndir = {abra:?}\n\n\
             [[app]]\ndomain = \"typo.example.org\"\nrecipe = \"fixture-wbe\"\nversion = \"1.0.0+1.0\"\n\n\
             [[app]]\ndomain = \"pin.example.org\"\nrecipe = \"fixture-web\"\nversion = \"1.4.5+1.4\"\n\n\
             [[app]]\ndomain = \"good.example.org\"\nrecipe = \"fixture-web\"\nversion = \"1.0.0+1.0\"\n",
            state = dir.path().join("state").display().to_string(),
            abra = abra_dir.display().to_string(),
        ),
    )
    .unwrap();
    let check = || {
        let output = agent_command(&["check-config", &config.display().to_string()]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let normalised: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(normalised["apps"].as_array().unwrap().len(), 3);
        stderr(&output)
    };
    // abra has fetched nothing yet: nothing to compare with, nothing said.
    assert_eq!(check(), "");

    // What `abra recipe fetch` leaves: the checkout with its tags, the catalogue.
    let fetched = std::process::Command::new(ccfleet_tests::docker::abra_double())
        .args(["recipe", "fetch", "fixture-web"])
        .env("ABRA_DIR", &abra_dir)
        .output()
        .unwrap();
    assert!(fetched.status.success(), "{}", stderr(&fetched));
    let warnings = check();
    let lines: Vec<&str> = warnings.lines().collect();
    assert_eq!(lines.len(), 2, "{warnings}");
    assert!(
        lines.iter().any(|line| {
            line.starts_with("warning: app \"typo.example.org\": recipe fixture-wbe is unknown to the local abra")
                && line.contains("(nearest: fixture-web)")
        }),
        "{warnings}"
    );
    assert!(
        lines.iter().any(|line| {
            line.starts_with(
                "warning: app \"pin.example.org\": version 1.4.5+1.4 is not a release of recipe fixture-web",
            ) && line.contains("1.4.0+1.4, 1.5.0+1.5")
        }),
        "{warnings}"
    );
    assert!(!warnings.contains("good.example.org"), "{warnings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_enrols_on_boot_renews_its_certificate_and_stays_online() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &dir.path().join("data"),
        &[
            "--host-certificate-lifetime",
            "6s",
            "--heartbeat-interval",
            "1s",
            "--heartbeat-timeout",
            "3s",
        ],
    );
    let token_file = dir.path().join("token");
    write_token(&server, &token_file);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        agent_config(&server.url(), dir.path(), "renewing", &token_file),
    )
    .unwrap();
    let agent = AgentProcess::start(&config, &dir.path().join("control.sock"));

    let identity = dir.path().join("state").join("identity.toml");
    let serial = |path: &Path| -> Result<String, String> {
        let text = std::fs::read_to_string(path).map_err(|error| error.to_string())?;
        let credential: ccfleet_proto::tls::Credential = toml::from_str(&text).map_err(|error| error.to_string())?;
        let der =
            ccfleet_proto::tls::first_certificate_der(&credential.certificate).map_err(|error| error.to_string())?;
        let (_, certificate) = x509_parser::parse_x509_certificate(&der).map_err(|error| error.to_string())?;
        Ok(certificate.raw_serial_as_string())
    };
    let first = wait_for("the agent to enrol", Duration::from_secs(30), || {
        let result = serial(&identity);
        async move { result }
    })
    .await;
    wait_online(&server, "renewing").await;

    // Two thirds of 6 s: the agent renews by itself, over its mTLS connection.
    let first_for_wait = first.clone();
    wait_for("a renewed certificate", Duration::from_secs(30), || {
        let current = serial(&identity);
        let first = first_for_wait.clone();
        let log = agent.log();
        async move {
            match current {
                Ok(current) if current != first => Ok(()),
                other => Err(format!("{other:?}\n{log}")),
            }
        }
    })
    .await;
    assert!(server.log().contains("host certificate renewed"));

    // Renewed twice more, long past the first certificate's expiry, and still online.
    let mut seen = vec![first];
    for round in 0..2 {
        let known = seen.clone();
        let next = wait_for(&format!("renewal {round}"), Duration::from_secs(30), || {
            let current = serial(&identity);
            let known = known.clone();
            async move {
                match current {
                    Ok(current) if !known.contains(&current) => Ok(current),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        seen.push(next);
    }
    // Long past the first certificate's expiry: online means reconnected with a renewed one.
    wait_online(&server, "renewing").await;
}

async fn wait_online(server: &TestServer, host_id: &str) {
    wait_for(&format!("{host_id} to be online"), Duration::from_secs(30), || {
        let row = host_row(server, host_id);
        async move {
            match row {
                Some(row) if row["status"] == "online" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}

/// The host's apps as "domain version state", from the server's point of view.
fn server_apps(server: &TestServer, host_id: &str) -> Vec<String> {
    let apps = server.cli_json(&["apps"]);
    apps.as_array()
        .unwrap()
        .iter()
        .filter(|app| app["host_id"] == host_id)
        .map(|app| {
            format!(
                "{} {} {}",
                app["domain"].as_str().unwrap(),
                app["version"].as_str().unwrap_or("-"),
                app["state"].as_str().unwrap()
            )
        })
        .collect()
}

async fn wait_for_server_apps(server: &TestServer, agent: &AgentProcess, host_id: &str, expected: Vec<String>) {
    wait_for("the server's view of the host's apps", Duration::from_secs(120), || {
        let actual = server_apps(server, host_id);
        let expected = expected.clone();
        let log = agent.log();
        async move {
            if actual == expected {
                Ok(())
            } else {
                Err(format!(
                    "{actual:?}\nagent log tail:\n{}",
                    log.lines().rev().take(15).collect::<Vec<_>>().join("\n")
                ))
            }
        }
    })
    .await;
}

fn docker_config(server: &TestServer, test: &DockerTest, token_file: &Path, apps: &[(&str, &str)]) -> String {
    docker_config_for_url(&server.url(), test, token_file, apps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_converges_its_apps_and_the_server_sees_what_docker_runs() {
    let mut test = DockerTest::new("agent");
    let (blog, wiki) = (test.domain("blog"), test.domain("wiki"));
    let server = TestServer::start(&test.path().join("data"), &[]);
    let token_file = test.path().join("token");
    write_token(&server, &token_file);
    let config = test.path().join("agent.toml");
    std::fs::write(
        &config,
        docker_config(&server, &test, &token_file, &[(&blog, V1_0), (&wiki, V1_1)]),
    )
    .unwrap();
    let agent = AgentProcess::start(&config, &test.path().join("control.sock"));

    wait_for("the agent's control socket", Duration::from_secs(30), || {
        let status = agent.status();
        async move { status.map(|_| ()) }
    })
    .await;
    // What the NixOS unit runs at switch time: converge now, fail loudly.
    let output = agent.command(&["apply", "--wait"]);
    assert!(output.status.success(), "{}\n{}", stderr(&output), agent.log());
    let applied = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(applied.contains(&blog) && applied.contains(&wiki), "{applied}");
    let mut expected = vec![format!("{blog} {V1_0} converged"), format!("{wiki} {V1_1} converged")];
    expected.sort();
    wait_for_server_apps(&server, &agent, "docker-host", expected).await;

    // The declared version changes (a nixos-rebuild switch): the agent picks it up.
    std::fs::write(
        &config,
        docker_config(&server, &test, &token_file, &[(&blog, V1_1), (&wiki, V1_1)]),
    )
    .unwrap();
    agent.reload();
    let mut expected = vec![format!("{blog} {V1_1} converged"), format!("{wiki} {V1_1} converged")];
    expected.sort();
    wait_for_server_apps(&server, &agent, "docker-host", expected).await;

    // `apply` of an app that is not declared fails with the reason.
    let output = agent.command(&["apply", "nope.example.org", "--wait"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is not an app declared in"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_delivers_everything_once_across_a_server_outage() {
    let mut test = DockerTest::new("outbox");
    let blog = test.domain("blog");
    let data = test.path().join("data");
    let server = TestServer::start(&data, &[]);
    let token_file = test.path().join("token");
    write_token(&server, &token_file);
    let config = test.path().join("agent.toml");
    std::fs::write(&config, docker_config(&server, &test, &token_file, &[(&blog, V1_0)])).unwrap();
    let agent = AgentProcess::start(&config, &test.path().join("control.sock"));
    wait_for_server_apps(&server, &agent, "docker-host", vec![format!("{blog} {V1_0} converged")]).await;

    // The server goes away; the agent keeps reconciling and queues its events.
    let url = server.url();
    let port = server.address.port();
    let stored_before = host_row(&server, "docker-host").unwrap()["last_event_seq"]
        .as_u64()
        .unwrap();
    server.kill();
    std::fs::write(
        &config,
        docker_config_for_url(&url, &test, &token_file, &[(&blog, V1_1)]),
    )
    .unwrap();
    agent.reload();
    let queued = wait_for(
        "the upgrade to happen offline and queue events",
        Duration::from_secs(120),
        || {
            let status = agent.status();
            async move {
                let status = status?;
                let observed = status["apps"][0]["observed"]["observed_version"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned();
                let pending = status["outbox"]["pending"].as_u64().unwrap_or(0);
                if observed == V1_1 && pending > 0 && status["server"]["connected"] == false {
                    Ok(status["outbox"]["last_seq"].as_u64().unwrap())
                } else {
                    Err(format!("{status}"))
                }
            }
        },
    )
    .await;

    // The server comes back on the same address and state (and counts what
    // it receives, so that a duplicate shows).
    let server = TestServer::start_on(&data, port, &["--metrics-listen", "127.0.0.1:0"]);
    wait_for_server_apps(&server, &agent, "docker-host", vec![format!("{blog} {V1_1} converged")]).await;
    let drained = wait_for("the outbox to drain", Duration::from_secs(60), || {
        let status = agent.status();
        let row = host_row(&server, "docker-host");
        async move {
            let status = status?;
            let stored = row.map(|row| row["last_event_seq"].as_u64().unwrap_or(0)).unwrap_or(0);
            let last = status["outbox"]["last_seq"].as_u64().unwrap_or(0);
            if status["outbox"]["pending"] == 0 && stored == last && last >= queued {
                Ok(last)
            } else {
                Err(format!("server stored up to {stored}; agent: {status}"))
            }
        }
    })
    .await;

    // Once: the restarted server was sent no event it already had (a
    // re-delivered sequence number counts as a duplicate), and it applied at
    // most as many events as the agent numbered while the server was away.
    let page = ccfleet_tests::server::scrape_metrics(server.metrics_address.unwrap());
    let count = |outcome: &str| {
        ccfleet_tests::server::metric_value(&page, &format!("ccfleet_agent_events_total{{outcome=\"{outcome}\"}}"))
            .unwrap_or_else(|| panic!("no {outcome} count in:\n{page}"))
    };
    assert_eq!(
        count("duplicate"),
        0,
        "events re-delivered to the restarted server:\n{page}"
    );
    let applied = count("applied");
    assert!(
        (1..=drained - stored_before).contains(&applied),
        "{applied} events applied, but the agent numbered {} after the server stored {stored_before}",
        drained - stored_before
    );
}

fn docker_config_for_url(url: &str, test: &DockerTest, token_file: &Path, apps: &[(&str, &str)]) -> String {
    let apps: String = apps
        .iter()
        .map(|(domain, version)| {
            // The fixture's versions below 1.3 keep no data (no volumes):
            // declared stateless, as a stateful app without volumes is refused.
            format!(
                "[[app]]\ndomain = {domain:?}\nrecipe = {FIXTURE_RECIPE:?}\nversion = {version:?}\n\
                 stateful = false\ndeploy_timeout = \"90s\"\n\n"
            )
        })
        .collect();
    format!(
        "{}\n{}\n{apps}",
        agent_config(url, test.path(), "docker-host", token_file),
        test.abra_section()
    )
}

/// What a `cc-app-*` unit does at boot or on a switch: start right after the
/// agent and ask it to converge. The client waits for the control socket, so
/// that no attempt of 20 fails with "cannot reach the running agent".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_right_after_the_agent_starts_never_misses_it() {
    let test = DockerTest::new("boot");
    let server = TestServer::start(&test.path().join("data"), &[]);
    let token_file = test.path().join("token");
    write_token(&server, &token_file);
    let config = test.path().join("agent.toml");
    std::fs::write(&config, docker_config_for_url(&server.url(), &test, &token_file, &[])).unwrap();
    let socket = test.path().join("control.sock");
    for attempt in 1..=20 {
        let agent = AgentProcess::start(&config, &socket);
        let output = agent.command(&["apply", "--wait"]);
        assert!(
            output.status.success(),
            "attempt {attempt}: {}\nagent log:\n{}",
            stderr(&output),
            agent.log()
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "converged\n",
            "attempt {attempt}"
        );
        // The agent logged which abra it drives (the double's version line).
        assert!(
            agent.log().contains("abra version 0.0.0-ccfleet-double"),
            "attempt {attempt}: {}",
            agent.log()
        );
        // The next start finds a stale socket file, as after a crash.
        drop(agent);
    }
}

/// `Type=notify`: the agent says READY=1 to systemd once its control socket
/// is bound, so a unit ordered after it can talk to it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tells_systemd_it_is_ready_once_its_socket_is_bound() {
    let test = DockerTest::new("notify");
    let server = TestServer::start(&test.path().join("data"), &[]);
    let token_file = test.path().join("token");
    write_token(&server, &token_file);
    let config = test.path().join("agent.toml");
    std::fs::write(&config, docker_config_for_url(&server.url(), &test, &token_file, &[])).unwrap();
    let socket = test.path().join("control.sock");
    let notify_path = test.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let log = std::fs::File::create(test.path().join("agent.log")).unwrap();
    let mut agent = std::process::Command::new(ccfleet_tests::binary("ccfleet-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut message = [0u8; 256];
    let received = notify.recv(&mut message);
    // Right at READY=1 the socket is there (it is bound before the notification).
    let socket_existed = socket.exists();
    let status = std::process::Command::new(ccfleet_tests::binary("ccfleet-agent"))
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(test.path().join("agent.log")).unwrap_or_default();
    let length = received.unwrap_or_else(|error| panic!("no notification from the agent ({error}); its log:\n{log}"));
    assert_eq!(String::from_utf8_lossy(&message[..length]).trim_end(), "READY=1");
    assert!(socket_existed, "READY=1 came before the control socket existed");
    assert!(status.status.success(), "{}", stderr(&status));
}

#[test]
fn status_of_a_stopped_agent_answers_at_once() {
    let test = tempfile::tempdir().unwrap();
    let missing = test.path().join("control.sock");
    // A stale socket file whose agent is gone refuses connections.
    let stale = test.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [missing, stale] {
        let started = std::time::Instant::now();
        let status = std::process::Command::new(ccfleet_tests::binary("ccfleet-agent"))
            .args(["status", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        let took = started.elapsed();
        assert_eq!(status.status.code(), Some(3), "{}", stderr(&status));
        assert!(
            stderr(&status).contains("cannot reach the running agent at"),
            "{}",
            stderr(&status)
        );
        // It used to wait 30 s for the socket; at once means no retry pause at all.
        assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    }
}

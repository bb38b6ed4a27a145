//! The health-gated upgrade transaction on the real Docker Engine: the real
//! agent binary, the abra test double, real volumes and the fixture recipe's
//! scenario versions (a migration that passes, one that fails its HTTP
//! probe, one that never converges). Crash safety is tested by SIGKILL of the
//! agent inside each phase, timed by the agent's test pause hook
//! (`CCFLEET_TEST_PAUSE_DIR`), never by sleeps.

use std::path::PathBuf;
use std::time::Duration;

use ccfleet_agent::snapshot::{walk, ManifestEntry};
use ccfleet_tests::agent::AgentProcess;
use ccfleet_tests::disk::SmallDisk;
use ccfleet_tests::docker::{
    deployed_version, docker, free_port, volume_mountpoint, DockerTest, FIXTURE_RECIPE, V1_3, V1_3_1_MIGRATES,
    V1_4_MIGRATES_THEN_FAILS_HTTP, V1_5_NEVER_CONVERGES, V1_6_HTTP_FAILS, V2_0,
};
use ccfleet_tests::server::TestServer;
use ccfleet_tests::wait_for;
use serde_json::Value;

mod failfast;
mod refusals;

/// How long an upgrade test waits for the agent to reach a state.
const PATIENCE: Duration = Duration::from_secs(180);

/// One app of the fixture recipe under a real agent, with its own published
/// port (the agent's probe address), pause directory and, optionally, a real
/// server the agent enrols with.
struct World {
    test: DockerTest,
    domain: String,
    config: PathBuf,
    pause: PathBuf,
    agent: Option<AgentProcess>,
    server: Option<TestServer>,
    stateful: bool,
    port: u16,
    /// More lines for the app's `[[app]]` table.
    extra_app: String,
    /// Leave `min_healthy_time` and `health.timeout` at their defaults
    /// (10 s and 5 min) instead of the short ones that keep these tests fast.
    default_timing: bool,
}

impl World {
    /// Starts the agent with the app declared at `version` and waits until
    /// `apply --wait` says it converged.
    async fn start(name: &str, stateful: bool, with_server: bool) -> World {
        World::start_with(name, stateful, with_server, "").await
    }

    async fn start_with(name: &str, stateful: bool, with_server: bool, extra_app: &str) -> World {
        World::start_timed(name, stateful, with_server, extra_app, false).await
    }

    async fn start_timed(
        name: &str,
        stateful: bool,
        with_server: bool,
        extra_app: &str,
        default_timing: bool,
    ) -> World {
        World::start_full(name, stateful, with_server, extra_app, default_timing, V1_3).await
    }

    /// [`World::start`] with the app declared at `version`.
    async fn start_at(name: &str, stateful: bool, with_server: bool, version: &str) -> World {
        World::start_full(name, stateful, with_server, "", false, version).await
    }

    async fn start_full(
        name: &str,
        stateful: bool,
        with_server: bool,
        extra_app: &str,
        default_timing: bool,
        version: &str,
    ) -> World {
        let mut test = DockerTest::new(name);
        let domain = test.domain("app");
        let server = with_server.then(|| TestServer::start(&test.path().join("server"), &[]));
        let mut world = World {
            config: test.path().join("agent.toml"),
            pause: test.path().join("pause"),
            test,
            domain,
            agent: None,
            server,
            stateful,
            port: free_port(),
            extra_app: extra_app.to_owned(),
            default_timing,
        };
        world.write_config(version);
        world.start_agent();
        let output = world.agent().command(&["apply", &world.domain.clone(), "--wait"]);
        assert!(
            output.status.success(),
            "the app did not converge at {version}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            world.agent().log()
        );
        world
    }

    fn write_config(&self, version: &str) {
        let (min_healthy, health_timeout) = if self.default_timing {
            ("", "")
        } else {
            ("min_healthy_time = \"2s\"\n", "timeout = \"15s\"\n")
        };
        let mut agent = format!(
            "observe_interval = \"1s\"\nreconcile_interval = \"1h\"\n{min_healthy}\
             probe_address = \"127.0.0.1:{port}\"\nprobe_scheme = \"http\"\nstop_timeout = \"5s\"\n",
            port = self.port
        );
        let mut text = self.test.agent_config_with(
            &agent,
            &format!(
                "[[app]]\ndomain = {domain:?}\nrecipe = {FIXTURE_RECIPE:?}\nversion = {version:?}\n\
                 stateful = {stateful}\ndeploy_timeout = \"60s\"\n{extra}\n[app.env]\nHTTP_PORT = \"{port}\"\n\n\
                 [app.health]\npath = \"/health\"\n{health_timeout}",
                domain = self.domain,
                stateful = self.stateful,
                port = self.port,
                extra = self.extra_app,
            ),
        );
        if let Some(server) = &self.server {
            let token_file = self.test.path().join("token");
            if !token_file.exists() {
                std::fs::write(&token_file, server.create_token(&["--uses", "1"])).unwrap();
            }
            text = text
                .replace(
                    "url = \"https://fleet.example.org\"",
                    &format!(
                        "url = {:?}\njoin_token_file = {:?}",
                        server.url(),
                        token_file.display().to_string()
                    ),
                )
                .replace("id = \"docker-test\"", &format!("id = {:?}", self.host_id()));
        }
        agent.clear();
        std::fs::write(&self.config, text).unwrap();
    }

    fn host_id(&self) -> String {
        "upgrade-host".into()
    }

    fn start_agent(&mut self) {
        let agent = AgentProcess::start_with_env(
            &self.config,
            &self.test.path().join("control.sock"),
            &[("CCFLEET_TEST_PAUSE_DIR", &self.pause)],
        );
        self.agent = Some(agent);
        let agent = self.agent();
        let started = std::time::Instant::now();
        // The control socket answers once the agent runs (and any unfinished
        // operation's locks are taken).
        while agent.status().is_err() {
            assert!(started.elapsed() < PATIENCE, "the agent did not start: {}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("the agent runs")
    }

    /// SIGKILL, then a new agent process on the same state.
    fn crash_and_restart(&mut self) {
        self.agent.as_mut().expect("the agent runs").kill();
        self.start_agent();
    }

    /// `ccfleet-agent upgrade DOMAIN ARGS --socket ...`.
    fn upgrade(&self, args: &[&str]) -> (bool, Value, String) {
        let mut all = vec!["upgrade", self.domain.as_str()];
        all.extend_from_slice(args);
        let output = self.agent().command(&all);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (output.status.success(), report, stderr)
    }

    fn volume(&self) -> PathBuf {
        volume_mountpoint(&format!("{}_data", self.domain.replace('.', "_")))
    }

    fn manifest(&self) -> Vec<ManifestEntry> {
        walk(&self.volume()).expect("the volume can be walked")
    }

    fn alert(&self) -> Option<Value> {
        let path = self.test.path().join("alerts").join(format!("{}.json", self.domain));
        std::fs::read(path)
            .ok()
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    fn alert_count(&self) -> usize {
        std::fs::read_dir(self.test.path().join("alerts")).map_or(0, |entries| entries.count())
    }

    fn operation(&self, id: &str) -> Option<Value> {
        let path = self
            .test
            .path()
            .join("state")
            .join("journal")
            .join("ops")
            .join(format!("{id}.json"));
        std::fs::read(path)
            .ok()
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    fn snapshots(&self) -> PathBuf {
        self.test.path().join("state").join("snapshots").join(&self.domain)
    }

    /// Lines of the double's log that start with `prefix` and name `version`.
    fn abra_lines(&self, prefix: &str, version: &str) -> usize {
        self.test
            .abra_log()
            .iter()
            .filter(|line| line.starts_with(prefix) && line.ends_with(&format!(" {version}")))
            .count()
    }

    /// Writes data into the volume, as the app's users would have.
    fn seed(&self) {
        use std::os::unix::fs::PermissionsExt;
        let volume = self.volume();
        std::fs::create_dir_all(volume.join("posts")).unwrap();
        std::fs::write(volume.join("posts").join("hello.md"), "# written before the upgrade\n").unwrap();
        std::fs::set_permissions(
            volume.join("posts").join("hello.md"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let _ = std::os::unix::fs::symlink("posts/hello.md", volume.join("latest"));
    }

    fn hold(&self, phase: &str) {
        std::fs::create_dir_all(&self.pause).unwrap();
        std::fs::write(self.pause.join(format!("{phase}.hold")), b"").unwrap();
    }

    fn release(&self, phase: &str) {
        std::fs::remove_file(self.pause.join(format!("{phase}.hold"))).unwrap();
        std::fs::write(self.pause.join(format!("{phase}.go")), b"").unwrap();
    }

    async fn reached(&self, phase: &str) {
        let marker = self.pause.join(format!("{phase}.reached"));
        wait_for(&format!("the agent to reach {phase}"), PATIENCE, || {
            let reached = marker.exists();
            let log = if reached { String::new() } else { self.agent().log() };
            async move {
                reached
                    .then_some(())
                    .ok_or_else(|| log.lines().last().unwrap_or("").to_owned())
            }
        })
        .await;
    }

    /// Waits until operation `id` is done and its result reported.
    async fn finished(&self, id: &str) -> Value {
        wait_for(&format!("operation {id} to finish"), PATIENCE, || {
            let record = self.operation(id);
            async move {
                match record {
                    Some(record) if record["phase"]["phase"] == "done" && record["reported"] == true => Ok(record),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
    }

    fn running(&self) -> Option<String> {
        deployed_version(&self.domain)
    }

    /// Waits until the agent observes the app converged at `version`.
    async fn converged_at(&self, version: &str) {
        wait_for(&format!("{} converged at {version}", self.domain), PATIENCE, || {
            let status = self.agent().status();
            async move {
                let status = status?;
                let observed = &status["apps"][0]["observed"];
                if observed["state"] == "converged" && observed["observed_version"] == version {
                    Ok(())
                } else {
                    Err(observed.to_string())
                }
            }
        })
        .await;
    }
}

/// Waits until `ccfleet COMMAND --json` lists `operation_id` with `outcome`; the entry.
async fn listed(server: &TestServer, command: &str, operation_id: &str, outcome: &str) -> Value {
    wait_for(&format!("`ccfleet {command}` to list {operation_id}"), PATIENCE, || {
        let listing = server.cli_json(&[command]);
        async move {
            listing
                .as_array()
                .into_iter()
                .flatten()
                .find(|entry| entry["operation_id"] == operation_id && entry["outcome"] == outcome)
                .cloned()
                .ok_or_else(|| listing.to_string())
        }
    })
    .await
}

/// What a command printed, stdout then stderr.
fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn files(manifest: &[ManifestEntry]) -> Vec<String> {
    manifest.iter().map(|entry| entry.path.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_upgrade_snapshots_migrates_and_keeps_the_data() {
    let world = World::start("upok", true, false).await;
    world.seed();
    let before = world.manifest();

    let (ok, report, stderr) = world.upgrade(&["--to", V1_3_1_MIGRATES, "--json", "--operation-id", "op-ok"]);
    assert!(ok, "{stderr}\n{report}\n{}", world.agent().log());
    assert_eq!(report["outcome"], "SUCCEEDED", "{report}");
    assert_eq!(report["running"], V1_3_1_MIGRATES);
    assert_eq!(world.running().as_deref(), Some(V1_3_1_MIGRATES));

    // The data written before is still there, and the migration ran on it.
    let volume = world.volume();
    assert_eq!(
        std::fs::read_to_string(volume.join("posts").join("hello.md")).unwrap(),
        "# written before the upgrade\n"
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("migrations.log")).unwrap(),
        format!("migrated to {V1_3_1_MIGRATES}\n")
    );
    let after = world.manifest();
    assert!(files(&before).iter().all(|path| files(&after).contains(path)));

    // The verified snapshot holds the pre-upgrade state, and status says where.
    let snapshot = world.snapshots().join("op-ok");
    assert!(snapshot.join("verified").is_file(), "{}", snapshot.display());
    let copy = walk(
        &snapshot
            .join("volumes")
            .join(format!("{}_data", world.domain.replace('.', "_"))),
    )
    .unwrap();
    assert_eq!(copy, before);
    let status = world.agent().status().unwrap();
    assert_eq!(status["apps"][0]["snapshots"][0], snapshot.display().to_string());
    assert_eq!(status["apps"][0]["last_good"], V1_3_1_MIGRATES);
    assert!(world.alert().is_none());
    // Undeployed for the snapshot, deployed afresh at the target.
    assert!(world
        .test
        .abra_log()
        .iter()
        .any(|line| line == &format!("app undeploy -n {}", world.domain)));
    assert_eq!(world.abra_lines("app deploy -n -c -o -f", V1_3_1_MIGRATES), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_http_gate_restores_the_volume_alerts_and_is_not_retried() {
    let world = World::start("uphttp", true, true).await;
    world.seed();
    let before = world.manifest();

    // The operator raises the declared version (nixos-rebuild switch): the
    // reload reconciles, the transaction rolls back, apply --wait fails.
    world.write_config(V1_4_MIGRATES_THEN_FAILS_HTTP);
    world.agent().reload();
    let output = world.agent().command(&["apply", &world.domain, "--wait", "--progress"]);
    let said = output_text(&output);
    assert!(!output.status.success(), "apply --wait must fail: {said}");
    // While it waited, it said what was going on.
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(
        progress.contains(&format!(
            "... {}: upgrade {V1_3} -> {V1_4_MIGRATES_THEN_FAILS_HTTP}: ",
            world.domain
        )),
        "{progress}"
    );
    // Whichever reconcile ran the transaction (the reload's or this one),
    // the failure names the pin and why it was rolled back.
    assert!(
        said.contains(&format!("{V1_4_MIGRATES_THEN_FAILS_HTTP} failed its health gate"))
            && said.contains("answered 404"),
        "{said}"
    );
    world.converged_at(V1_3).await;
    assert_eq!(world.running().as_deref(), Some(V1_3));

    // The volume is exactly as before the upgrade: the migration is undone.
    assert_eq!(world.manifest(), before);
    assert!(!world.volume().join("migrations.log").exists());

    let alert = world.alert().expect("an alert file");
    assert_eq!(alert["outcome"], "ROLLED_BACK", "{alert}");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["from"], V1_3);
    assert_eq!(alert["to"], V1_4_MIGRATES_THEN_FAILS_HTTP);
    assert_eq!(alert["running"], V1_3, "{alert}");
    assert!(
        alert["reason"].as_str().unwrap().contains("failed its health gate"),
        "{alert}"
    );
    let snapshot = PathBuf::from(alert["snapshot_path"].as_str().expect("the snapshot is named"));
    assert!(snapshot.join("verified").is_file());

    // The server shows the alert.
    let server = world.server.as_ref().unwrap();
    let operation_id = alert["operation_id"].as_str().unwrap().to_owned();
    // One meaning on every screen: from is what ran before, to what was
    // asked for, running what runs after the rollback.
    let on_server = listed(server, "alerts", &operation_id, "rolled_back").await;
    let operation = listed(server, "operations", &operation_id, "rolled_back").await;
    for entry in [&on_server, &operation] {
        assert_eq!(entry["from_version"], V1_3, "{entry}");
        assert_eq!(entry["to_version"], V1_4_MIGRATES_THEN_FAILS_HTTP, "{entry}");
        assert_eq!(entry["running_version"], V1_3, "{entry}");
    }

    // Not retried: the next reconcile leaves the target alone, and says why.
    let output = world.agent().command(&["apply", &world.domain, "--wait"]);
    let said = output_text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("was rolled back by operation"), "{said}");
    assert_eq!(
        world.abra_lines("app deploy -n -c -o -f", V1_4_MIGRATES_THEN_FAILS_HTTP),
        1
    );
    assert_eq!(world.running().as_deref(), Some(V1_3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollback_is_failed_critical_and_keeps_the_snapshot() {
    let world = World::start("upfail", true, false).await;
    world.seed();
    world.hold("rollback-deploying");
    let upgrade = {
        let socket = world.test.path().join("control.sock");
        let domain = world.domain.clone();
        std::thread::spawn(move || {
            ccfleet_tests::agent::agent_command(&[
                "upgrade",
                &domain,
                "--to",
                V1_4_MIGRATES_THEN_FAILS_HTTP,
                "--json",
                "--operation-id",
                "op-fail",
                "--socket",
                &socket.display().to_string(),
            ])
        })
    };
    world.reached("rollback-deploying").await;
    // The deploy of the old version fails (the double's injected fault), so
    // the rollback cannot make the app healthy again.
    std::fs::write(world.test.abra_dir().join("fail-next-deploy"), b"").unwrap();
    world.release("rollback-deploying");
    let output = upgrade.join().unwrap();
    assert!(!output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["outcome"], "FAILED", "{report}");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("the rollback to 1.3.0+1.3 failed: deploying it failed"),
        "{reason}"
    );
    let snapshot = world.snapshots().join("op-fail");
    assert!(
        reason.contains(&format!("the snapshot is kept at {}", snapshot.display())),
        "{reason}"
    );
    assert!(snapshot.join("verified").is_file());

    let alert = world.alert().expect("an alert file");
    assert_eq!(alert["outcome"], "FAILED");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["snapshot_path"], snapshot.display().to_string());

    // The app is left undeployed on restored volumes: no reconcile deploys
    // it outside the transaction until an operator acts.
    let status = world.agent().status().unwrap();
    assert_eq!(status["apps"][0]["blocked_by"], "op-fail", "{status}");
    let deploys_before = world.abra_lines("app deploy", V1_3);
    let output = world.agent().command(&["apply", &world.domain, "--wait"]);
    assert!(!output.status.success(), "{}", output_text(&output));
    assert!(
        output_text(&output).contains("blocked by failed operation op-fail"),
        "{}",
        output_text(&output)
    );
    assert_eq!(world.abra_lines("app deploy", V1_3), deploys_before);
    assert_eq!(world.running(), None);
    // The failed operation's alert stands for the block: not raised again.
    assert_eq!(world.alert().expect("the alert stays")["kind"], "upgrade");

    // Someone removes the alert file while the app is still blocked: the
    // next reconcile raises a critical alert that names the block.
    std::fs::remove_file(world.test.path().join("alerts").join(format!("{}.json", world.domain))).unwrap();
    let output = world.agent().command(&["apply", &world.domain, "--wait"]);
    assert!(!output.status.success(), "{}", output_text(&output));
    let alert = world.alert().expect("an alert for the blocked app");
    assert_eq!(alert["kind"], "blocked", "{alert}");
    assert_eq!(alert["outcome"], "FAILED");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["operation_id"], "op-fail");
    assert!(
        alert["reason"]
            .as_str()
            .unwrap()
            .starts_with("blocked by failed operation op-fail"),
        "{alert}"
    );

    // The operator deploys the old version through the transaction: it is
    // gated, and its success unblocks the app.
    let (ok, report, stderr) = world.upgrade(&["--to", V1_3, "--json", "--operation-id", "op-recover"]);
    assert!(ok, "{report} {stderr}");
    assert_eq!(report["outcome"], "SUCCEEDED", "{report}");
    assert_eq!(world.running().as_deref(), Some(V1_3));
    let status = world.agent().status().unwrap();
    assert_eq!(status["apps"][0]["blocked_by"], Value::Null, "{status}");
    assert!(world.alert().is_none(), "the success clears the alert");
    let output = world.agent().command(&["apply", &world.domain, "--wait"]);
    assert!(output.status.success(), "{}", output_text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_major_upgrade_is_held_and_touches_nothing() {
    let world = World::start("upmajor", true, false).await;
    let commands_before = world.test.abra_log().len();
    let (ok, report, _) = world.upgrade(&["--to", V2_0, "--json"]);
    assert!(!ok);
    assert_eq!(report["outcome"], "HELD", "{report}");
    assert!(report["reason"]
        .as_str()
        .unwrap()
        .contains("changes the recipe's major version"));
    assert_eq!(
        world.test.abra_log().len(),
        commands_before,
        "nothing may run: {:?}",
        world.test.abra_log()
    );
    assert_eq!(world.running().as_deref(), Some(V1_3));
    assert!(!world.snapshots().exists());
    let alert = world.alert().expect("an alert file");
    assert_eq!(alert["outcome"], "HELD");
    assert_eq!(alert["severity"], "warning");

    // Allowed explicitly, it runs (and its success clears the alert).
    let (ok, report, stderr) = world.upgrade(&["--to", V2_0, "--major", "--json"]);
    // 2.0.0 has no /health: its HTTP probe fails, so it rolls back; the
    // point here is that --major lets it run at all.
    assert!(!ok, "{stderr}");
    assert_eq!(report["outcome"], "ROLLED_BACK", "{report}");
    assert_eq!(world.abra_lines("app deploy -n -c -o -f", V2_0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_app_that_never_converges_rolls_back_without_a_snapshot() {
    let world = World::start("upstateless", false, false).await;
    let (ok, report, _) = world.upgrade(&["--to", V1_5_NEVER_CONVERGES, "--json"]);
    assert!(!ok);
    assert_eq!(report["outcome"], "ROLLED_BACK", "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("docker's verdict after"),
        "{report}"
    );
    assert_eq!(report["snapshot"], Value::Null);
    assert!(!world.snapshots().exists());
    world.converged_at(V1_3).await;
    // abra moved it up in place and back with a redeploy; nothing was undeployed.
    assert_eq!(world.abra_lines("app upgrade -n -c -o", V1_5_NEVER_CONVERGES), 1);
    assert_eq!(world.abra_lines("app deploy -n -c -o -f", V1_3), 1);
    assert!(!world
        .test
        .abra_log()
        .iter()
        .any(|line| line.starts_with("app undeploy")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_needs_no_network() {
    let world = World::start("upoffline", false, false).await;
    // From now on the double refuses anything that would reach the recipe's
    // git remote (fetches, and deploys without `-o`), and git cannot reach it.
    world.test.mark_remote_unreachable();
    let (ok, report, _) = world.upgrade(&["--to", V1_5_NEVER_CONVERGES, "--json"]);
    assert!(!ok);
    assert_eq!(report["outcome"], "ROLLED_BACK", "{report}");
    world.converged_at(V1_3).await;
    // Both versions' tags were in the local checkout: both moves ran offline.
    assert_eq!(world.abra_lines("app upgrade -n -c -o", V1_5_NEVER_CONVERGES), 1);
    assert_eq!(world.abra_lines("app deploy -n -c -o -f", V1_3), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_fails_verification_stops_the_upgrade() {
    let world = World::start("upcorrupt", true, false).await;
    world.seed();
    let before = world.manifest();
    world.hold("verifying-snapshot");
    let upgrade = {
        let socket = world.test.path().join("control.sock");
        let domain = world.domain.clone();
        std::thread::spawn(move || {
            ccfleet_tests::agent::agent_command(&[
                "upgrade",
                &domain,
                "--to",
                V1_3_1_MIGRATES,
                "--json",
                "--operation-id",
                "op-corrupt",
                "--socket",
                &socket.display().to_string(),
            ])
        })
    };
    world.reached("verifying-snapshot").await;
    // One file of the copy changes between the copy and its verification.
    let copy = world
        .snapshots()
        .join("op-corrupt")
        .join("volumes")
        .join(format!("{}_data", world.domain.replace('.', "_")))
        .join("posts")
        .join("hello.md");
    std::fs::write(&copy, "# bit rot\n").unwrap();
    world.release("verifying-snapshot");
    let output = upgrade.join().unwrap();
    assert!(!output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["outcome"], "FAILED", "{report}");
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.starts_with("no verified snapshot, no upgrade"), "{reason}");
    assert!(reason.contains("posts/hello.md"), "{reason}");
    // The old version runs again on untouched data; the target never ran.
    world.converged_at(V1_3).await;
    assert_eq!(world.manifest(), before);
    assert_eq!(world.abra_lines("app deploy -n -c -o -f", V1_3_1_MIGRATES), 0);
    assert_eq!(world.alert().expect("an alert")["outcome"], "FAILED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_operation_id_runs_once() {
    let world = World::start("uponce", false, false).await;
    let first = world.upgrade(&["--to", V1_6_HTTP_FAILS, "--json", "--operation-id", "op-once"]);
    assert_eq!(first.1["outcome"], "ROLLED_BACK", "{}", first.1);
    assert_eq!(
        (&first.1["from"], &first.1["to"], &first.1["running"]),
        (&Value::from(V1_3), &Value::from(V1_6_HTTP_FAILS), &Value::from(V1_3)),
        "{}",
        first.1
    );
    assert!(
        first.1["reason"].as_str().unwrap().contains("answered 404"),
        "converged and container-healthy, but the probe fails: {}",
        first.1
    );
    let second = world.upgrade(&["--to", V1_6_HTTP_FAILS, "--json", "--operation-id", "op-once"]);
    assert_eq!(second.1["outcome"], "ROLLED_BACK");
    assert_eq!(second.1["replayed"], true);
    assert_eq!(second.1["reason"], first.1["reason"]);
    // The replay says what runs now, as the first answer did.
    assert_eq!(second.1["running"], V1_3, "{}", second.1);
    assert_eq!(second.1["to"], V1_6_HTTP_FAILS, "{}", second.1);
    assert_eq!(world.abra_lines("app upgrade -n -c -o", V1_6_HTTP_FAILS), 1);
    assert_eq!(world.running().as_deref(), Some(V1_3));
}

/// SIGKILL inside `phase` of an upgrade to `target`, restart, and check the
/// outcome: a version that passed its health gate runs, the volume is the
/// pre-upgrade one (or the successful upgrade's), one result reached the
/// server, at most one alert exists.
async fn crash_inside(name: &str, phase: &str, target: &str) -> (World, Value) {
    let mut world = World::start(name, true, true).await;
    world.seed();
    let before = world.manifest();
    let id = format!("op-crash-{phase}");
    world.hold(phase);
    let (ok, _, stderr) = world.upgrade(&["--to", target, "--operation-id", &id]);
    assert!(ok, "the upgrade starts in the background: {stderr}");
    world.reached(phase).await;
    let record = world.operation(&id).expect("the phase is journaled before it runs");
    assert_eq!(record["phase"]["phase"], phase.replace('-', "_"), "{record}");
    std::fs::remove_file(world.pause.join(format!("{phase}.hold"))).unwrap();
    world.crash_and_restart();

    let record = world.finished(&id).await;
    world.converged_at(V1_3).await;
    assert_eq!(world.running().as_deref(), Some(V1_3));
    assert_eq!(
        world.manifest(),
        before,
        "the volume is the pre-upgrade one; {record}\n{}",
        world.agent().log()
    );
    assert!(world.alert_count() <= 1);

    // Exactly one result for the operation reached the server: the server
    // lists the operation once, with the journaled outcome, and the agent
    // pushed its result once across both runs.
    let server = world.server.as_ref().unwrap();
    let outcome = record["phase"]["outcome"].as_str().unwrap().to_lowercase();
    wait_for("the server to record the result", PATIENCE, || {
        let operations = server.cli_json(&["operations", "--json"]);
        let (id, outcome) = (id.clone(), outcome.clone());
        async move {
            let matching: Vec<&Value> = operations
                .as_array()
                .into_iter()
                .flatten()
                .filter(|operation| operation["operation_id"] == id.as_str())
                .collect();
            match matching.as_slice() {
                [one] if one["outcome"] == outcome.as_str() => Ok(()),
                _ => Err(operations.to_string()),
            }
        }
    })
    .await;
    let pushed = world
        .agent()
        .log()
        .lines()
        .filter(|line| line.contains("result recorded for the server") && line.contains(&id))
        .count();
    assert_eq!(pushed, 1, "{}", world.agent().log());
    (world, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_snapshotting_rolls_back_as_interrupted() {
    let (_world, record) = crash_inside("crashsnap", "snapshotting", V1_3_1_MIGRATES).await;
    assert_eq!(record["phase"]["outcome"], "ROLLED_BACK", "{record}");
    assert_eq!(record["phase"]["reason"], "interrupted during snapshotting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_deploying_restores_and_rolls_back_as_interrupted() {
    let (world, record) = crash_inside("crashdeploy", "deploying", V1_3_1_MIGRATES).await;
    assert_eq!(record["phase"]["outcome"], "ROLLED_BACK", "{record}");
    assert_eq!(record["phase"]["reason"], "interrupted during deploying");
    assert_eq!(world.alert().unwrap()["outcome"], "ROLLED_BACK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_verifying_undoes_the_migration() {
    let (world, record) = crash_inside("crashverify", "verifying", V1_3_1_MIGRATES).await;
    assert_eq!(record["phase"]["outcome"], "ROLLED_BACK", "{record}");
    assert_eq!(record["phase"]["reason"], "interrupted during verifying");
    assert!(!world.volume().join("migrations.log").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_rolling_back_finishes_the_rollback() {
    let (world, record) = crash_inside("crashrollback", "rollback-deploying", V1_4_MIGRATES_THEN_FAILS_HTTP).await;
    assert_eq!(record["phase"]["outcome"], "ROLLED_BACK", "{record}");
    assert!(
        record["phase"]["reason"]
            .as_str()
            .unwrap()
            .contains("failed its health gate"),
        "{record}"
    );
    assert!(!world.volume().join("migrations.log").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_the_operation_then_the_next_start_finishes_it() {
    let mut world = World::start("upstop", true, false).await;
    world.seed();
    let before = world.manifest();
    world.hold("verifying");
    let (ok, _, stderr) = world.upgrade(&["--to", V1_3_1_MIGRATES, "--operation-id", "op-stop"]);
    assert!(ok, "{stderr}");
    world.reached("verifying").await;
    // The operation cannot finish (held): the stop waits its bound, says
    // so, and exits cleanly; the journal has the operation.
    let status = world.agent.as_mut().unwrap().terminate();
    assert!(status.success(), "{status:?}");
    let log = world.agent().log();
    assert!(log.contains("operations still in flight after 5s"), "{log}");
    assert!(log.contains("op-stop (verifying)"), "{log}");
    std::fs::remove_file(world.pause.join("verifying.hold")).unwrap();
    world.start_agent();
    let record = world.finished("op-stop").await;
    assert_eq!(record["phase"]["outcome"], "ROLLED_BACK", "{record}");
    assert_eq!(record["phase"]["reason"], "interrupted during verifying");
    world.converged_at(V1_3).await;
    assert_eq!(world.manifest(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timer_moves_to_the_newest_release_of_the_major_once() {
    let world = World::start_with(
        "uptimer",
        false,
        false,
        "auto_update = true\nschedule = \"Sun 04:00\"\n",
    )
    .await;
    // The newest release of major 1 is 1.6.0 (its probe fails); 2.0.0 is a major away.
    let output = world.agent().command(&["update", &world.domain]);
    let said = output_text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains(&format!("ROLLED_BACK {V1_3} -> {V1_6_HTTP_FAILS}")),
        "{said}"
    );
    let status = world.agent().status().unwrap();
    assert_eq!(status["apps"][0]["available_version"], V1_6_HTTP_FAILS, "{status}");
    assert_eq!(status["apps"][0]["available_newest"], V2_0, "{status}");
    assert_eq!(status["apps"][0]["alert"]["outcome"], "ROLLED_BACK");

    // The next run of the timer leaves the rolled-back release alone.
    let output = world.agent().command(&["update", &world.domain]);
    let said = output_text(&output);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("left alone"), "{said}");
    assert_eq!(world.abra_lines("app upgrade -n -c -o", V1_6_HTTP_FAILS), 1);
    assert_eq!(world.running().as_deref(), Some(V1_3));

    // A later success of the app clears its alert.
    let (ok, report, stderr) = world.upgrade(&["--to", V1_3_1_MIGRATES, "--json"]);
    assert!(ok, "{stderr}\n{report}");
    assert!(world.alert().is_none());
    assert_eq!(world.agent().status().unwrap()["apps"][0]["alert"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_tagged_after_the_agent_started_is_seen_without_a_restart() {
    const V1_7: &str = "1.7.0+1.7";
    let world = World::start_with(
        "upnewtag",
        false,
        false,
        "auto_update = true\nschedule = \"Sun 04:00\"\n",
    )
    .await;
    // The agent read the releases once at start: 1.6.0 is the newest of major 1.
    wait_for("the versions read at start", PATIENCE, || {
        let status = world.agent().status();
        async move {
            let status = status?;
            (status["apps"][0]["available_version"] == V1_6_HTTP_FAILS)
                .then_some(())
                .ok_or_else(|| status.to_string())
        }
    })
    .await;
    // The maintainer releases 1.7.0 (1.3.0's compose file) after that.
    world.test.tag_release(FIXTURE_RECIPE, V1_7, V1_3);
    assert!(!world.test.checkout_tags(FIXTURE_RECIPE).contains(&V1_7.to_owned()));

    // The timer's next run fetches the new tag and moves there; nothing restarted.
    let pid = world.agent().pid();
    let output = world.agent().command(&["update", &world.domain]);
    let said = output_text(&output);
    assert!(output.status.success(), "{said}\n{}", world.agent().log());
    assert!(said.contains(&format!("{V1_3} -> {V1_7}")), "{said}");
    assert_eq!(world.running().as_deref(), Some(V1_7));
    assert_eq!(world.agent().pid(), pid);
    assert!(world.test.checkout_tags(FIXTURE_RECIPE).contains(&V1_7.to_owned()));
    // abra's own fetch left the checkout as it was; the tag came from the
    // agent's `git fetch --tags`, so the upgrade itself ran offline.
    assert!(world
        .test
        .abra_log()
        .iter()
        .any(|line| line == "recipe fetch fixture-web"));
    assert_eq!(world.abra_lines("app upgrade -n -c -o", V1_7), 1);
    assert_eq!(
        world.abra_lines("app upgrade -n -c ", V1_7),
        1,
        "{:?}",
        world.test.abra_log()
    );
}

/// Starts a rollout of the fixture recipe to `version` on the world's server
/// and waits until it is no longer running; returns the rollout.
/// Waits until the server shows the world's host online.
async fn wait_until_online(world: &World) {
    let server = world.server.as_ref().unwrap();
    let host_id = world.host_id();
    wait_for("the host to be online", PATIENCE, || {
        let hosts = server.cli_json(&["hosts"]);
        let host_id = host_id.clone();
        async move {
            let online = hosts
                .as_array()
                .into_iter()
                .flatten()
                .any(|host| host["host_id"] == host_id.as_str() && host["status"] == "online");
            online.then_some(()).ok_or_else(|| hosts.to_string())
        }
    })
    .await;
}

async fn roll_out(world: &World, version: &str) -> Value {
    let server = world.server.as_ref().unwrap();
    wait_until_online(world).await;
    let started = server.cli_json(&["upgrade", FIXTURE_RECIPE, "--to", version]);
    let id = started["id"].as_str().expect("a rollout id").to_owned();
    wait_for("the rollout to end", PATIENCE, || {
        let rollout = server.cli_json(&["rollout", "show", &id]);
        async move {
            if rollout["state"] == "running" || rollout["state"] == "paused" {
                Err(rollout.to_string())
            } else {
                Ok(rollout)
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_rollout_runs_the_transaction_and_its_target_is_kept() {
    let world = World::start("upfleet", true, true).await;
    world.seed();
    let rollout = roll_out(&world, V1_3_1_MIGRATES).await;
    assert_eq!(rollout["state"], "completed", "{rollout}\n{}", world.agent().log());
    assert_eq!(rollout["hosts"][0]["outcome"], "succeeded", "{rollout}");
    assert_eq!(world.running().as_deref(), Some(V1_3_1_MIGRATES));
    assert!(world.volume().join("posts").join("hello.md").is_file());

    // The rollout's target is recorded: the declared 1.3.0 is a floor, so
    // the next reconcile keeps 1.3.1; that is the rule, not drift.
    let output = world.agent().command(&["apply", &world.domain, "--wait"]);
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(world.running().as_deref(), Some(V1_3_1_MIGRATES));
    let status = world.agent().status().unwrap();
    assert_eq!(status["apps"][0]["fleet_target"], V1_3_1_MIGRATES, "{status}");
    assert_eq!(
        status["apps"][0]["observed"]["drift"],
        serde_json::json!([]),
        "{status}"
    );
    assert_eq!(world.abra_lines("app deploy -n -c -o -f", V1_3), 0);

    // An operator's explicit move below the rollout's target withdraws the
    // target: the next reconcile keeps the app where the operator put it.
    let (ok, report, stderr) = world.upgrade(&["--to", V1_3, "--json"]);
    assert!(ok, "{report} {stderr}");
    assert_eq!(world.running().as_deref(), Some(V1_3));
    let status = world.agent().status().unwrap();
    assert_eq!(status["apps"][0]["fleet_target"], Value::Null, "{status}");
    let output = world.agent().command(&["apply", &world.domain, "--wait"]);
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(world.running().as_deref(), Some(V1_3));
    assert_eq!(world.abra_lines("app deploy -n -c -o -f", V1_3_1_MIGRATES), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_rollout_skips_an_app_pinned_by_its_host() {
    let world = World::start_with("uppinned", true, true, "fleet_managed = false\n").await;
    // The inventory carries the pin (`pinned_by_host`), and the server plans
    // the host as skipped without sending it anything.
    // A rollout in which no host has anything to do exits 8 and says why.
    wait_until_online(&world).await;
    let server = world.server.as_ref().unwrap();
    let output = server.cli(&["--json", "upgrade", FIXTURE_RECIPE, "--to", V1_3_1_MIGRATES]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains("1 host(s) skipped: pinned by host configuration"),
        "{stderr}"
    );
    let rollout: Value = serde_json::from_slice(&output.stdout).expect("the rollout as JSON");
    let host = &rollout["hosts"][0];
    assert_eq!(host["outcome"], "skipped", "{rollout}\n{}", world.agent().log());
    assert_eq!(host["message"], "pinned by host configuration", "{rollout}");
    assert_eq!(world.running().as_deref(), Some(V1_3));
    assert!(world.alert().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_during_the_snapshot_holds_the_upgrade_and_blocks_nothing() {
    let world = World::start("upfull", true, false).await;
    world.seed();
    // Many small files, and the snapshots on a tmpfs with too few inodes
    // for them: the free-space check (bytes) passes, then the copy runs out
    // of room half way, as when something else fills the disk meanwhile.
    for index in 0..50 {
        std::fs::write(world.volume().join(format!("note-{index:02}")), b"x").unwrap();
    }
    let disk = world.test.path().join("state").join("snapshots");
    let _disk = SmallDisk::mount(&disk, "size=64m,nr_inodes=20").unwrap();

    let (ok, report, stderr) = world.upgrade(&["--to", V1_3_1_MIGRATES, "--json", "--operation-id", "op-full"]);
    assert!(!ok);
    assert_eq!(report["outcome"], "HELD", "{report}\n{stderr}\n{}", world.agent().log());
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("no snapshot, no upgrade: no room for the snapshot"),
        "{reason}"
    );
    assert!(reason.contains("No space left on device"), "{reason}");
    // The partial snapshot is gone, the old version runs, nothing blocks the app.
    assert!(!world.snapshots().join("op-full").exists());
    assert_eq!(world.running().as_deref(), Some(V1_3));
    let status = world.agent().status().unwrap();
    assert_eq!(status["apps"][0]["blocked_by"], Value::Null, "{status}");
    let alert = world.alert().expect("an alert file");
    assert_eq!(alert["outcome"], "HELD");
    let output = world.agent().command(&["apply", &world.domain, "--wait"]);
    assert!(output.status.success(), "{}", output_text(&output));
}

/// Removes a container started by a test when dropped.
struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshot_while_any_container_mounts_the_volume() {
    let world = World::start("upmounted", true, false).await;
    world.seed();
    // A container outside the stack (no stack label) that mounts the volume.
    let volume = format!("{}_data", world.domain.replace('.', "_"));
    let name = format!("{}-intruder", world.domain.replace('.', "-"));
    let mount = format!("{volume}:/data");
    let started = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "-v",
        &mount,
        "ccfleet-fixture-web:1.3.0",
        "/bin/busybox",
        "sleep",
        "600",
    ]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let _remove = RemoveContainer(name.clone());

    let (ok, report, stderr) = world.upgrade(&["--to", V1_3_1_MIGRATES, "--json", "--operation-id", "op-mounted"]);
    assert!(!ok);
    assert_eq!(report["outcome"], "HELD", "{report}\n{stderr}");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "cannot snapshot: volume {volume} is mounted by container {name}"
        )),
        "{reason}"
    );
    assert!(!world.snapshots().join("op-mounted").exists());
    assert_eq!(world.running().as_deref(), Some(V1_3));
}

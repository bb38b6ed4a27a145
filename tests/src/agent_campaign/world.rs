//! The real-agent campaign's effects: one run is a world of its own (a real
//! server, the real agent enrolled with it, the abra double, a stack and a
//! volume with unique names on the real Docker Engine), an upgrade, a SIGKILL
//! of the agent at the plan's moment, a restart, and what the run observes
//! once the agent has recovered. Waits poll with a deadline ([`crate::poll_for`]);
//! the one timed pause is the plan's kill moment, the fault itself.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ccfleet_agent::snapshot::{walk, ManifestEntry};
use serde_json::Value;

use super::{judge, Finished, Observation, RunPlan, SeedKind, FROM};
use crate::agent::AgentProcess;
use crate::docker::{deployed_version, free_port, stack_of, volume_mountpoint, DockerTest, FIXTURE_RECIPE};
use crate::poll_for;
use crate::server::TestServer;

/// How long a run waits for any one state (a deploy, the recovery, the server).
const PATIENCE: Duration = Duration::from_secs(240);

/// What one run found.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub plan: RunPlan,
    pub kill_phase: String,
    /// The journal's outcome, or `none` when the operation never finished.
    pub outcome: String,
    pub violations: Vec<String>,
    pub elapsed: Duration,
}

/// Runs `plan` in a world of its own and judges it. An error of the run
/// itself (the app never came up before the upgrade, a tool that would not
/// start) is reported as a violation: a campaign never passes by skipping.
pub async fn run(plan: RunPlan) -> RunReport {
    let started = Instant::now();
    let mut world = World::new(plan.seed);
    let result = world.run(&plan).await;
    let report = match result {
        Ok((before, seen)) => RunReport {
            violations: judge(&plan, &before, &seen),
            kill_phase: seen.kill_phase,
            outcome: seen.finished.map_or_else(|| "none".into(), |finished| finished.outcome),
            plan,
            elapsed: started.elapsed(),
        },
        Err(error) => RunReport {
            violations: vec![format!(
                "the run failed: {error:#}\nagent log tail:\n{}",
                world.log_tail()
            )],
            kill_phase: "none".into(),
            outcome: "none".into(),
            plan,
            elapsed: started.elapsed(),
        },
    };
    if let Some(dir) = std::env::var_os("AGENT_CAMPAIGN_LOGS") {
        let _ = std::fs::write(
            std::path::Path::new(&dir).join(format!("agent-{}.log", report.plan.seed)),
            world.agent.as_ref().map(AgentProcess::log).unwrap_or_default(),
        );
    }
    drop(world);
    report
}

/// One app of the fixture recipe under a real agent enrolled with a real server.
struct World {
    // Dropped first (fields drop in order): the agent, then the server, then
    // the Docker world, whose drop removes the stack and its volume.
    agent: Option<AgentProcess>,
    server: TestServer,
    test: DockerTest,
    domain: String,
    port: u16,
    config: PathBuf,
}

impl World {
    fn new(seed: u64) -> World {
        let mut test = DockerTest::new(&format!("ac{}", seed % 1000));
        let domain = test.domain("app");
        let server = TestServer::start(&test.path().join("server"), &[]);
        World {
            config: test.path().join("agent.toml"),
            agent: None,
            server,
            test,
            domain,
            port: free_port(),
        }
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("the agent runs")
    }

    fn log_tail(&self) -> String {
        let log = self.agent.as_ref().map(AgentProcess::log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let token_file = self.test.path().join("token");
        std::fs::write(&token_file, self.server.create_token(&["--uses", "1"]))?;
        let agent = format!(
            "observe_interval = \"1s\"\nreconcile_interval = \"1h\"\nmin_healthy_time = \"2s\"\n\
             probe_address = \"127.0.0.1:{port}\"\nprobe_scheme = \"http\"\nstop_timeout = \"5s\"\n",
            port = self.port
        );
        let apps = format!(
            "[[app]]\ndomain = {domain:?}\nrecipe = {FIXTURE_RECIPE:?}\nversion = {FROM:?}\n\
             stateful = true\ndeploy_timeout = \"60s\"\n\n[app.env]\nHTTP_PORT = \"{port}\"\n\n\
             [app.health]\npath = \"/health\"\ntimeout = \"30s\"\n",
            domain = self.domain,
            port = self.port,
        );
        let text = self
            .test
            .agent_config_with(&agent, &apps)
            .replace(
                "url = \"https://fleet.example.org\"",
                &format!(
                    "url = {:?}\njoin_token_file = {:?}",
                    self.server.url(),
                    token_file.display().to_string()
                ),
            )
            .replace("id = \"docker-test\"", "id = \"campaign-host\"");
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    async fn start_agent(&mut self) -> anyhow::Result<()> {
        self.agent = Some(AgentProcess::start(
            &self.config,
            &self.test.path().join("control.sock"),
        ));
        let agent = self.agent();
        poll_for("the agent's control socket", PATIENCE, || {
            let status = agent.status().map(drop);
            async move { status }
        })
        .await
        .map_err(anyhow::Error::msg)
    }

    fn operation(&self, id: &str) -> Option<Value> {
        let path = self.test.path().join("state/journal/ops").join(format!("{id}.json"));
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn volume(&self) -> PathBuf {
        volume_mountpoint(&format!("{}_data", stack_of(&self.domain)))
    }

    /// The whole run; `Err` only for what stops it before there is anything to judge.
    async fn run(&mut self, plan: &RunPlan) -> anyhow::Result<(Vec<ManifestEntry>, Observation)> {
        self.write_config()?;
        self.start_agent().await?;
        let output = self.agent().command(&["apply", &self.domain, "--wait"]);
        if !output.status.success() {
            bail!(
                "the app did not converge at {FROM}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        seed_volume(&self.volume(), plan)?;
        let before = walk(&self.volume()).context("walking the seeded volume")?;

        let id = plan.operation_id();
        let output = self
            .agent()
            .command(&["upgrade", &self.domain, "--to", plan.target, "--operation-id", &id]);
        if !output.status.success() {
            bail!("the upgrade was refused: {}", String::from_utf8_lossy(&output.stderr));
        }
        // The upgrade has started once its first record is in the journal.
        poll_for("the operation's first journal record", PATIENCE, || {
            let found = self.operation(&id).map(drop).ok_or_else(|| "no record yet".to_owned());
            async move { found }
        })
        .await
        .map_err(anyhow::Error::msg)?;
        // The fault: a SIGKILL at the plan's moment, wherever the agent is.
        tokio::time::sleep(plan.kill_after).await;
        self.agent.as_mut().expect("the agent runs").kill();
        let kill_phase = self
            .operation(&id)
            .and_then(|record| record["phase"]["phase"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "unreadable".into());
        self.start_agent().await?;
        Ok((before, self.observe(&id, kill_phase).await))
    }

    async fn observe(&self, id: &str, kill_phase: String) -> Observation {
        let finished = poll_for("the operation to finish and be reported", PATIENCE, || {
            let record = self.operation(id);
            async move {
                match record {
                    Some(record) if record["phase"]["phase"] == "done" && record["reported"] == true => Ok(record),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await
        .ok()
        .map(|record| Finished {
            outcome: record["phase"]["outcome"].as_str().unwrap_or_default().to_owned(),
            reason: record["phase"]["reason"].as_str().unwrap_or_default().to_owned(),
            reported: record["reported"] == true,
        });
        let running = deployed_version(&self.domain);
        // A rollback or a success has already gated the version it leaves
        // running; the agent's observation and the probe catch up within seconds.
        let converged = match &running {
            Some(version) => poll_for("the agent to see the app converged", Duration::from_secs(60), || {
                let status = self.agent().status();
                async move {
                    let status = status?;
                    let observed = &status["apps"][0]["observed"];
                    (observed["state"] == "converged" && observed["observed_version"] == version.as_str())
                        .then_some(())
                        .ok_or_else(|| observed.to_string())
                }
            })
            .await
            .is_ok(),
            None => false,
        };
        let health = match running {
            Some(_) => poll_for("GET /health to answer 200", Duration::from_secs(30), || {
                let status = http_status(self.port, &self.domain);
                async move {
                    status
                        .filter(|status| *status == 200)
                        .ok_or_else(|| format!("{status:?}"))
                }
            })
            .await
            .ok()
            .or_else(|| http_status(self.port, &self.domain)),
            None => None,
        };
        let volume = walk(&self.volume()).map_err(|error| error.to_string());
        let server_results = match &finished {
            Some(_) => poll_for("the server to hold the result", PATIENCE, || {
                let results = self.server_results(id);
                async move {
                    match results {
                        Ok(results) if results.is_empty() => Err("not listed yet".to_owned()),
                        other => other,
                    }
                }
            })
            .await
            .unwrap_or_default(),
            None => Vec::new(),
        };
        let alerts = self.server.cli(&["--json", "alerts"]);
        let server_alerts = serde_json::from_slice::<Value>(&alerts.stdout)
            .ok()
            .and_then(|alerts| alerts.as_array().map(Vec::len))
            .unwrap_or(usize::MAX);
        let local_alerts = std::fs::read_dir(self.test.path().join("alerts")).map_or(0, |entries| entries.count());
        let pushed = self
            .agent()
            .log()
            .lines()
            .filter(|line| line.contains("result recorded for the server") && line.contains(id))
            .count();
        Observation {
            kill_phase,
            finished,
            running: deployed_version(&self.domain),
            converged,
            health,
            volume,
            server_results,
            server_alerts,
            local_alerts,
            pushed,
        }
    }

    /// The outcomes the server lists for operation `id`.
    fn server_results(&self, id: &str) -> Result<Vec<String>, String> {
        let output = self.server.cli(&["--json", "operations"]);
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let operations: Value = serde_json::from_slice(&output.stdout).map_err(|error| error.to_string())?;
        Ok(operations
            .as_array()
            .into_iter()
            .flatten()
            .filter(|operation| operation["operation_id"] == id)
            .map(|operation| operation["outcome"].as_str().unwrap_or("none").to_owned())
            .collect())
    }
}

/// Writes the plan's entries into the volume (owners before modes, so that
/// a chown does not clear a setuid bit).
fn seed_volume(volume: &Path, plan: &RunPlan) -> anyhow::Result<()> {
    for entry in &plan.entries {
        let path = volume.join(&entry.path);
        match &entry.kind {
            SeedKind::Dir => std::fs::create_dir(&path)?,
            SeedKind::File(contents) => std::fs::write(&path, contents)?,
            SeedKind::Symlink(target) => std::os::unix::fs::symlink(target, &path)?,
            SeedKind::Fifo => {
                let status = std::process::Command::new("mkfifo").arg(&path).status()?;
                if !status.success() {
                    bail!("mkfifo {} failed", path.display());
                }
            }
        }
        std::os::unix::fs::lchown(&path, Some(entry.uid), Some(entry.gid))
            .with_context(|| format!("chown {}", path.display()))?;
        if !matches!(entry.kind, SeedKind::Symlink(_)) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(entry.mode))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
    }
    Ok(())
}

/// The status code of `GET /health` on the app's published port, if it answers.
fn http_status(port: u16, domain: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /health HTTP/1.0\r\nHost: {domain}\r\n\r\n").ok()?;
    let mut answer = String::new();
    let _ = stream.take(256).read_to_string(&mut answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}

//! The real `ccfleet-agent` binary as a child process, with a config that
//! points at a test server, and helpers to talk to it as an operator would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A running `ccfleet-agent run`, killed when dropped.
pub struct AgentProcess {
    child: Child,
    pub config: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts the agent with the config at `config`, whose control socket is `socket`.
    pub fn start(config: &Path, socket: &Path) -> AgentProcess {
        AgentProcess::start_with_env(config, socket, &[])
    }

    /// [`AgentProcess::start`] with extra environment variables. The log
    /// (`<config>.log`) is appended to, so a restarted agent's log follows
    /// the first one's.
    pub fn start_with_env(config: &Path, socket: &Path, env: &[(&str, &Path)]) -> AgentProcess {
        let log = config.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log file");
        let mut command = Command::new(crate::binary("ccfleet-agent"));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,ccfleet_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("ccfleet-agent starts");
        AgentProcess {
            child,
            config: config.to_owned(),
            socket: socket.to_owned(),
            log,
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `ccfleet-agent ARGS --socket <socket>` (apply, update, status).
    pub fn command(&self, args: &[&str]) -> Output {
        Command::new(crate::binary("ccfleet-agent"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("ccfleet-agent runs")
    }

    /// `ccfleet-agent status --json`, or the reason it failed.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        let output = self.command(&["status", "--json"]);
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        serde_json::from_slice(&output.stdout).map_err(|error| error.to_string())
    }

    /// SIGKILL, as a crash or a power cut would stop it, and waits for the end.
    pub fn kill(&mut self) {
        self.child.kill().expect("the agent can be killed");
        self.child.wait().expect("the killed agent is reaped");
    }

    /// Sends SIGTERM (a `systemctl stop`) and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "cannot signal the agent");
        self.child.wait().expect("the agent exits")
    }

    /// Sends SIGHUP: the agent re-reads its configuration.
    pub fn reload(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "cannot signal the agent");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ccfleet-agent ARGS` to completion.
pub fn agent_command(args: &[&str]) -> Output {
    Command::new(crate::binary("ccfleet-agent"))
        .args(args)
        .output()
        .expect("ccfleet-agent runs")
}

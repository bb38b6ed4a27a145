//! The one place the agent starts other programs: an explicit program, an
//! argument vector (never a shell), an explicit environment, a working
//! directory and a timeout, with the tail of stdout and stderr kept for reports.
//!
//! Everything else (abra above all) goes through [`run`], so that "which
//! environment did abra see" and "what did it print" have one answer.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of each output stream is kept: the last 64 KiB, which holds any
/// error message abra prints without letting a chatty command grow unbounded.
pub const OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// After the child exits, how long to wait for its pipes to close. A
/// grandchild that inherited them (and outlives the child) must not hold the
/// caller hostage, so the output read so far is reported instead.
const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// One command to run.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// The program: an absolute path, or a bare name looked up on `PATH`.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment besides `PATH` (see [`CommandSpec::path`]):
    /// nothing else of the agent's own environment reaches the child.
    pub env: BTreeMap<String, OsString>,
    /// `PATH` for the child; `None` passes on the agent's own `PATH`, since the
    /// child (abra) in turn starts `docker` and `git` by name.
    pub path: Option<OsString>,
    pub current_dir: PathBuf,
    /// The child is killed when it runs longer than this.
    pub timeout: Duration,
}

impl CommandSpec {
    /// A command with no arguments and no environment, run in `current_dir`.
    pub fn new(program: impl Into<PathBuf>, current_dir: impl Into<PathBuf>, timeout: Duration) -> CommandSpec {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            path: None,
            current_dir: current_dir.into(),
            timeout,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, argument: impl Into<OsString>) -> CommandSpec {
        self.args.push(argument.into());
        self
    }

    /// Sets one environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<OsString>) -> CommandSpec {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The command line as text for messages and logs: program and arguments,
    /// each quoted only when it needs to be for a reader to tell them apart.
    pub fn command_line(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .map(|word| quote_for_display(&word.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn quote_for_display(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+@,%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    pub command_line: String,
    /// The exit code; `None` when a signal ended the child.
    pub exit_code: Option<i32>,
    /// The last [`OUTPUT_TAIL_BYTES`] of stdout, lossily decoded.
    pub stdout: String,
    /// The last [`OUTPUT_TAIL_BYTES`] of stderr, lossily decoded.
    pub stderr: String,
    pub elapsed: Duration,
}

impl CommandOutput {
    /// Both streams, for a report: stderr last, since that is where the reason usually is.
    pub fn combined_tail(&self) -> String {
        match (self.stdout.trim_end(), self.stderr.trim_end()) {
            ("", "") => String::from("(no output)"),
            (stdout, "") => stdout.to_owned(),
            ("", stderr) => stderr.to_owned(),
            (stdout, stderr) => format!("{stdout}\n{stderr}"),
        }
    }
}

/// Why a command did not succeed. Each carries the command line; those that
/// ran carry what the child printed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start `{command_line}`")]
    Spawn {
        command_line: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` was killed after its timeout of {}: {}", output.command_line, humantime::format_duration(*timeout), output.combined_tail())]
    TimedOut { timeout: Duration, output: CommandOutput },
    #[error("`{}` failed ({}): {}", output.command_line, ExitDescription(output.exit_code), output.combined_tail())]
    Failed { output: CommandOutput },
    #[error("waiting for `{command_line}` failed")]
    Wait {
        command_line: String,
        #[source]
        source: std::io::Error,
    },
}

impl ProcessError {
    /// Forgets what the child printed on stdout (for commands that print
    /// secrets), so that it reaches no log and no report.
    pub fn redact_stdout(mut self) -> ProcessError {
        if let ProcessError::TimedOut { output, .. } | ProcessError::Failed { output } = &mut self {
            output.stdout = REDACTED.into();
        }
        self
    }

    /// What the child printed, when it ran at all.
    pub fn output(&self) -> Option<&CommandOutput> {
        match self {
            ProcessError::TimedOut { output, .. } | ProcessError::Failed { output } => Some(output),
            ProcessError::Spawn { .. } | ProcessError::Wait { .. } => None,
        }
    }
}

struct ExitDescription(Option<i32>);

impl fmt::Display for ExitDescription {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(code) => write!(formatter, "exit code {code}"),
            None => formatter.write_str("ended by a signal"),
        }
    }
}

/// What stands in for output that may hold secrets.
pub const REDACTED: &str = "[stdout not kept: it may hold secret values]";

/// Runs `spec` to completion. A non-zero exit is [`ProcessError::Failed`];
/// running past the timeout kills the child and is [`ProcessError::TimedOut`].
/// stdin is closed, so a child that would prompt fails instead of hanging.
pub async fn run(spec: &CommandSpec) -> Result<CommandOutput, ProcessError> {
    let command_line = spec.command_line();
    #[allow(clippy::disallowed_methods)] // This is the one place that starts programs.
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.current_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If the caller's future is dropped (agent shutdown), the child goes with it.
        .kill_on_drop(true)
        // Its own process group, so that a timeout kills what it started too
        // (abra runs docker; the test double runs `docker stack deploy`).
        .process_group(0);
    match &spec.path {
        Some(path) => {
            command.env("PATH", path);
        }
        None => {
            if let Some(path) = std::env::var_os("PATH") {
                command.env("PATH", path);
            }
        }
    }

    let started = Instant::now();
    tracing::debug!(command = %command_line, "starting");
    let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
        command_line: command_line.clone(),
        source,
    })?;
    let stdout = Arc::new(Mutex::new(Tail::default()));
    let stderr = Arc::new(Mutex::new(Tail::default()));
    let stdout_reader = tokio::spawn(collect_tail(child.stdout.take(), Arc::clone(&stdout)));
    let stderr_reader = tokio::spawn(collect_tail(child.stderr.take(), Arc::clone(&stderr)));

    let waited = tokio::time::timeout(spec.timeout, child.wait()).await;
    let status: Option<ExitStatus> = match waited {
        Ok(Ok(status)) => Some(status),
        Ok(Err(source)) => return Err(ProcessError::Wait { command_line, source }),
        Err(_elapsed) => {
            // The whole group: a docker command abra started must not go on
            // deploying after the agent has reported the failure and let go
            // of the recipe's lock.
            if let Some(pid) = child.id() {
                let group = nix::unistd::Pid::from_raw(pid as i32);
                if let Err(error) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
                    tracing::warn!(command = %command_line, %error, "cannot kill the timed-out process group");
                }
            }
            if let Err(error) = child.kill().await {
                tracing::warn!(command = %command_line, %error, "cannot kill timed-out child");
            }
            None
        }
    };
    let (stdout_abort, stderr_abort) = (stdout_reader.abort_handle(), stderr_reader.abort_handle());
    let drained = async {
        let _ = stdout_reader.await;
        let _ = stderr_reader.await;
    };
    if tokio::time::timeout(PIPE_DRAIN_GRACE, drained).await.is_err() {
        // A grandchild still holds the pipes open: stop reading them.
        stdout_abort.abort();
        stderr_abort.abort();
    }

    let output = CommandOutput {
        command_line,
        exit_code: status.and_then(|status| status.code()),
        stdout: take_text(&stdout),
        stderr: take_text(&stderr),
        elapsed: started.elapsed(),
    };
    match status {
        None => Err(ProcessError::TimedOut {
            timeout: spec.timeout,
            output,
        }),
        Some(status) if status.success() => {
            tracing::debug!(command = %output.command_line, elapsed_ms = output.elapsed.as_millis() as u64, "succeeded");
            Ok(output)
        }
        Some(_) => Err(ProcessError::Failed { output }),
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > OUTPUT_TAIL_BYTES {
            let excess = self.bytes.len() - OUTPUT_TAIL_BYTES;
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }
}

async fn collect_tail(stream: Option<impl AsyncRead + Unpin>, tail: Arc<Mutex<Tail>>) {
    let Some(mut stream) = stream else { return };
    let mut buffer = vec![0u8; 8192];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => tail.lock().expect("tail lock is never poisoned").push(&buffer[..read]),
        }
    }
}

fn take_text(tail: &Mutex<Tail>) -> String {
    let tail = tail.lock().expect("tail lock is never poisoned");
    let text = String::from_utf8_lossy(&tail.bytes).into_owned();
    if tail.truncated {
        format!("[earlier output dropped]\n{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, timeout: Duration) -> CommandSpec {
        // The tests use /bin/sh as a convenient program; the agent itself never runs a shell.
        CommandSpec::new("/bin/sh", "/", timeout).arg("-c").arg(script)
    }

    #[tokio::test]
    async fn captures_output_and_environment_is_explicit() {
        std::env::set_var("CCFLEET_PROCESS_TEST_LEAK", "leaked");
        let spec = shell(
            "echo out; echo err >&2; echo \"given=$GIVEN leak=${CCFLEET_PROCESS_TEST_LEAK:-none} dir=$(pwd)\"",
            Duration::from_secs(10),
        )
        .env("GIVEN", "yes");
        let output = run(&spec).await.unwrap();
        assert_eq!(output.stdout, "out\ngiven=yes leak=none dir=/\n");
        assert_eq!(output.stderr, "err\n");
        assert_eq!(output.exit_code, Some(0));
    }

    #[tokio::test]
    async fn non_zero_exit_is_an_error_with_command_line_and_output() {
        let error = run(&shell("echo broken >&2; exit 3", Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "`/bin/sh -c 'echo broken >&2; exit 3'` failed (exit code 3): broken"
        );
        assert_eq!(error.output().unwrap().exit_code, Some(3));
    }

    #[tokio::test]
    async fn timeout_kills_and_says_so() {
        let error = run(&shell("echo started; exec sleep 30", Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(matches!(error, ProcessError::TimedOut { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "`/bin/sh -c 'echo started; exec sleep 30'` was killed after its timeout of 300ms: started"
        );
    }

    #[tokio::test]
    async fn timeout_kills_what_the_command_started_too() {
        let directory = tempfile::tempdir().unwrap();
        let pid_file = directory.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let error = run(&shell(&script, Duration::from_millis(500))).await.unwrap_err();
        assert!(matches!(error, ProcessError::TimedOut { .. }), "{error:?}");
        let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
        // Killed, then reaped (gone) or waiting to be reaped (a zombie): not running.
        let running = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        while running() {
            assert!(Instant::now() < deadline, "the grandchild {pid} survived the timeout");
            ticker.tick().await;
        }
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let error = run(&CommandSpec::new("/nonexistent/abra", "/", Duration::from_secs(1)))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "cannot start `/nonexistent/abra`");
    }

    #[tokio::test]
    async fn output_is_bounded_to_its_tail() {
        let output = run(&shell(
            "yes abcdefgh | head -c 200000; echo END",
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
        assert!(output.stdout.starts_with("[earlier output dropped]\n"));
        assert!(output.stdout.ends_with("END\n"));
        assert!(output.stdout.len() <= OUTPUT_TAIL_BYTES + 30);
    }

    #[test]
    fn command_line_quotes_only_what_needs_it() {
        let spec = CommandSpec::new("abra", "/", Duration::from_secs(1))
            .arg("app")
            .arg("deploy")
            .arg("blog.example.org")
            .arg("1.0.0+1.0")
            .arg("two words")
            .arg("it's");
        assert_eq!(
            spec.command_line(),
            r"abra app deploy blog.example.org 1.0.0+1.0 'two words' 'it'\''s'"
        );
    }
}

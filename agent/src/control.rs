//! The local control socket: how `ccfleet-agent apply`, `status` and
//! `update` (and the NixOS units that run them) talk to the running agent.
//!
//! A unix socket, created owner-only (the agent runs as root, so only root
//! can use it), carrying one JSON request line and one JSON response line
//! per connection.

pub mod status;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

pub use status::{AgentStatus, AppStatus, OutboxStatus};

/// Longest accepted request line: requests are tiny.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long a client waits for the agent's control socket to accept
/// connections by default: at boot and on a switch, `apply` may start before
/// the agent has bound its socket.
pub const DEFAULT_CONNECT_PATIENCE: Duration = Duration::from_secs(30);
/// How long `ccfleet-agent status` waits for the socket: not at all.
pub const STATUS_CONNECT_PATIENCE: Duration = Duration::ZERO;

/// The first and the longest pause between connection attempts.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(10);
const LONGEST_RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Converge now: one app (by domain) or all of them.
    Apply {
        app: Option<String>,
        wait: bool,
        /// Stream progress lines before the answer (see [`call_with_progress`]).
        #[serde(default)]
        progress: bool,
    },
    /// The scheduled update of one app (from its systemd timer).
    Update { app: String },
    /// The upgrade transaction for one app, to `to` or the newest available.
    Upgrade {
        app: String,
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        major: bool,
        #[serde(default)]
        wait: bool,
        /// Makes the request idempotent: a retry with the same id returns
        /// the recorded result instead of running again.
        #[serde(default)]
        operation_id: Option<String>,
        /// Stream progress lines before the answer.
        #[serde(default)]
        progress: bool,
    },
    /// Declared and observed state of every app.
    Status,
}

/// The outcome for one app of an apply or update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppOutcome {
    pub domain: String,
    pub ok: bool,
    /// What was done, or why it failed.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// One line for people.
    pub message: String,
    #[serde(default)]
    pub apps: Vec<AppOutcome>,
    /// For `status`: the agent's full state.
    #[serde(default)]
    pub status: Option<Box<AgentStatus>>,
    /// For `upgrade --wait`: the operation's report as JSON.
    #[serde(default)]
    pub operation: Option<serde_json::Value>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            message: message.into(),
            apps: vec![],
            status: None,
            operation: None,
        }
    }

    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            ..Response::error(message)
        }
    }
}

/// A request from the socket, with the way to answer it.
pub type Incoming = (Request, Answer);

/// How a request is answered: once, with a [`Response`], and, for requests
/// that asked for it, with progress lines before that.
#[derive(Debug)]
pub struct Answer {
    reply: oneshot::Sender<Response>,
    progress: Option<mpsc::Sender<String>>,
}

impl Answer {
    /// Sends the answer; gives it back when the client is gone.
    pub fn send(self, response: Response) -> Result<(), Response> {
        self.reply.send(response)
    }

    /// Where progress lines go, when the client asked for them.
    pub fn progress(&self) -> Option<mpsc::Sender<String>> {
        self.progress.clone()
    }
}

/// One progress line on the socket (before the [`Response`] line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressLine {
    progress: String,
}

impl Request {
    fn wants_progress(&self) -> bool {
        matches!(
            self,
            Request::Apply { progress: true, .. } | Request::Upgrade { progress: true, .. }
        )
    }
}

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    // Bound inside a fresh owner-only directory, restricted there, and only
    // then moved into place: no other user can ever reach the socket while
    // its mode is still the umask's (a bind-then-chmod race otherwise).
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
    let staging = parent.join(format!(".{name}.{}.staging", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let staged = staging.join("s");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Tells systemd (`Type=notify`) that the agent is ready: called once the
/// control socket is bound, so that units ordered after the agent find it.
/// Nothing happens when `NOTIFY_SOCKET` is unset (not started by systemd).
pub fn notify_ready() {
    if let Err(error) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%error, "cannot tell systemd that the agent is ready");
    }
}

/// Accepts connections and forwards each request to `requests`.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Incoming>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::warn!(%error, "control socket accept failed");
                tokio::time::sleep_until(tokio::time::Instant::now() + std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(error) = handle(stream, requests).await {
                tracing::debug!(%error, "control connection failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<Incoming>) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(reader).take(MAX_REQUEST_BYTES as u64);
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(error) => Response::error(format!("invalid request: {error}")),
        Ok(request) => {
            let (reply, mut answered) = oneshot::channel();
            let (progress, mut progress_lines) = mpsc::channel::<String>(16);
            let progress = request.wants_progress().then_some(progress);
            if requests.send((request, Answer { reply, progress })).await.is_err() {
                Response::error("the agent is shutting down")
            } else {
                loop {
                    tokio::select! {
                        // Progress sent before the answer is written before it.
                        biased;
                        Some(progress) = progress_lines.recv() => {
                            let mut text = serde_json::to_string(&ProgressLine { progress }).unwrap_or_default();
                            text.push('\n');
                            writer.write_all(text.as_bytes()).await?;
                        }
                        answer = &mut answered => {
                            break answer.unwrap_or_else(|_| Response::error("the agent dropped the request"));
                        }
                    }
                }
            }
        }
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.shutdown().await
}

/// Sends one request to the running agent and waits up to `timeout` for the
/// answer, after waiting up to [`DEFAULT_CONNECT_PATIENCE`] for the socket.
pub async fn call(path: &Path, request: &Request, timeout: Duration) -> anyhow::Result<Response> {
    call_with_patience(path, request, DEFAULT_CONNECT_PATIENCE, timeout).await
}

/// [`call`], waiting up to `patience` for the agent's socket to accept a
/// connection: a socket that does not exist yet, or whose agent is not
/// listening yet (a stale file), is retried with a short, growing pause;
/// any other failure (no permission, say) is reported at once.
pub async fn call_with_patience(
    path: &Path,
    request: &Request,
    patience: Duration,
    timeout: Duration,
) -> anyhow::Result<Response> {
    use anyhow::Context;
    let stream = connect(path, patience).await?;
    let exchange = async {
        let (reader, mut writer) = stream.into_split();
        let mut text = serde_json::to_string(request)?;
        text.push('\n');
        writer.write_all(text.as_bytes()).await?;
        writer.shutdown().await?;
        let mut line = String::new();
        BufReader::new(reader).read_line(&mut line).await?;
        serde_json::from_str::<Response>(&line).context("the agent sent an invalid answer")
    };
    tokio::time::timeout(timeout, exchange).await.with_context(|| {
        format!(
            "the agent did not answer within {}",
            humantime::format_duration(timeout)
        )
    })?
}

/// [`call`] for a request that asked for progress: each progress line the
/// agent sends before its answer goes to `on_progress`. Gives up after
/// `timeout` in all (the agent goes on with its work), saying what it last
/// heard.
pub async fn call_with_progress(
    path: &Path,
    request: &Request,
    timeout: Duration,
    on_progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<Response> {
    use anyhow::Context;
    let started = tokio::time::Instant::now();
    let stream = connect(path, DEFAULT_CONNECT_PATIENCE).await?;
    let mut last = String::new();
    let exchange = async {
        let (reader, mut writer) = stream.into_split();
        let mut text = serde_json::to_string(request)?;
        text.push('\n');
        writer.write_all(text.as_bytes()).await?;
        writer.shutdown().await?;
        let mut lines = BufReader::new(reader).lines();
        while let Some(line) = lines.next_line().await? {
            if let Ok(progress) = serde_json::from_str::<ProgressLine>(&line) {
                on_progress(&progress.progress);
                last = progress.progress;
                continue;
            }
            return serde_json::from_str::<Response>(&line).context("the agent sent an invalid answer");
        }
        anyhow::bail!("the agent closed the connection without an answer")
    };
    let remaining = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(remaining, exchange).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!(
            "gave up waiting after {} (the agent goes on; see `ccfleet-agent status`){}",
            humantime::format_duration(timeout),
            if last.is_empty() {
                String::new()
            } else {
                format!("; last seen: {last}")
            }
        ),
    }
}

/// The running agent's control socket could not be reached (the command
/// line exits 3 for it, as `ccfleet` does for an unreachable server).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

async fn connect(path: &Path, patience: Duration) -> anyhow::Result<UnixStream> {
    let started = tokio::time::Instant::now();
    let mut delay = FIRST_RETRY_DELAY;
    let mut told = false;
    loop {
        let error = match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            Err(error) => error,
        };
        let waiting_helps = matches!(
            error.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        );
        let waited = started.elapsed();
        if !waiting_helps || waited + delay > patience {
            return Err(anyhow::Error::new(error).context(Unreachable(format!(
                "cannot reach the running agent at {} (waited {}): is ccfleet-agent running \
                 (`systemctl status ccfleet-agent`), and does agent.control_socket in its configuration name this path?",
                path.display(),
                humantime::format_duration(Duration::from_millis(waited.as_millis() as u64)),
            ))));
        }
        if !told {
            tracing::info!(
                "waiting for the agent's control socket at {} (up to {}): {error}",
                path.display(),
                humantime::format_duration(patience)
            );
            told = true;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LONGEST_RETRY_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_travels_to_the_agent_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("control.sock");
        let listener = bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["control.sock"], "the staging directory is gone");
        let (requests, mut incoming) = mpsc::channel(1);
        tokio::spawn(serve(listener, requests));
        tokio::spawn(async move {
            while let Some((request, answer)) = incoming.recv().await {
                let _ = answer.send(Response {
                    ok: true,
                    message: format!("{request:?}"),
                    apps: vec![],
                    status: None,
                    operation: None,
                });
            }
        });
        let request = Request::Apply {
            app: Some("blog.example.org".into()),
            wait: true,
            progress: false,
        };
        let response = call(&path, &request, Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            response.message,
            r#"Apply { app: Some("blog.example.org"), wait: true, progress: false }"#
        );
    }

    #[tokio::test]
    async fn garbage_gets_an_error_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (requests, _incoming) = mpsc::channel(1);
        tokio::spawn(serve(bind(&path).unwrap(), requests));
        let stream = UnixStream::connect(&path).await.unwrap();
        let (reader, mut writer) = stream.into_split();
        writer.write_all(b"{\"command\":\"reboot\"}\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(reader).read_line(&mut line).await.unwrap();
        let response: Response = serde_json::from_str(&line).unwrap();
        assert!(!response.ok);
        assert!(
            response
                .message
                .starts_with("invalid request: unknown variant `reboot`"),
            "{}",
            response.message
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_agent_is_reported_clearly_after_the_patience() {
        let started = tokio::time::Instant::now();
        let error = call_with_patience(
            Path::new("/nonexistent/control.sock"),
            &Request::Status,
            Duration::from_secs(30),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(29)..=Duration::from_secs(30)).contains(&waited),
            "{waited:?}"
        );
        let message = format!("{error:#}");
        assert!(
            message.starts_with("cannot reach the running agent at /nonexistent/control.sock (waited 29s")
                && message.contains("agent.control_socket")
                && message.ends_with("No such file or directory (os error 2)"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_socket_that_refuses_for_another_reason_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the socket's directory should be: no agent
        // can ever bind there, so waiting would not help.
        let file = dir.path().join("run");
        std::fs::write(&file, "").unwrap();
        let path = file.join("control.sock");
        let started = std::time::Instant::now();
        let error = call_with_patience(&path, &Request::Status, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{error:#}");
        let message = format!("{error:#}");
        assert!(
            message.starts_with("cannot reach the running agent at")
                && message.ends_with("Not a directory (os error 20)"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_client_started_before_the_agent_waits_for_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("control.sock");
        let client = tokio::spawn({
            let path = path.clone();
            async move { call(&path, &Request::Status, Duration::from_secs(10)).await }
        });
        // The client is already trying (or about to); the agent binds later.
        tokio::task::yield_now().await;
        let (requests, mut incoming) = mpsc::channel(1);
        tokio::spawn(serve(bind(&path).unwrap(), requests));
        let (_, answer) = incoming.recv().await.unwrap();
        answer.send(Response::error("answered")).unwrap();
        assert_eq!(client.await.unwrap().unwrap().message, "answered");
    }

    #[tokio::test]
    async fn progress_lines_come_before_the_answer_and_a_bounded_wait_says_what_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (requests, mut incoming) = mpsc::channel(4);
        tokio::spawn(serve(bind(&path).unwrap(), requests));
        tokio::spawn(async move {
            while let Some((request, answer)) = incoming.recv().await {
                let progress = answer.progress().expect("progress was asked for");
                progress.send("blog.example.org: deploying".into()).await.unwrap();
                progress.send("blog.example.org: verifying".into()).await.unwrap();
                if matches!(request, Request::Apply { wait: true, .. }) {
                    answer.send(Response::ok("converged")).unwrap();
                } else {
                    // Never answers: the client's bound must end the wait.
                    std::mem::forget(answer);
                }
            }
        });
        let mut seen = Vec::new();
        let request = Request::Apply {
            app: None,
            wait: true,
            progress: true,
        };
        let response = call_with_progress(&path, &request, Duration::from_secs(10), &mut |line| {
            seen.push(line.to_owned())
        })
        .await
        .unwrap();
        assert_eq!(response.message, "converged");
        assert_eq!(seen, ["blog.example.org: deploying", "blog.example.org: verifying"]);

        let request = Request::Upgrade {
            app: "blog.example.org".into(),
            to: None,
            major: false,
            wait: true,
            operation_id: None,
            progress: true,
        };
        let error = call_with_progress(&path, &request, Duration::from_millis(500), &mut |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "gave up waiting after 500ms (the agent goes on; see `ccfleet-agent status`); \
             last seen: blog.example.org: verifying"
        );
    }
}

//! The local control socket: how `ccfleet-agent apply`, `status` and
//! `update` (and the NixOS units that run them) talk to the running agent.
//!
//! A unix socket, created owner-only (the agent runs as root, so only root
//! can use it), carrying one JSON request line and one JSON response line
//! per connection.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Longest accepted request line: requests are tiny.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Converge now: one app (by domain) or all of them.
    Apply { app: Option<String>, wait: bool },
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
    /// For `status`: the agent's full state as JSON.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
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
pub type Incoming = (Request, oneshot::Sender<Response>);

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
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
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
            let (answer, answered) = oneshot::channel();
            if requests.send((request, answer)).await.is_err() {
                Response::error("the agent is shutting down")
            } else {
                answered
                    .await
                    .unwrap_or_else(|_| Response::error("the agent dropped the request"))
            }
        }
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.shutdown().await
}

/// Sends one request to the running agent and waits up to `timeout`.
pub async fn call(path: &Path, request: &Request, timeout: Duration) -> anyhow::Result<Response> {
    use anyhow::Context;
    let exchange = async {
        let stream = UnixStream::connect(path).await.with_context(|| {
            format!(
                "cannot reach the running agent at {} (is ccfleet-agent running?)",
                path.display()
            )
        })?;
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
        };
        let response = call(&path, &request, Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            response.message,
            r#"Apply { app: Some("blog.example.org"), wait: true }"#
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

    #[tokio::test]
    async fn a_missing_agent_is_reported_clearly() {
        let error = call(
            Path::new("/nonexistent/control.sock"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot reach the running agent at /nonexistent/control.sock"),
            "{error}"
        );
    }
}

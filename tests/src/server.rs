//! The real `ccfleet-server` binary as a child process, and a test agent that
//! speaks the Agent stream the way the real agent does.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use ccfleet_proto::pb::{self, agent_client::AgentClient, agent_message::Body, server_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// A running `ccfleet-server run`, killed when dropped.
pub struct TestServer {
    child: Child,
    pub address: SocketAddr,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl TestServer {
    /// Starts the server on a free loopback port with `data_dir`, passing
    /// `extra_args` to `run`. Its log goes to `<data_dir>.log`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> TestServer {
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log file");
        let mut child = Command::new(crate::binary("ccfleet-server"))
            .arg("run")
            .arg("--data")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "info,ccfleet_server=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("ccfleet-server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut first_line = String::new();
        BufReader::new(stdout)
            .read_line(&mut first_line)
            .expect("read server stdout");
        let Some(address) = first_line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!(
                "the server did not report its address (got {first_line:?}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let address = address.parse().expect("server prints a socket address");
        TestServer {
            child,
            address,
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Kills the server with SIGKILL (no graceful shutdown: what was
    /// acknowledged must already be on disk) and waits for it to exit.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A gRPC channel to the server.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// Runs the real `ccfleet` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.url(), args)
    }

    /// Runs `ccfleet --json ARGS` and parses its output, panicking with stderr on failure.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.cli(&all);
        assert!(
            output.status.success(),
            "ccfleet {all:?} failed: {}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        serde_json::from_slice(&output.stdout).expect("ccfleet --json prints JSON")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `ccfleet` CLI against `url`, isolated from the user's config.
pub fn run_cli(url: &str, args: &[&str]) -> Output {
    Command::new(crate::binary("ccfleet"))
        .args(["--server", url, "--config", "/nonexistent/ccfleet-test-config.toml"])
        .args(args)
        .env_remove("CCFLEET_SERVER")
        .env_remove("CCFLEET_CONFIG")
        .output()
        .expect("ccfleet runs")
}

/// A test client speaking the Agent stream: what the real agent sends, under
/// the test's control.
pub struct TestAgent {
    pub host_id: String,
    outbound: mpsc::Sender<pb::AgentMessage>,
    pub inbound: tonic::Streaming<pb::ServerMessage>,
    pub welcome: pb::Welcome,
}

/// An observed app for test inventories.
pub fn observed(domain: &str, recipe: &str, version: &str) -> pb::ObservedApp {
    pb::ObservedApp {
        domain: domain.into(),
        recipe: recipe.into(),
        observed_version: version.into(),
        declared_version: version.into(),
        state: pb::AppState::Converged as i32,
        desired_replicas: 1,
        running_replicas: 1,
        drift: vec![],
        chaos: false,
    }
}

impl TestAgent {
    /// Opens a stream as `host_id`, sends Hello with `apps`, and waits for Welcome.
    pub async fn connect(
        channel: Channel,
        host_id: &str,
        apps: Vec<pb::ObservedApp>,
    ) -> Result<TestAgent, tonic::Status> {
        let hello = pb::Hello {
            host_id: host_id.into(),
            facts: Some(pb::HostFacts {
                hostname: host_id.into(),
                os: "NixOS 25.05".into(),
                arch: "x86_64".into(),
                docker_version: "28.2.2".into(),
                labels: [("site".to_string(), "test".to_string())].into(),
            }),
            agent_version: "0.1.0-test".into(),
            inventory: Some(pb::Inventory { apps }),
        };
        Self::connect_with(
            channel,
            pb::AgentMessage {
                seq: 0,
                body: Some(Body::Hello(hello)),
            },
            host_id,
        )
        .await
    }

    /// Opens a stream whose first message is `first`, whatever it is.
    pub async fn connect_with(
        channel: Channel,
        first: pb::AgentMessage,
        host_id: &str,
    ) -> Result<TestAgent, tonic::Status> {
        let (outbound, receiver) = mpsc::channel(16);
        outbound.send(first).await.expect("queue the first message");
        let mut client = AgentClient::new(channel)
            .max_decoding_message_size(ccfleet_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(64 * 1024 * 1024);
        let mut inbound = client.connect(ReceiverStream::new(receiver)).await?.into_inner();
        let welcome = match inbound.message().await? {
            Some(pb::ServerMessage {
                body: Some(server_message::Body::Welcome(welcome)),
            }) => welcome,
            other => panic!("expected a welcome, got {other:?}"),
        };
        Ok(TestAgent {
            host_id: host_id.into(),
            outbound,
            inbound,
            welcome,
        })
    }

    /// Sends a message without waiting for anything.
    pub async fn send(&self, message: pb::AgentMessage) {
        self.outbound.send(message).await.expect("stream is open");
    }

    pub async fn heartbeat(&self) {
        self.send(pb::AgentMessage {
            seq: 0,
            body: Some(Body::Heartbeat(pb::Heartbeat {})),
        })
        .await;
    }

    /// Sends a full inventory as durable event `seq` and returns the server's
    /// answer: the acknowledged sequence number, or the status that ended the stream.
    pub async fn send_inventory(&mut self, seq: u64, apps: Vec<pb::ObservedApp>) -> Result<u64, tonic::Status> {
        let update = pb::InventoryUpdate {
            inventory: Some(pb::Inventory { apps }),
        };
        self.send(pb::AgentMessage {
            seq,
            body: Some(Body::Inventory(update)),
        })
        .await;
        self.next_ack().await
    }

    /// Waits for the next acknowledgement.
    pub async fn next_ack(&mut self) -> Result<u64, tonic::Status> {
        match self.inbound.message().await? {
            Some(pb::ServerMessage {
                body: Some(server_message::Body::Ack(ack)),
            }) => Ok(ack.seq),
            None => Err(tonic::Status::cancelled("stream ended without an answer")),
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

//! The real `ccfleet-server` binary as a child process, and a test agent that
//! speaks the Agent stream the way the real agent does.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use ccfleet_proto::pb::{
    self, agent_client::AgentClient, agent_message::Body, enrollment_client::EnrollmentClient, server_message,
};
use ccfleet_proto::tls::Credential;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// How long a starting server may take to print its address before the test
/// gives up (a server stuck before binding must fail the test, not hang it).
pub const SERVER_START_DEADLINE: Duration = Duration::from_secs(30);

/// A running `ccfleet-server run`, killed when dropped.
pub struct TestServer {
    child: Child,
    pub address: SocketAddr,
    /// Where `--metrics-listen` serves, if it was given.
    pub metrics_address: Option<SocketAddr>,
    /// Where `--admin-listen` serves, if it was given.
    pub admin_address: Option<SocketAddr>,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl TestServer {
    /// Starts the server on a free loopback port with `data_dir`, passing
    /// `extra_args` to `run`. Its log goes to `<data_dir>.log`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> TestServer {
        Self::start_listening(data_dir, "127.0.0.1:0", extra_args)
    }

    /// Starts the server on a given loopback port (to come back where agents
    /// expect it after a restart).
    pub fn start_on(data_dir: &Path, port: u16, extra_args: &[&str]) -> TestServer {
        Self::start_listening(data_dir, &format!("127.0.0.1:{port}"), extra_args)
    }

    /// Starts the server under `prlimit --nofile=N:N`, so that flood tests
    /// stay small.
    pub fn start_with_fd_limit(data_dir: &Path, fd_limit: u64, extra_args: &[&str]) -> TestServer {
        Self::start_with_fd_limits(data_dir, fd_limit, fd_limit, extra_args)
    }

    /// Starts the server under `prlimit --nofile=SOFT:HARD`.
    pub fn start_with_fd_limits(data_dir: &Path, soft: u64, hard: u64, extra_args: &[&str]) -> TestServer {
        let limit = format!("--nofile={soft}:{hard}");
        Self::start_command(data_dir, "127.0.0.1:0", extra_args, Some(&["prlimit", &limit, "--"]))
    }

    fn start_listening(data_dir: &Path, listen: &str, extra_args: &[&str]) -> TestServer {
        Self::start_command(data_dir, listen, extra_args, None)
    }

    fn start_command(data_dir: &Path, listen: &str, extra_args: &[&str], wrapper: Option<&[&str]>) -> TestServer {
        ccfleet_proto::tls::install_crypto_provider();
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log file");
        let mut command = match wrapper {
            Some([program, arguments @ ..]) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(crate::binary("ccfleet-server"));
                command
            }
            _ => Command::new(crate::binary("ccfleet-server")),
        };
        let mut child = command
            .arg("run")
            .arg("--data")
            .arg(data_dir)
            .args(["--listen", listen])
            .args(extra_args)
            .env("RUST_LOG", "info,ccfleet_server=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("ccfleet-server starts");
        // The lines are read on a thread of their own, so that waiting for
        // them has a deadline; the thread then keeps draining stdout until the
        // server exits, so that the server never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, incoming) = std_mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The receiver is gone once the address was read: keep draining.
                let _ = lines.send(line);
            }
        });
        let fail = |child: &mut Child, what: String| -> ! {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        // "metrics on ADDR" and "admin on ADDR" (optional), then "listening
        // on ADDR", then nothing.
        let started = Instant::now();
        let mut metrics_address = None;
        let mut admin_address = None;
        let address = loop {
            let remaining = SERVER_START_DEADLINE.saturating_sub(started.elapsed());
            let line = match incoming.recv_timeout(remaining) {
                Ok(line) => line,
                Err(std_mpsc::RecvTimeoutError::Timeout) => fail(
                    &mut child,
                    format!("the server did not print its address within {SERVER_START_DEADLINE:?}"),
                ),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    fail(&mut child, "the server exited before printing its address".into())
                }
            };
            if let Some(metrics) = line.trim().strip_prefix("metrics on ") {
                metrics_address = Some(metrics.parse().expect("server prints a socket address"));
                continue;
            }
            if let Some(admin) = line.trim().strip_prefix("admin on ") {
                admin_address = Some(admin.parse().expect("server prints a socket address"));
                continue;
            }
            let Some(address) = line.trim().strip_prefix("listening on ") else {
                fail(
                    &mut child,
                    format!("the server did not report its address (got {line:?})"),
                )
            };
            break address.parse().expect("server prints a socket address");
        };
        TestServer {
            child,
            address,
            metrics_address,
            admin_address,
            data_dir: data_dir.to_owned(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first admin credential, written by the server when it initialised
    /// its state directory.
    pub fn admin_credential_path(&self) -> PathBuf {
        self.data_dir.join("admin-credential.toml")
    }

    pub fn admin_credential(&self) -> Credential {
        let text = std::fs::read_to_string(self.admin_credential_path()).expect("the server wrote an admin credential");
        toml::from_str(&text).expect("a valid credential file")
    }

    /// A join token made with the real CLI (`ccfleet token create`).
    pub fn create_token(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        let output = self.cli(&all);
        assert!(
            output.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Enrols `host_id` the way the agent does (pinned CA, key made here,
    /// CSR with a fresh one-use token) and returns its credential.
    pub async fn enroll(&self, host_id: &str) -> Credential {
        let token = self.create_token(&["--uses", "1"]);
        enroll(&self.url(), &token, host_id).await.expect("enrolment succeeds")
    }

    /// A channel presenting the credential of `host_id`, enrolling the host
    /// on first use. Credentials are kept next to the data directory, so
    /// they survive a server restart on the same directory.
    pub async fn channel_for(&self, host_id: &str) -> Channel {
        let directory = self.data_dir.with_extension("hosts");
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join(format!("{host_id}.toml"));
        let credential = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).unwrap(),
            Err(_) => {
                let credential = self.enroll(host_id).await;
                std::fs::write(&path, toml::to_string(&credential).unwrap()).unwrap();
                credential
            }
        };
        self.channel_as(&credential).await
    }

    /// A TLS channel without a client certificate (what an enrolling agent
    /// or a health probe uses), pinned to the server's CA.
    pub async fn anonymous_channel(&self) -> Channel {
        let ca = ccfleet_proto::tls::first_certificate_der(&self.admin_credential().ca_certificate).unwrap();
        ccfleet_proto::tls::pinned_endpoint(&self.url(), &ccfleet_proto::tls::fingerprint(&ca))
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// A channel that presents `credential`.
    pub async fn channel_as(&self, credential: &Credential) -> Channel {
        ccfleet_proto::tls::mtls_endpoint(&self.url(), credential)
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// Kills the server with SIGKILL (no graceful shutdown: what was
    /// acknowledged must already be on disk) and waits for it to exit.
    pub fn kill(mut self) {
        self.kill_in_place();
    }

    /// [`TestServer::kill`], keeping the value (its log stays readable).
    pub fn kill_in_place(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `deadline` for the server to exit;
    /// returns its exit status and how long it took. Panics past the deadline.
    pub fn terminate(&mut self, deadline: std::time::Duration) -> (std::process::ExitStatus, std::time::Duration) {
        let start = std::time::Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "cannot send SIGTERM to the server");
        match self.wait_exit(deadline) {
            Some(status) => (status, start.elapsed()),
            None => panic!(
                "the server did not exit within {deadline:?} of SIGTERM; its log:\n{}",
                self.log()
            ),
        }
    }

    /// Waits up to `deadline` for the server to exit on its own; its exit
    /// status, or `None` if it still runs.
    pub fn wait_exit(&mut self, deadline: std::time::Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        // Polls the process on a short period (at least once); the deadline
        // bounds it.
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return Some(status);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the real `ccfleet` CLI against this server as its first admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.url(), &self.admin_credential_path(), args)
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

/// `GET /metrics` over plain HTTP, as Prometheus scrapes it (the endpoint of
/// `--metrics-listen`).
pub fn scrape_metrics(address: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The value of one sample (`name{labels}`) in a metrics page; `None` when absent.
pub fn metric_value(page: &str, sample: &str) -> Option<u64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs the `ccfleet` CLI against `url` with `credentials`, isolated from
/// the user's config.
pub fn run_cli(url: &str, credentials: &Path, args: &[&str]) -> Output {
    Command::new(crate::binary("ccfleet"))
        .args([
            "--server",
            url,
            "--config",
            "/nonexistent/ccfleet-test-config.toml",
            "--credentials",
        ])
        .arg(credentials)
        .args(args)
        .env_remove("CCFLEET_SERVER")
        .env_remove("CCFLEET_CONFIG")
        .env_remove("CCFLEET_CREDENTIALS")
        .output()
        .expect("ccfleet runs")
}

/// Enrols through the Enrollment service exactly as the agent does: the
/// token's CA fingerprint pins the server before anything is sent.
pub async fn enroll(url: &str, token: &str, host_id: &str) -> Result<Credential, tonic::Status> {
    let generated = ccfleet_proto::tls::generate_key_and_request(host_id).unwrap();
    enroll_with_key(url, token, host_id, &generated.private_key_pem, &generated.csr_pem).await
}

/// [`enroll`] with a given key and certificate request (to retry with the same key).
pub async fn enroll_with_key(
    url: &str,
    token: &str,
    host_id: &str,
    private_key_pem: &str,
    csr_pem: &str,
) -> Result<Credential, tonic::Status> {
    ccfleet_proto::tls::install_crypto_provider();
    let token: ccfleet_proto::tls::JoinToken = token
        .parse()
        .map_err(|error| tonic::Status::invalid_argument(format!("{error}")))?;
    let channel = ccfleet_proto::tls::pinned_endpoint(url, &token.ca_fingerprint)
        .unwrap()
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(crate::error_chain(&error)))?;
    let response = EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token.to_string(),
            host_id: host_id.into(),
            csr_pem: csr_pem.into(),
            facts: None,
        })
        .await?
        .into_inner();
    Ok(Credential {
        server: url.into(),
        ca_certificate: response.ca_certificate_pem,
        certificate: response.certificate_pem,
        private_key: private_key_pem.into(),
    })
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
        ..Default::default()
    }
}

impl TestAgent {
    /// Opens a stream as `host_id`, sends Hello with `apps`, and waits for Welcome.
    pub async fn connect(
        channel: Channel,
        host_id: &str,
        apps: Vec<pb::ObservedApp>,
    ) -> Result<TestAgent, tonic::Status> {
        Self::connect_labelled(
            channel,
            host_id,
            apps,
            [("site".to_string(), "test".to_string())].into(),
        )
        .await
    }

    /// [`TestAgent::connect`] with these labels in the host's facts (as the
    /// agent's configuration gives them).
    pub async fn connect_labelled(
        channel: Channel,
        host_id: &str,
        apps: Vec<pb::ObservedApp>,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<TestAgent, tonic::Status> {
        let hello = pb::Hello {
            host_id: host_id.into(),
            facts: Some(pb::HostFacts {
                hostname: host_id.into(),
                os: "NixOS 25.05".into(),
                arch: "x86_64".into(),
                docker_version: "28.2.2".into(),
                labels,
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

    /// A sender for this agent's stream, for tasks that send on their own.
    pub fn sender(&self) -> mpsc::Sender<pb::AgentMessage> {
        self.outbound.clone()
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

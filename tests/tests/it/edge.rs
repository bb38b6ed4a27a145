//! The server's network edge against the real binary: connection floods
//! under a low file-descriptor limit, silent connections, HTTP/2 stream
//! limits, the metrics endpoint's deadline, undecodable input, and a clean,
//! bounded shutdown with agents connected.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ccfleet_tests::server::{enroll, observed, TestAgent, TestServer};
use ccfleet_tests::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

/// A TLS connection without a client certificate that completes the
/// handshake (pinned to the server's CA, HTTP/2 offered) and then sends
/// nothing: the first half of the lock-out attack.
async fn silent_tls_connection(server: &TestServer) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    silent_tls_connection_to(server, server.address).await
}

/// [`silent_tls_connection`] to `address` (the admin listener, say).
async fn silent_tls_connection_to(
    server: &TestServer,
    address: std::net::SocketAddr,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let ca = ccfleet_proto::tls::first_certificate_der(&server.admin_credential().ca_certificate).unwrap();
    let verifier = ccfleet_proto::tls::PinnedCaVerifier::new(&ccfleet_proto::tls::fingerprint(&ca));
    let mut config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.ok()
}

/// Reads `stream` until the server closes it and reports the index on `closed`.
fn report_close<S>(index: usize, mut stream: S, closed: mpsc::UnboundedSender<(usize, Instant)>)
where
    S: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let _ = closed.send((index, Instant::now()));
    });
}

/// CPU time (user + system) the process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's /proc entry");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // CLK_TCK is 100 on Linux
}

/// How much CPU the server uses over `window`: a measurement, not a wait.
async fn cpu_share(pid: u32, window: Duration) -> f64 {
    let before = cpu_time(pid);
    tokio::time::sleep(window).await;
    (cpu_time(pid) - before).as_secs_f64() / window.as_secs_f64()
}

fn metric(server: &TestServer, line_start: &str) -> u64 {
    let address = server.metrics_address.expect("metrics enabled");
    let output = std::process::Command::new("curl")
        .args(["-sf", &format!("http://{address}/metrics")])
        .output()
        .expect("curl runs");
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(line_start).map(|value| value.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
}

/// `--admin-listen`: `ccfleet` gets in on the admin listener while the
/// agents' listener is full, and the admin listener serves nothing but the
/// Admin service (with health and reflection), to admin certificates only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_admins_while_the_agent_listener_is_full() {
    let dir = tempfile::tempdir().unwrap();
    // A cap of 20 on the agents' listener: 19 for anyone, 1 kept for admins.
    let server = TestServer::start(
        &dir.path().join("data"),
        &[
            "--max-connections",
            "20",
            "--admin-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let admin_address = server.admin_address.expect("the server reports its admin listener");
    // 40 silent connections: 19 are held open, the rest refused.
    let (closed_sender, _closed) = mpsc::unbounded_channel();
    for index in 0..40 {
        if let Some(stream) = silent_tls_connection(&server).await {
            report_close(index, stream, closed_sender.clone());
        }
    }
    wait_for(
        "the agents' listener to refuse past its cap",
        Duration::from_secs(10),
        || {
            let refused = metric(&server, "ccfleet_connections_closed_total{reason=\"cap\"}");
            async move {
                if refused >= 21 {
                    Ok(())
                } else {
                    Err(format!("{refused} refused"))
                }
            }
        },
    )
    .await;

    // `ccfleet` pointed at the admin listener answers meanwhile.
    let output = ccfleet_tests::server::run_cli(
        &format!("https://{admin_address}"),
        &server.admin_credential_path(),
        &["--json", "hosts"],
    );
    assert!(
        output.status.success(),
        "ccfleet hosts on the admin listener failed: {}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );

    // A connection without an admin certificate is closed there right after
    // its handshake (or during it).
    if let Some(mut stream) = silent_tls_connection_to(&server, admin_address).await {
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the admin listener closes a connection without an admin certificate");
        assert!(matches!(read, Ok(0) | Err(_)), "it got an answer: {read:?}");
    }

    // The Agent service is not served there, even to an admin.
    let channel = ccfleet_proto::tls::mtls_endpoint(&format!("https://{admin_address}"), &server.admin_credential())
        .unwrap()
        .connect()
        .await
        .expect("an admin connects to the admin listener");
    let (_sender, receiver) = mpsc::channel::<ccfleet_proto::pb::AgentMessage>(1);
    let status = ccfleet_proto::pb::agent_client::AgentClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect_err("no Agent service on the admin listener");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_is_capped_admins_get_in_and_the_server_stays_idle() {
    let dir = tempfile::tempdir().unwrap();
    // 256 descriptors: a cap of 196 connections past the handshake, 9 of
    // them kept for admins (and 28 handshakes at once).
    let server = TestServer::start_with_fd_limit(
        &dir.path().join("data"),
        256,
        &[
            "--idle-timeout",
            "6s",
            "--keepalive-interval",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let (closed_sender, mut closed) = mpsc::unbounded_channel();
    let flood = 300;
    let mut refused_at_handshake = 0;
    for index in 0..flood {
        match silent_tls_connection(&server).await {
            Some(stream) => report_close(index, stream, closed_sender.clone()),
            None => refused_at_handshake += 1,
        }
    }
    // Past the cap, connections are closed at once: 300 - 187 of them.
    let mut closed_early = refused_at_handshake;
    wait_for("connections past the cap to be refused", Duration::from_secs(5), || {
        while closed.try_recv().is_ok() {
            closed_early += 1;
        }
        let seen = closed_early;
        async move {
            if seen >= flood - 187 {
                Ok(())
            } else {
                Err(format!("{seen} closed"))
            }
        }
    })
    .await;
    assert!(
        closed_early <= flood - 187 + 5,
        "{closed_early} closed: the cap admits 187 non-admins"
    );

    // The admin reserve: `ccfleet hosts` still answers during the flood.
    let output = server.cli(&["--json", "hosts"]);
    assert!(
        output.status.success(),
        "ccfleet hosts failed during the flood: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And the server is not spinning on accept.
    let share = cpu_share(server.pid(), Duration::from_secs(2)).await;
    assert!(
        share < 0.25,
        "the server used {:.0}% of a core while capped",
        share * 100.0
    );

    // The silent connections are closed by the idle timeout, and new ones work.
    wait_for("silent connections to be closed", Duration::from_secs(15), || {
        while closed.try_recv().is_ok() {
            closed_early += 1;
        }
        let seen = closed_early;
        async move {
            if seen == flood {
                Ok(())
            } else {
                Err(format!("{seen} of {flood} closed"))
            }
        }
    })
    .await;
    assert!(metric(&server, "ccfleet_connections_closed_total{reason=\"cap\"}") >= (flood - 187 - 5) as u64);
    assert!(metric(&server, "ccfleet_connections_closed_total{reason=\"idle\"}") >= 180);
    assert_eq!(metric(&server, "ccfleet_connections_max"), 196);
    assert!(
        silent_tls_connection(&server).await.is_some(),
        "new connections are admitted again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_when_descriptors_run_out_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // Pools above the descriptor limit, so that accept itself fails (EMFILE).
    let server = TestServer::start_with_fd_limit(
        &dir.path().join("data"),
        64,
        &[
            "--max-connections",
            "1000",
            "--max-handshakes",
            "1000",
            "--handshakes-per-source",
            "1000",
            "--handshake-timeout",
            "60s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let mut connections = Vec::new();
    for _ in 0..120 {
        connections.push(
            TcpStream::connect(server.address)
                .await
                .expect("the kernel queues the connection"),
        );
    }
    let share = cpu_share(server.pid(), Duration::from_secs(2)).await;
    assert!(
        share < 0.25,
        "the server used {:.0}% of a core out of descriptors",
        share * 100.0
    );
    drop(connections);
    wait_for("the server to answer again", Duration::from_secs(20), || {
        let output = server.cli(&["--json", "hosts"]);
        async move {
            if output.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&output.stderr).into_owned())
            }
        }
    })
    .await;
    assert!(metric(&server, "ccfleet_accept_exhausted_total ") > 0);
    assert!(server.log().contains("out of file descriptors"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_gets_a_bounded_number_of_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--max-concurrent-streams", "8"]);
    // One connection; Health/Watch needs no certificate and never ends.
    let channel = server.anonymous_channel().await;
    let mut watches = Vec::new();
    for _ in 0..8 {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let mut stream = client
            .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .expect("watch accepted")
            .into_inner();
        stream.message().await.expect("first status").expect("a status");
        watches.push(stream);
    }
    // The ninth waits for a free stream: the server advertised 8.
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let ninth = tokio::spawn(async move {
        client
            .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map(|_| ())
    });
    let waited = tokio::time::timeout(Duration::from_millis(500), async {
        while !ninth.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_err(), "a ninth stream was opened beyond the limit of 8");
    watches.pop();
    let opened = tokio::time::timeout(Duration::from_secs(10), ninth)
        .await
        .expect("the ninth stream opens once one closes")
        .unwrap();
    assert!(opened.is_ok(), "{opened:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_drops_a_slow_drip_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &["--metrics-listen", "127.0.0.1:0"]);
    let mut stream = TcpStream::connect(server.metrics_address.unwrap()).await.unwrap();
    let start = Instant::now();
    // One byte every 200 ms never completes the request; each byte would
    // reset a per-read timeout, not the whole-request deadline.
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let closed_after = loop {
        ticker.tick().await;
        let mut probe = [0u8; 64];
        let wrote = stream.write_all(b"G").await;
        let read = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await;
        if wrote.is_err() || matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the drip was never cut");
    };
    assert!(closed_after < Duration::from_secs(8), "cut after {closed_after:?}");
    // A normal scrape still works.
    assert_eq!(metric(&server, "ccfleet_hosts "), 0);
}

/// Sends bytes as they are: a codec that does not encode, to put invalid
/// UTF-8 into a string field.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buffer: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buffer.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buffer: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut bytes = vec![0; buffer.remaining()];
        buffer.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_from_an_agent_is_an_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let channel = server.channel_for("web-1").await;
    // AgentMessage { hello (2): Hello { host_id (1): 0xff 0xfe } }
    let hello = vec![0x12, 0x04, 0x0a, 0x02, 0xff, 0xfe];
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/ccfleet.v1.Agent/Connect");
    let outcome = grpc
        .streaming(tonic::Request::new(tokio_stream::iter(vec![hello])), path, RawCodec)
        .await;
    let status = match outcome {
        Ok(response) => {
            let mut stream = response.into_inner();
            stream.message().await.expect_err("the stream is refused")
        }
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("undecodable message: failed to decode"),
        "{status:?}"
    );
    // Unary calls too: Renew as the host, ListApps as an admin. Field 1 of
    // both requests is a string.
    let bad_string = vec![0x0a, 0x02, 0xff, 0xfe];
    for (channel, path) in [
        (server.channel_for("web-1").await, "/ccfleet.v1.Agent/Renew"),
        (
            server.channel_as(&server.admin_credential()).await,
            "/ccfleet.v1.Admin/ListApps",
        ),
    ] {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(bad_string.clone()),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status.message().starts_with("failed to decode Protobuf message"),
            "{path}: {status:?}"
        );
    }

    // A well-formed agent is unaffected.
    TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .expect("hello accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_agents_connected_exits_cleanly_and_writes_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = TestServer::start(&data, &[]);
    let mut agents = Vec::new();
    let hosts = 200;
    let token = server.create_token(&["--uses", &hosts.to_string()]);
    for number in 0..hosts {
        let host = format!("web-{number}");
        let credential = enroll(&server.url(), &token, &host).await.expect("enrolment");
        let apps = vec![observed("blog.coop.example", "ghost", "1.3.0+6.42.0-alpine")];
        agents.push(
            TestAgent::connect(server.channel_as(&credential).await, &host, apps)
                .await
                .unwrap(),
        );
    }
    // Let the clock pass into a later second than every hello, so that the
    // last-seen written at shutdown is told apart from the one at hello.
    let hello_done = SystemTime::now();
    wait_for("a later second", Duration::from_secs(3), || async move {
        if SystemTime::now() > hello_done + Duration::from_millis(1100) {
            Ok(())
        } else {
            Err("same second".into())
        }
    })
    .await;
    let terminated_at = SystemTime::now();
    let (status, took) = server.terminate(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Every agent was told to go, with a reason it can act on (reconnect).
    for agent in &mut agents {
        let ended = tokio::time::timeout(Duration::from_secs(5), agent.inbound.message())
            .await
            .expect("the stream ends");
        match ended {
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(status.message().contains("shutting down"), "{status:?}");
            }
            Ok(None) => {}
            Ok(Some(message)) => panic!("unexpected message {message:?}"),
        }
    }
    assert!(server.log().contains("store flushed; stopped"), "{}", server.log());
    drop(server);
    let server = TestServer::start(&data, &[]);
    let listed = server.cli_json(&["hosts"]);
    let floor = humantime::format_rfc3339_seconds(terminated_at - Duration::from_secs(1)).to_string();
    for host in listed.as_array().unwrap() {
        let last_seen = host["last_seen"].as_str().unwrap();
        assert!(
            last_seen >= floor.as_str(),
            "{} last seen {last_seen}, shut down at {floor}",
            host["host_id"]
        );
    }
    assert_eq!(listed.as_array().unwrap().len(), hosts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_at_start_and_the_cap_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    // systemd's default: a low soft limit under a higher hard one.
    let server = TestServer::start_with_fd_limits(
        &dir.path().join("data"),
        256,
        1024,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    assert_eq!(
        metric(&server, "ccfleet_connections_max "),
        784,
        "the cap of 1024 descriptors"
    );
    let log = server.log();
    assert!(
        log.contains("raised the soft file-descriptor limit") && log.contains("to=1024"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_keeps_a_quiet_live_client_while_a_silent_one_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        &dir.path().join("data"),
        &[
            "--idle-timeout",
            "2s",
            "--keepalive-interval",
            "500ms",
            "--keepalive-timeout",
            "1s",
        ],
    );
    // A live client that sends nothing itself: its HTTP/2 stack answers the
    // server's pings, which is traffic.
    let mut agent = TestAgent::connect(server.channel_for("web-1").await, "web-1", vec![])
        .await
        .unwrap();
    // A peer that finished the handshake and went silent.
    let (closed_sender, mut closed) = mpsc::unbounded_channel();
    let silent = silent_tls_connection(&server).await.expect("handshake");
    let opened = Instant::now();
    report_close(0, silent, closed_sender);
    let (_, silent_closed_at) = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the silent connection is closed")
        .unwrap();
    let silent_for = silent_closed_at - opened;
    assert!(silent_for >= Duration::from_millis(1500), "closed after {silent_for:?}");
    // Watched on the clock: twice the idle timeout has passed for the agent.
    wait_for("twice the idle timeout", Duration::from_secs(10), || async move {
        if opened.elapsed() > Duration::from_secs(4) {
            Ok(())
        } else {
            Err(format!("{:?}", opened.elapsed()))
        }
    })
    .await;
    let acked = agent
        .send_inventory(1, vec![observed("blog.coop.example", "ghost", "1.3.0+6.42.0-alpine")])
        .await
        .expect("the quiet agent's stream is still open");
    assert_eq!(acked, 1);
}

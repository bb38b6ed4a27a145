//! `fleet-bench --baseline`: the same agent load against a bare tonic +
//! rustls mTLS server and against the real `ccfleet-server`, in one run.
//!
//! The bare server (`serve_baseline`, run as a child process of the bench so
//! its memory and CPU are its own) answers the Agent service's stream with the
//! least a server can do: Welcome for the Hello, an Ack for every report, no
//! storage, no bookkeeping. Its certificate is signed by the real server's CA,
//! so the same agents, with the same credentials, connect to both.
//!
//! The load (`run_load`): every agent opens its own TCP connection and mTLS
//! session, one bidirectional stream, sends the same Hello (three apps), then
//! a report of about 1.5 KB (an operation progress message) every 10 s ± 10 %,
//! starting at a random phase, and waits for the acknowledgement that covers
//! it (a watermark at or above its sequence number: the real server sends one
//! once a flush has made the report durable). Figures: connection rate, the
//! server's RSS once everyone is connected and after the traffic window, its
//! CPU over the window, the durable acknowledgement's latency (report sent to
//! watermark covering it) of the reports sent in the window (after a warm-up
//! of one report period), and for the real server its store's flushes.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ccfleet_proto::pb;
use ccfleet_proto::tls::Credential;
use ccfleet_tests::server::TestAgent;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Mean time between two reports of one agent; each wait is drawn from
/// ±10 % around it.
pub const REPORT_PERIOD: Duration = Duration::from_secs(10);

/// The bare Agent service: Welcome, Ack, nothing else.
struct BareAgentService;

type ServerStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for BareAgentService {
    type ConnectStream = ServerStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (outbound, receiver) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let body = match message.body {
                    Some(pb::agent_message::Body::Hello(_)) => pb::server_message::Body::Welcome(pb::Welcome {
                        last_seq: 0,
                        heartbeat_interval_seconds: REPORT_PERIOD.as_secs() as u32,
                    }),
                    Some(pb::agent_message::Body::Heartbeat(_)) | None => continue,
                    Some(_) => pb::server_message::Body::Ack(pb::Ack { seq: message.seq }),
                };
                if outbound.send(Ok(pb::ServerMessage { body: Some(body) })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn renew(&self, _request: Request<pb::RenewRequest>) -> Result<Response<pb::RenewResponse>, Status> {
        Err(Status::unimplemented("the baseline server only acknowledges reports"))
    }
}

/// A server certificate for 127.0.0.1 signed by the CA in `data_dir` (the
/// real server's), with the CA in its chain as the real server sends it.
fn server_identity(data_dir: &Path) -> (String, String, String) {
    let ca_pem = std::fs::read_to_string(data_dir.join("ca.crt")).expect("the real server's CA certificate");
    let ca_key = std::fs::read_to_string(data_dir.join("ca.key")).expect("the real server's CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, rcgen::KeyPair::from_pem(&ca_key).expect("a CA key"))
        .expect("a CA certificate");
    let key = rcgen::KeyPair::generate().expect("a server key");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server names");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let certificate = params.signed_by(&key, &issuer).expect("a signed server certificate");
    (format!("{}{ca_pem}", certificate.pem()), key.serialize_pem(), ca_pem)
}

/// Runs the bare server until killed: binds 127.0.0.1:0, prints
/// `listening <address>` on stdout, serves mTLS (client certificates
/// required, verified against the CA).
pub async fn serve_baseline(data_dir: &Path) {
    let (chain, key, ca) = server_identity(data_dir);
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(chain, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("listening {}", listener.local_addr().unwrap());
    tonic::transport::Server::builder()
        .tls_config(tls)
        .expect("tls configuration")
        .add_service(pb::agent_server::AgentServer::new(BareAgentService))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .expect("serve");
}

/// What one load run measured.
#[derive(Debug, Default, Clone)]
pub struct LoadFigures {
    pub idle_rss_mib: f64,
    pub connect_per_second: f64,
    pub rss_connected_mib: f64,
    pub rss_after_traffic_mib: f64,
    pub cpu_percent: f64,
    pub reports: usize,
    pub failures: usize,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    /// The store thread over the window (real server only): flushes per
    /// second and reports per flush.
    pub flushes_per_second: Option<f64>,
    pub writes_per_flush: Option<f64>,
}

/// A report of about 1.5 KB: progress of one long operation.
fn report(index: usize, seq: u64) -> pb::AgentMessage {
    pb::AgentMessage {
        seq,
        body: Some(pb::agent_message::Body::Progress(pb::OperationProgress {
            operation_id: "bench-operation".into(),
            domain: format!("blog.host-{index}.example.org"),
            phase: pb::OperationPhase::Deploying as i32,
            message: format!("{seq:08} {}", "x".repeat(1_440)),
        })),
    }
}

/// One agent: connect, Hello, wait for `start`, then report until `stop`.
/// Returns (send time, acknowledgement latency) per report, and whether the
/// stream failed.
async fn agent(
    index: usize,
    url: String,
    credential: Credential,
    gate: Arc<Semaphore>,
    connected: mpsc::Sender<()>,
    mut start: watch::Receiver<Option<Instant>>,
    mut stop: watch::Receiver<bool>,
) -> (Vec<(Instant, Duration)>, bool) {
    let permit = gate.acquire_owned().await.unwrap();
    let channel = ccfleet_proto::tls::mtls_endpoint(&url, &credential)
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let host = format!("host-{index}");
    let mut agent = TestAgent::connect(channel, &host, crate::inventory(index, "1.3.0+6.42.0-alpine"))
        .await
        .expect("hello");
    drop(permit);
    let _ = connected.send(()).await;
    let started = loop {
        if let Some(started) = *start.borrow_and_update() {
            break started;
        }
        if start.changed().await.is_err() {
            return (Vec::new(), false);
        }
    };
    let mut random = crate::Random(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1));
    let period = REPORT_PERIOD.as_millis() as u64;
    let mut next = started + Duration::from_millis(random.below(period));
    let mut seq = agent.welcome.last_seq;
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return (samples, false),
        }
        seq += 1;
        let sent = Instant::now();
        agent.send(report(index, seq)).await;
        // The watermark that covers this report.
        loop {
            match agent.next_ack().await {
                Ok(watermark) if watermark >= seq => {
                    samples.push((sent, sent.elapsed()));
                    break;
                }
                Ok(_) => continue,
                Err(_) => return (samples, true),
            }
        }
        next += Duration::from_millis(period * 9 / 10 + random.below(period / 5 + 1));
    }
}

/// Runs the load against the server at `url` (process `pid`) and measures it.
pub async fn run_load(
    url: &str,
    pid: u32,
    credentials: &[Credential],
    concurrency: usize,
    traffic: Duration,
    metrics: Option<std::net::SocketAddr>,
) -> LoadFigures {
    let mut figures = LoadFigures {
        idle_rss_mib: crate::process_usage(pid).0,
        ..LoadFigures::default()
    };
    let agents = credentials.len();
    let gate = Arc::new(Semaphore::new(concurrency));
    let (connected_sender, mut connected) = mpsc::channel(agents.max(1));
    let (start_sender, start) = watch::channel(None);
    let (stop_sender, stop) = watch::channel(false);
    let began = Instant::now();
    let tasks: Vec<_> = credentials
        .iter()
        .enumerate()
        .map(|(index, credential)| {
            tokio::spawn(agent(
                index,
                url.to_owned(),
                credential.clone(),
                gate.clone(),
                connected_sender.clone(),
                start.clone(),
                stop.clone(),
            ))
        })
        .collect();
    for _ in 0..agents {
        connected.recv().await.expect("every agent connects");
    }
    figures.connect_per_second = agents as f64 / began.elapsed().as_secs_f64();
    figures.rss_connected_mib = crate::process_usage(pid).0;

    // Traffic: one report period of warm-up (every agent reaches its phase),
    // then the measured window.
    let traffic_start = Instant::now();
    start_sender.send_replace(Some(traffic_start));
    tokio::time::sleep_until(traffic_start + REPORT_PERIOD).await;
    let window_start = Instant::now();
    let cpu_before = crate::process_usage(pid).1;
    let store_before = metrics.map(crate::StoreCounters::scrape);
    tokio::time::sleep_until(window_start + traffic).await;
    let window_end = Instant::now();
    if let (Some(address), Some(before)) = (metrics, store_before) {
        let store = crate::StoreCounters::scrape(address).since(&before);
        store.print(window_end - window_start);
        figures.flushes_per_second = Some(store.flushes / (window_end - window_start).as_secs_f64());
        figures.writes_per_flush = Some(store.writes / store.flushes.max(1.0));
    }
    let (rss_after, cpu_after) = crate::process_usage(pid);
    figures.rss_after_traffic_mib = rss_after;
    figures.cpu_percent = (cpu_after - cpu_before) / (window_end - window_start).as_secs_f64() * 100.0;
    stop_sender.send_replace(true);
    let mut latencies = Vec::new();
    for task in tasks {
        let (samples, failed) = task.await.expect("agent task");
        figures.failures += usize::from(failed);
        latencies.extend(
            samples
                .into_iter()
                .filter(|(sent, _)| *sent >= window_start && *sent < window_end)
                .map(|(_, latency)| latency),
        );
    }
    latencies.sort();
    figures.reports = latencies.len();
    figures.ack_p50_ms = crate::percentile(&latencies, 0.5).as_secs_f64() * 1000.0;
    figures.ack_p99_ms = crate::percentile(&latencies, 0.99).as_secs_f64() * 1000.0;
    figures.ack_max_ms = crate::percentile(&latencies, 1.0).as_secs_f64() * 1000.0;
    figures
}

/// The side-by-side table: each figure, baseline and ccfleet, and the ratio
/// ccfleet / baseline.
pub fn comparison(agents: usize, traffic: Duration, baseline: &LoadFigures, ccfleet: &LoadFigures) -> String {
    let rows: [(&str, f64, f64, &str); 9] = [
        ("idle RSS (MiB)", baseline.idle_rss_mib, ccfleet.idle_rss_mib, ""),
        (
            "connect rate (/s)",
            baseline.connect_per_second,
            ccfleet.connect_per_second,
            "",
        ),
        (
            "RSS, all connected (MiB)",
            baseline.rss_connected_mib,
            ccfleet.rss_connected_mib,
            "target <= 1.5",
        ),
        (
            "RSS after the traffic window (MiB)",
            baseline.rss_after_traffic_mib,
            ccfleet.rss_after_traffic_mib,
            "target <= 1.5",
        ),
        (
            "steady CPU (% of one core)",
            baseline.cpu_percent,
            ccfleet.cpu_percent,
            "target <= 2",
        ),
        ("durable ack p50 (ms)", baseline.ack_p50_ms, ccfleet.ack_p50_ms, ""),
        (
            "durable ack p99 (ms)",
            baseline.ack_p99_ms,
            ccfleet.ack_p99_ms,
            "ccfleet <= 100 ms",
        ),
        ("durable ack max (ms)", baseline.ack_max_ms, ccfleet.ack_max_ms, ""),
        (
            "reports in the window",
            baseline.reports as f64,
            ccfleet.reports as f64,
            "",
        ),
    ];
    let mut text = format!(
        "baseline comparison, {agents} agents, {} s window, report every {} s ± 10 %\n\
         | measure | bare tonic + rustls | ccfleet-server | ratio | |\n|---|---|---|---|---|\n",
        traffic.as_secs(),
        REPORT_PERIOD.as_secs()
    );
    for (name, base, ours, target) in rows {
        let ratio = if base > 0.0 { ours / base } else { f64::NAN };
        text.push_str(&format!("| {name} | {base:.1} | {ours:.1} | {ratio:.2} | {target} |\n"));
    }
    if let (Some(flushes), Some(writes)) = (ccfleet.flushes_per_second, ccfleet.writes_per_flush) {
        text.push_str(&format!(
            "ccfleet store: {flushes:.1} flushes/s, {writes:.1} writes per flush\n"
        ));
    }
    text.push_str(&format!(
        "streams that failed during the run: baseline {}, ccfleet {}\n",
        baseline.failures, ccfleet.failures
    ));
    text
}

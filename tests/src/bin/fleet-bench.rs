//! `fleet-bench`: how the real server copes with many connected agents.
//!
//! Starts the real `ccfleet-server` (build it in the same profile first), enrols
//! N hosts through the Enrollment service, opens one mTLS stream per host (its
//! own TCP connection, as real agents do), keeps them heartbeating, and
//! measures: enrolment and connection rates, the server's memory and CPU with
//! every agent connected, inventory-update acknowledgement latency under a
//! burst from every agent, and the admin read path over the whole fleet.
//! Everything runs on loopback on this machine; the benchmark client shares
//! the CPU with the server, so the numbers are a lower bound on the server.
//!
//! Usage: `cargo build --release --workspace &&
//! target/release/fleet-bench --agents 10000`. See BENCHMARKS.md.
//!
//! `--rollout` measures a staged rollout instead: N simulated agents
//! (`ccfleet_tests::simulated`) answer upgrade commands after a random delay
//! (`--min-delay-ms`..`--max-delay-ms`), `--fail-percent` of them failing,
//! chosen with `--seed`; the rollout runs with a canary of 1, batches of
//! `--batch-percent` and a failure budget of 5 %. It reports the rollout's
//! wall time, the agents' own delays on its critical path (the slowest host
//! of each wave), the difference (the orchestration overhead) and the
//! server's CPU time.
//!
//! `--baseline` runs the same agent load (one stream each, a 1.5 KB report
//! every 10 s ± 10 %) first against a bare tonic + rustls mTLS server, then
//! against the real server, and prints the figures side by side with their
//! ratio (see `bench/baseline.rs`); `--traffic-seconds` sets the measured
//! window (60), `--commit-window MS` the real server's group-commit window.
//!
//! `--storm` kills the server (SIGKILL) under N reconnecting agents and
//! restarts it; `--cap C` runs N agents against `--max-connections C` (see
//! `bench/storm.rs`).

#![allow(clippy::disallowed_methods)] // starts the real server and CLI, as an operator would

#[path = "../bench/baseline.rs"]
mod baseline;
#[path = "../bench/common.rs"]
mod common;
#[path = "../bench/rollout.rs"]
mod rollout;
#[path = "../bench/storm.rs"]
mod storm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ccfleet_proto::pb;
use ccfleet_tests::server::{enroll_with_key, observed, TestAgent, TestServer};
use ccfleet_tests::simulated::{Behaviour, SimulatedAgent};
use common::{argument, check_flags, load_average, process_usage, switch};
use tokio::sync::Semaphore;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

fn inventory(index: usize, version: &str) -> Vec<pb::ObservedApp> {
    vec![
        observed(&format!("blog.host-{index}.example.org"), "ghost", version),
        observed(
            &format!("chat.host-{index}.example.org"),
            "matrix-synapse",
            "5.0.0+v1.120.0",
        ),
        observed(&format!("wiki.host-{index}.example.org"), "hedgedoc", "2.1.0+1.10.0"),
    ]
}

/// The store thread's counters from `/metrics` (`ccfleet_store_*`).
#[derive(Debug, Default)]
struct StoreCounters {
    writes: f64,
    reads: f64,
    flushes: f64,
    write_seconds: f64,
    flush_seconds: f64,
    read_seconds: f64,
    queue_seconds: f64,
    cpu_seconds: f64,
}

impl StoreCounters {
    fn scrape(address: std::net::SocketAddr) -> StoreCounters {
        let text = ccfleet_tests::server::scrape_metrics(address);
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        };
        StoreCounters {
            writes: value("ccfleet_store_requests_total{kind=\"write\"}"),
            reads: value("ccfleet_store_requests_total{kind=\"read\"}"),
            flushes: value("ccfleet_store_flushes_total"),
            write_seconds: value("ccfleet_store_seconds_total{part=\"write\"}"),
            flush_seconds: value("ccfleet_store_seconds_total{part=\"flush\"}"),
            read_seconds: value("ccfleet_store_seconds_total{part=\"read\"}"),
            queue_seconds: value("ccfleet_store_seconds_total{part=\"queue\"}"),
            cpu_seconds: value("ccfleet_store_cpu_seconds_total"),
        }
    }

    fn since(&self, before: &StoreCounters) -> StoreCounters {
        StoreCounters {
            writes: self.writes - before.writes,
            reads: self.reads - before.reads,
            flushes: self.flushes - before.flushes,
            write_seconds: self.write_seconds - before.write_seconds,
            flush_seconds: self.flush_seconds - before.flush_seconds,
            read_seconds: self.read_seconds - before.read_seconds,
            queue_seconds: self.queue_seconds - before.queue_seconds,
            cpu_seconds: self.cpu_seconds - before.cpu_seconds,
        }
    }

    /// Where the store thread's time went over `window`.
    fn print(&self, window: Duration) {
        let per = |seconds: f64, count: f64| seconds * 1e6 / count.max(1.0);
        println!(
            "  store thread: {:.0} writes ({:.1} µs each), {:.0} flushes ({:.2} ms each, {:.0} writes each), \
             {:.0} reads ({:.1} µs each); busy {:.0} % of the {:.1} s, on a CPU {:.0} % ({:.1} µs of CPU per \
             request); queue wait {:.1} ms per request",
            self.writes,
            per(self.write_seconds, self.writes),
            self.flushes,
            per(self.flush_seconds, self.flushes) / 1000.0,
            self.writes / self.flushes.max(1.0),
            self.reads,
            per(self.read_seconds, self.reads),
            (self.write_seconds + self.flush_seconds + self.read_seconds) / window.as_secs_f64() * 100.0,
            window.as_secs_f64(),
            self.cpu_seconds / window.as_secs_f64() * 100.0,
            per(self.cpu_seconds, self.writes + self.reads),
            self.queue_seconds * 1000.0 / (self.writes + self.reads).max(1.0),
        );
    }
}

/// Sends a heartbeat on `sender` every 10 s until the stream closes.
fn heartbeat_every_10s(sender: tokio::sync::mpsc::Sender<pb::AgentMessage>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(10));
        loop {
            ticker.tick().await;
            let heartbeat = pb::AgentMessage {
                seq: 0,
                body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {})),
            };
            if sender.send(heartbeat).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::main]
async fn main() {
    check_flags(
        "fleet-bench [--agents N (1000)] [--concurrency N (64)] [--steady-seconds N (30)]\n\
         fleet-bench --baseline [--agents N] [--traffic-seconds N (60)] [--commit-window MS]\n\
         fleet-bench --rollout [--agents N] [--seed N] [--min-delay-ms N] [--max-delay-ms N] [--fail-percent N] [--batch-percent N]\n\
         fleet-bench --storm [--agents N] | --cap C [--refuse-seconds N]\n\
         How the real server copes with many connected agents; see BENCHMARKS.md.",
        &[
            "--agents",
            "--concurrency",
            "--steady-seconds",
            "--baseline",
            "--traffic-seconds",
            "--commit-window",
            "--rollout",
            "--seed",
            "--min-delay-ms",
            "--max-delay-ms",
            "--fail-percent",
            "--batch-percent",
            "--storm",
            "--cap",
            "--refuse-seconds",
            // Not for people: `--baseline` runs this binary again with it as
            // the bare server.
            "--serve-baseline",
        ],
    );
    ccfleet_proto::tls::install_crypto_provider();
    let agents = argument("--agents", 1000);
    let concurrency = argument("--concurrency", 64);
    if switch("--rollout") {
        rollout::rollout_bench(agents, concurrency).await;
        return;
    }
    let arguments: Vec<String> = std::env::args().collect();
    if let Some(index) = arguments.iter().position(|argument| argument == "--serve-baseline") {
        let data = arguments
            .get(index + 1)
            .expect("--serve-baseline takes the data directory");
        baseline::serve_baseline(std::path::Path::new(data)).await;
        return;
    }
    if switch("--storm") {
        storm::storm(agents, concurrency).await;
        return;
    }
    if switch("--cap") {
        let refuse_seconds = argument("--refuse-seconds", 30) as u64;
        storm::cap(agents, argument("--cap", agents * 5 / 6), concurrency, refuse_seconds).await;
        return;
    }
    if switch("--baseline") {
        baseline_bench(agents, concurrency).await;
        return;
    }
    let steady_seconds = argument("--steady-seconds", 30) as u64;
    let directory = tempfile::tempdir().expect("a temporary directory");
    let server = TestServer::start(
        &directory.path().join("data"),
        &[
            "--heartbeat-interval",
            "10s",
            "--heartbeat-timeout",
            "30s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics_address.expect("the server serves metrics");
    let pid = server.pid();
    let (idle_rss, _) = process_usage(pid);
    println!("agents: {agents}; server pid {pid}, idle RSS {idle_rss:.1} MiB");

    // Enrolment: one token for everyone, `concurrency` enrolments at a time.
    let url = server.url();
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let credentials = enroll_all(&server, agents, concurrency).await;
    let elapsed = started.elapsed();
    println!(
        "enrolled {agents} hosts in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        agents as f64 / elapsed.as_secs_f64()
    );

    // Connection: one channel and stream per agent, Hello with three apps.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, credential) in credentials.into_iter().enumerate() {
        let (gate, url) = (gate.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let channel = ccfleet_proto::tls::mtls_endpoint(&url, &credential)
                .unwrap()
                .connect()
                .await
                .expect("connect");
            let agent = TestAgent::connect(
                channel,
                &format!("host-{index}"),
                inventory(index, "1.3.0+6.42.0-alpine"),
            )
            .await
            .expect("hello");
            // Heartbeats from the start, as real agents send them: on a slow
            // machine connecting everyone takes longer than the heartbeat
            // timeout.
            let heartbeat = heartbeat_every_10s(agent.sender());
            (agent, heartbeat)
        }));
    }
    let mut connected = Vec::with_capacity(agents);
    let mut heartbeats = Vec::with_capacity(agents);
    for task in tasks {
        let (agent, heartbeat) = task.await.unwrap();
        connected.push(agent);
        heartbeats.push(heartbeat);
    }
    let elapsed = started.elapsed();
    println!(
        "connected {agents} streams in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        agents as f64 / elapsed.as_secs_f64()
    );

    // Steady state: every agent heartbeats every 10 s, as the server asks.
    let store_before = StoreCounters::scrape(metrics);
    let (rss_before, cpu_before) = process_usage(pid);
    let window_start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(steady_seconds));
    ticker.tick().await;
    ticker.tick().await;
    let (rss_after, cpu_after) = process_usage(pid);
    println!(
        "steady state with {agents} agents: server RSS {rss_before:.1} -> {rss_after:.1} MiB ({:.1} KiB per agent), \
         CPU {:.1}% of one core over {:.0} s",
        (rss_after - idle_rss) * 1024.0 / agents as f64,
        (cpu_after - cpu_before) / window_start.elapsed().as_secs_f64() * 100.0,
        window_start.elapsed().as_secs_f64()
    );
    StoreCounters::scrape(metrics)
        .since(&store_before)
        .print(window_start.elapsed());

    // Burst: every agent reports a changed inventory at once; latency to ack.
    let store_before = StoreCounters::scrape(metrics);
    let started = Instant::now();
    let cpu_burst_start = process_usage(pid).1;
    let own_cpu_burst_start = process_usage(std::process::id()).1;
    let mut tasks = Vec::new();
    for (index, mut agent) in connected.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            agent
                .send_inventory(1, inventory(index, "1.4.0+6.43.0-alpine"))
                .await
                .expect("ack");
            (sent.elapsed(), agent)
        }));
    }
    let mut latencies = Vec::with_capacity(agents);
    let mut connected = Vec::with_capacity(agents);
    for task in tasks {
        let (latency, agent) = task.await.unwrap();
        latencies.push(latency);
        connected.push(agent);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "inventory burst: {agents} updates stored and acknowledged in {:.2} s ({:.0}/s); ack latency p50 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms; server CPU {:.1} s, load generator (this process) CPU {:.1} s",
        elapsed.as_secs_f64(),
        agents as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        percentile(&latencies, 1.0).as_secs_f64() * 1000.0,
        process_usage(pid).1 - cpu_burst_start,
        process_usage(std::process::id()).1 - own_cpu_burst_start,
    );
    StoreCounters::scrape(metrics).since(&store_before).print(elapsed);

    // The admin read path over the whole fleet, through the real CLI.
    for args in [
        &["--json", "hosts"][..],
        &["--json", "versions", "ghost"][..],
        &["--json", "apps", "--recipe", "hedgedoc"][..],
    ] {
        let started = Instant::now();
        let output = server.cli(args);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        println!(
            "ccfleet {}: {:.0} ms, {} KiB of JSON",
            args.join(" "),
            started.elapsed().as_secs_f64() * 1000.0,
            output.stdout.len() / 1024
        );
    }

    // The admin read path through gRPC: the in-memory index, paged.
    let mut admin = admin_client(&server).await;
    for page_size in [1_000, 10_000] {
        let log_before = server.log().len();
        println!("{}", time_recipe_versions(&mut admin, "ghost", page_size, 20).await);
        println!(
            "  in the server's handler: {}",
            handler_times(&server.log()[log_before..], "versions")
        );
    }

    // Shutdown with every stream open: SIGTERM until the process has exited
    // (streams told to end, last-seen written, store closed).
    let mut server = server;
    let (status, took) = server.terminate(Duration::from_secs(120));
    println!(
        "shutdown with {agents} streams open: exit code {:?} {:.2} s after SIGTERM",
        status.code(),
        took.as_secs_f64()
    );
    for heartbeat in heartbeats {
        heartbeat.abort();
    }
    drop(connected);
}

type Admin = pb::admin_client::AdminClient<tonic::transport::Channel>;

async fn admin_client(server: &TestServer) -> Admin {
    let channel = ccfleet_proto::tls::mtls_endpoint(&server.url(), &server.admin_credential())
        .unwrap()
        .connect()
        .await
        .expect("admin channel");
    pb::admin_client::AdminClient::new(channel).max_decoding_message_size(ccfleet_proto::MAX_ADMIN_RESPONSE_BYTES)
}

/// How many hosts the server lists as online (every page).
async fn online_hosts(admin: &mut Admin) -> usize {
    let (mut online, mut page_token) = (0, String::new());
    loop {
        let request = pb::ListHostsRequest {
            page_size: 10_000,
            page_token,
        };
        let response = admin.list_hosts(request).await.expect("list hosts").into_inner();
        online += response
            .hosts
            .iter()
            .filter(|host| host.status == pb::HostStatus::Online as i32)
            .count();
        page_token = response.next_page_token;
        if page_token.is_empty() {
            return online;
        }
    }
}

/// Times `RecipeVersions` over the whole fleet through gRPC on loopback
/// (server time plus encoding and transport; the client is on the same
/// cores): `rounds` full walks at `page_size`, p50 and max of a walk and of
/// one page.
async fn time_recipe_versions(admin: &mut Admin, recipe: &str, page_size: u32, rounds: usize) -> String {
    let mut walks = Vec::with_capacity(rounds);
    let mut pages = Vec::new();
    let mut apps = 0;
    for _ in 0..rounds {
        let walk_started = Instant::now();
        let mut page_token = String::new();
        apps = 0;
        loop {
            let page_started = Instant::now();
            let request = pb::RecipeVersionsRequest {
                recipe: recipe.into(),
                page_size,
                page_token,
            };
            let response = admin.recipe_versions(request).await.expect("versions").into_inner();
            pages.push(page_started.elapsed());
            apps += response.versions.iter().map(|group| group.apps.len()).sum::<usize>();
            page_token = response.next_page_token;
            if page_token.is_empty() {
                break;
            }
        }
        walks.push(walk_started.elapsed());
    }
    walks.sort();
    pages.sort();
    format!(
        "RecipeVersions {recipe} at page size {page_size}: {apps} apps in {} pages; whole walk p50 {:.1} ms, \
         max {:.1} ms; one page p50 {:.1} ms, p99 {:.1} ms ({rounds} walks)",
        pages.len() / rounds.max(1),
        percentile(&walks, 0.5).as_secs_f64() * 1000.0,
        percentile(&walks, 1.0).as_secs_f64() * 1000.0,
        percentile(&pages, 0.5).as_secs_f64() * 1000.0,
        percentile(&pages, 0.99).as_secs_f64() * 1000.0,
    )
}

/// Enrols `agents` hosts (`host-0`...) with one token, `concurrency` at a time.
async fn enroll_all(server: &TestServer, agents: usize, concurrency: usize) -> Vec<ccfleet_proto::tls::Credential> {
    // A token allows at most 10,000 uses: one token per 10,000 hosts.
    let tokens: Vec<String> = (0..agents.div_ceil(10_000))
        .map(|chunk| {
            let uses = (agents - chunk * 10_000).min(10_000);
            server.create_token(&["--uses", &uses.to_string(), "--ttl", "2h"])
        })
        .collect();
    let url = server.url();
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for index in 0..agents {
        let (gate, url, token) = (gate.clone(), url.clone(), tokens[index / 10_000].clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let host = format!("host-{index}");
            let key = ccfleet_proto::tls::generate_key_and_request(&host).unwrap();
            enroll_with_key(&url, &token, &host, &key.private_key_pem, &key.csr_pem)
                .await
                .expect("enrolment")
        }));
    }
    let mut credentials = Vec::with_capacity(agents);
    for task in tasks {
        credentials.push(task.await.unwrap());
    }
    credentials
}

async fn baseline_bench(agents: usize, concurrency: usize) {
    use std::io::BufRead as _;
    let traffic = Duration::from_secs(argument("--traffic-seconds", 60) as u64);
    let directory = tempfile::tempdir().expect("a temporary directory");
    let data = directory.path().join("data");
    let server_arguments = ["--heartbeat-interval", "10s", "--heartbeat-timeout", "30s"];
    let mut server = TestServer::start(&data, &server_arguments);
    let credentials = enroll_all(&server, agents, concurrency).await;
    server.terminate(Duration::from_secs(120));
    println!("enrolled {agents} hosts; load average {}", load_average());

    // The bare server, as a child process of this benchmark.
    let mut bare = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("--serve-baseline")
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the baseline server");
    let mut line = String::new();
    std::io::BufReader::new(bare.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the baseline server's address");
    let address = line
        .trim()
        .strip_prefix("listening ")
        .expect("listening <address>")
        .to_owned();
    let bare_figures = baseline::run_load(
        &format!("https://{address}"),
        bare.id(),
        &credentials,
        concurrency,
        traffic,
        None,
    )
    .await;
    println!("baseline: {bare_figures:?}; load average {}", load_average());
    let _ = bare.kill();
    let _ = bare.wait();

    // The real server on the same state, under the same load, with its
    // store counters on /metrics (`--commit-window MS` sets its group-commit
    // window; the server's default otherwise).
    let window = std::env::args()
        .skip_while(|argument| argument != "--commit-window")
        .nth(1)
        .map(|millis| format!("{millis}ms"));
    let mut ccfleet_arguments = vec!["--metrics-listen", "127.0.0.1:0"];
    ccfleet_arguments.extend_from_slice(&server_arguments);
    if let Some(window) = &window {
        ccfleet_arguments.extend(["--commit-window", window.as_str()]);
    }
    let mut server = TestServer::start(&data, &ccfleet_arguments);
    let ccfleet_figures = baseline::run_load(
        &server.url(),
        server.pid(),
        &credentials,
        concurrency,
        traffic,
        server.metrics_address,
    )
    .await;
    println!("ccfleet: {ccfleet_figures:?}; load average {}", load_average());
    server.terminate(Duration::from_secs(120));
    print!(
        "{}",
        baseline::comparison(agents, traffic, &bare_figures, &ccfleet_figures)
    );
}

/// p50, p99 and max of the handler times the server logged for `listing`
/// (`listing page answered ... elapsed_us=N cpu_us=M` at debug level).
fn handler_times(log: &str, listing: &str) -> String {
    let field = |line: &str, name: &str| -> Option<Duration> {
        let value = line.split(&format!("{name}=")).nth(1)?.split_whitespace().next()?;
        value.parse().ok().map(Duration::from_micros)
    };
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("listing page answered") && line.contains(&format!("listing=\"{listing}\"")))
        .collect();
    let mut walls: Vec<Duration> = lines.iter().filter_map(|line| field(line, "elapsed_us")).collect();
    let mut cpus: Vec<Duration> = lines.iter().filter_map(|line| field(line, "cpu_us")).collect();
    walls.sort();
    cpus.sort();
    let ms = |times: &[Duration], fraction| percentile(times, fraction).as_secs_f64() * 1000.0;
    format!(
        "{} pages; wall p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; thread CPU p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         (index read and conversion; before encoding and transport)",
        lines.len(),
        ms(&walls, 0.5),
        ms(&walls, 0.99),
        ms(&walls, 1.0),
        ms(&cpus, 0.5),
        ms(&cpus, 0.99),
        ms(&cpus, 1.0),
    )
}

/// A small seeded generator (xorshift64*), so a run can be repeated exactly.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

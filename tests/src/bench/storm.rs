//! `fleet-bench --storm` and `fleet-bench --cap`: agents that reconnect as
//! the real agent does (1 s doubling to 30 s, each wait jittered with
//! `ccfleet_agent::link::jittered`), against a killed-and-restarted server or
//! a connection cap.
//!
//! `--storm`: N agents online; SIGKILL the server; start it again on the same
//! port and state; time until every agent is online again, the new server's
//! peak RSS and CPU, and the latency of admin calls (ListHosts, one page of
//! 100) made every 100 ms meanwhile.
//!
//! `--cap C`: the server runs with `--max-connections C`; N agents (more than
//! fit) keep trying for `--refuse-seconds`: refused attempts per second, the
//! server's CPU meanwhile, admin latency through the reserve. Then enough
//! agents leave for everyone left to fit; time until every remaining agent is
//! online.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ccfleet_proto::pb;
use ccfleet_proto::tls::Credential;
use ccfleet_tests::server::{TestAgent, TestServer};
use tokio::sync::watch;
use tokio::time::Instant;

/// Counters shared by every reconnecting agent.
pub struct Counters {
    pub online: AtomicUsize,
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
    /// Whether each agent (by index) is online.
    pub online_agents: Vec<std::sync::atomic::AtomicBool>,
}

impl Counters {
    fn new(agents: usize) -> Arc<Counters> {
        Arc::new(Counters {
            online: AtomicUsize::new(0),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            online_agents: (0..agents).map(|_| Default::default()).collect(),
        })
    }

    fn set_online(&self, index: usize, online: bool) {
        self.online_agents[index].store(online, Ordering::Relaxed);
        if online {
            self.online.fetch_add(1, Ordering::Relaxed);
        } else {
            self.online.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One agent that stays connected, heartbeating every 10 s, and reconnects
/// with the agent's backoff until `leave` turns true.
async fn reconnecting_agent(
    index: usize,
    url: String,
    credential: Credential,
    counters: Arc<Counters>,
    mut leave: watch::Receiver<bool>,
) {
    let host = format!("host-{index}");
    let mut random = crate::Random(0x5DEE_CE66_D1CE_4E5B ^ (index as u64 + 1));
    let mut backoff = Duration::from_secs(1);
    loop {
        if *leave.borrow() {
            return;
        }
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let attempt = async {
            let channel = ccfleet_proto::tls::mtls_endpoint(&url, &credential)
                .ok()?
                .connect_timeout(Duration::from_secs(10))
                .connect()
                .await
                .ok()?;
            TestAgent::connect(channel, &host, crate::inventory(index, "1.3.0+6.42.0-alpine"))
                .await
                .ok()
        };
        let connected = tokio::select! {
            agent = attempt => agent,
            _ = leave.changed() => return,
        };
        match connected {
            Some(mut agent) => {
                counters.set_online(index, true);
                backoff = Duration::from_secs(1);
                let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
                let left = loop {
                    tokio::select! {
                        message = agent.inbound.message() => match message {
                            Ok(Some(_)) => continue,
                            _ => break false,
                        },
                        _ = heartbeat.tick() => {
                            let _ = agent.sender().try_send(pb::AgentMessage {
                                seq: 0,
                                body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {})),
                            });
                        }
                        _ = leave.changed() => break true,
                    }
                };
                counters.set_online(index, false);
                if left {
                    return;
                }
            }
            None => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let wait = ccfleet_agent::link::jittered(backoff, random.next());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = leave.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Starts one reconnecting agent per credential; each has its own `leave`.
fn start_agents(url: &str, credentials: &[Credential], counters: &Arc<Counters>) -> Vec<watch::Sender<bool>> {
    credentials
        .iter()
        .enumerate()
        .map(|(index, credential)| {
            let (leave, left) = watch::channel(false);
            tokio::spawn(reconnecting_agent(
                index,
                url.to_owned(),
                credential.clone(),
                counters.clone(),
                left,
            ));
            leave
        })
        .collect()
}

/// Admin calls every 100 ms until `stop`: latencies of those answered, and
/// how many failed.
fn probe_admin(
    server_url: String,
    credential: Credential,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(Vec<Duration>, usize)> {
    // On a thread and runtime of its own, as an admin on another machine:
    // in the benchmark's runtime the probe would queue behind the simulated
    // agents' own handshakes and measure the load generator, not the server.
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the probe's runtime starts");
        runtime.block_on(async move {
            let channel = ccfleet_proto::tls::mtls_endpoint(&server_url, &credential)
                .unwrap()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            let mut admin = pb::admin_client::AdminClient::new(channel);
            let (mut latencies, mut failures) = (Vec::new(), 0);
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => return (latencies, failures),
                }
                let started = Instant::now();
                let request = pb::ListHostsRequest {
                    page_size: 100,
                    page_token: String::new(),
                };
                match admin.list_hosts(request).await {
                    Ok(_) => latencies.push(started.elapsed()),
                    Err(_) => failures += 1,
                }
            }
        })
    })
}

/// Samples a process's CPU every second until `stop`: the highest one-second
/// CPU share (percent of one core) and the total CPU seconds.
fn sample_cpu(pid: u32, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<(f64, f64)> {
    tokio::spawn(async move {
        let first = crate::process_usage(pid).1;
        let (mut last, mut last_at, mut peak) = (first, Instant::now(), 0.0f64);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return (peak, crate::process_usage(pid).1 - first),
            }
            let now = crate::process_usage(pid).1;
            peak = peak.max((now - last) / last_at.elapsed().as_secs_f64() * 100.0);
            (last, last_at) = (now, Instant::now());
        }
    })
}

async fn wait_until_online(counters: &Counters, expected: usize, deadline: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if counters.online.load(Ordering::Relaxed) >= expected {
            return Some(started.elapsed());
        }
        // Polling a counter for the measurement's end, not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn summary(latencies: &mut [Duration], failures: usize) -> String {
    latencies.sort();
    format!(
        "{} answered (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms), {failures} failed",
        latencies.len(),
        crate::percentile(latencies, 0.5).as_secs_f64() * 1000.0,
        crate::percentile(latencies, 0.99).as_secs_f64() * 1000.0,
        crate::percentile(latencies, 1.0).as_secs_f64() * 1000.0,
    )
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a url with a port")
}

/// The reconnect storm after SIGKILL.
pub async fn storm(agents: usize, concurrency: usize) {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let data = directory.path().join("data");
    let arguments = [
        "--heartbeat-interval",
        "10s",
        "--heartbeat-timeout",
        "30s",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    let server = TestServer::start(&data, &arguments);
    let url = server.url();
    let credentials = crate::enroll_all(&server, agents, concurrency).await;
    let counters = Counters::new(agents);
    let leaves = start_agents(&url, &credentials, &counters);
    let first = wait_until_online(&counters, agents, Duration::from_secs(600)).await;
    println!(
        "storm: {agents} agents online in {:.1} s (all starting at once, jittered backoff); load average {}",
        first.expect("every agent comes online").as_secs_f64(),
        crate::load_average()
    );
    let admin_credential = server.admin_credential();

    let killed = Instant::now();
    server.kill();
    let restarted = TestServer::start_on(&data, port_of(&url), &arguments);
    let ready = killed.elapsed();
    let pid = restarted.pid();
    let (stop_probes, probes_stop) = watch::channel(false);
    // Admin calls on the agents' listener, and on the admin listener.
    let admin = probe_admin(url.clone(), admin_credential.clone(), probes_stop.clone());
    let admin_listener = restarted.admin_address.expect("the server reports its admin listener");
    let admin_apart = probe_admin(
        format!("https://{admin_listener}"),
        admin_credential,
        probes_stop.clone(),
    );
    let cpu = sample_cpu(pid, probes_stop);
    let back = wait_until_online(&counters, agents, Duration::from_secs(600)).await;
    let all_back = killed.elapsed();
    stop_probes.send_replace(true);
    let (mut latencies, failures) = admin.await.unwrap();
    let (mut apart_latencies, apart_failures) = admin_apart.await.unwrap();
    let (peak_cpu, cpu_seconds) = cpu.await.unwrap();
    println!(
        "storm: SIGKILL, restart ready after {:.2} s; every agent online again {} after the kill \
         (attempts {}, failed attempts {}); new server: peak RSS {:.0} MiB, CPU {cpu_seconds:.1} s \
         (peak {peak_cpu:.0} % of one core over a second); admin ListHosts meanwhile on the agents' \
         listener: {}; on the admin listener (--admin-listen): {}; load average {}",
        ready.as_secs_f64(),
        back.map_or("NOT within 600 s".to_owned(), |_| format!(
            "{:.1} s",
            all_back.as_secs_f64()
        )),
        counters.attempts.load(Ordering::Relaxed),
        counters.failures.load(Ordering::Relaxed),
        crate::common::usage(pid).peak_rss_mib,
        summary(&mut latencies, failures),
        summary(&mut apart_latencies, apart_failures),
        crate::load_average()
    );
    for leave in leaves {
        leave.send_replace(true);
    }
    let mut restarted = restarted;
    restarted.terminate(Duration::from_secs(60));
}

/// Agents beyond the connection cap.
pub async fn cap(agents: usize, cap: usize, concurrency: usize, refuse_seconds: u64) {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let data = directory.path().join("data");
    let cap_text = cap.to_string();
    let arguments = [
        "--heartbeat-interval",
        "10s",
        "--heartbeat-timeout",
        "30s",
        "--max-connections",
        &cap_text,
    ];
    let server = TestServer::start(&data, &arguments);
    let url = server.url();
    let pid = server.pid();
    let credentials = crate::enroll_all(&server, agents, concurrency).await;
    let counters = Counters::new(agents);
    let started = Instant::now();
    let leaves = start_agents(&url, &credentials, &counters);
    // Fill up: wait until the online count stops growing for 5 s.
    let (mut online, mut since) = (0, Instant::now());
    while since.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counters.online.load(Ordering::Relaxed);
        if now != online {
            (online, since) = (now, Instant::now());
        }
    }
    println!(
        "cap {cap}: {online} of {agents} agents online after {:.1} s (the rest are refused and retry); load average {}",
        (since - started).as_secs_f64(),
        crate::load_average()
    );

    // Refusing: attempts, CPU, admin latency over the window.
    let (stop_probes, probes_stop) = watch::channel(false);
    let admin = probe_admin(url.clone(), server.admin_credential(), probes_stop.clone());
    let cpu = sample_cpu(pid, probes_stop);
    let failures_before = counters.failures.load(Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(refuse_seconds)).await;
    let refused = counters.failures.load(Ordering::Relaxed) - failures_before;
    let elapsed = window.elapsed().as_secs_f64();
    stop_probes.send_replace(true);
    let (mut latencies, failures) = admin.await.unwrap();
    let (peak_cpu, cpu_seconds) = cpu.await.unwrap();
    println!(
        "cap {cap}: while refusing ({refuse_seconds} s): {refused} refused attempts ({:.0}/s), server CPU {:.1} % of one \
         core (peak {peak_cpu:.0} %), RSS {:.0} MiB; admin ListHosts through the reserve: {}",
        refused as f64 / elapsed,
        cpu_seconds / elapsed * 100.0,
        crate::process_usage(pid).0,
        summary(&mut latencies, failures),
    );

    // Enough agents leave for the rest to fit (with 1 % to spare): the first
    // ones by index, online or not, so the refused ones among the rest must
    // get in.
    let leaving = (agents - online + online / 100).min(agents);
    for leave in &leaves[..leaving] {
        leave.send_replace(true);
    }
    let left_at = Instant::now();
    let remaining = agents - leaving;
    let mut everyone = None;
    while left_at.elapsed() < Duration::from_secs(300) {
        let online_remaining = counters.online_agents[leaving..]
            .iter()
            .filter(|online| online.load(Ordering::Relaxed))
            .count();
        if online_remaining == remaining {
            everyone = Some(left_at.elapsed());
            break;
        }
        // Polling a counter for the measurement's end, not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "cap {cap}: {leaving} agents left; every remaining agent ({remaining}) online {} later; load average {}",
        everyone.map_or("NOT within 300 s".to_owned(), |took| format!(
            "{:.1} s",
            took.as_secs_f64()
        )),
        crate::load_average()
    );
    for leave in &leaves[leaving..] {
        leave.send_replace(true);
    }
    let mut server = server;
    server.terminate(Duration::from_secs(60));
}

//! Prometheus metrics: a few counters kept in atomics by the services, and a
//! minimal HTTP endpoint (`GET /metrics`, text exposition format 0.0.4) on
//! its own loopback listener. Plain HTTP, so it refuses non-loopback
//! addresses: nothing listens in plaintext beyond this machine.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::fleet::Fleet;
use crate::store::{FleetGauges, StoreHandle, StoreStatsSnapshot, ROLLOUT_STATES, SEVERITIES};

/// Counters updated by the services.
#[derive(Debug, Default)]
pub struct Metrics {
    pub agent_streams_opened: AtomicU64,
    pub agent_streams_refused: AtomicU64,
    pub agent_events_applied: AtomicU64,
    pub agent_events_duplicate: AtomicU64,
    pub enrollments_succeeded: AtomicU64,
    pub enrollments_refused: AtomicU64,
    pub certificates_renewed: AtomicU64,
    /// Connections refused at the cap (or admitted to the admin reserve
    /// without an admin certificate).
    pub connections_refused: AtomicU64,
    /// Connections closed because the peer sent nothing within the idle timeout.
    pub connections_idle_closed: AtomicU64,
    pub tls_handshakes_failed: AtomicU64,
    /// Handshakes closed to make room in the handshake pool for a newer one.
    pub handshakes_evicted: AtomicU64,
    /// `accept` failures for lack of file descriptors or memory.
    pub accept_exhausted: AtomicU64,
    /// 1 while the store thread has been stuck on one job for longer than
    /// the stall threshold.
    pub store_stalled: AtomicU64,
    /// Seconds the store's current job has been running (0 when idle).
    pub store_busy_seconds: AtomicU64,
    /// Webhook requests answered 2xx.
    pub notifications_delivered: AtomicU64,
    /// Webhook attempts that failed and will be tried again.
    pub notifications_retried: AtomicU64,
    /// Notifications a webhook refused for good (3xx, most 4xx).
    pub notifications_rejected: AtomicU64,
    pools: std::sync::OnceLock<ConnectionPools>,
}

/// The edge's semaphores, read for the open-connections gauge.
#[derive(Debug)]
struct ConnectionPools {
    general: Arc<tokio::sync::Semaphore>,
    reserve: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
    handshakes: crate::edge::handshakes::SharedHandshakePool,
    max_handshakes: usize,
}

impl Metrics {
    pub fn increment(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Lets the metrics read how many connections are open (the first
    /// listener to call this, the main one, is the one shown).
    pub fn set_connection_pools(
        &self,
        general: Arc<tokio::sync::Semaphore>,
        reserve: Arc<tokio::sync::Semaphore>,
        max_connections: usize,
        handshakes: crate::edge::handshakes::SharedHandshakePool,
        max_handshakes: usize,
    ) {
        let _ = self.pools.set(ConnectionPools {
            general,
            reserve,
            max_connections,
            handshakes,
            max_handshakes,
        });
    }

    /// Handshakes in progress and the handshake pool's size.
    fn handshakes_open(&self) -> (u64, u64) {
        match self.pools.get() {
            Some(pools) => {
                let open = pools
                    .handshakes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len();
                (open as u64, pools.max_handshakes as u64)
            }
            None => (0, 0),
        }
    }

    fn connections_open(&self) -> (u64, u64) {
        match self.pools.get() {
            Some(pools) => {
                let free = pools.general.available_permits() + pools.reserve.available_permits();
                (
                    pools.max_connections.saturating_sub(free) as u64,
                    pools.max_connections as u64,
                )
            }
            None => (0, 0),
        }
    }

    /// The exposition text, with the gauges read now.
    pub fn render(
        &self,
        connected_agents: usize,
        hosts: usize,
        store: StoreStatsSnapshot,
        gauges: &FleetGauges,
    ) -> String {
        let mut text = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(text, "{name}{labels} {value}");
            }
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        metric(
            "ccfleet_agents_connected",
            "gauge",
            "Agent streams open and heartbeating.",
            &[("", connected_agents as u64)],
        );
        metric(
            "ccfleet_hosts",
            "gauge",
            "Hosts known to the server.",
            &[("", hosts as u64)],
        );
        metric(
            "ccfleet_agent_streams_total",
            "counter",
            "Agent streams by outcome of their hello.",
            &[
                ("{outcome=\"accepted\"}", load(&self.agent_streams_opened)),
                ("{outcome=\"refused\"}", load(&self.agent_streams_refused)),
            ],
        );
        metric(
            "ccfleet_agent_events_total",
            "counter",
            "Durable agent events by outcome (a duplicate is a re-delivered sequence number).",
            &[
                ("{outcome=\"applied\"}", load(&self.agent_events_applied)),
                ("{outcome=\"duplicate\"}", load(&self.agent_events_duplicate)),
            ],
        );
        metric(
            "ccfleet_enrollments_total",
            "counter",
            "Enrolment requests by outcome.",
            &[
                ("{outcome=\"succeeded\"}", load(&self.enrollments_succeeded)),
                ("{outcome=\"refused\"}", load(&self.enrollments_refused)),
            ],
        );
        metric(
            "ccfleet_certificates_renewed_total",
            "counter",
            "Host certificates renewed over mTLS.",
            &[("", load(&self.certificates_renewed))],
        );
        let severity_names = ["unknown", "warning", "critical"];
        let alerts: Vec<(String, u64)> = SEVERITIES
            .iter()
            .zip(severity_names)
            .map(|(severity, name)| (format!("{{severity=\"{name}\"}}"), gauges.alerts_open(*severity)))
            .collect();
        let alerts: Vec<(&str, u64)> = alerts.iter().map(|(labels, value)| (labels.as_str(), *value)).collect();
        metric(
            "ccfleet_alerts_open",
            "gauge",
            "Open and acknowledged alerts (one per app at most), by severity.",
            &alerts,
        );
        let rollouts: Vec<(String, u64)> = ROLLOUT_STATES
            .iter()
            .map(|state| (format!("{{state=\"{}\"}}", state.name()), gauges.rollouts(*state)))
            .collect();
        let rollouts: Vec<(&str, u64)> = rollouts
            .iter()
            .map(|(labels, value)| (labels.as_str(), *value))
            .collect();
        metric(
            "ccfleet_rollouts",
            "gauge",
            "Stored rollouts by state (settled ones stay counted).",
            &rollouts,
        );
        metric(
            "ccfleet_notifications_queued",
            "gauge",
            "Notifications in the durable queue that some webhook has not received yet.",
            &[("", gauges.notifications_queued())],
        );
        metric(
            "ccfleet_alerts_refused_total",
            "counter",
            "Alerts refused by a host's alert quota (apps in its inventory plus 16) since the server started.",
            &[("", gauges.alerts_refused())],
        );
        metric(
            "ccfleet_notifications_dropped_total",
            "counter",
            "Notifications dropped undelivered because the queue was full (--notify-queue-limit).",
            &[("", gauges.notifications_dropped())],
        );
        metric(
            "ccfleet_notification_attempts_total",
            "counter",
            "Webhook requests by outcome: delivered (2xx), retried (no answer, 408, 425, 429, 5xx), rejected (other statuses; not retried).",
            &[
                ("{outcome=\"delivered\"}", load(&self.notifications_delivered)),
                ("{outcome=\"retried\"}", load(&self.notifications_retried)),
                ("{outcome=\"rejected\"}", load(&self.notifications_rejected)),
            ],
        );
        let (open, max) = self.connections_open();
        metric(
            "ccfleet_connections_open",
            "gauge",
            "Client connections open past their TLS handshake (main listener).",
            &[("", open)],
        );
        metric(
            "ccfleet_connections_max",
            "gauge",
            "The connection cap, derived from the file-descriptor limit.",
            &[("", max)],
        );
        let (handshakes, max_handshakes) = self.handshakes_open();
        metric(
            "ccfleet_handshakes_open",
            "gauge",
            "Connections in their TLS handshake (main listener).",
            &[("", handshakes)],
        );
        metric(
            "ccfleet_handshakes_max",
            "gauge",
            "The handshake pool's size.",
            &[("", max_handshakes)],
        );
        metric(
            "ccfleet_connections_closed_total",
            "counter",
            "Connections the edge refused or closed, by reason.",
            &[
                ("{reason=\"cap\"}", load(&self.connections_refused)),
                ("{reason=\"idle\"}", load(&self.connections_idle_closed)),
                ("{reason=\"handshake\"}", load(&self.tls_handshakes_failed)),
                ("{reason=\"evicted\"}", load(&self.handshakes_evicted)),
            ],
        );
        metric(
            "ccfleet_accept_exhausted_total",
            "counter",
            "accept() failures for lack of file descriptors or memory (the server backs off).",
            &[("", load(&self.accept_exhausted))],
        );
        metric(
            "ccfleet_store_stalled",
            "gauge",
            "1 while the store has been stuck on one request past the stall threshold.",
            &[("", load(&self.store_stalled))],
        );
        metric(
            "ccfleet_store_busy_seconds",
            "gauge",
            "How long the store's current request has been running (0 when idle).",
            &[("", load(&self.store_busy_seconds))],
        );
        metric(
            "ccfleet_store_requests_total",
            "counter",
            "Requests the store thread ran, by kind (a write is answered after its batch's flush).",
            &[("{kind=\"read\"}", store.reads), ("{kind=\"write\"}", store.writes)],
        );
        metric(
            "ccfleet_store_flushes_total",
            "counter",
            "Flushes to disk: one per batch of writes.",
            &[("", store.flushes)],
        );
        let seconds = |nanos: u64| format!("{:.6}", nanos as f64 / 1e9);
        let _ = writeln!(
            text,
            "# HELP ccfleet_store_seconds_total Time of the store thread by part: running reads, running writes, \
             flushing, and requests waiting in its queue (summed over requests).\n\
             # TYPE ccfleet_store_seconds_total counter"
        );
        for (part, nanos) in [
            ("read", store.read_nanos),
            ("write", store.write_nanos),
            ("flush", store.flush_nanos),
            ("queue", store.queue_nanos),
        ] {
            let _ = writeln!(
                text,
                "ccfleet_store_seconds_total{{part=\"{part}\"}} {}",
                seconds(nanos)
            );
        }
        let _ = writeln!(
            text,
            "# HELP ccfleet_store_cpu_seconds_total CPU time of the store thread.\n\
             # TYPE ccfleet_store_cpu_seconds_total counter\nccfleet_store_cpu_seconds_total {}",
            seconds(store.cpu_nanos)
        );
        text
    }
}

/// Refuses anything but a loopback address for the plaintext endpoint.
pub fn check_address(address: SocketAddr) -> anyhow::Result<()> {
    if !address.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve metrics on {address}: the endpoint is plain HTTP, allowed only on a loopback \
             address; scrape it through a local agent or proxy"
        );
    }
    Ok(())
}

/// Serves `GET /metrics` until the task is dropped.
///
/// Slow clients cannot keep a scraper out: at most `MAX_SCRAPERS`
/// connections are open at once, each must deliver its request within
/// `REQUEST_READ_DEADLINE` (and be answered within `REQUEST_DEADLINE`), and
/// when all places are taken a new connection closes the oldest one still
/// sending its request (the rule of `edge::handshakes`). A scraper sends its
/// whole request at once, so it is pushed out only if `MAX_SCRAPERS` newer
/// connections arrive before its request does.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, fleet: Arc<Fleet>, store: StoreHandle) {
    use crate::edge::handshakes::{HandshakePool, Source};
    let pending = Arc::new(std::sync::Mutex::new(HandshakePool::new(MAX_SCRAPERS, MAX_SCRAPERS)));
    let answering = Arc::new(tokio::sync::Semaphore::new(MAX_ANSWERS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep_until(tokio::time::Instant::now() + std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let admission = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(Source::of(peer.ip()), close);
        if let Some((_, close)) = admission.evicted {
            let _ = close.send(());
        }
        let ticket = admission.ticket;
        let (metrics, fleet, store, pending, answering) = (
            metrics.clone(),
            fleet.clone(),
            store.clone(),
            pending.clone(),
            answering.clone(),
        );
        tokio::spawn(async move {
            // The whole exchange has one deadline: a client dripping one byte
            // at a time cannot hold the connection by resetting a per-read
            // timeout.
            let exchange = tokio::time::timeout(
                REQUEST_DEADLINE,
                exchange(
                    stream,
                    &metrics,
                    &fleet,
                    &store,
                    || {
                        // The request is in: this connection is no longer the
                        // first to make room for a newcomer.
                        pending
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .spoke(ticket);
                    },
                    &answering,
                ),
            );
            tokio::select! {
                outcome = exchange => match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "metrics request failed"),
                    Err(_) => tracing::debug!("metrics request exceeded its deadline"),
                },
                _ = closed => tracing::debug!("metrics connection closed to make room for a newer one"),
            }
            pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .finish(ticket);
        });
        // Let the new connection read its request before the next accept.
        tokio::task::yield_now().await;
    }
}

/// Connections the metrics endpoint keeps open at once.
const MAX_SCRAPERS: usize = 16;

/// Scrapes rendered and written at once.
const MAX_ANSWERS: usize = 4;

/// A scrape must be read and answered within this, start to end.
pub const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The request must have arrived within this of the connection's accept.
pub const REQUEST_READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Requests are tiny: a request line and a few headers.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Reads one request (within `REQUEST_READ_DEADLINE`), calls `received`,
/// then answers it once one of `answering`'s places is free.
async fn exchange(
    mut stream: TcpStream,
    metrics: &Metrics,
    fleet: &Fleet,
    store: &StoreHandle,
    received: impl FnOnce(),
    answering: &tokio::sync::Semaphore,
) -> std::io::Result<()> {
    let request = tokio::time::timeout(REQUEST_READ_DEADLINE, read_request(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow request"))??;
    received();
    let _answering = answering
        .acquire()
        .await
        .map_err(|_| std::io::Error::other("the metrics endpoint is closing"))?;
    answer(stream, &request, metrics, fleet, store).await
}

/// The request's bytes, up to the end of its headers (or `MAX_REQUEST_BYTES`).
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") && request.len() < MAX_REQUEST_BYTES {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    Ok(request)
}

async fn answer(
    mut stream: TcpStream,
    request: &[u8],
    metrics: &Metrics,
    fleet: &Fleet,
    store: &StoreHandle,
) -> std::io::Result<()> {
    let request_line = String::from_utf8_lossy(request)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let (status, body) = if request_line.starts_with("GET /metrics ") || request_line == "GET /metrics" {
        // The host count comes from the listing index: a scrape never
        // queues behind the store thread's writes.
        let hosts = store.listings().counts().0;
        (
            "200 OK",
            metrics.render(fleet.online_count(), hosts, store.stats(), store.gauges()),
        )
    } else {
        ("404 Not Found", "only GET /metrics is served here\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_once() {
        let metrics = Metrics::default();
        Metrics::increment(&metrics.agent_events_applied);
        Metrics::increment(&metrics.agent_events_applied);
        Metrics::increment(&metrics.enrollments_refused);
        let store = StoreStatsSnapshot {
            writes: 7,
            flushes: 2,
            flush_nanos: 1_500_000,
            ..StoreStatsSnapshot::default()
        };
        let text = metrics.render(3, 5, store, &FleetGauges::default());
        assert!(
            text.contains("ccfleet_store_requests_total{kind=\"write\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("ccfleet_store_flushes_total 2\n"), "{text}");
        assert!(
            text.contains("ccfleet_store_seconds_total{part=\"flush\"} 0.001500\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE ccfleet_store_seconds_total counter").count(), 1);
        assert!(text.contains("ccfleet_agents_connected 3\n"), "{text}");
        assert!(text.contains("ccfleet_hosts 5\n"));
        assert!(text.contains("ccfleet_agent_events_total{outcome=\"applied\"} 2\n"));
        assert!(text.contains("ccfleet_enrollments_total{outcome=\"refused\"} 1\n"));
        assert_eq!(text.matches("# TYPE ccfleet_agent_events_total counter").count(), 1);
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(check_address("127.0.0.1:9464".parse().unwrap()).is_ok());
        assert!(check_address("[::1]:9464".parse().unwrap()).is_ok());
        let error = check_address("0.0.0.0:9464".parse().unwrap()).unwrap_err().to_string();
        assert!(
            error.starts_with("refusing to serve metrics on 0.0.0.0:9464"),
            "{error}"
        );
    }
}

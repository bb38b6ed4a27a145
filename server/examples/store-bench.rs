//! `store-bench`: the store's write path alone, without gRPC, TLS or a load
//! generator sharing the CPU (BENCHMARKS.md, "The store's write path").
//!
//! Opens a store in a temporary directory (or `--dir`), enrols `--hosts`
//! hosts with three apps each, then sends one durable event per host at
//! once through `StoreHandle::write`, the path an agent's report takes, and
//! waits for every acknowledgement (the answer comes after the batch's
//! flush). `--event inventory` (default) changes one app's version, as
//! `fleet-bench`'s burst does; `--event progress` stores a 1.5 KB
//! operation-progress event. `--rounds` repeats the burst. Prints the
//! acknowledged writes per second, the latency percentiles and where the
//! store thread's time went (its counters: running writes, flushing, waiting
//! in the queue), and the process's CPU.
//!
//! `cargo run --release -p ccfleet-server --example store-bench -- --hosts 10000`

#![allow(clippy::disallowed_methods)] // a benchmark: prints, reads /proc

use std::time::{Duration, Instant};

use ccfleet_server::model::{AgentEvent, AppRecord, HostFactsRecord, HostRecord, OperationPhaseRecord};
use ccfleet_server::store::{Store, StoreHandle, StoreStatsSnapshot};

fn argument(name: &str) -> Option<String> {
    let arguments: Vec<String> = std::env::args().collect();
    arguments
        .iter()
        .position(|argument| argument == name)
        .and_then(|index| arguments.get(index + 1))
        .cloned()
}

fn number(name: &str, default: usize) -> usize {
    argument(name).map_or(default, |value| {
        value.parse().unwrap_or_else(|_| panic!("{name} takes a number"))
    })
}

/// CPU seconds this process used so far (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |index: usize| fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn app(host: usize, name: &str, recipe: &str, version: &str) -> AppRecord {
    AppRecord {
        declared_version: Some(version.parse().unwrap()),
        ..AppRecord::converged(
            format!("{name}.host-{host}.example.org").parse().unwrap(),
            recipe.parse().unwrap(),
            Some(version.parse().unwrap()),
        )
    }
}

fn inventory(host: usize, ghost: &str) -> Vec<AppRecord> {
    vec![
        app(host, "blog", "ghost", ghost),
        app(host, "chat", "matrix-synapse", "5.0.0+v1.120.0"),
        app(host, "wiki", "hedgedoc", "2.1.0+1.10.0"),
    ]
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

fn millis(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

#[tokio::main]
async fn main() {
    let hosts = number("--hosts", 10_000);
    let rounds = number("--rounds", 3);
    let progress = match argument("--event").as_deref() {
        None | Some("inventory") => false,
        Some("progress") => true,
        Some(other) => panic!("--event is inventory or progress, not {other}"),
    };
    let temporary = tempfile::tempdir().expect("a temporary directory");
    let directory = argument("--dir").map_or_else(|| temporary.path().to_owned(), Into::into);
    let store = StoreHandle::start(Store::open(&directory).expect("the store opens")).expect("the store thread starts");

    // Enrol every host with its first inventory (not measured).
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(hosts);
    for index in 0..hosts {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let host_id: ccfleet_proto::HostId = format!("host-{index}").parse().unwrap();
            store
                .write(move |store| {
                    store.put_host(&HostRecord::new(host_id.clone(), 1))?;
                    store.register_host(
                        &host_id,
                        "0.1.0",
                        &HostFactsRecord::default(),
                        &inventory(index, "1.0.0+6.42.0-alpine"),
                        1,
                    )
                })
                .await
                .expect("enrolment is stored");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "store at {}: {hosts} hosts enrolled in {:.2} s",
        directory.display(),
        started.elapsed().as_secs_f64()
    );

    for round in 1..=rounds {
        let before: StoreStatsSnapshot = store.stats();
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(hosts);
        for index in 0..hosts {
            let store = store.clone();
            let event = if progress {
                AgentEvent::Progress {
                    operation_id: format!("op-{round}"),
                    domain: format!("blog.host-{index}.example.org").parse().unwrap(),
                    phase: OperationPhaseRecord::Deploying,
                    message: "x".repeat(1500),
                }
            } else {
                AgentEvent::Inventory(inventory(index, &format!("1.{round}.0+6.42.0-alpine")))
            };
            tasks.push(tokio::spawn(async move {
                let host_id: ccfleet_proto::HostId = format!("host-{index}").parse().unwrap();
                let sent = Instant::now();
                store
                    .write(move |store| store.apply_event(&host_id, round as u64, &event))
                    .await
                    .expect("the event is stored");
                sent.elapsed()
            }));
        }
        let mut latencies = Vec::with_capacity(hosts);
        for task in tasks {
            latencies.push(task.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_before;
        let after = store.stats();
        latencies.sort();
        let writes = after.writes - before.writes;
        let flushes = (after.flushes - before.flushes).max(1);
        println!(
            "round {round} ({}): {writes} writes acknowledged in {elapsed:.2} s = {:.0}/s; ack p50 {:.0} ms, p99 {:.0} ms; \
             process CPU {cpu:.2} s\n  store thread: writes {:.0} ms ({:.1} µs each), {flushes} flushes {:.0} ms \
             ({:.2} ms each, {:.0} writes each), busy {:.0} % of the wall time, {:.1} µs of its CPU per write; \
             queue wait {:.0} ms per write",
            if progress { "progress" } else { "inventory" },
            writes as f64 / elapsed,
            percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            millis(after.write_nanos - before.write_nanos),
            (after.write_nanos - before.write_nanos) as f64 / 1e3 / writes.max(1) as f64,
            millis(after.flush_nanos - before.flush_nanos),
            millis(after.flush_nanos - before.flush_nanos) / flushes as f64,
            writes as f64 / flushes as f64,
            millis(after.write_nanos - before.write_nanos + after.flush_nanos - before.flush_nanos) / 10.0 / elapsed,
            (after.cpu_nanos - before.cpu_nanos) as f64 / 1e3 / writes.max(1) as f64,
            millis(after.queue_nanos - before.queue_nanos) / writes.max(1) as f64,
        );
    }
    store.close().await;
}

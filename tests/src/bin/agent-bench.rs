//! `agent-bench`: the footprint of an idle agent (issue 12, item 5).
//!
//! Starts the real `ccfleet-server` and the real `ccfleet-agent` (build both
//! in the same profile first), the agent declaring `--apps` apps (20) of the
//! fixture recipe, deployed for real on the local Docker Engine through the
//! abra test double. The agent reaches Docker through a counting proxy
//! (`bench/docker_proxy.rs`, its socket given as `DOCKER_HOST`, which the
//! agent also passes on to abra). Once every app is observed converged at its
//! declared version and the host is online, it measures for `--minutes` (10):
//! the agent's resident memory every `--sample-seconds` (5), its CPU time and
//! that of the programs it ran (abra and the docker CLI it starts), the
//! Docker API calls per observation interval (the agent's configured
//! `observe_interval`) and which calls they are, and the abra invocations.
//! Prints a table, or with `--json` one JSON document with every figure.
//!
//! Usage: `cargo build --release -p ccfleet-server -p ccfleet -p ccfleet-agent
//! -p ccfleet-tests && target/release/agent-bench`. See BENCHMARKS.md.
//! Interrupting it (Ctrl-C) removes the stacks it deployed.

#![allow(clippy::disallowed_methods)] // starts the real server, agent and CLI, as an operator would

#[path = "../bench/common.rs"]
mod common;
#[path = "../bench/docker_proxy.rs"]
mod docker_proxy;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ccfleet_tests::agent::AgentProcess;
use ccfleet_tests::docker::{DockerTest, FIXTURE_RECIPE, V1_0, V1_1};
use ccfleet_tests::server::TestServer;
use ccfleet_tests::wait_for;
use common::{argument, check_flags, load_average, switch, usage, Usage};
use docker_proxy::{DockerProxy, Request};
use serde_json::{json, Value};

/// The engine's socket, which the proxy forwards to.
const ENGINE_SOCKET: &str = "/var/run/docker.sock";
/// The client kind of the agent's own calls ([`docker_proxy::client_kind`]).
const AGENT_CLIENT: &str = "agent";

#[tokio::main]
async fn main() {
    check_flags(
        "agent-bench [--apps N (20)] [--minutes N (10)] [--sample-seconds N (5)] [--json]\n\
         The footprint of an idle agent on the real Docker Engine; see BENCHMARKS.md.",
        &["--apps", "--minutes", "--sample-seconds", "--json"],
    );
    let apps = argument("--apps", 20);
    let minutes = argument("--minutes", 10);
    let sample_every = Duration::from_secs(argument("--sample-seconds", 5) as u64);
    let json_output = switch("--json");
    ccfleet_proto::tls::install_crypto_provider();

    // Dropped in reverse: the agent first (so nothing redeploys), then the
    // proxy, the server, and last the test world, which removes the stacks.
    let mut test = DockerTest::new("footprint");
    let domains: Vec<String> = (1..=apps).map(|index| test.domain(&format!("app{index:02}"))).collect();
    let server = TestServer::start(&test.path().join("data"), &[]);
    let token_file = test.path().join("token");
    std::fs::write(&token_file, server.create_token(&["--uses", "1"])).expect("the token file is written");
    let proxy = DockerProxy::start(&test.path().join("docker.sock"), Path::new(ENGINE_SOCKET))
        .expect("the Docker proxy listens in the temporary directory");
    let config_path = test.path().join("agent.toml");
    std::fs::write(&config_path, agent_config(&server.url(), &test, &token_file, &domains))
        .expect("the agent config is written");
    let settings = ccfleet_agent::config::Config::load(&config_path).expect("the benchmark's agent config is valid");
    let docker_host = std::path::PathBuf::from(proxy.docker_host());
    let agent = AgentProcess::start_with_env(
        &config_path,
        &test.path().join("control.sock"),
        &[("DOCKER_HOST", &docker_host)],
    );

    let setup_started = Instant::now();
    eprintln!(
        "agent {} (pid {}) deploying {apps} apps of {FIXTURE_RECIPE}; load average {}",
        ccfleet_tests::binary("ccfleet-agent").display(),
        agent.pid(),
        load_average()
    );
    let window = Duration::from_secs(minutes as u64 * 60);
    let measured = tokio::select! {
        measured = async {
            converge(&agent, &server, &proxy, &domains).await;
            let setup = setup_started.elapsed();
            eprintln!(
                "all {apps} apps converged and the host online after {:.0} s; measuring for {minutes} min",
                setup.as_secs_f64()
            );
            let window = measure(&agent, &test, &proxy, window, sample_every).await;
            (setup, window)
        } => Some(measured),
        _ = tokio::signal::ctrl_c() => None,
    };
    let Some((setup, window)) = measured else {
        eprintln!("interrupted: removing the stacks");
        return;
    };

    let figures = figures(&window, &settings, agent.pid(), apps, setup);
    if json_output {
        println!("{}", serde_json::to_string_pretty(&figures).expect("figures are JSON"));
    } else {
        print!("{}", table(&figures));
    }
}

/// The agent's config: this test world's directories and the abra double,
/// the observation and reconcile intervals left at their defaults, and one
/// stateless app of the fixture recipe per domain (versions alternating).
fn agent_config(url: &str, test: &DockerTest, token_file: &Path, domains: &[String]) -> String {
    let apps: String = domains
        .iter()
        .enumerate()
        .map(|(index, domain)| {
            let version = if index % 2 == 0 { V1_0 } else { V1_1 };
            format!(
                "[[app]]\ndomain = {domain:?}\nrecipe = {FIXTURE_RECIPE:?}\nversion = {version:?}\n\
                 stateful = false\ndeploy_timeout = \"90s\"\n\n"
            )
        })
        .collect();
    format!(
        "[server]\nurl = {url:?}\njoin_token_file = {token:?}\n\n[host]\nid = \"footprint\"\n\n\
         [agent]\nstate_dir = {state:?}\ncontrol_socket = {socket:?}\nalerts_dir = {alerts:?}\n\n{abra}\n{apps}",
        token = token_file.display().to_string(),
        state = test.path().join("state").display().to_string(),
        socket = test.path().join("control.sock").display().to_string(),
        alerts = test.path().join("alerts").display().to_string(),
        abra = test.abra_section(),
    )
}

/// Waits until the agent's own first reconcile (at start) has finished for
/// every app, its status shows every app converged at its declared version,
/// the server shows the host online, and the Docker socket has been quiet for
/// a second (the observation that reconcile asked for is over), so the window
/// starts on an idle agent.
async fn converge(agent: &AgentProcess, server: &TestServer, proxy: &DockerProxy, domains: &[String]) {
    wait_for(
        "the agent's first reconcile of every app",
        Duration::from_secs(600),
        || {
            let log = agent.log();
            let expected = domains.len();
            async move {
                // `reconcile_app` logs "reconciled" (info) when an app is done.
                let reconciled = log.lines().filter(|line| line.contains(" reconciled ")).count();
                if reconciled >= expected {
                    Ok(())
                } else {
                    Err(format!(
                        "{reconciled} of {expected} reconciled; log tail:\n{}",
                        tail(&log, 10)
                    ))
                }
            }
        },
    )
    .await;
    wait_for(
        "every app converged at its declared version",
        Duration::from_secs(300),
        || {
            let status = agent.status();
            let expected = domains.len();
            async move {
                let status = status?;
                let apps = status["apps"].as_array().cloned().unwrap_or_default();
                let converged = apps
                    .iter()
                    .filter(|app| {
                        app["observed"]["state"] == "converged"
                            && app["observed"]["observed_version"] == app["declared_version"]
                    })
                    .count();
                if converged == expected && apps.len() == expected {
                    Ok(())
                } else {
                    Err(format!("{converged} of {expected} converged"))
                }
            }
        },
    )
    .await;
    wait_for("the host online at the server", Duration::from_secs(60), || {
        let hosts = server.cli_json(&["hosts"]);
        async move {
            let online = hosts
                .as_array()
                .into_iter()
                .flatten()
                .any(|host| host["host_id"] == "footprint" && host["status"] == "online");
            if online {
                Ok(())
            } else {
                Err(hosts.to_string())
            }
        }
    })
    .await;
    wait_for("a quiet second on the Docker socket", Duration::from_secs(60), || {
        let last = proxy.last_request();
        async move {
            match last {
                Some(at) if at.elapsed() < Duration::from_secs(1) => {
                    Err(format!("last request {:?} ago", at.elapsed()))
                }
                _ => Ok(()),
            }
        }
    })
    .await;
}

/// What one measuring window saw.
struct Window {
    seconds: f64,
    /// (seconds into the window, reading), the first at 0 and the last at the end.
    samples: Vec<(f64, Usage)>,
    requests: Vec<(f64, Request)>,
    abra_invocations: Vec<String>,
    load_average_before: String,
    load_average_after: String,
}

/// Leaves the agent alone for `length`, reading only `/proc` meanwhile.
async fn measure(
    agent: &AgentProcess,
    test: &DockerTest,
    proxy: &DockerProxy,
    length: Duration,
    sample_every: Duration,
) -> Window {
    let pid = agent.pid();
    let abra_before = test.abra_log().len();
    let load_average_before = load_average();
    let start = Instant::now();
    let mut samples = vec![(0.0, usage(pid))];
    let mut next_progress = Duration::from_secs(60);
    while start.elapsed() < length {
        tokio::time::sleep(sample_every.min(length.saturating_sub(start.elapsed()))).await;
        let reading = usage(pid);
        assert!(
            Path::new(&format!("/proc/{pid}")).exists() && reading.rss_mib > 0.0,
            "the agent exited during the measurement; log tail:\n{}",
            tail(&agent.log(), 30)
        );
        samples.push((start.elapsed().as_secs_f64(), reading));
        if start.elapsed() >= next_progress {
            eprintln!(
                "{:>3} min: RSS {:.1} MiB, CPU {:.2} s so far",
                next_progress.as_secs() / 60,
                reading.rss_mib,
                reading.cpu_seconds + reading.children_cpu_seconds
                    - samples[0].1.cpu_seconds
                    - samples[0].1.children_cpu_seconds
            );
            next_progress += Duration::from_secs(60);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let requests = proxy
        .requests_since(start)
        .into_iter()
        .map(|request| (request.at.duration_since(start).as_secs_f64(), request))
        .filter(|(at, _)| *at <= seconds)
        .collect();
    Window {
        seconds,
        samples,
        requests,
        abra_invocations: test.abra_log().into_iter().skip(abra_before).collect(),
        load_average_before,
        load_average_after: load_average(),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// Every figure of the run, as the JSON document `--json` prints.
fn figures(
    window: &Window,
    settings: &ccfleet_agent::config::Config,
    agent_pid: u32,
    apps: usize,
    setup: Duration,
) -> Value {
    let observe_interval = settings.agent.observe_interval.as_secs_f64();
    let (first, last) = (window.samples[0].1, window.samples[window.samples.len() - 1].1);
    let rss: Vec<f64> = window.samples.iter().map(|(_, reading)| reading.rss_mib).collect();
    let rss_average = rss.iter().sum::<f64>() / rss.len() as f64;
    let rss_max = rss.iter().copied().fold(0.0, f64::max);
    let rss_min = rss.iter().copied().fold(f64::INFINITY, f64::min);
    let own_cpu = last.cpu_seconds - first.cpu_seconds;
    let children_cpu = last.children_cpu_seconds - first.children_cpu_seconds;
    let busiest_sample = window
        .samples
        .windows(2)
        .map(|pair| {
            let ((before_at, before), (after_at, after)) = (pair[0], pair[1]);
            let cpu = after.cpu_seconds + after.children_cpu_seconds - before.cpu_seconds - before.children_cpu_seconds;
            cpu / (after_at - before_at).max(f64::EPSILON) * 100.0
        })
        .fold(0.0, f64::max);

    // Requests by observation interval (bins of the configured length from
    // the window's start; the agent's own ticks are not aligned with it, but
    // each bin holds one tick).
    let intervals = (window.seconds / observe_interval).floor().max(1.0) as usize;
    let mut per_interval: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut by_call: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut peer_mismatches = 0;
    for (at, request) in &window.requests {
        let bin = ((at / observe_interval) as usize).min(intervals - 1);
        per_interval
            .entry(request.client.clone())
            .or_insert_with(|| vec![0; intervals])[bin] += 1;
        *by_call
            .entry((request.client.clone(), request.method.clone(), request.pattern.clone()))
            .or_default() += 1;
        let from_agent_process = request.peer_pid == i32::try_from(agent_pid).ok();
        if from_agent_process != (request.client == AGENT_CLIENT) {
            peer_mismatches += 1;
        }
    }
    let clients: Vec<Value> = per_interval
        .iter()
        .map(|(client, counts)| {
            let total: u64 = counts.iter().sum();
            let mut sorted = counts.clone();
            sorted.sort_unstable();
            let mut calls: Vec<(&(String, String, String), &u64)> =
                by_call.iter().filter(|((kind, _, _), _)| kind == client).collect();
            calls.sort_by(|left, right| right.1.cmp(left.1).then(left.0.cmp(right.0)));
            json!({
                "client": client,
                "total": total,
                "per_interval": {
                    "average": round(total as f64 / intervals as f64, 2),
                    "min": sorted[0],
                    "median": sorted[sorted.len() / 2],
                    "max": sorted[sorted.len() - 1],
                    "intervals_with_calls": counts.iter().filter(|count| **count > 0).count(),
                    "counts": counts,
                },
                "calls": calls.iter().map(|((_, method, pattern), count)| json!({
                    "method": method,
                    "path": pattern,
                    "total": count,
                    "per_interval": round(**count as f64 / intervals as f64, 2),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let total_calls = window.requests.len();

    json!({
        "apps": apps,
        "agent_binary": ccfleet_tests::binary("ccfleet-agent"),
        "observe_interval_seconds": observe_interval,
        "reconcile_interval_seconds": settings.agent.reconcile_interval.as_secs_f64(),
        "setup_seconds": round(setup.as_secs_f64(), 1),
        "window_seconds": round(window.seconds, 1),
        "load_average": {"before": window.load_average_before, "after": window.load_average_after},
        "rss_mib": {
            "average": round(rss_average, 2),
            "min": round(rss_min, 2),
            "max": round(rss_max, 2),
            "peak_since_start_vmhwm": round(last.peak_rss_mib, 2),
            "samples": rss.len(),
            "target_below": 30,
        },
        "cpu": {
            "agent_seconds": round(own_cpu, 2),
            "children_seconds": round(children_cpu, 2),
            "percent_of_one_core": round((own_cpu + children_cpu) / window.seconds * 100.0, 3),
            "agent_percent_of_one_core": round(own_cpu / window.seconds * 100.0, 3),
            "busiest_sample_percent": round(busiest_sample, 2),
            "target_below_percent": 0.5,
        },
        "docker_calls": {
            "total": total_calls,
            "intervals": intervals,
            "per_interval_average": round(total_calls as f64 / intervals as f64, 2),
            "client_kind_disagrees_with_peer_process": peer_mismatches,
            "by_client": clients,
        },
        "abra_invocations": window.abra_invocations,
    })
}

/// The terminal form of [`figures`].
fn table(figures: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, value: String| out.push_str(&format!("{label:<44} {value}\n"));
    let f = |value: &Value| value.as_f64().unwrap_or(0.0);
    line(
        &mut out,
        "idle agent, declared apps",
        format!(
            "{} ({})",
            figures["apps"],
            figures["agent_binary"].as_str().unwrap_or("")
        ),
    );
    line(
        &mut out,
        "observe / reconcile interval",
        format!(
            "{} s / {} s",
            figures["observe_interval_seconds"], figures["reconcile_interval_seconds"]
        ),
    );
    line(
        &mut out,
        "window (setup before it)",
        format!(
            "{:.0} s ({:.0} s)",
            f(&figures["window_seconds"]),
            f(&figures["setup_seconds"])
        ),
    );
    line(
        &mut out,
        "load average before / after",
        format!(
            "{} / {}",
            figures["load_average"]["before"].as_str().unwrap_or(""),
            figures["load_average"]["after"].as_str().unwrap_or("")
        ),
    );
    let rss = &figures["rss_mib"];
    line(
        &mut out,
        "RSS avg / min / max (target < 30 MiB)",
        format!(
            "{:.1} / {:.1} / {:.1} MiB ({} samples); VmHWM since start {:.1} MiB",
            f(&rss["average"]),
            f(&rss["min"]),
            f(&rss["max"]),
            rss["samples"],
            f(&rss["peak_since_start_vmhwm"])
        ),
    );
    let cpu = &figures["cpu"];
    line(
        &mut out,
        "CPU, % of one core (target < 0.5 %)",
        format!(
            "{:.3} % (agent {:.2} s + its children {:.2} s); busiest sample {:.1} %",
            f(&cpu["percent_of_one_core"]),
            f(&cpu["agent_seconds"]),
            f(&cpu["children_seconds"]),
            f(&cpu["busiest_sample_percent"])
        ),
    );
    let calls = &figures["docker_calls"];
    line(
        &mut out,
        "Docker API calls, total / per interval",
        format!(
            "{} / {:.1} over {} intervals (client kind and peer process disagree: {})",
            calls["total"],
            f(&calls["per_interval_average"]),
            calls["intervals"],
            calls["client_kind_disagrees_with_peer_process"]
        ),
    );
    for client in calls["by_client"].as_array().into_iter().flatten() {
        let per = &client["per_interval"];
        out.push_str(&format!(
            "  {}: {} calls; per interval avg {:.2}, min {}, median {}, max {}; in {} intervals\n",
            client["client"].as_str().unwrap_or(""),
            client["total"],
            f(&per["average"]),
            per["min"],
            per["median"],
            per["max"],
            per["intervals_with_calls"]
        ));
        for call in client["calls"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    {:>7} {:<6} {:<36} {:>8.2} per interval\n",
                call["total"],
                call["method"].as_str().unwrap_or(""),
                call["path"].as_str().unwrap_or(""),
                f(&call["per_interval"])
            ));
        }
    }
    let abra = figures["abra_invocations"].as_array().cloned().unwrap_or_default();
    line(&mut out, "abra invocations in the window", abra.len().to_string());
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for invocation in &abra {
        // One line per command, whichever app it was for.
        let command: Vec<&str> = invocation
            .as_str()
            .unwrap_or("")
            .split(' ')
            .map(|word| {
                if word.ends_with(".ccfleet.test") {
                    "<domain>"
                } else {
                    word
                }
            })
            .collect();
        *counted.entry(command.join(" ")).or_default() += 1;
    }
    for (invocation, count) in counted {
        out.push_str(&format!("  {count:>5} x abra {invocation}\n"));
    }
    out
}

//! `agent-campaign`: seeded upgrades of a stateful app under the real
//! `ccfleet-agent` on the real Docker Engine (abra double, real server), each
//! with a SIGKILL of the agent at a moment drawn from the seed and a restart,
//! each judged by the invariants of `ccfleet_tests::agent_campaign`
//! (RELIABILITY.md, "The real agent under SIGKILL").
//!
//! Usage: `agent-campaign --runs N --seed S [--parallel P] [--max-kill-ms M] [--plans]`
//! (`--plans` prints each run's target and kill moment and runs nothing).
//! Run `i` uses seed `S + i`; `--seed <seed> --runs 1` replays one (its plan;
//! the kill lands at the same moment, the agent's pace is the machine's).
//! Prints a JSON line per run and a summary; exits 1 on any violation. With
//! `AGENT_CAMPAIGN_LOGS=DIR`, each run's agent log is kept as `DIR/agent-<seed>.log`.

#![allow(clippy::disallowed_methods)] // starts the real agent, server and docker, as an operator would

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccfleet_tests::agent_campaign::world::{run, RunReport};
use ccfleet_tests::agent_campaign::{plan, Tally};

const USAGE: &str = "usage: agent-campaign --runs N --seed S [--parallel P] [--max-kill-ms M] [--plans]";

fn argument(name: &str, default: u64) -> u64 {
    let arguments: Vec<String> = std::env::args().collect();
    match arguments.iter().position(|argument| argument == name) {
        None => default,
        Some(index) => match arguments.get(index + 1).map(|value| value.parse::<u64>()) {
            Some(Ok(value)) => value,
            _ => {
                eprintln!("agent-campaign: {name} needs a whole number\n{USAGE}");
                std::process::exit(2);
            }
        },
    }
}

/// Runs the plan of `seed` on a thread of its own, with a runtime of its own
/// (the run's waits call the CLIs and Docker synchronously); a panic of the
/// run is a violation like any other.
fn run_seed(seed: u64, max_kill: Duration) -> RunReport {
    let plan = plan(seed, max_kill);
    let started = Instant::now();
    let thread_plan = plan.clone();
    let joined = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the run")
            .block_on(run(thread_plan))
    })
    .join();
    joined.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
            .unwrap_or_else(|| "a panic without a message".into());
        RunReport {
            plan,
            kill_phase: "none".into(),
            outcome: "none".into(),
            violations: vec![format!("the run panicked: {message}")],
            elapsed: started.elapsed(),
        }
    })
}

fn main() {
    if std::env::args().any(|argument| argument == "--help" || argument == "-h") {
        println!("{USAGE}");
        return;
    }
    let runs = argument("--runs", 10);
    let first = argument("--seed", 1);
    let parallel = argument("--parallel", 1).max(1);
    let max_kill = Duration::from_millis(argument("--max-kill-ms", 60_000));
    if max_kill.is_zero() {
        eprintln!("agent-campaign: --max-kill-ms must be at least 1\n{USAGE}");
        std::process::exit(2);
    }
    if std::env::args().any(|argument| argument == "--plans") {
        for seed in first..first + runs {
            let plan = plan(seed, max_kill);
            println!(
                "{}",
                serde_json::json!({
                    "seed": seed,
                    "target": plan.target,
                    "kill_after_ms": plan.kill_after.as_millis() as u64,
                    "entries": plan.entries.len(),
                })
            );
        }
        return;
    }
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let reports = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..parallel.min(runs))
        .map(|_| {
            let (next, reports) = (next.clone(), reports.clone());
            std::thread::spawn(move || loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= runs {
                    return;
                }
                let report = run_seed(first + index, max_kill);
                println!(
                    "{}",
                    serde_json::json!({
                        "seed": report.plan.seed,
                        "target": report.plan.target,
                        "kill_after_ms": report.plan.kill_after.as_millis() as u64,
                        "kill_phase": report.kill_phase,
                        "outcome": report.outcome,
                        "seconds": report.elapsed.as_secs(),
                        "violations": report.violations,
                    })
                );
                reports.lock().expect("the reports").push(report);
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a campaign worker");
    }
    let mut reports = std::mem::take(&mut *reports.lock().expect("the reports"));
    reports.sort_by_key(|report| report.plan.seed);
    let mut tally = Tally::default();
    for report in &reports {
        tally.add(
            &report.plan,
            &report.kill_phase,
            &report.outcome,
            report.violations.len(),
        );
        if !report.violations.is_empty() {
            println!(
                "VIOLATION seed {} (replay: agent-campaign --seed {} --runs 1):",
                report.plan.seed, report.plan.seed
            );
            for violation in &report.violations {
                println!("  {violation}");
            }
        }
    }
    println!(
        "agent-campaign: {} runs (seeds {}..={}), {} violating runs, wall time {} s",
        tally.runs,
        first,
        first + runs.saturating_sub(1),
        tally.violating_runs,
        started.elapsed().as_secs()
    );
    println!(
        "{}",
        serde_json::json!({
            "kills_by_phase": tally.kills_by_phase,
            "outcomes": tally.outcomes,
            "targets": tally.targets,
        })
    );
    if tally.violating_runs > 0 {
        std::process::exit(1);
    }
}

//! `fault-campaign`: seeded runs of rollouts over the real server and
//! simulated agents under injected faults, each checked against the
//! campaign's invariants (see `ccfleet_tests::campaign` and RELIABILITY.md).
//!
//! Usage: `fault-campaign --runs N --seed S [--min-hosts A --max-hosts B]`.
//! Run `i` uses seed `S + i`; a violation prints its seed and the shortest
//! fault schedule that still fails (found by dropping faults one at a time),
//! and `--seed <that seed> --runs 1` replays it. Exits 1 on any violation.

#![allow(clippy::disallowed_methods)] // starts the real server and CLI, as an operator would

use std::collections::BTreeMap;
use std::time::Instant;

use ccfleet_tests::campaign::{check, plan, run::run, Fault, Plan};

fn argument(name: &str, default: u64) -> u64 {
    let arguments: Vec<String> = std::env::args().collect();
    match arguments.iter().position(|argument| argument == name) {
        None => default,
        Some(index) => match arguments.get(index + 1).map(|value| value.parse::<u64>()) {
            Some(Ok(value)) => value,
            _ => {
                eprintln!("fault-campaign: {name} needs a whole number");
                std::process::exit(2);
            }
        },
    }
}

/// The violations of `plan` run with `faults` (an error of the run itself counts as one).
async fn violations(plan: &Plan, faults: &[Fault]) -> (Vec<String>, ccfleet_tests::campaign::run::Outcome) {
    let directory = tempfile::tempdir().expect("a temporary directory");
    match run(plan, faults, directory.path()).await {
        Ok(outcome) => {
            let found = outcome
                .histories
                .iter()
                .flat_map(|history| check(plan, history))
                .collect();
            (found, outcome)
        }
        Err(error) => (vec![format!("the run failed: {error:#}")], Default::default()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for argument in std::env::args().skip(1) {
        if argument == "--help" || argument == "-h" {
            println!("usage: fault-campaign --runs N --seed S [--min-hosts A] [--max-hosts B]");
            return;
        }
    }
    let runs = argument("--runs", 10);
    let seed = argument("--seed", 1);
    let (min_hosts, max_hosts) = (argument("--min-hosts", 10), argument("--max-hosts", 200));
    if min_hosts == 0 || min_hosts > max_hosts {
        eprintln!("fault-campaign: --min-hosts must be at least 1 and at most --max-hosts");
        std::process::exit(2);
    }
    let started = Instant::now();
    let mut injected: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut states: BTreeMap<String, u32> = BTreeMap::new();
    let mut hosts = 0;
    let mut failed = Vec::new();
    for run_seed in seed..seed + runs {
        let plan = plan(run_seed, min_hosts, max_hosts);
        hosts += plan.hosts.len();
        let run_started = Instant::now();
        let (found, outcome) = violations(&plan, &plan.faults).await;
        for (kind, count) in &outcome.injected {
            *injected.entry(kind).or_default() += count;
        }
        for (state, count) in &outcome.states {
            *states.entry(state.clone()).or_default() += count;
        }
        println!(
            "seed {run_seed}: {} hosts, {} faults, rollouts {:?}, {:.1} s, {}",
            plan.hosts.len(),
            plan.faults.len(),
            outcome.states,
            run_started.elapsed().as_secs_f64(),
            if found.is_empty() {
                "ok".to_owned()
            } else {
                format!("{} violations", found.len())
            }
        );
        if found.is_empty() {
            continue;
        }
        // Shrink: drop each fault in turn while the run still fails.
        let mut schedule = plan.faults.clone();
        let mut index = 0;
        while index < schedule.len() {
            let mut fewer = schedule.clone();
            fewer.remove(index);
            if violations(&plan, &fewer).await.0.is_empty() {
                index += 1;
            } else {
                schedule = fewer;
            }
        }
        println!("VIOLATION seed {run_seed}: {found:#?}");
        println!("  shortest failing fault schedule: {schedule:?}");
        println!("  replay: fault-campaign --seed {run_seed} --runs 1 --min-hosts {min_hosts} --max-hosts {max_hosts}");
        if !outcome.log.is_empty() {
            let tail: Vec<&str> = outcome.log.lines().rev().take(30).collect();
            println!("  server log (last lines):");
            for line in tail.iter().rev() {
                println!("    {line}");
            }
        }
        failed.push(run_seed);
    }
    println!(
        "campaign: {runs} runs (seeds {seed}..={}), {hosts} hosts, faults {injected:?}, rollouts {states:?}, {:.1} s, {} violating runs {failed:?}",
        seed + runs - 1,
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

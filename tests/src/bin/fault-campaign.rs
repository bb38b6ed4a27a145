//! `fault-campaign`: seeded runs of rollouts over the real server and
//! simulated agents under injected faults, each checked against the
//! campaign's invariants (see `ccfleet_tests::campaign` and RELIABILITY.md).
//!
//! Usage: `fault-campaign --runs N --seed S [--min-hosts A --max-hosts B]
//! [--jobs J] [--record FILE] [--logs DIR] [--time-limit SECONDS]
//! [--faults I,J,..] [--dry-run]`. Run `i` uses seed `S + i`;
//! `--jobs` runs that many at once (each with its own server). A violation
//! prints its seed and the shortest fault schedule that still fails (found
//! by dropping faults one at a time); `--seed <that seed> --runs 1` replays
//! the run, and `--faults` with the printed positions replays it with only
//! the shortest schedule. `--record` appends every line printed to FILE as
//! it goes (faults injected by kind included), so a campaign cut short
//! keeps its counts; `--time-limit` starts no run after that many seconds;
//! `--logs` saves a violating run's server log there; `--dry-run` prints
//! the plans (settings, hosts, fault schedule) and runs nothing. Exits 1 on any violation.

#![allow(clippy::disallowed_methods)] // starts the real server and CLI, as an operator would

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use ccfleet_tests::campaign::run::{run, Outcome};
use ccfleet_tests::campaign::{check, plan, positions, shrink, Fault, Plan};

const USAGE: &str = "usage: fault-campaign --runs N --seed S [--min-hosts A] [--max-hosts B] [--jobs J] [--record FILE] [--logs DIR] [--time-limit SECONDS] [--faults I,J,..] [--dry-run]";

fn value(name: &str) -> Option<String> {
    let arguments: Vec<String> = std::env::args().collect();
    let index = arguments.iter().position(|argument| argument == name)?;
    match arguments.get(index + 1) {
        Some(value) => Some(value.clone()),
        None => {
            eprintln!("fault-campaign: {name} needs a value");
            std::process::exit(2);
        }
    }
}

fn argument(name: &str, default: u64) -> u64 {
    match value(name).map(|value| value.parse::<u64>()) {
        None => default,
        Some(Ok(value)) => value,
        Some(Err(_)) => {
            eprintln!("fault-campaign: {name} needs a whole number");
            std::process::exit(2);
        }
    }
}

/// Prints a line and appends it to the record file, if any.
struct Report {
    record: Option<std::fs::File>,
}

impl Report {
    fn line(&mut self, line: String) {
        println!("{line}");
        if let Some(file) = &mut self.record {
            if let Err(error) = writeln!(file, "{line}") {
                eprintln!("fault-campaign: cannot append to the record file: {error}");
                self.record = None;
            }
        }
    }
}

/// The violations of `plan` run with `faults` (an error or a panic of the run itself counts as one).
async fn violations(plan: Plan, faults: Vec<Fault>) -> (Vec<String>, Outcome) {
    let task = tokio::spawn(async move {
        let directory = tempfile::tempdir().expect("a temporary directory");
        match run(&plan, &faults, directory.path()).await {
            Ok(outcome) => {
                let found = outcome
                    .histories
                    .iter()
                    .flat_map(|history| check(&plan, history))
                    .collect();
                (found, outcome)
            }
            Err(error) => (vec![format!("the run failed: {error:#}")], Outcome::default()),
        }
    });
    match task.await {
        Ok(found) => found,
        Err(error) => (vec![format!("the run panicked: {error}")], Outcome::default()),
    }
}

/// A plan as `--dry-run` prints it: the settings, the hosts by behaviour and the schedule.
fn describe(plan: &Plan, faults: &[Fault]) -> String {
    let mut kinds: BTreeMap<&str, u32> = BTreeMap::new();
    for host in &plan.hosts {
        *kinds.entry(host.kind.name()).or_default() += 1;
    }
    let mut text = format!(
        "seed {}: {} hosts {kinds:?}, canary {}, batch {}, max failures {}, host deadline {:?}, pause after canary {}, rollback on halt {}, derived target {}, hosts {}, operator {:?}\n",
        plan.seed,
        plan.hosts.len(),
        plan.canary,
        plan.batch,
        plan.max_failures,
        plan.host_deadline,
        plan.pause_after_canary,
        plan.rollback_on_halt,
        plan.derive_target,
        plan.site.map_or("all".to_owned(), |site| format!("site={site}")),
        plan.operator
    );
    for fault in faults {
        text.push_str(&format!("  {fault:?}\n"));
    }
    text
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for argument in std::env::args().skip(1) {
        if argument == "--help" || argument == "-h" {
            println!("{USAGE}");
            return;
        }
    }
    let runs = argument("--runs", 10);
    let seed = argument("--seed", 1);
    let jobs = argument("--jobs", 1).max(1) as usize;
    let (min_hosts, max_hosts) = (argument("--min-hosts", 10), argument("--max-hosts", 200));
    if min_hosts == 0 || min_hosts > max_hosts {
        eprintln!("fault-campaign: --min-hosts must be at least 1 and at most --max-hosts");
        std::process::exit(2);
    }
    let only: Option<Vec<usize>> = value("--faults").map(|list| {
        let parsed: Result<Vec<usize>, _> = list
            .split(',')
            .filter(|item| !item.is_empty())
            .map(str::parse)
            .collect();
        match parsed {
            Ok(positions) if runs == 1 => positions,
            Ok(_) => {
                eprintln!("fault-campaign: --faults replays one run: give --runs 1");
                std::process::exit(2);
            }
            Err(_) => {
                eprintln!("fault-campaign: --faults needs positions such as 0,3,5");
                std::process::exit(2);
            }
        }
    });
    let record = value("--record").map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|error| {
                eprintln!("fault-campaign: cannot open the record file {path}: {error}");
                std::process::exit(2);
            })
    });
    let mut report = Report { record };
    let logs = value("--logs");
    let schedule_of = |plan: &Plan| -> Vec<Fault> {
        match &only {
            None => plan.faults.clone(),
            Some(positions) => positions
                .iter()
                .filter_map(|&index| plan.faults.get(index).copied())
                .collect(),
        }
    };
    if std::env::args().any(|argument| argument == "--dry-run") {
        for run_seed in seed..seed + runs {
            let plan = plan(run_seed, min_hosts, max_hosts);
            println!("{}", describe(&plan, &schedule_of(&plan)));
        }
        return;
    }
    let started = Instant::now();
    let mut injected: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut behaviours: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut states: BTreeMap<String, u32> = BTreeMap::new();
    let (mut hosts, mut done, mut selected) = (0, 0, 0);
    let mut failed = Vec::new();
    // Runs whose fleet could not be set up: no rollout ran, nothing was checked.
    let mut unset = Vec::new();
    // With --time-limit no run starts after it; the summary says how many ran.
    let time_limit = value("--time-limit").map(|_| std::time::Duration::from_secs(argument("--time-limit", 0)));
    let mut seeds = seed..seed + runs;
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < jobs {
            if time_limit.is_some_and(|limit| started.elapsed() >= limit) {
                break;
            }
            let Some(run_seed) = seeds.next() else { break };
            let plan = plan(run_seed, min_hosts, max_hosts);
            let faults = schedule_of(&plan);
            running.spawn(async move {
                let run_started = Instant::now();
                let (found, outcome) = violations(plan.clone(), faults.clone()).await;
                (plan, faults, found, outcome, run_started.elapsed())
            });
        }
        let Some(finished) = running.join_next().await else {
            break;
        };
        let (plan, faults, found, outcome, took) = finished.expect("a run's task reports, its panics caught");
        done += 1;
        hosts += plan.hosts.len();
        if plan.site.is_some() {
            selected += 1;
        }
        for (kind, count) in &outcome.injected {
            *injected.entry(kind).or_default() += count;
        }
        for (kind, count) in &outcome.hosts {
            *behaviours.entry(kind).or_default() += count;
        }
        for (state, count) in &outcome.states {
            *states.entry(state.clone()).or_default() += count;
        }
        report.line(format!(
            "seed {}: {} hosts{}, faults {:?}, rollouts {:?}, {:.1} s, {}",
            plan.seed,
            plan.hosts.len(),
            plan.site
                .map_or(String::new(), |site| format!(" (--hosts site={site})")),
            outcome.injected,
            outcome.states,
            took.as_secs_f64(),
            if outcome.setup_failed.is_some() {
                "not set up".to_owned()
            } else if found.is_empty() {
                "ok".to_owned()
            } else {
                format!("{} violations", found.len())
            }
        ));
        if done % 50 == 0 {
            report.line(format!(
                "progress: {done} runs, {hosts} hosts, faults {injected:?}, rollouts {states:?}, {:.1} s, {} violating runs {failed:?}, {} not set up",
                started.elapsed().as_secs_f64(),
                failed.len(),
                unset.len()
            ));
        }
        if let Some(error) = &outcome.setup_failed {
            report.line(format!("  seed {}: the fleet could not be set up: {error}", plan.seed));
            unset.push(plan.seed);
            continue;
        }
        if found.is_empty() {
            continue;
        }
        failed.push(plan.seed);
        report.line(format!("VIOLATION seed {}: {found:#?}", plan.seed));
        if let Some(diagnosis) = &outcome.diagnosis {
            report.line(format!("  when the bound passed: {diagnosis}"));
        }
        if let (Some(directory), false) = (&logs, outcome.log.is_empty()) {
            let path = std::path::Path::new(directory).join(format!("seed-{}.log", plan.seed));
            match std::fs::write(&path, &outcome.log) {
                Ok(()) => report.line(format!("  server log: {}", path.display())),
                Err(error) => eprintln!("fault-campaign: cannot write {}: {error}", path.display()),
            }
        } else if !outcome.log.is_empty() {
            report.line("  server log (last lines):".to_owned());
            let tail: Vec<&str> = outcome.log.lines().rev().take(30).collect();
            for line in tail.iter().rev() {
                report.line(format!("    {line}"));
            }
        }
        let shortest = shrink(&faults, |fewer| {
            let plan = plan.clone();
            async move { !violations(plan, fewer).await.0.is_empty() }
        })
        .await;
        let replay_positions: Vec<String> = positions(&plan.faults, &shortest)
            .iter()
            .map(usize::to_string)
            .collect();
        report.line(format!("  shortest failing fault schedule: {shortest:?}"));
        report.line(format!(
            "  replay: fault-campaign --seed {} --runs 1 --min-hosts {min_hosts} --max-hosts {max_hosts} (only the shortest schedule: --faults {})",
            plan.seed,
            replay_positions.join(",")
        ));
    }
    report.line(format!(
        "campaign: {done} runs (seeds {seed}..={}; {selected} with a --hosts selector), {hosts} hosts {behaviours:?}, faults {injected:?}, rollouts {states:?}, {:.1} s, {} violating runs {failed:?}, {} runs not set up {unset:?}",
        seed + done.max(1) - 1,
        started.elapsed().as_secs_f64(),
        failed.len(),
        unset.len()
    ));
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

//! The seeded fault campaign's pure half: a run's plan drawn from its seed
//! (fleet, rollout settings, fault schedule) and the invariants checked over
//! the history a run records. The effects (real server, simulated agents,
//! the CLI) live in `run.rs`; `fault-campaign` drives both.

pub mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A small deterministic generator (xorshift64*): a seed replays a run's plan.
#[derive(Debug, Clone)]
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Random {
        // splitmix the seed so that neighbouring seeds give unrelated plans
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Random((z ^ (z >> 31)).max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How one simulated host behaves during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Upgrades and reports success after `delay_ms`.
    Healthy,
    /// Its new version fails its health gate: the agent rolls back.
    Failing,
    /// Accepts the command and never answers: times out at the host deadline.
    Hung,
    /// Offline for the whole run (skipped at the start).
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    pub id: String,
    pub recipe: &'static str,
    pub kind: HostKind,
    pub delay_ms: u64,
}

/// A fault injected at a point of the run, counted from the rollout's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL the server and restart it on the same data directory and port.
    ServerKill { at_ms: u64 },
    /// Host `host` crashes: its stream is cut and it reconnects, keeping its
    /// journal and outbox (as the real agent's are on disk).
    AgentRestart { at_ms: u64, host: usize },
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::ServerKill { .. } => "server-kill",
            Fault::AgentRestart { .. } => "agent-restart",
        }
    }
    pub fn at_ms(&self) -> u64 {
        match self {
            Fault::ServerKill { at_ms } | Fault::AgentRestart { at_ms, .. } => *at_ms,
        }
    }
}

/// What the runner does to the rollout while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// Nothing: the rollout runs to its end.
    None,
    /// Abort the rollout after `at_ms`.
    Abort { at_ms: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub seed: u64,
    pub hosts: Vec<HostPlan>,
    pub canary: u32,
    pub batch: u32,
    pub max_failures: u32,
    pub pause_after_canary: bool,
    pub rollback_on_halt: bool,
    pub host_deadline: Duration,
    pub operator: Operator,
    pub faults: Vec<Fault>,
}

pub const RECIPES: [&str; 3] = ["fixture", "wiki", "db"];
pub const FROM: &str = "1.0.0";
pub const TO: &str = "1.1.0";

/// The plan of run `seed`: between `min_hosts` and `max_hosts` hosts.
pub fn plan(seed: u64, min_hosts: u64, max_hosts: u64) -> Plan {
    let mut random = Random::new(seed);
    let count = min_hosts + random.below(max_hosts.saturating_sub(min_hosts) + 1);
    let hosts = (0..count)
        .map(|index| {
            let roll = random.below(100);
            let kind = match roll {
                0..=4 => HostKind::Offline,
                5..=9 => HostKind::Failing,
                10..=12 => HostKind::Hung,
                _ => HostKind::Healthy,
            };
            HostPlan {
                id: format!("h{index:03}"),
                recipe: RECIPES[random.below(RECIPES.len() as u64) as usize],
                kind,
                delay_ms: 20 + random.below(300),
            }
        })
        .collect();
    let canary = 1 + random.below(2) as u32;
    let batch = 2 + random.below(5) as u32;
    let max_failures = 1 + random.below(3) as u32;
    let pause_after_canary = random.chance(30);
    let rollback_on_halt = random.chance(50);
    let host_deadline = Duration::from_secs(2 + random.below(2));
    let operator = if random.chance(15) {
        Operator::Abort {
            at_ms: 200 + random.below(1500),
        }
    } else {
        Operator::None
    };
    let mut faults = Vec::new();
    for _ in 0..random.below(3) {
        faults.push(Fault::ServerKill {
            at_ms: 100 + random.below(3000),
        });
    }
    for _ in 0..random.below(4) {
        faults.push(Fault::AgentRestart {
            at_ms: 50 + random.below(3000),
            host: random.below(count) as usize,
        });
    }
    faults.sort();
    Plan {
        seed,
        hosts,
        canary,
        batch,
        max_failures,
        pause_after_canary,
        rollback_on_halt,
        host_deadline,
        operator,
        faults,
    }
}

impl Plan {
    /// Hosts of `recipe` taking part (not offline).
    pub fn online(&self, recipe: &str) -> usize {
        self.hosts
            .iter()
            .filter(|host| host.recipe == recipe && host.kind != HostKind::Offline)
            .count()
    }

    /// The longest a rollout of `recipe` may take to end: every wave may wait
    /// for its host deadline, each server kill costs a restart, plus slack
    /// for the CLI and reconnects on a shared machine.
    pub fn bound(&self, recipe: &str) -> Duration {
        let hosts = self.hosts.iter().filter(|host| host.recipe == recipe).count() as u32;
        let waves = 1 + hosts.saturating_sub(self.canary).div_ceil(self.batch.max(1));
        let kills = self
            .faults
            .iter()
            .filter(|fault| matches!(fault, Fault::ServerKill { .. }))
            .count() as u32;
        (self.host_deadline + Duration::from_secs(2)) * waves + Duration::from_secs(5) * kills + Duration::from_secs(15)
    }
}

/// One host as `ccfleet rollout show --json` reports it at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownHost {
    pub host_id: String,
    pub wave: u32,
    pub outcome: String,
}

/// What a run recorded for one rollout.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub recipe: String,
    /// The final state, or `None` when it did not end within its bound.
    pub state: Option<String>,
    pub shown: Vec<ShownHost>,
    /// The same rollout shown again after a final SIGKILL and restart.
    pub shown_after_reopen: Option<(String, Vec<ShownHost>)>,
    /// Per host: operation ids received for upgrades (distinct), executed ids (all).
    pub upgrade_ids: BTreeMap<String, BTreeSet<String>>,
    pub executed: BTreeMap<String, Vec<String>>,
    /// Per host: the version it runs at the end.
    pub versions: BTreeMap<String, String>,
    /// Per host: results the agent had acknowledged by the server (operation ids).
    pub acknowledged: BTreeMap<String, Vec<String>>,
}

/// Every invariant a run's history breaks, as sentences (empty: none).
pub fn check(plan: &Plan, history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let Some(state) = &history.state else {
        violations.push(format!(
            "rollout of {} did not end within {:?}",
            history.recipe,
            plan.bound(&history.recipe)
        ));
        return violations;
    };
    if !["completed", "halted", "aborted"].contains(&state.as_str()) {
        violations.push(format!("rollout of {} ended in unknown state {state}", history.recipe));
    }
    for (host, ids) in &history.upgrade_ids {
        if ids.len() > 1 {
            violations.push(format!("{host} was sent {} different upgrades: {ids:?}", ids.len()));
        }
    }
    for (host, executed) in &history.executed {
        let distinct: BTreeSet<&String> = executed.iter().collect();
        if distinct.len() != executed.len() {
            violations.push(format!("{host} executed an operation id twice: {executed:?}"));
        }
    }
    // Hosts whose upgrade failed: dispatched hosts the plan makes fail (a
    // host returned by rollback-on-halt also shows rolled_back, so the shown
    // outcome alone does not tell).
    let failed = history
        .shown
        .iter()
        .filter(|host| !matches!(host.outcome.as_str(), "pending" | "skipped"))
        .filter(|host| {
            plan.hosts
                .iter()
                .any(|planned| planned.id == host.host_id && matches!(planned.kind, HostKind::Failing | HostKind::Hung))
        })
        .count() as u32;
    if failed > plan.max_failures + plan.batch.max(plan.canary) {
        violations.push(format!(
            "{failed} hosts failed, over the budget {} plus {} in flight",
            plan.max_failures,
            plan.batch.max(plan.canary)
        ));
    }
    let rolled_back_on_halt = state == "halted" && plan.rollback_on_halt;
    for shown in &history.shown {
        let version = history.versions.get(&shown.host_id).map(String::as_str);
        let expected = match shown.outcome.as_str() {
            "succeeded" if rolled_back_on_halt => Some(FROM),
            "succeeded" => Some(TO),
            "failed" | "rolled_back" | "pending" | "skipped" | "held" => Some(FROM),
            // a timed-out host may still finish later; either version is honest
            _ => None,
        };
        if let (Some(expected), Some(version)) = (expected, version) {
            if expected != version && !(shown.outcome == "skipped" && version == TO) {
                violations.push(format!(
                    "{} shown {} (wave {}) but runs {version}, expected {expected}",
                    shown.host_id, shown.outcome, shown.wave
                ));
            }
        }
        // An abort lets hosts in flight finish or reach their host deadline.
        if matches!(shown.outcome.as_str(), "dispatched" | "upgrading") {
            violations.push(format!(
                "{} still {} in a rollout that ended {state}",
                shown.host_id, shown.outcome
            ));
        }
    }
    for (host, acknowledged) in &history.acknowledged {
        let shown = history.shown.iter().find(|shown| &shown.host_id == host);
        if !acknowledged.is_empty()
            && shown.is_some_and(|shown| matches!(shown.outcome.as_str(), "pending" | "dispatched"))
        {
            violations.push(format!(
                "{host}'s acknowledged result {acknowledged:?} is lost: shown {}",
                shown.map_or("absent", |shown| shown.outcome.as_str())
            ));
        }
    }
    match &history.shown_after_reopen {
        None => violations.push("the store did not reopen after the final kill".to_owned()),
        Some((reopened_state, reopened)) => {
            if reopened_state != state || reopened != &history.shown {
                let changed: Vec<String> = reopened
                    .iter()
                    .filter(|host| !history.shown.contains(host))
                    .map(|host| format!("{} {}", host.host_id, host.outcome))
                    .collect();
                violations.push(format!(
                    "after reopening the store the rollout is {reopened_state} with {} hosts, before {state} with {}; changed: {changed:?}",
                    reopened.len(),
                    history.shown.len()
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(host: &str, outcome: &str) -> ShownHost {
        ShownHost {
            host_id: host.into(),
            wave: 0,
            outcome: outcome.into(),
        }
    }

    fn history(state: Option<&str>, hosts: &[(&str, &str, &str)]) -> History {
        let shown: Vec<ShownHost> = hosts.iter().map(|(host, outcome, _)| shown(host, outcome)).collect();
        History {
            recipe: "fixture".into(),
            state: state.map(str::to_owned),
            shown_after_reopen: state.map(|state| (state.to_owned(), shown.clone())),
            shown,
            versions: hosts
                .iter()
                .map(|(host, _, version)| (host.to_string(), version.to_string()))
                .collect(),
            ..History::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_different_seeds_differ() {
        assert_eq!(plan(7, 10, 200), plan(7, 10, 200));
        assert_ne!(plan(7, 10, 200), plan(8, 10, 200));
        for seed in 0..200 {
            let plan = plan(seed, 10, 200);
            assert!((10..=200).contains(&plan.hosts.len()), "seed {seed}");
        }
    }

    #[test]
    fn invariants_as_a_table() {
        let base = plan(1, 10, 10);
        let halting = Plan {
            rollback_on_halt: true,
            ..base.clone()
        };
        let cases: Vec<(&str, &Plan, History, &str)> = vec![
            (
                "clean completion",
                &base,
                history(Some("completed"), &[("a", "succeeded", TO)]),
                "",
            ),
            ("never ended", &base, history(None, &[]), "did not end"),
            (
                "shown succeeded but runs the old version",
                &base,
                history(Some("completed"), &[("a", "succeeded", FROM)]),
                "expected 1.1.0",
            ),
            (
                "halt with rollback leaves a host moved",
                &halting,
                history(Some("halted"), &[("a", "succeeded", TO)]),
                "expected 1.0.0",
            ),
            (
                "halt with rollback returned it",
                &halting,
                history(Some("halted"), &[("a", "succeeded", FROM)]),
                "",
            ),
            (
                "in flight after the end",
                &base,
                history(Some("aborted"), &[("a", "dispatched", FROM)]),
                "still dispatched",
            ),
        ];
        for (name, plan, history, expected) in cases {
            let violations = check(plan, &history);
            if expected.is_empty() {
                assert!(violations.is_empty(), "{name}: {violations:?}");
            } else {
                assert!(
                    violations.iter().any(|violation| violation.contains(expected)),
                    "{name}: {violations:?}"
                );
            }
        }
        let mut twice = history(Some("completed"), &[("a", "succeeded", TO)]);
        twice.executed.insert("a".into(), vec!["op1".into(), "op1".into()]);
        assert!(check(&base, &twice)[0].contains("executed an operation id twice"));
        let mut two = history(Some("completed"), &[("a", "succeeded", TO)]);
        two.upgrade_ids
            .insert("a".into(), ["op1".to_owned(), "op2".to_owned()].into());
        assert!(check(&base, &two)[0].contains("2 different upgrades"));
        let mut unreopened = history(Some("completed"), &[("a", "succeeded", TO)]);
        unreopened.shown_after_reopen = None;
        assert!(check(&base, &unreopened)[0].contains("did not reopen"));
    }
}

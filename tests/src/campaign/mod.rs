//! The seeded fault campaign's pure half: a run's plan drawn from its seed
//! (fleet, rollout settings, fault schedule), the simulated health checks
//! judged by the agent's real health gate, and shrinking a failing schedule.
//! The invariants are in `check.rs`; the effects (real server, simulated
//! agents, the CLI) in `run.rs` and `agent.rs`; `fault-campaign` drives them.

pub mod agent;
mod check;
pub mod run;

pub use check::{check, History, ShownHost};

use std::time::{Duration, Instant};

use ccfleet_agent::health::{Check, GatePolicy, GateVerdict, HealthGate};

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
    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low) + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How one simulated host behaves during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Its new version is healthy from the first check.
    Healthy,
    /// Docker fails its new version at the first check: the agent rolls back.
    Failing,
    /// Its new version becomes healthy only `healthy_after_ms` into the gate:
    /// it passes if a long enough healthy streak still fits before the gate's
    /// timeout, else the agent rolls back.
    SlowHealth { healthy_after_ms: u64 },
    /// Its checks pass and fail alternately, `period_ms` each: it passes if
    /// one healthy stretch is long enough for the gate.
    FlappingHealth { period_ms: u64 },
    /// Accepts the command and never answers: times out at the host deadline.
    Hung,
    /// Offline for the whole run (skipped at the start).
    Offline,
}

impl HostKind {
    pub fn name(&self) -> &'static str {
        match self {
            HostKind::Healthy => "healthy",
            HostKind::Failing => "failing-health",
            HostKind::SlowHealth { .. } => "slow-health",
            HostKind::FlappingHealth { .. } => "flapping-health",
            HostKind::Hung => "hung",
            HostKind::Offline => "offline",
        }
    }

    /// What the agent's probe sees `at_ms` into the gate.
    pub fn check_at(&self, at_ms: u64) -> Check {
        let unhealthy = |reason: &str| Check::Unhealthy { reason: reason.into() };
        match *self {
            HostKind::Healthy | HostKind::Hung | HostKind::Offline => Check::Healthy,
            HostKind::Failing => Check::Definitive {
                reason: "the new version's task failed".into(),
            },
            HostKind::SlowHealth { healthy_after_ms } if at_ms < healthy_after_ms => unhealthy("still starting"),
            HostKind::SlowHealth { .. } => Check::Healthy,
            HostKind::FlappingHealth { period_ms } if (at_ms / period_ms.max(1)).is_multiple_of(2) => {
                unhealthy("flapping")
            }
            HostKind::FlappingHealth { .. } => Check::Healthy,
        }
    }
}

/// The simulated agent's health gate: checks every 100 ms, healthy for 300 ms to pass.
pub const PROBE_EVERY_MS: u64 = 100;
pub const MIN_HEALTHY: Duration = Duration::from_millis(300);

/// The verdict of the agent's real [`HealthGate`] over `kind`'s checks with
/// `timeout`: whether the new version passes, and when the gate decides.
pub fn gate(kind: HostKind, timeout: Duration) -> (bool, Duration) {
    let start = Instant::now();
    let mut gate = HealthGate::new(
        GatePolicy {
            min_healthy: MIN_HEALTHY,
            timeout,
        },
        start,
    );
    let mut at_ms = 0;
    loop {
        match gate.observe(start + Duration::from_millis(at_ms), kind.check_at(at_ms)) {
            GateVerdict::Waiting { .. } => at_ms += PROBE_EVERY_MS,
            GateVerdict::Healthy { after } => return (true, after),
            GateVerdict::Failed { after, .. } => return (false, after),
            GateVerdict::TimedOut { .. } => return (false, Duration::from_millis(at_ms)),
        }
    }
}

/// The gate's timeout for an upgrade with `deadline`, after a deploy of
/// `deploy`: what is left, less time to roll back within the deadline.
pub fn gate_timeout(deadline: Duration, deploy: Duration) -> Duration {
    deadline
        .saturating_sub(deploy)
        .saturating_sub(Duration::from_millis(300))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    pub id: String,
    pub recipe: &'static str,
    pub kind: HostKind,
    /// How long the deploy takes before the gate starts.
    pub delay_ms: u64,
    /// The host's [`SITE_LABEL`] label (one of [`SITES`]).
    pub site: &'static str,
}

/// Which way a message travels on an agent's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    ToServer,
    ToAgent,
}

/// A fault of one agent's link to the server. The stream is one HTTP/2
/// stream over TCP, so messages of one stream arrive in order or not at all;
/// what the network can do is break it, delay it, and deliver a stream's
/// last messages after a newer stream of the same host opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkFault {
    /// The link breaks at the next message in `direction`: it and every
    /// later message that way are lost, and the agent notices `detect_ms`
    /// later and reconnects (re-sending its outbox; the server re-delivers
    /// what is outstanding).
    Drop { direction: Direction, detect_ms: u64 },
    /// The next message in `direction` arrives twice (a re-sent event with
    /// its sequence number, a re-delivered command with its operation id).
    Duplicate { direction: Direction },
    /// Messages in `direction` arrive `by_ms` late, in order, for `for_ms`.
    Delay {
        direction: Direction,
        by_ms: u64,
        for_ms: u64,
    },
    /// The agent's next event is held on its stream while the agent
    /// reconnects and re-sends it on a new stream; the old stream delivers
    /// it afterwards (reordered across the two streams).
    Reorder,
}

/// A fault injected at a point of the run, counted from the rollout's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL the server and restart it on the same data directory and port.
    ServerKill { at_ms: u64 },
    /// SIGSTOP the server for `for_ms`, then SIGCONT: a store (or the whole
    /// process) that stalls, with every deadline running meanwhile.
    ServerPause { at_ms: u64, for_ms: u64 },
    /// Host `host` crashes: its stream is cut and it reconnects, keeping its
    /// journal and outbox (as the real agent's are on disk).
    AgentRestart { at_ms: u64, host: usize },
    /// A fault of host `host`'s link.
    Link { at_ms: u64, host: usize, fault: LinkFault },
    /// The disk under the store fills (the data directory is a tmpfs; a
    /// file takes all its room) and is freed `for_ms` later. sled refuses
    /// every write after a failed one, so the server stops on its own at its
    /// next flush; the runner starts it again once there is room, as the
    /// service manager would.
    DiskFull { at_ms: u64, for_ms: u64 },
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::ServerKill { .. } => "server-kill",
            Fault::ServerPause { .. } => "server-pause",
            Fault::DiskFull { .. } => "disk-full",
            Fault::AgentRestart { .. } => "agent-restart",
            Fault::Link { fault, .. } => match fault {
                LinkFault::Drop {
                    direction: Direction::ToServer,
                    ..
                } => "drop-to-server",
                LinkFault::Drop { .. } => "drop-to-agent",
                LinkFault::Duplicate {
                    direction: Direction::ToServer,
                } => "duplicate-to-server",
                LinkFault::Duplicate { .. } => "duplicate-to-agent",
                LinkFault::Delay {
                    direction: Direction::ToServer,
                    ..
                } => "delay-to-server",
                LinkFault::Delay { .. } => "delay-to-agent",
                LinkFault::Reorder => "reorder-to-server",
            },
        }
    }
    pub fn at_ms(&self) -> u64 {
        match self {
            Fault::ServerKill { at_ms }
            | Fault::ServerPause { at_ms, .. }
            | Fault::DiskFull { at_ms, .. }
            | Fault::AgentRestart { at_ms, .. }
            | Fault::Link { at_ms, .. } => *at_ms,
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
    /// No `--to`: the server derives the target from the versions the hosts
    /// report available (every host reports [`TO`]).
    pub derive_target: bool,
    pub host_deadline: Duration,
    /// `--hosts site=<this>`: only the hosts of this site take part.
    pub site: Option<&'static str>,
    pub operator: Operator,
    pub faults: Vec<Fault>,
}

pub const RECIPES: [&str; 3] = ["fixture", "wiki", "db"];
/// The label every simulated host carries, and its values.
pub const SITE_LABEL: &str = "site";
pub const SITES: [&str; 3] = ["berlin", "leeds", "lagos"];
pub const FROM: &str = "1.0.0";
pub const TO: &str = "1.1.0";

/// The plan of run `seed`: between `min_hosts` and `max_hosts` hosts.
pub fn plan(seed: u64, min_hosts: u64, max_hosts: u64) -> Plan {
    let mut random = Random::new(seed);
    let count = random.between(min_hosts, max_hosts);
    let hosts = (0..count)
        .map(|index| {
            let kind = match random.below(100) {
                0..=4 => HostKind::Offline,
                5..=9 => HostKind::Failing,
                10..=12 => HostKind::Hung,
                13..=16 => HostKind::SlowHealth {
                    healthy_after_ms: random.between(300, 3000),
                },
                17..=20 => HostKind::FlappingHealth {
                    period_ms: random.between(100, 600),
                },
                _ => HostKind::Healthy,
            };
            HostPlan {
                id: format!("h{index:03}"),
                recipe: RECIPES[random.below(RECIPES.len() as u64) as usize],
                kind,
                delay_ms: random.between(20, 320),
                site: SITES[0],
            }
        })
        .collect::<Vec<_>>();
    // Labels and the selector come from a stream of their own, so that adding
    // them left every other draw of a seed (and its recorded replay) as it was.
    let mut labels = Random::new(seed ^ 0x5173_1abe_15e1_ec70);
    let hosts: Vec<HostPlan> = hosts
        .into_iter()
        .map(|host| HostPlan {
            site: SITES[labels.below(SITES.len() as u64) as usize],
            ..host
        })
        .collect();
    let site = labels
        .chance(35)
        .then(|| SITES[labels.below(SITES.len() as u64) as usize]);
    // So is the full disk, added after them.
    let disk_full = labels.chance(25).then(|| Fault::DiskFull {
        at_ms: labels.between(100, 3100),
        for_ms: labels.between(300, 2000),
    });
    let canary = random.between(1, 2) as u32;
    let batch = random.between(2, 6) as u32;
    let max_failures = random.between(1, 3) as u32;
    let pause_after_canary = random.chance(30);
    let rollback_on_halt = random.chance(50);
    let derive_target = random.chance(40);
    let host_deadline = Duration::from_secs(random.between(2, 3));
    let operator = if random.chance(15) {
        Operator::Abort {
            at_ms: random.between(200, 1700),
        }
    } else {
        Operator::None
    };
    let mut faults = Vec::new();
    for _ in 0..random.below(3) {
        faults.push(Fault::ServerKill {
            at_ms: random.between(100, 3100),
        });
    }
    for _ in 0..random.below(2) {
        faults.push(Fault::ServerPause {
            at_ms: random.between(100, 3100),
            for_ms: random.between(200, 2000),
        });
    }
    for _ in 0..random.below(4) {
        faults.push(Fault::AgentRestart {
            at_ms: random.between(50, 3050),
            host: random.below(count) as usize,
        });
    }
    // Link faults grow with the fleet: about one per ten hosts, at least a few.
    for _ in 0..random.below(3 + count / 10) {
        let direction = if random.chance(50) {
            Direction::ToServer
        } else {
            Direction::ToAgent
        };
        let fault = match random.below(4) {
            0 => LinkFault::Drop {
                direction,
                detect_ms: random.between(100, 1500),
            },
            1 => LinkFault::Duplicate { direction },
            2 => LinkFault::Delay {
                direction,
                by_ms: random.between(100, 1500),
                for_ms: random.between(500, 3000),
            },
            _ => LinkFault::Reorder,
        };
        faults.push(Fault::Link {
            at_ms: random.between(0, 4000),
            host: random.below(count) as usize,
            fault,
        });
    }
    faults.extend(disk_full);
    // In the order they strike (a fault's derived order is by kind first).
    faults.sort_by_key(|fault| (fault.at_ms(), *fault));
    Plan {
        seed,
        hosts,
        canary,
        batch,
        max_failures,
        pause_after_canary,
        rollback_on_halt,
        derive_target,
        host_deadline,
        site,
        operator,
        faults,
    }
}

impl Plan {
    /// Whether the rollouts' selector (`--hosts site=...`) selects `host`.
    pub fn selects(&self, host: &HostPlan) -> bool {
        self.site.is_none_or(|site| host.site == site)
    }

    /// Hosts of `recipe` taking part: selected and not offline.
    pub fn online(&self, recipe: &str) -> usize {
        self.hosts
            .iter()
            .filter(|host| host.recipe == recipe && host.kind != HostKind::Offline && self.selects(host))
            .count()
    }

    /// Whether `host`'s upgrade fails on its own (its gate, or it never
    /// answers) when it has the full host deadline.
    pub fn fails(&self, host: &HostPlan) -> bool {
        match host.kind {
            HostKind::Hung => true,
            HostKind::Offline => false,
            kind => {
                let deploy = Duration::from_millis(host.delay_ms);
                !gate(kind, gate_timeout(self.host_deadline, deploy)).0
            }
        }
    }

    /// The longest a rollout of `recipe` may take to end: every wave may wait
    /// for its host deadline, each server kill costs a restart, each pause
    /// its length, plus slack for the CLI and reconnects on a shared machine.
    pub fn bound(&self, recipe: &str) -> Duration {
        let hosts = self
            .hosts
            .iter()
            .filter(|host| host.recipe == recipe && self.selects(host))
            .count() as u32;
        let waves = 1 + hosts.saturating_sub(self.canary).div_ceil(self.batch.max(1));
        let faults: Duration = self
            .faults
            .iter()
            .map(|fault| match fault {
                Fault::ServerKill { .. } => Duration::from_secs(5),
                Fault::ServerPause { for_ms, .. } => Duration::from_millis(*for_ms) + Duration::from_secs(3),
                // The server's own shutdown, the room coming back, a restart.
                Fault::DiskFull { for_ms, .. } => Duration::from_millis(*for_ms) + Duration::from_secs(10),
                Fault::AgentRestart { .. } => Duration::ZERO,
                Fault::Link { .. } => Duration::from_millis(500),
            })
            .sum();
        (self.host_deadline + Duration::from_secs(2)) * waves + faults + Duration::from_secs(15)
    }
}

/// The shortest schedule that still fails, found by dropping one fault at a
/// time from `faults` (each kept only if the run passes without it).
/// `still_fails` runs the plan with a candidate schedule.
pub async fn shrink<F, Fut>(faults: &[Fault], mut still_fails: F) -> Vec<Fault>
where
    F: FnMut(Vec<Fault>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut schedule = faults.to_vec();
    let mut index = 0;
    while index < schedule.len() {
        let mut fewer = schedule.clone();
        fewer.remove(index);
        if still_fails(fewer.clone()).await {
            schedule = fewer;
        } else {
            index += 1;
        }
    }
    schedule
}

/// The positions of `subset` in `faults` (for `--faults`, which replays a shrunk schedule).
pub fn positions(faults: &[Fault], subset: &[Fault]) -> Vec<usize> {
    let mut used = vec![false; faults.len()];
    subset
        .iter()
        .filter_map(|fault| {
            let index = (0..faults.len()).find(|&index| !used[index] && faults[index] == *fault)?;
            used[index] = true;
            Some(index)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_plan_and_different_seeds_differ() {
        assert_eq!(plan(7, 10, 200), plan(7, 10, 200));
        assert_ne!(plan(7, 10, 200), plan(8, 10, 200));
        for seed in 0..200 {
            let plan = plan(seed, 10, 200);
            assert!((10..=200).contains(&plan.hosts.len()), "seed {seed}");
            for fault in &plan.faults {
                if let Fault::AgentRestart { host, .. } | Fault::Link { host, .. } = fault {
                    assert!(*host < plan.hosts.len(), "seed {seed}: {fault:?}");
                }
            }
        }
    }

    #[test]
    fn seed_7000_a_plans_faults_are_in_the_order_they_strike() {
        // The runner injects the first pending fault once due; seed 7000's
        // schedule, sorted by kind, struck a pause due at 2.3 s only after a
        // kill at 2.7 s, on the server that kill started.
        let mut mixed = 0;
        for seed in 0..300 {
            let faults = plan(seed, 10, 40).faults;
            assert!(
                faults.windows(2).all(|pair| pair[0].at_ms() <= pair[1].at_ms()),
                "seed {seed}: {faults:?}"
            );
            mixed += usize::from(faults.windows(2).any(|pair| pair[0].kind() != pair[1].kind()));
        }
        assert!(mixed > 100, "most schedules mix kinds: {mixed}");
    }

    #[test]
    fn every_fault_kind_and_host_kind_is_drawn() {
        let mut faults = std::collections::BTreeSet::new();
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let plan = plan(seed, 10, 40);
            faults.extend(plan.faults.iter().map(Fault::kind));
            kinds.extend(plan.hosts.iter().map(|host| host.kind.name()));
        }
        assert_eq!(faults.len(), 11, "{faults:?}");
        assert_eq!(kinds.len(), 6, "{kinds:?}");
    }

    #[test]
    fn every_site_is_drawn_and_some_runs_select_one() {
        let mut sites = std::collections::BTreeSet::new();
        let mut selected = std::collections::BTreeSet::new();
        let mut runs_leaving_hosts_out = 0;
        for seed in 0..300 {
            let plan = plan(seed, 10, 40);
            sites.extend(plan.hosts.iter().map(|host| host.site));
            match plan.site {
                Some(site) => {
                    selected.insert(site);
                    if plan.hosts.iter().any(|host| !plan.selects(host)) {
                        runs_leaving_hosts_out += 1;
                    }
                }
                None => assert!(plan.hosts.iter().all(|host| plan.selects(host))),
            }
        }
        assert_eq!(sites.len(), SITES.len(), "{sites:?}");
        assert_eq!(selected.len(), SITES.len(), "{selected:?}");
        assert!(
            (50..150).contains(&runs_leaving_hosts_out),
            "{runs_leaving_hosts_out} of 300 runs leave hosts out"
        );
    }

    /// The real gate over the scripted checks: (kind, timeout ms) -> (passes, decided at ms).
    #[test]
    fn the_gate_judges_the_scripted_health_as_a_table() {
        let cases = [
            (HostKind::Healthy, 2000, (true, 300)),
            (HostKind::Failing, 2000, (false, 0)),
            (HostKind::SlowHealth { healthy_after_ms: 1000 }, 2000, (true, 1300)),
            (HostKind::SlowHealth { healthy_after_ms: 1800 }, 2000, (false, 2000)),
            // the streak starts at the first healthy check: 1700 + 300 = 2000 still passes
            (HostKind::SlowHealth { healthy_after_ms: 1700 }, 2000, (true, 2000)),
            // healthy 500 ms at a time: the first healthy stretch is long enough
            (HostKind::FlappingHealth { period_ms: 500 }, 2000, (true, 800)),
            // healthy 300 ms at a time: checks at 300, 400, 500 span only 200 ms
            (HostKind::FlappingHealth { period_ms: 300 }, 2000, (false, 2000)),
            (HostKind::FlappingHealth { period_ms: 100 }, 1500, (false, 1500)),
        ];
        for (kind, timeout, (passes, at_ms)) in cases {
            assert_eq!(
                gate(kind, Duration::from_millis(timeout)),
                (passes, Duration::from_millis(at_ms)),
                "{kind:?} with a timeout of {timeout} ms"
            );
        }
    }

    #[tokio::test]
    async fn shrinking_keeps_only_the_faults_the_failure_needs() {
        let faults: Vec<Fault> = (0..6).map(|at_ms| Fault::ServerKill { at_ms }).collect();
        // Fails when both the kill at 1 and the kill at 4 happen.
        let needs = [faults[1], faults[4]];
        let mut runs = 0;
        let shortest = shrink(&faults, |schedule| {
            runs += 1;
            let fails = needs.iter().all(|fault| schedule.contains(fault));
            async move { fails }
        })
        .await;
        assert_eq!(shortest, needs.to_vec());
        assert_eq!(runs, 6, "one run per fault of the original schedule");
        assert_eq!(positions(&faults, &shortest), vec![1, 4]);
        // Nothing needed: everything goes.
        assert!(shrink(&faults, |_| async { true }).await.is_empty());
        // Everything needed: everything stays.
        assert_eq!(
            shrink(&faults, |schedule| async move { schedule.len() == 6 }).await,
            faults
        );
    }
}

//! The real-agent fault campaign's pure half: a run's plan drawn from its seed
//! (the target that passes or fails its gate, the moment of the SIGKILL, the
//! volume's contents), the state the fixture's migration leaves, and the
//! invariants judged over what a run observed. The effects (real agent,
//! server, Docker and the abra double) are in `world.rs`; `agent-campaign`
//! drives both.

pub mod world;

use std::collections::BTreeMap;
use std::time::Duration;

use ccfleet_agent::snapshot::{compare, EntryKind, ManifestEntry};
use sha2::{Digest, Sha256};

use crate::campaign::Random;
use crate::docker::V1_3;

/// The version each run starts from (stateful, healthy, writes nothing).
pub const FROM: &str = V1_3;
/// Migrates the volume in place, then passes its gate.
pub const MIGRATES_AND_PASSES: &str = "1.5.5+1.5.5";
/// The same migration, then fails its gate (`/health` answers 404).
pub const MIGRATES_AND_FAILS: &str = "1.5.6+1.5.6";

/// One entry the run writes into the volume before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedEntry {
    pub path: String,
    pub kind: SeedKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Fifo,
}

/// What one run does, all of it drawn from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPlan {
    pub seed: u64,
    pub target: &'static str,
    /// The SIGKILL comes this long after the operation's first journal record.
    pub kill_after: Duration,
    /// In creation order (parents first).
    pub entries: Vec<SeedEntry>,
}

impl RunPlan {
    /// The operation id of the run's upgrade.
    pub fn operation_id(&self) -> String {
        format!("campaign-{}", self.seed)
    }

    pub fn target_passes(&self) -> bool {
        self.target == MIGRATES_AND_PASSES
    }

    /// The contents of `posts/hello.md` before the migration.
    fn hello(&self) -> &[u8] {
        self.entries
            .iter()
            .find_map(|entry| match (&entry.kind, entry.path.as_str()) {
                (SeedKind::File(contents), "posts/hello.md") => Some(contents.as_slice()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

/// The plan of the run with `seed`: a coin for the target, a kill moment in
/// `0..max_kill_after` (the first 60% of it for the passing target), and a volume of a few directories, files (sizes up to
/// 256 KiB, several modes and owners), a symlink and a fifo.
pub fn plan(seed: u64, max_kill_after: Duration) -> RunPlan {
    let mut random = Random::new(seed);
    let target = if random.chance(50) {
        MIGRATES_AND_PASSES
    } else {
        MIGRATES_AND_FAILS
    };
    // A passing upgrade ends in about 60% of the time a failing one takes
    // with its rollback: its kills are drawn from that part of the window.
    let window = max_kill_after.as_millis() as u64 * if target == MIGRATES_AND_PASSES { 3 } else { 5 } / 5;
    let kill_after = Duration::from_millis(random.below(window));
    let entry = |path: &str, kind: SeedKind, mode: u32, owner: u32| SeedEntry {
        path: path.to_owned(),
        kind,
        mode,
        uid: owner,
        gid: owner,
    };
    let mut entries = vec![
        entry("posts", SeedKind::Dir, 0o755, 0),
        entry(
            "posts/hello.md",
            SeedKind::File(format!("# written before the upgrade (seed {seed})\n").into_bytes()),
            0o640,
            0,
        ),
        entry("latest", SeedKind::Symlink("posts/hello.md".into()), 0o777, 0),
        entry("queue", SeedKind::Fifo, 0o620, 1000),
        entry("notes", SeedKind::Dir, 0o750, 33),
    ];
    for index in 0..1 + random.below(12) {
        let size = match random.below(4) {
            0 => 0,
            1 => random.below(64),
            2 => random.below(8 * 1024),
            _ => random.below(256 * 1024),
        };
        let contents: Vec<u8> = (0..size).map(|_| random.below(256) as u8).collect();
        let mode = [0o644, 0o600, 0o640, 0o4755, 0o444][random.below(5) as usize];
        let owner = [0, 33, 1000, 65534][random.below(4) as usize];
        entries.push(entry(
            &format!("notes/note-{index:02}"),
            SeedKind::File(contents),
            mode,
            owner,
        ));
    }
    RunPlan {
        seed,
        target,
        kill_after,
        entries,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The volume as the fixture's migration (1.5.5 and 1.5.6) leaves `before`:
/// `posts/hello.md` appended to and made 0600, `posts` given to 1000:1000,
/// `index/posts` and `schema` added, `latest` removed. `hello` is the
/// contents of `posts/hello.md` before.
pub fn migrated(before: &[ManifestEntry], hello: &[u8]) -> Vec<ManifestEntry> {
    let file = |path: &str, contents: &[u8]| ManifestEntry {
        path: path.to_owned(),
        kind: EntryKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size: contents.len() as u64,
        sha256: Some(sha256_hex(contents)),
        target: None,
    };
    let mut after: Vec<ManifestEntry> = before
        .iter()
        .filter(|entry| entry.path != "latest")
        .cloned()
        .map(|mut entry| {
            match entry.path.as_str() {
                "posts/hello.md" => {
                    let contents = [hello, b"# migrated to schema 2\n"].concat();
                    entry.size = contents.len() as u64;
                    entry.sha256 = Some(sha256_hex(&contents));
                    entry.mode = 0o600;
                }
                "posts" => (entry.uid, entry.gid) = (1000, 1000),
                _ => {}
            }
            entry
        })
        .collect();
    after.push(ManifestEntry {
        path: "index".into(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        sha256: None,
        target: None,
    });
    after.push(file("index/posts", b"hello.md\n"));
    after.push(file("schema", b"2\n"));
    after.sort_by(|left, right| left.path.cmp(&right.path));
    after
}

/// How the operation ended, from the agent's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// As the journal spells it: `SUCCEEDED`, `ROLLED_BACK`, ...
    pub outcome: String,
    pub reason: String,
    /// The result reached the outbox.
    pub reported: bool,
}

/// What a run saw after the kill, the restart and the agent's recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The phase the journal held right after the SIGKILL.
    pub kill_phase: String,
    /// `None` when the operation did not finish in time.
    pub finished: Option<Finished>,
    /// The `coop-cloud.<stack>.version` label of the app's service.
    pub running: Option<String>,
    /// The agent's own observation says converged at `running`.
    pub converged: bool,
    /// The status of `GET /health` on the app's published port.
    pub health: Option<u16>,
    pub volume: Result<Vec<ManifestEntry>, String>,
    /// The outcome of each entry of `ccfleet operations --json` with the run's id.
    pub server_results: Vec<String>,
    /// Entries of `ccfleet alerts --json`.
    pub server_alerts: usize,
    /// Files in the agent's alerts directory.
    pub local_alerts: usize,
    /// "result recorded for the server" lines for the operation in the agent's log (both runs).
    pub pushed: usize,
}

/// The invariants of one run; each broken one is a line.
pub fn judge(plan: &RunPlan, before: &[ManifestEntry], seen: &Observation) -> Vec<String> {
    let mut violations = Vec::new();
    let Some(finished) = &seen.finished else {
        return vec![format!("the operation did not finish (killed in {})", seen.kill_phase)];
    };
    if !finished.reported {
        violations.push("the operation finished but its result was never recorded for the server".into());
    }
    let succeeded = finished.outcome == "SUCCEEDED";
    if succeeded && !plan.target_passes() {
        violations.push(format!(
            "{} succeeded although it fails its gate: {}",
            plan.target, finished.reason
        ));
    }
    // The app runs a version that passed its gate: the target after a
    // success, the version it ran before otherwise.
    let expected = if succeeded { plan.target } else { FROM };
    if seen.running.as_deref() != Some(expected) {
        violations.push(format!(
            "runs {:?} after {} ({}), expected {expected}",
            seen.running, finished.outcome, finished.reason
        ));
    }
    if !seen.converged {
        violations.push(format!("the agent does not see {expected} converged"));
    }
    if seen.health != Some(200) {
        violations.push(format!("GET /health answers {:?}, not 200", seen.health));
    }
    match &seen.volume {
        Err(error) => violations.push(format!("cannot walk the volume: {error}")),
        Ok(volume) => {
            let wanted = if seen.running.as_deref() == Some(MIGRATES_AND_PASSES) {
                ("the upgraded state", migrated(before, plan.hello()))
            } else {
                ("the pre-upgrade manifest", before.to_vec())
            };
            if let Err(difference) = compare(&wanted.1, volume) {
                violations.push(format!(
                    "the volume is not {} (running {:?}): {difference}",
                    wanted.0, seen.running
                ));
            }
        }
    }
    let outcome = finished.outcome.to_lowercase();
    match seen.server_results.as_slice() {
        [one] if *one == outcome => {}
        results => violations.push(format!(
            "the server holds {results:?} for the operation, expected exactly one {outcome}"
        )),
    }
    if seen.pushed != 1 {
        violations.push(format!("the agent recorded the result {} times", seen.pushed));
    }
    if seen.server_alerts > 1 || seen.local_alerts > 1 {
        violations.push(format!(
            "{} alerts on the server, {} on the host: at most one",
            seen.server_alerts, seen.local_alerts
        ));
    }
    // A success clears the app's alert; anything else raises exactly one.
    let alerts_wanted = usize::from(!succeeded);
    if seen.local_alerts != alerts_wanted || seen.server_alerts != alerts_wanted {
        violations.push(format!(
            "{} alerts on the server, {} on the host after {}: expected {alerts_wanted}",
            seen.server_alerts, seen.local_alerts, finished.outcome
        ));
    }
    violations
}

/// What the campaign counts over its runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub runs: usize,
    pub violating_runs: usize,
    pub kills_by_phase: BTreeMap<String, usize>,
    pub outcomes: BTreeMap<String, usize>,
    pub targets: BTreeMap<String, usize>,
}

impl Tally {
    pub fn add(&mut self, plan: &RunPlan, kill_phase: &str, outcome: &str, violations: usize) {
        self.runs += 1;
        self.violating_runs += usize::from(violations > 0);
        *self.kills_by_phase.entry(kill_phase.to_owned()).or_default() += 1;
        *self.outcomes.entry(outcome.to_owned()).or_default() += 1;
        *self.targets.entry(plan.target.to_owned()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests;

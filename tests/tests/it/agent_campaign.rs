//! The real-agent fault campaign, short, on every change: `agent-campaign`
//! upgrades a stateful app whose new version migrates its volume and passes
//! or fails its gate, SIGKILLs the real agent at a seeded moment, restarts
//! it and checks the app, its volume, the server's results and the alerts
//! (RELIABILITY.md has the recorded long campaign).

use std::process::Command;

use ccfleet_tests::binary;
use serde_json::Value;

/// The phases an operation record can be in (`agent::upgrade::model::Phase`).
const PHASES: &[&str] = &[
    "accepted",
    "undeploying",
    "snapshotting",
    "verifying_snapshot",
    "deploying",
    "verifying",
    "healthy",
    "rollback_undeploying",
    "restoring",
    "rollback_deploying",
    "rollback_verifying",
    "done",
];

#[test]
fn a_short_real_agent_campaign_breaks_no_invariant() {
    // Seeds 4..=6 in a 30 s window (`agent-campaign --plans`): both targets,
    // kills 13 s, 13 s and 27 s after the upgrade starts.
    let output = Command::new(binary("agent-campaign"))
        .args("--runs 3 --seed 4 --parallel 3 --max-kill-ms 30000".split(' '))
        .output()
        .expect("agent-campaign starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the campaign found violations:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("agent-campaign: 3 runs (seeds 4..=6), 0 violating runs"),
        "{stdout}"
    );
    let runs: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("seed").is_some())
        .collect();
    assert_eq!(runs.len(), 3, "{stdout}");
    for run in &runs {
        // Every kill landed on a journaled operation, and it ended.
        let phase = run["kill_phase"].as_str().unwrap_or_default();
        assert!(PHASES.contains(&phase), "{run}");
        assert!(
            ["SUCCEEDED", "ROLLED_BACK"].contains(&run["outcome"].as_str().unwrap_or_default()),
            "{run}"
        );
    }
    let targets: Vec<&str> = runs.iter().filter_map(|run| run["target"].as_str()).collect();
    assert!(
        targets.contains(&"1.5.5+1.5.5") && targets.contains(&"1.5.6+1.5.6"),
        "{targets:?}"
    );
}

#[test]
fn a_bad_argument_is_refused_with_a_clear_error() {
    let output = Command::new(binary("agent-campaign"))
        .args(["--runs", "3", "--max-kill-ms", "0"])
        .output()
        .expect("agent-campaign starts");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--max-kill-ms must be at least 1"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

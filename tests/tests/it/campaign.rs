//! The seeded fault campaign, short, on every change: `fault-campaign` runs
//! rollouts over the real server and simulated agents under server kills,
//! agent restarts and failing, hung and offline hosts, and checks its
//! invariants on every run (RELIABILITY.md has the recorded long campaign).

use std::process::Command;

use ccfleet_tests::binary;

#[test]
fn a_short_seeded_fault_campaign_breaks_no_invariant() {
    let output = Command::new(binary("fault-campaign"))
        .args(["--runs", "8", "--seed", "1", "--min-hosts", "10", "--max-hosts", "24"])
        .output()
        .expect("fault-campaign starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the campaign found violations:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("campaign: 8 runs") && stdout.contains("0 violating runs"),
        "{stdout}"
    );
    // The campaign did inject faults and end rollouts both ways.
    assert!(stdout.contains("\"server-kill\""), "{stdout}");
    assert!(
        stdout.contains("\"halted\"") && stdout.contains("\"completed\""),
        "{stdout}"
    );
}

#[test]
fn a_bad_argument_is_refused_with_a_clear_error() {
    let output = Command::new(binary("fault-campaign"))
        .args(["--runs", "many"])
        .output()
        .expect("fault-campaign starts");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--runs needs a whole number"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

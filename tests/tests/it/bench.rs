//! The benchmark binaries run (they are not run as benchmarks here): a
//! `fleet-bench --baseline` of four agents for a second, and a flag they do
//! not know is refused. (`--baseline` starts itself again as the bare
//! server with a flag of its own: refusing that flag broke it once.)

use std::process::Command;

use ccfleet_tests::binary;

#[test]
fn fleet_bench_baseline_runs_both_servers_and_compares_them() {
    let output = Command::new(binary("fleet-bench"))
        .args([
            "--baseline",
            "--agents",
            "4",
            "--concurrency",
            "4",
            "--traffic-seconds",
            "1",
        ])
        .output()
        .expect("fleet-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in ["enrolled 4 hosts", "baseline: ", "ccfleet: "] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}

#[test]
fn the_bench_binaries_refuse_a_flag_they_do_not_know() {
    for bench in ["fleet-bench", "agent-bench"] {
        let output = Command::new(binary(bench))
            .arg("--agnets")
            .output()
            .expect("the bench starts");
        assert_eq!(output.status.code(), Some(2), "{bench}: {output:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("unknown flag --agnets"),
            "{bench}: {output:?}"
        );
    }
}

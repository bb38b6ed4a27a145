//! Failing fast on Docker's verdict: with the default health timeout (5 min)
//! and minimum healthy time (10 s), each failing kind of the fixture recipe
//! (a crash loop, an unhealthy container, a missing image, Swarm rolling the
//! spec back itself) is rolled back, its volume restored, on Docker's own
//! words long before the timeout; a slow but good start still passes.
//!
//! Each test prints how long the upgrade command took (BENCHMARKS.md,
//! "Failing fast"); the tests assert the verdict, not the time.

use std::time::Instant;

use ccfleet_tests::docker::{
    V1_3, V1_5_1_CONTAINER_UNHEALTHY, V1_5_2_IMAGE_MISSING, V1_5_3_SWARM_ROLLS_BACK, V1_5_4_SLOW_START,
    V1_5_NEVER_CONVERGES,
};

use super::World;

/// An app at 1.3.0 with seeded data and default timing, upgraded to
/// `target` (a stateful app is undeployed, snapshotted and deployed afresh; a
/// stateless one is updated in place, where Swarm's update policy applies): the upgrade must be ROLLED_BACK on Docker's verdict (its reason
/// holds every one of `docker_words`), the app back at 1.3.0 with its data.
async fn rolled_back_on_dockers_verdict(name: &str, stateful: bool, target: &str, docker_words: &[&str]) {
    let world = World::start_timed(name, stateful, false, "", true).await;
    world.seed();
    let before = world.manifest();

    let started = Instant::now();
    let (ok, report, stderr) = world.upgrade(&["--to", target, "--json"]);
    let took = started.elapsed();
    assert!(!ok, "{report}\n{stderr}");
    assert_eq!(report["outcome"], "ROLLED_BACK", "{report}\n{}", world.agent().log());
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("docker's verdict after"), "{reason}");
    assert!(
        !reason.contains("not healthy within"),
        "waited for the timeout: {reason}"
    );
    for word in docker_words {
        assert!(reason.contains(word), "{word:?} is not in {reason:?}");
    }
    // With --json, progress goes to stderr as JSON lines, each fitting a terminal.
    // (The last line is the error that the upgrade did not succeed.)
    let progress: Vec<String> = stderr
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            let line: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line:?}\n{stderr}"));
            line["progress"].as_str().expect("a progress line").to_owned()
        })
        .collect();
    assert!(
        progress
            .iter()
            .any(|line| line.contains(&format!("upgrade {V1_3} -> {target}: "))),
        "{stderr}"
    );
    assert!(progress.iter().all(|line| line.chars().count() <= 96), "{stderr}");
    eprintln!(
        "failfast {target}: ROLLED_BACK and restored {:.1}s after `upgrade --to` started: {reason}",
        took.as_secs_f64()
    );

    world.converged_at(V1_3).await;
    assert_eq!(world.running().as_deref(), Some(V1_3));
    assert_eq!(world.manifest(), before, "the volume is as it was before the upgrade");
    assert_eq!(world.snapshots().exists(), stateful);
    let alert = world.alert().expect("an alert for the rolled-back upgrade");
    assert_eq!(alert["to"], target);
    assert!(
        alert["reason"].as_str().unwrap().contains("docker's verdict"),
        "{alert}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_is_rolled_back_after_three_failed_tasks() {
    rolled_back_on_dockers_verdict(
        "ffcrash",
        true,
        V1_5_NEVER_CONVERGES,
        &["tasks of the new spec failed", "non-zero exit"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_container_is_rolled_back_without_waiting_for_the_timeout() {
    rolled_back_on_dockers_verdict("ffunhealthy", true, V1_5_1_CONTAINER_UNHEALTHY, &["unhealthy"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_rolled_back_on_the_rejected_task() {
    rolled_back_on_dockers_verdict("ffimage", true, V1_5_2_IMAGE_MISSING, &["No such image"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarms_own_rollback_is_its_verdict() {
    rolled_back_on_dockers_verdict("ffswarmrb", false, V1_5_3_SWARM_ROLLS_BACK, &["swarm", "rollback_"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_within_its_start_period_still_passes() {
    let world = World::start_timed("ffslow", true, false, "", true).await;
    // --wait without a terminal is not silent: a line per change, each within 100 columns.
    let output = world
        .agent()
        .command(&["upgrade", &world.domain, "--to", V1_5_4_SLOW_START, "--wait"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}\n{}", world.agent().log());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("SUCCEEDED"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains(&format!(
            "... {}: upgrade {V1_3} -> {V1_5_4_SLOW_START}: verifying",
            world.domain
        )),
        "{stderr}"
    );
    assert!(stderr.lines().all(|line| line.chars().count() <= 100), "{stderr}");
    assert_eq!(world.running().as_deref(), Some(V1_5_4_SLOW_START));
    assert!(world.alert().is_none());
}

/// A target that is not a release of the recipe is refused before anything
/// moves: the reason names the nearest releases; no abra command changes
/// the app, nothing is journaled, no alert is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_is_not_a_release_is_refused_before_anything_moves() {
    let world = World::start("ffnorelease", true, false).await;
    let commands_before = world.test.abra_log();
    let output = world
        .agent()
        .command(&["upgrade", &world.domain, "--to", "1.4.5+1.4", "--wait"]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("refused, nothing was touched: 1.4.5+1.4 is not a release of the recipe (nearest: "),
        "{said}"
    );
    assert!(said.contains("1.4.0+1.4, 1.5.0+1.5"), "{said}");
    let new_commands: Vec<String> = world.test.abra_log()[commands_before.len()..].to_vec();
    assert!(
        new_commands.iter().all(|line| line.starts_with("recipe fetch")),
        "only the fetch may run: {new_commands:?}"
    );
    assert!(world.alert().is_none());
    assert!(!world.snapshots().exists());
    assert_eq!(world.running().as_deref(), Some(V1_3));
}

//! Mistakes refused before anything moves, on the real Docker Engine: a
//! stateful app whose stack has no volumes is refused before it is undeployed
//! (its container runs on, untouched), and a move down across the recipe's
//! major without `--major` is refused; neither journals, snapshots or alerts.
//! A rollout's dry run already says which app it would skip for lack of volumes;
//! with `--major` the downgrade runs, and `--progress` alone waits and talks.

use ccfleet_tests::docker::{docker, stack_of, FIXTURE_RECIPE, V1_0, V1_1, V1_3, V2_0};
use ccfleet_tests::wait_for;

use super::PATIENCE;

use super::World;

/// The ids of the containers that run the app's stack.
fn containers(world: &World) -> Vec<String> {
    let filter = format!("label=com.docker.stack.namespace={}", stack_of(&world.domain));
    let listed = docker(&["ps", "--quiet", "--no-trunc", "--filter", &filter]);
    assert!(listed.status.success());
    let mut ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// Asks `upgrade ARGS --wait` and requires it refused with `reason`, with
/// nothing touched: the same containers run the same version, abra only
/// fetched, no operation journaled, no snapshot, no alert.
fn refused_untouched(world: &World, args: &[&str], running: &str, reason: &str) {
    let before = containers(world);
    assert_eq!(before.len(), 1, "{before:?}");
    let commands_before = world.test.abra_log().len();
    let mut all = vec!["upgrade", world.domain.as_str()];
    all.extend_from_slice(args);
    all.push("--wait");
    let output = world.agent().command(&all);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains(&format!("refused, nothing was touched: {reason}")),
        "{said}\n{}",
        world.agent().log()
    );
    let new_commands = world.test.abra_log()[commands_before..].to_vec();
    assert!(
        new_commands.iter().all(|line| line.starts_with("recipe fetch")),
        "only the fetch may run: {new_commands:?}"
    );
    assert_eq!(containers(world), before, "the app's container was replaced");
    assert_eq!(world.running().as_deref(), Some(running));
    assert!(world.alert().is_none(), "{:?}", world.alert());
    assert!(!world.snapshots().exists());
    let journaled = std::fs::read_dir(world.test.path().join("state").join("journal").join("ops"))
        .map_or(0, |entries| entries.count());
    assert_eq!(journaled, 0, "a refusal journals nothing");
}

/// Zero downtime: the fixture's 1.0.0 has no volumes, so a stateful app of
/// it cannot be snapshotted; the upgrade is refused while it still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_app_without_volumes_is_refused_before_it_is_undeployed() {
    let world = World::start_at("rfnovol", true, true, V1_0).await;
    // The workstation's dry run predicts it, once the agent has reported.
    let server = world.server.as_ref().unwrap();
    wait_for("the dry run to skip the app for lack of volumes", PATIENCE, || {
        let planned = server.cli_json(&["upgrade", FIXTURE_RECIPE, "--to", V1_1, "--dry-run"]);
        async move {
            let host = &planned["hosts"][0];
            let message = host["message"].as_str().unwrap_or_default();
            if host["outcome"] == "skipped" && message.starts_with("stateful without volumes") {
                Ok(())
            } else {
                Err(planned.to_string())
            }
        }
    })
    .await;
    let table = server.cli(&["upgrade", FIXTURE_RECIPE, "--to", V1_1, "--dry-run"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("skipped: stateful without volumes"), "{table}");
    refused_untouched(
        &world,
        &["--to", V1_1],
        V1_0,
        "stateful but the stack has no volumes: cannot snapshot, so nothing was stopped",
    );
    assert!(!world
        .test
        .abra_log()
        .iter()
        .any(|line| line.starts_with("app undeploy")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_across_a_major_needs_major_and_progress_talks_while_it_runs() {
    // Default timing (a 5 min health timeout): the downgrade below must pass
    // its gate on a loaded machine too.
    let world = World::start_full("rfdown", false, false, "", true, V2_0).await;
    refused_untouched(
        &world,
        &["--to", V1_3],
        V2_0,
        &format!("{V2_0} -> {V1_3} moves down across the recipe's major version"),
    );

    // With --major it runs; --progress alone waits and says what it waits
    // for, as `apply --progress` does, in lines that fit 100 columns.
    let output = world
        .agent()
        .command(&["upgrade", &world.domain, "--to", V1_3, "--major", "--progress"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}\n{}", world.agent().log());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("SUCCEEDED"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains(&format!("... {}: upgrade {V2_0} -> {V1_3}: ", world.domain)),
        "{stderr}"
    );
    assert!(stderr.lines().all(|line| line.chars().count() <= 100), "{stderr}");
    assert_eq!(world.running().as_deref(), Some(V1_3));
}

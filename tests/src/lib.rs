//! Shared helpers for the end-to-end tests: locating the workspace's real
//! binaries, starting the real server on a free port, and polling for
//! conditions with a deadline instead of sleeping.

// Tests start the real binaries, docker and nix themselves, as an operator would.
#![allow(clippy::disallowed_methods)]

pub mod agent;
pub mod agent_campaign;
pub mod browser;
pub mod campaign;
pub mod dashboard;
pub mod disk;
pub mod docker;
pub mod load;
pub mod server;
pub mod simulated;
pub mod store_crash;
pub mod webhook;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Path of one of the workspace's binaries (`ccfleet-server`, `ccfleet-agent`,
/// `ccfleet`), built by `cargo build --workspace` next to the test executable's
/// `deps/` directory. Panics with the command to run when it is missing, so a
/// test never passes against nothing.
pub fn binary(name: &str) -> PathBuf {
    let executable = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/it-<hash> (a test) or target/<profile>/fleet-bench
    // (a benchmark) -> target/<profile>/<name>
    let mut profile_dir = executable.parent().expect("an executable lives in a directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("deps/ lives in target/<profile>");
    }
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests (README.md, \"Tests\")",
        path.display()
    );
    path
}

pub use ccfleet_proto::error_chain;

/// Polls `condition` until it returns `Ok`, or panics after `deadline` with
/// `what` and the last observation. This is how tests wait for the system to
/// reach a state: on the event, bounded, never a bare sleep.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    poll_for(what, deadline, condition)
        .await
        .unwrap_or_else(|timed_out| panic!("{timed_out}"))
}

/// [`wait_for`] that returns the timeout (with `what` and the last
/// observation) as an error instead of panicking, for runners that record it.
pub async fn poll_for<T, F, Fut>(what: &str, deadline: Duration, mut condition: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::from("never observed");
    // Polls are spaced by a ticker, not used for synchronisation: the loop ends
    // on the condition, and the deadline bounds it.
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    while start.elapsed() < deadline {
        ticker.tick().await;
        match condition().await {
            Ok(value) => return Ok(value),
            Err(observation) => last = observation,
        }
    }
    Err(format!(
        "timed out after {deadline:?} waiting for {what}; last observation: {last}"
    ))
}

//! Benchmark of the dashboard's version matrix page: renders the page for a
//! fleet of `--hosts` hosts with `--apps` apps each (every app on one page),
//! from the Admin API's messages to HTML, as the dashboard does per request,
//! and prints the time per render. BENCHMARKS.md records its figures.
//!
//!     cargo run --release -p ccfleet --example dashboard-bench -- --hosts 1000 --apps 3 --runs 50

use std::time::{Duration, Instant};

use ccfleet_proto::pb;

fn argument(name: &str, default: usize) -> usize {
    let arguments: Vec<String> = std::env::args().collect();
    match arguments.iter().position(|argument| argument == name) {
        Some(index) => arguments
            .get(index + 1)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{name} takes a number")),
        None => default,
    }
}

fn main() {
    let hosts = argument("--hosts", 1000);
    let apps_per_host = argument("--apps", 3);
    let runs = argument("--runs", 50).max(1);
    let recipes = [
        "ghost",
        "keycloak",
        "matrix-synapse",
        "nextcloud",
        "wordpress",
        "mumble",
    ];
    let versions = ["1.4.0+6.43.0", "1.3.0+6.42.0", "2.0.0+7.0.0"];
    let states = [
        pb::AppState::Converged,
        pb::AppState::Converged,
        pb::AppState::Converging,
        pb::AppState::Degraded,
    ];
    let mut apps = Vec::new();
    let mut alerts = Vec::new();
    for host in 0..hosts {
        let host_id = format!("host-{host:05}");
        for app in 0..apps_per_host {
            let recipe = recipes[(host + app) % recipes.len()];
            let domain = format!("{recipe}-{app}.{host_id}.example.org");
            let version = versions[(host * 7 + app) % versions.len()];
            apps.push(pb::HostApp {
                host_id: host_id.clone(),
                host_status: if host % 50 == 0 {
                    pb::HostStatus::Offline
                } else {
                    pb::HostStatus::Online
                } as i32,
                app: Some(pb::ObservedApp {
                    domain: domain.clone(),
                    recipe: recipe.into(),
                    observed_version: version.into(),
                    declared_version: version.into(),
                    state: states[(host + app) % states.len()] as i32,
                    desired_replicas: 2,
                    running_replicas: 2,
                    drift: if host % 13 == 0 {
                        vec!["declared 1.4.0+6.43.0, running 1.3.0+6.42.0".into()]
                    } else {
                        Vec::new()
                    },
                    available_version: "1.4.0+6.43.0".into(),
                    ..Default::default()
                }),
                observed_at: None,
            });
            if host % 17 == 0 && app == 0 {
                alerts.push(pb::Alert {
                    host_id: host_id.clone(),
                    domain,
                    severity: pb::AlertSeverity::Warning as i32,
                    outcome: pb::OperationOutcome::Held as i32,
                    ..Default::default()
                });
            }
        }
    }
    let mut times = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let html =
            ccfleet::dashboard::pages::render_matrix("https://fleet.example.org:7443", &apps, &alerts, "", 10_000)
                .expect("the matrix renders");
        times.push(start.elapsed());
        bytes = html.len();
    }
    times.sort();
    let median = times[times.len() / 2];
    let max = times[times.len() - 1];
    let millis = |duration: Duration| duration.as_secs_f64() * 1000.0;
    println!(
        "matrix page: {hosts} hosts, {} apps, {} alerts, {bytes} bytes of HTML; {runs} renders: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        apps.len(),
        alerts.len(),
        millis(times[0]),
        millis(median),
        millis(max)
    );
}

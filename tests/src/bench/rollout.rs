//! `fleet-bench --rollout`: a rollout across N simulated agents that answer
//! after seeded random delays, timed from start to settled.

use super::*;

/// How long one simulated agent may take to open its stream (they connect
/// while the ones before them are awaited).
const CONNECT_DEADLINE: Duration = Duration::from_secs(600);

pub async fn rollout_bench(agents: usize, concurrency: usize) {
    let seed = argument("--seed", 42) as u64;
    let (min_delay, max_delay) = (
        argument("--min-delay-ms", 100) as u64,
        argument("--max-delay-ms", 500) as u64,
    );
    let fail_percent = argument("--fail-percent", 2) as u64;
    let batch_percent = argument("--batch-percent", 10) as u32;
    let directory = tempfile::tempdir().expect("a temporary directory");
    // Every simulated host connects from 127.0.0.1, enrolling and opening
    // its stream while others do: one source with hundreds of handshakes,
    // which the default per-source share (64) would cut short.
    let server = TestServer::start(&directory.path().join("data"), &["--handshakes-per-source", "1024"]);
    let pid = server.pid();
    let token = server.create_token(&["--uses", &agents.to_string(), "--ttl", "2h"]);
    let url = server.url();
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for index in 0..agents {
        let (gate, url, token) = (gate.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let host = format!("host-{index:05}");
            let key = ccfleet_proto::tls::generate_key_and_request(&host).unwrap();
            enroll_with_key(&url, &token, &host, &key.private_key_pem, &key.csr_pem)
                .await
                .expect("enrolment")
        }));
    }
    let mut random = Random(seed.max(1));
    let mut delays = Vec::with_capacity(agents);
    let mut simulated = Vec::with_capacity(agents);
    let mut failing = 0;
    for (index, task) in tasks.into_iter().enumerate() {
        let credential = task.await.unwrap();
        let delay = Duration::from_millis(min_delay + random.below(max_delay.saturating_sub(min_delay) + 1));
        let fails = random.below(100) < fail_percent;
        failing += usize::from(fails);
        delays.push(delay);
        let behaviour = Behaviour {
            delay,
            outcome: if fails {
                pb::OperationOutcome::RolledBack
            } else {
                pb::OperationOutcome::Succeeded
            },
            ..Behaviour::default()
        };
        simulated.push(SimulatedAgent::start(
            url.clone(),
            credential,
            &format!("host-{index:05}"),
            "ghost",
            "1.3.0+6.42.0-alpine",
            behaviour,
        ));
    }
    // Each agent announces its first stream (its Welcome arrived, so the
    // server has it online); the listing then confirms the whole fleet.
    for agent in &simulated {
        agent.connected(CONNECT_DEADLINE).await;
    }
    let mut admin = admin_client(&server).await;
    let online = online_hosts(&mut admin).await;
    assert_eq!(
        online, agents,
        "every agent connected, but the server lists {online} online"
    );
    println!("rollout bench: {agents} agents online ({failing} set to fail, delays {min_delay}..={max_delay} ms, seed {seed})");

    let (_, cpu_before) = process_usage(pid);
    let started = Instant::now();
    let request = pb::StartRolloutRequest {
        recipe: "ghost".into(),
        version: "1.4.0+6.43.0-alpine".into(),
        strategy: Some(pb::RolloutStrategy {
            canary: Some(pb::HostQuantity {
                quantity: Some(pb::host_quantity::Quantity::Count(1)),
            }),
            batch: Some(pb::HostQuantity {
                quantity: Some(pb::host_quantity::Quantity::Percent(batch_percent)),
            }),
            max_failure_ratio: 0.05,
            host_deadline_seconds: 120,
            ..Default::default()
        }),
        ..Default::default()
    };
    let rollout = admin.start_rollout(request).await.expect("rollout starts").into_inner();
    // Followed as the CLI's --follow and the dashboard follow it: the whole
    // rollout once, then what changed.
    let mut watch = admin
        .watch_rollout_changes(pb::GetRolloutRequest { id: rollout.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut followed = ccfleet_proto::watch::FollowedRollout::new();
    let mut updates = 0;
    let mut hosts_sent = 0;
    while let Some(change) = watch.message().await.expect("watch") {
        hosts_sent += if change.whole {
            change.rollout.as_ref().map_or(0, |rollout| rollout.hosts.len())
        } else {
            change.hosts.len()
        };
        followed.apply(change).expect("the watch's changes fit the rollout");
        updates += 1;
    }
    let last = followed.current().cloned().unwrap_or(rollout);
    let wall = started.elapsed();
    let (rss, cpu_after) = process_usage(pid);
    // The agents' own time on the critical path: the slowest host of each wave.
    let mut slowest: std::collections::BTreeMap<u32, Duration> = std::collections::BTreeMap::new();
    for host in &last.hosts {
        let index: usize = host.host_id.trim_start_matches("host-").parse().unwrap();
        let entry = slowest.entry(host.wave).or_default();
        *entry = (*entry).max(delays[index]);
    }
    let agent_time: Duration = slowest.values().sum();
    let mut outcomes: std::collections::BTreeMap<i32, usize> = std::collections::BTreeMap::new();
    for host in &last.hosts {
        *outcomes.entry(host.outcome).or_default() += 1;
    }
    let outcomes: Vec<String> = outcomes
        .iter()
        .map(|(outcome, count)| {
            let name = pb::HostOutcome::try_from(*outcome).map_or("unknown", |outcome| outcome.as_str_name());
            format!("{count} {name}")
        })
        .collect();
    println!(
        "rollout {} ended {} ({}) in {} waves after {:.2} s ({updates} watch updates carrying {hosts_sent} host records); agents' own delays on the \
         critical path {:.2} s; orchestration overhead {:.2} s ({:.1} ms per wave); server CPU {:.2} s, RSS {rss:.0} MiB",
        last.id,
        pb::RolloutState::try_from(last.state).map_or("unknown", |state| state.as_str_name()),
        outcomes.join(", "),
        slowest.len(),
        wall.as_secs_f64(),
        agent_time.as_secs_f64(),
        (wall.saturating_sub(agent_time)).as_secs_f64(),
        wall.saturating_sub(agent_time).as_secs_f64() * 1000.0 / slowest.len().max(1) as f64,
        cpu_after - cpu_before,
    );
    for agent in simulated {
        agent.stop().await;
    }
}

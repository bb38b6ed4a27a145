//! Staged rollouts end to end: the real server over real mTLS, the real CLI,
//! and simulated agents (real Agent streams that answer upgrade and rollback
//! commands from a script). Waves, the failure budget and rollback on halt,
//! operator actions mid-rollout, a SIGKILLed server, hosts that are away.
//! (Over 600 lines: every scenario shares the simulated fleet set up here.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use ccfleet_proto::pb;
use ccfleet_proto::tls::Credential;
use ccfleet_tests::server::{run_cli, TestServer};
use ccfleet_tests::simulated::{Behaviour, SimulatedAgent};
use ccfleet_tests::wait_for;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// The CLI on a blocking thread, so simulated agents keep running meanwhile.
async fn cli(server: &TestServer, args: &[&str]) -> Output {
    let (url, credentials) = (server.url(), server.admin_credential_path());
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&url, &credentials, &args)
    })
    .await
    .unwrap()
}

async fn cli_json(server: &TestServer, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = cli(server, &all).await;
    assert!(
        output.status.success(),
        "ccfleet {all:?} failed: {}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    serde_json::from_slice(&output.stdout).expect("ccfleet --json prints JSON")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

struct Fleet {
    agents: Vec<SimulatedAgent>,
    credentials: Vec<Credential>,
}

/// `hosts` simulated agents named `<prefix>-<n>` running fixture 1.0.0,
/// each with `behaviour(n)`, all online.
async fn fleet(server: &TestServer, prefix: &str, hosts: usize, behaviour: impl Fn(usize) -> Behaviour) -> Fleet {
    let mut agents = Vec::new();
    let mut credentials = Vec::new();
    for index in 0..hosts {
        let host_id = format!("{prefix}-{index}");
        let credential = server.enroll(&host_id).await;
        agents.push(SimulatedAgent::start(
            server.url(),
            credential.clone(),
            &host_id,
            "fixture",
            "1.0.0",
            behaviour(index),
        ));
        credentials.push(credential);
    }
    wait_for("every simulated host online", DEADLINE, || async {
        let hosts = cli_json(server, &["hosts"]).await;
        let online = hosts
            .as_array()
            .unwrap()
            .iter()
            .filter(|host| host["status"] == "online")
            .count();
        if online == agents.len() {
            Ok(())
        } else {
            Err(format!("{online} online"))
        }
    })
    .await;
    Fleet { agents, credentials }
}

fn outcomes(rollout: &Value) -> Vec<String> {
    rollout["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|host| {
            format!(
                "{} w{} {}",
                host["host_id"].as_str().unwrap(),
                host["wave"],
                host["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

async fn rollout_state(server: &TestServer, id: &str) -> Value {
    cli_json(server, &["rollout", "show", id]).await
}

async fn wait_for_state(server: &TestServer, id: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, DEADLINE, || async {
        let rollout = rollout_state(server, id).await;
        if condition(&rollout) {
            Ok(rollout)
        } else {
            Err(format!("{} {:?}", rollout["state"], outcomes(&rollout)))
        }
    })
    .await
}

/// [`outcomes`] with the reason of each host that failed or rolled back, for
/// failure messages.
fn explained(rollout: &Value) -> Vec<String> {
    outcomes(rollout)
        .into_iter()
        .zip(rollout["hosts"].as_array().unwrap())
        .map(|(outcome, host)| match host["message"].as_str() {
            Some(message) if !message.is_empty() && !outcome.ends_with("succeeded") => {
                format!("{outcome} ({message})")
            }
            _ => outcome,
        })
        .collect()
}

fn host_outcome<'a>(rollout: &'a Value, host_id: &str) -> &'a str {
    rollout["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|host| host["host_id"] == host_id)
        .and_then(|host| host["outcome"].as_str())
        .unwrap_or("absent")
}

/// Every agent carried out each of its operations once and was sent one
/// upgrade operation id at most (re-deliveries reuse it).
fn assert_no_double_dispatch(fleet: &Fleet) {
    for agent in &fleet.agents {
        let upgrade_ids: BTreeSet<String> = agent
            .received()
            .into_iter()
            .filter(|received| received.kind == "upgrade")
            .map(|received| received.operation_id)
            .collect();
        assert!(upgrade_ids.len() <= 1, "{} got {upgrade_ids:?}", agent.host_id);
        let executed = agent.executed();
        let distinct: BTreeSet<&String> = executed.iter().collect();
        assert_eq!(distinct.len(), executed.len(), "{} ran {executed:?}", agent.host_id);
    }
}

fn save_output(name: &str, output: &Output) {
    // Kept for the walk-through in docs/notes/rollout.md.
    if let Ok(directory) = std::env::var("CCFLEET_ROLLOUT_TRANSCRIPTS") {
        let path = PathBuf::from(directory).join(name);
        let _ = std::fs::write(path, text(output));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_watches_follow_a_rollout_to_its_end_and_a_change_carries_only_the_hosts_it_changed() {
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    let _fleet = fleet(&server, "watch", 12, |_| Behaviour::default()).await;
    let channel = server.channel_as(&server.admin_credential()).await;
    let mut admin =
        pb::admin_client::AdminClient::new(channel).max_decoding_message_size(ccfleet_proto::MAX_ADMIN_RESPONSE_BYTES);
    let started = admin
        .start_rollout(pb::StartRolloutRequest {
            recipe: "fixture".into(),
            version: "1.1.0".into(),
            strategy: Some(pb::RolloutStrategy {
                canary: Some(pb::HostQuantity {
                    quantity: Some(pb::host_quantity::Quantity::Count(1)),
                }),
                batch: Some(pb::HostQuantity {
                    quantity: Some(pb::host_quantity::Quantity::Count(4)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let request = || pb::GetRolloutRequest { id: started.id.clone() };
    let mut changes = admin.watch_rollout_changes(request()).await.unwrap().into_inner();
    let mut wholes = admin.clone().watch_rollout(request()).await.unwrap().into_inner();
    let (changes, wholes) = tokio::join!(
        async {
            let mut followed = ccfleet_proto::watch::FollowedRollout::new();
            let mut sizes = Vec::new();
            while let Some(change) = changes.message().await.unwrap() {
                sizes.push((change.whole, change.hosts.len()));
                followed.apply(change).unwrap();
            }
            (followed.current().cloned().unwrap(), sizes)
        },
        async {
            let mut last = None;
            let mut count = 0;
            while let Some(rollout) = wholes.message().await.unwrap() {
                assert_eq!(rollout.hosts.len(), 12, "WatchRollout sends every host every time");
                last = Some(rollout);
                count += 1;
            }
            (last.unwrap(), count)
        }
    );
    let stored = admin.get_rollout(request()).await.unwrap().into_inner();
    assert_eq!(stored.state, pb::RolloutState::Completed as i32);
    // Both end where the stored rollout is, host for host.
    assert_eq!(changes.0, stored);
    assert_eq!(wholes.0, stored);
    let (followed, sizes) = changes;
    assert_eq!(followed.hosts.len(), 12);
    // The whole rollout first, then changes: a few hosts each, never all.
    assert!(sizes[0].0, "{sizes:?}");
    assert!(sizes.len() > 3, "a change per transition: {sizes:?}");
    assert!(
        sizes[1..].iter().all(|&(whole, hosts)| !whole && hosts < 12),
        "{sizes:?}"
    );
    assert!(wholes.1 > 3, "{} whole rollouts", wholes.1);
    // A rollout that does not exist is refused by both.
    let missing = pb::GetRolloutRequest {
        id: "fixture-nothere".into(),
    };
    let refused = admin.watch_rollout_changes(missing.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let refused = admin.watch_rollout(missing).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    // A settled rollout is sent whole once, and the watch ends.
    let mut again = admin.watch_rollout_changes(request()).await.unwrap().into_inner();
    let first = again.message().await.unwrap().unwrap();
    assert!(first.whole);
    assert_eq!(first.rollout.unwrap(), stored);
    assert!(again.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_then_batches_move_every_host_and_the_audit_log_records_who() {
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    let fleet = fleet(&server, "web", 5, |_| Behaviour::default()).await;

    let dry_run = cli(
        &server,
        &[
            "upgrade",
            "fixture",
            "--to",
            "1.1.0",
            "--canary",
            "1",
            "--batch",
            "2",
            "--dry-run",
        ],
    )
    .await;
    assert!(dry_run.status.success(), "{}", text(&dry_run));
    save_output("dry-run.txt", &dry_run);
    let shown = text(&dry_run);
    assert!(
        shown.contains("dry run: fixture to 1.1.0; nothing was started"),
        "{shown}"
    );
    assert!(shown.contains("upgrade to 1.1.0"), "{shown}");
    let planned = cli_json(
        &server,
        &[
            "upgrade",
            "fixture",
            "--to",
            "1.1.0",
            "--canary",
            "1",
            "--batch",
            "2",
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(
        outcomes(&planned),
        [
            "web-0 w0 pending",
            "web-1 w1 pending",
            "web-2 w1 pending",
            "web-3 w2 pending",
            "web-4 w2 pending"
        ]
    );
    assert_eq!(
        cli_json(&server, &["rollout", "ls"]).await,
        serde_json::json!([]),
        "a dry run stores nothing"
    );

    let followed = cli(
        &server,
        &[
            "upgrade", "fixture", "--to", "1.1.0", "--canary", "1", "--batch", "2", "--follow",
        ],
    )
    .await;
    save_output("follow.txt", &followed);
    assert_eq!(followed.status.code(), Some(0), "{}\n{}", text(&followed), server.log());
    let shown = text(&followed);
    assert!(
        shown.contains("wave 2  web-4  app.web-4.example.org  1.0.0 -> 1.1.0  succeeded"),
        "{shown}"
    );
    for agent in &fleet.agents {
        assert_eq!(agent.version(), "1.1.0", "{}", agent.host_id);
        assert_eq!(agent.executed().len(), 1);
    }
    assert_no_double_dispatch(&fleet);
    let listed = cli_json(&server, &["rollout", "ls"]).await;
    assert_eq!(listed[0]["state"], "completed");
    assert_eq!(listed[0]["created_by"], "admin");

    // Already at the target: succeeded without a command.
    wait_for("inventories at 1.1.0", DEADLINE, || async {
        let versions = cli_json(&server, &["versions", "fixture"]).await;
        if versions["versions"].as_array().unwrap().len() == 1 && versions["versions"][0]["version"] == "1.1.0" {
            Ok(())
        } else {
            Err(versions.to_string())
        }
    })
    .await;
    // Nothing to do: the rollout is stored and completes, the JSON is printed, and it exits 8.
    let again = cli(&server, &["--json", "upgrade", "fixture", "--to", "1.1.0"]).await;
    assert_eq!(again.status.code(), Some(8), "{}", text(&again));
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["state"], "completed");
    assert!(again["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|host| host["message"] == "already at 1.1.0"));
    assert!(fleet.agents.iter().all(|agent| agent.received().len() == 1));

    let audit = cli_json(&server, &["audit", "--since", "1h"]).await;
    let actions: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            format!(
                "{} {}",
                entry["who"].as_str().unwrap(),
                entry["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(actions[0], "admin rollout.start");
    assert_eq!(actions[1], "admin rollout.start");
    assert_eq!(
        actions.iter().filter(|action| *action == "admin token.create").count(),
        5
    );
    let table = cli(&server, &["audit"]).await;
    save_output("audit.txt", &table);
    for agent in fleet.agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_host_halts_the_rollout_and_the_upgraded_hosts_roll_back() {
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    // web-1 (wave 1) fails; web-2 (wave 1 too) is slower and still in flight.
    let fleet = fleet(&server, "web", 5, |index| Behaviour {
        outcome: if index == 1 {
            pb::OperationOutcome::RolledBack
        } else {
            pb::OperationOutcome::Succeeded
        },
        delay: Duration::from_millis(if index == 2 { 1500 } else { 100 }),
        ..Behaviour::default()
    })
    .await;
    let followed = cli(
        &server,
        &[
            "upgrade",
            "fixture",
            "--to",
            "1.1.0",
            "--canary",
            "1",
            "--batch",
            "2",
            "--max-failures",
            "1",
            "--rollback-on-halt",
            "--follow",
        ],
    )
    .await;
    save_output("halt.txt", &followed);
    assert_eq!(followed.status.code(), Some(6), "{}\n{}", text(&followed), server.log());
    let shown = text(&followed);
    assert!(
        shown.contains("halted: 1 host(s) failed, the failure budget is 1"),
        "{shown}"
    );
    let rollout = cli_json(&server, &["rollout", "ls"]).await[0].clone();
    assert_eq!(rollout["state"], "halted");
    assert_eq!(
        outcomes(&rollout),
        [
            "web-0 w0 rolled_back",
            "web-1 w1 rolled_back",
            "web-2 w1 rolled_back",
            "web-3 w2 pending",
            "web-4 w2 pending"
        ]
    );
    for (index, agent) in fleet.agents.iter().enumerate() {
        let kinds: Vec<(&str, String)> = agent.received().into_iter().map(|r| (r.kind, r.version)).collect();
        let expect: Vec<(&str, String)> = match index {
            0 | 2 => vec![("upgrade", "1.1.0".into()), ("rollback", "1.0.0".into())],
            1 => vec![("upgrade", "1.1.0".into())],
            _ => vec![],
        };
        assert_eq!(kinds, expect, "{}", agent.host_id);
        assert_eq!(agent.version(), "1.0.0", "{} is back on 1.0.0", agent.host_id);
    }
    assert_no_double_dispatch(&fleet);
    for agent in fleet.agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_promote_resume_and_abort_from_the_cli_mid_rollout() {
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    let fleet = fleet(&server, "web", 5, |index| Behaviour {
        delay: Duration::from_millis(if index == 0 { 50 } else { 3000 }),
        ..Behaviour::default()
    })
    .await;
    let started = cli_json(
        &server,
        &[
            "upgrade",
            "fixture",
            "--to",
            "1.1.0",
            "--canary",
            "1",
            "--batch",
            "2",
            "--pause-after-canary",
        ],
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    let paused = wait_for_state(&server, &id, "the canary gate", |rollout| rollout["state"] == "paused").await;
    assert_eq!(paused["reason"], "the canary wave finished; waiting for promote");
    assert_eq!(paused["canary_gate"], "closed");
    assert_eq!(paused["paused_by_operator"], false);

    // One active rollout per recipe: a second is refused with the first's id.
    let second = cli(&server, &["upgrade", "fixture", "--to", "1.1.0"]).await;
    assert_eq!(second.status.code(), Some(4), "{}", text(&second));
    assert!(
        text(&second).contains(&format!("rollout {id} of this recipe has not ended"))
            && text(&second).contains(&format!("`ccfleet rollout abort {id}`")),
        "{}",
        text(&second)
    );

    // Pause beats promote: the gate opens, but the rollout stays paused.
    cli_json(&server, &["rollout", "pause", &id, "--reason", "checking the canary"]).await;
    let promoted = cli_json(&server, &["rollout", "promote", &id]).await;
    assert_eq!(promoted["state"], "paused");
    assert_eq!(promoted["reason"], "paused by an operator");
    // The gate and the pause are shown apart: promote opened the gate.
    assert_eq!(promoted["canary_gate"], "open");
    assert_eq!(promoted["paused_by_operator"], true);
    let shown = cli(&server, &["rollout", "show", &id]).await;
    assert!(
        text(&shown).contains("canary gate open; paused by an operator"),
        "{}",
        text(&shown)
    );
    assert!(fleet.agents[1].received().is_empty(), "nothing dispatched while paused");
    let resumed = cli_json(&server, &["rollout", "resume", &id]).await;
    assert_eq!(resumed["state"], "running");
    assert_eq!(host_outcome(&resumed, "web-1"), "dispatched");

    // Abort while wave 1 is in flight: it finishes, nothing else is sent.
    let aborted = cli(&server, &["rollout", "abort", &id, "--reason", "enough for today"]).await;
    assert!(aborted.status.success(), "{}", text(&aborted));
    let refused = cli(&server, &["rollout", "resume", &id]).await;
    assert_eq!(refused.status.code(), Some(4));
    assert!(
        text(&refused).contains("is aborted; nothing restarts or changes it"),
        "{}",
        text(&refused)
    );
    let followed = cli(&server, &["rollout", "show", &id, "--follow"]).await;
    save_output("abort.txt", &followed);
    assert_eq!(followed.status.code(), Some(7), "{}", text(&followed));
    let finished = rollout_state(&server, &id).await;
    assert_eq!(finished["reason"], "aborted: enough for today");
    assert_eq!(
        outcomes(&finished),
        [
            "web-0 w0 succeeded",
            "web-1 w1 succeeded",
            "web-2 w1 succeeded",
            "web-3 w2 pending",
            "web-4 w2 pending"
        ]
    );
    assert!(fleet.agents[3].received().is_empty() && fleet.agents[4].received().is_empty());

    let audit = cli_json(&server, &["audit"]).await;
    let entries: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .take(5)
        .map(|entry| {
            format!(
                "{} {} {}",
                entry["action"].as_str().unwrap(),
                entry["target"].as_str().unwrap(),
                entry["detail"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            format!("rollout.abort {id} enough for today"),
            format!("rollout.resume {id} "),
            format!("rollout.promote {id} "),
            format!("rollout.pause {id} checking the canary"),
            format!("rollout.start {id} fixture to 1.1.0: canary 1, batch 2, max failures 1, pause after canary"),
        ]
    );
    for agent in fleet.agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_wave_resumes_and_dispatches_no_host_twice() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let server = TestServer::start(&data, &[]);
    let port = server.address.port();
    let fleet = fleet(&server, "web", 6, |_| Behaviour {
        delay: Duration::from_millis(1500),
        ..Behaviour::default()
    })
    .await;
    let started = cli_json(
        &server,
        &["upgrade", "fixture", "--to", "1.1.0", "--canary", "1", "--batch", "2"],
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    wait_for_state(&server, &id, "wave 1 in flight", |rollout| {
        ["web-1", "web-2"]
            .iter()
            .all(|host| matches!(host_outcome(rollout, host), "dispatched" | "upgrading"))
    })
    .await;
    server.kill();

    let server = TestServer::start_on(&data, port, &[]);
    let finished = wait_for_state(&server, &id, "the resumed rollout to complete", |rollout| {
        rollout["state"] == "completed"
    })
    .await;
    assert!(
        outcomes(&finished).iter().all(|outcome| outcome.ends_with("succeeded")),
        "{:?}",
        outcomes(&finished)
    );
    assert_no_double_dispatch(&fleet);
    for agent in &fleet.agents {
        assert_eq!(agent.executed().len(), 1, "{} upgraded once", agent.host_id);
        assert_eq!(agent.version(), "1.1.0");
        assert!(
            agent.connections() >= 2,
            "{} reconnected after the restart",
            agent.host_id
        );
    }
    assert!(server.log().contains("resuming rollout"), "{}", server.log());
    let redelivered: Vec<&str> = fleet
        .agents
        .iter()
        .filter(|agent| agent.received().len() > agent.executed().len())
        .map(|agent| agent.host_id.as_str())
        .collect();
    assert!(
        !redelivered.is_empty(),
        "the restarted server re-delivered the commands in flight (same ids)"
    );
    for agent in fleet.agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_host_gets_its_command_on_reconnect_and_a_silent_one_times_out() {
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    let mut fleet = fleet(&server, "web", 3, |index| Behaviour {
        delay: Duration::from_millis(if index == 0 { 1000 } else { 50 }),
        answers: index != 2,
        ..Behaviour::default()
    })
    .await;
    let started = cli_json(
        &server,
        &[
            "upgrade",
            "fixture",
            "--to",
            "1.1.0",
            "--canary",
            "1",
            "--batch",
            "1",
            "--host-deadline",
            "4s",
        ],
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    // web-1 goes away while the canary runs; its wave is dispatched while it is offline.
    let away = fleet.agents.remove(1);
    away.stop().await;
    let dispatched = wait_for_state(&server, &id, "web-1 dispatched while offline", |rollout| {
        host_outcome(rollout, "web-1") == "dispatched"
    })
    .await;
    assert_eq!(host_outcome(&dispatched, "web-0"), "succeeded");
    let back = SimulatedAgent::start(
        server.url(),
        fleet.credentials[1].clone(),
        "web-1",
        "fixture",
        "1.0.0",
        Behaviour::default(),
    );
    let followed = cli(&server, &["rollout", "show", &id, "--follow"]).await;
    save_output("timeout.txt", &followed);
    assert_eq!(followed.status.code(), Some(6), "{}\n{}", text(&followed), server.log());
    let finished = rollout_state(&server, &id).await;
    assert_eq!(
        outcomes(&finished),
        ["web-0 w0 succeeded", "web-1 w1 succeeded", "web-2 w2 timed_out"]
    );
    assert_eq!(finished["reason"], "1 host(s) failed, the failure budget is 1");
    assert!(
        text(&followed).contains("no result within the host deadline of 4s"),
        "{}",
        text(&followed)
    );
    assert_eq!(back.executed().len(), 1, "the command reached web-1 when it came back");
    assert_eq!(back.version(), "1.1.0");
    back.stop().await;
    for agent in fleet.agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_defaults_to_what_a_majority_reports_and_pinned_offline_or_unselected_hosts_stay_out() {
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    let nothing_available = cli(&server, &["upgrade", "fixture", "--dry-run"]).await;
    assert_eq!(nothing_available.status.code(), Some(4), "{}", text(&nothing_available));
    assert!(
        text(&nothing_available).contains("no selected host runs recipe fixture"),
        "{}",
        text(&nothing_available)
    );
    let mut fleet = fleet(&server, "web", 4, |index| Behaviour {
        available_version: ["1.2.0", "1.1.0", "1.3.0", ""][index].into(),
        pinned_by_host: index == 2,
        ..Behaviour::default()
    })
    .await;
    let away = fleet.agents.pop().unwrap();
    away.stop().await;
    wait_for("web-3 offline", DEADLINE, || async {
        let hosts = cli_json(&server, &["hosts"]).await;
        if hosts[3]["status"] == "offline" {
            Ok(())
        } else {
            Err(hosts[3].to_string())
        }
    })
    .await;
    // Availability is what agents report, pinned and offline hosts included:
    // 1.2.0, 1.1.0, 1.3.0 and nothing. Only 1.1.0 is known to a majority (3
    // of 4 hosts: a host reporting 1.2.0 knows 1.1.0 too).
    let planned = cli_json(&server, &["upgrade", "fixture", "--dry-run"]).await;
    assert_eq!(planned["target_version"], "1.1.0");
    assert_eq!(
        outcomes(&planned),
        [
            "web-0 w0 pending",
            "web-1 w1 pending",
            "web-2 w0 skipped",
            "web-3 w0 skipped"
        ]
    );
    let reasons: Vec<&str> = planned["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|host| host["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["", "", "pinned by host configuration", "host offline at the start"]
    );
    let selected = cli_json(
        &server,
        &[
            "upgrade",
            "fixture",
            "--dry-run",
            "--hosts",
            "web-1",
            "--hosts",
            "web-9",
        ],
    )
    .await;
    assert_eq!(selected["target_version"], "1.1.0");
    assert_eq!(outcomes(&selected), ["web-1 w0 pending"]);
    // Two hosts: the version both know.
    let pair = cli_json(
        &server,
        &[
            "upgrade",
            "fixture",
            "--dry-run",
            "--hosts",
            "web-0",
            "--hosts",
            "web-2",
        ],
    )
    .await;
    assert_eq!(pair["target_version"], "1.2.0");
    // One host alone reports a version among two: no majority, refused with
    // the candidates.
    let alone = cli(
        &server,
        &[
            "upgrade",
            "fixture",
            "--dry-run",
            "--hosts",
            "web-2",
            "--hosts",
            "web-3",
        ],
    )
    .await;
    assert_eq!(alone.status.code(), Some(4), "{}", text(&alone));
    assert!(
        text(&alone).contains(
            "no version of fixture is reported available by a majority of the 2 selected hosts that run it \
             (at least 2); candidates: 1.3.0 (1 host); pass an explicit version with --to"
        ),
        "{}",
        text(&alone)
    );
    // The operator names the canary; the dry run shows it as wave 0.
    let canary = cli_json(&server, &["upgrade", "fixture", "--dry-run", "--canary-hosts", "web-1"]).await;
    assert_eq!(
        outcomes(&canary),
        [
            "web-0 w1 pending",
            "web-1 w0 pending",
            "web-2 w0 skipped",
            "web-3 w0 skipped"
        ]
    );
    let no_canary = cli(&server, &["upgrade", "fixture", "--dry-run", "--canary-hosts", "web-2"]).await;
    assert_eq!(no_canary.status.code(), Some(4), "{}", text(&no_canary));
    assert!(
        text(&no_canary).contains("--canary-hosts web-2 selects no host that takes part in the rollout"),
        "{}",
        text(&no_canary)
    );
    let by_label = cli_json(&server, &["upgrade", "fixture", "--dry-run", "--hosts", "site=test"]).await;
    assert_eq!(by_label["hosts"].as_array().unwrap().len(), 4);
    let nobody = cli(&server, &["upgrade", "fixture", "--dry-run", "--hosts", "site=mars"]).await;
    assert_eq!(nobody.status.code(), Some(4));
    let bad = cli(&server, &["upgrade", "fixture", "--dry-run", "--hosts", "Not A Host"]).await;
    assert_eq!(bad.status.code(), Some(4));
    assert!(
        text(&bad).contains("is neither a host id nor a key=value label"),
        "{}",
        text(&bad)
    );
    assert!(
        fleet.agents.iter().all(|agent| agent.received().is_empty()),
        "dry runs send nothing"
    );
    assert_eq!(cli_json(&server, &["rollout", "ls"]).await, serde_json::json!([]));
    for agent in fleet.agents {
        agent.stop().await;
    }
}

/// A rollout in which no host has anything to do (a major without
/// `--major`, every host already at the target) exits 8 and says why per
/// reason, instead of "completed"; its dry run says so too and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_with_nothing_to_do_exits_8_and_says_why() {
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    let fleet = fleet(&server, "idle", 2, |_| Behaviour::default()).await;

    let dry = cli(&server, &["upgrade", "fixture", "--to", "2.0.0", "--dry-run"]).await;
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry)
            .contains("nothing would be done: 2 host(s) skipped: 1.0.0 to 2.0.0 is a major upgrade; it needs --major"),
        "{}",
        text(&dry)
    );

    let major = cli(&server, &["upgrade", "fixture", "--to", "2.0.0"]).await;
    assert_eq!(major.status.code(), Some(8), "{}", text(&major));
    let said = String::from_utf8_lossy(&major.stderr);
    assert!(said.contains("has nothing to do: 2 host(s) skipped"), "{said}");
    assert!(said.contains("it needs --major"), "{said}");

    let same = cli(&server, &["upgrade", "fixture", "--to", "1.0.0", "--follow"]).await;
    assert_eq!(same.status.code(), Some(8), "{}", text(&same));
    assert!(
        String::from_utf8_lossy(&same.stderr).contains("has nothing to do: 2 host(s) already at 1.0.0"),
        "{}",
        text(&same)
    );
    assert!(
        fleet.agents.iter().all(|agent| agent.received().is_empty()),
        "no host was sent a command"
    );
    for agent in fleet.agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_action_is_audited_with_the_name_in_the_callers_certificate() {
    let directory = tempfile::tempdir().unwrap();
    let server = TestServer::start(&directory.path().join("data"), &[]);
    let fleet = fleet(&server, "web", 1, |_| Behaviour::default()).await;
    let ops = directory.path().join("ops.toml");
    let issued = cli(&server, &["admin", "issue", "ops", "--out", ops.to_str().unwrap()]).await;
    assert!(issued.status.success(), "{}", text(&issued));
    // The new admin acts under its own name.
    let token = {
        let (url, ops) = (server.url(), ops.clone());
        let output = tokio::task::spawn_blocking(move || run_cli(&url, &ops, &["--json", "token", "create"]))
            .await
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        let created: Value = serde_json::from_slice(&output.stdout).unwrap();
        created["info"]["id"].as_str().unwrap().to_owned()
    };
    for args in [
        vec!["token", "revoke", token.as_str()],
        vec!["host", "remove", "web-0"],
        vec!["admin", "revoke", "ops"],
    ] {
        let output = cli(&server, &args).await;
        assert!(output.status.success(), "{args:?}: {}", text(&output));
    }
    let audit = cli_json(&server, &["audit", "--since", "10m"]).await;
    let entries: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .take(5)
        .map(|entry| {
            format!(
                "{} {} {}",
                entry["who"].as_str().unwrap(),
                entry["action"].as_str().unwrap(),
                entry["target"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            "admin admin.revoke ops".to_owned(),
            "admin host.remove web-0".to_owned(),
            format!("admin token.revoke {token}"),
            format!("ops token.create {token}"),
            "admin admin.issue ops".to_owned(),
        ]
    );
    assert!(audit[0]["at"].as_str().unwrap().ends_with('Z'));
    let limited = cli_json(&server, &["audit", "--limit", "2"]).await;
    assert_eq!(limited.as_array().unwrap().len(), 2);
    for agent in fleet.agents {
        agent.stop().await;
    }
}

// ---------------------------------------------------------------------------
// Real agents on the real Docker Engine (through the abra test double).

mod real_agents {
    use std::path::PathBuf;
    use std::time::Duration;

    use ccfleet_tests::agent::AgentProcess;
    use ccfleet_tests::docker::{
        deployed_version, free_port, DockerTest, FIXTURE_RECIPE, V1_3, V1_3_1_MIGRATES, V1_6_HTTP_FAILS,
    };
    use ccfleet_tests::server::TestServer;
    use ccfleet_tests::wait_for;

    use super::{cli, cli_json, explained, host_outcome, outcomes, save_output, text, wait_for_state};

    const PATIENCE: Duration = Duration::from_secs(240);

    /// One host: its own Docker world (ABRA_DIR, state, unique domain, own
    /// probe port) and a real `ccfleet-agent` enrolled with the test server.
    struct RealHost {
        test: DockerTest,
        host_id: String,
        domain: String,
        agent: AgentProcess,
    }

    impl RealHost {
        fn start(server: &TestServer, index: usize) -> RealHost {
            let mut test = DockerTest::new(&format!("ro{index}"));
            let domain = test.domain("app");
            let host_id = format!("real-{index}");
            let port = free_port();
            let settings = format!(
                "observe_interval = \"1s\"\nreconcile_interval = \"1h\"\nmin_healthy_time = \"2s\"\n\
                 probe_address = \"127.0.0.1:{port}\"\nprobe_scheme = \"http\"\nstop_timeout = \"5s\"\n"
            );
            // A 30 s health timeout: five agents and their stacks share a
            // loaded CI machine, and only the failing release waits it out.
            let apps = format!(
                "[[app]]\ndomain = {domain:?}\nrecipe = {FIXTURE_RECIPE:?}\nversion = {V1_3:?}\n\
                 stateful = false\ndeploy_timeout = \"90s\"\n\n[app.env]\nHTTP_PORT = \"{port}\"\n\n\
                 [app.health]\npath = \"/health\"\ntimeout = \"30s\"\n"
            );
            let token_file = test.path().join("token");
            std::fs::write(&token_file, server.create_token(&["--uses", "1"])).unwrap();
            let config_text = test
                .agent_config_with(&settings, &apps)
                .replace(
                    "url = \"https://fleet.example.org\"",
                    &format!(
                        "url = {:?}\njoin_token_file = {:?}",
                        server.url(),
                        token_file.display().to_string()
                    ),
                )
                .replace("id = \"docker-test\"", &format!("id = {host_id:?}"));
            let config: PathBuf = test.path().join("agent.toml");
            std::fs::write(&config, config_text).unwrap();
            let agent = AgentProcess::start(&config, &test.path().join("control.sock"));
            RealHost {
                test,
                host_id,
                domain,
                agent,
            }
        }

        /// `abra app upgrade` calls the double saw for `version`.
        fn upgrades_to(&self, version: &str) -> usize {
            self.test
                .abra_log()
                .iter()
                .filter(|line| line.starts_with("app upgrade") && line.ends_with(&format!(" {version}")))
                .count()
        }
    }

    async fn converged(hosts: &[RealHost]) {
        for host in hosts {
            wait_for(&format!("{} to converge at {V1_3}", host.host_id), PATIENCE, || async {
                match deployed_version(&host.domain) {
                    Some(version) if version == V1_3 => Ok(()),
                    other => Err(format!("{other:?}; agent log tail: {}", tail(&host.agent.log()))),
                }
            })
            .await;
        }
    }

    fn tail(log: &str) -> String {
        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    }

    /// Five real agents; a rollout with a canary and batches of two moves
    /// them all; the server is SIGKILLed mid-wave and restarted, and no host
    /// is upgraded twice (counted in the double's log). Then a release that
    /// fails its health gate halts at the canary, which rolls itself back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn five_real_agents_roll_out_survive_a_server_kill_and_halt_on_a_failing_release() {
        let directory = tempfile::tempdir().unwrap();
        let data = directory.path().join("data");
        let server = TestServer::start(&data, &[]);
        let port = server.address.port();
        let hosts: Vec<RealHost> = (0..5).map(|index| RealHost::start(&server, index)).collect();
        converged(&hosts).await;
        wait_for("five hosts reporting fixture-web", PATIENCE, || async {
            let apps = cli_json(&server, &["apps", "--recipe", FIXTURE_RECIPE]).await;
            let at_v1_3 = apps
                .as_array()
                .unwrap()
                .iter()
                .filter(|app| app["version"] == V1_3 && app["host_status"] == "online")
                .count();
            if at_v1_3 == 5 {
                Ok(())
            } else {
                Err(apps.to_string())
            }
        })
        .await;

        let started = cli_json(
            &server,
            &[
                "upgrade",
                FIXTURE_RECIPE,
                "--to",
                V1_3_1_MIGRATES,
                "--canary",
                "1",
                "--batch",
                "2",
            ],
        )
        .await;
        let id = started["id"].as_str().unwrap().to_owned();
        let wave_1 = wait_for_state(&server, &id, "wave 1 dispatched", |rollout| {
            rollout["current_wave"] == 1
        })
        .await;
        server.kill();
        let server = TestServer::start_on(&data, port, &[]);
        let finished = wait_for(
            &format!("rollout {id} to complete after the restart"),
            PATIENCE,
            || async {
                let rollout = cli_json(&server, &["rollout", "show", &id]).await;
                if rollout["state"] == "completed" {
                    Ok(rollout)
                } else {
                    Err(format!("{} {:?}", rollout["state"], explained(&rollout)))
                }
            },
        )
        .await;
        assert!(
            outcomes(&finished).iter().all(|outcome| outcome.ends_with("succeeded")),
            "{:?} (at the kill: {:?})",
            explained(&finished),
            outcomes(&wave_1)
        );
        for host in &hosts {
            assert_eq!(
                deployed_version(&host.domain).as_deref(),
                Some(V1_3_1_MIGRATES),
                "{}",
                host.host_id
            );
            assert_eq!(
                host.upgrades_to(V1_3_1_MIGRATES),
                1,
                "{} upgraded once: {:?}",
                host.host_id,
                host.test.abra_log()
            );
        }

        let halted = cli(
            &server,
            &[
                "upgrade",
                FIXTURE_RECIPE,
                "--to",
                V1_6_HTTP_FAILS,
                "--canary",
                "1",
                "--batch",
                "2",
                "--max-failures",
                "1",
                "--rollback-on-halt",
                "--follow",
            ],
        )
        .await;
        save_output("real-agents-halt.txt", &halted);
        assert_eq!(halted.status.code(), Some(6), "{}\n{}", text(&halted), server.log());
        let rollout = cli_json(&server, &["rollout", "ls"]).await[0].clone();
        assert_eq!(
            host_outcome(&rollout, "real-0"),
            "rolled_back",
            "{:?}",
            outcomes(&rollout)
        );
        for host in &hosts {
            assert_eq!(
                deployed_version(&host.domain).as_deref(),
                Some(V1_3_1_MIGRATES),
                "{}",
                host.host_id
            );
        }
        assert_eq!(hosts[0].upgrades_to(V1_6_HTTP_FAILS), 1);
        assert!(hosts[1..].iter().all(|host| host.upgrades_to(V1_6_HTTP_FAILS) == 0));
    }
}

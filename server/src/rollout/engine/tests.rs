//! The engine over a real store: one active rollout per recipe, and a
//! restarted engine that applies results stored while it was down and
//! re-delivers outstanding commands with their original operation ids.

use std::sync::Arc;
use std::time::Duration;

use ccfleet_proto::pb;

use super::*;
use crate::model::{
    AgentEvent, HostOutcomeRecord, HostRecord, OperationOutcomeRecord, QuantityRecord, RolloutStateRecord,
    StrategyRecord,
};
use crate::rollout::plan::{plan, Candidate};

fn planned(recipe: &str, hosts: &[&str], canary: u32) -> RolloutRecord {
    let candidates = hosts
        .iter()
        .map(|host| Candidate {
            host_id: host.parse().unwrap(),
            domain: format!("app.{host}.example.org").parse().unwrap(),
            online: true,
            observed: Some("1.0.0".parse().unwrap()),
            pinned_by_host: false,
            canary: false,
            unsnapshottable: false,
        })
        .collect();
    let strategy = StrategyRecord {
        canary: QuantityRecord::Count(canary),
        batch: QuantityRecord::Count(1),
        max_failures: 1,
        max_failure_ppm: 0,
        pause_after_canary: false,
        wave_interval_ms: 0,
        host_deadline_ms: 600_000,
        progress_deadline_ms: 0,
        rollback_on_halt: false,
        allow_major: false,
    };
    plan(
        String::new(),
        recipe.parse().unwrap(),
        "1.1.0".parse().unwrap(),
        strategy,
        candidates,
        None,
        "admin".into(),
        now_millis(),
    )
    .unwrap()
}

fn register(store: &crate::store::Store, host: &str) {
    store
        .put_host(&HostRecord {
            agent_version: "test".into(),
            app_count: 1,
            ..HostRecord::new(host.parse().unwrap(), 1)
        })
        .unwrap();
}

/// An engine task over `store`, driven batch by batch by the test.
fn task_over(store: &StoreHandle) -> EngineTask {
    let (updates, _) = broadcast::channel(16);
    EngineTask {
        store: store.clone(),
        fleet: Arc::new(Fleet::new(Duration::from_secs(30))),
        live: HashMap::new(),
        updates,
        version: 0,
        last_id_millis: 0,
        retry: Vec::new(),
    }
}

/// A stream for `host` registered in `fleet`, as `AgentService` makes one.
fn open_stream(fleet: &Fleet, host: &str) -> tokio::sync::mpsc::Receiver<Result<pb::ServerMessage, tonic::Status>> {
    let host_id: HostId = host.parse().unwrap();
    let ticket = fleet.connect(&host_id);
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    fleet.attach(&host_id, ticket.connection_id, sender);
    receiver
}

async fn next_operation(
    receiver: &mut tokio::sync::mpsc::Receiver<Result<pb::ServerMessage, tonic::Status>>,
) -> String {
    let message = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
        .await
        .expect("a command within 10 s")
        .expect("the stream is open")
        .expect("not an error");
    match message.body {
        Some(pb::server_message::Body::Command(command)) => command.operation_id,
        other => panic!("expected a command, got {other:?}"),
    }
}

#[tokio::test]
async fn a_second_rollout_of_a_recipe_is_refused_with_the_first_ones_id() {
    let directory = tempfile::tempdir().unwrap();
    let store = StoreHandle::reopen(directory.path());
    let engine = RolloutEngine::start(store.clone(), Arc::new(Fleet::new(Duration::from_secs(30))))
        .await
        .unwrap();
    let first = engine.start_rollout(planned("ghost", &["a", "b"], 1)).await.unwrap();
    assert_eq!(first.state, RolloutStateRecord::Running);
    assert_eq!(first.hosts[0].operation_id, Some(format!("{}.0", first.id)));
    let stored = store.read({
        let id = first.id.clone();
        move |store| store.rollout(&id)
    });
    assert_eq!(stored.await.unwrap().as_ref(), Some(&first), "stored before the answer");
    match engine.start_rollout(planned("ghost", &["a"], 1)).await {
        Err(StartError::Active(id)) => assert_eq!(id, first.id),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let other_recipe = engine.start_rollout(planned("hedgedoc", &["a"], 1)).await.unwrap();
    assert_ne!(other_recipe.id, first.id);
    // Once the first ends, the recipe is free again.
    engine
        .act(first.id.clone(), Event::Abort { reason: String::new() })
        .await
        .unwrap();
    engine.agent_event(Event::Result {
        host_id: "a".parse().unwrap(),
        operation_id: format!("{}.0", first.id),
        outcome: OperationOutcomeRecord::Succeeded,
        from_version: None,
        to_version: None,
        running_version: None,
        message: String::new(),
    });
    let second = engine.start_rollout(planned("ghost", &["a"], 1)).await.unwrap();
    assert_ne!(second.id, first.id);
}

#[tokio::test]
async fn a_restarted_engine_applies_stored_results_and_redelivers_original_ids() {
    let directory = tempfile::tempdir().unwrap();
    let store = StoreHandle::reopen(directory.path());
    store
        .write(|store| {
            for host in ["a", "b", "c"] {
                register(store, host);
            }
            Ok(())
        })
        .await
        .unwrap();
    let fleet = Arc::new(Fleet::new(Duration::from_secs(30)));
    let engine = RolloutEngine::start(store.clone(), fleet.clone()).await.unwrap();
    let mut stream_b = open_stream(&fleet, "b");
    let rollout = engine
        .start_rollout(planned("ghost", &["a", "b", "c"], 2))
        .await
        .unwrap();
    let id = rollout.id.clone();
    assert_eq!(next_operation(&mut stream_b).await, format!("{id}.1"));
    // The engine goes away (the server died); meanwhile a's result reached the store.
    drop(engine);
    let operation = format!("{id}.0");
    store
        .write(move |store| {
            store.apply_event(
                &"a".parse().unwrap(),
                1,
                &AgentEvent::Result {
                    operation_id: operation,
                    domain: "app.a.example.org".parse().unwrap(),
                    outcome: OperationOutcomeRecord::Succeeded,
                    // a ran 1.0.5 by then, not the 1.0.0 seen at planning.
                    from_version: Some("1.0.5".parse().unwrap()),
                    to_version: Some("1.1.0".parse().unwrap()),
                    running_version: Some("1.1.0".parse().unwrap()),
                    message: "healthy".into(),
                },
            )
        })
        .await
        .unwrap();

    let fleet = Arc::new(Fleet::new(Duration::from_secs(30)));
    let engine = RolloutEngine::start(store.clone(), fleet.clone()).await.unwrap();
    // Messages are handled in order: this answer comes after the stored result was applied.
    let resumed = engine.act(id.clone(), Event::Resume).await.unwrap();
    assert_eq!(resumed.hosts[0].outcome, HostOutcomeRecord::Succeeded);
    assert_eq!(
        resumed.hosts[0].from_version,
        Some("1.0.5".parse().unwrap()),
        "the stored result's from_version is the rollback target"
    );
    assert_eq!(resumed.hosts[1].outcome, HostOutcomeRecord::Dispatched);
    assert_eq!(
        resumed.hosts[2].outcome,
        HostOutcomeRecord::Pending,
        "b has not answered yet"
    );
    let mut stream_b = open_stream(&fleet, "b");
    engine.host_connected("b".parse().unwrap());
    assert_eq!(
        next_operation(&mut stream_b).await,
        format!("{id}.1"),
        "the original id again"
    );
}

#[tokio::test]
async fn a_late_success_for_a_settled_halted_rollout_is_rolled_back() {
    let directory = tempfile::tempdir().unwrap();
    let store = StoreHandle::reopen(directory.path());
    store
        .write(|store| {
            register(store, "a");
            Ok(())
        })
        .await
        .unwrap();
    let fleet = Arc::new(Fleet::new(Duration::from_secs(30)));
    let engine = RolloutEngine::start(store.clone(), fleet.clone()).await.unwrap();
    let mut stream_a = open_stream(&fleet, "a");
    let mut updates = engine.subscribe();
    let mut plan = planned("ghost", &["a"], 1);
    plan.strategy.host_deadline_ms = 1000;
    plan.strategy.rollback_on_halt = true;
    let rollout = engine.start_rollout(plan).await.unwrap();
    let id = rollout.id.clone();
    assert_eq!(next_operation(&mut stream_a).await, format!("{id}.0"));
    // a times out: the rollout halts with nothing to roll back and is settled.
    let halted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let update = updates.recv().await.unwrap();
            if update.change.header.id == id && update.change.header.state == RolloutStateRecord::Halted {
                return update;
            }
        }
    })
    .await
    .expect("halted within 10 s");
    // The update carries the host that changed with the halt, not the whole rollout.
    let changed: Vec<(usize, HostOutcomeRecord)> = halted
        .change
        .hosts
        .iter()
        .map(|(position, host)| (*position, host.outcome))
        .collect();
    assert_eq!(changed, [(0, HostOutcomeRecord::TimedOut)]);
    assert!(!halted.whole);
    assert!(halted.settled);
    // Its upgrade finished after all (it had got the whole deadline again on a re-delivery).
    engine.agent_event(Event::Result {
        host_id: "a".parse().unwrap(),
        operation_id: format!("{id}.0"),
        outcome: OperationOutcomeRecord::Succeeded,
        from_version: Some("1.0.5".parse().unwrap()),
        to_version: Some("1.1.0".parse().unwrap()),
        running_version: Some("1.1.0".parse().unwrap()),
        message: "healthy".into(),
    });
    assert_eq!(next_operation(&mut stream_a).await, format!("{id}.0.rollback"));
    let stored = store.read(move |store| store.rollout(&id)).await.unwrap().unwrap();
    let host = &stored.hosts[0];
    assert_eq!(host.outcome, HostOutcomeRecord::TimedOut, "still a failure");
    assert!(host.succeeded_late);
    assert_eq!(
        host.rollback.as_ref().map(|rollback| rollback.version.to_string()),
        Some("1.0.5".to_owned())
    );
    // The recipe is busy again until that rollback reports.
    match engine.start_rollout(planned("ghost", &["a"], 1)).await {
        Err(StartError::Active(active)) => assert_eq!(active, stored.id),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn agent_results_of_a_batch_whose_store_write_failed_are_applied_with_the_next_batch() {
    let directory = tempfile::tempdir().unwrap();
    let store = StoreHandle::reopen(directory.path());
    let mut task = task_over(&store);
    let (reply, answer) = oneshot::channel();
    task.process(vec![Message::Start {
        rollout: Box::new(planned("ghost", &["a", "b"], 1)),
        reply,
    }])
    .await;
    let id = answer.await.unwrap().unwrap().id;
    // The store fails (here: it is closed) while a's stored result comes in.
    store.close().await;
    task.process(vec![Message::Agent(Event::Result {
        host_id: "a".parse().unwrap(),
        operation_id: format!("{id}.0"),
        outcome: OperationOutcomeRecord::Succeeded,
        from_version: None,
        to_version: Some("1.1.0".parse().unwrap()),
        running_version: Some("1.1.0".parse().unwrap()),
        message: "healthy".into(),
    })])
    .await;
    assert_eq!(
        task.live[&id].hosts[0].outcome,
        HostOutcomeRecord::Dispatched,
        "nothing took effect"
    );
    // The store works again: the next batch (a tick) applies the result.
    let store = StoreHandle::reopen(directory.path());
    task.store = store.clone();
    task.process(Vec::new()).await;
    assert_eq!(task.live[&id].hosts[0].outcome, HostOutcomeRecord::Succeeded);
    assert_eq!(
        task.live[&id].hosts[1].outcome,
        HostOutcomeRecord::Dispatched,
        "b's wave started"
    );
    let stored = store.read(move |store| store.rollout(&id)).await.unwrap().unwrap();
    assert_eq!(
        stored.hosts[0].outcome,
        HostOutcomeRecord::Succeeded,
        "and it is stored"
    );
    assert!(task.retry.is_empty());
}

#[tokio::test]
async fn a_late_success_stored_while_the_engine_was_down_is_rolled_back_after_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let store = StoreHandle::reopen(directory.path());
    store
        .write(|store| {
            register(store, "a");
            Ok(())
        })
        .await
        .unwrap();
    let fleet = Arc::new(Fleet::new(Duration::from_secs(30)));
    let engine = RolloutEngine::start(store.clone(), fleet.clone()).await.unwrap();
    let mut updates = engine.subscribe();
    let mut plan = planned("ghost", &["a"], 1);
    plan.strategy.host_deadline_ms = 1000;
    plan.strategy.rollback_on_halt = true;
    let id = engine.start_rollout(plan).await.unwrap().id;
    tokio::time::timeout(Duration::from_secs(10), async {
        while updates.recv().await.unwrap().change.header.state != RolloutStateRecord::Halted {}
    })
    .await
    .expect("halted within 10 s");
    // The engine goes away; meanwhile a's late success reached the store.
    drop(engine);
    let operation = format!("{id}.0");
    store
        .write(move |store| {
            store.apply_event(
                &"a".parse().unwrap(),
                1,
                &AgentEvent::Result {
                    operation_id: operation,
                    domain: "app.a.example.org".parse().unwrap(),
                    outcome: OperationOutcomeRecord::Succeeded,
                    from_version: Some("1.0.5".parse().unwrap()),
                    to_version: Some("1.1.0".parse().unwrap()),
                    running_version: Some("1.1.0".parse().unwrap()),
                    message: "healthy".into(),
                },
            )
        })
        .await
        .unwrap();
    let fleet = Arc::new(Fleet::new(Duration::from_secs(30)));
    let mut stream_a = open_stream(&fleet, "a");
    let _engine = RolloutEngine::start(store.clone(), fleet.clone()).await.unwrap();
    assert_eq!(next_operation(&mut stream_a).await, format!("{id}.0.rollback"));
    let stored = store.read(move |store| store.rollout(&id)).await.unwrap().unwrap();
    assert!(stored.hosts[0].succeeded_late);
    assert_eq!(
        stored.hosts[0]
            .rollback
            .as_ref()
            .map(|rollback| rollback.version.to_string()),
        Some("1.0.5".to_owned())
    );
}

#[tokio::test]
async fn a_result_that_settles_a_rollout_is_stored_when_the_same_batch_starts_the_next_one() {
    let directory = tempfile::tempdir().unwrap();
    let store = StoreHandle::reopen(directory.path());
    let mut task = task_over(&store);
    let (reply, answer) = oneshot::channel();
    task.process(vec![Message::Start {
        rollout: Box::new(planned("ghost", &["a"], 1)),
        reply,
    }])
    .await;
    let first = answer.await.unwrap().unwrap().id;
    // One batch: a's result completes the first rollout, then the next
    // rollout of the recipe starts.
    let (reply, answer) = oneshot::channel();
    task.process(vec![
        Message::Agent(Event::Result {
            host_id: "a".parse().unwrap(),
            operation_id: format!("{first}.0"),
            outcome: OperationOutcomeRecord::Succeeded,
            from_version: Some("1.0.0".parse().unwrap()),
            to_version: Some("1.1.0".parse().unwrap()),
            running_version: Some("1.1.0".parse().unwrap()),
            message: "healthy".into(),
        }),
        Message::Start {
            rollout: Box::new(planned("ghost", &["a"], 1)),
            reply,
        },
    ])
    .await;
    let second = answer
        .await
        .unwrap()
        .expect("the recipe is free once the first completed")
        .id;
    let lookup = first.clone();
    let stored = store.read(move |store| store.rollout(&lookup)).await.unwrap().unwrap();
    assert_eq!(
        stored.state,
        RolloutStateRecord::Completed,
        "the result that completed it is stored"
    );
    assert_eq!(stored.hosts[0].outcome, HostOutcomeRecord::Succeeded);
    assert!(!task.live.contains_key(&first), "the first left the engine");
    assert!(task.live.contains_key(&second));
}

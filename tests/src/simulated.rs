//! Simulated agents for rollout tests and `fleet-bench`: real mTLS streams to
//! the real server, speaking the Agent protocol like the real agent (durable
//! events with sequence numbers, an outbox re-sent after reconnects, a
//! journal that answers a re-delivered operation id with its recorded
//! result), but answering upgrade and rollback commands from a script
//! instead of running abra.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccfleet_proto::pb::{self, agent_message::Body, server_message};
use ccfleet_proto::tls::Credential;
use tokio::sync::{mpsc, watch};

use crate::server::{observed, TestAgent};

/// How a simulated agent answers commands; changeable while it runs.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// How long an upgrade "takes" before its result is sent.
    pub delay: Duration,
    /// The outcome reported for upgrades.
    pub outcome: pb::OperationOutcome,
    /// False: upgrades are accepted but never answered (a hung host).
    pub answers: bool,
    /// The newest version the agent reports as available (same major); empty for none.
    pub available_version: String,
    /// The host pins the app (`fleetManaged = false`).
    pub pinned_by_host: bool,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            delay: Duration::from_millis(50),
            outcome: pb::OperationOutcome::Succeeded,
            answers: true,
            available_version: String::new(),
            pinned_by_host: false,
        }
    }
}

/// The agent's one app as it reports it.
fn app(domain: &str, recipe: &str, shared: &Mutex<Shared>) -> pb::ObservedApp {
    let shared = shared.lock().unwrap();
    pb::ObservedApp {
        available_version: shared.behaviour.available_version.clone(),
        pinned_by_host: shared.behaviour.pinned_by_host,
        ..observed(domain, recipe, &shared.version)
    }
}

/// One command as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub operation_id: String,
    /// "upgrade" or "rollback".
    pub kind: &'static str,
    pub version: String,
}

#[derive(Debug, Default)]
struct Shared {
    behaviour: Behaviour,
    /// The app's observed version.
    version: String,
    next_seq: u64,
    /// Durable events not yet acknowledged.
    outbox: Vec<pb::AgentMessage>,
    /// Operation id -> its result, `None` while it runs.
    journal: HashMap<String, Option<pb::OperationResult>>,
    /// Every command delivery, duplicates included.
    received: Vec<Received>,
    /// Operation ids this agent actually carried out (once each).
    executed: Vec<String>,
    /// Operation ids whose result the server acknowledged.
    acknowledged: Vec<String>,
    connections: u32,
}

/// A simulated host with one app of `recipe`.
pub struct SimulatedAgent {
    pub host_id: String,
    pub domain: String,
    shared: Arc<Mutex<Shared>>,
    stop: watch::Sender<bool>,
    crash: Arc<tokio::sync::Notify>,
    /// How many streams the agent has opened, announced as each opens.
    opened: watch::Receiver<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl SimulatedAgent {
    /// Starts the agent: it connects to `url` with `credential` and keeps
    /// reconnecting until stopped.
    pub fn start(
        url: String,
        credential: Credential,
        host_id: &str,
        recipe: &str,
        version: &str,
        behaviour: Behaviour,
    ) -> SimulatedAgent {
        let domain = format!("app.{host_id}.example.org");
        let shared = Arc::new(Mutex::new(Shared {
            behaviour,
            version: version.to_owned(),
            ..Shared::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let crash = Arc::new(tokio::sync::Notify::new());
        let (announce, opened) = watch::channel(0);
        let task = tokio::spawn(run(
            url,
            credential,
            host_id.to_owned(),
            domain.clone(),
            recipe.to_owned(),
            shared.clone(),
            (stopped, crash.clone(), announce),
        ));
        SimulatedAgent {
            host_id: host_id.to_owned(),
            domain,
            shared,
            stop,
            crash,
            opened,
            task,
        }
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.lock().unwrap().behaviour = behaviour;
    }

    /// Every command delivered so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// Operation ids carried out (each once, whatever the re-deliveries).
    pub fn executed(&self) -> Vec<String> {
        self.shared.lock().unwrap().executed.clone()
    }

    pub fn version(&self) -> String {
        self.shared.lock().unwrap().version.clone()
    }

    /// Operation ids whose result the server acknowledged.
    pub fn acknowledged(&self) -> Vec<String> {
        self.shared.lock().unwrap().acknowledged.clone()
    }

    /// Cuts the stream as an agent crash does; the agent reconnects and
    /// re-sends its outbox, its journal intact (the real agent keeps both on
    /// disk), and operations in flight finish and report after the reconnect.
    pub fn crash_and_restart(&self) {
        self.crash.notify_one();
    }

    /// How many streams the agent has opened.
    pub fn connections(&self) -> u32 {
        self.shared.lock().unwrap().connections
    }

    /// Waits, at most `deadline`, until the agent has opened a stream: its
    /// Welcome arrived, which the server sends once it has the host online.
    pub async fn connected(&self, deadline: Duration) {
        let mut opened = self.opened.clone();
        tokio::time::timeout(deadline, opened.wait_for(|count| *count > 0))
            .await
            .unwrap_or_else(|_| panic!("{} did not connect within {deadline:?}", self.host_id))
            .expect("the agent's task announces its streams");
    }

    /// Stops the agent and closes its stream.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn push_durable(shared: &Mutex<Shared>, body: Body) -> pb::AgentMessage {
    let mut shared = shared.lock().unwrap();
    shared.next_seq += 1;
    let message = pb::AgentMessage {
        seq: shared.next_seq,
        body: Some(body),
    };
    shared.outbox.push(message.clone());
    message
}

/// What a finished (simulated) operation reports.
struct Finished {
    result: pb::OperationResult,
}

async fn run(
    url: String,
    credential: Credential,
    host_id: String,
    domain: String,
    recipe: String,
    shared: Arc<Mutex<Shared>>,
    (mut stopped, crash, opened): (watch::Receiver<bool>, Arc<tokio::sync::Notify>, watch::Sender<u32>),
) {
    let (finished_sender, mut finished) = mpsc::unbounded_channel::<Finished>();
    loop {
        if *stopped.borrow() {
            return;
        }
        let connected = async {
            let channel = ccfleet_proto::tls::mtls_endpoint(&url, &credential)
                .ok()?
                .connect()
                .await
                .ok()?;
            TestAgent::connect(channel, &host_id, vec![app(&domain, &recipe, &shared)])
                .await
                .ok()
        };
        let Some(mut agent) = connected.await else {
            // Reconnect backoff, as the real agent does; not a synchronisation.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = stopped.changed() => return,
            }
        };
        let sender = agent.sender();
        let pending: Vec<pb::AgentMessage> = {
            let mut shared = shared.lock().unwrap();
            shared.connections += 1;
            opened.send_replace(shared.connections);
            let last = agent.welcome.last_seq;
            let acknowledged: Vec<String> = shared
                .outbox
                .iter()
                .filter(|message| message.seq <= last)
                .filter_map(|message| match &message.body {
                    Some(Body::Result(result)) => Some(result.operation_id.clone()),
                    _ => None,
                })
                .collect();
            shared.acknowledged.extend(acknowledged);
            shared.outbox.retain(|message| message.seq > last);
            shared.outbox.clone()
        };
        for message in pending {
            let _ = sender.send(message).await;
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                _ = crash.notified() => break,
                message = agent.inbound.message() => match message {
                    Ok(Some(pb::ServerMessage { body: Some(server_message::Body::Command(command)) })) => {
                        handle(&shared, &sender, &finished_sender, &domain, command).await;
                    }
                    Ok(Some(pb::ServerMessage { body: Some(server_message::Body::Ack(ack)) })) => {
                        let mut shared = shared.lock().unwrap();
                        let acknowledged: Vec<String> = shared
                            .outbox
                            .iter()
                            .filter(|message| message.seq <= ack.seq)
                            .filter_map(|message| match &message.body {
                                Some(Body::Result(result)) => Some(result.operation_id.clone()),
                                _ => None,
                            })
                            .collect();
                        shared.acknowledged.extend(acknowledged);
                        shared.outbox.retain(|message| message.seq > ack.seq);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                Some(done) = finished.recv() => {
                    {
                        let mut state = shared.lock().unwrap();
                        state.journal.insert(done.result.operation_id.clone(), Some(done.result.clone()));
                        if !done.result.running_version.is_empty() {
                            state.version = done.result.running_version.clone();
                        }
                    }
                    let result = push_durable(&shared, Body::Result(done.result));
                    let _ = sender.send(result).await;
                    let inventory = push_durable(&shared, Body::Inventory(pb::InventoryUpdate {
                        inventory: Some(pb::Inventory { apps: vec![app(&domain, &recipe, &shared)] }),
                    }));
                    let _ = sender.send(inventory).await;
                }
                _ = heartbeat.tick() => {
                    let _ = sender.send(pb::AgentMessage { seq: 0, body: Some(Body::Heartbeat(pb::Heartbeat {})) }).await;
                }
            }
        }
    }
}

async fn handle(
    shared: &Arc<Mutex<Shared>>,
    sender: &mpsc::Sender<pb::AgentMessage>,
    finished: &mpsc::UnboundedSender<Finished>,
    domain: &str,
    command: pb::Command,
) {
    let (kind, version) = match &command.kind {
        Some(pb::command::Kind::Upgrade(upgrade)) => ("upgrade", upgrade.version.clone()),
        Some(pb::command::Kind::Rollback(rollback)) => ("rollback", rollback.version.clone()),
        None => return,
    };
    let operation_id = command.operation_id.clone();
    let (recorded, behaviour, from) = {
        let mut state = shared.lock().unwrap();
        state.received.push(Received {
            operation_id: operation_id.clone(),
            kind,
            version: version.clone(),
        });
        (
            state.journal.get(&operation_id).cloned(),
            state.behaviour.clone(),
            state.version.clone(),
        )
    };
    match recorded {
        // Re-delivered after it finished: the journal answers with the recorded result.
        Some(Some(result)) => {
            let message = push_durable(shared, Body::Result(result));
            let _ = sender.send(message).await;
            return;
        }
        // Re-delivered while it runs: it answers once, when done.
        Some(None) => return,
        None => {}
    }
    {
        let mut state = shared.lock().unwrap();
        state.journal.insert(operation_id.clone(), None);
        state.executed.push(operation_id.clone());
    }
    let progress = push_durable(
        shared,
        Body::Progress(pb::OperationProgress {
            operation_id: operation_id.clone(),
            domain: domain.to_owned(),
            phase: pb::OperationPhase::Deploying as i32,
            message: format!("deploying {version}"),
        }),
    );
    let _ = sender.send(progress).await;
    if kind == "upgrade" && !behaviour.answers {
        return;
    }
    let outcome = if kind == "rollback" {
        pb::OperationOutcome::Succeeded
    } else {
        behaviour.outcome
    };
    // As the real agent reports: the version asked for, and the one running after.
    let running_version = if outcome == pb::OperationOutcome::Succeeded {
        version.clone()
    } else {
        from.clone()
    };
    let result = pb::OperationResult {
        operation_id,
        domain: domain.to_owned(),
        outcome: outcome as i32,
        from_version: from,
        to_version: version.clone(),
        running_version,
        message: match outcome {
            pb::OperationOutcome::Succeeded => format!("{version} healthy"),
            _ => format!("{version} unhealthy: probe failed; rolled back"),
        },
    };
    let finished = finished.clone();
    let delay = behaviour.delay;
    tokio::spawn(async move {
        // The simulated upgrade's own duration.
        tokio::time::sleep(delay).await;
        let _ = finished.send(Finished { result });
    });
}

//! The rollout engine: one task that owns every live rollout. It sequences
//! all events (operator actions, agent results and progress, hosts
//! connecting, ticks) through one `select!`, applies them with the pure
//! `machine`, stores every changed record in one store job, and only after
//! that write is on disk delivers the commands, answers the callers and tells
//! the watchers. A restarted engine reloads unsettled rollouts (and halted
//! ones that still owe a host its rollback), applies results the store
//! received while it was down, and re-delivers what is outstanding with the
//! original operation ids when hosts reconnect.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ccfleet_proto::domain::operation;
use ccfleet_proto::pb;
use ccfleet_proto::{HostId, OperationKind};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::machine::{self, ActionError, Command, Delivery, Event};
use crate::fleet::Fleet;
use crate::model::{now_millis, HostOutcomeRecord, RolloutRecord, RolloutStateRecord, UnixMillis};
use crate::store::{RolloutChange, StoreError, StoreHandle};

/// How often deadlines and wave intervals are checked.
const TICK: Duration = Duration::from_millis(250);
/// Most events applied under one store write.
const MAX_BATCH: usize = 1024;

/// Why a rollout could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "rollout {0} of this recipe has not ended (a paused rollout has not ended either); end it with \
         `ccfleet rollout abort {0}`, or let it finish: `ccfleet rollout resume {0}`, and \
         `ccfleet rollout promote {0}` if its canary gate is closed (see `ccfleet rollout show {0}`)"
    )]
    Active(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the rollout engine has stopped")]
    Stopped,
}

/// Why an operator action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionFailure {
    #[error("there is no rollout {0}")]
    NotFound(String),
    #[error(transparent)]
    Refused(#[from] ActionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the rollout engine has stopped")]
    Stopped,
}

enum Message {
    Start {
        rollout: Box<RolloutRecord>,
        reply: oneshot::Sender<Result<RolloutRecord, StartError>>,
    },
    Action {
        id: String,
        event: Event,
        reply: oneshot::Sender<Result<RolloutRecord, ActionFailure>>,
    },
    /// A result or progress report from a host, already stored.
    Agent(Event),
    Connected(HostId),
}

/// Cloneable handle to the engine task.
#[derive(Clone)]
pub struct RolloutEngine {
    inbox: mpsc::UnboundedSender<Message>,
    updates: broadcast::Sender<Arc<RolloutRecord>>,
}

impl RolloutEngine {
    /// Loads unsettled rollouts (and those owing a rollback) from the store and starts the engine task.
    pub async fn start(store: StoreHandle, fleet: Arc<Fleet>) -> Result<RolloutEngine, StoreError> {
        let loaded = store
            .read(|store| {
                let (live, settled): (Vec<RolloutRecord>, Vec<RolloutRecord>) =
                    store.rollouts()?.into_iter().partition(machine::is_kept);
                // Results stored while the engine was not running (the server
                // died between storing a result and applying it): every
                // operation of a live rollout; of a settled one that halted
                // with rollback, the upgrades of hosts that timed out (one may
                // have succeeded late and be owed a rollback).
                let mut stored_results = Vec::new();
                let owing = settled
                    .iter()
                    .filter(|rollout| rollout.state == RolloutStateRecord::Halted && rollout.strategy.rollback_on_halt);
                let late = owing.flat_map(|rollout| {
                    rollout.hosts.iter().filter(|host| {
                        host.outcome == HostOutcomeRecord::TimedOut && !host.succeeded_late && host.rollback.is_none()
                    })
                });
                for host in live.iter().flat_map(|rollout| rollout.hosts.iter()).chain(late) {
                    let rollback_id = host.rollback.as_ref().map(|rollback| &rollback.operation_id);
                    for operation_id in host.operation_id.iter().chain(rollback_id) {
                        if let Some(operation) = store.operation(&host.host_id, operation_id)? {
                            if let Some(outcome) = operation.outcome {
                                stored_results.push(Event::Result {
                                    host_id: host.host_id.clone(),
                                    operation_id: operation_id.clone(),
                                    outcome,
                                    from_version: operation.from_version,
                                    to_version: operation.to_version,
                                    running_version: operation.running_version,
                                    message: operation.message,
                                });
                            }
                        }
                    }
                }
                Ok((live, stored_results))
            })
            .await?;
        let (live, stored_results) = loaded;
        let (inbox, receiver) = mpsc::unbounded_channel();
        let (updates, _) = broadcast::channel(4096);
        for rollout in &live {
            tracing::info!(rollout = rollout.id, state = rollout.state.name(), "resuming rollout");
        }
        for event in stored_results {
            let _ = inbox.send(Message::Agent(event));
        }
        let task = EngineTask {
            store,
            fleet,
            live: live.into_iter().map(|rollout| (rollout.id.clone(), rollout)).collect(),
            updates: updates.clone(),
            last_id_millis: 0,
            retry: Vec::new(),
        };
        tokio::spawn(task.run(receiver));
        Ok(RolloutEngine { inbox, updates })
    }

    /// Starts a planned rollout (its id is assigned here); answers once it
    /// is stored and its first wave is dispatched.
    pub async fn start_rollout(&self, rollout: RolloutRecord) -> Result<RolloutRecord, StartError> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Message::Start {
                rollout: Box::new(rollout),
                reply,
            })
            .map_err(|_| StartError::Stopped)?;
        answer.await.map_err(|_| StartError::Stopped)?
    }

    /// Pause, resume, promote or abort.
    pub async fn act(&self, id: String, event: Event) -> Result<RolloutRecord, ActionFailure> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Message::Action { id, event, reply })
            .map_err(|_| ActionFailure::Stopped)?;
        answer.await.map_err(|_| ActionFailure::Stopped)?
    }

    /// A stored result or progress report from a host (never blocks).
    pub fn agent_event(&self, event: Event) {
        let _ = self.inbox.send(Message::Agent(event));
    }

    /// A host's stream is open: deliver what is outstanding for it.
    pub fn host_connected(&self, host_id: HostId) {
        let _ = self.inbox.send(Message::Connected(host_id));
    }

    /// Every stored change of every rollout, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RolloutRecord>> {
        self.updates.subscribe()
    }
}

/// Whether an operation id is a rollout's upgrade (`<rollout id>.<n>`).
fn is_upgrade(operation_id: &str) -> bool {
    matches!(operation::kind_of(operation_id), OperationKind::Upgrade { .. })
}

fn base36(mut value: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut text = Vec::new();
    loop {
        text.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    text.reverse();
    String::from_utf8(text).unwrap_or_default()
}

/// An answer to send once the batch is stored.
enum Reply {
    Start(
        oneshot::Sender<Result<RolloutRecord, StartError>>,
        Result<String, StartError>,
    ),
    Action(
        oneshot::Sender<Result<RolloutRecord, ActionFailure>>,
        Result<String, ActionFailure>,
    ),
}

struct EngineTask {
    store: StoreHandle,
    fleet: Arc<Fleet>,
    /// Rollouts that are not settled, by id.
    live: HashMap<String, RolloutRecord>,
    updates: broadcast::Sender<Arc<RolloutRecord>>,
    last_id_millis: UnixMillis,
    /// Agent events and connections of a batch whose store write failed:
    /// applied again with the next batch (the agents' results are already
    /// stored and acknowledged, so nobody sends them again).
    retry: Vec<Message>,
}

impl EngineTask {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Message>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut batch = Vec::new();
            tokio::select! {
                message = inbox.recv() => match message {
                    Some(message) => batch.push(message),
                    None => return,
                },
                _ = ticker.tick() => {}
            }
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            self.process(batch).await;
        }
    }

    fn new_id(&mut self, rollout: &RolloutRecord) -> String {
        let millis = now_millis().max(self.last_id_millis + 1);
        self.last_id_millis = millis;
        format!("{}-{}", rollout.recipe, base36(millis))
    }

    /// Applies a batch of messages (and a tick) and commits the result.
    async fn process(&mut self, batch: Vec<Message>) {
        let now = now_millis();
        let mut changed: BTreeMap<String, RolloutRecord> = BTreeMap::new();
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut retry: Vec<Message> = Vec::new();
        let batch: Vec<Message> = std::mem::take(&mut self.retry).into_iter().chain(batch).collect();
        for message in batch {
            match &message {
                Message::Agent(event) => retry.push(Message::Agent(event.clone())),
                Message::Connected(host_id) => retry.push(Message::Connected(host_id.clone())),
                Message::Start { .. } | Message::Action { .. } => {}
            }
            match message {
                Message::Start { rollout, reply } => {
                    let mut rollout = *rollout;
                    // This batch's working copies are newer than the live records.
                    let active = self
                        .live
                        .values()
                        .filter(|other| !changed.contains_key(&other.id))
                        .chain(changed.values())
                        .find(|other| other.recipe == rollout.recipe && !machine::is_settled(other))
                        .map(|other| other.id.clone());
                    if let Some(active) = active {
                        replies.push(Reply::Start(reply, Err(StartError::Active(active))));
                        continue;
                    }
                    rollout.id = self.new_id(&rollout);
                    // A newer rollout of the recipe decides its hosts' version:
                    // an older one owes them no rollback any more.
                    let recipe = rollout.recipe.clone();
                    self.live
                        .retain(|_, other| other.recipe != recipe || !machine::is_settled(other));
                    changed.retain(|_, other| other.recipe != recipe || !machine::is_settled(other));
                    // Tick cannot be refused.
                    deliveries.extend(machine::apply(&mut rollout, Event::Tick, now).unwrap_or_default());
                    replies.push(Reply::Start(reply, Ok(rollout.id.clone())));
                    changed.insert(rollout.id.clone(), rollout);
                }
                Message::Action { id, event, reply } => {
                    let Some(rollout) = self.working(&mut changed, &id) else {
                        let failure = self.not_live(&id).await;
                        replies.push(Reply::Action(reply, Err(failure)));
                        continue;
                    };
                    match machine::apply(rollout, event, now) {
                        Ok(sent) => {
                            deliveries.extend(sent);
                            replies.push(Reply::Action(reply, Ok(id)));
                        }
                        Err(error) => replies.push(Reply::Action(reply, Err(error.into()))),
                    }
                }
                Message::Agent(event) => {
                    let operation_id = match &event {
                        Event::Result { operation_id, .. } | Event::Progress { operation_id, .. } => operation_id,
                        _ => continue,
                    };
                    let id = operation::rollout_of(operation_id).to_owned();
                    let late_upgrade_result = matches!(event, Event::Result { .. }) && is_upgrade(operation_id);
                    if late_upgrade_result && !self.live.contains_key(&id) && !changed.contains_key(&id) {
                        // A settled rollout may still owe this host a rollback
                        // (its upgrade succeeded after it timed out).
                        self.revive(&id, &changed).await;
                    }
                    if let Some(rollout) = self.working(&mut changed, &id) {
                        deliveries.extend(machine::apply(rollout, event, now).unwrap_or_default());
                    }
                }
                Message::Connected(host_id) => {
                    for rollout in self.live.values() {
                        let rollout = changed.get(&rollout.id).unwrap_or(rollout);
                        deliveries.extend(
                            machine::outstanding(rollout, now)
                                .into_iter()
                                .filter(|delivery| delivery.host_id == host_id),
                        );
                    }
                }
            }
        }
        // Time passes for every live rollout.
        let ids: Vec<String> = self.live.keys().cloned().collect();
        for id in ids {
            if let Some(rollout) = self.working(&mut changed, &id) {
                deliveries.extend(machine::apply(rollout, Event::Tick, now).unwrap_or_default());
            }
        }
        // Keep only records that really changed.
        changed.retain(|id, rollout| self.live.get(id) != Some(rollout));
        if !changed.is_empty() {
            // The header and only the hosts that changed (all of a new rollout).
            let records: Vec<RolloutChange> = changed
                .values()
                .map(|rollout| RolloutChange {
                    rollout: rollout.clone(),
                    changed_hosts: self
                        .live
                        .get(&rollout.id)
                        .filter(|old| old.hosts.len() == rollout.hosts.len())
                        .map(|old| {
                            (0..rollout.hosts.len())
                                .filter(|&position| old.hosts[position] != rollout.hosts[position])
                                .collect()
                        }),
                })
                .collect();
            if let Err(error) = self.store.write(move |store| store.put_rollouts(records)).await {
                // Nothing takes effect: no command goes out, callers learn it
                // failed; agent events and connections are applied again with
                // the next batch.
                tracing::error!(%error, "cannot store rollout changes; they do not take effect");
                self.retry = retry;
                for reply in replies {
                    match reply {
                        Reply::Start(reply, _) => {
                            let _ = reply.send(Err(StartError::Store(StoreError::Stopped)));
                        }
                        Reply::Action(reply, _) => {
                            let _ = reply.send(Err(ActionFailure::Store(StoreError::Stopped)));
                        }
                    }
                }
                return;
            }
        }
        // Revived rollouts that this batch did not change are settled still.
        self.live.retain(|_, rollout| machine::is_kept(rollout));
        let mut committed: HashMap<String, RolloutRecord> = HashMap::new();
        for (id, rollout) in changed {
            let _ = self.updates.send(Arc::new(rollout.clone()));
            if rollout.state.is_final() {
                tracing::info!(
                    rollout = id,
                    state = rollout.state.name(),
                    reason = rollout.reason,
                    "rollout ended"
                );
            }
            if !machine::is_kept(&rollout) {
                self.live.remove(&id);
            } else {
                self.live.insert(id.clone(), rollout.clone());
            }
            committed.insert(id, rollout);
        }
        for delivery in deliveries {
            self.deliver(delivery);
        }
        // The record each caller sees is the one just stored (or, unchanged, the live one).
        let current = |id: &String| {
            committed
                .get(id)
                .or_else(|| self.live.get(id))
                .cloned()
                .ok_or(StoreError::Stopped)
        };
        for reply in replies {
            match reply {
                Reply::Start(reply, result) => {
                    let _ = reply.send(result.and_then(|id| current(&id).map_err(StartError::Store)));
                }
                Reply::Action(reply, result) => {
                    let _ = reply.send(result.and_then(|id| current(&id).map_err(ActionFailure::Store)));
                }
            }
        }
    }

    /// The working copy of a live rollout for this batch.
    fn working<'a>(&self, changed: &'a mut BTreeMap<String, RolloutRecord>, id: &str) -> Option<&'a mut RolloutRecord> {
        if !changed.contains_key(id) {
            changed.insert(id.to_owned(), self.live.get(id)?.clone());
        }
        changed.get_mut(id)
    }

    /// Makes a settled rollout live again for a late upgrade result, unless a
    /// newer rollout of its recipe is active (that one owns the hosts now).
    async fn revive(&mut self, id: &str, changed: &BTreeMap<String, RolloutRecord>) {
        let lookup = id.to_owned();
        let rollout = match self.store.read(move |store| store.rollout(&lookup)).await {
            Ok(Some(rollout)) => rollout,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, rollout = id, "cannot read a settled rollout for a late result");
                return;
            }
        };
        let newer = self
            .live
            .values()
            .chain(changed.values())
            .find(|other| other.recipe == rollout.recipe && !machine::is_settled(other));
        if let Some(newer) = newer {
            tracing::warn!(
                rollout = id,
                active = newer.id,
                "late result for a settled rollout ignored: a newer rollout of the recipe is active"
            );
            return;
        }
        self.live.insert(id.to_owned(), rollout);
    }

    /// The answer for an action on a rollout that is not live.
    async fn not_live(&self, id: &str) -> ActionFailure {
        let lookup = id.to_owned();
        match self.store.read(move |store| store.rollout(&lookup)).await {
            Ok(Some(rollout)) => ActionFailure::Refused(ActionError::Final {
                id: rollout.id,
                state: rollout.state.name(),
            }),
            Ok(None) => ActionFailure::NotFound(id.to_owned()),
            Err(error) => ActionFailure::Store(error),
        }
    }

    fn deliver(&self, delivery: Delivery) {
        let command = match delivery.command {
            Command::Upgrade {
                domain,
                version,
                allow_major,
                deadline_seconds,
            } => pb::command::Kind::Upgrade(pb::UpgradeCommand {
                domain: domain.to_string(),
                version: version.to_string(),
                allow_major,
                deadline_seconds,
            }),
            Command::Rollback { domain, version } => pb::command::Kind::Rollback(pb::RollbackCommand {
                domain: domain.to_string(),
                version: version.to_string(),
            }),
        };
        let message = pb::ServerMessage {
            body: Some(pb::server_message::Body::Command(pb::Command {
                operation_id: delivery.operation_id.clone(),
                kind: Some(command),
            })),
        };
        if self.fleet.send(&delivery.host_id, message) {
            tracing::debug!(host = %delivery.host_id, operation = delivery.operation_id, "command sent");
        } else {
            tracing::info!(host = %delivery.host_id, operation = delivery.operation_id, "host offline; the command goes out when it reconnects");
        }
    }
}

/// The rollout event an agent's durable event carries, if any.
pub fn rollout_event(host_id: &HostId, event: &crate::model::AgentEvent) -> Option<Event> {
    match event {
        crate::model::AgentEvent::Progress { operation_id, .. } => Some(Event::Progress {
            host_id: host_id.clone(),
            operation_id: operation_id.clone(),
        }),
        crate::model::AgentEvent::Result {
            operation_id,
            outcome,
            from_version,
            to_version,
            running_version,
            message,
            ..
        } => Some(Event::Result {
            host_id: host_id.clone(),
            operation_id: operation_id.clone(),
            outcome: *outcome,
            from_version: from_version.clone(),
            to_version: to_version.clone(),
            running_version: running_version.clone(),
            message: message.clone(),
        }),
        // Inventories (and any other event kind) do not concern rollouts.
        _ => None,
    }
}

#[cfg(test)]
mod tests;

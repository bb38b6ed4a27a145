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
use ccfleet_proto::{HostId, OperationKind, RecipeName};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::machine::{self, ActionError, Before, Command, Delivery, Event, TrackedRollout};
use crate::fleet::Fleet;
use crate::model::{now_millis, HostOutcomeRecord, RolloutHostRecord, RolloutRecord, RolloutStateRecord, UnixMillis};
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
    /// A watcher's starting point: the rollout as stored and the version of
    /// the last update sent before it (answered after the batch's store
    /// write and broadcast, so that every later update is newer).
    Snapshot {
        id: String,
        reply: SnapshotReply,
    },
}

/// Where a watcher's snapshot goes: the version and the rollout, if live.
type SnapshotReply = oneshot::Sender<Option<(u64, RolloutRecord)>>;

/// A stored change of one rollout, for its watchers: its header and the
/// hosts the change wrote (every host of a new rollout), not the whole
/// rollout, so that watching a rollout of 10,000 hosts costs per change what
/// changed.
#[derive(Debug)]
pub struct RolloutUpdate {
    /// The engine's count of stored batches: a watcher that started from a
    /// snapshot at version V skips every update at or below V.
    pub version: u64,
    /// The header and the changed hosts, as stored.
    pub change: RolloutChange,
    /// The change holds every host (a rollout the batch started).
    pub whole: bool,
    /// The rollout is settled after this change: no other change follows
    /// unless a late result makes it live again.
    pub settled: bool,
}

/// Cloneable handle to the engine task.
#[derive(Clone)]
pub struct RolloutEngine {
    inbox: mpsc::UnboundedSender<Message>,
    updates: broadcast::Sender<Arc<RolloutUpdate>>,
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
            live: live
                .into_iter()
                .map(|rollout| (rollout.id.clone(), TrackedRollout::new(rollout)))
                .collect(),
            updates: updates.clone(),
            version: 0,
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
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RolloutUpdate>> {
        self.updates.subscribe()
    }

    /// Rollout `id` as the engine holds it, with the version of the last
    /// update sent before it; `None` when it is not live (settled: read it
    /// from the store). Subscribe first: every update received after this
    /// answer with a higher version is newer than the snapshot.
    pub async fn snapshot(&self, id: &str) -> Result<Option<(u64, RolloutRecord)>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Message::Snapshot {
                id: id.to_owned(),
                reply,
            })
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)
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

/// How a live rollout was before the batch changed it: what the store write
/// compares with (it writes only what differs), and what a failed write
/// puts back.
struct Undo {
    /// The header ([`RolloutRecord::header`]); `None`: the batch started it.
    header: Option<RolloutRecord>,
    /// The hosts the batch changed, as they were.
    hosts: BTreeMap<usize, RolloutHostRecord>,
}

/// Notes what an applied event changed in rollout `id`, unless the batch
/// has already noted an earlier state of it.
fn note(undo: &mut BTreeMap<String, Undo>, id: &str, before: Option<Before>) {
    let Some(Before { header, hosts }) = before else {
        return;
    };
    let undo = undo.entry(id.to_owned()).or_insert_with(|| Undo {
        header: Some(header),
        hosts: BTreeMap::new(),
    });
    if undo.header.is_some() {
        for (position, host) in hosts {
            undo.hosts.entry(position).or_insert(host);
        }
    }
}

/// Whether this batch started rollout `id`.
fn started(undo: &BTreeMap<String, Undo>, id: &str) -> bool {
    undo.get(id).is_some_and(|before| before.header.is_none())
}

struct EngineTask {
    store: StoreHandle,
    fleet: Arc<Fleet>,
    /// Rollouts that are not settled, by id. A batch changes them in place
    /// and notes how they were in its `Undo`s.
    live: HashMap<String, TrackedRollout>,
    updates: broadcast::Sender<Arc<RolloutUpdate>>,
    /// Stored batches so far (see [`RolloutUpdate::version`]).
    version: u64,
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
        let mut undo: BTreeMap<String, Undo> = BTreeMap::new();
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut retry: Vec<Message> = Vec::new();
        let mut snapshots: Vec<(String, SnapshotReply)> = Vec::new();
        // Settled rollouts a newer one of their recipe replaced in this batch:
        // out of the engine's hands at once, stored with this batch's changes.
        let mut leaving: HashMap<String, TrackedRollout> = HashMap::new();
        let batch: Vec<Message> = std::mem::take(&mut self.retry).into_iter().chain(batch).collect();
        for message in batch {
            match &message {
                Message::Agent(event) => retry.push(Message::Agent(event.clone())),
                Message::Connected(host_id) => retry.push(Message::Connected(host_id.clone())),
                Message::Start { .. } | Message::Action { .. } | Message::Snapshot { .. } => {}
            }
            match message {
                Message::Start { rollout, reply } => {
                    let mut rollout = *rollout;
                    let active = self
                        .live
                        .values()
                        .find(|other| other.recipe == rollout.recipe && !other.is_settled())
                        .map(|other| other.id.clone());
                    if let Some(active) = active {
                        replies.push(Reply::Start(reply, Err(StartError::Active(active))));
                        continue;
                    }
                    rollout.id = self.new_id(&rollout);
                    self.drop_older(&rollout.recipe, &mut leaving);
                    let mut rollout = TrackedRollout::new(rollout);
                    // Tick cannot be refused.
                    if let Ok(applied) = rollout.apply(Event::Tick, now) {
                        deliveries.extend(applied.deliveries);
                    }
                    replies.push(Reply::Start(reply, Ok(rollout.id.clone())));
                    undo.insert(
                        rollout.id.clone(),
                        Undo {
                            header: None,
                            hosts: BTreeMap::new(),
                        },
                    );
                    self.live.insert(rollout.id.clone(), rollout);
                }
                Message::Action { id, event, reply } => {
                    let Some(rollout) = self.live.get_mut(&id) else {
                        let failure = self.not_live(&id).await;
                        replies.push(Reply::Action(reply, Err(failure)));
                        continue;
                    };
                    match rollout.apply(event, now) {
                        Ok(applied) => {
                            note(&mut undo, &id, applied.before);
                            deliveries.extend(applied.deliveries);
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
                    if late_upgrade_result && !self.live.contains_key(&id) {
                        // A settled rollout may still owe this host a rollback
                        // (its upgrade succeeded after it timed out).
                        self.revive(&id).await;
                    }
                    if let Some(rollout) = self.live.get_mut(&id) {
                        if let Ok(applied) = rollout.apply(event, now) {
                            note(&mut undo, &id, applied.before);
                            deliveries.extend(applied.deliveries);
                        }
                    }
                }
                Message::Snapshot { id, reply } => snapshots.push((id, reply)),
                Message::Connected(host_id) => {
                    // A rollout this batch started delivers its first wave anyway.
                    for (id, rollout) in &self.live {
                        if !started(&undo, id) {
                            deliveries.extend(rollout.outstanding_to(&host_id, now));
                        }
                    }
                }
            }
        }
        // Time passes for every live rollout (one this batch started had its tick).
        for (id, rollout) in &mut self.live {
            if started(&undo, id) {
                continue;
            }
            if let Ok(applied) = rollout.apply(Event::Tick, now) {
                note(&mut undo, id, applied.before);
                deliveries.extend(applied.deliveries);
            }
        }
        // Keep only rollouts that really changed; store the header and only
        // the hosts that changed (all of a new rollout).
        let mut changed: Vec<(String, bool)> = Vec::new();
        let mut records: Vec<RolloutChange> = Vec::new();
        for (id, before) in &undo {
            let Some(rollout) = self.live.get(id).or_else(|| leaving.get(id)) else {
                continue;
            };
            let record = match &before.header {
                None => RolloutChange::whole(rollout.record().clone()),
                Some(header) => {
                    let hosts: Vec<(usize, RolloutHostRecord)> = before
                        .hosts
                        .iter()
                        .filter(|&(&position, old)| rollout.hosts[position] != *old)
                        .map(|(&position, _)| (position, rollout.hosts[position].clone()))
                        .collect();
                    let now_header = rollout.header();
                    if hosts.is_empty() && now_header == *header {
                        continue;
                    }
                    RolloutChange {
                        header: now_header,
                        hosts,
                        tally: rollout.tally(),
                    }
                }
            };
            changed.push((id.clone(), before.header.is_none()));
            records.push(record);
        }
        // What the watchers are sent, only when there are any.
        let mut watched = (self.updates.receiver_count() > 0).then(|| records.clone().into_iter());
        if !records.is_empty() {
            if let Err(error) = self.store.write(move |store| store.put_rollouts(records)).await {
                // Nothing takes effect: the rollouts are put back as they
                // were, no command goes out, callers learn it failed; agent
                // events and connections are applied again with the next batch.
                tracing::error!(%error, "cannot store rollout changes; they do not take effect");
                self.live.extend(leaving);
                for (id, before) in undo {
                    match before.header {
                        None => {
                            self.live.remove(&id);
                        }
                        Some(header) => {
                            if let Some(rollout) = self.live.get_mut(&id) {
                                rollout.restore(header, before.hosts);
                            }
                        }
                    }
                }
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
        if !changed.is_empty() {
            self.version += 1;
        }
        for (id, whole) in &changed {
            let Some(rollout) = self.live.get(id).or_else(|| leaving.get(id)) else {
                continue;
            };
            // One per change, in the same order.
            if let Some(change) = watched.as_mut().and_then(Iterator::next) {
                let _ = self.updates.send(Arc::new(RolloutUpdate {
                    version: self.version,
                    change,
                    whole: *whole,
                    settled: rollout.is_settled(),
                }));
            }
            if rollout.state.is_final() {
                tracing::info!(
                    rollout = id,
                    state = rollout.state.name(),
                    reason = rollout.reason,
                    "rollout ended"
                );
            }
        }
        // Settled rollouts leave (also revived ones that this batch did not
        // change: they are settled still); callers still get their record.
        let settled: Vec<String> = self
            .live
            .iter()
            .filter(|(_, rollout)| !rollout.is_kept())
            .map(|(id, _)| id.clone())
            .collect();
        let mut left: HashMap<String, TrackedRollout> = HashMap::new();
        for id in settled {
            if let Some(rollout) = self.live.remove(&id) {
                left.insert(id, rollout);
            }
        }
        for delivery in deliveries {
            self.deliver(delivery);
        }
        for (id, reply) in snapshots {
            let snapshot = self
                .live
                .get(&id)
                .or_else(|| left.get(&id))
                .map(|rollout| (self.version, rollout.record().clone()));
            let _ = reply.send(snapshot);
        }
        // The record each caller sees is the one just stored (or, unchanged, the live one).
        let current = |id: &String| {
            self.live
                .get(id)
                .or_else(|| left.get(id))
                .map(|rollout| rollout.record().clone())
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

    /// A newer rollout of `recipe` decides its hosts' version: an older one
    /// that is settled owes them no rollback any more and leaves the engine
    /// (into `leaving`: what this batch changed in it, such as the result
    /// that settled it, is still stored). The caller made sure that every
    /// rollout of the recipe is settled now.
    fn drop_older(&mut self, recipe: &RecipeName, leaving: &mut HashMap<String, TrackedRollout>) {
        let older: Vec<String> = self
            .live
            .values()
            .filter(|other| &other.recipe == recipe && other.is_settled())
            .map(|other| other.id.clone())
            .collect();
        for id in older {
            if let Some(rollout) = self.live.remove(&id) {
                leaving.insert(id, rollout);
            }
        }
    }

    /// Makes a settled rollout live again for a late upgrade result, unless a
    /// newer rollout of its recipe is active (that one owns the hosts now).
    async fn revive(&mut self, id: &str) {
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
            .find(|other| other.recipe == rollout.recipe && !other.is_settled());
        if let Some(newer) = newer {
            tracing::warn!(
                rollout = id,
                active = newer.id,
                "late result for a settled rollout ignored: a newer rollout of the recipe is active"
            );
            return;
        }
        self.live.insert(id.to_owned(), TrackedRollout::new(rollout));
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

//! The campaign's simulated agent: the Agent protocol over a real mTLS stream
//! to the real server, as the real agent speaks it (durable events with
//! sequence numbers, an outbox re-sent after every reconnect and pruned up to
//! the acknowledged watermark, a journal that runs an operation id once and
//! answers a re-delivery with the recorded result), with the upgrade's health
//! decided by the agent's real health gate over the host's scripted checks,
//! and a link that breaks, duplicates, delays or reorders messages when the
//! run injects a [`LinkFault`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccfleet_proto::pb::{self, agent_message::Body, server_message};
use ccfleet_proto::tls::Credential;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{gate, gate_timeout, Direction, HostKind, HostPlan, LinkFault, SITE_LABEL, TO};
use crate::server::{observed, TestAgent};

/// One command as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub operation_id: String,
    /// "upgrade" or "rollback".
    pub kind: &'static str,
    pub version: String,
}

/// Link faults injected and not yet spent, per direction (`Direction as usize`).
#[derive(Debug, Default)]
struct Armed {
    drop: [Option<u64>; 2],
    duplicate: [bool; 2],
    delay: [Option<(Duration, Instant)>; 2],
    reorder: bool,
}

#[derive(Debug, Default)]
struct Shared {
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
    /// Operations started that will still report.
    running: u32,
    armed: Armed,
}

impl Shared {
    /// The server has stored every event up to `seq`: drop them from the outbox.
    fn acknowledge(&mut self, seq: u64) {
        let results: Vec<String> = self
            .outbox
            .iter()
            .filter(|message| message.seq <= seq)
            .filter_map(|message| match &message.body {
                Some(Body::Result(result)) => Some(result.operation_id.clone()),
                _ => None,
            })
            .collect();
        self.acknowledged.extend(results);
        self.outbox.retain(|message| message.seq > seq);
    }
}

/// A simulated host with one app, behaving as its [`HostPlan`] says.
pub struct CampaignAgent {
    shared: Arc<Mutex<Shared>>,
    stop: watch::Sender<bool>,
    crash: Arc<Notify>,
    task: JoinHandle<()>,
}

/// What the agent is and how it answers.
#[derive(Debug, Clone)]
struct Host {
    id: String,
    domain: String,
    recipe: String,
    kind: HostKind,
    delay: Duration,
    /// Reports [`TO`] as the newest available version.
    offers_target: bool,
    /// The host's `site` label, sent in its facts.
    site: &'static str,
}

impl CampaignAgent {
    /// Starts the agent at `version`: it connects to `url` with `credential`
    /// and keeps reconnecting until stopped.
    pub fn start(url: String, credential: Credential, plan: &HostPlan, version: &str, offers_target: bool) -> Self {
        let host = Host {
            id: plan.id.clone(),
            domain: format!("app.{}.example.org", plan.id),
            recipe: plan.recipe.to_owned(),
            kind: plan.kind,
            delay: Duration::from_millis(plan.delay_ms),
            offers_target,
            site: plan.site,
        };
        let shared = Arc::new(Mutex::new(Shared {
            version: version.to_owned(),
            ..Shared::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let crash = Arc::new(Notify::new());
        let task = tokio::spawn(run(url, credential, host, shared.clone(), stopped, crash.clone()));
        CampaignAgent {
            shared,
            stop,
            crash,
            task,
        }
    }

    /// Arms `fault` on the agent's link; it acts on the next message it concerns.
    pub fn inject(&self, fault: LinkFault) {
        let mut shared = self.shared.lock().unwrap();
        let armed = &mut shared.armed;
        match fault {
            LinkFault::Drop { direction, detect_ms } => armed.drop[direction as usize] = Some(detect_ms),
            LinkFault::Duplicate { direction } => armed.duplicate[direction as usize] = true,
            LinkFault::Delay {
                direction,
                by_ms,
                for_ms,
            } => {
                armed.delay[direction as usize] = Some((
                    Duration::from_millis(by_ms),
                    Instant::now() + Duration::from_millis(for_ms),
                ))
            }
            LinkFault::Reorder => armed.reorder = true,
        }
    }

    /// Cuts the stream as an agent crash does; the agent reconnects and
    /// re-sends its outbox, its journal intact (the real agent keeps both on
    /// disk), and operations in flight finish and report after the reconnect.
    pub fn crash_and_restart(&self) {
        self.crash.notify_one();
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

    /// Nothing left to report: no operation that will answer is running and
    /// the server acknowledged every event.
    pub fn settled(&self) -> bool {
        let shared = self.shared.lock().unwrap();
        shared.running == 0 && shared.outbox.is_empty()
    }

    /// Stops the agent and closes its stream.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The agent's one app as it reports it.
fn app(host: &Host, shared: &Mutex<Shared>) -> pb::ObservedApp {
    let version = shared.lock().unwrap().version.clone();
    pb::ObservedApp {
        available_version: if host.offers_target {
            TO.to_owned()
        } else {
            String::new()
        },
        ..observed(&host.domain, &host.recipe, &version)
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

/// Sends `(release, item)` pairs on `deliver` at their release instants, in
/// order, dropping everything once `lost` is set (the link broke).
fn releaser<T: Send + 'static>(
    mut queue: mpsc::UnboundedReceiver<(Instant, T)>,
    deliver: mpsc::Sender<T>,
    lost: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((release, item)) = queue.recv().await {
            // The simulated network's latency, not a synchronisation.
            tokio::time::sleep_until(release).await;
            if lost.load(Ordering::SeqCst) {
                continue;
            }
            if deliver.send(item).await.is_err() {
                return;
            }
        }
    })
}

/// The release instant of a message sent now in `direction`: delayed while
/// a delay fault lasts, never before the message ahead of it.
fn release_at(armed: &mut Armed, direction: Direction, last: &mut Instant) -> Instant {
    let now = Instant::now();
    let delay = match armed.delay[direction as usize] {
        Some((by, until)) if now < until => by,
        Some(_) => {
            armed.delay[direction as usize] = None;
            Duration::ZERO
        }
        None => Duration::ZERO,
    };
    *last = (*last).max(now + delay);
    *last
}

/// One stream's outgoing side, through the fault-injecting link.
struct Outgoing {
    queue: mpsc::UnboundedSender<(Instant, pb::AgentMessage)>,
    lost: Arc<AtomicBool>,
    last: Instant,
    /// When the agent notices that the link broke.
    cut_at: Option<Instant>,
    /// An event held back for a reorder: the stream is replaced, then it goes on this one.
    withheld: Option<pb::AgentMessage>,
}

impl Outgoing {
    fn send(&mut self, shared: &Mutex<Shared>, message: pb::AgentMessage) {
        if self.lost.load(Ordering::SeqCst) || self.withheld.is_some() {
            return;
        }
        let durable = !matches!(message.body, Some(Body::Heartbeat(_)));
        let mut shared = shared.lock().unwrap();
        let armed = &mut shared.armed;
        if let Some(detect_ms) = armed.drop[Direction::ToServer as usize].take() {
            self.lost.store(true, Ordering::SeqCst);
            self.cut_at = Some(Instant::now() + Duration::from_millis(detect_ms));
            return;
        }
        if durable && armed.reorder {
            armed.reorder = false;
            self.withheld = Some(message);
            return;
        }
        let copies = if durable && std::mem::take(&mut armed.duplicate[Direction::ToServer as usize]) {
            2
        } else {
            1
        };
        let release = release_at(armed, Direction::ToServer, &mut self.last);
        for _ in 0..copies {
            let _ = self.queue.send((release, message.clone()));
        }
    }
}

/// Reads the server's messages and passes them through the link's faults.
async fn read_inbound(
    mut agent: TestAgent,
    shared: Arc<Mutex<Shared>>,
    queue: mpsc::UnboundedSender<(Instant, pb::ServerMessage)>,
    lost: Arc<AtomicBool>,
    cut: mpsc::UnboundedSender<Instant>,
) {
    let mut last = Instant::now();
    while let Ok(Some(message)) = agent.inbound.message().await {
        if lost.load(Ordering::SeqCst) {
            continue;
        }
        let command = matches!(message.body, Some(server_message::Body::Command(_)));
        let mut shared = shared.lock().unwrap();
        let armed = &mut shared.armed;
        if let Some(detect_ms) = armed.drop[Direction::ToAgent as usize].take() {
            lost.store(true, Ordering::SeqCst);
            let _ = cut.send(Instant::now() + Duration::from_millis(detect_ms));
            continue;
        }
        let copies = if command && std::mem::take(&mut armed.duplicate[Direction::ToAgent as usize]) {
            2
        } else {
            1
        };
        let release = release_at(armed, Direction::ToAgent, &mut last);
        for _ in 0..copies {
            let _ = queue.send((release, message.clone()));
        }
    }
}

/// A finished (simulated) operation.
struct Finished {
    result: pb::OperationResult,
}

/// The old stream of a reorder, kept open until its withheld event went out.
struct Stale {
    sender: mpsc::Sender<pb::AgentMessage>,
    message: pb::AgentMessage,
    /// The link's tasks (the reader owns the stream), held until it closes.
    _tasks: Tasks,
}

/// A stream's tasks, aborted (closing the stream) when dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn run(
    url: String,
    credential: Credential,
    host: Host,
    shared: Arc<Mutex<Shared>>,
    mut stopped: watch::Receiver<bool>,
    crash: Arc<Notify>,
) {
    let (finished_sender, mut finished) = mpsc::unbounded_channel::<Finished>();
    let mut stale: Option<Stale> = None;
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
            let labels = [(SITE_LABEL.to_owned(), host.site.to_owned())].into();
            TestAgent::connect_labelled(channel, &host.id, vec![app(&host, &shared)], labels)
                .await
                .ok()
        };
        let Some(agent) = connected.await else {
            // Reconnect backoff, as the real agent does; not a synchronisation.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = stopped.changed() => return,
            }
        };
        let sender = agent.sender();
        let last_seq = agent.welcome.last_seq;
        let lost_out = Arc::new(AtomicBool::new(false));
        let lost_in = Arc::new(AtomicBool::new(false));
        let (out_queue, out_released) = mpsc::unbounded_channel();
        let (in_queue, in_released) = mpsc::unbounded_channel();
        let (in_sender, mut in_receiver) = mpsc::channel::<pb::ServerMessage>(1024);
        let (cut_sender, mut cut_receiver) = mpsc::unbounded_channel::<Instant>();
        let tasks = Tasks(vec![
            releaser(out_released, sender.clone(), lost_out.clone()),
            releaser(in_released, in_sender, lost_in.clone()),
            tokio::spawn(read_inbound(agent, shared.clone(), in_queue, lost_in, cut_sender)),
        ]);
        let mut out = Outgoing {
            queue: out_queue,
            lost: lost_out,
            last: Instant::now(),
            cut_at: None,
            withheld: None,
        };
        let pending = {
            let mut shared = shared.lock().unwrap();
            shared.acknowledge(last_seq);
            shared.outbox.clone()
        };
        for message in pending {
            out.send(&shared, message);
        }
        // The previous stream of a reorder delivers its withheld event now,
        // after this stream's hello and re-sends, then closes.
        if let Some(old) = stale.take() {
            tokio::spawn(async move {
                let _ = old.sender.send(old.message.clone()).await;
                // The old connection lingers a moment before it closes.
                tokio::time::sleep(Duration::from_millis(500)).await;
                drop(old);
            });
        }
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        loop {
            let cut_at = out.cut_at;
            tokio::select! {
                _ = stopped.changed() => return,
                _ = crash.notified() => break,
                _ = tokio::time::sleep_until(cut_at.unwrap_or_else(Instant::now)), if cut_at.is_some() => break,
                Some(at) = cut_receiver.recv() => {
                    out.cut_at = Some(out.cut_at.map_or(at, |cut| cut.min(at)));
                }
                message = in_receiver.recv() => match message {
                    Some(pb::ServerMessage { body: Some(server_message::Body::Command(command)) }) => {
                        handle(&shared, &mut out, &finished_sender, &host, command);
                    }
                    Some(pb::ServerMessage { body: Some(server_message::Body::Ack(ack)) }) => {
                        shared.lock().unwrap().acknowledge(ack.seq);
                    }
                    Some(_) => {}
                    None => break,
                },
                Some(done) = finished.recv() => {
                    {
                        let mut state = shared.lock().unwrap();
                        state.running = state.running.saturating_sub(1);
                        state.journal.insert(done.result.operation_id.clone(), Some(done.result.clone()));
                        if !done.result.running_version.is_empty() {
                            state.version = done.result.running_version.clone();
                        }
                    }
                    let result = push_durable(&shared, Body::Result(done.result));
                    out.send(&shared, result);
                    let inventory = push_durable(&shared, Body::Inventory(pb::InventoryUpdate {
                        inventory: Some(pb::Inventory { apps: vec![app(&host, &shared)] }),
                    }));
                    out.send(&shared, inventory);
                }
                _ = heartbeat.tick() => {
                    let seq = shared.lock().unwrap().next_seq;
                    out.send(&shared, pb::AgentMessage { seq, body: Some(Body::Heartbeat(pb::Heartbeat {})) });
                }
            }
            if out.withheld.is_some() {
                break;
            }
        }
        // Without a reorder the stream's tasks end here, closing it.
        if let Some(message) = out.withheld.take() {
            stale = Some(Stale {
                sender,
                message,
                _tasks: tasks,
            });
        }
    }
}

fn handle(
    shared: &Arc<Mutex<Shared>>,
    out: &mut Outgoing,
    finished: &mpsc::UnboundedSender<Finished>,
    host: &Host,
    command: pb::Command,
) {
    let (kind, version, deadline) = match &command.kind {
        Some(pb::command::Kind::Upgrade(upgrade)) => (
            "upgrade",
            upgrade.version.clone(),
            Duration::from_secs(u64::from(upgrade.deadline_seconds)),
        ),
        Some(pb::command::Kind::Rollback(rollback)) => ("rollback", rollback.version.clone(), Duration::ZERO),
        None => return,
    };
    let operation_id = command.operation_id.clone();
    let (recorded, from) = {
        let mut state = shared.lock().unwrap();
        state.received.push(Received {
            operation_id: operation_id.clone(),
            kind,
            version: version.clone(),
        });
        (state.journal.get(&operation_id).cloned(), state.version.clone())
    };
    match recorded {
        // Re-delivered after it finished: the journal answers with the recorded result.
        Some(Some(result)) => {
            let message = push_durable(shared, Body::Result(result));
            out.send(shared, message);
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
            domain: host.domain.clone(),
            phase: pb::OperationPhase::Deploying as i32,
            message: format!("deploying {version}"),
        }),
    );
    out.send(shared, progress);
    if kind == "upgrade" && host.kind == HostKind::Hung {
        return;
    }
    let (passes, takes) = if kind == "rollback" {
        (true, host.delay)
    } else {
        let deadline = if deadline.is_zero() {
            Duration::from_secs(3600)
        } else {
            deadline
        };
        let (passes, after) = gate(host.kind, gate_timeout(deadline, host.delay));
        // A failed gate costs a rollback as long as the deploy.
        let rollback = if passes { Duration::ZERO } else { host.delay };
        (passes, host.delay + after + rollback)
    };
    // As the real agent reports: the version asked for, and the one running after.
    let (outcome, running_version, message) = if passes {
        (
            pb::OperationOutcome::Succeeded,
            version.clone(),
            format!("{version} healthy"),
        )
    } else {
        (
            pb::OperationOutcome::RolledBack,
            from.clone(),
            format!("{version} unhealthy ({}); rolled back", host.kind.name()),
        )
    };
    let result = pb::OperationResult {
        operation_id,
        domain: host.domain.clone(),
        outcome: outcome as i32,
        from_version: from,
        to_version: version.clone(),
        running_version,
        message,
    };
    shared.lock().unwrap().running += 1;
    let finished = finished.clone();
    tokio::spawn(async move {
        // The simulated upgrade's own duration.
        tokio::time::sleep(takes).await;
        let _ = finished.send(Finished { result });
    });
}

//! The Agent service: one stream per host. Registers the host on Hello,
//! stores its observed inventory and durable events exactly once, and tracks
//! liveness in `Fleet`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ccfleet_proto::pb::{self, agent_message::Body, server_message};
use ccfleet_proto::HostId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::enrollment::millis;
use super::internal;
use crate::auth::{self, ca::CertificateAuthority, Identity};
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::model::{now_millis, AgentEvent, CertificateKind, CertificateRecord};
use crate::store::{EventOutcome, StoreError, StoreHandle};

/// Messages queued for one agent's stream before the sender waits.
const OUTBOUND_QUEUE: usize = 32;

/// Events of one stream stored but not yet flushed (or still queued for the
/// store thread) at most: past it the session reads no more messages until
/// a flush covers some, so one agent cannot fill the store's queue.
const MAX_UNFLUSHED_EVENTS: usize = 256;

/// One of a stream's events, flushed (or failed): what the session needs to
/// acknowledge it.
struct Flushed {
    seq: u64,
    /// How it was stored, with the host's highest applied sequence number at
    /// that point (the event's own, or a higher one for a duplicate).
    stored: Result<(EventOutcome, u64), StoreError>,
}

pub struct AgentService {
    pub store: StoreHandle,
    pub fleet: Arc<Fleet>,
    /// Interval the server asks agents to heartbeat at.
    pub heartbeat_interval: Duration,
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
    pub authority: Arc<CertificateAuthority>,
    pub host_certificate_lifetime: Duration,
    pub metrics: Arc<Metrics>,
    pub rollouts: crate::rollout::RolloutEngine,
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    type ConnectStream = ServerStream;

    async fn connect(&self, request: Request<Streaming<pb::AgentMessage>>) -> Result<Response<ServerStream>, Status> {
        let opened = self.open_stream(request).await;
        Metrics::increment(match &opened {
            Ok(_) => &self.metrics.agent_streams_opened,
            Err(_) => &self.metrics.agent_streams_refused,
        });
        opened
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::RenewResponse>, Status> {
        let renewed = self.renew_certificate(request).await;
        if renewed.is_ok() {
            Metrics::increment(&self.metrics.certificates_renewed);
        }
        renewed
    }
}

impl AgentService {
    async fn open_stream(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<ServerStream>, Status> {
        let peer = request.remote_addr();
        let caller = auth::authenticated(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within the hello timeout"))?
            .map_err(undecodable)?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its hello"))?;
        let Some(Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message on an agent stream must be a hello",
            ));
        };
        let host_id = convert::host_id("hello.host_id", &hello.host_id)?;
        if caller.identity != Identity::Host(host_id.clone()) {
            tracing::warn!(caller = %caller.identity, claimed = %host_id, ?peer, "refused: a host reported as another");
            return Err(Status::permission_denied(format!(
                "this certificate belongs to {}; it may not report as host {host_id}",
                caller.identity
            )));
        }
        let facts = convert::facts(hello.facts)?;
        let now = now_millis();
        let inventory = convert::inventory(hello.inventory, now)?;
        let agent_version = convert::agent_version(&hello.agent_version);
        let registered = {
            let host_id = host_id.clone();
            self.store
                .write(move |store| store.register_host(&host_id, &agent_version, &facts, &inventory, now))
                .await
                .map_err(|error| match error {
                    StoreError::UnknownHost(host) => not_enrolled(&host),
                    other => internal(other),
                })?
        };
        tracing::info!(host = %host_id, ?peer, apps = registered.app_count, "agent connected");

        if self.fleet.is_shutting_down() {
            return Err(Status::unavailable("the server is shutting down; reconnect later"));
        }
        let ticket = self.fleet.connect(&host_id);
        let (outbound, outbound_stream) = mpsc::channel(OUTBOUND_QUEUE);
        let welcome = pb::Welcome {
            last_seq: registered.last_seq,
            heartbeat_interval_seconds: self.heartbeat_interval.as_secs().max(1) as u32,
        };
        outbound
            .send(Ok(pb::ServerMessage {
                body: Some(server_message::Body::Welcome(welcome)),
            }))
            .await
            .map_err(|_| Status::cancelled("the agent went away"))?;
        // Commands follow the Welcome on the same queue; outstanding ones go out now.
        self.fleet.attach(&host_id, ticket.connection_id, outbound.clone());
        self.rollouts.host_connected(host_id.clone());

        let (flushed, flushed_events) = mpsc::unbounded_channel();
        let session = StreamSession {
            flushed,
            unflushed: 0,
            acknowledged: registered.last_seq,
            store: self.store.clone(),
            fleet: self.fleet.clone(),
            metrics: self.metrics.clone(),
            rollouts: self.rollouts.clone(),
            host_id,
            connection_id: ticket.connection_id,
            outbound,
            certificate_expires: expiry_instant(caller.not_after),
        };
        tokio::spawn(session.run(inbound, flushed_events, ticket.closed));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound_stream))))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let caller = auth::authenticated(&request)?;
        let Identity::Host(host_id) = caller.identity.clone() else {
            return Err(Status::permission_denied("only hosts renew through the Agent service"));
        };
        let csr_pem = request.into_inner().csr_pem;
        let authority = self.authority.clone();
        let lifetime = self.host_certificate_lifetime;
        let (renewing_host, calling_serial) = (host_id.clone(), caller.serial.clone());
        // Check and sign in one store job, serialised with host removal: a
        // renewal racing `host remove` either runs first (and its new serial
        // is revoked with the others) or finds the host gone.
        let issued = self
            .store
            .write(move |store| {
                if store.host(&renewing_host)?.is_none() {
                    return Ok(Err(not_enrolled(&renewing_host)));
                }
                if store
                    .certificate(&calling_serial)?
                    .is_some_and(|certificate| certificate.revoked_at.is_some())
                {
                    return Ok(Err(Status::permission_denied("this certificate has been revoked")));
                }
                let issued =
                    match authority.sign_client_request(&csr_pem, &Identity::Host(renewing_host.clone()), lifetime) {
                        Ok(issued) => issued,
                        Err(error) => return Ok(Err(Status::invalid_argument(error.to_string()))),
                    };
                store.record_certificate(&CertificateRecord {
                    serial: issued.serial.clone(),
                    kind: CertificateKind::Host,
                    identity: renewing_host.to_string(),
                    issued_at: now_millis(),
                    not_after: millis(issued.not_after),
                    revoked_at: None,
                })?;
                Ok(Ok(issued))
            })
            .await
            .map_err(internal)??;
        tracing::info!(host = %host_id, old_serial = caller.serial, new_serial = issued.serial, "host certificate renewed");
        Ok(Response::new(pb::RenewResponse {
            certificate_pem: issued.certificate_pem,
            not_after: Some(convert::timestamp(millis(issued.not_after))),
        }))
    }
}

fn not_enrolled(host_id: &HostId) -> Status {
    Status::permission_denied(format!(
        "host {host_id} is not enrolled (it was removed); enrol it again with a new join token"
    ))
}

/// The task that owns one agent stream after its hello.
///
/// Acknowledgements are a watermark: the session hands each durable event
/// to the store as a grouped write and goes on reading; when a flush covers
/// events, it sends one `Ack` with the highest sequence number now durable
/// for the host. A result reaches the rollout engine once it is flushed.
struct StreamSession {
    /// Where the store thread reports this stream's events once flushed.
    flushed: mpsc::UnboundedSender<Flushed>,
    /// Events handed to the store and not reported flushed yet.
    unflushed: usize,
    /// The watermark last sent (or the Welcome's `last_seq`).
    acknowledged: u64,
    store: StoreHandle,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    rollouts: crate::rollout::RolloutEngine,
    host_id: HostId,
    connection_id: u64,
    outbound: mpsc::Sender<Result<pb::ServerMessage, Status>>,
    /// When the stream's certificate expires: the stream ends then, as the
    /// next call would be refused.
    certificate_expires: tokio::time::Instant,
}

impl StreamSession {
    async fn run(
        mut self,
        mut inbound: Streaming<pb::AgentMessage>,
        mut flushed_events: mpsc::UnboundedReceiver<Flushed>,
        mut closed: tokio::sync::watch::Receiver<bool>,
    ) {
        // The agent closed its side: the events it sent are still answered.
        let mut agent_done = false;
        let ending = loop {
            tokio::select! {
                Some(first) = flushed_events.recv() => {
                    // Everything the same flush covered is here already:
                    // one Ack for all of it.
                    let mut batch = vec![first];
                    while let Ok(next) = flushed_events.try_recv() {
                        batch.push(next);
                    }
                    if let Err(status) = self.acknowledge(batch).await {
                        tracing::warn!(host = %self.host_id, %status, "ending the agent stream");
                        let _ = self.outbound.send(Err(status)).await;
                        break "its events could not be stored";
                    }
                    if agent_done && self.unflushed == 0 {
                        break "stream closed by the agent";
                    }
                }
                message = inbound.message(), if !agent_done && self.unflushed < MAX_UNFLUSHED_EVENTS => match message {
                    Ok(Some(message)) => {
                        self.fleet.touch(&self.host_id, self.connection_id);
                        if let Err(status) = self.handle(message) {
                            tracing::warn!(host = %self.host_id, %status, "refusing agent message");
                            let _ = self.outbound.send(Err(status)).await;
                            break "refused a message";
                        }
                    }
                    Ok(None) if self.unflushed == 0 => break "stream closed by the agent",
                    Ok(None) => agent_done = true,
                    Err(status) if is_decode_error(&status) => {
                        let status = undecodable(status);
                        tracing::warn!(host = %self.host_id, %status, "refusing agent message");
                        let _ = self.outbound.send(Err(status)).await;
                        break "sent an undecodable message";
                    }
                    Err(status) => {
                        tracing::debug!(host = %self.host_id, %status, "agent stream error");
                        break "stream error";
                    }
                },
                () = tokio::time::sleep_until(self.certificate_expires) => {
                    let _ = self.outbound.try_send(Err(Status::unauthenticated(
                        "the host certificate expired during the stream; renew before expiry or enrol again",
                    )));
                    break "certificate expired";
                }
                _ = closed.changed() => {
                    let _ = self.outbound.try_send(Err(Status::unavailable(
                        "session closed by the server (shutting down, heartbeat timeout, host removed or a newer connection); reconnect",
                    )));
                    break "closed by the server";
                }
            }
        };
        let went_offline = self.fleet.disconnect(&self.host_id, self.connection_id);
        tracing::info!(host = %self.host_id, reason = ending, went_offline, "agent stream ended");
        // At shutdown the server writes every host's last-seen in one job.
        if (went_offline || *closed.borrow()) && !self.fleet.is_shutting_down() {
            record_last_seen(&self.store, &self.host_id).await;
        }
    }

    /// Checks one message and hands a durable event to the store; its
    /// acknowledgement follows when a flush covers it (`acknowledge`).
    fn handle(&mut self, message: pb::AgentMessage) -> Result<(), Status> {
        let seq = message.seq;
        let event = match message.body {
            Some(Body::Heartbeat(_)) => return Ok(()),
            Some(Body::Hello(_)) => return Err(Status::invalid_argument("hello may only be the first message")),
            None => return Err(Status::invalid_argument("message without a body")),
            Some(Body::Alert(alert)) => AgentEvent::Alert(convert::alert(alert, now_millis())?),
            Some(Body::Inventory(update)) => AgentEvent::Inventory(convert::inventory(update.inventory, now_millis())?),
            Some(Body::Progress(progress)) => AgentEvent::Progress {
                operation_id: convert::operation_id(&progress.operation_id)?,
                domain: convert::domain("progress.domain", &progress.domain)?,
                phase: convert::phase(progress.phase),
                message: convert::message(&progress.message),
            },
            Some(Body::Result(result)) => {
                let (from_version, to_version) = convert::versions(&result.from_version, &result.to_version)?;
                AgentEvent::Result {
                    operation_id: convert::operation_id(&result.operation_id)?,
                    domain: convert::domain("result.domain", &result.domain)?,
                    outcome: convert::outcome(result.outcome),
                    from_version,
                    to_version,
                    running_version: convert::running_version(&result.running_version)?,
                    message: convert::message(&result.message),
                }
            }
        };
        if seq == 0 {
            return Err(Status::invalid_argument(
                "durable events need a sequence number of 1 or more",
            ));
        }
        let host_id = self.host_id.clone();
        let rollout_event = crate::rollout::engine::rollout_event(&self.host_id, &event);
        let rollouts = self.rollouts.clone();
        let flushed = self.flushed.clone();
        self.store
            .write_grouped(
                move |store| {
                    let outcome = store.apply_event(&host_id, seq, &event)?;
                    Ok((outcome, store.applied_seq(&host_id).max(seq)))
                },
                move |stored: Result<(EventOutcome, u64), StoreError>| {
                    // Flushed first: a restarted engine finds the result in
                    // the store. Sent from here, so that a result reaches the
                    // engine even when its stream has ended meanwhile.
                    if let (Ok((EventOutcome::Applied, _)), Some(rollout_event)) = (&stored, rollout_event) {
                        rollouts.agent_event(rollout_event);
                    }
                    let _ = flushed.send(Flushed { seq, stored });
                },
            )
            .map_err(internal)?;
        self.unflushed += 1;
        Ok(())
    }

    /// Events that a flush covered, in the order they were sent: counts them
    /// and sends one Ack with the new watermark.
    async fn acknowledge(&mut self, batch: Vec<Flushed>) -> Result<(), Status> {
        let mut watermark = self.acknowledged;
        for Flushed { seq, stored } in batch {
            self.unflushed -= 1;
            let (outcome, applied) = stored.map_err(internal)?;
            if outcome == EventOutcome::Duplicate {
                tracing::debug!(host = %self.host_id, seq, "duplicate event ignored");
                Metrics::increment(&self.metrics.agent_events_duplicate);
            } else {
                Metrics::increment(&self.metrics.agent_events_applied);
            }
            watermark = watermark.max(applied);
        }
        // Sent even when it did not move (a repeated event at or below it):
        // the agent hears that what it sent is covered.
        self.acknowledged = watermark;
        self.outbound
            .send(Ok(pb::ServerMessage {
                body: Some(server_message::Body::Ack(pb::Ack { seq: watermark })),
            }))
            .await
            .map_err(|_| Status::cancelled("the agent went away"))
    }
}

/// A message the server could not decode (invalid UTF-8 in a string,
/// malformed protobuf) is the agent's fault: INVALID_ARGUMENT, not INTERNAL
/// as tonic's codec reports it.
fn is_decode_error(status: &Status) -> bool {
    status.code() == tonic::Code::Internal && status.message().starts_with("failed to decode")
}

fn undecodable(status: Status) -> Status {
    if is_decode_error(&status) {
        Status::invalid_argument(format!("undecodable message: {}", status.message()))
    } else {
        status
    }
}

/// The instant a certificate expiring at `not_after` (Unix milliseconds) expires.
fn expiry_instant(not_after: crate::model::UnixMillis) -> tokio::time::Instant {
    let left = not_after.saturating_sub(now_millis());
    tokio::time::Instant::now() + Duration::from_millis(left)
}

/// Writes the coarse last-seen time when a session ends.
async fn record_last_seen(store: &StoreHandle, host_id: &HostId) {
    let host_id = host_id.clone();
    let result = store
        .write(move |store| {
            if let Some(mut host) = store.host(&host_id)? {
                host.last_seen = now_millis();
                store.put_host(&host)?;
            }
            Ok(())
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "cannot record last-seen time");
    }
}

//! The agent's link to the server: enrolment when the host has no identity,
//! one long-lived mTLS stream (the agent dials out), delivery of the outbox,
//! heartbeats, renewal of the certificate at two thirds of its lifetime, and
//! reconnection with backoff when anything breaks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ccfleet_proto::pb::{self, agent_client::AgentClient, agent_message::Body, server_message};
use ccfleet_proto::tls::{self, Credential};
use ccfleet_proto::{HostId, MAX_MESSAGE_BYTES};
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;

use crate::identity::{self, error_chain};
use crate::outbox::Outbox;

/// What `ccfleet-agent status` shows about the link.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkStatus {
    pub connected: bool,
    /// The last problem, in one line; empty when none.
    pub last_error: String,
    /// Expiry of the current certificate (RFC 3339), once enrolled.
    pub certificate_not_after: Option<String>,
}

/// Everything the link needs, shared with the rest of the agent.
pub struct Link {
    pub server_url: String,
    pub host_id: HostId,
    pub state_dir: PathBuf,
    pub join_token_file: Option<PathBuf>,
    pub facts: pb::HostFacts,
    pub outbox: Arc<Outbox>,
    /// Signalled when the outbox has new events.
    pub outbox_changed: Arc<Notify>,
    /// The newest observed inventory, sent in every Hello.
    pub inventory: watch::Receiver<pb::Inventory>,
    pub status: watch::Sender<LinkStatus>,
    /// Server commands go to the daemon, which runs the upgrade transaction.
    pub commands: mpsc::Sender<pb::Command>,
}

/// Why one connection attempt or stream ended.
enum Ending {
    /// The certificate was renewed; reconnect at once with the new one.
    Renewed,
    Shutdown,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before the next attempt: a random point in the upper half of
/// `backoff` ("equal jitter"), so that the agents of a fleet that lost the
/// server at the same moment do not all come back in the same instant.
/// `random` is any random number.
pub fn jittered(backoff: Duration, random: u64) -> Duration {
    let half = backoff.as_millis() as u64 / 2;
    Duration::from_millis(half + random % (half + 1))
}

fn random_u64() -> u64 {
    u64::from_str_radix(&tls::random_hex(8), 16).unwrap_or_default()
}

impl Link {
    /// Runs until `shutdown` turns true, reconnecting with exponential
    /// backoff (1 s doubling to 30 s, each wait jittered) after failures.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let attempt = self.connect_once(&mut shutdown);
            match attempt.await {
                Ok(Ending::Shutdown) => return,
                Ok(Ending::Renewed) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Err((error, was_connected)) => {
                    tracing::warn!(%error, "link to the server failed");
                    self.status.send_modify(|status| {
                        status.connected = false;
                        status.last_error = error.clone();
                    });
                    if was_connected {
                        backoff = Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(tokio::time::Instant::now() + jittered(backoff, random_u64())) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The stored credential, or a new one from enrolment.
    async fn credential(&self) -> Result<Credential, String> {
        if let Some(credential) = identity::load(&self.state_dir).map_err(|error| error.to_string())? {
            return Ok(credential);
        }
        let token_file = self
            .join_token_file
            .as_ref()
            .ok_or_else(|| identity::IdentityError::NoToken.to_string())?;
        let token = identity::read_token(token_file).map_err(|error| error.to_string())?;
        let credential = identity::enroll(
            &self.server_url,
            &token,
            &self.host_id,
            self.facts.clone(),
            &self.state_dir,
        )
        .await
        .map_err(|error| format!("enrolment failed: {error}"))?;
        identity::store(&self.state_dir, &credential).map_err(|error| error.to_string())?;
        tracing::info!(host = %self.host_id, "enrolled with the server");
        Ok(credential)
    }

    /// One connection: returns how it ended, or an error and whether the
    /// stream had been established (which resets the backoff).
    async fn connect_once(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Ending, (String, bool)> {
        let credential = self.credential().await.map_err(|error| (error, false))?;
        let not_after = credential.not_after().map_err(|error| (error.to_string(), false))?;
        self.status.send_modify(|status| {
            status.certificate_not_after = Some(humantime::format_rfc3339_seconds(not_after).to_string())
        });
        let renew_at = identity::renewal_due(&credential).map_err(|error| (error.to_string(), false))?;
        let channel = tls::mtls_endpoint(&self.server_url, &credential)
            .map_err(|error| (error.to_string(), false))?
            .connect()
            .await
            .map_err(|error| {
                (
                    format!("cannot reach {}: {}", self.server_url, error_chain(&error)),
                    false,
                )
            })?;

        let (sender, receiver) = mpsc::channel::<pb::AgentMessage>(64);
        let hello = pb::Hello {
            host_id: self.host_id.to_string(),
            facts: Some(self.facts.clone()),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            inventory: Some(self.inventory.borrow().clone()),
        };
        let _ = sender
            .send(pb::AgentMessage {
                seq: 0,
                body: Some(Body::Hello(hello)),
            })
            .await;
        let mut client = AgentClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut inbound = client
            .connect(ReceiverStream::new(receiver))
            .await
            .map_err(|status| (format!("the server refused the stream: {}", status.message()), false))?
            .into_inner();
        let welcome = match inbound.message().await {
            Ok(Some(pb::ServerMessage {
                body: Some(server_message::Body::Welcome(welcome)),
            })) => welcome,
            Ok(_) => return Err(("the server did not welcome the stream".into(), false)),
            Err(status) => return Err((format!("the server refused the stream: {}", status.message()), false)),
        };
        self.acknowledge(welcome.last_seq).map_err(|error| (error, true))?;
        self.status.send_modify(|status| {
            status.connected = true;
            status.last_error.clear();
        });
        tracing::info!(host = %self.host_id, last_seq = welcome.last_seq, "connected to the server");

        let heartbeat_every = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.max(1)));
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let until_renewal = renew_at.duration_since(SystemTime::now()).unwrap_or_default();
        let renewal = tokio::time::sleep_until(tokio::time::Instant::now() + until_renewal);
        tokio::pin!(renewal);
        let mut last_sent = 0u64;
        last_sent = self
            .send_pending(&sender, last_sent)
            .await
            .map_err(|error| (error, true))?;
        loop {
            tokio::select! {
                _ = self.outbox_changed.notified() => {
                    last_sent = self.send_pending(&sender, last_sent).await.map_err(|error| (error, true))?;
                }
                _ = heartbeat.tick() => {
                    let heartbeat = pb::AgentMessage { seq: self.outbox_last_seq(), body: Some(Body::Heartbeat(pb::Heartbeat {})) };
                    sender.send(heartbeat).await.map_err(|_| ("the stream closed".to_owned(), true))?;
                }
                message = inbound.message() => match message {
                    Ok(Some(pb::ServerMessage { body: Some(server_message::Body::Ack(ack)) })) => {
                        self.acknowledge(ack.seq).map_err(|error| (error, true))?;
                    }
                    Ok(Some(pb::ServerMessage { body: Some(server_message::Body::Command(command)) })) => {
                        tracing::info!(operation = %command.operation_id, "server command received");
                        if self.commands.send(command).await.is_err() {
                            return Ok(Ending::Shutdown);
                        }
                    }
                    Ok(Some(other)) => tracing::debug!(?other, "ignoring an unexpected server message"),
                    Ok(None) => return Err(("the server closed the stream".into(), true)),
                    Err(status) => return Err((format!("the stream broke: {}", status.message()), true)),
                },
                _ = &mut renewal => {
                    let renewed = identity::renew(channel.clone(), &self.host_id, &credential)
                        .await
                        .map_err(|error| (format!("certificate renewal failed: {error}"), true))?;
                    identity::store(&self.state_dir, &renewed).map_err(|error| (error.to_string(), true))?;
                    tracing::info!(host = %self.host_id, "certificate renewed; reconnecting with it");
                    return Ok(Ending::Renewed);
                }
                _ = shutdown.changed() => return Ok(Ending::Shutdown),
            }
        }
    }

    fn outbox_last_seq(&self) -> u64 {
        self.outbox.last_seq()
    }

    fn acknowledge(&self, seq: u64) -> Result<(), String> {
        self.outbox.acknowledge(seq).map_err(|error| error.to_string())
    }

    /// Sends every pending event newer than `last_sent`; returns the new mark.
    async fn send_pending(&self, sender: &mpsc::Sender<pb::AgentMessage>, last_sent: u64) -> Result<u64, String> {
        let pending = self.outbox.pending().map_err(|error| error.to_string())?;
        let mut mark = last_sent;
        for message in pending.into_iter().filter(|message| message.seq > last_sent) {
            mark = message.seq;
            sender.send(message).await.map_err(|_| "the stream closed".to_owned())?;
        }
        Ok(mark)
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn waits_fall_in_the_upper_half_of_the_backoff() {
        let second = Duration::from_secs(1);
        let cases = [
            (second, 0, 500),
            (second, 500, 1_000),
            (second, 501, 500),
            (second, u64::MAX, 500 + u64::MAX % 501),
            (MAX_BACKOFF, 7, 15_007),
            (Duration::ZERO, 12_345, 0),
        ];
        for (backoff, random, expected_millis) in cases {
            assert_eq!(
                jittered(backoff, random),
                Duration::from_millis(expected_millis),
                "{backoff:?} {random}"
            );
        }
        for _ in 0..1_000 {
            let wait = jittered(MAX_BACKOFF, random_u64());
            assert!(wait >= MAX_BACKOFF / 2 && wait <= MAX_BACKOFF, "{wait:?}");
        }
    }
}

//! Connected agents: who is online, and the way to reach each one's stream.
//!
//! This is in-memory state only. Liveness changes with every heartbeat, which
//! is far too often for storage (ARCHITECTURE.md, "Storage"); the store receives the
//! coarse last-seen time when a session ends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use ccfleet_proto::HostId;
use tokio::sync::watch;

/// One agent's open stream.
struct Session {
    /// Distinguishes this stream from an older or newer one of the same host.
    connection_id: u64,
    last_seen: Instant,
    /// Set to true to ask the stream's task to end.
    close: watch::Sender<bool>,
    /// The stream's outbound queue, once its Welcome is queued (commands go here).
    outbound: Option<Outbound>,
}

/// The sending side of one agent stream.
pub type Outbound = tokio::sync::mpsc::Sender<Result<ccfleet_proto::pb::ServerMessage, tonic::Status>>;

/// Registry of agent sessions. The lock is held for map operations only,
/// never across I/O or an await.
pub struct Fleet {
    sessions: Mutex<HashMap<HostId, Session>>,
    next_connection_id: std::sync::atomic::AtomicU64,
    heartbeat_timeout: Duration,
    /// Set by `close_all`: the server writes every last-seen time itself.
    shutting_down: std::sync::atomic::AtomicBool,
}

/// What a stream's task holds: its identity and the signal that ends it.
pub struct SessionTicket {
    pub connection_id: u64,
    pub closed: watch::Receiver<bool>,
}

impl Fleet {
    pub fn new(heartbeat_timeout: Duration) -> Fleet {
        Fleet {
            sessions: Mutex::new(HashMap::new()),
            next_connection_id: std::sync::atomic::AtomicU64::new(1),
            heartbeat_timeout,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Session>> {
        // A panic while holding this lock leaves plain data behind; carry on.
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new stream for `host_id`. An older stream of the same host
    /// is told to close: the newest connection wins.
    pub fn connect(&self, host_id: &HostId) -> SessionTicket {
        let connection_id = self
            .next_connection_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (close, closed) = watch::channel(false);
        let session = Session {
            connection_id,
            last_seen: Instant::now(),
            close,
            outbound: None,
        };
        if let Some(previous) = self.sessions().insert(host_id.clone(), session) {
            let _ = previous.close.send(true);
        }
        SessionTicket { connection_id, closed }
    }

    /// Makes the stream `connection_id` of `host_id` the way to send it commands.
    pub fn attach(&self, host_id: &HostId, connection_id: u64, outbound: Outbound) {
        if let Some(session) = self.sessions().get_mut(host_id) {
            if session.connection_id == connection_id {
                session.outbound = Some(outbound);
            }
        }
    }

    /// Queues `message` on the open stream of `host_id`; false if it has none.
    /// Never waits: a full queue is drained by a task of its own.
    pub fn send(&self, host_id: &HostId, message: ccfleet_proto::pb::ServerMessage) -> bool {
        let Some(outbound) = self
            .sessions()
            .get(host_id)
            .and_then(|session| session.outbound.clone())
        else {
            return false;
        };
        match outbound.try_send(Ok(message)) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(message)) => {
                tokio::spawn(async move {
                    let _ = outbound.send(message).await;
                });
                true
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Notes that the stream `connection_id` of `host_id` showed signs of life.
    pub fn touch(&self, host_id: &HostId, connection_id: u64) {
        if let Some(session) = self.sessions().get_mut(host_id) {
            if session.connection_id == connection_id {
                session.last_seen = Instant::now();
            }
        }
    }

    /// Removes the stream `connection_id` of `host_id`, unless a newer one
    /// replaced it. Returns whether the host went offline.
    pub fn disconnect(&self, host_id: &HostId, connection_id: u64) -> bool {
        let mut sessions = self.sessions();
        if sessions
            .get(host_id)
            .is_some_and(|session| session.connection_id == connection_id)
        {
            sessions.remove(host_id);
            return true;
        }
        false
    }

    /// Closes the stream of `host_id`, if any (the host was removed).
    pub fn close(&self, host_id: &HostId) {
        if let Some(session) = self.sessions().remove(host_id) {
            let _ = session.close.send(true);
        }
    }

    /// Whether `host_id` has an open stream that sent something within the
    /// heartbeat timeout.
    pub fn is_online(&self, host_id: &HostId) -> bool {
        self.sessions()
            .get(host_id)
            .is_some_and(|session| session.last_seen.elapsed() <= self.heartbeat_timeout)
    }

    /// Whether each of `host_ids` is online, under one lock and one clock
    /// reading (for listings of many hosts).
    pub fn online_among<'a>(&self, host_ids: impl IntoIterator<Item = &'a HostId>) -> Vec<bool> {
        let now = Instant::now();
        let sessions = self.sessions();
        host_ids
            .into_iter()
            .map(|host_id| {
                sessions
                    .get(host_id)
                    .is_some_and(|session| now.saturating_duration_since(session.last_seen) <= self.heartbeat_timeout)
            })
            .collect()
    }

    /// Closes every stream that has been silent for longer than the heartbeat
    /// timeout, and returns their hosts.
    pub fn expire_silent(&self) -> Vec<HostId> {
        let mut expired = Vec::new();
        self.sessions().retain(|host_id, session| {
            if session.last_seen.elapsed() > self.heartbeat_timeout {
                let _ = session.close.send(true);
                expired.push(host_id.clone());
                false
            } else {
                true
            }
        });
        expired
    }

    /// Whether `close_all` was called: sessions then leave last-seen to
    /// the shutdown, which writes them all in one store job.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of open streams.
    pub fn online_count(&self) -> usize {
        self.sessions().len()
    }

    /// Closes every stream (the server is shutting down) and returns their hosts.
    pub fn close_all(&self) -> Vec<HostId> {
        self.shutting_down.store(true, std::sync::atomic::Ordering::Relaxed);
        self.sessions()
            .drain()
            .map(|(host_id, session)| {
                let _ = session.close.send(true);
                host_id
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostId {
        name.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn silent_sessions_expire_after_the_timeout() {
        let fleet = Fleet::new(Duration::from_secs(10));
        let mut ticket = fleet.connect(&host("a"));
        let other = fleet.connect(&host("b"));
        tokio::time::advance(Duration::from_secs(6)).await;
        fleet.touch(&host("b"), other.connection_id);
        // A touch for another (older) connection of a host changes nothing.
        fleet.touch(&host("a"), other.connection_id);
        assert!(fleet.is_online(&host("a")));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!fleet.is_online(&host("a")), "a was silent for 12s");
        assert!(fleet.is_online(&host("b")), "b was touched 6s ago");
        assert_eq!(fleet.expire_silent(), vec![host("a")]);
        assert!(*ticket.closed.borrow_and_update(), "a's stream was told to close");
        assert_eq!(fleet.online_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_every_session_and_names_their_hosts() {
        let fleet = Fleet::new(Duration::from_secs(10));
        let mut tickets = vec![fleet.connect(&host("a")), fleet.connect(&host("b"))];
        let mut closed = fleet.close_all();
        closed.sort();
        assert_eq!(closed, vec![host("a"), host("b")]);
        for ticket in &mut tickets {
            assert!(*ticket.closed.borrow_and_update(), "every stream is told to close");
        }
        assert_eq!(fleet.online_count(), 0);
        assert!(!fleet.disconnect(&host("a"), tickets[0].connection_id));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_replaces_the_old_one() {
        let fleet = Fleet::new(Duration::from_secs(10));
        let mut first = fleet.connect(&host("a"));
        let second = fleet.connect(&host("a"));
        assert!(*first.closed.borrow_and_update(), "the older stream is closed");
        assert!(
            !fleet.disconnect(&host("a"), first.connection_id),
            "the old stream ending does not take the host offline"
        );
        assert!(fleet.is_online(&host("a")));
        assert!(fleet.disconnect(&host("a"), second.connection_id));
        assert!(!fleet.is_online(&host("a")));
    }
}

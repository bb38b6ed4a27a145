//! The durable notification queue and the fleet gauges behind `/metrics`.
//!
//! A notification (an alert that opened, escalated or resolved; a rollout
//! that halted or completed) is written into the `notifications` tree in the
//! same sled transaction as the change it announces, so a change on disk
//! always has its notification on disk too. Each webhook destination keeps a
//! cursor (`notification_cursors`: destination id -> the last sequence number
//! it received); an entry is removed once every configured destination has
//! passed it. The queue is bounded: past its limit the oldest entries are
//! dropped, counted and logged. Nothing is queued while no destination is
//! configured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::keys::ALERTS;
use super::rollouts::{RolloutHeader, ROLLOUTS};
use super::{decode, encode, Store, StoreError};
use crate::model::{AlertRecord, AlertSeverityRecord, NotificationRecord, RolloutStateRecord};

pub(super) const NOTIFICATIONS: &str = "notifications";
pub(super) const NOTIFICATION_CURSORS: &str = "notification_cursors";

/// Notifications kept undelivered unless configured otherwise.
pub const DEFAULT_NOTIFICATION_LIMIT: usize = 10_000;

/// Gauges the store keeps up to date as it writes, read by `/metrics`
/// without a trip to the store thread.
#[derive(Debug, Default)]
pub struct FleetGauges {
    /// Active (open or acknowledged) alerts by severity: unknown, warning,
    /// critical.
    alerts_open: [AtomicU64; 3],
    /// Stored rollouts by state: running, paused, completed, halted, aborted.
    rollouts: [AtomicU64; 5],
    /// Notifications waiting for at least one destination.
    notifications_queued: AtomicU64,
    /// Notifications dropped because the queue was full.
    notifications_dropped: AtomicU64,
    /// Alerts refused by a host's alert quota since the server started.
    pub(super) alerts_refused: AtomicU64,
}

/// Every severity, in the order of `FleetGauges::alerts_open`.
pub const SEVERITIES: [AlertSeverityRecord; 3] = [
    AlertSeverityRecord::Unknown,
    AlertSeverityRecord::Warning,
    AlertSeverityRecord::Critical,
];

/// Every rollout state, in the order of `FleetGauges::rollouts`.
pub const ROLLOUT_STATES: [RolloutStateRecord; 5] = [
    RolloutStateRecord::Running,
    RolloutStateRecord::Paused,
    RolloutStateRecord::Completed,
    RolloutStateRecord::Halted,
    RolloutStateRecord::Aborted,
];

fn severity_index(severity: AlertSeverityRecord) -> usize {
    SEVERITIES.iter().position(|known| *known == severity).unwrap_or(0)
}

fn state_index(state: RolloutStateRecord) -> usize {
    ROLLOUT_STATES.iter().position(|known| *known == state).unwrap_or(0)
}

impl FleetGauges {
    pub fn alerts_open(&self, severity: AlertSeverityRecord) -> u64 {
        self.alerts_open[severity_index(severity)].load(Ordering::Relaxed)
    }

    pub fn rollouts(&self, state: RolloutStateRecord) -> u64 {
        self.rollouts[state_index(state)].load(Ordering::Relaxed)
    }

    pub fn notifications_queued(&self) -> u64 {
        self.notifications_queued.load(Ordering::Relaxed)
    }

    pub fn notifications_dropped(&self) -> u64 {
        self.notifications_dropped.load(Ordering::Relaxed)
    }

    pub fn alerts_refused(&self) -> u64 {
        self.alerts_refused.load(Ordering::Relaxed)
    }

    pub(super) fn alert_changed(&self, before: Option<AlertSeverityRecord>, after: Option<AlertSeverityRecord>) {
        if let Some(before) = before {
            let _ =
                self.alerts_open[severity_index(before)].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                    Some(open.saturating_sub(1))
                });
        }
        if let Some(after) = after {
            self.alerts_open[severity_index(after)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn rollout_changed(&self, before: Option<RolloutStateRecord>, after: RolloutStateRecord) {
        if let Some(before) = before {
            let _ = self.rollouts[state_index(before)].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                Some(count.saturating_sub(1))
            });
        }
        self.rollouts[state_index(after)].fetch_add(1, Ordering::Relaxed);
    }
}

/// The store's side of the queue: its trees, its bound, and how delivery
/// tasks are woken.
pub(super) struct NotificationQueue {
    pub(super) tree: sled::Tree,
    cursors: sled::Tree,
    /// Destination ids; empty: nothing is queued.
    destinations: Vec<String>,
    limit: usize,
    /// Carries the newest queued sequence number to the delivery tasks.
    waker: tokio::sync::watch::Sender<u64>,
}

impl NotificationQueue {
    pub(super) fn open(db: &sled::Db) -> Result<NotificationQueue, StoreError> {
        Ok(NotificationQueue {
            tree: db.open_tree(NOTIFICATIONS)?,
            cursors: db.open_tree(NOTIFICATION_CURSORS)?,
            destinations: Vec::new(),
            limit: DEFAULT_NOTIFICATION_LIMIT,
            waker: tokio::sync::watch::channel(0).0,
        })
    }
}

/// A notification encoded for the queue, made before the transaction that
/// writes it (a sled transaction may run its closure more than once).
pub(super) struct QueuedNotification {
    pub(super) key: [u8; 8],
    pub(super) value: Vec<u8>,
}

impl Store {
    /// Sets the webhook destinations (their ids) and the queue's bound.
    /// Cursors of destinations no longer configured are removed, so they
    /// hold nothing back; entries every destination has passed are removed.
    pub fn configure_notifications(&mut self, destinations: Vec<String>, limit: usize) -> Result<(), StoreError> {
        let queue = &mut self.notifications;
        for entry in queue.cursors.iter() {
            let (id, _) = entry?;
            if !destinations.iter().any(|destination| destination.as_bytes() == &*id) {
                queue.cursors.remove(id)?;
            }
        }
        queue.destinations = destinations;
        queue.limit = limit.max(1);
        self.collect_delivered()?;
        if self.notifications.destinations.is_empty() {
            // Without a destination nobody will ever take them.
            self.notifications.tree.clear()?;
        }
        self.count_queue()?;
        Ok(())
    }

    /// Wakes with the newest queued sequence number.
    pub fn notification_waker(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notifications.waker.subscribe()
    }

    /// The gauges this store keeps for `/metrics`.
    pub fn gauges(&self) -> Arc<FleetGauges> {
        self.gauges.clone()
    }

    /// Counts open alerts and rollouts by state (at open).
    pub(super) fn count_gauges(&self) -> Result<(), StoreError> {
        for entry in self.alerts.iter() {
            let alert: AlertRecord = decode(ALERTS, &entry?.1)?;
            if alert.is_active() {
                self.gauges.alert_changed(None, Some(alert.severity));
            }
        }
        for entry in self.rollouts.iter() {
            let header: RolloutHeader = decode(ROLLOUTS, &entry?.1)?;
            self.gauges.rollout_changed(None, header.state);
        }
        self.count_queue()
    }

    fn count_queue(&self) -> Result<(), StoreError> {
        self.gauges
            .notifications_queued
            .store(self.notifications.tree.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Encodes `notification` for the queue, or `None` when no destination
    /// is configured.
    pub(super) fn prepare_notification(
        &self,
        notification: Option<NotificationRecord>,
    ) -> Result<Option<QueuedNotification>, StoreError> {
        match notification {
            Some(notification) if !self.notifications.destinations.is_empty() => Ok(Some(QueuedNotification {
                // Sequence numbers start at 1: a cursor of 0 means "nothing received".
                key: (self.db.generate_id()? + 1).to_be_bytes(),
                value: encode(&notification)?,
            })),
            _ => Ok(None),
        }
    }

    /// After the transaction that wrote `queued`: applies the bound and wakes
    /// the delivery tasks.
    pub(super) fn notifications_queued(&self, queued: &[QueuedNotification]) -> Result<(), StoreError> {
        let Some(last) = queued.last() else {
            return Ok(());
        };
        let gauges = &self.gauges;
        gauges
            .notifications_queued
            .fetch_add(queued.len() as u64, Ordering::Relaxed);
        while gauges.notifications_queued.load(Ordering::Relaxed) > self.notifications.limit as u64 {
            let Some((key, value)) = self.notifications.tree.pop_min()? else {
                break;
            };
            gauges.notifications_queued.fetch_sub(1, Ordering::Relaxed);
            gauges.notifications_dropped.fetch_add(1, Ordering::Relaxed);
            let id = decode::<NotificationRecord>(NOTIFICATIONS, &value)
                .map(|notification| notification.id)
                .unwrap_or_default();
            tracing::warn!(
                sequence = sequence(&key),
                id,
                limit = self.notifications.limit,
                "notification queue full: dropped its oldest notification undelivered"
            );
        }
        self.notifications.waker.send_replace(u64::from_be_bytes(last.key));
        Ok(())
    }

    /// The first queued notification after `destination`'s cursor.
    pub fn next_notification(&self, destination: &str) -> Result<Option<(u64, NotificationRecord)>, StoreError> {
        let after = self.notification_cursor(destination)?;
        let start = after.saturating_add(1).to_be_bytes();
        match self.notifications.tree.range(start..).next() {
            Some(entry) => {
                let (key, value) = entry?;
                Ok(Some((sequence(&key), decode(NOTIFICATIONS, &value)?)))
            }
            None => Ok(None),
        }
    }

    /// The last sequence number `destination` has received (0: none).
    pub fn notification_cursor(&self, destination: &str) -> Result<u64, StoreError> {
        Ok(self
            .notifications
            .cursors
            .get(destination.as_bytes())?
            .map_or(0, |bytes| sequence(&bytes)))
    }

    /// Records that `destination` received (or gave up on) everything up
    /// to `sequence_number`, and removes what every destination has passed.
    pub fn notification_delivered(&self, destination: &str, sequence_number: u64) -> Result<(), StoreError> {
        self.notifications
            .cursors
            .insert(destination.as_bytes(), &sequence_number.to_be_bytes())?;
        let removed = self.collect_delivered()?;
        let _ = self
            .gauges
            .notifications_queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                Some(queued.saturating_sub(removed))
            });
        Ok(())
    }

    /// Removes the entries every configured destination has passed; returns
    /// how many.
    fn collect_delivered(&self) -> Result<u64, StoreError> {
        let queue = &self.notifications;
        let mut passed = u64::MAX;
        for destination in &queue.destinations {
            passed = passed.min(self.notification_cursor(destination)?);
        }
        if queue.destinations.is_empty() {
            return Ok(0);
        }
        let mut removed = 0;
        while let Some((key, _)) = queue.tree.first()? {
            if sequence(&key) > passed {
                break;
            }
            queue.tree.remove(key)?;
            removed += 1;
        }
        Ok(removed)
    }
}

fn sequence(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

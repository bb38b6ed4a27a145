//! The fleet's durable state, and the only module that touches sled.
//!
//! `Store` is a small synchronous, typed API over a handful of sled trees.
//! `StoreHandle` runs it on one dedicated OS thread and hands async callers a
//! future per request: sled never runs on a tokio worker thread, writes are
//! serialised by construction (so read-modify-write sequences need no locks),
//! and every batch of requests that wrote something ends with one `flush`, so a
//! caller that got an answer knows its write is on disk while a burst of
//! writes costs one flush (ARCHITECTURE.md, "Storage").
//!

mod access;
mod alerts;
mod audit;
mod codec;
mod enrolment;
mod handle;
mod hosts;
mod index;
#[cfg(test)]
mod index_tests;
mod keys;
mod listings;
mod notifications;
#[cfg(test)]
mod notifications_tests;
mod rollouts;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use ccfleet_proto::HostId;
use sled::transaction::TransactionError;

pub use alerts::{AckOutcome, AlertFilter};
pub use audit::{DEFAULT_AUDIT_MAX_ENTRIES, DEFAULT_AUDIT_RETENTION_DAYS};
pub use codec::{MAX_RECORD_BYTES, RECORD_FORMAT};
pub use enrolment::{Enrolment, EnrolmentRefusal};
pub use handle::{GroupCommit, StoreHandle, StoreStatsSnapshot, DEFAULT_COMMIT_WINDOW};
pub use index::{AppKey, IndexedApp, ListingIndex, Page, VersionKey};
pub use listings::{OperationFilter, DEFAULT_OPERATION_QUOTA};
pub use notifications::{FleetGauges, DEFAULT_NOTIFICATION_LIMIT, ROLLOUT_STATES, SEVERITIES};
pub use rollouts::RolloutChange;

use crate::model::*;
use codec::{decode, encode};
use keys::*;

/// Errors from the store. Each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store at {path} is in use by another process (is another ccfleet-server running on this data directory?)"
    )]
    Locked { path: PathBuf },
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("storage error")]
    Sled(#[from] sled::Error),
    #[error("cannot encode a record")]
    Encode(#[source] serde_json::Error),
    #[error("a record of {bytes} bytes is over the store's limit of {} bytes", MAX_RECORD_BYTES)]
    TooLarge { bytes: usize },
    #[error("cannot decode a record in tree {tree}")]
    Decode {
        tree: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "record in tree {tree} has format {format}, this build reads format {}",
        RECORD_FORMAT
    )]
    UnknownFormat { tree: &'static str, format: u8 },
    #[error("host {0} is not registered")]
    UnknownHost(HostId),
    #[error("flushing the store failed: {0}")]
    Flush(String),
    #[error("the store thread has stopped")]
    Stopped,
    #[error(
        "the audit log is full: it holds {max} entries, the bound set by --audit-max-entries; \
         admin actions are refused until entries age out (--audit-retention) or the bound is raised"
    )]
    AuditFull { max: usize },
}

/// Outcome of applying a durable agent event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The event was new and is now stored.
    Applied,
    /// The event's sequence number was already applied; nothing changed.
    Duplicate,
}

/// Synchronous typed access to the fleet database. Use it from one thread
/// (see `StoreHandle`); tests use it directly.
pub struct Store {
    db: sled::Db,
    hosts: sled::Tree,
    apps: sled::Tree,
    apps_by_recipe: sled::Tree,
    operations: sled::Tree,
    tokens: sled::Tree,
    certificates: sled::Tree,
    rollouts: sled::Tree,
    rollout_hosts: sled::Tree,
    audit: sled::Tree,
    /// `host\0domain` -> `AlertRecord`: at most one alert per app (open,
    /// acknowledged or resolved).
    alerts: sled::Tree,
    /// The next alert id (`alerts.rs`).
    alert_counter: sled::Tree,
    /// Alerts refused per host by the quota since start, for the log.
    alert_refusals: std::sync::Mutex<std::collections::HashMap<HostId, u64>>,
    /// Audit entries kept at most; past it admin actions are refused.
    audit_max_entries: usize,
    /// Audit entries stored, counted at open (this thread is the only writer).
    audit_entries: std::sync::atomic::AtomicUsize,
    /// `updated_at (8 bytes, big-endian) host\0operation id` -> empty: the
    /// operations in time order, for newest-first listings without sorting
    /// every record.
    operations_by_time: sled::Tree,
    /// Operation records kept per host; see `listings.rs`.
    operation_quota: usize,
    /// Operations stored per host, counted on first use (this thread is the
    /// only writer, so the count stays true).
    operation_counts: std::sync::Mutex<std::collections::HashMap<HostId, usize>>,
    /// Hosts and apps in memory for the admin listings; every write of the
    /// hosts or apps tree updates it after its transaction succeeded.
    index: std::sync::Arc<ListingIndex>,
    /// The durable notification queue (`notifications.rs`).
    notifications: notifications::NotificationQueue,
    /// Open alerts, rollouts by state and the queue's size, for `/metrics`.
    gauges: std::sync::Arc<FleetGauges>,
}

impl Store {
    /// Opens (or creates) the database in `directory`.
    pub fn open(directory: &Path) -> Result<Store, StoreError> {
        Self::open_with(directory, sled::Config::new())
    }

    /// [`Store::open`] with log segments of `bytes` (a power of two from
    /// 256 B; the default is 512 KiB), for the crash test
    /// (`tests/tests/it/store_crash.rs`): with small segments sled writes its
    /// log out every few records, so a killed process leaves partly written
    /// changes. A store keeps the segment size it was created with.
    pub fn open_with_segment_size(directory: &Path, bytes: usize) -> Result<Store, StoreError> {
        Self::open_with(directory, sled::Config::new().segment_size(bytes))
    }

    fn open_with(directory: &Path, config: sled::Config) -> Result<Store, StoreError> {
        let path = directory.join("fleet.sled");
        let db = config.path(&path).open().map_err(|source| {
            // sled reports its directory lock as an opaque I/O error.
            if source.to_string().contains("could not acquire lock") {
                StoreError::Locked { path: path.clone() }
            } else {
                StoreError::Open {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let store = Store {
            hosts: db.open_tree(HOSTS)?,
            apps: db.open_tree(APPS)?,
            apps_by_recipe: db.open_tree(APPS_BY_RECIPE)?,
            operations: db.open_tree(OPERATIONS)?,
            tokens: db.open_tree(TOKENS)?,
            certificates: db.open_tree(CERTIFICATES)?,
            rollouts: db.open_tree(rollouts::ROLLOUTS)?,
            rollout_hosts: db.open_tree(rollouts::ROLLOUT_HOSTS)?,
            audit: db.open_tree(audit::AUDIT)?,
            alerts: db.open_tree(ALERTS)?,
            alert_counter: db.open_tree(ALERT_COUNTER)?,
            alert_refusals: Default::default(),
            audit_max_entries: DEFAULT_AUDIT_MAX_ENTRIES,
            audit_entries: Default::default(),
            operations_by_time: db.open_tree(OPERATIONS_BY_TIME)?,
            operation_quota: DEFAULT_OPERATION_QUOTA,
            operation_counts: Default::default(),
            index: Default::default(),
            notifications: notifications::NotificationQueue::open(&db)?,
            gauges: Default::default(),
            db,
        };
        store.index_operations_if_missing()?;
        store.number_unnumbered_alerts()?;
        store.count_audit_entries();
        store.build_listing_index()?;
        store.count_gauges()?;
        Ok(store)
    }

    /// Loads the listing index from the hosts and apps trees.
    fn build_listing_index(&self) -> Result<(), StoreError> {
        for host in self.hosts()? {
            let apps = self.host_apps(&host.host_id)?;
            self.index.put_host(&host);
            self.index.replace_apps(&host.host_id, &apps);
        }
        Ok(())
    }

    /// Opens the store with `open`, waiting while sled's directory lock is
    /// still held: sled lets go of it when its background threads release a
    /// dropped database, a moment after the drop, so a store opened again
    /// right after a drop (in this process or by a child it starts) can find
    /// it taken. Polls for at most ten seconds, then returns the last error.
    /// The server itself opens its store once per process and never needs
    /// this; tests and the crash-test writer do.
    pub fn open_when_released(open: impl Fn() -> Result<Store, StoreError>) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                opened => return opened,
            }
        }
    }

    /// [`Store::open_when_released`] with [`Store::open`], for tests: every
    /// test that opens a directory a second time goes through here.
    #[cfg(test)]
    pub(crate) fn reopen(directory: &Path) -> Store {
        Self::open_when_released(|| Store::open(directory))
            .unwrap_or_else(|error| panic!("cannot reopen the store: {error:?}"))
    }

    /// The in-memory listing index, shared with readers off the store thread.
    pub fn listing_index(&self) -> std::sync::Arc<ListingIndex> {
        self.index.clone()
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Our transactions never abort on purpose, so the only failure is storage.
fn storage_error(error: TransactionError<()>) -> StoreError {
    match error {
        TransactionError::Storage(error) => StoreError::Sled(error),
        TransactionError::Abort(()) => StoreError::Sled(sled::Error::ReportableBug("transaction aborted".into())),
    }
}

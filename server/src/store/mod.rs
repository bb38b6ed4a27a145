//! The fleet's durable state, and the only module that touches sled.
//!
//! `Store` is a small synchronous, typed API over a handful of sled trees.
//! `StoreHandle` runs it on one dedicated OS thread and hands async callers a
//! future per request: sled never runs on a tokio worker thread, writes are
//! serialised by construction (so read-modify-write sequences need no locks),
//! and every batch of requests that wrote something ends with one `flush`, so a
//! caller that got an answer knows its write is on disk while a burst of
//! writes costs one flush (DESIGN.md, "Storage").
//!
//! # Write order
//!
//! The agents' events (inventories, operation progress and results), the
//! bulk of the writes, are not sled transactions: each sled transaction
//! rolls the log buffer twice and costs a disk write of its own, which made
//! a durable event three times as expensive (BENCHMARKS.md, "The store's
//! write path"). Their writes are ordered instead, so that a crash at any
//! point leaves a state the agent's resend repairs. sled recovers a prefix
//! of its log (it stops at the first torn or missing message, and this
//! store has a single writer thread, so the log holds the writes in program
//! order), and an event is acknowledged only after its batch's flush:
//!
//! - the host record, which carries `last_seq`, is written last: recovered,
//!   the sequence number proves the event's other records are there; lost,
//!   the unacknowledged agent sends the event again and it is applied again
//!   (inventory writes are idempotent; an operation record is replaced);
//! - index keys are added before the record they point to is written and
//!   removed after it was changed or removed, so every record is reachable
//!   through its index at every point; readers check what an index key
//!   points to, and skip a recipe-index key whose app is gone or has another
//!   recipe, or a time-index key whose operation has another time (the
//!   leftovers of a crash, until the resend removes them).
//!
//! Rare multi-record changes (enrolment, host removal, alerts, rollouts)
//! stay sled transactions. `store_crash::a_store_killed_mid_burst_keeps_every_acknowledged_event`
//! (tests/tests/it/store_crash.rs) kills a writing process with SIGKILL and
//! checks these rules.

mod audit;
mod enrolment;
mod handle;
mod index;
#[cfg(test)]
mod index_tests;
mod listings;
mod notifications;
#[cfg(test)]
mod notifications_tests;
mod records;
mod rollouts;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use ccfleet_proto::{HostId, RecipeName};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

pub use audit::*;
pub use enrolment::{Enrolment, EnrolmentRefusal};
pub use handle::{StoreHandle, StoreStatsSnapshot};
pub use index::{AppKey, IndexedApp, ListingIndex, Page, VersionKey};
pub use listings::{OperationFilter, DEFAULT_OPERATION_QUOTA};
pub use notifications::{
    AlertNotice, FleetGauges, NotificationKind, NotificationRecord, RolloutNotice, DEFAULT_NOTIFICATION_LIMIT,
    ROLLOUT_STATES, SEVERITIES,
};
pub use records::*;
pub use rollouts::*;

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
}

/// Outcome of applying a durable agent event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The event was new and is now stored.
    Applied,
    /// The event's sequence number was already applied; nothing changed.
    Duplicate,
}

const HOSTS: &str = "hosts";
const APPS: &str = "apps";
const APPS_BY_RECIPE: &str = "apps_by_recipe";
const OPERATIONS: &str = "operations";
const TOKENS: &str = "tokens";
const CERTIFICATES: &str = "certificates";
const ALERTS: &str = "alerts";
const OPERATIONS_BY_TIME: &str = "operations_by_time";

/// Separator inside composite keys. Every name in a key is a validated domain
/// type, none of which can contain it.
const SEPARATOR: u8 = 0;

fn key(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            key.push(SEPARATOR);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut prefix = key(parts);
    prefix.push(SEPARATOR);
    prefix
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
    /// `host\0domain` -> `AlertRecord`: at most one open alert per app.
    alerts: sled::Tree,
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
            operations_by_time: db.open_tree(OPERATIONS_BY_TIME)?,
            operation_quota: DEFAULT_OPERATION_QUOTA,
            operation_counts: Default::default(),
            index: Default::default(),
            notifications: notifications::NotificationQueue::open(&db)?,
            gauges: Default::default(),
            db,
        };
        store.index_operations_if_missing()?;
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

    /// Opens the store again right after this process dropped it. sled
    /// lets go of its directory lock when its background threads release the
    /// database, a moment after the drop; this polls (with a deadline) while
    /// the lock is still held. Only tests reopen a store in-process.
    #[cfg(test)]
    pub(crate) fn reopen(directory: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(directory) {
                Ok(store) => return store,
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(error) => panic!("cannot reopen the store: {error:?}"),
            }
        }
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

    pub fn host(&self, host_id: &HostId) -> Result<Option<HostRecord>, StoreError> {
        self.hosts
            .get(host_id.as_str())?
            .map(|bytes| decode(HOSTS, &bytes))
            .transpose()
    }

    /// Every host, sorted by id.
    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.hosts.iter().map(|entry| decode(HOSTS, &entry?.1)).collect()
    }

    /// Writes a host record as given (registration, facts, coarse last-seen).
    pub fn put_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.hosts.insert(host.host_id.as_str(), encode(host)?)?;
        self.index.put_host(host);
        Ok(())
    }

    /// Records that an enrolled host said hello: updates its facts and agent
    /// version and replaces its inventory, atomically. Hosts are created by
    /// enrolment only, so an unknown (never enrolled, or removed) host is
    /// refused. Returns the stored host record.
    pub fn register_host(
        &self,
        host_id: &HostId,
        agent_version: &str,
        facts: &HostFactsRecord,
        inventory: &[AppRecord],
        now: UnixMillis,
    ) -> Result<HostRecord, StoreError> {
        let mut host = self
            .host(host_id)?
            .ok_or_else(|| StoreError::UnknownHost(host_id.clone()))?;
        host.last_seen = now;
        host.agent_version = agent_version.to_owned();
        host.facts = facts.clone();
        self.write_inventory(host, inventory)
    }

    /// Applies one durable event from `host_id` with sequence number `seq`,
    /// unless an event with that number (or a later one) was already applied.
    /// The host's new `last_seq` is written after the event's records (module
    /// docs, "Write order"), so a crash never records a sequence number
    /// without its event: the agent, unanswered, sends the event again.
    pub fn apply_event(&self, host_id: &HostId, seq: u64, event: &AgentEvent) -> Result<EventOutcome, StoreError> {
        // The listing index holds every host as stored (this thread writes
        // both), which spares a read and a decode per event.
        let indexed = self
            .index
            .host(host_id)
            .ok_or_else(|| StoreError::UnknownHost(host_id.clone()))?;
        let mut host = HostRecord::clone(&indexed);
        if seq <= host.last_seq {
            return Ok(EventOutcome::Duplicate);
        }
        host.last_seq = seq;
        match event {
            AgentEvent::Inventory(apps) => {
                self.write_inventory(host, apps)?;
            }
            AgentEvent::Progress {
                operation_id,
                domain,
                phase,
                message,
            } => {
                let mut operation = self
                    .operation(host_id, operation_id)?
                    .unwrap_or_else(|| OperationRecord {
                        host_id: host_id.clone(),
                        operation_id: operation_id.clone(),
                        domain: domain.clone(),
                        phase: *phase,
                        outcome: None,
                        from_version: None,
                        to_version: None,
                        message: String::new(),
                        updated_at: 0,
                    });
                operation.phase = *phase;
                operation.message = message.clone();
                operation.updated_at = now_millis();
                self.write_operation(&host, &operation)?;
            }
            AgentEvent::Alert(alert) => {
                self.write_alert(&host, alert)?;
            }
            AgentEvent::Result {
                operation_id,
                domain,
                outcome,
                from_version,
                to_version,
                message,
            } => {
                let phase = self
                    .operation(host_id, operation_id)?
                    .map_or(OperationPhaseRecord::Unknown, |operation| operation.phase);
                let operation = OperationRecord {
                    host_id: host_id.clone(),
                    operation_id: operation_id.clone(),
                    domain: domain.clone(),
                    phase,
                    outcome: Some(*outcome),
                    from_version: from_version.clone(),
                    to_version: to_version.clone(),
                    message: message.clone(),
                    updated_at: now_millis(),
                };
                self.write_operation(&host, &operation)?;
            }
        }
        Ok(EventOutcome::Applied)
    }

    pub fn operation(&self, host_id: &HostId, operation_id: &str) -> Result<Option<OperationRecord>, StoreError> {
        self.operations
            .get(key(&[host_id.as_str(), operation_id]))?
            .map(|bytes| decode(OPERATIONS, &bytes))
            .transpose()
    }

    /// Writes an operation record and the host record (its `last_seq`) in
    /// crash order (see "Write order" in the module docs): the new time-index
    /// key, the operation, the old time-index key's removal, the host last.
    fn write_operation(&self, host: &HostRecord, operation: &OperationRecord) -> Result<(), StoreError> {
        let previous = self.operation(&host.host_id, &operation.operation_id)?;
        let is_new = previous.is_none();
        let host_value = encode(host)?;
        let operation_value = encode(operation)?;
        let operation_key = key(&[host.host_id.as_str(), &operation.operation_id]);
        let old_time_key = previous.map(|previous| listings::time_key(previous.updated_at, &operation_key));
        let new_time_key = listings::time_key(operation.updated_at, &operation_key);
        self.operations_by_time.insert(new_time_key.as_slice(), &[])?;
        self.operations.insert(operation_key.as_slice(), operation_value)?;
        if let Some(old_time_key) = old_time_key.filter(|old| *old != new_time_key) {
            self.operations_by_time.remove(old_time_key)?;
        }
        self.hosts.insert(host.host_id.as_str(), host_value)?;
        self.index.put_host(host);
        if is_new {
            self.count_new_operation(&host.host_id)?;
        }
        Ok(())
    }

    pub fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(token.id.as_bytes(), encode(token)?)?;
        Ok(())
    }

    /// Every join token, sorted by id.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.tokens.iter().map(|entry| decode(TOKENS, &entry?.1)).collect()
    }

    /// Marks a token revoked; false if there is no such token.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let Some(bytes) = self.tokens.get(id.as_bytes())? else {
            return Ok(false);
        };
        let mut token: TokenRecord = decode(TOKENS, &bytes)?;
        token.revoked = true;
        self.put_token(&token)?;
        Ok(true)
    }

    /// Checks a token without consuming it.
    pub fn check_token(
        &self,
        id: &str,
        secret_hash: &str,
        now: UnixMillis,
    ) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
        let Some(bytes) = self.tokens.get(id.as_bytes())? else {
            return Ok(Err(TokenRefusal::Invalid));
        };
        let token: TokenRecord = decode(TOKENS, &bytes)?;
        // Both are hex SHA-256 digests of equal length; compare in constant time.
        let matches = token.secret_hash.len() == secret_hash.len()
            && token
                .secret_hash
                .bytes()
                .zip(secret_hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        Ok(if !matches {
            Err(TokenRefusal::Invalid)
        } else if token.revoked {
            Err(TokenRefusal::Revoked)
        } else if now >= token.expires_at {
            Err(TokenRefusal::Expired)
        } else if token.uses_left == 0 {
            Err(TokenRefusal::UsedUp)
        } else {
            Ok(token)
        })
    }

    /// Records an enrolment: spends one use of `token`, creates the host with
    /// the token's labels and records its certificate, in one transaction.
    /// The caller has checked the token and that the host does not exist, on
    /// the store thread, immediately before.
    pub fn commit_enrolment(
        &self,
        mut token: TokenRecord,
        host_id: &HostId,
        facts: &HostFactsRecord,
        certificate: &CertificateRecord,
        public_key: &str,
        now: UnixMillis,
    ) -> Result<HostRecord, StoreError> {
        token.uses_left -= 1;
        let host = HostRecord {
            facts: facts.clone(),
            labels: token.labels.clone(),
            certificate_not_after: Some(certificate.not_after),
            enrollment: Some(EnrollmentRecord {
                token_id: token.id.clone(),
                public_key: public_key.to_owned(),
            }),
            ..HostRecord::new(host_id.clone(), now)
        };
        let (token_value, host_value, certificate_value) = (encode(&token)?, encode(&host)?, encode(certificate)?);
        (&self.tokens, &self.hosts, &self.certificates)
            .transaction(|(tokens, hosts, certificates)| {
                tokens.insert(token.id.as_bytes(), token_value.clone())?;
                hosts.insert(host_id.as_str(), host_value.clone())?;
                certificates.insert(certificate.serial.as_bytes(), certificate_value.clone())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(storage_error)?;
        self.index.put_host(&host);
        Ok(host)
    }

    /// Records a certificate signed outside enrolment (renewal, admins), and
    /// for a host, its new expiry.
    pub fn record_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError> {
        self.certificates
            .insert(certificate.serial.as_bytes(), encode(certificate)?)?;
        if certificate.kind == CertificateKind::Host {
            if let Ok(host_id) = certificate.identity.parse::<HostId>() {
                if let Some(mut host) = self.host(&host_id)? {
                    host.certificate_not_after = Some(certificate.not_after);
                    self.put_host(&host)?;
                }
            }
        }
        Ok(())
    }

    /// Records a new admin certificate unless the same name already holds a
    /// valid (unrevoked, unexpired) one, whose serial is then returned:
    /// nobody may take over another admin's name, and a name is issued again
    /// only after `admin revoke`. Check and write happen in one store job.
    pub fn record_admin_certificate(
        &self,
        certificate: &CertificateRecord,
        now: UnixMillis,
    ) -> Result<Result<(), String>, StoreError> {
        let holder = self.certificates()?.into_iter().find(|existing| {
            existing.kind == CertificateKind::Admin
                && existing.identity == certificate.identity
                && existing.revoked_at.is_none()
                && existing.not_after > now
        });
        if let Some(holder) = holder {
            return Ok(Err(holder.serial));
        }
        self.record_certificate(certificate)?;
        Ok(Ok(()))
    }

    pub fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        self.certificates
            .get(serial.as_bytes())?
            .map(|bytes| decode(CERTIFICATES, &bytes))
            .transpose()
    }

    pub fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        self.certificates
            .iter()
            .map(|entry| decode(CERTIFICATES, &entry?.1))
            .collect()
    }

    /// Revokes every certificate of `kind` issued to `identity` and returns
    /// the serials revoked now.
    pub fn revoke_certificates_of(
        &self,
        kind: CertificateKind,
        identity: &str,
        now: UnixMillis,
    ) -> Result<Vec<String>, StoreError> {
        let mut revoked = Vec::new();
        for mut certificate in self.certificates()? {
            if certificate.kind == kind && certificate.identity == identity && certificate.revoked_at.is_none() {
                certificate.revoked_at = Some(now);
                self.certificates
                    .insert(certificate.serial.as_bytes(), encode(&certificate)?)?;
                revoked.push(certificate.serial);
            }
        }
        Ok(revoked)
    }

    /// Serials of every revoked certificate that has not expired yet.
    pub fn revoked_serials(&self, now: UnixMillis) -> Result<Vec<String>, StoreError> {
        Ok(self
            .certificates()?
            .into_iter()
            .filter(|certificate| certificate.revoked_at.is_some() && certificate.not_after > now)
            .map(|certificate| certificate.serial)
            .collect())
    }

    /// Forgets a host: its record, its apps and their index entries; revokes
    /// its certificates. Returns the serials revoked, or `None` if the host
    /// was unknown.
    pub fn remove_host(&self, host_id: &HostId, now: UnixMillis) -> Result<Option<Vec<String>>, StoreError> {
        if self.host(host_id)?.is_none() {
            return Ok(None);
        }
        // Everything to change is read first (this thread is the only
        // writer), then written in one transaction: a failure leaves the
        // host as it was, never half removed.
        let mut revoked = Vec::new();
        for mut certificate in self.certificates()? {
            if certificate.kind == CertificateKind::Host
                && certificate.identity == host_id.as_str()
                && certificate.revoked_at.is_none()
            {
                certificate.revoked_at = Some(now);
                revoked.push((certificate.serial.clone(), encode(&certificate)?));
            }
        }
        let apps = self.host_apps(host_id)?;
        let mut operation_keys: Vec<sled::IVec> = Vec::new();
        let mut time_keys: Vec<Vec<u8>> = Vec::new();
        for entry in self.operations.scan_prefix(prefix(&[host_id.as_str()])) {
            let (operation_key, value) = entry?;
            let operation: OperationRecord = decode(OPERATIONS, &value)?;
            time_keys.push(listings::time_key(operation.updated_at, &operation_key));
            operation_keys.push(operation_key);
        }
        let mut alert_keys: Vec<sled::IVec> = Vec::new();
        let mut alert_severities = Vec::new();
        for entry in self.alerts.scan_prefix(prefix(&[host_id.as_str()])) {
            let (alert_key, value) = entry?;
            alert_severities.push(decode::<AlertRecord>(ALERTS, &value)?.severity);
            alert_keys.push(alert_key);
        }
        (
            &self.certificates,
            &self.hosts,
            &self.apps,
            &self.apps_by_recipe,
            &self.operations,
            &self.alerts,
            &self.operations_by_time,
        )
            .transaction(|(certificates, hosts, app_tree, index, operations, alerts, by_time)| {
                for (serial, value) in &revoked {
                    certificates.insert(serial.as_bytes(), value.clone())?;
                }
                for app in &apps {
                    app_tree.remove(key(&[host_id.as_str(), app.domain.as_str()]))?;
                    index.remove(key(&[app.recipe.as_str(), host_id.as_str(), app.domain.as_str()]))?;
                }
                for operation_key in &operation_keys {
                    operations.remove(operation_key.clone())?;
                }
                for alert_key in &alert_keys {
                    alerts.remove(alert_key.clone())?;
                }
                for time_key in &time_keys {
                    by_time.remove(time_key.clone())?;
                }
                hosts.remove(host_id.as_str())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(storage_error)?;
        self.index.remove_host(host_id);
        self.forget_operation_count(host_id);
        for severity in alert_severities {
            self.gauges.alert_changed(Some(severity), None);
        }
        Ok(Some(revoked.into_iter().map(|(serial, _)| serial).collect()))
    }

    /// The apps of one host, sorted by domain.
    pub fn host_apps(&self, host_id: &HostId) -> Result<Vec<AppRecord>, StoreError> {
        self.apps
            .scan_prefix(prefix(&[host_id.as_str()]))
            .map(|entry| decode(APPS, &entry?.1))
            .collect()
    }

    /// Every app on every host (sorted by host, then domain), or only those of
    /// one recipe, found through the recipe index without a full scan.
    pub fn apps(&self, recipe: Option<&RecipeName>) -> Result<Vec<(HostId, AppRecord)>, StoreError> {
        let Some(recipe) = recipe else {
            return self.all_apps();
        };
        let mut apps = Vec::new();
        for entry in self.apps_by_recipe.scan_prefix(prefix(&[recipe.as_str()])) {
            let (index_key, _) = entry?;
            // recipe \0 host \0 domain -> host \0 domain
            let app_key = &index_key[recipe.as_str().len() + 1..];
            if let Some(bytes) = self.apps.get(app_key)? {
                let app: AppRecord = decode(APPS, &bytes)?;
                // A key left by a crash mid-change of recipe is skipped.
                if app.recipe == *recipe {
                    apps.push((host_of_app_key(app_key)?, app));
                }
            }
        }
        Ok(apps)
    }

    fn all_apps(&self) -> Result<Vec<(HostId, AppRecord)>, StoreError> {
        self.apps
            .iter()
            .map(|entry| {
                let (app_key, value) = entry?;
                Ok((host_of_app_key(&app_key)?, decode(APPS, &value)?))
            })
            .collect()
    }

    /// Replaces a host's inventory with `inventory` and writes `host`, in
    /// crash order, touching only the apps that changed. Observations equal to
    /// the stored ones keep their stored time, so an unchanged inventory
    /// writes nothing but the host record.
    fn write_inventory(&self, mut host: HostRecord, inventory: &[AppRecord]) -> Result<HostRecord, StoreError> {
        // The host's apps as stored, from the listing index (see apply_event).
        let stored = self.index.apps_of_host(&host.host_id);
        let stored: Vec<&AppRecord> = stored.iter().map(|indexed| &indexed.app).collect();
        host.app_count = inventory.len() as u32;
        let host_id = host.host_id.as_str();
        let mut app_writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut index_writes: Vec<(Vec<u8>, bool)> = Vec::new();
        // The apps as they will be stored, for the listing index.
        let mut kept: Vec<AppRecord> = Vec::with_capacity(inventory.len());
        for old in &stored {
            if !inventory.iter().any(|new| new.domain == old.domain) {
                app_writes.push((key(&[host_id, old.domain.as_str()]), None));
                index_writes.push((key(&[old.recipe.as_str(), host_id, old.domain.as_str()]), false));
            }
        }
        for new in inventory {
            let old = stored.iter().find(|old| old.domain == new.domain);
            if let Some(old) = old.filter(|old| old.same_observation(new)) {
                kept.push((*old).clone());
                continue;
            }
            kept.push(new.clone());
            app_writes.push((key(&[host_id, new.domain.as_str()]), Some(encode(new)?)));
            // The recipe index changes only for a new app or a new recipe.
            match old {
                Some(old) if old.recipe == new.recipe => {}
                Some(old) => {
                    index_writes.push((key(&[old.recipe.as_str(), host_id, old.domain.as_str()]), false));
                    index_writes.push((key(&[new.recipe.as_str(), host_id, new.domain.as_str()]), true));
                }
                None => index_writes.push((key(&[new.recipe.as_str(), host_id, new.domain.as_str()]), true)),
            }
        }
        // Crash order (module docs, "Write order"): new recipe-index keys,
        // the apps, the keys to remove, and the host record (its `last_seq`).
        for (index_key, present) in &index_writes {
            if *present {
                self.apps_by_recipe.insert(index_key.as_slice(), &[])?;
            }
        }
        for (app_key, value) in app_writes {
            match value {
                Some(value) => self.apps.insert(app_key, value)?,
                None => self.apps.remove(app_key)?,
            };
        }
        for (index_key, present) in &index_writes {
            if !*present {
                self.apps_by_recipe.remove(index_key.as_slice())?;
            }
        }
        self.hosts.insert(host_id, encode(&host)?)?;
        self.index.put_host(&host);
        self.index.replace_apps(&host.host_id, &kept);
        Ok(host)
    }
}

/// Our transactions never abort on purpose, so the only failure is storage.
fn storage_error(error: TransactionError<()>) -> StoreError {
    match error {
        TransactionError::Storage(error) => StoreError::Sled(error),
        TransactionError::Abort(()) => StoreError::Sled(sled::Error::ReportableBug("transaction aborted".into())),
    }
}

fn host_of_app_key(app_key: &[u8]) -> Result<HostId, StoreError> {
    let host = app_key.split(|byte| *byte == SEPARATOR).next().unwrap_or_default();
    std::str::from_utf8(host)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(StoreError::UnknownFormat {
            tree: APPS,
            format: RECORD_FORMAT,
        })
}

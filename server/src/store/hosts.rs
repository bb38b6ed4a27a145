//! Hosts, their apps and operations, and the agents' events.
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

use ccfleet_proto::{HostId, RecipeName};
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::keys::*;
use super::{decode, encode, listings, storage_error, EventOutcome, Store, StoreError};
use crate::model::*;

impl Store {
    pub fn host(&self, host_id: &HostId) -> Result<Option<HostRecord>, StoreError> {
        self.hosts
            .get(host_id.as_str())?
            .map(|bytes| decode(HOSTS, &bytes))
            .transpose()
    }

    /// The highest sequence number of the host's events applied so far (its
    /// `last_seq` as the store thread wrote it, durable once the batch is
    /// flushed); 0 for an unknown host.
    pub fn applied_seq(&self, host_id: &HostId) -> u64 {
        self.index.host(host_id).map_or(0, |host| host.last_seq)
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
                        running_version: None,
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
                running_version,
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
                    running_version: running_version.clone(),
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
    pub(super) fn write_operation(&self, host: &HostRecord, operation: &OperationRecord) -> Result<(), StoreError> {
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
            let alert = decode::<AlertRecord>(ALERTS, &value)?;
            if alert.is_active() {
                alert_severities.push(alert.severity);
            }
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

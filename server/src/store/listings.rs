//! Alerts and operation records: what admins list, and the bounds that keep
//! one host from filling the disk with them (a quota per host, a retention
//! age for everyone).

use std::cmp::Reverse;

use ccfleet_proto::{Domain, HostId};
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::{
    decode, encode, key, prefix, storage_error, AlertEventRecord, AlertRecord, HostRecord, OperationRecord, Store,
    StoreError, UnixMillis, ALERTS, OPERATIONS,
};

/// Operation records kept per host unless configured otherwise: a busy host
/// reports a few operations a day, so this is months of history, and at
/// most a few hundred KiB per host.
pub const DEFAULT_OPERATION_QUOTA: usize = 1000;

/// A host may go this far over its quota before the oldest records are
/// pruned, so that pruning (a scan of the host's records) runs once per
/// this many new operations rather than on every one.
fn prune_slack(quota: usize) -> usize {
    (quota / 10).max(1)
}

/// The time-index key of the operation stored under `operation_key`.
pub(super) fn time_key(updated_at: UnixMillis, operation_key: &[u8]) -> Vec<u8> {
    let mut time_key = updated_at.to_be_bytes().to_vec();
    time_key.extend_from_slice(operation_key);
    time_key
}

/// Which operations to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationFilter {
    pub host_id: Option<HostId>,
    pub domain: Option<Domain>,
    pub limit: usize,
}

impl Store {
    /// Keeps at most `quota` (at least 1) operation records per host.
    pub fn with_operation_quota(mut self, quota: usize) -> Store {
        self.operation_quota = quota.max(1);
        self
    }

    /// Raises (replacing the app's open alert) or clears an alert, writing
    /// the host record (its `last_seq`) in the same transaction.
    pub(super) fn write_alert(&self, host: &HostRecord, alert: &AlertEventRecord) -> Result<(), StoreError> {
        let host_value = encode(host)?;
        let alert_key = key(&[host.host_id.as_str(), alert.domain.as_str()]);
        let previous: Option<AlertRecord> = self
            .alerts
            .get(&alert_key)?
            .map(|bytes| decode(ALERTS, &bytes))
            .transpose()?;
        let next = (!alert.cleared).then(|| AlertRecord {
            host_id: host.host_id.clone(),
            domain: alert.domain.clone(),
            recipe: alert.recipe.clone(),
            from_version: alert.from_version.clone(),
            to_version: alert.to_version.clone(),
            running_version: alert.running_version.clone(),
            outcome: alert.outcome,
            severity: alert.severity,
            reason: alert.reason.clone(),
            operation_id: alert.operation_id.clone(),
            snapshot_path: alert.snapshot_path.clone(),
            raised_at: alert.raised_at,
            received_at: Some(alert.received_at),
            reported_raised_at: alert.reported_raised_at,
        });
        let alert_value = next.as_ref().map(encode).transpose()?;
        // Queued in the same transaction as the alert it announces.
        let queued = self.prepare_notification(crate::notify::decide::alert_notification(
            previous.as_ref(),
            next.as_ref(),
            super::now_millis(),
        ))?;
        (&self.hosts, &self.alerts, &self.notifications.tree)
            .transaction(|(hosts, alerts, notifications)| {
                hosts.insert(host.host_id.as_str(), host_value.clone())?;
                match &alert_value {
                    Some(value) => alerts.insert(alert_key.clone(), value.clone())?,
                    None => alerts.remove(alert_key.clone())?,
                };
                if let Some(queued) = &queued {
                    notifications.insert(&queued.key, queued.value.clone())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(storage_error)?;
        self.index.put_host(host);
        self.gauges.alert_changed(
            previous.map(|previous| previous.severity),
            next.map(|next| next.severity),
        );
        self.notifications_queued(queued.as_slice())?;
        Ok(())
    }

    /// Open alerts, of one host or all, newest first.
    pub fn alerts(&self, host_id: Option<&HostId>) -> Result<Vec<AlertRecord>, StoreError> {
        let entries = match host_id {
            Some(host_id) => self.alerts.scan_prefix(prefix(&[host_id.as_str()])),
            None => self.alerts.scan_prefix([]),
        };
        let mut alerts: Vec<AlertRecord> = entries
            .map(|entry| decode(ALERTS, &entry?.1))
            .collect::<Result<_, _>>()?;
        // By the server's receive time: a host's clock cannot move its
        // alerts ahead of others'.
        alerts.sort_by_key(|alert| {
            (
                Reverse(alert.received_at.unwrap_or(alert.raised_at)),
                Reverse(alert.raised_at),
                alert.host_id.clone(),
                alert.domain.clone(),
            )
        });
        Ok(alerts)
    }

    /// Operations matching `filter`, newest first, at most `filter.limit`.
    /// One host's records are read by prefix (at most its quota) and sorted;
    /// fleet-wide, the time index is walked from its newest end until the
    /// limit is reached.
    pub fn operations(&self, filter: &OperationFilter) -> Result<Vec<OperationRecord>, StoreError> {
        let matches =
            |operation: &OperationRecord| filter.domain.as_ref().is_none_or(|domain| *domain == operation.domain);
        let Some(host_id) = &filter.host_id else {
            let mut operations = Vec::new();
            for entry in self.operations_by_time.iter().rev() {
                if operations.len() >= filter.limit {
                    break;
                }
                let (time_key, _) = entry?;
                let Some(value) = self.operations.get(&time_key[8..])? else {
                    continue;
                };
                let operation: OperationRecord = decode(OPERATIONS, &value)?;
                // A key of an older time, left by a crash mid-update, is skipped.
                let at = time_key[..8].try_into().map(UnixMillis::from_be_bytes).ok();
                if at == Some(operation.updated_at) && matches(&operation) {
                    operations.push(operation);
                }
            }
            return Ok(operations);
        };
        let mut operations = Vec::new();
        for entry in self.operations.scan_prefix(prefix(&[host_id.as_str()])) {
            let operation: OperationRecord = decode(OPERATIONS, &entry?.1)?;
            if matches(&operation) {
                operations.push(operation);
            }
        }
        // The index's order, newest first: time, then host, then id.
        operations.sort_by(|a, b| {
            (b.updated_at, &b.host_id, &b.operation_id).cmp(&(a.updated_at, &a.host_id, &a.operation_id))
        });
        operations.truncate(filter.limit);
        Ok(operations)
    }

    /// Deletes every operation record last updated before `cutoff`; returns
    /// how many. Run at start and periodically (the retention age).
    pub fn prune_operations_before(&self, cutoff: UnixMillis) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for entry in self.operations.iter() {
            let (operation_key, value) = entry?;
            let operation: OperationRecord = decode(OPERATIONS, &value)?;
            if operation.updated_at < cutoff {
                expired.push((operation_key, operation.host_id, operation.updated_at));
            }
        }
        for (operation_key, _, updated_at) in &expired {
            self.operations.remove(operation_key)?;
            self.operations_by_time.remove(time_key(*updated_at, operation_key))?;
        }
        let mut counts = self
            .operation_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (_, host_id, _) in &expired {
            if let Some(count) = counts.get_mut(host_id) {
                *count = count.saturating_sub(1);
            }
        }
        Ok(expired.len())
    }

    /// Counts a new operation record of `host_id`; past the quota (plus
    /// slack) deletes the host's oldest records down to the quota.
    pub(super) fn count_new_operation(&self, host_id: &HostId) -> Result<(), StoreError> {
        let mut counts = self
            .operation_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = match counts.get(host_id) {
            Some(count) => count + 1,
            None => self.operations.scan_prefix(prefix(&[host_id.as_str()])).count(),
        };
        if count <= self.operation_quota + prune_slack(self.operation_quota) {
            counts.insert(host_id.clone(), count);
            return Ok(());
        }
        let mut records: Vec<(UnixMillis, sled::IVec)> = Vec::with_capacity(count);
        for entry in self.operations.scan_prefix(prefix(&[host_id.as_str()])) {
            let (operation_key, value) = entry?;
            let operation: OperationRecord = decode(OPERATIONS, &value)?;
            records.push((operation.updated_at, operation_key));
        }
        records.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let excess = records.len().saturating_sub(self.operation_quota);
        for (updated_at, operation_key) in records.iter().take(excess) {
            self.operations.remove(operation_key)?;
            self.operations_by_time.remove(time_key(*updated_at, operation_key))?;
        }
        tracing::warn!(host = %host_id, pruned = excess, quota = self.operation_quota, "host over its operation quota: oldest records pruned");
        counts.insert(host_id.clone(), records.len() - excess);
        Ok(())
    }

    /// Builds the time index for a store written before it existed.
    pub(super) fn index_operations_if_missing(&self) -> Result<(), StoreError> {
        if !self.operations_by_time.is_empty() || self.operations.is_empty() {
            return Ok(());
        }
        for entry in self.operations.iter() {
            let (operation_key, value) = entry?;
            let operation: OperationRecord = decode(OPERATIONS, &value)?;
            self.operations_by_time
                .insert(time_key(operation.updated_at, &operation_key), &[])?;
        }
        tracing::info!(operations = self.operations.len(), "indexed operation records by time");
        Ok(())
    }

    pub(super) fn forget_operation_count(&self, host_id: &HostId) {
        self.operation_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(host_id);
    }
}

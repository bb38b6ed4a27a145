//! Alerts: an app's alert raised, re-opened, resolved (kept for the
//! retention) and acknowledged, as `model::alerts` decides; each host's
//! quota (one alert per app its inventory lists, plus `ALERT_SLACK`); the
//! paged listing in key order.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

use ccfleet_proto::{Domain, HostId};
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::{
    decode, encode, key, prefix, storage_error, AlertEventRecord, AlertRecord, HostRecord, Store, StoreError,
    UnixMillis, ALERTS,
};
use crate::model::alerts::{self, AckRefusal};
use crate::model::{AlertAckRecord, AuditRecord};

/// The key of the alert id counter in its tree.
const NEXT_ID: &[u8] = b"next";

/// Which alerts to list, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    pub host_id: Option<HostId>,
    /// Acknowledged and resolved alerts too; else open ones only.
    pub all: bool,
    /// Continue after this alert's key (host, domain).
    pub after: Option<(HostId, Domain)>,
    pub limit: usize,
}

/// One page of alerts, and the key to continue after when more follow.
pub type AlertPage = (Vec<AlertRecord>, Option<super::AppKey>);

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    Acknowledged(Box<AlertRecord>),
    NotFound,
    Refused(AckRefusal),
}

/// The domain of an `alerts` key (`host \0 domain`).
fn domain_of_key(alert_key: &[u8]) -> Option<&str> {
    let separator = alert_key.iter().position(|byte| *byte == super::keys::SEPARATOR)?;
    std::str::from_utf8(&alert_key[separator + 1..]).ok()
}

impl Store {
    /// The next alert id, as stored (1 for the first).
    fn next_alert_id(&self) -> Result<u64, StoreError> {
        Ok(self
            .alert_counter
            .get(NEXT_ID)?
            .and_then(|bytes| bytes.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1))
    }

    /// Applies an agent's alert event (`model::alerts::apply_event`) within
    /// the host's quota, writing the host record (its `last_seq`), the alert,
    /// the id counter and the notification in one transaction. An alert past
    /// the quota is refused: logged and counted, and only `last_seq` is
    /// written, so the agent does not send it again.
    pub(super) fn write_alert(&self, host: &HostRecord, event: &AlertEventRecord) -> Result<(), StoreError> {
        let now = super::now_millis();
        let host_value = encode(host)?;
        let alert_key = key(&[host.host_id.as_str(), event.domain.as_str()]);
        let previous: Option<AlertRecord> = self
            .alerts
            .get(&alert_key)?
            .map(|bytes| decode(ALERTS, &bytes))
            .transpose()?;
        if previous.is_none() && !event.cleared {
            if let Err(reason) = self.admit_alert(&host.host_id, &event.domain)? {
                return self.refuse_alert(host, host_value, &event.domain, &reason);
            }
        }
        let new_id = self.next_alert_id()?;
        let next = alerts::apply_event(previous.as_ref(), &host.host_id, event, new_id, now);
        let Some(next) = next else {
            self.hosts.insert(host.host_id.as_str(), host_value)?;
            self.index.put_host(host);
            return Ok(());
        };
        let counter = (next.id >= new_id).then(|| (next.id + 1).to_be_bytes().to_vec());
        let alert_value = encode(&next)?;
        // Queued in the same transaction as the alert it announces.
        let queued = self.prepare_notification(crate::notify::decide::alert_notification(
            previous.as_ref(),
            Some(&next),
            now,
        ))?;
        (&self.hosts, &self.alerts, &self.alert_counter, &self.notifications.tree)
            .transaction(|(hosts, alert_tree, counter_tree, notifications)| {
                hosts.insert(host.host_id.as_str(), host_value.clone())?;
                alert_tree.insert(alert_key.clone(), alert_value.clone())?;
                if let Some(counter) = &counter {
                    counter_tree.insert(NEXT_ID, counter.clone())?;
                }
                if let Some(queued) = &queued {
                    notifications.insert(&queued.key, queued.value.clone())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(storage_error)?;
        self.index.put_host(host);
        let active = |alert: &AlertRecord| alert.is_active().then_some(alert.severity);
        self.gauges
            .alert_changed(previous.as_ref().and_then(active), active(&next));
        self.notifications_queued(queued.as_slice())?;
        Ok(())
    }

    /// The quota decision for a new alert record of `host_id` for `domain`
    /// (`model::alerts::admit`): the host's inventory from the listing index,
    /// and, only for a domain outside it, the host's alert keys (at most its
    /// quota).
    fn admit_alert(&self, host_id: &HostId, domain: &Domain) -> Result<Result<(), String>, StoreError> {
        let apps = self.index.apps_of_host(host_id);
        if apps.iter().any(|indexed| indexed.app.domain == *domain) {
            return Ok(Ok(()));
        }
        let listed: HashSet<&str> = apps.iter().map(|indexed| indexed.app.domain.as_str()).collect();
        let mut outside = 0;
        for alert_key in self.alerts.scan_prefix(prefix(&[host_id.as_str()])).keys() {
            let alert_key = alert_key?;
            if domain_of_key(&alert_key).is_some_and(|stored| !listed.contains(stored)) {
                outside += 1;
            }
        }
        Ok(alerts::admit(false, false, outside))
    }

    /// Writes only the host record (the event's `last_seq`) for a refused
    /// alert; counts it, and logs the first refusal of a host and then every
    /// power of two, so that a flood costs a few log lines.
    fn refuse_alert(
        &self,
        host: &HostRecord,
        host_value: Vec<u8>,
        domain: &Domain,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.hosts.insert(host.host_id.as_str(), host_value)?;
        self.index.put_host(host);
        self.gauges.alerts_refused.fetch_add(1, Ordering::Relaxed);
        let mut refusals = self
            .alert_refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = refusals.entry(host.host_id.clone()).or_insert(0);
        *count += 1;
        if count.is_power_of_two() {
            tracing::warn!(host = %host.host_id, %domain, refused = *count, "alert refused: {reason}");
        }
        Ok(())
    }

    /// Active (open or acknowledged) alerts, of one host or all, newest
    /// first by the server's receive time.
    pub fn alerts(&self, host_id: Option<&HostId>) -> Result<Vec<AlertRecord>, StoreError> {
        let entries = match host_id {
            Some(host_id) => self.alerts.scan_prefix(prefix(&[host_id.as_str()])),
            None => self.alerts.scan_prefix([]),
        };
        let mut alerts = Vec::new();
        for entry in entries {
            let alert: AlertRecord = decode(ALERTS, &entry?.1)?;
            if alert.is_active() {
                alerts.push(alert);
            }
        }
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

    /// One page of alerts matching `filter` at `now`, in key order (host,
    /// then domain), and the key to continue after when more follow.
    pub fn alert_page(&self, filter: &AlertFilter, now: UnixMillis) -> Result<AlertPage, StoreError> {
        let after = filter.after.as_ref().map(|(host_id, domain)| {
            let mut after = key(&[host_id.as_str(), domain.as_str()]);
            after.push(0);
            after
        });
        // Never before the host's own keys, whatever the token says.
        let start = match &filter.host_id {
            Some(host_id) => after
                .into_iter()
                .chain([prefix(&[host_id.as_str()])])
                .max()
                .unwrap_or_default(),
            None => after.unwrap_or_default(),
        };
        let end = filter.host_id.as_ref().map(|host_id| {
            let mut end = host_id.as_str().as_bytes().to_vec();
            end.push(super::keys::SEPARATOR + 1);
            end
        });
        let range = match end {
            // A page token of another host's alerts: nothing of this host follows.
            Some(end) if start >= end => return Ok((Vec::new(), None)),
            Some(end) => self.alerts.range(start..end),
            None => self.alerts.range(start..),
        };
        let mut page = Vec::new();
        for entry in range {
            let alert: AlertRecord = decode(ALERTS, &entry?.1)?;
            if !filter.all && alert.state_at(now) != crate::model::AlertStateRecord::Open {
                continue;
            }
            if page.len() == filter.limit {
                let last: &AlertRecord = page.last().expect("a full page is not empty");
                let next = (last.host_id.clone(), last.domain.clone());
                return Ok((page, Some(next)));
            }
            page.push(alert);
        }
        Ok((page, None))
    }

    /// Acknowledges the alert with `id` (`model::alerts::acknowledge`) and
    /// appends `audit` in the same transaction: without room in the audit
    /// log, nothing changes. A scan of the alerts, which the quota bounds.
    pub fn acknowledge_alert(
        &self,
        id: u64,
        ack: AlertAckRecord,
        audit: &AuditRecord,
        now: UnixMillis,
    ) -> Result<AckOutcome, StoreError> {
        let mut found = None;
        for entry in self.alerts.iter() {
            let (alert_key, value) = entry?;
            let alert: AlertRecord = decode(ALERTS, &value)?;
            if alert.id == id {
                found = Some((alert_key, alert));
                break;
            }
        }
        let Some((alert_key, previous)) = found else {
            return Ok(AckOutcome::NotFound);
        };
        let next = match alerts::acknowledge(&previous, ack, now) {
            Ok(next) => next,
            Err(refusal) => return Ok(AckOutcome::Refused(refusal)),
        };
        self.audit_room()?;
        let (audit_key, audit_value) = self.audit_entry(audit)?;
        let alert_value = encode(&next)?;
        let queued = self.prepare_notification(crate::notify::decide::alert_notification(
            Some(&previous),
            Some(&next),
            now,
        ))?;
        (&self.alerts, &self.audit, &self.notifications.tree)
            .transaction(|(alert_tree, audit_tree, notifications)| {
                alert_tree.insert(alert_key.clone(), alert_value.clone())?;
                audit_tree.insert(audit_key.as_slice(), audit_value.clone())?;
                if let Some(queued) = &queued {
                    notifications.insert(&queued.key, queued.value.clone())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(storage_error)?;
        self.audit_appended(1);
        self.notifications_queued(queued.as_slice())?;
        Ok(AckOutcome::Acknowledged(Box::new(next)))
    }

    /// Deletes resolved alerts that resolved before `cutoff`; returns how
    /// many. Run at start and hourly (`RESOLVED_ALERT_RETENTION_MS`).
    pub fn prune_resolved_alerts_before(&self, cutoff: UnixMillis) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for entry in self.alerts.iter() {
            let (alert_key, value) = entry?;
            let alert: AlertRecord = decode(ALERTS, &value)?;
            if !alert.is_active() && alert.resolved_at.unwrap_or(0) < cutoff {
                expired.push(alert_key);
            }
        }
        for alert_key in &expired {
            self.alerts.remove(alert_key)?;
        }
        Ok(expired.len())
    }

    /// Numbers alerts stored before ids existed (id 0), at open.
    pub(super) fn number_unnumbered_alerts(&self) -> Result<(), StoreError> {
        let mut next_id = self.next_alert_id()?;
        let mut numbered = 0;
        for entry in self.alerts.iter() {
            let (alert_key, value) = entry?;
            let mut alert: AlertRecord = decode(ALERTS, &value)?;
            if alert.id == 0 {
                alert.id = next_id;
                next_id += 1;
                numbered += 1;
                self.alerts.insert(alert_key, encode(&alert)?)?;
            }
        }
        if numbered > 0 {
            self.alert_counter.insert(NEXT_ID, &next_id.to_be_bytes())?;
            tracing::info!(numbered, "numbered the alerts stored before alerts had ids");
        }
        Ok(())
    }
}

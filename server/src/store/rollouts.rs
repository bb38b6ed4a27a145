//! Rollouts in the store: a header per rollout (strategy, state, reason) and
//! a record per host of it, so that a transition writes the header and only
//! the hosts it changed (a rollout of 1,000 hosts does not rewrite 300 KB per
//! result). Every transition is stored before it takes effect (see
//! `rollout::engine`).

use serde::Deserialize;
use sled::transaction::Transactional;

use super::{decode, encode, Store, StoreError};
use crate::model::{RolloutHostRecord, RolloutRecord, RolloutStateRecord, RolloutTally};

pub(super) const ROLLOUTS: &str = "rollouts";
pub(super) const ROLLOUT_HOSTS: &str = "rollout_hosts";

/// A rollout to store: its header and the hosts that changed, so that a
/// write costs what changed, not the rollout's size.
#[derive(Debug, Clone)]
pub struct RolloutChange {
    /// The rollout's header (its `hosts` are not read).
    pub header: RolloutRecord,
    /// The hosts to write, with their positions.
    pub hosts: Vec<(usize, RolloutHostRecord)>,
    /// The rollout's hosts by outcome, for the notice a completion or halt queues.
    pub tally: RolloutTally,
}

impl RolloutChange {
    /// A whole rollout: its header and every host.
    pub fn whole(mut rollout: RolloutRecord) -> RolloutChange {
        let tally = RolloutTally::of(&rollout.hosts);
        let hosts = std::mem::take(&mut rollout.hosts).into_iter().enumerate().collect();
        RolloutChange {
            header: rollout,
            hosts,
            tally,
        }
    }

    /// A rollout's header and its hosts at `positions`.
    pub fn hosts_at(rollout: &RolloutRecord, positions: impl IntoIterator<Item = usize>) -> RolloutChange {
        RolloutChange {
            header: rollout.header(),
            hosts: positions
                .into_iter()
                .filter_map(|position| Some((position, rollout.hosts.get(position)?.clone())))
                .collect(),
            tally: RolloutTally::of(&rollout.hosts),
        }
    }
}

/// `rollout id \0 host position (big-endian)`: a rollout's hosts in order.
fn host_key(id: &str, position: usize) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.push(super::SEPARATOR);
    key.extend_from_slice(&(position as u32).to_be_bytes());
    key
}

impl Store {
    /// Writes rollouts (their headers and changed hosts) in one transaction.
    pub fn put_rollouts(&self, changes: Vec<RolloutChange>) -> Result<(), StoreError> {
        let mut headers = Vec::with_capacity(changes.len());
        let mut hosts = Vec::new();
        let mut queued = Vec::new();
        let mut states = Vec::with_capacity(changes.len());
        for RolloutChange {
            mut header,
            hosts: changed_hosts,
            tally,
        } in changes
        {
            let before = self
                .rollouts
                .get(header.id.as_bytes())?
                .map(|bytes| decode::<RolloutHeader>(ROLLOUTS, &bytes))
                .transpose()?
                .map(|header| header.state);
            let notification = crate::notify::decide::rollout_notice(before, &header, tally, super::now_millis());
            queued.extend(self.prepare_notification(notification)?);
            states.push((before, header.state));
            for (position, host) in &changed_hosts {
                hosts.push((host_key(&header.id, *position), encode(host)?));
            }
            header.hosts.clear();
            headers.push((header.id.clone(), encode(&header)?));
        }
        (&self.rollouts, &self.rollout_hosts, &self.notifications.tree)
            .transaction(|(rollouts, rollout_hosts, notifications)| {
                for (id, header) in &headers {
                    rollouts.insert(id.as_bytes(), header.clone())?;
                }
                for (key, host) in &hosts {
                    rollout_hosts.insert(key.clone(), host.clone())?;
                }
                // Queued with the transition they announce.
                for notification in &queued {
                    notifications.insert(&notification.key, notification.value.clone())?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(super::storage_error)?;
        for (before, after) in states {
            self.gauges.rollout_changed(before, after);
        }
        self.notifications_queued(&queued)?;
        Ok(())
    }

    fn with_hosts(&self, mut rollout: RolloutRecord) -> Result<RolloutRecord, StoreError> {
        let mut prefix = rollout.id.as_bytes().to_vec();
        prefix.push(super::SEPARATOR);
        rollout.hosts = self
            .rollout_hosts
            .scan_prefix(prefix)
            .map(|entry| decode(ROLLOUT_HOSTS, &entry?.1))
            .collect::<Result<_, _>>()?;
        Ok(rollout)
    }

    pub fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.rollouts
            .get(id.as_bytes())?
            .map(|bytes| decode(ROLLOUTS, &bytes).and_then(|rollout| self.with_hosts(rollout)))
            .transpose()
    }

    /// Every rollout, newest first.
    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let mut rollouts: Vec<RolloutRecord> = self
            .rollouts
            .iter()
            .map(|entry| decode(ROLLOUTS, &entry?.1).and_then(|rollout| self.with_hosts(rollout)))
            .collect::<Result<_, _>>()?;
        rollouts.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        Ok(rollouts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn rollout(id: &str, created_at: UnixMillis, hosts: usize) -> RolloutRecord {
        RolloutRecord {
            id: id.into(),
            recipe: "ghost".parse().unwrap(),
            target: "1.1.0".parse().unwrap(),
            state: RolloutStateRecord::Running,
            strategy: StrategyRecord {
                canary: QuantityRecord::Count(1),
                batch: QuantityRecord::Percent(25),
                max_failures: 1,
                max_failure_ppm: 0,
                pause_after_canary: false,
                wave_interval_ms: 0,
                host_deadline_ms: 1000,
                progress_deadline_ms: 0,
                rollback_on_halt: false,
                allow_major: false,
            },
            hosts: (0..hosts)
                .map(|index| RolloutHostRecord {
                    host_id: format!("h{index}").parse().unwrap(),
                    domain: format!("app.h{index}.example.org").parse().unwrap(),
                    wave: index as u32,
                    outcome: HostOutcomeRecord::Pending,
                    from_version: Some("1.0.0".parse().unwrap()),
                    to_version: None,
                    running_version: None,
                    message: String::new(),
                    updated_at: created_at,
                    operation_id: None,
                    dispatched_at: None,
                    rollback: None,
                    succeeded_late: false,
                })
                .collect(),
            current_wave: 0,
            wave_count: hosts as u32,
            created_at,
            updated_at: created_at,
            reason: String::new(),
            created_by: "admin".into(),
            paused_by_operator: false,
            awaiting_promotion: false,
            promoted: false,
            next_wave_at: None,
            last_progress_at: created_at,
        }
    }

    #[test]
    fn rollouts_are_stored_as_headers_and_changed_hosts_and_read_back_whole() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        let mut first = rollout("ghost-a", 1, 300);
        let second = rollout("ghost-b", 2, 2);
        store
            .put_rollouts(vec![
                RolloutChange::whole(first.clone()),
                RolloutChange::whole(second.clone()),
            ])
            .unwrap();
        first.hosts[257].outcome = HostOutcomeRecord::Dispatched;
        first.hosts[257].operation_id = Some("ghost-a.257".into());
        first.state = RolloutStateRecord::Paused;
        store
            .put_rollouts(vec![RolloutChange::hosts_at(&first, [257])])
            .unwrap();
        assert_eq!(store.rollout("ghost-a").unwrap(), Some(first.clone()));
        assert_eq!(store.rollout("ghost").unwrap(), None);
        assert_eq!(store.rollouts().unwrap(), vec![second, first], "newest first");
        // Only the changed host was rewritten: the others still hold the first write.
        drop(store);
        let store = Store::reopen(directory.path());
        assert_eq!(
            store.rollout("ghost-a").unwrap().unwrap().hosts[257].outcome,
            HostOutcomeRecord::Dispatched
        );
    }
}

/// Only the state of a rollout header, decoded without the rest.
#[derive(Deserialize)]
pub(super) struct RolloutHeader {
    pub(super) state: RolloutStateRecord,
}

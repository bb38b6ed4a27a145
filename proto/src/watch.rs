//! Following a rollout through `WatchRolloutChanges`: a whole rollout first,
//! then headers and changed hosts by position, applied here for every client
//! (the CLI's `--follow`, the dashboard, the benchmark).

use crate::pb;

/// The rollout a watcher follows, kept whole from the changes it receives.
#[derive(Debug, Default)]
pub struct FollowedRollout {
    current: Option<pb::Rollout>,
}

impl FollowedRollout {
    pub fn new() -> Self {
        Self::default()
    }

    /// The rollout as of the last change applied; `None` before the first.
    pub fn current(&self) -> Option<&pb::Rollout> {
        self.current.as_ref()
    }

    /// Applies one change; the positions of the hosts it changed (every
    /// position for a whole rollout). A change before the whole rollout, or
    /// a position outside it, is refused: the watcher should watch again.
    pub fn apply(&mut self, change: pb::RolloutChange) -> Result<Vec<usize>, String> {
        let Some(header) = change.rollout else {
            return Err("a rollout change without its rollout".into());
        };
        if change.whole {
            let positions = (0..header.hosts.len()).collect();
            self.current = Some(header);
            return Ok(positions);
        }
        let Some(current) = self.current.as_mut() else {
            return Err("a partial rollout change before the whole rollout".into());
        };
        if header.id != current.id {
            return Err(format!(
                "a change of rollout {} while following {}",
                header.id, current.id
            ));
        }
        // Checked whole before anything is applied.
        if let Some(changed) = change
            .hosts
            .iter()
            .find(|changed| changed.host.is_none() || changed.position as usize >= current.hosts.len())
        {
            return Err(format!(
                "a change of host position {} of a rollout of {} hosts",
                changed.position,
                current.hosts.len()
            ));
        }
        let mut positions = Vec::with_capacity(change.hosts.len());
        for changed in change.hosts {
            let position = changed.position as usize;
            if let Some(host) = changed.host {
                current.hosts[position] = host;
            }
            positions.push(position);
        }
        let hosts = std::mem::take(&mut current.hosts);
        *current = pb::Rollout { hosts, ..header };
        Ok(positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, outcome: pb::HostOutcome) -> pb::RolloutHost {
        pb::RolloutHost {
            host_id: id.into(),
            outcome: outcome as i32,
            ..Default::default()
        }
    }

    fn rollout(state: pb::RolloutState, hosts: Vec<pb::RolloutHost>) -> pb::Rollout {
        pb::Rollout {
            id: "r1".into(),
            state: state as i32,
            hosts,
            ..Default::default()
        }
    }

    #[test]
    fn changes_apply_to_the_whole_rollout_by_position() {
        let mut followed = FollowedRollout::new();
        let whole = rollout(
            pb::RolloutState::Running,
            vec![host("a", pb::HostOutcome::Pending), host("b", pb::HostOutcome::Pending)],
        );
        let applied = followed.apply(pb::RolloutChange {
            rollout: Some(whole.clone()),
            whole: true,
            hosts: vec![],
        });
        assert_eq!(applied, Ok(vec![0, 1]));
        let applied = followed.apply(pb::RolloutChange {
            rollout: Some(rollout(pb::RolloutState::Completed, vec![])),
            whole: false,
            hosts: vec![pb::ChangedRolloutHost {
                position: 1,
                host: Some(host("b", pb::HostOutcome::Succeeded)),
            }],
        });
        assert_eq!(applied, Ok(vec![1]));
        let current = followed.current().unwrap();
        assert_eq!(current.state, pb::RolloutState::Completed as i32);
        assert_eq!(
            current.hosts,
            vec![
                host("a", pb::HostOutcome::Pending),
                host("b", pb::HostOutcome::Succeeded)
            ]
        );
        // A whole rollout again (the watcher fell behind) replaces it all.
        assert_eq!(
            followed.apply(pb::RolloutChange {
                rollout: Some(whole.clone()),
                whole: true,
                hosts: vec![],
            }),
            Ok(vec![0, 1])
        );
        assert_eq!(followed.current(), Some(&whole));
    }

    #[test]
    fn a_change_that_does_not_fit_is_refused_and_changes_nothing() {
        let mut followed = FollowedRollout::new();
        let partial = |position: u32| pb::RolloutChange {
            rollout: Some(rollout(pb::RolloutState::Halted, vec![])),
            whole: false,
            hosts: vec![pb::ChangedRolloutHost {
                position,
                host: Some(host("a", pb::HostOutcome::Failed)),
            }],
        };
        assert!(followed
            .apply(partial(0))
            .unwrap_err()
            .contains("before the whole rollout"));
        let whole = rollout(pb::RolloutState::Running, vec![host("a", pb::HostOutcome::Pending)]);
        followed
            .apply(pb::RolloutChange {
                rollout: Some(whole.clone()),
                whole: true,
                hosts: vec![],
            })
            .unwrap();
        assert!(followed
            .apply(partial(1))
            .unwrap_err()
            .contains("position 1 of a rollout of 1 hosts"));
        let mut mixed = partial(0);
        mixed.hosts.extend(partial(3).hosts);
        assert!(followed.apply(mixed).unwrap_err().contains("position 3"));
        let other = pb::RolloutChange {
            rollout: Some(pb::Rollout {
                id: "r2".into(),
                ..Default::default()
            }),
            whole: false,
            hosts: vec![],
        };
        assert!(followed.apply(other).unwrap_err().contains("while following r1"));
        assert_eq!(
            followed.current(),
            Some(&whole),
            "a refused change leaves the rollout as it was"
        );
    }
}

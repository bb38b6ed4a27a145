//! The rollout state machine: `apply(rollout, event, now)` changes a rollout
//! record and returns the commands to deliver. Pure: no clock, no I/O; the
//! engine stores the changed record before it delivers anything.
//!
//! Rules (ARCHITECTURE.md, "Rollouts"):
//! - waves run in order; a wave starts when the one before has no host in
//!   flight (after the canary: the promote gate, then the wave interval);
//! - a host's operation id is minted once, from the rollout id and the host's
//!   position, and stored with the dispatch; re-deliveries reuse it;
//! - reaching the failure budget halts: nothing new is dispatched, hosts in
//!   flight finish, and with `rollback_on_halt` every host that moved gets a
//!   rollback to the version it reported running before its upgrade (also
//!   those that succeed later, even after their host deadline);
//! - abort beats pause beats promote; completed, halted and aborted
//!   rollouts never dispatch an upgrade again;
//! - results are matched by host and operation id; duplicates and stale ids
//!   change nothing; a success after a time-out is remembered (the host runs
//!   the target) but the host still counts as failed.

use ccfleet_proto::{CoopVersion, Domain, HostId, OperationId};

use crate::model::{
    HostOutcomeRecord, OperationOutcomeRecord, RollbackRecord, RollbackStateRecord, RolloutRecord, RolloutStateRecord,
    UnixMillis,
};

/// Something that happened to a rollout.
// A result's three versions make it the large variant; events are moved
// once into `apply`, and boxing it would only obscure every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed: deadlines, wave intervals, and the first dispatch.
    Tick,
    /// A host reported a phase of an operation.
    Progress {
        host_id: HostId,
        operation_id: String,
    },
    /// A host reported the final outcome of an operation.
    Result {
        host_id: HostId,
        operation_id: String,
        outcome: OperationOutcomeRecord,
        /// The version the host ran before the operation, as it reports it.
        from_version: Option<CoopVersion>,
        /// The version the operation was asked to reach, as the host reports it.
        to_version: Option<CoopVersion>,
        /// The version the host runs after it, as it reports it.
        running_version: Option<CoopVersion>,
        message: String,
    },
    Pause,
    Resume,
    Promote,
    Abort {
        reason: String,
    },
}

/// What a host is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Upgrade {
        domain: Domain,
        version: CoopVersion,
        allow_major: bool,
        deadline_seconds: u32,
    },
    Rollback {
        domain: Domain,
        version: CoopVersion,
    },
}

/// A command for one host, under its operation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub host_id: HostId,
    pub operation_id: String,
    pub command: Command,
}

/// An operator action that cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("rollout {id} is {state}; nothing restarts or changes it")]
    Final { id: String, state: &'static str },
}

/// Applies `event` at time `now` and returns the commands to deliver, in order.
pub fn apply(rollout: &mut RolloutRecord, event: Event, now: UnixMillis) -> Result<Vec<Delivery>, ActionError> {
    let before = rollout.clone();
    let mut deliveries = Vec::new();
    match event {
        Event::Tick => deliveries.extend(expire(rollout, now)),
        Event::Progress { host_id, operation_id } => {
            if let Some(host) = rollout
                .hosts
                .iter_mut()
                .find(|host| host.host_id == host_id && host.operation_id.as_deref() == Some(operation_id.as_str()))
            {
                if host.outcome == HostOutcomeRecord::Dispatched {
                    host.outcome = HostOutcomeRecord::Upgrading;
                    host.updated_at = now;
                    rollout.last_progress_at = now;
                }
            }
        }
        Event::Result {
            host_id,
            operation_id,
            outcome,
            from_version,
            to_version,
            running_version,
            message,
        } => deliveries.extend(record_result(
            rollout,
            &host_id,
            &operation_id,
            outcome,
            Versions {
                from: from_version,
                to: to_version,
                running: running_version,
            },
            message,
            now,
        )),
        Event::Pause => {
            refuse_if_final(rollout)?;
            rollout.paused_by_operator = true;
        }
        Event::Resume => {
            refuse_if_final(rollout)?;
            if rollout.paused_by_operator {
                rollout.paused_by_operator = false;
                // Time spent paused is not a lack of progress.
                rollout.last_progress_at = now;
            }
        }
        Event::Promote => {
            refuse_if_final(rollout)?;
            rollout.promoted = true;
            rollout.awaiting_promotion = false;
            // Promote also skips what is left of a wave interval.
            if rollout.next_wave_at.is_some() {
                rollout.next_wave_at = Some(now);
            }
            rollout.last_progress_at = now;
        }
        Event::Abort { reason } => {
            refuse_if_final(rollout)?;
            rollout.state = RolloutStateRecord::Aborted;
            rollout.reason = if reason.is_empty() {
                "aborted by an operator".to_owned()
            } else {
                format!("aborted: {reason}")
            };
        }
    }
    deliveries.extend(advance(rollout, now));
    if *rollout != before {
        rollout.updated_at = now;
    }
    Ok(deliveries)
}

fn refuse_if_final(rollout: &RolloutRecord) -> Result<(), ActionError> {
    if rollout.state.is_final() {
        return Err(ActionError::Final {
            id: rollout.id.clone(),
            state: rollout.state.name(),
        });
    }
    Ok(())
}

/// The failure count at which the rollout halts, in hosts: a percentage
/// budget is a share of the hosts taking part, however many apps each runs,
/// so a host that claims many apps of the recipe does not widen it.
pub fn failure_limit(rollout: &RolloutRecord) -> usize {
    let eligible: std::collections::BTreeSet<_> = rollout
        .hosts
        .iter()
        .filter(|host| host.operation_id.is_some() || host.outcome == HostOutcomeRecord::Pending)
        .map(|host| &host.host_id)
        .collect();
    let strategy = &rollout.strategy;
    let by_count = (strategy.max_failures > 0).then_some(strategy.max_failures as usize);
    let by_ratio = (strategy.max_failure_ppm > 0).then(|| {
        (eligible.len() * strategy.max_failure_ppm as usize)
            .div_ceil(1_000_000)
            .max(1)
    });
    match (by_count, by_ratio) {
        (Some(count), Some(ratio)) => count.min(ratio),
        (Some(limit), None) | (None, Some(limit)) => limit,
        (None, None) => 1,
    }
}

/// Hosts with an app whose upgrade failed (a host with two failed apps is
/// one failure).
pub fn failures(rollout: &RolloutRecord) -> usize {
    rollout
        .hosts
        .iter()
        .filter(|host| {
            // A rollback after a halt does not make a host that succeeded a
            // failure; one that timed out before it succeeded stays one.
            host.operation_id.is_some() && (host.rollback.is_none() || host.succeeded_late) && host.outcome.is_failure()
        })
        .map(|host| &host.host_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// Whether anything is still out: an upgrade or a rollback without result.
pub fn in_flight(rollout: &RolloutRecord) -> bool {
    rollout.hosts.iter().any(|host| {
        host.outcome.is_in_flight()
            || host
                .rollback
                .as_ref()
                .is_some_and(|rollback| rollback.state == RollbackStateRecord::Dispatched)
    })
}

/// A final state with nothing out: watchers may stop.
pub fn is_settled(rollout: &RolloutRecord) -> bool {
    rollout.state.is_final() && !in_flight(rollout)
}

/// A halted rollout still owes a host its rollback when the rollback's
/// deadline passed without a result (the host was away, e.g. reconnecting
/// after a server restart): the host may still run the target. Its rollback
/// goes out again when the host returns, and a late result still counts.
pub fn owes_rollback(rollout: &RolloutRecord) -> bool {
    rollout.state == RolloutStateRecord::Halted
        && rollout.hosts.iter().any(|host| {
            host.rollback
                .as_ref()
                .is_some_and(|rollback| rollback.state == RollbackStateRecord::TimedOut)
        })
}

/// Whether the engine keeps the rollout in memory: not settled, or owing a rollback.
pub fn is_kept(rollout: &RolloutRecord) -> bool {
    !is_settled(rollout) || owes_rollback(rollout)
}

/// Every command that is out and may not have reached its host, with its
/// stored operation id: what a reconnecting host (or a restarted server)
/// delivers again. An aborted rollout delivers nothing more. An upgrade
/// carries the time left of its host deadline at `now`, not all of it. A
/// rollback goes out again also after its deadline passed ([`owes_rollback`]).
pub fn outstanding(rollout: &RolloutRecord, now: UnixMillis) -> Vec<Delivery> {
    if rollout.state == RolloutStateRecord::Aborted {
        return Vec::new();
    }
    let mut deliveries = Vec::new();
    for host in &rollout.hosts {
        if let (true, Some(operation_id)) = (host.outcome.is_in_flight(), &host.operation_id) {
            let deadline = rollout.strategy.host_deadline_ms;
            let left = match host.dispatched_at {
                Some(at) if deadline > 0 => at.saturating_add(deadline).saturating_sub(now),
                _ => deadline,
            };
            deliveries.push(upgrade_delivery(
                rollout,
                host.host_id.clone(),
                host.domain.clone(),
                operation_id,
                left,
            ));
        }
        if let Some(rollback) = host.rollback.as_ref().filter(|rollback| {
            matches!(
                rollback.state,
                RollbackStateRecord::Dispatched | RollbackStateRecord::TimedOut
            )
        }) {
            deliveries.push(Delivery {
                host_id: host.host_id.clone(),
                operation_id: rollback.operation_id.clone(),
                command: Command::Rollback {
                    domain: host.domain.clone(),
                    version: rollback.version.clone(),
                },
            });
        }
    }
    deliveries
}

fn upgrade_delivery(
    rollout: &RolloutRecord,
    host_id: HostId,
    domain: Domain,
    operation_id: &str,
    deadline_ms: u64,
) -> Delivery {
    Delivery {
        host_id,
        operation_id: operation_id.to_owned(),
        command: Command::Upgrade {
            domain,
            version: rollout.target.clone(),
            allow_major: rollout.strategy.allow_major,
            deadline_seconds: (deadline_ms / 1000).clamp(1, u32::MAX as u64) as u32,
        },
    }
}

/// The versions a result reports: before and after its operation.
struct Versions {
    from: Option<CoopVersion>,
    to: Option<CoopVersion>,
    running: Option<CoopVersion>,
}

fn record_result(
    rollout: &mut RolloutRecord,
    host_id: &HostId,
    operation_id: &str,
    outcome: OperationOutcomeRecord,
    versions: Versions,
    message: String,
    now: UnixMillis,
) -> Vec<Delivery> {
    let Versions {
        from: from_version,
        to: to_version,
        running: running_version,
    } = versions;
    let rollback_on_halt = rollout.strategy.rollback_on_halt;
    let halted = rollout.state == RolloutStateRecord::Halted;
    let id = rollout.id.clone();
    let Some(index) = rollout.hosts.iter().position(|host| {
        &host.host_id == host_id
            && (host.operation_id.as_deref() == Some(operation_id)
                || host
                    .rollback
                    .as_ref()
                    .is_some_and(|rollback| rollback.operation_id == operation_id))
    }) else {
        return Vec::new();
    };
    let host = &mut rollout.hosts[index];
    if let Some(rollback) = host
        .rollback
        .as_mut()
        .filter(|rollback| rollback.operation_id == operation_id)
    {
        // A result after the rollback's deadline still counts: the host is back.
        if !matches!(
            rollback.state,
            RollbackStateRecord::Dispatched | RollbackStateRecord::TimedOut
        ) {
            return Vec::new();
        }
        if outcome == OperationOutcomeRecord::Succeeded {
            rollback.state = RollbackStateRecord::Succeeded;
            host.outcome = HostOutcomeRecord::RolledBack;
            host.message = format!("rolled back to {} after the rollout halted", rollback.version);
        } else {
            rollback.state = RollbackStateRecord::Failed;
            host.outcome = HostOutcomeRecord::Failed;
            host.message = format!("rollback to {} failed: {message}", rollback.version);
        }
        host.to_version = to_version;
        host.running_version = running_version;
        host.updated_at = now;
        rollout.last_progress_at = now;
        return Vec::new();
    }
    if host.outcome == HostOutcomeRecord::TimedOut
        && outcome == OperationOutcomeRecord::Succeeded
        && !host.succeeded_late
        && host.rollback.is_none()
    {
        // Too late to count: the host stays a failure, but it runs the target,
        // so a rollback on halt (now or later) must include it.
        host.succeeded_late = true;
        if let Some(from_version) = from_version {
            host.from_version = Some(from_version);
        }
        host.to_version = to_version;
        host.running_version = running_version;
        host.message = format!("succeeded after the host deadline: {message}");
        host.updated_at = now;
        if halted && rollback_on_halt {
            return start_rollback(&id, index, host, now).into_iter().collect();
        }
        return Vec::new();
    }
    if !host.outcome.is_in_flight() {
        // A duplicate, or a late failure after a time-out: the outcome stands.
        return Vec::new();
    }
    host.outcome = match outcome {
        OperationOutcomeRecord::Succeeded => HostOutcomeRecord::Succeeded,
        OperationOutcomeRecord::RolledBack => HostOutcomeRecord::RolledBack,
        OperationOutcomeRecord::Held => HostOutcomeRecord::Held,
        OperationOutcomeRecord::Skipped => HostOutcomeRecord::Skipped,
        OperationOutcomeRecord::Failed | OperationOutcomeRecord::Unknown => HostOutcomeRecord::Failed,
    };
    if host.outcome == HostOutcomeRecord::Succeeded {
        // What the host really ran before this upgrade (it may have moved
        // since planning): the version a rollback returns it to.
        if let Some(from_version) = from_version {
            host.from_version = Some(from_version);
        }
    }
    host.to_version = to_version;
    host.running_version = running_version;
    host.message = message;
    host.updated_at = now;
    rollout.last_progress_at = now;
    if halted && rollback_on_halt && host.outcome == HostOutcomeRecord::Succeeded {
        return start_rollback(&id, index, host, now).into_iter().collect();
    }
    Vec::new()
}

/// Host deadlines, rollback deadlines and the progress deadline.
fn expire(rollout: &mut RolloutRecord, now: UnixMillis) -> Vec<Delivery> {
    let deadline = rollout.strategy.host_deadline_ms;
    let mut changed = false;
    for host in &mut rollout.hosts {
        if deadline > 0
            && host.outcome.is_in_flight()
            && host.dispatched_at.is_some_and(|at| now >= at.saturating_add(deadline))
        {
            host.outcome = HostOutcomeRecord::TimedOut;
            host.message = format!("no result within the host deadline of {}s", deadline / 1000);
            host.updated_at = now;
            changed = true;
        }
        if let Some(rollback) = host.rollback.as_mut() {
            if deadline > 0
                && rollback.state == RollbackStateRecord::Dispatched
                && now >= rollback.dispatched_at.saturating_add(deadline)
            {
                rollback.state = RollbackStateRecord::TimedOut;
                host.message = format!("no rollback result within the host deadline of {}s", deadline / 1000);
                host.updated_at = now;
            }
        }
    }
    if changed {
        rollout.last_progress_at = now;
    }
    let progress_deadline = rollout.strategy.progress_deadline_ms;
    let waiting = rollout.paused_by_operator || rollout.awaiting_promotion;
    if rollout.state == RolloutStateRecord::Running
        && !waiting
        && progress_deadline > 0
        && now >= rollout.last_progress_at.saturating_add(progress_deadline)
    {
        return halt(
            rollout,
            format!("no progress for {}s (progress deadline)", progress_deadline / 1000),
            now,
        );
    }
    Vec::new()
}

/// Moves a live rollout on: the failure budget, pause and promote gates,
/// wave intervals, dispatching, completion. Does nothing to final rollouts.
fn advance(rollout: &mut RolloutRecord, now: UnixMillis) -> Vec<Delivery> {
    if rollout.state.is_final() {
        return Vec::new();
    }
    let (failed, limit) = (failures(rollout), failure_limit(rollout));
    if failed >= limit {
        let reason = format!("{failed} host(s) failed, the failure budget is {limit}");
        return halt(rollout, reason, now);
    }
    let mut deliveries = Vec::new();
    loop {
        if rollout.paused_by_operator || rollout.awaiting_promotion {
            rollout.state = RolloutStateRecord::Paused;
            rollout.reason = if rollout.paused_by_operator {
                "paused by an operator".to_owned()
            } else {
                "the canary wave finished; waiting for promote".to_owned()
            };
            return deliveries;
        }
        rollout.state = RolloutStateRecord::Running;
        rollout.reason.clear();
        let wave = rollout.current_wave;
        let mut dispatched = false;
        for index in 0..rollout.hosts.len() {
            if rollout.hosts[index].wave == wave && rollout.hosts[index].outcome == HostOutcomeRecord::Pending {
                let operation_id = String::from(OperationId::upgrade(&rollout.id, index));
                let host = &mut rollout.hosts[index];
                host.outcome = HostOutcomeRecord::Dispatched;
                host.operation_id = Some(operation_id.clone());
                host.dispatched_at = Some(now);
                host.updated_at = now;
                host.message.clear();
                let (host_id, domain) = (host.host_id.clone(), host.domain.clone());
                let deadline = rollout.strategy.host_deadline_ms;
                deliveries.push(upgrade_delivery(rollout, host_id, domain, &operation_id, deadline));
                dispatched = true;
            }
        }
        if dispatched {
            rollout.last_progress_at = now;
        }
        let wave_busy = rollout
            .hosts
            .iter()
            .any(|host| host.wave == wave && !host.outcome.is_terminal());
        if wave_busy {
            return deliveries;
        }
        if wave + 1 >= rollout.wave_count {
            rollout.state = RolloutStateRecord::Completed;
            return deliveries;
        }
        if wave == 0 && rollout.strategy.pause_after_canary && !rollout.promoted {
            rollout.awaiting_promotion = true;
            continue;
        }
        if rollout.strategy.wave_interval_ms > 0 {
            match rollout.next_wave_at {
                None => {
                    rollout.next_wave_at = Some(now.saturating_add(rollout.strategy.wave_interval_ms));
                    return deliveries;
                }
                Some(at) if now < at => return deliveries,
                Some(_) => {}
            }
        }
        rollout.next_wave_at = None;
        rollout.current_wave += 1;
    }
}

/// Halts: no new dispatches; with `rollback_on_halt`, every host that moved
/// to the target (also after its deadline) is sent back to the version it
/// ran before.
fn halt(rollout: &mut RolloutRecord, reason: String, now: UnixMillis) -> Vec<Delivery> {
    rollout.state = RolloutStateRecord::Halted;
    rollout.reason = reason;
    rollout.paused_by_operator = false;
    rollout.awaiting_promotion = false;
    if !rollout.strategy.rollback_on_halt {
        return Vec::new();
    }
    let id = rollout.id.clone();
    let mut deliveries = Vec::new();
    for (index, host) in rollout.hosts.iter_mut().enumerate() {
        if host.outcome == HostOutcomeRecord::Succeeded || host.succeeded_late {
            deliveries.extend(start_rollback(&id, index, host, now));
        }
    }
    deliveries
}

fn start_rollback(
    id: &str,
    index: usize,
    host: &mut crate::model::RolloutHostRecord,
    now: UnixMillis,
) -> Option<Delivery> {
    // Only hosts this rollout moved: they have an operation and a version to return to.
    host.operation_id.as_ref()?;
    let version = host.from_version.clone()?;
    if host.rollback.is_some() {
        return None;
    }
    let operation_id = String::from(OperationId::rollback(id, index));
    host.rollback = Some(RollbackRecord {
        operation_id: operation_id.clone(),
        version: version.clone(),
        dispatched_at: now,
        state: RollbackStateRecord::Dispatched,
    });
    host.message = format!("rolling back to {version}");
    host.updated_at = now;
    Some(Delivery {
        host_id: host.host_id.clone(),
        operation_id,
        command: Command::Rollback {
            domain: host.domain.clone(),
            version,
        },
    })
}

#[cfg(test)]
mod tests;

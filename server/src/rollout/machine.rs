//! The rollout state machine: `apply(rollout, event, now)` changes a rollout
//! record and returns the commands to deliver. Pure: no clock, no I/O; the
//! engine stores the changed record before it delivers anything.
//!
//! The engine keeps each live rollout as a [`TrackedRollout`]: the record
//! with an index over its hosts (derived from them, never stored), so that
//! an event costs what it changes, not the rollout's size (issue 21: a
//! rollout of 10,000 hosts spent its time copying and scanning the record).
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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ccfleet_proto::{CoopVersion, Domain, HostId, OperationId};

use crate::model::{
    HostOutcomeRecord, OperationOutcomeRecord, RollbackRecord, RollbackStateRecord, RolloutHostRecord, RolloutRecord,
    RolloutStateRecord, RolloutTally, StrategyRecord, UnixMillis,
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
    // A record on its own has no index: build one for this event (the engine
    // keeps a [`TrackedRollout`] per live rollout instead).
    let mut index = Index::of(rollout);
    Ok(Step::new(rollout, &mut index).run(event, now)?.deliveries)
}

/// What applying one event did.
#[derive(Debug)]
pub struct Applied {
    /// The commands to deliver, in order.
    pub deliveries: Vec<Delivery>,
    /// How the rollout was before the event, if the event changed it.
    pub before: Option<Before>,
}

/// The parts of a rollout that an event changed, as they were before it.
#[derive(Debug)]
pub struct Before {
    /// The header ([`RolloutRecord::header`]: no hosts).
    pub header: RolloutRecord,
    /// The hosts that changed, by position.
    pub hosts: Vec<(usize, RolloutHostRecord)>,
}

/// A rollout record with an index over its hosts, so that an event costs
/// what it changes rather than the rollout's size: the engine keeps one per
/// live rollout. The index is derived from the record (built on load, never
/// stored) and the record changes only through [`TrackedRollout::apply`] and
/// [`TrackedRollout::restore`], which keep the index current.
#[derive(Debug, Clone)]
pub struct TrackedRollout {
    record: RolloutRecord,
    index: Index,
}

impl TrackedRollout {
    pub fn new(record: RolloutRecord) -> TrackedRollout {
        let index = Index::of(&record);
        TrackedRollout { record, index }
    }

    pub fn record(&self) -> &RolloutRecord {
        &self.record
    }

    /// [`apply`], and what the event changed.
    pub fn apply(&mut self, event: Event, now: UnixMillis) -> Result<Applied, ActionError> {
        let applied = Step::new(&mut self.record, &mut self.index).run(event, now);
        self.check();
        applied
    }

    /// Puts back the header and the hosts that [`Applied::before`] gave (an
    /// engine batch whose store write failed takes no effect).
    pub fn restore(&mut self, header: RolloutRecord, hosts: impl IntoIterator<Item = (usize, RolloutHostRecord)>) {
        let all = std::mem::take(&mut self.record.hosts);
        self.record = header;
        self.record.hosts = all;
        let deadline = self.record.strategy.host_deadline_ms;
        for (position, host) in hosts {
            self.record.hosts[position] = host;
            self.index.refresh(position, &self.record.hosts[position], deadline);
        }
        self.check();
    }

    /// [`in_flight`], without looking at every host.
    pub fn in_flight(&self) -> bool {
        self.index.out > 0
    }

    /// [`is_settled`], without looking at every host.
    pub fn is_settled(&self) -> bool {
        self.record.state.is_final() && !self.in_flight()
    }

    /// [`owes_rollback`], without looking at every host.
    pub fn owes_rollback(&self) -> bool {
        self.record.state == RolloutStateRecord::Halted && self.index.rollbacks_timed_out > 0
    }

    /// [`is_kept`], without looking at every host.
    pub fn is_kept(&self) -> bool {
        !self.is_settled() || self.owes_rollback()
    }

    /// [`outstanding`] for one host: what it is delivered again when it connects.
    pub fn outstanding_to(&self, host_id: &HostId, now: UnixMillis) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        if self.record.state != RolloutStateRecord::Aborted {
            for &position in self.index.positions_of(host_id) {
                outstanding_at(&self.record, position, now, &mut deliveries);
            }
        }
        deliveries
    }

    /// The hosts by outcome, without looking at every host.
    pub fn tally(&self) -> RolloutTally {
        RolloutTally {
            hosts: self.record.hosts.len() as u32,
            succeeded: self.index.succeeded as u32,
            failed: self.index.failed as u32,
            skipped: self.index.skipped as u32,
        }
    }

    /// Under test, every change is checked against an index built afresh: a
    /// count that drifted from the hosts would fail here first.
    fn check(&self) {
        #[cfg(test)]
        assert_eq!(
            self.index,
            Index::of(&self.record),
            "the index of {} is stale",
            self.record.id
        );
    }
}

impl std::ops::Deref for TrackedRollout {
    type Target = RolloutRecord;

    fn deref(&self) -> &RolloutRecord {
        &self.record
    }
}

/// Hosts with an app whose upgrade failed (a host with two failed apps is
/// one failure).
fn counts_as_failed(host: &RolloutHostRecord) -> bool {
    // A rollback after a halt does not make a host that succeeded a
    // failure; one that timed out before it succeeded stays one.
    host.operation_id.is_some() && (host.rollback.is_none() || host.succeeded_late) && host.outcome.is_failure()
}

/// Hosts the failure budget is a share of: dispatched, or still to be.
fn takes_part(host: &RolloutHostRecord) -> bool {
    host.operation_id.is_some() || host.outcome == HostOutcomeRecord::Pending
}

/// An upgrade or a rollback is out without a result.
fn is_out(host: &RolloutHostRecord) -> bool {
    host.outcome.is_in_flight()
        || host
            .rollback
            .as_ref()
            .is_some_and(|rollback| rollback.state == RollbackStateRecord::Dispatched)
}

fn rollback_timed_out(host: &RolloutHostRecord) -> bool {
    host.rollback
        .as_ref()
        .is_some_and(|rollback| rollback.state == RollbackStateRecord::TimedOut)
}

/// What one position contributes to the counts of an [`Index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flags {
    outcome: HostOutcomeRecord,
    wave: u32,
    failed: bool,
    takes_part: bool,
    out: bool,
    rollback_timed_out: bool,
    /// When the host's upgrade or rollback runs out of its host deadline
    /// (the earlier, if both are out).
    deadline: Option<UnixMillis>,
}

impl Flags {
    fn of(host: &RolloutHostRecord, host_deadline_ms: u64) -> Flags {
        let upgrade = host
            .dispatched_at
            .filter(|_| host_deadline_ms > 0 && host.outcome.is_in_flight())
            .map(|at| at.saturating_add(host_deadline_ms));
        let rollback = host
            .rollback
            .as_ref()
            .filter(|rollback| host_deadline_ms > 0 && rollback.state == RollbackStateRecord::Dispatched)
            .map(|rollback| rollback.dispatched_at.saturating_add(host_deadline_ms));
        Flags {
            outcome: host.outcome,
            wave: host.wave,
            failed: counts_as_failed(host),
            takes_part: takes_part(host),
            out: is_out(host),
            rollback_timed_out: rollback_timed_out(host),
            deadline: match (upgrade, rollback) {
                (Some(upgrade), Some(rollback)) => Some(upgrade.min(rollback)),
                (upgrade, rollback) => upgrade.or(rollback),
            },
        }
    }
}

/// The positions of a wave, and how many of them are pending or unfinished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Wave {
    positions: Vec<usize>,
    pending: usize,
    unfinished: usize,
}

/// What the machine asks of a rollout's hosts, counted: derived from the
/// hosts alone (so it is never stored, and is rebuilt when a record is
/// loaded), and kept current by refreshing every position an event touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Index {
    /// Each host id's number (in the order of its first position).
    numbers: HashMap<HostId, usize>,
    /// The positions of each host, by number: a host may run several apps of
    /// the recipe.
    positions: Vec<Vec<usize>>,
    /// The host number at each position.
    host_at: Vec<usize>,
    flags: Vec<Flags>,
    waves: BTreeMap<u32, Wave>,
    /// Failed apps and taking part apps of each host, by number; and the
    /// hosts with at least one.
    failed_apps: Vec<u32>,
    failed_hosts: usize,
    taking_part_apps: Vec<u32>,
    taking_part_hosts: usize,
    /// Positions with an upgrade or a rollback out.
    out: usize,
    rollbacks_timed_out: usize,
    /// Positions by outcome, for [`RolloutTally`].
    succeeded: usize,
    failed: usize,
    skipped: usize,
    /// `(deadline, position)` of every upgrade or rollback out with a host deadline.
    deadlines: BTreeSet<(UnixMillis, usize)>,
}

impl Index {
    fn of(rollout: &RolloutRecord) -> Index {
        let mut index = Index::default();
        for (position, host) in rollout.hosts.iter().enumerate() {
            let next = index.positions.len();
            let number = *index.numbers.entry(host.host_id.clone()).or_insert(next);
            if number == next {
                index.positions.push(Vec::new());
                index.failed_apps.push(0);
                index.taking_part_apps.push(0);
            }
            index.positions[number].push(position);
            index.host_at.push(number);
            index.waves.entry(host.wave).or_default().positions.push(position);
            let flags = Flags::of(host, rollout.strategy.host_deadline_ms);
            index.count(position, &flags, true);
            index.flags.push(flags);
        }
        index
    }

    fn positions_of(&self, host_id: &HostId) -> &[usize] {
        self.numbers
            .get(host_id)
            .map_or(&[], |&number| self.positions[number].as_slice())
    }

    /// Takes a changed host into account.
    fn refresh(&mut self, position: usize, host: &RolloutHostRecord, host_deadline_ms: u64) {
        let flags = Flags::of(host, host_deadline_ms);
        let old = self.flags[position];
        if flags != old {
            self.count(position, &old, false);
            self.count(position, &flags, true);
            self.flags[position] = flags;
        }
    }

    /// Adds (or removes) what `flags` at `position` contribute.
    fn count(&mut self, position: usize, flags: &Flags, add: bool) {
        fn step(count: &mut usize, add: bool) {
            if add {
                *count += 1;
            } else {
                *count -= 1;
            }
        }
        fn step_host(apps: &mut u32, hosts: &mut usize, add: bool) {
            if add {
                *apps += 1;
                if *apps == 1 {
                    *hosts += 1;
                }
            } else {
                *apps -= 1;
                if *apps == 0 {
                    *hosts -= 1;
                }
            }
        }
        let number = self.host_at[position];
        if flags.failed {
            step_host(&mut self.failed_apps[number], &mut self.failed_hosts, add);
        }
        if flags.takes_part {
            step_host(&mut self.taking_part_apps[number], &mut self.taking_part_hosts, add);
        }
        if flags.out {
            step(&mut self.out, add);
        }
        if flags.rollback_timed_out {
            step(&mut self.rollbacks_timed_out, add);
        }
        match flags.outcome {
            HostOutcomeRecord::Succeeded => step(&mut self.succeeded, add),
            HostOutcomeRecord::Skipped => step(&mut self.skipped, add),
            outcome if outcome.is_failure() => step(&mut self.failed, add),
            _ => {}
        }
        let wave = self.waves.entry(flags.wave).or_default();
        if flags.outcome == HostOutcomeRecord::Pending {
            step(&mut wave.pending, add);
        }
        if !flags.outcome.is_terminal() {
            step(&mut wave.unfinished, add);
        }
        if let Some(at) = flags.deadline {
            if add {
                self.deadlines.insert((at, position));
            } else {
                self.deadlines.remove(&(at, position));
            }
        }
    }

    /// Positions whose host deadline passed at `now`, in order.
    fn due(&self, now: UnixMillis) -> Vec<usize> {
        let mut due: Vec<usize> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, position)| *position)
            .collect();
        due.sort_unstable();
        due
    }
}

/// One event being applied: the record, its index, and the hosts the event
/// touched as they were before it, so that telling what changed (and
/// bringing the index up to date) looks at those hosts only.
struct Step<'a> {
    rollout: &'a mut RolloutRecord,
    index: &'a mut Index,
    touched: BTreeMap<usize, RolloutHostRecord>,
    /// Touched positions the index has not taken into account yet.
    stale: Vec<usize>,
}

impl<'a> Step<'a> {
    fn new(rollout: &'a mut RolloutRecord, index: &'a mut Index) -> Step<'a> {
        Step {
            rollout,
            index,
            touched: BTreeMap::new(),
            stale: Vec::new(),
        }
    }

    /// The host at `position`, to change.
    fn host_mut(&mut self, position: usize) -> &mut RolloutHostRecord {
        let host = &mut self.rollout.hosts[position];
        self.touched.entry(position).or_insert_with(|| host.clone());
        self.stale.push(position);
        host
    }

    /// The index, with every host changed so far taken into account.
    fn index(&mut self) -> &Index {
        let deadline = self.rollout.strategy.host_deadline_ms;
        for position in self.stale.drain(..) {
            self.index.refresh(position, &self.rollout.hosts[position], deadline);
        }
        self.index
    }

    fn run(mut self, event: Event, now: UnixMillis) -> Result<Applied, ActionError> {
        let header = self.rollout.header();
        let mut deliveries = Vec::new();
        match event {
            Event::Tick => deliveries.extend(self.expire(now)),
            Event::Progress { host_id, operation_id } => {
                let hosts = &self.rollout.hosts;
                let found = self
                    .index
                    .positions_of(&host_id)
                    .iter()
                    .copied()
                    .find(|&position| hosts[position].operation_id.as_deref() == Some(operation_id.as_str()));
                if let Some(position) = found {
                    if self.rollout.hosts[position].outcome == HostOutcomeRecord::Dispatched {
                        let host = self.host_mut(position);
                        host.outcome = HostOutcomeRecord::Upgrading;
                        host.updated_at = now;
                        self.rollout.last_progress_at = now;
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
            } => deliveries.extend(self.record_result(
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
                refuse_if_final(self.rollout)?;
                self.rollout.paused_by_operator = true;
            }
            Event::Resume => {
                refuse_if_final(self.rollout)?;
                if self.rollout.paused_by_operator {
                    self.rollout.paused_by_operator = false;
                    // Time spent paused is not a lack of progress.
                    self.rollout.last_progress_at = now;
                }
            }
            Event::Promote => {
                refuse_if_final(self.rollout)?;
                self.rollout.promoted = true;
                self.rollout.awaiting_promotion = false;
                // Promote also skips what is left of a wave interval.
                if self.rollout.next_wave_at.is_some() {
                    self.rollout.next_wave_at = Some(now);
                }
                self.rollout.last_progress_at = now;
            }
            Event::Abort { reason } => {
                refuse_if_final(self.rollout)?;
                self.rollout.state = RolloutStateRecord::Aborted;
                self.rollout.reason = if reason.is_empty() {
                    "aborted by an operator".to_owned()
                } else {
                    format!("aborted: {reason}")
                };
            }
        }
        deliveries.extend(self.advance(now));
        self.index();
        let hosts: Vec<(usize, RolloutHostRecord)> = std::mem::take(&mut self.touched)
            .into_iter()
            .filter(|(position, before)| self.rollout.hosts[*position] != *before)
            .collect();
        // The header compared without a copy: `header` has no hosts either.
        let all = std::mem::take(&mut self.rollout.hosts);
        let header_changed = *self.rollout != header;
        self.rollout.hosts = all;
        let before = (header_changed || !hosts.is_empty()).then(|| {
            self.rollout.updated_at = now;
            Before { header, hosts }
        });
        Ok(Applied { deliveries, before })
    }

    fn record_result(
        &mut self,
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
        let rollback_on_halt = self.rollout.strategy.rollback_on_halt;
        let halted = self.rollout.state == RolloutStateRecord::Halted;
        // The host's first app whose upgrade or rollback has this id.
        let hosts = &self.rollout.hosts;
        let Some(index) = self.index.positions_of(host_id).iter().copied().find(|&position| {
            let host = &hosts[position];
            host.operation_id.as_deref() == Some(operation_id)
                || host
                    .rollback
                    .as_ref()
                    .is_some_and(|rollback| rollback.operation_id == operation_id)
        }) else {
            return Vec::new();
        };
        let host = self.host_mut(index);
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
            self.rollout.last_progress_at = now;
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
                return self.start_rollback(index, now).into_iter().collect();
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
        let succeeded = host.outcome == HostOutcomeRecord::Succeeded;
        self.rollout.last_progress_at = now;
        if halted && rollback_on_halt && succeeded {
            return self.start_rollback(index, now).into_iter().collect();
        }
        Vec::new()
    }

    /// Host deadlines, rollback deadlines and the progress deadline. Only
    /// the hosts whose deadline passed are looked at.
    fn expire(&mut self, now: UnixMillis) -> Vec<Delivery> {
        let deadline = self.rollout.strategy.host_deadline_ms;
        let mut changed = false;
        for position in self.index().due(now) {
            let host = self.host_mut(position);
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
            self.rollout.last_progress_at = now;
        }
        let rollout = &self.rollout;
        let progress_deadline = rollout.strategy.progress_deadline_ms;
        let waiting = rollout.paused_by_operator || rollout.awaiting_promotion;
        if rollout.state == RolloutStateRecord::Running
            && !waiting
            && progress_deadline > 0
            && now >= rollout.last_progress_at.saturating_add(progress_deadline)
        {
            return self.halt(
                format!("no progress for {}s (progress deadline)", progress_deadline / 1000),
                now,
            );
        }
        Vec::new()
    }

    /// Moves a live rollout on: the failure budget, pause and promote gates,
    /// wave intervals, dispatching, completion. Does nothing to final rollouts.
    fn advance(&mut self, now: UnixMillis) -> Vec<Delivery> {
        if self.rollout.state.is_final() {
            return Vec::new();
        }
        let index = self.index();
        let (failed, taking_part) = (index.failed_hosts, index.taking_part_hosts);
        let limit = failure_budget(&self.rollout.strategy, taking_part);
        if failed >= limit {
            let reason = format!("{failed} host(s) failed, the failure budget is {limit}");
            return self.halt(reason, now);
        }
        let mut deliveries = Vec::new();
        loop {
            let rollout = &mut *self.rollout;
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
            // The wave's positions, in order, while any of them is pending.
            let pending = self
                .index()
                .waves
                .get(&wave)
                .filter(|members| members.pending > 0)
                .map(|members| members.positions.clone());
            for index in pending.into_iter().flatten() {
                if self.rollout.hosts[index].outcome == HostOutcomeRecord::Pending {
                    let operation_id = String::from(OperationId::upgrade(&self.rollout.id, index));
                    let host = self.host_mut(index);
                    host.outcome = HostOutcomeRecord::Dispatched;
                    host.operation_id = Some(operation_id.clone());
                    host.dispatched_at = Some(now);
                    host.updated_at = now;
                    host.message.clear();
                    let (host_id, domain) = (host.host_id.clone(), host.domain.clone());
                    let deadline = self.rollout.strategy.host_deadline_ms;
                    deliveries.push(upgrade_delivery(self.rollout, host_id, domain, &operation_id, deadline));
                    dispatched = true;
                }
            }
            if dispatched {
                self.rollout.last_progress_at = now;
            }
            let wave_busy = self
                .index()
                .waves
                .get(&wave)
                .is_some_and(|members| members.unfinished > 0);
            if wave_busy {
                return deliveries;
            }
            let rollout = &mut *self.rollout;
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
    /// ran before. Looks at every host, but a rollout halts once.
    fn halt(&mut self, reason: String, now: UnixMillis) -> Vec<Delivery> {
        let rollout = &mut *self.rollout;
        rollout.state = RolloutStateRecord::Halted;
        rollout.reason = reason;
        rollout.paused_by_operator = false;
        rollout.awaiting_promotion = false;
        if !rollout.strategy.rollback_on_halt {
            return Vec::new();
        }
        let mut deliveries = Vec::new();
        for index in 0..self.rollout.hosts.len() {
            let host = &self.rollout.hosts[index];
            if host.outcome == HostOutcomeRecord::Succeeded || host.succeeded_late {
                deliveries.extend(self.start_rollback(index, now));
            }
        }
        deliveries
    }

    fn start_rollback(&mut self, index: usize, now: UnixMillis) -> Option<Delivery> {
        let host = &self.rollout.hosts[index];
        // Only hosts this rollout moved: they have an operation and a version to return to.
        host.operation_id.as_ref()?;
        let version = host.from_version.clone()?;
        if host.rollback.is_some() {
            return None;
        }
        let operation_id = String::from(OperationId::rollback(&self.rollout.id, index));
        let host = self.host_mut(index);
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
    let taking_part: BTreeSet<_> = rollout
        .hosts
        .iter()
        .filter(|host| takes_part(host))
        .map(|host| &host.host_id)
        .collect();
    failure_budget(&rollout.strategy, taking_part.len())
}

/// [`failure_limit`] for this many hosts taking part.
fn failure_budget(strategy: &StrategyRecord, taking_part: usize) -> usize {
    let by_count = (strategy.max_failures > 0).then_some(strategy.max_failures as usize);
    let by_ratio = (strategy.max_failure_ppm > 0).then(|| {
        (taking_part * strategy.max_failure_ppm as usize)
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
        .filter(|host| counts_as_failed(host))
        .map(|host| &host.host_id)
        .collect::<BTreeSet<_>>()
        .len()
}

/// Whether anything is still out: an upgrade or a rollback without result.
pub fn in_flight(rollout: &RolloutRecord) -> bool {
    rollout.hosts.iter().any(is_out)
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
    rollout.state == RolloutStateRecord::Halted && rollout.hosts.iter().any(rollback_timed_out)
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
    let mut deliveries = Vec::new();
    if rollout.state != RolloutStateRecord::Aborted {
        for position in 0..rollout.hosts.len() {
            outstanding_at(rollout, position, now, &mut deliveries);
        }
    }
    deliveries
}

/// [`outstanding`] for the host at `position`.
fn outstanding_at(rollout: &RolloutRecord, position: usize, now: UnixMillis, deliveries: &mut Vec<Delivery>) {
    let host = &rollout.hosts[position];
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

#[cfg(test)]
mod tests;

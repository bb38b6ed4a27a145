//! The rollout side of the Admin service: wire <-> record conversion for
//! rollouts, strategy validation and defaults, planning from the stored
//! inventory, and the operator's actions handed to the rollout engine.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use ccfleet_proto::pb;
use ccfleet_proto::CoopVersion;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::audit::{self, audit};
use crate::api::{convert, internal};
use crate::auth;
use crate::fleet::Fleet;
use crate::model::{
    now_millis, HostOutcomeRecord, QuantityRecord, RolloutHostRecord, RolloutRecord, RolloutStateRecord, StrategyRecord,
};
use crate::rollout::engine::{ActionFailure, RolloutUpdate};
use crate::rollout::{machine, plan, Event, StartError};
use crate::store::StoreHandle;

/// A host that does not answer within this long times out (when the request says 0).
const DEFAULT_HOST_DEADLINE_SECONDS: u32 = 15 * 60;
const MAX_SELECTORS: usize = 64;

/// What the rollout methods use of the service.
pub struct RolloutsAdmin<'a> {
    pub store: &'a StoreHandle,
    pub fleet: &'a Fleet,
    pub rollouts: &'a crate::rollout::RolloutEngine,
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Rollout, Status>> + Send>>;
pub type WatchChangesStream = Pin<Box<dyn Stream<Item = Result<pb::RolloutChange, Status>> + Send>>;

fn quantity(
    field: &str,
    quantity: Option<pb::HostQuantity>,
    default: QuantityRecord,
) -> Result<QuantityRecord, Status> {
    match quantity.and_then(|quantity| quantity.quantity) {
        None => Ok(default),
        Some(pb::host_quantity::Quantity::Count(0)) => Err(convert::invalid(field, "a count must be at least 1")),
        Some(pb::host_quantity::Quantity::Count(count)) => Ok(QuantityRecord::Count(count)),
        Some(pb::host_quantity::Quantity::Percent(percent)) if (1..=100).contains(&percent) => {
            Ok(QuantityRecord::Percent(percent))
        }
        Some(pb::host_quantity::Quantity::Percent(percent)) => Err(convert::invalid(
            field,
            format!("a percentage must be 1 to 100, not {percent}"),
        )),
    }
}

/// The strategy with the documented defaults: canary 1 host, batches of
/// 25 %, halt at the first failure, hosts have 15 minutes.
pub fn strategy(wire: Option<pb::RolloutStrategy>) -> Result<StrategyRecord, Status> {
    let wire = wire.unwrap_or_default();
    let ratio = wire.max_failure_ratio;
    if !ratio.is_finite() || !(0.0..=1.0).contains(&ratio) {
        return Err(convert::invalid(
            "strategy.max_failure_ratio",
            format!("must be between 0.0 and 1.0, not {ratio}"),
        ));
    }
    let host_deadline = if wire.host_deadline_seconds == 0 {
        DEFAULT_HOST_DEADLINE_SECONDS
    } else {
        wire.host_deadline_seconds
    };
    Ok(StrategyRecord {
        canary: quantity("strategy.canary", wire.canary, QuantityRecord::Count(1))?,
        batch: quantity("strategy.batch", wire.batch, QuantityRecord::Percent(25))?,
        max_failures: if wire.max_failures == 0 && ratio == 0.0 {
            1
        } else {
            wire.max_failures
        },
        max_failure_ppm: (ratio * 1_000_000.0).round() as u32,
        pause_after_canary: wire.pause_after_canary,
        wave_interval_ms: u64::from(wire.wave_interval_seconds) * 1000,
        host_deadline_ms: u64::from(host_deadline) * 1000,
        progress_deadline_ms: u64::from(wire.progress_deadline_seconds) * 1000,
        rollback_on_halt: wire.rollback_on_halt,
        allow_major: wire.allow_major,
    })
}

fn quantity_wire(quantity: QuantityRecord) -> pb::HostQuantity {
    pb::HostQuantity {
        quantity: Some(match quantity {
            QuantityRecord::Count(count) => pb::host_quantity::Quantity::Count(count),
            QuantityRecord::Percent(percent) => pb::host_quantity::Quantity::Percent(percent),
        }),
    }
}

fn quantity_text(quantity: QuantityRecord) -> String {
    match quantity {
        QuantityRecord::Count(count) => count.to_string(),
        QuantityRecord::Percent(percent) => format!("{percent}%"),
    }
}

fn outcome_wire(outcome: HostOutcomeRecord) -> pb::HostOutcome {
    match outcome {
        HostOutcomeRecord::Pending => pb::HostOutcome::Pending,
        HostOutcomeRecord::Dispatched => pb::HostOutcome::Dispatched,
        HostOutcomeRecord::Upgrading => pb::HostOutcome::Upgrading,
        HostOutcomeRecord::Succeeded => pb::HostOutcome::Succeeded,
        HostOutcomeRecord::RolledBack => pb::HostOutcome::RolledBack,
        HostOutcomeRecord::Held => pb::HostOutcome::Held,
        HostOutcomeRecord::Failed => pb::HostOutcome::Failed,
        HostOutcomeRecord::Skipped => pb::HostOutcome::Skipped,
        HostOutcomeRecord::TimedOut => pb::HostOutcome::TimedOut,
    }
}

fn state_wire(state: RolloutStateRecord) -> pb::RolloutState {
    match state {
        RolloutStateRecord::Running => pb::RolloutState::Running,
        RolloutStateRecord::Paused => pb::RolloutState::Paused,
        RolloutStateRecord::Completed => pb::RolloutState::Completed,
        RolloutStateRecord::Halted => pb::RolloutState::Halted,
        RolloutStateRecord::Aborted => pb::RolloutState::Aborted,
    }
}

fn text(version: &Option<CoopVersion>) -> String {
    version.as_ref().map(ToString::to_string).unwrap_or_default()
}

fn host_wire(host: &RolloutHostRecord) -> pb::RolloutHost {
    pb::RolloutHost {
        host_id: host.host_id.to_string(),
        domain: host.domain.to_string(),
        wave: host.wave,
        outcome: outcome_wire(host.outcome) as i32,
        from_version: text(&host.from_version),
        to_version: text(&host.to_version),
        running_version: text(&host.running_version),
        message: host.message.clone(),
        updated_at: Some(convert::timestamp(host.updated_at)),
    }
}

/// One stored change as `WatchRolloutChanges` sends it: the header, and the
/// changed hosts by position.
fn change_wire(update: &RolloutUpdate) -> pb::RolloutChange {
    pb::RolloutChange {
        rollout: Some(rollout_wire(&update.change.header)),
        whole: false,
        hosts: update
            .change
            .hosts
            .iter()
            .map(|(position, host)| pb::ChangedRolloutHost {
                position: *position as u32,
                host: Some(host_wire(host)),
            })
            .collect(),
    }
}

/// What a watch sends next: the whole rollout (first, and after the watcher
/// fell behind), or one stored change newer than it.
enum Watched {
    Whole(Box<RolloutRecord>),
    Change(Arc<RolloutUpdate>),
}

/// Follows rollout `id` from its snapshot (subscribed before it is taken,
/// so that no change falls between): the whole rollout, then each newer
/// change, each turned into a message by `wire` and sent, until the rollout
/// is settled, `wire` answers `None` or the watcher leaves.
async fn follow_rollout<T>(
    engine: crate::rollout::RolloutEngine,
    store: StoreHandle,
    id: String,
    mut updates: tokio::sync::broadcast::Receiver<Arc<RolloutUpdate>>,
    sender: tokio::sync::mpsc::Sender<Result<T, Status>>,
    mut wire: impl FnMut(Watched) -> Option<T>,
) {
    let mut send = |watched: Watched| {
        let message = wire(watched);
        let sender = sender.clone();
        async move {
            match message {
                Some(message) => sender.send(Ok(message)).await.is_ok(),
                None => false,
            }
        }
    };
    loop {
        // The engine's snapshot of a live rollout, with the version it is at;
        // a settled one from the store (nothing follows it).
        let (version, rollout) = match engine.snapshot(&id).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => {
                let lookup = id.clone();
                match store.read(move |store| store.rollout(&lookup)).await {
                    Ok(Some(rollout)) => (u64::MAX, rollout),
                    _ => return,
                }
            }
            Err(_) => return,
        };
        let settled = version == u64::MAX || machine::is_settled(&rollout);
        if !send(Watched::Whole(Box::new(rollout))).await || settled {
            return;
        }
        loop {
            match updates.recv().await {
                Ok(update) if update.change.header.id == id && update.version > version => {
                    let settled = update.settled;
                    if !send(Watched::Change(update)).await || settled {
                        return;
                    }
                }
                Ok(_) => continue,
                // Fell behind: start again from a new snapshot.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

pub fn rollout_wire(rollout: &RolloutRecord) -> pb::Rollout {
    let strategy = &rollout.strategy;
    pb::Rollout {
        id: rollout.id.clone(),
        recipe: rollout.recipe.to_string(),
        target_version: rollout.target.to_string(),
        state: state_wire(rollout.state) as i32,
        strategy: Some(pb::RolloutStrategy {
            canary: Some(quantity_wire(strategy.canary)),
            batch: Some(quantity_wire(strategy.batch)),
            max_failures: strategy.max_failures,
            max_failure_ratio: f64::from(strategy.max_failure_ppm) / 1_000_000.0,
            pause_after_canary: strategy.pause_after_canary,
            wave_interval_seconds: (strategy.wave_interval_ms / 1000) as u32,
            host_deadline_seconds: (strategy.host_deadline_ms / 1000) as u32,
            progress_deadline_seconds: (strategy.progress_deadline_ms / 1000) as u32,
            rollback_on_halt: strategy.rollback_on_halt,
            allow_major: strategy.allow_major,
        }),
        hosts: rollout.hosts.iter().map(host_wire).collect(),
        current_wave: rollout.current_wave,
        created_at: Some(convert::timestamp(rollout.created_at)),
        updated_at: Some(convert::timestamp(rollout.updated_at)),
        reason: rollout.reason.clone(),
        created_by: rollout.created_by.clone(),
        paused_by_operator: rollout.paused_by_operator,
        canary_gate: canary_gate_wire(rollout) as i32,
    }
}

fn canary_gate_wire(rollout: &RolloutRecord) -> pb::CanaryGate {
    match (rollout.strategy.pause_after_canary, rollout.promoted) {
        (false, _) => pb::CanaryGate::Unspecified,
        (true, false) => pb::CanaryGate::Closed,
        (true, true) => pb::CanaryGate::Open,
    }
}

fn selector(value: &str) -> Result<String, Status> {
    let valid = match value.split_once('=') {
        Some((key, label)) => {
            !key.is_empty()
                && key.len() <= 63
                && !label.is_empty()
                && label.len() <= 253
                && value.chars().all(|c| c.is_ascii_graphic())
        }
        None => value.parse::<ccfleet_proto::HostId>().is_ok(),
    };
    if !valid {
        return Err(convert::invalid(
            "host_selectors",
            format!("{value:?} is neither a host id nor a key=value label"),
        ));
    }
    Ok(value.to_owned())
}

fn rollout_id(value: &str) -> Result<String, Status> {
    let valid = !value.is_empty()
        && value.len() <= 100
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(convert::invalid("id", format!("{value:?} is not a rollout id")));
    }
    Ok(value.to_owned())
}

impl RolloutsAdmin<'_> {
    pub async fn start_rollout_request(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = auth::authenticated(&request)?;
        let request = request.into_inner();
        let recipe = convert::recipe("recipe", &request.recipe)?;
        let strategy = strategy(request.strategy)?;
        if request.host_selectors.len() > MAX_SELECTORS {
            return Err(convert::invalid("host_selectors", format!("at most {MAX_SELECTORS}")));
        }
        let selectors = request
            .host_selectors
            .iter()
            .map(|value| selector(value))
            .collect::<Result<Vec<_>, _>>()?;
        if request.canary_hosts.len() > MAX_SELECTORS {
            return Err(convert::invalid("canary_hosts", format!("at most {MAX_SELECTORS}")));
        }
        let canary_selectors = request
            .canary_hosts
            .iter()
            .map(|value| selector(value))
            .collect::<Result<Vec<_>, _>>()?;
        let explicit = if request.version.is_empty() {
            None
        } else {
            Some(
                request
                    .version
                    .parse::<CoopVersion>()
                    .map_err(|error| convert::invalid("version", error))?,
            )
        };
        let (hosts, apps) = {
            let recipe = recipe.clone();
            self.store
                .read(move |store| Ok((store.hosts()?, store.apps(Some(&recipe))?)))
                .await
                .map_err(internal)?
        };
        let labels: BTreeMap<_, BTreeMap<String, String>> = hosts
            .into_iter()
            .map(|host| {
                let mut labels = host.labels;
                labels.extend(host.facts.labels);
                (host.host_id, labels)
            })
            .collect();
        let apps: Vec<_> = apps
            .into_iter()
            .filter(|(host_id, _)| {
                labels
                    .get(host_id)
                    .is_some_and(|labels| crate::rollout::plan::selected(&selectors, host_id, labels))
            })
            .collect();
        if apps.is_empty() {
            return Err(Status::failed_precondition(plan::PlanError::NoApps(recipe).to_string()));
        }
        let target = match explicit {
            Some(target) => target,
            None => plan::quorum_target(
                &recipe,
                &plan::reported_by_host(
                    apps.iter()
                        .map(|(host_id, app)| (host_id, app.available_version.as_ref(), app.available_newest.as_ref())),
                    strategy.allow_major,
                ),
            )
            .map_err(|error| Status::failed_precondition(error.to_string()))?,
        };
        let candidates = apps
            .into_iter()
            .map(|(host_id, app)| plan::Candidate {
                online: self.fleet.is_online(&host_id),
                canary: !canary_selectors.is_empty()
                    && labels
                        .get(&host_id)
                        .is_some_and(|labels| plan::selected(&canary_selectors, &host_id, labels)),
                host_id,
                domain: app.domain,
                observed: app.observed_version,
                pinned_by_host: app.pinned_by_host,
                unsnapshottable: app.unsnapshottable,
            })
            .collect();
        let detail = format!(
            "{recipe} to {target}: canary {}, batch {}, max failures {}{}{}{}",
            quantity_text(strategy.canary),
            quantity_text(strategy.batch),
            if strategy.max_failure_ppm > 0 {
                format!("{}%", f64::from(strategy.max_failure_ppm) / 10_000.0)
            } else {
                strategy.max_failures.to_string()
            },
            if strategy.pause_after_canary {
                ", pause after canary"
            } else {
                ""
            },
            if strategy.rollback_on_halt {
                ", rollback on halt"
            } else {
                ""
            },
            if selectors.is_empty() {
                String::new()
            } else {
                format!(", hosts {}", selectors.join(","))
            },
        ) + &if canary_selectors.is_empty() {
            String::new()
        } else {
            format!(", canary hosts {}", canary_selectors.join(","))
        };
        let planned = plan::plan(
            String::new(),
            recipe,
            target,
            strategy,
            candidates,
            (!canary_selectors.is_empty())
                .then(|| canary_selectors.join(","))
                .as_deref(),
            caller.identity.name().to_owned(),
            now_millis(),
        )
        .map_err(|error| Status::failed_precondition(error.to_string()))?;
        if request.dry_run {
            return Ok(Response::new(rollout_wire(&planned)));
        }
        audit::has_room(self.store).await?;
        let started = self
            .rollouts
            .start_rollout(planned)
            .await
            .map_err(|error| match error {
                StartError::Active(id) => Status::already_exists(StartError::Active(id).to_string()),
                StartError::Store(error) => internal(error),
                StartError::Stopped => Status::unavailable("the rollout engine has stopped"),
            })?;
        tracing::info!(admin = caller.identity.name(), rollout = started.id, "rollout started");
        audit(self.store, &caller, "rollout.start", &started.id, detail).await;
        Ok(Response::new(rollout_wire(&started)))
    }

    pub async fn get_rollout_request(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let id = rollout_id(&request.into_inner().id)?;
        Ok(Response::new(rollout_wire(&self.stored_rollout(&id).await?)))
    }

    async fn stored_rollout(&self, id: &str) -> Result<RolloutRecord, Status> {
        let lookup = id.to_owned();
        self.store
            .read(move |store| store.rollout(&lookup))
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("there is no rollout {id}")))
    }

    pub async fn list_rollouts_request(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        let recipe = request.into_inner().recipe;
        let recipe = if recipe.is_empty() {
            None
        } else {
            Some(convert::recipe("recipe", &recipe)?)
        };
        let rollouts = self.store.read(|store| store.rollouts()).await.map_err(internal)?;
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: rollouts
                .iter()
                .filter(|rollout| recipe.as_ref().is_none_or(|recipe| &rollout.recipe == recipe))
                .map(rollout_wire)
                .collect(),
        }))
    }

    /// A watch of the rollout `request` names, its messages made by `wire`
    /// (see [`follow_rollout`]); a rollout that does not exist is refused.
    async fn watch<T: Send + 'static>(
        &self,
        request: Request<pb::GetRolloutRequest>,
        wire: impl FnMut(Watched) -> Option<T> + Send + 'static,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>>, Status> {
        let id = rollout_id(&request.into_inner().id)?;
        // Subscribe before the snapshot, so no change falls between the two.
        let updates = self.rollouts.subscribe();
        self.stored_rollout(&id).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let (engine, store) = (self.rollouts.clone(), self.store.clone());
        tokio::spawn(async move {
            let closed = sender.clone();
            tokio::select! {
                // The watcher went away: stop now, not at the next change.
                _ = closed.closed() => {}
                _ = follow_rollout(engine, store, id, updates, sender, wire) => {}
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        ))))
    }

    /// `WatchRollout`: the whole rollout after every change (kept whole
    /// here from the changes; `WatchRolloutChanges` sends only those).
    pub async fn watch_rollout_request(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let mut current: Option<RolloutRecord> = None;
        self.watch(request, move |watched| {
            let next = match (watched, current.take()) {
                (Watched::Whole(rollout), _) => *rollout,
                (Watched::Change(update), Some(previous)) => {
                    let mut rollout = RolloutRecord {
                        hosts: previous.hosts,
                        ..update.change.header.clone()
                    };
                    for (position, host) in &update.change.hosts {
                        if let Some(slot) = rollout.hosts.get_mut(*position) {
                            *slot = host.clone();
                        }
                    }
                    rollout
                }
                // A change comes only after the whole rollout.
                (Watched::Change(_), None) => return None,
            };
            let wire = rollout_wire(&next);
            current = Some(next);
            Some(wire)
        })
        .await
    }

    /// `WatchRolloutChanges`: the whole rollout, then each change's header
    /// and changed hosts.
    pub async fn watch_rollout_changes_request(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<WatchChangesStream>, Status> {
        self.watch(request, |watched| {
            Some(match watched {
                Watched::Whole(rollout) => pb::RolloutChange {
                    rollout: Some(rollout_wire(&rollout)),
                    whole: true,
                    hosts: Vec::new(),
                },
                Watched::Change(update) => change_wire(&update),
            })
        })
        .await
    }

    pub async fn rollout_action(
        &self,
        request: Request<pb::RolloutActionRequest>,
        action: &str,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = auth::authenticated(&request)?;
        let request = request.into_inner();
        let id = rollout_id(&request.id)?;
        let reason = convert::message(&request.reason);
        let event = match action {
            "pause" => Event::Pause,
            "resume" => Event::Resume,
            "promote" => Event::Promote,
            _ => Event::Abort { reason: reason.clone() },
        };
        audit::has_room(self.store).await?;
        let rollout = self
            .rollouts
            .act(id.clone(), event)
            .await
            .map_err(|failure| match failure {
                ActionFailure::NotFound(_) => Status::not_found(failure.to_string()),
                ActionFailure::Refused(_) => Status::failed_precondition(failure.to_string()),
                ActionFailure::Store(error) => internal(error),
                ActionFailure::Stopped => Status::unavailable(failure.to_string()),
            })?;
        tracing::info!(admin = caller.identity.name(), rollout = id, action, "rollout action");
        audit(self.store, &caller, &format!("rollout.{action}"), &id, reason).await;
        Ok(Response::new(rollout_wire(&rollout)))
    }
}

//! The upgrade transaction's effects: each phase's work through the `Host`
//! (abra, Docker), the snapshot store and the health gate. An effect says what
//! it found (`StepResult`) and changes nothing of the record.

use std::time::{Duration, Instant};

use ccfleet_proto::{error_chain, CoopVersion, VersionChange};

use super::model::{OperationRecord, Phase};
use super::{StepResult, Upgrader, UNDEPLOY_SETTLE};
use crate::config::{AppConfig, ProbeScheme};
use crate::docker::DockerError;
use crate::health::{Check, GatePolicy, GateVerdict, HealthGate, HttpProbe, ProbeTarget};
use crate::host::{AppState, Host};
use crate::snapshot::{SnapshotError, VolumeSource};

impl Upgrader {
    /// Performs the effect of `record.phase` (but `Snapshotting`'s, which
    /// [`Upgrader::drive`] runs in two parts around journaling the snapshot's
    /// directory), and says what it found; it changes nothing of the record.
    pub(super) async fn effect(
        &self,
        host: &Host,
        app: &AppConfig,
        record: &OperationRecord,
        gate_deadline: Option<Instant>,
    ) -> StepResult {
        match record.phase {
            Phase::Accepted | Phase::Healthy | Phase::Done { .. } | Phase::Snapshotting => StepResult::Ok,
            Phase::Undeploying | Phase::RollbackUndeploying => self.undeploy(host, app).await,
            Phase::VerifyingSnapshot => self.verify_snapshot(host, app, record).await,
            Phase::Deploying => self.deploy_target(host, app, record).await,
            Phase::Verifying => self.gate(host, app, &record.to, gate_deadline).await,
            Phase::Restoring => self.restore(host, app, record).await,
            Phase::RollbackDeploying => match host.abra().deploy(&app.recipe, &app.domain, &record.from, true).await {
                Ok(_) => StepResult::Ok,
                Err(error) => StepResult::Failed(error_chain(&error)),
            },
            Phase::RollbackVerifying => self.gate(host, app, &record.from, None).await,
        }
    }

    /// `abra app undeploy` when the stack runs, then waits (bounded by the
    /// app's deploy timeout) until no container of it runs.
    pub(super) async fn undeploy(&self, host: &Host, app: &AppConfig) -> StepResult {
        let stack = app.domain.stack_name();
        let docker = host.docker();
        let observed = host.observe(app).await;
        if observed.state != AppState::NotDeployed {
            if let Err(error) = host.abra().undeploy(&app.recipe, &app.domain).await {
                // A concurrent removal may have won; what counts is below.
                if host.observe(app).await.state != AppState::NotDeployed {
                    return StepResult::Failed(error_chain(&error));
                }
            }
        }
        let deadline = Instant::now() + app.deploy_timeout;
        let mut ticker = tokio::time::interval(self.settings.poll_interval);
        // Swarm removes a service at once but shuts its tasks down on its
        // own time: a task that was still being prepared can start its
        // container a moment after the removal (seen in the crash tests: a
        // migration written after the restore). So the stack must show no
        // running container for a settle time, not just once.
        let mut quiet_since: Option<Instant> = None;
        loop {
            ticker.tick().await;
            match docker.running_containers(&stack).await {
                Ok(0) => {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= UNDEPLOY_SETTLE {
                        return StepResult::Ok;
                    }
                    continue;
                }
                Ok(count) if Instant::now() >= deadline => {
                    return StepResult::Failed(format!(
                        "{count} container(s) of stack {stack} still run {} after the undeploy",
                        humantime::format_duration(app.deploy_timeout)
                    ))
                }
                Ok(_) => quiet_since = None,
                Err(error) if Instant::now() >= deadline => return StepResult::Failed(error_chain(&error)),
                Err(error) => tracing::debug!(%error, "cannot count the stack's containers yet"),
            }
        }
    }

    pub(super) async fn volumes(&self, host: &Host, app: &AppConfig) -> Result<Vec<VolumeSource>, StepResult> {
        let volumes = host
            .docker()
            .stack_volumes(&app.domain.stack_name())
            .await
            .map_err(|error: DockerError| StepResult::Failed(error_chain(&error)))?;
        if let Some(volume) = volumes.iter().find(|volume| volume.driver != "local") {
            return Err(StepResult::Refused(format!(
                "volume {} uses the {:?} driver; only local volumes can be snapshotted",
                volume.name, volume.driver
            )));
        }
        Ok(volumes
            .into_iter()
            .map(|volume| VolumeSource {
                name: volume.name,
                mountpoint: volume.mountpoint,
            })
            .collect())
    }

    /// The volumes to snapshot, or why there is no snapshot to take.
    pub(super) async fn snapshot_volumes(&self, host: &Host, app: &AppConfig) -> Result<Vec<VolumeSource>, StepResult> {
        let volumes = self.volumes(host, app).await?;
        match refuse_without_volumes(&app.domain.stack_name(), &volumes) {
            Some(refused) => Err(refused),
            None => Ok(volumes),
        }
    }

    /// Copies `volumes` into the snapshot that `record` names.
    pub(super) async fn take_snapshot(
        &self,
        app: &AppConfig,
        record: &OperationRecord,
        volumes: Vec<VolumeSource>,
    ) -> StepResult {
        let store = self.snapshots.clone();
        let (domain, id) = (app.domain.clone(), record.id.clone());
        let taken = tokio::task::spawn_blocking(move || store.take(&domain, &id, &volumes)).await;
        match taken {
            Ok(Ok(snapshot)) => {
                tracing::info!(app = %app.domain, dir = %snapshot.dir.display(), bytes = snapshot.manifest.total_bytes, "snapshot taken");
                StepResult::Ok
            }
            Ok(Err(error @ SnapshotError::NoRoom { .. })) => StepResult::Refused(error_chain(&error)),
            Ok(Err(error)) => StepResult::Failed(error_chain(&error)),
            Err(panic) => StepResult::Failed(format!("the snapshot task failed: {panic}")),
        }
    }

    pub(super) async fn verify_snapshot(&self, host: &Host, app: &AppConfig, record: &OperationRecord) -> StepResult {
        if record.snapshot.is_none() {
            return StepResult::Ok;
        }
        let volumes = match self.volumes(host, app).await {
            Ok(volumes) => volumes,
            Err(result) => return result,
        };
        let store = self.snapshots.clone();
        let (domain, id) = (app.domain.clone(), record.id.clone());
        let verified = tokio::task::spawn_blocking(move || {
            let snapshot = store.open(&domain, &id)?.ok_or_else(|| SnapshotError::Manifest {
                path: store.dir_of(&domain, &id),
                detail: "the snapshot has no manifest".into(),
            })?;
            store.verify(&snapshot, &volumes)
        })
        .await;
        match verified {
            Ok(Ok(())) => StepResult::SnapshotVerified,
            Ok(Err(error)) => StepResult::Failed(error_chain(&error)),
            Err(panic) => StepResult::Failed(format!("the verification task failed: {panic}")),
        }
    }

    pub(super) async fn restore(&self, host: &Host, app: &AppConfig, record: &OperationRecord) -> StepResult {
        if record.snapshot.is_none() {
            return StepResult::Ok;
        }
        let volumes = match self.volumes(host, app).await {
            Ok(volumes) => volumes,
            Err(StepResult::Refused(reason)) => return StepResult::Failed(reason),
            Err(result) => return result,
        };
        let store = self.snapshots.clone();
        let (domain, id) = (app.domain.clone(), record.id.clone());
        let restored = tokio::task::spawn_blocking(move || {
            let snapshot = store.open(&domain, &id)?.ok_or_else(|| SnapshotError::Manifest {
                path: store.dir_of(&domain, &id),
                detail: "the snapshot has no manifest".into(),
            })?;
            store.restore(&snapshot, &volumes)
        })
        .await;
        match restored {
            Ok(Ok(())) => StepResult::Ok,
            Ok(Err(error)) => StepResult::Failed(error_chain(&error)),
            Err(panic) => StepResult::Failed(format!("the restore task failed: {panic}")),
        }
    }

    /// Deploys the target. A stateful app was undeployed for its snapshot,
    /// so abra deploys the target afresh (`deploy -f`); a running stateless
    /// app moves with `abra app upgrade` (or `rollback` to an older version).
    pub(super) async fn deploy_target(&self, host: &Host, app: &AppConfig, record: &OperationRecord) -> StepResult {
        let abra = host.abra();
        let deployed = if record.stateful {
            abra.deploy(&app.recipe, &app.domain, &record.to, true).await
        } else {
            match record.from.change_to(&record.to) {
                VersionChange::Compatible | VersionChange::Major => {
                    abra.upgrade(&app.recipe, &app.domain, &record.to).await
                }
                VersionChange::Downgrade => abra.rollback(&app.recipe, &app.domain, &record.to).await,
                VersionChange::Same => abra.deploy(&app.recipe, &app.domain, &record.to, true).await,
            }
        };
        match deployed {
            Ok(_) => StepResult::Ok,
            Err(error) => StepResult::Failed(error_chain(&error)),
        }
    }

    /// The health gate on `version`: converged at it (every service's
    /// replicas running its spec, containers with a healthcheck healthy) and,
    /// when the app has a health path, the HTTP probe answering an accepted
    /// status — continuously for the minimum healthy time, within the app's
    /// health timeout.
    pub(super) async fn gate(
        &self,
        host: &Host,
        app: &AppConfig,
        version: &CoopVersion,
        deadline: Option<Instant>,
    ) -> StepResult {
        let timeout = match deadline {
            Some(deadline) => app.health.timeout.min(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1)),
            ),
            None => app.health.timeout,
        };
        let at_version = AppConfig {
            version: version.clone(),
            ..app.clone()
        };
        let mut gate = HealthGate::new(
            GatePolicy {
                min_healthy: self.settings.min_healthy_time,
                timeout,
            },
            Instant::now(),
        );
        let mut ticker = tokio::time::interval(self.settings.poll_interval);
        loop {
            ticker.tick().await;
            let check = self.check(host, &at_version).await;
            match gate.observe(Instant::now(), check) {
                GateVerdict::Healthy { after } => {
                    tracing::info!(app = %app.domain, %version, after = ?after, "health gate passed");
                    return StepResult::Ok;
                }
                GateVerdict::TimedOut { reason } => {
                    return StepResult::Failed(format!(
                        "not healthy within {}: {reason}",
                        humantime::format_duration(timeout)
                    ))
                }
                GateVerdict::Waiting {
                    healthy_for,
                    time_left,
                    last_reason,
                } => tracing::debug!(app = %app.domain, ?healthy_for, ?time_left, ?last_reason, "health gate waiting"),
            }
        }
    }

    pub(super) async fn check(&self, host: &Host, app: &AppConfig) -> Check {
        let observed = host.observe(app).await;
        if !observed.is_converged_at_declared() {
            return Check::Unhealthy {
                reason: format!("not converged at {}: {}", app.version, observed.summary()),
            };
        }
        let Some(path) = &app.health.path else {
            return Check::Healthy;
        };
        let probe = self
            .probe
            .get_or_init(|| HttpProbe::new().map_err(|error| error_chain(&error)));
        let probe = match probe {
            Ok(probe) => probe,
            Err(reason) => return Check::Unhealthy { reason: reason.clone() },
        };
        let target = ProbeTarget {
            domain: app.domain.clone(),
            path: path.clone(),
            address: self.settings.probe_address,
            scheme: match self.settings.probe_scheme {
                ProbeScheme::Http => crate::health::ProbeScheme::Http,
                ProbeScheme::Https => crate::health::ProbeScheme::Https,
            },
            accepted_statuses: app.health.accepted_statuses.clone(),
            request_timeout: Duration::from_secs(5),
        };
        probe.probe(&target).await
    }
}

/// A stateful app whose stack has no volume cannot be snapshotted: its
/// upgrade is refused (HELD) rather than run without a copy of its data.
fn refuse_without_volumes(stack: &str, volumes: &[VolumeSource]) -> Option<StepResult> {
    volumes.is_empty().then(|| {
        StepResult::Refused(format!(
            "stateful but no volumes of stack {stack} found: cannot snapshot; set stateful = false if it keeps no data"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stateful_app_without_volumes_is_refused_its_snapshot() {
        assert_eq!(
            refuse_without_volumes("blog_example_org", &[]),
            Some(StepResult::Refused(
                "stateful but no volumes of stack blog_example_org found: cannot snapshot; \
                 set stateful = false if it keeps no data"
                    .into()
            ))
        );
        let volume = VolumeSource {
            name: "blog_example_org_content".into(),
            mountpoint: "/var/lib/docker/volumes/blog_example_org_content/_data".into(),
        };
        assert_eq!(refuse_without_volumes("blog_example_org", &[volume]), None);
    }
}

//! The upgrade transaction's bookkeeping once an operation is done: what it
//! means for the app's record (through `machine::record_outcome`), its alert,
//! snapshot retention, and its result, reported once.

use std::path::{Path, PathBuf};

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_proto::{error_chain, CoopVersion, Domain};

use super::model::{AppRecord, OperationRecord, Outcome};
use super::{machine, OperationReport, UpgradeError, Upgrader, KEEP_FINISHED_OPERATIONS};
use crate::alerts::{self, Alert, AlertKind, Severity};
use crate::journal;

impl Upgrader {
    pub(super) fn report_of(
        &self,
        record: &OperationRecord,
        from: Option<CoopVersion>,
        running: Option<CoopVersion>,
    ) -> OperationReport {
        let (outcome, reason) = record
            .result()
            .map(|(outcome, reason)| (outcome, reason.to_owned()))
            .unwrap_or((Outcome::Failed, "unfinished".into()));
        OperationReport {
            operation_id: record.id.clone(),
            domain: record.domain.clone(),
            outcome,
            from: from.or_else(|| Some(record.from.clone())),
            to: record.to.clone(),
            running,
            reason,
            snapshot: record.snapshot.clone(),
            replayed: false,
        }
    }

    /// Records what a finished operation means for its app (last good
    /// version, fleet target, rolled-back targets), writes or clears its
    /// alert, prunes snapshots, and reports the result once. `running`: the
    /// version observed running after the operation (`None`: nothing, or
    /// not seen).
    pub(super) fn finish(
        &self,
        record: &OperationRecord,
        declared: &CoopVersion,
        running: Option<&CoopVersion>,
    ) -> Result<(), UpgradeError> {
        let Some((outcome, reason)) = record.result() else {
            return Ok(());
        };
        if record.reported {
            return Ok(());
        }
        let mut record = record.clone();
        if record.finished_at.is_none() {
            record.finished_at = Some(journal::now_seconds());
            self.journal.write_operation(&record)?;
        }
        let app_record = self.journal.update_app(&record.domain, |app: &mut AppRecord| {
            machine::record_outcome(app, &record, declared)
        })?;
        if !machine::changed_nothing(&record) {
            self.alert(&record, outcome, reason, running);
        }
        if outcome != Outcome::Skipped {
            self.prune_snapshots(&record, outcome, &app_record);
        }
        let pushed = self.events.push(Body::Result(pb::OperationResult {
            operation_id: record.id.clone(),
            domain: record.domain.to_string(),
            outcome: alerts::wire_outcome(outcome) as i32,
            from_version: record.from.to_string(),
            to_version: record.to.to_string(),
            running_version: running.map(ToString::to_string).unwrap_or_default(),
            message: reason.chars().take(4000).collect(),
        }));
        if pushed {
            tracing::info!(operation = %record.id, %outcome, "result recorded for the server");
            record.reported = true;
            self.journal.write_operation(&record)?;
        }
        tracing::info!(operation = %record.id, app = %record.domain, %outcome, reason, "upgrade finished");
        match self.journal.prune_operations(KEEP_FINISHED_OPERATIONS) {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "old operation records removed from the journal"),
            Err(error) => tracing::warn!(%error, "cannot prune the journal's operations"),
        }
        Ok(())
    }

    pub(super) fn alert(
        &self,
        record: &OperationRecord,
        outcome: Outcome,
        reason: &str,
        running: Option<&CoopVersion>,
    ) {
        let dir = &self.settings.alerts_dir;
        match outcome {
            Outcome::Succeeded => match alerts::clear(dir, record.domain.as_str()) {
                Ok(true) => {
                    self.events.push(Body::Alert(alerts::cleared_event(
                        record.domain.as_str(),
                        record.recipe.as_str(),
                        &record.id,
                    )));
                }
                Ok(false) => {}
                Err(error) => tracing::error!(%error, "cannot clear the app's alert"),
            },
            Outcome::RolledBack | Outcome::Failed | Outcome::Held => {
                let alert = Alert {
                    domain: record.domain.to_string(),
                    recipe: record.recipe.to_string(),
                    from: record.from.to_string(),
                    to: record.to.to_string(),
                    running: running.map(ToString::to_string),
                    outcome,
                    severity: Severity::of(outcome),
                    reason: reason.to_owned(),
                    operation_id: record.id.clone(),
                    snapshot_path: record.snapshot.clone().filter(|_| record.snapshot_verified),
                    time: alerts::now(),
                    kind: AlertKind::Upgrade,
                };
                match alerts::write(dir, &alert) {
                    Ok(path) => tracing::warn!(alert = %path.display(), "alert written"),
                    Err(error) => tracing::error!(%error, "cannot write the app's alert"),
                }
                self.events.push(Body::Alert(alert.to_event()));
            }
            Outcome::Skipped => {}
        }
    }

    /// Keeps the newest snapshots per the retention, and always those of the
    /// FAILED operations since the app's last success (the operator needs
    /// them until then, even after a later alert replaced theirs) and the one
    /// named by the app's open FAILED alert.
    pub(super) fn prune_snapshots(&self, record: &OperationRecord, outcome: Outcome, app_record: &AppRecord) {
        let open_alert = alerts::read(&self.settings.alerts_dir, record.domain.as_str())
            .filter(|alert| alert.outcome == Outcome::Failed)
            .map(|alert| alert.operation_id);
        let mut protect: Vec<&str> = open_alert.iter().map(String::as_str).collect();
        protect.extend(app_record.failed_operations.iter().map(String::as_str));
        if outcome == Outcome::Failed {
            protect.push(record.id.as_str());
        }
        match self
            .snapshots
            .prune(&record.domain, self.settings.snapshot_retention, &protect)
        {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::info!(deleted = %deleted.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(", "), "old snapshots removed")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error_chain(&error), "cannot prune snapshots"),
        }
    }

    /// Where the app's snapshots are, newest first, for `status`.
    pub fn snapshot_dirs(&self, domain: &Domain) -> Vec<PathBuf> {
        self.snapshots
            .list(domain)
            .map(|infos| {
                infos
                    .into_iter()
                    .filter(|info| info.complete)
                    .map(|info| info.dir)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The snapshots directory of this agent.
    pub fn snapshots_root(&self) -> &Path {
        &self.settings.snapshots_dir
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::ProbeScheme;
    use crate::journal::Journal;
    use crate::snapshot::VolumeSource;
    use crate::upgrade::model::{self, Phase, Trigger};
    use crate::upgrade::{LogEvents, Settings};

    /// The snapshot of a FAILED operation is kept after later outcomes
    /// replaced its alert, whatever the retention, until a success.
    #[test]
    fn a_failed_operations_snapshot_is_kept_until_the_app_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            snapshots_dir: dir.path().join("snapshots"),
            alerts_dir: dir.path().join("alerts"),
            snapshot_retention: 1,
            min_healthy_time: Duration::from_secs(1),
            probe_address: "127.0.0.1:9".parse().unwrap(),
            probe_scheme: ProbeScheme::Http,
            poll_interval: Duration::from_millis(100),
        };
        let journal = Journal::open(&dir.path().join("state"), &dir.path().join("abra")).unwrap();
        let upgrader = Upgrader::new(journal, settings, Arc::new(LogEvents));
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("post.md"), "data").unwrap();
        let domain: Domain = "blog.example.org".parse().unwrap();
        let declared: CoopVersion = "1.0.0+5.0".parse().unwrap();
        let finish = |id: &str, to: &str, outcome: Outcome| {
            let volumes = [VolumeSource {
                name: "blog_example_org_data".into(),
                mountpoint: volume.clone(),
            }];
            upgrader.snapshots.take(&domain, id, &volumes).unwrap();
            let record = OperationRecord {
                format: model::FORMAT,
                id: id.into(),
                domain: domain.clone(),
                recipe: "ghost".parse().unwrap(),
                trigger: Trigger::Operator,
                from: declared.clone(),
                to: to.parse().unwrap(),
                stateful: true,
                phase: Phase::Done {
                    outcome,
                    reason: "why".into(),
                },
                failure: None,
                snapshot: Some(upgrader.snapshots.dir_of(&domain, id)),
                snapshot_verified: true,
                started_at: 0,
                finished_at: None,
                reported: false,
            };
            upgrader.journal.write_operation(&record).unwrap();
            upgrader.finish(&record, &declared, None).unwrap();
            let mut kept: Vec<String> = upgrader
                .snapshots
                .list(&domain)
                .unwrap()
                .into_iter()
                .map(|info| info.operation_id)
                .collect();
            kept.sort();
            kept
        };
        assert_eq!(finish("op-1", "1.1.0+5.1", Outcome::Failed), ["op-1"]);
        // Later outcomes replace the FAILED alert; its snapshot stays.
        assert_eq!(finish("op-2", "1.2.0+5.2", Outcome::RolledBack), ["op-1", "op-2"]);
        assert_eq!(finish("op-3", "1.3.0+5.3", Outcome::Held), ["op-1", "op-3"]);
        // A success releases it.
        assert_eq!(finish("op-4", "1.0.0+5.0", Outcome::Succeeded), ["op-4"]);
    }
}

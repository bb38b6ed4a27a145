//! Alert sentinels: `<alerts_dir>/<domain>.json`, written atomically when an
//! upgrade ends ROLLED_BACK, FAILED or HELD, or a reconcile fails an app's
//! first deploy, finds it blocked, or cannot insert a secret; removed when a
//! later operation on the app succeeds. The same facts travel to the server
//! as an `AlertEvent`, so `ccfleet alerts` lists them fleet-wide.
//!
//! The file's fields (documented for operators and their monitoring):
//! `domain`, `recipe`, `from` (the version running before), `to` (the
//! version asked for), `running` (the version observed running after the
//! operation; null when nothing runs or it could not be seen), `outcome`
//! (`ROLLED_BACK`, `FAILED`, `HELD`), `severity` (`warning`: a healthy
//! version runs, not the one asked for; `critical`: the app may be down),
//! `reason`, `operation_id`, `snapshot_path` (null when none was taken),
//! `time` (RFC 3339, UTC) and, added later, `kind` (`upgrade`,
//! `first_deploy`, `blocked`, `secret_insert`; a file without it is an
//! upgrade's).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccfleet_proto::pb;
use serde::{Deserialize, Serialize};

use crate::journal::{self, JournalError};
use crate::upgrade::model::Outcome;

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    /// FAILED may leave the app down; the other outcomes leave a healthy version running.
    pub fn of(outcome: Outcome) -> Severity {
        match outcome {
            Outcome::Failed => Severity::Critical,
            _ => Severity::Warning,
        }
    }
}

/// What raised an alert: the upgrade transaction, or one of the reconcile's
/// failures that need a human.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// An upgrade ended ROLLED_BACK, FAILED or HELD.
    #[default]
    Upgrade,
    /// The app's first deploy failed (`abra app new`, its deploy, or its
    /// convergence): nothing of it runs.
    FirstDeploy,
    /// A FAILED operation blocks the app and no open alert names it.
    Blocked,
    /// A declared secret could not be inserted (`abra app secret insert`).
    SecretInsert,
}

impl AlertKind {
    /// Whether a reconcile raised it (and so a successful reconcile clears it);
    /// an upgrade's alert waits for a successful operation.
    pub fn from_reconcile(self) -> bool {
        self != AlertKind::Upgrade
    }
}

/// One open alert, as written to `<alerts_dir>/<domain>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub domain: String,
    pub recipe: String,
    pub from: String,
    pub to: String,
    /// Absent from files written before it was kept.
    #[serde(default)]
    pub running: Option<String>,
    pub outcome: Outcome,
    pub severity: Severity,
    pub reason: String,
    pub operation_id: String,
    pub snapshot_path: Option<PathBuf>,
    /// RFC 3339, UTC.
    pub time: String,
    /// Added after the fields above; older files are an upgrade's.
    #[serde(default)]
    pub kind: AlertKind,
}

impl Alert {
    /// The sentinel's path.
    pub fn path(alerts_dir: &Path, domain: &str) -> PathBuf {
        alerts_dir.join(format!("{domain}.json"))
    }

    /// The event that raises this alert on the server.
    pub fn to_event(&self) -> pb::AlertEvent {
        let seconds = humantime::parse_rfc3339(&self.time)
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        pb::AlertEvent {
            domain: self.domain.clone(),
            recipe: self.recipe.clone(),
            from_version: self.from.clone(),
            to_version: self.to.clone(),
            running_version: self.running.clone().unwrap_or_default(),
            outcome: wire_outcome(self.outcome) as i32,
            severity: match self.severity {
                Severity::Warning => pb::AlertSeverity::Warning,
                Severity::Critical => pb::AlertSeverity::Critical,
            } as i32,
            reason: self.reason.clone(),
            operation_id: self.operation_id.clone(),
            snapshot_path: self
                .snapshot_path
                .as_ref()
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            raised_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(seconds.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            cleared: false,
        }
    }
}

/// The wire outcome of a journal outcome.
pub fn wire_outcome(outcome: Outcome) -> pb::OperationOutcome {
    match outcome {
        Outcome::Succeeded => pb::OperationOutcome::Succeeded,
        Outcome::RolledBack => pb::OperationOutcome::RolledBack,
        Outcome::Held => pb::OperationOutcome::Held,
        Outcome::Failed => pb::OperationOutcome::Failed,
        Outcome::Skipped => pb::OperationOutcome::Skipped,
    }
}

/// The event that clears `domain`'s alert, naming the operation that succeeded.
pub fn cleared_event(domain: &str, recipe: &str, operation_id: &str) -> pb::AlertEvent {
    pb::AlertEvent {
        domain: domain.to_owned(),
        recipe: recipe.to_owned(),
        operation_id: operation_id.to_owned(),
        outcome: pb::OperationOutcome::Succeeded as i32,
        raised_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(journal::now_seconds()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        cleared: true,
        ..Default::default()
    }
}

/// RFC 3339 text of `seconds` since the epoch.
pub fn rfc3339(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
}

/// Writes (replacing) the app's sentinel atomically.
pub fn write(alerts_dir: &Path, alert: &Alert) -> Result<PathBuf, JournalError> {
    std::fs::create_dir_all(alerts_dir).map_err(|source| JournalError::Io {
        action: "cannot create the alerts directory",
        path: alerts_dir.to_owned(),
        source,
    })?;
    let path = Alert::path(alerts_dir, &alert.domain);
    let mut bytes = serde_json::to_vec_pretty(alert).expect("alerts always serialise");
    bytes.push(b'\n');
    ccfleet_proto::fsutil::write_atomic(&path, &bytes, journal::RECORD_MODE).map_err(|source| JournalError::Io {
        action: "cannot write the alert",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Removes the app's sentinel; true when there was one.
pub fn clear(alerts_dir: &Path, domain: &str) -> Result<bool, JournalError> {
    let path = Alert::path(alerts_dir, domain);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(JournalError::Io {
            action: "cannot remove the alert",
            path,
            source,
        }),
    }
}

/// The app's open alert, if any (an unreadable file counts as none, logged).
pub fn read(alerts_dir: &Path, domain: &str) -> Option<Alert> {
    let path = Alert::path(alerts_dir, domain);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(alert) => Some(alert),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "unreadable alert file");
            None
        }
    }
}

/// Seconds since the epoch as the alert's time.
pub fn now() -> String {
    rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_is_written_read_turned_into_an_event_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let alerts = dir.path().join("alerts");
        let alert = Alert {
            domain: "blog.example.org".into(),
            recipe: "ghost".into(),
            from: "1.0.0+5.0".into(),
            to: "1.1.0+5.1".into(),
            running: Some("1.0.0+5.0".into()),
            outcome: Outcome::RolledBack,
            severity: Severity::of(Outcome::RolledBack),
            reason: "1.1.0+5.1 failed its health gate".into(),
            operation_id: "op-1".into(),
            snapshot_path: Some("/var/lib/ccfleet-agent/snapshots/blog.example.org/op-1".into()),
            time: rfc3339(1_700_000_000),
            kind: AlertKind::Upgrade,
        };
        let path = write(&alerts, &alert).unwrap();
        assert_eq!(path, alerts.join("blog.example.org.json"));
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["outcome"], "ROLLED_BACK");
        assert_eq!(json["severity"], "warning");
        assert_eq!(json["time"], "2023-11-14T22:13:20Z");
        assert_eq!(json["kind"], "upgrade");
        assert_eq!(read(&alerts, "blog.example.org"), Some(alert.clone()));
        let event = alert.to_event();
        assert_eq!(event.outcome, pb::OperationOutcome::RolledBack as i32);
        assert_eq!(
            (
                event.from_version.as_str(),
                event.to_version.as_str(),
                event.running_version.as_str()
            ),
            ("1.0.0+5.0", "1.1.0+5.1", "1.0.0+5.0")
        );
        assert_eq!(event.raised_at.unwrap().seconds, 1_700_000_000);
        assert!(!event.cleared);
        assert!(clear(&alerts, "blog.example.org").unwrap());
        assert!(!clear(&alerts, "blog.example.org").unwrap());
        assert_eq!(read(&alerts, "blog.example.org"), None);
        assert_eq!(Severity::of(Outcome::Failed), Severity::Critical);
    }

    #[test]
    fn a_file_written_before_kinds_existed_is_an_upgrades_alert() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"domain": "blog.example.org", "recipe": "ghost", "from": "1.0.0+5.0",
            "to": "1.1.0+5.1", "outcome": "HELD", "severity": "warning", "reason": "major",
            "operation_id": "op-1", "snapshot_path": null, "time": "2023-11-14T22:13:20Z"}"#;
        std::fs::write(dir.path().join("blog.example.org.json"), old).unwrap();
        let alert = read(dir.path(), "blog.example.org").unwrap();
        assert_eq!(alert.kind, AlertKind::Upgrade);
        assert!(!alert.kind.from_reconcile());
        assert!(AlertKind::FirstDeploy.from_reconcile());
    }
}

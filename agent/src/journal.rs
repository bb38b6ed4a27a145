//! The agent's durable local state, `<state_dir>/journal/`: one record per
//! upgrade operation (`ops/`), one record per app (`apps/`: last good version,
//! fleet target, rolled-back targets), the pending-work ledger (`pending/`)
//! and what was inserted of each declared secret (`secrets/`). Every record is replaced atomically (write a temporary file,
//! fsync it, rename it over the old one, fsync the directory), so that after
//! a crash a record is either the old one or the new one, never half of each.
//!
//! The journal only stores and encodes: the records themselves (operations,
//! apps) are `agent::upgrade::model`'s, `agent::upgrade` decides what they
//! mean and writes each step here *before* it performs it. Markers an older
//! agent kept elsewhere move in on open (`journal::legacy`).

mod legacy;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use ccfleet_proto::Domain;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::upgrade::model::{AppRecord, OperationRecord, FORMAT};

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{}: {action}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a journal record of format {FORMAT}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
struct StoredApp {
    format: u32,
    #[serde(flatten)]
    record: AppRecord,
}

/// What the agent inserted of one declared secret: the secret version and
/// the SHA-256 of the file content it was inserted from (never the content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsertedSecret {
    /// `v1`, `v2`, ... (`SECRET_<NAME>_VERSION`).
    pub version: String,
    /// Lowercase hex; `None` when the content is unknown: the secret was set
    /// up before the agent recorded hashes, so the next reconcile inserts the
    /// file as the next version to be sure Docker holds it.
    pub sha256: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredSecrets {
    format: u32,
    secrets: BTreeMap<String, InsertedSecret>,
}

/// Work the agent owes an app across crashes and failures, recorded before
/// the step that creates the debt and removed once it is paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingWork {
    /// The app was created; its secrets are not all inserted yet.
    Secrets,
    /// Owned env keys were (maybe) written; the running stack may not use them yet.
    Redeploy,
}

impl PendingWork {
    fn suffix(self) -> &'static str {
        match self {
            PendingWork::Secrets => "secrets",
            PendingWork::Redeploy => "redeploy",
        }
    }
}

/// The journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal of `<state_dir>/journal`; its directories are created by
    /// the first write (see [`Journal::open`] for the start-up checks).
    pub fn at(state_dir: &Path) -> Journal {
        Journal {
            dir: state_dir.join("journal"),
        }
    }

    /// Opens (creating) `<state_dir>/journal`. Pending-work markers that an
    /// older agent kept under `$ABRA_DIR/.ccfleet-pending/` move here.
    pub fn open(state_dir: &Path, abra_dir: &Path) -> Result<Journal, JournalError> {
        let journal = Journal::at(state_dir);
        for sub in ["ops", "apps", "pending", "secrets"] {
            let path = journal.dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| JournalError::Io {
                action: "cannot create the journal directory",
                path,
                source,
            })?;
        }
        legacy::move_pending_markers(abra_dir, &journal.dir.join("pending"))?;
        Ok(journal)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of operation `id`: the id itself when it is a plain file name,
    /// else its sha256 (ids come from the server and may hold anything).
    pub fn operation_path(&self, id: &str) -> PathBuf {
        let plain = !id.is_empty()
            && id.len() <= 100
            && !id.starts_with('.')
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let name = if plain {
            id.to_owned()
        } else {
            format!("sha256-{}", hex::encode(sha2::Sha256::digest(id.as_bytes())))
        };
        self.dir.join("ops").join(format!("{name}.json"))
    }

    /// Operation `id`, if it was ever journaled.
    pub fn operation(&self, id: &str) -> Result<Option<OperationRecord>, JournalError> {
        let path = self.operation_path(id);
        let Some(record) = read_json::<OperationRecord>(&path)? else {
            return Ok(None);
        };
        check_format(&path, record.format)?;
        Ok(Some(record))
    }

    /// Writes `record` durably (see the module comment).
    pub fn write_operation(&self, record: &OperationRecord) -> Result<(), JournalError> {
        write_json(&self.operation_path(&record.id), record)
    }

    /// Every journaled operation, oldest first.
    pub fn operations(&self) -> Result<Vec<OperationRecord>, JournalError> {
        let dir = self.dir.join("ops");
        let entries = match std::fs::read_dir(&dir) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other,
        };
        let entries = entries.map_err(|source| JournalError::Io {
            action: "cannot list the journal's operations",
            path: dir.clone(),
            source,
        })?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|extension| extension != "json") {
                continue;
            }
            if let Some(record) = read_json::<OperationRecord>(&path)? {
                check_format(&path, record.format)?;
                records.push(record);
            }
        }
        records.sort_by(|left, right| (left.started_at, &left.id).cmp(&(right.started_at, &right.id)));
        Ok(records)
    }

    /// Operations that are not done, or done but whose result was not reported.
    pub fn unfinished(&self) -> Result<Vec<OperationRecord>, JournalError> {
        Ok(self
            .operations()?
            .into_iter()
            .filter(|record| record.result().is_none() || !record.reported)
            .collect())
    }

    /// Removes the oldest finished and reported operations beyond the newest
    /// `keep` of them (unfinished ones always stay); returns how many went.
    /// Their ids are then unknown: a re-delivery that old would run again, so
    /// `keep` is far above what a rollout re-delivers.
    pub fn prune_operations(&self, keep: usize) -> Result<usize, JournalError> {
        let finished: Vec<OperationRecord> = self
            .operations()?
            .into_iter()
            .filter(|record| record.result().is_some() && record.reported)
            .collect();
        let excess = finished.len().saturating_sub(keep);
        for record in finished.iter().take(excess) {
            let path = self.operation_path(&record.id);
            std::fs::remove_file(&path).map_err(|source| JournalError::Io {
                action: "cannot remove an old operation record",
                path,
                source,
            })?;
        }
        if excess > 0 {
            sync_directory(&self.dir.join("ops"))?;
        }
        Ok(excess)
    }

    fn app_path(&self, domain: &Domain) -> PathBuf {
        self.dir.join("apps").join(format!("{domain}.json"))
    }

    /// The app's record; empty when none was written yet.
    pub fn app(&self, domain: &Domain) -> Result<AppRecord, JournalError> {
        let path = self.app_path(domain);
        match read_json::<StoredApp>(&path)? {
            None => Ok(AppRecord::default()),
            Some(stored) => {
                check_format(&path, stored.format)?;
                Ok(stored.record)
            }
        }
    }

    pub fn write_app(&self, domain: &Domain, record: &AppRecord) -> Result<(), JournalError> {
        write_json(
            &self.app_path(domain),
            &StoredApp {
                format: FORMAT,
                record: record.clone(),
            },
        )
    }

    /// Reads, changes and writes the app's record.
    pub fn update_app(&self, domain: &Domain, change: impl FnOnce(&mut AppRecord)) -> Result<AppRecord, JournalError> {
        let mut record = self.app(domain)?;
        change(&mut record);
        self.write_app(domain, &record)?;
        Ok(record)
    }

    fn secrets_path(&self, domain: &Domain) -> PathBuf {
        self.dir.join("secrets").join(format!("{domain}.json"))
    }

    /// What was inserted of each of the app's declared secrets, by name;
    /// empty when nothing was recorded yet.
    pub fn inserted_secrets(&self, domain: &Domain) -> Result<BTreeMap<String, InsertedSecret>, JournalError> {
        let path = self.secrets_path(domain);
        match read_json::<StoredSecrets>(&path)? {
            None => Ok(BTreeMap::new()),
            Some(stored) => {
                check_format(&path, stored.format)?;
                Ok(stored.secrets)
            }
        }
    }

    /// Records (durably) that secret `name` of `domain` is now `inserted`.
    /// Written only once the insert succeeded (or the secret existed).
    pub fn record_inserted_secret(
        &self,
        domain: &Domain,
        name: &str,
        inserted: InsertedSecret,
    ) -> Result<(), JournalError> {
        let mut secrets = self.inserted_secrets(domain)?;
        secrets.insert(name.to_owned(), inserted);
        write_json(
            &self.secrets_path(domain),
            &StoredSecrets {
                format: FORMAT,
                secrets,
            },
        )
    }

    fn pending_path(&self, domain: &Domain, work: PendingWork) -> PathBuf {
        self.dir.join("pending").join(format!("{domain}.{}", work.suffix()))
    }

    /// Whether `work` is still owed to `domain`.
    pub fn is_pending(&self, domain: &Domain, work: PendingWork) -> bool {
        self.pending_path(domain, work).exists()
    }

    /// Records (durably) that `work` is owed to `domain`, or that it is done.
    pub fn set_pending(&self, domain: &Domain, work: PendingWork, owed: bool) -> Result<(), JournalError> {
        let path = self.pending_path(domain, work);
        let io = |source| JournalError::Io {
            action: "cannot record pending work",
            path: path.clone(),
            source,
        };
        if owed {
            if path.exists() {
                return Ok(());
            }
            std::fs::create_dir_all(self.dir.join("pending")).map_err(io)?;
            File::create(&path).and_then(|file| file.sync_all()).map_err(io)?;
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(source) => return Err(io(source)),
            }
        }
        sync_directory(&self.dir.join("pending"))
    }
}

fn check_format(path: &Path, format: u32) -> Result<(), JournalError> {
    if format == FORMAT {
        Ok(())
    } else {
        Err(JournalError::Corrupt {
            path: path.to_owned(),
            reason: format!("format {format}"),
        })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, JournalError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JournalError::Io {
                action: "cannot read a journal record",
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| JournalError::Corrupt {
            path: path.to_owned(),
            reason: error.to_string(),
        })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), JournalError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("journal records always serialise");
    bytes.push(b'\n');
    write_atomically(path, &bytes)
}

/// Replaces `path` with `bytes` atomically and durably: a temporary file in
/// the same directory, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let directory = path.parent().unwrap_or(Path::new("."));
    let io = |action, source| JournalError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(directory).map_err(|source| io("cannot create the directory", source))?;
    ccfleet_proto::fsutil::write_atomic(path, bytes, RECORD_MODE)
        .map_err(|source| io("cannot replace the file", source))
}

/// Journal records and alerts are state, not secrets: owner-writable,
/// world-readable (what the umask gave them before they had an explicit mode).
pub const RECORD_MODE: u32 = 0o644;

pub(crate) fn sync_directory(directory: &Path) -> Result<(), JournalError> {
    File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| JournalError::Io {
            action: "cannot sync the directory",
            path: directory.to_owned(),
            source,
        })
}

/// Seconds since the Unix epoch, now.
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use ccfleet_proto::CoopVersion;

    use super::*;
    use crate::upgrade::model::{Outcome, Phase, RolledBackTarget, Trigger};

    fn version(text: &str) -> CoopVersion {
        text.parse().unwrap()
    }

    fn record(id: &str) -> OperationRecord {
        OperationRecord {
            format: FORMAT,
            id: id.into(),
            domain: "blog.example.org".parse().unwrap(),
            recipe: "ghost".parse().unwrap(),
            trigger: Trigger::FleetUpgrade,
            from: version("1.0.0+5.0"),
            to: version("1.1.0+5.1"),
            stateful: true,
            phase: Phase::Accepted,
            failure: None,
            snapshot: None,
            snapshot_verified: false,
            started_at: 1,
            finished_at: None,
            reported: false,
        }
    }

    #[test]
    fn operations_round_trip_and_unfinished_ones_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), &dir.path().join("abra")).unwrap();
        let mut first = record("op-1");
        journal.write_operation(&first).unwrap();
        assert_eq!(journal.operation("op-1").unwrap(), Some(first.clone()));
        assert_eq!(journal.operation("op-2").unwrap(), None);
        first.phase = Phase::Done {
            outcome: Outcome::Succeeded,
            reason: String::new(),
        };
        first.reported = true;
        journal.write_operation(&first).unwrap();
        let mut second = record("weird id/../x");
        second.started_at = 2;
        journal.write_operation(&second).unwrap();
        let unfinished: Vec<String> = journal.unfinished().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(unfinished, ["weird id/../x"]);
        assert!(journal
            .operation_path("weird id/../x")
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("sha256-"));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(journal.dir().join("ops"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|name| !name.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn old_finished_operations_are_pruned_and_unfinished_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), &dir.path().join("abra")).unwrap();
        for index in 0..5 {
            let mut record = record(&format!("op-{index}"));
            record.started_at = index;
            if index != 1 {
                record.phase = Phase::Done {
                    outcome: Outcome::Succeeded,
                    reason: String::new(),
                };
                record.reported = true;
            }
            journal.write_operation(&record).unwrap();
        }
        assert_eq!(journal.prune_operations(2).unwrap(), 2);
        let left: Vec<String> = journal.operations().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(left, ["op-1", "op-3", "op-4"]);
        assert_eq!(journal.prune_operations(2).unwrap(), 0);
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), &dir.path().join("abra")).unwrap();
        std::fs::write(journal.operation_path("op-1"), b"{\"format\": 1").unwrap();
        let error = journal.operation("op-1").unwrap_err().to_string();
        assert!(error.contains("not a journal record of format 1"), "{error}");
    }

    #[test]
    fn app_records_hold_back_rolled_back_targets_per_declared_version() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), &dir.path().join("abra")).unwrap();
        let domain: Domain = "blog.example.org".parse().unwrap();
        assert_eq!(journal.app(&domain).unwrap(), AppRecord::default());
        let record = journal
            .update_app(&domain, |record| {
                record.rolled_back.push(RolledBackTarget {
                    version: version("1.1.0+5.1"),
                    declared_then: version("1.1.0+5.1"),
                    operation_id: "op-1".into(),
                    reason: "unhealthy".into(),
                    outcome: Outcome::RolledBack,
                })
            })
            .unwrap();
        assert_eq!(journal.app(&domain).unwrap(), record);
        assert!(record
            .holds_back(&version("1.1.0+5.1"), &version("1.1.0+5.1"))
            .is_some());
        assert!(record
            .holds_back(&version("1.1.0+5.1"), &version("1.2.0+5.2"))
            .is_none());
        assert!(record
            .holds_back(&version("1.2.0+5.2"), &version("1.1.0+5.1"))
            .is_none());
    }

    #[test]
    fn inserted_secrets_round_trip_per_app_and_hold_no_value() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), &dir.path().join("abra")).unwrap();
        let domain: Domain = "blog.example.org".parse().unwrap();
        let other: Domain = "wiki.example.org".parse().unwrap();
        assert!(journal.inserted_secrets(&domain).unwrap().is_empty());
        let first = InsertedSecret {
            version: "v1".into(),
            sha256: Some(hex::encode(sha2::Sha256::digest(b"s3cr3t"))),
        };
        journal
            .record_inserted_secret(&domain, "db_password", first.clone())
            .unwrap();
        let unknown = InsertedSecret {
            version: "v3".into(),
            sha256: None,
        };
        journal
            .record_inserted_secret(&domain, "api_key", unknown.clone())
            .unwrap();
        let second = InsertedSecret {
            version: "v2".into(),
            ..first.clone()
        };
        journal
            .record_inserted_secret(&domain, "db_password", second.clone())
            .unwrap();
        let recorded = journal.inserted_secrets(&domain).unwrap();
        assert_eq!(
            recorded.into_iter().collect::<Vec<_>>(),
            [("api_key".to_owned(), unknown), ("db_password".to_owned(), second)]
        );
        assert!(journal.inserted_secrets(&other).unwrap().is_empty());
        let text = std::fs::read_to_string(journal.dir().join("secrets/blog.example.org.json")).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn pending_work_moves_in_from_the_old_place() {
        let dir = tempfile::tempdir().unwrap();
        let abra = dir.path().join("abra");
        std::fs::create_dir_all(abra.join(".ccfleet-pending")).unwrap();
        std::fs::write(abra.join(".ccfleet-pending").join("blog.example.org.secrets"), b"").unwrap();
        let journal = Journal::open(dir.path(), &abra).unwrap();
        let domain: Domain = "blog.example.org".parse().unwrap();
        assert!(journal.is_pending(&domain, PendingWork::Secrets));
        assert!(!journal.is_pending(&domain, PendingWork::Redeploy));
        journal.set_pending(&domain, PendingWork::Redeploy, true).unwrap();
        assert!(journal.is_pending(&domain, PendingWork::Redeploy));
        journal.set_pending(&domain, PendingWork::Secrets, false).unwrap();
        journal.set_pending(&domain, PendingWork::Secrets, false).unwrap();
        assert!(!journal.is_pending(&domain, PendingWork::Secrets));
    }
}

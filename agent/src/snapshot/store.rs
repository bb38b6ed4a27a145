//! `SnapshotStore`: where snapshots live and the operations on them (take,
//! verify, restore, open, list, prune). The tree rules are in `tree.rs`, the
//! file system effects in `copy.rs`.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ccfleet_proto::Domain;

use super::beneath::Beneath;
use super::{
    as_stored_in_copy, check_room, compare, copy, room_needed, tree, walk, EntryKind, Manifest, Snapshot,
    SnapshotError, SnapshotInfo, VolumeManifest, VolumeSource, MANIFEST_FILE, MANIFEST_FORMAT, OLDEST_MANIFEST_FORMAT,
    VERIFIED_FILE, VOLUMES_DIR,
};

/// The snapshots of this host, under `<state_dir>/snapshots`.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    pub fn new(root: PathBuf) -> SnapshotStore {
        SnapshotStore { root }
    }

    /// `<root>/<domain>/<operation_id>`.
    pub fn dir_of(&self, domain: &Domain, operation_id: &str) -> PathBuf {
        self.root.join(domain.as_str()).join(operation_id)
    }

    /// Copies every volume into a new snapshot for `operation_id` and writes
    /// its manifest. Checks free space first.
    ///
    /// Safe to retry after a crash: an incomplete directory for the same
    /// operation (no manifest: the crash came while copying) is removed and
    /// the snapshot taken again. A complete one is returned as it is and never
    /// overwritten, because it may be the only copy of the data from before
    /// the upgrade; verifying it (as the transaction always does) re-walks the
    /// live volumes and says whether they still match.
    pub fn take(
        &self,
        domain: &Domain,
        operation_id: &str,
        volumes: &[VolumeSource],
    ) -> Result<Snapshot, SnapshotError> {
        check_name("operation id", operation_id)?;
        check_volume_list(volumes)?;
        let dir = self.dir_of(domain, operation_id);
        let domain_dir = self.root.join(domain.as_str());
        if let Some(parent) = self.root.parent() {
            std::fs::create_dir_all(parent).map_err(|source| SnapshotError::io("create directory", parent, source))?;
        }
        ensure_private_dir(&self.root)?;
        ensure_private_dir(&domain_dir)?;

        if std::fs::symlink_metadata(&dir).is_ok() {
            ensure_private_dir(&dir)?;
            if let Some(existing) = self.open(domain, operation_id)? {
                return Ok(existing);
            }
            copy::remove_snapshot_dir(&dir)?;
        }

        // A cheap metadata-only pass sizes the copy before anything is
        // written: the blocks files occupy (a sparse file's holes cost
        // nothing, and stay holes in the copy).
        let mut needed_files = 0_u64;
        for volume in volumes {
            for scanned in tree::scan(&Beneath::open(&volume.mountpoint)?)? {
                if scanned.found.is(EntryKind::File) {
                    needed_files = needed_files.saturating_add(scanned.metadata.blocks().saturating_mul(512));
                }
            }
        }
        check_room(room_needed(needed_files), available_bytes(&domain_dir)?)?;

        let taken = self
            .copy_volumes(&dir, volumes)
            .and_then(|manifests| self.write_manifest(domain, operation_id, dir.clone(), manifests));
        match taken {
            Ok(snapshot) => Ok(snapshot),
            Err(error) if error.is_out_of_space() => {
                // A full disk (or quota) is a reason to hold the upgrade, not
                // to fail it: the partial copy goes, so the space comes back.
                copy::remove_snapshot_dir(&dir)?;
                match error {
                    SnapshotError::Io { path, source, .. } => Err(SnapshotError::NoRoomWhileCopying { path, source }),
                    other => Err(other),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Copies every volume into `<dir>/volumes/`, each directory 0700.
    fn copy_volumes(&self, dir: &Path, volumes: &[VolumeSource]) -> Result<Vec<VolumeManifest>, SnapshotError> {
        ensure_private_dir(dir)?;
        let volumes_dir = dir.join(VOLUMES_DIR);
        ensure_private_dir(&volumes_dir)?;
        if let Some(domain_dir) = dir.parent() {
            copy::sync_directory(domain_dir)?;
        }
        let mut manifests = Vec::with_capacity(volumes.len());
        for volume in volumes {
            let (entries, skipped) = copy::copy_tree(&volume.mountpoint, &volumes_dir.join(&volume.name))?;
            manifests.push(VolumeManifest {
                volume: volume.name.clone(),
                entries,
                skipped,
            });
        }
        copy::sync_directory(&volumes_dir)?;
        copy::sync_directory(dir)?;
        Ok(manifests)
    }

    /// Writes the manifest that makes the snapshot in `dir` complete.
    fn write_manifest(
        &self,
        domain: &Domain,
        operation_id: &str,
        dir: PathBuf,
        manifests: Vec<VolumeManifest>,
    ) -> Result<Snapshot, SnapshotError> {
        let total_bytes = manifests
            .iter()
            .flat_map(|volume| &volume.entries)
            .map(|entry| entry.size)
            .sum();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            domain: domain.to_string(),
            operation_id: operation_id.to_owned(),
            created_at_unix_ms: now_unix_ms(),
            volumes: manifests,
            total_bytes,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|error| SnapshotError::Manifest {
            path: dir.join(MANIFEST_FILE),
            detail: error.to_string(),
        })?;
        copy::write_atomically(&dir.join(MANIFEST_FILE), &json)?;
        Ok(Snapshot { dir, manifest })
    }

    /// Checks that the manifest equals both a fresh walk of each live volume
    /// and a fresh walk of its copy (every file re-hashed), and then marks the
    /// snapshot verified. The first difference is reported as
    /// [`SnapshotError::Mismatch`], saying whether the copy or the live volume
    /// differs.
    pub fn verify(&self, snapshot: &Snapshot, volumes: &[VolumeSource]) -> Result<(), SnapshotError> {
        check_volume_list(volumes)?;
        // The marker vouches for the manifest on disk, which is what a
        // restore after a crash will read: it must be the one checked here.
        let manifest_path = snapshot.dir.join(MANIFEST_FILE);
        if read_manifest(&snapshot.dir)?.as_ref() != Some(&snapshot.manifest) {
            return Err(SnapshotError::Manifest {
                path: manifest_path,
                detail: "is missing or differs from the snapshot being verified".to_owned(),
            });
        }
        let pairs = pair_volumes(snapshot, volumes)?;
        for (recorded, source) in pairs {
            let copy_root = snapshot.dir.join(VOLUMES_DIR).join(&recorded.volume);
            // The two walks read different files (often on different disks),
            // and the app is down while they run: do them side by side.
            let (live, copy) = std::thread::scope(|scope| {
                let live = scope.spawn(|| walk(&source.mountpoint));
                let copy = walk(&copy_root);
                let live = live.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (live, copy)
            });
            // The copy holds every mode without setuid and setgid.
            let in_copy = as_stored_in_copy(&recorded.entries);
            for (side, expected, actual) in [("live volume", &recorded.entries, live?), ("copy", &in_copy, copy?)] {
                compare(expected, &actual).map_err(|difference| SnapshotError::Mismatch {
                    volume: recorded.volume.clone(),
                    path: difference.path,
                    detail: format!("in the {side}: {}", difference.detail),
                })?;
            }
        }
        let marker = format!("verified at {} ms since the epoch\n", now_unix_ms());
        copy::write_atomically(&snapshot.dir.join(VERIFIED_FILE), marker.as_bytes())
    }

    /// Makes every live volume match the manifest exactly (entries removed,
    /// recreated, contents, modes and owners set from the copy), then re-walks
    /// it and checks it against the manifest. Refuses a snapshot that did not
    /// verify.
    pub fn restore(&self, snapshot: &Snapshot, volumes: &[VolumeSource]) -> Result<(), SnapshotError> {
        if !self.is_verified(snapshot) {
            return Err(SnapshotError::NotVerified {
                dir: snapshot.dir.clone(),
            });
        }
        check_volume_list(volumes)?;
        for recorded in &snapshot.manifest.volumes {
            check_name("volume name", &recorded.volume)?;
            let source = volumes
                .iter()
                .find(|source| source.name == recorded.volume)
                .ok_or_else(|| SnapshotError::Volumes {
                    volume: recorded.volume.clone(),
                    problem: "is in the snapshot but was not given to restore into",
                })?;
            let copy_root = snapshot.dir.join(VOLUMES_DIR).join(&recorded.volume);
            copy::restore_tree(&source.mountpoint, &copy_root, &recorded.entries)?;
            let actual = walk(&source.mountpoint)?;
            compare(&recorded.entries, &actual).map_err(|difference| SnapshotError::Mismatch {
                volume: recorded.volume.clone(),
                path: difference.path,
                detail: format!("after the restore: {}", difference.detail),
            })?;
        }
        Ok(())
    }

    /// The complete snapshot of `operation_id`, if there is one (after a
    /// crash, the journal knows the operation; this finds its snapshot).
    /// `None` when the directory or its manifest does not exist.
    pub fn open(&self, domain: &Domain, operation_id: &str) -> Result<Option<Snapshot>, SnapshotError> {
        check_name("operation id", operation_id)?;
        let dir = self.dir_of(domain, operation_id);
        let Some(manifest) = read_manifest(&dir)? else {
            return Ok(None);
        };
        if manifest.domain != domain.as_str() || manifest.operation_id != operation_id {
            return Err(SnapshotError::Manifest {
                path: dir.join(MANIFEST_FILE),
                detail: format!(
                    "belongs to {} operation {}, not {domain} operation {operation_id}",
                    manifest.domain, manifest.operation_id
                ),
            });
        }
        Ok(Some(Snapshot { dir, manifest }))
    }

    /// Whether [`SnapshotStore::verify`] succeeded for this snapshot.
    pub fn is_verified(&self, snapshot: &Snapshot) -> bool {
        snapshot.dir.join(VERIFIED_FILE).is_file()
    }

    /// The domain's snapshot directories, newest first (ties by operation
    /// id). A directory whose manifest cannot be read is listed as incomplete.
    pub fn list(&self, domain: &Domain) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        Ok(self.scan_domain(domain)?.into_iter().map(|(info, _)| info).collect())
    }

    /// Keeps the newest `keep` complete snapshots of the domain and every
    /// snapshot whose operation id is in `protect`; deletes the rest and
    /// returns their directories. Incomplete snapshots (no manifest: a crash
    /// while copying) are deleted; one whose manifest exists but cannot be
    /// read is kept and logged, for a person to look at: it may hold the only
    /// copy of some data, and a newer agent's format must survive a downgrade.
    pub fn prune(&self, domain: &Domain, keep: usize, protect: &[&str]) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut kept_complete = 0;
        let mut deleted = Vec::new();
        for (info, unreadable) in self.scan_domain(domain)? {
            if protect.contains(&info.operation_id.as_str()) {
                continue;
            }
            if let Some(error) = unreadable {
                tracing::warn!(snapshot = %info.dir.display(), error = %error, "not pruning a snapshot whose manifest cannot be read");
                continue;
            }
            if info.complete && kept_complete < keep {
                kept_complete += 1;
                continue;
            }
            copy::remove_snapshot_dir(&info.dir)?;
            deleted.push(info.dir);
        }
        Ok(deleted)
    }

    /// Every snapshot directory of the domain, newest first, each with the
    /// error that made its manifest unreadable, if any.
    fn scan_domain(&self, domain: &Domain) -> Result<Vec<(SnapshotInfo, Option<String>)>, SnapshotError> {
        let domain_dir = self.root.join(domain.as_str());
        let reader = match std::fs::read_dir(&domain_dir) {
            Ok(reader) => reader,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SnapshotError::io("read directory", &domain_dir, source)),
        };
        let mut found = Vec::new();
        for item in reader {
            let item = item.map_err(|source| SnapshotError::io("read directory", &domain_dir, source))?;
            let dir = item.path();
            let metadata =
                std::fs::symlink_metadata(&dir).map_err(|source| SnapshotError::io("inspect", &dir, source))?;
            let Some(operation_id) = item.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !metadata.is_dir() || check_name("operation id", &operation_id).is_err() {
                continue;
            }
            let incomplete = |dir| SnapshotInfo {
                dir,
                operation_id: operation_id.clone(),
                created_at_unix_ms: metadata.modified().map(unix_ms).unwrap_or(0),
                total_bytes: 0,
                complete: false,
            };
            found.push(match read_manifest(&dir) {
                Ok(Some(manifest)) => (
                    SnapshotInfo {
                        dir,
                        operation_id: operation_id.clone(),
                        created_at_unix_ms: manifest.created_at_unix_ms,
                        total_bytes: manifest.total_bytes,
                        complete: true,
                    },
                    None,
                ),
                Ok(None) => (incomplete(dir), None),
                Err(error) => (incomplete(dir), Some(ccfleet_proto::error_chain(&error))),
            });
        }
        found.sort_by(|(left, _), (right, _)| {
            right
                .created_at_unix_ms
                .cmp(&left.created_at_unix_ms)
                .then_with(|| right.operation_id.cmp(&left.operation_id))
        });
        Ok(found)
    }
}

/// Pairs each volume of the manifest with its source; both lists must name
/// the same volumes (a volume missing from the snapshot would not be restored).
fn pair_volumes<'a>(
    snapshot: &'a Snapshot,
    volumes: &'a [VolumeSource],
) -> Result<Vec<(&'a VolumeManifest, &'a VolumeSource)>, SnapshotError> {
    for source in volumes {
        if !snapshot
            .manifest
            .volumes
            .iter()
            .any(|recorded| recorded.volume == source.name)
        {
            return Err(SnapshotError::Volumes {
                volume: source.name.clone(),
                problem: "is not in the snapshot",
            });
        }
    }
    snapshot
        .manifest
        .volumes
        .iter()
        .map(|recorded| {
            check_name("volume name", &recorded.volume)?;
            let source = volumes
                .iter()
                .find(|source| source.name == recorded.volume)
                .ok_or_else(|| SnapshotError::Volumes {
                    volume: recorded.volume.clone(),
                    problem: "is in the snapshot but no longer exists",
                })?;
            Ok((recorded, source))
        })
        .collect()
}

/// Checks every volume's name (it becomes a directory name) and that no two
/// volumes share one.
fn check_volume_list(volumes: &[VolumeSource]) -> Result<(), SnapshotError> {
    for (index, volume) in volumes.iter().enumerate() {
        check_name("volume name", &volume.name)?;
        if volumes[..index].iter().any(|earlier| earlier.name == volume.name) {
            return Err(SnapshotError::Volumes {
                volume: volume.name.clone(),
                problem: "is listed twice",
            });
        }
    }
    Ok(())
}

/// A name that becomes one path component: Docker's volume name rule
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), which also fits operation ids.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), SnapshotError> {
    let invalid = |reason| SnapshotError::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    };
    let mut characters = name.chars();
    match characters.next() {
        None => return Err(invalid("is empty")),
        Some(first) if !first.is_ascii_alphanumeric() => return Err(invalid("must start with a letter or digit")),
        Some(_) => {}
    }
    if name.len() > 255 {
        return Err(invalid("is longer than 255 bytes"));
    }
    if !characters.all(|character| character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-')) {
        return Err(invalid("may contain only letters, digits, '_', '.' and '-'"));
    }
    Ok(())
}

/// The manifest in `dir`, `None` when there is none (an incomplete snapshot).
/// Every path in it is checked before anything is joined to it.
pub(super) fn read_manifest(dir: &Path) -> Result<Option<Manifest>, SnapshotError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::io("read", &path, source)),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|error| SnapshotError::Manifest {
        path: path.clone(),
        detail: error.to_string(),
    })?;
    if !(OLDEST_MANIFEST_FORMAT..=MANIFEST_FORMAT).contains(&manifest.format) {
        return Err(SnapshotError::Manifest {
            path,
            detail: format!(
                "format {} is not one of the supported formats {OLDEST_MANIFEST_FORMAT} to {MANIFEST_FORMAT}",
                manifest.format
            ),
        });
    }
    for volume in &manifest.volumes {
        check_name("volume name", &volume.volume)?;
        for entry in &volume.entries {
            tree::check_relative_path(&entry.path)?;
        }
        for skipped in &volume.skipped {
            tree::check_relative_path(&skipped.path)?;
        }
    }
    Ok(Some(manifest))
}

/// Free bytes on the file system of `path`. `f_bavail` (what unprivileged
/// users may use) rather than `f_bfree`: the agent runs as root, but the
/// blocks reserved for root are the host's last resort and should stay free.
pub(super) fn available_bytes(path: &Path) -> Result<u64, SnapshotError> {
    let stats = nix::sys::statvfs::statvfs(path)
        .map_err(|errno| SnapshotError::io("measure free space of", path, std::io::Error::from(errno)))?;
    #[allow(clippy::useless_conversion)] // the libc types differ between targets
    let available = u64::from(stats.blocks_available()).saturating_mul(u64::from(stats.fragment_size()));
    Ok(available)
}

fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What to do with a directory that must be the agent's own and private,
/// given what `lstat` says of it. Pure, so the rule is a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrivateDirStep {
    /// It is as it must be.
    Keep,
    /// Its mode is wider than 0700 (or carries setuid, setgid or sticky):
    /// set 0700.
    Narrow { from: u32 },
    /// It cannot be used; the reason.
    Refuse(String),
}

/// The rule for the state directory and every snapshot directory: a real
/// directory (not a symlink), owned by the agent's user, mode 0700 or
/// narrower. A wider mode is fixed; another owner is refused, since another
/// user could then change what the agent later restores as root.
pub(crate) fn private_dir_step(
    is_dir: bool,
    is_symlink: bool,
    owner: u32,
    mode: u32,
    agent_uid: u32,
) -> PrivateDirStep {
    if is_symlink {
        return PrivateDirStep::Refuse("is a symlink, not a directory; refusing to use it".to_owned());
    }
    if !is_dir {
        return PrivateDirStep::Refuse("is not a directory".to_owned());
    }
    if owner != agent_uid {
        return PrivateDirStep::Refuse(format!(
            "is owned by uid {owner}, not by the agent's uid {agent_uid}; refusing to use it \
             (another user could change what the agent restores as root)"
        ));
    }
    if mode & 0o7077 != 0 {
        return PrivateDirStep::Narrow { from: mode & 0o7777 };
    }
    PrivateDirStep::Keep
}

/// Makes `path` a private directory of the agent's (see
/// [`private_dir_step`]): created 0700 when missing (its parent must exist),
/// narrowed to 0700 when wider (logged), refused otherwise. Returns whether
/// its mode had to be fixed.
pub(crate) fn ensure_private_dir(path: &Path) -> Result<bool, SnapshotError> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(SnapshotError::io("create directory", path, source)),
    }
    let metadata = std::fs::symlink_metadata(path).map_err(|source| SnapshotError::io("inspect", path, source))?;
    let agent_uid = rustix::process::geteuid().as_raw();
    let step = private_dir_step(
        metadata.is_dir(),
        metadata.file_type().is_symlink(),
        metadata.uid(),
        metadata.mode(),
        agent_uid,
    );
    match step {
        PrivateDirStep::Keep => Ok(false),
        PrivateDirStep::Refuse(problem) => Err(SnapshotError::Insecure {
            path: path.to_owned(),
            problem,
        }),
        PrivateDirStep::Narrow { from } => {
            // Through a descriptor of the directory itself, so that what is
            // changed is what was checked.
            let directory = Beneath::open(path)?;
            let file = std::fs::File::from(
                directory
                    .open_dir("")
                    .map_err(|_| SnapshotError::NotADirectory { path: path.to_owned() })?,
            );
            let now = file
                .metadata()
                .map_err(|source| SnapshotError::io("inspect", path, source))?;
            if now.uid() != agent_uid || !now.is_dir() {
                return Err(SnapshotError::Insecure {
                    path: path.to_owned(),
                    problem: "changed while being checked; refusing to use it".to_owned(),
                });
            }
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|source| SnapshotError::io("change mode of", path, source))?;
            tracing::warn!(dir = %path.display(), mode = format!("{from:04o}"), "narrowed a directory of the agent's to 0700");
            Ok(true)
        }
    }
}

/// Checks the agent's state directory at start, creating it when missing:
/// the state directory, `snapshots/`, every `snapshots/<domain>/` and every
/// snapshot directory in them must be the agent's own and 0700 (wider modes
/// are narrowed, another owner or a symlink refused with the reason).
/// Returns the directories whose mode was narrowed.
pub fn secure_state_dir(state_dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    if let Some(parent) = state_dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| SnapshotError::io("create directory", parent, source))?;
    }
    let mut narrowed = Vec::new();
    let mut check = |path: &Path| -> Result<(), SnapshotError> {
        if ensure_private_dir(path)? {
            narrowed.push(path.to_owned());
        }
        Ok(())
    };
    check(state_dir)?;
    let snapshots = state_dir.join("snapshots");
    check(&snapshots)?;
    for domain_dir in subdirectories(&snapshots)? {
        check(&domain_dir)?;
        for snapshot_dir in subdirectories(&domain_dir)? {
            check(&snapshot_dir)?;
        }
    }
    Ok(narrowed)
}

/// The entries of `dir` that are directories or symlinks (a symlink is then
/// refused by the check), sorted.
fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut found = Vec::new();
    let reader = std::fs::read_dir(dir).map_err(|source| SnapshotError::io("read directory", dir, source))?;
    for item in reader {
        let item = item.map_err(|source| SnapshotError::io("read directory", dir, source))?;
        let file_type = item
            .file_type()
            .map_err(|source| SnapshotError::io("inspect", &item.path(), source))?;
        if file_type.is_dir() || file_type.is_symlink() {
            found.push(item.path());
        }
    }
    found.sort();
    Ok(found)
}

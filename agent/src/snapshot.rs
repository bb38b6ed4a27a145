//! Verified copies of an app's Docker volumes, taken before an upgrade and
//! restored when the upgrade is rolled back.
//!
//! A snapshot lives in `<state_dir>/snapshots/<domain>/<operation id>/`:
//! `volumes/<volume name>/` holds a copy of each volume (modes, owners,
//! symlinks and mtimes kept), `manifest.json` lists every entry of every
//! volume as it was read from the live volume (path, kind, mode, owner, size,
//! SHA-256, symlink target), and `verified` marks a snapshot whose copy and
//! live volume were both re-walked and found equal to the manifest. The
//! manifest is written last and atomically, so a snapshot without one is
//! incomplete (a crash while copying) and is never restored from.
//!
//! All of this is blocking `std::fs` code: callers run it on
//! `tokio::task::spawn_blocking`. The stack must be undeployed while a
//! snapshot is taken, verified or restored; nothing here locks the volume.

mod copy;
mod tree;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ccfleet_proto::Domain;
use serde::{Deserialize, Serialize};

pub use tree::{compare, walk, Difference};

/// The manifest format this agent writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
const MANIFEST_FILE: &str = "manifest.json";
const VERIFIED_FILE: &str = "verified";
const VOLUMES_DIR: &str = "volumes";

/// Extra room a snapshot needs beyond the bytes of its files: 5% of them for
/// directories and file system overhead, plus a fixed 16 MiB.
const ROOM_MARGIN_PERCENT: u64 = 5;
const ROOM_MARGIN_FIXED_BYTES: u64 = 16 * 1024 * 1024;

/// A volume of the stack (local driver): its name and its host mount point,
/// `/var/lib/docker/volumes/<name>/_data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSource {
    pub name: String,
    pub mountpoint: PathBuf,
}

/// The kind of a volume entry. Anything else (fifo, socket, device) is
/// refused with [`SnapshotError::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One entry of a volume, as recorded in `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to the volume's root, "/"-separated; "" is the root directory.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of a file; 0 for directories and symlinks.
    pub size: u64,
    /// Lowercase hex SHA-256 of a file's bytes; `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A symlink's target, as stored (never resolved); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The entries of one volume, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeManifest {
    pub volume: String,
    pub entries: Vec<ManifestEntry>,
}

/// `manifest.json`: what the snapshot holds, as read from the live volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] when written by this agent.
    pub format: u32,
    pub domain: String,
    pub operation_id: String,
    pub created_at_unix_ms: u64,
    pub volumes: Vec<VolumeManifest>,
    /// The sum of the sizes of all files.
    pub total_bytes: u64,
}

/// A complete snapshot: its directory and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// A snapshot directory as listed: complete ones carry their manifest's
/// values; an incomplete one (no manifest, a crash while copying) has its
/// directory's mtime and 0 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub dir: PathBuf,
    pub operation_id: String,
    pub created_at_unix_ms: u64,
    pub total_bytes: u64,
    pub complete: bool,
}

/// Errors of snapshots. Messages name the path (and volume) concerned.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {what}, which a snapshot cannot hold")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("invalid path {path:?} in a manifest: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("not enough free space for the snapshot: needs {needed} bytes, {available} available")]
    NoRoom { needed: u64, available: u64 },
    #[error(
        "volume {volume} differs from the snapshot's manifest at {}: {detail}",
        tree::display_path(path)
    )]
    Mismatch {
        volume: String,
        path: String,
        detail: String,
    },
    #[error("volume {volume} {problem}")]
    Volumes { volume: String, problem: &'static str },
    #[error("manifest {path}: {detail}")]
    Manifest { path: PathBuf, detail: String },
    #[error("snapshot {dir} was not verified; refusing to restore from it")]
    NotVerified { dir: PathBuf },
}

impl SnapshotError {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// The bytes a snapshot of `total_bytes` of files needs free: the files plus
/// a 5% and a 16 MiB margin.
pub fn room_needed(total_bytes: u64) -> u64 {
    // Rounded up, so that the margin is never less than 5%.
    let percent_margin = (total_bytes / 100)
        .saturating_mul(ROOM_MARGIN_PERCENT)
        .saturating_add((total_bytes % 100 * ROOM_MARGIN_PERCENT).div_ceil(100));
    total_bytes
        .saturating_add(percent_margin)
        .saturating_add(ROOM_MARGIN_FIXED_BYTES)
}

/// Whether `available` bytes are enough for `needed`. Pure, so the rule is
/// tested without filling a disk.
pub fn check_room(needed: u64, available: u64) -> Result<(), SnapshotError> {
    if needed > available {
        Err(SnapshotError::NoRoom { needed, available })
    } else {
        Ok(())
    }
}

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
    /// its manifest. Checks free space first. An existing directory for the
    /// same operation (a crash during an earlier attempt) is removed and the
    /// snapshot taken again: the transaction only retakes a snapshot while the
    /// app is still undeployed at its old version, so the volumes are the same.
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
        std::fs::create_dir_all(&domain_dir)
            .map_err(|source| SnapshotError::io("create directory", &domain_dir, source))?;

        if tree::lstat(&dir).is_ok() {
            copy::remove_snapshot_dir(&dir)?;
        }

        // A cheap metadata-only pass sizes the copy before anything is written.
        let mut needed_files = 0_u64;
        for volume in volumes {
            for scanned in tree::scan(&volume.mountpoint)? {
                if scanned.kind == EntryKind::File {
                    needed_files = needed_files.saturating_add(std::os::unix::fs::MetadataExt::size(&scanned.metadata));
                }
            }
        }
        check_room(room_needed(needed_files), available_bytes(&domain_dir)?)?;

        let volumes_dir = dir.join(VOLUMES_DIR);
        std::fs::create_dir_all(&volumes_dir)
            .map_err(|source| SnapshotError::io("create directory", &volumes_dir, source))?;
        copy::sync_directory(&domain_dir)?;
        let mut manifests = Vec::with_capacity(volumes.len());
        for volume in volumes {
            let entries = copy::copy_tree(&volume.mountpoint, &volumes_dir.join(&volume.name))?;
            manifests.push(VolumeManifest {
                volume: volume.name.clone(),
                entries,
            });
        }
        copy::sync_directory(&volumes_dir)?;
        copy::sync_directory(&dir)?;

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
        let pairs = pair_volumes(snapshot, volumes)?;
        for (recorded, source) in pairs {
            let copy_root = snapshot.dir.join(VOLUMES_DIR).join(&recorded.volume);
            for (side, root) in [
                ("live volume", source.mountpoint.as_path()),
                ("copy", copy_root.as_path()),
            ] {
                let actual = walk(root)?;
                compare(&recorded.entries, &actual).map_err(|difference| SnapshotError::Mismatch {
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

    /// The domain's snapshot directories, newest first (ties by operation id).
    pub fn list(&self, domain: &Domain) -> Result<Vec<SnapshotInfo>, SnapshotError> {
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
            let metadata = tree::lstat(&dir)?;
            let Some(operation_id) = item.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !metadata.is_dir() || check_name("operation id", &operation_id).is_err() {
                continue;
            }
            let info = match read_manifest(&dir)? {
                Some(manifest) => SnapshotInfo {
                    dir,
                    operation_id,
                    created_at_unix_ms: manifest.created_at_unix_ms,
                    total_bytes: manifest.total_bytes,
                    complete: true,
                },
                None => SnapshotInfo {
                    dir,
                    operation_id,
                    created_at_unix_ms: metadata.modified().map(unix_ms).unwrap_or(0),
                    total_bytes: 0,
                    complete: false,
                },
            };
            found.push(info);
        }
        found.sort_by(|left, right| {
            right
                .created_at_unix_ms
                .cmp(&left.created_at_unix_ms)
                .then_with(|| right.operation_id.cmp(&left.operation_id))
        });
        Ok(found)
    }

    /// Keeps the newest `keep` complete snapshots of the domain and every
    /// snapshot whose operation id is in `protect`; deletes the rest
    /// (incomplete ones included) and returns their directories.
    pub fn prune(&self, domain: &Domain, keep: usize, protect: &[&str]) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut kept_complete = 0;
        let mut deleted = Vec::new();
        for info in self.list(domain)? {
            if protect.contains(&info.operation_id.as_str()) {
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
fn check_name(what: &'static str, name: &str) -> Result<(), SnapshotError> {
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
fn read_manifest(dir: &Path) -> Result<Option<Manifest>, SnapshotError> {
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
    if manifest.format != MANIFEST_FORMAT {
        return Err(SnapshotError::Manifest {
            path,
            detail: format!(
                "format {} is not the supported format {MANIFEST_FORMAT}",
                manifest.format
            ),
        });
    }
    for volume in &manifest.volumes {
        check_name("volume name", &volume.volume)?;
        for entry in &volume.entries {
            tree::check_relative_path(&entry.path)?;
        }
    }
    Ok(Some(manifest))
}

/// Free bytes on the file system of `path`. `f_bavail` (what unprivileged
/// users may use) rather than `f_bfree`: the agent runs as root, but the
/// blocks reserved for root are the host's last resort and should stay free.
fn available_bytes(path: &Path) -> Result<u64, SnapshotError> {
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

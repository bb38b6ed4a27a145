//! Verified copies of an app's Docker volumes, taken before an upgrade and
//! restored when the upgrade is rolled back.
//!
//! A snapshot lives in `<state_dir>/snapshots/<domain>/<operation id>/`:
//! `volumes/<volume name>/` holds a copy of each volume (owners, symlinks,
//! fifos, holes and mtimes kept; modes kept except setuid and setgid),
//! `manifest.json` lists every entry of every volume as it was read from the
//! live volume (path, kind, true mode, owner, size, SHA-256, symlink target)
//! and the sockets it skipped, and `verified` marks a snapshot whose copy and
//! live volume were both re-walked and found equal to the manifest. The
//! manifest is written last and atomically, so a snapshot without one is
//! incomplete (a crash while copying) and is never restored from.
//!
//! The agent runs as root over volume contents that the app (and anyone who
//! can write into the volume) controls. So: the state directory, the
//! snapshots directory and every directory of a snapshot are the agent's own
//! and 0700 ([`secure_state_dir`], checked at start and whenever a snapshot
//! is taken); copies never carry setuid or setgid; and volumes are only ever
//! touched through directory descriptors confined beneath their root
//! (`beneath.rs`). SECURITY.md ("Snapshots") gives the threat model.
//!
//! All of this is blocking code: callers run it on
//! `tokio::task::spawn_blocking`. The stack must be undeployed while a
//! snapshot is taken, verified or restored (the upgrade also checks with
//! Docker that no container mounts the volume); nothing here locks it.

mod beneath;
mod copy;
mod store;
mod tree;

#[cfg(test)]
mod hardening_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use store::check_name;
pub use store::{secure_state_dir, SnapshotStore};
pub use tree::{as_stored_in_copy, compare, walk, walk_volume, Difference};

/// The manifest format this agent writes. Format 2 added fifos and the
/// skipped sockets; this agent also reads format 1.
pub const MANIFEST_FORMAT: u32 = 2;
/// The oldest manifest format this agent reads.
pub const OLDEST_MANIFEST_FORMAT: u32 = 1;
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

/// The kind of a volume entry. Sockets are skipped (and listed as
/// [`SkippedEntry`]); devices are refused with [`SnapshotError::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A named pipe: recorded with its owner and mode, recreated empty.
    Fifo,
}

/// An entry a snapshot deliberately does not hold, and why it can do
/// without: a socket is recreated by the server that listens on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedEntry {
    /// Relative to the volume's root, "/"-separated.
    pub path: String,
    /// What it is: "socket".
    pub what: String,
}

/// One entry of a volume, as recorded in `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to the volume's root, "/"-separated; "" is the root directory.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`),
    /// as in the live volume. The copy in the snapshot has them without
    /// setuid and setgid; a restore gives the live volume this mode.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of a file (its apparent size: holes count); 0 for directories,
    /// symlinks and fifos.
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
    /// Entries left out of the snapshot (sockets), so a reader knows they
    /// existed. Absent in format 1 manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedEntry>,
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
    #[error("no room for the snapshot: needs {needed} bytes, {available} available")]
    NoRoom { needed: u64, available: u64 },
    #[error("no room for the snapshot: {path} filled up while copying (the partial snapshot was removed)")]
    NoRoomWhileCopying {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is no longer {expected}: the tree changed while the agent worked on it")]
    Changed { path: PathBuf, expected: &'static str },
    #[error("{path} {problem}")]
    Insecure { path: PathBuf, problem: String },
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
    /// Whether the snapshot could not be taken for want of space (found
    /// before copying, or the disk or quota filled up while copying): the
    /// upgrade is then held, not failed.
    pub fn is_no_room(&self) -> bool {
        matches!(
            self,
            SnapshotError::NoRoom { .. } | SnapshotError::NoRoomWhileCopying { .. }
        )
    }

    /// Whether this is a write that failed with ENOSPC or EDQUOT.
    fn is_out_of_space(&self) -> bool {
        matches!(self, SnapshotError::Io { source, .. } if beneath::is_out_of_space(source))
    }

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

//! The file system effects of snapshots: copying a volume into a snapshot,
//! restoring a volume from one, and the durable-write helpers both need.
//!
//! Metadata is applied in the order the kernel requires: owner before mode
//! (`chown` clears setuid and setgid), and a directory's own owner, mode and
//! mtime only after its children are in place (children change its mtime,
//! and a read-only directory could not receive them otherwise).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::tree::{self, Content, Scanned};
use super::{EntryKind, ManifestEntry, SnapshotError};

/// Copies the tree at `source` into `destination` (which must not exist yet)
/// and returns the manifest of what it read from `source`. Every copied file
/// and directory is fsynced.
pub(crate) fn copy_tree(source: &Path, destination: &Path) -> Result<Vec<ManifestEntry>, SnapshotError> {
    let scanned = tree::scan(source)?;
    let mut entries = Vec::with_capacity(scanned.len());
    for Scanned { path, kind, metadata } in scanned {
        let from = tree::join_relative(source, &path);
        let to = tree::join_relative(destination, &path);
        let content = match kind {
            EntryKind::Dir => {
                std::fs::create_dir(&to).map_err(|source| SnapshotError::io("create directory", &to, source))?;
                Content::Dir
            }
            EntryKind::File => {
                let mut file = create_new(&to)?;
                let (size, sha256) = tree::hash_file(&from, &mut file)?;
                finish_file(&to, file, metadata.modified().ok())?;
                Content::File { size, sha256 }
            }
            EntryKind::Symlink => {
                let target = tree::read_link_text(&from)?;
                std::os::unix::fs::symlink(&target, &to)
                    .map_err(|source| SnapshotError::io("create symlink", &to, source))?;
                Content::Symlink { target }
            }
        };
        let entry = tree::entry(path, &metadata, content);
        if entry.kind != EntryKind::Dir {
            apply_metadata(&to, &entry, metadata.modified().ok())?;
        }
        entries.push(entry);
    }
    finish_directories(destination, &entries, |path| {
        tree::lstat(&tree::join_relative(source, path))
            .ok()
            .and_then(|metadata| metadata.modified().ok())
    })?;
    Ok(entries)
}

/// Makes the tree at `live` match `manifest` exactly, taking file contents
/// from the snapshot copy at `copy`: entries not in the manifest (or of
/// another kind) are removed, missing or different ones recreated, and every
/// entry's owner and mode set. The caller re-walks `live` afterwards to check.
pub(crate) fn restore_tree(live: &Path, copy: &Path, manifest: &[ManifestEntry]) -> Result<(), SnapshotError> {
    for entry in manifest {
        tree::check_relative_path(&entry.path)?;
    }
    let wanted: BTreeMap<&str, &ManifestEntry> = manifest.iter().map(|entry| (entry.path.as_str(), entry)).collect();
    if wanted.get("").map(|root| root.kind) != Some(EntryKind::Dir) {
        return Err(SnapshotError::Manifest {
            path: copy.to_owned(),
            detail: "the volume's root entry is missing or not a directory".to_owned(),
        });
    }

    // Remove what must go, deepest first (reverse path order puts "a/b"
    // before "a"), so a directory is empty by the time it is removed.
    let present = tree::scan(live)?;
    for scanned in present.iter().rev() {
        let keep = wanted
            .get(scanned.path.as_str())
            .is_some_and(|entry| entry.kind == scanned.kind);
        if !keep {
            remove_entry(&tree::join_relative(live, &scanned.path), scanned.kind)?;
        }
    }
    let present: BTreeMap<&str, EntryKind> = present
        .iter()
        .filter(|scanned| {
            wanted
                .get(scanned.path.as_str())
                .is_some_and(|entry| entry.kind == scanned.kind)
        })
        .map(|scanned| (scanned.path.as_str(), scanned.kind))
        .collect();

    // Recreate in path order, so parents exist before their children. Files
    // are always rewritten from the copy: comparing first would read the
    // live file in full anyway, and a fresh file also cuts any hard link the
    // new version may have made to it.
    for entry in manifest {
        let to = tree::join_relative(live, &entry.path);
        let from = tree::join_relative(copy, &entry.path);
        let exists = present.contains_key(entry.path.as_str());
        match entry.kind {
            EntryKind::Dir => {
                if !exists {
                    std::fs::create_dir(&to).map_err(|source| SnapshotError::io("create directory", &to, source))?;
                }
            }
            EntryKind::File => {
                if exists {
                    remove_entry(&to, EntryKind::File)?;
                }
                let mut file = create_new(&to)?;
                tree::hash_file(&from, &mut file)?;
                let modified = tree::lstat(&from).ok().and_then(|metadata| metadata.modified().ok());
                finish_file(&to, file, modified)?;
                apply_metadata(&to, entry, None)?;
            }
            EntryKind::Symlink => {
                let target = entry.target.as_deref().unwrap_or_default();
                let same = exists && tree::read_link_text(&to).is_ok_and(|current| current == target);
                if !same {
                    if exists {
                        remove_entry(&to, EntryKind::Symlink)?;
                    }
                    std::os::unix::fs::symlink(target, &to)
                        .map_err(|source| SnapshotError::io("create symlink", &to, source))?;
                }
                apply_metadata(&to, entry, None)?;
            }
        }
    }
    finish_directories(live, manifest, |path| {
        tree::lstat(&tree::join_relative(copy, path))
            .ok()
            .and_then(|metadata| metadata.modified().ok())
    })
}

/// Sets owner, then mode (and, for files and directories, the modification
/// time when known) of the entry at `path`. Symlinks get `lchown` only: Linux
/// has no symlink modes.
fn apply_metadata(
    path: &Path,
    entry: &ManifestEntry,
    modified: Option<std::time::SystemTime>,
) -> Result<(), SnapshotError> {
    match entry.kind {
        EntryKind::Symlink => std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid))
            .map_err(|source| SnapshotError::io("change owner of", path, source)),
        EntryKind::File | EntryKind::Dir => {
            std::os::unix::fs::chown(path, Some(entry.uid), Some(entry.gid))
                .map_err(|source| SnapshotError::io("change owner of", path, source))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(entry.mode))
                .map_err(|source| SnapshotError::io("change mode of", path, source))?;
            if let Some(modified) = modified {
                // Best effort: the manifest does not record times, and an
                // app does not fail because a directory's mtime is off.
                if let Ok(file) = tree::open_no_follow(path) {
                    let _ = file.set_modified(modified);
                }
            }
            Ok(())
        }
    }
}

/// Applies every directory's owner, mode and mtime, deepest first, and
/// fsyncs it, so that its entries are durable too.
fn finish_directories(
    root: &Path,
    entries: &[ManifestEntry],
    modified_of: impl Fn(&str) -> Option<std::time::SystemTime>,
) -> Result<(), SnapshotError> {
    for entry in entries.iter().rev().filter(|entry| entry.kind == EntryKind::Dir) {
        let path = tree::join_relative(root, &entry.path);
        apply_metadata(&path, entry, modified_of(&entry.path))?;
        sync_directory(&path)?;
    }
    Ok(())
}

/// Creates a new file for writing; fails if anything exists at `path`.
fn create_new(path: &Path) -> Result<File, SnapshotError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| SnapshotError::io("create", path, source))
}

/// Flushes a freshly written file to disk and sets its mtime.
fn finish_file(path: &Path, mut file: File, modified: Option<std::time::SystemTime>) -> Result<(), SnapshotError> {
    file.flush()
        .map_err(|source| SnapshotError::io("write", path, source))?;
    if let Some(modified) = modified {
        file.set_modified(modified)
            .map_err(|source| SnapshotError::io("set the modification time of", path, source))?;
    }
    file.sync_all()
        .map_err(|source| SnapshotError::io("sync", path, source))
}

fn remove_entry(path: &Path, kind: EntryKind) -> Result<(), SnapshotError> {
    let result = match kind {
        // remove_dir_all does not follow symlinks inside the tree.
        EntryKind::Dir => std::fs::remove_dir_all(path),
        EntryKind::File | EntryKind::Symlink => std::fs::remove_file(path),
    };
    result.map_err(|source| SnapshotError::io("remove", path, source))
}

/// fsyncs a directory, making the creation, removal and renaming of its
/// entries durable.
pub(crate) fn sync_directory(path: &Path) -> Result<(), SnapshotError> {
    File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| SnapshotError::io("sync directory", path, source))
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the
/// same directory, fsynced, renamed over `path`, and the directory fsynced.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let directory = path.parent().unwrap_or_else(|| Path::new("."));
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|source| SnapshotError::io("create", &temporary, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| SnapshotError::io("write", &temporary, source))?;
    std::fs::rename(&temporary, path).map_err(|source| SnapshotError::io("rename", &temporary, source))?;
    sync_directory(directory)
}

/// Removes a snapshot directory so that a crash half way leaves something
/// [`super::SnapshotStore::open`] calls incomplete, never a manifest over
/// missing files: the manifest and the verified marker go first (durably),
/// then the copies.
pub(crate) fn remove_snapshot_dir(dir: &Path) -> Result<(), SnapshotError> {
    for name in [super::VERIFIED_FILE, super::MANIFEST_FILE] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SnapshotError::io("remove", &path, source)),
        }
    }
    sync_directory(dir)?;
    // Copies keep their volumes' modes, so a directory may be read-only:
    // root removes it anyway, which is how the agent runs.
    std::fs::remove_dir_all(dir).map_err(|source| SnapshotError::io("remove", dir, source))?;
    if let Some(parent) = dir.parent() {
        sync_directory(parent)?;
    }
    Ok(())
}

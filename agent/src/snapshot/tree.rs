//! Walking a directory tree into manifest entries, and comparing two manifests.
//!
//! The walk is the single definition of "what a volume contains": `take` builds
//! the manifest with the same entry rules while it copies, and `verify` and
//! `restore` re-walk with [`walk`] and [`compare`]. It never follows a symlink
//! (every entry is `lstat`ed, only real directories are descended into, files
//! are opened with `O_NOFOLLOW`), so a volume can never lead the agent to read
//! or write outside itself.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{EntryKind, ManifestEntry, SnapshotError};

/// The size of the buffer files are read and copied with.
const BUFFER_BYTES: usize = 256 * 1024;

/// The permission bits a manifest records: rwx for all three classes plus
/// setuid, setgid and sticky. The file type bits are recorded as [`EntryKind`].
pub(crate) const MODE_BITS: u32 = 0o7777;

/// The manifest of the directory tree at `root`, sorted by path. The root
/// itself is the entry with the empty path. Never follows symlinks; any entry
/// that is not a regular file, a directory or a symlink is refused with
/// [`SnapshotError::Unsupported`].
pub fn walk(root: &Path) -> Result<Vec<ManifestEntry>, SnapshotError> {
    scan(root)?
        .into_iter()
        .map(|scanned| {
            let full = join_relative(root, &scanned.path);
            let content = match scanned.kind {
                EntryKind::File => {
                    let (size, sha256) = hash_file(&full, &mut std::io::sink())?;
                    Content::File { size, sha256 }
                }
                EntryKind::Symlink => Content::Symlink {
                    target: read_link_text(&full)?,
                },
                EntryKind::Dir => Content::Dir,
            };
            Ok(entry(scanned.path, &scanned.metadata, content))
        })
        .collect()
}

/// One entry found by [`scan`]: its relative path, kind and `lstat` metadata.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub path: String,
    pub kind: EntryKind,
    pub metadata: Metadata,
}

/// Every entry under `root` (the root included, as ""), sorted by path, with
/// its `lstat` metadata only: no contents are read. The root must be a real
/// directory, not a symlink to one.
pub(crate) fn scan(root: &Path) -> Result<Vec<Scanned>, SnapshotError> {
    let metadata = lstat(root)?;
    if kind_of(root, &metadata)? != EntryKind::Dir {
        return Err(SnapshotError::NotADirectory { path: root.to_owned() });
    }
    let mut found = vec![Scanned {
        path: String::new(),
        kind: EntryKind::Dir,
        metadata,
    }];
    // An explicit stack rather than recursion: deep trees cannot exhaust the
    // (small) stack of a blocking-pool thread.
    let mut pending = vec![String::new()];
    while let Some(directory) = pending.pop() {
        let full = join_relative(root, &directory);
        let reader = std::fs::read_dir(&full).map_err(|source| SnapshotError::io("read directory", &full, source))?;
        for item in reader {
            let item = item.map_err(|source| SnapshotError::io("read directory", &full, source))?;
            let name = item.file_name();
            let name = name.to_str().ok_or_else(|| SnapshotError::Unsupported {
                path: item.path(),
                what: "a file name that is not UTF-8".to_owned(),
            })?;
            let path = if directory.is_empty() {
                name.to_owned()
            } else {
                format!("{directory}/{name}")
            };
            let full_item = item.path();
            let metadata = lstat(&full_item)?;
            let kind = kind_of(&full_item, &metadata)?;
            if kind == EntryKind::Dir {
                pending.push(path.clone());
            }
            found.push(Scanned { path, kind, metadata });
        }
    }
    found.sort_by(|left, right| left.path.cmp(&right.path));
    Ok(found)
}

/// What an entry holds besides its metadata.
pub(crate) enum Content {
    Dir,
    File { size: u64, sha256: String },
    Symlink { target: String },
}

/// The manifest entry for `path` with `metadata` and `content`. Directories
/// and symlinks record size 0: a directory's size depends on the file system
/// and its history, a symlink is described by its target.
pub(crate) fn entry(path: String, metadata: &Metadata, content: Content) -> ManifestEntry {
    let (kind, size, sha256, target) = match content {
        Content::Dir => (EntryKind::Dir, 0, None, None),
        Content::File { size, sha256 } => (EntryKind::File, size, Some(sha256), None),
        Content::Symlink { target } => (EntryKind::Symlink, 0, None, Some(target)),
    };
    ManifestEntry {
        path,
        kind,
        mode: metadata.mode() & MODE_BITS,
        uid: metadata.uid(),
        gid: metadata.gid(),
        size,
        sha256,
        target,
    }
}

/// Reads the regular file at `path` (never through a symlink), writing every
/// byte to `copy` as well, and returns the number of bytes and their hex
/// SHA-256. Reading and copying in one pass means the manifest describes
/// exactly the bytes that went into the copy.
pub(crate) fn hash_file(path: &Path, copy: &mut dyn Write) -> Result<(u64, String), SnapshotError> {
    let mut file = open_no_follow(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; BUFFER_BYTES];
    let mut size = 0_u64;
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|source| SnapshotError::io("read", path, source))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        copy.write_all(&buffer[..read])
            .map_err(|source| SnapshotError::io("copy", path, source))?;
        size += read as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Opens a regular file for reading, refusing a symlink in its last component.
pub(crate) fn open_no_follow(path: &Path) -> Result<File, SnapshotError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| SnapshotError::io("open", path, source))
}

/// A symlink's target as text (targets that are not UTF-8 are refused).
pub(crate) fn read_link_text(path: &Path) -> Result<String, SnapshotError> {
    let target = std::fs::read_link(path).map_err(|source| SnapshotError::io("read symlink", path, source))?;
    target
        .into_os_string()
        .into_string()
        .map_err(|_| SnapshotError::Unsupported {
            path: path.to_owned(),
            what: "a symlink target that is not UTF-8".to_owned(),
        })
}

pub(crate) fn lstat(path: &Path) -> Result<Metadata, SnapshotError> {
    std::fs::symlink_metadata(path).map_err(|source| SnapshotError::io("inspect", path, source))
}

/// The kind of the entry at `path`, or [`SnapshotError::Unsupported`].
pub(crate) fn kind_of(path: &Path, metadata: &Metadata) -> Result<EntryKind, SnapshotError> {
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        Ok(EntryKind::Symlink)
    } else if file_type.is_dir() {
        Ok(EntryKind::Dir)
    } else if file_type.is_file() {
        Ok(EntryKind::File)
    } else {
        use std::os::unix::fs::FileTypeExt;
        let what = if file_type.is_fifo() {
            "a fifo"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_char_device() {
            "a character device"
        } else {
            "an unknown file type"
        };
        Err(SnapshotError::Unsupported {
            path: path.to_owned(),
            what: what.to_owned(),
        })
    }
}

/// `root` joined with a manifest path ("" is the root itself).
pub(crate) fn join_relative(root: &Path, relative: &str) -> PathBuf {
    if relative.is_empty() {
        root.to_owned()
    } else {
        root.join(relative)
    }
}

/// Checks that a manifest path is relative, "/"-separated and stays inside
/// its volume: no empty, "." or ".." components, no leading "/", no NUL. A
/// manifest is read back from disk, so its paths are checked before any of
/// them is joined to a volume's mount point.
pub(crate) fn check_relative_path(path: &str) -> Result<(), SnapshotError> {
    if path.is_empty() {
        return Ok(());
    }
    let invalid = |reason: &str| SnapshotError::InvalidPath {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    for component in path.split('/') {
        match component {
            "" => return Err(invalid("has an empty component or a leading or trailing '/'")),
            "." | ".." => return Err(invalid("has a '.' or '..' component")),
            _ => {}
        }
    }
    Ok(())
}

/// The first difference between two manifests: the path where they differ
/// and what differs there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The entry's relative path; "" is the volume's root directory.
    pub path: String,
    /// What differs, e.g. "missing (expected a file)" or "mode: expected 0644, found 0600".
    pub detail: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", display_path(&self.path), self.detail)
    }
}

/// How a manifest path is shown in messages: the root as ".", others as they are.
pub(crate) fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "."
    } else {
        path
    }
}

/// Compares two manifests entry by entry and reports the first difference in
/// path order: a missing or extra entry, then kind, mode, owner, size, sha256
/// and symlink target. Pure; neither input has to be sorted.
pub fn compare(expected: &[ManifestEntry], actual: &[ManifestEntry]) -> Result<(), Difference> {
    let expected: BTreeMap<&str, &ManifestEntry> = expected.iter().map(|entry| (entry.path.as_str(), entry)).collect();
    let actual: BTreeMap<&str, &ManifestEntry> = actual.iter().map(|entry| (entry.path.as_str(), entry)).collect();
    let mut paths: Vec<&str> = expected.keys().chain(actual.keys()).copied().collect();
    paths.sort_unstable();
    paths.dedup();
    for path in paths {
        let difference = |detail: String| Difference {
            path: path.to_owned(),
            detail,
        };
        match (expected.get(path), actual.get(path)) {
            (Some(want), None) => return Err(difference(format!("missing (expected {})", want.kind.article()))),
            (None, Some(found)) => return Err(difference(format!("unexpected {}", found.kind.noun()))),
            (Some(want), Some(found)) => {
                if let Some(detail) = entry_difference(want, found) {
                    return Err(difference(detail));
                }
            }
            (None, None) => unreachable!("every path comes from one of the two manifests"),
        }
    }
    Ok(())
}

/// What differs between two entries at the same path, if anything.
fn entry_difference(want: &ManifestEntry, found: &ManifestEntry) -> Option<String> {
    if want.kind != found.kind {
        return Some(format!(
            "kind: expected {}, found {}",
            want.kind.article(),
            found.kind.article()
        ));
    }
    if want.mode != found.mode {
        return Some(format!("mode: expected {:04o}, found {:04o}", want.mode, found.mode));
    }
    if (want.uid, want.gid) != (found.uid, found.gid) {
        return Some(format!(
            "owner: expected {}:{}, found {}:{}",
            want.uid, want.gid, found.uid, found.gid
        ));
    }
    if want.size != found.size {
        return Some(format!("size: expected {} bytes, found {}", want.size, found.size));
    }
    if want.sha256 != found.sha256 {
        return Some(format!(
            "sha256: expected {}, found {}",
            want.sha256.as_deref().unwrap_or("none"),
            found.sha256.as_deref().unwrap_or("none")
        ));
    }
    if want.target != found.target {
        return Some(format!(
            "symlink target: expected {:?}, found {:?}",
            want.target.as_deref().unwrap_or(""),
            found.target.as_deref().unwrap_or("")
        ));
    }
    None
}

impl EntryKind {
    fn noun(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink => "symlink",
        }
    }

    fn article(self) -> &'static str {
        match self {
            EntryKind::File => "a file",
            EntryKind::Dir => "a directory",
            EntryKind::Symlink => "a symlink",
        }
    }
}

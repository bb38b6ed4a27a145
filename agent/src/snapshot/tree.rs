//! Walking a directory tree into manifest entries, and comparing two manifests.
//!
//! The walk is the single definition of "what a volume contains": `take` builds
//! the manifest with the same entry rules while it copies, and `verify` and
//! `restore` re-walk with [`walk`] and [`compare`]. Every call goes through
//! [`Beneath`] (directory descriptors, `openat2` confined to the tree, never
//! through a symlink), so a volume can never lead the agent to read or write
//! outside itself, even while it changes. Files are read hole by hole
//! (`SEEK_DATA`/`SEEK_HOLE`), so a sparse file is hashed without reading its
//! holes from disk and copied without filling them.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::SeekFrom;
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::beneath::Beneath;
use super::{EntryKind, ManifestEntry, SkippedEntry, SnapshotError};

/// The size of the buffer files are read and copied with.
const BUFFER_BYTES: usize = 256 * 1024;

/// Zeros hashed in place of a hole.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The permission bits a manifest records: rwx for all three classes plus
/// setuid, setgid and sticky. The file type bits are recorded as [`EntryKind`].
pub(crate) const MODE_BITS: u32 = 0o7777;

/// The bits a copy inside a snapshot never carries: setuid and setgid. The
/// manifest keeps the true mode, which a restore gives back to the live
/// volume; the copy itself must not be a way to run something as its owner.
pub(crate) const PRIVILEGE_BITS: u32 = 0o6000;

/// The mode a copy inside a snapshot has for an entry whose true mode is `mode`.
pub(crate) fn copy_mode(mode: u32) -> u32 {
    mode & MODE_BITS & !PRIVILEGE_BITS
}

/// The manifest entries as the copy inside a snapshot holds them (modes
/// without setuid and setgid). Pure; what `verify` compares the copy with.
pub fn as_stored_in_copy(entries: &[ManifestEntry]) -> Vec<ManifestEntry> {
    entries
        .iter()
        .map(|entry| ManifestEntry {
            mode: copy_mode(entry.mode),
            ..entry.clone()
        })
        .collect()
}

/// The manifest of the directory tree at `root`, sorted by path. The root
/// itself is the entry with the empty path. Never follows symlinks; sockets
/// are left out (see [`walk_volume`]); a device is refused with
/// [`SnapshotError::Unsupported`].
pub fn walk(root: &Path) -> Result<Vec<ManifestEntry>, SnapshotError> {
    walk_volume(root).map(|(entries, _skipped)| entries)
}

/// [`walk`], also returning the sockets it left out: a socket is an
/// endpoint its server creates when it starts, not data, and it cannot be
/// copied.
pub fn walk_volume(root: &Path) -> Result<(Vec<ManifestEntry>, Vec<SkippedEntry>), SnapshotError> {
    let tree = Beneath::open(root)?;
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    for scanned in scan(&tree)? {
        let kind = match scanned.found.recorded(&tree, &scanned.path)? {
            Recorded::Entry(kind) => kind,
            Recorded::Skipped(skip) => {
                skipped.push(skip);
                continue;
            }
        };
        let content = match kind {
            EntryKind::File => {
                let file = tree.open_file(&scanned.path)?;
                let (size, sha256) = read_sparse(&file, None, &tree.path_of(&scanned.path), Path::new(""))?;
                Content::File { size, sha256 }
            }
            EntryKind::Symlink => Content::Symlink {
                target: tree.read_link(&scanned.path)?,
            },
            EntryKind::Dir => Content::Dir,
            EntryKind::Fifo => Content::Fifo,
        };
        entries.push(entry(scanned.path, &scanned.metadata, content));
    }
    Ok((entries, skipped))
}

/// What [`scan`] found at a path: an entry a manifest can hold, or another
/// kind of file, named for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Entry(EntryKind),
    Socket,
    /// A block or character device, or an unknown type: "a block device".
    Other(&'static str),
}

/// How a found entry goes into a manifest.
pub(crate) enum Recorded {
    Entry(EntryKind),
    Skipped(SkippedEntry),
}

impl Found {
    fn of(metadata: &Metadata) -> Found {
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            Found::Entry(EntryKind::Symlink)
        } else if file_type.is_dir() {
            Found::Entry(EntryKind::Dir)
        } else if file_type.is_file() {
            Found::Entry(EntryKind::File)
        } else if file_type.is_fifo() {
            Found::Entry(EntryKind::Fifo)
        } else if file_type.is_socket() {
            Found::Socket
        } else if file_type.is_block_device() {
            Found::Other("a block device")
        } else if file_type.is_char_device() {
            Found::Other("a character device")
        } else {
            Found::Other("an unknown file type")
        }
    }

    /// The manifest's treatment of this entry: recorded, skipped (sockets)
    /// or refused (devices: nothing in an app's volume should be one, and
    /// recreating one would hand out access to hardware).
    pub(crate) fn recorded(self, tree: &Beneath, path: &str) -> Result<Recorded, SnapshotError> {
        match self {
            Found::Entry(kind) => Ok(Recorded::Entry(kind)),
            Found::Socket => Ok(Recorded::Skipped(SkippedEntry {
                path: path.to_owned(),
                what: "socket".to_owned(),
            })),
            Found::Other(what) => Err(SnapshotError::Unsupported {
                path: tree.path_of(path),
                what: what.to_owned(),
            }),
        }
    }

    /// Whether this is the entry kind `kind`.
    pub(crate) fn is(self, kind: EntryKind) -> bool {
        self == Found::Entry(kind)
    }
}

/// One entry found by [`scan`]: its relative path, what it is and its
/// `lstat` metadata.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub path: String,
    pub found: Found,
    pub metadata: Metadata,
}

/// Every entry of the tree (the root included, as ""), of any type, sorted
/// by path, with its `lstat` metadata only: no contents are read. The root
/// must be a real directory, not a symlink to one.
pub(crate) fn scan(tree: &Beneath) -> Result<Vec<Scanned>, SnapshotError> {
    let metadata = tree.metadata("")?;
    if !metadata.is_dir() {
        return Err(SnapshotError::NotADirectory { path: tree.path_of("") });
    }
    let mut found = vec![Scanned {
        path: String::new(),
        found: Found::Entry(EntryKind::Dir),
        metadata,
    }];
    // An explicit stack of paths (not of descriptors, which a wide tree
    // would exhaust) rather than recursion: deep trees cannot exhaust the
    // (small) stack of a blocking-pool thread.
    let mut pending = vec![String::new()];
    while let Some(directory) = pending.pop() {
        for (name, metadata) in tree.list(&directory)? {
            let path = if directory.is_empty() {
                name
            } else {
                format!("{directory}/{name}")
            };
            let kind = Found::of(&metadata);
            if kind == Found::Entry(EntryKind::Dir) {
                pending.push(path.clone());
            }
            found.push(Scanned {
                path,
                found: kind,
                metadata,
            });
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
    Fifo,
}

/// The manifest entry for `path` with `metadata` and `content`. Directories,
/// symlinks and fifos record size 0: a directory's size depends on the file
/// system and its history, a symlink is described by its target.
pub(crate) fn entry(path: String, metadata: &Metadata, content: Content) -> ManifestEntry {
    let (kind, size, sha256, target) = match content {
        Content::Dir => (EntryKind::Dir, 0, None, None),
        Content::File { size, sha256 } => (EntryKind::File, size, Some(sha256), None),
        Content::Symlink { target } => (EntryKind::Symlink, 0, None, Some(target)),
        Content::Fifo => (EntryKind::Fifo, 0, None, None),
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

/// Reads the regular file `from` to its end, hashing every byte, and, when
/// `to` is given, writes each data range to the same offset of `to` and
/// gives it the same length, so holes stay holes. Returns the number of
/// bytes and their hex SHA-256 (a hole hashes as the zeros it reads as).
/// `from_path` and `to_path` name the files in messages.
pub(crate) fn read_sparse(
    from: &File,
    to: Option<&File>,
    from_path: &Path,
    to_path: &Path,
) -> Result<(u64, String), SnapshotError> {
    let read_error = |source| SnapshotError::io("read", from_path, source);
    let length = from.metadata().map_err(read_error)?.len();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; BUFFER_BYTES];
    let mut offset = 0_u64;
    'ranges: while offset < length {
        // The next data range; a file system without SEEK_DATA (EINVAL) is
        // read as one range.
        let data = match rustix::fs::seek(from, SeekFrom::Data(offset)) {
            Ok(data) => data.min(length),
            Err(Errno::NXIO) => length,
            Err(Errno::INVAL) => offset,
            Err(errno) => return Err(read_error(errno.into())),
        };
        hash_zeros(&mut hasher, data - offset);
        offset = data;
        if offset >= length {
            break;
        }
        let hole = match rustix::fs::seek(from, SeekFrom::Hole(offset)) {
            Ok(hole) => hole.min(length),
            Err(Errno::NXIO | Errno::INVAL) => length,
            Err(errno) => return Err(read_error(errno.into())),
        };
        while offset < hole {
            let wanted = usize::try_from(hole - offset).unwrap_or(usize::MAX).min(buffer.len());
            let read = from.read_at(&mut buffer[..wanted], offset).map_err(read_error)?;
            if read == 0 {
                // The file shrank while being read: what was read is what
                // the manifest says, and the verification compares again.
                break 'ranges;
            }
            hasher.update(&buffer[..read]);
            if let Some(to) = to {
                to.write_all_at(&buffer[..read], offset)
                    .map_err(|source| SnapshotError::io("write", to_path, source))?;
            }
            offset += read as u64;
        }
    }
    if let Some(to) = to {
        to.set_len(offset)
            .map_err(|source| SnapshotError::io("write", to_path, source))?;
    }
    Ok((offset, hex::encode(hasher.finalize())))
}

fn hash_zeros(hasher: &mut Sha256, mut count: u64) {
    while count > 0 {
        let chunk = usize::try_from(count).unwrap_or(usize::MAX).min(ZEROS.len());
        hasher.update(&ZEROS[..chunk]);
        count -= chunk as u64;
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
            EntryKind::Fifo => "fifo",
        }
    }

    fn article(self) -> &'static str {
        match self {
            EntryKind::File => "a file",
            EntryKind::Dir => "a directory",
            EntryKind::Symlink => "a symlink",
            EntryKind::Fifo => "a fifo",
        }
    }
}

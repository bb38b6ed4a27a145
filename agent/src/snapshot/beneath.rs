//! File system calls confined to one directory tree, by directory file
//! descriptor: the only way snapshots read or change a volume.
//!
//! A volume's contents belong to the app (and to whoever can write into it),
//! while the agent acts on them as root. Resolving paths by name would let a
//! symlink swapped into any parent component mid-walk redirect a `chown`,
//! `chmod`, read or removal outside the volume. So every path is resolved from
//! the tree's root descriptor with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, which fails instead of crossing a symlink or leaving
//! the tree, and the last component is acted on through its parent's
//! descriptor with calls that never follow it (`mkdirat`, `symlinkat`,
//! `mknodat`, `unlinkat`, `fchownat(AT_SYMLINK_NOFOLLOW)`, `readlinkat`) or
//! through a descriptor opened with `O_NOFOLLOW` whose type is checked before
//! `fchown`/`fchmod`. A tree changed underneath makes a call fail; it never
//! makes one act elsewhere.

use std::fs::{File, Metadata};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::SnapshotError;

/// Never cross a symlink (or a `/proc` magic link), never leave the tree.
const CONFINED: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// How often a resolution is retried when the kernel reports a concurrent
/// rename (`EAGAIN`); a tree that keeps changing then fails with that error.
const RESOLVE_ATTEMPTS: usize = 8;

/// An open directory tree: its root's descriptor and its path (for messages).
#[derive(Debug)]
pub(crate) struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

impl Beneath {
    /// Opens the directory at `path` as the root of a confined tree. `path`
    /// itself must be a real directory (not a symlink to one); the components
    /// above it are trusted (Docker's and the agent's own directories).
    pub(crate) fn open(path: &Path) -> Result<Beneath, SnapshotError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rfs::open(path, flags, Mode::empty()) {
            Ok(root) => Ok(Beneath {
                root,
                path: path.to_owned(),
            }),
            Err(Errno::NOTDIR | Errno::LOOP) => Err(SnapshotError::NotADirectory { path: path.to_owned() }),
            Err(errno) => Err(SnapshotError::io("open directory", path, errno.into())),
        }
    }

    /// The path of a relative entry, for messages.
    pub(crate) fn path_of(&self, relative: &str) -> PathBuf {
        join_relative(&self.path, relative)
    }

    fn fail(&self, action: &'static str, relative: &str) -> impl FnOnce(Errno) -> SnapshotError + '_ {
        let path = self.path_of(relative);
        move |errno| SnapshotError::io(action, &path, errno.into())
    }

    /// `openat2` of `relative` ("" is the root) beneath the root, never
    /// through a symlink. `O_NOFOLLOW` and `O_CLOEXEC` are always added.
    fn resolve(&self, relative: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
        let relative = if relative.is_empty() { "." } else { relative };
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut attempt = 1;
        loop {
            match rfs::openat2(&self.root, relative, flags, Mode::empty(), CONFINED) {
                Err(Errno::AGAIN) if attempt < RESOLVE_ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
    }

    /// The directory `relative`, opened for reading.
    pub(crate) fn open_dir(&self, relative: &str) -> Result<OwnedFd, SnapshotError> {
        self.resolve(relative, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(self.fail("open directory", relative))
    }

    /// The descriptor of `relative`'s parent directory and its last
    /// component. The root itself has no parent here: callers never create,
    /// remove or rename it.
    fn parent<'a>(&self, relative: &'a str) -> Result<(OwnedFd, &'a str), SnapshotError> {
        let (parent, name) = match relative.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => ("", relative),
        };
        if name.is_empty() {
            return Err(SnapshotError::InvalidPath {
                path: relative.to_owned(),
                reason: "names the volume's root, which is never replaced".to_owned(),
            });
        }
        Ok((self.open_dir(parent)?, name))
    }

    /// The `lstat` metadata of `relative` (never of a symlink's target).
    pub(crate) fn metadata(&self, relative: &str) -> Result<Metadata, SnapshotError> {
        // An `O_PATH | O_NOFOLLOW` descriptor opens the entry itself without
        // any effect on it (RESOLVE_NO_SYMLINKS still returns a trailing
        // symlink itself in that case); `fstat` of it is the entry's
        // `lstat`, in std's types.
        let fd = self
            .resolve(relative, OFlags::PATH)
            .map_err(self.fail("inspect", relative))?;
        File::from(fd)
            .metadata()
            .map_err(|source| SnapshotError::io("inspect", &self.path_of(relative), source))
    }

    /// The names in directory `relative` (without "." and ".."), each with
    /// its `lstat` metadata. A name that is not UTF-8 is refused.
    pub(crate) fn list(&self, relative: &str) -> Result<Vec<(String, Metadata)>, SnapshotError> {
        let directory = self.open_dir(relative)?;
        let reader = directory
            .try_clone()
            .map_err(|source| SnapshotError::io("read directory", &self.path_of(relative), source))?;
        let mut found = Vec::new();
        for item in rfs::Dir::new(reader).map_err(self.fail("read directory", relative))? {
            let item = item.map_err(self.fail("read directory", relative))?;
            let name = item.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = std::str::from_utf8(name).map_err(|_| SnapshotError::Unsupported {
                path: self.path_of(relative).join(String::from_utf8_lossy(name).as_ref()),
                what: "a file name that is not UTF-8".to_owned(),
            })?;
            let child = if relative.is_empty() {
                name.to_owned()
            } else {
                format!("{relative}/{name}")
            };
            let fd = rfs::openat(
                &directory,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(self.fail("inspect", &child))?;
            let metadata = File::from(fd)
                .metadata()
                .map_err(|source| SnapshotError::io("inspect", &self.path_of(&child), source))?;
            found.push((name.to_owned(), metadata));
        }
        Ok(found)
    }

    /// Opens the regular file `relative` for reading; anything else there
    /// (a fifo swapped in, say) is refused without blocking on it.
    pub(crate) fn open_file(&self, relative: &str) -> Result<File, SnapshotError> {
        let fd = self
            .resolve(relative, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)
            .map_err(self.fail("open", relative))?;
        let file = File::from(fd);
        let metadata = file
            .metadata()
            .map_err(|source| SnapshotError::io("inspect", &self.path_of(relative), source))?;
        if !metadata.is_file() {
            return Err(SnapshotError::Changed {
                path: self.path_of(relative),
                expected: "a regular file",
            });
        }
        Ok(file)
    }

    /// A symlink's target as text (a target that is not UTF-8 is refused).
    pub(crate) fn read_link(&self, relative: &str) -> Result<String, SnapshotError> {
        let (parent, name) = self.parent(relative)?;
        let target = rfs::readlinkat(&parent, name, Vec::new()).map_err(self.fail("read symlink", relative))?;
        target.into_string().map_err(|_| SnapshotError::Unsupported {
            path: self.path_of(relative),
            what: "a symlink target that is not UTF-8".to_owned(),
        })
    }

    /// Creates the new regular file `relative` (0600 until its metadata is
    /// applied) for writing; fails if anything exists there.
    pub(crate) fn create_file(&self, relative: &str) -> Result<File, SnapshotError> {
        let (parent, name) = self.parent(relative)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd =
            rfs::openat(&parent, name, flags, Mode::from_raw_mode(0o600)).map_err(self.fail("create", relative))?;
        Ok(File::from(fd))
    }

    /// Creates the directory `relative` (0700 until its metadata is applied).
    pub(crate) fn create_dir(&self, relative: &str) -> Result<(), SnapshotError> {
        let (parent, name) = self.parent(relative)?;
        rfs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)).map_err(self.fail("create directory", relative))
    }

    pub(crate) fn create_symlink(&self, target: &str, relative: &str) -> Result<(), SnapshotError> {
        let (parent, name) = self.parent(relative)?;
        rfs::symlinkat(target, &parent, name).map_err(self.fail("create symlink", relative))
    }

    /// Creates the fifo `relative` (0600 until its metadata is applied).
    pub(crate) fn create_fifo(&self, relative: &str) -> Result<(), SnapshotError> {
        let (parent, name) = self.parent(relative)?;
        rfs::mknodat(&parent, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .map_err(self.fail("create fifo", relative))
    }

    /// Removes the entry `relative`: an empty directory when `directory`,
    /// any other kind of entry otherwise (never what a symlink points to).
    pub(crate) fn remove(&self, relative: &str, directory: bool) -> Result<(), SnapshotError> {
        let (parent, name) = self.parent(relative)?;
        let flags = if directory {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rfs::unlinkat(&parent, name, flags).map_err(self.fail("remove", relative))
    }

    /// Sets the owner of the symlink `relative` itself.
    pub(crate) fn set_symlink_owner(&self, relative: &str, uid: u32, gid: u32) -> Result<(), SnapshotError> {
        let (parent, name) = self.parent(relative)?;
        rfs::chownat(
            &parent,
            name,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(self.fail("change owner of", relative))
    }

    /// Opens a directory, regular file or fifo so that its owner, mode and
    /// times can be set through the descriptor. The entry must still be of
    /// the `expected` type; a fifo or file is opened without blocking.
    pub(crate) fn open_for_metadata(&self, relative: &str, expected: Expected) -> Result<File, SnapshotError> {
        let flags = match expected {
            Expected::Dir => OFlags::RDONLY | OFlags::DIRECTORY,
            Expected::File | Expected::Fifo => OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
        };
        let fd = self.resolve(relative, flags).map_err(self.fail("open", relative))?;
        let file = File::from(fd);
        let file_type = file
            .metadata()
            .map_err(|source| SnapshotError::io("inspect", &self.path_of(relative), source))?
            .file_type();
        let matches = match expected {
            Expected::Dir => file_type.is_dir(),
            Expected::File => file_type.is_file(),
            Expected::Fifo => std::os::unix::fs::FileTypeExt::is_fifo(&file_type),
        };
        if !matches {
            return Err(SnapshotError::Changed {
                path: self.path_of(relative),
                expected: expected.article(),
            });
        }
        Ok(file)
    }

    /// The root's descriptor (for `syncfs` and free-space queries).
    pub(crate) fn root(&self) -> &OwnedFd {
        &self.root
    }
}

/// The type an entry must still have when its metadata is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expected {
    Dir,
    File,
    Fifo,
}

impl Expected {
    fn article(self) -> &'static str {
        match self {
            Expected::Dir => "a directory",
            Expected::File => "a regular file",
            Expected::Fifo => "a fifo",
        }
    }
}

/// Whether an I/O error means the file system is full or the quota spent.
pub(crate) fn is_out_of_space(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == Errno::NOSPC.raw_os_error() || code == Errno::DQUOT.raw_os_error()
    )
}

/// `root` joined with a manifest path ("" is the root itself).
pub(crate) fn join_relative(root: &Path, relative: &str) -> PathBuf {
    if relative.is_empty() {
        root.to_owned()
    } else {
        root.join(relative)
    }
}

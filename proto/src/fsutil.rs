//! Durable file replacement: the one way the workspace writes a file that must
//! survive a crash whole (journal records, env files, identities, outbox
//! events, alerts, the server's CA, admin credentials).
//!
//! The bytes go to a temporary file of its own in the same directory (named
//! after the target, the process and a per-process counter, so concurrent
//! writers never share one), created with exactly `mode` (set on the open
//! file, so the umask does not narrow or widen it), synced, and then moved
//! into place; the directory is synced so the new entry is durable too. After
//! a crash the path holds either the old contents or the new, never a mix.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces (or creates) `path` with `bytes`, file mode `mode`, atomically
/// and durably. The directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_with(path, bytes, mode, |temporary| std::fs::rename(temporary, path))
}

/// Like [`write_atomic`] but never replaces an existing file: fails with
/// [`std::io::ErrorKind::AlreadyExists`] when `path` exists, even when
/// another process creates it meanwhile (the file is linked into place,
/// which refuses an existing name).
pub fn write_new_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_with(path, bytes, mode, |temporary| {
        std::fs::hard_link(temporary, path)?;
        std::fs::remove_file(temporary)
    })
}

fn write_with(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    place: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temporary = temporary_path(directory, path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        place(&temporary)?;
        // The new entry is durable only once the directory is.
        File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

fn temporary_path(directory: &Path, path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
    let call = COUNTER.fetch_add(1, Ordering::Relaxed);
    directory.join(format!(".{name}.{}.{call}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn entries(directory: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_and_replaces_with_the_given_mode_and_leaves_no_temporary() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("record.json");
        for (bytes, mode) in [(&b"first"[..], 0o600), (&b"second"[..], 0o644), (&b""[..], 0o640)] {
            write_atomic(&path, bytes, mode).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
            assert_eq!(mode_of(&path), mode);
            assert_eq!(entries(directory.path()), ["record.json"]);
        }
    }

    #[test]
    fn write_new_refuses_an_existing_file_and_keeps_it() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("credential.toml");
        write_new_atomic(&path, b"mine", 0o600).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let error = write_new_atomic(&path, b"theirs", 0o600).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"mine");
        assert_eq!(entries(directory.path()), ["credential.toml"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("absent").join("file");
        let error = write_atomic(&path, b"x", 0o600).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        assert!(entries(directory.path()).is_empty());
    }

    #[test]
    fn concurrent_writers_of_one_path_never_share_a_temporary() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("shared");
        std::thread::scope(|scope| {
            for writer in 0..8u8 {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, &[writer; 64], 0o600).unwrap();
                    }
                });
            }
        });
        let contents = std::fs::read(&path).unwrap();
        assert_eq!(contents.len(), 64);
        assert!(contents.iter().all(|byte| *byte == contents[0]));
        assert_eq!(entries(directory.path()), ["shared"]);
    }
}

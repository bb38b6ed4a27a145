//! A small disk of a test's own: a tmpfs mounted on a directory (needs
//! root), for the tests and the campaign that fill a disk under the store or
//! the snapshots. It is unmounted when dropped, however the test ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file [`SmallDisk::fill`] writes.
const FILLER: &str = "filler";

pub struct SmallDisk {
    mountpoint: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs with `options` (such as `size=16m` or
    /// `size=64m,nr_inodes=20`) on `directory`, creating it.
    pub fn mount(directory: &Path, options: &str) -> anyhow::Result<SmallDisk> {
        std::fs::create_dir_all(directory)?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("{options},mode=0700"), "tmpfs"])
            .arg(directory)
            .status()?;
        anyhow::ensure!(
            mounted.success(),
            "cannot mount a tmpfs on {} (needs root)",
            directory.display()
        );
        Ok(SmallDisk {
            mountpoint: directory.to_path_buf(),
        })
    }

    /// Writes a file until the disk is full; the error that stopped it
    /// (`ENOSPC` once full).
    pub fn fill(&self) -> std::io::Error {
        let mut file = match std::fs::File::create(self.mountpoint.join(FILLER)) {
            Ok(file) => file,
            Err(error) => return error,
        };
        let chunk = vec![0u8; 1 << 20];
        loop {
            if let Err(error) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
                return error;
            }
        }
    }

    /// Gives back the room [`SmallDisk::fill`] took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.mountpoint.join(FILLER));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
    }
}

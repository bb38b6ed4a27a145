//! CPU load for the tests that must hold on a busy machine: `stress-ng`
//! (Debian package `stress-ng`, installed by `scripts/test`) started by the
//! test and stopped when the guard drops.

use std::process::{Child, Command, Stdio};

/// A running `stress-ng --cpu N`; killed and reaped on drop.
pub struct CpuLoad {
    child: Child,
}

impl CpuLoad {
    /// Starts `workers` CPU hogs. Panics with the install command when
    /// `stress-ng` is missing, so a test never passes without its load. The
    /// `--timeout` bounds the load should the test process itself be killed
    /// before it can stop it.
    pub fn start(workers: usize) -> CpuLoad {
        let child = Command::new("stress-ng")
            .args(["--cpu", &workers.to_string(), "--timeout", "900s", "--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start stress-ng ({error}): install it with `sudo apt-get install stress-ng` \
                     (scripts/test does this)"
                )
            });
        CpuLoad { child }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        // stress-ng stops its workers when its parent process gets SIGTERM.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

//! The real `ccfleet dashboard` as a child process: started against a test
//! server, its printed address read, stopped with SIGINT as Ctrl-C would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `ccfleet dashboard`, killed when dropped.
pub struct TestDashboard {
    child: Child,
    /// The printed address, token included: `http://127.0.0.1:PORT/?token=...`.
    pub url: String,
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    pub token: String,
}

impl TestDashboard {
    pub fn start(server_url: &str, credentials: &Path, extra_args: &[&str]) -> TestDashboard {
        let mut child = Command::new(crate::binary("ccfleet"))
            .args([
                "--server",
                server_url,
                "--config",
                "/nonexistent/ccfleet-test-config.toml",
                "--credentials",
            ])
            .arg(credentials)
            .arg("dashboard")
            .args(extra_args)
            .env_remove("CCFLEET_SERVER")
            .env_remove("CCFLEET_CONFIG")
            .env_remove("CCFLEET_CREDENTIALS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ccfleet dashboard starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("dashboard at ") {
                    let _ = sender.send(url.to_owned());
                }
            }
        });
        let url = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("ccfleet dashboard prints `dashboard at URL` within 30 s");
        let (origin, token) = url.split_once("/?token=").expect("the URL carries the token");
        TestDashboard {
            origin: origin.to_owned(),
            token: token.to_owned(),
            url,
            child,
        }
    }

    /// Sends SIGINT (Ctrl-C) and waits up to `deadline` for the exit.
    pub fn interrupt(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "cannot send SIGINT to the dashboard");
        let start = Instant::now();
        // Polls the process on a short period; the deadline bounds it.
        while start.elapsed() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait for the dashboard") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestDashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

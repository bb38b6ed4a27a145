//! The real `ccfleet dashboard` as a child process: started against a test
//! server, its printed address read, stopped with SIGINT as Ctrl-C would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `ccfleet dashboard`, killed when dropped.
pub struct TestDashboard {
    /// `None` once [`TestDashboard::interrupt`] handed it to a thread that waits for its exit.
    child: Option<Child>,
    pid: u32,
    /// The exit, from that thread, when `interrupt` stopped waiting first.
    exit: Option<mpsc::Receiver<ExitStatus>>,
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
            pid: child.id(),
            child: Some(child),
            exit: None,
        }
    }

    /// Sends SIGINT (Ctrl-C) and waits up to `deadline` for the exit: a
    /// thread blocks in `wait` and sends the status the moment it comes.
    pub fn interrupt(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take().expect("the dashboard is interrupted once");
        signal("-INT", self.pid);
        let (sender, exit) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = sender.send(status);
            }
        });
        match exit.recv_timeout(deadline) {
            Ok(status) => Some(status),
            Err(_) => {
                self.exit = Some(exit);
                None
            }
        }
    }
}

/// Sends `kill`'s `signal` to `pid`.
fn signal(signal: &str, pid: u32) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "cannot send {signal} to the dashboard");
}

impl Drop for TestDashboard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        } else if let Some(exit) = self.exit.take() {
            // Still running after `interrupt` gave up (its waiting thread
            // has sent no exit): killed, then reaped by that thread.
            if exit.try_recv().is_err() {
                let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
                let _ = exit.recv_timeout(Duration::from_secs(10));
            }
        }
    }
}

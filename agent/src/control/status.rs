//! The control protocol's `status` answer: one typed record that the daemon
//! fills in and `ccfleet-agent status` reads (and prints with `--json` as is).

use std::path::PathBuf;

use ccfleet_proto::{CoopVersion, Domain, RecipeName};
use serde::{Deserialize, Serialize};

use crate::alerts::Alert;
use crate::host::ObservedApp;
use crate::link::LinkStatus;
use crate::upgrade::model::RolledBackTarget;

/// The running agent's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub host_id: String,
    pub server: LinkStatus,
    pub outbox: OutboxStatus,
    pub snapshots_dir: PathBuf,
    pub alerts_dir: PathBuf,
    pub apps: Vec<AppStatus>,
}

/// The outbox: the last sequence number stored, and how many events await
/// the server's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub last_seq: u64,
    pub pending: usize,
}

/// One declared app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub domain: Domain,
    pub recipe: RecipeName,
    pub declared_version: CoopVersion,
    /// The last observation; `None` before the first one.
    pub observed: Option<ObservedApp>,
    pub fleet_managed: bool,
    /// Newest available version within the running (else declared) major.
    pub available_version: Option<CoopVersion>,
    /// Newest available version, any major.
    pub available_newest: Option<CoopVersion>,
    pub last_good: Option<CoopVersion>,
    pub fleet_target: Option<CoopVersion>,
    /// Targets rolled back (or held) and not retried automatically.
    pub held_back: Vec<RolledBackTarget>,
    /// The FAILED operation that keeps reconciles from deploying the app.
    pub blocked_by: Option<String>,
    pub alert: Option<Alert>,
    /// Complete snapshots, newest first.
    pub snapshots: Vec<PathBuf>,
}

impl AgentStatus {
    /// The status for people, as `ccfleet-agent status` prints it.
    pub fn render(&self) -> String {
        let server = &self.server;
        let mut text = format!(
            "host {}: server {}{}; outbox: {} pending (last seq {})\n",
            self.host_id,
            if server.connected { "connected" } else { "disconnected" },
            Some(&server.last_error)
                .filter(|error| !error.is_empty())
                .map(|error| format!(" ({error})"))
                .unwrap_or_default(),
            self.outbox.pending,
            self.outbox.last_seq,
        );
        for app in &self.apps {
            let observed = app.observed.as_ref();
            text.push_str(&format!(
                "{}  {}  declared {}  observed {}  {}{}\n",
                app.domain,
                app.recipe,
                app.declared_version,
                observed
                    .and_then(|observed| observed.observed_version.as_ref())
                    .map_or("-".to_owned(), ToString::to_string),
                observed.map_or("unknown".to_owned(), |observed| wire_name(&observed.state)),
                observed
                    .map(|observed| &observed.drift)
                    .filter(|drift| !drift.is_empty())
                    .map(|drift| format!("  drift: {}", drift.join("; ")))
                    .unwrap_or_default(),
            ));
            if let Some(alert) = &app.alert {
                text.push_str(&format!(
                    "    ALERT {} ({}): {} -> {}: {}\n",
                    wire_name(&alert.outcome),
                    wire_name(&alert.severity),
                    alert.from,
                    alert.to,
                    alert.reason
                ));
            }
            if let Some(snapshot) = app.snapshots.first() {
                text.push_str(&format!(
                    "    snapshots: {} (newest of {})\n",
                    snapshot.display(),
                    app.snapshots.len()
                ));
            }
        }
        text
    }
}

/// A unit variant as the JSON status spells it (`not_deployed`, `ROLLED_BACK`).
fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}

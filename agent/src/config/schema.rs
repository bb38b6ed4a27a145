//! The validated, normalised configuration: the types the rest of the agent
//! uses (re-exported from `agent::config`) and their defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};
use serde::{Deserialize, Serialize, Serializer};

/// Default `agent.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ccfleet-agent";
/// Default `agent.control_socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/ccfleet-agent/control.sock";
/// Default `agent.alerts_dir` (ARCHITECTURE.md: alerts go to `/var/lib/coop-cloud/alerts/<app>.json`).
pub const DEFAULT_ALERTS_DIR: &str = "/var/lib/coop-cloud/alerts";
/// Default `abra.binary`: looked up on `PATH`.
pub const DEFAULT_ABRA_BINARY: &str = "abra";
/// Default `abra.server`: the name `abra server add --local` stores (ARCHITECTURE.md, "What ccfleet relies on from abra and Docker"; unconfirmed).
pub const DEFAULT_ABRA_SERVER: &str = "default";
pub(super) const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub(super) const DEFAULT_OBSERVE_INTERVAL: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub(super) const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(10 * 60);
pub(super) const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Default `agent.snapshot_retention`: snapshots kept per app.
pub const DEFAULT_SNAPSHOT_RETENTION: usize = 3;
pub(super) const MAX_SNAPSHOT_RETENTION: i64 = 1000;
pub(super) const DEFAULT_MIN_HEALTHY_TIME: Duration = Duration::from_secs(10);
/// Default `agent.probe_address`: the host's own Traefik.
pub const DEFAULT_PROBE_ADDRESS: &str = "127.0.0.1:443";
/// Below systemd's default `TimeoutStopSec` (90 s), so that the agent records
/// an interrupted operation before systemd resorts to SIGKILL.
pub(super) const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(80);

/// The validated, normalised agent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub server: ServerConfig,
    pub host: HostConfig,
    pub agent: AgentConfig,
    pub abra: AbraConfig,
    /// Sorted by domain; domains are unique.
    pub apps: Vec<AppConfig>,
}

/// Where the fleet server is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    /// `https://host:port`.
    pub url: String,
    /// File holding the join token used for the first enrolment. Not checked
    /// for existence: after enrolment the token is no longer needed.
    pub join_token_file: Option<PathBuf>,
}

/// This host's identity in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostConfig {
    /// The host id (default: the hostname, lowercased).
    pub id: HostId,
    pub labels: BTreeMap<String, String>,
}

/// The agent's own files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub alerts_dir: PathBuf,
    /// How often every declared app is reconciled without being asked.
    #[serde(serialize_with = "serialize_duration")]
    pub reconcile_interval: Duration,
    /// How often Docker is read for changes to report to the server.
    #[serde(serialize_with = "serialize_duration")]
    pub observe_interval: Duration,
    /// Verified snapshots kept per app (the newest ones); older ones are removed.
    pub snapshot_retention: usize,
    /// How long an upgraded app must stay healthy, without interruption,
    /// before the upgrade counts as healthy.
    #[serde(serialize_with = "serialize_duration")]
    pub min_healthy_time: Duration,
    /// Where the HTTP health probe connects (the host's own Traefik); the
    /// app's domain goes in SNI and `Host`.
    pub probe_address: SocketAddr,
    pub probe_scheme: ProbeScheme,
    /// On SIGTERM, how long an operation in flight may finish before the agent
    /// records it as interrupted and exits (the journal resumes it at start).
    #[serde(serialize_with = "serialize_duration")]
    pub stop_timeout: Duration,
}

/// How the health probe talks to `probe_address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeScheme {
    /// TLS without certificate verification: the probe checks the app, not the PKI.
    Https,
    /// Plain HTTP (tests point the probe at a fixture's published port).
    Http,
}

/// How the agent runs abra.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AbraConfig {
    /// A bare program name looked up on `PATH`, or an absolute path.
    pub binary: PathBuf,
    /// The `ABRA_DIR` the agent gives abra (default `<state_dir>/abra`).
    pub dir: PathBuf,
    /// The abra server name the apps live on.
    pub server: String,
    #[serde(serialize_with = "serialize_duration")]
    pub command_timeout: Duration,
    /// Pass `-D` (`--no-domain-checks`) to deploys, upgrades and rollbacks.
    /// Shown in the rendered config only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_domain_checks: bool,
}

/// One declared app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppConfig {
    pub domain: Domain,
    pub recipe: RecipeName,
    pub version: CoopVersion,
    pub stateful: bool,
    pub auto_update: bool,
    /// systemd `OnCalendar` text; always set when `auto_update` is.
    pub schedule: Option<String>,
    pub allow_major: bool,
    /// Whether fleet rollouts may move this app; false pins it to this
    /// host's configuration ("pinned by host configuration").
    pub fleet_managed: bool,
    #[serde(serialize_with = "serialize_duration")]
    pub deploy_timeout: Duration,
    /// Sorted, without duplicates; every entry is another declared app.
    pub depends_on: Vec<Domain>,
    pub env: BTreeMap<String, String>,
    /// Secret name -> file holding its value.
    pub secrets: BTreeMap<String, PathBuf>,
    pub health: HealthConfig,
}

impl AppConfig {
    /// The Docker stack name abra gives the app ([`super::stack_name`]):
    /// `env.STACK_NAME` when set (the agent writes `env` into the app's env
    /// file), else the one made from the domain.
    pub fn stack_name(&self) -> String {
        super::stack_name(&self.domain, self.env.get(super::STACK_NAME_KEY).map(String::as_str))
    }
}

/// How the agent decides an app is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    /// HTTP path probed at `https://<domain><path>`; `None`: no HTTP probe,
    /// only swarm convergence and container healthchecks.
    pub path: Option<String>,
    pub accepted_statuses: Vec<u16>,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
}

fn serialize_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*duration).to_string())
}

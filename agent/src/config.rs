//! The agent's configuration file (`/etc/ccfleet/agent.toml`): schema, defaults and validation.
//!
//! Parsing happens in two steps. `serde` reads the TOML into plain "raw" structs
//! whose names and versions are still strings (unknown fields are refused
//! there); then [`validate`] turns every string into its validated type from
//! `ccfleet-proto`, fills in the defaults and checks the rules that span
//! fields (duplicate domains, `depends_on`), collecting *every* problem rather
//! than stopping at the first. Both steps are pure: the checks that look at
//! the file system (secret files exist and are readable) live in
//! [`Config::validate_files`], so tests of the schema need no files.
//!
//! The normalised form ([`Config`], printed by `ccfleet-agent check-config`)
//! has every default filled in, durations as humantime strings (`"15m"`, the
//! same notation the file uses, so the output can be read back) and apps
//! sorted by domain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};
use serde::{Deserialize, Serialize, Serializer};

/// Default `agent.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ccfleet-agent";
/// Default `agent.control_socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/ccfleet-agent/control.sock";
/// Default `agent.alerts_dir` (DESIGN.md: alerts go to `/var/lib/coop-cloud/alerts/<app>.json`).
pub const DEFAULT_ALERTS_DIR: &str = "/var/lib/coop-cloud/alerts";
/// Default `abra.binary`: looked up on `PATH`.
pub const DEFAULT_ABRA_BINARY: &str = "abra";
/// Default `abra.server`: the name `abra server add --local` stores (ABRA.md, unconfirmed).
pub const DEFAULT_ABRA_SERVER: &str = "default";
const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(5 * 60);
const DEFAULT_OBSERVE_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Default `agent.snapshot_retention`: snapshots kept per app.
pub const DEFAULT_SNAPSHOT_RETENTION: usize = 3;
const MAX_SNAPSHOT_RETENTION: i64 = 1000;
const DEFAULT_MIN_HEALTHY_TIME: Duration = Duration::from_secs(10);
/// Default `agent.probe_address`: the host's own Traefik.
pub const DEFAULT_PROBE_ADDRESS: &str = "127.0.0.1:443";
/// Below systemd's default `TimeoutStopSec` (90 s), so that the agent records
/// an interrupted operation before systemd resorts to SIGKILL.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(80);

/// Bounds that keep garbage out of logs, units and `.env` files.
const MAX_LABEL_KEY_LENGTH: usize = 128;
const MAX_LABEL_VALUE_LENGTH: usize = 256;
const MAX_SCHEDULE_LENGTH: usize = 128;
const MAX_ENV_VALUE_LENGTH: usize = 4096;
const MAX_HEALTH_PATH_LENGTH: usize = 1024;

/// Environment keys that abra itself writes into an app's `.env` (ABRA.md,
/// "Apps, servers, state"); letting the config set them would fight abra.
const ABRA_OWNED_ENV_KEYS: &[&str] = &["TYPE", "DOMAIN"];

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read the configuration", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML, or does not fit the schema (unknown field, wrong
    /// type, missing required field). `toml` stops at the first such error.
    #[error("{}: {}", origin.display(), message.trim_end())]
    Syntax { origin: PathBuf, message: String },
    /// The text fits the schema but breaks one or more rules; one line each.
    #[error("{}", Problems { origin, problems })]
    Invalid { origin: PathBuf, problems: Vec<Problem> },
}

/// One broken rule: which app (if any), which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `app "blog.example.org"`, or `app[2]` (0-based) when the app's domain is itself invalid;
    /// `None` for the sections outside `[[app]]`.
    pub app: Option<String>,
    /// The field, dotted from its section (`server.url`) or its app (`health.path`).
    pub field: String,
    /// What is wrong, as a lowercase sentence fragment.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(app) = &self.app {
            write!(formatter, "{app}: ")?;
        }
        write!(formatter, "field {:?}: {}", self.field, self.message)
    }
}

struct Problems<'a> {
    origin: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                formatter.write_str("\n")?;
            }
            write!(formatter, "{}: {problem}", self.origin.display())?;
        }
        Ok(())
    }
}

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

// The file as written, before validation. Strings stay strings here so that
// every bad value can be reported, not only the first one serde meets.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    host: RawHost,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    abra: RawAbra,
    #[serde(default)]
    app: Vec<RawApp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: String,
    join_token_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHost {
    id: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    state_dir: Option<String>,
    control_socket: Option<String>,
    alerts_dir: Option<String>,
    reconcile_interval: Option<String>,
    observe_interval: Option<String>,
    snapshot_retention: Option<i64>,
    min_healthy_time: Option<String>,
    probe_address: Option<String>,
    probe_scheme: Option<ProbeScheme>,
    stop_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAbra {
    binary: Option<String>,
    dir: Option<String>,
    server: Option<String>,
    command_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    domain: String,
    recipe: String,
    version: String,
    #[serde(default = "default_true")]
    stateful: bool,
    #[serde(default)]
    auto_update: bool,
    schedule: Option<String>,
    #[serde(default)]
    allow_major: bool,
    #[serde(default = "default_true")]
    fleet_managed: bool,
    deploy_timeout: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    health: RawHealth,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<String>,
    accepted_statuses: Option<Vec<i64>>,
    timeout: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Reads and validates the file at `path` (without the file-system checks
    /// of [`Config::validate_files`]). The host id defaults to this machine's hostname.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Parses and validates `text`; `origin` (the file's path) prefixes every
    /// message. The host id defaults to this machine's hostname.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Config::from_toml_str_with_hostname(text, origin, &system_hostname())
    }

    /// [`Config::from_toml_str`] with the hostname given (it is lowercased
    /// before use), so that the result depends on nothing but the arguments.
    pub fn from_toml_str_with_hostname(text: &str, origin: &Path, hostname: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: error.to_string(),
        })?;
        validate(raw, hostname).map_err(|problems| ConfigError::Invalid {
            origin: origin.to_owned(),
            problems,
        })
    }

    /// The checks that need the file system: every secret file exists, is a
    /// regular file and can be opened for reading by this process.
    pub fn validate_files(&self, origin: &Path) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for app in &self.apps {
            for (name, path) in &app.secrets {
                if let Err(message) = check_readable_file(path) {
                    problems.push(Problem {
                        app: Some(format!("app {:?}", app.domain.as_str())),
                        field: format!("secrets.{name}"),
                        message,
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }
}

fn check_readable_file(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    std::fs::File::open(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    Ok(())
}

/// This machine's hostname as the kernel has it; empty when it cannot be read (the
/// host id check then says so).
fn system_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default()
}

/// Collects problems for one part of the file.
struct Collector<'a> {
    app: Option<String>,
    problems: &'a mut Vec<Problem>,
}

impl Collector<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            app: self.app.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Runs a parser, recording its error against `field`.
    fn parse<T, E: fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|error| self.push(field, error.to_string())).ok()
    }

    fn absolute_path(&mut self, field: &str, text: &str) -> Option<PathBuf> {
        self.parse(field, absolute_path(text))
    }

    fn duration(&mut self, field: &str, text: Option<&str>, default: Duration) -> Option<Duration> {
        match text {
            None => Some(default),
            Some(text) => self.parse(field, parse_duration(text)),
        }
    }
}

fn absolute_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.chars().any(char::is_control) {
        return Err(format!("path {text:?} contains a control character"));
    }
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(format!("path {text:?} must be absolute"));
    }
    if path
        .components()
        .any(|component| matches!(component, std::path::Component::ParentDir))
    {
        return Err(format!("path {text:?} must not contain '..'"));
    }
    Ok(path.to_owned())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|error| format!("invalid duration {text:?}: {error} (write e.g. \"90s\", \"15m\")"))?;
    if duration.is_zero() {
        return Err(format!("duration {text:?} must be longer than zero"));
    }
    Ok(duration)
}

/// `https://host[:port][/path]`: the server speaks TLS only.
fn check_server_url(url: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL; write e.g. \"https://fleet.example.org:7443\""))?;
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{url:?} contains whitespace or a control character"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "{url:?} must not carry credentials; the agent authenticates with its certificate"
        ));
    }
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("{url:?} has an unclosed '[' in its host"))?;
        check_port(url, after.strip_prefix(':'), after)?;
        host
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        check_port(url, port, "")?;
        host
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    match scheme {
        "https" => Ok(url.to_owned()),
        "http" => Err(format!(
            "{url:?} uses plain http; the server speaks TLS only, use https://"
        )),
        other => Err(format!("{url:?} has scheme {other:?}; use https://")),
    }
}

fn check_port(url: &str, port: Option<&str>, after_bracket: &str) -> Result<(), String> {
    match port {
        None if after_bracket.is_empty() => Ok(()),
        None => Err(format!("{url:?} has unexpected text {after_bracket:?} after its host")),
        Some(port) if port.parse::<u16>().is_ok_and(|port| port > 0) => Ok(()),
        Some(port) => Err(format!("{url:?} has an invalid port {port:?}")),
    }
}

fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY_LENGTH {
        return Err(format!(
            "label key {key:?} must be 1 to {MAX_LABEL_KEY_LENGTH} characters long"
        ));
    }
    if let Some(character) = key
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(format!(
            "label key {key:?} contains {character:?} (allowed: lowercase letters, digits, '.', '_', '-', '/')"
        ));
    }
    Ok(())
}

fn check_printable(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{what} is {} bytes long, the limit is {max}", value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} {value:?} contains a control character"));
    }
    Ok(())
}

fn check_abra_binary(text: &str) -> Result<PathBuf, String> {
    if text.starts_with('/') {
        return absolute_path(text);
    }
    let bare = !text.is_empty()
        && !text.starts_with('-')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if bare {
        Ok(PathBuf::from(text))
    } else {
        Err(format!(
            "{text:?} must be a bare program name looked up on PATH (such as \"abra\") or an absolute path"
        ))
    }
}

fn check_abra_server(text: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
    if text.is_empty() || text.len() > 253 || text.starts_with(['-', '.']) || !text.chars().all(allowed) {
        return Err(format!(
            "invalid abra server name {text:?}: 1 to 253 lowercase letters, digits, '.', '-', '_', not starting with '-' or '.'"
        ));
    }
    Ok(text.to_owned())
}

fn check_env_key(key: &str) -> Result<(), String> {
    let mut characters = key.chars();
    let first_ok = characters.next().is_some_and(|c| c.is_ascii_uppercase() || c == '_');
    if !first_ok || !characters.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!("invalid variable name {key:?}: must match ^[A-Z_][A-Z0-9_]*$"));
    }
    if ABRA_OWNED_ENV_KEYS.contains(&key) {
        return Err(format!("{key} is written by abra itself and cannot be set here"));
    }
    Ok(())
}

fn check_env_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_ENV_VALUE_LENGTH {
        return Err(format!(
            "value is {} bytes long, the limit is {MAX_ENV_VALUE_LENGTH}",
            value.len()
        ));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(
            "value must not contain a newline, carriage return or NUL (the .env file holds one line per variable)"
                .into(),
        );
    }
    Ok(())
}

fn check_secret_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "invalid secret name {name:?}: must match ^[a-z0-9_]+$ (abra secret names)"
        ));
    }
    Ok(())
}

fn check_health_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("health path {path:?} must start with '/'"));
    }
    if path.len() > MAX_HEALTH_PATH_LENGTH {
        return Err(format!(
            "health path is {} bytes long, the limit is {MAX_HEALTH_PATH_LENGTH}",
            path.len()
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "health path {path:?} must not contain whitespace or control characters"
        ));
    }
    Ok(path.to_owned())
}

/// Turns the raw file into a [`Config`], or every problem found.
fn validate(raw: RawConfig, hostname: &str) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut top = Collector {
        app: None,
        problems: &mut problems,
    };

    let url = top.parse("server.url", check_server_url(&raw.server.url));
    let join_token_file = match &raw.server.join_token_file {
        None => Some(None),
        Some(text) => top.absolute_path("server.join_token_file", text).map(Some),
    };

    let host_id = match &raw.host.id {
        Some(text) => top.parse("host.id", text.parse::<HostId>()),
        None => top.parse(
            "host.id",
            hostname
                .trim()
                .to_lowercase()
                .parse::<HostId>()
                .map_err(|error| format!("not set, and the hostname cannot serve as the default: {error}")),
        ),
    };
    for (key, value) in &raw.host.labels {
        let _ = top.parse(&format!("host.labels.{key}"), check_label_key(key));
        let _ = top.parse(
            &format!("host.labels.{key}"),
            check_printable("label value", value, MAX_LABEL_VALUE_LENGTH),
        );
    }

    let mut path_or_default = |field: &str, text: &Option<String>, default: &str| match text {
        Some(text) => top.absolute_path(field, text),
        None => Some(PathBuf::from(default)),
    };
    let state_dir = path_or_default("agent.state_dir", &raw.agent.state_dir, DEFAULT_STATE_DIR);
    let control_socket = path_or_default(
        "agent.control_socket",
        &raw.agent.control_socket,
        DEFAULT_CONTROL_SOCKET,
    );
    let alerts_dir = path_or_default("agent.alerts_dir", &raw.agent.alerts_dir, DEFAULT_ALERTS_DIR);
    let reconcile_interval = top.duration(
        "agent.reconcile_interval",
        raw.agent.reconcile_interval.as_deref(),
        DEFAULT_RECONCILE_INTERVAL,
    );
    let observe_interval = top.duration(
        "agent.observe_interval",
        raw.agent.observe_interval.as_deref(),
        DEFAULT_OBSERVE_INTERVAL,
    );

    let snapshot_retention = match raw.agent.snapshot_retention {
        None => Some(DEFAULT_SNAPSHOT_RETENTION),
        Some(count) if (1..=MAX_SNAPSHOT_RETENTION).contains(&count) => usize::try_from(count).ok(),
        Some(count) => {
            top.push(
                "agent.snapshot_retention",
                format!("{count} is out of range: keep 1 to {MAX_SNAPSHOT_RETENTION} snapshots per app"),
            );
            None
        }
    };
    let min_healthy_time = top.duration(
        "agent.min_healthy_time",
        raw.agent.min_healthy_time.as_deref(),
        DEFAULT_MIN_HEALTHY_TIME,
    );
    let probe_address = top.parse(
        "agent.probe_address",
        raw.agent
            .probe_address
            .as_deref()
            .unwrap_or(DEFAULT_PROBE_ADDRESS)
            .parse::<SocketAddr>()
            .map_err(|error| format!("not an address with a port (write e.g. \"127.0.0.1:443\"): {error}")),
    );
    let probe_scheme = raw.agent.probe_scheme.unwrap_or(ProbeScheme::Https);
    let stop_timeout = top.duration(
        "agent.stop_timeout",
        raw.agent.stop_timeout.as_deref(),
        DEFAULT_STOP_TIMEOUT,
    );

    let abra_binary = top.parse(
        "abra.binary",
        check_abra_binary(raw.abra.binary.as_deref().unwrap_or(DEFAULT_ABRA_BINARY)),
    );
    let abra_dir = match (&raw.abra.dir, &state_dir) {
        (Some(text), _) => top.absolute_path("abra.dir", text),
        (None, Some(state_dir)) => Some(state_dir.join("abra")),
        (None, None) => None,
    };
    let abra_server = top.parse(
        "abra.server",
        check_abra_server(raw.abra.server.as_deref().unwrap_or(DEFAULT_ABRA_SERVER)),
    );
    let command_timeout = top.duration(
        "abra.command_timeout",
        raw.abra.command_timeout.as_deref(),
        DEFAULT_COMMAND_TIMEOUT,
    );

    let apps = validate_apps(raw.app, &mut problems);

    match (
        url,
        join_token_file,
        host_id,
        state_dir,
        control_socket,
        alerts_dir,
        abra_binary,
        abra_dir,
        abra_server,
        command_timeout,
        apps,
        reconcile_interval,
        observe_interval,
        (snapshot_retention, min_healthy_time, probe_address, stop_timeout),
    ) {
        (
            Some(url),
            Some(join_token_file),
            Some(id),
            Some(state_dir),
            Some(control_socket),
            Some(alerts_dir),
            Some(binary),
            Some(dir),
            Some(server),
            Some(command_timeout),
            Some(apps),
            Some(reconcile_interval),
            Some(observe_interval),
            (Some(snapshot_retention), Some(min_healthy_time), Some(probe_address), Some(stop_timeout)),
        ) if problems.is_empty() => Ok(Config {
            server: ServerConfig { url, join_token_file },
            host: HostConfig {
                id,
                labels: raw.host.labels,
            },
            agent: AgentConfig {
                state_dir,
                control_socket,
                alerts_dir,
                reconcile_interval,
                observe_interval,
                snapshot_retention,
                min_healthy_time,
                probe_address,
                probe_scheme,
                stop_timeout,
            },
            abra: AbraConfig {
                binary,
                dir,
                server,
                command_timeout,
            },
            apps,
        }),
        _ => Err(problems),
    }
}

/// Validates every app on its own, then the rules between apps: unique
/// domains, `depends_on` naming other declared apps, no dependency cycle.
fn validate_apps(raw_apps: Vec<RawApp>, problems: &mut Vec<Problem>) -> Option<Vec<AppConfig>> {
    let problems_before = problems.len();
    let mut apps = Vec::new();
    let mut first_index_of: BTreeMap<Domain, usize> = BTreeMap::new();
    for (index, raw) in raw_apps.into_iter().enumerate() {
        let domain = raw.domain.parse::<Domain>();
        let subject = match &domain {
            Ok(domain) => format!("app {:?}", domain.as_str()),
            Err(_) => format!("app[{index}]"),
        };
        let mut collector = Collector {
            app: Some(subject),
            problems,
        };
        let domain = collector.parse("domain", domain);
        if let Some(domain) = &domain {
            if let Some(first) = first_index_of.get(domain) {
                collector.push("domain", format!("declared twice (app[{first}] and app[{index}])"));
            } else {
                first_index_of.insert(domain.clone(), index);
            }
        }
        if let Some(app) = validate_app(raw, domain, &mut collector) {
            apps.push(app);
        }
    }
    let declared: BTreeSet<&Domain> = first_index_of.keys().collect();
    for app in &apps {
        let mut collector = Collector {
            app: Some(format!("app {:?}", app.domain.as_str())),
            problems,
        };
        for dependency in &app.depends_on {
            if dependency == &app.domain {
                collector.push("depends_on", "an app cannot depend on itself");
            } else if !declared.contains(dependency) {
                collector.push(
                    "depends_on",
                    format!("{:?} is not an app declared in this file", dependency.as_str()),
                );
            }
        }
    }
    if problems.len() == problems_before {
        if let Some(cycle) = find_dependency_cycle(&apps) {
            let path: Vec<&str> = cycle.iter().map(|domain| domain.as_str()).collect();
            problems.push(Problem {
                app: Some(format!("app {:?}", path[0])),
                field: "depends_on".into(),
                message: format!("dependency cycle: {}", path.join(" -> ")),
            });
        }
    }
    apps.sort_by(|left, right| left.domain.cmp(&right.domain));
    (problems.len() == problems_before).then_some(apps)
}

fn validate_app(raw: RawApp, domain: Option<Domain>, collector: &mut Collector<'_>) -> Option<AppConfig> {
    let recipe = collector.parse("recipe", raw.recipe.parse::<RecipeName>());
    let version = collector.parse("version", raw.version.parse::<CoopVersion>());
    let schedule = match (&raw.schedule, raw.auto_update) {
        (None, true) => {
            collector.push(
                "schedule",
                "required when auto_update is true (systemd OnCalendar text, e.g. \"Sun 04:00\")",
            );
            None
        }
        (None, false) => Some(None),
        (Some(text), _) if text.trim().is_empty() => {
            collector.push("schedule", "must not be empty");
            None
        }
        (Some(text), _) => collector
            .parse("schedule", check_printable("schedule", text, MAX_SCHEDULE_LENGTH))
            .map(|()| Some(text.clone())),
    };
    let deploy_timeout = collector.duration("deploy_timeout", raw.deploy_timeout.as_deref(), DEFAULT_DEPLOY_TIMEOUT);

    let mut depends_on = BTreeSet::new();
    for text in &raw.depends_on {
        if let Some(dependency) = collector.parse("depends_on", text.parse::<Domain>()) {
            depends_on.insert(dependency);
        }
    }
    for (key, value) in &raw.env {
        let field = format!("env.{key}");
        let _ = collector.parse(&field, check_env_key(key));
        let _ = collector.parse(&field, check_env_value(value));
    }
    let mut secrets = BTreeMap::new();
    for (name, path) in &raw.secrets {
        let field = format!("secrets.{name}");
        let name_ok = collector.parse(&field, check_secret_name(name)).is_some();
        if let Some(path) = collector.absolute_path(&field, path) {
            if name_ok {
                secrets.insert(name.clone(), path);
            }
        }
    }
    let health_path = match &raw.health.path {
        None => Some(None),
        Some(path) => collector.parse("health.path", check_health_path(path)).map(Some),
    };
    let mut accepted_statuses = Vec::new();
    match &raw.health.accepted_statuses {
        None => accepted_statuses.push(200),
        Some(statuses) if statuses.is_empty() => {
            collector.push("health.accepted_statuses", "must list at least one status")
        }
        Some(statuses) => {
            for status in statuses {
                match u16::try_from(*status) {
                    Ok(status) if (100..=599).contains(&status) => accepted_statuses.push(status),
                    _ => collector.push(
                        "health.accepted_statuses",
                        format!("{status} is not an HTTP status (100 to 599)"),
                    ),
                }
            }
            accepted_statuses.sort_unstable();
            accepted_statuses.dedup();
        }
    }
    let health_timeout = collector.duration("health.timeout", raw.health.timeout.as_deref(), DEFAULT_HEALTH_TIMEOUT);

    Some(AppConfig {
        domain: domain?,
        recipe: recipe?,
        version: version?,
        stateful: raw.stateful,
        auto_update: raw.auto_update,
        schedule: schedule?,
        allow_major: raw.allow_major,
        fleet_managed: raw.fleet_managed,
        deploy_timeout: deploy_timeout?,
        depends_on: depends_on.into_iter().collect(),
        env: raw.env,
        secrets,
        health: HealthConfig {
            path: health_path?,
            accepted_statuses,
            timeout: health_timeout?,
        },
    })
}

/// The first dependency cycle found (as `a -> b -> a`), if any. Runs only on
/// apps whose `depends_on` all name other declared apps.
fn find_dependency_cycle(apps: &[AppConfig]) -> Option<Vec<Domain>> {
    let edges: BTreeMap<&Domain, &[Domain]> = apps
        .iter()
        .map(|app| (&app.domain, app.depends_on.as_slice()))
        .collect();
    let mut finished: BTreeSet<&Domain> = BTreeSet::new();
    for start in edges.keys() {
        let mut path: Vec<&Domain> = Vec::new();
        if let Some(cycle) = visit(start, &edges, &mut path, &mut finished) {
            return Some(cycle);
        }
    }
    None
}

fn visit<'a>(
    node: &'a Domain,
    edges: &BTreeMap<&'a Domain, &'a [Domain]>,
    path: &mut Vec<&'a Domain>,
    finished: &mut BTreeSet<&'a Domain>,
) -> Option<Vec<Domain>> {
    if let Some(position) = path.iter().position(|on_path| *on_path == node) {
        let mut cycle: Vec<Domain> = path[position..].iter().map(|domain| (*domain).clone()).collect();
        cycle.push(node.clone());
        return Some(cycle);
    }
    if finished.contains(node) {
        return None;
    }
    path.push(node);
    for next in edges.get(node).copied().unwrap_or_default() {
        if let Some(cycle) = visit(next, edges, path, finished) {
            return Some(cycle);
        }
    }
    path.pop();
    finished.insert(node);
    None
}

#[cfg(test)]
mod tests;

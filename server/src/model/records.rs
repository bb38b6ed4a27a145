//! The server's records: hosts, apps, operations, tokens, certificates and
//! alerts, as plain serde types. The store encodes and keeps them (with a
//! format byte in front, `store::codec`); proto types never reach here: the
//! API layer converts at its edge.

use std::collections::BTreeMap;

use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch; the records' only time representation.
pub type UnixMillis = u64;

pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Facts an agent reported about its host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFactsRecord {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub docker_version: String,
    pub labels: BTreeMap<String, String>,
}

/// One host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: HostId,
    pub registered_at: UnixMillis,
    /// Last contact as last written; kept coarse on purpose
    /// (ARCHITECTURE.md, "Storage": heartbeats are not persisted).
    pub last_seen: UnixMillis,
    pub agent_version: String,
    pub facts: HostFactsRecord,
    /// Highest durable event sequence number applied for this host.
    pub last_seq: u64,
    pub app_count: u32,
    /// Labels from the join token the host enrolled with.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Expiry of the host's newest certificate.
    #[serde(default)]
    pub certificate_not_after: Option<UnixMillis>,
    /// How the host enrolled, so that an enrolment whose answer was lost can
    /// be retried (same token, same key) until the host first connects.
    #[serde(default)]
    pub enrollment: Option<EnrollmentRecord>,
}

impl HostRecord {
    /// A host as it stands when it is created at `at`: no facts, labels or
    /// apps yet, no event applied. Enrolment fills in what it knows.
    pub fn new(host_id: HostId, at: UnixMillis) -> HostRecord {
        HostRecord {
            host_id,
            registered_at: at,
            last_seen: at,
            agent_version: String::new(),
            facts: HostFactsRecord::default(),
            last_seq: 0,
            app_count: 0,
            labels: BTreeMap::new(),
            certificate_not_after: None,
            enrollment: None,
        }
    }
}

/// The token and key of a host's enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentRecord {
    pub token_id: String,
    /// Hex SHA-256 of the enrolled public key.
    pub public_key: String,
}

/// Observed state of an app, as the agent classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppStateRecord {
    Unknown,
    Converged,
    Converging,
    Degraded,
    NotDeployed,
}

/// One app on one host, as last observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub domain: Domain,
    pub recipe: RecipeName,
    pub observed_version: Option<CoopVersion>,
    pub declared_version: Option<CoopVersion>,
    pub state: AppStateRecord,
    pub desired_replicas: u32,
    pub running_replicas: u32,
    pub drift: Vec<String>,
    pub chaos: bool,
    /// When the server stored this observation.
    pub observed_at: UnixMillis,
    /// Newest version available within the running major, if the agent knows.
    #[serde(default)]
    pub available_version: Option<CoopVersion>,
    /// Newest version available in any major, if the agent knows.
    #[serde(default)]
    pub available_newest: Option<CoopVersion>,
    /// The host pins this app for good (`fleetManaged = false`); rollouts skip it.
    #[serde(default)]
    pub pinned_by_host: bool,
    /// The fleet rollout target the agent recorded for this app.
    #[serde(default)]
    pub fleet_target: Option<CoopVersion>,
    /// Stateful and its stack has no volumes: it cannot be snapshotted, so
    /// its agent refuses an upgrade and a rollout's plan skips it.
    #[serde(default)]
    pub unsnapshottable: bool,
}

impl AppRecord {
    /// An app observed converged at `version` with its one replica running,
    /// and nothing else known (no declared version, drift or targets).
    pub fn converged(domain: Domain, recipe: RecipeName, version: Option<CoopVersion>) -> AppRecord {
        AppRecord {
            domain,
            recipe,
            observed_version: version,
            declared_version: None,
            state: AppStateRecord::Converged,
            desired_replicas: 1,
            running_replicas: 1,
            drift: vec![],
            chaos: false,
            observed_at: 0,
            available_version: None,
            available_newest: None,
            pinned_by_host: false,
            fleet_target: None,
            unsnapshottable: false,
        }
    }

    /// Equal in everything the agent observed, ignoring when it was stored.
    pub fn same_observation(&self, other: &AppRecord) -> bool {
        AppRecord {
            observed_at: 0,
            ..self.clone()
        } == AppRecord {
            observed_at: 0,
            ..other.clone()
        }
    }
}

/// Phase of an operation as last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationPhaseRecord {
    Unknown,
    Accepted,
    Snapshotting,
    Deploying,
    Verifying,
    RollingBack,
}

/// Final outcome of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationOutcomeRecord {
    Unknown,
    Succeeded,
    RolledBack,
    Held,
    Failed,
    Skipped,
}

/// What the server knows of one operation on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    pub host_id: HostId,
    pub operation_id: String,
    pub domain: Domain,
    pub phase: OperationPhaseRecord,
    pub outcome: Option<OperationOutcomeRecord>,
    /// Running before the operation.
    pub from_version: Option<CoopVersion>,
    /// Asked for (in records stored before `running_version`, what ran after).
    pub to_version: Option<CoopVersion>,
    /// Running after the operation, as its result reported.
    #[serde(default)]
    pub running_version: Option<CoopVersion>,
    pub message: String,
    pub updated_at: UnixMillis,
}

/// A durable event from an agent, applied at most once per sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The complete observed inventory.
    Inventory(Vec<AppRecord>),
    /// An operation entered a phase.
    Progress {
        operation_id: String,
        domain: Domain,
        phase: OperationPhaseRecord,
        message: String,
    },
    /// An operation finished.
    Result {
        operation_id: String,
        domain: Domain,
        outcome: OperationOutcomeRecord,
        from_version: Option<CoopVersion>,
        to_version: Option<CoopVersion>,
        running_version: Option<CoopVersion>,
        message: String,
    },
    /// An app's alert was raised (replacing its open one) or cleared.
    Alert(AlertEventRecord),
}

/// A join token. The secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_hash: String,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub uses_left: u32,
    pub revoked: bool,
    pub labels: BTreeMap<String, String>,
}

/// Why a join token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Unknown id or wrong secret: the caller learns nothing more.
    Invalid,
    Expired,
    UsedUp,
    Revoked,
}

/// What a certificate was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateKind {
    Host,
    Admin,
}

/// One certificate the CA signed, kept for listing and revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// Lowercase hex serial number.
    pub serial: String,
    pub kind: CertificateKind,
    /// Host id or admin name.
    pub identity: String,
    pub issued_at: UnixMillis,
    pub not_after: UnixMillis,
    pub revoked_at: Option<UnixMillis>,
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverityRecord {
    Unknown,
    /// The app runs a healthy version, but not the one asked for.
    Warning,
    /// The app may be down.
    Critical,
}

/// Where an alert is in its life (`model::alerts` decides the moves).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStateRecord {
    #[default]
    Open,
    Acknowledged,
    Resolved,
}

/// An admin's acknowledgement of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertAckRecord {
    pub by: String,
    pub reason: String,
    pub at: UnixMillis,
    /// `None`: until the app fails again or recovers.
    pub until: Option<UnixMillis>,
}

/// The alert of one app on one host: a newer raise replaces it (re-opening
/// an acknowledged one), a clear resolves it, an admin acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Short id, unique in the store (a counter); 0 in records stored
    /// before ids existed, until `Store::open` numbers them.
    #[serde(default)]
    pub id: u64,
    /// As stored; `AlertRecord::state_at` applies an acknowledgement's expiry.
    #[serde(default)]
    pub state: AlertStateRecord,
    #[serde(default)]
    pub acknowledged: Option<AlertAckRecord>,
    #[serde(default)]
    pub resolved_at: Option<UnixMillis>,
    pub host_id: HostId,
    pub domain: Domain,
    pub recipe: Option<RecipeName>,
    pub from_version: Option<CoopVersion>,
    pub to_version: Option<CoopVersion>,
    /// Running after the operation; `None` in records stored before it was kept.
    #[serde(default)]
    pub running_version: Option<CoopVersion>,
    pub outcome: OperationOutcomeRecord,
    pub severity: AlertSeverityRecord,
    /// Free text for people, bounded and stripped of control characters.
    pub reason: String,
    pub operation_id: Option<String>,
    pub snapshot_path: String,
    /// When the agent raised it, bounded on receipt (`api::convert::host_time`).
    pub raised_at: UnixMillis,
    /// When the server received it (listings sort by it); `None` in records
    /// stored before it was kept.
    #[serde(default)]
    pub received_at: Option<UnixMillis>,
    /// The agent's own time, in seconds since 1970, when it was beyond the
    /// bounds and `raised_at` is the receive time instead.
    #[serde(default)]
    pub reported_raised_at: Option<i64>,
}

/// An alert event as the agent sent it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEventRecord {
    pub domain: Domain,
    pub recipe: Option<RecipeName>,
    pub from_version: Option<CoopVersion>,
    pub to_version: Option<CoopVersion>,
    pub running_version: Option<CoopVersion>,
    pub outcome: OperationOutcomeRecord,
    pub severity: AlertSeverityRecord,
    pub reason: String,
    pub operation_id: Option<String>,
    pub snapshot_path: String,
    pub raised_at: UnixMillis,
    pub received_at: UnixMillis,
    pub reported_raised_at: Option<i64>,
    /// True: the app's open alert is removed instead.
    pub cleared: bool,
}

//! Conversions between wire messages and store records: the server's edge.
//! Every string from the wire is parsed into a domain type here; a message
//! that does not parse is refused whole, with a status that names the field.

use ccfleet_proto::pb;
use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};
use tonic::Status;

use crate::store::{
    AppRecord, AppStateRecord, HostFactsRecord, HostRecord, OperationOutcomeRecord, OperationPhaseRecord, UnixMillis,
};

/// Bounds on free text and collections from agents, so one misbehaving agent
/// cannot fill the store.
const MAX_TEXT: usize = 4096;
const MAX_APPS: usize = 1000;
const MAX_LABELS: usize = 64;
const MAX_DRIFT_REASONS: usize = 32;

pub fn invalid(field: &str, error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {error}"))
}

fn text(field: &str, value: &str) -> Result<String, Status> {
    if value.len() > MAX_TEXT {
        return Err(invalid(
            field,
            format!("is {} bytes long, the limit is {MAX_TEXT}", value.len()),
        ));
    }
    Ok(value.to_owned())
}

pub fn host_id(field: &str, value: &str) -> Result<HostId, Status> {
    value.parse().map_err(|error| invalid(field, error))
}

pub fn recipe(field: &str, value: &str) -> Result<RecipeName, Status> {
    value.parse().map_err(|error| invalid(field, error))
}

fn optional_version(field: &str, value: &str) -> Result<Option<CoopVersion>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|error| invalid(field, error))
}

pub fn domain(field: &str, value: &str) -> Result<Domain, Status> {
    value.parse().map_err(|error| invalid(field, error))
}

pub fn facts(facts: Option<pb::HostFacts>) -> Result<HostFactsRecord, Status> {
    let facts = facts.unwrap_or_default();
    if facts.labels.len() > MAX_LABELS {
        return Err(invalid(
            "facts.labels",
            format!("has {} labels, the limit is {MAX_LABELS}", facts.labels.len()),
        ));
    }
    let mut labels = std::collections::BTreeMap::new();
    for (key, value) in facts.labels {
        labels.insert(text("facts.labels", &key)?, text("facts.labels", &value)?);
    }
    Ok(HostFactsRecord {
        hostname: text("facts.hostname", &facts.hostname)?,
        os: text("facts.os", &facts.os)?,
        arch: text("facts.arch", &facts.arch)?,
        docker_version: text("facts.docker_version", &facts.docker_version)?,
        labels,
    })
}

/// Converts a full inventory, refusing it whole if any app is invalid or a
/// domain appears twice.
pub fn inventory(inventory: Option<pb::Inventory>, now: UnixMillis) -> Result<Vec<AppRecord>, Status> {
    let apps = inventory.unwrap_or_default().apps;
    if apps.len() > MAX_APPS {
        return Err(invalid(
            "inventory.apps",
            format!("has {} apps, the limit is {MAX_APPS}", apps.len()),
        ));
    }
    let mut records: Vec<AppRecord> = Vec::with_capacity(apps.len());
    for (index, app) in apps.into_iter().enumerate() {
        let field = |name: &str| format!("inventory.apps[{index}].{name}");
        let domain = domain(&field("domain"), &app.domain)?;
        if records.iter().any(|record| record.domain == domain) {
            return Err(invalid(
                &field("domain"),
                format!("{domain} appears twice in the inventory"),
            ));
        }
        if app.drift.len() > MAX_DRIFT_REASONS {
            return Err(invalid(
                &field("drift"),
                format!("has {} entries, the limit is {MAX_DRIFT_REASONS}", app.drift.len()),
            ));
        }
        let state = match pb::AppState::try_from(app.state) {
            Ok(pb::AppState::Converged) => AppStateRecord::Converged,
            Ok(pb::AppState::Converging) => AppStateRecord::Converging,
            Ok(pb::AppState::Degraded) => AppStateRecord::Degraded,
            Ok(pb::AppState::NotDeployed) => AppStateRecord::NotDeployed,
            Ok(pb::AppState::Unspecified) | Err(_) => AppStateRecord::Unknown,
        };
        records.push(AppRecord {
            recipe: recipe(&field("recipe"), &app.recipe)?,
            observed_version: optional_version(&field("observed_version"), &app.observed_version)?,
            declared_version: optional_version(&field("declared_version"), &app.declared_version)?,
            state,
            desired_replicas: app.desired_replicas,
            running_replicas: app.running_replicas,
            drift: app
                .drift
                .iter()
                .map(|reason| text(&field("drift"), reason))
                .collect::<Result<_, _>>()?,
            chaos: app.chaos,
            observed_at: now,
            domain,
        });
    }
    records.sort_by(|a, b| a.domain.cmp(&b.domain));
    Ok(records)
}

pub fn operation_id(value: &str) -> Result<String, Status> {
    let valid = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(invalid(
            "operation_id",
            format!("{value:?} must be 1 to 128 ASCII letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(value.to_owned())
}

pub fn phase(value: i32) -> OperationPhaseRecord {
    match pb::OperationPhase::try_from(value) {
        Ok(pb::OperationPhase::Accepted) => OperationPhaseRecord::Accepted,
        Ok(pb::OperationPhase::Snapshotting) => OperationPhaseRecord::Snapshotting,
        Ok(pb::OperationPhase::Deploying) => OperationPhaseRecord::Deploying,
        Ok(pb::OperationPhase::Verifying) => OperationPhaseRecord::Verifying,
        Ok(pb::OperationPhase::RollingBack) => OperationPhaseRecord::RollingBack,
        Ok(pb::OperationPhase::Unspecified) | Err(_) => OperationPhaseRecord::Unknown,
    }
}

pub fn outcome(value: i32) -> OperationOutcomeRecord {
    match pb::OperationOutcome::try_from(value) {
        Ok(pb::OperationOutcome::Succeeded) => OperationOutcomeRecord::Succeeded,
        Ok(pb::OperationOutcome::RolledBack) => OperationOutcomeRecord::RolledBack,
        Ok(pb::OperationOutcome::Held) => OperationOutcomeRecord::Held,
        Ok(pb::OperationOutcome::Failed) => OperationOutcomeRecord::Failed,
        Ok(pb::OperationOutcome::Skipped) => OperationOutcomeRecord::Skipped,
        Ok(pb::OperationOutcome::Unspecified) | Err(_) => OperationOutcomeRecord::Unknown,
    }
}

pub fn progress_fields(message: &str) -> Result<String, Status> {
    text("message", message)
}

pub fn versions(from: &str, to: &str) -> Result<(Option<CoopVersion>, Option<CoopVersion>), Status> {
    Ok((
        optional_version("from_version", from)?,
        optional_version("to_version", to)?,
    ))
}

pub fn timestamp(millis: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (millis / 1000) as i64,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    }
}

pub fn app_state(state: AppStateRecord) -> pb::AppState {
    match state {
        AppStateRecord::Unknown => pb::AppState::Unspecified,
        AppStateRecord::Converged => pb::AppState::Converged,
        AppStateRecord::Converging => pb::AppState::Converging,
        AppStateRecord::Degraded => pb::AppState::Degraded,
        AppStateRecord::NotDeployed => pb::AppState::NotDeployed,
    }
}

pub fn observed_app(app: &AppRecord) -> pb::ObservedApp {
    pb::ObservedApp {
        domain: app.domain.to_string(),
        recipe: app.recipe.to_string(),
        observed_version: app
            .observed_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        declared_version: app
            .declared_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        state: app_state(app.state) as i32,
        desired_replicas: app.desired_replicas,
        running_replicas: app.running_replicas,
        drift: app.drift.clone(),
        chaos: app.chaos,
    }
}

pub fn host(host: &HostRecord, online: bool) -> pb::Host {
    pb::Host {
        host_id: host.host_id.to_string(),
        status: host_status(online) as i32,
        last_seen: Some(timestamp(host.last_seen)),
        registered_at: Some(timestamp(host.registered_at)),
        agent_version: host.agent_version.clone(),
        facts: Some(pb::HostFacts {
            hostname: host.facts.hostname.clone(),
            os: host.facts.os.clone(),
            arch: host.facts.arch.clone(),
            docker_version: host.facts.docker_version.clone(),
            labels: host.facts.labels.clone().into_iter().collect(),
        }),
        app_count: host.app_count,
        labels: host.labels.clone().into_iter().collect(),
        certificate_not_after: host.certificate_not_after.map(timestamp),
        last_event_seq: host.last_seq,
    }
}

pub fn host_status(online: bool) -> pb::HostStatus {
    if online {
        pb::HostStatus::Online
    } else {
        pb::HostStatus::Offline
    }
}

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

/// Free text for people (drift reasons, messages, facts): too long is cut at
/// a character boundary, not refused: refusing a durable event would block
/// every event queued behind it in the agent's outbox, for good.
pub fn bounded_text(field: &str, value: &str) -> String {
    if value.len() <= MAX_TEXT {
        return value.to_owned();
    }
    const MARK: &str = " [truncated]";
    let mut end = MAX_TEXT - MARK.len();
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    tracing::warn!(field, bytes = value.len(), "truncated overlong text from an agent");
    format!("{}{MARK}", &value[..end])
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
        labels.insert(bounded_text("facts.labels", &key), bounded_text("facts.labels", &value));
    }
    Ok(HostFactsRecord {
        hostname: bounded_text("facts.hostname", &facts.hostname),
        os: bounded_text("facts.os", &facts.os),
        arch: bounded_text("facts.arch", &facts.arch),
        docker_version: bounded_text("facts.docker_version", &facts.docker_version),
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
            drift: bounded_reasons(&field("drift"), &app.drift),
            chaos: app.chaos,
            observed_at: now,
            available_version: optional_version(&field("available_version"), &app.available_version)?,
            available_newest: optional_version(&field("available_newest"), &app.available_newest)?,
            pinned_by_host: app.pinned_by_host,
            fleet_target: optional_version(&field("fleet_target"), &app.fleet_target)?,
            domain,
        });
    }
    records.sort_by(|a, b| a.domain.cmp(&b.domain));
    Ok(records)
}

/// At most `MAX_DRIFT_REASONS` reasons, each bounded; the last says how many
/// were left out.
fn bounded_reasons(field: &str, reasons: &[String]) -> Vec<String> {
    let mut kept: Vec<String> = reasons
        .iter()
        .take(MAX_DRIFT_REASONS)
        .map(|reason| bounded_text(field, reason))
        .collect();
    if reasons.len() > MAX_DRIFT_REASONS {
        kept.pop();
        kept.push(format!("and {} more reasons", reasons.len() - MAX_DRIFT_REASONS + 1));
    }
    kept
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

pub fn message(message: &str) -> String {
    bounded_text("message", message)
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
        available_version: optional_text(&app.available_version),
        available_newest: optional_text(&app.available_newest),
        pinned_by_host: app.pinned_by_host,
        fleet_target: optional_text(&app.fleet_target),
    }
}

fn optional_text(version: &Option<CoopVersion>) -> String {
    version.as_ref().map(ToString::to_string).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_text_is_cut_at_a_character_boundary_not_refused() {
        let long = "é".repeat(MAX_TEXT);
        let cut = bounded_text("drift", &long);
        assert!(cut.len() <= MAX_TEXT && cut.ends_with(" [truncated]"), "{}", cut.len());
        assert_eq!(bounded_text("drift", "short"), "short");
    }

    #[test]
    fn too_many_reasons_are_summarised() {
        let reasons: Vec<String> = (0..40).map(|n| format!("reason {n}")).collect();
        let kept = bounded_reasons("drift", &reasons);
        assert_eq!(kept.len(), MAX_DRIFT_REASONS);
        assert_eq!(kept.last().unwrap(), "and 9 more reasons");
        assert_eq!(kept[30], "reason 30");
    }
}

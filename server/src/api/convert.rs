//! Conversions between wire messages and store records: the server's edge.
//! Every string from the wire is parsed into a domain type here; a message
//! that does not parse is refused whole, with a status that names the field.
//! (Over 600 lines: half of it is the table tests of these conversions.)

use ccfleet_proto::pb;
use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};
use tonic::Status;

use crate::model::{
    AlertEventRecord, AlertRecord, AlertSeverityRecord, AlertStateRecord, AppRecord, AppStateRecord, HostFactsRecord,
    HostRecord, OperationOutcomeRecord, OperationPhaseRecord, OperationRecord, UnixMillis,
};

/// Bounds on free text and collections from agents, so one misbehaving agent
/// cannot fill the store, and every stored record stays far below sled's
/// 128 KiB blob threshold (a record above it once froze the store thread
/// inside `flush`): a host record is at most about 20 KiB (facts, 32 labels
/// of 64 + 256 bytes), an app record about 9 KiB (16 drift reasons of 512
/// bytes), an operation or alert record about 6 KiB.
pub const MAX_TEXT: usize = 4096;
/// Short texts: facts, drift reasons, label keys and values, agent version.
pub const MAX_SHORT_TEXT: usize = 256;
pub const MAX_DRIFT_REASON: usize = 512;
const MAX_APPS: usize = 1000;
pub const MAX_LABELS: usize = 32;
pub const MAX_DRIFT_REASONS: usize = 16;
const MAX_PATH_TEXT: usize = 1024;

pub fn invalid(field: &str, error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {error}"))
}

/// Free text for people (messages): see [`bounded_text_of`].
pub fn bounded_text(field: &str, value: &str) -> String {
    bounded_text_of(field, value, MAX_TEXT)
}

/// Marker appended to text cut at its bound.
pub const TRUNCATED: &str = " [truncated]";

/// Free text for people (drift reasons, messages, facts), made safe to store
/// and to print: control characters and Unicode direction overrides are
/// removed (tabs and line breaks become spaces), so a host cannot clear an
/// admin's screen, set a terminal's title, write its clipboard (OSC 52) or
/// reorder what a table shows; text longer than `max` bytes is cut at a
/// character boundary and marked, not refused: refusing a durable event would
/// block every event queued behind it in the agent's outbox, for good.
pub fn bounded_text_of(field: &str, value: &str, max: usize) -> String {
    let mut clean = String::with_capacity(value.len().min(max));
    let mut stripped = false;
    for character in value.chars() {
        if matches!(character, '\t' | '\n' | '\r') {
            clean.push(' ');
        } else if is_unprintable(character) {
            stripped = true;
        } else {
            clean.push(character);
        }
    }
    if stripped {
        tracing::warn!(field, "removed control characters from text sent by an agent");
    }
    if clean.len() <= max {
        return clean;
    }
    let mut end = max - TRUNCATED.len();
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    tracing::warn!(field, bytes = value.len(), "truncated overlong text from an agent");
    format!("{}{TRUNCATED}", &clean[..end])
}

/// Control characters (C0, DEL, C1) and the invisible formatting characters
/// that change how text is displayed (bidirectional overrides and isolates,
/// zero-width characters, the byte-order mark).
pub fn is_unprintable(character: char) -> bool {
    character.is_control()
        || matches!(
            character,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
        )
}

pub fn host_id(field: &str, value: &str) -> Result<HostId, Status> {
    value.parse().map_err(|error| invalid(field, error))
}

pub fn admin_name(field: &str, value: &str) -> Result<ccfleet_proto::AdminName, Status> {
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

const MAX_LABEL_KEY: usize = 64;

/// The agent version from a hello, bounded and printable.
pub fn agent_version(value: &str) -> String {
    bounded_text_of("hello.agent_version", value, 64)
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
        labels.insert(
            bounded_text_of("facts.labels", &key, MAX_LABEL_KEY),
            bounded_text_of("facts.labels", &value, MAX_SHORT_TEXT),
        );
    }
    Ok(HostFactsRecord {
        hostname: bounded_text_of("facts.hostname", &facts.hostname, MAX_SHORT_TEXT),
        os: bounded_text_of("facts.os", &facts.os, MAX_SHORT_TEXT),
        arch: bounded_text_of("facts.arch", &facts.arch, MAX_SHORT_TEXT),
        docker_version: bounded_text_of("facts.docker_version", &facts.docker_version, MAX_SHORT_TEXT),
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
            unsnapshottable: app.unsnapshottable,
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
        .map(|reason| bounded_text_of(field, reason, MAX_DRIFT_REASON))
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

/// The version a host reports running after an operation (empty: none).
pub fn running_version(running: &str) -> Result<Option<CoopVersion>, Status> {
    optional_version("running_version", running)
}

/// An alert event, validated whole: names parse, free text is bounded and
/// printable, its time is bounded by the receive time `now` (`host_time`).
pub fn alert(alert: pb::AlertEvent, now: UnixMillis) -> Result<AlertEventRecord, Status> {
    let (from_version, to_version) = versions(&alert.from_version, &alert.to_version)?;
    let raised_at = host_time(alert.raised_at.as_ref(), now);
    Ok(AlertEventRecord {
        domain: domain("alert.domain", &alert.domain)?,
        recipe: if alert.recipe.is_empty() {
            None
        } else {
            Some(recipe("alert.recipe", &alert.recipe)?)
        },
        from_version,
        to_version,
        running_version: running_version(&alert.running_version)?,
        outcome: outcome(alert.outcome),
        severity: match pb::AlertSeverity::try_from(alert.severity) {
            Ok(pb::AlertSeverity::Warning) => AlertSeverityRecord::Warning,
            Ok(pb::AlertSeverity::Critical) => AlertSeverityRecord::Critical,
            Ok(pb::AlertSeverity::Unspecified) | Err(_) => AlertSeverityRecord::Unknown,
        },
        reason: bounded_text("alert.reason", &alert.reason),
        operation_id: if alert.operation_id.is_empty() {
            None
        } else {
            Some(operation_id(&alert.operation_id)?)
        },
        snapshot_path: bounded_text_of("alert.snapshot_path", &alert.snapshot_path, MAX_PATH_TEXT),
        raised_at: raised_at.at,
        received_at: now,
        reported_raised_at: raised_at.reported_seconds,
        cleared: alert.cleared,
    })
}

/// How far ahead of the server's clock a host's time may be: ordinary clock
/// skew. Beyond it the time is the server's receive time.
pub const MAX_HOST_CLOCK_AHEAD_MILLIS: UnixMillis = 5 * 60 * 1000;

/// A time a host reported, bounded on receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTime {
    /// What the server stores and shows: never before 1970 nor after the
    /// receive time.
    pub at: UnixMillis,
    /// The host's value in seconds, kept when it was out of bounds (before
    /// 1970, or more than `MAX_HOST_CLOCK_AHEAD_MILLIS` ahead) and `at` is
    /// the receive time instead.
    pub reported_seconds: Option<i64>,
}

/// Bounds a host's time by the server's receive time `received_at`: a
/// missing time is the receive time; a time ahead of it by at most
/// `MAX_HOST_CLOCK_AHEAD_MILLIS` (clock skew) is the receive time; a time
/// before 1970 or further ahead is the receive time with the reported value
/// kept aside; an earlier time (an alert that waited in the agent's outbox)
/// stays. So no host time is in the future of the server, and none is
/// beyond what every formatter can show.
pub fn host_time(reported: Option<&prost_types::Timestamp>, received_at: UnixMillis) -> HostTime {
    let Some(time) = reported else {
        return HostTime {
            at: received_at,
            reported_seconds: None,
        };
    };
    let out_of_bounds = HostTime {
        at: received_at,
        reported_seconds: Some(time.seconds),
    };
    if time.seconds < 0 {
        return out_of_bounds;
    }
    let millis = (time.seconds as u64)
        .saturating_mul(1000)
        .saturating_add(time.nanos.clamp(0, 999_999_999) as u64 / 1_000_000);
    if millis > received_at.saturating_add(MAX_HOST_CLOCK_AHEAD_MILLIS) {
        out_of_bounds
    } else {
        HostTime {
            at: millis.min(received_at),
            reported_seconds: None,
        }
    }
}

/// An alert on the wire, its state as it stands at `now` (an expired
/// acknowledgement is open).
pub fn alert_to_wire(alert: &AlertRecord, now: UnixMillis) -> pb::Alert {
    let ack = alert.acknowledged.as_ref();
    pb::Alert {
        id: alert.id.to_string(),
        state: match alert.state_at(now) {
            AlertStateRecord::Open => pb::AlertState::Open,
            AlertStateRecord::Acknowledged => pb::AlertState::Acknowledged,
            AlertStateRecord::Resolved => pb::AlertState::Resolved,
        } as i32,
        acknowledged_by: ack.map(|ack| ack.by.clone()).unwrap_or_default(),
        acknowledged_reason: ack.map(|ack| ack.reason.clone()).unwrap_or_default(),
        acknowledged_at: ack.map(|ack| timestamp(ack.at)),
        acknowledged_until: ack.and_then(|ack| ack.until).map(timestamp),
        resolved_at: alert.resolved_at.map(timestamp),
        host_id: alert.host_id.to_string(),
        domain: alert.domain.to_string(),
        severity: match alert.severity {
            AlertSeverityRecord::Unknown => pb::AlertSeverity::Unspecified,
            AlertSeverityRecord::Warning => pb::AlertSeverity::Warning,
            AlertSeverityRecord::Critical => pb::AlertSeverity::Critical,
        } as i32,
        message: alert.reason.clone(),
        raised_at: Some(timestamp(alert.raised_at)),
        received_at: alert.received_at.map(timestamp),
        reported_raised_at_seconds: alert.reported_raised_at,
        operation_id: alert.operation_id.clone().unwrap_or_default(),
        recipe: alert.recipe.as_ref().map(ToString::to_string).unwrap_or_default(),
        from_version: version_text(alert.from_version.as_ref()),
        to_version: version_text(alert.to_version.as_ref()),
        running_version: version_text(alert.running_version.as_ref()),
        outcome: outcome_to_wire(alert.outcome) as i32,
        snapshot_path: alert.snapshot_path.clone(),
    }
}

pub fn operation_to_wire(operation: &OperationRecord) -> pb::Operation {
    pb::Operation {
        host_id: operation.host_id.to_string(),
        operation_id: operation.operation_id.clone(),
        domain: operation.domain.to_string(),
        phase: match operation.phase {
            OperationPhaseRecord::Unknown => pb::OperationPhase::Unspecified,
            OperationPhaseRecord::Accepted => pb::OperationPhase::Accepted,
            OperationPhaseRecord::Snapshotting => pb::OperationPhase::Snapshotting,
            OperationPhaseRecord::Deploying => pb::OperationPhase::Deploying,
            OperationPhaseRecord::Verifying => pb::OperationPhase::Verifying,
            OperationPhaseRecord::RollingBack => pb::OperationPhase::RollingBack,
        } as i32,
        outcome: operation
            .outcome
            .map_or(pb::OperationOutcome::Unspecified, outcome_to_wire) as i32,
        from_version: version_text(operation.from_version.as_ref()),
        to_version: version_text(operation.to_version.as_ref()),
        running_version: version_text(operation.running_version.as_ref()),
        message: operation.message.clone(),
        updated_at: Some(timestamp(operation.updated_at)),
    }
}

fn version_text(version: Option<&CoopVersion>) -> String {
    version.map(ToString::to_string).unwrap_or_default()
}

fn outcome_to_wire(outcome: OperationOutcomeRecord) -> pb::OperationOutcome {
    match outcome {
        OperationOutcomeRecord::Unknown => pb::OperationOutcome::Unspecified,
        OperationOutcomeRecord::Succeeded => pb::OperationOutcome::Succeeded,
        OperationOutcomeRecord::RolledBack => pb::OperationOutcome::RolledBack,
        OperationOutcomeRecord::Held => pb::OperationOutcome::Held,
        OperationOutcomeRecord::Failed => pb::OperationOutcome::Failed,
        OperationOutcomeRecord::Skipped => pb::OperationOutcome::Skipped,
    }
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
        unsnapshottable: app.unsnapshottable,
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
    fn control_characters_and_direction_overrides_are_stripped() {
        let cases = [
            ("plain", "plain"),
            ("\u{1b}[2J\u{1b}[Hconverged", "[2J[Hconverged"),
            ("\u{1b}]52;c;aGVsbG8=\u{7}title", "]52;c;aGVsbG8=title"),
            ("a\tb\nc\rd", "a b c d"),
            ("\u{9b}31mred\u{7f}", "31mred"),
            ("left\u{202E}thgir\u{2066}x\u{200B}y\u{FEFF}", "leftthgirxy"),
            ("naïve ☃ 日本", "naïve ☃ 日本"),
        ];
        for (input, expected) in cases {
            assert_eq!(bounded_text("drift", input), expected, "{input:?}");
        }
    }

    #[test]
    fn every_bound_keeps_records_far_below_the_blob_threshold() {
        let huge = "x".repeat(100_000);
        let facts = facts(Some(pb::HostFacts {
            hostname: huge.clone(),
            os: huge.clone(),
            arch: huge.clone(),
            docker_version: huge.clone(),
            labels: (0..MAX_LABELS).map(|n| (format!("{n}{huge}"), huge.clone())).collect(),
        }))
        .unwrap();
        let app = pb::ObservedApp {
            domain: "a.example.org".into(),
            recipe: "ghost".into(),
            drift: vec![huge.clone(); 100],
            ..Default::default()
        };
        let apps = inventory(Some(pb::Inventory { apps: vec![app] }), 1).unwrap();
        let host = HostRecord {
            host_id: "web-1".parse().unwrap(),
            registered_at: 1,
            last_seen: 1,
            agent_version: agent_version(&huge),
            facts,
            last_seq: 1,
            app_count: 1,
            labels: Default::default(),
            certificate_not_after: None,
            enrollment: None,
        };
        let host_bytes = serde_json::to_vec(&host).unwrap().len();
        let app_bytes = serde_json::to_vec(&apps[0]).unwrap().len();
        // sled stores values above 128 KiB as separate blob files.
        assert!(host_bytes < 32 * 1024, "host record of {host_bytes} bytes");
        assert!(app_bytes < 16 * 1024, "app record of {app_bytes} bytes");
        let alert = alert(
            pb::AlertEvent {
                domain: "a.example.org".into(),
                reason: huge.clone(),
                snapshot_path: huge.clone(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        assert!(alert.reason.len() <= MAX_TEXT && alert.reason.ends_with(TRUNCATED));
        assert!(alert.snapshot_path.len() <= 1024);
    }

    #[test]
    fn host_times_are_bounded_by_the_receive_time() {
        let received = 1_000_000_000_000; // 2001-09-09, in milliseconds
        let time = |seconds: i64, nanos: i32| prost_types::Timestamp { seconds, nanos };
        // (reported, stored, reported value kept aside)
        let cases = [
            (None, received, None),
            // An earlier time (from the agent's outbox) stays.
            (Some(time(999_000_000, 5_000_000)), 999_000_000_005, None),
            (Some(time(0, 0)), 0, None),
            // Ahead by up to five minutes: clock skew, the receive time.
            (Some(time(1_000_000_300, 0)), received, None),
            (Some(time(1_000_000_000, 999_999_999)), received, None),
            // Further ahead, or before 1970: the receive time, the host's value kept.
            (Some(time(1_000_000_301, 0)), received, Some(1_000_000_301)),
            (Some(time(1 << 62, 0)), received, Some(1 << 62)),
            (Some(time(i64::MAX, i32::MAX)), received, Some(i64::MAX)),
            (Some(time(-1, 0)), received, Some(-1)),
            (Some(time(i64::MIN, i32::MIN)), received, Some(i64::MIN)),
            // Nanoseconds out of their range are clamped.
            (Some(time(999_000_000, -5)), 999_000_000_000, None),
        ];
        for (reported, at, reported_seconds) in cases {
            assert_eq!(
                host_time(reported.as_ref(), received),
                HostTime { at, reported_seconds },
                "{reported:?}"
            );
        }
    }

    #[test]
    fn alerts_are_validated_whole() {
        let valid = pb::AlertEvent {
            domain: "a.example.org".into(),
            recipe: "ghost".into(),
            from_version: "1.0.0+5.0".into(),
            to_version: "2.0.0+6.0".into(),
            operation_id: "op-1".into(),
            ..Default::default()
        };
        assert!(alert(valid.clone(), 7).is_ok());
        assert_eq!(alert(valid.clone(), 7).unwrap().raised_at, 7);
        let cases = [
            (
                pb::AlertEvent {
                    domain: "A..b".into(),
                    ..valid.clone()
                },
                "alert.domain",
            ),
            (
                pb::AlertEvent {
                    recipe: "Ghost".into(),
                    ..valid.clone()
                },
                "alert.recipe",
            ),
            (
                pb::AlertEvent {
                    to_version: "two".into(),
                    ..valid.clone()
                },
                "to_version",
            ),
            (
                pb::AlertEvent {
                    operation_id: "a b".into(),
                    ..valid.clone()
                },
                "operation_id",
            ),
        ];
        for (event, field) in cases {
            let status = alert(event, 7).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().starts_with(&format!("{field}: ")), "{status:?}");
        }
    }

    #[test]
    fn too_many_reasons_are_summarised() {
        let reasons: Vec<String> = (0..40).map(|n| format!("reason {n}")).collect();
        let kept = bounded_reasons("drift", &reasons);
        assert_eq!(kept.len(), MAX_DRIFT_REASONS);
        assert_eq!(kept.last().unwrap(), "and 25 more reasons");
        assert_eq!(kept[14], "reason 14");
    }
}

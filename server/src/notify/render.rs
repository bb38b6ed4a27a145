//! What a webhook receives: the JSON body (format version 1, documented in
//! README.md, "Notifications") or one readable line of plain text.

use serde_json::{json, Value};

use crate::model::{
    AlertNotice, AlertSeverityRecord, NotificationKind, NotificationRecord, OperationOutcomeRecord, RolloutNotice,
    UnixMillis,
};

/// The JSON body's format version.
pub const BODY_VERSION: u32 = 1;

/// Longest reason quoted in the text line, in characters.
const REASON_CHARS: usize = 200;

fn rfc3339(millis: UnixMillis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|time| time.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn severity(severity: AlertSeverityRecord) -> &'static str {
    match severity {
        AlertSeverityRecord::Unknown => "unknown",
        AlertSeverityRecord::Warning => "warning",
        AlertSeverityRecord::Critical => "critical",
    }
}

fn outcome(outcome: OperationOutcomeRecord) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn version(version: &Option<ccfleet_proto::CoopVersion>) -> Value {
    version
        .as_ref()
        .map_or(Value::Null, |version| json!(version.to_string()))
}

fn alert_json(alert: &AlertNotice) -> Value {
    json!({
        "host_id": alert.host_id.as_str(),
        "domain": alert.domain.as_str(),
        "recipe": alert.recipe.as_ref().map(|recipe| recipe.as_str()),
        "severity": severity(alert.severity),
        "outcome": outcome(alert.outcome),
        "from_version": version(&alert.from_version),
        "to_version": version(&alert.to_version),
        "reason": alert.reason,
        "operation_id": alert.operation_id,
        "raised_at": rfc3339(alert.raised_at),
    })
}

fn rollout_json(rollout: &RolloutNotice) -> Value {
    json!({
        "id": rollout.id,
        "recipe": rollout.recipe.as_str(),
        "target": rollout.target.to_string(),
        "state": rollout.state.name(),
        "reason": rollout.reason,
        "hosts": rollout.hosts,
        "succeeded": rollout.succeeded,
        "failed": rollout.failed,
        "skipped": rollout.skipped,
    })
}

/// The JSON body: `version`, `id` (the idempotency key), `kind`, `time`,
/// `text` (the same line as the text mode, which chat webhooks such as
/// Slack, Mattermost and Matrix hookshot show as the message), and `alert`
/// or `rollout`.
pub fn json_body(notification: &NotificationRecord) -> Vec<u8> {
    let body = json!({
        "version": BODY_VERSION,
        "id": notification.id,
        "kind": notification.kind.name(),
        "time": rfc3339(notification.created_at),
        "text": text_line(notification),
        "alert": notification.alert.as_ref().map(alert_json),
        "rollout": notification.rollout.as_ref().map(rollout_json),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn cut(text: &str) -> String {
    let text: String = text.chars().filter(|character| !character.is_control()).collect();
    match text.char_indices().nth(REASON_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

/// One readable line for people.
pub fn text_line(notification: &NotificationRecord) -> String {
    if let Some(alert) = &notification.alert {
        let what = match notification.kind {
            NotificationKind::AlertEscalated => "alert escalated",
            NotificationKind::AlertResolved => "alert resolved",
            _ => "alert",
        };
        let recipe = alert
            .recipe
            .as_ref()
            .map_or(String::new(), |recipe| format!(" ({recipe})"));
        let versions = match (&alert.from_version, &alert.to_version) {
            (Some(from), Some(to)) => format!(" {from} -> {to}"),
            (None, Some(to)) => format!(" -> {to}"),
            _ => String::new(),
        };
        let mut line = format!(
            "[ccfleet] {} {what} on {}: {}{recipe}{versions} {}",
            severity(alert.severity),
            alert.host_id,
            alert.domain,
            outcome(alert.outcome),
        );
        if notification.kind != NotificationKind::AlertResolved && !alert.reason.is_empty() {
            line.push_str(&format!(": {}", cut(&alert.reason)));
        }
        return line;
    }
    if let Some(rollout) = &notification.rollout {
        let mut line = format!(
            "[ccfleet] rollout {} of {} to {} {}",
            rollout.id,
            rollout.recipe,
            rollout.target,
            rollout.state.name()
        );
        if notification.kind == NotificationKind::RolloutHalted && !rollout.reason.is_empty() {
            line.push_str(&format!(": {}", cut(&rollout.reason)));
        }
        line.push_str(&format!(
            " ({} succeeded, {} failed, {} skipped of {})",
            rollout.succeeded, rollout.failed, rollout.skipped, rollout.hosts
        ));
        return line;
    }
    format!("[ccfleet] {}", notification.kind.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RolloutStateRecord;
    use expect_test::expect;

    fn alert(kind: NotificationKind) -> NotificationRecord {
        NotificationRecord {
            id: "alert:web-1:blog.example.org:1000:opened".into(),
            kind,
            created_at: 2_000,
            alert: Some(AlertNotice {
                host_id: "web-1".parse().unwrap(),
                domain: "blog.example.org".parse().unwrap(),
                recipe: Some("ghost".parse().unwrap()),
                severity: AlertSeverityRecord::Critical,
                outcome: OperationOutcomeRecord::Failed,
                from_version: Some("1.3.0+6.42.0".parse().unwrap()),
                to_version: Some("1.4.0+6.43.0".parse().unwrap()),
                reason: "rollback unhealthy too\n".into(),
                operation_id: Some("op-1".into()),
                raised_at: 1_000,
            }),
            rollout: None,
        }
    }

    fn rollout(kind: NotificationKind, state: RolloutStateRecord) -> NotificationRecord {
        NotificationRecord {
            id: "rollout:ghost-k1:halted".into(),
            kind,
            created_at: 2_000,
            alert: None,
            rollout: Some(RolloutNotice {
                id: "ghost-k1".into(),
                recipe: "ghost".parse().unwrap(),
                target: "1.4.0+6.43.0".parse().unwrap(),
                state,
                reason: "1 host failed (budget 0)".into(),
                hosts: 5,
                succeeded: 1,
                failed: 1,
                skipped: 2,
            }),
        }
    }

    #[test]
    fn text_lines() {
        let lines = [
            text_line(&alert(NotificationKind::AlertOpened)),
            text_line(&alert(NotificationKind::AlertEscalated)),
            text_line(&alert(NotificationKind::AlertResolved)),
            text_line(&rollout(NotificationKind::RolloutHalted, RolloutStateRecord::Halted)),
            text_line(&rollout(
                NotificationKind::RolloutCompleted,
                RolloutStateRecord::Completed,
            )),
        ]
        .join("\n");
        expect![[r#"
            [ccfleet] critical alert on web-1: blog.example.org (ghost) 1.3.0+6.42.0 -> 1.4.0+6.43.0 failed: rollback unhealthy too
            [ccfleet] critical alert escalated on web-1: blog.example.org (ghost) 1.3.0+6.42.0 -> 1.4.0+6.43.0 failed: rollback unhealthy too
            [ccfleet] critical alert resolved on web-1: blog.example.org (ghost) 1.3.0+6.42.0 -> 1.4.0+6.43.0 failed
            [ccfleet] rollout ghost-k1 of ghost to 1.4.0+6.43.0 halted: 1 host failed (budget 0) (1 succeeded, 1 failed, 2 skipped of 5)
            [ccfleet] rollout ghost-k1 of ghost to 1.4.0+6.43.0 completed (1 succeeded, 1 failed, 2 skipped of 5)"#]]
        .assert_eq(&lines);
    }

    #[test]
    fn a_long_reason_is_cut() {
        let mut notification = alert(NotificationKind::AlertOpened);
        if let Some(alert) = notification.alert.as_mut() {
            alert.reason = "x".repeat(1000);
        }
        let line = text_line(&notification);
        assert!(line.ends_with(&format!("{}...", "x".repeat(REASON_CHARS))), "{line}");
    }

    #[test]
    fn the_json_body() {
        let body: Value = serde_json::from_slice(&json_body(&alert(NotificationKind::AlertOpened))).unwrap();
        expect![[r#"
            {
              "alert": {
                "domain": "blog.example.org",
                "from_version": "1.3.0+6.42.0",
                "host_id": "web-1",
                "operation_id": "op-1",
                "outcome": "failed",
                "raised_at": "1970-01-01T00:00:01Z",
                "reason": "rollback unhealthy too\n",
                "recipe": "ghost",
                "severity": "critical",
                "to_version": "1.4.0+6.43.0"
              },
              "id": "alert:web-1:blog.example.org:1000:opened",
              "kind": "alert_opened",
              "rollout": null,
              "text": "[ccfleet] critical alert on web-1: blog.example.org (ghost) 1.3.0+6.42.0 -> 1.4.0+6.43.0 failed: rollback unhealthy too",
              "time": "1970-01-01T00:00:02Z",
              "version": 1
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&body).unwrap());
    }
}

//! The life of an alert, pure: what an agent's alert event makes of an app's
//! stored alert (open, re-opened, resolved), what an admin's acknowledgement
//! does, and whether a host may store one more alert (its quota). The store
//! calls these with every value, the time included, as an argument.

use ccfleet_proto::HostId;

use super::records::{
    AlertAckRecord, AlertEventRecord, AlertRecord, AlertSeverityRecord, AlertStateRecord, UnixMillis,
};

/// Alerts a host may hold for domains its inventory does not list (an alert
/// that arrives before the inventory naming its app, or of an app since
/// removed): with one per listed app, a host's quota is its app count plus
/// this.
pub const ALERT_SLACK: usize = 16;
/// Resolved alerts are kept this long after they resolved (7 days).
pub const RESOLVED_ALERT_RETENTION_MS: UnixMillis = 7 * 24 * 3600 * 1000;
/// The longest acknowledgement with an expiry (90 days).
pub const MAX_ACK_MS: UnixMillis = 90 * 24 * 3600 * 1000;

/// How bad a severity is, for "escalated".
pub fn rank(severity: AlertSeverityRecord) -> u8 {
    match severity {
        AlertSeverityRecord::Unknown => 0,
        AlertSeverityRecord::Warning => 1,
        AlertSeverityRecord::Critical => 2,
    }
}

/// `next` is a failure other than `previous`: a higher severity, another
/// operation or another target. The same failure reported again is not.
pub fn is_new_failure(previous: &AlertRecord, next: &AlertRecord) -> bool {
    rank(next.severity) > rank(previous.severity)
        || next.operation_id != previous.operation_id
        || next.to_version != previous.to_version
}

impl AlertRecord {
    /// The state at `now`: an acknowledgement past its expiry is open again.
    pub fn state_at(&self, now: UnixMillis) -> AlertStateRecord {
        match (&self.state, &self.acknowledged) {
            (AlertStateRecord::Acknowledged, Some(ack)) if ack.until.is_some_and(|until| until <= now) => {
                AlertStateRecord::Open
            }
            (state, _) => *state,
        }
    }

    /// Open or acknowledged: not resolved.
    pub fn is_active(&self) -> bool {
        self.state != AlertStateRecord::Resolved
    }
}

/// What `event` makes of the app's stored alert `previous`, at `now`; `None`
/// when nothing is to be stored (a clear without an active alert). A raise
/// over nothing or a resolved alert opens a new alert with `new_id`; over an
/// active one it keeps the id and replaces the facts; an acknowledged alert
/// stays acknowledged unless this is a new failure (`is_new_failure`) or its
/// acknowledgement expired. A clear resolves an active alert at the event's
/// receive time.
pub fn apply_event(
    previous: Option<&AlertRecord>,
    host_id: &HostId,
    event: &AlertEventRecord,
    new_id: u64,
    now: UnixMillis,
) -> Option<AlertRecord> {
    let active = previous.filter(|previous| previous.is_active());
    if event.cleared {
        let mut resolved = active?.clone();
        resolved.state = AlertStateRecord::Resolved;
        resolved.resolved_at = Some(event.received_at);
        return Some(resolved);
    }
    let mut next = AlertRecord {
        id: active.map_or(0, |previous| previous.id),
        state: AlertStateRecord::Open,
        acknowledged: None,
        resolved_at: None,
        host_id: host_id.clone(),
        domain: event.domain.clone(),
        recipe: event.recipe.clone(),
        from_version: event.from_version.clone(),
        to_version: event.to_version.clone(),
        running_version: event.running_version.clone(),
        outcome: event.outcome,
        severity: event.severity,
        reason: event.reason.clone(),
        operation_id: event.operation_id.clone(),
        snapshot_path: event.snapshot_path.clone(),
        raised_at: event.raised_at,
        received_at: Some(event.received_at),
        reported_raised_at: event.reported_raised_at,
    };
    if next.id == 0 {
        next.id = new_id;
    }
    if let Some(previous) = active {
        if previous.state_at(now) == AlertStateRecord::Acknowledged && !is_new_failure(previous, &next) {
            next.state = AlertStateRecord::Acknowledged;
            next.acknowledged = previous.acknowledged.clone();
        }
    }
    Some(next)
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckRefusal {
    #[error("alert {0} is resolved; there is nothing to acknowledge")]
    Resolved(u64),
}

/// `alert` acknowledged with `ack` at `now`: open or acknowledged (again,
/// replacing the earlier acknowledgement) alerts only.
pub fn acknowledge(alert: &AlertRecord, ack: AlertAckRecord, now: UnixMillis) -> Result<AlertRecord, AckRefusal> {
    if alert.state_at(now) == AlertStateRecord::Resolved {
        return Err(AckRefusal::Resolved(alert.id));
    }
    Ok(AlertRecord {
        state: AlertStateRecord::Acknowledged,
        acknowledged: Some(ack),
        ..alert.clone()
    })
}

/// Whether a host may store an alert for a domain: always when it already
/// has a record for that domain (it is replaced) or its inventory lists the
/// domain (one record per app); otherwise only while it holds fewer than
/// `ALERT_SLACK` records for domains outside its inventory. The refusal is
/// the reason, for the log.
pub fn admit(has_record: bool, in_inventory: bool, outside_inventory: usize) -> Result<(), String> {
    if has_record || in_inventory {
        return Ok(());
    }
    if outside_inventory < ALERT_SLACK {
        return Ok(());
    }
    Err(format!(
        "the host's inventory does not list the app, and the host already holds {outside_inventory} alerts \
         for apps outside its inventory (the limit is {ALERT_SLACK})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OperationOutcomeRecord;
    use AlertStateRecord::{Acknowledged, Open, Resolved};

    fn event(
        severity: AlertSeverityRecord,
        operation: &str,
        received_at: UnixMillis,
        cleared: bool,
    ) -> AlertEventRecord {
        AlertEventRecord {
            domain: "blog.example.org".parse().unwrap(),
            recipe: Some("ghost".parse().unwrap()),
            from_version: Some("1.3.0".parse().unwrap()),
            to_version: Some("1.4.0".parse().unwrap()),
            running_version: None,
            outcome: OperationOutcomeRecord::RolledBack,
            severity,
            reason: "health check failed".into(),
            operation_id: Some(operation.into()),
            snapshot_path: String::new(),
            raised_at: received_at,
            received_at,
            reported_raised_at: None,
            cleared,
        }
    }

    fn ack(until: Option<UnixMillis>) -> AlertAckRecord {
        AlertAckRecord {
            by: "alice".into(),
            reason: "known, fix on Monday".into(),
            at: 15,
            until,
        }
    }

    fn host() -> HostId {
        "web-1".parse().unwrap()
    }

    /// The stored alert after `event` over `previous`: (id, state, acknowledged?).
    fn after(
        previous: Option<&AlertRecord>,
        event: &AlertEventRecord,
        now: UnixMillis,
    ) -> Option<(u64, AlertStateRecord, bool)> {
        apply_event(previous, &host(), event, 99, now).map(|next| (next.id, next.state, next.acknowledged.is_some()))
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases
    fn the_lifecycle_table() {
        use AlertSeverityRecord::{Critical, Warning};
        let open = apply_event(None, &host(), &event(Warning, "op-1", 10, false), 7, 10).unwrap();
        let acked = acknowledge(&open, ack(None), 15).unwrap();
        let acked_until_100 = acknowledge(&open, ack(Some(100)), 15).unwrap();
        let resolved = apply_event(Some(&open), &host(), &event(Warning, "op-2", 20, true), 99, 20).unwrap();
        let cases: Vec<(
            &str,
            Option<&AlertRecord>,
            AlertEventRecord,
            UnixMillis,
            Option<(u64, AlertStateRecord, bool)>,
        )> = vec![
            (
                "a raise over nothing opens a new alert",
                None,
                event(Warning, "op-1", 10, false),
                10,
                Some((99, Open, false)),
            ),
            (
                "a clear over nothing stores nothing",
                None,
                event(Warning, "op-1", 10, true),
                10,
                None,
            ),
            (
                "a raise over an open alert keeps its id",
                Some(&open),
                event(Critical, "op-1", 20, false),
                20,
                Some((7, Open, false)),
            ),
            (
                "a clear resolves an open alert",
                Some(&open),
                event(Warning, "op-1", 20, true),
                20,
                Some((7, Resolved, false)),
            ),
            (
                "a clear resolves an acknowledged alert",
                Some(&acked),
                event(Warning, "op-1", 20, true),
                20,
                Some((7, Resolved, true)),
            ),
            (
                "the same failure again stays acknowledged",
                Some(&acked),
                event(Warning, "op-1", 30, false),
                30,
                Some((7, Acknowledged, true)),
            ),
            (
                "another operation re-opens",
                Some(&acked),
                event(Warning, "op-2", 30, false),
                30,
                Some((7, Open, false)),
            ),
            (
                "a higher severity re-opens",
                Some(&acked),
                event(Critical, "op-1", 30, false),
                30,
                Some((7, Open, false)),
            ),
            (
                "before its expiry it stays acknowledged",
                Some(&acked_until_100),
                event(Warning, "op-1", 99, false),
                99,
                Some((7, Acknowledged, true)),
            ),
            (
                "past its expiry it is open",
                Some(&acked_until_100),
                event(Warning, "op-1", 100, false),
                100,
                Some((7, Open, false)),
            ),
            (
                "a raise over a resolved alert is a new alert",
                Some(&resolved),
                event(Warning, "op-3", 40, false),
                40,
                Some((99, Open, false)),
            ),
            (
                "a clear over a resolved alert stores nothing",
                Some(&resolved),
                event(Warning, "op-3", 40, true),
                40,
                None,
            ),
        ];
        for (what, previous, event, now, expected) in cases {
            assert_eq!(after(previous, &event, now), expected, "{what}");
        }
        assert_eq!(resolved.resolved_at, Some(20));
    }

    #[test]
    fn acknowledgements_expire_and_resolved_alerts_refuse_them() {
        let open = apply_event(
            None,
            &host(),
            &event(AlertSeverityRecord::Warning, "op-1", 10, false),
            7,
            10,
        )
        .unwrap();
        let acked = acknowledge(&open, ack(Some(100)), 15).unwrap();
        for (now, expected) in [(15, Acknowledged), (99, Acknowledged), (100, Open), (u64::MAX, Open)] {
            assert_eq!(acked.state_at(now), expected, "at {now}");
        }
        assert_eq!(
            acknowledge(&open, ack(None), 15).unwrap().state_at(u64::MAX),
            Acknowledged
        );
        let again = acknowledge(&acked, ack(None), 200).unwrap();
        assert_eq!(again.acknowledged.unwrap().until, None);
        let resolved = apply_event(
            Some(&open),
            &host(),
            &event(AlertSeverityRecord::Warning, "op-1", 20, true),
            0,
            20,
        )
        .unwrap();
        assert_eq!(acknowledge(&resolved, ack(None), 30), Err(AckRefusal::Resolved(7)));
    }

    #[test]
    fn the_quota_table() {
        for (has_record, in_inventory, outside, admitted) in [
            (true, false, 1000, true),
            (false, true, 1000, true),
            (false, false, 0, true),
            (false, false, ALERT_SLACK - 1, true),
            (false, false, ALERT_SLACK, false),
            (false, false, usize::MAX, false),
        ] {
            let verdict = admit(has_record, in_inventory, outside);
            assert_eq!(
                verdict.is_ok(),
                admitted,
                "{has_record} {in_inventory} {outside}: {verdict:?}"
            );
        }
        assert!(admit(false, false, ALERT_SLACK)
            .unwrap_err()
            .contains("inventory does not list the app"));
    }
}

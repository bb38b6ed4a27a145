//! The notification decisions, pure: which change of an alert or a rollout
//! is worth telling, what its idempotency key is, how long to wait before
//! the next attempt, and what a receiver's answer means.

use std::time::Duration;

use crate::model::alerts::{is_new_failure, rank};
use crate::model::{
    AlertNotice, AlertRecord, AlertStateRecord, NotificationKind, NotificationRecord, RolloutNotice, RolloutRecord,
    RolloutStateRecord, RolloutTally, UnixMillis,
};

/// The notification for an app's alert going from `previous` to `next`
/// (`None`: no record) at `now`; a resolved alert counts as none, and an
/// acknowledgement past its expiry as open. A new alert opens; a higher
/// severity escalates; a new failure (another operation or target)
/// replacing an open alert opens again; a clear resolves. An acknowledged
/// alert says nothing (neither the acknowledgement nor the same failure
/// reported again) until a new failure re-opens it: opened, or escalated.
pub fn alert_notification(
    previous: Option<&AlertRecord>,
    next: Option<&AlertRecord>,
    now: UnixMillis,
) -> Option<NotificationRecord> {
    let is_active = |record: &&AlertRecord| record.state_at(now) != AlertStateRecord::Resolved;
    let (kind, alert) = match (previous.filter(is_active), next.filter(is_active)) {
        (None, None) => return None,
        (None, Some(next)) => (NotificationKind::AlertOpened, next),
        (Some(previous), None) => (NotificationKind::AlertResolved, previous),
        (Some(previous), Some(next)) => {
            if next.state_at(now) == AlertStateRecord::Acknowledged {
                return None;
            } else if rank(next.severity) > rank(previous.severity) {
                (NotificationKind::AlertEscalated, next)
            } else if previous.state_at(now) == AlertStateRecord::Acknowledged || is_new_failure(previous, next) {
                (NotificationKind::AlertOpened, next)
            } else {
                return None;
            }
        }
    };
    let event = match kind {
        NotificationKind::AlertEscalated => "escalated",
        NotificationKind::AlertResolved => "resolved",
        _ => "opened",
    };
    Some(NotificationRecord {
        id: format!("alert:{}:{}:{}:{event}", alert.host_id, alert.domain, alert.raised_at),
        kind,
        created_at: now,
        alert: Some(AlertNotice::of(alert)),
        rollout: None,
    })
}

/// The notification for a rollout stored in `rollout.state` that was in
/// `before` (`None`: new): one when it completes or halts.
pub fn rollout_notification(
    before: Option<RolloutStateRecord>,
    rollout: &RolloutRecord,
    now: UnixMillis,
) -> Option<NotificationRecord> {
    rollout_notice(before, rollout, RolloutTally::of(&rollout.hosts), now)
}

/// [`rollout_notification`] from a rollout's header and the count of its
/// hosts by outcome (the store writes only the hosts that changed).
pub fn rollout_notice(
    before: Option<RolloutStateRecord>,
    header: &RolloutRecord,
    tally: RolloutTally,
    now: UnixMillis,
) -> Option<NotificationRecord> {
    let kind = match header.state {
        RolloutStateRecord::Completed => NotificationKind::RolloutCompleted,
        RolloutStateRecord::Halted => NotificationKind::RolloutHalted,
        _ => return None,
    };
    if before == Some(header.state) {
        return None;
    }
    Some(NotificationRecord {
        id: format!("rollout:{}:{}", header.id, header.state.name()),
        kind,
        created_at: now,
        alert: None,
        rollout: Some(RolloutNotice {
            id: header.id.clone(),
            recipe: header.recipe.clone(),
            target: header.target.clone(),
            state: header.state,
            reason: header.reason.clone(),
            hosts: tally.hosts,
            succeeded: tally.succeeded,
            failed: tally.failed,
            skipped: tally.skipped,
        }),
    })
}

/// The wait before attempt `failures + 1` after `failures` failed ones:
/// one second, doubling, never more than `cap`.
pub fn retry_delay(failures: u32, cap: Duration) -> Duration {
    let doubled = Duration::from_secs(1).saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)));
    doubled.min(cap)
}

/// What a receiver's HTTP status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx: received.
    Delivered,
    /// 408, 425, 429 and 5xx: try again later.
    Retry,
    /// Any other status (3xx, 4xx): the receiver refuses this request; it is
    /// logged, counted and not sent again.
    Rejected,
}

pub fn answer(status: u16) -> Answer {
    match status {
        200..=299 => Answer::Delivered,
        408 | 425 | 429 | 500..=599 => Answer::Retry,
        _ => Answer::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        AlertAckRecord, AlertSeverityRecord, HostOutcomeRecord, OperationOutcomeRecord, QuantityRecord,
        RolloutHostRecord, StrategyRecord,
    };

    fn alert(severity: AlertSeverityRecord, operation: &str, raised_at: UnixMillis) -> AlertRecord {
        AlertRecord {
            id: 1,
            state: AlertStateRecord::Open,
            acknowledged: None,
            resolved_at: None,
            host_id: "web-1".parse().unwrap(),
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
            raised_at,
            received_at: Some(raised_at),
            reported_raised_at: None,
        }
    }

    #[test]
    fn alert_changes_table() {
        use AlertSeverityRecord::{Critical, Warning};
        let warning = alert(Warning, "op-1", 10);
        let critical_same_op = alert(Critical, "op-1", 20);
        let warning_again = alert(Warning, "op-1", 30);
        let warning_other_op = alert(Warning, "op-2", 40);
        let cases: [(Option<&AlertRecord>, Option<&AlertRecord>, Option<&str>); 7] = [
            (None, None, None),
            (None, Some(&warning), Some("alert:web-1:blog.example.org:10:opened")),
            (
                Some(&warning),
                Some(&critical_same_op),
                Some("alert:web-1:blog.example.org:20:escalated"),
            ),
            (Some(&warning), Some(&warning_again), None),
            (Some(&critical_same_op), Some(&warning_again), None),
            (
                Some(&warning),
                Some(&warning_other_op),
                Some("alert:web-1:blog.example.org:40:opened"),
            ),
            (
                Some(&critical_same_op),
                None,
                Some("alert:web-1:blog.example.org:20:resolved"),
            ),
        ];
        for (previous, next, expected) in cases {
            let notification = alert_notification(previous, next, 99);
            assert_eq!(
                notification.as_ref().map(|notification| notification.id.as_str()),
                expected,
                "{previous:?} -> {next:?}"
            );
            if let Some(notification) = notification {
                assert_eq!(notification.created_at, 99);
                assert!(notification.alert.is_some() && notification.rollout.is_none());
            }
        }
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases
    fn acknowledged_alerts_stay_quiet_until_they_reopen() {
        use AlertSeverityRecord::{Critical, Warning};
        let open = alert(Warning, "op-1", 10);
        let acked = |until| AlertRecord {
            state: AlertStateRecord::Acknowledged,
            acknowledged: Some(AlertAckRecord {
                by: "alice".into(),
                reason: "known".into(),
                at: 15,
                until,
            }),
            ..open.clone()
        };
        let reopened = AlertRecord {
            operation_id: Some("op-2".into()),
            raised_at: 40,
            ..open.clone()
        };
        let escalated = AlertRecord {
            severity: Critical,
            raised_at: 50,
            ..open.clone()
        };
        let resolved = AlertRecord {
            state: AlertStateRecord::Resolved,
            resolved_at: Some(60),
            ..acked(None)
        };
        let same_again = AlertRecord {
            raised_at: 30,
            ..open.clone()
        };
        let (acked, acked_until_25) = (acked(None), acked(Some(25)));
        let cases: Vec<(&str, Option<&AlertRecord>, Option<&AlertRecord>, u64, Option<&str>)> = vec![
            ("acknowledging says nothing", Some(&open), Some(&acked), 20, None),
            (
                "the same failure while acknowledged says nothing",
                Some(&acked),
                Some(&acked),
                30,
                None,
            ),
            (
                "a new failure re-opens",
                Some(&acked),
                Some(&reopened),
                40,
                Some("alert:web-1:blog.example.org:40:opened"),
            ),
            (
                "a higher severity escalates",
                Some(&acked),
                Some(&escalated),
                50,
                Some("alert:web-1:blog.example.org:50:escalated"),
            ),
            (
                "an acknowledged alert resolves",
                Some(&acked),
                Some(&resolved),
                60,
                Some("alert:web-1:blog.example.org:10:resolved"),
            ),
            (
                "an open alert resolves",
                Some(&open),
                Some(&resolved),
                60,
                Some("alert:web-1:blog.example.org:10:resolved"),
            ),
            (
                "a resolved alert written again says nothing",
                Some(&resolved),
                Some(&resolved),
                70,
                None,
            ),
            (
                "a new alert over a resolved one opens",
                Some(&resolved),
                Some(&reopened),
                80,
                Some("alert:web-1:blog.example.org:40:opened"),
            ),
            (
                "an expired acknowledgement is open: the same failure says nothing",
                Some(&acked_until_25),
                Some(&same_again),
                30,
                None,
            ),
        ];
        for (what, previous, next, now, expected) in cases {
            let notification = alert_notification(previous, next, now);
            assert_eq!(
                notification.as_ref().map(|notification| notification.id.as_str()),
                expected,
                "{what}"
            );
        }
    }

    fn rollout(state: RolloutStateRecord, outcomes: &[HostOutcomeRecord]) -> RolloutRecord {
        RolloutRecord {
            id: "ghost-k1".into(),
            recipe: "ghost".parse().unwrap(),
            target: "1.4.0".parse().unwrap(),
            state,
            strategy: StrategyRecord {
                canary: QuantityRecord::Count(1),
                batch: QuantityRecord::Count(1),
                max_failures: 1,
                max_failure_ppm: 0,
                pause_after_canary: false,
                wave_interval_ms: 0,
                host_deadline_ms: 0,
                progress_deadline_ms: 0,
                rollback_on_halt: false,
                allow_major: false,
            },
            hosts: outcomes
                .iter()
                .enumerate()
                .map(|(index, outcome)| RolloutHostRecord {
                    host_id: format!("h{index}").parse().unwrap(),
                    domain: format!("app.h{index}.example.org").parse().unwrap(),
                    wave: 0,
                    outcome: *outcome,
                    from_version: None,
                    to_version: None,
                    running_version: None,
                    message: String::new(),
                    updated_at: 0,
                    operation_id: None,
                    dispatched_at: None,
                    rollback: None,
                    succeeded_late: false,
                })
                .collect(),
            current_wave: 0,
            wave_count: 1,
            created_at: 0,
            updated_at: 0,
            reason: "2 hosts failed".into(),
            created_by: "admin".into(),
            paused_by_operator: false,
            awaiting_promotion: false,
            promoted: false,
            next_wave_at: None,
            last_progress_at: 0,
        }
    }

    #[test]
    fn rollout_changes_table() {
        use RolloutStateRecord::{Aborted, Completed, Halted, Paused, Running};
        let cases = [
            (None, Running, None),
            (Some(Running), Running, None),
            (Some(Running), Paused, None),
            (Some(Running), Aborted, None),
            (Some(Running), Completed, Some("rollout:ghost-k1:completed")),
            (Some(Paused), Halted, Some("rollout:ghost-k1:halted")),
            (None, Completed, Some("rollout:ghost-k1:completed")),
            // A settled rollout written again (a late result) says nothing.
            (Some(Halted), Halted, None),
            (Some(Completed), Completed, None),
        ];
        for (before, after, expected) in cases {
            let notification = rollout_notification(before, &rollout(after, &[]), 5);
            assert_eq!(
                notification.map(|notification| notification.id),
                expected.map(str::to_owned),
                "{before:?} -> {after:?}"
            );
        }
    }

    #[test]
    fn a_rollout_notice_counts_its_hosts() {
        use HostOutcomeRecord::{Failed, RolledBack, Skipped, Succeeded, TimedOut};
        let record = rollout(
            RolloutStateRecord::Halted,
            &[Succeeded, RolledBack, Failed, TimedOut, Skipped, Succeeded],
        );
        let notice = rollout_notification(Some(RolloutStateRecord::Running), &record, 0)
            .and_then(|notification| notification.rollout)
            .unwrap();
        assert_eq!(
            (notice.hosts, notice.succeeded, notice.failed, notice.skipped),
            (6, 2, 3, 1)
        );
    }

    #[test]
    fn retries_back_off_to_the_cap() {
        let cap = Duration::from_secs(300);
        let delays: Vec<u64> = (1..=12).map(|failures| retry_delay(failures, cap).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX, cap), cap);
        assert_eq!(retry_delay(3, Duration::from_secs(2)), Duration::from_secs(2));
    }

    #[test]
    fn answers_table() {
        let cases = [
            (200, Answer::Delivered),
            (204, Answer::Delivered),
            (301, Answer::Rejected),
            (400, Answer::Rejected),
            (401, Answer::Rejected),
            (404, Answer::Rejected),
            (408, Answer::Retry),
            (413, Answer::Rejected),
            (425, Answer::Retry),
            (429, Answer::Retry),
            (500, Answer::Retry),
            (502, Answer::Retry),
            (503, Answer::Retry),
        ];
        for (status, expected) in cases {
            assert_eq!(answer(status), expected, "{status}");
        }
    }
}

//! The notification queue and the fleet gauges: queued with their change,
//! delivered per destination, bounded, kept across a reopen.

use super::*;

fn web() -> HostId {
    "web-1".parse().unwrap()
}

fn alert(domain: &str, severity: AlertSeverityRecord, raised_at: UnixMillis, cleared: bool) -> AgentEvent {
    AgentEvent::Alert(AlertEventRecord {
        domain: domain.parse().unwrap(),
        recipe: None,
        from_version: None,
        to_version: None,
        running_version: None,
        outcome: OperationOutcomeRecord::RolledBack,
        severity,
        reason: "unhealthy".into(),
        operation_id: Some("op-1".into()),
        snapshot_path: String::new(),
        raised_at,
        received_at: raised_at,
        reported_raised_at: None,
        cleared,
    })
}

fn store_with(dir: &std::path::Path, destinations: &[&str], limit: usize) -> Store {
    let mut store = Store::reopen(dir);
    store
        .configure_notifications(destinations.iter().map(|id| id.to_string()).collect(), limit)
        .unwrap();
    if store.host(&web()).unwrap().is_none() {
        store.put_host(&HostRecord::new(web(), 1)).unwrap();
    }
    store
}

fn next_id(store: &Store, destination: &str) -> Option<(u64, String)> {
    store
        .next_notification(destination)
        .unwrap()
        .map(|(sequence, notification)| (sequence, notification.id))
}

#[test]
fn notifications_are_queued_with_their_alert_delivered_per_destination_and_kept_across_a_reopen() {
    use AlertSeverityRecord::{Critical, Warning};
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), &["a", "b"], 100);
    let blog = "blog.example.org";
    store.apply_event(&web(), 1, &alert(blog, Warning, 10, false)).unwrap();
    store.apply_event(&web(), 2, &alert(blog, Warning, 11, false)).unwrap(); // the same alert again
    store.apply_event(&web(), 3, &alert(blog, Critical, 12, false)).unwrap();
    store.apply_event(&web(), 4, &alert(blog, Critical, 13, true)).unwrap();
    assert_eq!(store.gauges().notifications_queued(), 3);
    let (first, id) = next_id(&store, "a").unwrap();
    assert_eq!(id, "alert:web-1:blog.example.org:10:opened");
    store.notification_delivered("a", first).unwrap();
    let (second, id) = next_id(&store, "a").unwrap();
    assert_eq!(id, "alert:web-1:blog.example.org:12:escalated");
    assert_eq!(store.gauges().notifications_queued(), 3, "b has not received the first");
    store.flush().unwrap();
    drop(store);

    let store = store_with(dir.path(), &["a", "b"], 100);
    assert_eq!(store.gauges().notifications_queued(), 3);
    assert_eq!(next_id(&store, "a").unwrap().0, second, "a's cursor survived");
    let (b_first, id) = next_id(&store, "b").unwrap();
    assert_eq!(
        (b_first, id.as_str()),
        (first, "alert:web-1:blog.example.org:10:opened")
    );
    store.notification_delivered("b", b_first).unwrap();
    assert_eq!(store.gauges().notifications_queued(), 2, "both passed the first");
    store.notification_delivered("a", second).unwrap();
    let (third, id) = next_id(&store, "a").unwrap();
    assert_eq!(id, "alert:web-1:blog.example.org:12:resolved");
    store.notification_delivered("a", third).unwrap();
    assert_eq!(next_id(&store, "a"), None);
    drop(store);

    // b is no longer configured: its cursor holds nothing back.
    let store = store_with(dir.path(), &["a"], 100);
    assert_eq!(store.gauges().notifications_queued(), 0);
    assert_eq!(next_id(&store, "a"), None);
}

#[test]
fn without_a_destination_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), &[], 100);
    store
        .apply_event(
            &web(),
            1,
            &alert("a.example.org", AlertSeverityRecord::Warning, 1, false),
        )
        .unwrap();
    assert_eq!(store.gauges().notifications_queued(), 0);
    assert_eq!(next_id(&store, "a"), None);
}

#[test]
fn a_full_queue_drops_its_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), &["a"], 2);
    for (seq, domain) in [(1, "a.example.org"), (2, "b.example.org"), (3, "c.example.org")] {
        store
            .apply_event(&web(), seq, &alert(domain, AlertSeverityRecord::Warning, seq, false))
            .unwrap();
    }
    let gauges = store.gauges();
    assert_eq!((gauges.notifications_queued(), gauges.notifications_dropped()), (2, 1));
    assert_eq!(next_id(&store, "a").unwrap().1, "alert:web-1:b.example.org:2:opened");
}

#[test]
fn the_gauges_follow_alerts_and_rollouts_and_are_counted_at_open() {
    use AlertSeverityRecord::{Critical, Warning};
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), &[], 100);
    store
        .apply_event(&web(), 1, &alert("a.example.org", Warning, 1, false))
        .unwrap();
    store
        .apply_event(&web(), 2, &alert("b.example.org", Warning, 1, false))
        .unwrap();
    store
        .apply_event(&web(), 3, &alert("b.example.org", Critical, 2, false))
        .unwrap();
    let open = |store: &Store| {
        (
            store.gauges().alerts_open(Warning),
            store.gauges().alerts_open(Critical),
        )
    };
    assert_eq!(open(&store), (1, 1));
    store.flush().unwrap();
    drop(store);
    let store = store_with(dir.path(), &[], 100);
    assert_eq!(open(&store), (1, 1), "counted again at open");
    store
        .apply_event(&web(), 4, &alert("a.example.org", Warning, 3, true))
        .unwrap();
    assert_eq!(open(&store), (0, 1));
    store.remove_host(&web(), 5).unwrap();
    assert_eq!(open(&store), (0, 0), "a removed host's alerts are gone");
}

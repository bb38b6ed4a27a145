//! The server's background tasks, spawned by `serve`: the store stall
//! watchdog, the sweeper of silent agent streams, and the pruning of old
//! operation records.

use std::sync::Arc;
use std::time::Duration;

use crate::fleet::Fleet;
use crate::store::StoreHandle;
use crate::{metrics, model};

/// Makes a stuck store visible: while one store request has been running
/// longer than `threshold`, gRPC health says NOT_SERVING, the
/// `ccfleet_store_stalled` metric is 1 and an error is logged.
pub(crate) async fn watch_store(
    store: StoreHandle,
    health: tonic_health::server::HealthReporter,
    metrics: Arc<metrics::Metrics>,
    threshold: Duration,
) {
    use std::sync::atomic::Ordering;
    use tonic_health::ServingStatus;
    let mut ticker = tokio::time::interval((threshold / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
    let mut stalled = false;
    loop {
        ticker.tick().await;
        let busy = store.busy_for().unwrap_or_default();
        metrics.store_busy_seconds.store(busy.as_secs(), Ordering::Relaxed);
        let now_stalled = busy >= threshold;
        if now_stalled == stalled {
            continue;
        }
        stalled = now_stalled;
        metrics.store_stalled.store(u64::from(stalled), Ordering::Relaxed);
        let status = if stalled {
            tracing::error!(
                ?busy,
                "the store is stuck: one request has run for longer than {threshold:?}; health is NOT_SERVING"
            );
            ServingStatus::NotServing
        } else {
            tracing::info!("the store is answering again; health is SERVING");
            ServingStatus::Serving
        };
        for service in HEALTH_SERVICES {
            health.set_service_status(*service, status).await;
        }
    }
}

/// Service names whose health follows the store: the whole server ("") and
/// every ccfleet service.
const HEALTH_SERVICES: &[&str] = &["", "ccfleet.v1.Agent", "ccfleet.v1.Admin", "ccfleet.v1.Enrollment"];

/// Closes streams of hosts that stopped sending heartbeats.
pub(crate) async fn expire_silent_sessions(fleet: Arc<Fleet>) {
    let period = (fleet.heartbeat_timeout() / 4).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for host_id in fleet.expire_silent() {
            tracing::warn!(host = %host_id, "heartbeat timeout: host is offline");
        }
    }
}

/// Applies the operation records' retention age at start and then hourly.
pub(crate) async fn prune_old_operations(store: StoreHandle, retention: Duration) {
    let mut ticker = tokio::time::interval(Duration::from_secs(3600));
    loop {
        ticker.tick().await;
        let cutoff = model::now_millis().saturating_sub(retention.as_millis() as u64);
        match store.write(move |store| store.prune_operations_before(cutoff)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned operation records past their retention"),
            Err(error) => tracing::error!(%error, "cannot prune old operation records"),
        }
    }
}

/// Applies the audit log's retention age and the resolved alerts' retention
/// (`model::alerts::RESOLVED_ALERT_RETENTION_MS`) at start and then hourly.
pub(crate) async fn prune_audit_and_alerts(store: StoreHandle, audit_retention: Duration) {
    let mut ticker = tokio::time::interval(Duration::from_secs(3600));
    loop {
        ticker.tick().await;
        let now = model::now_millis();
        let audit_cutoff = now.saturating_sub(audit_retention.as_millis() as u64);
        match store.write(move |store| store.prune_audit_before(audit_cutoff)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned audit entries past their retention"),
            Err(error) => tracing::error!(%error, "cannot prune old audit entries"),
        }
        let alert_cutoff = now.saturating_sub(model::alerts::RESOLVED_ALERT_RETENTION_MS);
        match store
            .write(move |store| store.prune_resolved_alerts_before(alert_cutoff))
            .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "pruned resolved alerts past their retention"),
            Err(error) => tracing::error!(%error, "cannot prune resolved alerts"),
        }
    }
}

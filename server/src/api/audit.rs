//! The audit log as the Admin service sees it: appending an admin's action,
//! and listing the log.

use ccfleet_proto::pb;
use tonic::{Request, Response, Status};

use crate::api::{convert, internal};
use crate::auth::Caller;
use crate::model::{now_millis, AuditRecord};
use crate::store::StoreHandle;

/// Audit entries answered when the request says 0, and at most.
const DEFAULT_AUDIT_LIMIT: usize = 1000;
const MAX_AUDIT_LIMIT: usize = 10_000;

/// Appends to the audit log. The action has already taken effect, so a
/// failure here is logged, not returned.
pub async fn audit(store: &StoreHandle, caller: &Caller, action: &str, target: &str, detail: String) {
    let entry = AuditRecord {
        at: now_millis(),
        who: caller.identity.name().to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
    };
    if let Err(error) = store.write(move |store| store.append_audit(&entry)).await {
        tracing::error!(%error, "cannot append to the audit log");
    }
}

pub async fn list_audit(
    store: &StoreHandle,
    request: Request<pb::ListAuditRequest>,
) -> Result<Response<pb::ListAuditResponse>, Status> {
    let request = request.into_inner();
    let since = request
        .since
        .map(|since| (since.seconds.max(0) as u64) * 1000 + (since.nanos.max(0) as u64) / 1_000_000)
        .unwrap_or(0);
    let limit = match request.limit as usize {
        0 => DEFAULT_AUDIT_LIMIT,
        limit => limit.min(MAX_AUDIT_LIMIT),
    };
    let entries = store
        .read(move |store| store.audit(since, limit))
        .await
        .map_err(internal)?;
    Ok(Response::new(pb::ListAuditResponse {
        entries: entries
            .into_iter()
            .map(|entry| pb::AuditEntry {
                at: Some(convert::timestamp(entry.at)),
                who: entry.who,
                action: entry.action,
                target: entry.target,
                detail: entry.detail,
            })
            .collect(),
    }))
}

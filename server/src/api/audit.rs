//! The audit log as the Admin service sees it: admin actions with their
//! entry, and listing the log.
//!
//! An action that is a store write runs with its entry in one store job
//! (`audited`): refused before anything changes when the log is full, the
//! entry appended right after the action, both made durable by the same
//! flush. Rollout actions, which the rollout engine stores, check for room
//! first (`has_room`) and append after (`audit`).

use ccfleet_proto::pb;
use tonic::{Request, Response, Status};

use crate::api::{convert, internal};
use crate::auth::Caller;
use crate::model::{now_millis, AuditRecord};
use crate::store::{Store, StoreError, StoreHandle};

/// Audit entries answered when the request says 0, and at most.
const DEFAULT_AUDIT_LIMIT: usize = 1000;
const MAX_AUDIT_LIMIT: usize = 10_000;

/// What an action's entry says: the action, its target and details.
pub struct Entry {
    pub action: String,
    pub target: String,
    pub detail: String,
}

impl Entry {
    pub fn new(action: &str, target: &str, detail: String) -> Entry {
        Entry {
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        }
    }

    fn record(self, caller_name: String) -> AuditRecord {
        AuditRecord {
            at: now_millis(),
            who: caller_name,
            action: self.action,
            target: self.target,
            detail: self.detail,
        }
    }
}

/// Runs `action` on the store thread with its audit entry in the same job:
/// without room in the log it is refused and nothing changes; else the
/// entry `describe` makes of the result (`None`: nothing happened, such as
/// an unknown target) is appended right after it.
pub async fn audited<T, A, D>(store: &StoreHandle, caller: &Caller, action: A, describe: D) -> Result<T, Status>
where
    T: Send + 'static,
    A: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    D: FnOnce(&T) -> Option<Entry> + Send + 'static,
{
    let who = caller.identity.name().to_owned();
    store
        .write(move |store| {
            store.audit_room()?;
            let result = action(store)?;
            if let Some(entry) = describe(&result) {
                store.append_audit(&entry.record(who))?;
            }
            Ok(result)
        })
        .await
        .map_err(internal)
}

/// Refuses (RESOURCE_EXHAUSTED, naming `--audit-max-entries`) while the
/// audit log is full.
pub async fn has_room(store: &StoreHandle) -> Result<(), Status> {
    store.read(|store| store.audit_room()).await.map_err(internal)
}

/// Appends to the audit log after an action the store did not run itself
/// (rollouts). The action has already taken effect, so a failure here is
/// logged, not returned.
pub async fn audit(store: &StoreHandle, caller: &Caller, action: &str, target: &str, detail: String) {
    let entry = Entry::new(action, target, detail).record(caller.identity.name().to_owned());
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

//! The event stream of the store's crash test (`tests/it/store_crash.rs`),
//! shared with its writer (`src/bin/store-writer.rs`): a deterministic
//! sequence of durable events per host, so that the test knows what every
//! sequence number wrote.

use ccfleet_proto::HostId;
use ccfleet_server::model::{AgentEvent, AppRecord, HostRecord, OperationPhaseRecord};
use ccfleet_server::store::{Store, StoreError};

/// Hosts writing at once.
pub const HOSTS: usize = 12;

/// sled log segment size of the test's store: small, so that sled writes its
/// log out every few records and a kill lands in the middle of a change.
pub const SEGMENT_BYTES: usize = 2048;

pub fn host(index: usize) -> HostId {
    format!("crash-{index}").parse().unwrap()
}

fn app(host: usize, name: &str, recipe: &str, version: &str) -> AppRecord {
    AppRecord::converged(
        format!("{name}.crash-{host}.example.org").parse().unwrap(),
        recipe.parse().unwrap(),
        Some(version.parse().unwrap()),
    )
}

/// Whether event `seq` is operation progress (every fourth) rather than an
/// inventory.
pub fn is_progress(seq: u64) -> bool {
    seq.is_multiple_of(4)
}

/// The operation id of progress event `seq`: two consecutive progress events
/// share one, so the record (and its time-index key) is replaced.
pub fn operation_id(seq: u64) -> String {
    format!("op-{}", seq / 8)
}

/// The inventory a host reports at `seq`: a version that moves, an app that
/// comes and goes, and one that changes recipe, so that every kind of index
/// change is in flight when the process dies.
pub fn inventory(host: usize, seq: u64) -> Vec<AppRecord> {
    let mut apps = vec![app(host, "blog", "ghost", &format!("1.{seq}.0"))];
    if !seq.is_multiple_of(3) {
        apps.push(app(host, "chat", "matrix-synapse", "5.0.0"));
    }
    let wiki = if seq.is_multiple_of(2) { "hedgedoc" } else { "wiki-js" };
    apps.push(app(host, "wiki", wiki, "2.1.0"));
    apps
}

/// Event `seq` of `host`.
pub fn event(host: usize, seq: u64) -> AgentEvent {
    if is_progress(seq) {
        AgentEvent::Progress {
            operation_id: operation_id(seq),
            domain: format!("blog.crash-{host}.example.org").parse().unwrap(),
            phase: OperationPhaseRecord::Deploying,
            message: format!("step {seq}"),
        }
    } else {
        AgentEvent::Inventory(inventory(host, seq))
    }
}

/// The newest inventory at or before `seq` (empty before the first).
pub fn inventory_at(host: usize, seq: u64) -> Vec<AppRecord> {
    match (1..=seq).rev().find(|seq| !is_progress(*seq)) {
        Some(last) => inventory(host, last),
        None => Vec::new(),
    }
}

/// Creates the host record if it is missing, as enrolment would.
pub fn enrol(store: &Store, index: usize) -> Result<(), StoreError> {
    if store.host(&host(index))?.is_none() {
        store.put_host(&HostRecord::new(host(index), 1))?;
    }
    Ok(())
}

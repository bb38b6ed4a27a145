//! The server's records, apart from how they are stored: hosts and their
//! apps, operations, tokens, certificates, alerts, rollouts and the audit
//! log. `store` encodes and keeps them; `rollout::machine` and `plan` decide
//! with them; `api::convert` turns them into wire messages and back.

pub mod alerts;
mod audit;
mod notifications;
mod records;
mod rollouts;

pub use audit::AuditRecord;
pub use notifications::*;
pub use records::*;
pub use rollouts::*;

//! One entry of the audit log: an admin action with who, what and when.

use serde::{Deserialize, Serialize};

use super::UnixMillis;

/// One admin action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: UnixMillis,
    /// The admin's name from their certificate.
    pub who: String,
    /// e.g. "rollout.start", "token.revoke".
    pub action: String,
    /// A rollout id, token id, host id or admin name.
    pub target: String,
    /// For people; never parsed.
    pub detail: String,
}

//! gRPC services. Wire messages are converted to store records in `convert`;
//! every `Status` for an internal failure is made by `internal`.

pub mod admin;
pub mod agent;
pub mod audit;
pub mod convert;
pub mod enrollment;
pub mod paging;

use crate::store::StoreError;

/// The one place a storage failure becomes a gRPC status: logged in full
/// here, reported to the caller without internals; a full audit log is a
/// refusal that names its flag.
pub fn internal(error: StoreError) -> tonic::Status {
    if let StoreError::AuditFull { .. } = error {
        tracing::warn!(%error, "admin action refused");
        return tonic::Status::resource_exhausted(error.to_string());
    }
    tracing::error!(error = %error, source = ?std::error::Error::source(&error), "store failure");
    tonic::Status::internal("the server could not access its state; see its log")
}

//! The ccfleet wire contract and domain types.
//!
//! `pb` holds the code generated from `proto/ccfleet/v1/*.proto`; `domain`
//! holds the validated types (versions, names) that the rest of the workspace
//! uses. Wire types stay in this crate's `pb` module and are converted at each
//! side's edge; they never reach storage or abra.

pub mod domain;
pub mod fsutil;
pub mod tls;
pub mod watch;

/// Generated protobuf messages and gRPC clients and servers.
#[allow(clippy::all, missing_docs)] // generated code, not ours to lint
pub mod pb {
    tonic::include_proto!("ccfleet.v1");

    /// Encoded descriptors of every ccfleet `.proto`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ccfleet_descriptor");
}

pub use domain::{
    system_hostname, AdminName, CoopVersion, Domain, HostId, NameError, OperationId, OperationKind, RecipeName,
    ServerUrl, UrlError, VersionChange, VersionError, MAX_SANITISED_APP_NAME_LENGTH,
};

/// Upper bound on one decoded gRPC message, set explicitly on every client and
/// service. The largest legitimate message is a full inventory (a few hundred
/// apps of a few hundred bytes each); 4 MiB leaves ample headroom while
/// refusing anything absurd.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Upper bound on one Admin *response* (fleet-wide listings), set on the
/// server's Admin service and on the CLI. Measured (BENCHMARKS.md): listing
/// 10,000 hosts is about 4 MiB as JSON and less as protobuf, so 64 MiB leaves
/// room for well over 100,000 hosts before listings need pagination. Requests
/// to the server stay bounded by [`MAX_MESSAGE_BYTES`].
pub const MAX_ADMIN_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// An error and all its sources joined with ": ", for one-line reports: the
/// outermost message alone ("transport error") rarely says what went wrong.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

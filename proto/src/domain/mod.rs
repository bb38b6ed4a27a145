//! Domain types with validating parsers. Everything that arrives from the wire,
//! a config file or a command line is parsed into these before use.

mod names;
pub mod operation;
mod url;
mod version;

#[cfg(test)]
mod tests;

pub use names::{system_hostname, AdminName, Domain, HostId, NameError, RecipeName};
pub use operation::{OperationId, OperationKind, MAX_OPERATION_ID};
pub use url::{ServerUrl, UrlError};
pub use version::{CoopVersion, VersionChange, VersionError, MAX_VERSION_LENGTH};

//! Who is calling, and what they may do.
//!
//! Every certificate the CA signs for a client carries exactly one URI
//! subject alternative name, `urn:ccfleet:host:<host id>` or
//! `urn:ccfleet:admin:<name>`; that URI, not the common name, is the
//! identity. The TLS layer (rustls, in `edge`) has already checked that the
//! certificate chains to the fleet CA and was within its validity period at
//! the handshake; this module checks expiry again on every call (connections
//! outlive certificates), and adds revocation and the per-service rules:
//!
//! - Agent service: host certificates only (and the stream's hello must name
//!   the certificate's own host, checked in `api::agent`);
//! - Admin service and reflection: admin certificates only;
//! - Enrollment: anyone with a valid join token (checked in `api::enrollment`);
//! - gRPC health: anyone, so that load balancers and probes can use it.

pub mod ca;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use ccfleet_proto::{AdminName, HostId};
use tonic::{Request, Status};

/// A client identity as written into its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Host(HostId),
    Admin(AdminName),
}

const HOST_URI_PREFIX: &str = "urn:ccfleet:host:";
const ADMIN_URI_PREFIX: &str = "urn:ccfleet:admin:";

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Identity::Host(host) => host.as_str(),
            Identity::Admin(name) => name.as_str(),
        }
    }

    pub fn uri(&self) -> String {
        match self {
            Identity::Host(host) => format!("{HOST_URI_PREFIX}{host}"),
            Identity::Admin(name) => format!("{ADMIN_URI_PREFIX}{name}"),
        }
    }

    fn from_uri(uri: &str) -> Option<Identity> {
        if let Some(host) = uri.strip_prefix(HOST_URI_PREFIX) {
            return host.parse().ok().map(Identity::Host);
        }
        uri.strip_prefix(ADMIN_URI_PREFIX)?.parse().ok().map(Identity::Admin)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Host(_) => "host",
            Identity::Admin(_) => "admin",
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} {}", self.kind(), self.name())
    }
}

/// The authenticated caller of a request, put into the request's extensions
/// by the service interceptors.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    /// Hex serial of the certificate used.
    pub serial: String,
    /// When that certificate expires (Unix milliseconds): streams end then.
    pub not_after: crate::model::UnixMillis,
}

/// The set of revoked certificate serials, loaded from the store at start
/// and extended when a host or admin is removed. Read on every call.
#[derive(Debug, Default)]
pub struct Revocations {
    serials: RwLock<HashSet<String>>,
}

impl Revocations {
    pub fn new(serials: impl IntoIterator<Item = String>) -> Arc<Revocations> {
        Arc::new(Revocations {
            serials: RwLock::new(serials.into_iter().collect()),
        })
    }

    pub fn revoke(&self, serials: impl IntoIterator<Item = String>) {
        self.serials
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(serials);
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(serial)
    }
}

/// Reads the caller's identity from the TLS peer certificate of `request`.
pub fn caller<T>(request: &Request<T>, revocations: &Revocations) -> Result<Caller, Status> {
    let certificates = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("this call needs a client certificate issued by the fleet CA"))?;
    let certificate = certificates
        .first()
        .ok_or_else(|| Status::unauthenticated("this call needs a client certificate issued by the fleet CA"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|_| Status::unauthenticated("the client certificate cannot be parsed"))?;
    let serial = hex::encode(parsed.raw_serial());
    if revocations.is_revoked(&serial) {
        tracing::warn!(serial, "refused a revoked certificate");
        return Err(Status::permission_denied("this certificate has been revoked"));
    }
    // rustls checked the validity period at the handshake; a connection can
    // outlive it, so every call checks again.
    let not_after = parsed.validity().not_after.timestamp();
    if not_after <= crate::model::now_millis() as i64 / 1000 {
        tracing::warn!(serial, "refused an expired certificate on an open connection");
        return Err(Status::unauthenticated(
            "this certificate has expired; enrol again (hosts) or ask an admin for a new credential",
        ));
    }
    let identity = identity_in(&parsed)
        .ok_or_else(|| Status::unauthenticated("the client certificate carries no ccfleet identity"))?;
    Ok(Caller {
        identity,
        serial,
        not_after: u64::try_from(not_after).unwrap_or(0).saturating_mul(1000),
    })
}

fn identity_in(certificate: &x509_parser::certificate::X509Certificate<'_>) -> Option<Identity> {
    certificate.subject_alternative_name().ok().flatten().and_then(|names| {
        names.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Identity::from_uri(uri),
            _ => None,
        })
    })
}

/// The identity written into a DER certificate, if it carries one. Used by
/// the edge to tell admins apart before any call; it checks nothing else.
pub fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
    identity_in(&parsed)
}

/// Interceptor for the Agent service: host certificates only.
pub fn require_host(revocations: Arc<Revocations>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let caller = caller(&request, &revocations)?;
        if !matches!(caller.identity, Identity::Host(_)) {
            tracing::warn!(caller = %caller.identity, "refused: the Agent service is for hosts");
            return Err(Status::permission_denied(format!(
                "{} may not use the Agent service; it is for host certificates",
                caller.identity
            )));
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// Interceptor for the Admin and reflection services: admin certificates only.
pub fn require_admin(revocations: Arc<Revocations>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let caller = caller(&request, &revocations)?;
        if !matches!(caller.identity, Identity::Admin(_)) {
            tracing::warn!(caller = %caller.identity, "refused: the Admin service is for admins");
            return Err(Status::permission_denied(format!(
                "{} may not use the Admin service; it needs an admin certificate",
                caller.identity
            )));
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller an interceptor stored in `request`.
pub fn authenticated<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("the request bypassed authentication"))
}

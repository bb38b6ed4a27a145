//! The HTTP probe: one `GET` of an app's health path through the host's own
//! Traefik, as a user would reach the app, turned into a [`Check`].
//!
//! The request names the app's domain (URL, Host header and TLS SNI) but
//! connects to a fixed address (by default `127.0.0.1:443`), so the probe
//! tests this host's deployment rather than whatever DNS points at.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccfleet_proto::Domain;

use super::gate::{seconds, Check};

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;

/// How the probe talks to the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeScheme {
    Http,
    Https,
}

impl ProbeScheme {
    fn as_str(self) -> &'static str {
        match self {
            ProbeScheme::Http => "http",
            ProbeScheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            ProbeScheme::Http => 80,
            ProbeScheme::Https => 443,
        }
    }
}

/// What to probe and what counts as healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub domain: Domain,
    /// The app's health path; starts with '/'.
    pub path: String,
    /// Where to connect; the host's own Traefik by default.
    pub address: SocketAddr,
    pub scheme: ProbeScheme,
    /// Statuses that count as healthy. Redirects are not followed, so a
    /// 301 or 302 is healthy only when listed here.
    pub accepted_statuses: Vec<u16>,
    /// For the whole request: connect, TLS, sending and the response head.
    pub request_timeout: Duration,
}

impl ProbeTarget {
    /// The default probe address: this host's Traefik.
    pub const TRAEFIK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 443);

    /// `https://<domain><path>` through this host's Traefik, accepting 200,
    /// with a 5 s request timeout.
    pub fn through_traefik(domain: Domain, path: impl Into<String>) -> ProbeTarget {
        ProbeTarget {
            domain,
            path: path.into(),
            address: ProbeTarget::TRAEFIK,
            scheme: ProbeScheme::Https,
            accepted_statuses: vec![200],
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The URL requested: the port appears only when it is not the scheme's
    /// default, exactly as a browser would write the Host header.
    pub fn url(&self) -> String {
        let port = self.address.port();
        if port == self.scheme.default_port() {
            format!("{}://{}{}", self.scheme.as_str(), self.domain, self.path)
        } else {
            format!("{}://{}:{port}{}", self.scheme.as_str(), self.domain, self.path)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot build the http client for health probes")]
    Client(#[source] reqwest::Error),
    #[error("cannot configure tls for health probes")]
    Tls(#[source] rustls::Error),
}

/// The prober. Keeps one HTTP client per (domain, address), each pinned to
/// its address with `ClientBuilder::resolve`: the domain must stay in the
/// URL (for SNI and Host) while the connection goes to the address, and
/// reqwest fixes name overrides when a client is built. Clients share one
/// TLS configuration and live as long as the prober.
#[derive(Debug)]
pub struct HttpProbe {
    tls: rustls::ClientConfig,
    clients: Mutex<HashMap<(Domain, SocketAddr), reqwest::Client>>,
}

impl HttpProbe {
    pub fn new() -> Result<HttpProbe, ProbeError> {
        // ring explicitly rather than the process default: reqwest's
        // rustls-no-provider build panics when no default was installed, and
        // a library must not depend on its binary having done that first.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ProbeError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(ccfleet_proto::tls::AnyServerCertificate::new(provider))
            .with_no_client_auth();
        let probe = HttpProbe {
            tls,
            clients: Mutex::new(HashMap::new()),
        };
        // Build one client now, so a configuration error shows at start-up
        // rather than as an unhealthy app later.
        probe.build_client(&"probe.invalid".parse().expect("a valid domain"), ProbeTarget::TRAEFIK)?;
        Ok(probe)
    }

    fn build_client(&self, domain: &Domain, address: SocketAddr) -> Result<reqwest::Client, ProbeError> {
        reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .resolve(domain.as_str(), address)
            // Never through a proxy from the environment: the probe is about
            // this host's Traefik.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            // A fresh connection per probe: a check should see what a new
            // visitor sees, not ride a connection opened before a restart.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("ccfleet-agent/", env!("CARGO_PKG_VERSION"), " health probe"))
            .build()
            .map_err(ProbeError::Client)
    }

    fn client_for(&self, target: &ProbeTarget) -> Result<reqwest::Client, ProbeError> {
        let key = (target.domain.clone(), target.address);
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = self.build_client(&target.domain, target.address)?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// One probe: healthy when the response status is accepted. The reason of
    /// an unhealthy check says what happened, for the operator.
    pub async fn probe(&self, target: &ProbeTarget) -> Check {
        let url = target.url();
        let unhealthy = |reason: String| Check::Unhealthy { reason };
        if !target.path.starts_with('/') {
            return unhealthy(format!("health path {:?} does not start with '/'", target.path));
        }
        let client = match self.client_for(target) {
            Ok(client) => client,
            Err(error) => return unhealthy(ccfleet_proto::error_chain(&error)),
        };
        let response = client.get(&url).timeout(target.request_timeout).send().await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                if target.accepted_statuses.contains(&status) {
                    Check::Healthy
                } else {
                    unhealthy(format!("GET {url} answered {status}"))
                }
            }
            Err(error) => unhealthy(describe_failure(&url, target, &error)),
        }
    }
}

/// A request failure in words: timeouts and refused connections plainly,
/// anything else with its chain of causes.
fn describe_failure(url: &str, target: &ProbeTarget, error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return format!("GET {url} timed out after {}", seconds(target.request_timeout));
    }
    if refused(error) {
        return format!("connection refused to {}", target.address);
    }
    format!("GET {url} failed: {}", ccfleet_proto::error_chain(error))
}

/// Whether an `io::Error` of kind `ConnectionRefused` is among the causes.
fn refused(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

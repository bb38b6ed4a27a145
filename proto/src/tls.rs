//! The client side of the wire's security: crypto provider, join tokens, CA
//! pinning, credential files and certificate requests. Shared by the agent,
//! the CLI and the tests, so that all of them reach the server the same way.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Installs ring as the process's rustls crypto provider. Call it first thing
/// in every binary and test: with more than one provider compiled in, rustls
/// refuses to pick one by itself. Idempotent.
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Hex SHA-256 of a DER certificate: how a join token names the CA.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Hex SHA-256 of a token secret: all the server stores of it.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("malformed join token: {0}")]
    Token(&'static str),
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    #[error("cannot parse {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("{0}")]
    Mismatch(&'static str),
    #[error("the credential's certificate expired at {0}")]
    Expired(String),
    #[error("cannot create a key or certificate request: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A join token: `ccf1.<CA fingerprint>.<token id>.<secret>`, all lowercase
/// hex. The fingerprint lets a new agent pin the server's CA before it sends
/// anything; the id names the token in listings; the secret is checked
/// against its stored hash.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub id: String,
    pub secret: String,
}

const TOKEN_PREFIX: &str = "ccf1";

impl JoinToken {
    /// A fresh token for the CA with `ca_fingerprint`: 8 random bytes of id,
    /// 32 of secret.
    pub fn generate(ca_fingerprint: &str) -> JoinToken {
        JoinToken {
            ca_fingerprint: ca_fingerprint.to_owned(),
            id: random_hex(8),
            secret: random_hex(32),
        }
    }
}

/// Random bytes from the operating system, as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The OS random source failing is not something to limp on with.
    getrandom::fill(&mut buffer).expect("the operating system's random number generator is unavailable");
    hex::encode(buffer)
}

impl fmt::Display for JoinToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.ca_fingerprint, self.id, self.secret
        )
    }
}

/// Never print the secret by accident.
impl fmt::Debug for JoinToken {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "JoinToken {{ id: {}, ca: {} }}",
            self.id, self.ca_fingerprint
        )
    }
}

impl FromStr for JoinToken {
    type Err = TlsError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let parts: Vec<&str> = text.split('.').collect();
        let [prefix, fingerprint, id, secret] = parts[..] else {
            return Err(TlsError::Token("expected ccf1.<ca fingerprint>.<id>.<secret>"));
        };
        if prefix != TOKEN_PREFIX {
            return Err(TlsError::Token("unknown token format (expected the prefix ccf1)"));
        }
        let is_hex = |part: &str, length: usize| {
            part.len() == length && part.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        };
        if !is_hex(fingerprint, 64) {
            return Err(TlsError::Token("the CA fingerprint must be 64 lowercase hex digits"));
        }
        if !is_hex(id, 16) {
            return Err(TlsError::Token("the token id must be 16 lowercase hex digits"));
        }
        if !is_hex(secret, 64) {
            return Err(TlsError::Token("the secret must be 64 lowercase hex digits"));
        }
        Ok(JoinToken {
            ca_fingerprint: fingerprint.into(),
            id: id.into(),
            secret: secret.into(),
        })
    }
}

/// The handshake-signature checks every verifier here shares (a verifier
/// decides which certificate to trust; the signatures are always checked
/// with the provider's algorithms).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            certificate: &CertificateDer<'_>,
            signature: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                certificate,
                signature,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            certificate: &CertificateDer<'_>,
            signature: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                certificate,
                signature,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// A server certificate verifier that trusts exactly one CA, named by its
/// fingerprint: the CA certificate must arrive in the server's chain, hash to
/// the pinned fingerprint, and sign the server's certificate for the name
/// dialled. Used for enrolment, before the agent has the CA certificate.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedCaVerifier {
    pub fn new(fingerprint: &str) -> Arc<PinnedCaVerifier> {
        Arc::new(PinnedCaVerifier {
            fingerprint: fingerprint.to_owned(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|certificate| fingerprint(certificate) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's CA does not match the join token's fingerprint {}",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(pinned.clone().into_owned())
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|error| rustls::Error::General(error.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    signature_checks!();
}

/// A server certificate verifier that accepts any certificate, but still
/// checks the handshake signatures. Only for the agent's health probe
/// (`agent::health::probe`), which checks the app, not the PKI: it dials a
/// fixed address on its own host (Traefik on 127.0.0.1, the app's domain as
/// SNI), Traefik may serve a default or staging certificate (ACME not done
/// yet, a test host), and a certificate problem is not a reason to roll back
/// an upgrade. Never for talking to the ccfleet server.
#[derive(Debug)]
pub struct AnyServerCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl AnyServerCertificate {
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Arc<AnyServerCertificate> {
        Arc::new(AnyServerCertificate { provider })
    }
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!();
}

/// What a client needs to talk to the server over mutual TLS. Stored as a
/// TOML file readable by its owner only (`ccfleet admin issue`, the agent's
/// state directory).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The server to talk to, e.g. `https://fleet.example.org:7443`.
    pub server: String,
    /// PEM of the fleet CA, the only root the client trusts.
    pub ca_certificate: String,
    /// PEM of the client's certificate.
    pub certificate: String,
    /// PEM (PKCS#8) of the client's private key.
    pub private_key: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Credential")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Checks, before any connection, that the certificate was signed by the
    /// credential's own CA and is within its validity period, so that a
    /// credential of another fleet or an expired one fails with a clear
    /// message instead of a closed connection.
    pub fn check(&self) -> Result<(), TlsError> {
        let ca_der = first_certificate_der(&self.ca_certificate)?;
        let certificate_der = first_certificate_der(&self.certificate)?;
        let parse = |der| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, certificate)| certificate)
                .map_err(|error| TlsError::Parse {
                    what: "certificate",
                    detail: error.to_string(),
                })
        };
        let (ca, certificate) = (parse(&ca_der)?, parse(&certificate_der)?);
        if certificate.verify_signature(Some(ca.public_key())).is_err() {
            return Err(TlsError::Mismatch(
                "the credential's certificate was not issued by the CA in the same file (is it from another fleet?)",
            ));
        }
        let (not_before, not_after) = certificate_validity(&self.certificate)?;
        let now = SystemTime::now();
        if now > not_after {
            return Err(TlsError::Expired(
                humantime::format_rfc3339_seconds(not_after).to_string(),
            ));
        }
        if now + Duration::from_secs(300) < not_before {
            return Err(TlsError::Mismatch(
                "the credential's certificate is not valid yet (is the clock right?)",
            ));
        }
        Ok(())
    }

    /// Expiry of the credential's certificate.
    pub fn not_after(&self) -> Result<SystemTime, TlsError> {
        certificate_validity(&self.certificate).map(|(_, not_after)| not_after)
    }
}

/// Errors while building a connection to the server.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid server URL {url:?}: {detail}")]
    Url { url: String, detail: String },
    #[error(transparent)]
    Invalid(#[from] crate::UrlError),
    #[error("invalid TLS settings: {0}")]
    Tls(String),
}

fn base_endpoint(url: &str) -> Result<tonic::transport::Endpoint, EndpointError> {
    let url: crate::ServerUrl = url.parse()?;
    let url = url.as_str();
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|error| EndpointError::Url {
            url: url.to_owned(),
            detail: error.to_string(),
        })?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// An endpoint for mutual TLS with `credential`: trusts only the fleet CA
/// and presents the credential's certificate.
pub fn mtls_endpoint(url: &str, credential: &Credential) -> Result<tonic::transport::Endpoint, EndpointError> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&credential.ca_certificate))
        .identity(tonic::transport::Identity::from_pem(
            &credential.certificate,
            &credential.private_key,
        ));
    base_endpoint(url)?
        .tls_config(tls)
        .map_err(|error| EndpointError::Tls(error.to_string()))
}

/// An endpoint for enrolment: no client certificate, and the server is
/// trusted only if its chain holds the CA named by `ca_fingerprint`.
pub fn pinned_endpoint(url: &str, ca_fingerprint: &str) -> Result<tonic::transport::Endpoint, EndpointError> {
    base_endpoint(url)?
        .tls_config_with_verifier(
            tonic::transport::ClientTlsConfig::new(),
            PinnedCaVerifier::new(ca_fingerprint),
        )
        .map_err(|error| EndpointError::Tls(error.to_string()))
}

/// A new private key and a certificate request for it. The request's subject
/// is informational: the server decides the identity of what it signs.
pub struct KeyAndRequest {
    pub private_key_pem: String,
    pub csr_pem: String,
}

pub fn generate_key_and_request(common_name: &str) -> Result<KeyAndRequest, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let request = params.serialize_request(&key)?;
    Ok(KeyAndRequest {
        private_key_pem: key.serialize_pem(),
        csr_pem: request.pem()?,
    })
}

/// Parses the first certificate of a PEM text into DER.
pub fn first_certificate_der(pem: &str) -> Result<Vec<u8>, TlsError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|error| TlsError::Parse {
        what: "PEM certificate",
        detail: error.to_string(),
    })?;
    if parsed.label != "CERTIFICATE" {
        return Err(TlsError::NoCertificate("the PEM text"));
    }
    Ok(parsed.contents)
}

/// (not before, not after) of the first certificate in `pem`.
pub fn certificate_validity(pem: &str) -> Result<(SystemTime, SystemTime), TlsError> {
    let der = first_certificate_der(pem)?;
    let (_, certificate) = x509_parser::parse_x509_certificate(&der).map_err(|error| TlsError::Parse {
        what: "certificate",
        detail: error.to_string(),
    })?;
    let to_system_time = |time: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(time.timestamp().max(0) as u64)
    };
    Ok((
        to_system_time(certificate.validity().not_before),
        to_system_time(certificate.validity().not_after),
    ))
}

/// When a certificate valid from `not_before` to `not_after` should be
/// renewed: at two thirds of its lifetime.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let token = JoinToken::generate(&"ab".repeat(32));
        let text = token.to_string();
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert!(!format!("{token:?}").contains(&token.secret), "Debug hides the secret");
        let cases = [
            ("", "malformed join token: expected ccf1.<ca fingerprint>.<id>.<secret>"),
            (
                "ccf2.a.b.c",
                "malformed join token: unknown token format (expected the prefix ccf1)",
            ),
            (
                &text.replace("ccf1.ab", "ccf1.AB"),
                "malformed join token: the CA fingerprint must be 64 lowercase hex digits",
            ),
            (
                &format!("ccf1.{}.{}.{}", token.ca_fingerprint, "zz", token.secret),
                "malformed join token: the token id must be 16 lowercase hex digits",
            ),
            (
                &format!("{text};rm"),
                "malformed join token: the secret must be 64 lowercase hex digits",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                input.parse::<JoinToken>().unwrap_err().to_string(),
                expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            renewal_time(start, start + Duration::from_secs(300)),
            start + Duration::from_secs(200)
        );
    }
}

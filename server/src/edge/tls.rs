//! The edge's TLS configuration: the server's certificate, and which client
//! certificates each listener asks for (the admin listener requires an
//! admin's inside the handshake).

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::auth::Identity;

/// Which client certificates a listener asks for in its TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Verified against the CA when given; Enrollment and health work
    /// without one (the interceptors refuse such callers elsewhere).
    Optional,
    /// An admin certificate is required: a handshake without one, or with a
    /// host's, fails (the admin listener).
    AdminRequired,
}

/// The TLS configuration: the server's certificate (with the CA in its
/// chain), client certificates as `client_auth` says, HTTP/2 only.
pub fn tls_acceptor(
    certificate_chain_pem: &str,
    private_key_pem: &str,
    ca_certificate_pem: &str,
    client_auth: ClientAuth,
) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::server::danger::ClientCertVerifier;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_certificate_pem.as_bytes()) {
        roots
            .add(certificate.context("cannot read the CA certificate")?)
            .context("cannot trust the CA certificate")?;
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier: Arc<dyn ClientCertVerifier> = match client_auth {
        ClientAuth::Optional => builder
            .allow_unauthenticated()
            .build()
            .context("cannot build the client certificate verifier")?,
        ClientAuth::AdminRequired => Arc::new(AdminCertificatesOnly(
            builder
                .build()
                .context("cannot build the client certificate verifier")?,
        )),
    };
    let chain = CertificateDer::pem_slice_iter(certificate_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("cannot read the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes()).context("cannot read the server key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot select TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("invalid server certificate or key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A client verifier that requires a certificate chaining to the CA (the
/// wrapped verifier, built without `allow_unauthenticated`) and naming an
/// admin: the admin listener refuses everyone else inside the handshake,
/// before any HTTP/2 or gRPC code runs. Revocation and expiry are checked
/// again on every call by `auth`.
#[derive(Debug)]
struct AdminCertificatesOnly(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for AdminCertificatesOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        match crate::auth::identity_of(end_entity.as_ref()) {
            Some(Identity::Admin(_)) => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

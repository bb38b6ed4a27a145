//! The fleet's certificate authority: created by `init`, kept in the state
//! directory (key 0600), signing the server's own certificate at every start
//! and the host and admin certificates on request.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::Identity;

const CA_CERTIFICATE_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVER_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates are valid from a little before they are made, so that a
/// client whose clock is slightly behind still accepts them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("a CA already exists in {0}; refusing to replace it")]
    Exists(PathBuf),
    #[error("certificate operation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the certificate request is invalid: {0}")]
    BadRequest(String),
}

/// A certificate just signed.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate_pem: String,
    /// Lowercase hex of the serial number, as the store and revocation know it.
    pub serial: String,
    pub not_after: SystemTime,
    /// Hex SHA-256 of the certified public key (DER).
    pub public_key: String,
}

pub struct CertificateAuthority {
    certificate_pem: String,
    certificate_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// Writes `contents` to `path` readable by the owner only, atomically
/// replacing an existing file.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), CaError> {
    replace_file(path, contents, 0o600)
}

/// Replaces `path` with `contents` (file mode `mode`) atomically and durably.
fn replace_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    ccfleet_proto::fsutil::write_atomic(path, contents.as_bytes(), mode).map_err(|source| CaError::Write {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_owned(),
        source,
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes = hex::decode(ccfleet_proto::tls::random_hex(16)).unwrap_or_else(|_| vec![1; 16]);
    // A positive integer with no leading zero byte, as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn offset(time: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(time)
}

impl CertificateAuthority {
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(CA_CERTIFICATE_FILE).exists()
    }

    /// Creates a new CA in `data_dir`; refuses if one exists.
    pub fn create(data_dir: &Path) -> Result<CertificateAuthority, CaError> {
        if Self::exists(data_dir) {
            return Err(CaError::Exists(data_dir.to_owned()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "ccfleet CA");
        params.distinguished_name.push(DnType::OrganizationName, "ccfleet");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = offset(now + CA_LIFETIME);
        params.serial_number = Some(random_serial());
        let certificate = params.self_signed(&key)?;
        // The certificate is written last: its presence is what marks the CA
        // as existing, so a crash in between leaves a key that the next
        // `init` replaces.
        replace_file(&data_dir.join(CA_KEY_FILE), &key.serialize_pem(), 0o600)?;
        replace_file(&data_dir.join(CA_CERTIFICATE_FILE), &certificate.pem(), 0o644)?;
        Self::load(data_dir)
    }

    /// Loads the CA from `data_dir`, refusing a key that others can read.
    pub fn load(data_dir: &Path) -> Result<CertificateAuthority, CaError> {
        use std::os::unix::fs::PermissionsExt;
        let key_path = data_dir.join(CA_KEY_FILE);
        let mode = std::fs::metadata(&key_path)
            .map_err(|source| CaError::Read {
                path: key_path.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(CaError::Permissions {
                path: key_path,
                mode: mode & 0o777,
            });
        }
        let key = KeyPair::from_pem(&read(&key_path)?)?;
        let certificate_pem = read(&data_dir.join(CA_CERTIFICATE_FILE))?;
        let certificate_der = ccfleet_proto::tls::first_certificate_der(&certificate_pem)
            .map_err(|error| CaError::BadRequest(error.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key)?;
        Ok(CertificateAuthority {
            certificate_pem,
            certificate_der,
            issuer,
        })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Hex SHA-256 of the CA certificate, as carried by join tokens.
    pub fn fingerprint(&self) -> String {
        ccfleet_proto::tls::fingerprint(&self.certificate_der)
    }

    /// A fresh server certificate for `names` (DNS names or IP addresses)
    /// and its key, both PEM; the certificate PEM is followed by the CA's, so
    /// clients that pin the CA by fingerprint receive it in the chain.
    pub fn issue_server_certificate(&self, names: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "ccfleet server");
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(address) => Ok(SanType::IpAddress(address)),
                Err(_) => name.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = offset(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = offset(now + SERVER_CERTIFICATE_LIFETIME);
        params.serial_number = Some(random_serial());
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", certificate.pem(), self.certificate_pem),
            key.serialize_pem(),
        ))
    }

    /// Signs `csr_pem` as a client certificate for `identity`, valid for
    /// `lifetime`. The request's own subject and extensions are ignored: the
    /// identity comes from the server's decision, never from the requester.
    pub fn sign_client_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        if csr_pem.len() > 16 * 1024 {
            return Err(CaError::BadRequest(
                "the certificate request is larger than 16 KiB".into(),
            ));
        }
        let request = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|error| {
            CaError::BadRequest(format!("cannot parse or verify the PEM certificate request ({error})"))
        })?;
        self.sign(request, identity, lifetime)
    }

    /// Issues a client certificate for `identity` with a key made here
    /// (only for the first admin credential, made by `init` on the server).
    pub fn issue_client_certificate(
        &self,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate()?;
        let request = CertificateParams::default().serialize_request(&key)?;
        let request = CertificateSigningRequestParams::from_der(request.der())?;
        Ok((self.sign(request, identity, lifetime)?, key.serialize_pem()))
    }

    fn sign(
        &self,
        request: CertificateSigningRequestParams,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, identity.name());
        params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        let not_after = now + lifetime;
        params.not_before = offset(now - CLOCK_SKEW_ALLOWANCE.min(lifetime / 10));
        params.not_after = offset(not_after);
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let public_key = {
            use rcgen::PublicKeyData;
            ccfleet_proto::tls::fingerprint(request.public_key.der_bytes())
        };
        let request = CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        };
        let certificate = request.signed_by(&self.issuer)?;
        Ok(Issued {
            certificate_pem: certificate.pem(),
            serial: hex::encode(serial.to_bytes()),
            not_after,
            public_key,
        })
    }
}

//! The agent's identity: enrolment with a join token, the stored credential,
//! and renewal before the certificate runs out.
//!
//! The credential lives in `<state_dir>/identity.toml` (0600). The private key
//! is generated here and never leaves the host: the server only ever sees
//! certificate requests.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ccfleet_proto::pb::{self, agent_client::AgentClient, enrollment_client::EnrollmentClient};
use ccfleet_proto::tls::{self, Credential, JoinToken};
use ccfleet_proto::HostId;
use tonic::transport::Channel;

/// Errors of enrolment and renewal, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the join token file {path}")]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the join token in {path} is unusable: {source}")]
    BadToken {
        path: PathBuf,
        #[source]
        source: tls::TlsError,
    },
    #[error("this host has no identity yet and no join token file is configured (server.join_token_file)")]
    NoToken,
    #[error("cannot reach the server at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("cannot store the identity in {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the stored identity {path} is unusable: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the host certificate in {path} expired at {expired}: this host was offline for longer than \
         its certificate's lifetime; an admin must run `ccfleet host remove <host id>`, then remove \
         {path} and give the agent a new join token (server.join_token_file)"
    )]
    Expired { path: PathBuf, expired: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Where the credential lives in a state directory.
pub fn identity_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity.toml")
}

/// Loads the stored credential, if the host has one.
pub fn load(state_dir: &Path) -> Result<Option<Credential>, IdentityError> {
    let path = identity_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(IdentityError::Corrupt {
                path,
                detail: error.to_string(),
            })
        }
    };
    let credential: Credential = toml::from_str(&text).map_err(|error| IdentityError::Corrupt {
        path: path.clone(),
        detail: error.to_string(),
    })?;
    credential.check().map_err(|error| match error {
        tls::TlsError::Expired(expired) => IdentityError::Expired {
            path: path.clone(),
            expired,
        },
        other => IdentityError::Corrupt {
            path: path.clone(),
            detail: other.to_string(),
        },
    })?;
    Ok(Some(credential))
}

/// Writes the credential atomically, readable by its owner only.
pub fn store(state_dir: &Path, credential: &Credential) -> Result<(), IdentityError> {
    let path = identity_path(state_dir);
    let text = toml::to_string(credential).map_err(|error| IdentityError::Corrupt {
        path: path.clone(),
        detail: error.to_string(),
    })?;
    write_private(state_dir, &path, &text)?;
    // The enrolment key is now part of the identity.
    match std::fs::remove_file(pending_path(state_dir)) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IdentityError::Write {
            path: pending_path(state_dir),
            source,
        }),
    }
}

/// Writes `text` to `path` in `state_dir` (created 0700) readable by the
/// owner only, atomically and durably.
fn write_private(state_dir: &Path, path: &Path, text: &str) -> Result<(), IdentityError> {
    use std::os::unix::fs::DirBuilderExt;
    let write_error = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(write_error)?;
    ccfleet_proto::fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(write_error)
}

/// The key and request of an enrolment in progress, kept so that a retry
/// after a lost answer presents the same key (the server re-issues the
/// certificate for it instead of refusing a second enrolment).
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingEnrollment {
    host_id: String,
    private_key_pem: String,
    csr_pem: String,
}

fn pending_path(state_dir: &Path) -> PathBuf {
    state_dir.join("enrollment.toml")
}

/// The pending enrolment key for `host_id`, made and stored if there is none.
fn pending_enrollment(state_dir: &Path, host_id: &HostId) -> Result<PendingEnrollment, IdentityError> {
    let path = pending_path(state_dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        match toml::from_str::<PendingEnrollment>(&text) {
            Ok(pending) if pending.host_id == host_id.as_str() => return Ok(pending),
            // Another host id, or a damaged file: start over with a new key.
            _ => {}
        }
    }
    let generated = tls::generate_key_and_request(host_id.as_str())?;
    let pending = PendingEnrollment {
        host_id: host_id.to_string(),
        private_key_pem: generated.private_key_pem,
        csr_pem: generated.csr_pem,
    };
    let text = toml::to_string(&pending).map_err(|error| IdentityError::Corrupt {
        path: path.clone(),
        detail: error.to_string(),
    })?;
    write_private(state_dir, &path, &text)?;
    Ok(pending)
}

/// Reads a join token from a file (surrounding whitespace ignored).
pub fn read_token(path: &Path) -> Result<JoinToken, IdentityError> {
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::ReadToken {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|source| IdentityError::BadToken {
        path: path.to_owned(),
        source,
    })
}

/// Enrols this host: pins the CA named by the token, generates a key here
/// (kept in `state_dir` until the identity is stored, so a retry uses the
/// same one), sends a certificate request with the token, and returns the
/// credential. The caller stores it with [`store`].
pub async fn enroll(
    url: &str,
    token: &JoinToken,
    host_id: &HostId,
    facts: pb::HostFacts,
    state_dir: &Path,
) -> Result<Credential, IdentityError> {
    tls::install_crypto_provider();
    let unreachable = |detail: String| IdentityError::Unreachable {
        url: url.to_owned(),
        detail,
    };
    let channel = tls::pinned_endpoint(url, &token.ca_fingerprint)
        .map_err(|error| unreachable(error.to_string()))?
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|error| unreachable(error_chain(&error)))?;
    let generated = pending_enrollment(state_dir, host_id)?;
    let response = EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token.to_string(),
            host_id: host_id.to_string(),
            csr_pem: generated.csr_pem,
            facts: Some(facts),
        })
        .await
        .map_err(|status| IdentityError::Refused(status.message().to_owned()))?
        .into_inner();
    let credential = Credential {
        server: url.to_owned(),
        ca_certificate: response.ca_certificate_pem,
        certificate: response.certificate_pem,
        private_key: generated.private_key_pem,
    };
    credential.check()?;
    Ok(credential)
}

/// When `credential` should be renewed: two thirds into its lifetime.
pub fn renewal_due(credential: &Credential) -> Result<SystemTime, IdentityError> {
    let (not_before, not_after) = tls::certificate_validity(&credential.certificate)?;
    Ok(tls::renewal_time(not_before, not_after))
}

/// Renews over an existing mTLS channel: a new key, a new request, the same
/// identity (the server takes it from the calling certificate).
pub async fn renew(channel: Channel, host_id: &HostId, credential: &Credential) -> Result<Credential, IdentityError> {
    let generated = tls::generate_key_and_request(host_id.as_str())?;
    let response = AgentClient::new(channel)
        .renew(pb::RenewRequest {
            csr_pem: generated.csr_pem,
        })
        .await
        .map_err(|status| IdentityError::Refused(status.message().to_owned()))?
        .into_inner();
    let renewed = Credential {
        certificate: response.certificate_pem,
        private_key: generated.private_key_pem,
        ..credential.clone()
    };
    renewed.check()?;
    Ok(renewed)
}

pub use ccfleet_proto::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    /// A credential whose certificate, signed by its own CA, expired an hour ago.
    fn expired_credential() -> Credential {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(3);
        params.not_after = now - time::Duration::hours(1);
        let certificate = params.signed_by(&key, &issuer).unwrap();
        Credential {
            server: "https://127.0.0.1:7443".into(),
            ca_certificate: ca.pem(),
            certificate: certificate.pem(),
            private_key: key.serialize_pem(),
        }
    }

    #[test]
    fn an_expired_identity_says_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &expired_credential()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(identity_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let error = load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("expired at") && error.contains("ccfleet host remove"),
            "{error}"
        );
    }

    #[test]
    fn no_identity_yet_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
    }
}

//! The Enrollment service: a join token and a certificate request in, a
//! short-lived host certificate out. The only service callable without a
//! client certificate.

use std::sync::Arc;
use std::time::Duration;

use ccfleet_proto::pb;
use ccfleet_proto::tls::{secret_hash, JoinToken};
use tonic::{Request, Response, Status};

use super::{convert, internal};
use crate::auth::ca::CertificateAuthority;
use crate::auth::Identity;
use crate::metrics::Metrics;
use crate::store::{now_millis, CertificateKind, CertificateRecord, StoreHandle, TokenRefusal};

pub struct EnrollmentService {
    pub store: StoreHandle,
    pub authority: Arc<CertificateAuthority>,
    pub host_certificate_lifetime: Duration,
    pub metrics: Arc<Metrics>,
}

/// Why an enrolment failed, decided on the store thread.
enum Refusal {
    Token(TokenRefusal),
    HostExists,
    BadRequest(String),
}

pub fn millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

pub fn token_refusal(refusal: TokenRefusal) -> Status {
    match refusal {
        TokenRefusal::Invalid => Status::unauthenticated("invalid join token"),
        TokenRefusal::Expired => {
            Status::unauthenticated("the join token has expired; create a new one with `ccfleet token create`")
        }
        TokenRefusal::UsedUp => {
            Status::unauthenticated("the join token has no uses left; create a new one with `ccfleet token create`")
        }
        TokenRefusal::Revoked => Status::unauthenticated("the join token has been revoked"),
    }
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let enrolled = self.enroll_host(request).await;
        Metrics::increment(match &enrolled {
            Ok(_) => &self.metrics.enrollments_succeeded,
            Err(_) => &self.metrics.enrollments_refused,
        });
        enrolled
    }
}

impl EnrollmentService {
    async fn enroll_host(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let token: JoinToken = request
            .token
            .parse()
            .map_err(|error| Status::unauthenticated(format!("{error}")))?;
        if token.ca_fingerprint != self.authority.fingerprint() {
            return Err(Status::unauthenticated("the join token was made for another fleet CA"));
        }
        let host_id = convert::host_id("host_id", &request.host_id)?;
        let facts = convert::facts(request.facts)?;
        let hash = secret_hash(&token.secret);
        let authority = self.authority.clone();
        let lifetime = self.host_certificate_lifetime;
        let csr_pem = request.csr_pem;
        let enrolled_host = host_id.clone();
        // Check, sign and commit in one store job, so two enrolments racing
        // for the last use of a token, or for one host id, cannot both win.
        let outcome = self
            .store
            .write(move |store| {
                let now = now_millis();
                let checked = store.check_token(&token.id, &hash, now)?;
                // Only a used-up token may still serve, for a retry (below).
                if let Err(refusal) = checked {
                    if refusal != TokenRefusal::UsedUp {
                        return Ok(Err(Refusal::Token(refusal)));
                    }
                }
                let sign = || authority.sign_client_request(&csr_pem, &Identity::Host(enrolled_host.clone()), lifetime);
                let record = |issued: &crate::auth::ca::Issued| CertificateRecord {
                    serial: issued.serial.clone(),
                    kind: CertificateKind::Host,
                    identity: enrolled_host.to_string(),
                    issued_at: now,
                    not_after: millis(issued.not_after),
                    revoked_at: None,
                };
                if let Some(host) = store.host(&enrolled_host)? {
                    // A retry of an enrolment whose answer was lost: the same
                    // token (its use already spent) and the same key, before
                    // the host ever connected. Anything else is a takeover.
                    let retry_of = host
                        .enrollment
                        .as_ref()
                        .filter(|enrollment| enrollment.token_id == token.id && host.agent_version.is_empty());
                    let Some(enrollment) = retry_of else {
                        return Ok(Err(Refusal::HostExists));
                    };
                    let issued = match sign() {
                        Ok(issued) if issued.public_key == enrollment.public_key => issued,
                        Ok(_) => return Ok(Err(Refusal::HostExists)),
                        Err(error) => return Ok(Err(Refusal::BadRequest(error.to_string()))),
                    };
                    store.record_certificate(&record(&issued))?;
                    return Ok(Ok(issued));
                }
                let token = match checked {
                    Ok(token) => token,
                    Err(refusal) => return Ok(Err(Refusal::Token(refusal))),
                };
                let issued = match sign() {
                    Ok(issued) => issued,
                    Err(error) => return Ok(Err(Refusal::BadRequest(error.to_string()))),
                };
                store.commit_enrolment(token, &enrolled_host, &facts, &record(&issued), &issued.public_key, now)?;
                Ok(Ok(issued))
            })
            .await
            .map_err(internal)?;
        match outcome {
            Ok(issued) => {
                tracing::info!(host = %host_id, ?peer, serial = issued.serial, "host enrolled");
                Ok(Response::new(pb::EnrollResponse {
                    certificate_pem: issued.certificate_pem,
                    ca_certificate_pem: self.authority.certificate_pem().to_owned(),
                    not_after: Some(convert::timestamp(millis(issued.not_after))),
                }))
            }
            Err(refusal) => {
                let status = match refusal {
                    Refusal::Token(refusal) => token_refusal(refusal),
                    Refusal::HostExists => Status::already_exists(format!(
                        "host {host_id} is already enrolled; to enrol a machine under this id again, an admin \
                         must first run `ccfleet host remove {host_id}`"
                    )),
                    Refusal::BadRequest(message) => Status::invalid_argument(message),
                };
                tracing::warn!(host = %host_id, ?peer, %status, "enrolment refused");
                Err(status)
            }
        }
    }
}

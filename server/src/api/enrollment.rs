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
use crate::model::{now_millis, CertificateKind, CertificateRecord, TokenRefusal};
use crate::store::{Enrolment, EnrolmentRefusal, StoreHandle};
use ccfleet_proto::HostId;

pub struct EnrollmentService {
    pub store: StoreHandle,
    pub authority: Arc<CertificateAuthority>,
    pub host_certificate_lifetime: Duration,
    pub metrics: Arc<Metrics>,
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
        // A cheap read first, so that a caller without a valid token never
        // costs the server a signature; the decision proper is in `enrol`.
        {
            let (id, hash) = (token.id.clone(), hash.clone());
            let checked = self
                .store
                .read(move |store| store.check_token(&id, &hash, now_millis()))
                .await
                .map_err(internal)?;
            match checked {
                Ok(_) | Err(TokenRefusal::UsedUp) => {}
                Err(refusal) => return Err(self.refused(&host_id, peer, token_refusal(refusal))),
            }
        }
        // Signing is CPU work: off the store thread and off the async workers.
        let (authority, lifetime, csr_pem, identity) = (
            self.authority.clone(),
            self.host_certificate_lifetime,
            request.csr_pem,
            Identity::Host(host_id.clone()),
        );
        let issued = tokio::task::spawn_blocking(move || authority.sign_client_request(&csr_pem, &identity, lifetime))
            .await
            .map_err(|_| Status::internal("the signing task failed"))?
            .map_err(|error| self.refused(&host_id, peer, Status::invalid_argument(error.to_string())))?;
        let now = now_millis();
        let enrolment = Enrolment {
            token_id: token.id.clone(),
            secret_hash: hash,
            host_id: host_id.clone(),
            facts,
            certificate: CertificateRecord {
                serial: issued.serial.clone(),
                kind: CertificateKind::Host,
                identity: host_id.to_string(),
                issued_at: now,
                not_after: millis(issued.not_after),
                revoked_at: None,
            },
            public_key: issued.public_key.clone(),
            now,
        };
        // A refused enrolment drops the certificate just signed unseen.
        let outcome = self
            .store
            .write(move |store| store.enrol(&enrolment))
            .await
            .map_err(internal)?;
        match outcome {
            Ok(()) => {
                tracing::info!(host = %host_id, ?peer, serial = issued.serial, "host enrolled");
                Ok(Response::new(pb::EnrollResponse {
                    certificate_pem: issued.certificate_pem,
                    ca_certificate_pem: self.authority.certificate_pem().to_owned(),
                    not_after: Some(convert::timestamp(millis(issued.not_after))),
                }))
            }
            Err(EnrolmentRefusal::Token(refusal)) => Err(self.refused(&host_id, peer, token_refusal(refusal))),
            Err(EnrolmentRefusal::HostExists) => Err(self.refused(
                &host_id,
                peer,
                Status::already_exists(format!(
                    "host {host_id} is already enrolled; to enrol a machine under this id again, an admin \
                     must first run `ccfleet host remove {host_id}`"
                )),
            )),
        }
    }

    fn refused(&self, host_id: &HostId, peer: Option<std::net::SocketAddr>, status: Status) -> Status {
        tracing::warn!(host = %host_id, ?peer, %status, "enrolment refused");
        status
    }
}

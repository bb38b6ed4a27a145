//! Enrolment as one typed store operation: check the token, refuse a host id
//! already taken (unless this is a retry of an enrolment whose answer was
//! lost), spend one use, create the host and record its certificate. The
//! certificate is signed before, off the store thread; this only decides and
//! writes.

use ccfleet_proto::HostId;

use super::{CertificateRecord, HostFactsRecord, Store, StoreError, TokenRefusal, UnixMillis};

/// An enrolment to record: who, with which token, and the certificate already
/// signed for the key the host made.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub token_id: String,
    /// Hex SHA-256 of the token's secret.
    pub secret_hash: String,
    pub host_id: HostId,
    pub facts: HostFactsRecord,
    pub certificate: CertificateRecord,
    /// Hex SHA-256 of the certified public key.
    pub public_key: String,
    pub now: UnixMillis,
}

/// Why an enrolment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolmentRefusal {
    Token(TokenRefusal),
    /// The host id is taken, and this is not a retry of its own enrolment.
    HostExists,
}

impl Store {
    /// Records `enrolment` or says why not. Running on the store thread, the
    /// check and the write cannot interleave with another enrolment: two
    /// racing for the last use of a token, or for one host id, cannot both win.
    pub fn enrol(&self, enrolment: &Enrolment) -> Result<Result<(), EnrolmentRefusal>, StoreError> {
        let checked = self.check_token(&enrolment.token_id, &enrolment.secret_hash, enrolment.now)?;
        // Only a used-up token may still serve, for a retry (below).
        if let Err(refusal) = checked {
            if refusal != TokenRefusal::UsedUp {
                return Ok(Err(EnrolmentRefusal::Token(refusal)));
            }
        }
        if let Some(host) = self.host(&enrolment.host_id)? {
            // A retry of an enrolment whose answer was lost: the same token
            // (its use already spent) and the same key, before the host ever
            // connected. Anything else is a takeover.
            let retry = host.enrollment.as_ref().is_some_and(|previous| {
                previous.token_id == enrolment.token_id
                    && previous.public_key == enrolment.public_key
                    && host.agent_version.is_empty()
            });
            if !retry {
                return Ok(Err(EnrolmentRefusal::HostExists));
            }
            self.record_certificate(&enrolment.certificate)?;
            return Ok(Ok(()));
        }
        let token = match checked {
            Ok(token) => token,
            Err(refusal) => return Ok(Err(EnrolmentRefusal::Token(refusal))),
        };
        self.commit_enrolment(
            token,
            &enrolment.host_id,
            &enrolment.facts,
            &enrolment.certificate,
            &enrolment.public_key,
            enrolment.now,
        )?;
        Ok(Ok(()))
    }
}

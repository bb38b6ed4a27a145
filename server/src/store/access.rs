//! Join tokens, enrolment's commit, certificates and their revocation.

use ccfleet_proto::HostId;
use sled::transaction::{ConflictableTransactionError, Transactional};

use super::keys::*;
use super::{decode, encode, storage_error, Store, StoreError};
use crate::model::*;

impl Store {
    pub fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(token.id.as_bytes(), encode(token)?)?;
        Ok(())
    }

    /// Every join token, sorted by id.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.tokens.iter().map(|entry| decode(TOKENS, &entry?.1)).collect()
    }

    /// Marks a token revoked; false if there is no such token.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let Some(bytes) = self.tokens.get(id.as_bytes())? else {
            return Ok(false);
        };
        let mut token: TokenRecord = decode(TOKENS, &bytes)?;
        token.revoked = true;
        self.put_token(&token)?;
        Ok(true)
    }

    /// Checks a token without consuming it.
    pub fn check_token(
        &self,
        id: &str,
        secret_hash: &str,
        now: UnixMillis,
    ) -> Result<Result<TokenRecord, TokenRefusal>, StoreError> {
        let Some(bytes) = self.tokens.get(id.as_bytes())? else {
            return Ok(Err(TokenRefusal::Invalid));
        };
        let token: TokenRecord = decode(TOKENS, &bytes)?;
        // Both are hex SHA-256 digests of equal length; compare in constant time.
        let matches = token.secret_hash.len() == secret_hash.len()
            && token
                .secret_hash
                .bytes()
                .zip(secret_hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        Ok(if !matches {
            Err(TokenRefusal::Invalid)
        } else if token.revoked {
            Err(TokenRefusal::Revoked)
        } else if now >= token.expires_at {
            Err(TokenRefusal::Expired)
        } else if token.uses_left == 0 {
            Err(TokenRefusal::UsedUp)
        } else {
            Ok(token)
        })
    }

    /// Records an enrolment: spends one use of `token`, creates the host with
    /// the token's labels and records its certificate, in one transaction.
    /// The caller has checked the token and that the host does not exist, on
    /// the store thread, immediately before.
    pub fn commit_enrolment(
        &self,
        mut token: TokenRecord,
        host_id: &HostId,
        facts: &HostFactsRecord,
        certificate: &CertificateRecord,
        public_key: &str,
        now: UnixMillis,
    ) -> Result<HostRecord, StoreError> {
        token.uses_left -= 1;
        let host = HostRecord {
            facts: facts.clone(),
            labels: token.labels.clone(),
            certificate_not_after: Some(certificate.not_after),
            enrollment: Some(EnrollmentRecord {
                token_id: token.id.clone(),
                public_key: public_key.to_owned(),
            }),
            ..HostRecord::new(host_id.clone(), now)
        };
        let (token_value, host_value, certificate_value) = (encode(&token)?, encode(&host)?, encode(certificate)?);
        (&self.tokens, &self.hosts, &self.certificates)
            .transaction(|(tokens, hosts, certificates)| {
                tokens.insert(token.id.as_bytes(), token_value.clone())?;
                hosts.insert(host_id.as_str(), host_value.clone())?;
                certificates.insert(certificate.serial.as_bytes(), certificate_value.clone())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(storage_error)?;
        self.index.put_host(&host);
        Ok(host)
    }

    /// Records a certificate signed outside enrolment (renewal, admins), and
    /// for a host, its new expiry.
    pub fn record_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError> {
        self.certificates
            .insert(certificate.serial.as_bytes(), encode(certificate)?)?;
        if certificate.kind == CertificateKind::Host {
            if let Ok(host_id) = certificate.identity.parse::<HostId>() {
                if let Some(mut host) = self.host(&host_id)? {
                    host.certificate_not_after = Some(certificate.not_after);
                    self.put_host(&host)?;
                }
            }
        }
        Ok(())
    }

    /// Records a new admin certificate unless the same name already holds a
    /// valid (unrevoked, unexpired) one, whose serial is then returned:
    /// nobody may take over another admin's name, and a name is issued again
    /// only after `admin revoke`. Check and write happen in one store job.
    pub fn record_admin_certificate(
        &self,
        certificate: &CertificateRecord,
        now: UnixMillis,
    ) -> Result<Result<(), String>, StoreError> {
        let holder = self.certificates()?.into_iter().find(|existing| {
            existing.kind == CertificateKind::Admin
                && existing.identity == certificate.identity
                && existing.revoked_at.is_none()
                && existing.not_after > now
        });
        if let Some(holder) = holder {
            return Ok(Err(holder.serial));
        }
        self.record_certificate(certificate)?;
        Ok(Ok(()))
    }

    pub fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        self.certificates
            .get(serial.as_bytes())?
            .map(|bytes| decode(CERTIFICATES, &bytes))
            .transpose()
    }

    pub fn certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        self.certificates
            .iter()
            .map(|entry| decode(CERTIFICATES, &entry?.1))
            .collect()
    }

    /// Revokes every certificate of `kind` issued to `identity` and returns
    /// the serials revoked now.
    pub fn revoke_certificates_of(
        &self,
        kind: CertificateKind,
        identity: &str,
        now: UnixMillis,
    ) -> Result<Vec<String>, StoreError> {
        let mut revoked = Vec::new();
        for mut certificate in self.certificates()? {
            if certificate.kind == kind && certificate.identity == identity && certificate.revoked_at.is_none() {
                certificate.revoked_at = Some(now);
                self.certificates
                    .insert(certificate.serial.as_bytes(), encode(&certificate)?)?;
                revoked.push(certificate.serial);
            }
        }
        Ok(revoked)
    }

    /// Serials of every revoked certificate that has not expired yet.
    pub fn revoked_serials(&self, now: UnixMillis) -> Result<Vec<String>, StoreError> {
        Ok(self
            .certificates()?
            .into_iter()
            .filter(|certificate| certificate.revoked_at.is_some() && certificate.not_after > now)
            .map(|certificate| certificate.serial)
            .collect())
    }
}

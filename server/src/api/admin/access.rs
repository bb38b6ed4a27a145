//! The access side of the Admin service: join tokens and admin credentials.

use std::time::Duration;

use ccfleet_proto::pb;
use ccfleet_proto::tls::{secret_hash, JoinToken};
use tonic::{Request, Response, Status};

use crate::api::audit::{audited, Entry};
use crate::api::enrollment::millis;
use crate::api::{convert, internal};
use crate::auth::ca::CertificateAuthority;
use crate::auth::{self, Identity, Revocations};
use crate::model::{now_millis, CertificateKind, CertificateRecord, TokenRecord};
use crate::store::StoreHandle;

/// What the access methods use of the service.
pub struct AccessAdmin<'a> {
    pub store: &'a StoreHandle,
    pub authority: &'a CertificateAuthority,
    pub revocations: &'a Revocations,
    pub admin_certificate_lifetime: Duration,
}

/// Longest join-token lifetime accepted: a token is a bearer secret, so it
/// should be short-lived; a month covers staged hardware roll-outs.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(31 * 24 * 3600);
const MAX_TOKEN_USES: u32 = 10_000;

fn token_info(token: &TokenRecord) -> pb::JoinTokenInfo {
    pb::JoinTokenInfo {
        id: token.id.clone(),
        created_at: Some(convert::timestamp(token.created_at)),
        expires_at: Some(convert::timestamp(token.expires_at)),
        uses_left: token.uses_left,
        revoked: token.revoked,
        labels: token.labels.clone().into_iter().collect(),
    }
}

/// Label keys and values given to hosts through tokens: short, printable,
/// no separators that would confuse `k=v` listings.
fn check_label(key: &str, value: &str) -> Result<(), Status> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | '/'));
    let value_ok = value.len() <= 253 && value.chars().all(|c| c.is_ascii_graphic() && c != ',' && c != '=');
    if !key_ok {
        return Err(convert::invalid(
            "labels",
            format!("key {key:?} must be 1 to 63 lowercase letters, digits, '-', '_', '.' or '/'"),
        ));
    }
    if !value_ok {
        return Err(convert::invalid(
            "labels",
            format!("value {value:?} of {key} must be at most 253 printable ASCII characters without ',' or '='"),
        ));
    }
    Ok(())
}

impl AccessAdmin<'_> {
    pub async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let caller = auth::authenticated(&request)?;
        let request = request.into_inner();
        let ttl = Duration::from_secs(request.ttl_seconds);
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(convert::invalid(
                "ttl_seconds",
                format!("must be between 1 second and {} days", MAX_TOKEN_TTL.as_secs() / 86400),
            ));
        }
        if request.uses == 0 || request.uses > MAX_TOKEN_USES {
            return Err(convert::invalid(
                "uses",
                format!("must be between 1 and {MAX_TOKEN_USES}"),
            ));
        }
        if request.labels.len() > 32 {
            return Err(convert::invalid("labels", "at most 32 labels"));
        }
        for (key, value) in &request.labels {
            check_label(key, value)?;
        }
        let token = JoinToken::generate(&self.authority.fingerprint());
        let now = now_millis();
        let record = TokenRecord {
            id: token.id.clone(),
            secret_hash: secret_hash(&token.secret),
            created_at: now,
            expires_at: now + ttl.as_millis() as u64,
            uses_left: request.uses,
            revoked: false,
            labels: request.labels.into_iter().collect(),
        };
        let info = token_info(&record);
        let detail = format!(
            "uses {}, ttl {}s, labels {:?}",
            record.uses_left,
            ttl.as_secs(),
            record.labels
        );
        let entry = Entry::new("token.create", &token.id, detail);
        audited(
            self.store,
            &caller,
            move |store| store.put_token(&record),
            move |_| Some(entry),
        )
        .await?;
        tracing::info!(admin = caller.identity.name(), token = token.id, "join token created");
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: token.to_string(),
            info: Some(info),
        }))
    }

    pub async fn list_join_tokens(
        &self,
        _request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        let tokens = self.store.read(|store| store.tokens()).await.map_err(internal)?;
        Ok(Response::new(pb::ListJoinTokensResponse {
            tokens: tokens.iter().map(token_info).collect(),
        }))
    }

    pub async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        let caller = auth::authenticated(&request)?;
        let id = request.into_inner().id;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(convert::invalid(
                "id",
                format!("{id:?} is not a token id (16 hex digits)"),
            ));
        }
        let revoked = {
            let (id, target) = (id.clone(), id.clone());
            audited(
                self.store,
                &caller,
                move |store| store.revoke_token(&id),
                move |revoked| revoked.then(|| Entry::new("token.revoke", &target, String::new())),
            )
            .await?
        };
        if !revoked {
            return Err(Status::not_found(format!("there is no join token {id}")));
        }
        tracing::info!(admin = caller.identity.name(), token = id, "join token revoked");
        Ok(Response::new(pb::RevokeJoinTokenResponse {}))
    }

    pub async fn issue_admin_credential(
        &self,
        request: Request<pb::IssueAdminCredentialRequest>,
    ) -> Result<Response<pb::IssueAdminCredentialResponse>, Status> {
        let caller = auth::authenticated(&request)?;
        let request = request.into_inner();
        let name = convert::admin_name("name", &request.name)?;
        let issued = self
            .authority
            .sign_client_request(
                &request.csr_pem,
                &Identity::Admin(name.clone()),
                self.admin_certificate_lifetime,
            )
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let certificate = CertificateRecord {
            serial: issued.serial.clone(),
            kind: CertificateKind::Admin,
            identity: name.to_string(),
            issued_at: now_millis(),
            not_after: millis(issued.not_after),
            revoked_at: None,
        };
        let entry = Entry::new("admin.issue", name.as_str(), format!("serial {}", issued.serial));
        let recorded = audited(
            self.store,
            &caller,
            move |store| store.record_admin_certificate(&certificate, now_millis()),
            move |recorded| recorded.is_ok().then_some(entry),
        )
        .await?;
        if let Err(holder) = recorded {
            // The certificate just signed is dropped unseen: it never leaves
            // this function.
            return Err(Status::already_exists(format!(
                "admin {name} already has a valid credential (serial {holder}); \
                 another admin must revoke it first (`ccfleet admin revoke {name}`)"
            )));
        }
        tracing::info!(admin = caller.identity.name(), new_admin = %name, serial = issued.serial, "admin credential issued");
        Ok(Response::new(pb::IssueAdminCredentialResponse {
            certificate_pem: issued.certificate_pem,
            ca_certificate_pem: self.authority.certificate_pem().to_owned(),
            not_after: Some(convert::timestamp(millis(issued.not_after))),
            serial: issued.serial,
        }))
    }

    pub async fn revoke_admin_credential(
        &self,
        request: Request<pb::RevokeAdminCredentialRequest>,
    ) -> Result<Response<pb::RevokeAdminCredentialResponse>, Status> {
        let caller = auth::authenticated(&request)?;
        let name = convert::admin_name("name", &request.into_inner().name)?;
        if caller.identity == Identity::Admin(name.clone()) {
            return Err(Status::failed_precondition(
                "an admin cannot revoke their own credential; ask another admin",
            ));
        }
        let serials = {
            let (name, target) = (name.clone(), name.clone());
            audited(
                self.store,
                &caller,
                move |store| store.revoke_certificates_of(CertificateKind::Admin, name.as_str(), now_millis()),
                move |serials: &Vec<String>| {
                    (!serials.is_empty()).then(|| {
                        Entry::new(
                            "admin.revoke",
                            target.as_str(),
                            format!("revoked {} certificate(s)", serials.len()),
                        )
                    })
                },
            )
            .await?
        };
        if serials.is_empty() {
            return Err(Status::not_found(format!("admin {name} has no valid credential")));
        }
        self.revocations.revoke(serials.iter().cloned());
        tracing::info!(admin = caller.identity.name(), revoked_admin = %name, count = serials.len(), "admin credential revoked");
        Ok(Response::new(pb::RevokeAdminCredentialResponse {
            revoked: serials.len() as u32,
        }))
    }
}

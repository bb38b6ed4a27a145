//! The Admin service: read the fleet's state. Methods of features that have
//! not landed answer UNIMPLEMENTED with the reason.

use std::sync::Arc;

use ccfleet_proto::pb;
use ccfleet_proto::CoopVersion;
use tonic::{Request, Response, Status};

use super::convert;
use super::internal;
use super::paging;
use std::time::Duration;

use super::enrollment::millis;
use crate::auth::ca::CertificateAuthority;
use crate::auth::{self, Identity, Revocations};
use crate::fleet::Fleet;
use crate::store::{
    now_millis, AppRecord, CertificateKind, CertificateRecord, OperationFilter, StoreHandle, TokenRecord,
};
use ccfleet_proto::tls::{secret_hash, JoinToken};
use ccfleet_proto::HostId;

pub struct AdminService {
    pub store: StoreHandle,
    pub fleet: Arc<Fleet>,
    pub authority: Arc<CertificateAuthority>,
    pub revocations: Arc<Revocations>,
    pub admin_certificate_lifetime: Duration,
    pub rollouts: crate::rollout::RolloutEngine,
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

/// Operations listed when the request names no limit, and the most one
/// request may ask for.
const DEFAULT_OPERATION_LIMIT: usize = 100;
const MAX_OPERATION_LIMIT: usize = 10_000;

fn optional_host_id(value: &str) -> Result<Option<HostId>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    convert::host_id("host_id", value).map(Some)
}

/// One app of one host on the wire.
fn host_app(host_id: &HostId, online: bool, app: &AppRecord) -> pb::HostApp {
    pb::HostApp {
        host_id: host_id.to_string(),
        host_status: convert::host_status(online) as i32,
        app: Some(convert::observed_app(app)),
        observed_at: Some(convert::timestamp(app.observed_at)),
    }
}

type Rollout = Result<Response<pb::Rollout>, Status>;

/// Logs (at debug) how long a listing page took inside the handler: index
/// read and conversion, before encoding and transport; wall time, and the
/// CPU time of the thread (the handler does not yield, so this is its own
/// work even on a busy machine). `fleet-bench` reads these lines.
struct ListingTimer {
    wall: std::time::Instant,
    cpu: Option<Duration>,
}

fn thread_cpu_time() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

impl ListingTimer {
    fn start() -> ListingTimer {
        ListingTimer {
            wall: std::time::Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    fn answered(&self, listing: &str, items: usize) {
        let cpu_us = match (self.cpu, thread_cpu_time()) {
            (Some(before), Some(after)) => after.saturating_sub(before).as_micros() as u64,
            _ => 0,
        };
        tracing::debug!(
            listing,
            items,
            elapsed_us = self.wall.elapsed().as_micros() as u64,
            cpu_us,
            "listing page answered"
        );
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let timer = ListingTimer::start();
        let request = request.into_inner();
        let after = paging::host_after(&request.page_token)?;
        let page = self
            .store
            .listings()
            .hosts(after.as_ref(), paging::page_size(request.page_size));
        let online = self.fleet.online_among(page.items.iter().map(|host| &host.host_id));
        let hosts = page
            .items
            .iter()
            .zip(online)
            .map(|(host, online)| convert::host(host, online))
            .collect();
        timer.answered("hosts", page.items.len());
        Ok(Response::new(pb::ListHostsResponse {
            hosts,
            next_page_token: page.next.as_ref().map(paging::host_token).unwrap_or_default(),
        }))
    }

    async fn list_apps(&self, request: Request<pb::ListAppsRequest>) -> Result<Response<pb::ListAppsResponse>, Status> {
        let timer = ListingTimer::start();
        let request = request.into_inner();
        let recipe = if request.recipe.is_empty() {
            None
        } else {
            Some(convert::recipe("recipe", &request.recipe)?)
        };
        let after = paging::app_after(&request.page_token)?;
        let page = self
            .store
            .listings()
            .apps(recipe.as_ref(), after.as_ref(), paging::page_size(request.page_size));
        let online = self
            .fleet
            .online_among(page.items.iter().map(|indexed| &indexed.host_id));
        let apps = page
            .items
            .iter()
            .zip(online)
            .map(|(indexed, online)| host_app(&indexed.host_id, online, &indexed.app))
            .collect();
        timer.answered("apps", page.items.len());
        Ok(Response::new(pb::ListAppsResponse {
            apps,
            next_page_token: page.next.as_ref().map(paging::app_token).unwrap_or_default(),
        }))
    }

    async fn recipe_versions(
        &self,
        request: Request<pb::RecipeVersionsRequest>,
    ) -> Result<Response<pb::RecipeVersionsResponse>, Status> {
        let timer = ListingTimer::start();
        let request = request.into_inner();
        let recipe = convert::recipe("recipe", &request.recipe)?;
        let after = paging::version_after(&request.page_token)?;
        let page = self
            .store
            .listings()
            .versions(&recipe, after.as_ref(), paging::page_size(request.page_size));
        // The index is in version order (newest first, unknown last), so a
        // group is a run of equal versions.
        let mut current: Option<&Option<CoopVersion>> = None;
        let online = self
            .fleet
            .online_among(page.items.iter().map(|indexed| &indexed.host_id));
        let mut versions: Vec<pb::VersionGroup> = Vec::new();
        for (indexed, online) in page.items.iter().zip(online) {
            let version = &indexed.app.observed_version;
            if current != Some(version) {
                versions.push(pb::VersionGroup {
                    version: version.as_ref().map(ToString::to_string).unwrap_or_default(),
                    apps: Vec::new(),
                });
                current = Some(version);
            }
            if let Some(group) = versions.last_mut() {
                group.apps.push(host_app(&indexed.host_id, online, &indexed.app));
            }
        }
        timer.answered("versions", page.items.len());
        Ok(Response::new(pb::RecipeVersionsResponse {
            recipe: recipe.to_string(),
            versions,
            next_page_token: page.next.as_ref().map(paging::version_token).unwrap_or_default(),
        }))
    }

    async fn remove_host(
        &self,
        request: Request<pb::RemoveHostRequest>,
    ) -> Result<Response<pb::RemoveHostResponse>, Status> {
        let caller = auth::authenticated(&request)?;
        let host_id = convert::host_id("host_id", &request.into_inner().host_id)?;
        let removed = {
            let host_id = host_id.clone();
            self.store
                .write(move |store| store.remove_host(&host_id, now_millis()))
                .await
                .map_err(internal)?
        };
        let Some(serials) = removed else {
            return Err(Status::not_found(format!("there is no host {host_id}")));
        };
        // Revoke before closing the stream, so a reconnect is already refused.
        self.revocations.revoke(serials.iter().cloned());
        self.fleet.close(&host_id);
        tracing::info!(admin = caller.identity.name(), host = %host_id, revoked = serials.len(), "host removed");
        super::rollouts::audit(
            &self.store,
            &caller,
            "host.remove",
            host_id.as_str(),
            format!("revoked {} certificate(s)", serials.len()),
        )
        .await;
        Ok(Response::new(pb::RemoveHostResponse {
            revoked_certificates: serials.len() as u32,
        }))
    }

    async fn create_join_token(
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
        self.store
            .write(move |store| store.put_token(&record))
            .await
            .map_err(internal)?;
        tracing::info!(admin = caller.identity.name(), token = token.id, "join token created");
        super::rollouts::audit(&self.store, &caller, "token.create", &token.id, detail).await;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: token.to_string(),
            info: Some(info),
        }))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        let tokens = self.store.read(|store| store.tokens()).await.map_err(internal)?;
        Ok(Response::new(pb::ListJoinTokensResponse {
            tokens: tokens.iter().map(token_info).collect(),
        }))
    }

    async fn revoke_join_token(
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
            let id = id.clone();
            self.store
                .write(move |store| store.revoke_token(&id))
                .await
                .map_err(internal)?
        };
        if !revoked {
            return Err(Status::not_found(format!("there is no join token {id}")));
        }
        tracing::info!(admin = caller.identity.name(), token = id, "join token revoked");
        super::rollouts::audit(&self.store, &caller, "token.revoke", &id, String::new()).await;
        Ok(Response::new(pb::RevokeJoinTokenResponse {}))
    }

    async fn issue_admin_credential(
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
        let recorded = self
            .store
            .write(move |store| store.record_admin_certificate(&certificate, now_millis()))
            .await
            .map_err(internal)?;
        if let Err(holder) = recorded {
            // The certificate just signed is dropped unseen: it never leaves
            // this function.
            return Err(Status::already_exists(format!(
                "admin {name} already has a valid credential (serial {holder}); \
                 another admin must revoke it first (`ccfleet admin revoke {name}`)"
            )));
        }
        tracing::info!(admin = caller.identity.name(), new_admin = %name, serial = issued.serial, "admin credential issued");
        super::rollouts::audit(
            &self.store,
            &caller,
            "admin.issue",
            name.as_str(),
            format!("serial {}", issued.serial),
        )
        .await;
        Ok(Response::new(pb::IssueAdminCredentialResponse {
            certificate_pem: issued.certificate_pem,
            ca_certificate_pem: self.authority.certificate_pem().to_owned(),
            not_after: Some(convert::timestamp(millis(issued.not_after))),
            serial: issued.serial,
        }))
    }

    async fn revoke_admin_credential(
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
            let name = name.clone();
            self.store
                .write(move |store| store.revoke_certificates_of(CertificateKind::Admin, name.as_str(), now_millis()))
                .await
                .map_err(internal)?
        };
        if serials.is_empty() {
            return Err(Status::not_found(format!("admin {name} has no valid credential")));
        }
        self.revocations.revoke(serials.iter().cloned());
        tracing::info!(admin = caller.identity.name(), revoked_admin = %name, count = serials.len(), "admin credential revoked");
        super::rollouts::audit(
            &self.store,
            &caller,
            "admin.revoke",
            name.as_str(),
            format!("revoked {} certificate(s)", serials.len()),
        )
        .await;
        Ok(Response::new(pb::RevokeAdminCredentialResponse {
            revoked: serials.len() as u32,
        }))
    }

    async fn start_rollout(&self, request: Request<pb::StartRolloutRequest>) -> Rollout {
        self.start_rollout_request(request).await
    }

    async fn get_rollout(&self, request: Request<pb::GetRolloutRequest>) -> Rollout {
        self.get_rollout_request(request).await
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        self.list_rollouts_request(request).await
    }

    type WatchRolloutStream = super::rollouts::WatchStream;

    async fn watch_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        self.watch_rollout_request(request).await
    }

    async fn pause_rollout(&self, request: Request<pb::RolloutActionRequest>) -> Rollout {
        self.rollout_action(request, "pause").await
    }

    async fn resume_rollout(&self, request: Request<pb::RolloutActionRequest>) -> Rollout {
        self.rollout_action(request, "resume").await
    }

    async fn promote_rollout(&self, request: Request<pb::RolloutActionRequest>) -> Rollout {
        self.rollout_action(request, "promote").await
    }

    async fn abort_rollout(&self, request: Request<pb::RolloutActionRequest>) -> Rollout {
        self.rollout_action(request, "abort").await
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let host_id = optional_host_id(&request.into_inner().host_id)?;
        let alerts = self
            .store
            .read(move |store| store.alerts(host_id.as_ref()))
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: alerts.iter().map(convert::alert_to_wire).collect(),
        }))
    }

    async fn list_operations(
        &self,
        request: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_OPERATION_LIMIT,
            limit if limit as usize > MAX_OPERATION_LIMIT => {
                return Err(convert::invalid(
                    "limit",
                    format!("must be at most {MAX_OPERATION_LIMIT}"),
                ))
            }
            limit => limit as usize,
        };
        let filter = OperationFilter {
            host_id: optional_host_id(&request.host_id)?,
            domain: if request.domain.is_empty() {
                None
            } else {
                Some(convert::domain("domain", &request.domain)?)
            },
            limit,
        };
        let operations = self
            .store
            .read(move |store| store.operations(&filter))
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: operations.iter().map(convert::operation_to_wire).collect(),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.list_audit_request(request).await
    }
}

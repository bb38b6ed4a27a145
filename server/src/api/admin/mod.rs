//! The Admin service: one `impl Admin` that hands each call to the file of
//! its concern (fleet listings, access, rollouts, reports, the audit log).
//! Each concern sees only the parts of the service it uses.

mod access;
mod fleet;
mod reports;
pub mod rollouts;

use std::sync::Arc;
use std::time::Duration;

use ccfleet_proto::pb;
use tonic::{Request, Response, Status};

use crate::auth::ca::CertificateAuthority;
use crate::auth::Revocations;
use crate::fleet::Fleet;
use crate::store::StoreHandle;

pub struct AdminService {
    pub store: StoreHandle,
    pub fleet: Arc<Fleet>,
    pub authority: Arc<CertificateAuthority>,
    pub revocations: Arc<Revocations>,
    pub admin_certificate_lifetime: Duration,
    pub rollouts: crate::rollout::RolloutEngine,
}

impl AdminService {
    fn fleet(&self) -> fleet::FleetAdmin<'_> {
        fleet::FleetAdmin {
            store: &self.store,
            fleet: &self.fleet,
            revocations: &self.revocations,
        }
    }

    fn access(&self) -> access::AccessAdmin<'_> {
        access::AccessAdmin {
            store: &self.store,
            authority: &self.authority,
            revocations: &self.revocations,
            admin_certificate_lifetime: self.admin_certificate_lifetime,
        }
    }

    fn rollouts(&self) -> rollouts::RolloutsAdmin<'_> {
        rollouts::RolloutsAdmin {
            store: &self.store,
            fleet: &self.fleet,
            rollouts: &self.rollouts,
        }
    }

    fn reports(&self) -> reports::ReportsAdmin<'_> {
        reports::ReportsAdmin { store: &self.store }
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_hosts(&self, request: Request<pb::ListHostsRequest>) -> Answer<pb::ListHostsResponse> {
        self.fleet().list_hosts(request).await
    }

    async fn list_apps(&self, request: Request<pb::ListAppsRequest>) -> Answer<pb::ListAppsResponse> {
        self.fleet().list_apps(request).await
    }

    async fn recipe_versions(&self, request: Request<pb::RecipeVersionsRequest>) -> Answer<pb::RecipeVersionsResponse> {
        self.fleet().recipe_versions(request).await
    }

    async fn remove_host(&self, request: Request<pb::RemoveHostRequest>) -> Answer<pb::RemoveHostResponse> {
        self.fleet().remove_host(request).await
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Answer<pb::CreateJoinTokenResponse> {
        self.access().create_join_token(request).await
    }

    async fn list_join_tokens(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> Answer<pb::ListJoinTokensResponse> {
        self.access().list_join_tokens(request).await
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Answer<pb::RevokeJoinTokenResponse> {
        self.access().revoke_join_token(request).await
    }

    async fn issue_admin_credential(
        &self,
        request: Request<pb::IssueAdminCredentialRequest>,
    ) -> Answer<pb::IssueAdminCredentialResponse> {
        self.access().issue_admin_credential(request).await
    }

    async fn revoke_admin_credential(
        &self,
        request: Request<pb::RevokeAdminCredentialRequest>,
    ) -> Answer<pb::RevokeAdminCredentialResponse> {
        self.access().revoke_admin_credential(request).await
    }

    async fn start_rollout(&self, request: Request<pb::StartRolloutRequest>) -> Answer<pb::Rollout> {
        self.rollouts().start_rollout_request(request).await
    }

    async fn get_rollout(&self, request: Request<pb::GetRolloutRequest>) -> Answer<pb::Rollout> {
        self.rollouts().get_rollout_request(request).await
    }

    async fn list_rollouts(&self, request: Request<pb::ListRolloutsRequest>) -> Answer<pb::ListRolloutsResponse> {
        self.rollouts().list_rollouts_request(request).await
    }

    type WatchRolloutStream = rollouts::WatchStream;

    async fn watch_rollout(&self, request: Request<pb::GetRolloutRequest>) -> Answer<Self::WatchRolloutStream> {
        self.rollouts().watch_rollout_request(request).await
    }

    type WatchRolloutChangesStream = rollouts::WatchChangesStream;

    async fn watch_rollout_changes(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Answer<Self::WatchRolloutChangesStream> {
        self.rollouts().watch_rollout_changes_request(request).await
    }

    async fn pause_rollout(&self, request: Request<pb::RolloutActionRequest>) -> Answer<pb::Rollout> {
        self.rollouts().rollout_action(request, "pause").await
    }

    async fn resume_rollout(&self, request: Request<pb::RolloutActionRequest>) -> Answer<pb::Rollout> {
        self.rollouts().rollout_action(request, "resume").await
    }

    async fn promote_rollout(&self, request: Request<pb::RolloutActionRequest>) -> Answer<pb::Rollout> {
        self.rollouts().rollout_action(request, "promote").await
    }

    async fn abort_rollout(&self, request: Request<pb::RolloutActionRequest>) -> Answer<pb::Rollout> {
        self.rollouts().rollout_action(request, "abort").await
    }

    async fn list_alerts(&self, request: Request<pb::ListAlertsRequest>) -> Answer<pb::ListAlertsResponse> {
        self.reports().list_alerts(request).await
    }

    async fn acknowledge_alert(&self, request: Request<pb::AcknowledgeAlertRequest>) -> Answer<pb::Alert> {
        self.reports().acknowledge_alert(request).await
    }

    async fn list_operations(&self, request: Request<pb::ListOperationsRequest>) -> Answer<pb::ListOperationsResponse> {
        self.reports().list_operations(request).await
    }

    async fn list_audit(&self, request: Request<pb::ListAuditRequest>) -> Answer<pb::ListAuditResponse> {
        super::audit::list_audit(&self.store, request).await
    }
}

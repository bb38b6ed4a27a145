//! The Admin service: read the fleet's state. Methods of features that have
//! not landed answer UNIMPLEMENTED with the reason.

use std::sync::Arc;

use ccfleet_proto::pb;
use ccfleet_proto::CoopVersion;
use tonic::{Request, Response, Status};

use super::convert;
use super::internal;
use crate::fleet::Fleet;
use crate::store::{AppRecord, StoreHandle};
use ccfleet_proto::HostId;

pub struct AdminService {
    pub store: StoreHandle,
    pub fleet: Arc<Fleet>,
}

fn not_yet(feature: &str) -> Status {
    Status::unimplemented(format!("{feature} is not available in this server version"))
}

impl AdminService {
    fn host_app(&self, host_id: &HostId, app: &AppRecord) -> pb::HostApp {
        pb::HostApp {
            host_id: host_id.to_string(),
            host_status: convert::host_status(self.fleet.is_online(host_id)) as i32,
            app: Some(convert::observed_app(app)),
            observed_at: Some(convert::timestamp(app.observed_at)),
        }
    }
}

type Rollout = Result<Response<pb::Rollout>, Status>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_hosts(
        &self,
        _request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let hosts = self.store.read(|store| store.hosts()).await.map_err(internal)?;
        let hosts = hosts
            .iter()
            .map(|host| convert::host(host, self.fleet.is_online(&host.host_id)))
            .collect();
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn list_apps(&self, request: Request<pb::ListAppsRequest>) -> Result<Response<pb::ListAppsResponse>, Status> {
        let request = request.into_inner();
        let recipe = if request.recipe.is_empty() {
            None
        } else {
            Some(convert::recipe("recipe", &request.recipe)?)
        };
        let apps = self
            .store
            .read(move |store| store.apps(recipe.as_ref()))
            .await
            .map_err(internal)?;
        let apps = apps.iter().map(|(host_id, app)| self.host_app(host_id, app)).collect();
        Ok(Response::new(pb::ListAppsResponse { apps }))
    }

    async fn recipe_versions(
        &self,
        request: Request<pb::RecipeVersionsRequest>,
    ) -> Result<Response<pb::RecipeVersionsResponse>, Status> {
        let recipe = convert::recipe("recipe", &request.into_inner().recipe)?;
        let apps = {
            let recipe = recipe.clone();
            self.store
                .read(move |store| store.apps(Some(&recipe)))
                .await
                .map_err(internal)?
        };
        // Newest version first; apps with no known version last.
        let mut groups: std::collections::BTreeMap<std::cmp::Reverse<Option<CoopVersion>>, Vec<pb::HostApp>> =
            std::collections::BTreeMap::new();
        for (host_id, app) in &apps {
            groups
                .entry(std::cmp::Reverse(app.observed_version.clone()))
                .or_default()
                .push(self.host_app(host_id, app));
        }
        let versions = groups
            .into_iter()
            .map(|(std::cmp::Reverse(version), apps)| pb::VersionGroup {
                version: version.map(|version| version.to_string()).unwrap_or_default(),
                apps,
            })
            .collect();
        Ok(Response::new(pb::RecipeVersionsResponse {
            recipe: recipe.to_string(),
            versions,
        }))
    }

    async fn remove_host(
        &self,
        _request: Request<pb::RemoveHostRequest>,
    ) -> Result<Response<pb::RemoveHostResponse>, Status> {
        Err(not_yet("host removal"))
    }

    async fn create_join_token(
        &self,
        _request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        Err(not_yet("join tokens"))
    }

    async fn list_join_tokens(
        &self,
        _request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        Err(not_yet("join tokens"))
    }

    async fn revoke_join_token(
        &self,
        _request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        Err(not_yet("join tokens"))
    }

    async fn start_rollout(&self, _request: Request<pb::StartRolloutRequest>) -> Rollout {
        Err(not_yet("rollouts"))
    }

    async fn get_rollout(&self, _request: Request<pb::GetRolloutRequest>) -> Rollout {
        Err(not_yet("rollouts"))
    }

    async fn list_rollouts(
        &self,
        _request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        Err(not_yet("rollouts"))
    }

    type WatchRolloutStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Rollout, Status>> + Send>>;

    async fn watch_rollout(
        &self,
        _request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        Err(not_yet("rollouts"))
    }

    async fn pause_rollout(&self, _request: Request<pb::RolloutActionRequest>) -> Rollout {
        Err(not_yet("rollouts"))
    }

    async fn resume_rollout(&self, _request: Request<pb::RolloutActionRequest>) -> Rollout {
        Err(not_yet("rollouts"))
    }

    async fn promote_rollout(&self, _request: Request<pb::RolloutActionRequest>) -> Rollout {
        Err(not_yet("rollouts"))
    }

    async fn abort_rollout(&self, _request: Request<pb::RolloutActionRequest>) -> Rollout {
        Err(not_yet("rollouts"))
    }

    async fn list_alerts(
        &self,
        _request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        Err(not_yet("alerts"))
    }
}

//! The fleet side of the Admin service: listing hosts, apps and versions
//! (from the store's in-memory indexes) and removing a host.

use std::time::Duration;

use ccfleet_proto::pb;
use ccfleet_proto::{CoopVersion, HostId};
use tonic::{Request, Response, Status};

use crate::api::audit::{audited, Entry};
use crate::api::{convert, paging};
use crate::auth::{self, Revocations};
use crate::fleet::Fleet;
use crate::model::{now_millis, AppRecord};
use crate::store::StoreHandle;

/// What the fleet methods use of the service.
pub struct FleetAdmin<'a> {
    pub store: &'a StoreHandle,
    pub fleet: &'a Fleet,
    pub revocations: &'a Revocations,
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

impl FleetAdmin<'_> {
    pub async fn list_hosts(
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

    pub async fn list_apps(
        &self,
        request: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsResponse>, Status> {
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

    pub async fn recipe_versions(
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

    pub async fn remove_host(
        &self,
        request: Request<pb::RemoveHostRequest>,
    ) -> Result<Response<pb::RemoveHostResponse>, Status> {
        let caller = auth::authenticated(&request)?;
        let host_id = convert::host_id("host_id", &request.into_inner().host_id)?;
        let removed = {
            let (host_id, target) = (host_id.clone(), host_id.clone());
            audited(
                self.store,
                &caller,
                move |store| store.remove_host(&host_id, now_millis()),
                move |removed: &Option<Vec<String>>| {
                    removed.as_ref().map(|serials| {
                        Entry::new(
                            "host.remove",
                            target.as_str(),
                            format!("revoked {} certificate(s)", serials.len()),
                        )
                    })
                },
            )
            .await?
        };
        let Some(serials) = removed else {
            return Err(Status::not_found(format!("there is no host {host_id}")));
        };
        // Revoke before closing the stream, so a reconnect is already refused.
        self.revocations.revoke(serials.iter().cloned());
        self.fleet.close(&host_id);
        tracing::info!(admin = caller.identity.name(), host = %host_id, revoked = serials.len(), "host removed");
        Ok(Response::new(pb::RemoveHostResponse {
            revoked_certificates: serials.len() as u32,
        }))
    }
}

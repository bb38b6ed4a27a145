//! The inventory the agent reports: Docker's observation of each declared app
//! projected onto the wire, with facts beyond Docker's (available versions
//! from a cache of abra's answers, the fleet target, host pins, whether a
//! stateful app's stack has volumes to snapshot, asked once per running version).

use std::time::{Duration, Instant};

use ccfleet_proto::pb::{self, agent_message::Body};
use ccfleet_proto::{CoopVersion, RecipeName};

use super::Agent;
use crate::reconcile::{AppState, ObservedApp, Reconciler};

/// How long known available versions of a recipe are used before abra is
/// asked again (observations never run abra themselves).
const VERSIONS_REFRESH: Duration = Duration::from_secs(5 * 60);

/// Facts about an app beyond Docker's, for the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppExtras {
    /// Newest available version within the running (else declared) major.
    pub available_version: Option<CoopVersion>,
    /// Newest available version, any major.
    pub available_newest: Option<CoopVersion>,
    pub pinned_by_host: bool,
    pub fleet_target: Option<CoopVersion>,
    /// Stateful, and its stack has no volumes: an upgrade would be refused.
    pub unsnapshottable: bool,
}

/// Newest of `versions` within `base`'s major, and newest overall.
pub fn newest_available(versions: &[CoopVersion], base: &CoopVersion) -> (Option<CoopVersion>, Option<CoopVersion>) {
    let same_major = versions
        .iter()
        .filter(|version| version.same_major(base))
        .max()
        .cloned();
    (same_major, versions.iter().max().cloned())
}

/// Converts the agent's observation to the wire type, at the link's edge.
pub fn to_wire(app: &ObservedApp, extras: &AppExtras) -> pb::ObservedApp {
    let state = match app.state {
        AppState::Converged => pb::AppState::Converged,
        AppState::Converging => pb::AppState::Converging,
        AppState::Degraded => pb::AppState::Degraded,
        AppState::NotDeployed => pb::AppState::NotDeployed,
        AppState::Unknown => pb::AppState::Unspecified,
    };
    pb::ObservedApp {
        domain: app.domain.to_string(),
        recipe: app.recipe.to_string(),
        observed_version: app
            .observed_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        declared_version: app
            .declared_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        state: state as i32,
        desired_replicas: app.desired_replicas,
        running_replicas: app.running_replicas,
        drift: app.drift.clone(),
        chaos: app.chaos,
        available_version: extras
            .available_version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        available_newest: extras
            .available_newest
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        pinned_by_host: extras.pinned_by_host,
        fleet_target: extras
            .fleet_target
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        unsnapshottable: extras.unsnapshottable,
    }
}

impl Agent {
    /// Inventory facts beyond Docker's for `app`.
    pub(super) fn extras(&self, reconciler: &Reconciler, app: &ObservedApp) -> AppExtras {
        let Some(config) = reconciler.apps().iter().find(|config| config.domain == app.domain) else {
            return AppExtras::default();
        };
        let record = reconciler.journal().app(&app.domain).unwrap_or_default();
        let base = app.observed_version.as_ref().unwrap_or(&config.version);
        let (available_version, available_newest) = self
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&config.recipe)
            .map(|(_, versions)| newest_available(versions, base))
            .unwrap_or_default();
        let unsnapshottable = config.stateful
            && app.observed_version.as_ref().is_some_and(|running| {
                self.volumes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&app.domain)
                    .is_some_and(|(asked_at, has_volumes)| asked_at == running && !has_volumes)
            });
        AppExtras {
            available_version,
            available_newest,
            pinned_by_host: !config.fleet_managed,
            fleet_target: record.fleet_target,
            unsnapshottable,
        }
    }

    /// Asks Docker whether the stack of each deployed stateful app has
    /// volumes, once per running version and only once the app has
    /// converged: Swarm creates a stack's volumes with its containers, so a
    /// stack still starting has none yet.
    async fn refresh_volumes(&self, reconciler: &Reconciler, observed: &[ObservedApp]) {
        for app in observed {
            let Some(running) = &app.observed_version else {
                continue;
            };
            if app.state != AppState::Converged {
                continue;
            }
            let Some(config) = reconciler
                .apps()
                .iter()
                .find(|config| config.domain == app.domain && config.stateful)
            else {
                continue;
            };
            let known = self
                .volumes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&app.domain)
                .is_some_and(|(asked_at, _)| asked_at == running);
            if known {
                continue;
            }
            match reconciler.docker().stack_volumes(&config.stack_name()).await {
                Ok(volumes) => {
                    self.volumes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(app.domain.clone(), (running.clone(), !volumes.is_empty()));
                }
                Err(error) => {
                    tracing::warn!(app = %app.domain, error = %ccfleet_proto::error_chain(&error), "cannot list the stack's volumes")
                }
            }
        }
    }

    /// Asks abra for the recipe's available versions and caches them.
    pub(super) async fn refresh_versions(
        &self,
        reconciler: &Reconciler,
        recipe: &RecipeName,
    ) -> Option<Vec<CoopVersion>> {
        match reconciler.abra().available_versions(recipe).await {
            Ok(versions) => {
                self.versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(recipe.clone(), (Instant::now(), versions.clone()));
                Some(versions)
            }
            Err(error) => {
                tracing::warn!(%recipe, error = %ccfleet_proto::error_chain(&error), "cannot read the recipe's available versions");
                // Not asked again before the refresh interval either.
                self.versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(recipe.clone())
                    .or_insert_with(|| (Instant::now(), Vec::new()))
                    .0 = Instant::now();
                None
            }
        }
    }

    /// Refreshes the versions of recipes not asked about for a while.
    pub(super) async fn refresh_stale_versions(&self, reconciler: &Reconciler) {
        let mut recipes: Vec<RecipeName> = reconciler.apps().iter().map(|app| app.recipe.clone()).collect();
        recipes.sort();
        recipes.dedup();
        for recipe in recipes {
            let stale = self
                .versions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&recipe)
                .is_none_or(|(asked, _)| asked.elapsed() >= VERSIONS_REFRESH);
            if stale {
                self.refresh_versions(reconciler, &recipe).await;
            }
        }
    }

    /// Reads Docker; pushes an inventory event when the picture changed.
    pub(super) async fn observe(&self) {
        let reconciler = self.reconciler.borrow().clone();
        let observed = reconciler.observe_all().await;
        self.refresh_volumes(&reconciler, &observed).await;
        let inventory = pb::Inventory {
            apps: observed
                .iter()
                .map(|app| to_wire(app, &self.extras(&reconciler, app)))
                .collect(),
        };
        *self.observations.lock().unwrap_or_else(|p| p.into_inner()) = observed;
        if *self.pushed_inventory.lock().unwrap_or_else(|p| p.into_inner()) == inventory {
            return;
        }
        self.inventory.send_replace(inventory.clone());
        // Remembered only once stored, so a failed write is retried at the
        // next observation instead of being forgotten.
        if self.push(Body::Inventory(pb::InventoryUpdate {
            inventory: Some(inventory.clone()),
        })) {
            *self.pushed_inventory.lock().unwrap_or_else(|p| p.into_inner()) = inventory;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_available_within_the_base_major_and_overall() {
        let versions =
            |texts: &[&str]| -> Vec<CoopVersion> { texts.iter().map(|text| text.parse().unwrap()).collect() };
        let all = versions(&[
            "1.0.0+5.0",
            "1.2.0+5.2",
            "1.10.0-rc1+5.9",
            "2.0.0+6.0",
            "2.1.0+6.1",
            "0.9.0+4.0",
        ]);
        let rows = [
            ("1.0.0+5.0", &all[..], "1.10.0-rc1+5.9", "2.1.0+6.1"),
            ("2.0.0+6.0", &all[..], "2.1.0+6.1", "2.1.0+6.1"),
            ("0.1.0", &all[..], "0.9.0+4.0", "2.1.0+6.1"),
            ("3.0.0+7.0", &all[..], "-", "2.1.0+6.1"),
            ("1.0.0+5.0", &[][..], "-", "-"),
        ];
        for (base, available, same_major, newest) in rows {
            let base: CoopVersion = base.parse().unwrap();
            let (found_same, found_newest) = newest_available(available, &base);
            let show = |version: Option<CoopVersion>| version.map_or("-".to_owned(), |version| version.to_string());
            assert_eq!(
                (show(found_same), show(found_newest)),
                (same_major.to_owned(), newest.to_owned()),
                "{base}"
            );
        }
    }
}

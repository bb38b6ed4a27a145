//! In-memory listing indexes (hosts, apps, apps per recipe by version), kept
//! in step with the store's writes, so that admin listings page through
//! memory instead of scanning sled, and never wait behind the store thread.
//!
//! Only the store writes them, right after the sled transaction that made the
//! same change succeeded; they are rebuilt from sled when the store opens. A
//! listing may therefore show a write a moment before its flush returns, as a
//! read through the store thread always could.
//!
//! Pages are positioned by the key of the last item returned (the page token),
//! not by an offset: an item present during the whole walk is listed exactly
//! once, however the fleet changes between pages.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};

use super::{AppRecord, HostRecord};

/// An app's place in the host-ordered listings: host id, then domain.
pub type AppKey = (HostId, Domain);

/// An app's place in a recipe's version listing: newest version first, the
/// unknown version last, then host id and domain.
pub type VersionKey = (Reverse<Option<CoopVersion>>, HostId, Domain);

/// One app and its host, shared by every map that lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedApp {
    pub host_id: HostId,
    pub app: AppRecord,
}

#[derive(Default)]
struct Indexes {
    hosts: BTreeMap<HostId, Arc<HostRecord>>,
    apps: BTreeMap<AppKey, Arc<IndexedApp>>,
    apps_by_recipe: HashMap<RecipeName, BTreeMap<AppKey, Arc<IndexedApp>>>,
    versions_by_recipe: HashMap<RecipeName, BTreeMap<VersionKey, Arc<IndexedApp>>>,
    /// Each host's apps, to find its entries in the maps above.
    apps_of_host: HashMap<HostId, Vec<Arc<IndexedApp>>>,
}

/// One page of a listing (values only: a page of 10,000 does not clone
/// 10,000 keys) and the key to continue after, if more follow.
#[derive(Debug)]
pub struct Page<K, V> {
    pub items: Vec<V>,
    pub next: Option<K>,
}

/// The listing indexes shared by the store (writer) and the admin service
/// (readers).
#[derive(Default)]
pub struct ListingIndex {
    indexes: RwLock<Indexes>,
}

fn version_key(host_id: &HostId, app: &AppRecord) -> VersionKey {
    (
        Reverse(app.observed_version.clone()),
        host_id.clone(),
        app.domain.clone(),
    )
}

/// Up to `size` entries of `map` after `after` (from the start when `None`).
fn page_of<K: Ord + Clone, V: Clone>(map: &BTreeMap<K, V>, after: Option<&K>, size: usize) -> Page<K, V> {
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut entries = map.range((lower, Bound::Unbounded));
    let mut items = Vec::with_capacity(size.min(map.len()));
    let mut last_key = None;
    for (key, value) in entries.by_ref().take(size) {
        items.push(value.clone());
        last_key = Some(key);
    }
    // Another page follows only if an entry remains.
    let next = match entries.next() {
        Some(_) => last_key.cloned(),
        None => None,
    };
    Page { items, next }
}

impl ListingIndex {
    fn read(&self) -> RwLockReadGuard<'_, Indexes> {
        // A panic while holding the lock cannot leave the maps half written
        // (each mutation is a single map operation or a rebuild of one host),
        // so a poisoned lock is still usable.
        self.indexes.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Indexes> {
        self.indexes.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a host as stored (created or changed).
    pub(super) fn put_host(&self, host: &HostRecord) {
        self.write().hosts.insert(host.host_id.clone(), Arc::new(host.clone()));
    }

    /// Replaces every app of a host with `apps`, as stored. Apps equal to
    /// the indexed ones keep their entries; only the others are re-indexed.
    pub(super) fn replace_apps(&self, host_id: &HostId, apps: &[AppRecord]) {
        let mut indexes = self.write();
        let old = indexes.apps_of_host.remove(host_id).unwrap_or_default();
        let unchanged = |indexed: &IndexedApp| apps.contains(&indexed.app);
        for stale in old.iter().filter(|indexed| !unchanged(indexed)) {
            remove_app(&mut indexes, host_id, &stale.app);
        }
        let mut listed = Vec::with_capacity(apps.len());
        for app in apps {
            if let Some(same) = old.iter().find(|indexed| indexed.app == *app) {
                listed.push(same.clone());
                continue;
            }
            let app = Arc::new(IndexedApp {
                host_id: host_id.clone(),
                app: app.clone(),
            });
            let app_key = (host_id.clone(), app.app.domain.clone());
            indexes.apps.insert(app_key.clone(), app.clone());
            indexes
                .apps_by_recipe
                .entry(app.app.recipe.clone())
                .or_default()
                .insert(app_key, app.clone());
            indexes
                .versions_by_recipe
                .entry(app.app.recipe.clone())
                .or_default()
                .insert(version_key(host_id, &app.app), app.clone());
            listed.push(app);
        }
        if !listed.is_empty() {
            indexes.apps_of_host.insert(host_id.clone(), listed);
        }
    }

    /// A host as stored, without reading sled.
    pub(super) fn host(&self, host_id: &HostId) -> Option<Arc<HostRecord>> {
        self.read().hosts.get(host_id).cloned()
    }

    /// A host's apps as stored (in the order they were written).
    pub(super) fn apps_of_host(&self, host_id: &HostId) -> Vec<Arc<IndexedApp>> {
        self.read().apps_of_host.get(host_id).cloned().unwrap_or_default()
    }

    /// Forgets a host and its apps.
    pub(super) fn remove_host(&self, host_id: &HostId) {
        let mut indexes = self.write();
        indexes.hosts.remove(host_id);
        remove_apps(&mut indexes, host_id);
    }

    /// Hosts sorted by id, after `after`.
    pub fn hosts(&self, after: Option<&HostId>, size: usize) -> Page<HostId, Arc<HostRecord>> {
        page_of(&self.read().hosts, after, size)
    }

    /// Apps sorted by host id then domain, after `after`; of one recipe, or all.
    pub fn apps(
        &self,
        recipe: Option<&RecipeName>,
        after: Option<&AppKey>,
        size: usize,
    ) -> Page<AppKey, Arc<IndexedApp>> {
        let indexes = self.read();
        match recipe {
            None => page_of(&indexes.apps, after, size),
            Some(recipe) => match indexes.apps_by_recipe.get(recipe) {
                Some(apps) => page_of(apps, after, size),
                None => Page {
                    items: Vec::new(),
                    next: None,
                },
            },
        }
    }

    /// The apps of one recipe, newest version first (unknown last), then by
    /// host id and domain, after `after`.
    pub fn versions(
        &self,
        recipe: &RecipeName,
        after: Option<&VersionKey>,
        size: usize,
    ) -> Page<VersionKey, Arc<IndexedApp>> {
        match self.read().versions_by_recipe.get(recipe) {
            Some(apps) => page_of(apps, after, size),
            None => Page {
                items: Vec::new(),
                next: None,
            },
        }
    }

    /// Number of hosts and apps indexed (for tests and metrics).
    pub fn counts(&self) -> (usize, usize) {
        let indexes = self.read();
        (indexes.hosts.len(), indexes.apps.len())
    }
}

fn remove_apps(indexes: &mut Indexes, host_id: &HostId) {
    for indexed in indexes.apps_of_host.remove(host_id).unwrap_or_default() {
        remove_app(indexes, host_id, &indexed.app);
    }
}

/// Removes one app's entries from the maps (not from `apps_of_host`).
fn remove_app(indexes: &mut Indexes, host_id: &HostId, app: &AppRecord) {
    let app_key = (host_id.clone(), app.domain.clone());
    indexes.apps.remove(&app_key);
    if let Some(apps) = indexes.apps_by_recipe.get_mut(&app.recipe) {
        apps.remove(&app_key);
        if apps.is_empty() {
            indexes.apps_by_recipe.remove(&app.recipe);
        }
    }
    if let Some(versions) = indexes.versions_by_recipe.get_mut(&app.recipe) {
        versions.remove(&version_key(host_id, app));
        if versions.is_empty() {
            indexes.versions_by_recipe.remove(&app.recipe);
        }
    }
}

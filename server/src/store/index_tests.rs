//! The listing index against sled: after any sequence of hellos, inventory
//! events, host removals and reopenings, every listing walked page by page
//! (at any page size) equals what a scan of the store's trees says.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use ccfleet_proto::RecipeName;

const HOSTS_IN_PLAY: [&str; 4] = ["web-1", "web-2", "db-1", "edge-9"];
const RECIPES: [&str; 3] = ["ghost", "hedgedoc", "matrix-synapse"];
const VERSIONS: [Option<&str>; 4] = [
    None,
    Some("1.3.0+6.42.0-alpine"),
    Some("1.4.0+6.43.0-alpine"),
    Some("2.0.0"),
];

#[derive(Debug, Clone)]
enum Step {
    /// Enrol (if needed) and say hello with an inventory.
    Hello {
        host: usize,
        apps: Vec<(usize, usize, usize)>,
    },
    /// A durable inventory event from a host that exists.
    Inventory {
        host: usize,
        apps: Vec<(usize, usize, usize)>,
    },
    Remove {
        host: usize,
    },
    Reopen,
}

fn apps_strategy() -> impl Strategy<Value = Vec<(usize, usize, usize)>> {
    // (domain number, recipe, version); domains repeat across hosts on purpose.
    prop::collection::vec((0..5usize, 0..RECIPES.len(), 0..VERSIONS.len()), 0..5)
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..HOSTS_IN_PLAY.len(), apps_strategy()).prop_map(|(host, apps)| Step::Hello { host, apps }),
        4 => (0..HOSTS_IN_PLAY.len(), apps_strategy()).prop_map(|(host, apps)| Step::Inventory { host, apps }),
        1 => (0..HOSTS_IN_PLAY.len()).prop_map(|host| Step::Remove { host }),
        1 => Just(Step::Reopen),
    ]
}

fn host_id(index: usize) -> HostId {
    HOSTS_IN_PLAY[index].parse().unwrap()
}

/// An inventory with one app per domain (the last mention wins), as agents send.
fn inventory(apps: &[(usize, usize, usize)], observed_at: UnixMillis) -> Vec<AppRecord> {
    let mut by_domain: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (domain, recipe, version) in apps {
        by_domain.insert(*domain, (*recipe, *version));
    }
    by_domain
        .into_iter()
        .map(|(domain, (recipe, version))| AppRecord {
            observed_at,
            ..AppRecord::converged(
                format!("app-{domain}.coop.example").parse().unwrap(),
                RECIPES[recipe].parse().unwrap(),
                VERSIONS[version].map(|text| text.parse().unwrap()),
            )
        })
        .collect()
}

fn enrolled(host_id: &HostId) -> HostRecord {
    HostRecord::new(host_id.clone(), 1)
}

/// Every page of a listing, concatenated; checks that each token is the
/// key of the last item returned (`key_of`) and that tokens move forward.
fn walk<K: Ord + Clone + std::fmt::Debug, V>(
    mut page: impl FnMut(Option<&K>) -> Page<K, V>,
    key_of: impl Fn(&V) -> K,
) -> Vec<V> {
    let mut all: Vec<V> = Vec::new();
    let mut after: Option<K> = None;
    loop {
        let Page { items, next } = page(after.as_ref());
        all.extend(items);
        match next {
            Some(next) => {
                assert!(
                    after.as_ref().is_none_or(|after| *after < next),
                    "page tokens move forward"
                );
                assert_eq!(
                    Some(next.clone()),
                    all.last().map(&key_of),
                    "the token is the last key returned"
                );
                after = Some(next);
            }
            None => return all,
        }
    }
}

fn app_key(indexed: &Arc<IndexedApp>) -> AppKey {
    (indexed.host_id.clone(), indexed.app.domain.clone())
}

fn check_index_matches_store(store: &Store, page_size: usize) {
    let index = store.listing_index();
    let hosts: Vec<HostRecord> = walk(|after| index.hosts(after, page_size), |host| host.host_id.clone())
        .into_iter()
        .map(|host| (*host).clone())
        .collect();
    assert_eq!(hosts, store.hosts().unwrap(), "hosts");
    let apps: Vec<(HostId, AppRecord)> = walk(|after| index.apps(None, after, page_size), app_key)
        .into_iter()
        .map(|indexed| (indexed.host_id.clone(), indexed.app.clone()))
        .collect();
    assert_eq!(apps, store.apps(None).unwrap(), "all apps");
    for recipe in RECIPES {
        let recipe: RecipeName = recipe.parse().unwrap();
        let of_recipe: Vec<(HostId, AppRecord)> = walk(|after| index.apps(Some(&recipe), after, page_size), app_key)
            .into_iter()
            .map(|indexed| (indexed.host_id.clone(), indexed.app.clone()))
            .collect();
        let stored = store.apps(Some(&recipe)).unwrap();
        assert_eq!(of_recipe, stored, "apps of {recipe}");
        let version_key = |indexed: &Arc<IndexedApp>| -> VersionKey {
            (
                Reverse(indexed.app.observed_version.clone()),
                indexed.host_id.clone(),
                indexed.app.domain.clone(),
            )
        };
        let versions: Vec<(VersionKey, AppRecord)> =
            walk(|after| index.versions(&recipe, after, page_size), version_key)
                .into_iter()
                .map(|indexed| (version_key(&indexed), indexed.app.clone()))
                .collect();
        let mut expected: Vec<(VersionKey, AppRecord)> = stored
            .into_iter()
            .map(|(host_id, app)| {
                (
                    (Reverse(app.observed_version.clone()), host_id, app.domain.clone()),
                    app,
                )
            })
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(versions, expected, "versions of {recipe}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_listing_index_stays_equal_to_the_stored_trees(
        steps in prop::collection::vec(step_strategy(), 1..24),
        page_size in 1..6usize,
    ) {
        let directory = tempfile::tempdir().unwrap();
        let mut store = Store::open(directory.path()).unwrap();
        let mut seqs: BTreeMap<usize, u64> = BTreeMap::new();
        for (time, step) in steps.into_iter().enumerate() {
            let now = time as UnixMillis + 10;
            match step {
                Step::Hello { host, apps } => {
                    let host_id = host_id(host);
                    if store.host(&host_id).unwrap().is_none() {
                        store.put_host(&enrolled(&host_id)).unwrap();
                    }
                    store
                        .register_host(&host_id, "0.1.0", &HostFactsRecord::default(), &inventory(&apps, now), now)
                        .unwrap();
                }
                Step::Inventory { host, apps } => {
                    let host_id = host_id(host);
                    if store.host(&host_id).unwrap().is_some() {
                        let seq = seqs.entry(host).or_default();
                        *seq += 1;
                        let outcome = store
                            .apply_event(&host_id, *seq + 1_000, &AgentEvent::Inventory(inventory(&apps, now)))
                            .unwrap();
                        prop_assert_eq!(outcome, EventOutcome::Applied);
                    }
                }
                Step::Remove { host } => {
                    store.remove_host(&host_id(host), now).unwrap();
                    seqs.remove(&host);
                }
                Step::Reopen => {
                    drop(store);
                    store = Store::reopen(directory.path());
                }
            }
            check_index_matches_store(&store, page_size);
        }
    }
}

#[test]
fn a_walk_lists_every_host_once_while_hosts_come_and_go() {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path()).unwrap();
    let name = |index: usize| -> HostId { format!("host-{index:03}").parse().unwrap() };
    for index in 0..100 {
        store.put_host(&enrolled(&name(index))).unwrap();
    }
    let index = store.listing_index();
    let mut seen: Vec<HostId> = Vec::new();
    let mut after: Option<HostId> = None;
    let mut round = 0;
    loop {
        let page = index.hosts(after.as_ref(), 7);
        seen.extend(page.items.iter().map(|host| host.host_id.clone()));
        // Between pages, hosts behind and ahead of the walk come and go: the
        // first 100 hosts, present throughout, must each appear exactly once.
        store.remove_host(&name(round * 3 % 100), 5).unwrap();
        store.put_host(&enrolled(&name(round * 3 % 100))).unwrap();
        store
            .put_host(&enrolled(&format!("late-{round}").parse().unwrap()))
            .unwrap();
        round += 1;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let steady: Vec<HostId> = seen
        .iter()
        .filter(|host_id| host_id.as_str().starts_with("host-"))
        .cloned()
        .collect();
    let mut unique = steady.clone();
    unique.dedup();
    assert_eq!(unique, steady, "sorted and without repeats");
    assert_eq!(
        steady,
        (0..100).map(name).collect::<Vec<_>>(),
        "every host exactly once"
    );
}

//! Planning a rollout: the target when none is given (a quorum of hosts
//! must report it available), which apps take part, which are skipped and
//! why, and which wave each of the others belongs to (the canary first).
//! Pure.

use std::collections::BTreeMap;

use ccfleet_proto::{CoopVersion, Domain, HostId, RecipeName};

use crate::model::{
    HostOutcomeRecord, QuantityRecord, RolloutHostRecord, RolloutRecord, RolloutStateRecord, StrategyRecord, UnixMillis,
};

/// One app of the recipe on one selected host, as the fleet knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub host_id: HostId,
    pub domain: Domain,
    pub online: bool,
    pub observed: Option<CoopVersion>,
    pub pinned_by_host: bool,
    /// Matches the operator's `--canary-hosts` selector (false without one).
    pub canary: bool,
    /// Stateful and its stack has no volumes: its agent would refuse the
    /// upgrade (no snapshot is possible), so the plan skips it.
    pub unsnapshottable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no selected host runs recipe {0}")]
    NoApps(RecipeName),
    #[error("no agent reports an available version of {0}; pass an explicit version")]
    NoAvailableVersion(RecipeName),
    #[error(
        "no version of {recipe} is reported available by a majority of the {hosts} selected hosts that run it \
         (at least {needed}); candidates: {}; pass an explicit version with --to",
        candidates_text(candidates)
    )]
    NoQuorum {
        recipe: RecipeName,
        hosts: usize,
        needed: usize,
        /// Each version some host reports, newest first, with how many hosts
        /// report it or a newer one.
        candidates: Vec<(CoopVersion, usize)>,
    },
    #[error("--canary-hosts {0} selects no host that takes part in the rollout")]
    NoCanary(String),
}

fn candidates_text(candidates: &[(CoopVersion, usize)]) -> String {
    candidates
        .iter()
        .map(|(version, hosts)| format!("{version} ({hosts} {})", if *hosts == 1 { "host" } else { "hosts" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The newest version available on a majority of hosts, when no `--to` is
/// given. `reported` has one entry per selected host that runs the recipe:
/// the newest version any of its apps reports available (within the app's
/// major, or in any major with `allow_major`), `None` if it reports none.
///
/// The rule: a host that reports version V available counts for V and every
/// older version; the target is the newest version counted by more than half
/// of the hosts. So no host, nor any minority of hosts, can make the fleet
/// move to a version the others do not know: the target is the median of the
/// reports, not their maximum. With one host running the recipe, its report
/// is the majority. Without a majority for any version the rollout is refused
/// with the candidates and how many hosts report each.
pub fn quorum_target(
    recipe: &RecipeName,
    reported: &BTreeMap<HostId, Option<CoopVersion>>,
) -> Result<CoopVersion, PlanError> {
    let hosts = reported.len();
    let needed = hosts / 2 + 1;
    let mut versions: Vec<&CoopVersion> = reported.values().flatten().collect();
    if versions.is_empty() {
        return Err(PlanError::NoAvailableVersion(recipe.clone()));
    }
    versions.sort_by(|a, b| b.cmp(a));
    versions.dedup();
    let candidates: Vec<(CoopVersion, usize)> = versions
        .iter()
        .map(|version| {
            let counted = reported.values().flatten().filter(|newest| *newest >= *version).count();
            ((*version).clone(), counted)
        })
        .collect();
    match candidates.iter().find(|(_, counted)| *counted >= needed) {
        Some((version, _)) => Ok(version.clone()),
        None => Err(PlanError::NoQuorum {
            recipe: recipe.clone(),
            hosts,
            needed,
            candidates,
        }),
    }
}

/// The newest version each host reports available for the recipe, over its
/// apps (`host`, within the app's major, in any major), as `quorum_target`
/// takes them.
pub fn reported_by_host<'a>(
    apps: impl IntoIterator<Item = (&'a HostId, Option<&'a CoopVersion>, Option<&'a CoopVersion>)>,
    allow_major: bool,
) -> BTreeMap<HostId, Option<CoopVersion>> {
    let mut reported: BTreeMap<HostId, Option<CoopVersion>> = BTreeMap::new();
    for (host_id, same_major, any_major) in apps {
        let version = newest_available([(same_major, any_major)], allow_major);
        let entry = reported.entry(host_id.clone()).or_default();
        *entry = entry.take().max(version);
    }
    reported
}

/// How many hosts a quantity means among `total`: a count is capped at the
/// total, a percentage is rounded up; never less than one host.
pub fn resolve(quantity: QuantityRecord, total: usize) -> usize {
    let wanted = match quantity {
        QuantityRecord::Count(count) => count as usize,
        QuantityRecord::Percent(percent) => (total * percent as usize).div_ceil(100),
    };
    wanted.clamp(1, total.max(1))
}

/// Whether a host matches any selector: a host id, or `key=value` against its
/// labels. No selectors select every host.
pub fn selected(selectors: &[String], host_id: &HostId, labels: &BTreeMap<String, String>) -> bool {
    selectors.is_empty()
        || selectors.iter().any(|selector| match selector.split_once('=') {
            Some((key, value)) => labels.get(key).is_some_and(|label| label == value),
            None => selector == host_id.as_str(),
        })
}

/// The newest version agents report as available: within each app's major,
/// or in any major with `allow_major`.
pub fn newest_available<'a>(
    available: impl IntoIterator<Item = (Option<&'a CoopVersion>, Option<&'a CoopVersion>)>,
    allow_major: bool,
) -> Option<CoopVersion> {
    available
        .into_iter()
        .filter_map(|(same_major, any_major)| {
            if allow_major {
                any_major.or(same_major)
            } else {
                same_major
            }
        })
        .max()
        .cloned()
}

/// Plans a rollout of `recipe` to `target` over `candidates`. Apps that need
/// no command get their final outcome now; the others are split into waves
/// in host order, the canary first. Nothing is dispatched yet:
/// `machine::apply` with `Event::Tick` starts it.
///
/// The canary (wave 0): with `canary_selector` (`--canary-hosts`), every
/// eligible app of the hosts it matches (`Candidate::canary`); otherwise
/// every eligible app of the first hosts in host-id order, as many hosts as
/// the strategy's canary quantity resolves to among the eligible hosts. The
/// other eligible apps follow in batches, in host order.
#[allow(clippy::too_many_arguments)] // one plain value per part of a plan; a struct would only rename them
pub fn plan(
    id: String,
    recipe: RecipeName,
    target: CoopVersion,
    strategy: StrategyRecord,
    mut candidates: Vec<Candidate>,
    canary_selector: Option<&str>,
    created_by: String,
    now: UnixMillis,
) -> Result<RolloutRecord, PlanError> {
    if candidates.is_empty() {
        return Err(PlanError::NoApps(recipe));
    }
    candidates.sort_by(|a, b| (&a.host_id, &a.domain).cmp(&(&b.host_id, &b.domain)));
    let mut hosts = Vec::with_capacity(candidates.len());
    let mut canary_hosts = std::collections::BTreeSet::new();
    for candidate in candidates {
        let (outcome, message) = match &candidate.observed {
            _ if candidate.pinned_by_host => (HostOutcomeRecord::Skipped, "pinned by host configuration".to_owned()),
            _ if !candidate.online => (HostOutcomeRecord::Skipped, "host offline at the start".to_owned()),
            None => (
                HostOutcomeRecord::Skipped,
                "version unknown (not deployed or no version label)".to_owned(),
            ),
            Some(observed) if observed.change_to(&target) == ccfleet_proto::VersionChange::Same => {
                (HostOutcomeRecord::Succeeded, format!("already at {observed}"))
            }
            Some(observed) if *observed > target => (
                HostOutcomeRecord::Succeeded,
                format!("already at {observed}, newer than the target"),
            ),
            Some(observed) if observed.is_major_upgrade(&target) && !strategy.allow_major => (
                HostOutcomeRecord::Skipped,
                format!("{observed} to {target} is a major upgrade; it needs --major"),
            ),
            Some(_) if candidate.unsnapshottable => (
                HostOutcomeRecord::Skipped,
                "stateful without volumes: it cannot be snapshotted (stateful = false if it keeps no data)".to_owned(),
            ),
            Some(_) => (HostOutcomeRecord::Pending, String::new()),
        };
        if candidate.canary && outcome == HostOutcomeRecord::Pending {
            canary_hosts.insert(candidate.host_id.clone());
        }
        hosts.push(RolloutHostRecord {
            host_id: candidate.host_id,
            domain: candidate.domain,
            wave: 0,
            outcome,
            to_version: if outcome == HostOutcomeRecord::Succeeded {
                candidate.observed.clone()
            } else {
                None
            },
            running_version: if outcome == HostOutcomeRecord::Succeeded {
                candidate.observed.clone()
            } else {
                None
            },
            from_version: candidate.observed,
            message,
            updated_at: now,
            operation_id: None,
            dispatched_at: None,
            rollback: None,
            succeeded_late: false,
        });
    }
    let pending = |host: &&mut RolloutHostRecord| host.outcome == HostOutcomeRecord::Pending;
    if canary_selector.is_none() {
        let mut eligible_hosts: Vec<HostId> = hosts
            .iter_mut()
            .filter(pending)
            .map(|host| host.host_id.clone())
            .collect();
        eligible_hosts.dedup();
        let count = resolve(strategy.canary, eligible_hosts.len());
        canary_hosts = eligible_hosts.into_iter().take(count).collect();
    } else if canary_hosts.is_empty() {
        return Err(PlanError::NoCanary(canary_selector.unwrap_or_default().to_owned()));
    }
    let eligible = hosts.iter_mut().filter(pending).count();
    let batch = resolve(strategy.batch, eligible);
    let mut wave_count = 0;
    for host in hosts.iter_mut().filter(pending) {
        if canary_hosts.contains(&host.host_id) {
            host.wave = 0;
            wave_count = 1;
        }
    }
    for (position, host) in hosts
        .iter_mut()
        .filter(pending)
        .filter(|host| !canary_hosts.contains(&host.host_id))
        .enumerate()
    {
        host.wave = 1 + (position / batch) as u32;
        wave_count = host.wave + 1;
    }
    Ok(RolloutRecord {
        id,
        recipe,
        target,
        state: RolloutStateRecord::Running,
        strategy,
        hosts,
        current_wave: 0,
        wave_count,
        created_at: now,
        updated_at: now,
        reason: String::new(),
        created_by,
        paused_by_operator: false,
        awaiting_promotion: false,
        promoted: false,
        next_wave_at: None,
        last_progress_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn strategy() -> StrategyRecord {
        StrategyRecord {
            canary: QuantityRecord::Count(1),
            batch: QuantityRecord::Percent(25),
            max_failures: 1,
            max_failure_ppm: 0,
            pause_after_canary: false,
            wave_interval_ms: 0,
            host_deadline_ms: 60_000,
            progress_deadline_ms: 0,
            rollback_on_halt: false,
            allow_major: false,
        }
    }

    fn candidate(host: &str, version: Option<&str>) -> Candidate {
        Candidate {
            host_id: host.parse().unwrap(),
            domain: format!("app.{host}.example.org").parse().unwrap(),
            online: true,
            observed: version.map(|version| version.parse().unwrap()),
            pinned_by_host: false,
            canary: false,
            unsnapshottable: false,
        }
    }

    #[test]
    fn quantities_resolve_to_at_least_one_host() {
        let check = |quantity, total, expect| assert_eq!(resolve(quantity, total), expect, "{quantity:?} of {total}");
        check(QuantityRecord::Count(1), 10, 1);
        check(QuantityRecord::Count(50), 10, 10);
        check(QuantityRecord::Percent(25), 10, 3);
        check(QuantityRecord::Percent(10), 1000, 100);
        check(QuantityRecord::Percent(1), 10, 1);
        check(QuantityRecord::Percent(100), 7, 7);
        check(QuantityRecord::Count(3), 0, 1);
    }

    #[test]
    fn selectors_match_host_ids_or_labels() {
        let labels = BTreeMap::from([("site".to_owned(), "berlin".to_owned())]);
        let host: HostId = "web-1".parse().unwrap();
        let check = |selectors: &[&str], expect| {
            let selectors: Vec<String> = selectors.iter().map(|s| s.to_string()).collect();
            assert_eq!(selected(&selectors, &host, &labels), expect, "{selectors:?}");
        };
        check(&[], true);
        check(&["web-1"], true);
        check(&["web-2"], false);
        check(&["site=berlin"], true);
        check(&["site=paris"], false);
        check(&["web-2", "site=berlin"], true);
        check(&["site"], false);
    }

    #[test]
    fn newest_available_stays_in_the_major_unless_allowed() {
        let v = |text: &str| text.parse::<CoopVersion>().unwrap();
        let (a1, a2, b1) = (v("1.2.0+x"), v("1.3.0+x"), v("2.0.0+y"));
        let apps = [(Some(&a1), Some(&b1)), (Some(&a2), Some(&b1)), (None, None)];
        assert_eq!(newest_available(apps, false), Some(a2.clone()));
        assert_eq!(newest_available(apps, true), Some(b1));
        assert_eq!(newest_available([(None, None)], false), None);
    }

    #[test]
    fn plans_skip_and_settle_what_needs_no_command_and_split_the_rest_into_waves() {
        let mut candidates: Vec<Candidate> = (1..=9).map(|n| candidate(&format!("h{n}"), Some("1.0.0"))).collect();
        candidates.push(candidate("p1", Some("1.0.0")));
        candidates.last_mut().unwrap().pinned_by_host = true;
        candidates.push(candidate("o1", Some("1.0.0")));
        candidates.last_mut().unwrap().online = false;
        candidates.push(candidate("u1", None));
        candidates.push(candidate("t1", Some("1.1.0")));
        candidates.push(candidate("n1", Some("1.2.0")));
        candidates.push(candidate("m1", Some("0.9.0")));
        candidates.push(candidate("v1", Some("1.0.0")));
        candidates.last_mut().unwrap().unsnapshottable = true;
        let rollout = plan(
            "ghost-1".into(),
            "ghost".parse().unwrap(),
            "1.1.0".parse().unwrap(),
            strategy(),
            candidates,
            None,
            "admin".into(),
            5,
        )
        .unwrap();
        let rows: Vec<String> = rollout
            .hosts
            .iter()
            .map(|host| format!("{} {:?} w{} {}", host.host_id, host.outcome, host.wave, host.message))
            .collect();
        assert_eq!(
            rows,
            [
                "h1 Pending w0 ",
                "h2 Pending w1 ",
                "h3 Pending w1 ",
                "h4 Pending w1 ",
                "h5 Pending w2 ",
                "h6 Pending w2 ",
                "h7 Pending w2 ",
                "h8 Pending w3 ",
                "h9 Pending w3 ",
                "m1 Skipped w0 0.9.0 to 1.1.0 is a major upgrade; it needs --major",
                "n1 Succeeded w0 already at 1.2.0, newer than the target",
                "o1 Skipped w0 host offline at the start",
                "p1 Skipped w0 pinned by host configuration",
                "t1 Succeeded w0 already at 1.1.0",
                "u1 Skipped w0 version unknown (not deployed or no version label)",
                "v1 Skipped w0 stateful without volumes: it cannot be snapshotted (stateful = false if it keeps no data)",
            ]
        );
        assert_eq!(rollout.wave_count, 4);
    }

    #[test]
    fn nothing_to_plan_is_refused() {
        let refused = plan(
            "ghost-1".into(),
            "ghost".parse().unwrap(),
            "1.1.0".parse().unwrap(),
            strategy(),
            vec![],
            None,
            "admin".into(),
            5,
        );
        assert_eq!(refused.unwrap_err().to_string(), "no selected host runs recipe ghost");
    }
    #[test]
    fn without_a_version_the_target_is_what_a_majority_of_hosts_reports() {
        // Each case: (each host's newest reported version, the answer).
        let cases: &[(&[Option<&str>], &str)] = &[
            // One host reports a newer version: the others' version wins.
            (&[Some("1.9.0"), Some("1.2.0"), Some("1.2.0")], "1.2.0"),
            // A host reporting 1.3.0 also counts for 1.2.0: 1.3.0 has 2 of 3.
            (&[Some("1.3.0"), Some("1.3.0"), Some("1.2.0")], "1.3.0"),
            // The median of the reports, not their maximum.
            (
                &[
                    Some("1.4.0"),
                    Some("1.3.0"),
                    Some("1.2.0"),
                    Some("1.1.0"),
                    Some("1.0.0"),
                ],
                "1.2.0",
            ),
            // Two hosts: both must know it.
            (&[Some("1.3.0"), Some("1.2.0")], "1.2.0"),
            // One host running the recipe is the whole fleet for it.
            (&[Some("1.3.0")], "1.3.0"),
            // A host reporting nothing counts for no version, but 2 of 3 do.
            (&[Some("1.3.0"), Some("1.3.0"), None], "1.3.0"),
            // No majority: refused with the candidates.
            (
                &[Some("1.3.0"), None, None],
                "no version of ghost is reported available by a majority of the 3 selected hosts that run it \
                 (at least 2); candidates: 1.3.0 (1 host); pass an explicit version with --to",
            ),
            (
                &[Some("1.9.0"), Some("1.3.0"), None, None],
                "no version of ghost is reported available by a majority of the 4 selected hosts that run it \
                 (at least 3); candidates: 1.9.0 (1 host), 1.3.0 (2 hosts); pass an explicit version with --to",
            ),
            (
                &[None, None],
                "no agent reports an available version of ghost; pass an explicit version",
            ),
        ];
        let recipe: RecipeName = "ghost".parse().unwrap();
        for (index, (reports, expected)) in cases.iter().enumerate() {
            let reported: BTreeMap<HostId, Option<CoopVersion>> = reports
                .iter()
                .enumerate()
                .map(|(host, version)| {
                    (
                        format!("h{host}").parse().unwrap(),
                        version.map(|version| version.parse().unwrap()),
                    )
                })
                .collect();
            let answer = match quorum_target(&recipe, &reported) {
                Ok(version) => version.to_string(),
                Err(error) => error.to_string(),
            };
            assert_eq!(answer, *expected, "case {index}: {reports:?}");
        }
    }

    #[test]
    fn a_host_counts_once_however_many_apps_it_reports() {
        let v = |text: &str| text.parse::<CoopVersion>().unwrap();
        let (h1, h2, h3): (HostId, HostId, HostId) =
            ("h1".parse().unwrap(), "h2".parse().unwrap(), "h3".parse().unwrap());
        let (old, new, major) = (v("1.2.0"), v("1.9.0"), v("2.0.0"));
        // h1 claims three apps that all report 1.9.0.
        let apps = [
            (&h1, Some(&new), Some(&major)),
            (&h1, Some(&new), Some(&major)),
            (&h1, Some(&new), Some(&major)),
            (&h2, Some(&old), None),
            (&h3, Some(&old), None),
        ];
        let reported = reported_by_host(apps, false);
        assert_eq!(reported.len(), 3);
        assert_eq!(quorum_target(&"ghost".parse().unwrap(), &reported), Ok(old.clone()));
        let reported = reported_by_host(apps, true);
        assert_eq!(reported[&h1], Some(major));
        assert_eq!(reported[&h2], Some(old));
    }

    /// The waves of a plan over hosts h1..h5 (h2 runs two apps), as
    /// `host:wave` in host order.
    fn waves(canary: QuantityRecord, canary_selected: &[&str], selector: Option<&str>) -> Result<String, String> {
        let mut candidates: Vec<Candidate> = (1..=5).map(|n| candidate(&format!("h{n}"), Some("1.0.0"))).collect();
        let mut second = candidate("h2", Some("1.0.0"));
        second.domain = "other.h2.example.org".parse().unwrap();
        candidates.push(second);
        for candidate in &mut candidates {
            candidate.canary = canary_selected.contains(&candidate.host_id.as_str());
        }
        let strategy = StrategyRecord {
            canary,
            batch: QuantityRecord::Count(2),
            ..strategy()
        };
        let planned = plan(
            String::new(),
            "ghost".parse().unwrap(),
            "1.1.0".parse().unwrap(),
            strategy,
            candidates,
            selector,
            "admin".into(),
            5,
        )
        .map_err(|error| error.to_string())?;
        Ok(planned
            .hosts
            .iter()
            .map(|host| format!("{}:{}", host.host_id, host.wave))
            .collect::<Vec<_>>()
            .join(" "))
    }

    #[test]
    fn the_canary_is_the_first_hosts_in_host_order_unless_the_operator_names_it() {
        /// (canary quantity, hosts the selector matches, the selector, the waves or the refusal)
        type Case<'a> = (QuantityRecord, &'a [&'a str], Option<&'a str>, Result<&'a str, &'a str>);
        let cases: &[Case] = &[
            // The rule: the first host, with all its apps.
            (QuantityRecord::Count(1), &[], None, Ok("h1:0 h2:1 h2:1 h3:2 h4:2 h5:3")),
            // Two canary hosts: h1 and both apps of h2.
            (QuantityRecord::Count(2), &[], None, Ok("h1:0 h2:0 h2:0 h3:1 h4:1 h5:2")),
            // --canary-hosts h4: h4 alone is the canary, whatever the count.
            (
                QuantityRecord::Count(2),
                &["h4"],
                Some("h4"),
                Ok("h1:1 h2:1 h2:2 h3:2 h4:0 h5:3"),
            ),
            // --canary-hosts site=x matching h3 and h5.
            (
                QuantityRecord::Count(1),
                &["h3", "h5"],
                Some("site=x"),
                Ok("h1:1 h2:1 h2:2 h3:0 h4:2 h5:0"),
            ),
            // A selector that matches no host taking part is refused.
            (
                QuantityRecord::Count(1),
                &[],
                Some("site=nowhere"),
                Err("--canary-hosts site=nowhere selects no host that takes part in the rollout"),
            ),
        ];
        for (index, (canary, selected, selector, expected)) in cases.iter().enumerate() {
            assert_eq!(
                waves(*canary, selected, *selector).as_deref(),
                expected.map_err(str::to_owned).as_deref(),
                "case {index}"
            );
        }
    }
}

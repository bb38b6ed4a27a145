//! Planning a rollout: which apps take part, which are skipped and why, and
//! which wave each of the others belongs to. Pure.

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
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no selected host runs recipe {0}")]
    NoApps(RecipeName),
    #[error("no agent reports an available version of {0}; pass an explicit version")]
    NoAvailableVersion(RecipeName),
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
/// in host order (canary first). Nothing is dispatched yet: `machine::apply`
/// with `Event::Tick` starts it.
#[allow(clippy::too_many_arguments)] // one plain value per part of a plan; a struct would only rename them
pub fn plan(
    id: String,
    recipe: RecipeName,
    target: CoopVersion,
    strategy: StrategyRecord,
    mut candidates: Vec<Candidate>,
    created_by: String,
    now: UnixMillis,
) -> Result<RolloutRecord, PlanError> {
    if candidates.is_empty() {
        return Err(PlanError::NoApps(recipe));
    }
    candidates.sort_by(|a, b| (&a.host_id, &a.domain).cmp(&(&b.host_id, &b.domain)));
    let mut hosts = Vec::with_capacity(candidates.len());
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
            Some(_) => (HostOutcomeRecord::Pending, String::new()),
        };
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
            from_version: candidate.observed,
            message,
            updated_at: now,
            operation_id: None,
            dispatched_at: None,
            rollback: None,
            succeeded_late: false,
        });
    }
    let eligible = hosts
        .iter()
        .filter(|host| host.outcome == HostOutcomeRecord::Pending)
        .count();
    let canary = resolve(strategy.canary, eligible);
    let batch = resolve(strategy.batch, eligible);
    let mut wave_count = 0;
    for (position, host) in hosts
        .iter_mut()
        .filter(|host| host.outcome == HostOutcomeRecord::Pending)
        .enumerate()
    {
        host.wave = if position < canary {
            0
        } else {
            1 + ((position - canary) / batch) as u32
        };
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
        let rollout = plan(
            "ghost-1".into(),
            "ghost".parse().unwrap(),
            "1.1.0".parse().unwrap(),
            strategy(),
            candidates,
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
            "admin".into(),
            5,
        );
        assert_eq!(refused.unwrap_err().to_string(), "no selected host runs recipe ghost");
    }
}

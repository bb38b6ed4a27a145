//! The campaign's invariants, checked over the history one run recorded for
//! one rollout: what the agents received, executed and run, what the server
//! acknowledged, and what `ccfleet rollout show --json` and `ccfleet versions
//! --json` report at the end and after a final kill.

use std::collections::{BTreeMap, BTreeSet};

use super::{Plan, FROM, TO};

/// One host as `ccfleet rollout show --json` reports it at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownHost {
    pub host_id: String,
    pub wave: u32,
    pub outcome: String,
    /// The server's message for the host (why it ended as it did).
    pub message: String,
}

/// What a run recorded for one rollout.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub recipe: String,
    /// The final state, or `None` when it did not end within its bound.
    pub state: Option<String>,
    /// The rollout's target as the server shows it.
    pub target: String,
    pub shown: Vec<ShownHost>,
    /// The same rollout shown again after a final SIGKILL and restart.
    pub shown_after_reopen: Option<(String, Vec<ShownHost>)>,
    /// Per host: every command delivered (`kind id`), for reports.
    pub received: BTreeMap<String, Vec<String>>,
    /// Per host: operation ids received for upgrades (distinct), executed ids (all).
    pub upgrade_ids: BTreeMap<String, BTreeSet<String>>,
    pub executed: BTreeMap<String, Vec<String>>,
    /// Per host: the version it runs at the end (the runner's model).
    pub versions: BTreeMap<String, String>,
    /// Per host: the version `ccfleet versions <recipe> --json` lists it
    /// under once every agent's outbox is empty (`None`: not listed, or the
    /// listing failed).
    pub listed: BTreeMap<String, Option<String>>,
    /// Per host: results the agent had acknowledged by the server (operation ids).
    pub acknowledged: BTreeMap<String, Vec<String>>,
}

/// Every invariant a run's history breaks, as sentences (empty: none).
pub fn check(plan: &Plan, history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let Some(state) = &history.state else {
        violations.push(format!(
            "rollout of {} did not end within {:?}",
            history.recipe,
            plan.bound(&history.recipe)
        ));
        return violations;
    };
    if !["completed", "halted", "aborted"].contains(&state.as_str()) {
        violations.push(format!("rollout of {} ended in unknown state {state}", history.recipe));
    }
    if history.target != TO {
        violations.push(format!(
            "rollout of {} targets {:?}, not {TO}{}",
            history.recipe,
            history.target,
            if plan.derive_target {
                " (derived from the versions the hosts report available)"
            } else {
                ""
            }
        ));
    }
    for (host, ids) in &history.upgrade_ids {
        if ids.len() > 1 {
            violations.push(format!("{host} was sent {} different upgrades: {ids:?}", ids.len()));
        }
    }
    for (host, executed) in &history.executed {
        let distinct: BTreeSet<&String> = executed.iter().collect();
        if distinct.len() != executed.len() {
            violations.push(format!("{host} executed an operation id twice: {executed:?}"));
        }
    }
    // Hosts whose upgrade failed: dispatched hosts the plan makes fail (a
    // host returned by rollback-on-halt also shows rolled_back, so the shown
    // outcome alone does not tell). Link faults can make more hosts time out
    // in the server's view; those only halt the rollout sooner.
    let failed = history
        .shown
        .iter()
        .filter(|host| !matches!(host.outcome.as_str(), "pending" | "skipped"))
        .filter(|host| {
            plan.hosts
                .iter()
                .any(|planned| planned.id == host.host_id && plan.fails(planned))
        })
        .count() as u32;
    if failed > plan.max_failures + plan.batch.max(plan.canary) {
        violations.push(format!(
            "{failed} hosts failed, over the budget {} plus {} in flight",
            plan.max_failures,
            plan.batch.max(plan.canary)
        ));
    }
    // The selector (`--hosts site=...`): the rollout shows every host it
    // selects and none other; a host left out is sent no upgrade and keeps
    // its version.
    for host in plan.hosts.iter().filter(|host| host.recipe == history.recipe) {
        let shown = history.shown.iter().any(|shown| shown.host_id == host.id);
        let site = plan.site.unwrap_or_default();
        if plan.selects(host) {
            if !shown {
                violations.push(format!(
                    "{} (site {}) is selected but the rollout does not show it",
                    host.id, host.site
                ));
            }
            continue;
        }
        if shown {
            violations.push(format!(
                "{} (site {}) is outside --hosts site={site} but the rollout shows it",
                host.id, host.site
            ));
        }
        if history.upgrade_ids.get(&host.id).is_some_and(|ids| !ids.is_empty()) {
            violations.push(format!(
                "{} (site {}) is outside --hosts site={site} but was sent an upgrade",
                host.id, host.site
            ));
        }
        if let Some(version) = history.versions.get(&host.id).filter(|version| *version != FROM) {
            violations.push(format!(
                "{} (site {}) is outside --hosts site={site} but runs {version}",
                host.id, host.site
            ));
        }
    }
    let rolled_back_on_halt = state == "halted" && plan.rollback_on_halt;
    for shown in &history.shown {
        let version = history.versions.get(&shown.host_id).map(String::as_str);
        let expected = match shown.outcome.as_str() {
            "succeeded" if rolled_back_on_halt => Some(FROM),
            "succeeded" => Some(TO),
            "failed" | "rolled_back" | "pending" | "skipped" | "held" => Some(FROM),
            // a timed-out host may still finish later; either version is honest
            _ => None,
        };
        if let (Some(expected), Some(version)) = (expected, version) {
            if expected != version && !(shown.outcome == "skipped" && version == TO) {
                violations.push(format!(
                    "{} shown {} (wave {}) but runs {version}, expected {expected} (server: {:?}; received {:?})",
                    shown.host_id,
                    shown.outcome,
                    shown.wave,
                    shown.message,
                    history.received.get(&shown.host_id).cloned().unwrap_or_default()
                ));
            }
        }
        // An abort lets hosts in flight finish or reach their host deadline.
        if matches!(shown.outcome.as_str(), "dispatched" | "upgrading") {
            violations.push(format!(
                "{} still {} in a rollout that ended {state}",
                shown.host_id, shown.outcome
            ));
        }
    }
    // What `versions` lists equals what each host runs, once nothing is in flight.
    for (host, version) in &history.versions {
        match history.listed.get(host) {
            Some(Some(listed)) if listed == version => {}
            listed => violations.push(format!(
                "`ccfleet versions {}` lists {host} at {}, but it runs {version}",
                history.recipe,
                listed.cloned().flatten().unwrap_or_else(|| "nothing".to_owned())
            )),
        }
    }
    for (host, acknowledged) in &history.acknowledged {
        let shown = history.shown.iter().find(|shown| &shown.host_id == host);
        if !acknowledged.is_empty()
            && shown.is_some_and(|shown| matches!(shown.outcome.as_str(), "pending" | "dispatched"))
        {
            violations.push(format!(
                "{host}'s acknowledged result {acknowledged:?} is lost: shown {}",
                shown.map_or("absent", |shown| shown.outcome.as_str())
            ));
        }
    }
    match &history.shown_after_reopen {
        None => violations.push("the store did not reopen after the final kill".to_owned()),
        Some((reopened_state, reopened)) => {
            if reopened_state != state || reopened != &history.shown {
                let changed: Vec<String> = reopened
                    .iter()
                    .filter(|host| !history.shown.contains(host))
                    .map(|host| format!("{} {}", host.host_id, host.outcome))
                    .collect();
                violations.push(format!(
                    "after reopening the store the rollout is {reopened_state} with {} hosts, before {state} with {}; changed: {changed:?}",
                    reopened.len(),
                    history.shown.len()
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::{plan, HostKind, HostPlan};

    fn shown(host: &str, outcome: &str) -> ShownHost {
        ShownHost {
            host_id: host.into(),
            wave: 0,
            outcome: outcome.into(),
            message: String::new(),
        }
    }

    fn history(state: Option<&str>, hosts: &[(&str, &str, &str)]) -> History {
        let shown: Vec<ShownHost> = hosts.iter().map(|(host, outcome, _)| shown(host, outcome)).collect();
        let versions: BTreeMap<String, String> = hosts
            .iter()
            .map(|(host, _, version)| (host.to_string(), version.to_string()))
            .collect();
        History {
            recipe: "fixture".into(),
            state: state.map(str::to_owned),
            target: TO.into(),
            shown_after_reopen: state.map(|state| (state.to_owned(), shown.clone())),
            shown,
            listed: versions
                .iter()
                .map(|(host, version)| (host.clone(), Some(version.clone())))
                .collect(),
            versions,
            ..History::default()
        }
    }

    #[test]
    fn invariants_as_a_table() {
        // No hosts of its own (the histories name theirs) and no selector.
        let base = Plan {
            hosts: Vec::new(),
            site: None,
            ..plan(1, 10, 10)
        };
        // `--hosts site=leeds`: s0 is selected, o0 (berlin) is not.
        let selecting = Plan {
            hosts: [("s0", "leeds"), ("o0", "berlin")]
                .into_iter()
                .map(|(id, site)| HostPlan {
                    id: id.into(),
                    recipe: "fixture",
                    kind: HostKind::Healthy,
                    delay_ms: 20,
                    site,
                })
                .collect(),
            site: Some("leeds"),
            ..base.clone()
        };
        let left_out = |outcome: Option<&str>, version: &str, upgraded: bool| {
            let mut hosts = vec![("s0", "succeeded", TO)];
            if let Some(outcome) = outcome {
                hosts.push(("o0", outcome, version));
            }
            let mut history = history(Some("completed"), &hosts);
            history.versions.insert("o0".into(), version.into());
            history.listed.insert("o0".into(), Some(version.into()));
            if upgraded {
                history.upgrade_ids.insert("o0".into(), ["op9".to_owned()].into());
            }
            history
        };
        let halting = Plan {
            rollback_on_halt: true,
            ..base.clone()
        };
        let mut listed_wrong = history(Some("completed"), &[("a", "succeeded", TO)]);
        listed_wrong.listed.insert("a".into(), Some(FROM.into()));
        let mut unlisted = history(Some("completed"), &[("a", "succeeded", TO)]);
        unlisted.listed.clear();
        let mut wrong_target = history(Some("completed"), &[("a", "succeeded", TO)]);
        wrong_target.target = "1.0.1".into();
        let mut twice = history(Some("completed"), &[("a", "succeeded", TO)]);
        twice.executed.insert("a".into(), vec!["op1".into(), "op1".into()]);
        let mut two = history(Some("completed"), &[("a", "succeeded", TO)]);
        two.upgrade_ids
            .insert("a".into(), ["op1".to_owned(), "op2".to_owned()].into());
        let mut unreopened = history(Some("completed"), &[("a", "succeeded", TO)]);
        unreopened.shown_after_reopen = None;
        let mut lost = history(Some("completed"), &[("a", "pending", FROM)]);
        lost.acknowledged.insert("a".into(), vec!["op1".into()]);
        // Four hosts that fail their gate, all dispatched, against a budget of 1 plus 2 in flight.
        let failing = Plan {
            hosts: (0..4)
                .map(|index| HostPlan {
                    id: format!("f{index}"),
                    recipe: "fixture",
                    kind: HostKind::Failing,
                    delay_ms: 20,
                    site: "berlin",
                })
                .collect(),
            canary: 1,
            batch: 2,
            max_failures: 1,
            ..base.clone()
        };
        let over_budget = history(
            Some("halted"),
            &[
                ("f0", "rolled_back", FROM),
                ("f1", "rolled_back", FROM),
                ("f2", "rolled_back", FROM),
                ("f3", "rolled_back", FROM),
            ],
        );
        let within_budget = history(
            Some("halted"),
            &[
                ("f0", "rolled_back", FROM),
                ("f1", "rolled_back", FROM),
                ("f2", "rolled_back", FROM),
                ("f3", "pending", FROM),
            ],
        );
        let cases: Vec<(&str, &Plan, History, &str)> = vec![
            (
                "clean completion",
                &base,
                history(Some("completed"), &[("a", "succeeded", TO)]),
                "",
            ),
            ("never ended", &base, history(None, &[]), "did not end"),
            (
                "shown succeeded but runs the old version",
                &base,
                history(Some("completed"), &[("a", "succeeded", FROM)]),
                "expected 1.1.0",
            ),
            (
                "halt with rollback leaves a host moved",
                &halting,
                history(Some("halted"), &[("a", "succeeded", TO)]),
                "expected 1.0.0",
            ),
            (
                "halt with rollback returned it",
                &halting,
                history(Some("halted"), &[("a", "succeeded", FROM)]),
                "",
            ),
            (
                "a timed-out host may run either version",
                &base,
                history(Some("halted"), &[("a", "timed_out", TO), ("b", "timed_out", FROM)]),
                "",
            ),
            (
                "in flight after the end",
                &base,
                history(Some("aborted"), &[("a", "dispatched", FROM)]),
                "still dispatched",
            ),
            (
                "versions lists another version",
                &base,
                listed_wrong,
                "lists a at 1.0.0, but it runs 1.1.0",
            ),
            ("versions does not list the host", &base, unlisted, "lists a at nothing"),
            ("wrong target", &base, wrong_target, "targets \"1.0.1\""),
            (
                "an operation id executed twice",
                &base,
                twice,
                "executed an operation id twice",
            ),
            ("two upgrades for one host", &base, two, "2 different upgrades"),
            ("the store did not reopen", &base, unreopened, "did not reopen"),
            (
                "an acknowledged result lost",
                &base,
                lost,
                "acknowledged result [\"op1\"] is lost",
            ),
            (
                "a selector's host moved, the other left alone",
                &selecting,
                left_out(None, FROM, false),
                "",
            ),
            (
                "a host outside the selector shown",
                &selecting,
                left_out(Some("skipped"), FROM, false),
                "o0 (site berlin) is outside --hosts site=leeds but the rollout shows it",
            ),
            (
                "a host outside the selector sent an upgrade",
                &selecting,
                left_out(None, FROM, true),
                "outside --hosts site=leeds but was sent an upgrade",
            ),
            (
                "a host outside the selector moved",
                &selecting,
                left_out(None, TO, false),
                "outside --hosts site=leeds but runs 1.1.0",
            ),
            (
                "a selected host missing from the rollout",
                &selecting,
                history(Some("completed"), &[]),
                "s0 (site leeds) is selected but the rollout does not show it",
            ),
            ("failures over the budget", &failing, over_budget, "4 hosts failed"),
            ("failures within the budget and a wave", &failing, within_budget, ""),
        ];
        for (name, plan, history, expected) in cases {
            let violations = check(plan, &history);
            if expected.is_empty() {
                assert!(violations.is_empty(), "{name}: {violations:?}");
            } else {
                assert!(
                    violations.iter().any(|violation| violation.contains(expected)),
                    "{name}: {violations:?}"
                );
            }
        }
    }
}

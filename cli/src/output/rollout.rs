//! Rollouts and the audit log for people and scripts: the JSON documents
//! (part of the CLI's interface), the tables and the `--follow` progress lines.

use std::collections::BTreeMap;

use ccfleet::names::{host_outcome, rollout_state};
use ccfleet_proto::pb;
use serde::Serialize;

use super::table::{non_empty, or_dash, printable, terminal_width, time, Fit, Grid};

// --- JSON documents ---------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutHostJson {
    pub host_id: String,
    pub domain: String,
    /// 0 is the canary wave.
    pub wave: u32,
    /// pending, dispatched, upgrading, succeeded, rolled_back, held, failed, skipped, timed_out.
    pub outcome: &'static str,
    /// Running before the host's operation.
    pub from_version: Option<String>,
    /// Asked for, once the host reported its result.
    pub to_version: Option<String>,
    /// Running after the host's operation, as it reported; null until then.
    pub running_version: Option<String>,
    pub message: String,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutJson {
    /// Empty for a dry run.
    pub id: String,
    pub recipe: String,
    pub target_version: String,
    /// running, paused, completed, halted or aborted.
    pub state: &'static str,
    pub current_wave: u32,
    pub reason: String,
    pub created_by: String,
    /// "none" (no `--pause-after-canary`), "closed" (waves after the canary
    /// wait for `rollout promote`) or "open" (promoted).
    pub canary_gate: &'static str,
    /// True while an operator's `rollout pause` holds it (`rollout resume` ends it).
    pub paused_by_operator: bool,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub strategy: StrategyJson,
    pub hosts: Vec<RolloutHostJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyJson {
    pub canary: String,
    pub batch: String,
    pub max_failures: u32,
    pub max_failure_ratio: f64,
    pub pause_after_canary: bool,
    pub wave_interval_seconds: u32,
    pub host_deadline_seconds: u32,
    pub progress_deadline_seconds: u32,
    pub rollback_on_halt: bool,
    pub allow_major: bool,
}

#[derive(Debug, Serialize)]
pub struct AuditJson {
    pub at: Option<String>,
    pub who: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

fn quantity_text(quantity: Option<&pb::HostQuantity>) -> String {
    match quantity.and_then(|quantity| quantity.quantity) {
        Some(pb::host_quantity::Quantity::Count(count)) => count.to_string(),
        Some(pb::host_quantity::Quantity::Percent(percent)) => format!("{percent}%"),
        None => "-".into(),
    }
}

fn host_json(host: &pb::RolloutHost) -> RolloutHostJson {
    RolloutHostJson {
        host_id: host.host_id.clone(),
        domain: host.domain.clone(),
        wave: host.wave,
        outcome: host_outcome(host.outcome),
        from_version: non_empty(&host.from_version),
        to_version: non_empty(&host.to_version),
        running_version: non_empty(&host.running_version),
        message: host.message.clone(),
        updated_at: time(host.updated_at.as_ref()),
    }
}

pub fn rollout_json(rollout: &pb::Rollout) -> RolloutJson {
    let strategy = rollout.strategy.unwrap_or_default();
    RolloutJson {
        id: rollout.id.clone(),
        recipe: rollout.recipe.clone(),
        target_version: rollout.target_version.clone(),
        state: rollout_state(rollout.state),
        current_wave: rollout.current_wave,
        reason: rollout.reason.clone(),
        created_by: rollout.created_by.clone(),
        canary_gate: match pb::CanaryGate::try_from(rollout.canary_gate) {
            Ok(pb::CanaryGate::Closed) => "closed",
            Ok(pb::CanaryGate::Open) => "open",
            _ => "none",
        },
        paused_by_operator: rollout.paused_by_operator,
        created_at: time(rollout.created_at.as_ref()),
        updated_at: time(rollout.updated_at.as_ref()),
        strategy: StrategyJson {
            canary: quantity_text(strategy.canary.as_ref()),
            batch: quantity_text(strategy.batch.as_ref()),
            max_failures: strategy.max_failures,
            max_failure_ratio: strategy.max_failure_ratio,
            pause_after_canary: strategy.pause_after_canary,
            wave_interval_seconds: strategy.wave_interval_seconds,
            host_deadline_seconds: strategy.host_deadline_seconds,
            progress_deadline_seconds: strategy.progress_deadline_seconds,
            rollback_on_halt: strategy.rollback_on_halt,
            allow_major: strategy.allow_major,
        },
        hosts: rollout.hosts.iter().map(host_json).collect(),
    }
}

// --- tables -----------------------------------------------------------------

fn counts(rollout: &RolloutJson) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for host in &rollout.hosts {
        *counts.entry(host.outcome).or_default() += 1;
    }
    counts
        .iter()
        .map(|(outcome, count)| format!("{count} {outcome}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn summary(rollout: &RolloutJson) -> String {
    let waves = rollout
        .hosts
        .iter()
        .filter(|host| host.outcome != "skipped")
        .map(|host| host.wave)
        .max()
        .map_or(0, |wave| wave + 1);
    let mut text = format!(
        "rollout {}: {} to {}, {} ({}), wave {} of {}; canary {}, batch {}, by {}",
        printable(&rollout.id),
        printable(&rollout.recipe),
        printable(&rollout.target_version),
        rollout.state,
        counts(rollout),
        (rollout.current_wave + 1).min(waves.max(1)),
        waves.max(1),
        rollout.strategy.canary,
        rollout.strategy.batch,
        printable(&rollout.created_by),
    );
    if let Some(hold) = hold_line(rollout) {
        text.push('\n');
        text.push_str(&hold);
    }
    if !rollout.reason.is_empty() {
        text.push_str(&format!("\nreason: {}", printable(&rollout.reason)));
    }
    text
}

/// The canary gate and the operator's pause, apart, and what moves the
/// rollout on; `None` when neither applies (or the rollout has ended).
pub fn hold_line(rollout: &RolloutJson) -> Option<String> {
    if matches!(rollout.state, "completed" | "halted" | "aborted") {
        return None;
    }
    let id = printable(&rollout.id);
    let pause = rollout
        .paused_by_operator
        .then(|| format!("paused by an operator (`ccfleet rollout resume {id}`)"));
    let gate = match rollout.canary_gate {
        "closed" => Some(format!("canary gate closed (`ccfleet rollout promote {id}`)")),
        "open" => Some("canary gate open".to_owned()),
        _ => None,
    };
    match (gate, pause) {
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => Some(one),
        (Some(gate), Some(pause)) => Some(format!("{gate}; {pause}")),
    }
}

pub fn rollout_hosts_grid(rollout: &RolloutJson) -> Grid {
    let mut hosts = Grid::new(&[
        ("WAVE", Fit::Whole),
        ("HOST", Fit::Whole),
        ("APP", Fit::Whole),
        // As in the operations table: from -> to (asked for), then what runs now.
        ("FROM -> TO", Fit::Whole),
        ("RUNNING", Fit::Whole),
        ("OUTCOME", Fit::Whole),
        ("MESSAGE", Fit::Cut),
    ]);
    for host in &rollout.hosts {
        hosts.row(vec![
            host.wave.to_string(),
            host.host_id.clone(),
            host.domain.clone(),
            format!("{} -> {}", or_dash(&host.from_version), or_dash(&host.to_version)),
            or_dash(&host.running_version),
            host.outcome.to_owned(),
            host.message.clone(),
        ]);
    }
    hosts
}

pub fn rollout_table(rollout: &RolloutJson) -> String {
    format!(
        "{}\n{}",
        summary(rollout),
        rollout_hosts_grid(rollout).render(terminal_width())
    )
}

pub fn dry_run_grid(rollout: &RolloutJson) -> Grid {
    let mut hosts = Grid::new(&[
        ("WAVE", Fit::Whole),
        ("HOST", Fit::Whole),
        ("APP", Fit::Whole),
        ("FROM", Fit::Whole),
        ("PLAN", Fit::Cut),
    ]);
    for host in &rollout.hosts {
        let plan = match host.outcome {
            "pending" => format!("upgrade to {}", rollout.target_version),
            "succeeded" => format!("no command: {}", host.message),
            _ => format!("{}: {}", host.outcome, host.message),
        };
        let wave = if host.outcome == "pending" {
            host.wave.to_string()
        } else {
            "-".into()
        };
        hosts.row(vec![
            wave,
            host.host_id.clone(),
            host.domain.clone(),
            or_dash(&host.from_version),
            plan,
        ]);
    }
    hosts
}

/// Why no host of a just-started (or planned) rollout has anything to do,
/// or `None` when some host has a command coming: one phrase per distinct
/// reason, with how many hosts it applies to.
pub fn nothing_to_do(rollout: &RolloutJson) -> Option<String> {
    if rollout
        .hosts
        .iter()
        .any(|host| matches!(host.outcome, "pending" | "dispatched" | "upgrading"))
    {
        return None;
    }
    let mut reasons: Vec<(String, usize)> = Vec::new();
    for host in &rollout.hosts {
        let reason = match host.outcome {
            "succeeded" if host.message.is_empty() => "already at the target".to_owned(),
            "succeeded" => host.message.clone(),
            outcome => format!("{outcome}: {}", host.message),
        };
        match reasons.iter_mut().find(|(known, _)| *known == reason) {
            Some((_, count)) => *count += 1,
            None => reasons.push((reason, 1)),
        }
    }
    let reasons: Vec<String> = reasons
        .into_iter()
        .map(|(reason, count)| format!("{count} host(s) {reason}"))
        .collect();
    Some(if reasons.is_empty() {
        "no host takes part".to_owned()
    } else {
        reasons.join("; ")
    })
}

pub fn dry_run_table(rollout: &RolloutJson) -> String {
    format!(
        "dry run: {} to {}; nothing was started\n{}",
        printable(&rollout.recipe),
        printable(&rollout.target_version),
        dry_run_grid(rollout).render(terminal_width())
    )
}

pub fn rollouts_grid(rollouts: &[RolloutJson]) -> Grid {
    let mut listing = Grid::new(&[
        ("ID", Fit::Whole),
        ("RECIPE", Fit::Whole),
        ("TARGET", Fit::Whole),
        ("STATE", Fit::Whole),
        ("HOSTS", Fit::Cut),
        ("CREATED", Fit::Whole),
        ("BY", Fit::Whole),
    ]);
    for rollout in rollouts {
        listing.row(vec![
            rollout.id.clone(),
            rollout.recipe.clone(),
            rollout.target_version.clone(),
            rollout.state.to_owned(),
            counts(rollout),
            or_dash(&rollout.created_at),
            rollout.created_by.clone(),
        ]);
    }
    listing
}

pub fn rollouts_table(rollouts: &[RolloutJson]) -> String {
    rollouts_grid(rollouts).render(terminal_width())
}

pub fn audit_grid(entries: &[AuditJson]) -> Grid {
    let mut listing = Grid::new(&[
        ("AT", Fit::Whole),
        ("WHO", Fit::Whole),
        ("ACTION", Fit::Whole),
        ("TARGET", Fit::Whole),
        ("DETAIL", Fit::Cut),
    ]);
    for entry in entries {
        listing.row(vec![
            or_dash(&entry.at),
            entry.who.clone(),
            entry.action.clone(),
            entry.target.clone(),
            entry.detail.clone(),
        ]);
    }
    listing
}

pub fn audit_table(entries: &[AuditJson]) -> String {
    audit_grid(entries).render(terminal_width())
}

/// What changed between two snapshots, as progress lines for people.
pub fn progress_lines(previous: Option<&RolloutJson>, current: &RolloutJson) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(previous) = previous else {
        lines.push(summary(current));
        for host in current.hosts.iter().filter(|host| host.outcome != "pending") {
            lines.push(host_line(host));
        }
        return lines;
    };
    for host in &current.hosts {
        let before = previous
            .hosts
            .iter()
            .find(|old| old.host_id == host.host_id && old.domain == host.domain);
        if before.is_none_or(|before| before.outcome != host.outcome || before.message != host.message) {
            lines.push(host_line(host));
        }
    }
    if previous.state != current.state || previous.reason != current.reason {
        let mut line = format!("rollout {} {}", printable(&current.id), current.state);
        if !current.reason.is_empty() {
            line.push_str(&format!(": {}", printable(&current.reason)));
        }
        lines.push(line);
    }
    lines
}

/// What one change of a followed rollout shows, in as many steps as it
/// changed hosts (a large rollout is not walked per change): a line for each
/// host at `positions` whose outcome or message differs from `before` (its
/// record before the change, by position; a host not there is new), then the
/// rollout's state when it or the reason changed from `previous` (state,
/// reason).
pub fn change_lines(
    before: &std::collections::BTreeMap<usize, pb::RolloutHost>,
    previous: (i32, &str),
    current: &pb::Rollout,
    positions: &[usize],
) -> Vec<String> {
    let mut lines = Vec::new();
    for &position in positions {
        let Some(host) = current.hosts.get(position) else {
            continue;
        };
        let old = before.get(&position);
        if old.is_none_or(|old| old.outcome != host.outcome || old.message != host.message) {
            lines.push(host_line(&host_json(host)));
        }
    }
    if previous.0 != current.state || previous.1 != current.reason {
        let mut line = format!("rollout {} {}", printable(&current.id), rollout_state(current.state));
        if !current.reason.is_empty() {
            line.push_str(&format!(": {}", printable(&current.reason)));
        }
        lines.push(line);
    }
    lines
}

fn host_line(host: &RolloutHostJson) -> String {
    // "2026-11-30T06:55:11Z" -> "06:55:11"
    let at = host
        .updated_at
        .as_deref()
        .and_then(|at| at.get(11..19))
        .unwrap_or("--:--:--");
    let mut line = format!(
        "{at}  wave {}  {}  {}  {} -> {}  {}",
        host.wave,
        printable(&host.host_id),
        printable(&host.domain),
        printable(&or_dash(&host.from_version)),
        printable(&or_dash(&host.to_version)),
        host.outcome
    );
    if !host.message.is_empty() {
        line.push_str(&format!("  ({})", printable(&host.message)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_show_what_changed() {
        let host = |outcome: &'static str, message: &str| RolloutHostJson {
            host_id: "web-1".into(),
            domain: "blog.example.org".into(),
            wave: 0,
            outcome,
            from_version: Some("1.0.0".into()),
            to_version: None,
            running_version: None,
            message: message.into(),
            updated_at: None,
        };
        let rollout = |state, hosts| RolloutJson {
            id: "ghost-1".into(),
            recipe: "ghost".into(),
            target_version: "1.1.0".into(),
            state,
            current_wave: 0,
            reason: String::new(),
            created_by: "admin".into(),
            canary_gate: "none",
            paused_by_operator: false,
            created_at: None,
            updated_at: None,
            strategy: StrategyJson {
                canary: "1".into(),
                batch: "25%".into(),
                max_failures: 1,
                max_failure_ratio: 0.0,
                pause_after_canary: false,
                wave_interval_seconds: 0,
                host_deadline_seconds: 900,
                progress_deadline_seconds: 0,
                rollback_on_halt: false,
                allow_major: false,
            },
            hosts,
        };
        let first = rollout("running", vec![host("dispatched", "")]);
        let second = rollout("completed", vec![host("failed", "unhealthy\u{7}")]);
        assert_eq!(
            progress_lines(Some(&first), &second),
            [
                "--:--:--  wave 0  web-1  blog.example.org  1.0.0 -> -  failed  (unhealthy\\u{7})",
                "rollout ghost-1 completed"
            ]
        );
        assert!(progress_lines(Some(&second), &second).is_empty());

        // The same from the changes a watch sends: only the changed positions.
        let wire_host = |outcome: pb::HostOutcome, message: &str| pb::RolloutHost {
            host_id: "web-1".into(),
            domain: "blog.example.org".into(),
            from_version: "1.0.0".into(),
            outcome: outcome as i32,
            message: message.into(),
            ..Default::default()
        };
        let before: std::collections::BTreeMap<usize, pb::RolloutHost> =
            [(1, wire_host(pb::HostOutcome::Dispatched, ""))].into();
        let current = pb::Rollout {
            id: "ghost-1".into(),
            state: pb::RolloutState::Completed as i32,
            hosts: vec![
                wire_host(pb::HostOutcome::Pending, ""),
                wire_host(pb::HostOutcome::Failed, "unhealthy\u{7}"),
            ],
            ..Default::default()
        };
        let running = (pb::RolloutState::Running as i32, "");
        assert_eq!(
            change_lines(&before, running, &current, &[1]),
            [
                "--:--:--  wave 0  web-1  blog.example.org  1.0.0 -> -  failed  (unhealthy\\u{7})",
                "rollout ghost-1 completed"
            ]
        );
        let unchanged: std::collections::BTreeMap<usize, pb::RolloutHost> = [(1, current.hosts[1].clone())].into();
        let completed = (pb::RolloutState::Completed as i32, "");
        assert!(change_lines(&unchanged, completed, &current, &[1]).is_empty());
        // A position the change did not name is not looked at.
        assert!(change_lines(&before, completed, &current, &[]).is_empty());

        let hold = |state, canary_gate, paused_by_operator| {
            hold_line(&RolloutJson {
                canary_gate,
                paused_by_operator,
                ..rollout(state, vec![])
            })
        };
        let cases = [
            ("running", "none", false, None),
            (
                "paused",
                "closed",
                false,
                Some("canary gate closed (`ccfleet rollout promote ghost-1`)"),
            ),
            (
                "paused",
                "open",
                true,
                Some("canary gate open; paused by an operator (`ccfleet rollout resume ghost-1`)"),
            ),
            ("running", "open", false, Some("canary gate open")),
            ("aborted", "closed", true, None),
        ];
        for (state, gate, paused, expect) in cases {
            assert_eq!(hold(state, gate, paused).as_deref(), expect, "{state} {gate} {paused}");
        }
    }

    #[test]
    fn a_rollout_with_nothing_to_do_says_why_per_reason() {
        let host = |host_id: &str, outcome: &'static str, message: &str| RolloutHostJson {
            host_id: host_id.into(),
            domain: format!("blog.{host_id}.example.org"),
            wave: 0,
            outcome,
            from_version: Some("1.0.0".into()),
            to_version: None,
            running_version: None,
            message: message.into(),
            updated_at: None,
        };
        let major = "1.0.0 to 2.0.0 is a major upgrade; it needs --major";
        let check = |hosts: Vec<RolloutHostJson>| {
            nothing_to_do(&RolloutJson {
                id: String::new(),
                recipe: "ghost".into(),
                target_version: "2.0.0".into(),
                state: "completed",
                canary_gate: "none",
                paused_by_operator: false,
                current_wave: 0,
                reason: String::new(),
                created_by: "admin".into(),
                created_at: None,
                updated_at: None,
                strategy: StrategyJson {
                    canary: "1".into(),
                    batch: "1".into(),
                    max_failures: 1,
                    max_failure_ratio: 0.0,
                    pause_after_canary: false,
                    wave_interval_seconds: 0,
                    host_deadline_seconds: 900,
                    progress_deadline_seconds: 0,
                    rollback_on_halt: false,
                    allow_major: false,
                },
                hosts,
            })
        };
        assert_eq!(
            check(vec![
                host("web-1", "skipped", major),
                host("web-2", "skipped", major),
                host("web-3", "succeeded", "already at 2.0.0"),
                host("web-4", "skipped", "pinned by host configuration"),
            ])
            .as_deref(),
            Some(
                "2 host(s) skipped: 1.0.0 to 2.0.0 is a major upgrade; it needs --major; \
                 1 host(s) already at 2.0.0; 1 host(s) skipped: pinned by host configuration"
            )
        );
        assert_eq!(
            check(vec![host("web-1", "pending", ""), host("web-2", "skipped", major)]),
            None
        );
        assert_eq!(check(vec![host("web-1", "dispatched", "")]), None);
    }
}

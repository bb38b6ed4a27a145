//! `ccfleet upgrade`, `ccfleet rollout ...` and `ccfleet audit`: staged
//! rollouts over the Admin API, their live progress (`--follow`), and the
//! audit log. The JSON documents here are part of the CLI's interface.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use ccfleet_proto::pb::{self, admin_client::AdminClient};
use ccfleet_proto::{CoopVersion, RecipeName};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;
use tonic::transport::Channel;

use crate::exit::Failure;

/// Defaults and exit codes, shown in `ccfleet upgrade --help`.
pub const UPGRADE_HELP: &str = "\
Defaults: a canary wave of 1 host (the first hosts in host-id order that take part; choose them
with --canary-hosts), then batches of 25 % of the hosts; the rollout halts at the first failed
host (--max-failures 1; failures and percentages count hosts, not apps); each host has 15 minutes (--host-deadline); no wave
interval and no progress deadline. Hosts that are offline at the start, and apps their host pins
(fleetManaged = false), are skipped with the reason; apps already at or above the target succeed
without a command. Without --to, the target is the newest version that more than half of the
selected hosts running the recipe report available (a host reporting a version counts for it
and every older one); without such a majority the upgrade is refused and lists the candidates
with how many hosts report each. --dry-run prints the plan; wave 0 is the canary.

With --follow, the exit code tells how the rollout ended:
  0  completed
  6  halted (the failure budget or the progress deadline was reached)
  7  aborted";

/// `ccfleet upgrade`.
#[derive(Args)]
pub struct UpgradeArgs {
    /// The recipe, e.g. `ghost`.
    recipe: RecipeName,
    /// Target version [default: the newest version a majority of the selected hosts running the recipe report as available, same major unless --major].
    #[arg(long)]
    to: Option<CoopVersion>,
    /// Hosts in the canary (first) wave: a count `N` or a percentage `P%`.
    #[arg(long, default_value = "1", value_parser = parse_quantity)]
    canary: Quantity,
    /// The canary wave is these hosts (those taking part that match): a host id or a `key=value` label (repeatable; overrides --canary).
    #[arg(long = "canary-hosts", value_name = "SELECTOR")]
    canary_hosts: Vec<String>,
    /// Hosts in each following wave: `N` or `P%`.
    #[arg(long, default_value = "25%", value_parser = parse_quantity)]
    batch: Quantity,
    /// Halt when this many hosts failed (`N`) or this share of them (`P%`).
    #[arg(long, default_value = "1", value_parser = parse_quantity)]
    max_failures: Quantity,
    /// Wait after the canary wave until `ccfleet rollout promote ID`.
    #[arg(long)]
    pause_after_canary: bool,
    /// Wait this long between waves, e.g. 5m.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    wave_interval: Duration,
    /// Time each host has to report its result; after it the host counts as failed (timed out).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    host_deadline: Duration,
    /// Halt when no host makes progress for this long (0s: never).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    progress_deadline: Duration,
    /// When the rollout halts, send the hosts that upgraded back to their previous version.
    #[arg(long)]
    rollback_on_halt: bool,
    /// Allow a major upgrade (the recipe's semver major changes).
    #[arg(long)]
    major: bool,
    /// Only these hosts: a host id or a `key=value` label (repeatable; a host matching any takes part).
    #[arg(long = "hosts", value_name = "SELECTOR")]
    hosts: Vec<String>,
    /// Print the waves (host, app, from version) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print progress until the rollout ends; the exit code tells how it ended.
    #[arg(long)]
    follow: bool,
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// List rollouts, newest first.
    Ls {
        /// Only rollouts of this recipe.
        #[arg(long)]
        recipe: Option<RecipeName>,
    },
    /// Show a rollout and every host's outcome.
    Show {
        id: String,
        /// Print progress until the rollout ends (exit codes as for `upgrade --follow`).
        #[arg(long)]
        follow: bool,
    },
    /// Stop dispatching new waves; hosts in flight finish.
    Pause {
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Continue a paused rollout (the canary gate still needs promote).
    Resume {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Open the canary gate, or skip the rest of a wave interval. A pause still wins.
    Promote {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// End the rollout for good; hosts in flight finish, nothing else is sent.
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `ccfleet audit`.
#[derive(Args)]
pub struct AuditArgs {
    /// Only entries from this long ago until now, e.g. 24h, 7d.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// At most this many entries.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantity {
    Count(u32),
    Percent(u32),
}

fn parse_quantity(text: &str) -> Result<Quantity, String> {
    let invalid = || format!("{text:?} must be a count (`3`) or a percentage from 1% to 100% (`25%`)");
    if let Some(percent) = text.strip_suffix('%') {
        let percent: u32 = percent.parse().map_err(|_| invalid())?;
        if !(1..=100).contains(&percent) {
            return Err(invalid());
        }
        return Ok(Quantity::Percent(percent));
    }
    let count: u32 = text.parse().map_err(|_| invalid())?;
    if count == 0 {
        return Err(format!("{text:?}: a count must be at least 1"));
    }
    Ok(Quantity::Count(count))
}

fn quantity_wire(quantity: Quantity) -> pb::HostQuantity {
    pb::HostQuantity {
        quantity: Some(match quantity {
            Quantity::Count(count) => pb::host_quantity::Quantity::Count(count),
            Quantity::Percent(percent) => pb::host_quantity::Quantity::Percent(percent),
        }),
    }
}

fn seconds(duration: Duration) -> u32 {
    duration.as_secs().min(u64::from(u32::MAX)) as u32
}

/// Text from the server made safe for a terminal: control characters are
/// shown escaped, never interpreted. (A local copy: `output::printable` is
/// being added on another branch; the lead may merge the two.)
pub fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for character in text.chars() {
        if character.is_control()
            || matches!(character, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
        {
            shown.extend(character.escape_unicode());
        } else {
            shown.push(character);
        }
    }
    shown
}

// --- JSON documents ---------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutHostJson {
    pub host_id: String,
    pub domain: String,
    /// 0 is the canary wave.
    pub wave: u32,
    /// pending, dispatched, upgrading, succeeded, rolled_back, held, failed, skipped, timed_out.
    pub outcome: &'static str,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
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

fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    let timestamp = timestamp?;
    let time = std::time::UNIX_EPOCH + Duration::new(timestamp.seconds.max(0) as u64, 0);
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn outcome_name(value: i32) -> &'static str {
    match pb::HostOutcome::try_from(value) {
        Ok(pb::HostOutcome::Pending) => "pending",
        Ok(pb::HostOutcome::Dispatched) => "dispatched",
        Ok(pb::HostOutcome::Upgrading) => "upgrading",
        Ok(pb::HostOutcome::Succeeded) => "succeeded",
        Ok(pb::HostOutcome::RolledBack) => "rolled_back",
        Ok(pb::HostOutcome::Held) => "held",
        Ok(pb::HostOutcome::Failed) => "failed",
        Ok(pb::HostOutcome::Skipped) => "skipped",
        Ok(pb::HostOutcome::TimedOut) => "timed_out",
        _ => "unknown",
    }
}

fn state_name(value: i32) -> &'static str {
    match pb::RolloutState::try_from(value) {
        Ok(pb::RolloutState::Running) => "running",
        Ok(pb::RolloutState::Paused) => "paused",
        Ok(pb::RolloutState::Completed) => "completed",
        Ok(pb::RolloutState::Halted) => "halted",
        Ok(pb::RolloutState::Aborted) => "aborted",
        _ => "unknown",
    }
}

fn quantity_text(quantity: Option<&pb::HostQuantity>) -> String {
    match quantity.and_then(|quantity| quantity.quantity) {
        Some(pb::host_quantity::Quantity::Count(count)) => count.to_string(),
        Some(pb::host_quantity::Quantity::Percent(percent)) => format!("{percent}%"),
        None => "-".into(),
    }
}

pub fn rollout_json(rollout: &pb::Rollout) -> RolloutJson {
    let strategy = rollout.strategy.unwrap_or_default();
    RolloutJson {
        id: rollout.id.clone(),
        recipe: rollout.recipe.clone(),
        target_version: rollout.target_version.clone(),
        state: state_name(rollout.state),
        current_wave: rollout.current_wave,
        reason: rollout.reason.clone(),
        created_by: rollout.created_by.clone(),
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
        hosts: rollout
            .hosts
            .iter()
            .map(|host| RolloutHostJson {
                host_id: host.host_id.clone(),
                domain: host.domain.clone(),
                wave: host.wave,
                outcome: outcome_name(host.outcome),
                from_version: non_empty(&host.from_version),
                to_version: non_empty(&host.to_version),
                message: host.message.clone(),
                updated_at: time(host.updated_at.as_ref()),
            })
            .collect(),
    }
}

// --- tables -----------------------------------------------------------------

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    table
}

fn row(table: &mut Table, cells: Vec<String>) {
    table.add_row(cells.iter().map(|cell| printable(cell)).collect::<Vec<_>>());
}

fn or_dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}

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

fn summary(rollout: &RolloutJson) -> String {
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
    if !rollout.reason.is_empty() {
        text.push_str(&format!("\nreason: {}", printable(&rollout.reason)));
    }
    text
}

pub fn rollout_table(rollout: &RolloutJson) -> String {
    let mut hosts = table(&["WAVE", "HOST", "APP", "FROM", "TO", "OUTCOME", "MESSAGE"]);
    for host in &rollout.hosts {
        row(
            &mut hosts,
            vec![
                host.wave.to_string(),
                host.host_id.clone(),
                host.domain.clone(),
                or_dash(&host.from_version),
                or_dash(&host.to_version),
                host.outcome.to_owned(),
                host.message.clone(),
            ],
        );
    }
    format!("{}\n{hosts}", summary(rollout))
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
    let mut hosts = table(&["WAVE", "HOST", "APP", "FROM", "PLAN"]);
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
        row(
            &mut hosts,
            vec![
                wave,
                host.host_id.clone(),
                host.domain.clone(),
                or_dash(&host.from_version),
                plan,
            ],
        );
    }
    format!(
        "dry run: {} to {}; nothing was started\n{hosts}",
        printable(&rollout.recipe),
        printable(&rollout.target_version)
    )
}

fn rollouts_table(rollouts: &[RolloutJson]) -> String {
    let mut listing = table(&["ID", "RECIPE", "TARGET", "STATE", "HOSTS", "CREATED", "BY"]);
    for rollout in rollouts {
        row(
            &mut listing,
            vec![
                rollout.id.clone(),
                rollout.recipe.clone(),
                rollout.target_version.clone(),
                rollout.state.to_owned(),
                counts(rollout),
                or_dash(&rollout.created_at),
                rollout.created_by.clone(),
            ],
        );
    }
    listing.to_string()
}

fn audit_table(entries: &[AuditJson]) -> String {
    let mut listing = table(&["AT", "WHO", "ACTION", "TARGET", "DETAIL"]);
    for entry in entries {
        row(
            &mut listing,
            vec![
                or_dash(&entry.at),
                entry.who.clone(),
                entry.action.clone(),
                entry.target.clone(),
                entry.detail.clone(),
            ],
        );
    }
    listing.to_string()
}

// --- commands ---------------------------------------------------------------

fn render<T: Serialize>(json: bool, value: &T, table: impl FnOnce() -> String) -> String {
    if json {
        serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
    } else {
        table() + "\n"
    }
}

pub async fn upgrade(
    client: &mut AdminClient<Channel>,
    args: UpgradeArgs,
    json: bool,
    failure: impl Fn(tonic::Status) -> Failure,
) -> Result<String, Failure> {
    let (max_failures, max_failure_ratio) = match args.max_failures {
        Quantity::Count(count) => (count, 0.0),
        Quantity::Percent(percent) => (0, f64::from(percent) / 100.0),
    };
    let request = pb::StartRolloutRequest {
        recipe: args.recipe.to_string(),
        version: args.to.map(|version| version.to_string()).unwrap_or_default(),
        strategy: Some(pb::RolloutStrategy {
            canary: Some(quantity_wire(args.canary)),
            batch: Some(quantity_wire(args.batch)),
            max_failures,
            max_failure_ratio,
            pause_after_canary: args.pause_after_canary,
            wave_interval_seconds: seconds(args.wave_interval),
            host_deadline_seconds: seconds(args.host_deadline).max(1),
            progress_deadline_seconds: seconds(args.progress_deadline),
            rollback_on_halt: args.rollback_on_halt,
            allow_major: args.major,
        }),
        host_selectors: args.hosts,
        dry_run: args.dry_run,
        canary_hosts: args.canary_hosts,
    };
    let rollout = client.start_rollout(request).await.map_err(&failure)?.into_inner();
    let started = rollout_json(&rollout);
    let idle = nothing_to_do(&started);
    if args.dry_run {
        return Ok(render(json, &started, || match &idle {
            Some(why) => format!("{}\nnothing would be done: {}", dry_run_table(&started), printable(why)),
            None => dry_run_table(&started),
        }));
    }
    if let Some(why) = idle {
        // The rollout is stored (and completed at once); say what it found,
        // then fail: "completed" would read as if something had moved.
        print!("{}", render(json, &started, || rollout_table(&started)));
        return Err(Failure::NothingToDo(format!(
            "rollout {} has nothing to do: {why}",
            started.id
        )));
    }
    if args.follow {
        return follow(client, &rollout.id, json, failure).await;
    }
    Ok(render(json, &started, || rollout_table(&started)))
}

pub async fn rollout(
    client: &mut AdminClient<Channel>,
    command: RolloutCommand,
    json: bool,
    failure: impl Fn(tonic::Status) -> Failure,
) -> Result<String, Failure> {
    let action = |id: String, reason: Option<String>| pb::RolloutActionRequest {
        id,
        reason: reason.unwrap_or_default(),
    };
    let rollout = match command {
        RolloutCommand::Ls { recipe } => {
            let request = pb::ListRolloutsRequest {
                recipe: recipe.map(String::from).unwrap_or_default(),
            };
            let response = client.list_rollouts(request).await.map_err(&failure)?.into_inner();
            let rollouts: Vec<_> = response.rollouts.iter().map(rollout_json).collect();
            return Ok(render(json, &rollouts, || rollouts_table(&rollouts)));
        }
        RolloutCommand::Show { id, follow: true } => return follow(client, &id, json, failure).await,
        RolloutCommand::Show { id, follow: false } => client.get_rollout(pb::GetRolloutRequest { id }).await,
        RolloutCommand::Pause { id, reason } => client.pause_rollout(action(id, reason)).await,
        RolloutCommand::Resume { id, reason } => client.resume_rollout(action(id, reason)).await,
        RolloutCommand::Promote { id, reason } => client.promote_rollout(action(id, reason)).await,
        RolloutCommand::Abort { id, reason } => client.abort_rollout(action(id, reason)).await,
    };
    let rollout = rollout_json(&rollout.map_err(&failure)?.into_inner());
    Ok(render(json, &rollout, || rollout_table(&rollout)))
}

pub async fn audit(
    client: &mut AdminClient<Channel>,
    args: AuditArgs,
    json: bool,
    failure: impl Fn(tonic::Status) -> Failure,
) -> Result<String, Failure> {
    let since = args.since.map(|since| {
        let at = std::time::SystemTime::now()
            .checked_sub(since)
            .unwrap_or(std::time::UNIX_EPOCH)
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        prost_types::Timestamp {
            seconds: at.as_secs() as i64,
            nanos: 0,
        }
    });
    let response = client
        .list_audit(pb::ListAuditRequest {
            since,
            limit: args.limit,
        })
        .await
        .map_err(&failure)?
        .into_inner();
    let entries: Vec<AuditJson> = response
        .entries
        .into_iter()
        .map(|entry| AuditJson {
            at: time(entry.at.as_ref()),
            who: entry.who,
            action: entry.action,
            target: entry.target,
            detail: entry.detail,
        })
        .collect();
    Ok(render(json, &entries, || audit_table(&entries)))
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
        or_dash(&host.from_version),
        or_dash(&host.to_version),
        host.outcome
    );
    if !host.message.is_empty() {
        line.push_str(&format!("  ({})", printable(&host.message)));
    }
    line
}

/// Streams `WatchRollout` until the rollout ends, printing as it goes; the
/// final state decides the exit code.
async fn follow(
    client: &mut AdminClient<Channel>,
    id: &str,
    json: bool,
    failure: impl Fn(tonic::Status) -> Failure,
) -> Result<String, Failure> {
    let mut stream = client
        .watch_rollout(pb::GetRolloutRequest { id: id.to_owned() })
        .await
        .map_err(&failure)?
        .into_inner();
    let mut last: Option<RolloutJson> = None;
    let stdout = std::io::stdout();
    while let Some(rollout) = stream.message().await.map_err(&failure)? {
        let current = rollout_json(&rollout);
        let mut out = stdout.lock();
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(&current).unwrap_or_default());
        } else {
            for line in progress_lines(last.as_ref(), &current) {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
        last = Some(current);
    }
    let Some(last) = last else {
        return Err(Failure::Unexpected("the server ended the watch without a state".into()));
    };
    match last.state {
        "completed" => Ok(if json { String::new() } else { format!("{}\n", summary(&last)) }),
        "halted" => Err(Failure::Halted(format!("rollout {} halted: {}", last.id, printable(&last.reason)))),
        "aborted" => Err(Failure::Aborted(format!("rollout {} was {}", last.id, printable(&last.reason)))),
        state => Err(Failure::Unreachable(format!(
            "the watch of rollout {} ended while it was {state}; follow it again with `ccfleet rollout show {} --follow`",
            last.id, last.id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_counts_and_percentages() {
        let check = |text, expect: Result<Quantity, &str>| {
            assert_eq!(parse_quantity(text), expect.map_err(str::to_owned), "{text}");
        };
        check("1", Ok(Quantity::Count(1)));
        check("25%", Ok(Quantity::Percent(25)));
        check("100%", Ok(Quantity::Percent(100)));
        check("0", Err("\"0\": a count must be at least 1"));
        check(
            "0%",
            Err("\"0%\" must be a count (`3`) or a percentage from 1% to 100% (`25%`)"),
        );
        check(
            "101%",
            Err("\"101%\" must be a count (`3`) or a percentage from 1% to 100% (`25%`)"),
        );
        check(
            "x",
            Err("\"x\" must be a count (`3`) or a percentage from 1% to 100% (`25%`)"),
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("ok\u{1b}[31mred\n"), "ok\\u{1b}[31mred\\u{a}");
        assert_eq!(printable("blog.example.org"), "blog.example.org");
    }

    #[test]
    fn progress_lines_show_what_changed() {
        let host = |outcome: &'static str, message: &str| RolloutHostJson {
            host_id: "web-1".into(),
            domain: "blog.example.org".into(),
            wave: 0,
            outcome,
            from_version: Some("1.0.0".into()),
            to_version: None,
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

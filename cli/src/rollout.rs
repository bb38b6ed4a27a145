//! `ccfleet upgrade`, `ccfleet rollout ...` and `ccfleet audit`: staged
//! rollouts over the Admin API, their live progress (`--follow`), and the
//! audit log. The JSON documents here are part of the CLI's interface.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use ccfleet_proto::pb::{self, admin_client::AdminClient};
use ccfleet_proto::watch::FollowedRollout;
use ccfleet_proto::{CoopVersion, RecipeName};
use clap::{Args, Subcommand};
use tonic::transport::Channel;

use crate::exit::Failure;
use crate::output::rollout::{
    audit_table, change_lines, dry_run_table, nothing_to_do, progress_lines, rollout_json, rollout_table,
    rollouts_table, summary, AuditJson,
};
use crate::output::{printable, render, time};

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

// --- commands ---------------------------------------------------------------

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

/// Streams `WatchRolloutChanges` until the rollout ends, printing as it
/// goes: each change names the hosts it changed, so following a rollout of
/// 10,000 hosts costs per change what changed, not the fleet. The final state
/// decides the exit code.
async fn follow(
    client: &mut AdminClient<Channel>,
    id: &str,
    json: bool,
    failure: impl Fn(tonic::Status) -> Failure,
) -> Result<String, Failure> {
    let mut stream = client
        .watch_rollout_changes(pb::GetRolloutRequest { id: id.to_owned() })
        .await
        .map_err(&failure)?
        .into_inner();
    let mut followed = FollowedRollout::new();
    let stdout = std::io::stdout();
    while let Some(change) = stream.message().await.map_err(&failure)? {
        let previous = followed
            .current()
            .map(|rollout| (rollout.state, rollout.reason.clone()));
        // The changed hosts as they were (every host, for a whole rollout
        // sent again after the watch fell behind).
        let before: BTreeMap<usize, pb::RolloutHost> = match followed.current() {
            None => BTreeMap::new(),
            Some(rollout) if change.whole => rollout.hosts.iter().cloned().enumerate().collect(),
            Some(rollout) => change
                .hosts
                .iter()
                .filter_map(|changed| {
                    let position = changed.position as usize;
                    Some((position, rollout.hosts.get(position)?.clone()))
                })
                .collect(),
        };
        let positions = followed
            .apply(change)
            .map_err(|error| Failure::Unexpected(format!("the watch of rollout {id} sent {error}")))?;
        let Some(current) = followed.current() else {
            continue;
        };
        let mut out = stdout.lock();
        if json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string(&rollout_json(current)).unwrap_or_default()
            );
        } else {
            let lines = match &previous {
                None => progress_lines(None, &rollout_json(current)),
                Some((state, reason)) => change_lines(&before, (*state, reason), current, &positions),
            };
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
    }
    let last = followed.current().map(rollout_json);
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
}

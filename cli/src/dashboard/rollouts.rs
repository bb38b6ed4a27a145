//! The rollout pages: the list, the live detail (server-sent events fed by
//! the server's `WatchRolloutChanges` stream) and the actions (pause, resume,
//! promote, abort), each behind a confirmation page and the CSRF token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use ccfleet_proto::pb;
use ccfleet_proto::watch::FollowedRollout;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::frame::{frame, or_dash, page, Frame, PageError};
use super::model::{self, Progress};
use super::security::same_secret;
use super::Dashboard;

type Shared = State<Arc<Dashboard>>;

pub struct RolloutRow {
    pub id: String,
    pub recipe: String,
    pub target_version: String,
    pub state: &'static str,
    pub done: usize,
    pub failed: usize,
    pub total: usize,
    pub created_by: String,
    pub created_at: String,
}

fn counts(rollout: &pb::Rollout) -> (usize, usize, usize) {
    let mut done = 0;
    let mut failed = 0;
    for host in &rollout.hosts {
        match model::progress_of(model::host_outcome(host.outcome)) {
            Progress::Done => done += 1,
            Progress::Failed => failed += 1,
            Progress::Pending => {}
        }
    }
    (done, failed, rollout.hosts.len())
}

#[derive(Template)]
#[template(path = "dashboard/rollouts.html")]
struct RolloutsPage {
    frame: Frame,
    rows: Vec<RolloutRow>,
}

pub async fn list(State(dashboard): Shared) -> Result<Response, PageError> {
    let response = dashboard
        .client
        .clone()
        .list_rollouts(pb::ListRolloutsRequest::default())
        .await?
        .into_inner();
    let rows = response
        .rollouts
        .iter()
        .map(|rollout| {
            let (done, failed, total) = counts(rollout);
            RolloutRow {
                id: rollout.id.clone(),
                recipe: rollout.recipe.clone(),
                target_version: rollout.target_version.clone(),
                state: model::rollout_state(rollout.state),
                done,
                failed,
                total,
                created_by: rollout.created_by.clone(),
                created_at: model::time(rollout.created_at.as_ref()).unwrap_or_else(|| "-".into()),
            }
        })
        .collect();
    page(RolloutsPage {
        frame: frame(&dashboard, "Rollouts", "rollouts"),
        rows,
    })
}

pub struct RolloutHostRow {
    pub host_id: String,
    pub domain: String,
    pub outcome: &'static str,
    pub progress: &'static str,
    pub from_version: String,
    pub to_version: String,
    pub message: String,
    pub updated_at: String,
}

pub struct Wave {
    pub number: u32,
    pub name: String,
    pub current: bool,
    pub hosts: Vec<RolloutHostRow>,
}

/// The live part of a rollout's page, rendered again for every update the
/// watch stream brings.
#[derive(Template)]
#[template(path = "dashboard/rollout_body.html")]
pub struct RolloutBody {
    id: String,
    recipe: String,
    target_version: String,
    state: &'static str,
    sentence: String,
    reason: String,
    created_by: String,
    created_at: String,
    updated_at: String,
    done: usize,
    failed: usize,
    pending: usize,
    total: usize,
    settled: usize,
    canary: String,
    batch: String,
    budget: String,
    pause_after_canary: bool,
    wave_interval: u32,
    host_deadline: u32,
    progress_deadline: u32,
    rollback_on_halt: bool,
    actions: Vec<(&'static str, &'static str)>,
    waves: Vec<Wave>,
    lines: [String; 3],
    chart_width: u32,
    chart_height: u32,
    chart_span: String,
}

fn quantity(quantity: Option<&pb::HostQuantity>) -> String {
    match quantity.and_then(|quantity| quantity.quantity) {
        Some(pb::host_quantity::Quantity::Count(count)) => format!("{count} host(s)"),
        Some(pb::host_quantity::Quantity::Percent(percent)) => format!("{percent}% of hosts"),
        None => "-".into(),
    }
}

/// The rollout's state in one plain sentence.
pub fn state_sentence(state: &str, current_wave: u32, waves: u32, pause_after_canary: bool, reason: &str) -> String {
    let wave = if current_wave == 0 {
        "the canary wave".to_owned()
    } else {
        format!("wave {} of {}", current_wave + 1, waves)
    };
    match state {
        "running" if current_wave == 0 && pause_after_canary => {
            format!("Running {wave}; it stops after this wave until someone promotes it.")
        }
        "running" => format!("Running {wave}."),
        "paused" => format!(
            "Paused at {wave}: no host is sent an upgrade until the rollout is resumed (hosts in flight finish). \
             Promote opens the canary gate."
        ),
        "completed" => "Completed: every host has its result.".into(),
        "halted" => format!("Halted: {reason}"),
        "aborted" => format!("Aborted: {reason}"),
        other => format!("State {other}."),
    }
}

pub fn rollout_body(rollout: &pb::Rollout, now: SystemTime) -> RolloutBody {
    let strategy = rollout.strategy.unwrap_or_default();
    let state = model::rollout_state(rollout.state);
    let (done, failed, total) = counts(rollout);
    let wave_count = rollout.hosts.iter().map(|host| host.wave + 1).max().unwrap_or(0);
    let mut waves: Vec<Wave> = (0..wave_count)
        .map(|number| Wave {
            number,
            name: if number == 0 {
                "Wave 1 (canary)".into()
            } else {
                format!("Wave {}", number + 1)
            },
            current: number == rollout.current_wave && (state == "running" || state == "paused"),
            hosts: Vec::new(),
        })
        .collect();
    let mut finished = Vec::new();
    for host in &rollout.hosts {
        let outcome = model::host_outcome(host.outcome);
        let progress = model::progress_of(outcome);
        let updated = host.updated_at.as_ref().map(model::system_time).unwrap_or(now);
        finished.push((progress, updated));
        waves[host.wave as usize].hosts.push(RolloutHostRow {
            host_id: host.host_id.clone(),
            domain: host.domain.clone(),
            outcome,
            progress: match progress {
                Progress::Done => "done",
                Progress::Failed => "failed",
                Progress::Pending => "pending",
            },
            from_version: or_dash(&host.from_version),
            to_version: or_dash(&host.to_version),
            message: host.message.clone(),
            updated_at: model::time(host.updated_at.as_ref()).unwrap_or_else(|| "-".into()),
        });
    }
    let created = rollout.created_at.as_ref().map(model::system_time).unwrap_or(now);
    let end = if state == "running" || state == "paused" {
        now
    } else {
        rollout.updated_at.as_ref().map(model::system_time).unwrap_or(now)
    };
    let series = model::progress_series(created, &finished, end);
    let span = series.last().map(|point| point.at).unwrap_or(0);
    let actions: Vec<(&'static str, &'static str)> = match state {
        "running" => vec![("pause", "Pause"), ("promote", "Promote"), ("abort", "Abort")],
        "paused" => vec![("resume", "Resume"), ("promote", "Promote"), ("abort", "Abort")],
        _ => Vec::new(),
    };
    let budget = match (strategy.max_failures, strategy.max_failure_ratio) {
        (0, ratio) if ratio <= 0.0 => "no failure allowed".to_owned(),
        (count, ratio) if ratio > 0.0 => {
            format!("halts after {count} failed host(s) or {:.0}% of hosts", ratio * 100.0)
        }
        (count, _) => format!("halts after {count} failed host(s)"),
    };
    RolloutBody {
        id: rollout.id.clone(),
        recipe: rollout.recipe.clone(),
        target_version: rollout.target_version.clone(),
        state,
        sentence: state_sentence(
            state,
            rollout.current_wave,
            wave_count,
            strategy.pause_after_canary,
            &rollout.reason,
        ),
        reason: rollout.reason.clone(),
        created_by: rollout.created_by.clone(),
        created_at: model::time(rollout.created_at.as_ref()).unwrap_or_else(|| "-".into()),
        updated_at: model::time(rollout.updated_at.as_ref()).unwrap_or_else(|| "-".into()),
        done,
        failed,
        pending: total - done - failed,
        total,
        settled: done + failed,
        canary: quantity(strategy.canary.as_ref()),
        batch: quantity(strategy.batch.as_ref()),
        budget,
        pause_after_canary: strategy.pause_after_canary,
        wave_interval: strategy.wave_interval_seconds,
        host_deadline: strategy.host_deadline_seconds,
        progress_deadline: strategy.progress_deadline_seconds,
        rollback_on_halt: strategy.rollback_on_halt,
        actions,
        waves,
        lines: model::progress_lines(&series),
        chart_width: model::CHART_WIDTH,
        chart_height: model::CHART_HEIGHT,
        chart_span: humantime::format_duration(std::time::Duration::from_secs(span)).to_string(),
    }
}

#[derive(Template)]
#[template(path = "dashboard/rollout.html")]
struct RolloutPage {
    frame: Frame,
    id: String,
    body: String,
}

pub async fn detail(State(dashboard): Shared, Path(id): Path<String>) -> Result<Response, PageError> {
    let rollout = dashboard
        .client
        .clone()
        .get_rollout(pb::GetRolloutRequest { id: id.clone() })
        .await?
        .into_inner();
    let body = rollout_body(&rollout, SystemTime::now()).render()?;
    page(RolloutPage {
        frame: frame(&dashboard, format!("Rollout {id}"), "rollouts"),
        id,
        body,
    })
}

/// At most one render of a rollout's live part a second: in a wave of a
/// large rollout the server sends hundreds of changes a second, and each
/// render is the whole part (every host's row).
const RENDER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The live part rendered as an event (or the failure to render it).
fn rendered(followed: &FollowedRollout) -> Event {
    let Some(rollout) = followed.current() else {
        return Event::default().event("failure").data("the watch sent no rollout");
    };
    match rollout_body(rollout, SystemTime::now()).render() {
        Ok(html) => Event::default().event("rollout").data(html),
        Err(error) => Event::default()
            .event("failure")
            .data(format!("cannot render the rollout: {error}")),
    }
}

/// Server-sent events for one rollout: the rendered live part as the
/// server's `WatchRolloutChanges` stream changes it (at once, then at most
/// once a second, and its last state); `end` when the stream ends.
pub async fn events(State(dashboard): Shared, Path(id): Path<String>) -> Result<Response, PageError> {
    let mut stream = dashboard
        .client
        .clone()
        .watch_rollout_changes(pb::GetRolloutRequest { id })
        .await?
        .into_inner();
    let (sender, receiver) = mpsc::channel(4);
    let mut stopping = dashboard.stopping.clone();
    tokio::spawn(async move {
        let mut followed = FollowedRollout::new();
        let mut rendered_at: Option<tokio::time::Instant> = None;
        // A change arrived since the last render.
        let mut unsent = false;
        loop {
            let due = rendered_at.map_or_else(tokio::time::Instant::now, |at| at + RENDER_EVERY);
            let event = tokio::select! {
                _ = async { stopping.wait_for(|stopping| *stopping).await.is_ok() } => break,
                _ = tokio::time::sleep_until(due), if unsent => rendered(&followed),
                message = stream.message() => match message {
                    Ok(Some(change)) => {
                        if let Err(error) = followed.apply(change) {
                            let failure = Event::default().event("failure").data(format!("the watch sent {error}"));
                            let _ = sender.send(Ok(failure)).await;
                            break;
                        }
                        if rendered_at.is_some_and(|at| at.elapsed() < RENDER_EVERY) {
                            unsent = true;
                            continue;
                        }
                        rendered(&followed)
                    }
                    Ok(None) => {
                        if unsent {
                            let _ = sender.send(Ok(rendered(&followed))).await;
                        }
                        let _ = sender.send(Ok(Event::default().event("end").data("the rollout's watch ended"))).await;
                        break;
                    }
                    Err(status) => {
                        let _ = sender
                            .send(Ok(Event::default().event("failure").data(format!("the watch failed: {}", status.message()))))
                            .await;
                        break;
                    }
                },
            };
            rendered_at = Some(tokio::time::Instant::now());
            unsent = false;
            if sender.send(Ok(event)).await.is_err() {
                break;
            }
        }
    });
    let events: ReceiverStream<Result<Event, Infallible>> = ReceiverStream::new(receiver);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

// --- actions ------------------------------------------------------------------------

fn action_label(action: &str) -> Option<&'static str> {
    match action {
        "pause" => Some("Pause"),
        "resume" => Some("Resume"),
        "promote" => Some("Promote"),
        "abort" => Some("Abort"),
        _ => None,
    }
}

fn action_explanation(action: &str) -> &'static str {
    match action {
        "pause" => "No host is sent an upgrade until the rollout is resumed; hosts in flight finish.",
        "resume" => "Dispatching continues where it stopped.",
        "promote" => "Opens the canary gate and skips the rest of a wait between waves.",
        _ => "Ends the rollout for good: hosts in flight finish, nothing else is sent. It cannot be restarted.",
    }
}

#[derive(Template)]
#[template(path = "dashboard/confirm.html")]
struct ConfirmPage {
    frame: Frame,
    id: String,
    recipe: String,
    target_version: String,
    state: &'static str,
    action: String,
    label: &'static str,
    explanation: &'static str,
    csrf: String,
}

pub async fn confirm_action(
    State(dashboard): Shared,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let Some(label) = action_label(&action) else {
        return Err(unknown_action(&action));
    };
    let rollout = dashboard
        .client
        .clone()
        .get_rollout(pb::GetRolloutRequest { id: id.clone() })
        .await?
        .into_inner();
    page(ConfirmPage {
        frame: frame(&dashboard, format!("{label} rollout {id}?"), "rollouts"),
        id,
        recipe: rollout.recipe,
        target_version: rollout.target_version,
        state: model::rollout_state(rollout.state),
        explanation: action_explanation(&action),
        action,
        label,
        csrf: dashboard.secrets.csrf.clone(),
    })
}

fn unknown_action(action: &str) -> PageError {
    PageError {
        status: StatusCode::NOT_FOUND,
        message: format!("unknown action {action:?}: pause, resume, promote or abort"),
    }
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

pub async fn perform_action(
    State(dashboard): Shared,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, PageError> {
    if !same_secret(&form.csrf, &dashboard.secrets.csrf) {
        return Err(PageError {
            status: StatusCode::FORBIDDEN,
            message: "missing or wrong CSRF token: submit the action from the dashboard's confirmation page".into(),
        });
    }
    if form.reason.chars().count() > 500 {
        return Err(PageError {
            status: StatusCode::BAD_REQUEST,
            message: "reason too long: at most 500 characters".into(),
        });
    }
    let reason = if form.reason.trim().is_empty() {
        "from the dashboard".to_owned()
    } else {
        form.reason.trim().to_owned()
    };
    let request = pb::RolloutActionRequest { id: id.clone(), reason };
    let mut client = dashboard.client.clone();
    match action.as_str() {
        "pause" => client.pause_rollout(request).await?,
        "resume" => client.resume_rollout(request).await?,
        "promote" => client.promote_rollout(request).await?,
        "abort" => client.abort_rollout(request).await?,
        _ => return Err(unknown_action(&action)),
    };
    Ok(Redirect::to(&format!("/rollouts/{}", model::query_value(&id))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_states_read_plainly() {
        let cases = [
            (
                "running",
                0,
                3,
                true,
                "",
                "Running the canary wave; it stops after this wave until someone promotes it.",
            ),
            ("running", 1, 3, false, "", "Running wave 2 of 3."),
            ("halted", 2, 3, false, "2 hosts failed", "Halted: 2 hosts failed"),
            ("completed", 2, 3, false, "", "Completed: every host has its result."),
        ];
        for (state, wave, waves, gate, reason, expect) in cases {
            assert_eq!(state_sentence(state, wave, waves, gate, reason), expect);
        }
        assert!(state_sentence("paused", 1, 3, false, "").starts_with("Paused at wave 2 of 3"));
    }

    #[test]
    fn the_live_part_counts_hosts_and_offers_the_actions_of_its_state() {
        let host = |name: &str, wave: u32, outcome: pb::HostOutcome| pb::RolloutHost {
            host_id: name.into(),
            domain: format!("app.{name}"),
            wave,
            outcome: outcome as i32,
            ..Default::default()
        };
        let mut rollout = pb::Rollout {
            id: "r1".into(),
            recipe: "ghost".into(),
            state: pb::RolloutState::Paused as i32,
            hosts: vec![
                host("a", 0, pb::HostOutcome::Succeeded),
                host("b", 1, pb::HostOutcome::Failed),
                host("c", 1, pb::HostOutcome::Pending),
            ],
            current_wave: 1,
            ..Default::default()
        };
        let body = rollout_body(&rollout, SystemTime::now());
        assert_eq!((body.done, body.failed, body.pending, body.total), (1, 1, 1, 3));
        let actions: Vec<&str> = body.actions.iter().map(|(action, _)| *action).collect();
        assert_eq!(actions, ["resume", "promote", "abort"]);
        assert_eq!(body.waves.len(), 2);
        assert!(body.waves[1].current);
        let html = body.render().unwrap();
        assert!(html.contains("/rollouts/r1/do/resume"), "{html}");
        rollout.state = pb::RolloutState::Completed as i32;
        assert!(rollout_body(&rollout, SystemTime::now()).actions.is_empty());
    }
}

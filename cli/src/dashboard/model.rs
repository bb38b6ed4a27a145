//! What the dashboard shows, as plain values made from the Admin API's
//! messages: names that match `ccfleet --json`, a matrix cell's state, and
//! the sums behind the charts. Pure functions; the handlers fetch, these decide.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccfleet_proto::pb;

/// RFC 3339 (UTC, seconds) as `ccfleet --json` prints it; `None` when unset.
pub fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    Some(humantime::format_rfc3339_seconds(system_time(timestamp?)).to_string())
}

pub fn system_time(timestamp: &prost_types::Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::new(timestamp.seconds.max(0) as u64, 0)
}

/// "42s ago", "3m ago", "5h ago", "2d ago"; "in the future" for a clock ahead of ours.
pub fn ago(then: SystemTime, now: SystemTime) -> String {
    let Ok(elapsed) = now.duration_since(then) else {
        return "in the future".into();
    };
    let seconds = elapsed.as_secs();
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86400),
    }
}

// The wire's enum values by the names `ccfleet --json` gives them (one list,
// `crate::names`, for the dashboard and the CLI's output).
pub use crate::names::{
    app_state, host_outcome, host_status, operation_outcome, operation_phase, rollout_state, severity,
};

/// How a host's part in a rollout counts in the progress bar and chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Done,
    Failed,
    Pending,
}

pub fn progress_of(outcome: &str) -> Progress {
    match outcome {
        "succeeded" | "skipped" => Progress::Done,
        "rolled_back" | "held" | "failed" | "timed_out" => Progress::Failed,
        _ => Progress::Pending,
    }
}

/// The colour of a version matrix cell, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CellState {
    /// A FAILED operation left the app blocked until an operator acts.
    Blocked,
    /// Degraded, not deployed, or its last upgrade was rolled back.
    Failing,
    /// An upgrade is held (no room for a snapshot, a major not allowed, ...).
    Held,
    /// Running, but not as declared (drift, converging, another version).
    Drifted,
    Converged,
}

impl CellState {
    pub fn name(self) -> &'static str {
        match self {
            CellState::Blocked => "blocked",
            CellState::Failing => "failing",
            CellState::Held => "held",
            CellState::Drifted => "drifted",
            CellState::Converged => "converged",
        }
    }
}

/// Decides a cell's state from the app's observed state, its drift and the
/// outcome of its open alert, if any.
pub fn cell_state(state: &str, drift: bool, declared_differs: bool, alert_outcome: Option<&str>) -> CellState {
    match (alert_outcome, state) {
        (Some("failed"), _) => CellState::Blocked,
        (_, "degraded" | "not_deployed") | (Some("rolled_back"), _) => CellState::Failing,
        (Some("held"), _) => CellState::Held,
        _ if drift || declared_differs || state != "converged" => CellState::Drifted,
        _ => CellState::Converged,
    }
}

/// One app in the matrix.
#[derive(Debug, Clone)]
pub struct Cell {
    pub domain: String,
    pub version: String,
    pub state: CellState,
    /// The newest release within the running major, when newer than the running version.
    pub newer: Option<String>,
    pub pinned: bool,
    /// Everything known about the app in one line, for the cell's tooltip.
    pub detail: String,
}

/// One host's row in the matrix: a list of apps per recipe column.
#[derive(Debug, Clone)]
pub struct MatrixRow {
    pub host_id: String,
    pub online: bool,
    pub cells: Vec<Vec<Cell>>,
}

#[derive(Debug, Clone, Default)]
pub struct Matrix {
    pub recipes: Vec<String>,
    pub rows: Vec<MatrixRow>,
}

/// Builds the version matrix (recipe x host) of one page of apps, which
/// arrive sorted by host id then domain; `alerts` maps (host, domain) to the
/// outcome of its open alert.
pub fn matrix(apps: &[pb::HostApp], alerts: &BTreeMap<(String, String), &'static str>) -> Matrix {
    let recipes: Vec<String> = apps
        .iter()
        .filter_map(|app| app.app.as_ref().map(|app| app.recipe.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let column = |recipe: &str| recipes.binary_search_by(|probe| probe.as_str().cmp(recipe)).ok();
    let mut rows: Vec<MatrixRow> = Vec::new();
    for host_app in apps {
        let Some(app) = &host_app.app else { continue };
        if rows.last().map(|row| row.host_id != host_app.host_id).unwrap_or(true) {
            rows.push(MatrixRow {
                host_id: host_app.host_id.clone(),
                online: host_status(host_app.host_status) == "online",
                cells: vec![Vec::new(); recipes.len()],
            });
        }
        let Some(index) = column(&app.recipe) else { continue };
        let state = app_state(app.state);
        let alert = alerts.get(&(host_app.host_id.clone(), app.domain.clone())).copied();
        let declared_differs = !app.declared_version.is_empty() && app.declared_version != app.observed_version;
        let cell_state = cell_state(state, !app.drift.is_empty(), declared_differs, alert);
        let newer = (!app.available_version.is_empty() && app.available_version != app.observed_version)
            .then(|| app.available_version.clone());
        let mut detail = format!("{} on {}: {}", app.domain, host_app.host_id, state);
        if !app.declared_version.is_empty() {
            detail.push_str(&format!(", declared {}", app.declared_version));
        }
        if !app.drift.is_empty() {
            detail.push_str(&format!(", drift: {}", app.drift.join("; ")));
        }
        if let Some(outcome) = alert {
            detail.push_str(&format!(", alert: {outcome}"));
        }
        let row = rows.last_mut().expect("a row was pushed for this host");
        row.cells[index].push(Cell {
            domain: app.domain.clone(),
            version: if app.observed_version.is_empty() {
                "unknown".into()
            } else {
                app.observed_version.clone()
            },
            state: cell_state,
            newer,
            pinned: app.pinned_by_host,
            detail,
        });
    }
    Matrix { recipes, rows }
}

/// One bar of a recipe's version distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub count: usize,
    /// Top edge, in the chart's units.
    pub y: u32,
    /// Length of the bar, in the chart's units.
    pub width: u32,
}

pub const BAR_HEIGHT: u32 = 22;
pub const BAR_AREA: u32 = 220;

/// A recipe's running versions as bars, newest first (the order given),
/// the longest bar [`BAR_AREA`] wide; every bar with a count is at least 2 wide.
pub fn version_bars(counts: &[(String, usize)]) -> Vec<Bar> {
    let most = counts.iter().map(|(_, count)| *count).max().unwrap_or(0).max(1);
    counts
        .iter()
        .enumerate()
        .map(|(index, (label, count))| Bar {
            label: label.clone(),
            count: *count,
            y: index as u32 * (BAR_HEIGHT + 6),
            width: if *count == 0 {
                0
            } else {
                ((*count as u64 * BAR_AREA as u64 / most as u64) as u32).max(2)
            },
        })
        .collect()
}

/// Hosts done, failed and pending at one moment of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressPoint {
    /// Seconds since the rollout was created.
    pub at: u64,
    pub done: usize,
    pub failed: usize,
    pub pending: usize,
}

/// The rollout's progress over time: a point at its start, one each time a
/// host finished (hosts are taken as finished at their last update), and
/// one at `now`.
pub fn progress_series(created: SystemTime, hosts: &[(Progress, SystemTime)], now: SystemTime) -> Vec<ProgressPoint> {
    let seconds = |time: SystemTime| time.duration_since(created).unwrap_or_default().as_secs();
    let mut finished: Vec<(u64, Progress)> = hosts
        .iter()
        .filter(|(progress, _)| *progress != Progress::Pending)
        .map(|(progress, time)| (seconds(*time), *progress))
        .collect();
    finished.sort_by_key(|(at, _)| *at);
    let total = hosts.len();
    let mut point = ProgressPoint {
        at: 0,
        done: 0,
        failed: 0,
        pending: total,
    };
    let mut series = vec![point];
    for (at, progress) in finished {
        point.at = at;
        match progress {
            Progress::Done => point.done += 1,
            _ => point.failed += 1,
        }
        point.pending -= 1;
        series.push(point);
    }
    point.at = seconds(now).max(point.at);
    series.push(point);
    series
}

pub const CHART_WIDTH: u32 = 480;
pub const CHART_HEIGHT: u32 = 160;

/// The three lines of the progress chart as SVG `points` lists (done,
/// failed, pending), drawn as steps in a [`CHART_WIDTH`] x [`CHART_HEIGHT`] box.
pub fn progress_lines(series: &[ProgressPoint]) -> [String; 3] {
    let total = series
        .first()
        .map(|point| point.done + point.failed + point.pending)
        .unwrap_or(0)
        .max(1);
    let span = series.last().map(|point| point.at).unwrap_or(0).max(1);
    let x = |at: u64| at * CHART_WIDTH as u64 / span;
    let y = |count: usize| CHART_HEIGHT as u64 - count as u64 * CHART_HEIGHT as u64 / total as u64;
    let line = |value: fn(&ProgressPoint) -> usize| {
        let mut points = Vec::new();
        let mut previous: Option<usize> = None;
        for point in series {
            let mut add = |text: String| {
                if points.last() != Some(&text) {
                    points.push(text);
                }
            };
            if let Some(previous) = previous {
                add(format!("{},{}", x(point.at), y(previous)));
            }
            add(format!("{},{}", x(point.at), y(value(point))));
            previous = Some(value(point));
        }
        points.join(" ")
    };
    [
        line(|point| point.done),
        line(|point| point.failed),
        line(|point| point.pending),
    ]
}

/// Percent-encodes a query parameter value (page tokens, recipe names).
pub fn query_value(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => encoded.push(byte as char),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// Sorts alerts as `ccfleet alerts` lists them: newest first by the
/// server's receive time (pages arrive in host and domain order).
pub fn sort_alerts(alerts: &mut [pb::Alert]) {
    let at =
        |time: Option<&prost_types::Timestamp>| time.map_or((i64::MIN, i32::MIN), |time| (time.seconds, time.nanos));
    alerts.sort_by(|a, b| {
        let key = |alert: &pb::Alert| {
            (
                at(alert.received_at.as_ref().or(alert.raised_at.as_ref())),
                at(alert.raised_at.as_ref()),
            )
        };
        key(b)
            .cmp(&key(a))
            .then_with(|| a.host_id.cmp(&b.host_id))
            .then_with(|| a.domain.cmp(&b.domain))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_take_the_most_urgent_state() {
        let check = |state: &str, drift: bool, differs: bool, alert: Option<&str>, expect: CellState| {
            assert_eq!(
                cell_state(state, drift, differs, alert),
                expect,
                "{state} drift={drift} differs={differs} alert={alert:?}"
            );
        };
        check("converged", false, false, None, CellState::Converged);
        check("converged", true, false, None, CellState::Drifted);
        check("converged", false, true, None, CellState::Drifted);
        check("converging", false, false, None, CellState::Drifted);
        check("unknown", false, false, None, CellState::Drifted);
        check("degraded", false, false, None, CellState::Failing);
        check("not_deployed", true, false, None, CellState::Failing);
        check("converged", false, false, Some("rolled_back"), CellState::Failing);
        check("converged", true, false, Some("held"), CellState::Held);
        check("degraded", false, false, Some("held"), CellState::Failing);
        check("converged", false, false, Some("failed"), CellState::Blocked);
        check("degraded", true, true, Some("failed"), CellState::Blocked);
    }

    fn host_app(host: &str, domain: &str, recipe: &str, version: &str) -> pb::HostApp {
        pb::HostApp {
            host_id: host.into(),
            host_status: pb::HostStatus::Online as i32,
            app: Some(pb::ObservedApp {
                domain: domain.into(),
                recipe: recipe.into(),
                observed_version: version.into(),
                declared_version: version.into(),
                state: pb::AppState::Converged as i32,
                ..Default::default()
            }),
            observed_at: None,
        }
    }

    #[test]
    fn the_matrix_has_a_column_per_recipe_and_a_row_per_host() {
        let mut newer = host_app("b", "wiki.b", "wiki", "1.0.0");
        newer.app.as_mut().unwrap().available_version = "1.1.0".into();
        let apps = vec![
            host_app("a", "blog.a", "ghost", "2.0.0"),
            host_app("a", "blog2.a", "ghost", "1.0.0"),
            newer,
        ];
        let alerts = BTreeMap::from([(("a".to_owned(), "blog2.a".to_owned()), "held")]);
        let matrix = matrix(&apps, &alerts);
        assert_eq!(matrix.recipes, ["ghost", "wiki"]);
        // Per host: per recipe column, each app's (version, state, newer release).
        type Cells = Vec<Vec<(String, &'static str, Option<String>)>>;
        let summary: Vec<(String, Cells)> = matrix
            .rows
            .iter()
            .map(|row| {
                (
                    row.host_id.clone(),
                    row.cells
                        .iter()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|cell| (cell.version.clone(), cell.state.name(), cell.newer.clone()))
                                .collect()
                        })
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "a".to_owned(),
                    vec![
                        vec![
                            ("2.0.0".to_owned(), "converged", None),
                            ("1.0.0".to_owned(), "held", None)
                        ],
                        vec![]
                    ]
                ),
                (
                    "b".to_owned(),
                    vec![
                        vec![],
                        vec![("1.0.0".to_owned(), "converged", Some("1.1.0".to_owned()))]
                    ]
                ),
            ]
        );
    }

    #[test]
    fn bars_scale_to_the_largest_count() {
        let bars = version_bars(&[("2.0.0".into(), 10), ("1.0.0".into(), 1), ("unknown".into(), 0)]);
        let widths: Vec<(u32, u32)> = bars.iter().map(|bar| (bar.y, bar.width)).collect();
        assert_eq!(widths, [(0, BAR_AREA), (BAR_HEIGHT + 6, 22), (2 * (BAR_HEIGHT + 6), 0)]);
        assert!(version_bars(&[("1".into(), 1), ("2".into(), 1000)])[0].width >= 2);
        assert!(version_bars(&[]).is_empty());
    }

    #[test]
    fn progress_steps_at_each_finished_host() {
        let start = UNIX_EPOCH + Duration::from_secs(1000);
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let hosts = [
            (Progress::Done, at(30)),
            (Progress::Failed, at(10)),
            (Progress::Pending, at(5)),
        ];
        let series = progress_series(start, &hosts, at(60));
        let points: Vec<(u64, usize, usize, usize)> = series
            .iter()
            .map(|point| (point.at, point.done, point.failed, point.pending))
            .collect();
        assert_eq!(points, [(0, 0, 0, 3), (10, 0, 1, 2), (30, 1, 1, 1), (60, 1, 1, 1)]);
        let [done, failed, pending] = progress_lines(&series);
        assert_eq!(done, "0,160 80,160 240,160 240,107 480,107");
        assert_eq!(failed, "0,160 80,160 80,107 240,107 480,107");
        assert_eq!(pending, "0,0 80,0 80,54 240,54 240,107 480,107");
    }

    #[test]
    fn outcomes_count_as_done_failed_or_pending() {
        let cases = [
            ("succeeded", Progress::Done),
            ("skipped", Progress::Done),
            ("rolled_back", Progress::Failed),
            ("held", Progress::Failed),
            ("failed", Progress::Failed),
            ("timed_out", Progress::Failed),
            ("pending", Progress::Pending),
            ("dispatched", Progress::Pending),
            ("upgrading", Progress::Pending),
        ];
        for (outcome, expect) in cases {
            assert_eq!(progress_of(outcome), expect, "{outcome}");
        }
    }

    #[test]
    fn ages_and_query_values() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cases = [(5, "5s ago"), (61, "1m ago"), (7200, "2h ago"), (200_000, "2d ago")];
        for (seconds, expect) in cases {
            assert_eq!(ago(now - Duration::from_secs(seconds), now), expect);
        }
        assert_eq!(ago(now + Duration::from_secs(5), now), "in the future");
        assert_eq!(query_value("a b/c+=&é"), "a%20b%2Fc%2B%3D%26%C3%A9");
    }
}

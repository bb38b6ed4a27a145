//! The health gate: a pure decision over a sequence of timed checks.
//!
//! The gate passes once checks have been healthy continuously for
//! `min_healthy`, measured from the first healthy check of the current streak;
//! any unhealthy check ends the streak. It times out when `timeout` has passed
//! since the start without passing. A definitive check (Docker has decided
//! that the version fails, see `health::verdict`) fails it at once, whatever
//! time is left. Time is passed in (`now`), never read, so the rule is tested
//! with plain values.

use std::time::{Duration, Instant};

/// How long an app must stay healthy, and how long it may take to get there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatePolicy {
    /// Checks must be healthy continuously for at least this long.
    pub min_healthy: Duration,
    /// From the start of the gate; the recipe's health timeout.
    pub timeout: Duration,
}

/// One observation of the app's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Healthy,
    /// `reason` says what was wrong, for the operator ("GET … answered 503").
    Unhealthy {
        reason: String,
    },
    /// Docker has decided that the version fails (`reason` in its words):
    /// no later check can make it pass, so the gate ends here.
    Definitive {
        reason: String,
    },
}

/// What the gate concluded after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    /// Not decided yet: keep polling.
    Waiting {
        /// Length of the current healthy streak (zero after an unhealthy check).
        healthy_for: Duration,
        /// Until the gate times out.
        time_left: Duration,
        /// The most recent unhealthy reason seen, if any.
        last_reason: Option<String>,
    },
    /// Passed; `after` is the time from the start.
    Healthy { after: Duration },
    /// Did not pass within the timeout; `reason` is for the alert.
    TimedOut { reason: String },
    /// Failed early on a definitive check; `after` is the time from the start.
    Failed { reason: String, after: Duration },
}

/// One run of the health gate. Feed it one check per poll; stop at the first
/// verdict that is not [`GateVerdict::Waiting`]. A decided gate keeps
/// answering its decision, so a caller that polls once more cannot turn a
/// timeout into a pass.
#[derive(Debug, Clone)]
pub struct HealthGate {
    policy: GatePolicy,
    started: Instant,
    /// When the current healthy streak began; `None` after an unhealthy check.
    healthy_since: Option<Instant>,
    last_reason: Option<String>,
    decided: Option<GateVerdict>,
}

impl HealthGate {
    pub fn new(policy: GatePolicy, started: Instant) -> HealthGate {
        HealthGate {
            policy,
            started,
            healthy_since: None,
            last_reason: None,
            decided: None,
        }
    }

    /// Records `check`, observed at `now`, and returns the verdict.
    pub fn observe(&mut self, now: Instant, check: Check) -> GateVerdict {
        if let Some(decided) = &self.decided {
            return decided.clone();
        }
        let elapsed = now.saturating_duration_since(self.started);
        match check {
            Check::Healthy => {
                self.healthy_since.get_or_insert(now);
            }
            Check::Unhealthy { reason } => {
                self.healthy_since = None;
                self.last_reason = Some(reason);
            }
            Check::Definitive { reason } => {
                let verdict = GateVerdict::Failed { reason, after: elapsed };
                self.decided = Some(verdict.clone());
                return verdict;
            }
        }
        let healthy_for = self
            .healthy_since
            .map(|since| now.saturating_duration_since(since))
            .unwrap_or_default();
        // A streak that is long enough passes even at the deadline: the
        // evidence that the app is healthy is there, whatever the clock says.
        let verdict = if self.healthy_since.is_some() && healthy_for >= self.policy.min_healthy {
            GateVerdict::Healthy { after: elapsed }
        } else if elapsed >= self.policy.timeout {
            GateVerdict::TimedOut {
                reason: self.timeout_reason(healthy_for),
            }
        } else {
            return GateVerdict::Waiting {
                healthy_for,
                time_left: self.policy.timeout - elapsed,
                last_reason: self.last_reason.clone(),
            };
        };
        self.decided = Some(verdict.clone());
        verdict
    }

    /// Why the gate timed out: the unhealthy reason when the last check was
    /// unhealthy, otherwise how far the healthy streak got.
    fn timeout_reason(&self, healthy_for: Duration) -> String {
        let last_reason = self.last_reason.as_deref();
        match (self.healthy_since, last_reason) {
            (None, Some(reason)) => reason.to_owned(),
            (None, None) => "no healthy check".to_owned(),
            (Some(_), earlier) => {
                let mut reason = format!(
                    "healthy for only {} of the required {}",
                    seconds(healthy_for),
                    seconds(self.policy.min_healthy)
                );
                if let Some(earlier) = earlier {
                    reason.push_str(&format!(" (before that: {earlier})"));
                }
                reason
            }
        }
    }
}

/// A duration as seconds for messages: "5s", or "2.5s" with a fraction.
pub(crate) fn seconds(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use expect_test::{expect, Expect};
    use proptest::prelude::*;

    use super::*;

    /// Runs a gate with `min_healthy` and `timeout` (seconds) over checks at
    /// the given seconds ("ok" or an unhealthy reason) and renders each verdict.
    fn check(min_healthy: u64, timeout: u64, checks: &[(u64, &str)], expect: Expect) {
        let start = Instant::now();
        let mut gate = HealthGate::new(
            GatePolicy {
                min_healthy: Duration::from_secs(min_healthy),
                timeout: Duration::from_secs(timeout),
            },
            start,
        );
        let mut rendered = String::new();
        for &(at, outcome) in checks {
            let observed = if outcome == "ok" {
                Check::Healthy
            } else if let Some(reason) = outcome.strip_prefix("docker:") {
                Check::Definitive {
                    reason: reason.to_owned(),
                }
            } else {
                Check::Unhealthy {
                    reason: outcome.to_owned(),
                }
            };
            let verdict = match gate.observe(start + Duration::from_secs(at), observed) {
                GateVerdict::Waiting {
                    healthy_for,
                    time_left,
                    last_reason,
                } => format!(
                    "waiting healthy_for={} time_left={} last={}",
                    seconds(healthy_for),
                    seconds(time_left),
                    last_reason.as_deref().unwrap_or("-")
                ),
                GateVerdict::Healthy { after } => format!("healthy after {}", seconds(after)),
                GateVerdict::TimedOut { reason } => format!("timed out: {reason}"),
                GateVerdict::Failed { reason, after } => format!("failed after {}: {reason}", seconds(after)),
            };
            writeln!(rendered, "at {at:>2}s {outcome:<7} {verdict}").unwrap();
        }
        expect.assert_eq(&rendered);
    }

    #[test]
    fn healthy_streak_long_enough_passes() {
        check(
            10,
            60,
            &[(0, "ok"), (5, "ok"), (10, "ok")],
            expect![[r#"
                at  0s ok      waiting healthy_for=0s time_left=60s last=-
                at  5s ok      waiting healthy_for=5s time_left=55s last=-
                at 10s ok      healthy after 10s
            "#]],
        );
    }

    #[test]
    fn zero_min_healthy_passes_on_the_first_healthy_check() {
        check(
            0,
            60,
            &[(0, "503"), (2, "ok")],
            expect![[r#"
                at  0s 503     waiting healthy_for=0s time_left=60s last=503
                at  2s ok      healthy after 2s
            "#]],
        );
    }

    #[test]
    fn unhealthy_check_resets_the_streak() {
        check(
            10,
            60,
            &[(0, "ok"), (8, "503"), (10, "ok"), (18, "ok"), (20, "ok")],
            expect![[r#"
                at  0s ok      waiting healthy_for=0s time_left=60s last=-
                at  8s 503     waiting healthy_for=0s time_left=52s last=503
                at 10s ok      waiting healthy_for=0s time_left=50s last=503
                at 18s ok      waiting healthy_for=8s time_left=42s last=503
                at 20s ok      healthy after 20s
            "#]],
        );
    }

    #[test]
    fn times_out_with_the_last_unhealthy_reason() {
        check(
            10,
            30,
            &[(0, "refused"), (15, "503"), (30, "502")],
            expect![[r#"
                at  0s refused waiting healthy_for=0s time_left=30s last=refused
                at 15s 503     waiting healthy_for=0s time_left=15s last=503
                at 30s 502     timed out: 502
            "#]],
        );
    }

    #[test]
    fn times_out_with_a_streak_too_short() {
        check(
            10,
            30,
            &[(0, "503"), (25, "ok"), (31, "ok")],
            expect![[r#"
                at  0s 503     waiting healthy_for=0s time_left=30s last=503
                at 25s ok      waiting healthy_for=0s time_left=5s last=503
                at 31s ok      timed out: healthy for only 6s of the required 10s (before that: 503)
            "#]],
        );
        check(
            10,
            5,
            &[(0, "ok"), (6, "ok")],
            expect![[r#"
                at  0s ok      waiting healthy_for=0s time_left=5s last=-
                at  6s ok      timed out: healthy for only 6s of the required 10s
            "#]],
        );
    }

    #[test]
    fn a_long_enough_streak_at_the_deadline_passes() {
        check(
            10,
            30,
            &[(20, "ok"), (30, "ok")],
            expect![[r#"
                at 20s ok      waiting healthy_for=0s time_left=10s last=-
                at 30s ok      healthy after 30s
            "#]],
        );
    }

    #[test]
    fn a_decided_gate_keeps_its_verdict() {
        check(
            0,
            10,
            &[(10, "503"), (11, "ok")],
            expect![[r#"
                at 10s 503     timed out: 503
                at 11s ok      timed out: 503
            "#]],
        );
        check(
            0,
            10,
            &[(1, "ok"), (2, "503")],
            expect![[r#"
                at  1s ok      healthy after 1s
                at  2s 503     healthy after 1s
            "#]],
        );
    }

    #[test]
    fn a_definitive_check_fails_at_once_and_stays_failed() {
        check(
            10,
            300,
            &[(0, "503"), (4, "ok"), (12, "docker:paused"), (13, "ok"), (400, "ok")],
            expect![[r#"
                at  0s 503     waiting healthy_for=0s time_left=300s last=503
                at  4s ok      waiting healthy_for=0s time_left=296s last=503
                at 12s docker:paused failed after 12s: paused
                at 13s ok      failed after 12s: paused
                at 400s ok      failed after 12s: paused
            "#]],
        );
        // Once passed, a later verdict changes nothing: the gate is over.
        check(
            0,
            300,
            &[(1, "ok"), (2, "docker:paused")],
            expect![[r#"
                at  1s ok      healthy after 1s
                at  2s docker:paused healthy after 1s
            "#]],
        );
    }

    proptest! {
        /// Over random check sequences (non-decreasing times): the gate is never
        /// Healthy unless every check in the last `min_healthy` (back to the
        /// start of a streak at least that long) was healthy, and never Waiting
        /// once the timeout has passed.
        #[test]
        fn gate_properties(
            min_healthy in 0_u64..20,
            timeout in 1_u64..40,
            steps in proptest::collection::vec((0_u64..6, any::<bool>()), 1..40),
        ) {
            let start = Instant::now();
            let policy = GatePolicy { min_healthy: Duration::from_secs(min_healthy), timeout: Duration::from_secs(timeout) };
            let mut gate = HealthGate::new(policy, start);
            let mut at = 0_u64;
            let mut seen: Vec<(u64, bool)> = Vec::new();
            for (gap, healthy) in steps {
                at += gap;
                seen.push((at, healthy));
                let check = if healthy { Check::Healthy } else { Check::Unhealthy { reason: format!("down at {at}") } };
                let verdict = gate.observe(start + Duration::from_secs(at), check);
                match verdict {
                    GateVerdict::Healthy { after } => {
                        prop_assert_eq!(after, Duration::from_secs(at));
                        // The streak: the trailing run of healthy checks.
                        let streak: Vec<&(u64, bool)> = seen.iter().rev().take_while(|(_, ok)| *ok).collect();
                        let first = streak.last().expect("a pass ends on a healthy check");
                        prop_assert!(at - first.0 >= min_healthy, "passed with a streak of {}s < {}s", at - first.0, min_healthy);
                        break;
                    }
                    GateVerdict::Failed { .. } => prop_assert!(false, "no definitive check was fed"),
                    GateVerdict::TimedOut { reason } => {
                        prop_assert!(at >= timeout);
                        prop_assert!(!reason.is_empty());
                        break;
                    }
                    GateVerdict::Waiting { time_left, .. } => {
                        prop_assert!(at < timeout, "still waiting at {}s with a timeout of {}s", at, timeout);
                        prop_assert_eq!(time_left, Duration::from_secs(timeout - at));
                    }
                }
            }
        }
    }
}

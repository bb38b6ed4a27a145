//! What a waiting client is told, and when: a pure decision over the app's
//! picture at each poll. A line when something changed (the operation's
//! phase, Docker's state, version, replicas or message), otherwise a short
//! "still waiting" line at most every [`QUIET_LINE_EVERY`]; every line fits
//! [`LINE_WIDTH`] columns.

use std::time::Duration;

/// At most this long without a line while nothing changes.
pub const QUIET_LINE_EVERY: Duration = Duration::from_secs(30);

/// Columns a progress line may take, the client's `... ` prefix included.
pub const LINE_WIDTH: usize = 100;

/// The client prints `... ` before each line.
const CLIENT_PREFIX: usize = 4;

/// How one app stands at one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// What the agent is doing: "upgrade 1.3.0 -> 1.4.0: verifying", "reconciling".
    pub doing: String,
    /// Docker's picture: state, version, replicas, drift (Docker's message).
    pub observed: String,
}

/// The lines of one wait for one app.
#[derive(Debug, Clone, Default)]
pub struct Reporter {
    last: Option<Picture>,
    /// When the last line was sent (from the start of the wait).
    last_line_at: Duration,
}

impl Reporter {
    /// The line to send for `picture` of `domain`, seen `elapsed` into a wait
    /// bounded by `limit` (when there is one), or `None` to stay quiet.
    pub fn observe(
        &mut self,
        domain: &str,
        picture: Picture,
        elapsed: Duration,
        limit: Option<Duration>,
    ) -> Option<String> {
        let width = LINE_WIDTH - CLIENT_PREFIX;
        let line = if self.last.as_ref() != Some(&picture) {
            // The time stays whole; Docker's picture is what gets cut.
            let suffix = format!(" ({} elapsed)", whole(elapsed));
            let head = format!("{domain}: {}; {}", picture.doing, picture.observed);
            format!("{}{suffix}", fit(&head, width.saturating_sub(suffix.chars().count())))
        } else if elapsed.saturating_sub(self.last_line_at) >= QUIET_LINE_EVERY {
            let spent = match limit {
                Some(limit) => format!("{}/{}", whole(elapsed), whole(limit)),
                None => whole(elapsed),
            };
            format!("{domain}: still waiting: {}, {spent}", picture.doing)
        } else {
            return None;
        };
        self.last = Some(picture);
        self.last_line_at = elapsed;
        Some(fit(&line, width))
    }
}

/// A duration in whole seconds, as people read it ("1m 30s").
fn whole(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

/// `line` cut to `width` characters, ending in `…` when cut.
pub fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use expect_test::{expect, Expect};

    use super::*;

    /// Feeds (second, doing, observed) polls with a 5-minute limit and
    /// renders what was sent at each second.
    fn check(polls: &[(u64, &str, &str)], expect: Expect) {
        let mut reporter = Reporter::default();
        let mut rendered = String::new();
        for &(at, doing, observed) in polls {
            let picture = Picture {
                doing: doing.into(),
                observed: observed.into(),
            };
            let line = reporter.observe(
                "blog.example.org",
                picture,
                Duration::from_secs(at),
                Some(Duration::from_secs(300)),
            );
            writeln!(rendered, "at {at:>2}s {}", line.as_deref().unwrap_or("-")).unwrap();
        }
        expect.assert_eq(&rendered);
    }

    #[test]
    fn a_line_on_each_change_and_a_short_one_every_30s_otherwise() {
        let verifying = "upgrade 1.3.0 -> 1.4.0: verifying";
        let converging = "converging, 1.4.0, 0/1 replicas";
        check(
            &[
                (3, "upgrade 1.3.0 -> 1.4.0: deploying", "converged, 1.3.0, 1/1 replicas"),
                (6, verifying, converging),
                (9, verifying, converging),
                (33, verifying, converging),
                (36, verifying, converging),
                (63, verifying, converging),
                (66, verifying, "converged, 1.4.0, 1/1 replicas"),
                (69, verifying, "converged, 1.4.0, 1/1 replicas"),
            ],
            expect![[r#"
                at  3s blog.example.org: upgrade 1.3.0 -> 1.4.0: deploying; converged, 1.3.0, 1/1 replicas (3s elapsed)
                at  6s blog.example.org: upgrade 1.3.0 -> 1.4.0: verifying; converging, 1.4.0, 0/1 replic… (6s elapsed)
                at  9s -
                at 33s -
                at 36s blog.example.org: still waiting: upgrade 1.3.0 -> 1.4.0: verifying, 36s/5m
                at 63s -
                at 66s blog.example.org: upgrade 1.3.0 -> 1.4.0: verifying; converged, 1.4.0, 1/1 repl… (1m 6s elapsed)
                at 69s -
            "#]],
        );
    }

    #[test]
    fn every_line_fits_the_terminal_with_the_clients_prefix() {
        let docker = "degraded, 1.4.0, 0/1 replicas; drift: not converged: 0/1 replicas (blog_example_org_app \
                      update paused: update paused due to failure or early termination of task 4x2)";
        let mut reporter = Reporter::default();
        let line = reporter
            .observe(
                "blog.example.org",
                Picture {
                    doing: "reconciling".into(),
                    observed: docker.into(),
                },
                Duration::ZERO,
                None,
            )
            .unwrap();
        assert_eq!(line.chars().count(), LINE_WIDTH - 4, "{line}");
        assert!(line.ends_with("… (0s elapsed)"), "{line}");
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("exactly10!", 10), "exactly10!");
        assert_eq!(fit("eleven chars", 10), "eleven ch…");
    }
}

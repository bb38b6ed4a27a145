//! The campaign's plan, the migration's expected state and the judge, as tables.

use super::*;

const MAX_KILL: Duration = Duration::from_secs(30);

/// The manifest `walk` gives of a volume seeded with `plan` (a 0755 root).
fn manifest_of(plan: &RunPlan) -> Vec<ManifestEntry> {
    let mut entries = vec![ManifestEntry {
        path: String::new(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        sha256: None,
        target: None,
    }];
    for seeded in &plan.entries {
        let (kind, size, sha256, target) = match &seeded.kind {
            SeedKind::Dir => (EntryKind::Dir, 0, None, None),
            SeedKind::File(contents) => (EntryKind::File, contents.len() as u64, Some(sha256_hex(contents)), None),
            SeedKind::Symlink(target) => (EntryKind::Symlink, 0, None, Some(target.clone())),
            SeedKind::Fifo => (EntryKind::Fifo, 0, None, None),
        };
        entries.push(ManifestEntry {
            path: seeded.path.clone(),
            kind,
            mode: seeded.mode,
            uid: seeded.uid,
            gid: seeded.gid,
            size,
            sha256,
            target,
        });
    }
    entries.sort_by(|left, right| left.path.cmp(&right.path));
    entries
}

fn plan_with(target: &'static str) -> RunPlan {
    RunPlan {
        target,
        ..plan(7, MAX_KILL)
    }
}

/// A run that went right: rolled back (or succeeded) and everything agrees.
fn good(plan: &RunPlan, outcome: &str) -> Observation {
    let before = manifest_of(plan);
    let succeeded = outcome == "SUCCEEDED";
    Observation {
        kill_phase: "deploying".into(),
        finished: Some(Finished {
            outcome: outcome.into(),
            reason: "interrupted during deploying".into(),
            reported: true,
        }),
        running: Some(if succeeded { plan.target } else { FROM }.into()),
        converged: true,
        health: Some(200),
        volume: Ok(if succeeded {
            migrated(&before, plan.hello())
        } else {
            before
        }),
        server_results: vec![outcome.to_lowercase()],
        server_alerts: usize::from(!succeeded),
        local_alerts: usize::from(!succeeded),
        pushed: 1,
    }
}

#[test]
fn a_seed_gives_one_plan_and_seeds_cover_both_targets_and_the_kill_window() {
    assert_eq!(plan(42, MAX_KILL), plan(42, MAX_KILL));
    assert_ne!(plan(42, MAX_KILL), plan(43, MAX_KILL));
    let plans: Vec<RunPlan> = (1..=60).map(|seed| plan(seed, MAX_KILL)).collect();
    assert!(plans.iter().any(RunPlan::target_passes));
    assert!(plans.iter().any(|plan| !plan.target_passes()));
    assert!(plans.iter().all(|plan| plan.kill_after < MAX_KILL));
    assert!(plans.iter().any(|plan| plan.kill_after < MAX_KILL / 4));
    assert!(plans.iter().any(|plan| plan.kill_after > MAX_KILL * 3 / 4));
    assert!(plans
        .iter()
        .filter(|plan| plan.target_passes())
        .all(|plan| plan.kill_after < MAX_KILL * 3 / 5));
    for plan in &plans {
        assert_eq!(plan.operation_id(), format!("campaign-{}", plan.seed));
        assert!(ccfleet_proto::OperationId::parse(&plan.operation_id()).is_ok());
        // Parents come before their children; the migration's inputs exist.
        for (index, entry) in plan.entries.iter().enumerate() {
            if let Some((parent, _)) = entry.path.rsplit_once('/') {
                assert!(plan.entries[..index].iter().any(|earlier| earlier.path == parent));
            }
        }
        assert!(!plan.hello().is_empty());
        assert!(plan.entries.iter().any(|entry| entry.path == "latest"));
    }
}

#[test]
fn the_migration_changes_contents_modes_owners_and_entries() {
    let plan = plan_with(MIGRATES_AND_PASSES);
    let before = manifest_of(&plan);
    let after = migrated(&before, plan.hello());
    let find = |manifest: &[ManifestEntry], path: &str| manifest.iter().find(|entry| entry.path == path).cloned();
    let hello = find(&after, "posts/hello.md").unwrap();
    let contents = [plan.hello(), b"# migrated to schema 2\n"].concat();
    assert_eq!(hello.sha256, Some(sha256_hex(&contents)));
    assert_eq!((hello.mode, hello.size), (0o600, contents.len() as u64));
    let posts = find(&after, "posts").unwrap();
    assert_eq!((posts.uid, posts.gid, posts.mode), (1000, 1000, 0o755));
    assert_eq!(find(&after, "latest"), None);
    assert_eq!(find(&after, "index").unwrap().kind, EntryKind::Dir);
    assert_eq!(find(&after, "schema").unwrap().sha256, Some(sha256_hex(b"2\n")));
    assert_eq!(find(&after, "index/posts").unwrap().size, 9);
    // Everything else is as before, and the result is in path order.
    for entry in before
        .iter()
        .filter(|entry| entry.path.starts_with("notes") || entry.path == "queue")
    {
        assert_eq!(find(&after, &entry.path).as_ref(), Some(entry));
    }
    assert!(after.windows(2).all(|pair| pair[0].path < pair[1].path));
    assert_eq!(after.len(), before.len() + 2);
}

#[test]
fn the_judge_finds_each_broken_invariant() {
    let passes = plan_with(MIGRATES_AND_PASSES);
    let fails = plan_with(MIGRATES_AND_FAILS);
    let before = manifest_of(&passes);
    type Change = fn(&mut Observation);
    let cases: &[(&str, &RunPlan, &str, Change, Option<&str>)] = &[
        ("rolled back, all agrees", &fails, "ROLLED_BACK", |_| {}, None),
        ("succeeded, all agrees", &passes, "SUCCEEDED", |_| {}, None),
        ("interrupted pass rolled back", &passes, "ROLLED_BACK", |_| {}, None),
        (
            "never finished",
            &fails,
            "ROLLED_BACK",
            |seen| seen.finished = None,
            Some("did not finish"),
        ),
        (
            "the failing version succeeded",
            &fails,
            "SUCCEEDED",
            |_| {},
            Some("succeeded although it fails its gate"),
        ),
        (
            "the failing version left running",
            &fails,
            "ROLLED_BACK",
            |seen| seen.running = Some(MIGRATES_AND_FAILS.into()),
            Some("expected 1.3.0+1.3"),
        ),
        (
            "nothing runs",
            &fails,
            "FAILED",
            |seen| seen.running = None,
            Some("runs None after FAILED"),
        ),
        (
            "not converged",
            &fails,
            "ROLLED_BACK",
            |seen| seen.converged = false,
            Some("does not see"),
        ),
        (
            "probe fails",
            &passes,
            "SUCCEEDED",
            |seen| seen.health = Some(404),
            Some("answers Some(404)"),
        ),
        (
            "migration not undone",
            &fails,
            "ROLLED_BACK",
            |seen| seen.volume = Ok(migrated(&manifest_of(&plan_with(MIGRATES_AND_FAILS)), b"x")),
            Some("not the pre-upgrade manifest"),
        ),
        (
            "an owner not restored",
            &fails,
            "ROLLED_BACK",
            |seen| {
                if let Ok(volume) = &mut seen.volume {
                    volume.iter_mut().find(|entry| entry.path == "queue").unwrap().uid = 0;
                }
            },
            Some("queue"),
        ),
        (
            "the upgraded state incomplete",
            &passes,
            "SUCCEEDED",
            |seen| {
                if let Ok(volume) = &mut seen.volume {
                    volume.retain(|entry| entry.path != "schema");
                }
            },
            Some("not the upgraded state"),
        ),
        (
            "two results on the server",
            &fails,
            "ROLLED_BACK",
            |seen| seen.server_results.push("rolled_back".into()),
            Some("expected exactly one rolled_back"),
        ),
        (
            "no result on the server",
            &fails,
            "ROLLED_BACK",
            |seen| seen.server_results.clear(),
            Some("expected exactly one"),
        ),
        (
            "another outcome on the server",
            &fails,
            "ROLLED_BACK",
            |seen| seen.server_results = vec!["succeeded".into()],
            Some("expected exactly one rolled_back"),
        ),
        (
            "pushed twice",
            &fails,
            "ROLLED_BACK",
            |seen| seen.pushed = 2,
            Some("recorded the result 2 times"),
        ),
        (
            "two alerts",
            &fails,
            "ROLLED_BACK",
            |seen| seen.server_alerts = 2,
            Some("at most one"),
        ),
        (
            "an alert after a success",
            &passes,
            "SUCCEEDED",
            |seen| seen.local_alerts = 1,
            Some("expected 0"),
        ),
        (
            "not reported",
            &fails,
            "ROLLED_BACK",
            |seen| seen.finished.as_mut().unwrap().reported = false,
            Some("never recorded"),
        ),
    ];
    for (name, plan, outcome, change, expected) in cases {
        let mut seen = good(plan, outcome);
        change(&mut seen);
        let violations = judge(plan, &before, &seen);
        match expected {
            None => assert_eq!(violations, Vec::<String>::new(), "{name}"),
            Some(needle) => assert!(
                violations.iter().any(|violation| violation.contains(needle)),
                "{name}: {violations:?}"
            ),
        }
    }
}

#[test]
fn the_tally_counts_runs_kills_and_outcomes() {
    let mut tally = Tally::default();
    let (passes, fails) = (plan_with(MIGRATES_AND_PASSES), plan_with(MIGRATES_AND_FAILS));
    tally.add(&passes, "deploying", "ROLLED_BACK", 0);
    tally.add(&fails, "deploying", "ROLLED_BACK", 2);
    tally.add(&passes, "done", "SUCCEEDED", 0);
    assert_eq!((tally.runs, tally.violating_runs), (3, 1));
    assert_eq!(tally.kills_by_phase["deploying"], 2);
    assert_eq!(tally.outcomes["SUCCEEDED"], 1);
    assert_eq!(tally.targets[MIGRATES_AND_FAILS], 1);
}

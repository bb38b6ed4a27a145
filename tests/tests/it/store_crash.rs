//! Crash safety of the store's write order (server/src/store/hosts.rs, "Write
//! order"), tested by killing a real writing process with SIGKILL.
//!
//! The writer (`store-writer`, the real `Store` and `StoreHandle` with a
//! group-commit window) applies a deterministic stream of events for a few
//! hosts, as the server does, and prints every event it stored and every
//! watermark a flush made durable. The test kills it after a varying number
//! of acknowledgements, right after an event above its host's watermark was
//! stored (received, not yet flushed), opens the store, checks what must hold
//! right after a crash (nothing acknowledged is lost), and starts the writer
//! again, which re-sends everything above each host's watermark, as agents
//! do, and requires every event at or below the stored `last_seq` to come
//! back a duplicate and every other one to be applied: each is stored once.
//! At the end the test applies a last round itself and checks the state
//! exactly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ccfleet_proto::RecipeName;
use ccfleet_server::store::{OperationFilter, Store};
use ccfleet_tests::store_crash::{enrol, event, host, inventory_at, is_progress, operation_id, HOSTS, SEGMENT_BYTES};

/// Opens the store, waiting while the one this test just dropped still
/// holds the directory.
fn open(directory: &std::path::Path) -> Store {
    Store::open_when_released(|| Store::open_with_segment_size(directory, SEGMENT_BYTES)).unwrap()
}

/// What must hold in a store opened right after a crash.
fn check_after_crash(store: &Store, acked: &[u64]) {
    for (index, acked) in acked.iter().enumerate() {
        let Some(host_record) = store.host(&host(index)).unwrap() else {
            assert_eq!(*acked, 0, "host {index} acknowledged events but is gone");
            continue;
        };
        assert!(
            host_record.last_seq >= *acked,
            "host {index}: acknowledged {acked}, recovered last_seq {}",
            host_record.last_seq
        );
        // The apps are those of last_seq, or of a later event whose host
        // record did not make it (the resend repairs it): never older.
        let stored: Vec<(String, String, String)> = store
            .host_apps(&host(index))
            .unwrap()
            .iter()
            .map(|app| {
                (
                    app.domain.to_string(),
                    app.recipe.to_string(),
                    app.observed_version.as_ref().unwrap().to_string(),
                )
            })
            .collect();
        // The newest inventory at or before last_seq: its blog version, or a
        // later one.
        let last_inventory = (1..=host_record.last_seq).rev().find(|seq| !is_progress(*seq));
        if let Some(last_inventory) = last_inventory {
            let blog = stored.iter().find(|app| app.0.starts_with("blog."));
            let version = blog.map(|app| app.2.clone()).unwrap_or_default();
            let minor: u64 = version
                .split('.')
                .nth(1)
                .and_then(|minor| minor.parse().ok())
                .unwrap_or(0);
            assert!(
                minor >= last_inventory,
                "host {index} at last_seq {}: blog at {version:?}, expected 1.{last_inventory}.0 or later",
                host_record.last_seq
            );
            assert!(
                stored.iter().any(|app| app.0.starts_with("wiki.")),
                "host {index} at last_seq {}: no wiki",
                host_record.last_seq
            );
        }
        // The newest progress at or before last_seq: its operation is
        // stored at that step or a later one.
        let last_progress = (1..=host_record.last_seq).rev().find(|seq| is_progress(*seq));
        if let Some(last_progress) = last_progress {
            let operation = store
                .operation(&host(index), &operation_id(last_progress))
                .unwrap()
                .unwrap_or_else(|| panic!("host {index}: operation of event {last_progress} missing"));
            let step: u64 = operation.message["step ".len()..].parse().unwrap();
            assert!(
                step >= last_progress,
                "host {index}: {} at step {step}",
                operation.operation_id
            );
        }
    }
    check_indexes(store);
}

/// The recipe index and the time index agree with the records they point
/// to, as readers see them.
fn check_indexes(store: &Store) {
    let all = store.apps(None).unwrap();
    for recipe in ["ghost", "matrix-synapse", "hedgedoc", "wiki-js"] {
        let recipe: RecipeName = recipe.parse().unwrap();
        let mut through_index = store.apps(Some(&recipe)).unwrap();
        through_index.sort_by(|a, b| (&a.0, &a.1.domain).cmp(&(&b.0, &b.1.domain)));
        let mut scanned: Vec<_> = all.iter().filter(|(_, app)| app.recipe == recipe).cloned().collect();
        scanned.sort_by(|a, b| (&a.0, &a.1.domain).cmp(&(&b.0, &b.1.domain)));
        assert_eq!(through_index, scanned, "the {recipe} index");
    }
    let listed = store
        .operations(&OperationFilter {
            limit: usize::MAX,
            ..OperationFilter::default()
        })
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for operation in &listed {
        assert!(
            seen.insert((operation.host_id.clone(), operation.operation_id.clone())),
            "{} {} listed twice",
            operation.host_id,
            operation.operation_id
        );
    }
    let per_host: usize = (0..HOSTS)
        .map(|index| {
            store
                .operations(&OperationFilter {
                    host_id: Some(host(index)),
                    limit: usize::MAX,
                    ..OperationFilter::default()
                })
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(listed.len(), per_host, "every operation listed once");
}

/// `(host, seq)` from a writer line `<word> HOST SEQ`.
fn parse(line: &str, word: &str) -> Option<(usize, u64)> {
    let (index, seq) = line.strip_prefix(word)?.strip_prefix(' ')?.split_once(' ')?;
    Some((index.parse().unwrap(), seq.parse().unwrap()))
}

#[test]
fn a_store_killed_mid_burst_keeps_every_acknowledged_event() {
    let directory = tempfile::tempdir().unwrap();
    // Per host, the watermark: the highest event a flush covered.
    let mut acked = vec![0u64; HOSTS];
    // Kills that came right after the writer stored an event above its
    // host's watermark (received, not flushed), and how many of those
    // events the store then had lost (the re-send stores them).
    let (mut unflushed_kills, mut lost) = (0, 0);
    // Kill after a varying number of acknowledgements: early, while hosts
    // are being enrolled, and later in steady writing.
    for kill_after in [
        1, 7, 40, 150, 3, 300, 25, 90, 12, 60, 5, 200, 33, 75, 2, 120, 18, 250, 45, 9,
    ] {
        // The agents re-send everything above their watermark.
        let watermarks: Vec<String> = acked.iter().map(u64::to_string).collect();
        let mut child = Command::new(ccfleet_tests::binary("store-writer"))
            .arg(directory.path())
            .arg(watermarks.join(","))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(directory.path().join("writer.log")).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next_line = || {
            let Some(line) = lines.next() else {
                let log = std::fs::read_to_string(directory.path().join("writer.log")).unwrap_or_default();
                panic!("the writer stopped before it was killed:\n{log}");
            };
            line.unwrap()
        };
        let mut count = 0;
        let mut unflushed = None;
        // Until `kill_after` acknowledgements, then until an event above
        // its host's watermark has been stored: the kill lands between
        // receipt and flush.
        while count < kill_after || unflushed.is_none() {
            let line = next_line();
            if let Some((index, seq)) = parse(&line, "durable") {
                acked[index] = acked[index].max(seq);
                count += 1;
            } else if let Some((index, seq)) = parse(&line, "applied") {
                if count >= kill_after && seq > acked[index] {
                    unflushed = Some((index, seq));
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements printed before the kill and still in the pipe.
        for line in lines.map_while(Result::ok) {
            if let Some((index, seq)) = parse(&line, "durable") {
                acked[index] = acked[index].max(seq);
            }
        }
        let store = open(directory.path());
        check_after_crash(&store, &acked);
        let (index, seq) = unflushed.unwrap();
        if seq > acked[index] {
            unflushed_kills += 1;
            let last_seq = store.host(&host(index)).unwrap().map_or(0, |host| host.last_seq);
            lost += usize::from(last_seq < seq);
        }
    }
    println!("{unflushed_kills} kills between receipt and flush; {lost} of those events lost and re-sent");
    assert!(
        unflushed_kills > 0,
        "no kill landed between an event's receipt and its flush"
    );

    // The agents' resend, then one more round: the state is exact.
    let store = open(directory.path());
    for index in 0..HOSTS {
        enrol(&store, index).unwrap();
        let last_seq = store.host(&host(index)).unwrap().unwrap().last_seq;
        for seq in last_seq + 1..=last_seq + 4 {
            store.apply_event(&host(index), seq, &event(index, seq)).unwrap();
        }
        let final_seq = last_seq + 4;
        let mut stored = store.host_apps(&host(index)).unwrap();
        let mut expected = inventory_at(index, final_seq);
        stored.sort_by(|a, b| a.domain.cmp(&b.domain));
        expected.sort_by(|a, b| a.domain.cmp(&b.domain));
        assert_eq!(stored, expected, "host {index} at {final_seq}");
        // Every operation of the stream so far is stored, at its last step.
        let operations = store
            .operations(&OperationFilter {
                host_id: Some(host(index)),
                limit: usize::MAX,
                ..OperationFilter::default()
            })
            .unwrap();
        let expected_operations: BTreeMap<String, String> = (1..=final_seq)
            .filter(|seq| is_progress(*seq))
            .map(|seq| (operation_id(seq), format!("step {seq}")))
            .collect();
        let stored_operations: BTreeMap<String, String> = operations
            .into_iter()
            .map(|operation| (operation.operation_id, operation.message))
            .collect();
        assert_eq!(stored_operations, expected_operations, "host {index}");
    }
    check_indexes(&store);
    assert!(
        acked.iter().all(|seq| *seq > 0),
        "every host was acknowledged: {acked:?}"
    );
}

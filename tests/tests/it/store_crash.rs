//! Crash safety of the store's write order (server/src/store/hosts.rs, "Write
//! order"), tested by killing a real writing process with SIGKILL.
//!
//! The writer (`store-writer`, the real `Store` and `StoreHandle`) applies a
//! deterministic stream of events for a few hosts, as the server does, and
//! prints every acknowledged (flushed) sequence number. The test kills it
//! after a varying number of acknowledgements, opens the store, checks what
//! must hold right after a crash, and starts the writer again, which resends
//! from each host's `last_seq`, as agents do. At the end the test applies a
//! last round itself and checks the state exactly.

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

#[test]
fn a_store_killed_mid_burst_keeps_every_acknowledged_event() {
    let directory = tempfile::tempdir().unwrap();
    let mut acked = vec![0u64; HOSTS];
    // Kill after a varying number of acknowledgements: early, while hosts
    // are being enrolled, and later in steady writing.
    for kill_after in [
        1, 7, 40, 150, 3, 300, 25, 90, 12, 60, 5, 200, 33, 75, 2, 120, 18, 250, 45, 9,
    ] {
        let mut child = Command::new(ccfleet_tests::binary("store-writer"))
            .arg(directory.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(directory.path().join("writer.log")).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut count = 0;
        while count < kill_after {
            let Some(line) = lines.next() else {
                let log = std::fs::read_to_string(directory.path().join("writer.log")).unwrap_or_default();
                panic!("the writer stopped before it was killed:\n{log}");
            };
            let line = line.unwrap();
            let Some(ack) = line.strip_prefix("acked ") else {
                continue;
            };
            let (index, seq) = ack.split_once(' ').unwrap();
            let (index, seq): (usize, u64) = (index.parse().unwrap(), seq.parse().unwrap());
            acked[index] = acked[index].max(seq);
            count += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements printed before the kill and still in the pipe.
        for line in lines.map_while(Result::ok) {
            if let Some((index, seq)) = line.strip_prefix("acked ").and_then(|ack| ack.split_once(' ')) {
                let (index, seq): (usize, u64) = (index.parse().unwrap(), seq.parse().unwrap());
                acked[index] = acked[index].max(seq);
            }
        }
        let store = open(directory.path());
        check_after_crash(&store, &acked);
    }

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

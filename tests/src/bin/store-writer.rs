//! `store-writer DIR [ACKED]`: the process the store's crash test kills
//! (`tests/it/store_crash.rs`). Opens the store in DIR with small log
//! segments, then, for every host of `ccfleet_tests::store_crash` at once,
//! re-sends its events as an agent whose outbox holds everything above its
//! last watermark: from `ACKED[host] + 1` on (`ACKED` is a comma-separated
//! list, one watermark per host; 0 for all when absent). Each event goes
//! through `StoreHandle::write_grouped` with a group-commit window, as the
//! server stores an agent's events, several in flight per host. It prints
//! `applied HOST SEQ` when the store thread has written an event (not yet
//! flushed) and `durable HOST SEQ` when a flush covered it, until it is
//! killed. An event at or below the host's stored `last_seq` must come back
//! a duplicate and every other one applied: each is stored once.

use ccfleet_server::store::{EventOutcome, GroupCommit, Store, StoreHandle};
use ccfleet_tests::store_crash::{enrol, event, host, HOSTS, SEGMENT_BYTES};
use std::io::Write;
use std::time::Duration;

/// Events of one host handed to the store and not yet flushed, at most.
const IN_FLIGHT: usize = 8;

/// The writer's group-commit window: long enough that a kill usually lands
/// while events wait for their flush.
const WINDOW: Duration = Duration::from_millis(20);

fn say(line: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").expect("stdout is open");
    stdout.flush().expect("stdout is open");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut arguments = std::env::args().skip(1);
    let directory = arguments.next().expect("usage: store-writer DIR [ACKED]");
    let acked: Vec<u64> = match arguments.next() {
        Some(list) => list.split(',').map(|seq| seq.parse().expect("a watermark")).collect(),
        None => vec![0; HOSTS],
    };
    assert_eq!(acked.len(), HOSTS, "one watermark per host");
    // The test opened and dropped the store just before starting this
    // writer: wait while its lock is still held.
    let directory = std::path::Path::new(&directory);
    let store =
        Store::open_when_released(|| Store::open_with_segment_size(directory, SEGMENT_BYTES)).expect("the store opens");
    let group = GroupCommit {
        window: WINDOW,
        ..GroupCommit::default()
    };
    let store = StoreHandle::start_with(store, group).expect("the store thread starts");
    let mut writers = Vec::new();
    for (index, acked) in acked.into_iter().enumerate() {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            // What the server's Welcome would say.
            let stored = store
                .write(move |store| {
                    enrol(store, index)?;
                    Ok(store.host(&host(index))?.map_or(0, |host| host.last_seq))
                })
                .await
                .expect("the host is enrolled");
            let (flushed, mut flushes) = tokio::sync::mpsc::unbounded_channel::<(u64, EventOutcome)>();
            let check = |(seq, outcome): (u64, EventOutcome)| {
                let expected = if seq <= stored {
                    EventOutcome::Duplicate
                } else {
                    EventOutcome::Applied
                };
                assert_eq!(outcome, expected, "host {index} event {seq} (stored last_seq {stored})");
                say(format_args!("durable {index} {seq}"));
            };
            let mut in_flight = 0;
            for seq in acked + 1.. {
                if in_flight >= IN_FLIGHT {
                    check(flushes.recv().await.expect("the store answers"));
                    in_flight -= 1;
                }
                while let Ok(answer) = flushes.try_recv() {
                    check(answer);
                    in_flight -= 1;
                }
                let flushed = flushed.clone();
                store
                    .write_grouped(
                        move |store| {
                            let outcome = store.apply_event(&host(index), seq, &event(index, seq))?;
                            say(format_args!("applied {index} {seq}"));
                            Ok(outcome)
                        },
                        move |outcome| {
                            let _ = flushed.send((seq, outcome.expect("the event is stored")));
                        },
                    )
                    .expect("the store runs");
                in_flight += 1;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer ends only when killed");
    }
}

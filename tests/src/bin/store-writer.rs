//! `store-writer DIR`: the process the store's crash test kills
//! (`tests/it/store_crash.rs`). Opens the store in DIR with small log
//! segments, then, for every host of `ccfleet_tests::store_crash` at once,
//! applies its events from `last_seq + 1` on (the resend of an agent whose
//! events were not acknowledged) through `StoreHandle`, as the server does,
//! and prints `acked HOST SEQ` for every answered (flushed) event, until it
//! is killed.

use ccfleet_server::store::{EventOutcome, Store, StoreHandle};
use ccfleet_tests::store_crash::{enrol, event, host, HOSTS, SEGMENT_BYTES};
use std::io::Write;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let directory = std::env::args().nth(1).expect("usage: store-writer DIR");
    // The test opened and dropped the store just before starting this
    // writer: wait while its lock is still held.
    let directory = std::path::Path::new(&directory);
    let store =
        Store::open_when_released(|| Store::open_with_segment_size(directory, SEGMENT_BYTES)).expect("the store opens");
    let store = StoreHandle::start(store).expect("the store thread starts");
    let mut writers = Vec::new();
    for index in 0..HOSTS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let last_seq = store
                .write(move |store| {
                    enrol(store, index)?;
                    Ok(store.host(&host(index))?.map_or(0, |host| host.last_seq))
                })
                .await
                .expect("the host is enrolled");
            for seq in last_seq + 1.. {
                let outcome = store
                    .write(move |store| store.apply_event(&host(index), seq, &event(index, seq)))
                    .await
                    .expect("the event is stored");
                assert_eq!(outcome, EventOutcome::Applied, "host {index} event {seq}");
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "acked {index} {seq}").expect("stdout is open");
                stdout.flush().expect("stdout is open");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer ends only when killed");
    }
}

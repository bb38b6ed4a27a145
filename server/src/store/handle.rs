//! `StoreHandle`: the async face of the store, backed by one dedicated thread.

use std::path::Path;
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use super::{Store, StoreError};

/// A job runs on the store thread; a write returns the reply to send once
/// its batch has been flushed.
type Job = Box<dyn FnOnce(&Store) -> Option<PendingReply> + Send>;

type PendingReply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Cloneable handle to the store thread. The thread stops, after a final
/// flush, when the last handle is dropped.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: std_mpsc::Sender<Job>,
}

impl StoreHandle {
    /// Opens the store and starts its thread.
    pub fn open(directory: &Path) -> Result<StoreHandle, StoreError> {
        Self::start(Store::open(directory)?)
    }

    /// Starts the store thread over an opened store.
    pub fn start(store: Store) -> Result<StoreHandle, StoreError> {
        let (jobs, inbox) = std_mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ccfleet-store".into())
            .spawn(move || run_store_thread(store, inbox))
            .map_err(|_| StoreError::Stopped)?;
        Ok(StoreHandle { jobs })
    }

    /// Runs a read on the store thread.
    pub async fn read<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(operation, false).await
    }

    /// Runs a write on the store thread; the answer arrives after the write
    /// has been flushed to disk.
    pub async fn write<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(operation, true).await
    }

    async fn submit<T, F>(&self, operation: F, writes: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = if writes {
            // The reply waits for the batch's flush.
            Box::new(move |store: &Store| {
                let result = operation(store);
                let reply: PendingReply = Box::new(move |flushed: Result<(), String>| {
                    let result = match (result, flushed) {
                        (Ok(value), Ok(())) => Ok(value),
                        (Ok(_), Err(message)) => Err(StoreError::Flush(message)),
                        (Err(error), _) => Err(error),
                    };
                    let _ = reply.send(result);
                });
                Some(reply)
            })
        } else {
            Box::new(move |store: &Store| {
                let _ = reply.send(operation(store));
                None
            })
        };
        self.jobs.send(job).map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }
}

/// Most jobs grouped under one flush.
const MAX_BATCH: usize = 512;

/// The store thread: runs jobs in arrival order; after draining every job that
/// is already queued, flushes once if any of them wrote, then answers the
/// writers. Stops when every handle is gone.
fn run_store_thread(store: Store, inbox: std_mpsc::Receiver<Job>) {
    let mut replies: Vec<PendingReply> = Vec::new();
    while let Ok(first) = inbox.recv() {
        replies.extend(first(&store));
        // Group what is already queued, up to a bound so that a steady
        // stream of writes cannot postpone the flush indefinitely.
        for _ in 1..MAX_BATCH {
            let Ok(next) = inbox.try_recv() else { break };
            replies.extend(next(&store));
        }
        if !replies.is_empty() {
            let flushed = store.flush().map_err(|error| error.to_string());
            if let Err(message) = &flushed {
                tracing::error!(%message, "store flush failed");
            }
            for reply in replies.drain(..) {
                reply(flushed.clone());
            }
        }
    }
    if let Err(error) = store.flush() {
        tracing::error!(%error, "final store flush failed");
    }
}

//! `StoreHandle`: the async face of the store, backed by one dedicated thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{ListingIndex, Store, StoreError};

/// A job runs on the store thread; a write returns the reply to send once
/// its batch has been flushed.
type Job = Box<dyn FnOnce(&Store) -> Option<PendingReply> + Send>;

type PendingReply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Cloneable handle to the store thread. The thread stops, after a final
/// flush, when the last handle is dropped.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: std_mpsc::Sender<Job>,
    /// When the job (or flush) the thread is running started, in Unix
    /// milliseconds; 0 while it waits. Read by the stall watchdog.
    busy_since: Arc<AtomicU64>,
    /// Set by `close`: the thread stops after the current batch.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The store's listing index, read here without a trip to the thread.
    listings: Arc<ListingIndex>,
}

impl StoreHandle {
    /// Opens the store and starts its thread.
    pub fn open(directory: &Path) -> Result<StoreHandle, StoreError> {
        Self::start(Store::open(directory)?)
    }

    /// Starts the store thread over an opened store.
    pub fn start(store: Store) -> Result<StoreHandle, StoreError> {
        let listings = store.listing_index();
        let (jobs, inbox) = std_mpsc::channel::<Job>();
        let busy_since = Arc::new(AtomicU64::new(0));
        let busy = busy_since.clone();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("ccfleet-store".into())
            .spawn(move || run_store_thread(store, inbox, &busy, &stop))
            .map_err(|_| StoreError::Stopped)?;
        Ok(StoreHandle {
            jobs,
            busy_since,
            stopping,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
            listings,
        })
    }

    /// Stops the store thread after the requests queued so far, flushes and
    /// closes the database; later requests fail with `Stopped`. Returns once
    /// the database is closed (its lock released), so the directory can be
    /// opened again in the same process.
    pub async fn close(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        // An empty job wakes the thread if it is waiting.
        let _ = self.jobs.send(Box::new(|_: &Store| None));
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// The in-memory listing index (hosts, apps, versions per recipe), kept
    /// in step with the store's writes; reading it never waits for the store
    /// thread.
    pub fn listings(&self) -> &ListingIndex {
        &self.listings
    }

    /// How long the store thread has been on its current job or flush;
    /// `None` while it is idle.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(super::now_millis().saturating_sub(since))),
        }
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
fn run_store_thread(
    store: Store,
    inbox: std_mpsc::Receiver<Job>,
    busy_since: &AtomicU64,
    stopping: &std::sync::atomic::AtomicBool,
) {
    let mut replies: Vec<PendingReply> = Vec::new();
    while let Ok(first) = inbox.recv() {
        busy_since.store(super::now_millis().max(1), Ordering::Relaxed);
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
        busy_since.store(0, Ordering::Relaxed);
        if stopping.load(Ordering::Relaxed) {
            break;
        }
    }
    if let Err(error) = store.flush() {
        tracing::error!(%error, "final store flush failed");
    }
}

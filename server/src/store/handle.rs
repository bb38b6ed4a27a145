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

/// What the store thread has done since it started: how many requests, how
/// many flushes, and where its time went. Read by the metrics endpoint and
/// the benchmarks (BENCHMARKS.md, "The store's write path").
#[derive(Debug, Default)]
pub struct StoreStats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    /// Nanoseconds spent running reads, writes (their work before the
    /// flush) and flushes.
    read_nanos: AtomicU64,
    write_nanos: AtomicU64,
    flush_nanos: AtomicU64,
    /// Nanoseconds requests waited in the queue before the thread took them.
    queue_nanos: AtomicU64,
    /// CPU time of the store thread so far (its own clock, so time the
    /// thread was runnable but not running is not in it).
    cpu_nanos: AtomicU64,
}

/// A copy of [`StoreStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStatsSnapshot {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub read_nanos: u64,
    pub write_nanos: u64,
    pub flush_nanos: u64,
    pub queue_nanos: u64,
    pub cpu_nanos: u64,
}

impl StoreStats {
    pub fn snapshot(&self) -> StoreStatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StoreStatsSnapshot {
            reads: load(&self.reads),
            writes: load(&self.writes),
            flushes: load(&self.flushes),
            read_nanos: load(&self.read_nanos),
            write_nanos: load(&self.write_nanos),
            flush_nanos: load(&self.flush_nanos),
            queue_nanos: load(&self.queue_nanos),
            cpu_nanos: load(&self.cpu_nanos),
        }
    }
}

/// The calling thread's CPU time.
fn thread_cpu_nanos() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|time| time.tv_sec() as u64 * 1_000_000_000 + time.tv_nsec() as u64)
        .unwrap_or(0)
}

fn add_elapsed(counter: &AtomicU64, since: std::time::Instant) -> std::time::Instant {
    let now = std::time::Instant::now();
    counter.fetch_add(now.duration_since(since).as_nanos() as u64, Ordering::Relaxed);
    now
}

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
    stats: Arc<StoreStats>,
}

impl StoreHandle {
    /// Opens the store and starts its thread.
    pub fn open(directory: &Path) -> Result<StoreHandle, StoreError> {
        Self::start(Store::open(directory)?)
    }

    /// Opens the store through [`Store::reopen`] (waiting while a store just
    /// dropped still holds the directory) and starts its thread; for tests.
    #[cfg(test)]
    pub(crate) fn reopen(directory: &Path) -> StoreHandle {
        Self::start(Store::reopen(directory)).expect("the store thread starts")
    }

    /// Starts the store thread over an opened store.
    pub fn start(store: Store) -> Result<StoreHandle, StoreError> {
        let listings = store.listing_index();
        let (jobs, inbox) = std_mpsc::channel::<Job>();
        let busy_since = Arc::new(AtomicU64::new(0));
        let busy = busy_since.clone();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stopping.clone();
        let stats = Arc::new(StoreStats::default());
        let counters = stats.clone();
        let thread = std::thread::Builder::new()
            .name("ccfleet-store".into())
            .spawn(move || run_store_thread(store, inbox, &busy, &stop, &counters))
            .map_err(|_| StoreError::Stopped)?;
        Ok(StoreHandle {
            jobs,
            busy_since,
            stopping,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
            listings,
            stats,
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

    /// The store thread's counters so far.
    pub fn stats(&self) -> StoreStatsSnapshot {
        self.stats.snapshot()
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
        let queued = std::time::Instant::now();
        let stats = self.stats.clone();
        let job: Job = if writes {
            // The reply waits for the batch's flush.
            Box::new(move |store: &Store| {
                let started = add_elapsed(&stats.queue_nanos, queued);
                let result = operation(store);
                add_elapsed(&stats.write_nanos, started);
                stats.writes.fetch_add(1, Ordering::Relaxed);
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
                let started = add_elapsed(&stats.queue_nanos, queued);
                let result = operation(store);
                add_elapsed(&stats.read_nanos, started);
                stats.reads.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(result);
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
    stats: &StoreStats,
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
            let started = std::time::Instant::now();
            let flushed = store.flush().map_err(|error| error.to_string());
            add_elapsed(&stats.flush_nanos, started);
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            if let Err(message) = &flushed {
                tracing::error!(%message, "store flush failed");
            }
            for reply in replies.drain(..) {
                reply(flushed.clone());
            }
        }
        stats.cpu_nanos.store(thread_cpu_nanos(), Ordering::Relaxed);
        busy_since.store(0, Ordering::Relaxed);
        if stopping.load(Ordering::Relaxed) {
            break;
        }
    }
    if let Err(error) = store.flush() {
        tracing::error!(%error, "final store flush failed");
    }
}

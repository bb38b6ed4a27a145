//! `StoreHandle`: the async face of the store, backed by one dedicated thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{FleetGauges, ListingIndex, Store, StoreError};

/// A job runs on the store thread; a write returns the reply to send once
/// its batch has been flushed, and how soon that flush must come.
type Job = Box<dyn FnOnce(&Store) -> Option<(PendingReply, Durability)> + Send>;

/// How soon a write needs its flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// At once: the writer waits for nothing else (admin actions, rollout
    /// transitions, hellos, enrolment). The flush also covers every grouped
    /// write before it.
    Now,
    /// Within the group-commit window: agents' events, which the agent keeps
    /// in its outbox until a watermark covers them.
    Grouped,
}

/// Group commit: how long the store thread may hold grouped writes before
/// their flush, and how many it holds at most (BENCHMARKS.md, "Durable
/// acknowledgements by watermark", for how these were chosen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// The longest a grouped write waits for its flush (0: flush as soon as
    /// the queue is drained, as for any other write).
    pub window: Duration,
    /// Grouped writes waiting that make the flush due at once.
    pub max_writes: usize,
}

/// The default window: long enough to group the reports of a busy fleet
/// under one flush, short against the 100 ms a durable acknowledgement may
/// take and against a rollout's reaction to a result.
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_millis(10);

impl Default for GroupCommit {
    fn default() -> GroupCommit {
        GroupCommit {
            window: DEFAULT_COMMIT_WINDOW,
            max_writes: MAX_BATCH,
        }
    }
}

/// What the store thread does next about the writes that wait for a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushStep {
    /// Nothing waits: sleep until a job arrives.
    Idle,
    /// Flush now and answer every waiting writer.
    Flush,
    /// Take jobs as they come, and flush at this instant at the latest.
    WaitUntil(std::time::Instant),
}

/// Writes waiting for the next flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Unflushed {
    /// A write that must not wait is among them.
    pub urgent: bool,
    /// Grouped writes among them.
    pub grouped: usize,
    /// When the oldest grouped write ran: the window runs from there.
    pub window_opened: Option<std::time::Instant>,
}

/// The group-commit rule: flush at once for an urgent write or a full
/// group, otherwise when the window that the oldest grouped write opened
/// has passed.
pub(crate) fn flush_step(waiting: Unflushed, now: std::time::Instant, config: GroupCommit) -> FlushStep {
    if waiting.urgent || (waiting.grouped > 0 && waiting.grouped >= config.max_writes) {
        return FlushStep::Flush;
    }
    match waiting.window_opened {
        None => FlushStep::Idle,
        Some(opened) => {
            let due = opened + config.window;
            if now >= due {
                FlushStep::Flush
            } else {
                FlushStep::WaitUntil(due)
            }
        }
    }
}

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
    /// Open alerts, rollouts and the notification queue, kept by the store.
    gauges: Arc<FleetGauges>,
    /// Wakes the notification delivery tasks when something is queued.
    notification_waker: tokio::sync::watch::Receiver<u64>,
    /// Set (once) when a flush failed: the store thread has stopped, see
    /// [`StoreHandle::failed`].
    failure: tokio::sync::watch::Receiver<Option<String>>,
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

    /// Starts the store thread over an opened store, with the default group
    /// commit.
    pub fn start(store: Store) -> Result<StoreHandle, StoreError> {
        Self::start_with(store, GroupCommit::default())
    }

    /// Starts the store thread over an opened store; grouped writes
    /// ([`StoreHandle::write_grouped`]) are flushed as `group` says.
    pub fn start_with(store: Store, group: GroupCommit) -> Result<StoreHandle, StoreError> {
        let listings = store.listing_index();
        let gauges = store.gauges();
        let notification_waker = store.notification_waker();
        let (jobs, inbox) = std_mpsc::channel::<Job>();
        let busy_since = Arc::new(AtomicU64::new(0));
        let busy = busy_since.clone();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stopping.clone();
        let stats = Arc::new(StoreStats::default());
        let counters = stats.clone();
        let (failed, failure) = tokio::sync::watch::channel(None);
        let thread = std::thread::Builder::new()
            .name("ccfleet-store".into())
            .spawn(move || {
                if let Err(message) = run_store_thread(store, inbox, group, &busy, &stop, &counters) {
                    failed.send_replace(Some(message));
                }
            })
            .map_err(|_| StoreError::Stopped)?;
        Ok(StoreHandle {
            jobs,
            busy_since,
            stopping,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
            listings,
            stats,
            gauges,
            notification_waker,
            failure,
        })
    }

    /// Completes when a flush has failed, with sled's error. sled refuses
    /// every write after an I/O error (a full disk, a failing device), even
    /// once its cause is gone, so the store thread stops there: what it had
    /// not flushed was never acknowledged, and a fresh open recovers from the
    /// log. Never completes for a store that is closed without a failure.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        let message = match failure.wait_for(Option::is_some).await {
            Ok(message) => message.clone().unwrap_or_default(),
            Err(_) => String::new(),
        };
        if message.is_empty() {
            // Closed without a failure.
            return std::future::pending().await;
        }
        message
    }

    /// The gauges the store keeps (open alerts, rollouts by state, the
    /// notification queue).
    pub fn gauges(&self) -> &FleetGauges {
        &self.gauges
    }

    /// Changes whenever a notification is queued.
    pub fn notification_waker(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notification_waker.clone()
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
        self.submit(operation, None).await
    }

    /// Runs a write on the store thread; the answer arrives after the write
    /// has been flushed to disk, which happens at once (with every grouped
    /// write before it).
    pub async fn write<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(operation, Some(Durability::Now)).await
    }

    /// Queues a write whose flush may wait for the group-commit window:
    /// `durable` is called on the store thread once the write is flushed (or
    /// failed), so it must be quick (a channel send). Writes run in the order
    /// they are queued and are answered in that order. Fails at once only
    /// when the store has stopped.
    pub fn write_grouped<T, F, D>(&self, operation: F, durable: D) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        D: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        self.enqueue(operation, Some(Durability::Grouped), durable)
    }

    async fn submit<T, F>(&self, operation: F, durability: Option<Durability>) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.enqueue(operation, durability, move |result| {
            let _ = reply.send(result);
        })?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Queues `operation` for the store thread; `answer` gets its result,
    /// for a write (`durability` given) after the flush that covers it.
    fn enqueue<T, F, A>(&self, operation: F, durability: Option<Durability>, answer: A) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        A: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        let queued = std::time::Instant::now();
        let stats = self.stats.clone();
        let job: Job = match durability {
            // The answer waits for the flush.
            Some(durability) => Box::new(move |store: &Store| {
                let started = add_elapsed(&stats.queue_nanos, queued);
                let result = operation(store);
                add_elapsed(&stats.write_nanos, started);
                stats.writes.fetch_add(1, Ordering::Relaxed);
                let reply: PendingReply = Box::new(move |flushed: Result<(), String>| {
                    answer(match (result, flushed) {
                        (Ok(value), Ok(())) => Ok(value),
                        (Ok(_), Err(message)) => Err(StoreError::Flush(message)),
                        (Err(error), _) => Err(error),
                    });
                });
                Some((reply, durability))
            }),
            None => Box::new(move |store: &Store| {
                let started = add_elapsed(&stats.queue_nanos, queued);
                let result = operation(store);
                add_elapsed(&stats.read_nanos, started);
                stats.reads.fetch_add(1, Ordering::Relaxed);
                answer(result);
                None
            }),
        };
        self.jobs.send(job).map_err(|_| StoreError::Stopped)
    }
}

/// Most jobs grouped under one flush.
const MAX_BATCH: usize = 512;

/// The writes run since the last flush, with their replies.
#[derive(Default)]
struct Batch {
    replies: Vec<PendingReply>,
    waiting: Unflushed,
}

impl Batch {
    fn run(&mut self, job: Job, store: &Store) {
        if let Some((reply, durability)) = job(store) {
            self.replies.push(reply);
            match durability {
                Durability::Now => self.waiting.urgent = true,
                Durability::Grouped => {
                    self.waiting.grouped += 1;
                    self.waiting.window_opened.get_or_insert_with(std::time::Instant::now);
                }
            }
        }
    }

    /// Flushes once and answers every writer of the batch; the flush's error
    /// is returned too.
    fn flush(&mut self, store: &Store, stats: &StoreStats) -> Result<(), String> {
        let started = std::time::Instant::now();
        // With sled's own words ("No space left on device"), not only ours.
        let flushed = store.flush().map_err(|error| match std::error::Error::source(&error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        });
        add_elapsed(&stats.flush_nanos, started);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        if let Err(message) = &flushed {
            tracing::error!(%message, "store flush failed");
        }
        for reply in self.replies.drain(..) {
            reply(flushed.clone());
        }
        self.waiting = Unflushed::default();
        flushed
    }
}

/// At most this many requests queued before a stop still run after it.
const MAX_DRAIN_AT_STOP: usize = 100_000;

/// The store thread: runs jobs in arrival order as they come; flushes once
/// for everything written since the last flush when `flush_step` says so (an
/// urgent write, a full group, or the window of the oldest grouped write
/// passed), then answers the writers. Stops when every handle is gone, after
/// a last flush. A failed flush stops it at once with the error: sled
/// refuses every later write (see [`StoreHandle::failed`]); the requests
/// still queued fail as `Stopped`.
fn run_store_thread(
    store: Store,
    inbox: std_mpsc::Receiver<Job>,
    group: GroupCommit,
    busy_since: &AtomicU64,
    stopping: &std::sync::atomic::AtomicBool,
    stats: &StoreStats,
) -> Result<(), String> {
    let mut batch = Batch::default();
    loop {
        let next = match flush_step(batch.waiting, std::time::Instant::now(), group) {
            FlushStep::Idle => match inbox.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            },
            FlushStep::WaitUntil(due) => {
                match inbox.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
                    Ok(job) => Some(job),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            FlushStep::Flush => None,
        };
        busy_since.store(super::now_millis().max(1), Ordering::Relaxed);
        if let Some(first) = next {
            batch.run(first, &store);
            // Take what is already queued, up to a bound so that a steady
            // stream of jobs cannot postpone a flush that is due.
            for _ in 1..MAX_BATCH {
                let Ok(job) = inbox.try_recv() else { break };
                batch.run(job, &store);
            }
        }
        if flush_step(batch.waiting, std::time::Instant::now(), group) == FlushStep::Flush {
            batch.flush(&store, stats)?;
        }
        stats.cpu_nanos.store(thread_cpu_nanos(), Ordering::Relaxed);
        busy_since.store(0, Ordering::Relaxed);
        if stopping.load(Ordering::Relaxed) {
            break;
        }
    }
    // Requests queued before the stop still run (a stop can be seen in the
    // same pass that answered the caller's previous write, before its next
    // requests were taken); the bound keeps a sender that never stops from
    // holding the thread.
    for _ in 0..MAX_DRAIN_AT_STOP {
        let Ok(job) = inbox.try_recv() else { break };
        batch.run(job, &store);
    }
    // Writers still waiting (a stop inside a window) are answered after the
    // last flush.
    batch.flush(&store, stats)
}

#[cfg(test)]
mod group_commit_tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_flush_comes_at_once_for_urgent_writes_and_full_groups_else_after_the_window() {
        let config = GroupCommit {
            window: Duration::from_millis(10),
            max_writes: 4,
        };
        let opened = Instant::now();
        let at = |millis| opened + Duration::from_millis(millis);
        let waiting = |urgent, grouped, window_opened| Unflushed {
            urgent,
            grouped,
            window_opened,
        };
        let cases = [
            ("nothing written", waiting(false, 0, None), at(0), FlushStep::Idle),
            ("an urgent write alone", waiting(true, 0, None), at(0), FlushStep::Flush),
            (
                "an urgent write ends the window",
                waiting(true, 2, Some(opened)),
                at(1),
                FlushStep::Flush,
            ),
            (
                "one grouped write",
                waiting(false, 1, Some(opened)),
                at(0),
                FlushStep::WaitUntil(at(10)),
            ),
            (
                "inside the window",
                waiting(false, 3, Some(opened)),
                at(9),
                FlushStep::WaitUntil(at(10)),
            ),
            (
                "the window passed",
                waiting(false, 1, Some(opened)),
                at(10),
                FlushStep::Flush,
            ),
            ("long past", waiting(false, 1, Some(opened)), at(500), FlushStep::Flush),
            ("a full group", waiting(false, 4, Some(opened)), at(0), FlushStep::Flush),
        ];
        for (name, unflushed, now, expected) in cases {
            assert_eq!(flush_step(unflushed, now, config), expected, "{name}");
        }
        let no_window = GroupCommit {
            window: Duration::ZERO,
            max_writes: 4,
        };
        assert_eq!(
            flush_step(waiting(false, 1, Some(opened)), opened, no_window),
            FlushStep::Flush,
            "a zero window flushes once the queue is drained"
        );
    }
}

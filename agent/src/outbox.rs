//! The outbox: durable, sequence-numbered events waiting for the server.
//!
//! Each event is one file, `<seq>.<kind>.pb` (the encoded `AgentMessage`),
//! written to a temporary name, synced and renamed, so a crash leaves either
//! the whole event or none. The server acknowledges with a watermark (every event
//! at or below it is durable on the server; agent.proto, `Ack`) and
//! ignores anything at or below what it has stored, so re-sending after a
//! reconnect keeps each event once.
//!
//! Numbers are never reused, even across restarts: at start the next number
//! is above every event file and above the persisted counter, and the counter
//! is persisted (as `next_seq.<n>` files, the highest wins) before any
//! acknowledged event file is removed.
//!
//! The outbox is shared by reference (`&self`) between the tasks that push
//! and the link that sends and acknowledges. Its lock guards only in-memory
//! bookkeeping and is never held across file I/O or fsync: a push takes its
//! number under the lock, writes and syncs its file without it, then marks the
//! number done. [`Outbox::pending`] returns only events below the lowest
//! number still being written, so the link never sends event N+1 while N
//! can still appear (the server would then take N for a duplicate).
//!
//! Inventory events carry the complete inventory, so a newer one makes the
//! older pending ones worthless: pushing an inventory drops them (the server
//! accepts gaps in the numbering). Operation progress and results are never
//! dropped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ccfleet_proto::pb::{self, agent_message::Body};
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("outbox file {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// The kinds of durable events, as written in file names.
fn kind_of(body: &Body) -> &'static str {
    match body {
        Body::Inventory(_) => "inventory",
        Body::Progress(_) => "progress",
        Body::Result(_) => "result",
        Body::Alert(_) => "alert",
        // Not durable; never pushed (see `push`).
        Body::Hello(_) | Body::Heartbeat(_) => "other",
    }
}

/// The counter file of earlier versions (one file, replaced in place).
const LEGACY_COUNTER: &str = "next_seq";
/// Event and counter files are owner-writable, world-readable (what the
/// umask gave them before they had an explicit mode).
const EVENT_MODE: u32 = 0o644;

/// Counter files: `next_seq.<n>`; the highest `n` is the persisted counter.
const COUNTER_PREFIX: &str = "next_seq.";

pub struct Outbox {
    dir: PathBuf,
    /// In-memory bookkeeping only; never held across I/O.
    numbers: Mutex<Numbers>,
}

struct Numbers {
    /// The number the next push takes.
    next_seq: u64,
    /// Numbers taken by pushes whose files are not written yet.
    in_flight: BTreeSet<u64>,
}

impl Numbers {
    /// Every event below this number is written (or was dropped or
    /// acknowledged): the end of what may be sent.
    fn published_end(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next_seq)
    }
}

/// Marks a push's number done when dropped, also when the push failed, so
/// that a failed write leaves a gap instead of holding back every later event.
struct InFlight<'a> {
    outbox: &'a Outbox,
    seq: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.outbox.numbers().in_flight.remove(&self.seq);
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        let io = |source| OutboxError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let outbox = Outbox {
            dir: dir.to_owned(),
            numbers: Mutex::new(Numbers {
                next_seq: 1,
                in_flight: BTreeSet::new(),
            }),
        };
        let stored = outbox.stored_counter()?;
        let highest_event = outbox.files()?.last().map(|(seq, _, _)| *seq);
        outbox.numbers().next_seq = stored.max(1).max(highest_event.map_or(1, |seq| seq + 1));
        Ok(outbox)
    }

    fn numbers(&self) -> std::sync::MutexGuard<'_, Numbers> {
        // Only plain bookkeeping happens under the lock: a panic there leaves
        // consistent numbers behind.
        self.numbers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The sequence number of the newest event that may be sent: every event
    /// up to it is written (0 if none ever was).
    pub fn last_seq(&self) -> u64 {
        self.numbers().published_end() - 1
    }

    /// The persisted counter: the highest `next_seq.<n>` (or the legacy
    /// `next_seq` file); 1 when there is none.
    fn stored_counter(&self) -> Result<u64, OutboxError> {
        let mut highest = 1;
        for (value, _) in self.counter_files()? {
            highest = highest.max(value);
        }
        Ok(highest)
    }

    /// Every counter file with its value.
    fn counter_files(&self) -> Result<Vec<(u64, PathBuf)>, OutboxError> {
        let io = |source| OutboxError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut counters = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            let corrupt = |detail: String| OutboxError::Corrupt {
                path: path.clone(),
                detail,
            };
            if name == LEGACY_COUNTER {
                let text = std::fs::read_to_string(&path).map_err(|source| OutboxError::Io {
                    path: path.clone(),
                    source,
                })?;
                let value = text.trim().parse::<u64>().map_err(|error| corrupt(error.to_string()))?;
                counters.push((value, path));
            } else if let Some(value) = name.strip_prefix(COUNTER_PREFIX) {
                let value = value.parse::<u64>().map_err(|error| corrupt(error.to_string()))?;
                counters.push((value, path));
            }
        }
        Ok(counters)
    }

    /// Persists `value` as the counter: a new `next_seq.<value>` file, synced,
    /// then the lower ones removed. Writers never overwrite each other's
    /// file, so concurrent calls leave the highest value, whatever their order.
    fn persist_counter(&self, value: u64) -> Result<(), OutboxError> {
        let name = format!("{COUNTER_PREFIX}{value}");
        if !self.dir.join(&name).exists() {
            self.write_atomically(&name, b"")?;
        }
        for (older, path) in self.counter_files()? {
            if older < value {
                remove_if_present(&path)?;
            }
        }
        Ok(())
    }

    /// Pending event files, sorted by sequence number.
    fn files(&self) -> Result<Vec<(u64, String, PathBuf)>, OutboxError> {
        let io = |source| OutboxError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(".pb") else { continue };
            let Some((seq, kind)) = stem.split_once('.') else {
                continue;
            };
            if let Ok(seq) = seq.parse::<u64>() {
                files.push((seq, kind.to_owned(), path.clone()));
            }
        }
        files.sort_by_key(|(seq, _, _)| *seq);
        Ok(files)
    }

    /// Writes `name` through a temporary file of its own (concurrent writers
    /// of different names never share one), synced and renamed, and syncs
    /// the directory so that the rename is durable.
    fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), OutboxError> {
        let path = self.dir.join(name);
        ccfleet_proto::fsutil::write_atomic(&path, bytes, EVENT_MODE).map_err(|source| OutboxError::Io { path, source })
    }

    /// Stores a durable event and returns its sequence number.
    pub fn push(&self, body: Body) -> Result<u64, OutboxError> {
        let kind = kind_of(&body);
        debug_assert!(kind != "other", "hello and heartbeat are not durable events");
        let seq = {
            let mut numbers = self.numbers();
            let seq = numbers.next_seq;
            numbers.next_seq += 1;
            numbers.in_flight.insert(seq);
            seq
        };
        let in_flight = InFlight { outbox: self, seq };
        // A crash before this file is written wastes the number, which was
        // never sent; the file itself keeps it from being reused.
        let message = pb::AgentMessage { seq, body: Some(body) };
        self.write_atomically(&format!("{seq:020}.{kind}.pb"), &message.encode_to_vec())?;
        drop(in_flight);
        if kind == "inventory" {
            for (older, older_kind, path) in self.files()? {
                if older < seq && older_kind == "inventory" {
                    remove_if_present(&path)?;
                }
            }
        }
        Ok(seq)
    }

    /// Every pending event that may be sent, oldest first: those below the
    /// lowest number still being written (see the module comment).
    pub fn pending(&self) -> Result<Vec<pb::AgentMessage>, OutboxError> {
        let end = self.numbers().published_end();
        self.files()?
            .into_iter()
            .filter(|(seq, _, _)| *seq < end)
            .map(|(_, _, path)| {
                let bytes = std::fs::read(&path).map_err(|source| OutboxError::Io {
                    path: path.clone(),
                    source,
                })?;
                pb::AgentMessage::decode(bytes.as_slice()).map_err(|error| OutboxError::Corrupt {
                    path,
                    detail: error.to_string(),
                })
            })
            .collect()
    }

    /// Number of pending events.
    pub fn pending_count(&self) -> Result<usize, OutboxError> {
        Ok(self.files()?.len())
    }

    /// The server's watermark: it has stored and flushed everything up to
    /// and including `seq`; those events go, later ones stay.
    pub fn acknowledge(&self, seq: u64) -> Result<(), OutboxError> {
        let files = self.files()?;
        let next_seq = {
            let mut numbers = self.numbers();
            // A server that has seen higher numbers than we remember (the
            // state directory was restored from an old backup) must not make
            // us reuse them.
            numbers.next_seq = numbers.next_seq.max(seq + 1);
            numbers.next_seq
        };
        let removing = files.iter().any(|(pending, _, _)| *pending <= seq);
        if removing || next_seq > self.stored_counter()? {
            // Before any acknowledged file goes: the counter outlives them.
            self.persist_counter(next_seq)?;
        }
        for (pending, _, path) in files {
            if pending <= seq {
                remove_if_present(&path)?;
            }
        }
        Ok(())
    }
}

/// Removes `path`; one that is gone already (a concurrent removal) is fine.
fn remove_if_present(path: &Path) -> Result<(), OutboxError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OutboxError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str) -> Body {
        Body::Result(pb::OperationResult {
            operation_id: id.into(),
            ..Default::default()
        })
    }

    fn inventory(domain: &str) -> Body {
        Body::Inventory(pb::InventoryUpdate {
            inventory: Some(pb::Inventory {
                apps: vec![pb::ObservedApp {
                    domain: domain.into(),
                    ..Default::default()
                }],
            }),
        })
    }

    fn summary(outbox: &Outbox) -> Vec<String> {
        outbox
            .pending()
            .unwrap()
            .into_iter()
            .map(|message| match message.body.unwrap() {
                Body::Result(result) => format!("{} result {}", message.seq, result.operation_id),
                Body::Inventory(update) => {
                    format!("{} inventory {}", message.seq, update.inventory.unwrap().apps[0].domain)
                }
                other => format!("{} {other:?}", message.seq),
            })
            .collect()
    }

    #[test]
    fn events_survive_reopening_and_numbers_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.push(result("a")).unwrap(), 1);
        assert_eq!(outbox.push(inventory("x.example.org")).unwrap(), 2);
        assert_eq!(outbox.push(result("b")).unwrap(), 3);
        outbox.acknowledge(1).unwrap();
        drop(outbox);
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(summary(&outbox), ["2 inventory x.example.org", "3 result b"]);
        outbox.acknowledge(3).unwrap();
        drop(outbox);
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.pending_count().unwrap(), 0);
        assert_eq!(
            outbox.push(result("c")).unwrap(),
            4,
            "numbers continue after everything was acknowledged"
        );
    }

    #[test]
    fn a_newer_inventory_replaces_pending_ones_but_results_stay() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.push(inventory("a.example.org")).unwrap();
        outbox.push(result("op-1")).unwrap();
        outbox.push(inventory("b.example.org")).unwrap();
        assert_eq!(summary(&outbox), ["2 result op-1", "3 inventory b.example.org"]);
    }

    /// The server's Ack is a durability watermark (agent.proto): it covers
    /// every event at or below it and nothing above, may cover several at
    /// once, and a lower one arriving late (an earlier stream's) changes
    /// nothing.
    #[test]
    fn an_acknowledgement_drops_exactly_what_its_watermark_covers() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        for id in ["a", "b", "c", "d", "e"] {
            outbox.push(result(id)).unwrap();
        }
        outbox.acknowledge(3).unwrap();
        assert_eq!(summary(&outbox), ["4 result d", "5 result e"]);
        assert_eq!(outbox.pending_count().unwrap(), 2, "what `status` shows as waiting");
        outbox.acknowledge(2).unwrap();
        assert_eq!(summary(&outbox), ["4 result d", "5 result e"], "a stale watermark");
        outbox.acknowledge(5).unwrap();
        assert_eq!(outbox.pending_count().unwrap(), 0);
        assert_eq!(outbox.push(result("f")).unwrap(), 6);
    }

    /// Events the server received but no watermark covered (it died before
    /// its flush) stay in the outbox across a reconnect and a restart of the
    /// agent, and are offered again with their own numbers, so the server
    /// keeps each once.
    #[test]
    fn events_no_watermark_covered_are_offered_again_with_their_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.push(result("a")).unwrap();
        outbox.push(result("b")).unwrap();
        outbox.push(result("c")).unwrap();
        // Sent, and only the first covered before the stream broke.
        assert_eq!(outbox.pending().unwrap().len(), 3);
        outbox.acknowledge(1).unwrap();
        assert_eq!(summary(&outbox), ["2 result b", "3 result c"], "after a reconnect");
        drop(outbox);
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(summary(&outbox), ["2 result b", "3 result c"], "after a restart");
        // The restarted server's Welcome says it had stored 2 after all.
        outbox.acknowledge(2).unwrap();
        assert_eq!(summary(&outbox), ["3 result c"]);
        assert_eq!(outbox.push(result("d")).unwrap(), 4);
    }

    #[test]
    fn a_server_ahead_of_us_moves_the_counter_forward() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        outbox.acknowledge(41).unwrap();
        assert_eq!(outbox.push(result("a")).unwrap(), 42);
    }

    #[test]
    fn the_highest_counter_wins_and_lower_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A counter of the earlier single-file format, and two of the new one
        // (as two acknowledgements racing each other could leave them).
        std::fs::write(dir.path().join("next_seq"), "7\n").unwrap();
        std::fs::write(dir.path().join("next_seq.12"), "").unwrap();
        std::fs::write(dir.path().join("next_seq.9"), "").unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.push(result("a")).unwrap(), 12);
        outbox.acknowledge(12).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["next_seq.13"]);
        drop(outbox);
        assert_eq!(Outbox::open(dir.path()).unwrap().push(result("b")).unwrap(), 13);
    }

    /// Many threads push at once while a reader keeps asking what may be
    /// sent: every answer must be a gapless run from 1 (results are never
    /// dropped and nothing is acknowledged), or the link could send an
    /// event before an earlier one exists and the server would take the
    /// earlier one, arriving later, for a duplicate.
    #[test]
    fn concurrent_pushes_are_offered_in_order_without_holes() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = std::sync::Arc::new(Outbox::open(dir.path()).unwrap());
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let outbox = outbox.clone();
                std::thread::spawn(move || {
                    for index in 0..25 {
                        outbox.push(result(&format!("{writer}-{index}"))).unwrap();
                    }
                })
            })
            .collect();
        let mut snapshots = 0;
        loop {
            let done = writers.iter().all(|writer| writer.is_finished());
            let seqs: Vec<u64> = outbox.pending().unwrap().iter().map(|message| message.seq).collect();
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, expected, "a hole in what may be sent");
            assert!(outbox.last_seq() >= seqs.len() as u64);
            snapshots += 1;
            if done {
                break;
            }
        }
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(outbox.pending().unwrap().len(), 100);
        assert_eq!(outbox.last_seq(), 100);
        assert!(snapshots > 1);
    }

    #[test]
    fn a_corrupt_counter_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("next_seq"), "seven").unwrap();
        let error = Outbox::open(dir.path()).err().unwrap().to_string();
        assert!(error.starts_with("outbox file") && error.contains("corrupt"), "{error}");
        std::fs::remove_file(dir.path().join("next_seq")).unwrap();
        std::fs::write(dir.path().join("next_seq.x"), "").unwrap();
        let error = Outbox::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("next_seq.x is corrupt"), "{error}");
    }
}

//! The outbox: durable, sequence-numbered events waiting for the server.
//!
//! Each event is one file, `<seq>.<kind>.pb` (the encoded `AgentMessage`),
//! written to a temporary name, synced and renamed, so a crash leaves either
//! the whole event or none. The next sequence number is persisted before the
//! event that uses it, so numbers are never reused, even across restarts. The
//! server acknowledges by sequence number and ignores anything at or below
//! what it has stored, so re-sending after a reconnect keeps each event once.
//!
//! Inventory events carry the complete inventory, so a newer one makes the
//! older pending ones worthless: pushing an inventory drops them (the server
//! accepts gaps in the numbering). Operation progress and results are never
//! dropped.

use std::path::{Path, PathBuf};

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

pub struct Outbox {
    dir: PathBuf,
    next_seq: u64,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        let io = |source| OutboxError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let stored = match std::fs::read_to_string(dir.join("next_seq")) {
            Ok(text) => text.trim().parse::<u64>().map_err(|error| OutboxError::Corrupt {
                path: dir.join("next_seq"),
                detail: error.to_string(),
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 1,
            Err(source) => return Err(io(source)),
        };
        let mut outbox = Outbox {
            dir: dir.to_owned(),
            next_seq: stored.max(1),
        };
        if let Some(highest) = outbox.files()?.last().map(|(seq, _, _)| *seq) {
            outbox.next_seq = outbox.next_seq.max(highest + 1);
        }
        Ok(outbox)
    }

    /// The sequence number of the newest event ever pushed (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
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

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> Result<(), OutboxError> {
        use std::io::Write;
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!(".{name}.tmp"));
        let io = |source| OutboxError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&temporary, &path).map_err(io)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(&self.dir)
            .and_then(|directory| directory.sync_all())
            .map_err(io)
    }

    /// Stores a durable event and returns its sequence number.
    pub fn push(&mut self, body: Body) -> Result<u64, OutboxError> {
        let kind = kind_of(&body);
        debug_assert!(kind != "other", "hello and heartbeat are not durable events");
        let seq = self.next_seq;
        // Persist the counter first: a crash after this line wastes a number,
        // never reuses one.
        self.write_atomically("next_seq", format!("{}\n", seq + 1).as_bytes())?;
        self.next_seq = seq + 1;
        let message = pb::AgentMessage { seq, body: Some(body) };
        self.write_atomically(&format!("{seq:020}.{kind}.pb"), &message.encode_to_vec())?;
        if kind == "inventory" {
            for (older, older_kind, path) in self.files()? {
                if older < seq && older_kind == "inventory" {
                    std::fs::remove_file(&path).map_err(|source| OutboxError::Io { path, source })?;
                }
            }
        }
        Ok(seq)
    }

    /// Every pending event, oldest first.
    pub fn pending(&self) -> Result<Vec<pb::AgentMessage>, OutboxError> {
        self.files()?
            .into_iter()
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

    /// The server has stored everything up to and including `seq`.
    pub fn acknowledge(&mut self, seq: u64) -> Result<(), OutboxError> {
        for (pending, _, path) in self.files()? {
            if pending <= seq {
                std::fs::remove_file(&path).map_err(|source| OutboxError::Io { path, source })?;
            }
        }
        // A server that has seen higher numbers than we remember (the state
        // directory was restored from an old backup) must not make us reuse them.
        if seq >= self.next_seq {
            self.write_atomically("next_seq", format!("{}\n", seq + 1).as_bytes())?;
            self.next_seq = seq + 1;
        }
        Ok(())
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
        let mut outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.push(result("a")).unwrap(), 1);
        assert_eq!(outbox.push(inventory("x.example.org")).unwrap(), 2);
        assert_eq!(outbox.push(result("b")).unwrap(), 3);
        outbox.acknowledge(1).unwrap();
        drop(outbox);
        let mut outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(summary(&outbox), ["2 inventory x.example.org", "3 result b"]);
        outbox.acknowledge(3).unwrap();
        drop(outbox);
        let mut outbox = Outbox::open(dir.path()).unwrap();
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
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.push(inventory("a.example.org")).unwrap();
        outbox.push(result("op-1")).unwrap();
        outbox.push(inventory("b.example.org")).unwrap();
        assert_eq!(summary(&outbox), ["2 result op-1", "3 inventory b.example.org"]);
    }

    #[test]
    fn a_server_ahead_of_us_moves_the_counter_forward() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.acknowledge(41).unwrap();
        assert_eq!(outbox.push(result("a")).unwrap(), 42);
    }

    #[test]
    fn a_corrupt_counter_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("next_seq"), "seven").unwrap();
        let error = Outbox::open(dir.path()).err().unwrap().to_string();
        assert!(error.starts_with("outbox file") && error.contains("corrupt"), "{error}");
    }
}

//! The audit log: admin actions appended with who, what and when, kept by
//! age (`--audit-retention`, default 90 days) and never evicted by count: at
//! `--audit-max-entries` further admin actions are refused instead
//! (`StoreError::AuditFull`), so no burst of actions can push an older one
//! out of the log. Actions that are store writes append their entry in the
//! same transaction (`audit_entry`, `audit_appended`).

use std::sync::atomic::Ordering;

use super::{decode, encode, Store, StoreError};
use crate::model::{AuditRecord, UnixMillis};

pub(super) const AUDIT: &str = "audit";

/// Entries kept at most unless configured otherwise; past it admin actions
/// are refused. At a few hundred bytes an entry, about 300 MB of log.
pub const DEFAULT_AUDIT_MAX_ENTRIES: usize = 1_000_000;
/// Entries older than this many days are pruned unless configured otherwise.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 90;

impl Store {
    /// Refuses admin actions once `max_entries` (at least 1) entries are kept.
    pub fn with_audit_max_entries(mut self, max_entries: usize) -> Store {
        self.audit_max_entries = max_entries.max(1);
        self
    }

    /// Counts the stored entries (at open).
    pub(super) fn count_audit_entries(&self) {
        self.audit_entries.store(self.audit.len(), Ordering::Relaxed);
    }

    /// `Ok` while the log has room for one more entry, else `AuditFull`.
    pub fn audit_room(&self) -> Result<(), StoreError> {
        if self.audit_entries.load(Ordering::Relaxed) >= self.audit_max_entries {
            return Err(StoreError::AuditFull {
                max: self.audit_max_entries,
            });
        }
        Ok(())
    }

    /// The key and value of a new entry, for a transaction that writes it with
    /// its action; call `audit_appended` once it committed. Keys are the time
    /// then a sequence number, so entries sort by time and never collide.
    pub(super) fn audit_entry(&self, entry: &AuditRecord) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let sequence = self.db.generate_id()?;
        let mut audit_key = entry.at.to_be_bytes().to_vec();
        audit_key.extend_from_slice(&sequence.to_be_bytes());
        Ok((audit_key, encode(entry)?))
    }

    pub(super) fn audit_appended(&self, entries: usize) {
        self.audit_entries.fetch_add(entries, Ordering::Relaxed);
    }

    /// Appends an entry, or refuses with `AuditFull`.
    pub fn append_audit(&self, entry: &AuditRecord) -> Result<(), StoreError> {
        self.audit_room()?;
        let (audit_key, value) = self.audit_entry(entry)?;
        self.audit.insert(audit_key, value)?;
        self.audit_appended(1);
        Ok(())
    }

    /// Removes entries older than `cutoff`; returns how many. Run at start
    /// and hourly with the retention age.
    pub fn prune_audit_before(&self, cutoff: UnixMillis) -> Result<usize, StoreError> {
        let old: Vec<sled::IVec> = self
            .audit
            .range(..cutoff.to_be_bytes().to_vec())
            .keys()
            .collect::<Result<_, _>>()?;
        for key in &old {
            self.audit.remove(key)?;
        }
        let _ = self
            .audit_entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                Some(count.saturating_sub(old.len()))
            });
        Ok(old.len())
    }

    /// Entries at or after `since`, newest first, at most `limit`.
    pub fn audit(&self, since: UnixMillis, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit
            .range(since.to_be_bytes().to_vec()..)
            .rev()
            .take(limit)
            .map(|entry| decode(AUDIT, &entry?.1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn entry(at: UnixMillis, action: &str) -> AuditRecord {
        AuditRecord {
            at,
            who: "admin".into(),
            action: action.into(),
            target: "r1".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn audit_is_newest_first_and_filtered_by_time() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        for at in [10, 20, 30] {
            store.append_audit(&entry(at, &format!("a{at}"))).unwrap();
        }
        let actions = |since, limit| -> Vec<String> {
            store
                .audit(since, limit)
                .unwrap()
                .into_iter()
                .map(|entry| entry.action)
                .collect()
        };
        assert_eq!(actions(0, 10), ["a30", "a20", "a10"]);
        assert_eq!(actions(20, 10), ["a30", "a20"]);
        assert_eq!(actions(0, 1), ["a30"]);
    }

    #[test]
    fn entries_go_by_age_only_and_a_full_log_refuses_instead_of_evicting() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap().with_audit_max_entries(20);
        for at in 1..=20 {
            store.append_audit(&entry(at * 1000, "x")).unwrap();
        }
        // Full: the 21st is refused and the oldest is still there.
        let refused = store.append_audit(&entry(21_000, "y")).unwrap_err();
        assert!(matches!(refused, StoreError::AuditFull { max: 20 }), "{refused:?}");
        assert!(refused.to_string().contains("--audit-max-entries"), "{refused}");
        assert_eq!(store.audit(0, 100).unwrap().len(), 20);
        assert_eq!(store.audit(0, 100).unwrap().last().unwrap().at, 1000);
        // Entries older than 10 s go; then there is room again.
        assert_eq!(store.prune_audit_before(10_000).unwrap(), 9);
        store.append_audit(&entry(21_000, "y")).unwrap();
        assert_eq!(store.audit(0, 100).unwrap().len(), 12);
        assert_eq!(store.audit(0, 100).unwrap().last().unwrap().at, 10_000);
        // The count survives a reopen.
        drop(store);
        let store = Store::reopen(directory.path()).with_audit_max_entries(12);
        assert!(matches!(
            store.append_audit(&entry(22_000, "z")),
            Err(StoreError::AuditFull { .. })
        ));
    }
}

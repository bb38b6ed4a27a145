//! The audit log: admin actions appended with who, what and when, kept within
//! a retention bound (count and age) so it cannot grow without limit
//! (ARCHITECTURE.md, "Storage": sled's space amplification).

use super::{decode, encode, Store, StoreError};
use crate::model::{AuditRecord, UnixMillis};

pub(super) const AUDIT: &str = "audit";

/// Entries kept at most; older ones are compacted away.
pub const AUDIT_MAX_ENTRIES: usize = 10_000;
/// Entries older than this are compacted away (400 days).
pub const AUDIT_MAX_AGE_MS: u64 = 400 * 24 * 3600 * 1000;
/// Compaction runs once per this many appends.
const COMPACT_EVERY: u64 = 64;

impl Store {
    /// Appends an entry. Keys are the time then a sequence number, so entries
    /// sort by time and never collide; every `COMPACT_EVERY` appends the log
    /// is compacted to the retention bounds.
    pub fn append_audit(&self, entry: &AuditRecord) -> Result<(), StoreError> {
        let sequence = self.db.generate_id()?;
        let mut audit_key = entry.at.to_be_bytes().to_vec();
        audit_key.extend_from_slice(&sequence.to_be_bytes());
        self.audit.insert(audit_key, encode(entry)?)?;
        if sequence % COMPACT_EVERY == 0 {
            self.compact_audit(entry.at, AUDIT_MAX_ENTRIES, AUDIT_MAX_AGE_MS)?;
        }
        Ok(())
    }

    /// Removes entries older than `max_age_ms` before `now`, then the oldest
    /// beyond `max_entries`. Returns how many were removed.
    pub fn compact_audit(&self, now: UnixMillis, max_entries: usize, max_age_ms: u64) -> Result<usize, StoreError> {
        let cutoff = now.saturating_sub(max_age_ms).to_be_bytes();
        let mut removed = 0;
        let old: Vec<sled::IVec> = self.audit.range(..cutoff.to_vec()).keys().collect::<Result<_, _>>()?;
        for key in old {
            self.audit.remove(key)?;
            removed += 1;
        }
        let count = self.audit.iter().keys().count();
        if count > max_entries {
            let excess: Vec<sled::IVec> = self
                .audit
                .iter()
                .keys()
                .take(count - max_entries)
                .collect::<Result<_, _>>()?;
            for key in excess {
                self.audit.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
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
    fn audit_compaction_keeps_the_retention_bounds() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        for at in 1..=50 {
            store.append_audit(&entry(at * 1000, "x")).unwrap();
        }
        // Older than 40 s before t=50 s: entries 1..=9 go; then keep 20.
        let removed = store.compact_audit(50_000, 20, 40_000).unwrap();
        assert_eq!(removed, 30);
        let kept = store.audit(0, 100).unwrap();
        assert_eq!(kept.len(), 20);
        assert_eq!(kept.last().unwrap().at, 31_000);
    }

    #[test]
    fn appends_compact_by_themselves() {
        let directory = tempfile::tempdir().unwrap();
        let store = Store::open(directory.path()).unwrap();
        let now = 500 * 24 * 3600 * 1000;
        store.append_audit(&entry(1, "ancient")).unwrap();
        for _ in 0..COMPACT_EVERY * 2 {
            store.append_audit(&entry(now, "recent")).unwrap();
        }
        assert!(store
            .audit(0, 1000)
            .unwrap()
            .iter()
            .all(|entry| entry.action == "recent"));
    }
}

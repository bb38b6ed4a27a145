//! The one migration of the journal: pending-work markers that an older agent
//! kept under `$ABRA_DIR/.ccfleet-pending/` move into the journal's `pending/`.

use std::path::Path;

use super::{sync_directory, JournalError};

/// Moves every marker of `<abra_dir>/.ccfleet-pending/` into `pending`; nothing
/// happens when there is no such directory.
pub(super) fn move_pending_markers(abra_dir: &Path, pending: &Path) -> Result<(), JournalError> {
    let legacy = abra_dir.join(".ccfleet-pending");
    let Ok(entries) = std::fs::read_dir(&legacy) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let target = pending.join(entry.file_name());
        std::fs::rename(entry.path(), &target).map_err(|source| JournalError::Io {
            action: "cannot move a pending-work marker into the journal",
            path: entry.path(),
            source,
        })?;
    }
    sync_directory(pending)
}

//! The record each backup carries (`meterstand-backup.json`: when it was taken and the
//! subject journal's sequence number it had applied), and the rotation that keeps the
//! newest `[backup] keep` backups of a directory and tells how far the journal may be
//! pruned: no kept backup needs an entry at or below the smallest sequence number they
//! hold (`docs/operations.md`, "The subject journal").

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The name of the record inside a backup directory.
pub const RECORD_FILE: &str = "meterstand-backup.json";

/// What a backup records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// When it was taken (RFC 3339, UTC).
    pub taken: String,
    /// The last subject-journal entry the store had applied when it was taken.
    pub journal_seq: u64,
}

impl BackupRecord {
    /// Writes the record into `dir` (mode 0600).
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e| StoreError::engine("writing the backup record", e);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| StoreError::engine("encoding the backup record", e))?;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(dir.join(RECORD_FILE))
            .map_err(io)?;
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io)
    }

    /// The record of the backup in `dir`, if it has one (backups of earlier versions do not).
    pub fn read(dir: &Path) -> Result<Option<BackupRecord>, StoreError> {
        match std::fs::read(dir.join(RECORD_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|_| StoreError::Corrupt("a backup record")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::engine("reading a backup record", e)),
        }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Backups removed, oldest first.
    pub removed: Vec<PathBuf>,
    /// The journal may be pruned through this sequence number: the smallest any kept
    /// backup holds (`None`: no backup with a record is kept, prune nothing).
    pub prune_through: Option<u64>,
}

/// Keeps the newest `keep` backups (children of `root` with a record) and removes the
/// others, oldest first. Directories without a record are not backups of this version and
/// are left alone (and, needing the journal from an unknown point, they keep it whole:
/// see [`Rotation::prune_through`]).
pub fn rotate(root: &Path, keep: usize) -> Result<Rotation, StoreError> {
    let io = |e| StoreError::engine("listing the backup directory", e);
    let mut backups = Vec::new();
    let mut unrecorded = false;
    for entry in std::fs::read_dir(root).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if !path.is_dir() || path.extension().is_some_and(|e| e == "tmp") {
            continue;
        }
        match BackupRecord::read(&path)? {
            Some(record) => backups.push((record, path)),
            None if path.join("CURRENT").is_file() => unrecorded = true,
            None => {}
        }
    }
    backups.sort_by(|a, b| (&a.0.taken, &a.1).cmp(&(&b.0.taken, &b.1)));
    let excess = backups.len().saturating_sub(keep.max(1));
    let mut rotation = Rotation::default();
    for (_, path) in backups.drain(..excess) {
        std::fs::remove_dir_all(&path)
            .map_err(|e| StoreError::engine("removing an old backup", e))?;
        rotation.removed.push(path);
    }
    if !unrecorded {
        rotation.prune_through = backups.iter().map(|(r, _)| r.journal_seq).min();
    }
    Ok(rotation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(root: &Path, name: &str, taken: &str, seq: u64) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        BackupRecord {
            taken: taken.into(),
            journal_seq: seq,
        }
        .write(&dir)
        .expect("record");
        dir
    }

    #[test]
    fn the_oldest_go_first_and_the_journal_is_pruned_to_the_oldest_kept() {
        let root = tempfile::tempdir().expect("tmp");
        let a = backup(root.path(), "a", "2026-11-01T00:00:00Z", 3);
        let b = backup(root.path(), "b", "2026-11-02T00:00:00Z", 7);
        let c = backup(root.path(), "c", "2026-11-03T00:00:00Z", 9);
        let r = rotate(root.path(), 2).expect("rotate");
        assert_eq!(r.removed, vec![a.clone()]);
        assert_eq!(r.prune_through, Some(7));
        assert!(!a.exists() && b.exists() && c.exists());
        // A backup of an earlier version (no record) keeps the whole journal.
        let old = root.path().join("old");
        std::fs::create_dir_all(&old).expect("dir");
        std::fs::write(old.join("CURRENT"), "MANIFEST-000001\n").expect("current");
        assert_eq!(rotate(root.path(), 2).expect("rotate").prune_through, None);
        assert!(old.exists(), "not ours to remove");
    }
}

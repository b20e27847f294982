//! The audit log's anchor in the meta column family (docs/design.md, "Audit log"), and
//! reading it from outside the service: `meterstand audit verify` opens the store read-only,
//! which RocksDB allows while the service holds it (no lock is taken, the WAL is replayed in
//! memory).

use std::path::Path;

use meterstand_store::{AuditAnchor, StoreError};
use rocksdb::{DB, Options, WriteOptions};

use crate::engine::{CF_META, Shared, engine};

/// Key of the audit anchor in the meta column family.
const AUDIT_ANCHOR: &[u8] = b"audit-anchor";

fn decode(value: Option<Vec<u8>>) -> Result<Option<AuditAnchor>, StoreError> {
    match value {
        None => Ok(None),
        Some(v) => AuditAnchor::from_bytes(&v)
            .map(Some)
            .ok_or(StoreError::Corrupt("the audit anchor")),
    }
}

pub(crate) fn get(shared: &Shared) -> Result<Option<AuditAnchor>, StoreError> {
    let meta = shared.cf(CF_META)?;
    let value = shared
        .db
        .get_cf(meta, AUDIT_ANCHOR)
        .map_err(engine("reading the audit anchor"))?;
    decode(value)
}

/// Written to the WAL without a sync of its own (see `ReadingStore::set_audit_anchor`).
pub(crate) fn set(shared: &Shared, anchor: &AuditAnchor) -> Result<(), StoreError> {
    let meta = shared.cf(CF_META)?;
    let mut opts = WriteOptions::default();
    opts.set_sync(false);
    shared
        .db
        .put_cf_opt(meta, AUDIT_ANCHOR, anchor.to_bytes(), &opts)
        .map_err(engine("writing the audit anchor"))
}

/// The anchor of the store at `path`, read through a read-only instance that opens only the
/// meta column family; works while the service has the store open. RocksDB's info log of
/// that instance goes to a private temporary directory, not beside the service's.
pub fn read_audit_anchor(path: &Path) -> Result<Option<AuditAnchor>, StoreError> {
    if !path.join("CURRENT").is_file() {
        return Err(StoreError::InvalidQuery(format!(
            "no store at {}",
            path.display()
        )));
    }
    let logs = std::env::temp_dir().join(format!(
        "meterstand-anchor-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&logs)
            .map_err(|e| StoreError::engine("creating a directory for RocksDB's info log", e))?;
    }
    let mut opts = Options::default();
    opts.set_db_log_dir(&logs);
    opts.set_log_level(rocksdb::LogLevel::Error);
    let read = DB::open_cf_for_read_only(&opts, path, [CF_META], false)
        .map_err(engine("opening the store read-only"))
        .and_then(|db| {
            let meta = db
                .cf_handle(CF_META)
                .ok_or(StoreError::Corrupt("a missing column family"))?;
            let value = db
                .get_cf(meta, AUDIT_ANCHOR)
                .map_err(engine("reading the audit anchor"))?;
            decode(value)
        });
    let _ = std::fs::remove_dir_all(&logs);
    read
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meterstand_store::{ReadingStore, SystemClock};

    use super::*;
    use crate::{RocksStore, StoreConfig};

    #[test]
    fn the_anchor_reads_back_read_only_while_the_store_is_open_and_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            RocksStore::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).expect("open");
        assert_eq!(read_audit_anchor(dir.path()).expect("read-only"), None);
        let anchor = AuditAnchor {
            lines: 44,
            hash: [7; 32],
            first: 3,
        };
        store.set_audit_anchor(&anchor).expect("set");
        // The service still holds the store (and its lock): read-only still reads it.
        assert_eq!(
            read_audit_anchor(dir.path()).expect("read-only"),
            Some(anchor)
        );
        let leftovers = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("LOG.old"))
            .count();
        assert_eq!(
            leftovers, 0,
            "the read-only instance kept its info log apart"
        );
        store.close().expect("close");
        drop(store);
        let store =
            RocksStore::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).expect("reopen");
        assert_eq!(store.audit_anchor().expect("get"), Some(anchor));
        assert!(read_audit_anchor(&dir.path().join("nothing")).is_err());
    }
}

//! What the API needs of the store, as an object-safe trait over any [`ReadingStore`].

use std::path::Path;

use jiff::Timestamp;
use meterstand_model::{Connection, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::{
    AggregateCell, AggregateQuery, BackupInfo, ErasureReceipt, ReadingStore, SeriesRow, StoreError,
    SubjectExport,
};

pub trait Backend: Send + Sync + 'static {
    fn connection(&self, p: Pseudonym) -> Option<Connection>;
    fn put_connection(&self, p: Pseudonym, c: Connection) -> Result<ErasureReceipt, StoreError>;
    fn erase(&self, ps: &[Pseudonym]) -> Result<ErasureReceipt, StoreError>;
    fn export(&self, ps: &[Pseudonym]) -> Result<SubjectExport, StoreError>;
    fn knows(&self, p: Pseudonym) -> Result<bool, StoreError>;
    fn series(
        &self,
        p: Pseudonym,
        kind: RegisterKind,
        tier: Tier,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SeriesRow>, StoreError>;
    fn aggregate(&self, q: &AggregateQuery) -> Result<Vec<AggregateCell>, StoreError>;
    fn backup(&self, dir: &Path) -> Result<BackupInfo, StoreError>;
}

impl<S: ReadingStore> Backend for S {
    fn connection(&self, p: Pseudonym) -> Option<Connection> {
        ReadingStore::connection(self, p)
    }
    fn put_connection(&self, p: Pseudonym, c: Connection) -> Result<ErasureReceipt, StoreError> {
        ReadingStore::put_connection(self, p, c)
    }
    fn erase(&self, ps: &[Pseudonym]) -> Result<ErasureReceipt, StoreError> {
        ReadingStore::erase(self, ps)
    }
    fn export(&self, ps: &[Pseudonym]) -> Result<SubjectExport, StoreError> {
        ReadingStore::export(self, ps)
    }
    fn knows(&self, p: Pseudonym) -> Result<bool, StoreError> {
        ReadingStore::knows(self, p)
    }
    fn series(
        &self,
        p: Pseudonym,
        kind: RegisterKind,
        tier: Tier,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SeriesRow>, StoreError> {
        ReadingStore::series(self, p, kind, tier, from, to)
    }
    fn aggregate(&self, q: &AggregateQuery) -> Result<Vec<AggregateCell>, StoreError> {
        ReadingStore::aggregate(self, q)
    }
    fn backup(&self, dir: &Path) -> Result<BackupInfo, StoreError> {
        ReadingStore::backup(self, dir)
    }
}

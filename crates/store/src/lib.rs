//! Storage of pseudonymous readings. Owns the key and value layout, the tiers (one column
//! family each), the consent gate, durable group-committed writes, retention, erasure, export
//! and the query primitives the API builds on. The [`ReadingStore`] trait carries no RocksDB
//! types, so another backend could sit behind it. Layout and reasons: `DESIGN.md` here.

mod clock;
pub mod layout;
pub mod metrics;
mod query;
mod rocks;
mod types;

pub use clock::{Clock, ManualClock, SystemClock};
pub use rocks::{Compression, RocksStore, StoreConfig};
pub use types::*;

use std::future::Future;

use jiff::Timestamp;
use meterstand_model::{Connection, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;

/// The store as the API and the service see it: every method blocks and belongs on a
/// blocking thread. Object-safe, so the HTTP layer holds an `Arc<dyn ReadingStore>`.
pub trait ReadingStore: Send + Sync + 'static {
    fn connection(&self, p: Pseudonym) -> Option<Connection>;

    /// Registers or updates a connection. Lowering consent removes the readings of the tiers
    /// the new level no longer allows; the receipt says what went.
    fn put_connection(
        &self,
        p: Pseudonym,
        connection: Connection,
    ) -> Result<ErasureReceipt, StoreError>;

    /// Erases everything of these pseudonyms (one connection under each key version) except
    /// tiers under a hold, compacts the range away and returns a receipt.
    fn erase(&self, pseudonyms: &[Pseudonym]) -> Result<ErasureReceipt, StoreError>;

    /// Whether anything is stored under this pseudonym: a connection record or a reading in
    /// any tier.
    fn knows(&self, p: Pseudonym) -> Result<bool, StoreError>;

    /// Everything stored for these pseudonyms.
    fn export(&self, pseudonyms: &[Pseudonym]) -> Result<SubjectExport, StoreError>;

    /// One connection's readings of one tier in `[from, to)`, all registers.
    fn readings(
        &self,
        p: Pseudonym,
        tier: Tier,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<meterstand_model::Reading>, StoreError>;

    /// One connection's consumption per period of `tier` for periods starting in `[from, to)`.
    fn series(
        &self,
        p: Pseudonym,
        kind: RegisterKind,
        tier: Tier,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SeriesRow>, StoreError>;

    /// Consumption per period and group over all connections, with contributor counts.
    fn aggregate(&self, query: &AggregateQuery) -> Result<Vec<AggregateCell>, StoreError>;

    /// Removes readings past their tier's retention; returns how many per tier.
    fn sweep_retention(&self) -> Result<TierCounts, StoreError>;

    /// A consistent copy of the whole store in `dir` (which must not exist), taken while
    /// writes go on: everything durable before the call is in it.
    fn backup(&self, dir: &std::path::Path) -> Result<BackupInfo, StoreError>;

    /// Whether the store is open and its writer alive.
    fn is_healthy(&self) -> bool;
}

/// Ingest's side: the durable write, async because it waits for a group commit.
pub trait ReadingWriter: ReadingStore {
    /// Gates `items` by consent and retention, stores what remains and returns once it is
    /// durable (WAL synced).
    fn write(
        &self,
        items: Vec<IngestItem>,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;
}

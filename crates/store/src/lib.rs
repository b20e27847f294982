//! The store as the rest of meterstand sees it: the [`ReadingStore`] and [`ReadingWriter`]
//! traits, the types they speak, the period arithmetic every backend shares, and
//! [`MemStore`], an in-memory backend for unit tests. Nothing here knows RocksDB: the
//! engine lives in `meterstand-store-rocks`, so the API and ingest compile without it.
//! Why the split: `docs/design.md` §5.

pub mod backups;
mod clock;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod freeze;
pub mod journal;
mod mem;
pub mod periods;
mod statistics;
mod subject;
mod types;

pub use clock::{Clock, ManualClock, SystemClock};
pub use mem::MemStore;
pub use statistics::{FrozenPeriod, Member, PendingPeriod, PeriodKey};
pub use subject::{SubjectState, open_to_analysis};
pub use types::*;

use std::future::Future;

use jiff::Timestamp;
use meterstand_model::{Connection, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;

/// The store as the API and the service see it: every method blocks and belongs on a
/// blocking thread. Object-safe, so the HTTP layer holds an `Arc<dyn ReadingStore>`.
pub trait ReadingStore: Send + Sync + 'static {
    /// The connection record under this pseudonym, if the CRM registered one.
    fn connection(&self, p: Pseudonym) -> Result<Option<Connection>, StoreError>;

    /// Registers or updates a connection. `all` holds the connection's pseudonyms under
    /// every key version, current first: lowering consent removes the readings of the tiers
    /// the new level no longer allows under each of them; the receipt says what went. The
    /// subject's state ([`SubjectState`]) is kept: an objection stays, an erased subject is
    /// registered again with its held history sealed, consent `off` seals what is held.
    fn put_connection(
        &self,
        all: &[Pseudonym],
        connection: Connection,
    ) -> Result<ErasureReceipt, StoreError>;

    /// Erases everything of these pseudonyms (one connection under each key version) except
    /// tiers under a hold, compacts the range away and returns a receipt. The subject's
    /// state keeps its objection and seals what the hold keeps.
    fn erase(&self, pseudonyms: &[Pseudonym]) -> Result<ErasureReceipt, StoreError>;

    /// Records (`true`) or withdraws (`false`) the subject's objection to analytical use
    /// under each of `all` (every key version). Withdrawing seals what was kept meanwhile.
    fn set_objection(&self, all: &[Pseudonym], objected: bool) -> Result<(), StoreError>;

    /// The subject's state: the union of what is recorded under each of `all`.
    fn subject_state(&self, all: &[Pseudonym]) -> Result<SubjectState, StoreError>;

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

    /// Calls `f` once for every connection with a reading of `tier` on one of `bounds`
    /// (sorted period boundaries), with its values there per register of `kind`, its record
    /// and its state. The freeze job computes statistics from this, counting only the
    /// members [`open_to_analysis`] lets through.
    fn members(
        &self,
        tier: Tier,
        kind: RegisterKind,
        bounds: &[Timestamp],
        f: &mut dyn FnMut(Member<'_>),
    ) -> Result<(), StoreError>;

    /// The periods that writes have touched and that are not frozen yet (days, with their
    /// quarter-hours, and months), oldest first.
    fn pending_periods(&self) -> Result<Vec<PendingPeriod>, StoreError>;

    /// Stores the statistics of periods that are not frozen yet, all or none, and returns
    /// how many were newly frozen. A frozen period is never overwritten: its entry here is
    /// ignored. Readings later stored for a frozen period are counted in
    /// [`WriteOutcome::late`].
    ///
    /// With `settled`, the periods are that pending period's computation: they are stored,
    /// and the period leaves the pending list, only if nothing was written into it since
    /// it was listed (else nothing happens and 0 is returned: it is computed again once
    /// quiet). `periods` may then be empty: nobody counts in it, nothing is published, and
    /// it is not frozen (a later write lists it again). Without `settled` (a restore
    /// carrying over what was frozen before it), the periods are stored as given.
    fn freeze(
        &self,
        periods: &[FrozenPeriod],
        settled: Option<&PendingPeriod>,
    ) -> Result<u64, StoreError>;

    /// Whether this period is frozen.
    fn is_frozen(&self, key: PeriodKey) -> Result<bool, StoreError>;

    /// The frozen periods of `tier` and `kind` starting in `[from, to)`, in time order.
    fn statistics(
        &self,
        tier: Tier,
        kind: RegisterKind,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<FrozenPeriod>, StoreError>;

    /// Removes readings past their tier's retention; returns how many per tier.
    fn sweep_retention(&self) -> Result<TierCounts, StoreError>;

    /// A consistent copy of the whole store in `dir` (which must not exist), taken while
    /// writes go on: everything durable before the call is in it, with a record of the
    /// journal sequence number it had applied ([`backups::BackupRecord`]). Then the
    /// siblings of `dir` are rotated: the newest `keep` backups stay, older ones are
    /// removed, and the journal is pruned of what no kept backup needs.
    fn backup(&self, dir: &std::path::Path, keep: usize) -> Result<BackupInfo, StoreError>;

    /// Whether the store is open and its writer alive.
    fn is_healthy(&self) -> bool;

    /// The last subject-journal entry this store has applied (0: none); a backup carries
    /// the value of its moment, so a restore knows which erasures to redo.
    fn journal_watermark(&self) -> Result<u64, StoreError>;

    /// Records (durably) that the journal entry `seq` has been applied.
    fn set_journal_watermark(&self, seq: u64) -> Result<(), StoreError>;

    /// Drops the journal entries up to `seq` (inclusive): no kept backup needs them any
    /// more. A store without a journal has nothing to prune.
    fn prune_journal(&self, seq: u64) -> Result<(), StoreError>;

    /// The audit log's anchor as last recorded (`None`: never), see [`AuditAnchor`].
    fn audit_anchor(&self) -> Result<Option<AuditAnchor>, StoreError>;

    /// Records the audit log's anchor in place of the last one. Not synced by itself (the
    /// next synced write or the close makes it durable): a crash may lose the latest, which
    /// leaves the log longer than its anchor (allowed), never shorter. A backup carries the
    /// anchor of its moment.
    fn set_audit_anchor(&self, anchor: &AuditAnchor) -> Result<(), StoreError>;
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

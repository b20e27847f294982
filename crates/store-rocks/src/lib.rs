//! The RocksDB engine behind `meterstand-store`'s traits. Modules depend only on the ones
//! listed before them: `layout` (keys and blocks) → `engine` (open, options, shared state)
//! → `subjects` (subjects' privacy state) → `units` (frozen and pending units of
//! statistics) → `read` (scans, tier members, export) → `stats` (frozen statistics) →
//! `maintenance` (connection changes, objections, erasure, purge, sweep) → `sync` (WAL sync
//! thread) → `writer` (the one thread that mutates) → this facade. `fault` and `metrics`
//! are leaves any of them use. Layout and reasons: `DESIGN.md` beside this crate.

mod anchor;
mod engine;
mod fault;
pub mod layout;
mod maintenance;
pub mod metrics;
mod read;
mod stats;
mod subjects;
mod sync;
mod units;
mod writer;

pub use anchor::read_audit_anchor;
pub use engine::{Compression, StoreConfig, ingest_share};
pub use fault::{FAULT_ENV, FaultPoint};
pub use maintenance::SWEEP_PAUSE_ENV;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use jiff::Timestamp;
use meterstand_model::{Connection, Reading, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::backups::{self, BackupRecord};
use meterstand_store::journal::{self, JournalOp, SubjectJournal, SubjectOps};
use meterstand_store::{
    AuditAnchor, BackupInfo, Clock, ErasureReceipt, FrozenPeriod, IngestItem, Member,
    PendingPeriod, PeriodKey, ReadingStore, ReadingWriter, StoreError, SubjectExport, SubjectState,
    TierCounts, WriteOutcome,
};
use tokio::sync::{mpsc, oneshot};

use engine::{CF_META, CONNECTION_CFS, OTHER_CFS, Shared, engine, tier_cf_name};
use writer::{Command, Writer};

/// Commands queued for the writer. Each holds up to one ingest batch, so 64 bound the
/// memory held while the disk is slow; senders then wait, which is the backpressure ingest
/// passes on to the broker.
const COMMAND_QUEUE: usize = 64;

/// Key of the subject-journal watermark in the meta column family.
const JOURNAL_WATERMARK: &[u8] = b"journal-watermark";

/// The RocksDB-backed [`ReadingStore`].
pub struct RocksStore {
    shared: Arc<Shared>,
    journal: Option<SubjectJournal>,
    /// What the journal replay at open re-applied, one line each.
    replayed: Vec<String>,
    /// The writer's queue; `None` once closed. Each call clones the sender under a short
    /// read lock, so that `close` (which takes it) needs only `&self`: the service closes
    /// the store while the API still holds it.
    commands: parking_lot::RwLock<Option<mpsc::Sender<Command>>>,
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.shared.config.path)
            .finish()
    }
}

impl RocksStore {
    /// Opens the store and replays the journal entries it has not applied yet (an erasure
    /// cut short by a crash, or everything since a restored backup was taken).
    pub fn open(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<RocksStore, StoreError> {
        metrics::init();
        let journal = config
            .journal
            .as_deref()
            .map(SubjectJournal::open)
            .transpose()?;
        let shared = Arc::new(engine::open_shared(config, clock)?);
        stats::load_units(&shared)?;
        shared.faults.arm_from_env();
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("meterstand-store-writer".into())
            .spawn(move || {
                Writer::new(writer_shared.clone()).run(rx);
                writer_shared.writer_alive.store(false, Ordering::SeqCst);
            })
            .map_err(|e| StoreError::engine("starting the writer thread", e))?;
        let mut store = RocksStore {
            shared,
            journal,
            replayed: Vec::new(),
            commands: parking_lot::RwLock::new(Some(tx)),
            writer: parking_lot::Mutex::new(Some(writer)),
        };
        // Replayed through the unjournalled operations, so that redoing an entry does not
        // journal it again.
        if let Some(j) = &store.journal {
            store.replayed = journal::replay(&Unjournalled(&store), j.path())?;
            for line in &store.replayed {
                tracing::warn!(entry = %line, "re-applied a journalled subject operation");
            }
        }
        Ok(store)
    }

    /// Carries a subject operation out through the journal when there is one.
    fn journalled(&self, op: JournalOp) -> Result<ErasureReceipt, StoreError> {
        match &self.journal {
            // Journalled first: a crash half-way is redone at the next open.
            Some(journal) => {
                journal.run(&Unjournalled(self), op, |op| op.apply(&Unjournalled(self)))
            }
            None => op.apply(&Unjournalled(self)),
        }
    }

    /// RocksDB's block cache capacity now: its share of `store.memory` less what the
    /// registry of connections takes (see `DESIGN.md`, "Writes").
    pub fn block_cache_capacity(&self) -> usize {
        self.shared
            .block_cache_capacity
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// What the journal replay at open re-applied, one line each (pseudonyms only).
    pub fn replayed(&self) -> &[String] {
        &self.replayed
    }

    fn put_connection_now(
        &self,
        all: &[Pseudonym],
        connection: Connection,
    ) -> Result<ErasureReceipt, StoreError> {
        let all = all.to_vec();
        self.call_blocking(|reply| Command::PutConnection {
            all,
            connection,
            reply,
        })
    }

    fn erase_now(&self, pseudonyms: &[Pseudonym]) -> Result<ErasureReceipt, StoreError> {
        let pseudonyms = pseudonyms.to_vec();
        self.call_blocking(|reply| Command::Erase { pseudonyms, reply })
    }

    fn set_objection_now(&self, all: &[Pseudonym], objected: bool) -> Result<(), StoreError> {
        let all = all.to_vec();
        self.call_blocking(|reply| Command::SetObjection {
            all,
            objected,
            reply,
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.config.path
    }

    /// Blocking form of [`ReadingWriter::write`], for threads outside the runtime.
    pub fn write_blocking(&self, items: Vec<IngestItem>) -> Result<WriteOutcome, StoreError> {
        self.call_blocking(|reply| Command::Write { items, reply })
    }

    /// Compacts every tier fully (benchmarks measure size after this; operators rarely need it).
    pub fn compact_all(&self) -> Result<(), StoreError> {
        self.call_blocking(|reply| Command::CompactAll { reply })
    }

    /// Makes the next `times` checks of `point` fail (tests of failure paths).
    pub fn inject_fault(&self, point: FaultPoint, times: u32) {
        self.shared.faults.arm(point, times);
    }

    /// Bytes of live SST files per tier, and RocksDB's pending compaction estimate; also
    /// published as gauges.
    pub fn refresh_size_metrics(&self) -> Result<TierCounts, StoreError> {
        let mut sizes = TierCounts::default();
        for tier in Tier::ALL {
            let cf = self.shared.tier_cf(tier)?;
            let property = |name| {
                self.shared
                    .db
                    .property_int_value_cf(cf, name)
                    .map_err(engine("reading a property"))
                    .map(|v| v.unwrap_or(0))
            };
            let size = property("rocksdb.total-sst-files-size")?;
            let pending = property("rocksdb.estimate-pending-compaction-bytes")?;
            metrics::SIZE_BYTES
                .with_label_values(&[tier.as_str()])
                .set(i64::try_from(size).unwrap_or(i64::MAX));
            metrics::PENDING_COMPACTION_BYTES
                .with_label_values(&[tier.as_str()])
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
            sizes.add(tier, size);
        }
        Ok(sizes)
    }

    /// The live SST files holding a tier (for checks that erased data is physically gone).
    pub fn sst_files(&self, tier: Tier) -> Result<Vec<PathBuf>, StoreError> {
        Ok(self
            .shared
            .db
            .live_files()
            .map_err(engine("listing live files"))?
            .into_iter()
            .filter(|f| f.column_family_name == tier_cf_name(tier))
            .map(|f| self.shared.config.path.join(f.name.trim_start_matches('/')))
            .collect())
    }

    /// A consistent on-disk copy of the store (RocksDB checkpoint), safe while running.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        rocksdb::checkpoint::Checkpoint::new(&self.shared.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(engine("creating a checkpoint"))
    }

    /// Stops the writer once pending commands are done, then flushes every memtable, so
    /// the store on disk is compact and no WAL holds data that later deletions must chase.
    /// Later calls answer [`StoreError::Closed`]; closing again does nothing. The final
    /// flush's error is returned, for the process to exit non-zero.
    pub fn close(&self) -> Result<(), StoreError> {
        drop(self.commands.write().take());
        let Some(handle) = self.writer.lock().take() else {
            return Ok(());
        };
        let _ = handle.join();
        self.shared.faults.check(FaultPoint::CloseFlush)?;
        let mut cfs = Vec::new();
        for name in CONNECTION_CFS.iter().chain(&OTHER_CFS) {
            cfs.push(self.shared.cf(name)?);
        }
        self.shared
            .db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(engine("flushing memtables at close"))?;
        sync::sync_wal(&self.shared)
    }

    /// The writer's queue, while the store is open.
    fn sender(&self) -> Result<mpsc::Sender<Command>, StoreError> {
        self.commands.read().clone().ok_or(StoreError::Closed)
    }

    fn call_blocking<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(make(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }
}

impl Drop for RocksStore {
    /// A store dropped unclosed is closed here; an error can only be logged (callers that
    /// care call [`RocksStore::close`] and get it).
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the store");
        }
    }
}

impl ReadingWriter for RocksStore {
    async fn write(&self, items: Vec<IngestItem>) -> Result<WriteOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Command::Write { items, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl ReadingStore for RocksStore {
    fn connection(&self, p: Pseudonym) -> Result<Option<Connection>, StoreError> {
        Ok(self.shared.connections.read().get(&p).cloned())
    }

    fn put_connection(
        &self,
        all: &[Pseudonym],
        connection: Connection,
    ) -> Result<ErasureReceipt, StoreError> {
        match &self.journal {
            // The journal keeps the consent only: postcode and profile are the CRM's, and
            // a replay needs only what the level removes.
            Some(journal) => journal.run(
                &Unjournalled(self),
                JournalOp::consent(all, connection.consent),
                |_| self.put_connection_now(all, connection),
            ),
            None => self.put_connection_now(all, connection),
        }
    }

    fn erase(&self, pseudonyms: &[Pseudonym]) -> Result<ErasureReceipt, StoreError> {
        self.journalled(JournalOp::erase(pseudonyms))
    }

    fn set_objection(&self, all: &[Pseudonym], objected: bool) -> Result<(), StoreError> {
        self.journalled(JournalOp::objection(all, objected))
            .map(|_| ())
    }

    fn subject_state(&self, all: &[Pseudonym]) -> Result<SubjectState, StoreError> {
        Ok(self.shared.subject_state(all))
    }

    fn knows(&self, p: Pseudonym) -> Result<bool, StoreError> {
        read::knows(&self.shared, p)
    }

    fn export(&self, pseudonyms: &[Pseudonym]) -> Result<SubjectExport, StoreError> {
        let export = read::export(&self.shared, pseudonyms)?;
        metrics::EXPORTS.inc();
        Ok(export)
    }

    fn readings(
        &self,
        p: Pseudonym,
        tier: Tier,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Reading>, StoreError> {
        read::readings(&self.shared, p, tier, from, to)
    }

    fn members(
        &self,
        tier: Tier,
        kind: RegisterKind,
        bounds: &[Timestamp],
        f: &mut dyn FnMut(Member<'_>),
    ) -> Result<(), StoreError> {
        read::members(&self.shared, tier, kind, bounds, f)
    }

    fn pending_periods(&self) -> Result<Vec<PendingPeriod>, StoreError> {
        Ok(self.shared.units.lock().list())
    }

    fn freeze(
        &self,
        periods: &[FrozenPeriod],
        settled: Option<&PendingPeriod>,
    ) -> Result<u64, StoreError> {
        stats::freeze(&self.shared, periods, settled)
    }

    fn is_frozen(&self, key: PeriodKey) -> Result<bool, StoreError> {
        stats::is_frozen(&self.shared, key)
    }

    fn statistics(
        &self,
        tier: Tier,
        kind: RegisterKind,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<FrozenPeriod>, StoreError> {
        stats::read(&self.shared, tier, kind, from, to)
    }

    fn sweep_retention(&self) -> Result<TierCounts, StoreError> {
        self.call_blocking(|reply| Command::Sweep { reply })
    }

    fn backup(&self, dir: &Path, keep: usize) -> Result<BackupInfo, StoreError> {
        if dir.exists() {
            return Err(StoreError::InvalidQuery(
                "the backup directory must not exist yet".into(),
            ));
        }
        // No subject operation between the checkpoint and reading its watermark.
        let hold = self.journal.as_ref().map(SubjectJournal::hold);
        self.checkpoint(dir)?;
        let journal_seq = self.journal_watermark()?;
        drop(hold);
        // Owner only, whatever the umask: a backup holds everything the store holds.
        use std::os::unix::fs::PermissionsExt;
        let owner_only = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| StoreError::engine("restricting the backup's permissions", e))
        };
        owner_only(dir, 0o700)?;
        BackupRecord {
            taken: self.shared.clock.now().to_string(),
            journal_seq,
        }
        .write(dir)?;
        let mut info = BackupInfo {
            journal_seq,
            ..BackupInfo::default()
        };
        let entries =
            std::fs::read_dir(dir).map_err(|e| StoreError::engine("listing the backup", e))?;
        for entry in entries.flatten() {
            // Checkpoint files are hard links to the live ones: restricting them restricts
            // those too, which is as it should be (the data directory is owner-only).
            owner_only(&entry.path(), 0o600)?;
            if let Ok(meta) = entry.metadata() {
                info.files += 1;
                info.bytes += meta.len();
            }
        }
        metrics::BACKUPS.inc();
        if let Some(root) = dir.parent() {
            let rotation = backups::rotate(root, keep)?;
            info.removed = rotation.removed.len() as u64;
            if let Some(seq) = rotation.prune_through {
                self.prune_journal(seq)?;
            }
        }
        Ok(info)
    }

    fn is_healthy(&self) -> bool {
        self.shared.writer_alive.load(Ordering::SeqCst)
            && self
                .commands
                .read()
                .as_ref()
                .is_some_and(|c| !c.is_closed())
    }

    fn journal_watermark(&self) -> Result<u64, StoreError> {
        let meta = self.shared.cf(CF_META)?;
        let value = self
            .shared
            .db
            .get_cf(meta, JOURNAL_WATERMARK)
            .map_err(engine("reading the journal watermark"))?;
        match value {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("the journal watermark")),
        }
    }

    fn set_journal_watermark(&self, seq: u64) -> Result<(), StoreError> {
        let meta = self.shared.cf(CF_META)?;
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.shared
            .db
            .put_cf_opt(meta, JOURNAL_WATERMARK, seq.to_be_bytes(), &opts)
            .map_err(engine("writing the journal watermark"))
    }

    fn prune_journal(&self, seq: u64) -> Result<(), StoreError> {
        match &self.journal {
            Some(journal) => journal.prune(seq),
            None => Ok(()),
        }
    }

    fn audit_anchor(&self) -> Result<Option<AuditAnchor>, StoreError> {
        anchor::get(&self.shared)
    }

    fn set_audit_anchor(&self, anchor: &AuditAnchor) -> Result<(), StoreError> {
        anchor::set(&self.shared, anchor)
    }
}

/// The store's subject operations without the journal: what a journal entry carries out.
struct Unjournalled<'a>(&'a RocksStore);

impl SubjectOps for Unjournalled<'_> {
    fn connection(&self, p: Pseudonym) -> Result<Option<Connection>, StoreError> {
        self.0.connection(p)
    }

    fn put_connection(
        &self,
        all: &[Pseudonym],
        connection: Connection,
    ) -> Result<ErasureReceipt, StoreError> {
        self.0.put_connection_now(all, connection)
    }

    fn erase(&self, pseudonyms: &[Pseudonym]) -> Result<ErasureReceipt, StoreError> {
        self.0.erase_now(pseudonyms)
    }

    fn set_objection(&self, all: &[Pseudonym], objected: bool) -> Result<(), StoreError> {
        self.0.set_objection_now(all, objected)
    }

    fn journal_watermark(&self) -> Result<u64, StoreError> {
        self.0.journal_watermark()
    }

    fn set_journal_watermark(&self, seq: u64) -> Result<(), StoreError> {
        self.0.set_journal_watermark(seq)
    }
}

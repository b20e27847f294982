//! The RocksDB backend. One writer thread owns every mutation (ingest batches, connection
//! updates, erasure, the retention sweep): blocks are read-modify-written, so a single writer
//! keeps them race-free and lets many small batches share one WAL sync (group commit).

use std::collections::{HashMap, HashSet};

use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use jiff::Timestamp;
use meterstand_model::{
    Connection, ConsentLevel, Postcode4, Profile, Reading, RegisterKind, Tier, TierSet,
};
use meterstand_pseudonym::Pseudonym;
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DB, Options, WriteBatch, WriteOptions, compaction_filter::Decision,
};
use tokio::sync::{mpsc, oneshot};

use crate::layout::{self, MergeResult};
use crate::{
    AggregateCell, AggregateQuery, BackupInfo, Clock, ErasureReceipt, IngestItem, Kept,
    ReadingStore, ReadingWriter, RetentionPolicy, SeriesRow, StoreError, SubjectExport, TierCounts,
    WriteOutcome, metrics,
};

const CF_CONNECTIONS: &str = "connections";
const CF_METERS: &str = "meters";

fn tier_cf_name(tier: Tier) -> &'static str {
    tier.as_str()
}

/// Block compression of the tier column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub default_consent: ConsentLevel,
    pub retention: RetentionPolicy,
    pub compression: Compression,
    /// Time zone of day and month boundaries.
    pub time_zone: String,
    /// Sync the WAL on every group commit. Only benchmarks of the raw engine turn this off.
    pub sync: bool,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            default_consent: ConsentLevel::Standard,
            retention: RetentionPolicy::default(),
            compression: Compression::Zstd,
            time_zone: "Europe/Amsterdam".into(),
            sync: true,
        }
    }
}

/// Retention horizons (UTC seconds) per tier, shared with the compaction filters.
#[derive(Debug, Default)]
struct Horizons([AtomicI64; 3]);

impl Horizons {
    fn get(&self, tier: Tier) -> i64 {
        self.0[tier as usize].load(Ordering::Relaxed)
    }
    fn set(&self, tier: Tier, secs: i64) {
        self.0[tier as usize].store(secs, Ordering::Relaxed);
    }
}

pub(crate) struct Shared {
    db: DB,
    calendar: meterstand_model::Calendar,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    connections: RwLock<HashMap<Pseudonym, Connection>>,
    horizons: Arc<Horizons>,
    writer_alive: AtomicBool,
}

impl Shared {
    fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Engine(format!("column family {name} missing")))
    }

    fn tier_cf(&self, tier: Tier) -> Result<&ColumnFamily, StoreError> {
        self.cf(tier_cf_name(tier))
    }

    fn consent_of(&self, p: Pseudonym) -> ConsentLevel {
        self.connections
            .read()
            .map(|m| m.get(&p).map(|c| c.consent))
            .ok()
            .flatten()
            .unwrap_or(self.config.default_consent)
    }

    fn refresh_horizons(&self) -> Timestamp {
        let now = self.clock.now();
        for tier in Tier::ALL {
            self.horizons
                .set(tier, self.config.retention.horizon(tier, now).as_second());
        }
        now
    }

    fn write_opts(&self) -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.config.sync);
        wo
    }
}

enum Command {
    Write {
        items: Vec<IngestItem>,
        reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
    },
    PutConnection {
        p: Pseudonym,
        connection: Connection,
        reply: oneshot::Sender<Result<ErasureReceipt, StoreError>>,
    },
    Erase {
        pseudonyms: Vec<Pseudonym>,
        reply: oneshot::Sender<Result<ErasureReceipt, StoreError>>,
    },
    Sweep {
        reply: oneshot::Sender<Result<TierCounts, StoreError>>,
    },
    CompactAll {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The RocksDB-backed [`ReadingStore`].
pub struct RocksStore {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.shared.config.path)
            .finish()
    }
}

/// Commands queued for the writer. Each holds up to one ingest batch, so 64 bound the
/// memory held while the disk is slow; senders then wait, which is the backpressure ingest
/// passes on to the broker.
const COMMAND_QUEUE: usize = 64;
/// Readings gathered into one group commit at most, to bound its latency.
const GROUP_COMMIT_READINGS: usize = 64 * 1024;

impl RocksStore {
    pub fn open(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<RocksStore, StoreError> {
        metrics::init();
        let horizons = Arc::new(Horizons::default());
        let now = clock.now();
        for tier in Tier::ALL {
            horizons.set(tier, config.retention.horizon(tier, now).as_second());
        }
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_bytes_per_sync(1 << 20);
        // One writer thread: no concurrent memtable inserts, so RocksDB inserts each key with
        // the previous insert's position as hint, which our key-sorted batches make cheap.
        db_opts.set_allow_concurrent_memtable_write(false);

        let mut cfs = Vec::new();
        for tier in Tier::ALL {
            cfs.push(ColumnFamilyDescriptor::new(
                tier_cf_name(tier),
                tier_options(tier, &config, horizons.clone()),
            ));
        }
        for name in [CF_CONNECTIONS, CF_METERS] {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::None);
            cfs.push(ColumnFamilyDescriptor::new(name, o));
        }
        std::fs::create_dir_all(&config.path).map_err(|e| {
            StoreError::Engine(format!("cannot create {}: {e}", config.path.display()))
        })?;
        let db = DB::open_cf_descriptors(&db_opts, &config.path, cfs)?;

        let calendar = meterstand_model::Calendar::new(&config.time_zone)
            .map_err(|e| StoreError::InvalidQuery(format!("store time zone: {e}")))?;
        let shared = Arc::new(Shared {
            db,
            calendar,
            config,
            clock,
            connections: RwLock::new(HashMap::new()),
            horizons,
            writer_alive: AtomicBool::new(true),
        });
        load_connections(&shared)?;

        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("meterstand-store-writer".into())
            .spawn(move || {
                Writer {
                    shared: writer_shared.clone(),
                    blocks: Default::default(),
                    meters_seen: HashSet::new(),
                    syncer: None,
                }
                .run(rx);
                writer_shared.writer_alive.store(false, Ordering::SeqCst);
            })
            .map_err(|e| StoreError::Engine(format!("cannot start writer thread: {e}")))?;
        Ok(RocksStore {
            shared,
            commands: tx,
            writer: Some(writer),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.config.path
    }

    /// Blocking form of [`ReadingStore::write`], for threads outside the runtime.
    pub fn write_blocking(&self, items: Vec<IngestItem>) -> Result<WriteOutcome, StoreError> {
        self.call_blocking(|reply| Command::Write { items, reply })
    }

    /// Compacts every tier fully (benchmarks measure size after this; operators rarely need it).
    pub fn compact_all(&self) -> Result<(), StoreError> {
        self.call_blocking(|reply| Command::CompactAll { reply })
    }

    /// Bytes of live SST files per tier, and RocksDB's pending compaction estimate; also
    /// published as gauges.
    pub fn refresh_size_metrics(&self) -> Result<TierCounts, StoreError> {
        let mut sizes = TierCounts::default();
        for tier in Tier::ALL {
            let cf = self.shared.tier_cf(tier)?;
            let size = self
                .shared
                .db
                .property_int_value_cf(cf, "rocksdb.total-sst-files-size")?
                .unwrap_or(0);
            let pending = self
                .shared
                .db
                .property_int_value_cf(cf, "rocksdb.estimate-pending-compaction-bytes")?
                .unwrap_or(0);
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
            .live_files()?
            .into_iter()
            .filter(|f| f.column_family_name == tier_cf_name(tier))
            .map(|f| self.shared.config.path.join(f.name.trim_start_matches('/')))
            .collect())
    }

    /// A consistent on-disk copy of the store (RocksDB checkpoint), safe while running.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        rocksdb::checkpoint::Checkpoint::new(&self.shared.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// Flushes memtables and stops the writer; pending commands are finished first.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), StoreError> {
        let (dead_tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.commands, dead_tx));
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
        self.shared.db.flush_wal(true)?;
        Ok(())
    }

    fn call_blocking<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .blocking_send(make(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn tier_options(tier: Tier, config: &StoreConfig, horizons: Arc<Horizons>) -> Options {
    let mut o = Options::default();
    let compression = match config.compression {
        Compression::None => rocksdb::DBCompressionType::None,
        Compression::Lz4 => rocksdb::DBCompressionType::Lz4,
        Compression::Zstd => rocksdb::DBCompressionType::Zstd,
    };
    o.set_compression_type(compression);
    o.set_bottommost_compression_type(compression);
    o.set_write_buffer_size(8 << 20);
    let mut table = BlockBasedOptions::default();
    table.set_block_size(16 * 1024);
    table.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&table);
    let span = layout::bucket_quarters(tier);
    // Drops whole blocks whose last slot is past retention while compaction rewrites them
    // anyway; blocks straddling the horizon are trimmed by the sweep.
    let filter_name = format!("meterstand-retention-{}", tier.as_str());
    o.set_compaction_filter(
        &filter_name,
        move |_level: u32, key: &[u8], value: &[u8]| {
            let Some(k) = layout::parse_key(key) else {
                return Decision::Keep;
            };
            let end = (i64::from(k.bucket) + 1) * span * meterstand_model::QUARTER_SECONDS;
            if end <= horizons.get(tier) {
                metrics::RETENTION_DELETED
                    .with_label_values(&[tier.as_str()])
                    .inc_by(layout::block_count(value));
                Decision::Remove
            } else {
                Decision::Keep
            }
        },
    );
    o
}

fn encode_connection(c: &Connection) -> Vec<u8> {
    let mut v = vec![c.consent as u8];
    v.extend_from_slice(&c.postcode4.map(Postcode4::get).unwrap_or(0).to_be_bytes());
    let profile = c.profile.as_ref().map(|p| p.as_str()).unwrap_or("");
    v.push(profile.len() as u8);
    v.extend_from_slice(profile.as_bytes());
    v
}

fn decode_connection(v: &[u8]) -> Option<Connection> {
    let consent = ConsentLevel::from_code(*v.first()?)?;
    let postcode = u16::from_be_bytes([*v.get(1)?, *v.get(2)?]);
    let len = usize::from(*v.get(3)?);
    let profile = std::str::from_utf8(v.get(4..4 + len)?).ok()?;
    Some(Connection {
        consent,
        postcode4: if postcode == 0 {
            None
        } else {
            Postcode4::new(postcode).ok()
        },
        profile: if profile.is_empty() {
            None
        } else {
            profile.parse::<Profile>().ok()
        },
    })
}

fn load_connections(shared: &Shared) -> Result<(), StoreError> {
    let cf = shared.cf(CF_CONNECTIONS)?;
    let mut map = HashMap::new();
    for item in shared.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let p = Pseudonym::from_bytes(&k).ok_or(StoreError::Corrupt("connections"))?;
        map.insert(
            p,
            decode_connection(&v).ok_or(StoreError::Corrupt("connections"))?,
        );
    }
    *shared.connections.write().map_err(|_| StoreError::Closed)? = map;
    Ok(())
}

/// Decoded blocks the writer wrote last, so that a stream of readings into the same open
/// blocks (the current day of every connection) needs no read before each write. Only the
/// writer mutates blocks, so the cache stays exact; commands that delete or trim blocks
/// clear it. Bounded: cleared whole when full.
const BLOCK_CACHE_ENTRIES: usize = 262_144;
/// Written groups waiting for a WAL sync, at most.
const SYNC_QUEUE: usize = 64;

struct Writer {
    shared: Arc<Shared>,
    /// Decoded blocks per tier, as last written: spares a read and a decode per reading.
    blocks: [FxHashMap<[u8; layout::KEY_LEN], layout::Entries>; 3],
    /// (connection, meter) pairs known to be recorded, to spare a read per message.
    meters_seen: HashSet<(Pseudonym, Pseudonym)>,
    /// Groups written and waiting for a WAL sync (None when the store does not sync).
    syncer: Option<std::sync::mpsc::SyncSender<Written>>,
}

/// A group in the memtable and WAL, waiting for the sync that makes it durable.
struct Written {
    replies: Vec<(
        oneshot::Sender<Result<WriteOutcome, StoreError>>,
        WriteOutcome,
    )>,
    started: Instant,
    readings: usize,
}

impl Written {
    fn finish(self, synced: Result<(), StoreError>) {
        match synced {
            Ok(()) => {
                metrics::WRITE_SECONDS.observe(self.started.elapsed().as_secs_f64());
                metrics::GROUP_READINGS.observe(self.readings as f64);
                for (reply, outcome) in self.replies {
                    record_outcome(&outcome);
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for (reply, _) in self.replies {
                    let _ = reply.send(Err(StoreError::Engine(e.to_string())));
                }
            }
        }
    }
}

/// Group commit, second half: one WAL sync covers every group written before it. Replies
/// leave in write order, so acknowledgements stay in arrival order.
fn sync_loop(shared: Arc<Shared>, rx: std::sync::mpsc::Receiver<Written>) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(more) = rx.try_recv() {
            groups.push(more);
        }
        let synced = shared.db.flush_wal(true).map_err(StoreError::from);
        if let Err(e) = &synced {
            tracing::error!(error = %e, "WAL sync failed; batches are not acknowledged");
        }
        for g in groups {
            g.finish(match &synced {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Engine(e.to_string())),
            });
        }
    }
}

/// One reading bound for one block: its slot, value and the index of its request.
struct Touch {
    key: [u8; layout::KEY_LEN],
    slot: u32,
    value: u64,
    idx: usize,
}

struct Pending {
    items: Vec<IngestItem>,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut sync_thread = None;
        if self.shared.config.sync {
            let (tx, sync_rx) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
            let shared = self.shared.clone();
            match std::thread::Builder::new()
                .name("meterstand-store-sync".into())
                .spawn(move || sync_loop(shared, sync_rx))
            {
                Ok(handle) => {
                    self.syncer = Some(tx);
                    sync_thread = Some(handle);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the WAL sync thread; syncing inline");
                }
            }
        }
        self.run_commands(&mut rx);
        // Pending syncs finish before the store closes.
        self.syncer = None;
        if let Some(handle) = sync_thread {
            let _ = handle.join();
        }
    }

    fn run_commands(&mut self, rx: &mut mpsc::Receiver<Command>) {
        let mut carried: Option<Command> = None;
        loop {
            let Some(first) = carried.take().or_else(|| rx.blocking_recv()) else {
                break;
            };
            match first {
                Command::Write { items, reply } => {
                    let mut group = vec![Pending { items, reply }];
                    let mut readings: usize = group[0].items.iter().map(|i| i.readings.len()).sum();
                    // Group commit: take whatever else is already queued.
                    while readings < GROUP_COMMIT_READINGS {
                        match rx.try_recv() {
                            Ok(Command::Write { items, reply }) => {
                                readings += items.iter().map(|i| i.readings.len()).sum::<usize>();
                                group.push(Pending { items, reply });
                            }
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_group(group);
                }
                Command::PutConnection {
                    p,
                    connection,
                    reply,
                } => {
                    let result = self.put_connection(p, connection);
                    // Lowered consent deleted blocks: cached copies must not resurrect them.
                    if result.as_ref().map_or(true, |r| r.deleted.total() > 0) {
                        self.clear_cache();
                    }
                    let _ = reply.send(result);
                }
                Command::Erase { pseudonyms, reply } => {
                    self.clear_cache();
                    let _ = reply.send(self.erase(&pseudonyms));
                }
                Command::Sweep { reply } => {
                    self.clear_cache();
                    let _ = reply.send(self.sweep());
                }
                Command::CompactAll { reply } => {
                    let _ = reply.send(self.compact_all());
                }
            }
        }
    }

    fn write_group(&mut self, group: Vec<Pending>) {
        let started = Instant::now();
        let total: usize = group
            .iter()
            .flat_map(|p| &p.items)
            .map(|i| i.readings.len())
            .sum();
        match self.apply(&group) {
            Ok(outcomes) => {
                let written = Written {
                    replies: group
                        .into_iter()
                        .zip(outcomes)
                        .map(|(p, o)| (p.reply, o))
                        .collect(),
                    started,
                    readings: total,
                };
                match &self.syncer {
                    // Durable once the syncer's next WAL sync covers it; meanwhile this thread
                    // already applies the next group.
                    Some(syncer) => {
                        if let Err(std::sync::mpsc::SendError(w)) = syncer.send(written) {
                            w.finish(Err(StoreError::Closed));
                        }
                    }
                    None => {
                        let synced = if self.shared.config.sync {
                            self.shared.db.flush_wal(true).map_err(StoreError::from)
                        } else {
                            Ok(())
                        };
                        written.finish(synced);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; batches are not acknowledged");
                for pending in group {
                    let _ = pending.reply.send(Err(StoreError::Engine(e.to_string())));
                }
            }
        }
    }

    /// Gate, merge into blocks and write one synced batch for the whole group.
    fn apply(&mut self, group: &[Pending]) -> Result<Vec<WriteOutcome>, StoreError> {
        let shared = self.shared.clone();
        shared.refresh_horizons();
        let mut outcomes = vec![WriteOutcome::default(); group.len()];
        // Per tier: (block key, slot, value, request index), in arrival order.
        let mut touched: [Vec<Touch>; 3] = Default::default();
        let mut batch = WriteBatch::default();
        let meters_cf = shared.cf(CF_METERS)?;
        let horizons = Tier::ALL.map(|t| shared.horizons.get(t));
        self.rekey_connections(group, &mut batch)?;
        {
            let connections = shared
                .connections
                .read()
                .map_err(|_| StoreError::Engine("connection table lock poisoned".into()))?;
            for (idx, pending) in group.iter().enumerate() {
                for item in &pending.items {
                    let allowed = connections
                        .get(&item.connection)
                        .map_or(shared.config.default_consent, |c| c.consent)
                        .allowed_tiers();
                    let mut stored_any = false;
                    for tr in &item.readings {
                        let Some(q) = layout::quarter_of(tr.reading.time) else {
                            continue;
                        };
                        for tier in tr.tiers.iter() {
                            if !allowed.contains(tier) {
                                outcomes[idx].dropped_by_consent.add(tier, 1);
                            } else if tr.reading.time.as_second() < horizons[tier as usize] {
                                outcomes[idx].expired.add(tier, 1);
                            } else {
                                let (bucket, slot) = layout::bucket_of(tier, q);
                                touched[tier as usize].push(Touch {
                                    key: layout::block_key(
                                        item.connection,
                                        tr.reading.register,
                                        bucket,
                                    ),
                                    slot,
                                    value: tr.reading.value,
                                    idx,
                                });
                                stored_any = true;
                            }
                        }
                    }
                    if stored_any && self.meters_seen.insert((item.connection, item.meter)) {
                        let mut key = item.connection.to_bytes().to_vec();
                        key.extend_from_slice(&item.meter.to_bytes());
                        batch.put_cf(meters_cf, key, []);
                    }
                }
            }
        }

        for tier in Tier::ALL {
            let mut touches = std::mem::take(&mut touched[tier as usize]);
            if touches.is_empty() {
                continue;
            }
            // Key order: the memtable inserts each key next to the previous one (its skip
            // list reuses the last insert position), and equal keys meet. The sort is stable,
            // so within one key the first arrival is merged first and wins a conflict.
            touches.sort_by_key(|t| t.key);
            let cf = shared.tier_cf(tier)?;
            let cache = &mut self.blocks[tier as usize];
            let mut missing: Vec<[u8; layout::KEY_LEN]> = Vec::new();
            for t in &touches {
                if missing.last() != Some(&t.key) && !cache.contains_key(&t.key) {
                    missing.push(t.key);
                }
            }
            if cache.len() + missing.len() > BLOCK_CACHE_ENTRIES {
                cache.clear();
                missing.clear();
                for t in &touches {
                    if missing.last() != Some(&t.key) {
                        missing.push(t.key);
                    }
                }
            }
            let fetched = shared
                .db
                .batched_multi_get_cf(cf, missing.iter().map(|k| &k[..]), true);
            for (key, old) in missing.iter().zip(fetched) {
                let entries = match old? {
                    Some(bytes) => {
                        layout::decode_block(&bytes).ok_or(StoreError::Corrupt(tier.as_str()))?
                    }
                    None => Vec::new(),
                };
                cache.insert(*key, entries);
            }
            for run in touches.chunk_by(|a, b| a.key == b.key) {
                let key = run[0].key;
                let entries = cache.entry(key).or_default();
                let mut changed = false;
                for t in run {
                    match layout::merge_entry(entries, t.slot, t.value) {
                        MergeResult::Inserted => {
                            changed = true;
                            outcomes[t.idx].stored.add(tier, 1);
                        }
                        MergeResult::Duplicate => outcomes[t.idx].duplicates += 1,
                        MergeResult::Conflict => outcomes[t.idx].conflicts += 1,
                    }
                }
                if changed {
                    batch.put_cf(cf, key, layout::encode_block(entries));
                }
            }
        }
        // Not synced here: the syncer thread syncs the WAL for every group written so far.
        let mut unsynced = WriteOptions::default();
        unsynced.set_sync(false);
        if !batch.is_empty()
            && let Err(e) = shared.db.write_opt(batch, &unsynced)
        {
            // The cache already holds the merged blocks; the disk does not.
            self.clear_cache();
            return Err(e.into());
        }
        Ok(outcomes)
    }

    /// Re-keying after a key rotation: a connection whose record lies only under an older
    /// pseudonym gets it moved to the current one the first time it is seen again, in the
    /// same batch as its readings.
    fn rekey_connections(
        &mut self,
        group: &[Pending],
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        // With one key version (the usual case) no item names an older pseudonym.
        if group
            .iter()
            .flat_map(|p| &p.items)
            .all(|i| i.previous.is_empty())
        {
            return Ok(());
        }
        let shared = &self.shared;
        let mut moves = Vec::new();
        {
            let connections = shared
                .connections
                .read()
                .map_err(|_| StoreError::Engine("connection table lock poisoned".into()))?;
            for item in group.iter().flat_map(|p| &p.items) {
                if item.previous.is_empty() || connections.contains_key(&item.connection) {
                    continue;
                }
                if let Some((old, c)) = item
                    .previous
                    .iter()
                    .find_map(|old| connections.get(old).map(|c| (*old, c.clone())))
                {
                    moves.push((old, item.connection, c));
                }
            }
        }
        if moves.is_empty() {
            return Ok(());
        }
        let cf = shared.cf(CF_CONNECTIONS)?;
        let mut connections = shared
            .connections
            .write()
            .map_err(|_| StoreError::Engine("connection table lock poisoned".into()))?;
        for (old, new, c) in moves {
            if connections.contains_key(&new) {
                continue;
            }
            batch.delete_cf(cf, old.to_bytes());
            batch.put_cf(cf, new.to_bytes(), encode_connection(&c));
            connections.remove(&old);
            connections.insert(new, c);
            metrics::REKEYED.inc();
        }
        Ok(())
    }

    fn clear_cache(&mut self) {
        for cache in &mut self.blocks {
            cache.clear();
        }
    }

    fn put_connection(
        &mut self,
        p: Pseudonym,
        connection: Connection,
    ) -> Result<ErasureReceipt, StoreError> {
        let shared = self.shared.clone();
        let before = shared.consent_of(p).allowed_tiers();
        let after = connection.consent.allowed_tiers();
        // Consent withdrawn: the legal basis for the finer tiers is gone, except for held ones.
        let remove = before.minus(after);
        let mut receipt = ErasureReceipt::default();
        let mut batch = WriteBatch::default();
        if !remove.is_empty() {
            receipt = self.remove_tiers(&[p], remove, &mut batch)?;
        }
        batch.put_cf(
            shared.cf(CF_CONNECTIONS)?,
            p.to_bytes(),
            encode_connection(&connection),
        );
        shared.db.write_opt(batch, &shared.write_opts())?;
        shared
            .connections
            .write()
            .map_err(|_| StoreError::Closed)?
            .insert(p, connection);
        if receipt.deleted.total() > 0 {
            self.purge(&[p], remove)?;
        }
        record_erased(&receipt);
        Ok(receipt)
    }

    /// Queues range deletions of `tiers` (less the held ones) for `pseudonyms` and reports
    /// what they remove and what the holds keep.
    fn remove_tiers(
        &mut self,
        pseudonyms: &[Pseudonym],
        tiers: TierSet,
        batch: &mut WriteBatch,
    ) -> Result<ErasureReceipt, StoreError> {
        let shared = self.shared.clone();
        let policy = &shared.config.retention;
        let mut receipt = ErasureReceipt::default();
        for tier in tiers.iter() {
            let cf = shared.tier_cf(tier)?;
            let held = policy.erasure_hold.contains(tier);
            let mut count = 0;
            let mut latest: Option<Timestamp> = None;
            for p in pseudonyms {
                let (start, end) = layout::pseudonym_range(*p);
                let mut it = shared.db.raw_iterator_cf(cf);
                it.seek(&start);
                while let (Some(k), Some(v)) = (it.key(), it.value()) {
                    if k >= end.as_slice() {
                        break;
                    }
                    count += layout::block_count(v);
                    if held
                        && let (Some(key), Some(entries)) =
                            (layout::parse_key(k), layout::decode_block(v))
                    {
                        let base = layout::bucket_start_quarter(tier, key.bucket);
                        if let Some((slot, _)) = entries.last() {
                            let t = layout::time_of_quarter(base + slot);
                            latest = Some(latest.map_or(t, |l| l.max(t)));
                        }
                    }
                    it.next();
                }
                it.status()?;
                if !held {
                    batch.delete_range_cf(cf, &start, &end);
                }
            }
            if held {
                if count > 0 {
                    let secs = i64::try_from(policy.period(tier).as_secs()).unwrap_or(i64::MAX);
                    let until = latest
                        .and_then(|t| {
                            Timestamp::from_second(t.as_second().saturating_add(secs)).ok()
                        })
                        .unwrap_or(Timestamp::MAX);
                    receipt.kept.push(Kept {
                        tier,
                        count,
                        reason: policy.hold_reason.clone(),
                        until,
                    });
                }
            } else {
                receipt.deleted.add(tier, count);
            }
        }
        Ok(receipt)
    }

    fn erase(&mut self, pseudonyms: &[Pseudonym]) -> Result<ErasureReceipt, StoreError> {
        let shared = self.shared.clone();
        let all = Tier::ALL.into_iter().collect::<TierSet>();
        let mut batch = WriteBatch::default();
        let mut receipt = self.remove_tiers(pseudonyms, all, &mut batch)?;
        let connections_cf = shared.cf(CF_CONNECTIONS)?;
        let meters_cf = shared.cf(CF_METERS)?;
        {
            let mut map = shared.connections.write().map_err(|_| StoreError::Closed)?;
            for p in pseudonyms {
                if map.remove(p).is_some() {
                    receipt.connection = 1;
                }
                batch.delete_cf(connections_cf, p.to_bytes());
                let (start, end) = layout::pseudonym_range(*p);
                let mut it = shared.db.raw_iterator_cf(meters_cf);
                it.seek(&start);
                while let Some(k) = it.key() {
                    if k >= end.as_slice() {
                        break;
                    }
                    receipt.meters += 1;
                    it.next();
                }
                batch.delete_range_cf(meters_cf, &start, &end);
            }
        }
        self.meters_seen.retain(|(c, _)| !pseudonyms.contains(c));
        shared.db.write_opt(batch, &shared.write_opts())?;
        let erased = all.minus(shared.config.retention.erasure_hold);
        self.purge(pseudonyms, erased)?;
        record_erased(&receipt);
        metrics::ERASURES.inc();
        Ok(receipt)
    }

    /// Makes deletions physical: flush every memtable (so no WAL still holds the data) and
    /// compact the pseudonyms' ranges down to the bottom level, where tombstones and the
    /// data they cover are dropped.
    fn purge(&mut self, pseudonyms: &[Pseudonym], tiers: TierSet) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let names: Vec<&str> = tiers
            .iter()
            .map(tier_cf_name)
            .chain([CF_CONNECTIONS, CF_METERS])
            .collect();
        for name in &names {
            shared.db.flush_cf(shared.cf(name)?)?;
        }
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        opts.set_exclusive_manual_compaction(true);
        for name in &names {
            let cf = shared.cf(name)?;
            for p in pseudonyms {
                let (start, end) = layout::pseudonym_range(*p);
                shared
                    .db
                    .compact_range_cf_opt(cf, Some(&start), Some(&end), &opts);
            }
        }
        Ok(())
    }

    /// Deletes blocks wholly past retention and trims the ones that straddle the horizon.
    fn sweep(&mut self) -> Result<TierCounts, StoreError> {
        let shared = self.shared.clone();
        shared.refresh_horizons();
        let mut removed = TierCounts::default();
        for tier in Tier::ALL {
            let cf = shared.tier_cf(tier)?;
            let horizon = shared.horizons.get(tier);
            let horizon_q = horizon.div_euclid(meterstand_model::QUARTER_SECONDS);
            let mut batch = WriteBatch::default();
            let mut it = shared.db.raw_iterator_cf(cf);
            it.seek_to_first();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if let Some(key) = layout::parse_key(k) {
                    let start = i64::from(layout::bucket_start_quarter(tier, key.bucket));
                    let end = start + layout::bucket_quarters(tier);
                    if end <= horizon_q {
                        removed.add(tier, layout::block_count(v));
                        batch.delete_cf(cf, k);
                    } else if start < horizon_q {
                        let entries =
                            layout::decode_block(v).ok_or(StoreError::Corrupt(tier.as_str()))?;
                        let keep: Vec<(u32, u64)> = entries
                            .iter()
                            .copied()
                            .filter(|(slot, _)| start + i64::from(*slot) >= horizon_q)
                            .collect();
                        if keep.len() < entries.len() {
                            removed.add(tier, (entries.len() - keep.len()) as u64);
                            if keep.is_empty() {
                                batch.delete_cf(cf, k);
                            } else {
                                batch.put_cf(cf, k, layout::encode_block(&keep));
                            }
                        }
                    }
                }
                it.next();
            }
            it.status()?;
            drop(it);
            if !batch.is_empty() {
                shared.db.write_opt(batch, &shared.write_opts())?;
            }
            metrics::RETENTION_DELETED
                .with_label_values(&[tier.as_str()])
                .inc_by(removed.get(tier));
        }
        Ok(removed)
    }

    fn compact_all(&mut self) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        for tier in Tier::ALL {
            let cf = shared.tier_cf(tier)?;
            shared.db.flush_cf(cf)?;
            shared
                .db
                .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }
}

fn record_erased(receipt: &ErasureReceipt) {
    for tier in Tier::ALL {
        metrics::ERASED
            .with_label_values(&[tier.as_str()])
            .inc_by(receipt.deleted.get(tier));
    }
}

fn record_outcome(o: &WriteOutcome) {
    for tier in Tier::ALL {
        let t = [tier.as_str()];
        metrics::STORED
            .with_label_values(&t)
            .inc_by(o.stored.get(tier));
        metrics::DROPPED_BY_CONSENT
            .with_label_values(&t)
            .inc_by(o.dropped_by_consent.get(tier));
        metrics::EXPIRED_ON_ARRIVAL
            .with_label_values(&t)
            .inc_by(o.expired.get(tier));
    }
    metrics::DUPLICATES.inc_by(o.duplicates);
    metrics::CONFLICTS.inc_by(o.conflicts);
}

impl ReadingWriter for RocksStore {
    async fn write(&self, items: Vec<IngestItem>) -> Result<WriteOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Write { items, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl ReadingStore for RocksStore {
    fn connection(&self, p: Pseudonym) -> Option<Connection> {
        self.shared
            .connections
            .read()
            .ok()
            .and_then(|m| m.get(&p).cloned())
    }

    fn put_connection(
        &self,
        p: Pseudonym,
        connection: Connection,
    ) -> Result<ErasureReceipt, StoreError> {
        self.call_blocking(|reply| Command::PutConnection {
            p,
            connection,
            reply,
        })
    }

    fn erase(&self, pseudonyms: &[Pseudonym]) -> Result<ErasureReceipt, StoreError> {
        let pseudonyms = pseudonyms.to_vec();
        self.call_blocking(|reply| Command::Erase { pseudonyms, reply })
    }

    fn knows(&self, p: Pseudonym) -> Result<bool, StoreError> {
        if self.connection(p).is_some() {
            return Ok(true);
        }
        let (start, end) = layout::pseudonym_range(p);
        for tier in Tier::ALL {
            let mut it = self.shared.db.raw_iterator_cf(self.shared.tier_cf(tier)?);
            it.seek(&start);
            if it.key().is_some_and(|k| k < end.as_slice()) {
                return Ok(true);
            }
            it.status()?;
        }
        Ok(false)
    }

    fn export(&self, pseudonyms: &[Pseudonym]) -> Result<SubjectExport, StoreError> {
        let mut export = SubjectExport::default();
        let meters_cf = self.shared.cf(CF_METERS)?;
        for p in pseudonyms {
            if export.connection.is_none() {
                export.connection = self.connection(*p);
            }
            for tier in Tier::ALL {
                let readings = self.readings(*p, tier, Timestamp::MIN, Timestamp::MAX)?;
                match tier {
                    Tier::Interval => export.interval.extend(readings),
                    Tier::Day => export.day.extend(readings),
                    Tier::Month => export.month.extend(readings),
                }
            }
            let (start, end) = layout::pseudonym_range(*p);
            let mut it = self.shared.db.raw_iterator_cf(meters_cf);
            it.seek(&start);
            while let Some(k) = it.key() {
                if k >= end.as_slice() {
                    break;
                }
                if let Some(m) = k
                    .get(meterstand_pseudonym::Pseudonym::LEN..)
                    .and_then(Pseudonym::from_bytes)
                {
                    export.meters.push(m);
                }
                it.next();
            }
            it.status()?;
        }
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
        let mut out = Vec::new();
        for register in meterstand_model::Register::ALL {
            crate::query::scan_register(
                self.shared(),
                p,
                register,
                tier,
                from,
                to,
                |time, value| {
                    out.push(Reading {
                        register,
                        time,
                        value,
                    });
                },
            )?;
        }
        out.sort_by_key(|r| (r.time, r.register));
        Ok(out)
    }

    fn series(
        &self,
        p: Pseudonym,
        kind: RegisterKind,
        tier: Tier,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SeriesRow>, StoreError> {
        crate::query::series(self.shared(), p, kind, tier, from, to)
    }

    fn aggregate(&self, query: &AggregateQuery) -> Result<Vec<AggregateCell>, StoreError> {
        crate::query::aggregate(self.shared(), query)
    }

    fn sweep_retention(&self) -> Result<TierCounts, StoreError> {
        self.call_blocking(|reply| Command::Sweep { reply })
    }

    fn backup(&self, dir: &Path) -> Result<BackupInfo, StoreError> {
        if dir.exists() {
            return Err(StoreError::InvalidQuery(
                "the backup directory must not exist yet".into(),
            ));
        }
        self.checkpoint(dir)?;
        let mut info = BackupInfo::default();
        let entries = std::fs::read_dir(dir).map_err(|e| StoreError::Engine(e.to_string()))?;
        for entry in entries.flatten() {
            if let Ok(meta) = entry.metadata() {
                info.files += 1;
                info.bytes += meta.len();
            }
        }
        metrics::BACKUPS.inc();
        Ok(info)
    }

    fn is_healthy(&self) -> bool {
        self.shared.writer_alive.load(Ordering::SeqCst) && !self.commands.is_closed()
    }
}

pub(crate) mod access {
    //! What the query module needs of the backend.
    pub(crate) use super::Shared;
    use super::*;

    impl Shared {
        pub(crate) fn db(&self) -> &DB {
            &self.db
        }
        pub(crate) fn tier_cf_handle(&self, tier: Tier) -> Result<&ColumnFamily, StoreError> {
            self.tier_cf(tier)
        }
        pub(crate) fn horizon(&self, tier: Tier) -> i64 {
            // Read-time filter: what is past retention is invisible even before the sweep.
            self.config
                .retention
                .horizon(tier, self.clock.now())
                .as_second()
        }
        pub(crate) fn calendar(&self) -> meterstand_model::Calendar {
            self.calendar.clone()
        }
        pub(crate) fn connections_snapshot(&self) -> HashMap<Pseudonym, Connection> {
            self.connections
                .read()
                .map(|m| m.clone())
                .unwrap_or_default()
        }
    }
}

//! Opening the database: column families and their options, the retention horizons the
//! compaction filters read, and the state every other module shares ([`Shared`]). Above
//! the crate's pure leaves only (`layout`, `subjects`, `units`, `metrics`, `fault`); every
//! other module builds on it (docs/design.md, "Shape of the code").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use jiff::Timestamp;
use meterstand_model::{Calendar, Connection, ConsentLevel, Postcode4, Profile, Tier, TierSet};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::{Clock, RetentionPolicy, StoreError, SubjectState};
use parking_lot::RwLock;
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteOptions,
    compaction_filter::Decision,
};

use crate::{layout, metrics};

pub(crate) const CF_CONNECTIONS: &str = "connections";
pub(crate) const CF_METERS: &str = "meters";
/// Subjects' privacy state (objection, erasure, seal), keyed by a one-way hash of each
/// pseudonym so that no file keeps an erased pseudonym's bytes (`subjects.rs`). Named for
/// what it held first, erasure tombstones.
pub(crate) const CF_TOMBSTONES: &str = "tombstones";
/// Bookkeeping of the store itself (no connection data).
pub(crate) const CF_META: &str = "meta";
/// Readings whose block could not be decoded: block key ‖ slot (u32 BE) → value (u64 BE),
/// kept for an operator to repair from; erased and expired like the tiers.
pub(crate) const CF_QUARANTINE: &str = "quarantine";
/// Frozen statistics: anonymous rows of at least k connections, no identifier (see
/// `stats.rs` for the key layout).
pub(crate) const CF_STATISTICS: &str = "statistics";
/// When a correction replaced a stored reading: `layout::correction_key` → correction time
/// and old value (`layout::encode_correction`); erased per tier and expired like the tiers.
pub(crate) const CF_CORRECTIONS: &str = "corrections";
/// Column families without connection data, flushed with the others so that no WAL file
/// outlives an erasure.
pub(crate) const OTHER_CFS: [&str; 3] = [CF_TOMBSTONES, CF_META, CF_STATISTICS];

/// Every column family that holds data of a connection, tiers first.
pub(crate) const CONNECTION_CFS: [&str; 7] = [
    "interval",
    "day",
    "month",
    CF_CONNECTIONS,
    CF_METERS,
    CF_QUARANTINE,
    CF_CORRECTIONS,
];

pub(crate) fn tier_cf_name(tier: Tier) -> &'static str {
    tier.as_str()
}

/// Block compression of the tier column families (`store.compression`: `zstd`, `lz4` or
/// `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Lz4,
    #[default]
    Zstd,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub default_consent: ConsentLevel,
    pub retention: RetentionPolicy,
    pub compression: Compression,
    /// Day and month boundaries in the configured time zone.
    pub calendar: Calendar,
    /// Sync the WAL on every group commit. Only benchmarks of the raw engine turn this off.
    pub sync: bool,
    /// The erasure and consent journal (outside `path` and outside backups): erasures and
    /// connection changes are journalled before they run, and entries the store has not
    /// applied are replayed at open. `None`: no journal (tests, benchmarks).
    pub journal: Option<PathBuf>,
    /// One memory budget in bytes (`store.memory`): five eighths for RocksDB's block cache,
    /// which memtables are charged to as well (a write-buffer manager holds them to a quarter
    /// of the budget), a quarter for the writer's cache of blocks as last written and its table
    /// of recorded meters, and an eighth for the
    /// messages ingest holds until they are acknowledged (`ingest_bytes`).
    pub memory: u64,
}

/// Ingest's share of a `store.memory` budget: an eighth (see `StoreConfig::memory`).
pub fn ingest_share(memory: u64) -> u64 {
    memory / 8
}

impl StoreConfig {
    /// The RocksDB share of the budget: block cache and memtables together.
    pub(crate) fn rocksdb_bytes(&self) -> usize {
        usize::try_from(self.memory / 8 * 5).unwrap_or(usize::MAX)
    }

    /// The memtables' share, within the RocksDB share.
    pub(crate) fn memtable_bytes(&self) -> usize {
        usize::try_from(self.memory / 4).unwrap_or(usize::MAX)
    }

    /// The share of the messages received and not yet acknowledged: ingest waits before
    /// reading more from the broker while their payloads hold this much.
    pub fn ingest_bytes(&self) -> u64 {
        ingest_share(self.memory)
    }

    /// The writer's share: its cache of blocks as last written and its table of recorded meters.
    pub fn writer_cache_bytes(&self) -> u64 {
        self.memory / 4
    }
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            default_consent: ConsentLevel::Standard,
            retention: RetentionPolicy::default(),
            compression: Compression::Zstd,
            calendar: Calendar::amsterdam(),
            sync: true,
            journal: None,
            memory: 256 << 20,
        }
    }
}

/// Retention horizons (UTC seconds) per tier, shared with the compaction filters.
#[derive(Debug, Default)]
pub(crate) struct Horizons([AtomicI64; 3]);

impl Horizons {
    pub(crate) fn get(&self, tier: Tier) -> i64 {
        self.0[tier as usize].load(Ordering::Relaxed)
    }
    fn set(&self, tier: Tier, secs: i64) {
        self.0[tier as usize].store(secs, Ordering::Relaxed);
    }
}

/// What the writer, the readers and the facade share.
pub(crate) struct Shared {
    pub(crate) db: DB,
    pub(crate) config: StoreConfig,
    pub(crate) clock: Arc<dyn Clock>,
    /// Connection records, loaded at open; changed only by the writer thread.
    pub(crate) connections: RwLock<HashMap<Pseudonym, Connection>>,
    /// Subjects' privacy state by the one-way hash of each pseudonym (`subjects.rs`);
    /// changed only by the writer thread.
    pub(crate) subjects: RwLock<HashMap<[u8; 16], SubjectState>>,
    pub(crate) horizons: Arc<Horizons>,
    pub(crate) writer_alive: AtomicBool,
    pub(crate) faults: crate::fault::Faults,
    /// Frozen and pending units of statistics (`units.rs`): the writer marks and checks
    /// them, the freeze settles them, each under this one lock.
    pub(crate) units: parking_lot::Mutex<crate::units::Units>,
    /// RocksDB's block cache, shrunk by what the registry of connections takes.
    cache: parking_lot::Mutex<rocksdb::Cache>,
    /// The block cache's capacity now, and the registry bytes it was charged for.
    pub(crate) block_cache_capacity: AtomicUsize,
    registry_charged: AtomicUsize,
}

/// The block cache keeps at least this share of the RocksDB budget, however large the
/// registry of connections grows.
const MIN_BLOCK_CACHE_SHARE: usize = 4;

/// Bytes the registry of connections takes: hash-table slots (entry and control byte) of
/// the connection records and the subjects' states.
fn registry_bytes(connection_slots: usize, subject_slots: usize) -> usize {
    connection_slots * (std::mem::size_of::<(Pseudonym, Connection)>() + 1)
        + subject_slots * (std::mem::size_of::<([u8; 16], SubjectState)>() + 1)
}

impl Shared {
    /// Charges the registry of connections (records and tombstones, held in memory because
    /// the gate reads them for every reading) to `store.memory`: the block cache gives up
    /// what the registry takes, so that the store stays within its budget as the fleet
    /// grows (down to a quarter of the RocksDB share). Called with the registry's capacities
    /// after every change; the cache is resized only when they changed.
    pub(crate) fn charge_registry(&self, connection_slots: usize, subject_slots: usize) {
        let bytes = registry_bytes(connection_slots, subject_slots);
        if self.registry_charged.swap(bytes, Ordering::AcqRel) == bytes {
            return;
        }
        let share = self.config.rocksdb_bytes();
        let capacity = share
            .saturating_sub(bytes)
            .max(share / MIN_BLOCK_CACHE_SHARE);
        self.cache.lock().set_capacity(capacity);
        self.block_cache_capacity.store(capacity, Ordering::Release);
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or(StoreError::Corrupt("a missing column family"))
    }

    pub(crate) fn tier_cf(&self, tier: Tier) -> Result<&ColumnFamily, StoreError> {
        self.cf(tier_cf_name(tier))
    }

    /// The tiers a connection's readings may be stored in: its consent, `off` once erased,
    /// the configured default when unknown.
    pub(crate) fn allowed_tiers(
        &self,
        connections: &HashMap<Pseudonym, Connection>,
        subjects: &HashMap<[u8; 16], SubjectState>,
        p: Pseudonym,
    ) -> TierSet {
        if let Some(c) = connections.get(&p) {
            return c.consent.allowed_tiers();
        }
        if crate::subjects::state_in(subjects, p).erased {
            return ConsentLevel::Off.allowed_tiers();
        }
        self.config.default_consent.allowed_tiers()
    }

    pub(crate) fn refresh_horizons(&self) -> Timestamp {
        let now = self.clock.now();
        for tier in Tier::ALL {
            self.horizons
                .set(tier, self.config.retention.horizon(tier, now).as_second());
        }
        now
    }

    /// Read-time filter: what is past retention is invisible even before the sweep.
    pub(crate) fn read_horizon(&self, tier: Tier) -> i64 {
        self.config
            .retention
            .horizon(tier, self.clock.now())
            .as_second()
    }

    /// A subject's state: the union over its pseudonyms.
    pub(crate) fn subject_state(&self, all: &[Pseudonym]) -> SubjectState {
        let states = self.subjects.read();
        SubjectState::union_all(all.iter().map(|p| crate::subjects::state_in(&states, *p)))
    }

    /// Queues `state` under every one of `all` in `batch` (an empty state deletes the
    /// entry); [`crate::subjects::remember`] it once the batch is written.
    pub(crate) fn put_subject_state(
        &self,
        batch: &mut rocksdb::WriteBatch,
        all: &[Pseudonym],
        state: SubjectState,
    ) -> Result<(), StoreError> {
        let cf = self.cf(CF_TOMBSTONES)?;
        for p in all {
            if state.is_empty() {
                batch.delete_cf(cf, crate::subjects::key(*p));
            } else {
                batch.put_cf(
                    cf,
                    crate::subjects::key(*p),
                    crate::subjects::encode(&state),
                );
            }
        }
        Ok(())
    }

    pub(crate) fn write_opts(&self) -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.config.sync);
        wo
    }
}

/// Maps a RocksDB error to a store error that keeps it as its source.
pub(crate) fn engine(context: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |e| StoreError::engine(context, e)
}

pub(crate) fn open_shared(
    config: StoreConfig,
    clock: Arc<dyn Clock>,
) -> Result<Shared, StoreError> {
    let horizons = Arc::new(Horizons::default());
    let now = clock.now();
    for tier in Tier::ALL {
        horizons.set(tier, config.retention.horizon(tier, now).as_second());
    }
    let mut db_opts = db_options()?;
    remove_info_logs(&config.path)?;

    // One budget: every column family's blocks and every memtable are charged to one cache.
    let cache = rocksdb::Cache::new_lru_cache(config.rocksdb_bytes());
    // Stalling writes past the memtables' share makes it a bound, not a flush trigger that
    // writes can outrun (a million connections' meter records grew the memtables to 105 MB
    // under a 16 MiB share).
    let memtables = rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(
        config.memtable_bytes(),
        true,
        cache.clone(),
    );
    db_opts.set_write_buffer_manager(&memtables);
    let mut cfs = Vec::new();
    for tier in Tier::ALL {
        cfs.push(ColumnFamilyDescriptor::new(
            tier_cf_name(tier),
            tier_options(tier, &config, horizons.clone(), &cache),
        ));
    }
    for name in [
        CF_CONNECTIONS,
        CF_METERS,
        CF_TOMBSTONES,
        CF_META,
        CF_QUARANTINE,
        CF_STATISTICS,
        CF_CORRECTIONS,
    ] {
        let mut o = Options::default();
        o.set_compression_type(rocksdb::DBCompressionType::None);
        // Small records; RocksDB's default (64 MiB per memtable) would let one of these
        // take the whole memtable share.
        o.set_write_buffer_size(4 << 20);
        cfs.push(ColumnFamilyDescriptor::new(name, o));
    }
    create_private_dir(&config.path)?;
    let db = DB::open_cf_descriptors(&db_opts, &config.path, cfs)
        .map_err(engine("opening the database"))?;

    let config_rocksdb_bytes = config.rocksdb_bytes();
    let shared = Shared {
        db,
        config,
        clock,
        connections: RwLock::new(HashMap::new()),
        subjects: RwLock::new(HashMap::new()),
        horizons,
        writer_alive: AtomicBool::new(true),
        faults: Default::default(),
        units: Default::default(),
        block_cache_capacity: AtomicUsize::new(config_rocksdb_bytes),
        cache: parking_lot::Mutex::new(cache),
        registry_charged: AtomicUsize::new(0),
    };
    load_registry(&shared)?;
    Ok(shared)
}

/// The database's options before the memory budget: one writer, a MANIFEST that rolls at
/// every change and an info LOG that names no key.
fn db_options() -> Result<Options, StoreError> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_max_background_jobs(2);
    db_opts.set_bytes_per_sync(1 << 20);
    // One writer thread: no concurrent memtable inserts, so RocksDB inserts each key with
    // the previous insert's position as hint, which our key-sorted batches make cheap.
    db_opts.set_allow_concurrent_memtable_write(false);
    // The MANIFEST records the smallest and largest key of every SST file it lists until it
    // is rewritten; a small limit makes RocksDB start a new one (a snapshot of the live
    // files only) at each change, so an erased pseudonym does not live on as a file bound.
    db_opts.set_max_manifest_file_size(MANIFEST_ROLL_BYTES);
    // ... and no space-amplification allowance on top of that limit: with the default (500 %)
    // the MANIFEST would only roll at six times its compacted size.
    let mut db_opts = db_opts
        .get_options_from_string("max_manifest_space_amp_pct=0")
        .map_err(engine("setting the MANIFEST policy"))?;
    // RocksDB's info LOG names key ranges in hex (a manual compaction after an erasure
    // logs the erased pseudonym's range): it logs warnings and errors only and keeps no
    // rotated copies (the LOG files of earlier versions go before it opens). Set after the
    // options string above, which builds new options.
    db_opts.set_log_level(rocksdb::LogLevel::Warn);
    db_opts.set_keep_log_file_num(1);
    Ok(db_opts)
}

/// Creates the data directory, owner only: the store holds pseudonymous personal data.
fn create_private_dir(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| StoreError::engine("creating the data directory", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| StoreError::engine("restricting the data directory to its owner", e))
}

/// Deletes RocksDB's info logs (`LOG`, `LOG.old.*`) of earlier runs: diagnostics only, and
/// those written before the log level was raised name key ranges.
fn remove_info_logs(dir: &std::path::Path) -> Result<(), StoreError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "LOG" || name.starts_with("LOG.old") {
            std::fs::remove_file(entry.path())
                .map_err(|e| StoreError::engine("removing an old RocksDB info log", e))?;
        }
    }
    Ok(())
}

/// A new MANIFEST once the current one exceeds this: small, so erasures roll it quickly.
const MANIFEST_ROLL_BYTES: usize = 1;

fn tier_options(
    tier: Tier,
    config: &StoreConfig,
    horizons: Arc<Horizons>,
    cache: &rocksdb::Cache,
) -> Options {
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
    table.set_block_cache(cache);
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

pub(crate) fn encode_connection(c: &Connection) -> Vec<u8> {
    let mut v = vec![c.consent as u8];
    v.extend_from_slice(&c.postcode4.map(Postcode4::get).unwrap_or(0).to_be_bytes());
    let profile = c.profile.as_ref().map(|p| p.as_str()).unwrap_or("");
    v.push(u8::try_from(profile.len()).unwrap_or(0));
    v.extend_from_slice(profile.as_bytes());
    v
}

/// A stored record, and whether it carries an objection: earlier versions kept it in the
/// record (a trailing 0 byte), and it moves to the subject's state at load.
fn decode_connection(v: &[u8]) -> Option<(Connection, bool)> {
    let consent = ConsentLevel::from_code(*v.first()?)?;
    let postcode = u16::from_be_bytes([*v.get(1)?, *v.get(2)?]);
    let len = usize::from(*v.get(3)?);
    let profile = std::str::from_utf8(v.get(4..4 + len)?).ok()?;
    let objected = v.get(4 + len).is_some_and(|b| *b == 0);
    let connection = Connection {
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
    };
    Some((connection, objected))
}

/// Loads the connection records and the subjects' states into memory. An objection kept
/// in a record by an earlier version moves to the subject's state (written back once).
fn load_registry(shared: &Shared) -> Result<(), StoreError> {
    let now = shared.clock.now();
    let mut states = HashMap::new();
    for item in shared
        .db
        .iterator_cf(shared.cf(CF_TOMBSTONES)?, rocksdb::IteratorMode::Start)
    {
        let (k, v) = item.map_err(engine("loading subjects"))?;
        let key: [u8; 16] = k
            .as_ref()
            .try_into()
            .map_err(|_| StoreError::Corrupt("subjects"))?;
        states.insert(
            key,
            crate::subjects::decode(&v, now).ok_or(StoreError::Corrupt("subjects"))?,
        );
    }
    let mut map = HashMap::new();
    let mut migrated = rocksdb::WriteBatch::default();
    for item in shared
        .db
        .iterator_cf(shared.cf(CF_CONNECTIONS)?, rocksdb::IteratorMode::Start)
    {
        let (k, v) = item.map_err(engine("loading connections"))?;
        let p = Pseudonym::from_bytes(&k).ok_or(StoreError::Corrupt("connections"))?;
        let (connection, objected) =
            decode_connection(&v).ok_or(StoreError::Corrupt("connections"))?;
        if objected {
            let state = SubjectState {
                objected: true,
                ..crate::subjects::state_in(&states, p)
            };
            shared.put_subject_state(&mut migrated, &[p], state)?;
            crate::subjects::remember(&mut states, &[p], state);
            migrated.put_cf(
                shared.cf(CF_CONNECTIONS)?,
                &k,
                encode_connection(&connection),
            );
        }
        map.insert(p, connection);
    }
    if !migrated.is_empty() {
        shared
            .db
            .write_opt(migrated, &shared.write_opts())
            .map_err(engine("moving objections to the subjects' state"))?;
    }
    shared.charge_registry(map.capacity(), states.capacity());
    *shared.connections.write() = map;
    *shared.subjects.write() = states;
    Ok(())
}

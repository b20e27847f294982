//! Mutations other than ingest: connection changes, erasure, making deletions physical
//! (purge), the retention sweep and full compaction. Called only from the writer thread,
//! which clears its block cache around them; each is a plain function over [`Shared`].

use meterstand_model::{Connection, Tier, TierSet};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::{ErasureReceipt, Kept, StoreError, TierCounts};
use rocksdb::{BottommostLevelCompaction, CompactOptions, WriteBatch};

use crate::engine::{
    CF_CONNECTIONS, CF_CORRECTIONS, CF_META, CF_METERS, CF_QUARANTINE, CONNECTION_CFS, OTHER_CFS,
    Shared, encode_connection, engine, tier_cf_name,
};
use crate::{layout, metrics, subjects};

/// Registers or updates a connection under `all[0]`, removing under every pseudonym in
/// `all` (older key versions included) the tiers the new consent does not allow. The
/// subject's state is kept under all of them: an objection stays, an erased subject is
/// registered again with its held history sealed, consent `off` seals what is held.
pub(crate) fn put_connection(
    shared: &Shared,
    all: &[Pseudonym],
    connection: Connection,
) -> Result<ErasureReceipt, StoreError> {
    let Some(current) = all.first().copied() else {
        return Err(StoreError::InvalidQuery("no pseudonym given".into()));
    };
    // Whatever the new level does not allow has no legal basis any more, under any key
    // version, except what a hold keeps.
    let remove = TierSet::ALL.minus(connection.consent.allowed_tiers());
    let mut batch = WriteBatch::default();
    let receipt = remove_tiers(shared, all, remove, &mut batch)?;
    let connections_cf = shared.cf(CF_CONNECTIONS)?;
    let state = shared
        .subject_state(all)
        .after_registration(connection.consent, shared.clock.now());
    shared.put_subject_state(&mut batch, all, state)?;
    for p in all {
        if *p != current {
            batch.delete_cf(connections_cf, p.to_bytes());
        }
    }
    batch.put_cf(
        connections_cf,
        current.to_bytes(),
        encode_connection(&connection),
    );
    shared
        .db
        .write_opt(batch, &shared.write_opts())
        .map_err(engine("writing a connection"))?;
    {
        let mut connections = shared.connections.write();
        let mut states = shared.subjects.write();
        for p in all {
            connections.remove(p);
        }
        subjects::remember(&mut states, all, state);
        connections.insert(current, connection);
        shared.charge_registry(connections.capacity(), states.capacity());
    }
    if receipt.deleted.total() > 0 {
        purge(shared, all)?;
    }
    record_erased(&receipt);
    Ok(receipt)
}

/// Queues range deletions of `tiers` (less the held ones) for `pseudonyms` and reports
/// what they remove and what the holds keep.
fn remove_tiers(
    shared: &Shared,
    pseudonyms: &[Pseudonym],
    tiers: TierSet,
    batch: &mut WriteBatch,
) -> Result<ErasureReceipt, StoreError> {
    let policy = &shared.config.retention;
    let mut receipt = ErasureReceipt::default();
    let corrections_cf = shared.cf(CF_CORRECTIONS)?;
    for tier in tiers.iter() {
        let cf = shared.tier_cf(tier)?;
        let held = policy.erasure_hold.contains(tier);
        let mut count = 0;
        let mut latest: Option<i64> = None;
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
                    && let Some((slot, _)) = entries.last()
                {
                    let base = layout::bucket_start_quarter(tier, key.bucket);
                    let t = layout::time_of_quarter(base + slot).as_second();
                    latest = Some(latest.map_or(t, |l| l.max(t)));
                }
                it.next();
            }
            it.status()
                .map_err(engine("scanning a connection's range"))?;
            if !held {
                batch.delete_range_cf(cf, &start, &end);
                let (start, end) = layout::correction_tier_range(*p, tier);
                batch.delete_range_cf(corrections_cf, &start, &end);
            }
        }
        if !held {
            receipt.deleted.add(tier, count);
        } else if count > 0 {
            receipt.kept.push(Kept {
                tier,
                count,
                reason: policy.hold_reason.clone(),
                until: policy.kept_until(tier, latest),
            });
        }
    }
    Ok(receipt)
}

/// Erases everything of `pseudonyms` but the held tiers, records the erasure in the
/// subject's state (gated like consent `off`, what the hold keeps sealed, an objection
/// kept), and makes the deletion physical.
pub(crate) fn erase(
    shared: &Shared,
    pseudonyms: &[Pseudonym],
) -> Result<ErasureReceipt, StoreError> {
    let mut batch = WriteBatch::default();
    let mut receipt = remove_tiers(shared, pseudonyms, TierSet::ALL, &mut batch)?;
    let connections_cf = shared.cf(CF_CONNECTIONS)?;
    let meters_cf = shared.cf(CF_METERS)?;
    let quarantine_cf = shared.cf(CF_QUARANTINE)?;
    let state = shared
        .subject_state(pseudonyms)
        .after_erasure(shared.clock.now());
    shared.put_subject_state(&mut batch, pseudonyms, state)?;
    for p in pseudonyms {
        if shared.connections.read().contains_key(p) {
            receipt.connection = 1;
        }
        batch.delete_cf(connections_cf, p.to_bytes());
        let (start, end) = layout::pseudonym_range(*p);
        let mut it = shared.db.raw_iterator_cf(meters_cf);
        it.seek(&start);
        while it.key().is_some_and(|k| k < end.as_slice()) {
            receipt.meters += 1;
            it.next();
        }
        it.status().map_err(engine("scanning meters"))?;
        batch.delete_range_cf(meters_cf, &start, &end);
        batch.delete_range_cf(quarantine_cf, &start, &end);
    }
    shared
        .db
        .write_opt(batch, &shared.write_opts())
        .map_err(engine("writing an erasure"))?;
    {
        let mut connections = shared.connections.write();
        let mut states = shared.subjects.write();
        for p in pseudonyms {
            connections.remove(p);
        }
        subjects::remember(&mut states, pseudonyms, state);
        shared.charge_registry(connections.capacity(), states.capacity());
    }
    purge(shared, pseudonyms)?;
    record_erased(&receipt);
    metrics::ERASURES.inc();
    Ok(receipt)
}

/// Records or withdraws the subject's objection under every one of `all`.
pub(crate) fn set_objection(
    shared: &Shared,
    all: &[Pseudonym],
    objected: bool,
) -> Result<(), StoreError> {
    let state = shared
        .subject_state(all)
        .after_objection(objected, shared.clock.now());
    let mut batch = WriteBatch::default();
    shared.put_subject_state(&mut batch, all, state)?;
    shared
        .db
        .write_opt(batch, &shared.write_opts())
        .map_err(engine("writing an objection"))?;
    let connections = shared.connections.read();
    let mut states = shared.subjects.write();
    subjects::remember(&mut states, all, state);
    shared.charge_registry(connections.capacity(), states.capacity());
    Ok(())
}

/// Makes deletions physical: flush every memtable of every column family (so that no WAL
/// file still holds the data: RocksDB drops a WAL only once every family has flushed past
/// it), compact the pseudonyms' ranges down to the bottom level, where tombstones and the
/// data they cover are dropped, and roll the MANIFEST past the compaction so that no file
/// bound naming the pseudonym stays in it.
fn purge(shared: &Shared, pseudonyms: &[Pseudonym]) -> Result<(), StoreError> {
    let mut all_cfs = Vec::new();
    for name in CONNECTION_CFS.iter().chain(&OTHER_CFS) {
        all_cfs.push(shared.cf(name)?);
    }
    shared
        .db
        .flush_cfs_opt(&all_cfs, &rocksdb::FlushOptions::default())
        .map_err(engine("flushing memtables"))?;
    let mut opts = CompactOptions::default();
    opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
    opts.set_exclusive_manual_compaction(true);
    for name in CONNECTION_CFS {
        let cf = shared.cf(name)?;
        for p in pseudonyms {
            let (start, end) = layout::pseudonym_range(*p);
            shared
                .db
                .compact_range_cf_opt(cf, Some(&start), Some(&end), &opts);
        }
    }
    roll_manifest(shared)
}

/// One more change to the version set, so that RocksDB (with its tiny MANIFEST limit)
/// writes a new MANIFEST from the files live now and deletes the old one.
fn roll_manifest(shared: &Shared) -> Result<(), StoreError> {
    let meta = shared.cf(CF_META)?;
    let now = shared.clock.now().as_second().to_be_bytes();
    shared
        .db
        .put_cf_opt(meta, b"manifest-roll", now, &shared.write_opts())
        .map_err(engine("writing store metadata"))?;
    shared
        .db
        .flush_cf(meta)
        .map_err(engine("flushing store metadata"))
}

/// Deletes blocks wholly past retention and trims the ones that straddle the horizon.
/// The sweep writes its deletions in batches of about this size: its memory stays fixed
/// however much expired at once (a million series' worth of blocks made an 80 MB batch).
const SWEEP_BATCH_BYTES: usize = 4 << 20;

pub(crate) fn sweep(shared: &Shared) -> Result<TierCounts, StoreError> {
    shared.refresh_horizons();
    let mut removed = TierCounts::default();
    for tier in Tier::ALL {
        let cf = shared.tier_cf(tier)?;
        let horizon_q = shared
            .horizons
            .get(tier)
            .div_euclid(meterstand_model::QUARTER_SECONDS);
        let mut batch = WriteBatch::default();
        let mut it = shared.db.raw_iterator_cf(cf);
        it.seek_to_first();
        // Keys are (pseudonym, register, bucket) with the bucket big-endian, so within one
        // (pseudonym, register) its expired blocks come first, then at most one block that
        // straddles the horizon, then live ones. The sweep reads the expired ones and the
        // straddling one and seeks past the rest: its cost follows what expired (and the
        // number of series), not the number of blocks held.
        while let Some(k) = it.key() {
            let Some(first) = layout::parse_key(k) else {
                it.next();
                continue;
            };
            let prefix = layout::register_prefix(first.pseudonym, first.register);
            // Whether the walk stopped inside this series (at a block that stays): only then
            // is there anything to seek past.
            let mut inside = false;
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !k.starts_with(&prefix) {
                    break;
                }
                inside = true;
                let Some(key) = layout::parse_key(k) else {
                    break;
                };
                let start = i64::from(layout::bucket_start_quarter(tier, key.bucket));
                let end = start + layout::bucket_quarters(tier);
                if end <= horizon_q {
                    removed.add(tier, layout::block_count(v));
                    batch.delete_cf(cf, k);
                    if batch.size_in_bytes() >= SWEEP_BATCH_BYTES {
                        // A whole year expiring must not become one batch in memory.
                        shared
                            .db
                            .write_opt(std::mem::take(&mut batch), &shared.write_opts())
                            .map_err(engine("writing the sweep"))?;
                    }
                    it.next();
                    inside = false;
                    continue;
                }
                if start < horizon_q {
                    let gone = trim_block(tier, k, v, start, horizon_q, cf, &mut batch)?;
                    removed.add(tier, gone);
                }
                break;
            }
            if inside {
                it.seek(layout::after_prefix(&prefix));
            }
        }
        it.status().map_err(engine("sweeping a tier"))?;
        drop(it);
        if !batch.is_empty() {
            shared
                .db
                .write_opt(batch, &shared.write_opts())
                .map_err(engine("writing the sweep"))?;
        }
        metrics::RETENTION_DELETED
            .with_label_values(&[tier.as_str()])
            .inc_by(removed.get(tier));
        if tier == Tier::Interval {
            crash_test_pause(SWEEP_PAUSE_ENV);
        }
    }
    sweep_corrections(shared)?;
    let periods = crate::stats::sweep(shared)?;
    if periods > 0 {
        tracing::info!(periods, "statistics past retention.statistics removed");
    }
    Ok(removed)
}

/// Queues the live part of a block that straddles the horizon (or its deletion when nothing
/// is live); how many entries expired.
fn trim_block(
    tier: Tier,
    key: &[u8],
    block: &[u8],
    start: i64,
    horizon_q: i64,
    cf: &rocksdb::ColumnFamily,
    batch: &mut WriteBatch,
) -> Result<u64, StoreError> {
    let entries = layout::decode_block(block).ok_or(StoreError::Corrupt(tier.as_str()))?;
    let keep: Vec<(u32, u64)> = entries
        .iter()
        .copied()
        .filter(|(slot, _)| start + i64::from(*slot) >= horizon_q)
        .collect();
    if keep.len() == entries.len() {
        return Ok(0);
    }
    if keep.is_empty() {
        batch.delete_cf(cf, key);
    } else {
        batch.put_cf(cf, key, layout::encode_block(&keep));
    }
    Ok((entries.len() - keep.len()) as u64)
}

/// The crash test's hold inside the sweep (`crates/meterstand/tests/crash.rs`), like
/// RocksDB's kill points: set to a file path, the sweep creates that file after its first
/// tier's deletions are written and waits there, so that the test's SIGKILL lands between two
/// of the sweep's writes rather than before or after all of them. Unset in production (one
/// environment lookup per sweep).
pub const SWEEP_PAUSE_ENV: &str = "METERSTAND_CRASH_TEST_PAUSE_IN_SWEEP";

/// How long a crash-test pause holds: far longer than the test needs to send its SIGKILL.
const CRASH_TEST_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);

fn crash_test_pause(var: &str) {
    let Some(marker) = std::env::var_os(var) else {
        return;
    };
    tracing::warn!(hook = var, "crash-test pause: waiting to be killed");
    if std::fs::write(&marker, b"paused\n").is_ok() {
        std::thread::sleep(CRASH_TEST_PAUSE);
    }
}

/// Deletes the correction records of readings past their tier's retention.
fn sweep_corrections(shared: &Shared) -> Result<(), StoreError> {
    let cf = shared.cf(CF_CORRECTIONS)?;
    let horizons = Tier::ALL.map(|t| {
        shared
            .horizons
            .get(t)
            .div_euclid(meterstand_model::QUARTER_SECONDS)
    });
    let mut batch = WriteBatch::default();
    let mut it = shared.db.raw_iterator_cf(cf);
    it.seek_to_first();
    while let Some(k) = it.key() {
        if let Some((_, tier, _, q)) = layout::parse_correction_key(k)
            && i64::from(q) < horizons[tier as usize]
        {
            batch.delete_cf(cf, k);
        }
        it.next();
    }
    it.status().map_err(engine("sweeping corrections"))?;
    drop(it);
    if !batch.is_empty() {
        shared
            .db
            .write_opt(batch, &shared.write_opts())
            .map_err(engine("writing the sweep"))?;
    }
    Ok(())
}

pub(crate) fn compact_all(shared: &Shared) -> Result<(), StoreError> {
    let mut opts = CompactOptions::default();
    opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
    for tier in Tier::ALL {
        let cf = shared.cf(tier_cf_name(tier))?;
        shared.db.flush_cf(cf).map_err(engine("flushing a tier"))?;
        shared
            .db
            .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
    }
    Ok(())
}

fn record_erased(receipt: &ErasureReceipt) {
    for tier in Tier::ALL {
        metrics::ERASED
            .with_label_values(&[tier.as_str()])
            .inc_by(receipt.deleted.get(tier));
    }
}

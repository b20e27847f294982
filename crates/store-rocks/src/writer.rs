//! The writer thread: it owns every mutation. Ingest batches are group-committed — every
//! queued write request is drained into one group, gated by consent and retention, merged
//! into blocks per tier and written as one key-sorted `WriteBatch`; the sync thread makes it
//! durable. Other commands (connection changes, erasure, sweep) run between groups.

use std::sync::Arc;
use std::time::Instant;

use meterstand_model::{Connection, Register, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::{
    Correction, ErasureReceipt, IngestItem, StoreError, TierCounts, WriteOutcome,
};
use rocksdb::{WriteBatch, WriteOptions};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{
    CF_CONNECTIONS, CF_CORRECTIONS, CF_METERS, CF_QUARANTINE, Shared, encode_connection, engine,
};
use crate::fault::FaultPoint;
use crate::layout::{self, MergeResult};
use crate::sync::{Reply, SYNC_QUEUE, Written, sync_loop, sync_wal};
use crate::{maintenance, metrics};

pub(crate) enum Command {
    Write {
        items: Vec<IngestItem>,
        reply: Reply,
    },
    PutConnection {
        all: Vec<Pseudonym>,
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

/// Readings gathered into one group commit at most, to bound its latency.
const GROUP_COMMIT_READINGS: usize = 64 * 1024;
/// What a cached block costs beside its encoded bytes, counted high: its slot in the hash
/// table (key, the boxed slice's pointer and length, a control byte), twice over for the
/// spare capacity a table has after it grows, and malloc's header and rounding for the
/// block's own allocation. Counted low, a million connections' small blocks (an hour each)
/// took twice what the share allows.
const CACHED_BLOCK_OVERHEAD: u64 = 2 * (layout::KEY_LEN as u64 + 16 + 1) + 32;

/// Blocks as last written, encoded, for one tier: a stream of readings into the same open
/// blocks (the current day of every connection) needs no read before each write. Encoded
/// rather than decoded, a day of quarter-hours takes about 150 bytes instead of 1.6 KB, so
/// the same share holds ten times the blocks; decoding one to merge into it costs far less
/// than the read it saves. Sized in bytes; cleared whole when full.
#[derive(Default)]
struct BlockCache {
    blocks: FxHashMap<BlockKey, Box<[u8]>>,
    /// Encoded bytes plus `CACHED_BLOCK_OVERHEAD` per block.
    bytes: u64,
}

impl BlockCache {
    fn insert(&mut self, key: BlockKey, block: Box<[u8]>) {
        self.bytes += block.len() as u64;
        match self.blocks.insert(key, block) {
            Some(old) => self.bytes -= old.len() as u64,
            None => self.bytes += CACHED_BLOCK_OVERHEAD,
        }
    }

    fn remove(&mut self, key: &BlockKey) {
        if let Some(old) = self.blocks.remove(key) {
            self.bytes -= old.len() as u64 + CACHED_BLOCK_OVERHEAD;
        }
    }

    fn clear(&mut self) {
        self.blocks.clear();
        self.blocks.shrink_to(0);
        self.bytes = 0;
    }
}

/// Each tier's cache gets a third of the writer's share left after the table of recorded
/// meters.
fn cache_bytes(budget: u64) -> u64 {
    (budget - meters_bytes(budget)) / 3
}

/// The writer's share left to the table of recorded meters: an eighth.
fn meters_bytes(budget: u64) -> u64 {
    budget / 8
}

fn shared_meters_bytes(shared: &Shared) -> u64 {
    meters_bytes(shared.config.writer_cache_bytes())
}

/// (connection, meter) pairs known to be recorded in the meters column family: a
/// direct-mapped table of fixed size, so that its memory does not grow with the fleet (a set
/// of every pair held 77 MB at a million connections). A pair landing on a taken slot
/// replaces it; a pair forgotten that way is written again, which is harmless.
struct SeenMeters {
    slots: Vec<Option<(Pseudonym, Pseudonym)>>,
}

impl SeenMeters {
    fn new(bytes: u64) -> SeenMeters {
        let slot = std::mem::size_of::<Option<(Pseudonym, Pseudonym)>>() as u64;
        let n = (bytes / slot).max(1024).next_power_of_two() / 2;
        SeenMeters {
            slots: vec![None; usize::try_from(n).unwrap_or(1024)],
        }
    }

    /// Records the pair; true if it was not known (the caller then writes it).
    fn insert(&mut self, pair: (Pseudonym, Pseudonym)) -> bool {
        // Pseudonyms are keyed hashes: their bytes are already uniform.
        let word = |p: &Pseudonym| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&p.hash[..8]);
            u64::from_le_bytes(w)
        };
        let mix = word(&pair.0).rotate_left(17) ^ word(&pair.1);
        let i = (mix as usize) & (self.slots.len() - 1);
        if self.slots[i] == Some(pair) {
            return false;
        }
        self.slots[i] = Some(pair);
        true
    }

    fn clear(&mut self) {
        self.slots.fill(None);
    }
}

type BlockKey = [u8; layout::KEY_LEN];

pub(crate) struct Writer {
    shared: Arc<Shared>,
    /// Blocks per tier as last written. Only this thread mutates blocks, so the cache stays
    /// exact; whatever deletes or trims blocks, or fails half-way, clears it.
    blocks: [BlockCache; 3],
    /// A block being merged, decoded (reused from block to block).
    entries: layout::Entries,
    /// Each tier's touches of the group being applied (reused from group to group).
    touched: [Touched; 3],
    /// (connection, meter) pairs known to be recorded, to spare a write per message.
    meters_seen: SeenMeters,
    /// Groups written and waiting for a WAL sync (None when syncing inline or not at all).
    syncer: Option<std::sync::mpsc::SyncSender<Written>>,
}

/// One reading bound for one block: its slot, value and the index of its request. The
/// block's key is its run's.
struct Touch {
    slot: u32,
    idx: u32,
    value: u64,
    /// For a period whose statistics are already frozen.
    late: bool,
    /// From the correction topic: replaces a different stored value.
    correction: bool,
}

/// Consecutive touches of one block, as a message gives them (a day of quarter-hours is one
/// run): the writer orders runs by key, not readings, which is 96 times fewer to sort.
struct Run {
    key: BlockKey,
    touches: std::ops::Range<u32>,
}

/// One tier's touches of a group, in arrival order, and their runs.
#[derive(Default)]
struct Touched {
    touches: Vec<Touch>,
    runs: Vec<Run>,
}

impl Touched {
    /// Adds a touch: to the last run if `same_block` (it is bound for the block of the touch
    /// pushed just before it), else as a new run of the block `key` names (built only then).
    fn push(&mut self, same_block: bool, key: impl FnOnce() -> BlockKey, touch: Touch) {
        let at = self.touches.len() as u32;
        self.touches.push(touch);
        match self.runs.last_mut() {
            Some(run) if same_block && run.touches.end == at => run.touches.end = at + 1,
            _ => self.runs.push(Run {
                key: key(),
                touches: at..at + 1,
            }),
        }
    }

    fn is_empty(&self) -> bool {
        self.touches.is_empty()
    }

    fn clear(&mut self) {
        self.touches.clear();
        self.runs.clear();
    }
}

struct Pending {
    items: Vec<IngestItem>,
    reply: Reply,
}

fn readings_in(items: &[IngestItem]) -> usize {
    items.iter().map(|i| i.readings.len()).sum()
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>) -> Writer {
        Writer {
            meters_seen: SeenMeters::new(shared_meters_bytes(&shared)),
            shared,
            blocks: Default::default(),
            entries: Vec::new(),
            touched: Default::default(),
            syncer: None,
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
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
        while let Some(first) = carried.take().or_else(|| rx.blocking_recv()) {
            match first {
                Command::Write { items, reply } => {
                    let mut readings = readings_in(&items);
                    let mut group = vec![Pending { items, reply }];
                    // Group commit: take whatever else is already queued.
                    while readings < GROUP_COMMIT_READINGS {
                        match rx.try_recv() {
                            Ok(Command::Write { items, reply }) => {
                                readings += readings_in(&items);
                                group.push(Pending { items, reply });
                            }
                            Ok(other) => {
                                carried = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_group(group, readings);
                }
                Command::PutConnection {
                    all,
                    connection,
                    reply,
                } => {
                    let result = maintenance::put_connection(&self.shared, &all, connection);
                    // Deleted blocks: cached copies must not resurrect them.
                    if result.as_ref().map_or(true, |r| r.deleted.total() > 0) {
                        self.clear_cache();
                    }
                    let _ = reply.send(result);
                }
                Command::Erase { pseudonyms, reply } => {
                    self.clear_cache();
                    self.meters_seen.clear();
                    let _ = reply.send(maintenance::erase(&self.shared, &pseudonyms));
                }
                Command::Sweep { reply } => {
                    self.clear_cache();
                    let _ = reply.send(maintenance::sweep(&self.shared));
                }
                Command::CompactAll { reply } => {
                    let _ = reply.send(maintenance::compact_all(&self.shared));
                }
            }
        }
    }

    fn write_group(&mut self, group: Vec<Pending>, readings: usize) {
        let started = Instant::now();
        match self.apply(&group) {
            Ok(outcomes) => {
                let written = Written {
                    replies: group
                        .into_iter()
                        .zip(outcomes)
                        .map(|(p, o)| (p.reply, o))
                        .collect(),
                    started,
                    readings,
                };
                match &self.syncer {
                    // Durable once the syncer's next WAL sync covers it; meanwhile this thread
                    // already applies the next group.
                    Some(syncer) => {
                        if let Err(std::sync::mpsc::SendError(w)) = syncer.send(written) {
                            w.finish(Err(StoreError::Closed));
                        }
                    }
                    None if self.shared.config.sync => written.finish(sync_wal(&self.shared)),
                    None => written.finish(Ok(())),
                }
            }
            Err(e) => {
                // Blocks may have been merged into the cache but not written: the retry
                // must read them from disk, or it would take its own readings for
                // duplicates and acknowledge them unstored.
                self.clear_cache();
                tracing::error!(error = %e, "group commit failed; batches are not acknowledged");
                for pending in group {
                    let _ = pending.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Gate, merge into blocks per tier, and write one unsynced batch for the whole group.
    fn apply(&mut self, group: &[Pending]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.shared.refresh_horizons();
        let mut outcomes = vec![WriteOutcome::default(); group.len()];
        let mut batch = WriteBatch::default();
        let moved = self.rekey_connections(group, &mut batch)?;
        let applied = self.apply_rekeyed(group, &mut outcomes, batch);
        if applied.is_err() {
            // The moves were made in memory for the gate; the batch that carried them to
            // disk was not written. Undone, the next attempt moves them again.
            self.undo_rekey(&moved);
        }
        applied.map(|()| outcomes)
    }

    /// `apply` after re-keying: gate, merge and write the group.
    fn apply_rekeyed(
        &mut self,
        group: &[Pending],
        outcomes: &mut [WriteOutcome],
        mut batch: WriteBatch,
    ) -> Result<(), StoreError> {
        // The touch buffers of the last group, emptied: their allocations serve this one (a
        // group of 4,000 days holds about 9 MB of touches; allocating that anew for every
        // group left malloc's arenas fragmented).
        let mut touched = std::mem::take(&mut self.touched);
        self.gate(group, &mut touched, outcomes, &mut batch)?;
        for tier in Tier::ALL {
            let touches = &mut touched[tier as usize];
            if !touches.is_empty() {
                self.merge_tier(tier, touches, outcomes, &mut batch)?;
            }
            touches.clear();
        }
        self.touched = touched;
        // Not synced here: the sync thread syncs the WAL for every group written so far.
        let mut unsynced = WriteOptions::default();
        unsynced.set_sync(false);
        if !batch.is_empty() {
            self.shared.faults.check(FaultPoint::GroupWrite)?;
            self.shared
                .db
                .write_opt(batch, &unsynced)
                .map_err(engine("writing a group"))?;
        }
        Ok(())
    }

    /// The consent and retention gate: which tier entries of the group may be stored, as
    /// touches per tier; what is dropped is counted in the outcomes.
    fn gate(
        &mut self,
        group: &[Pending],
        touched: &mut [Touched; 3],
        outcomes: &mut [WriteOutcome],
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        let meters_cf = shared.cf(CF_METERS)?;
        let horizons = Tier::ALL.map(|t| shared.horizons.get(t));
        // The statistics watermark: a reading stored before it is late (one comparison per
        // tier entry; the freeze raises it).
        let frozen_until = Tier::ALL
            .map(|t| shared.frozen_until[t as usize].load(std::sync::atomic::Ordering::Relaxed));
        let connections = shared.connections.read();
        let tombstones = shared.tombstones.read();
        for (idx, pending) in group.iter().enumerate() {
            for item in &pending.items {
                let allowed = shared.allowed_tiers(&connections, &tombstones, item.connection);
                let mut stored_any = false;
                // The block of each tier's last touch from this item: a day of quarter-hours
                // is one block, whose key is built once.
                let mut last_block: [Option<(Register, u32)>; 3] = [None; 3];
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
                            let block = Some((tr.reading.register, bucket));
                            let same_block = last_block[tier as usize] == block;
                            last_block[tier as usize] = block;
                            touched[tier as usize].push(
                                same_block,
                                || layout::block_key(item.connection, tr.reading.register, bucket),
                                Touch {
                                    slot,
                                    value: tr.reading.value,
                                    idx: idx as u32,
                                    late: tr.reading.time.as_second() < frozen_until[tier as usize],
                                    correction: item.correction,
                                },
                            );
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
        Ok(())
    }

    /// Merges one tier's touches into their blocks (read once, then cached) and queues the
    /// changed blocks in the batch.
    fn merge_tier(
        &mut self,
        tier: Tier,
        touched: &mut Touched,
        outcomes: &mut [WriteOutcome],
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        let Touched { touches, runs } = touched;
        // Key order: the memtable inserts each key next to the previous one (its skip list
        // reuses the last insert position), and equal keys meet. The sort is stable, so
        // within one key the first arrival is merged first and wins a conflict.
        runs.sort_by_key(|r| r.key);
        let shared = self.shared.clone();
        let cf = shared.tier_cf(tier)?;
        let cache = &mut self.blocks[tier as usize];
        let mut missing: Vec<BlockKey> = Vec::new();
        for r in runs.iter() {
            if missing.last() != Some(&r.key) && !cache.blocks.contains_key(&r.key) {
                missing.push(r.key);
            }
        }
        shared.faults.check(FaultPoint::BlockRead(tier))?;
        let fetched = shared
            .db
            .batched_multi_get_cf(cf, missing.iter().map(|k| &k[..]), true);
        let mut corrupt: Vec<BlockKey> = Vec::new();
        for (key, old) in missing.iter().zip(fetched) {
            match old.map_err(engine("reading blocks"))? {
                Some(bytes) => {
                    // Decoded into the writer's scratch: only whether it decodes matters here.
                    if layout::decode_block_into(&bytes, &mut self.entries)
                        && !shared.faults.fires(FaultPoint::BlockDecode(tier))
                    {
                        cache.insert(*key, Box::from(&bytes[..]));
                    } else {
                        // A stored block that cannot be decoded would fail this batch on
                        // every retry: its readings go to quarantine instead, the block
                        // stays as it is for repair, and the rest of the batch flows.
                        corrupt.push(*key);
                    }
                }
                None => cache.insert(*key, Box::default()),
            }
        }
        let quarantine = shared.cf(CF_QUARANTINE)?;
        let corrections = shared.cf(CF_CORRECTIONS)?;
        let now = shared.clock.now().as_second();
        for same_key in runs.chunk_by(|a, b| a.key == b.key) {
            let key = same_key[0].key;
            let run = same_key
                .iter()
                .flat_map(|r| &touches[r.touches.start as usize..r.touches.end as usize]);
            if corrupt.contains(&key) {
                tracing::error!(
                    tier = tier.as_str(),
                    "a stored block cannot be decoded; its new readings are quarantined"
                );
                for t in run {
                    let mut qkey = key.to_vec();
                    qkey.extend_from_slice(&t.slot.to_be_bytes());
                    batch.put_cf(quarantine, qkey, t.value.to_be_bytes());
                    outcomes[t.idx as usize].quarantined += 1;
                    metrics::QUARANTINED.inc();
                }
                continue;
            }
            let entries = &mut self.entries;
            entries.clear();
            if let Some(block) = cache.blocks.get(&key).filter(|b| !b.is_empty()) {
                // Checked when it was read, or encoded here. Were it not to decode, the
                // group fails (and the cache is cleared) rather than merge into half a block.
                if !layout::decode_block_into(block, entries) {
                    return Err(StoreError::Corrupt("the writer's block cache"));
                }
            }
            let mut changed = false;
            for t in run {
                let outcome = &mut outcomes[t.idx as usize];
                match layout::merge_entry(entries, t.slot, t.value, t.correction) {
                    MergeResult::Inserted => {
                        changed = true;
                        outcome.stored.add(tier, 1);
                        if t.late {
                            outcome.late += 1;
                        }
                    }
                    MergeResult::Corrected { old } => {
                        changed = true;
                        outcome.corrected += 1;
                        if t.late {
                            outcome.late += 1;
                        }
                        // Block keys are built by `gate`: they parse.
                        if let Some(parsed) = layout::parse_key(&key) {
                            let q = layout::bucket_start_quarter(tier, parsed.bucket) + t.slot;
                            batch.put_cf(
                                corrections,
                                layout::correction_key(parsed.pseudonym, tier, parsed.register, q),
                                layout::encode_correction(now, old),
                            );
                            outcome.corrections.push(Correction {
                                connection: parsed.pseudonym,
                                tier,
                                register: parsed.register,
                                time: layout::time_of_quarter(q),
                                old,
                                new: t.value,
                            });
                        }
                    }
                    MergeResult::Duplicate => outcome.duplicates += 1,
                    MergeResult::Conflict => outcome.conflicts += 1,
                }
            }
            if changed {
                let block = layout::encode_block(entries);
                batch.put_cf(cf, key, &block);
                if tier == Tier::Interval
                    && entries.len() == layout::bucket_quarters(Tier::Interval) as usize
                {
                    // A full day of quarter-hours takes no new reading: only a redelivered
                    // duplicate or a correction comes back to it, and reads it. Kept, whole
                    // days sent at once (a backfill) would fill the cache with blocks that
                    // are never touched again and push out the days still filling.
                    cache.remove(&key);
                } else {
                    cache.insert(key, block.into_boxed_slice());
                }
            }
        }
        // Over its share after this group: cleared whole (the next group reads what it needs).
        if cache.bytes > cache_bytes(shared.config.writer_cache_bytes()) {
            cache.clear();
        }
        Ok(())
    }

    /// Re-keying after a key rotation: a connection whose record lies only under an older
    /// pseudonym gets it moved to the current one the first time it is seen again, in the
    /// same batch as its readings.
    /// Returns the moves made in memory, (old, new), in order.
    fn rekey_connections(
        &mut self,
        group: &[Pending],
        batch: &mut WriteBatch,
    ) -> Result<Vec<(Pseudonym, Pseudonym)>, StoreError> {
        let mut moved = Vec::new();
        // With one key version (the usual case) no item names an older pseudonym.
        let items = || group.iter().flat_map(|p| &p.items);
        if items().all(|i| i.previous.is_empty()) {
            return Ok(moved);
        }
        let shared = &self.shared;
        let cf = shared.cf(CF_CONNECTIONS)?;
        let mut connections = shared.connections.write();
        for item in items() {
            if item.previous.is_empty() || connections.contains_key(&item.connection) {
                continue;
            }
            let Some(old) = item
                .previous
                .iter()
                .find(|old| connections.contains_key(old))
                .copied()
            else {
                continue;
            };
            if let Some(c) = connections.remove(&old) {
                batch.delete_cf(cf, old.to_bytes());
                batch.put_cf(cf, item.connection.to_bytes(), encode_connection(&c));
                connections.insert(item.connection, c);
                moved.push((old, item.connection));
                metrics::REKEYED.inc();
            }
        }
        Ok(moved)
    }

    /// Puts connection records moved in memory by `rekey_connections` back where they were.
    fn undo_rekey(&self, moved: &[(Pseudonym, Pseudonym)]) {
        if moved.is_empty() {
            return;
        }
        let mut connections = self.shared.connections.write();
        for (old, new) in moved.iter().rev() {
            if let Some(c) = connections.remove(new) {
                connections.insert(*old, c);
            }
        }
    }

    fn clear_cache(&mut self) {
        for cache in &mut self.blocks {
            cache.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: u32) -> Pseudonym {
        let mut hash = [0u8; 16];
        hash[..4].copy_from_slice(&i.to_le_bytes());
        hash[4..8].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        Pseudonym { version: 1, hash }
    }

    #[test]
    fn the_block_cache_counts_the_bytes_it_holds() {
        let mut cache = BlockCache::default();
        let key = |i: u32| layout::block_key(p(i), Register::ImportT1, 7);
        let day: layout::Entries = (0..96)
            .map(|q| (q, 1_000_000 + u64::from(q) * 97))
            .collect();
        let block = layout::encode_block(&day);
        cache.insert(key(1), block.clone().into_boxed_slice());
        cache.insert(key(2), Box::default());
        assert_eq!(cache.bytes, block.len() as u64 + 2 * CACHED_BLOCK_OVERHEAD);
        // Replacing a block counts the new bytes instead of the old.
        cache.insert(key(2), block.clone().into_boxed_slice());
        assert_eq!(
            cache.bytes,
            2 * (block.len() as u64 + CACHED_BLOCK_OVERHEAD)
        );
        // A day of quarter-hours costs a tenth of its decoded form (16 bytes an entry).
        assert!(
            block.len() as u64 + CACHED_BLOCK_OVERHEAD < 96 * 16 / 4,
            "{}",
            block.len()
        );
        cache.remove(&key(1));
        assert_eq!(cache.bytes, block.len() as u64 + CACHED_BLOCK_OVERHEAD);
        cache.remove(&key(1));
        assert_eq!(cache.bytes, block.len() as u64 + CACHED_BLOCK_OVERHEAD);
        cache.clear();
        assert_eq!((cache.bytes, cache.blocks.len()), (0, 0));
    }

    #[test]
    fn seen_meters_stay_their_size_however_many_pairs_pass() {
        let mut seen = SeenMeters::new(64 << 10);
        let slots = seen.slots.len();
        assert!(slots * std::mem::size_of::<Option<(Pseudonym, Pseudonym)>>() <= 64 << 10);
        assert!(seen.insert((p(1), p(2))), "new pair: written");
        assert!(!seen.insert((p(1), p(2))), "known pair: not written again");
        let mut rewritten = 0;
        for i in 0..100_000 {
            seen.insert((p(i), p(i + 1)));
        }
        for i in 0..100_000 {
            if seen.insert((p(i), p(i + 1))) {
                rewritten += 1;
            }
        }
        // Most of a fleet far larger than the table is forgotten and written again, and the
        // table has not grown.
        assert!(rewritten > 90_000, "{rewritten}");
        assert_eq!(seen.slots.len(), slots);
        seen.clear();
        assert!(seen.insert((p(1), p(2))));
    }
}

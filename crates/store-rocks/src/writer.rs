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
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::{mpsc, oneshot};

mod cache;
mod rekey;

use cache::{BlockCache, BlockKey, SeenMeters, cache_bytes, shared_meters_bytes};

use crate::engine::{CF_CORRECTIONS, CF_METERS, CF_QUARANTINE, CF_STATISTICS, Shared, engine};
use crate::fault::FaultPoint;
use crate::layout::{self, MergeResult};
use crate::sync::{Reply, SYNC_QUEUE, Written, sync_loop, sync_wal};
use crate::units::{UnitKey, Units};
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
    SetObjection {
        all: Vec<Pseudonym>,
        objected: bool,
        reply: oneshot::Sender<Result<(), StoreError>>,
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
    /// The units of statistics each run's span feeds, remembered within a group (a fleet
    /// sends the same day: one calendar computation serves every connection).
    unit_memo: FxHashMap<(Tier, Register, u32, u32), Vec<UnitKey>>,
    /// The units the group being applied wrote into.
    group_units: FxHashSet<UnitKey>,
    /// Groups written and waiting for a WAL sync (None when syncing inline or not at all).
    syncer: Option<std::sync::mpsc::SyncSender<Written>>,
}

/// One reading bound for one block: its slot, value and the index of its request. The
/// block's key is its run's.
struct Touch {
    slot: u32,
    idx: u32,
    value: u64,
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
            unit_memo: FxHashMap::default(),
            group_units: FxHashSet::default(),
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
                Command::SetObjection {
                    all,
                    objected,
                    reply,
                } => {
                    let _ = reply.send(maintenance::set_objection(&self.shared, &all, objected));
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
        let items = group.iter().flat_map(|p| &p.items);
        let rekeyed = rekey::rekey(&self.shared, items, &mut batch)?;
        let applied = self.apply_rekeyed(group, &mut outcomes, batch);
        if applied.is_err() {
            // The moves were made in memory for the gate; the batch that carried them to
            // disk was not written. Undone, the next attempt moves them again.
            rekey::undo(&self.shared, &rekeyed);
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
        // The units' lock from the late checks to the write: a freeze settles a unit either
        // before (these entries are late) or after (it sees the new marks).
        let shared = self.shared.clone();
        let mut units = shared.units.lock();
        self.group_units.clear();
        let mut merged = Ok(());
        for tier in Tier::ALL {
            let touches = &mut touched[tier as usize];
            if merged.is_ok() && !touches.is_empty() {
                merged = self.merge_tier(tier, touches, &units, outcomes, &mut batch);
            }
            touches.clear();
        }
        self.touched = touched;
        self.unit_memo.clear();
        merged?;
        let now = shared.clock.now().as_second();
        units.mark(
            self.group_units.drain(),
            now,
            shared.cf(CF_STATISTICS)?,
            &mut batch,
        );
        // Not synced here: the sync thread syncs the WAL for every group written so far.
        let mut unsynced = WriteOptions::default();
        unsynced.set_sync(false);
        if !batch.is_empty() {
            shared.faults.check(FaultPoint::GroupWrite)?;
            shared
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
        let connections = shared.connections.read();
        let subjects = shared.subjects.read();
        for (idx, pending) in group.iter().enumerate() {
            for item in &pending.items {
                let allowed = shared.allowed_tiers(&connections, &subjects, item.connection);
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
    /// Merges the group's runs of one tier into their blocks. One loop on the hot path of
    /// every write: its steps share the block cache, the scratch entries, the unit memo and
    /// the batch, so it stays whole where splitting would only pass them all around.
    fn merge_tier(
        &mut self,
        tier: Tier,
        touched: &mut Touched,
        units: &Units,
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
        let corrupt = self.load_blocks(tier, runs)?;
        let cache = &mut self.blocks[tier as usize];
        let quarantine = shared.cf(CF_QUARANTINE)?;
        let corrections = shared.cf(CF_CORRECTIONS)?;
        let now = shared.clock.now().as_second();
        for same_key in runs.chunk_by(|a, b| a.key == b.key) {
            let key = same_key[0].key;
            let run = same_key
                .iter()
                .flat_map(|r| &touches[r.touches.start as usize..r.touches.end as usize]);
            if corrupt.contains(&key) {
                quarantine_run(key, run, quarantine, outcomes, batch);
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
            // The units this run feeds; only if one is frozen, which entry by entry.
            let Some(parsed) = layout::parse_key(&key) else {
                return Err(StoreError::Corrupt("a block key built by the writer"));
            };
            let base = layout::bucket_start_quarter(tier, parsed.bucket);
            let (first, last) = run.clone().fold((u32::MAX, 0), |(lo, hi), t| {
                (lo.min(t.slot), hi.max(t.slot))
            });
            let span = (tier, parsed.register, base + first, base + last);
            let run_units = self.unit_memo.entry(span).or_insert_with(|| {
                let mut out = Vec::new();
                Units::touched(
                    &shared.config.calendar,
                    tier,
                    parsed.register,
                    layout::time_of_quarter(span.2),
                    layout::time_of_quarter(span.3),
                    &mut out,
                );
                out
            });
            let some_frozen = units.any_frozen(run_units);
            let mut changed = false;
            for t in run {
                let late = some_frozen && {
                    let at = layout::time_of_quarter(base + t.slot);
                    let mut fed = Vec::new();
                    Units::touched(
                        &shared.config.calendar,
                        tier,
                        parsed.register,
                        at,
                        at,
                        &mut fed,
                    );
                    units.any_frozen(&fed)
                };
                let outcome = &mut outcomes[t.idx as usize];
                match layout::merge_entry(entries, t.slot, t.value, t.correction) {
                    MergeResult::Inserted => {
                        changed = true;
                        outcome.stored.add(tier, 1);
                        if late {
                            outcome.late += 1;
                        }
                    }
                    MergeResult::Corrected { old } => {
                        changed = true;
                        outcome.corrected += 1;
                        if late {
                            outcome.late += 1;
                        }
                        let q = base + t.slot;
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
                    MergeResult::Duplicate => outcome.duplicates += 1,
                    MergeResult::Conflict => outcome.conflicts += 1,
                }
            }
            if changed {
                self.group_units.extend(run_units.iter().copied());
                put_block(tier, key, entries, cf, cache, batch);
            }
        }
        // Over its share after this group: cleared whole (the next group reads what it needs).
        if cache.bytes > cache_bytes(shared.config.writer_cache_bytes()) {
            cache.clear();
        }
        Ok(())
    }

    /// Reads into the cache the blocks of `runs` it does not hold (one multi-get); the keys
    /// of stored blocks that do not decode.
    fn load_blocks(&mut self, tier: Tier, runs: &[Run]) -> Result<Vec<BlockKey>, StoreError> {
        let shared = self.shared.clone();
        let cache = &mut self.blocks[tier as usize];
        let mut missing: Vec<BlockKey> = Vec::new();
        for r in runs {
            if missing.last() != Some(&r.key) && !cache.blocks.contains_key(&r.key) {
                missing.push(r.key);
            }
        }
        shared.faults.check(FaultPoint::BlockRead(tier))?;
        let fetched = shared.db.batched_multi_get_cf(
            shared.tier_cf(tier)?,
            missing.iter().map(|k| &k[..]),
            true,
        );
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
        Ok(corrupt)
    }

    fn clear_cache(&mut self) {
        for cache in &mut self.blocks {
            cache.clear();
        }
    }
}

/// Writes a changed block into `batch` and keeps it in the cache, unless it is a full day
/// of quarter-hours: that takes no new reading (only a redelivered duplicate or a
/// correction comes back to it), and kept, whole days sent at once (a backfill) would fill
/// the cache with blocks that are never touched again and push out the days still filling.
fn put_block(
    tier: Tier,
    key: BlockKey,
    entries: &layout::Entries,
    cf: &rocksdb::ColumnFamily,
    cache: &mut BlockCache,
    batch: &mut WriteBatch,
) {
    let block = layout::encode_block(entries);
    batch.put_cf(cf, key, &block);
    if tier == Tier::Interval && entries.len() == layout::bucket_quarters(Tier::Interval) as usize {
        cache.remove(&key);
    } else {
        cache.insert(key, block.into_boxed_slice());
    }
}

/// The new readings of a block that does not decode go to quarantine, for repair.
fn quarantine_run<'a>(
    key: BlockKey,
    run: impl Iterator<Item = &'a Touch>,
    quarantine: &rocksdb::ColumnFamily,
    outcomes: &mut [WriteOutcome],
    batch: &mut WriteBatch,
) {
    tracing::error!("a stored block cannot be decoded; its new readings are quarantined");
    for t in run {
        let mut qkey = key.to_vec();
        qkey.extend_from_slice(&t.slot.to_be_bytes());
        batch.put_cf(quarantine, qkey, t.value.to_be_bytes());
        outcomes[t.idx as usize].quarantined += 1;
        metrics::QUARANTINED.inc();
    }
}

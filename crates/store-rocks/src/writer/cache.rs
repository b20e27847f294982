//! The writer's caches: the blocks of each tier as last written, and the table of
//! (connection, meter) pairs already recorded. Both are sized by the writer's share of
//! `store.memory` (see `DESIGN.md`, "Writes").

use meterstand_pseudonym::Pseudonym;
use rustc_hash::FxHashMap;

use crate::engine::Shared;
use crate::layout;

pub(super) type BlockKey = [u8; layout::KEY_LEN];

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
pub(super) struct BlockCache {
    pub(super) blocks: FxHashMap<BlockKey, Box<[u8]>>,
    /// Encoded bytes plus `CACHED_BLOCK_OVERHEAD` per block.
    pub(super) bytes: u64,
}

impl BlockCache {
    pub(super) fn insert(&mut self, key: BlockKey, block: Box<[u8]>) {
        self.bytes += block.len() as u64;
        match self.blocks.insert(key, block) {
            Some(old) => self.bytes -= old.len() as u64,
            None => self.bytes += CACHED_BLOCK_OVERHEAD,
        }
    }

    pub(super) fn remove(&mut self, key: &BlockKey) {
        if let Some(old) = self.blocks.remove(key) {
            self.bytes -= old.len() as u64 + CACHED_BLOCK_OVERHEAD;
        }
    }

    pub(super) fn clear(&mut self) {
        self.blocks.clear();
        self.blocks.shrink_to(0);
        self.bytes = 0;
    }
}

/// Each tier's cache gets a third of the writer's share left after the table of recorded
/// meters.
pub(super) fn cache_bytes(budget: u64) -> u64 {
    (budget - meters_bytes(budget)) / 3
}

/// The writer's share left to the table of recorded meters: an eighth.
fn meters_bytes(budget: u64) -> u64 {
    budget / 8
}

pub(super) fn shared_meters_bytes(shared: &Shared) -> u64 {
    meters_bytes(shared.config.writer_cache_bytes())
}

/// (connection, meter) pairs known to be recorded in the meters column family: a
/// direct-mapped table of fixed size, so that its memory does not grow with the fleet (a set
/// of every pair held 77 MB at a million connections). A pair landing on a taken slot
/// replaces it; a pair forgotten that way is written again, which is harmless.
pub(super) struct SeenMeters {
    slots: Vec<Option<(Pseudonym, Pseudonym)>>,
}

impl SeenMeters {
    pub(super) fn new(bytes: u64) -> SeenMeters {
        let slot = std::mem::size_of::<Option<(Pseudonym, Pseudonym)>>() as u64;
        let n = (bytes / slot).max(1024).next_power_of_two() / 2;
        SeenMeters {
            slots: vec![None; usize::try_from(n).unwrap_or(1024)],
        }
    }

    /// Records the pair; true if it was not known (the caller then writes it).
    pub(super) fn insert(&mut self, pair: (Pseudonym, Pseudonym)) -> bool {
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

    pub(super) fn clear(&mut self) {
        self.slots.fill(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterstand_model::Register;

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

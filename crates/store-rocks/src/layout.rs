//! Key and value layout. See `DESIGN.md` beside this crate for the why.
//!
//! key   = pseudonym (18 bytes: key version BE u16 + 16 hash bytes)
//!       | register code (1 byte)
//!       | bucket number (u32 BE)                         = 23 bytes
//! value = a block of the readings of that register in that bucket, either
//!         sparse: varint (count << 1 | monotonic), then per reading varint quarter delta
//!         (the first relative to the bucket start) and a value delta (the first absolute;
//!         then plain varint when the block never decreases, zig-zag varint otherwise), or
//!         dense (consecutive quarter-hours, the common case): a 0 byte, varint (count << 1 |
//!         monotonic), varint first slot, then the value deltas alone.

use jiff::Timestamp;
use meterstand_model::{QUARTER_SECONDS, Register, Tier};
use meterstand_pseudonym::Pseudonym;

pub const KEY_LEN: usize = Pseudonym::LEN + 1 + 4;
pub const PREFIX_LEN: usize = Pseudonym::LEN + 1;

/// Quarter-hours per block, per tier: a UTC day of interval readings (96 slots), 32 days
/// of day readings, about a year of month readings. Every block then holds tens of readings,
/// enough to amortise the key, few enough that a read-modify-write stays cheap.
pub fn bucket_quarters(tier: Tier) -> i64 {
    match tier {
        Tier::Interval => 96,
        Tier::Day => 96 * 32,
        Tier::Month => 96 * 366,
    }
}

/// Quarter-hour index of a timestamp, if it is on the grid and after 1970.
pub fn quarter_of(t: Timestamp) -> Option<u32> {
    let s = t.as_second();
    if s < 0 || s % QUARTER_SECONDS != 0 || t.subsec_nanosecond() != 0 {
        return None;
    }
    u32::try_from(s / QUARTER_SECONDS).ok()
}

pub fn time_of_quarter(q: u32) -> Timestamp {
    Timestamp::from_second(i64::from(q) * QUARTER_SECONDS).unwrap_or(Timestamp::MAX)
}

/// The bucket holding quarter `q`, and `q`'s slot inside it.
pub fn bucket_of(tier: Tier, q: u32) -> (u32, u32) {
    let span = bucket_quarters(tier) as u32;
    (q / span, q % span)
}

pub fn bucket_start_quarter(tier: Tier, bucket: u32) -> u32 {
    bucket.saturating_mul(bucket_quarters(tier) as u32)
}

pub fn block_key(p: Pseudonym, register: Register, bucket: u32) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[..Pseudonym::LEN].copy_from_slice(&p.to_bytes());
    key[Pseudonym::LEN] = register as u8;
    key[PREFIX_LEN..].copy_from_slice(&bucket.to_be_bytes());
    key
}

pub fn register_prefix(p: Pseudonym, register: Register) -> [u8; PREFIX_LEN] {
    let mut prefix = [0u8; PREFIX_LEN];
    prefix[..Pseudonym::LEN].copy_from_slice(&p.to_bytes());
    prefix[Pseudonym::LEN] = register as u8;
    prefix
}

/// The smallest key after every key of one (pseudonym, register) series: the prefix with
/// its register byte raised by one (register codes are 1..=5).
pub fn after_prefix(prefix: &[u8; PREFIX_LEN]) -> Vec<u8> {
    let mut next = prefix.to_vec();
    next[Pseudonym::LEN] = next[Pseudonym::LEN].saturating_add(1);
    next
}

/// The key range `[start, end)` holding everything of one pseudonym.
pub fn pseudonym_range(p: Pseudonym) -> (Vec<u8>, Vec<u8>) {
    let start = p.to_bytes().to_vec();
    let mut end = start.clone();
    end.push(0xff);
    // 18 bytes followed by 0xff sorts after every 23-byte key of this pseudonym
    // (their 19th byte is a register code, 1..=5).
    (start, end)
}

/// The smallest key after every key of pseudonym `p`, for skipping to the next one.
pub fn after_pseudonym(p: Pseudonym) -> Vec<u8> {
    pseudonym_range(p).1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockKey {
    pub pseudonym: Pseudonym,
    pub register: Register,
    pub bucket: u32,
}

pub fn parse_key(key: &[u8]) -> Option<BlockKey> {
    if key.len() != KEY_LEN {
        return None;
    }
    let pseudonym = Pseudonym::from_bytes(&key[..Pseudonym::LEN])?;
    let register = Register::from_code(key[Pseudonym::LEN])?;
    let bucket = u32::from_be_bytes(key[PREFIX_LEN..].try_into().ok()?);
    Some(BlockKey {
        pseudonym,
        register,
        bucket,
    })
}

/// A decoded block: (slot within the bucket, value), sorted by slot, slots unique.
pub type Entries = Vec<(u32, u64)>;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// First byte of a dense block. No sparse block starts with it: that header would mean no
/// readings and not monotonic, and an empty block is monotonic.
const DENSE: u64 = 0;

pub fn encode_block(entries: &[(u32, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + entries.len() * 2);
    // Cumulative registers almost never go backwards: such blocks store plain deltas and
    // spare zig-zag's extra bit (one byte per reading for deltas under 128).
    let monotonic = entries.windows(2).all(|w| w[1].1 >= w[0].1);
    // Consecutive quarter-hours need no slot per reading: the values alone then sit side by
    // side, which also lets the compressor's entropy coder see only their distribution.
    let dense = entries.len() >= 2 && entries.windows(2).all(|w| w[1].0 == w[0].0 + 1);
    if dense {
        put_varint(&mut out, DENSE);
    }
    put_varint(&mut out, (entries.len() as u64) << 1 | u64::from(monotonic));
    if dense {
        put_varint(&mut out, u64::from(entries[0].0));
    }
    let mut prev_slot = 0u32;
    let mut prev_value = 0u64;
    for (i, (slot, value)) in entries.iter().enumerate() {
        if !dense {
            put_varint(&mut out, u64::from(slot - prev_slot));
        }
        let delta = value.wrapping_sub(prev_value);
        put_varint(
            &mut out,
            if i == 0 || monotonic {
                delta
            } else {
                zigzag(delta as i64)
            },
        );
        prev_slot = *slot;
        prev_value = *value;
    }
    out
}

/// Decodes a block; `None` if it is corrupt (never panics on any bytes).
pub fn decode_block(bytes: &[u8]) -> Option<Entries> {
    let mut entries = Vec::new();
    decode_block_into(bytes, &mut entries).then_some(entries)
}

/// Decodes a block into `entries` (cleared first), reusing its allocation; `false` if the
/// block is corrupt, leaving `entries` unspecified.
pub fn decode_block_into(bytes: &[u8], entries: &mut Entries) -> bool {
    entries.clear();
    decode_entries(bytes, entries).is_some()
}

fn decode_entries(bytes: &[u8], entries: &mut Entries) -> Option<()> {
    let mut pos = 0;
    let mut header = get_varint(bytes, &mut pos)?;
    let dense = header == DENSE && pos < bytes.len();
    let mut slot = 0u32;
    if dense {
        header = get_varint(bytes, &mut pos)?;
        slot = u32::try_from(get_varint(bytes, &mut pos)?).ok()?;
    }
    let (count, monotonic) = (header >> 1, header & 1 == 1);
    if count > bytes.len() as u64 || (dense && count < 2) {
        return None;
    }
    entries.reserve(count as usize);
    let mut value = 0u64;
    for i in 0..count {
        if dense {
            if i > 0 {
                slot = slot.checked_add(1)?;
            }
        } else {
            let dq = u32::try_from(get_varint(bytes, &mut pos)?).ok()?;
            if i > 0 && dq == 0 {
                return None;
            }
            slot = slot.checked_add(dq)?;
        }
        let raw = get_varint(bytes, &mut pos)?;
        value = if i == 0 {
            raw
        } else if monotonic {
            value.checked_add(raw)?
        } else {
            value.wrapping_add(unzigzag(raw) as u64)
        };
        entries.push((slot, value));
    }
    (pos == bytes.len()).then_some(())
}

/// Number of readings in a block, read from its header alone.
pub fn block_count(bytes: &[u8]) -> u64 {
    let mut pos = 0;
    let header = get_varint(bytes, &mut pos).unwrap_or(0);
    if header == DENSE && pos < bytes.len() {
        return get_varint(bytes, &mut pos).unwrap_or(0) >> 1;
    }
    header >> 1
}

/// What merging one reading into a block did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeResult {
    Inserted,
    Duplicate,
    /// A different value is already stored for that slot; the first one is kept.
    Conflict,
    /// A correction replaced the different value `old`.
    Corrected {
        old: u64,
    },
}

/// Merges one reading into a block: the first value wins (a different one is a conflict),
/// unless `correction`, which replaces a different stored value.
pub fn merge_entry(entries: &mut Entries, slot: u32, value: u64, correction: bool) -> MergeResult {
    // Readings mostly arrive in time order: after the last entry, nothing to search.
    if entries.last().is_none_or(|&(last, _)| last < slot) {
        entries.push((slot, value));
        return MergeResult::Inserted;
    }
    match entries.binary_search_by_key(&slot, |(s, _)| *s) {
        Ok(i) if entries[i].1 == value => MergeResult::Duplicate,
        Ok(i) if correction => {
            let old = std::mem::replace(&mut entries[i].1, value);
            MergeResult::Corrected { old }
        }
        Ok(_) => MergeResult::Conflict,
        Err(i) => {
            entries.insert(i, (slot, value));
            MergeResult::Inserted
        }
    }
}

/// Key of a correction record (`corrections` column family): pseudonym ‖ tier code (1
/// byte) ‖ register code (1 byte) ‖ quarter-hour (u32 BE) = 24 bytes; it starts with the
/// pseudonym, so `pseudonym_range` covers it for erasure and purge.
pub const CORRECTION_KEY_LEN: usize = Pseudonym::LEN + 1 + 1 + 4;

pub fn correction_key(
    p: Pseudonym,
    tier: Tier,
    register: Register,
    quarter: u32,
) -> [u8; CORRECTION_KEY_LEN] {
    let mut key = [0u8; CORRECTION_KEY_LEN];
    key[..Pseudonym::LEN].copy_from_slice(&p.to_bytes());
    key[Pseudonym::LEN] = tier as u8;
    key[Pseudonym::LEN + 1] = register as u8;
    key[Pseudonym::LEN + 2..].copy_from_slice(&quarter.to_be_bytes());
    key
}

/// The key range `[start, end)` of one pseudonym's correction records of one tier.
pub fn correction_tier_range(p: Pseudonym, tier: Tier) -> (Vec<u8>, Vec<u8>) {
    let mut start = p.to_bytes().to_vec();
    start.push(tier as u8);
    let mut end = p.to_bytes().to_vec();
    end.push(tier as u8 + 1);
    (start, end)
}

pub fn parse_correction_key(key: &[u8]) -> Option<(Pseudonym, Tier, Register, u32)> {
    if key.len() != CORRECTION_KEY_LEN {
        return None;
    }
    let p = Pseudonym::from_bytes(&key[..Pseudonym::LEN])?;
    let tier = *Tier::ALL.get(usize::from(key[Pseudonym::LEN]))?;
    let register = Register::from_code(key[Pseudonym::LEN + 1])?;
    let quarter = u32::from_be_bytes(key[Pseudonym::LEN + 2..].try_into().ok()?);
    Some((p, tier, register, quarter))
}

/// Value of a correction record: when (UTC seconds, i64 BE) and the value replaced (u64 BE).
pub fn encode_correction(at: i64, old: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&at.to_be_bytes());
    v[8..].copy_from_slice(&old.to_be_bytes());
    v
}

/// The correction time of a correction record.
pub fn correction_time(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_day_of_quarter_hours_is_small() {
        let entries: Entries = (0..96)
            .map(|i| (i, 12_345_678 + u64::from(i) * 97))
            .collect();
        let block = encode_block(&entries);
        // The dense mark, 2 header bytes, the first slot, 4 bytes for the first value, then
        // 1 value byte each.
        assert_eq!(block.len(), 1 + 2 + 1 + 4 + 95);
        assert_eq!(decode_block(&block), Some(entries));
    }

    #[test]
    fn sparse_blocks_written_before_the_dense_form_still_decode() {
        // Bytes of the sparse form as every block was written before: (3, 10), (4, 12).
        let old = [2 << 1 | 1, 3, 10, 1, 2];
        assert_eq!(decode_block(&old), Some(vec![(3, 10), (4, 12)]));
        assert_eq!(block_count(&old), 2);
        // An empty block (monotonic) and a gap stay sparse.
        assert_eq!(encode_block(&[]), vec![1]);
        assert_eq!(decode_block(&[1]), Some(vec![]));
        let gap = encode_block(&[(3, 10), (5, 12)]);
        assert_ne!(gap[0], 0);
        assert_eq!(decode_block(&gap), Some(vec![(3, 10), (5, 12)]));
    }

    #[test]
    fn keys_sort_by_pseudonym_register_bucket() {
        let a = Pseudonym {
            version: 1,
            hash: [1; 16],
        };
        let b = Pseudonym {
            version: 1,
            hash: [2; 16],
        };
        let k1 = block_key(a, Register::ImportT1, 5);
        let k2 = block_key(a, Register::ImportT1, 6);
        let k3 = block_key(a, Register::Gas, 0);
        let k4 = block_key(b, Register::ImportT1, 0);
        assert!(k1 < k2 && k2 < k3 && k3 < k4);
        let (start, end) = pseudonym_range(a);
        for k in [k1, k2, k3] {
            assert!(start.as_slice() <= k.as_slice() && k.as_slice() < end.as_slice());
        }
        assert!(k4.as_slice() >= end.as_slice());
        assert_eq!(
            parse_key(&k3),
            Some(BlockKey {
                pseudonym: a,
                register: Register::Gas,
                bucket: 0
            })
        );
    }

    #[test]
    fn merge_keeps_first_value() {
        let mut e = vec![(3, 10)];
        assert_eq!(merge_entry(&mut e, 3, 10, false), MergeResult::Duplicate);
        assert_eq!(merge_entry(&mut e, 3, 11, false), MergeResult::Conflict);
        assert_eq!(merge_entry(&mut e, 1, 5, false), MergeResult::Inserted);
        assert_eq!(e, vec![(1, 5), (3, 10)]);
        assert_eq!(merge_entry(&mut e, 3, 10, true), MergeResult::Duplicate);
        assert_eq!(
            merge_entry(&mut e, 3, 12, true),
            MergeResult::Corrected { old: 10 }
        );
        assert_eq!(merge_entry(&mut e, 2, 7, true), MergeResult::Inserted);
        assert_eq!(e, vec![(1, 5), (2, 7), (3, 12)]);
    }

    #[test]
    fn correction_keys_round_trip_and_sit_in_the_pseudonym_range() {
        let p = Pseudonym {
            version: 1,
            hash: [9; 16],
        };
        for tier in Tier::ALL {
            let key = correction_key(p, tier, Register::Gas, 123_456);
            assert_eq!(
                parse_correction_key(&key),
                Some((p, tier, Register::Gas, 123_456))
            );
            let (start, end) = pseudonym_range(p);
            assert!(start.as_slice() <= &key[..] && &key[..] < end.as_slice());
            let (start, end) = correction_tier_range(p, tier);
            assert!(start.as_slice() <= &key[..] && &key[..] < end.as_slice());
        }
        assert_eq!(correction_time(&encode_correction(-5, 7)), Some(-5));
    }

    proptest! {
        #[test]
        fn blocks_round_trip(mut slots in proptest::collection::btree_map(0u32..35_136, any::<u64>(), 0..200)) {
            let entries: Entries = std::mem::take(&mut slots).into_iter().collect();
            let block = encode_block(&entries);
            prop_assert_eq!(block_count(&block), entries.len() as u64);
            prop_assert_eq!(decode_block(&block), Some(entries));
        }

        #[test]
        fn monotonic_blocks_round_trip(start in any::<u32>(), deltas in proptest::collection::vec((1u32..4, 0u64..100_000), 0..120)) {
            let mut slot = 0u32;
            let mut value = u64::from(start);
            let entries: Entries = deltas.iter().map(|(ds, dv)| { slot += ds; value += dv; (slot, value) }).collect();
            prop_assert_eq!(decode_block(&encode_block(&entries)), Some(entries));
        }

        #[test]
        fn dense_blocks_round_trip(first in 0u32..96, values in proptest::collection::vec(any::<u64>(), 2..97)) {
            let entries: Entries = values.iter().enumerate().map(|(i, v)| (first + i as u32, *v)).collect();
            let block = encode_block(&entries);
            prop_assert_eq!(block[0], 0);
            prop_assert_eq!(block_count(&block), entries.len() as u64);
            prop_assert_eq!(decode_block(&block), Some(entries));
        }

        #[test]
        fn corrupt_blocks_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_block(&bytes);
            let _ = block_count(&bytes);
        }

        #[test]
        fn keys_round_trip(version in 1u16.., hash in any::<[u8; 16]>(), r in 0usize..5, bucket in any::<u32>()) {
            let p = Pseudonym { version, hash };
            let key = block_key(p, Register::ALL[r], bucket);
            prop_assert_eq!(parse_key(&key), Some(BlockKey { pseudonym: p, register: Register::ALL[r], bucket }));
        }

        #[test]
        fn buckets_cover_quarters(q in 0u32..4_000_000, t in 0usize..3) {
            let tier = Tier::ALL[t];
            let (bucket, slot) = bucket_of(tier, q);
            prop_assert_eq!(bucket_start_quarter(tier, bucket) + slot, q);
        }
    }
}

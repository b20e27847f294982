//! Frozen statistics in their own column family, `statistics`, and the units of freezing
//! loaded at open. Depends on `engine`, `layout` and `units`.
//!
//! ```text
//! key   = tier (1 byte: 0 interval, 1 day, 2 month)
//!       | register kind (1 byte: 0 import, 1 export, 2 gas)
//!       | period start (UTC seconds, i64 with the sign bit flipped, big-endian)
//!       | row index (u16 BE; 0xffff is the period's frozen marker)      = 12 bytes
//! value = row: `meterstand_statistics::encode`; marker: the row count (u16 BE)
//! ```
//!
//! A period is written once, rows and marker in one batch, and never rewritten; a period
//! without the marker does not exist. No key or value holds an identifier: rows count at
//! least k connections. Retention: `retention.statistics`, by the sweep.

use jiff::Timestamp;
use meterstand_model::{RegisterKind, Tier};
use meterstand_store::{FrozenPeriod, PendingPeriod, PeriodKey, StoreError};
use rocksdb::WriteBatch;

use crate::engine::{CF_META, CF_STATISTICS, Shared, engine};
use crate::metrics;
use crate::units::{self, UnitKey, Units, pending_key, unit_of};
use std::collections::HashSet;

const MARKER: u16 = 0xffff;
const KEY_LEN: usize = 12;

fn kinds() -> [RegisterKind; 3] {
    [
        RegisterKind::Import,
        RegisterKind::Export,
        RegisterKind::Gas,
    ]
}

fn prefix(tier: Tier, kind: RegisterKind) -> [u8; 2] {
    [tier as u8, kind as u8]
}

fn time_bytes(secs: i64) -> [u8; 8] {
    ((secs as u64) ^ (1 << 63)).to_be_bytes()
}

fn key(tier: Tier, kind: RegisterKind, secs: i64, index: u16) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..2].copy_from_slice(&prefix(tier, kind));
    k[2..10].copy_from_slice(&time_bytes(secs));
    k[10..].copy_from_slice(&index.to_be_bytes());
    k
}

fn parse(k: &[u8]) -> Option<(i64, u16)> {
    if k.len() != KEY_LEN {
        return None;
    }
    let t = u64::from_be_bytes(k[2..10].try_into().ok()?) ^ (1 << 63);
    Some((t as i64, u16::from_be_bytes([k[10], k[11]])))
}

/// The frozen units (days and months), read from the periods' markers at open.
fn frozen_units(shared: &Shared) -> Result<HashSet<UnitKey>, StoreError> {
    let cf = shared.cf(CF_STATISTICS)?;
    let mut out = HashSet::new();
    for tier in [Tier::Day, Tier::Month] {
        for kind in kinds() {
            let mut it = shared.db.raw_iterator_cf(cf);
            it.seek(prefix(tier, kind));
            while let Some(k) = it.key() {
                if !k.starts_with(&prefix(tier, kind)) {
                    break;
                }
                if let Some((start, MARKER)) = parse(k) {
                    out.insert((tier, kind, start));
                }
                it.next();
            }
            it.status().map_err(engine("reading statistics"))?;
        }
    }
    Ok(out)
}

pub(crate) fn is_frozen(shared: &Shared, k: PeriodKey) -> Result<bool, StoreError> {
    let cf = shared.cf(CF_STATISTICS)?;
    Ok(shared
        .db
        .get_pinned_cf(cf, key(k.tier, k.kind, k.period_start.as_second(), MARKER))
        .map_err(engine("reading statistics"))?
        .is_some())
}

/// Stores the periods not frozen yet (rows and marker in one batch, never rewritten). With
/// `settled`, only if that pending unit was not written into since it was listed; its
/// marker goes in the same batch. Under the units' lock, so that the writer's late check
/// and marks and this write happen in one order.
pub(crate) fn freeze(
    shared: &Shared,
    periods: &[FrozenPeriod],
    settled: Option<&PendingPeriod>,
) -> Result<u64, StoreError> {
    let mut units = shared.units.lock();
    let cf = shared.cf(CF_STATISTICS)?;
    let mut batch = WriteBatch::default();
    let mut settled_unit = None;
    if let Some(p) = settled {
        let Some(unit) = unit_of(p.key) else {
            return Err(StoreError::InvalidQuery(
                "only days and months are frozen as units".into(),
            ));
        };
        if units.pending.get(&unit) != Some(&p.last_write.as_second()) {
            // Written into since it was listed: computed again once quiet.
            return Ok(0);
        }
        batch.delete_cf(cf, pending_key(unit));
        settled_unit = Some(unit);
    }
    let mut frozen = 0u64;
    let mut newly = Vec::new();
    for period in periods {
        let k = period.key;
        if is_frozen(shared, k)? {
            continue;
        }
        let secs = k.period_start.as_second();
        let count = u16::try_from(period.rows.len())
            .ok()
            .filter(|n| *n < MARKER)
            .ok_or(StoreError::InvalidQuery(
                "too many statistics rows in one period".into(),
            ))?;
        for (i, row) in period.rows.iter().enumerate() {
            let i = u16::try_from(i).unwrap_or(MARKER - 1);
            batch.put_cf(
                cf,
                key(k.tier, k.kind, secs, i),
                meterstand_statistics::encode(row),
            );
        }
        batch.put_cf(cf, key(k.tier, k.kind, secs, MARKER), count.to_be_bytes());
        if let Some(unit) = unit_of(k) {
            batch.delete_cf(cf, pending_key(unit));
            newly.push(unit);
        }
        frozen += 1;
    }
    if !batch.is_empty() {
        shared
            .db
            .write_opt(batch, &shared.write_opts())
            .map_err(engine("writing statistics"))?;
    }
    if let Some(unit) = settled_unit {
        units.pending.remove(&unit);
    }
    for unit in newly {
        units.pending.remove(&unit);
        units.frozen.insert(unit);
    }
    metrics::FROZEN_PERIODS.inc_by(frozen);
    Ok(frozen)
}

fn horizon(shared: &Shared) -> i64 {
    let secs = i64::try_from(shared.config.retention.statistics.as_secs()).unwrap_or(i64::MAX);
    shared.clock.now().as_second().saturating_sub(secs)
}

pub(crate) fn read(
    shared: &Shared,
    tier: Tier,
    kind: RegisterKind,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<FrozenPeriod>, StoreError> {
    let from = from.as_second().max(horizon(shared));
    let to = to.as_second();
    if from >= to {
        return Ok(Vec::new());
    }
    let cf = shared.cf(CF_STATISTICS)?;
    let end = key(tier, kind, to, 0);
    let mut it = shared.db.raw_iterator_cf(cf);
    it.seek(key(tier, kind, from, 0));
    let mut out = Vec::new();
    let mut rows = Vec::new();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if k >= end.as_slice() {
            break;
        }
        let (start, index) = parse(k).ok_or(StoreError::Corrupt("statistics"))?;
        if index == MARKER {
            let count = usize::from(u16::from_be_bytes(
                v.try_into()
                    .map_err(|_| StoreError::Corrupt("statistics"))?,
            ));
            if rows.len() != count {
                return Err(StoreError::Corrupt("statistics"));
            }
            out.push(FrozenPeriod {
                key: PeriodKey {
                    tier,
                    kind,
                    period_start: Timestamp::from_second(start)
                        .map_err(|_| StoreError::Corrupt("statistics"))?,
                },
                rows: std::mem::take(&mut rows),
            });
        } else {
            rows.push(
                meterstand_statistics::decode(v).map_err(|_| StoreError::Corrupt("statistics"))?,
            );
        }
        it.next();
    }
    it.status().map_err(engine("reading statistics"))?;
    Ok(out)
}

/// Deletes the statistics of periods that started before `retention.statistics` ago.
pub(crate) fn sweep(shared: &Shared) -> Result<u64, StoreError> {
    let cf = shared.cf(CF_STATISTICS)?;
    let horizon = horizon(shared);
    let mut batch = WriteBatch::default();
    let mut periods = 0;
    for tier in Tier::ALL {
        for kind in kinds() {
            let start = key(tier, kind, i64::MIN, 0);
            let end = key(tier, kind, horizon, 0);
            let mut it = shared.db.raw_iterator_cf(cf);
            it.seek(start);
            while let Some(k) = it.key() {
                if k >= end.as_slice() {
                    break;
                }
                if parse(k).is_some_and(|(_, i)| i == MARKER) {
                    periods += 1;
                }
                it.next();
            }
            it.status().map_err(engine("sweeping statistics"))?;
            batch.delete_range_cf(cf, start, end);
        }
    }
    if periods > 0 {
        shared
            .db
            .write_opt(batch, &shared.write_opts())
            .map_err(engine("sweeping statistics"))?;
    }
    Ok(periods)
}

/// Loads the units at open: the frozen ones (from the periods' markers) and the pending
/// markers; marks every unit with stored readings once for a store that predates markers.
pub(crate) fn load_units(shared: &Shared) -> Result<(), StoreError> {
    let cf = shared.cf(CF_STATISTICS)?;
    let mut units = Units {
        frozen: frozen_units(shared)?,
        ..Units::default()
    };
    let mut it = shared.db.raw_iterator_cf(cf);
    it.seek([units::PENDING_TAG]);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let (unit, last) =
            units::parse_pending(k, v).ok_or(StoreError::Corrupt("statistics markers"))?;
        units.pending.insert(unit, last);
        it.next();
    }
    it.status().map_err(engine("reading statistics markers"))?;
    drop(it);
    let meta = shared.cf(CF_META)?;
    let marked = shared
        .db
        .get_pinned_cf(meta, units::MARKED_ALL)
        .map_err(engine("reading store metadata"))?
        .is_some();
    if !marked {
        let mut batch = WriteBatch::default();
        mark_stored(shared, &mut units, &mut batch)?;
        batch.put_cf(meta, units::MARKED_ALL, []);
        shared
            .db
            .write_opt(batch, &shared.write_opts())
            .map_err(engine("marking stored periods"))?;
    }
    *shared.units.lock() = units;
    Ok(())
}

/// Marks the units of every stored block (keys only; once per store), so that history
/// written before markers existed is frozen like history written after.
fn mark_stored(
    shared: &Shared,
    units: &mut Units,
    batch: &mut WriteBatch,
) -> Result<(), StoreError> {
    let cf = shared.cf(CF_STATISTICS)?;
    let now = shared.clock.now().as_second();
    let mut seen = HashSet::new();
    let mut touched = Vec::new();
    for tier in Tier::ALL {
        let mut it = shared.db.raw_iterator_cf(shared.tier_cf(tier)?);
        it.seek_to_first();
        while let Some(k) = it.key() {
            if let Some(key) = crate::layout::parse_key(k)
                && seen.insert((tier, key.register, key.bucket))
            {
                let first = crate::layout::bucket_start_quarter(tier, key.bucket);
                let last = first + crate::layout::bucket_quarters(tier) as u32 - 1;
                touched.clear();
                Units::touched(
                    &shared.config.calendar,
                    tier,
                    key.register,
                    crate::layout::time_of_quarter(first),
                    crate::layout::time_of_quarter(last),
                    &mut touched,
                );
                units.mark(touched.drain(..), now, cf, batch);
            }
            it.next();
        }
        it.status().map_err(engine("marking stored periods"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_including_before_1970() {
        let a = key(Tier::Day, RegisterKind::Import, -5, 0);
        let b = key(Tier::Day, RegisterKind::Import, 5, 0);
        let c = key(Tier::Day, RegisterKind::Import, 5, MARKER);
        assert!(a < b && b < c);
        assert_eq!(parse(&c), Some((5, MARKER)));
        assert_eq!(parse(&a), Some((-5, 0)));
    }
}

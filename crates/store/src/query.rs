//! Reads: one register's readings in a range, consumption per period, group aggregates.
//! Consumption is the difference of two cumulative readings on consecutive period
//! boundaries; a connection lacking either boundary reading of a period does not contribute.

use std::collections::HashMap;

use jiff::Timestamp;
use meterstand_model::{Calendar, QUARTER_SECONDS, Register, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;
use rocksdb::{DB, DBRawIteratorWithThreadMode};

use crate::layout;
use crate::rocks::access::Shared;
use crate::{AggregateCell, AggregateQuery, GroupKey, SeriesRow, StoreError};

type RawIter<'a> = DBRawIteratorWithThreadMode<'a, DB>;

/// Periods one query may span: a year of quarter-hours with room to spare.
const MAX_PERIODS: usize = 40_000;

fn quarter_ceil(t: Timestamp) -> u32 {
    let s = t.as_second().max(0);
    u32::try_from((s + QUARTER_SECONDS - 1) / QUARTER_SECONDS).unwrap_or(u32::MAX)
}

/// Calls `f(time, value)` for every visible reading of `register` in `[from, to)`.
pub(crate) fn scan_register(
    shared: &Shared,
    p: Pseudonym,
    register: Register,
    tier: Tier,
    from: Timestamp,
    to: Timestamp,
    f: impl FnMut(Timestamp, u64),
) -> Result<(), StoreError> {
    let cf = shared.tier_cf_handle(tier)?;
    let mut it = shared.db().raw_iterator_cf(cf);
    scan_with(
        &mut it,
        shared.horizon(tier),
        p,
        register,
        tier,
        from,
        to,
        f,
    )
}

#[allow(clippy::too_many_arguments)]
fn scan_with(
    it: &mut RawIter<'_>,
    horizon: i64,
    p: Pseudonym,
    register: Register,
    tier: Tier,
    from: Timestamp,
    to: Timestamp,
    mut f: impl FnMut(Timestamp, u64),
) -> Result<(), StoreError> {
    let from_q = quarter_ceil(from).max(quarter_ceil(
        Timestamp::from_second(horizon).unwrap_or(Timestamp::MIN),
    ));
    let to_q = quarter_ceil(to);
    if from_q >= to_q {
        return Ok(());
    }
    let (first_bucket, _) = layout::bucket_of(tier, from_q);
    let (last_bucket, _) = layout::bucket_of(tier, to_q - 1);
    let prefix = layout::register_prefix(p, register);
    it.seek(layout::block_key(p, register, first_bucket));
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if !k.starts_with(&prefix) {
            break;
        }
        let key = layout::parse_key(k).ok_or(StoreError::Corrupt(tier.as_str()))?;
        if key.bucket > last_bucket {
            break;
        }
        let base = layout::bucket_start_quarter(tier, key.bucket);
        for (slot, value) in layout::decode_block(v).ok_or(StoreError::Corrupt(tier.as_str()))? {
            let q = base + slot;
            if q >= from_q && q < to_q {
                f(layout::time_of_quarter(q), value);
            }
        }
        it.next();
    }
    it.status()?;
    Ok(())
}

/// The period boundaries of `tier` from the first at or after `from`, while periods start
/// before `to`, plus the end of the last period.
fn boundaries(
    calendar: &Calendar,
    tier: Tier,
    register: Register,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<Timestamp>, StoreError> {
    let start = calendar.period_start(tier, register, from);
    let mut b = if start == from {
        start
    } else {
        calendar.next_boundary(tier, register, start)
    };
    let mut out = Vec::new();
    while b < to {
        out.push(b);
        if out.len() > MAX_PERIODS {
            return Err(StoreError::InvalidQuery(format!(
                "more than {MAX_PERIODS} periods"
            )));
        }
        b = calendar.next_boundary(tier, register, b);
    }
    if !out.is_empty() {
        out.push(b);
    }
    Ok(out)
}

/// Per-boundary values of one connection, for every register of the kind.
struct BoundaryValues {
    per_register: Vec<Vec<Option<u64>>>,
}

impl BoundaryValues {
    fn load(
        it: &mut RawIter<'_>,
        horizon: i64,
        p: Pseudonym,
        kind: RegisterKind,
        tier: Tier,
        bounds: &[Timestamp],
    ) -> Result<BoundaryValues, StoreError> {
        let mut per_register = Vec::with_capacity(kind.registers().len());
        let (Some(first), Some(last)) = (bounds.first(), bounds.last()) else {
            return Ok(BoundaryValues { per_register });
        };
        let end = Timestamp::from_second(last.as_second() + 1).unwrap_or(Timestamp::MAX);
        for register in kind.registers() {
            let mut values = vec![None; bounds.len()];
            scan_with(it, horizon, p, *register, tier, *first, end, |t, v| {
                if let Ok(i) = bounds.binary_search(&t) {
                    values[i] = Some(v);
                }
            })?;
            per_register.push(values);
        }
        Ok(BoundaryValues { per_register })
    }

    /// Consumption in period `k` (between boundaries k and k+1), if every register has both
    /// readings and none went backwards (a meter swap makes the period unknowable).
    fn consumption(&self, k: usize) -> Option<u64> {
        let mut total = 0u64;
        for values in &self.per_register {
            let (a, b) = (
                values.get(k).copied().flatten()?,
                values.get(k + 1).copied().flatten()?,
            );
            total = total.checked_add(b.checked_sub(a)?)?;
        }
        Some(total)
    }
}

pub(crate) fn series(
    shared: &Shared,
    p: Pseudonym,
    kind: RegisterKind,
    tier: Tier,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<SeriesRow>, StoreError> {
    let calendar = shared.calendar();
    let register = kind.registers()[0];
    let bounds = boundaries(&calendar, tier, register, from, to)?;
    let cf = shared.tier_cf_handle(tier)?;
    let mut it = shared.db().raw_iterator_cf(cf);
    let values = BoundaryValues::load(&mut it, shared.horizon(tier), p, kind, tier, &bounds)?;
    Ok((0..bounds.len().saturating_sub(1))
        .filter_map(|k| {
            values.consumption(k).map(|c| SeriesRow {
                period_start: bounds[k],
                consumption: c,
            })
        })
        .collect())
}

pub(crate) fn aggregate(
    shared: &Shared,
    q: &AggregateQuery,
) -> Result<Vec<AggregateCell>, StoreError> {
    let calendar = shared.calendar();
    let register = q.kind.registers()[0];
    let bounds = boundaries(&calendar, q.tier, register, q.from, q.to)?;
    let periods = bounds.len().saturating_sub(1);
    if periods == 0 {
        return Ok(Vec::new());
    }
    let connections = shared.connections_snapshot();
    let horizon = shared.horizon(q.tier);
    let cf = shared.tier_cf_handle(q.tier)?;
    let mut walker = shared.db().raw_iterator_cf(cf);
    let mut reader = shared.db().raw_iterator_cf(cf);
    let mut cells: HashMap<GroupKey, Vec<(u64, u64)>> = HashMap::new();

    walker.seek_to_first();
    while let Some(k) = walker.key() {
        let p = Pseudonym::from_bytes(k).ok_or(StoreError::Corrupt(q.tier.as_str()))?;
        let values = BoundaryValues::load(&mut reader, horizon, p, q.kind, q.tier, &bounds)?;
        let attrs = connections.get(&p);
        let group = GroupKey {
            postcode4: if q.group_by.postcode4 {
                attrs.and_then(|c| c.postcode4)
            } else {
                None
            },
            profile: if q.group_by.profile {
                attrs.and_then(|c| c.profile.clone())
            } else {
                None
            },
        };
        let contributions: Vec<(usize, u64)> = (0..periods)
            .filter_map(|k| values.consumption(k).map(|c| (k, c)))
            .collect();
        if !contributions.is_empty() {
            let row = cells.entry(group).or_insert_with(|| vec![(0, 0); periods]);
            for (k, c) in contributions {
                row[k].0 += 1;
                row[k].1 += c;
            }
        }
        walker.seek(layout::after_pseudonym(p));
    }
    walker.status()?;

    let mut groups: Vec<_> = cells.into_iter().collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for k in 0..periods {
        for (group, row) in &groups {
            let (connections, consumption) = row[k];
            if connections > 0 {
                out.push(AggregateCell {
                    period_start: bounds[k],
                    group: group.clone(),
                    connections,
                    consumption,
                });
            }
        }
    }
    Ok(out)
}

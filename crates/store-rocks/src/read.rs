//! Reads: one register's readings in a range, the members of a tier with their values on
//! period bounds (for the statistics freeze), exports. They run on the caller's (blocking) thread against the live database; the
//! period arithmetic is the interface crate's, shared with every backend.

use jiff::Timestamp;
use meterstand_model::{QUARTER_SECONDS, Reading, Register, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::periods::BoundaryValues;
use meterstand_store::{Member, StoreError, SubjectExport};
use rocksdb::{DB, DBRawIteratorWithThreadMode};

use crate::engine::{CF_METERS, Shared, engine};
use crate::layout;

type RawIter<'a> = DBRawIteratorWithThreadMode<'a, DB>;

fn quarter_ceil(t: Timestamp) -> u32 {
    let s = t.as_second().max(0);
    u32::try_from((s + QUARTER_SECONDS - 1) / QUARTER_SECONDS).unwrap_or(u32::MAX)
}

/// Calls `f(time, value)` for every visible reading of `register` in `[from, to)`.
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
    it.status().map_err(engine("reading a tier"))
}

fn load_boundaries(
    it: &mut RawIter<'_>,
    horizon: i64,
    p: Pseudonym,
    kind: RegisterKind,
    tier: Tier,
    bounds: &[Timestamp],
) -> Result<BoundaryValues, StoreError> {
    let mut values = BoundaryValues::default();
    let (Some(first), Some(last)) = (bounds.first(), bounds.last()) else {
        return Ok(values);
    };
    let end = Timestamp::from_second(last.as_second() + 1).unwrap_or(Timestamp::MAX);
    for register in kind.registers() {
        let mut v = vec![None; bounds.len()];
        scan_with(it, horizon, p, *register, tier, *first, end, |t, value| {
            if let Ok(i) = bounds.binary_search(&t) {
                v[i] = Some(value);
            }
        })?;
        values.per_register.push(v);
    }
    Ok(values)
}

pub(crate) fn readings(
    shared: &Shared,
    p: Pseudonym,
    tier: Tier,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<Reading>, StoreError> {
    let mut out = Vec::new();
    let mut it = shared.db.raw_iterator_cf(shared.tier_cf(tier)?);
    let horizon = shared.read_horizon(tier);
    for register in Register::ALL {
        scan_with(
            &mut it,
            horizon,
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

/// Walks every pseudonym of `tier` once, loading its values on `bounds`; see
/// [`meterstand_store::ReadingStore::members`].
pub(crate) fn members(
    shared: &Shared,
    tier: Tier,
    kind: RegisterKind,
    bounds: &[Timestamp],
    f: &mut dyn FnMut(Member<'_>),
) -> Result<(), StoreError> {
    if bounds.is_empty() {
        return Ok(());
    }
    let horizon = shared.read_horizon(tier);
    let cf = shared.tier_cf(tier)?;
    let mut walker = shared.db.raw_iterator_cf(cf);
    let mut reader = shared.db.raw_iterator_cf(cf);
    walker.seek_to_first();
    while let Some(k) = walker.key() {
        let p = Pseudonym::from_bytes(k).ok_or(StoreError::Corrupt(tier.as_str()))?;
        walker.seek(layout::after_pseudonym(p));
        let values = load_boundaries(&mut reader, horizon, p, kind, tier, bounds)?;
        if values
            .per_register
            .iter()
            .all(|v| v.iter().all(Option::is_none))
        {
            continue;
        }
        // The record and state under short read locks (never a copy of the whole table).
        let connection = shared.connections.read().get(&p).cloned();
        let state = crate::subjects::state_in(&shared.subjects.read(), p);
        f(Member {
            pseudonym: p,
            connection: connection.as_ref(),
            state,
            values: &values,
        });
    }
    walker.status().map_err(engine("walking a tier"))
}

pub(crate) fn knows(shared: &Shared, p: Pseudonym) -> Result<bool, StoreError> {
    if shared.connections.read().contains_key(&p) {
        return Ok(true);
    }
    let (start, end) = layout::pseudonym_range(p);
    for tier in Tier::ALL {
        let mut it = shared.db.raw_iterator_cf(shared.tier_cf(tier)?);
        it.seek(&start);
        if it.key().is_some_and(|k| k < end.as_slice()) {
            return Ok(true);
        }
        it.status().map_err(engine("reading a tier"))?;
    }
    Ok(false)
}

pub(crate) fn export(
    shared: &Shared,
    pseudonyms: &[Pseudonym],
) -> Result<SubjectExport, StoreError> {
    let mut export = SubjectExport {
        state: shared.subject_state(pseudonyms),
        ..SubjectExport::default()
    };
    let meters_cf = shared.cf(CF_METERS)?;
    for p in pseudonyms {
        if export.connection.is_none() {
            export.connection = shared.connections.read().get(p).cloned();
        }
        for tier in Tier::ALL {
            let found = readings(shared, *p, tier, Timestamp::MIN, Timestamp::MAX)?;
            export.tier_mut(tier).extend(found);
        }
        let (start, end) = layout::pseudonym_range(*p);
        let mut it = shared.db.raw_iterator_cf(meters_cf);
        it.seek(&start);
        while let Some(k) = it.key() {
            if k >= end.as_slice() {
                break;
            }
            if let Some(m) = k.get(Pseudonym::LEN..).and_then(Pseudonym::from_bytes) {
                export.meters.push(m);
            }
            it.next();
        }
        it.status().map_err(engine("reading meters"))?;
        corrections_of(shared, *p, &mut export)?;
    }
    Ok(export)
}

/// The correction records of `p` still within retention, into `export.corrected`.
fn corrections_of(
    shared: &Shared,
    p: Pseudonym,
    export: &mut SubjectExport,
) -> Result<(), StoreError> {
    let horizons = Tier::ALL.map(|t| shared.read_horizon(t));
    let (start, end) = layout::pseudonym_range(p);
    let mut it = shared
        .db
        .raw_iterator_cf(shared.cf(crate::engine::CF_CORRECTIONS)?);
    it.seek(&start);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if k >= end.as_slice() {
            break;
        }
        if let Some((_, tier, register, q)) = layout::parse_correction_key(k) {
            let time = layout::time_of_quarter(q);
            if time.as_second() >= horizons[tier as usize]
                && let Some(at) = layout::correction_time(v)
                && let Ok(at) = Timestamp::from_second(at)
            {
                export.corrected.insert((tier, register, time), at);
            }
        }
        it.next();
    }
    it.status().map_err(engine("reading corrections"))
}

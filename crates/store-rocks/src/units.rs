//! Units of freezing (a day with its quarter-hours, or a month, per register kind): which
//! are frozen, and which writes have touched since (pending, with the time of the last
//! write). Pure: the writer and the freeze keep it under their lock, `stats.rs` loads it.
//!
//! The writer marks the units each changed block feeds (`meterstand_store::periods::
//! units_touched`) and asks whether any of them is frozen (then the entries are late); the
//! freeze settles a pending unit only if no write touched it since it was listed. Both hold
//! the one lock of [`Units`] around their check and their write, so a reading is either in
//! a unit's statistics or counted late, never neither.
//!
//! Pending markers live in the `statistics` column family beside the rows, under keys that
//! no row key can take (rows start with the tier, 0..=2):
//! ```text
//! key   = 0x80 | tier, register kind, period start (i64, sign bit flipped, BE) = 10 bytes
//! value = last write (UTC seconds, i64 BE)
//! ```
//! A marker names a period, never a subject.

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;
use meterstand_model::{Calendar, Register, RegisterKind, Tier};
use meterstand_store::{PendingPeriod, PeriodKey, periods::units_touched};
use rocksdb::WriteBatch;

/// A unit: (tier `Day` or `Month`, register kind, period start in UTC seconds).
pub(crate) type UnitKey = (Tier, RegisterKind, i64);

pub(crate) const PENDING_TAG: u8 = 0x80;
const PENDING_KEY_LEN: usize = 10;
/// Set once every unit with stored readings has been marked (stores written before
/// markers existed are marked once, at their first open).
pub(crate) const MARKED_ALL: &[u8] = b"units-marked";

/// Frozen and pending units, under one lock (see the module note).
#[derive(Debug, Default)]
pub(crate) struct Units {
    pub(crate) frozen: HashSet<UnitKey>,
    pub(crate) pending: HashMap<UnitKey, i64>,
}

pub(crate) fn unit_of(key: PeriodKey) -> Option<UnitKey> {
    matches!(key.tier, Tier::Day | Tier::Month)
        .then(|| (key.tier, key.kind, key.period_start.as_second()))
}

fn kind_code(kind: RegisterKind) -> u8 {
    kind as u8
}

fn kind_of(code: u8) -> Option<RegisterKind> {
    [
        RegisterKind::Import,
        RegisterKind::Export,
        RegisterKind::Gas,
    ]
    .into_iter()
    .find(|k| kind_code(*k) == code)
}

fn tier_of(code: u8) -> Option<Tier> {
    Tier::ALL.into_iter().find(|t| *t as u8 == code)
}

pub(crate) fn pending_key(unit: UnitKey) -> [u8; PENDING_KEY_LEN] {
    let mut k = [0u8; PENDING_KEY_LEN];
    k[0] = PENDING_TAG | unit.0 as u8;
    k[1] = kind_code(unit.1);
    k[2..].copy_from_slice(&((unit.2 as u64) ^ (1 << 63)).to_be_bytes());
    k
}

pub(crate) fn parse_pending(k: &[u8], v: &[u8]) -> Option<(UnitKey, i64)> {
    if k.len() != PENDING_KEY_LEN || k[0] & PENDING_TAG == 0 {
        return None;
    }
    let tier = tier_of(k[0] & !PENDING_TAG)?;
    let kind = kind_of(k[1])?;
    let start = (u64::from_be_bytes(k[2..].try_into().ok()?) ^ (1 << 63)) as i64;
    let last = i64::from_be_bytes(v.try_into().ok()?);
    Some(((tier, kind, start), last))
}

impl Units {
    /// The units a run of tier entries (one register, `first..=last`) feeds, into `out`.
    pub(crate) fn touched(
        calendar: &Calendar,
        tier: Tier,
        register: Register,
        first: Timestamp,
        last: Timestamp,
        out: &mut Vec<UnitKey>,
    ) {
        let kind = register.kind();
        units_touched(calendar, tier, register, first, last, &mut |t, s| {
            out.push((t, kind, s.as_second()))
        });
    }

    /// Whether any of `units` is frozen.
    pub(crate) fn any_frozen(&self, units: &[UnitKey]) -> bool {
        !self.frozen.is_empty() && units.iter().any(|u| self.frozen.contains(u))
    }

    /// Marks `units` (those not frozen) as written into at `now`, in memory and in `batch`.
    pub(crate) fn mark(
        &mut self,
        units: impl IntoIterator<Item = UnitKey>,
        now: i64,
        cf: &rocksdb::ColumnFamily,
        batch: &mut WriteBatch,
    ) {
        for unit in units {
            if self.frozen.contains(&unit) {
                continue;
            }
            if self.pending.insert(unit, now) != Some(now) {
                batch.put_cf(cf, pending_key(unit), now.to_be_bytes());
            }
        }
    }

    pub(crate) fn list(&self) -> Vec<PendingPeriod> {
        meterstand_store::PendingPeriod::list(
            self.pending
                .iter()
                .map(|(&(tier, kind, start), &last)| (tier, kind, start, last)),
        )
    }
}

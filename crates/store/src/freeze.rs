//! Which periods are due for freezing, and their computation, over any [`ReadingStore`].
//!
//! - Every write marks the units it touches (a day with its quarter-hours, or a month; a
//!   marker names a period, never a subject) with the time of the write
//!   ([`ReadingStore::pending_periods`]). A marked unit is frozen once `settle` has passed
//!   since it ended **and** `quiet` since its last write, whatever its age: history loaded
//!   late, or years of it loaded on the first day, is published like yesterday. A restart
//!   finds the markers where it left them. No look-back window.
//! - A **day** is frozen together with its fine periods (quarter-hours; hours for gas) by
//!   [`meterstand_statistics::freeze_nested`].
//! - A **month** is frozen on its own over the connections **without any day reading in
//!   that month** (in practice: consent `standard`). Those connections are in no day or
//!   quarter-hour figure of the month, so month figures and finer figures count disjoint
//!   connections and no difference of them isolates anyone (the safe option of
//!   `crates/statistics/DESIGN.md` §7).
//! - Only members with a known and open state count ([`open_to_analysis`]): registered
//!   under that pseudonym, consent allowing the tier, no objection, not erased, the period
//!   after any seal.
//! - A unit nobody counts in is not frozen (nothing to publish); its marker goes, and a
//!   later write marks it again.
//! - One unit at a time, and at most `budget` of work per call: a backlog of years is
//!   frozen in slices that leave the store to ingest and the API in between.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use meterstand_model::{Calendar, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_statistics::{Contribution, MemberId, NestedContribution, freeze_nested, partition};

use crate::periods::boundaries;
use crate::{FrozenPeriod, PendingPeriod, PeriodKey, ReadingStore, StoreError, open_to_analysis};

/// The register kinds statistics are computed for.
pub const KINDS: [RegisterKind; 3] = [
    RegisterKind::Import,
    RegisterKind::Export,
    RegisterKind::Gas,
];

#[derive(Debug, Clone)]
pub struct FreezeConfig {
    /// How long a closed period waits for late readings (`statistics.settle`).
    pub settle: Duration,
    /// How long a period waits after its last write (`statistics.quiet`), so that a period
    /// still being loaded is not frozen half-way.
    pub quiet: Duration,
    /// `privacy.min_group_size`.
    pub k: u32,
    /// How long one call may compute before it returns, leaving the rest pending (it
    /// computes one unit at least).
    pub budget: Duration,
}

impl Default for FreezeConfig {
    fn default() -> Self {
        FreezeConfig {
            settle: Duration::from_secs(48 * 3600),
            quiet: Duration::from_secs(600),
            k: 10,
            budget: Duration::from_secs(2),
        }
    }
}

/// What one run froze and what it left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FreezeReport {
    /// Periods newly frozen (a day with its 96 quarter-hours counts 97).
    pub periods: u64,
    /// Days and months computed (units of work).
    pub units: u64,
    /// Units still waiting: not settled or not quiet yet, or beyond this call's budget.
    pub pending: u64,
    /// Units due now that this call's budget left for the next one.
    pub due_left: u64,
    /// How long the oldest waiting unit has been over (since its end), in seconds.
    pub oldest_pending_seconds: u64,
    /// How long the most overdue waiting unit has been due (settled and quiet), in seconds:
    /// 0 unless the freeze falls behind.
    pub overdue_seconds: u64,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn member_id(p: Pseudonym) -> MemberId {
    // The hash part is unique per key version in practice; the version goes in too so that
    // two versions' pseudonyms of one EAN cannot collide into one member.
    let mut id = p.hash;
    id[0] ^= (p.version >> 8) as u8;
    id[1] ^= p.version as u8;
    MemberId(id)
}

fn end_of(calendar: &Calendar, key: PeriodKey) -> Timestamp {
    calendar.next_boundary(key.tier, key.kind.registers()[0], key.period_start)
}

/// When a pending unit may be frozen (UTC seconds): `settle` after its end and `quiet`
/// after its last write.
fn due_at(calendar: &Calendar, cfg: &FreezeConfig, p: &PendingPeriod) -> i64 {
    let settled = end_of(calendar, p.key)
        .as_second()
        .saturating_add(secs(cfg.settle));
    let quiet = p.last_write.as_second().saturating_add(secs(cfg.quiet));
    settled.max(quiet)
}

/// Freezes every due unit not frozen yet, oldest first, within `cfg.budget`. Idempotent;
/// safe to call at any time.
pub fn run(
    store: &dyn ReadingStore,
    calendar: &Calendar,
    cfg: &FreezeConfig,
    now: Timestamp,
) -> Result<FreezeReport, StoreError> {
    let started = Instant::now();
    let mut report = FreezeReport::default();
    let mut pending = store.pending_periods()?;
    // Days (with their quarter-hours) before months, each in time order.
    pending.sort_by_key(|p| (p.key.tier != Tier::Day, p.key.period_start, p.key.kind));
    for p in pending {
        let due_for = now.as_second() - due_at(calendar, cfg, &p);
        let due = due_for >= 0;
        // At least one unit per call, however small the budget.
        if !due || (report.units > 0 && started.elapsed() >= cfg.budget) {
            report.pending += 1;
            report.due_left += u64::from(due);
            let over = now.as_second() - end_of(calendar, p.key).as_second();
            report.oldest_pending_seconds = report
                .oldest_pending_seconds
                .max(u64::try_from(over).unwrap_or(0));
            report.overdue_seconds = report
                .overdue_seconds
                .max(u64::try_from(due_for).unwrap_or(0));
            continue;
        }
        let (start, end) = (p.key.period_start, end_of(calendar, p.key));
        let periods = match p.key.tier {
            Tier::Day => compute_day(store, calendar, p.key.kind, start, end, cfg.k)?,
            _ => compute_month(store, calendar, p.key.kind, start, end, cfg.k)?
                .map(|period| vec![period]),
        };
        report.periods += store.freeze(periods.as_deref().unwrap_or_default(), Some(&p))?;
        report.units += 1;
    }
    Ok(report)
}

/// A day and its fine periods, computed together; `None` when nobody counts.
pub fn compute_day(
    store: &dyn ReadingStore,
    calendar: &Calendar,
    kind: RegisterKind,
    start: Timestamp,
    end: Timestamp,
    k: u32,
) -> Result<Option<Vec<FrozenPeriod>>, StoreError> {
    let register = kind.registers()[0];
    let fine_bounds = boundaries(calendar, Tier::Interval, register, start, end)?;
    let fine_periods = fine_bounds.len().saturating_sub(1);
    let mut members: BTreeMap<Pseudonym, NestedContribution> = BTreeMap::new();
    fn entry<'m>(
        members: &'m mut BTreeMap<Pseudonym, NestedContribution>,
        m: &crate::Member<'_>,
        tier: Tier,
        start: Timestamp,
    ) -> Option<&'m mut NestedContribution> {
        if !open_to_analysis(m, tier, start) {
            return None;
        }
        Some(
            members
                .entry(m.pseudonym)
                .or_insert_with(|| NestedContribution {
                    member: member_id(m.pseudonym),
                    postcode4: m.connection.and_then(|c| c.postcode4),
                    profile: m.connection.and_then(|c| c.profile.clone()),
                    coarse: None,
                    fine: Vec::new(),
                }),
        )
    }
    store.members(Tier::Day, kind, &[start, end], &mut |m| {
        if let Some(c) = entry(&mut members, &m, Tier::Day, start) {
            c.coarse = m.values.consumption(0);
        }
    })?;
    store.members(Tier::Interval, kind, &fine_bounds, &mut |m| {
        if let Some(c) = entry(&mut members, &m, Tier::Interval, start) {
            c.fine = (0..fine_periods).map(|i| m.values.consumption(i)).collect();
        }
    })?;
    let contributions: Vec<NestedContribution> = members
        .into_values()
        .filter(|c| c.coarse.is_some() || c.fine.iter().any(Option::is_some))
        .collect();
    if contributions.is_empty() {
        return Ok(None);
    }
    let nested = freeze_nested(&contributions, fine_periods, k);
    let mut out = Vec::with_capacity(fine_periods + 1);
    for (i, part) in nested.fine.into_iter().enumerate() {
        out.push(FrozenPeriod {
            key: PeriodKey {
                tier: Tier::Interval,
                kind,
                period_start: fine_bounds[i],
            },
            rows: part.rows,
        });
    }
    // The day last: its marker says the whole unit is done.
    out.push(FrozenPeriod {
        key: PeriodKey {
            tier: Tier::Day,
            kind,
            period_start: start,
        },
        rows: nested.coarse.rows,
    });
    Ok(Some(out))
}

/// A month over the connections without day readings in it; `None` when nobody counts.
pub fn compute_month(
    store: &dyn ReadingStore,
    calendar: &Calendar,
    kind: RegisterKind,
    start: Timestamp,
    end: Timestamp,
    k: u32,
) -> Result<Option<FrozenPeriod>, StoreError> {
    let register = kind.registers()[0];
    let days = boundaries(calendar, Tier::Day, register, start, end)?;
    let mut with_days = std::collections::HashSet::new();
    store.members(Tier::Day, kind, &days, &mut |m| {
        with_days.insert(m.pseudonym);
    })?;
    let mut contributions = Vec::new();
    store.members(Tier::Month, kind, &[start, end], &mut |m| {
        if with_days.contains(&m.pseudonym) || !open_to_analysis(&m, Tier::Month, start) {
            return;
        }
        if let Some(consumption) = m.values.consumption(0) {
            contributions.push(Contribution {
                member: member_id(m.pseudonym),
                postcode4: m.connection.and_then(|c| c.postcode4),
                profile: m.connection.and_then(|c| c.profile.clone()),
                consumption,
            });
        }
    })?;
    if contributions.is_empty() {
        return Ok(None);
    }
    Ok(Some(FrozenPeriod {
        key: PeriodKey {
            tier: Tier::Month,
            kind,
            period_start: start,
        },
        rows: partition(&contributions, k).rows,
    }))
}

#[cfg(test)]
mod tests;

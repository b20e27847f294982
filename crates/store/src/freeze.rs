//! Which periods are due for freezing, and their computation, over any [`ReadingStore`].
//!
//! - A **day** is frozen together with its fine periods (quarter-hours; hours for gas) by
//!   [`meterstand_statistics::freeze_nested`], once `settle` has passed after the day's end.
//! - A **month** is frozen on its own, `settle` after its end, over the connections **without
//!   any day reading in that month** (in practice: consent `standard`). Those connections are
//!   in no day or quarter-hour figure of the month, so month figures and finer figures count
//!   disjoint connections and no difference of them isolates anyone (the safe option of
//!   `crates/statistics/DESIGN.md` §7). A connection whose day readings were deleted after
//!   its days were frozen (consent lowered within the month) can then count in both; see
//!   that section for why this is left as a documented limitation.
//! - Only periods whose freeze time (`end + settle`) lies within `lookback` before now are
//!   considered, so that a restart after a short outage catches up, and the work per run
//!   stays bounded. A period without any contribution is not frozen (nothing to publish; it
//!   is looked at again while it is inside the window).
//! - Objecting connections (`analytics = false`) and erased ones are left out: a statistic
//!   computed after the objection or erasure does not count them.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use meterstand_model::{Calendar, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_statistics::{Contribution, MemberId, NestedContribution, freeze_nested, partition};

use crate::periods::boundaries;
use crate::{FrozenPeriod, PeriodKey, ReadingStore, StoreError, open_to_analysis};

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
    /// How far back due periods are looked for (a restart catches up this far).
    pub lookback: Duration,
    /// `privacy.min_group_size`.
    pub k: u32,
}

impl Default for FreezeConfig {
    fn default() -> Self {
        FreezeConfig {
            settle: Duration::from_secs(48 * 3600),
            lookback: Duration::from_secs(7 * 86_400),
            k: 10,
        }
    }
}

/// What one run froze.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FreezeReport {
    /// Periods newly frozen (a day with its 96 quarter-hours counts 97).
    pub periods: u64,
    /// Days and months computed (units of work).
    pub units: u64,
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

/// The periods of `tier` whose freeze time `end + settle` lies in `(now - lookback, now]`.
fn due(
    calendar: &Calendar,
    tier: Tier,
    kind: RegisterKind,
    cfg: &FreezeConfig,
    now: Timestamp,
) -> Vec<(Timestamp, Timestamp)> {
    let register = kind.registers()[0];
    let latest_end = now.as_second().saturating_sub(secs(cfg.settle));
    let earliest_end = latest_end.saturating_sub(secs(cfg.lookback));
    let (Ok(from), Ok(to)) = (
        Timestamp::from_second(earliest_end),
        Timestamp::from_second(latest_end),
    ) else {
        return Vec::new();
    };
    // Periods that end in (from, to]: they start at or after the period before `from`.
    let first = calendar.period_start(tier, register, from);
    let mut out = Vec::new();
    let mut start = first;
    loop {
        let end = calendar.next_boundary(tier, register, start);
        if end > to || end == Timestamp::MAX {
            break;
        }
        if end > from {
            out.push((start, end));
        }
        start = end;
    }
    out
}

/// Freezes every due period not frozen yet. Idempotent; safe to call at any time.
pub fn run(
    store: &dyn ReadingStore,
    calendar: &Calendar,
    cfg: &FreezeConfig,
    now: Timestamp,
) -> Result<FreezeReport, StoreError> {
    let mut report = FreezeReport::default();
    for kind in KINDS {
        // Days (with their quarter-hours) before months: a month counts only connections
        // without day figures in it.
        for tier in [Tier::Day, Tier::Month] {
            for (start, end) in due(calendar, tier, kind, cfg, now) {
                let key = PeriodKey {
                    tier,
                    kind,
                    period_start: start,
                };
                if store.is_frozen(key)? {
                    continue;
                }
                let periods = if tier == Tier::Day {
                    compute_day(store, calendar, kind, start, end, cfg.k)?
                } else {
                    compute_month(store, calendar, kind, start, end, cfg.k)?.map(|p| vec![p])
                };
                if let Some(periods) = periods {
                    report.periods += store.freeze(&periods)?;
                    report.units += 1;
                }
            }
        }
    }
    Ok(report)
}

/// A day and its fine periods, computed together; `None` when nobody contributes.
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
    ) -> Option<&'m mut NestedContribution> {
        if !open_to_analysis(m.connection) {
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
        if let Some(c) = entry(&mut members, &m) {
            c.coarse = m.values.consumption(0);
        }
    })?;
    store.members(Tier::Interval, kind, &fine_bounds, &mut |m| {
        if let Some(c) = entry(&mut members, &m) {
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

/// A month over the connections without day readings in it; `None` when nobody contributes.
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
        if with_days.contains(&m.pseudonym) || !open_to_analysis(m.connection) {
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
mod tests {
    use std::sync::Arc;

    use meterstand_model::ConsentLevel;

    use super::*;
    use crate::conformance::{block_on, connection, item, pseudo, put, quarter_hours, tiered, ts};
    use crate::{ManualClock, MemStore, ReadingWriter};
    use meterstand_model::Register;

    fn cfg() -> FreezeConfig {
        FreezeConfig {
            k: 3,
            ..FreezeConfig::default()
        }
    }

    /// Four interval-consent connections with a full local day of quarter-hours on
    /// 2026-11-24 (UTC 23:00 the day before to 23:00).
    fn fleet(store: &MemStore) {
        let start = ts("2026-11-23T23:00:00Z");
        let mut items = Vec::new();
        for n in 0..4u8 {
            let p = pseudo(10 + n);
            put(store, p, connection(ConsentLevel::Interval, "1234"));
            items.push(item(p, quarter_hours(start, 97, 1000, 10 + u64::from(n))));
        }
        block_on(store.write(items)).expect("write");
    }

    #[test]
    fn a_day_is_frozen_with_its_quarter_hours_only_after_settle() {
        let clock = ManualClock::new(ts("2026-11-26T22:59:00Z"));
        let store = MemStore::new(Arc::new(clock.clone()));
        fleet(&store);
        let cal = Calendar::amsterdam();
        let r = run(&store, &cal, &cfg(), crate::Clock::now(&clock)).expect("run");
        assert_eq!(r.periods, 0, "48h after the day's end have not passed yet");
        clock.set(ts("2026-11-26T23:00:00Z"));
        let r = run(&store, &cal, &cfg(), crate::Clock::now(&clock)).expect("run");
        assert_eq!(r.periods, 97, "the day and its 96 quarter-hours: {r:?}");
        let day = store
            .statistics(
                Tier::Day,
                RegisterKind::Import,
                ts("2026-11-23T23:00:00Z"),
                ts("2026-11-24T23:00:00Z"),
            )
            .expect("read");
        assert_eq!(day.len(), 1);
        assert_eq!(day[0].rows[0].connections, 4);
        let quarters = store
            .statistics(
                Tier::Interval,
                RegisterKind::Import,
                ts("2026-11-23T23:00:00Z"),
                ts("2026-11-24T23:00:00Z"),
            )
            .expect("read");
        assert_eq!(quarters.len(), 96);
        let sum: u64 = quarters.iter().map(|q| q.rows[0].consumption).sum();
        assert_eq!(sum, day[0].rows[0].consumption, "the granularities add up");
        // Again: nothing new.
        assert_eq!(
            run(&store, &cal, &cfg(), crate::Clock::now(&clock))
                .expect("run")
                .periods,
            0
        );
    }

    #[test]
    fn frozen_statistics_do_not_change_and_late_readings_are_counted() {
        let clock = ManualClock::new(ts("2026-11-27T00:00:00Z"));
        let store = MemStore::new(Arc::new(clock.clone()));
        fleet(&store);
        let cal = Calendar::amsterdam();
        run(&store, &cal, &cfg(), crate::Clock::now(&clock)).expect("run");
        let read = || {
            store
                .statistics(
                    Tier::Day,
                    RegisterKind::Import,
                    ts("2026-11-20T00:00:00Z"),
                    ts("2026-11-30T00:00:00Z"),
                )
                .expect("read")
        };
        let before = read();
        store.erase(&[pseudo(10)]).expect("erase");
        let mut c = connection(ConsentLevel::Interval, "1234");
        c.analytics = false;
        put(&store, pseudo(11), c);
        let late = item(
            pseudo(12),
            vec![tiered(Register::ExportT1, ts("2026-11-24T12:00:00Z"), 5)],
        );
        let outcome = block_on(store.write(vec![late])).expect("write");
        assert_eq!(outcome.late, 1, "{outcome:?}");
        run(&store, &cal, &cfg(), crate::Clock::now(&clock)).expect("run");
        assert_eq!(read(), before);
    }

    #[test]
    fn objecting_and_erased_connections_leave_later_statistics() {
        let clock = ManualClock::new(ts("2026-11-27T00:00:00Z"));
        let store = MemStore::new(Arc::new(clock.clone()));
        fleet(&store);
        let mut c = connection(ConsentLevel::Interval, "1234");
        c.analytics = false;
        put(&store, pseudo(11), c);
        store.erase(&[pseudo(12)]).expect("erase");
        run(
            &store,
            &Calendar::amsterdam(),
            &cfg(),
            crate::Clock::now(&clock),
        )
        .expect("run");
        let day = store
            .statistics(
                Tier::Day,
                RegisterKind::Import,
                ts("2026-11-23T23:00:00Z"),
                ts("2026-11-24T23:00:00Z"),
            )
            .expect("read");
        assert!(day[0].rows.is_empty(), "2 left, below k = 3: {day:?}");
    }

    #[test]
    fn months_count_only_connections_without_day_readings() {
        let clock = ManualClock::new(ts("2026-12-03T23:00:00Z"));
        let store = MemStore::new(Arc::new(clock.clone()));
        let (a, b) = (ts("2026-10-31T23:00:00Z"), ts("2026-11-30T23:00:00Z"));
        let mut items = Vec::new();
        for n in 0..5u8 {
            let p = pseudo(40 + n);
            let consent = if n < 3 {
                ConsentLevel::Standard
            } else {
                ConsentLevel::Daily
            };
            put(&store, p, connection(consent, "1234"));
            let mut readings = Vec::new();
            for (t, v) in [(a, 1000), (b, 2000 + u64::from(n))] {
                readings.push(tiered(Register::ImportT1, t, v));
                readings.push(tiered(Register::ImportT2, t, v));
            }
            items.push(item(p, readings));
        }
        block_on(store.write(items)).expect("write");
        let r = run(
            &store,
            &Calendar::amsterdam(),
            &cfg(),
            crate::Clock::now(&clock),
        )
        .expect("run");
        assert!(r.periods >= 1);
        let month = store
            .statistics(Tier::Month, RegisterKind::Import, a, b)
            .expect("read");
        assert_eq!(month.len(), 1);
        assert_eq!(month[0].rows[0].connections, 3, "{month:?}");
    }

    #[test]
    fn a_restart_catches_up_within_the_lookback() {
        let clock = ManualClock::new(ts("2026-12-01T00:00:00Z"));
        let store = MemStore::new(Arc::new(clock.clone()));
        fleet(&store);
        let r = run(
            &store,
            &Calendar::amsterdam(),
            &cfg(),
            crate::Clock::now(&clock),
        )
        .expect("run");
        assert_eq!(r.periods, 97);
        let far = ManualClock::new(ts("2026-12-20T00:00:00Z"));
        let store = MemStore::new(Arc::new(far.clone()));
        fleet(&store);
        let r = run(
            &store,
            &Calendar::amsterdam(),
            &cfg(),
            crate::Clock::now(&far),
        )
        .expect("run");
        assert_eq!(r.periods, 0, "outside the window");
    }
}

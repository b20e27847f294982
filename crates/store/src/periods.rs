//! Period arithmetic every backend shares: which boundaries a query spans, consumption as
//! the difference of two cumulative readings on consecutive boundaries. A connection lacking either boundary reading of a period, or whose
//! register went backwards in it (a meter swap), does not contribute to that period.

use jiff::Timestamp;
use meterstand_model::{Calendar, Register, Tier};

use crate::StoreError;

/// Periods one query may span: a year of quarter-hours with room to spare.
pub const MAX_PERIODS: usize = 40_000;

/// The period boundaries of `tier` from the first at or after `from`, while periods start
/// before `to`, plus the end of the last period. Empty when no period starts in range.
pub fn boundaries(
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

/// One connection's values on the boundaries of a query, per register of the kind.
#[derive(Debug, Default)]
pub struct BoundaryValues {
    pub per_register: Vec<Vec<Option<u64>>>,
}

impl BoundaryValues {
    /// Consumption in period `k` (between boundaries k and k+1), if every register has both
    /// readings and none went backwards.
    pub fn consumption(&self, k: usize) -> Option<u64> {
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

    /// Every period's consumption that can be known.
    pub fn contributions(&self, periods: usize) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..periods).filter_map(|k| self.consumption(k).map(|c| (k, c)))
    }
}

/// The periods whose statistics are frozen as one unit, and which tier entries of `tier`
/// from `first` to `last` (one register) feed: the days they bound (a day is frozen with
/// its quarter-hours) for interval and day entries, and for day entries also the months of
/// those days (a month counts only the connections without day readings in it); the months
/// they bound for month entries. An entry on a boundary feeds the period before it too.
/// `f` gets each unit's tier (`Day` or `Month`) and start, in time order per tier; for
/// entries spread over a range it may get units between them that no entry bounds (a
/// superset: such a unit is computed and found without new data).
pub fn units_touched(
    calendar: &Calendar,
    tier: Tier,
    register: Register,
    first: Timestamp,
    last: Timestamp,
    f: &mut impl FnMut(Tier, Timestamp),
) {
    let unit = if tier == Tier::Month {
        Tier::Month
    } else {
        Tier::Day
    };
    let mut start = calendar.period_start(unit, register, first);
    if start == first
        && let Ok(before) = Timestamp::from_second(first.as_second() - 1)
    {
        start = calendar.period_start(unit, register, before);
    }
    let last_start = calendar.period_start(unit, register, last);
    let mut month = None;
    loop {
        f(unit, start);
        if tier == Tier::Day {
            let m = calendar.period_start(Tier::Month, register, start);
            if month != Some(m) {
                f(Tier::Month, m);
                month = Some(m);
            }
        }
        if start >= last_start {
            break;
        }
        let next = calendar.next_boundary(unit, register, start);
        if next <= start {
            break;
        }
        start = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn units(tier: Tier, first: &str, last: &str) -> Vec<(Tier, String)> {
        let mut out = Vec::new();
        units_touched(
            &Calendar::amsterdam(),
            tier,
            Register::ImportT1,
            ts(first),
            ts(last),
            &mut |t, s| out.push((t, s.to_string())),
        );
        out
    }

    #[test]
    fn a_quarter_hour_feeds_its_local_day() {
        assert_eq!(
            units(
                Tier::Interval,
                "2026-11-24T12:00:00Z",
                "2026-11-24T12:00:00Z"
            ),
            vec![(Tier::Day, "2026-11-23T23:00:00Z".into())]
        );
        // On local midnight: the day it ends and the day it starts.
        assert_eq!(
            units(
                Tier::Interval,
                "2026-11-24T23:00:00Z",
                "2026-11-24T23:00:00Z"
            ),
            vec![
                (Tier::Day, "2026-11-23T23:00:00Z".into()),
                (Tier::Day, "2026-11-24T23:00:00Z".into())
            ]
        );
    }

    #[test]
    fn a_day_reading_feeds_both_days_and_their_months() {
        assert_eq!(
            units(Tier::Day, "2026-11-30T23:00:00Z", "2026-11-30T23:00:00Z"),
            vec![
                (Tier::Day, "2026-11-29T23:00:00Z".into()),
                (Tier::Month, "2026-10-31T23:00:00Z".into()),
                (Tier::Day, "2026-11-30T23:00:00Z".into()),
                (Tier::Month, "2026-11-30T23:00:00Z".into()),
            ]
        );
    }

    #[test]
    fn a_month_reading_feeds_the_months_it_bounds() {
        assert_eq!(
            units(Tier::Month, "2026-10-31T23:00:00Z", "2026-11-30T23:00:00Z"),
            vec![
                (Tier::Month, "2026-09-30T22:00:00Z".into()),
                (Tier::Month, "2026-10-31T23:00:00Z".into()),
                (Tier::Month, "2026-11-30T23:00:00Z".into()),
            ]
        );
    }
}

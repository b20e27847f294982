//! Period arithmetic every backend shares: which boundaries a query spans, consumption as
//! the difference of two cumulative readings on consecutive boundaries, and the assembly of
//! group aggregates. A connection lacking either boundary reading of a period, or whose
//! register went backwards in it (a meter swap), does not contribute to that period.

use std::collections::HashMap;

use jiff::Timestamp;
use meterstand_model::{Calendar, Register, Tier};

use crate::{AggregateCell, GroupKey, StoreError};

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

/// Sums contributions per group and period, then lists the cells in period and group order.
#[derive(Debug)]
pub struct Aggregator {
    periods: usize,
    cells: HashMap<GroupKey, Vec<(u64, u64)>>,
}

impl Aggregator {
    pub fn new(periods: usize) -> Aggregator {
        Aggregator {
            periods,
            cells: HashMap::new(),
        }
    }

    pub fn add(&mut self, group: GroupKey, values: &BoundaryValues) {
        let mut contributions = values.contributions(self.periods).peekable();
        if contributions.peek().is_none() {
            return;
        }
        let periods = self.periods;
        let row = self
            .cells
            .entry(group)
            .or_insert_with(|| vec![(0, 0); periods]);
        for (k, c) in contributions {
            row[k].0 += 1;
            row[k].1 += c;
        }
    }

    pub fn finish(self, bounds: &[Timestamp]) -> Vec<AggregateCell> {
        let mut groups: Vec<_> = self.cells.into_iter().collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        for (k, period_start) in bounds.iter().take(self.periods).enumerate() {
            for (group, row) in &groups {
                let (connections, consumption) = row[k];
                if connections > 0 {
                    out.push(AggregateCell {
                        period_start: *period_start,
                        group: group.clone(),
                        connections,
                        consumption,
                    });
                }
            }
        }
        out
    }
}

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

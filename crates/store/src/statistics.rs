//! The store side of the statistics tier: frozen periods and the members of a tier with
//! their boundary values, which both the freeze job ([`crate::freeze`]) and per-connection
//! reads are computed from.

use jiff::Timestamp;
use meterstand_model::{Connection, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_statistics::Row;

use crate::SubjectState;
use crate::periods::BoundaryValues;

/// One period of one granularity and register kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeriodKey {
    pub tier: Tier,
    pub kind: RegisterKind,
    pub period_start: Timestamp,
}

/// The published rows of one frozen period: computed once, never changed. Empty when the
/// period's fleet was below `k` (the period is frozen all the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrozenPeriod {
    pub key: PeriodKey,
    pub rows: Vec<Row>,
}

/// One connection of a tier, as the freeze job sees it: its values on the period bounds
/// asked for (per register of the kind), its connection record under this pseudonym, if
/// any, and its privacy state. Every connection with readings there is a member; the
/// caller asks [`crate::open_to_analysis`] which may count.
#[derive(Debug)]
pub struct Member<'a> {
    pub pseudonym: Pseudonym,
    pub connection: Option<&'a Connection>,
    pub state: SubjectState,
    pub values: &'a BoundaryValues,
}

/// A period (a day with its quarter-hours, or a month) that writes have touched and that is
/// not frozen yet, with the time of its last write: it is frozen once `statistics.settle`
/// has passed since it ended and `statistics.quiet` since that write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingPeriod {
    pub key: PeriodKey,
    pub last_write: Timestamp,
}

impl PendingPeriod {
    /// Pending periods from (tier, kind, start, last write) in UTC seconds, oldest first;
    /// what lies outside the timestamp range is skipped.
    pub fn list(units: impl Iterator<Item = (Tier, RegisterKind, i64, i64)>) -> Vec<PendingPeriod> {
        let mut out: Vec<PendingPeriod> = units
            .filter_map(|(tier, kind, start, last)| {
                Some(PendingPeriod {
                    key: PeriodKey {
                        tier,
                        kind,
                        period_start: Timestamp::from_second(start).ok()?,
                    },
                    last_write: Timestamp::from_second(last).ok()?,
                })
            })
            .collect();
        out.sort_by_key(|p| (p.key.period_start, p.key.tier, p.key.kind));
        out
    }
}

//! The store side of the statistics tier: frozen periods and the members of a tier with
//! their boundary values, which both the freeze job ([`crate::freeze`]) and per-connection
//! reads are computed from.

use jiff::Timestamp;
use meterstand_model::{Connection, RegisterKind, Tier};
use meterstand_pseudonym::Pseudonym;
use meterstand_statistics::Row;

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
/// asked for (per register of the kind) and its connection record, if registered. Erased
/// connections are never members; objecting ones are (with their record), and the caller
/// leaves them out.
#[derive(Debug)]
pub struct Member<'a> {
    pub pseudonym: Pseudonym,
    pub connection: Option<&'a Connection>,
    pub values: &'a BoundaryValues,
}

/// Whether a connection may count in analytical outputs: registered or not, it has not
/// objected (`analytics = false`).
pub fn open_to_analysis(connection: Option<&Connection>) -> bool {
    connection.is_none_or(|c| c.analytics)
}

//! Published statistics of one closed period, computed so that no combination of published
//! figures isolates fewer than `k` connections. Pure: the caller (the store's freeze job)
//! supplies the period's contributions and stores the rows; nothing here does I/O.
//!
//! - [`partition`]: one fixed partition of the period's connections into rows of at least
//!   `k`, by postcode4 × profile, small cells merged per postcode, then per region
//!   (postcode2), then into one remainder.
//! - [`coarse_cohort`] and [`freeze_nested`]: a coarser period (a day) is published over the
//!   same cohort as its finer periods (its quarter-hours) unless the two differ by at least
//!   `k` connections.
//! - [`view`]: every coarser grouping is a sum of whole published rows, never recomputed.
//! - [`encode`] / [`decode`]: a compact, stable binary form of a row for storage.
//! - [`attack`]: an attacker over published figures, for tests (also the integration tests).
//!
//! See `DESIGN.md` next to this crate's manifest for the rules and why they hold.

pub mod attack;
mod cohort;
mod encode;
mod partition;
mod view;

use std::fmt;

use meterstand_model::{Postcode4, Profile};
use serde::{Deserialize, Serialize};

pub use cohort::{
    CohortChoice, NestedContribution, NestedStatistics, coarse_cohort, freeze_nested,
};
pub use encode::{DecodeError, ENCODING_VERSION, decode, encode};
pub use partition::{Contribution, Partition, partition};
pub use view::{GroupBy, view, view_key};

/// An opaque member id: the connection's storage pseudonym, or any other stable id. It never
/// leaves this crate in a published row; it only decides set membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberId(pub [u8; 16]);

impl From<u64> for MemberId {
    fn from(n: u64) -> Self {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        MemberId(id)
    }
}

/// The area a published row covers.
///
/// Order (derived, used for row order): postcode areas, regions, unknown postcode, the
/// remainder, and `Any` (only in views).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// One four-digit postcode area.
    Postcode4(Postcode4),
    /// A two-digit region (`postcode4 / 100`, 10..=99): the merged small cells of its
    /// postcodes that were too small on their own.
    Region(u8),
    /// Connections without a registered postcode.
    Unknown,
    /// Everything of the period not covered by another row of the same period.
    Remainder,
    /// All areas: only in views (by profile, the total).
    Any,
}

impl Area {
    /// The region (postcode2) of a postcode area.
    pub fn region_of(p: Postcode4) -> u8 {
        // 1000..=9999 / 100 is 10..=99.
        u8::try_from(p.get() / 100).unwrap_or(u8::MAX)
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Area::Postcode4(p) => write!(f, "{p}"),
            Area::Region(r) => write!(f, "{r:02}"),
            Area::Unknown => f.write_str("unknown"),
            Area::Remainder => f.write_str("rest"),
            Area::Any => f.write_str("*"),
        }
    }
}

/// The profiles a published row covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileCover {
    /// One load profile.
    Profile(Profile),
    /// Connections without a registered profile.
    Unknown,
    /// Several profiles merged (`*`).
    Any,
}

impl fmt::Display for ProfileCover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileCover::Profile(p) => f.write_str(p.as_str()),
            ProfileCover::Unknown => f.write_str("unknown"),
            ProfileCover::Any => f.write_str("*"),
        }
    }
}

/// One published row of one period, granularity and register (or one row of a view).
///
/// Rows order by (area, profile); within one period the pair is unique, so a row's index in
/// the sorted list is a stable storage key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Row {
    pub area: Area,
    pub profile: ProfileCover,
    /// The connections counted: at least `k` (or the whole row is absent).
    pub connections: u32,
    /// Sum of their consumption (Wh or dm³).
    pub consumption: u64,
}

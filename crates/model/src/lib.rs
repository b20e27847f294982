//! The domain of meterstand, free of I/O: connection identifiers (EAN, meter id), OBIS
//! registers and their integer units, readings, storage tiers, consent levels and the
//! local-time calendar that decides on which tier boundaries a reading lies.
//!
//! Identifiers deliberately have a redacting `Debug` and no `Display`: printing one takes an
//! explicit `expose()` call, so a stray `{:?}` in a log line cannot leak personal data.

mod calendar;
mod connection;
mod ean;
mod meter;
mod register;
/// The simulator's load shapes (households by hour of day, with noise): for `meterstand
/// simulate`, the demo, the test kit and the benchmarks, not for the service's own crates.
#[cfg(feature = "sim")]
pub mod sim;
mod tier;

pub use calendar::{Calendar, CalendarError};
pub use connection::{Connection, ConnectionError, Postcode4, Profile};
pub use ean::{Ean, EanError};
pub use meter::{MeterId, MeterIdError};
pub use register::{Register, RegisterKind, Unit, ValueError, format_milli, parse_milli};
pub use tier::{ConsentLevel, Tier, TierSet};

/// One validated register reading: the cumulative value of `register` at `time`, in the
/// register's stored unit (Wh for electricity, dm³ for gas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reading {
    pub register: Register,
    pub time: jiff::Timestamp,
    pub value: u64,
}

/// A validated reading plus the tiers on whose boundary it lies (computed once, at decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TieredReading {
    pub reading: Reading,
    pub tiers: TierSet,
}

/// Seconds in a quarter-hour, the finest grid every tier boundary lies on.
pub const QUARTER_SECONDS: i64 = 900;

//! Payload decoding and validation: turns an MQTT topic and payload into a connection's
//! EAN, meter id and validated readings, or into a reject with a reason. Everything here
//! treats its input as hostile: sizes are bounded before parsing and nothing panics.
//!
//! The wire structure is the same for both formats (`WirePayload`); bincode (2, standard
//! config, through serde) is confined to the `binary` module.

mod binary;
mod reject;
mod topic;
mod wire;

pub use reject::Reject;
pub use topic::{Format, parse_topic};
pub use wire::{WirePayload, WireReading};

use jiff::{SignedDuration, Timestamp};
use meterstand_model::{Calendar, MeterId, Reading, Register, Unit};

/// Bounds on what one message may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_readings: usize,
    /// How far ahead of the receiver's clock a reading may lie (clock skew allowance).
    pub max_future: SignedDuration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 64 * 1024,
            max_readings: 3000,
            max_future: SignedDuration::from_mins(15),
        }
    }
}

pub use meterstand_model::TieredReading as DecodedReading;

/// A validated message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub meter: MeterId,
    pub readings: Vec<DecodedReading>,
}

/// Decodes and validates one payload. A message is accepted whole or rejected whole, with
/// the first reason found.
pub fn decode(
    format: Format,
    payload: &[u8],
    now: Timestamp,
    calendar: &Calendar,
    limits: &Limits,
) -> Result<Decoded, Reject> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Reject::Oversize);
    }
    let wire = match format {
        Format::Json => {
            serde_json::from_slice::<WirePayload<'_>>(payload).map_err(|_| Reject::Malformed)?
        }
        Format::Bincode => binary::decode(payload)?,
    };
    validate(&wire, now, calendar, limits)
}

fn validate(
    wire: &WirePayload<'_>,
    now: Timestamp,
    calendar: &Calendar,
    limits: &Limits,
) -> Result<Decoded, Reject> {
    let meter: MeterId = wire.meter.parse().map_err(|_| Reject::BadMeterId)?;
    if wire.readings.len() > limits.max_readings {
        return Err(Reject::TooManyReadings);
    }
    let latest = now.checked_add(limits.max_future).unwrap_or(Timestamp::MAX);
    let mut readings = Vec::with_capacity(wire.readings.len());
    for r in &wire.readings {
        let register = Register::from_obis(&r.obis).ok_or(Reject::UnknownObis)?;
        let unit = Unit::from_label(&r.unit).ok_or(Reject::WrongUnit)?;
        if unit != register.unit() {
            return Err(Reject::WrongUnit);
        }
        let value = r.value.to_milli()?;
        if r.time.len() > 40 {
            return Err(Reject::BadTime);
        }
        let time: Timestamp = r.time.parse().map_err(|_| Reject::BadTime)?;
        if time > latest {
            return Err(Reject::FutureTime);
        }
        let tiers = calendar.tiers_of(register, time);
        if tiers.is_empty() {
            return Err(Reject::OffBoundary);
        }
        readings.push(DecodedReading {
            reading: Reading {
                register,
                time,
                value,
            },
            tiers,
        });
    }
    Ok(Decoded { meter, readings })
}

/// Encodes a payload (simulator, tests, benchmarks).
pub fn encode(format: Format, payload: &WirePayload<'_>) -> Vec<u8> {
    match format {
        Format::Json => serde_json::to_vec(payload).unwrap_or_default(),
        Format::Bincode => binary::encode(payload),
    }
}

#[cfg(test)]
mod tests;

//! Payload decoding and validation: turns an MQTT topic and payload into a connection's
//! EAN, meter id and validated readings, or into a reject with a reason. Everything here
//! treats its input as hostile: sizes are bounded before parsing and nothing panics.
//!
//! The wire structure is the same for JSON and bincode (`WirePayload`); bincode (2, standard
//! config, through serde) is confined to the `binary` module. Raw DSMR P1 telegrams have
//! their own parser in `p1`; every format gives its readings their tiers through `tiered`.

mod binary;
mod json;
pub mod p1;
mod reject;
mod topic;
mod wire;

/// The JSON fast path alone (`None` where it leaves the payload to serde_json), for the
/// fuzz target that holds it to serde_json; `decode` is what ingest calls.
pub use json::canonical as json_fast_path;
pub use reject::Reject;
pub use topic::{Format, Mode, parse_ingest_topic, parse_topic};
pub use wire::{WirePayload, WireReading};

use jiff::{SignedDuration, Timestamp};
use meterstand_model::{Calendar, MeterId, Reading, Register, Unit};

/// Bounds on what one message may hold. A P1 telegram is bounded by `max_payload_bytes`
/// and, line by line, by `p1::MAX_LINE_BYTES` and `p1::MAX_LINES`.
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
        // UTF-8 checked once for the whole payload: neither path then checks each of its
        // strings on its own (a fifth of decoding a day of readings).
        Format::Json => json::decode(std::str::from_utf8(payload).map_err(|_| Reject::Malformed)?)?,
        Format::Bincode => binary::decode(payload)?,
        Format::P1 => return p1::decode(payload, now, calendar, limits),
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
    let latest = latest_allowed(now, limits);
    let mut readings = Vec::with_capacity(wire.readings.len());
    let mut times = Times::default();
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
        let time = times.parse(&r.time)?;
        readings.push(tiered(
            Reading {
                register,
                time,
                value,
            },
            latest,
            calendar,
        )?);
    }
    Ok(Decoded { meter, readings })
}

/// Parses the reading times of one message. A day of quarter-hours repeats its date and
/// offset 96 times: a time that differs from the one parsed before it only in its hours,
/// minutes and seconds (`YYYY-MM-DDTHH:MM:SS`, the same date, fraction and offset) is that
/// instant moved by the difference in seconds; every other time goes to jiff's parser.
#[derive(Default)]
struct Times<'a> {
    /// The last time parsed: its text, instant and (if in the extended form) time of day.
    last: Option<(&'a str, Timestamp, Option<i64>)>,
}

impl<'a> Times<'a> {
    fn parse(&mut self, text: &'a str) -> Result<Timestamp, Reject> {
        let of_day = time_of_day(text);
        let shifted = match (self.last, of_day) {
            (Some((prev, at, Some(prev_of_day))), Some(of_day))
                if same_but_time_of_day(prev, text) =>
            {
                at.checked_add(SignedDuration::from_secs(of_day - prev_of_day))
                    .ok()
            }
            _ => None,
        };
        let time = match shifted {
            Some(time) => time,
            None => text.parse().map_err(|_| Reject::BadTime)?,
        };
        self.last = Some((text, time, of_day));
        Ok(time)
    }
}

/// Where `HH:MM:SS` sits in `YYYY-MM-DDTHH:MM:SS`.
const HMS: std::ops::Range<usize> = 11..19;

/// The time of day of `YYYY-MM-DDTHH:MM:SS…` in seconds, if the text has that form, the
/// time is 00:00:00 to 23:59:59 (a leap second goes to the parser), a fraction or offset
/// follows, and no annotation.
fn time_of_day(text: &str) -> Option<i64> {
    let t = text.as_bytes();
    let extended = t.len() > HMS.end
        && (t[4], t[7], t[13], t[16]) == (b'-', b'-', b':', b':')
        && matches!(t[10], b'T' | b't' | b' ')
        && !t[HMS.end].is_ascii_digit()
        && !t[HMS.end..].contains(&b'[');
    if !extended {
        return None;
    }
    let two = |at: usize| {
        let (hi, lo) = (t[at].wrapping_sub(b'0'), t[at + 1].wrapping_sub(b'0'));
        (hi < 10 && lo < 10).then_some(i64::from(hi * 10 + lo))
    };
    let (h, m, s) = (two(11)?, two(14)?, two(17)?);
    (h < 24 && m < 60 && s < 60).then_some(h * 3600 + m * 60 + s)
}

/// Whether two times are byte for byte the same outside `HH:MM:SS`: the same date,
/// fraction and offset, so that their instants differ by the difference of their times of
/// day (`prev` was accepted by jiff's parser).
fn same_but_time_of_day(prev: &str, text: &str) -> bool {
    let (p, t) = (prev.as_bytes(), text.as_bytes());
    p.len() == t.len() && p[..HMS.start] == t[..HMS.start] && p[HMS.end..] == t[HMS.end..]
}

/// The latest reading time accepted when the receiver's clock shows `now`.
pub(crate) fn latest_allowed(now: Timestamp, limits: &Limits) -> Timestamp {
    now.checked_add(limits.max_future).unwrap_or(Timestamp::MAX)
}

/// The one place a reading's time is checked and given its tiers, for every format: not
/// after `latest`, and on at least one tier boundary of its register.
pub(crate) fn tiered(
    reading: Reading,
    latest: Timestamp,
    calendar: &Calendar,
) -> Result<DecodedReading, Reject> {
    if reading.time > latest {
        return Err(Reject::FutureTime);
    }
    let tiers = calendar.tiers_of(reading.register, reading.time);
    if tiers.is_empty() {
        return Err(Reject::OffBoundary);
    }
    Ok(DecodedReading { reading, tiers })
}

/// Encodes a JSON or bincode payload (simulator, tests, benchmarks). A P1 telegram is not
/// a `WirePayload` (it holds one time, not a list of readings): `Format::P1` gives an
/// empty payload here, and `p1::encode_dsmr5` writes telegrams.
pub fn encode(format: Format, payload: &WirePayload<'_>) -> Vec<u8> {
    match format {
        Format::Json => serde_json::to_vec(payload).unwrap_or_default(),
        Format::Bincode => binary::encode(payload),
        Format::P1 => Vec::new(),
    }
}

#[cfg(test)]
mod tests;

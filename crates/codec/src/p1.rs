//! DSMR P1 telegrams: the raw text a Dutch (DSMR 2.2 to 5.x) or Belgian (Fluvius e-MUCS)
//! smart meter writes on its P1 port, published on `{prefix}/{ean}/p1`. This module owns
//! the streaming line parser, the telegram CRC, the placement of a telegram's registers on
//! tier boundaries, and a DSMR 5 encoder shared by the simulator, tests and benchmarks.
//!
//! The parser walks the payload once, borrowing one line at a time (no allocation per
//! line), keeps one value per register it knows and skips every other line without
//! interpreting the counts or lengths inside it. Lines and line counts are bounded before
//! anything is read. The equipment id becomes a `MeterId`, whose `Debug` redacts it; no
//! reject carries any part of the input.
//!
//! Times: DSMR 4/5 and e-MUCS stamp local time with a flag, `S` (summer, UTC+2) or `W`
//! (winter, UTC+1), which is converted with that offset and never looked up, so the hour
//! that repeats on the DST night stays two distinct instants. DSMR 2.2/3 telegrams carry no
//! telegram time at all (their electricity registers cannot be placed) and stamp gas with a
//! flagless local time, which is resolved in the calendar's zone only when unambiguous:
//! a time in the repeated or the skipped hour is rejected (`bad_time`), not guessed.

use std::fmt::Write as _;
use std::sync::LazyLock;

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use meterstand_model::{Calendar, MeterId, Reading, Register, Tier, Unit, parse_milli};

use crate::{Decoded, Limits, Reject, latest_allowed, tiered};

/// Longest line accepted, CR excluded. The longest line DSMR allows is the text message
/// `0-0:96.13.0` (1024 octets, hex-encoded to 2048 digits) behind its OBIS code.
pub const MAX_LINE_BYTES: usize = 2112;

/// Most lines accepted in one telegram. A DSMR 5 telegram of a three-phase meter with gas,
/// water and heat channels has about 60.
pub const MAX_LINES: usize = 256;

/// Default `p1.boundary_window`: how long after a quarter-hour boundary a telegram still
/// gives that boundary's electricity reading.
pub const DEFAULT_BOUNDARY_WINDOW: SignedDuration = SignedDuration::from_secs(10);

/// M-Bus channels (`0-n:…`, n = 1..4) a gas meter can sit on.
const CHANNELS: usize = 4;

/// M-Bus device type of a gas meter (`0-n:24.1.0(003)`).
const DEVICE_GAS: u8 = 3;

/// Electricity registers in the order `Telegram::electricity` lists them.
const ELECTRICITY: [Register; 4] = [
    Register::ImportT1,
    Register::ImportT2,
    Register::ExportT1,
    Register::ExportT2,
];

/// Which telegram dialect a payload was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// DSMR 2.2 or 3.0: no version line, no telegram time, no CRC; gas on two lines.
    Dsmr2,
    /// DSMR 4.x, `1-3:0.2.8(4x)`.
    Dsmr4,
    /// DSMR 5.x, `1-3:0.2.8(5x)`.
    Dsmr5,
    /// Fluvius e-MUCS (Belgium, DSMR 5 based), `0-0:96.1.4(5xxxx)`.
    Emucs,
}

impl Version {
    /// Whether a telegram of this version must end in a CRC.
    pub fn has_crc(self) -> bool {
        !matches!(self, Version::Dsmr2)
    }
}

/// One decoded telegram: values as the meter stated them, not yet placed on boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telegram {
    pub version: Version,
    /// Capture time of the telegram (`0-0:1.0.0`); DSMR 2.2/3 telegrams have none.
    pub time: Option<Timestamp>,
    /// The electricity meter's equipment id (`0-0:96.1.1`, hex-decoded).
    pub meter: MeterId,
    /// Electricity registers present, in Wh, in `ImportT1, ImportT2, ExportT1, ExportT2` order.
    pub electricity: Vec<(Register, u64)>,
    /// The gas meter's last reading: its own capture time and the value in dm³.
    pub gas: Option<(Timestamp, u64)>,
}

/// Where a telegram's electricity registers landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Captured within the window after this quarter-hour boundary: readings at it.
    Boundary(Timestamp),
    /// Captured outside every window: no electricity readings; the caller counts it in
    /// `meterstand_ingest_p1_between_boundaries_total`.
    BetweenBoundaries,
    /// The telegram has no capture time (DSMR 2.2/3): its electricity cannot be placed.
    Untimed,
}

/// The readings a telegram gives, in the shape JSON and bincode payloads decode to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub decoded: Decoded,
    pub electricity: Placement,
}

impl Placed {
    pub fn between_boundaries(&self) -> bool {
        self.electricity == Placement::BetweenBoundaries
    }
}

/// `decode` for `Format::P1`: the telegram placed with the default boundary window.
/// Ingest calls `decode_telegram` and `place` itself to use its configured window and to
/// count telegrams between boundaries.
pub(crate) fn decode(
    payload: &[u8],
    now: Timestamp,
    calendar: &Calendar,
    limits: &Limits,
) -> Result<Decoded, Reject> {
    let telegram = decode_telegram(payload, calendar, limits)?;
    Ok(place(telegram, now, calendar, DEFAULT_BOUNDARY_WINDOW, limits)?.decoded)
}

/// Turns a telegram into tiered readings, purely. Electricity: readings at the quarter-hour
/// boundary `b` when `b <= time < b + window` (the registers moved by at most `window`'s
/// worth of consumption since `b`), none otherwise. Gas: one reading when its own capture
/// time lies on a tier boundary (hourly), none otherwise. Tiers come from the same check as
/// JSON readings (`tiered`); a capture time beyond `now + limits.max_future` rejects the
/// telegram (`future_time`).
pub fn place(
    telegram: Telegram,
    now: Timestamp,
    calendar: &Calendar,
    window: SignedDuration,
    limits: &Limits,
) -> Result<Placed, Reject> {
    let latest = latest_allowed(now, limits);
    let mut readings = Vec::with_capacity(telegram.electricity.len() + 1);
    let electricity = match telegram.time {
        None => Placement::Untimed,
        Some(time) if time > latest => return Err(Reject::FutureTime),
        Some(time) => {
            let boundary = calendar.period_start(Tier::Interval, Register::ImportT1, time);
            if time.duration_since(boundary) < window {
                for &(register, value) in &telegram.electricity {
                    let reading = Reading {
                        register,
                        time: boundary,
                        value,
                    };
                    readings.push(tiered(reading, latest, calendar)?);
                }
                Placement::Boundary(boundary)
            } else {
                Placement::BetweenBoundaries
            }
        }
    };
    if let Some((time, value)) = telegram.gas {
        let reading = Reading {
            register: Register::Gas,
            time,
            value,
        };
        match tiered(reading, latest, calendar) {
            Ok(r) => readings.push(r),
            // A gas meter reports every 5 minutes (DSMR 5) or hour; only hours are kept.
            Err(Reject::OffBoundary) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Placed {
        decoded: Decoded {
            meter: telegram.meter,
            readings,
        },
        electricity,
    })
}

/// Decodes and validates one telegram. `calendar` resolves the flagless gas time of DSMR
/// 2.2/3 telegrams. A payload over `limits.max_payload_bytes` is `oversize`; a framing
/// fault (no `/` header, no `!` line, a line over `MAX_LINE_BYTES`, more than `MAX_LINES`
/// lines, bytes after the CRC line) is `bad_telegram`. Where a CRC is present (or the
/// version requires one) it is checked before any fault in the lines is reported, so a
/// corrupted telegram is a `crc_mismatch` whatever the corruption looks like.
pub fn decode_telegram(
    payload: &[u8],
    calendar: &Calendar,
    limits: &Limits,
) -> Result<Telegram, Reject> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Reject::Oversize);
    }
    if payload.first() != Some(&b'/') {
        return Err(Reject::BadTelegram);
    }
    let mut parser = Parser::default();
    // The first fault found in a line; reported only once the CRC has had its say.
    let mut fault: Option<Reject> = None;
    let mut pos = 0;
    let mut count = 0;
    let (bang, crc_field, after) = loop {
        let rest = payload.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            return Err(Reject::BadTelegram);
        }
        // Look no further than a line may reach: a missing newline costs one bounded scan.
        let scan = &rest[..rest.len().min(MAX_LINE_BYTES + 2)];
        let (raw, next) = match scan.iter().position(|&b| b == b'\n') {
            Some(n) => (&rest[..n], pos + n + 1),
            None if rest.len() <= MAX_LINE_BYTES + 1 => (rest, payload.len()),
            None => return Err(Reject::BadTelegram),
        };
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.len() > MAX_LINE_BYTES {
            return Err(Reject::BadTelegram);
        }
        count += 1;
        if count > MAX_LINES {
            return Err(Reject::BadTelegram);
        }
        if count == 1 {
            if !valid_header(line) {
                fault = Some(Reject::BadTelegram);
            }
        } else if let Some(crc) = line.strip_prefix(b"!") {
            break (pos, crc, next);
        } else if fault.is_none()
            && let Err(e) = parser.line(line, calendar)
        {
            fault = Some(e);
        }
        pos = next;
    };

    match crc_field {
        [] => {
            if parser.version.is_some_and(Version::has_crc) {
                return Err(Reject::CrcMismatch);
            }
        }
        field => {
            let covered = payload.get(..=bang).unwrap_or_default();
            if parse_hex_u16(field) != Some(crc16(covered)) {
                return Err(Reject::CrcMismatch);
            }
        }
    }
    let trailing = payload.get(after..).unwrap_or_default();
    if !trailing.iter().all(|&b| b == b'\r' || b == b'\n') {
        return Err(Reject::BadTelegram);
    }
    if let Some(e) = fault {
        return Err(e);
    }
    parser.finish()
}

/// `/XXX5…`: a slash, a three-letter manufacturer code, a baud-rate digit and an
/// identification, all printable ASCII.
fn valid_header(line: &[u8]) -> bool {
    line.len() >= 5
        && line[1..4].iter().all(u8::is_ascii_alphabetic)
        && line[4].is_ascii_digit()
        && line.iter().all(|b| (0x20..0x7f).contains(b))
}

/// What the next line must be, after a DSMR 2.2/3 two-line object.
#[derive(Debug, Default, Clone, Copy)]
enum Pending {
    #[default]
    Nothing,
    /// The value line of a gas reading on this channel, captured at this time.
    Gas(usize, Timestamp),
    /// The value line of a channel reading that is not gas: skipped.
    Skip,
}

/// What the lines said so far: at most one value per register, channel and field.
#[derive(Debug, Default)]
struct Parser {
    version: Option<Version>,
    time: Option<Timestamp>,
    meter: Option<MeterId>,
    electricity: [Option<u64>; 4],
    gas: [Option<(Timestamp, u64)>; CHANNELS],
    /// The channel carries a reading that is not gas (unit other than m3).
    not_gas: [bool; CHANNELS],
    device: [Option<u8>; CHANNELS],
    pending: Pending,
}

impl Parser {
    fn line(&mut self, line: &[u8], calendar: &Calendar) -> Result<(), Reject> {
        match std::mem::take(&mut self.pending) {
            Pending::Nothing => {}
            Pending::Gas(channel, time) => {
                let [value] = groups(line).ok_or(Reject::BadTelegram)?;
                // The unit was named on the line before; some meters repeat it here.
                let value = match split_unit(value) {
                    None => milli(value)?,
                    Some((number, b"m3")) => milli(number)?,
                    Some(_) => return Err(Reject::WrongUnit),
                };
                return set_once(&mut self.gas[channel], (time, value));
            }
            Pending::Skip if line.first() == Some(&b'(') => return Ok(()),
            Pending::Skip => {}
        }
        let Some(open) = line.iter().position(|&b| b == b'(') else {
            // Blank lines and lines without a value carry nothing we keep.
            return Ok(());
        };
        let (obis, body) = line.split_at(open);
        match obis {
            b"1-3:0.2.8" => {
                let [v] = groups(body).ok_or(Reject::BadTelegram)?;
                let version = match v {
                    [b'4', d] if d.is_ascii_digit() => Version::Dsmr4,
                    [b'5', d] if d.is_ascii_digit() => Version::Dsmr5,
                    _ => return Err(Reject::BadTelegram),
                };
                set_once(&mut self.version, version)
            }
            b"0-0:96.1.4" => {
                let [v] = groups(body).ok_or(Reject::BadTelegram)?;
                if v.len() != 5 || v[0] != b'5' || !v.iter().all(u8::is_ascii_digit) {
                    return Err(Reject::BadTelegram);
                }
                set_once(&mut self.version, Version::Emucs)
            }
            b"0-0:1.0.0" => {
                let [t] = groups(body).ok_or(Reject::BadTime)?;
                set_once(&mut self.time, flagged_time(t)?)
            }
            b"0-0:96.1.1" => {
                let [id] = groups(body).ok_or(Reject::BadMeterId)?;
                set_once(&mut self.meter, meter_id(id)?)
            }
            _ => {
                if let Some(i) = ELECTRICITY.iter().position(|r| r.obis().as_bytes() == obis) {
                    let [v] = groups(body).ok_or(Reject::BadTelegram)?;
                    let value = value_in(v, Unit::Kwh)?;
                    return set_once(&mut self.electricity[i], value);
                }
                self.channel_line(obis, body, calendar)
            }
        }
    }

    /// A line of an M-Bus channel (gas, or another kind of meter): its device type, a
    /// DSMR 4/5 or e-MUCS gas reading, or the header of a DSMR 2.2/3 one.
    fn channel_line(
        &mut self,
        obis: &[u8],
        body: &[u8],
        calendar: &Calendar,
    ) -> Result<(), Reject> {
        match channel_obis(obis) {
            Some((channel, b"24.1.0")) => {
                let [d] = groups(body).ok_or(Reject::BadTelegram)?;
                set_once(&mut self.device[channel], device_type(d)?)
            }
            // DSMR 4/5 gas, and e-MUCS's 24.2.3 (temperature-corrected volume).
            Some((channel, b"24.2.1" | b"24.2.3")) => {
                let [t, v] = groups(body).ok_or(Reject::BadTelegram)?;
                let time = flagged_time(t)?;
                match split_unit(v) {
                    Some((number, b"m3")) => {
                        set_once(&mut self.gas[channel], (time, milli(number)?))
                    }
                    // Heat in GJ and the like: another kind of meter on this channel.
                    _ => {
                        self.not_gas[channel] = true;
                        Ok(())
                    }
                }
            }
            // DSMR 2.2/3: `(time)(00)(60)(1)(0-n:24.2.1)(m3)`, value on the next line.
            // The `(1)` would be the count of values that follow; it is not trusted:
            // exactly one value line is taken.
            Some((channel, b"24.3.0")) => {
                let [t, _, _, _, register, unit] = groups(body).ok_or(Reject::BadTelegram)?;
                let gas = matches!(channel_obis(register), Some((_, b"24.2.1"))) && unit == b"m3";
                self.pending = if gas {
                    Pending::Gas(channel, local_time(t, calendar)?)
                } else {
                    self.not_gas[channel] = true;
                    Pending::Skip
                };
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<Telegram, Reject> {
        if !matches!(self.pending, Pending::Nothing) {
            return Err(Reject::BadTelegram);
        }
        let version = self.version.unwrap_or(Version::Dsmr2);
        if version != Version::Dsmr2 && self.time.is_none() {
            return Err(Reject::BadTelegram);
        }
        let meter = self.meter.ok_or(Reject::BadMeterId)?;
        let electricity: Vec<(Register, u64)> = ELECTRICITY
            .iter()
            .zip(self.electricity)
            .filter_map(|(r, v)| v.map(|v| (*r, v)))
            .collect();
        if electricity.is_empty() {
            return Err(Reject::BadTelegram);
        }
        let mut gas = None;
        for channel in 0..CHANNELS {
            let is_gas =
                !self.not_gas[channel] && self.device[channel].is_none_or(|d| d == DEVICE_GAS);
            if let (true, Some(reading)) = (is_gas, self.gas[channel]) {
                // Two gas meters on one connection: which one is billed cannot be told.
                if gas.replace(reading).is_some() {
                    return Err(Reject::BadTelegram);
                }
            }
        }
        Ok(Telegram {
            version,
            time: self.time,
            meter,
            electricity,
            gas,
        })
    }
}

/// A field known to appear once per telegram; a second occurrence rejects the telegram.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), Reject> {
    if slot.is_some() {
        return Err(Reject::BadTelegram);
    }
    *slot = Some(value);
    Ok(())
}

/// Exactly `N` parenthesised groups, `(a)(b)…`, with nothing around or between them.
fn groups<const N: usize>(mut body: &[u8]) -> Option<[&[u8]; N]> {
    let mut out: [&[u8]; N] = [&[]; N];
    for slot in &mut out {
        let inner = body.strip_prefix(b"(")?;
        let close = inner.iter().position(|&b| b == b')')?;
        let content = &inner[..close];
        if content.contains(&b'(') {
            return None;
        }
        *slot = content;
        body = &inner[close + 1..];
    }
    body.is_empty().then_some(out)
}

/// `0-n:c.d.e` with n = 1..4: the channel index (0-based) and `c.d.e`.
fn channel_obis(obis: &[u8]) -> Option<(usize, &[u8])> {
    match obis {
        [b'0', b'-', n @ b'1'..=b'4', b':', rest @ ..] => Some((usize::from(n - b'1'), rest)),
        _ => None,
    }
}

fn device_type(d: &[u8]) -> Result<u8, Reject> {
    if d.is_empty() || d.len() > 3 || !d.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadTelegram);
    }
    d.iter()
        .try_fold(0u8, |acc, b| acc.checked_mul(10)?.checked_add(b - b'0'))
        .ok_or(Reject::BadTelegram)
}

/// `number*unit` split at the star.
fn split_unit(v: &[u8]) -> Option<(&[u8], &[u8])> {
    let star = v.iter().position(|&b| b == b'*')?;
    Some((&v[..star], &v[star + 1..]))
}

/// A value with its unit, which must be `unit`.
fn value_in(v: &[u8], unit: Unit) -> Result<u64, Reject> {
    let (number, label) = split_unit(v).ok_or(Reject::WrongUnit)?;
    let label = std::str::from_utf8(label).map_err(|_| Reject::WrongUnit)?;
    if Unit::from_label(label) != Some(unit) {
        return Err(Reject::WrongUnit);
    }
    milli(number)
}

/// A decimal with at most 3 decimals in thousandths, as JSON values are parsed.
fn milli(number: &[u8]) -> Result<u64, Reject> {
    if number.len() > 32 {
        return Err(Reject::BadValue);
    }
    let text = std::str::from_utf8(number).map_err(|_| Reject::BadValue)?;
    Ok(parse_milli(text)?)
}

/// `YYMMDDhhmmss` as a civil time in 2000–2099.
fn civil(digits: &[u8]) -> Result<DateTime, Reject> {
    if digits.len() != 12 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadTime);
    }
    let two = |i: usize| ((digits[i] - b'0') * 10 + (digits[i + 1] - b'0')) as i8;
    DateTime::new(
        2000 + i16::from(two(0)),
        two(2),
        two(4),
        two(6),
        two(8),
        two(10),
        0,
    )
    .map_err(|_| Reject::BadTime)
}

/// `YYMMDDhhmmssX`, X = `S` (UTC+2) or `W` (UTC+1): converted with the flag's offset.
fn flagged_time(t: &[u8]) -> Result<Timestamp, Reject> {
    let (flag, digits) = t.split_last().ok_or(Reject::BadTime)?;
    let offset = match flag {
        b'S' => Offset::constant(2),
        b'W' => Offset::constant(1),
        _ => return Err(Reject::BadTime),
    };
    offset
        .to_timestamp(civil(digits)?)
        .map_err(|_| Reject::BadTime)
}

/// DSMR 2.2/3 gas time: flagless local time in the calendar's zone, accepted only when it
/// names one instant (not in the hour repeated or skipped on a DST night).
fn local_time(t: &[u8], calendar: &Calendar) -> Result<Timestamp, Reject> {
    calendar
        .time_zone()
        .to_ambiguous_timestamp(civil(t)?)
        .unambiguous()
        .map_err(|_| Reject::BadTime)
}

/// The equipment id: hex-encoded ASCII, decoded on the stack. Neither the hex nor the
/// decoded text is ever part of an error.
fn meter_id(hex: &[u8]) -> Result<MeterId, Reject> {
    let mut buf = [0u8; MeterId::MAX_LEN];
    if hex.is_empty() || !hex.len().is_multiple_of(2) || hex.len() / 2 > buf.len() {
        return Err(Reject::BadMeterId);
    }
    for (out, pair) in buf.iter_mut().zip(hex.chunks_exact(2)) {
        let byte = (hex_digit(pair[0]).ok_or(Reject::BadMeterId)? << 4)
            | hex_digit(pair[1]).ok_or(Reject::BadMeterId)?;
        *out = byte;
    }
    let text = std::str::from_utf8(&buf[..hex.len() / 2]).map_err(|_| Reject::BadMeterId)?;
    text.parse().map_err(|_| Reject::BadMeterId)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The 4 hex digits after `!`.
fn parse_hex_u16(field: &[u8]) -> Option<u16> {
    if field.len() != 4 {
        return None;
    }
    field
        .iter()
        .try_fold(0u16, |acc, &b| Some(acc << 4 | u16::from(hex_digit(b)?)))
}

mod crc;
pub use crc::crc16;

mod encode;
pub use encode::encode_dsmr5;

#[cfg(test)]
mod tests;

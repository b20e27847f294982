//! JSON payloads: a fast path for the form publishers send, serde_json for everything else.
//!
//! Half of batched ingest's CPU went to serde_json's generic machinery for eight short
//! strings per reading (field names matched through visitors, each string scanned for
//! escapes, a `Cow` per string). `canonical` reads the payload's one shape directly: the
//! two top-level fields and the four fields of each reading, in any order, with any JSON
//! whitespace, and every value a string without escapes. It does not judge: on anything else
//! (an escape, a control character, a number, an unknown, missing or repeated field, bad
//! syntax) it gives up and serde_json, the reference, decides. What it accepts serde_json
//! accepts and reads the same (a property test and a fuzz target hold it to that), so a
//! payload is read the same whichever path took it (docs/design.md, "Decoding JSON").

use std::borrow::Cow;

use crate::Reject;
use crate::wire::{WirePayload, WireReading, WireValue};

/// Reads a JSON payload: the fast path, or serde_json where the fast path gives up.
pub(crate) fn decode(text: &str) -> Result<WirePayload<'_>, Reject> {
    match canonical(text) {
        Some(payload) => Ok(payload),
        None => serde_json::from_str(text).map_err(|_| Reject::Malformed),
    }
}

/// The payload if it has the canonical shape (see the module), `None` otherwise.
pub fn canonical(text: &str) -> Option<WirePayload<'_>> {
    let mut c = Cursor { text, at: 0 };
    let (mut meter, mut readings) = (None, None);
    c.object(|c, key| match key {
        "meter" if meter.is_none() => {
            meter = Some(c.string()?);
            Some(())
        }
        "readings" if readings.is_none() => {
            readings = Some(c.readings()?);
            Some(())
        }
        _ => None,
    })?;
    c.whitespace();
    (c.at == text.len()).then_some(())?;
    Some(WirePayload {
        meter: Cow::Borrowed(meter?),
        readings: readings?,
    })
}

/// The first quote, backslash or control character in `bytes`, eight bytes at a time while
/// eight remain: in `found` a byte's high bit is set where that byte is one of them; bits
/// above the first find may be false ones (a borrow), never below, so the lowest is right;
/// a byte of 0x80 or more is never flagged (`& !w`).
fn stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    let zero_in = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let mut words = bytes.chunks_exact(8);
    for (i, chunk) in words.by_ref().enumerate() {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let found = zero_in(w ^ (ONES * u64::from(b'"')))
            | zero_in(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if found != 0 {
            return Some(i * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    let tail = words.remainder();
    let at = tail
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(bytes.len() - tail.len() + at)
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        self.whitespace();
        let next = self.peek() == Some(byte);
        self.at += usize::from(next);
        next
    }

    /// A string without escapes or control characters (serde_json rejects the latter).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"').then_some(())?;
        let start = self.at;
        let rest = self.text.as_bytes().get(start..)?;
        let len = stop(rest)?;
        (rest[len] == b'"').then_some(())?;
        self.at = start + len + 1;
        // Both ends sit next to an ASCII quote, so on character boundaries.
        self.text.get(start..start + len)
    }

    /// `{ "key": value, ... }`, each value read by `field` (which gives up on a key it does
    /// not know or has seen).
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{').then_some(())?;
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':').then_some(())?;
            field(self, key)?;
            if self.eat(b'}') {
                return Some(());
            }
            self.eat(b',').then_some(())?;
        }
    }

    fn readings(&mut self) -> Option<Vec<WireReading<'a>>> {
        self.eat(b'[').then_some(())?;
        if self.eat(b']') {
            return Some(Vec::new());
        }
        // A reading takes about 80 bytes: one per 64 bytes left over-estimates, so that a
        // day of quarter-hours is one allocation (at most 1,024 for a 64 KiB payload).
        let mut readings = Vec::with_capacity((self.text.len() - self.at) / 64);
        loop {
            readings.push(self.reading()?);
            if self.eat(b']') {
                return Some(readings);
            }
            self.eat(b',').then_some(())?;
        }
    }

    /// A reading: its fields in the usual order read straight through, any other order
    /// (or a repeated or unknown field, which gives up) field by field.
    fn reading(&mut self) -> Option<WireReading<'a>> {
        let start = self.at;
        if let Some(reading) = self.usual_reading() {
            return Some(reading);
        }
        self.at = start;
        let (mut obis, mut time, mut value, mut unit) = (None, None, None, None);
        self.object(|c, key| {
            let slot = match key {
                "obis" => &mut obis,
                "time" => &mut time,
                "value" => &mut value,
                "unit" => &mut unit,
                _ => return None,
            };
            slot.is_none().then_some(())?;
            *slot = Some(c.string()?);
            Some(())
        })?;
        Some(wire_reading(obis?, time?, value?, unit?))
    }

    /// `{"obis": …, "time": …, "value": …, "unit": …}` in that order.
    fn usual_reading(&mut self) -> Option<WireReading<'a>> {
        self.eat(b'{').then_some(())?;
        let obis = self.field(b"\"obis\"")?;
        self.eat(b',').then_some(())?;
        let time = self.field(b"\"time\"")?;
        self.eat(b',').then_some(())?;
        let value = self.field(b"\"value\"")?;
        self.eat(b',').then_some(())?;
        let unit = self.field(b"\"unit\"")?;
        self.eat(b'}').then_some(())?;
        Some(wire_reading(obis, time, value, unit))
    }

    /// `"key": "string"` for a key given with its quotes (compared as bytes: a key with
    /// an escape in it is not this one here, and goes the long way).
    fn field<const N: usize>(&mut self, quoted_key: &[u8; N]) -> Option<&'a str> {
        self.whitespace();
        let next = self.text.as_bytes().get(self.at..self.at + N)?;
        (next == quoted_key).then_some(())?;
        self.at += N;
        self.eat(b':').then_some(())?;
        self.string()
    }
}

fn wire_reading<'a>(
    obis: &'a str,
    time: &'a str,
    value: &'a str,
    unit: &'a str,
) -> WireReading<'a> {
    WireReading {
        obis: Cow::Borrowed(obis),
        time: Cow::Borrowed(time),
        value: WireValue::Text(Cow::Borrowed(value)),
        unit: Cow::Borrowed(unit),
    }
}

#[cfg(test)]
mod tests;

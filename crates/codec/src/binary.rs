//! The one place bincode is used: standard config (varint integers), through serde.
//! Values travel as decimal strings, as in JSON; bincode has no untagged enums, so the value
//! is encoded as its text.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::Reject;
use crate::wire::{WirePayload, WireReading, WireValue};

#[derive(Serialize, Deserialize)]
struct BinPayload<'a> {
    #[serde(borrow)]
    meter: Cow<'a, str>,
    #[serde(borrow)]
    readings: Vec<BinReading<'a>>,
}

#[derive(Serialize, Deserialize)]
struct BinReading<'a> {
    #[serde(borrow)]
    obis: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
    #[serde(borrow)]
    unit: Cow<'a, str>,
}

/// Bincode's own cap on what a length prefix may claim; payloads are bounded before this.
const LIMIT: usize = 16 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

pub(crate) fn decode(payload: &[u8]) -> Result<WirePayload<'_>, Reject> {
    let (bin, used): (BinPayload<'_>, usize) =
        bincode::serde::borrow_decode_from_slice(payload, config())
            .map_err(|_| Reject::Malformed)?;
    if used != payload.len() {
        return Err(Reject::Malformed);
    }
    Ok(WirePayload {
        meter: bin.meter,
        readings: bin
            .readings
            .into_iter()
            .map(|r| WireReading {
                obis: r.obis,
                time: r.time,
                value: WireValue::Text(r.value),
                unit: r.unit,
            })
            .collect(),
    })
}

pub(crate) fn encode(payload: &WirePayload<'_>) -> Vec<u8> {
    let bin = BinPayload {
        meter: Cow::Borrowed(&payload.meter),
        readings: payload
            .readings
            .iter()
            .map(|r| BinReading {
                obis: Cow::Borrowed(&r.obis),
                time: Cow::Borrowed(&r.time),
                value: match &r.value {
                    WireValue::Text(t) => Cow::Borrowed(t.as_ref()),
                    WireValue::Number(n) => Cow::Owned(format!("{n}")),
                },
                unit: Cow::Borrowed(&r.unit),
            })
            .collect(),
    };
    bincode::serde::encode_to_vec(&bin, config()).unwrap_or_default()
}

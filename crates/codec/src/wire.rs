use std::borrow::Cow;

use meterstand_model::{Register, format_milli, parse_milli};
use serde::{Deserialize, Serialize};

use crate::Reject;

/// The payload as published (DESIGN §4). Strings borrow from the input where they can.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WirePayload<'a> {
    #[serde(borrow)]
    pub meter: Cow<'a, str>,
    #[serde(borrow)]
    pub readings: Vec<WireReading<'a>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireReading<'a> {
    #[serde(borrow)]
    pub obis: Cow<'a, str>,
    #[serde(borrow)]
    pub time: Cow<'a, str>,
    #[serde(borrow)]
    pub value: WireValue<'a>,
    #[serde(borrow)]
    pub unit: Cow<'a, str>,
}

/// A register value: a decimal string, or (JSON only) a number.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum WireValue<'a> {
    Text(Cow<'a, str>),
    Number(f64),
}

/// By hand rather than `#[serde(untagged)]`, which buffers every value into serde's generic
/// `Content` and tries each variant in turn: a string or a number is all a value can be, and
/// the deserializer says which it saw.
impl<'de: 'a, 'a> Deserialize<'de> for WireValue<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WireValue<'a>, D::Error> {
        struct Value;
        impl<'de> serde::de::Visitor<'de> for Value {
            type Value = WireValue<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decimal string or a number")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(WireValue::Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireValue::Text(Cow::Owned(v.to_owned())))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(WireValue::Number(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(WireValue::Number(v as f64))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(WireValue::Number(v as f64))
            }
        }
        d.deserialize_any(Value)
    }
}

impl WireValue<'_> {
    pub(crate) fn to_milli(&self) -> Result<u64, Reject> {
        match self {
            WireValue::Text(t) if t.len() <= 32 => Ok(parse_milli(t)?),
            WireValue::Text(_) => Err(Reject::BadValue),
            WireValue::Number(n) => {
                if !n.is_finite() {
                    return Err(Reject::BadValue);
                }
                if *n < 0.0 {
                    return Err(Reject::NegativeValue);
                }
                if *n > Register::MAX_PUBLISHED as f64 {
                    return Err(Reject::AbsurdValue);
                }
                let milli = n * 1000.0;
                let rounded = milli.round();
                // A fourth decimal moves the value by at least 0.1 thousandth; float noise
                // on a 3-decimal number stays far below 0.001.
                if (milli - rounded).abs() > 1e-3 {
                    return Err(Reject::BadValue);
                }
                Ok(rounded as u64)
            }
        }
    }
}

impl<'a> WireReading<'a> {
    /// The wire form of a stored reading: value as a decimal string in kWh or m³.
    pub fn from_reading(r: &meterstand_model::Reading) -> WireReading<'static> {
        WireReading {
            obis: Cow::Borrowed(r.register.obis()),
            time: Cow::Owned(r.time.to_string()),
            value: WireValue::Text(Cow::Owned(format_milli(r.value))),
            unit: Cow::Borrowed(r.register.unit().label()),
        }
    }
}

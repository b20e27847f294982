//! Fleets of simulated connections ([`meterstand_model::sim::SimMeter`]) and the MQTT
//! messages they publish.

use jiff::Timestamp;
use meterstand_codec::{Format, WirePayload, WireReading};
use meterstand_model::Reading;
use meterstand_model::sim::SimMeter;

/// `n` simulated connections drawn from a seed.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub meters: Vec<SimMeter>,
}

impl Fleet {
    pub fn new(seed: u64, n: u64) -> Fleet {
        Fleet {
            meters: (0..n).map(|i| SimMeter::new(i, seed)).collect(),
        }
    }

    /// Every meter's messages for the quarter-hour ending at `t`: `(meter index, topic,
    /// payload, readings)`.
    pub fn step(
        &mut self,
        t: Timestamp,
        format: Format,
    ) -> Vec<(usize, String, Vec<u8>, Vec<Reading>)> {
        self.meters
            .iter_mut()
            .enumerate()
            .map(|(i, m)| {
                let readings = m.step(t);
                let topic = topic(m.ean.expose(), format);
                let body = payload(format, &m.meter_id, &readings);
                (i, topic, body, readings)
            })
            .collect()
    }
}

/// `meters/{ean}/{json|bincode}`.
pub fn topic(ean: &str, format: Format) -> String {
    format!("meters/{ean}/{}", format.as_str())
}

/// A payload in `format`, as a metering company would publish it.
pub fn payload(format: Format, meter: &str, readings: &[Reading]) -> Vec<u8> {
    let payload = WirePayload {
        meter: meter.into(),
        readings: readings.iter().map(WireReading::from_reading).collect(),
    };
    meterstand_codec::encode(format, &payload)
}

pub fn json_payload(meter: &str, readings: &[Reading]) -> Vec<u8> {
    payload(Format::Json, meter, readings)
}

pub fn bincode_payload(meter: &str, readings: &[Reading]) -> Vec<u8> {
    payload(Format::Bincode, meter, readings)
}

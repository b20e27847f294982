#![no_main]
//! Any bytes as a json payload: decode must return a reading set or a reject, never panic.
use libfuzzer_sys::fuzz_target;
use meterstand_codec::{Format, Limits, decode};
use meterstand_model::Calendar;

fuzz_target!(|data: &[u8]| {
    let now = jiff::Timestamp::from_second(1_795_734_000).expect("valid");
    if let Ok(decoded) = decode(Format::Json, data, now, &Calendar::amsterdam(), &Limits::default()) {
        assert!(decoded.readings.iter().all(|r| !r.tiers.is_empty()));
    }
});

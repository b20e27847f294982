#![no_main]
//! Any bytes as a json payload: decode must return a reading set or a reject, never panic;
//! and what the JSON fast path accepts, serde_json accepts and reads the same.
use libfuzzer_sys::fuzz_target;
use meterstand_codec::{Format, Limits, WirePayload, decode, json_fast_path};
use meterstand_model::Calendar;

fuzz_target!(|data: &[u8]| {
    let now = jiff::Timestamp::from_second(1_795_734_000).expect("valid");
    if let Ok(decoded) = decode(Format::Json, data, now, &Calendar::amsterdam(), &Limits::default()) {
        assert!(decoded.readings.iter().all(|r| !r.tiers.is_empty()));
    }
    if let Some(fast) = std::str::from_utf8(data).ok().and_then(json_fast_path) {
        let reference = serde_json::from_slice::<WirePayload<'_>>(data).ok();
        assert_eq!(Some(fast), reference);
    }
});

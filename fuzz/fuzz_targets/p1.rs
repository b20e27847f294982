#![no_main]
//! Any bytes as a P1 telegram: decode and placement must give readings or a reject, never
//! panic, and every placed reading lies on a tier boundary.
use libfuzzer_sys::fuzz_target;
use meterstand_codec::{Limits, p1};
use meterstand_model::Calendar;

fuzz_target!(|data: &[u8]| {
    let now = jiff::Timestamp::from_second(1_795_734_000).expect("valid");
    let calendar = Calendar::amsterdam();
    let limits = Limits::default();
    if let Ok(telegram) = p1::decode_telegram(data, &calendar, &limits) {
        let window = p1::DEFAULT_BOUNDARY_WINDOW;
        if let Ok(placed) = p1::place(telegram, now, &calendar, window, &limits) {
            assert!(placed.decoded.readings.iter().all(|r| !r.tiers.is_empty()));
        }
    }
});

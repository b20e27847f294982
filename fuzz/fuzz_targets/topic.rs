#![no_main]
//! Any topic string: parse_topic accepts only prefix/valid-EAN/format.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(topic) = std::str::from_utf8(data) {
        if let Ok((ean, _)) = meterstand_codec::parse_topic("meters", topic) {
            assert!(topic.contains(ean.expose()));
        }
    }
});

use std::borrow::Cow;

use jiff::Timestamp;
use meterstand_model::{Calendar, Ean, Reading, Register, Tier};
use proptest::prelude::*;

use super::*;
use crate::wire::WireValue;

fn now() -> Timestamp {
    "2026-11-27T12:00:00Z".parse().expect("valid")
}

fn json(payload: &str) -> Result<Decoded, Reject> {
    decode(
        Format::Json,
        payload.as_bytes(),
        now(),
        &Calendar::amsterdam(),
        &Limits::default(),
    )
}

fn one(obis: &str, time: &str, value: &str, unit: &str) -> String {
    format!(
        r#"{{"meter":"E0031003262764316","readings":[{{"obis":"{obis}","time":"{time}","value":{value},"unit":"{unit}"}}]}}"#
    )
}

#[test]
fn accepts_the_design_example() {
    let d = json(&one(
        "1-0:1.8.1",
        "2026-11-26T23:15:00Z",
        "\"12345.678\"",
        "kWh",
    ))
    .expect("valid");
    assert_eq!(d.meter.expose(), "E0031003262764316");
    assert_eq!(d.readings.len(), 1);
    assert_eq!(d.readings[0].reading.register, Register::ImportT1);
    assert_eq!(d.readings[0].reading.value, 12_345_678);
    assert!(d.readings[0].tiers.contains(Tier::Interval));
    // Numbers are accepted too, and gas in m3 is stored in dm3.
    let d = json(&one("0-1:24.2.1", "2026-11-26T23:00:00Z", "4321.5", "m3")).expect("valid");
    assert_eq!(d.readings[0].reading.value, 4_321_500);
    assert!(d.readings[0].tiers.contains(Tier::Day));
}

#[test]
fn every_reject_reason() {
    let t = "2026-11-26T23:15:00Z";
    let cases: Vec<(String, Reject)> = vec![
        ("{not json".into(), Reject::Malformed),
        (r#"{"meter":"E1"}"#.into(), Reject::Malformed),
        (
            one("1-0:1.8.1", t, "\"1\"", "kWh").replace("E0031003262764316", "E 1"),
            Reject::BadMeterId,
        ),
        (one("1-0:9.9.9", t, "\"1\"", "kWh"), Reject::UnknownObis),
        (one("1-0:1.8.1", t, "\"1\"", "m3"), Reject::WrongUnit),
        (one("1-0:1.8.1", t, "\"1\"", "MWh"), Reject::WrongUnit),
        (
            one("0-1:24.2.1", "2026-11-26T23:00:00Z", "\"1\"", "kWh"),
            Reject::WrongUnit,
        ),
        (
            one("1-0:1.8.1", t, "\"-1.5\"", "kWh"),
            Reject::NegativeValue,
        ),
        (one("1-0:1.8.1", t, "-1.5", "kWh"), Reject::NegativeValue),
        (one("1-0:1.8.1", t, "\"1.2345\"", "kWh"), Reject::BadValue),
        (one("1-0:1.8.1", t, "1.2345", "kWh"), Reject::BadValue),
        (one("1-0:1.8.1", t, "\"lots\"", "kWh"), Reject::BadValue),
        (
            one("1-0:1.8.1", t, "\"999999999999\"", "kWh"),
            Reject::AbsurdValue,
        ),
        (one("1-0:1.8.1", t, "1e300", "kWh"), Reject::AbsurdValue),
        (
            one("1-0:1.8.1", "yesterday", "\"1\"", "kWh"),
            Reject::BadTime,
        ),
        (
            one("1-0:1.8.1", "2026-11-27T13:00:00Z", "\"1\"", "kWh"),
            Reject::FutureTime,
        ),
        (
            one("1-0:1.8.1", "2026-11-26T23:07:00Z", "\"1\"", "kWh"),
            Reject::OffBoundary,
        ),
    ];
    for (payload, expected) in cases {
        assert_eq!(json(&payload), Err(expected), "payload {payload}");
    }

    let limits = Limits {
        max_payload_bytes: 50,
        ..Limits::default()
    };
    let payload = one("1-0:1.8.1", t, "\"1\"", "kWh");
    assert_eq!(
        decode(
            Format::Json,
            payload.as_bytes(),
            now(),
            &Calendar::amsterdam(),
            &limits
        ),
        Err(Reject::Oversize)
    );
    let limits = Limits {
        max_readings: 0,
        ..Limits::default()
    };
    assert_eq!(
        decode(
            Format::Json,
            payload.as_bytes(),
            now(),
            &Calendar::amsterdam(),
            &limits
        ),
        Err(Reject::TooManyReadings)
    );
    assert_eq!(
        decode(
            Format::Bincode,
            b"\xff\xff\xff",
            now(),
            &Calendar::amsterdam(),
            &Limits::default()
        ),
        Err(Reject::Malformed)
    );

    let ean = Ean::from_body(87_100_000_000_000_001).expect("fits");
    let good = format!("meters/{}/json", ean.expose());
    assert_eq!(parse_topic("meters", &good), Ok((ean, Format::Json)));
    assert_eq!(
        parse_topic("meters", &good.replace("json", "p1")),
        Ok((ean, Format::P1))
    );
    // Correction topics are not decoded here yet.
    assert_eq!(
        parse_topic("meters", &good.replace("json", "correction/json")),
        Err(Reject::BadTopic)
    );
    assert_eq!(
        parse_topic("meters", "meters/871000000000000010/json"),
        Err(Reject::BadEan)
    );
    assert_eq!(
        parse_topic("meters", &good.replace("json", "xml")),
        Err(Reject::BadTopic)
    );
    assert_eq!(parse_topic("meters", "other/x/json"), Err(Reject::BadTopic));
    assert_eq!(parse_topic("meters", "meters/json"), Err(Reject::BadTopic));
}

#[test]
fn reject_messages_carry_no_input() {
    for r in Reject::ALL {
        assert!(!r.to_string().contains("E003"));
        assert!(!r.reason().is_empty());
    }
}

fn reading_strategy() -> impl Strategy<Value = Reading> {
    (
        0usize..5,
        1_700_000u32..1_960_000,
        0u64..=Register::MAX_PUBLISHED * 1000,
    )
        .prop_map(|(r, q, value)| {
            let register = Register::ALL[r];
            let step = register.interval_seconds();
            let secs = i64::from(q) * 900 / step * step;
            Reading {
                register,
                time: Timestamp::from_second(secs).expect("in range"),
                value,
            }
        })
}

proptest! {
    #[test]
    fn round_trip_both_formats(
        meter in "[A-Z0-9]{1,34}",
        readings in proptest::collection::vec(reading_strategy(), 0..50),
        bincode_format in any::<bool>(),
    ) {
        let format = if bincode_format { Format::Bincode } else { Format::Json };
        let payload = WirePayload {
            meter: Cow::Owned(meter.clone()),
            readings: readings.iter().map(WireReading::from_reading).collect(),
        };
        let bytes = encode(format, &payload);
        let far_future: Timestamp = "2099-01-01T00:00:00Z".parse().expect("valid");
        let decoded = decode(format, &bytes, far_future, &Calendar::amsterdam(), &Limits { max_payload_bytes: 1 << 20, ..Limits::default() })
            .expect("what we encode decodes");
        prop_assert_eq!(decoded.meter.expose(), meter.as_str());
        let back: Vec<Reading> = decoded.readings.iter().map(|d| d.reading).collect();
        prop_assert_eq!(back, readings);
    }

    #[test]
    fn json_numbers_with_three_decimals(milli in 0u64..=100_000_000_000) {
        let value = WireValue::Number(milli as f64 / 1000.0);
        prop_assert_eq!(value.to_milli(), Ok(milli));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), bincode_format in any::<bool>()) {
        let format = if bincode_format { Format::Bincode } else { Format::Json };
        let _ = decode(format, &bytes, now(), &Calendar::amsterdam(), &Limits::default());
    }
}

/// A reading time as a publisher might write it: any date, a time of day that may be out of
/// range, and each separator, fraction and offset form.
fn time_text(date: (i16, u8, u8), hms: (u8, u8, u8), sep: &str, suffix: &str) -> String {
    let (y, mo, d) = date;
    let (h, mi, s) = hms;
    format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{suffix}")
}

fn suffix_strategy() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "Z",
        "z",
        "+01:00",
        "-00:00",
        "+05:45",
        "-09:30",
        ".5Z",
        ".250+02:00",
        "+01:00[Europe/Amsterdam]",
        "+02:00[Europe/Amsterdam]",
        "",
        "+25:00",
    ])
}

proptest! {
    /// The fast path for a message's reading times gives exactly what jiff's parser gives,
    /// reading after reading, valid or not, whether or not date, separator or offset change.
    #[test]
    fn reading_times_parse_as_jiff_parses_them(
        dates in ((1960i16..2200, 1u8..=12, 1u8..=31), 1u8..=31),
        readings in proptest::collection::vec(
            (any::<bool>(), (0u8..=24, 0u8..=60, 0u8..=60), any::<bool>(), any::<bool>()),
            1..8,
        ),
        seps in (prop::sample::select(vec!["T", "t", " "]), prop::sample::select(vec!["T", "t", " "])),
        suffixes in (suffix_strategy(), suffix_strategy()),
    ) {
        let ((year, month, day), other_day) = dates;
        let texts: Vec<String> = readings
            .iter()
            .map(|&(first_date, hms, first_sep, first_suffix)| {
                let date = (year, month, if first_date { day } else { other_day });
                let sep = if first_sep { seps.0 } else { seps.1 };
                time_text(date, hms, sep, if first_suffix { suffixes.0 } else { suffixes.1 })
            })
            .collect();
        let mut times = Times::default();
        for text in &texts {
            let expected = text.parse::<Timestamp>().ok();
            let got = times.parse(text).ok();
            prop_assert_eq!(got, expected, "{}", text);
            if got.is_none() {
                // A rejected time rejects its message: nothing is parsed after it.
                break;
            }
        }
    }
}

#[test]
fn a_day_of_quarter_hours_parses_as_jiff_parses_it() {
    for suffix in ["Z", "+01:00", "+02:00", ".000Z"] {
        let mut times = Times::default();
        let texts: Vec<String> = (0..96)
            .map(|q| time_text((2026, 3, 29), (q / 4, (q % 4) * 15, 0), "T", suffix))
            .collect();
        for text in &texts {
            assert_eq!(
                times.parse(text).ok(),
                text.parse::<Timestamp>().ok(),
                "{text}"
            );
        }
    }
    // A day that crosses UTC midnight: the date changes, and the parser takes over.
    let mut times = Times::default();
    for text in [
        "2026-11-26T23:45:00Z",
        "2026-11-27T00:00:00Z",
        "2026-11-27T00:15:00Z",
    ] {
        assert_eq!(
            times.parse(text).ok(),
            text.parse::<Timestamp>().ok(),
            "{text}"
        );
    }
}

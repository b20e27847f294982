//! `decode_json_readings_per_sec` and `decode_bincode_readings_per_sec`: one day of 96
//! quarter-hour readings in one payload, decoded and validated.
use std::borrow::Cow;
use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jiff::Timestamp;
use meterstand_codec::{Format, Limits, WirePayload, WireReading, decode, encode};
use meterstand_model::{Calendar, Reading, Register};

fn day_payload(format: Format) -> Vec<u8> {
    let start = 1_795_734_000i64; // 2026-11-26T23:00:00Z, local midnight
    let readings: Vec<WireReading<'static>> = (0..96)
        .map(|i| {
            WireReading::from_reading(&Reading {
                register: Register::ImportT1,
                time: Timestamp::from_second(start + i * 900).expect("in range"),
                value: 12_345_678 + (i as u64) * 137,
            })
        })
        .collect();
    encode(
        format,
        &WirePayload {
            meter: Cow::Borrowed("E0031003262764316"),
            readings,
        },
    )
}

fn bench(c: &mut Criterion) {
    let now: Timestamp = "2026-11-28T00:00:00Z".parse().expect("valid");
    let calendar = Calendar::amsterdam();
    let limits = Limits::default();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(96));
    for format in [Format::Json, Format::Bincode] {
        let payload = day_payload(format);
        group.bench_function(format.as_str(), |b| {
            b.iter(|| black_box(decode(format, black_box(&payload), now, &calendar, &limits)))
        });
    }
    group.finish();

    for format in [Format::Json, Format::Bincode] {
        let payload = day_payload(format);
        let mut best = 0f64;
        for _ in 0..5 {
            let n = 20_000;
            let start = Instant::now();
            for _ in 0..n {
                let decoded = decode(format, black_box(&payload), now, &calendar, &limits);
                assert!(decoded.is_ok());
            }
            best = best.max((n * 96) as f64 / start.elapsed().as_secs_f64());
        }
        println!(
            "decode_{}_readings_per_sec {best:.0} readings/s",
            format.as_str()
        );
        println!(
            "decode_{}_payload_bytes {} bytes",
            format.as_str(),
            payload.len()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! `decode_json_readings_per_sec` and `decode_bincode_readings_per_sec`: one day of 96
//! quarter-hour readings in one payload, decoded and validated.
//! `decode_p1_telegrams_per_sec`: DSMR 5 telegrams with gas, decoded (CRC, lines) and placed
//! on their boundaries, as ingest does with each P1 message.
use std::borrow::Cow;
use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jiff::Timestamp;
use meterstand_codec::{Format, Limits, WirePayload, WireReading, decode, encode, p1};
use meterstand_model::{Calendar, MeterId, Reading, Register};

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

/// One day of telegrams a few seconds after each quarter-hour, from meters with different
/// ids, consumption and solar export, and a gas reading captured on each hour.
fn p1_telegrams() -> Vec<Vec<u8>> {
    let start = 1_795_734_000i64; // 2026-11-26T23:00:00Z, local midnight
    (0..96u64)
        .map(|i| {
            let meter: MeterId = format!("E00{:014}", 31_003_262_764_316 + i * 7_919)
                .parse()
                .expect("valid meter id");
            let secs = start + i as i64 * 900;
            let time = Timestamp::from_second(secs + (i as i64 % 7)).expect("in range");
            let electricity = [
                (Register::ImportT1, 12_345_678 + i * 137 + i * i * 11),
                (Register::ImportT2, 9_876_543 + i * 211),
                (Register::ExportT1, 1_234_567 + (i % 40) * 53),
                (Register::ExportT2, 456_789 + (i % 13) * 97),
            ];
            let gas_at = Timestamp::from_second(secs - secs.rem_euclid(3600)).expect("in range");
            let gas = (gas_at, 4_321_500 + i * 313);
            p1::encode_dsmr5(&meter, time, &electricity, Some(gas)).into_bytes()
        })
        .collect()
}

fn decode_p1(payload: &[u8], now: Timestamp, calendar: &Calendar, limits: &Limits) -> usize {
    p1::decode_telegram(payload, calendar, limits)
        .and_then(|t| p1::place(t, now, calendar, p1::DEFAULT_BOUNDARY_WINDOW, limits))
        .map(|placed| placed.decoded.readings.len())
        .unwrap_or(0)
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
    let telegrams = p1_telegrams();
    group.throughput(Throughput::Elements(telegrams.len() as u64));
    group.bench_function("p1", |b| {
        b.iter(|| {
            for t in &telegrams {
                black_box(decode_p1(black_box(t), now, &calendar, &limits));
            }
        })
    });
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

    let mut best = 0f64;
    for _ in 0..5 {
        let rounds = 500;
        let start = Instant::now();
        for _ in 0..rounds {
            for t in &telegrams {
                let readings = decode_p1(black_box(t), now, &calendar, &limits);
                assert!(readings >= 4);
            }
        }
        best = best.max((rounds * telegrams.len()) as f64 / start.elapsed().as_secs_f64());
    }
    println!("decode_p1_telegrams_per_sec {best:.0} telegrams/s");
    println!(
        "decode_p1_telegram_bytes {} bytes",
        telegrams.iter().map(Vec::len).sum::<usize>() / telegrams.len()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

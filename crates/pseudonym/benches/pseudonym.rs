//! `pseudonym_ns_per_ean` against `blake3_keyed_ns_per_ean` (the raw keyed hash of the same
//! 18 bytes): the pseudonymiser should cost at most 1.5× the raw hash.
use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use meterstand_model::Ean;
use meterstand_pseudonym::{KeyRing, Pseudonymiser};

fn eans() -> Vec<Ean> {
    (0..1024u64)
        .filter_map(|i| Ean::from_body(87_100_000_000_000_000 + i * 7919))
        .collect()
}

fn ns_per_op(iterations: u64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn bench(c: &mut Criterion) {
    let ring = KeyRing::from_keys([(1, [42u8; 32])]);
    let p = Pseudonymiser::new(&ring);
    let key = [42u8; 32];
    let eans = eans();
    let mut group = c.benchmark_group("pseudonym");
    group.bench_function("pseudonymise_ean", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % eans.len();
            black_box(p.ean(black_box(&eans[i])))
        })
    });
    group.bench_function("blake3_keyed_hash_18_bytes", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % eans.len();
            black_box(blake3::keyed_hash(&key, black_box(eans[i].as_bytes())))
        })
    });
    group.finish();

    // The line-per-figure summary, measured back to back on the same inputs.
    let n = 2_000_000u64;
    let mut best_p = f64::MAX;
    let mut best_raw = f64::MAX;
    for _ in 0..5 {
        let mut i = 0;
        best_p = best_p.min(ns_per_op(n, || {
            i = (i + 1) % eans.len();
            black_box(p.ean(black_box(&eans[i])));
        }));
        let mut j = 0;
        best_raw = best_raw.min(ns_per_op(n, || {
            j = (j + 1) % eans.len();
            black_box(blake3::keyed_hash(&key, black_box(eans[j].as_bytes())));
        }));
    }
    println!("pseudonym_ns_per_ean {best_p:.1} ns");
    println!("blake3_keyed_ns_per_ean {best_raw:.1} ns");
    println!("pseudonym_over_raw_ratio {:.2} x", best_p / best_raw);
}

criterion_group!(benches, bench);
criterion_main!(benches);

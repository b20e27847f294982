//! Cost curves: the same hour of quarter-hours (import on both tariffs, household increments by
//! hour of day with noise) for 1,000, 100,000 and 1,000,000 connections, one JSON message per
//! connection, queued in Mosquitto for a persistent session and ingested durably and acked,
//! each size into a store of its own under the default memory budget. Per size:
//! `ingest_readings_per_sec_{n}`, `ingest_peak_rss_mib_{n}` (the process's peak while that size
//! is ingested), `store_bytes_per_reading_{n}` (SST and WAL bytes after a clean stop; at 1,000
//! connections RocksDB's fixed files dominate), `store_aggregate_ms_{n}` (every member's four
//! quarter-hours and the hour, walked as the statistics freeze does), and once
//! `retention_sweep_all_expired_ms_per_million_keys` (a sweep of the largest store with
//! everything expired: what deleting costs per million stored blocks; the store bench's
//! `retention_sweep_ms_per_million_keys` is the hourly case, little expired).
//!
//! `METERSTAND_BENCH_SCALE_SIZES=1000,100000` picks the sizes;
//! `METERSTAND_BENCH_STORE_MEMORY_MIB=64` sets `store.memory` (default 256 MiB), to see how
//! much of the peak the budget is.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use meterstand_ingest::{Ingest, IngestStatus};
use meterstand_model::{Reading, Register, RegisterKind, Tier};
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::{ManualClock, ReadingStore, SystemClock};
use meterstand_store_rocks::{RocksStore, StoreConfig};
use meterstand_testkit::fleet::json_payload;
use meterstand_testkit::{Publisher, ean_from, meter_id};
use tokio_util::sync::CancellationToken;

/// One hour of quarter-hours per connection: the five boundaries of the hour, both tariffs.
const READINGS_PER_MESSAGE: u64 = 10;

/// The hour's five quarter-hour boundaries for connection `c`, starting at `start`.
fn hour_of(c: u64, start: Timestamp) -> Vec<Reading> {
    let mut rng = meterstand_model::sim::SimRng::new(c ^ 0x5eed);
    let (mut t1, mut t2) = (1_000_000 + c % 9_973 * 1_000, 800_000 + c % 7_919 * 1_000);
    let hour = (start.as_second() / 3600 + 1).rem_euclid(24) as u64;
    let (low, high) = match hour {
        0..=6 => (20, 60),
        7..=9 => (60, 200),
        10..=16 => (40, 150),
        17..=22 => (150, 400),
        _ => (60, 120),
    };
    let mut out = Vec::with_capacity(READINGS_PER_MESSAGE as usize);
    for q in 0..5i64 {
        let time = Timestamp::from_second(start.as_second() + q * 900).expect("in range");
        out.push(Reading {
            register: Register::ImportT1,
            time,
            value: t1,
        });
        out.push(Reading {
            register: Register::ImportT2,
            time,
            value: t2,
        });
        t1 += low + rng.below(high - low + 1);
        t2 += rng.below(20);
    }
    out
}

fn bytes_below(dir: &std::path::Path) -> u64 {
    meterstand_testkit::files_below(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// The argument that makes this binary the publisher of one size: `N PORT START`.
const PUBLISH_ARG: &str = "--publish-scale";

/// Publishes one hour of quarter-hours for each of `n` connections and waits for the
/// broker's acknowledgements.
fn publish(n: u64, port: u16, start: Timestamp) {
    let mut publisher = Publisher::connect(port, &format!("scale-pub-{n}"));
    for c in 0..n {
        let ean = ean_from(3, c);
        publisher.publish(
            &format!("meters/{}/json", ean.expose()),
            json_payload(&meter_id(c), &hour_of(c, start)),
        );
    }
    publisher.wait_acked();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == PUBLISH_ARG) {
        let arg = |k: usize| args.get(i + k).and_then(|v| v.parse::<i64>().ok());
        let (Some(n), Some(port), Some(start)) = (arg(1), arg(2), arg(3)) else {
            panic!("{PUBLISH_ARG} N PORT START");
        };
        publish(
            n as u64,
            port as u16,
            Timestamp::from_second(start).expect("in range"),
        );
        return;
    }
    let sizes: Vec<u64> = std::env::var("METERSTAND_BENCH_SCALE_SIZES")
        .unwrap_or_else(|_| "1000,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes: comma-separated numbers"))
        .collect();
    let rt = meterstand_benches::runtime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = meterstand_benches::broker(&tmp.path().join("mosquitto"));
    let p = Arc::new(Pseudonymiser::new(&KeyRing::from_keys([(1, [7u8; 32])])));
    let now = Timestamp::now().as_second();
    let start = Timestamp::from_second(now - now.rem_euclid(3600) - 2 * 3600).expect("in range");
    let mut largest: Option<(u64, std::path::PathBuf)> = None;
    for &n in &sizes {
        let client_id = format!("scale-ingest-{n}");
        meterstand_benches::prepare_session(&rt, broker.port, &client_id, "meters/+/json");
        // Published by a child process, so that this process's memory is ingest's alone.
        let published = std::process::Command::new(std::env::current_exe().expect("self"))
            .args([PUBLISH_ARG, &n.to_string(), &broker.port.to_string()])
            .arg(start.as_second().to_string())
            .status()
            .expect("run the publisher");
        assert!(published.success(), "publisher: {published}");

        let dir = tmp.path().join(format!("store-{n}"));
        let config = meterstand_benches::store_config(&dir);
        let ic = meterstand_benches::ingest_config(broker.port, &client_id, &config);
        let store = Arc::new(RocksStore::open(config, Arc::new(SystemClock)).expect("open"));
        let status = Arc::new(IngestStatus::default());
        let stop = CancellationToken::new();
        meterstand_testkit::bench::reset_peak_rss();
        // From the session's start (connect, subscribe, then the queued messages) to the
        // last acknowledgement: at 1,000 connections everything fits one batch.
        let started = Instant::now();
        let handle = rt.spawn(Ingest::run(
            ic,
            store.clone(),
            p.clone(),
            status.clone(),
            stop.clone(),
        ));
        let mut most_unacked = 0;
        let took = rt.block_on(async {
            while status.acked.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
                most_unacked = most_unacked.max(meterstand_ingest::metrics::UNACKED.get());
            }
            started.elapsed()
        });
        stop.cancel();
        let _ = rt.block_on(handle);
        let rss = meterstand_testkit::bench::peak_rss_mib();
        let readings = n * READINGS_PER_MESSAGE;
        let stored = status.totals().stored.get(Tier::Interval);
        assert_eq!(
            stored, readings,
            "{n} connections: stored {stored} of {readings}"
        );
        println!(
            "ingest_readings_per_sec_{n} {:.0} readings/s",
            readings as f64 / took.as_secs_f64()
        );
        println!("ingest_peak_rss_mib_{n} {rss:.0} MiB");
        println!("ingest_most_unacked_{n} {most_unacked} messages");

        // The statistics freeze's walk: every member's quarter-hours of the hour.
        let bounds: Vec<Timestamp> = (0..5)
            .map(|q| Timestamp::from_second(start.as_second() + q * 900).expect("in range"))
            .collect();
        let walk = Instant::now();
        let mut members = 0u64;
        store
            .members(Tier::Interval, RegisterKind::Import, &bounds, &mut |_| {
                members += 1
            })
            .expect("walk");
        let walked = walk.elapsed();
        assert_eq!(members, n, "every connection walked");
        println!(
            "store_aggregate_ms_{n} {:.1} ms",
            walked.as_secs_f64() * 1000.0
        );
        // A clean stop: memtables flushed, so the files hold what a restart would find.
        Arc::try_unwrap(store)
            .map_err(|_| "store still shared")
            .expect("sole owner")
            .close()
            .expect("close");
        println!(
            "store_bytes_per_reading_{n} {:.2} bytes",
            bytes_below(&dir) as f64 / readings as f64
        );
        if largest.as_ref().is_none_or(|(m, _)| *m < n) {
            largest = Some((n, dir));
        }
    }

    // Everything in the largest store expired: one sweep, per million stored blocks.
    if let Some((n, dir)) = largest {
        let later =
            Timestamp::from_second(start.as_second() + 10 * 366 * 86_400).expect("in range");
        let store = RocksStore::open(StoreConfig::new(&dir), Arc::new(ManualClock::new(later)))
            .expect("reopen");
        let swept = Instant::now();
        let removed = store.sweep_retention().expect("sweep");
        let took = swept.elapsed();
        let blocks = n; // one interval block per connection for the hour
        println!(
            "retention_sweep_all_expired_ms_per_million_keys {:.0} ms",
            took.as_secs_f64() * 1000.0 * 1_000_000.0 / blocks as f64
        );
        println!(
            "retention_sweep_removed_readings {} readings",
            removed.total()
        );
    }
}

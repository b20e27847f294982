//! `statistics_freeze_ms_per_day` (a day of quarter-hours of every register, all kinds) and
//! `statistics_freeze_ms_per_day_of_days` (a month of day readings of a daily-consent fleet),
//! then `api_statistics_totals_p50_ms` / `_p99_ms` (30 days of daily totals of all
//! connections: one row a day), and `api_statistics_p50_ms` / `api_statistics_p99_ms`: 30 frozen days, every row, of
//! 10,000 simulated connections, grouped by postcode area, 200 requests over HTTP
//! (keep-alive) to a real server on loopback with k-anonymity, auth and metrics in the path.
//!
//! The stores run on a manual clock set just after the readings were written: a write marks
//! its units with the store's clock, and a unit is frozen once `statistics.quiet` has passed
//! since then, so the freeze's "now" (two days after October) must come after the writes.

use std::sync::Arc;
use std::time::Instant;

use meterstand_benches::{AnalystApi, quantile};
use meterstand_model::Calendar;
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::{ManualClock, ReadingStore};
use meterstand_store_rocks::{RocksStore, StoreConfig};

const CONNECTIONS: u64 = 10_000;
const REQUESTS: usize = 200;

fn fill(store: &RocksStore, p: &Pseudonymiser, cal: &Calendar) {
    let mut items = Vec::new();
    for (ps, c, item) in meterstand_testkit::bench::month_of_days(p, cal, CONNECTIONS) {
        store.put_connection(&[ps], c).expect("put");
        items.push(item);
        if items.len() == 500 {
            store
                .write_blocking(std::mem::take(&mut items))
                .expect("write");
        }
    }
    store.write_blocking(items).expect("write");
    store.compact_all().expect("compact");
}

/// `statistics_freeze_ms_per_day`: one local day of quarter-hours of every register for
/// 10,000 interval-consent households, frozen for every register kind (the day, its 96
/// quarter-hours and their cohorts, for import, export and gas), on a store of its own.
fn freeze_a_day_of_quarter_hours(p: &Pseudonymiser, cal: &Calendar) {
    let dir = tempfile::tempdir().expect("tempdir");
    let day = jiff::civil::date(2026, 10, 14);
    let day_start = cal.date_start(day).expect("local midnight");
    let day_end = cal
        .date_start(day.tomorrow().expect("date"))
        .expect("local midnight");
    let hours = |t: jiff::Timestamp, h: i64| {
        t.checked_add(jiff::SignedDuration::from_hours(h))
            .expect("in range")
    };
    // Written an hour after the day's end.
    let clock = ManualClock::new(hours(day_end, 1));
    let store = RocksStore::open(StoreConfig::new(dir.path()), Arc::new(clock)).expect("open");
    let mut items = Vec::new();
    let mut readings = 0;
    for (ps, c, item) in meterstand_testkit::bench::day_of_quarter_hours(p, cal, CONNECTIONS, day) {
        store.put_connection(&[ps], c).expect("put");
        readings += item.readings.len();
        items.push(item);
        if items.len() == 500 {
            store
                .write_blocking(std::mem::take(&mut items))
                .expect("write");
        }
    }
    store.write_blocking(items).expect("write");
    store.compact_all().expect("compact");
    let config = meterstand_store::freeze::FreezeConfig {
        budget: std::time::Duration::from_secs(3600),
        ..Default::default()
    };
    let settled = |end: jiff::Timestamp| {
        end.checked_add(jiff::SignedDuration::try_from(config.settle).expect("settle"))
            .and_then(|t| t.checked_add(jiff::SignedDuration::from_secs(60)))
            .expect("in range")
    };
    // The first midnight reading also marks the day before (it ends that day), which has
    // nothing to publish: computed first, untimed, once only it is due.
    let before = meterstand_store::freeze::run(&store, cal, &config, settled(day_start))
        .expect("freeze the day before");
    assert_eq!(
        before.units, 3,
        "the day before, per register kind: {before:?}"
    );
    assert_eq!(before.periods, 0, "nobody in the day before: {before:?}");
    // Just after the day's settle delay: the day (and no month) is due.
    let started = Instant::now();
    let report =
        meterstand_store::freeze::run(&store, cal, &config, settled(day_end)).expect("freeze");
    let took = started.elapsed();
    assert_eq!(
        report.units, 3,
        "the day, for each register kind: {report:?}"
    );
    assert_eq!(report.due_left, 0, "{report:?}");
    println!(
        "statistics_freeze_ms_per_day {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    println!("statistics_freeze_day_readings {readings} readings");
    println!("statistics_freeze_day_periods {} periods", report.periods);
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    // Written on 1 November (UTC midnight, after the last reading at local midnight).
    let clock = ManualClock::new("2026-11-01T00:00:00Z".parse().expect("clock"));
    let store = Arc::new(
        RocksStore::open(StoreConfig::new(dir.path().join("data")), Arc::new(clock)).expect("open"),
    );
    let p = Arc::new(Pseudonymiser::new(&KeyRing::from_keys([(1, [9u8; 32])])));
    let cal = Calendar::amsterdam();
    fill(&store, &p, &cal);
    // Freeze October (and what else is due on 3 November: 30 September, which the first
    // midnight reading ends, and September's month), timed per frozen unit.
    let started = Instant::now();
    let report = meterstand_store::freeze::run(
        store.as_ref(),
        &cal,
        &meterstand_store::freeze::FreezeConfig {
            budget: std::time::Duration::from_secs(3600),
            ..Default::default()
        },
        "2026-11-03T00:00:00Z".parse().expect("now"),
    )
    .expect("freeze");
    let took = started.elapsed();
    // 30 September to 31 October and the months of September and October, each for
    // import, export and gas; 1 November and its month wait.
    assert_eq!(report.units, 3 * (32 + 2), "{report:?}");
    assert_eq!(report.due_left, 0, "{report:?}");
    println!(
        "statistics_freeze_ms_per_day_of_days {:.1} ms",
        took.as_secs_f64() * 1000.0 / report.units as f64
    );
    freeze_a_day_of_quarter_hours(&p, &cal);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let api = AnalystApi::start(store.clone(), p.clone(), cal.clone(), &dir.path().join("audit.jsonl")).await;
        let query = "from=2026-10-01&to=2026-10-31&granularity=day&register=import&group_by=postcode4,profile";
        let mut times = Vec::with_capacity(REQUESTS);
        let mut last = None;
        for _ in 0..REQUESTS {
            let answer = api.statistics(query).await;
            times.push(answer.ms);
            last = Some(answer);
        }
        let last = last.expect("answers");
        assert_eq!(last.periods, 30, "30 frozen days in the answer");
        assert!(last.rows > 0, "the statistics are empty");
        println!("api_statistics_p50_ms {:.1} ms", quantile(&mut times, 0.50));
        println!("api_statistics_p99_ms {:.1} ms", quantile(&mut times, 0.99));
        println!("api_statistics_rows {} rows", last.rows);
        println!("api_statistics_days {} days", last.periods);
        println!("api_statistics_response_bytes {} bytes", last.bytes);
        // The question the issue compares with VictoriaMetrics: 30 days of daily totals of
        // all connections (one row a day, the sum of that day's published rows).
        let totals = "from=2026-10-01&to=2026-10-31&granularity=day&register=import";
        let mut times = Vec::with_capacity(REQUESTS);
        let mut last = None;
        for _ in 0..REQUESTS {
            let answer = api.statistics(totals).await;
            times.push(answer.ms);
            last = Some(answer);
        }
        let last = last.expect("answers");
        assert_eq!(last.rows, 30, "a total a day");
        println!("api_statistics_totals_p50_ms {:.1} ms", quantile(&mut times, 0.50));
        println!("api_statistics_totals_p99_ms {:.1} ms", quantile(&mut times, 0.99));
        api.stop().await;
    });
}

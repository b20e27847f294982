//! A supplier's first day: years of history are loaded at once, and the statistics of every
//! day of it are frozen as a backlog (`crates/store/src/freeze.rs`), in slices of the default
//! budget with the service's 50 ms pause between them, while today's readings keep coming
//! and analysts keep asking.
//!
//! The fleet: 10,000 interval-consent households (`meterstand_testkit::bench::
//! QuarterHourFleet`: import on both tariffs every quarter-hour, export on the roofs with
//! solar, gas on the hour where there is gas; increments by hour of day with noise), about
//! 2.7 M readings a day. The backlog: `METERSTAND_BENCH_BACKLOG_DAYS` (default 10) local days
//! of quarter-hours ending three days before "today" (26 November 2026, the store's clock at
//! 23:00 local), loaded day by day, 500 households per write, then compacted. A **day** in
//! the figures is one local day of every register kind (import, export, gas: three freeze
//! units, each the day with its quarter-hours or hours) for the whole fleet. The freeze also
//! computes the day before the first, which the first midnight reading ends and where nobody
//! counts (`statistics_backlog_units` counts it: three units more than three per day).
//!
//! 1. `statistics_backlog_days_per_sec`: the backlog frozen on its own, from the first slice
//!    to the last (pauses included, as the service runs it), with
//!    `statistics_backlog_peak_rss_mib` (the process's peak while it is frozen, the loaded
//!    store's caches included). Then, on the same store with nothing left to freeze, today's
//!    quarter-hours written as in 2. (`ingest_readings_per_sec_without_freeze` and its
//!    write latencies, over as many writes as 2. made: the reference for 2.) and the
//!    analysts' query asked 100 times.
//! 2. In a process of its own (its peak RSS its own), on a second store with the same
//!    backlog: the freeze in slices on one thread, today's
//!    quarter-hours written on another (one write per 2,000 messages of one connection's
//!    quarter-hour, ingest writes up to 4,000 messages at once) until the freeze is done or
//!    today is written, and `/v1/statistics` (the backlog's days, every row) asked over HTTP
//!    every 50 ms: `ingest_readings_per_sec_during_backlog_freeze`,
//!    `ingest_write_p99_ms_during_backlog_freeze` (one write's latency),
//!    `api_statistics_p99_ms_during_backlog_freeze`, and the freeze's own rate meanwhile.
//!
//! Beside each freeze rate, `*_cpu_ms_per_day`: the freezing thread's CPU per day, which shows
//! whether a slower freeze did more work or waited for a core (2 here).
//! `METERSTAND_BENCH_ONLY=alone|busy` runs one part (`alone` writes all of today for 1.).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};
use meterstand_benches::{AnalystApi, quantile};
use meterstand_model::{Calendar, Tier};
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::freeze::{FreezeConfig, KINDS};
use meterstand_store::{ManualClock, ReadingStore};
use meterstand_store_rocks::RocksStore;
use meterstand_testkit::bench::{
    QuarterHourFleet, cpu_seconds, peak_rss_mib, reset_peak_rss, rss_mib,
};

const CONNECTIONS: u64 = 10_000;
/// Households per write while the backlog is loaded (a day of each).
const LOAD_BATCH: usize = 500;
/// Messages (one connection's quarter-hour each) per write of today's readings.
const LIVE_BATCH: usize = 2_000;
/// The service's pause between two slices of a backlog (`FREEZE_BACKLOG_PAUSE`).
const PAUSE: Duration = Duration::from_millis(50);
/// One `/v1/statistics` request every this long while the backlog is frozen.
const API_EVERY: Duration = Duration::from_millis(50);

/// Where the backlog sits: its days, "today" and the store's clock.
#[derive(Clone, Copy)]
struct Plan {
    first: Date,
    days: i64,
    today: Date,
    /// The store's clock: 23:00 local today.
    clock: Timestamp,
    /// The freeze's "now": `statistics.quiet` (and a minute) after the writes.
    now: Timestamp,
}

impl Plan {
    fn new(cal: &Calendar, days: i64) -> Plan {
        let today = jiff::civil::date(2026, 11, 26);
        let clock = cal
            .date_start(today)
            .expect("local midnight")
            .checked_add(SignedDuration::from_hours(23))
            .expect("in range");
        let now = clock
            .checked_add(SignedDuration::try_from(FreezeConfig::default().quiet).expect("quiet"))
            .and_then(|t| t.checked_add(SignedDuration::from_mins(1)))
            .expect("in range");
        // The last day of the backlog is the latest settled at `now`: three days before
        // today (it ends at local midnight two days before, 48 hours before today's).
        let first = today
            .checked_sub(jiff::Span::new().days(days + 2))
            .expect("date");
        Plan {
            first,
            days,
            today,
            clock,
            now,
        }
    }

    fn day(&self, d: i64) -> Date {
        self.first
            .checked_add(jiff::Span::new().days(d))
            .expect("date")
    }
}

fn quarter(t: Timestamp) -> Timestamp {
    t.checked_add(SignedDuration::from_mins(15))
        .expect("in range")
}

/// A store with the fleet registered and the backlog written and compacted; its readings.
fn load(
    dir: &std::path::Path,
    p: &Pseudonymiser,
    cal: &Calendar,
    plan: &Plan,
) -> (Arc<RocksStore>, QuarterHourFleet, u64) {
    let clock = ManualClock::new(plan.clock);
    let store = Arc::new(
        RocksStore::open(meterstand_benches::store_config(dir), Arc::new(clock)).expect("open"),
    );
    let mut fleet = QuarterHourFleet::new(p, CONNECTIONS);
    for (ps, c) in fleet.connections() {
        store.put_connection(&[ps], c).expect("put");
    }
    let mut readings = 0u64;
    for d in 0..plan.days {
        let start = cal.date_start(plan.day(d)).expect("local midnight");
        let end = cal.date_start(plan.day(d + 1)).expect("local midnight");
        // The first day from its midnight, the others from their first quarter-hour's end.
        let from = if d == 0 { start } else { quarter(start) };
        for first in (0..fleet.len()).step_by(LOAD_BATCH) {
            let items: Vec<_> = (first..(first + LOAD_BATCH).min(fleet.len()))
                .map(|i| fleet.readings(cal, i, from, end))
                .collect();
            readings += items.iter().map(|i| i.readings.len() as u64).sum::<u64>();
            store.write_blocking(items).expect("write");
        }
    }
    store.compact_all().expect("compact");
    (store, fleet, readings)
}

/// What a sliced freeze did.
#[derive(Default)]
struct Sliced {
    units: u64,
    periods: u64,
    slices: u64,
    took: Duration,
    /// CPU seconds of the freezing thread.
    cpu: f64,
}

/// Freezes what is due at `now` as the service does: a run with the default budget, then
/// the next after a pause while the report says some is due.
fn freeze_backlog(store: &dyn ReadingStore, cal: &Calendar, now: Timestamp) -> Sliced {
    let config = FreezeConfig::default();
    let mut out = Sliced::default();
    let cpu = cpu_seconds("thread-self");
    let started = Instant::now();
    loop {
        let r = meterstand_store::freeze::run(store, cal, &config, now).expect("freeze");
        out.units += r.units;
        out.periods += r.periods;
        out.slices += 1;
        if r.due_left == 0 {
            break;
        }
        std::thread::sleep(PAUSE);
    }
    out.took = started.elapsed();
    out.cpu = cpu_seconds("thread-self") - cpu;
    out
}

/// Every day of the backlog is frozen, for every register kind.
fn check_frozen(store: &dyn ReadingStore, cal: &Calendar, plan: &Plan) {
    let from = cal.date_start(plan.first).expect("local midnight");
    let to = cal.date_start(plan.day(plan.days)).expect("local midnight");
    for kind in KINDS {
        let days = store.statistics(Tier::Day, kind, from, to).expect("read");
        assert_eq!(days.len() as i64, plan.days, "{kind:?}: every day frozen");
        assert!(
            days.iter().all(|d| !d.rows.is_empty()),
            "{kind:?}: rows in every day"
        );
    }
}

/// What writing today's quarter-hours did, write by write.
struct Written {
    /// Per write: readings written so far, and seconds since the first write began.
    progress: Vec<(u64, f64)>,
    /// Per write: its latency in ms.
    latency: Vec<f64>,
    quarter_hours: u64,
}

impl Written {
    /// Readings per second over the first `writes` writes.
    fn rate(&self, writes: usize) -> f64 {
        let (readings, secs) = self.progress[writes - 1];
        readings as f64 / secs
    }

    /// The `q` quantile of the first `writes` writes' latencies.
    fn latency(&self, writes: usize, q: f64) -> f64 {
        quantile(&mut self.latency[..writes].to_vec(), q)
    }

    fn readings(&self) -> u64 {
        self.progress.last().map_or(0, |p| p.0)
    }
}

/// Writes today's quarter-hours, boundary after boundary, from local midnight to the store's
/// clock, `LIVE_BATCH` connections per write, until `stop` is set (checked before each) or
/// after `max_writes`.
fn write_today(
    store: &RocksStore,
    fleet: &mut QuarterHourFleet,
    cal: &Calendar,
    plan: &Plan,
    stop: &AtomicBool,
    max_writes: usize,
) -> Written {
    let mut t = cal.date_start(plan.today).expect("local midnight");
    let mut out = Written {
        progress: Vec::new(),
        latency: Vec::new(),
        quarter_hours: 0,
    };
    let mut readings = 0u64;
    let started = Instant::now();
    'today: while t <= plan.clock {
        for first in (0..fleet.len()).step_by(LIVE_BATCH) {
            if stop.load(Ordering::Relaxed) || out.latency.len() == max_writes {
                break 'today;
            }
            let items: Vec<_> = (first..(first + LIVE_BATCH).min(fleet.len()))
                .map(|i| fleet.readings(cal, i, t, t))
                .collect();
            readings += items.iter().map(|i| i.readings.len() as u64).sum::<u64>();
            let write = Instant::now();
            store.write_blocking(items).expect("write");
            out.latency.push(write.elapsed().as_secs_f64() * 1000.0);
            out.progress
                .push((readings, started.elapsed().as_secs_f64()));
        }
        out.quarter_hours += 1;
        t = quarter(t);
    }
    out
}

fn close(store: Arc<RocksStore>) {
    Arc::try_unwrap(store)
        .map_err(|_| "store still shared")
        .expect("sole owner")
        .close()
        .expect("close");
}

/// The argument that makes this binary run part 2 (in a process of its own, so that its
/// peak RSS is its own).
const BUSY_ARG: &str = "--backlog-busy";

/// What both parts share.
struct Setup {
    p: Arc<Pseudonymiser>,
    cal: Calendar,
    plan: Plan,
    rt: tokio::runtime::Runtime,
    tmp: tempfile::TempDir,
}

impl Setup {
    /// `/v1/statistics` for the backlog's days, every `every` (back to back with `None`), until
    /// `until` says so; the latencies and the last answer's rows.
    fn ask(
        &self,
        store: &Arc<RocksStore>,
        audit: &str,
        every: Option<Duration>,
        until: &mut dyn FnMut(usize) -> bool,
    ) -> (Vec<f64>, usize) {
        let query = format!(
            "from={}&to={}&granularity=day&register=import&group_by=postcode4,profile",
            self.plan.first,
            self.plan.day(self.plan.days)
        );
        self.rt.block_on(async {
            let api = AnalystApi::start(
                store.clone(),
                self.p.clone(),
                self.cal.clone(),
                &self.tmp.path().join(audit),
            )
            .await;
            let mut tick = every.map(|every| {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
            let (mut times, mut rows) = (Vec::new(), 0);
            while !until(times.len()) {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                let a = api.statistics(&query).await;
                times.push(a.ms);
                rows = a.rows;
            }
            api.stop().await;
            (times, rows)
        })
    }
}

/// Part 2: the backlog frozen while today's readings are written and analysts ask.
fn busy(s: &Setup) {
    let (store, mut fleet, _) = load(&s.tmp.path().join("busy"), &s.p, &s.cal, &s.plan);
    let done = Arc::new(AtomicBool::new(false));
    reset_peak_rss();
    let freezer = {
        let (store, cal, done, now) = (store.clone(), s.cal.clone(), done.clone(), s.plan.now);
        std::thread::spawn(move || {
            let r = freeze_backlog(store.as_ref(), &cal, now);
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    let writer = {
        let (store, cal, done, plan) = (store.clone(), s.cal.clone(), done.clone(), s.plan);
        std::thread::spawn(move || write_today(&store, &mut fleet, &cal, &plan, &done, usize::MAX))
    };
    let (mut times, rows) = s.ask(&store, "audit-busy.jsonl", Some(API_EVERY), &mut |_| {
        done.load(Ordering::SeqCst)
    });
    let frozen = freezer.join().expect("freezer");
    let written = writer.join().expect("writer");
    let rss = peak_rss_mib();
    check_frozen(store.as_ref(), &s.cal, &s.plan);
    let n = written.latency.len();
    assert!(n > 0, "no write while the backlog was frozen");
    println!(
        "ingest_readings_per_sec_during_backlog_freeze {:.0} readings/s",
        written.rate(n)
    );
    println!(
        "ingest_write_p99_ms_during_backlog_freeze {:.1} ms",
        written.latency(n, 0.99)
    );
    println!(
        "ingest_write_p50_ms_during_backlog_freeze {:.1} ms",
        written.latency(n, 0.5)
    );
    println!(
        "ingest_readings_during_backlog_freeze {} readings",
        written.readings()
    );
    println!(
        "ingest_quarter_hours_during_backlog_freeze {} quarter-hours",
        written.quarter_hours
    );
    println!("ingest_writes_during_backlog_freeze {n} writes");
    println!(
        "api_statistics_p99_ms_during_backlog_freeze {:.1} ms",
        quantile(&mut times, 0.99)
    );
    println!(
        "api_statistics_p50_ms_during_backlog_freeze {:.1} ms",
        quantile(&mut times, 0.5)
    );
    println!(
        "api_statistics_requests_during_backlog_freeze {} requests",
        times.len()
    );
    println!("api_statistics_rows_at_end_of_backlog_freeze {rows} rows");
    println!(
        "statistics_backlog_days_per_sec_during_ingest {:.2} days/s",
        s.plan.days as f64 / frozen.took.as_secs_f64()
    );
    println!(
        "statistics_backlog_slices_during_ingest {} slices",
        frozen.slices
    );
    println!(
        "statistics_backlog_cpu_ms_per_day_during_ingest {:.0} ms",
        frozen.cpu * 1000.0 / s.plan.days as f64
    );
    println!("ingest_peak_rss_mib_during_backlog_freeze {rss:.0} MiB");
    close(store);
}

/// Runs part 2 in a child process, its lines passed on; how many writes it made.
fn busy_child() -> Option<usize> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("self"))
        .arg(BUSY_ARG)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run part 2");
    let mut writes = None;
    for line in std::io::BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("part 2's output");
        println!("{line}");
        if let Some(rest) = line.strip_prefix("ingest_writes_during_backlog_freeze ") {
            writes = rest.split(' ').next().and_then(|n| n.parse().ok());
        }
    }
    let status = child.wait().expect("part 2");
    assert!(status.success(), "part 2: {status}");
    writes
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let days: i64 = std::env::var("METERSTAND_BENCH_BACKLOG_DAYS")
        .map(|v| v.parse().expect("backlog days: a number"))
        .unwrap_or(10);
    let cal = Calendar::amsterdam();
    let s = Setup {
        p: Arc::new(Pseudonymiser::new(&KeyRing::from_keys([(1, [11u8; 32])]))),
        plan: Plan::new(&cal, days),
        cal,
        rt: meterstand_benches::runtime(),
        tmp: tempfile::tempdir().expect("tempdir"),
    };
    if args.iter().any(|a| a == BUSY_ARG) {
        busy(&s);
        return;
    }
    let only = std::env::var("METERSTAND_BENCH_ONLY").unwrap_or_default();
    if only == "busy" {
        busy(&s);
        return;
    }

    // 1. The backlog on its own.
    let loading = Instant::now();
    let (store, mut fleet, readings) = load(&s.tmp.path().join("alone"), &s.p, &s.cal, &s.plan);
    let loaded = loading.elapsed();
    let before = rss_mib();
    reset_peak_rss();
    let frozen = freeze_backlog(store.as_ref(), &s.cal, s.plan.now);
    let rss = peak_rss_mib();
    check_frozen(store.as_ref(), &s.cal, &s.plan);
    println!(
        "statistics_backlog_load_readings_per_sec {:.0} readings/s",
        readings as f64 / loaded.as_secs_f64()
    );
    println!("statistics_backlog_readings {readings} readings");
    println!("statistics_backlog_connections {CONNECTIONS} connections");
    println!("statistics_backlog_days {days} days");
    println!(
        "statistics_backlog_days_per_sec {:.2} days/s",
        days as f64 / frozen.took.as_secs_f64()
    );
    println!(
        "statistics_backlog_ms_per_day {:.0} ms",
        frozen.took.as_secs_f64() * 1000.0 / days as f64
    );
    println!("statistics_backlog_units {} units", frozen.units);
    println!("statistics_backlog_periods {} periods", frozen.periods);
    println!("statistics_backlog_slices {} slices", frozen.slices);
    println!(
        "statistics_backlog_cpu_ms_per_day {:.0} ms",
        frozen.cpu * 1000.0 / days as f64
    );
    println!("statistics_backlog_rss_before_freeze_mib {before:.0} MiB");
    println!("statistics_backlog_peak_rss_mib {rss:.0} MiB");

    // 2., in a process of its own; this one waits meanwhile.
    let writes = if only == "alone" { None } else { busy_child() };

    // The reference for 2.: the same writes of today's quarter-hours on this store, with
    // nothing left to freeze and nobody asking.
    let alone = write_today(
        &store,
        &mut fleet,
        &s.cal,
        &s.plan,
        &AtomicBool::new(false),
        writes.unwrap_or(usize::MAX),
    );
    let n = alone.latency.len();
    println!(
        "ingest_readings_per_sec_without_freeze {:.0} readings/s",
        alone.rate(n)
    );
    println!(
        "ingest_write_p99_ms_without_freeze {:.1} ms",
        alone.latency(n, 0.99)
    );
    println!(
        "ingest_write_p50_ms_without_freeze {:.1} ms",
        alone.latency(n, 0.5)
    );
    println!("ingest_writes_without_freeze {n} writes");
    let (mut times, rows) = s.ask(&store, "audit-alone.jsonl", None, &mut |n| n == 100);
    println!(
        "api_statistics_p50_ms_after_backlog_freeze {:.1} ms",
        quantile(&mut times, 0.5)
    );
    println!(
        "api_statistics_p99_ms_after_backlog_freeze {:.1} ms",
        quantile(&mut times, 0.99)
    );
    println!("api_statistics_rows_after_backlog_freeze {rows} rows");
    close(store);
}

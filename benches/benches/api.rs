//! `statistics_freeze_ms_per_day` (day tier only: this fleet has daily consent), then
//! `api_statistics_p50_ms` / `api_statistics_p99_ms`: 30 frozen days, every row, of 10,000
//! simulated connections, grouped by postcode area, 200 requests over HTTP (keep-alive) to a
//! real server on loopback with k-anonymity, auth and metrics in the path.

use std::sync::Arc;
use std::time::Instant;

use meterstand_api::{ApiConfig, ApiParts, ApiState, AuditLog, Readiness, Role, TokenTable};
use meterstand_model::Calendar;
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::{ReadingStore, SystemClock};
use meterstand_store_rocks::{RocksStore, StoreConfig};
use tokio_util::sync::CancellationToken;

const CONNECTIONS: u64 = 10_000;
const REQUESTS: usize = 200;

struct Ready;
impl Readiness for Ready {
    fn store_open(&self) -> bool {
        true
    }
    fn broker_connected(&self) -> bool {
        true
    }
}

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
    let store =
        RocksStore::open(StoreConfig::new(dir.path()), Arc::new(SystemClock)).expect("open");
    let day = jiff::civil::date(2026, 10, 14);
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
    let day_end = cal
        .date_start(day.tomorrow().expect("date"))
        .expect("local midnight");
    let config = meterstand_store::freeze::FreezeConfig {
        budget: std::time::Duration::from_secs(3600),
        ..Default::default()
    };
    // Just after the day's settle delay: the day (and no month) is due, and so is the day
    // before it, which the first midnight reading marks (it ends that day) and which has
    // nothing to publish: the freeze computes it, finds nobody and leaves it unfrozen.
    let now = day_end
        .checked_add(jiff::SignedDuration::try_from(config.settle).expect("settle"))
        .and_then(|t| t.checked_add(jiff::SignedDuration::from_secs(60)))
        .expect("in range");
    let started = Instant::now();
    let report = meterstand_store::freeze::run(&store, cal, &config, now).expect("freeze");
    let took = started.elapsed();
    assert_eq!(
        report.units, 6,
        "the day and the one before it, for each register kind: {report:?}"
    );
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
    let store = Arc::new(
        RocksStore::open(
            StoreConfig::new(dir.path().join("data")),
            Arc::new(SystemClock),
        )
        .expect("open"),
    );
    let p = Arc::new(Pseudonymiser::new(&KeyRing::from_keys([(1, [9u8; 32])])));
    let cal = Calendar::amsterdam();
    fill(&store, &p, &cal);
    // Freeze October (and what else is due on 3 November), timed per frozen unit.
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
    assert!(report.units > 0, "nothing frozen");
    println!(
        "statistics_freeze_ms_per_day_of_days {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0 / report.units as f64
    );
    freeze_a_day_of_quarter_hours(&p, &cal);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let token = "bench-analyst-token";
        let hash = meterstand_api::hash_token(token);
        let state = ApiState::new(ApiParts {
            readiness: Arc::new(Ready),
            backend: store.clone(),
            pseudonymiser: p.clone(),
            tokens: TokenTable::new([("bench", Role::Analyst, hash.as_str())]).expect("tokens"),
            audit: AuditLog::open(&dir.path().join("audit.jsonl")).expect("audit"),
            calendar: cal.clone(),
            config: ApiConfig::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let server = tokio::spawn(meterstand_api::serve(listener, state, stop.clone()));
        let http = reqwest::Client::new();
        let url = format!(
            "http://{addr}/v1/statistics?from=2026-10-01&to=2026-10-31&granularity=day&register=import&group_by=postcode4,profile"
        );
        let mut times = Vec::with_capacity(REQUESTS);
        let (mut rows, mut bytes) = (0, 0);
        for _ in 0..REQUESTS {
            // From the request to the last byte of the answer: the service's latency. The
            // client's own JSON decoding (a few ms for 2,400 rows into a generic value) is
            // done after the clock stops.
            let start = Instant::now();
            let resp = http.get(&url).bearer_auth(token).send().await.expect("send");
            assert!(resp.status().is_success(), "{}", resp.status());
            let body = resp.bytes().await.expect("body");
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            rows = v["rows"].as_array().map(Vec::len).unwrap_or(0);
            bytes = body.len();
        }
        assert!(rows > 0, "the statistics are empty");
        times.sort_by(f64::total_cmp);
        let pct = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        println!("api_statistics_p50_ms {:.1} ms", pct(0.50));
        println!("api_statistics_p99_ms {:.1} ms", pct(0.99));
        println!("api_statistics_rows {rows} rows");
        println!("api_statistics_response_bytes {bytes} bytes");
        stop.cancel();
        let _ = server.await;
    });
}

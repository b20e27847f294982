//! What the end-to-end benchmarks share: their runtime and broker, the store and ingest
//! configuration (with the memory knob), and persistent MQTT sessions made at the broker
//! before messages are queued for them, and ended after, so that each figure measures
//! delivery of what was queued and no offline session collects copies of the next run's
//! messages; and the analysts' API served over HTTP from a store, with its latencies.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meterstand_api::{ApiConfig, ApiParts, ApiState, AuditLog, Readiness, Role, TokenTable};
use meterstand_ingest::IngestConfig;
use meterstand_model::{Calendar, ConsentLevel};
use meterstand_pseudonym::Pseudonymiser;
use meterstand_store::ReadingStore;
use meterstand_store_rocks::StoreConfig;
use meterstand_testkit::Mosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

/// The two-worker runtime the benches drive ingest on (the development machine has 2 cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Mosquitto with its default autosave period, as deployed (the tests' broker saves every
/// second for its restart test: with a bench's messages queued, that rewrote tens of MB per
/// second inside the broker's only thread and set most of the round-to-round noise).
pub fn broker(dir: &Path) -> Mosquitto {
    Mosquitto::start_with(dir, "autosave_interval 1800")
}

/// A store in `dir` that keeps every tier for unknown connections, under the default budget
/// or `METERSTAND_BENCH_STORE_MEMORY_MIB`.
pub fn store_config(dir: &Path) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.default_consent = ConsentLevel::Interval;
    if let Ok(mib) = std::env::var("METERSTAND_BENCH_STORE_MEMORY_MIB") {
        config.memory = mib.parse::<u64>().expect("store memory: MiB") << 20;
    }
    config
}

/// Ingest from the broker on `port`, with its share of `store`'s budget as the service gives it.
pub fn ingest_config(port: u16, client_id: &str, store: &StoreConfig) -> IngestConfig {
    let mut ic = IngestConfig::new(meterstand_ingest::BrokerUrl::mqtt("127.0.0.1", port));
    ic.client_id = client_id.into();
    ic.max_unacked_bytes = usize::try_from(store.ingest_bytes()).unwrap_or(usize::MAX);
    ic
}

/// Creates a persistent session subscribed to the meters topics, then leaves it offline.
pub fn prepare_session(rt: &tokio::runtime::Runtime, port: u16, client_id: &str, filter: &str) {
    rt.block_on(async {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false);
        let (client, mut el) = AsyncClient::new(o, 10);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
                break;
            }
        }
        client.disconnect().await.expect("disconnect");
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while el.poll().await.is_ok() {}
        })
        .await;
    });
}

/// Ends a persistent session (a clean-session connect discards it at the broker), so that
/// an earlier kind's offline sessions do not collect copies of the next kind's messages:
/// ingest subscribes to every format, so its session would take P1 telegrams too.
pub fn end_session(rt: &tokio::runtime::Runtime, port: u16, client_id: &str) {
    rt.block_on(async {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(true);
        let (client, mut el) = AsyncClient::new(o, 10);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("ending session {client_id}: {e}"),
            }
        }
        client.disconnect().await.expect("disconnect");
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while el.poll().await.is_ok() {}
        })
        .await;
    });
}

struct Ready;
impl Readiness for Ready {
    fn store_open(&self) -> bool {
        true
    }
    fn broker_receiving(&self) -> bool {
        true
    }
}

/// The API served over plain HTTP on loopback from a store, with one analyst token: auth,
/// audit (to `audit`), k-anonymity and metrics in the path, as the service serves it.
#[derive(Debug)]
pub struct AnalystApi {
    pub addr: SocketAddr,
    pub token: &'static str,
    http: reqwest::Client,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// One request's answer: its latency (from the request to the last byte) and its rows.
#[derive(Debug)]
pub struct Answer {
    pub ms: f64,
    pub rows: usize,
    /// Distinct periods among the rows.
    pub periods: usize,
    pub bytes: usize,
}

impl AnalystApi {
    /// Starts the server on the current runtime.
    pub async fn start(
        store: Arc<dyn ReadingStore>,
        pseudonymiser: Arc<Pseudonymiser>,
        calendar: Calendar,
        audit: &Path,
    ) -> AnalystApi {
        let token = "bench-analyst-token";
        let hash = meterstand_api::hash_token(token);
        let state = ApiState::new(ApiParts {
            readiness: Arc::new(Ready),
            backend: store,
            pseudonymiser,
            tokens: TokenTable::new([("bench", Role::Analyst, hash.as_str())]).expect("tokens"),
            audit: AuditLog::open(audit).expect("audit"),
            calendar,
            config: ApiConfig::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let server = tokio::spawn(meterstand_api::serve(listener, state, stop.clone()));
        AnalystApi {
            addr,
            token,
            http: reqwest::Client::new(),
            stop,
            server,
        }
    }

    /// `GET /v1/statistics?{query}` (keep-alive), timed from the request to the last byte
    /// of the answer: the service's latency. The client's own JSON decoding (a few ms for
    /// thousands of rows into a generic value) is done after the clock stops.
    pub async fn statistics(&self, query: &str) -> Answer {
        let url = format!("http://{}/v1/statistics?{query}", self.addr);
        let start = Instant::now();
        let resp = self
            .http
            .get(&url)
            .bearer_auth(self.token)
            .send()
            .await
            .expect("send");
        assert!(resp.status().is_success(), "{}", resp.status());
        let body = resp.bytes().await.expect("body");
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let rows = v["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
        let periods: std::collections::HashSet<&str> = rows
            .iter()
            .filter_map(|r| r["period_start"].as_str())
            .collect();
        Answer {
            ms,
            rows: rows.len(),
            periods: periods.len(),
            bytes: body.len(),
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
    }
}

/// The `q` quantile of `values` (sorted here), nearest rank; 0 for none.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 * q) as usize).min(values.len() - 1)]
}

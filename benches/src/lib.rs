//! What the end-to-end benchmarks share: their runtime and broker, the store and ingest
//! configuration (with the memory knob), and persistent MQTT sessions made at the broker
//! before messages are queued for them, and ended after, so that each figure measures
//! delivery of what was queued and no offline session collects copies of the next run's
//! messages.

use std::path::Path;
use std::time::Duration;

use meterstand_ingest::IngestConfig;
use meterstand_model::ConsentLevel;
use meterstand_store_rocks::StoreConfig;
use meterstand_testkit::Mosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

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
    let mut ic = IngestConfig::new(format!("mqtt://127.0.0.1:{port}"));
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

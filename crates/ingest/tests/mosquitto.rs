//! Ingest against a real Mosquitto on a free port, storing into `MemStore`: hostile sizes,
//! P1 telegrams, and redelivery after ingest died on a failing store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use meterstand_codec::p1;
use meterstand_ingest::{Ingest, IngestConfig, IngestError, IngestHandle, IngestStatus, metrics};
use meterstand_model::{ConsentLevel, Ean, MeterId, Register, Tier};
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::{MemStore, ReadingStore, RetentionPolicy, SystemClock};
use meterstand_testkit::{Mosquitto, ean_from, free_port};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

fn pseudonymiser() -> Arc<Pseudonymiser> {
    Arc::new(Pseudonymiser::new(&KeyRing::from_keys([(1, [9u8; 32])])))
}

fn store() -> Arc<MemStore> {
    Arc::new(MemStore::with_policy(
        Arc::new(SystemClock),
        ConsentLevel::Interval,
        RetentionPolicy::default(),
    ))
}

fn ean(i: u64) -> Ean {
    ean_from(5, i)
}

/// A quarter-hour boundary an hour or so ago: valid, and within every retention.
fn recent_boundary() -> Timestamp {
    let now = Timestamp::now().as_second();
    Timestamp::from_second(now - now.rem_euclid(900) - 3600).expect("time")
}

fn json(value_wh: u64, at: Timestamp) -> Vec<u8> {
    format!(
        r#"{{"meter":"E0031003262764316","readings":[{{"obis":"1-0:1.8.1","time":"{at}","value":"{}.{:03}","unit":"kWh"}}]}}"#,
        value_wh / 1000,
        value_wh % 1000
    )
    .into_bytes()
}

fn stored(store: &MemStore, ean: &Ean, at: Timestamp) -> usize {
    let p = pseudonymiser().ean(ean);
    let to = at
        .checked_add(jiff::SignedDuration::from_secs(1))
        .expect("t");
    store
        .readings(p, Tier::Interval, at, to)
        .map(|r| r.len())
        .unwrap_or(0)
}

/// Publishes each message with QoS 1 and returns once the broker acknowledged all of them.
async fn publish(url_port: u16, messages: Vec<(String, Vec<u8>)>) {
    let mut o = MqttOptions::new(format!("pub-{}", free_port()), "127.0.0.1", url_port);
    o.set_max_packet_size(1 << 20, 8 << 20);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let n = messages.len();
    tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("queue publish");
        }
    });
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acked < n {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher: {e}"),
            Err(_) => panic!("publisher: only {acked} of {n} acknowledged"),
        }
    }
}

struct Running {
    status: Arc<IngestStatus>,
    shutdown: CancellationToken,
    handle: IngestHandle,
}

async fn start_ingest(config: IngestConfig, store: Arc<MemStore>) -> Running {
    let status = Arc::new(IngestStatus::default());
    let shutdown = CancellationToken::new();
    let handle = Ingest::start(
        config,
        store,
        pseudonymiser(),
        status.clone(),
        shutdown.clone(),
    )
    .expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Subscribed, not only connected: what is published before the SUBACK would be lost.
    while !status.is_receiving() {
        assert!(Instant::now() < deadline, "ingest did not subscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Running {
        status,
        shutdown,
        handle,
    }
}

async fn eventually(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(broker: &Mosquitto, client_id: &str) -> IngestConfig {
    let mut c = IngestConfig::new(broker.url().parse().expect("broker url"));
    c.client_id = client_id.into();
    c.batch_max_delay = Duration::from_millis(5);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_message_does_not_wedge_ingest() {
    let broker = Mosquitto::start();
    let store = store();
    let ingest = start_ingest(config(&broker, "ingest-huge"), store.clone()).await;
    let at = recent_boundary();
    let oversize = metrics::REJECTED.with_label_values(&["oversize"]);
    let before = oversize.get();
    // 2 MB: over our Maximum Packet Size, so Mosquitto (no limit of its own) never sends
    // it. 100 kB: over `max_payload_bytes` (64 KiB) but within the packet size: it arrives
    // and is a counted reject. Then a valid message, which must get through.
    let huge = vec![b'x'; 2 << 20];
    let big = vec![b'x'; 100 << 10];
    publish(
        broker.port,
        vec![
            (format!("meters/{}/json", ean(1).expose()), huge),
            (format!("meters/{}/json", ean(2).expose()), big),
            (format!("meters/{}/json", ean(3).expose()), json(42_000, at)),
        ],
    )
    .await;
    eventually("the valid message stored", Duration::from_secs(5), || {
        stored(&store, &ean(3), at) == 1
    })
    .await;
    eventually(
        "the 100 kB message rejected",
        Duration::from_secs(5),
        || oversize.get() > before,
    )
    .await;
    assert!(ingest.status.connected.load(Ordering::SeqCst));
    assert_eq!(stored(&store, &ean(1), at), 0);
    ingest.shutdown.cancel();
    ingest.handle.await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p1_telegram_on_a_boundary_is_stored() {
    let broker = Mosquitto::start();
    let store = store();
    let ingest = start_ingest(config(&broker, "ingest-p1"), store.clone()).await;
    let at = recent_boundary();
    let meter: MeterId = "E0031003262764316".parse().expect("meter");
    let captured = at
        .checked_add(jiff::SignedDuration::from_secs(2))
        .expect("t");
    let telegram = p1::encode_dsmr5(&meter, captured, &[(Register::ImportT1, 1_234_567)], None);
    publish(
        broker.port,
        vec![(
            format!("meters/{}/p1", ean(7).expose()),
            telegram.into_bytes(),
        )],
    )
    .await;
    eventually("the telegram stored", Duration::from_secs(5), || {
        stored(&store, &ean(7), at) == 1
    })
    .await;
    ingest.shutdown.cancel();
    ingest.handle.await.expect("clean shutdown");
    assert_eq!(ingest.status.rejected.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_dies_on_a_failing_store_and_the_next_session_gets_the_message() {
    let broker = Mosquitto::start();
    let at = recent_boundary();
    let failing = store();
    failing.fail_next_writes(u32::MAX);
    let mut c = config(&broker, "ingest-redelivery");
    c.write_retries = 1;
    let ingest = start_ingest(c.clone(), failing.clone()).await;
    publish(
        broker.port,
        vec![(format!("meters/{}/json", ean(9).expose()), json(7_000, at))],
    )
    .await;
    let died = tokio::time::timeout(Duration::from_secs(10), ingest.handle)
        .await
        .expect("ingest ends on its own");
    assert!(matches!(died, Err(IngestError::Write { .. })), "{died:?}");
    assert_eq!(ingest.status.acked.load(Ordering::Relaxed), 0);

    // A restart (same client id, persistent session) gets the unacknowledged message again.
    let healthy = store();
    let again = start_ingest(c, healthy.clone()).await;
    eventually(
        "the redelivered message stored",
        Duration::from_secs(10),
        || stored(&healthy, &ean(9), at) == 1,
    )
    .await;
    again.shutdown.cancel();
    again.handle.await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mqtt_3_1_1_a_huge_message_is_a_counted_reject() {
    let broker = Mosquitto::start();
    let store = store();
    let mut c = config(&broker, "ingest-v311");
    c.mqtt_version = meterstand_ingest::MqttVersion::V311;
    let ingest = start_ingest(c, store.clone()).await;
    let at = recent_boundary();
    let oversize = metrics::REJECTED.with_label_values(&["oversize"]);
    let before = oversize.get();
    publish(
        broker.port,
        vec![
            (
                format!("meters/{}/json", ean(11).expose()),
                vec![b'x'; 2 << 20],
            ),
            (format!("meters/{}/json", ean(12).expose()), json(5_000, at)),
        ],
    )
    .await;
    eventually("the valid message stored", Duration::from_secs(5), || {
        stored(&store, &ean(12), at) == 1
    })
    .await;
    assert!(
        oversize.get() > before,
        "the 2 MB message arrived and was rejected"
    );
    ingest.shutdown.cancel();
    ingest.handle.await.expect("clean shutdown");
}

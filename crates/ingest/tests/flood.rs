//! A broker that sends far past our window must cost ingest a few bytes per message, not a
//! queued packet per message. Mosquitto 2.0 does this when a persistent session with a
//! backlog reconnects: it delivers the whole backlog at once, whatever our Receive Maximum.
//! Every message is then stored and must be acknowledged; the acks wait for the connection.
//!
//! The test binary counts live Rust heap (RocksDB is not involved: the store is `MemStore`,
//! and every message carries the same reading, so the store holds one entry).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use meterstand_ingest::{Ingest, IngestConfig, IngestStatus};
use meterstand_model::ConsentLevel;
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::{MemStore, RetentionPolicy, SystemClock};
use meterstand_testkit::{Mosquitto, Publisher, ean_from};
use peakmem_alloc::{INSTRUMENTED_SYSTEM, PeakMemAlloc, PeakMemAllocTrait};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static HEAP: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const BACKLOG: u64 = 60_000;
const WINDOW: usize = 64;

fn config(broker: &Mosquitto) -> IngestConfig {
    let mut c = IngestConfig::new(broker.url());
    c.client_id = "flooded".into();
    c.max_unacked = WINDOW;
    c.batch_max_messages = 500;
    c.batch_max_delay = Duration::from_millis(5);
    c
}

/// One session of ingest: runs until `done` holds for its status (or for a minute), then
/// shuts down cleanly.
fn session(
    rt: &tokio::runtime::Runtime,
    broker: &Mosquitto,
    store: Arc<MemStore>,
    done: impl Fn(&IngestStatus) -> bool,
) -> Arc<IngestStatus> {
    let status = Arc::new(IngestStatus::default());
    let shutdown = CancellationToken::new();
    rt.block_on(async {
        let handle = Ingest::start(
            config(broker),
            store,
            Arc::new(Pseudonymiser::new(&KeyRing::from_keys([(1, [9u8; 32])]))),
            status.clone(),
            shutdown.clone(),
        )
        .expect("start");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(status.connected.load(Ordering::SeqCst) && done(&status)) {
            assert!(
                Instant::now() < deadline,
                "ingest did not finish in time: {} messages, {} acked",
                status.messages.load(Ordering::Relaxed),
                status.acked.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        handle.wait().await.expect("clean shutdown");
    });
    status
}

#[test]
fn a_broker_flooding_past_our_window_costs_bytes_per_message_not_packets() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let broker = Mosquitto::start();
    let store = Arc::new(MemStore::with_policy(
        Arc::new(SystemClock),
        ConsentLevel::Interval,
        RetentionPolicy::default(),
    ));

    // The persistent session subscribes, then goes away.
    let start = Instant::now();
    session(&rt, &broker, store.clone(), |_| {
        start.elapsed() > Duration::from_millis(300)
    });

    // Its backlog: the same valid reading, many times over.
    let now = Timestamp::now().as_second();
    let at = Timestamp::from_second(now - now.rem_euclid(900) - 3600).expect("time");
    let payload = format!(
        r#"{{"meter":"E0031003262764316","readings":[{{"obis":"1-0:1.8.1","time":"{at}","value":"1.234","unit":"kWh"}}]}}"#
    );
    let topic = format!("meters/{}/json", ean_from(5, 1).expose());
    {
        let mut publisher = Publisher::connect(broker.port, "flood-publisher");
        for _ in 0..BACKLOG {
            publisher.publish(&topic, payload.clone().into_bytes());
        }
        publisher.wait_acked();
    }

    // Reconnect: the broker sends the backlog far past our window of 64.
    HEAP.reset_peak_memory();
    let status = session(&rt, &broker, store.clone(), |s| {
        s.acked.load(Ordering::Relaxed) >= BACKLOG
    });
    let peak = HEAP.get_peak_memory();
    assert_eq!(status.messages.load(Ordering::Relaxed), BACKLOG);
    assert_eq!(status.rejected.load(Ordering::Relaxed), 0);

    // Every ack reached the broker: a new session of the same client gets nothing.
    let start = Instant::now();
    let after = session(&rt, &broker, store, |_| {
        start.elapsed() > Duration::from_secs(2)
    });
    assert_eq!(
        after.messages.load(Ordering::Relaxed),
        0,
        "the broker redelivered messages whose acks never left"
    );

    // What the flood may cost: the window's messages and fixed buffers, plus a few bytes per
    // message whose ack waits for the connection. A queued rumqttc request is about 230 B.
    let per_message = peak as f64 / BACKLOG as f64;
    eprintln!("flood of {BACKLOG}: peak live heap growth {peak} B, {per_message:.1} B/message");
    assert!(
        peak < 4 * 1024 * 1024 + 32 * BACKLOG as usize,
        "peak live heap grew by {peak} B ({per_message:.1} B per message) under the flood"
    );
}

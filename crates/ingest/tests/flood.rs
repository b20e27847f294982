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

/// The tests measure one process-wide heap: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What ingest may hold: a window of messages and a budget of payload bytes.
#[derive(Clone, Copy)]
struct Bounds {
    window: usize,
    bytes: usize,
}

fn config(broker: &Mosquitto, bounds: Bounds) -> IngestConfig {
    let mut c = IngestConfig::new(broker.url().parse().expect("broker url"));
    c.client_id = "flooded".into();
    c.max_unacked = bounds.window;
    c.max_unacked_bytes = bounds.bytes;
    c.batch_max_messages = 500;
    c.batch_max_delay = Duration::from_millis(5);
    c
}

/// One session of ingest: runs until `done` holds for its status (or for a minute), then
/// shuts down cleanly.
fn session(
    rt: &tokio::runtime::Runtime,
    broker: &Mosquitto,
    bounds: Bounds,
    store: Arc<MemStore>,
    done: impl Fn(&IngestStatus) -> bool,
) -> Arc<IngestStatus> {
    let status = Arc::new(IngestStatus::default());
    let shutdown = CancellationToken::new();
    rt.block_on(async {
        let handle = Ingest::start(
            config(broker, bounds),
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

/// Queues `backlog` copies of `payload` for ingest's persistent session, reconnects it (the
/// broker then sends them all at once) and returns the peak heap growth while it drained
/// them. Checks that everything was taken and acknowledged.
fn flood(bounds: Bounds, backlog: u64, payload: &str) -> usize {
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

    // The persistent session subscribes (the broker acknowledged it), then goes away.
    session(
        &rt,
        &broker,
        bounds,
        store.clone(),
        IngestStatus::is_receiving,
    );

    // Its backlog: the same valid message, many times over.
    let topic = format!("meters/{}/json", ean_from(5, 1).expose());
    {
        let mut publisher = Publisher::connect(broker.port, "flood-publisher");
        for _ in 0..backlog {
            publisher.publish(&topic, payload.as_bytes().to_vec());
        }
        publisher.wait_acked();
    }

    // Reconnect: the broker sends the whole backlog at once.
    HEAP.reset_peak_memory();
    let status = session(&rt, &broker, bounds, store.clone(), |s| {
        s.acked.load(Ordering::Relaxed) >= backlog
    });
    let peak = HEAP.get_peak_memory();
    assert_eq!(status.messages.load(Ordering::Relaxed), backlog);
    assert_eq!(status.rejected.load(Ordering::Relaxed), 0);

    // Every ack reached the broker: a new session of the same client gets nothing.
    let start = Instant::now();
    let after = session(&rt, &broker, bounds, store, |_| {
        start.elapsed() > Duration::from_secs(2)
    });
    assert_eq!(
        after.messages.load(Ordering::Relaxed),
        0,
        "the broker redelivered messages whose acks never left"
    );
    peak
}

/// `readings` consecutive quarter-hours of one register, ending an hour ago.
fn payload(readings: i64) -> String {
    let now = Timestamp::now().as_second();
    let last = now - now.rem_euclid(900) - 3600;
    let list: Vec<String> = (0..readings)
        .map(|i| {
            let at = Timestamp::from_second(last - (readings - 1 - i) * 900).expect("time");
            format!(
                r#"{{"obis":"1-0:1.8.1","time":"{at}","value":"{}.{:03}","unit":"kWh"}}"#,
                1 + i / 1000,
                i % 1000
            )
        })
        .collect();
    format!(
        r#"{{"meter":"E0031003262764316","readings":[{}]}}"#,
        list.join(",")
    )
}

#[test]
fn a_broker_flooding_past_our_window_costs_bytes_per_message_not_packets() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const BACKLOG: u64 = 60_000;
    let peak = flood(
        Bounds {
            window: 64,
            bytes: 32 << 20,
        },
        BACKLOG,
        &payload(1),
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

/// The window counts messages; large messages are bounded by bytes too: ingest stops
/// reading from the broker while the payloads it holds reach `max_unacked_bytes`.
#[test]
fn large_messages_are_held_to_the_byte_budget_whatever_the_window() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const BACKLOG: u64 = 20_000;
    let payload = payload(24);
    let budget = 256 << 10;
    let peak = flood(
        Bounds {
            window: 20_000,
            bytes: budget,
        },
        BACKLOG,
        &payload,
    );
    let backlog_bytes = payload.len() * BACKLOG as usize;
    eprintln!(
        "flood of {BACKLOG} x {} B ({backlog_bytes} B): peak live heap growth {peak} B",
        payload.len()
    );
    // The budget's payloads (kept in the read buffers they arrived in, up to twice their
    // size), their decoded readings and fixed buffers: far below the backlog.
    assert!(
        peak < 6 * 1024 * 1024,
        "peak live heap grew by {peak} B under a {budget} B budget (backlog {backlog_bytes} B)"
    );
}

//! Ingest end to end: a real Mosquitto, the service in-process (or as a child process where
//! the test needs its log or SIGKILL), the store read back after the service stopped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use jiff::Timestamp;
use meterstand_model::{Ean, Reading, Register, Tier};
use meterstand_store::ReadingStore;
use rand::Rng;

/// This file's own EANs.
fn ean(n: u64) -> Ean {
    ean_from(1, n)
}

fn import_readings(start: Timestamp, quarters: i64, base: u64) -> Vec<Reading> {
    (0..quarters)
        .map(|i| Reading {
            register: Register::ImportT1,
            time: Timestamp::from_second(start.as_second() + i * 900).expect("in range"),
            value: base + i as u64 * 25,
        })
        .collect()
}

#[test]
fn publish_then_stored_for_both_formats_rejects_counted_duplicates_idempotent_no_plaintext() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    // A child process: the test greps what the process logged (debug level) for identifiers.
    let svc = Spawned::start(&dirs, &broker.url(), &[]);
    let mut publisher = Publisher::connect(broker.port, "test-publisher");
    let start = quarters_ago(20);

    // Good messages: one JSON, one bincode, then the JSON one again (a duplicate).
    let json_readings = import_readings(start, 8, 1_000_000);
    let bin_readings = import_readings(start, 8, 2_000_000);
    publisher.publish(
        &format!("meters/{}/json", ean(1).expose()),
        json_payload(&meter_id(1), &json_readings),
    );
    publisher.publish(
        &format!("meters/{}/bincode", ean(2).expose()),
        bincode_payload(&meter_id(2), &bin_readings),
    );
    publisher.publish(
        &format!("meters/{}/json", ean(1).expose()),
        json_payload(&meter_id(1), &json_readings),
    );

    // One message per reject reason that reaches the service.
    let good = ean(3);
    let bad_ean = bad_check_digit(&good);
    let t = start.to_string();
    let one = |obis: &str, time: &str, value: &str, unit: &str| {
        format!(r#"{{"meter":"{}","readings":[{{"obis":"{obis}","time":"{time}","value":"{value}","unit":"{unit}"}}]}}"#, meter_id(3))
            .into_bytes()
    };
    let future = Timestamp::from_second(Timestamp::now().as_second() / 900 * 900 + 86_400)
        .expect("ok")
        .to_string();
    let g = good.expose();
    let rejects: Vec<(String, Vec<u8>, &str)> = vec![
        (
            format!("meters/{bad_ean}/json"),
            one("1-0:1.8.1", &t, "1", "kWh"),
            "bad_ean",
        ),
        (format!("meters/{g}/json"), b"{broken".to_vec(), "malformed"),
        (format!("meters/{g}/bincode"), vec![0xff; 7], "malformed"),
        (
            format!("meters/{g}/json"),
            one("1-0:1.8.1", &t, "1", "kWh")
                .iter()
                .map(|b| if *b == b'E' { b'#' } else { *b })
                .collect(),
            "bad_meter_id",
        ),
        (
            format!("meters/{g}/json"),
            one("1-0:9.9.9", &t, "1", "kWh"),
            "unknown_obis",
        ),
        (
            format!("meters/{g}/json"),
            one("1-0:1.8.1", &t, "1", "m3"),
            "wrong_unit",
        ),
        (
            format!("meters/{g}/json"),
            one("1-0:1.8.1", &t, "-1", "kWh"),
            "negative_value",
        ),
        (
            format!("meters/{g}/json"),
            one("1-0:1.8.1", &t, "1.23456", "kWh"),
            "bad_value",
        ),
        (
            format!("meters/{g}/json"),
            one("1-0:1.8.1", &t, "999999999999", "kWh"),
            "absurd_value",
        ),
        (
            format!("meters/{g}/json"),
            one("1-0:1.8.1", "noon", "1", "kWh"),
            "bad_time",
        ),
        (
            format!("meters/{g}/json"),
            one("1-0:1.8.1", &future, "1", "kWh"),
            "future_time",
        ),
        (
            format!("meters/{g}/json"),
            one("1-0:1.8.1", "2026-11-26T10:07:00Z", "1", "kWh"),
            "off_boundary",
        ),
        (format!("meters/{g}/json"), vec![b' '; 70_000], "oversize"),
    ];
    for (topic, payload, _) in &rejects {
        publisher.publish(topic, payload.clone());
    }
    // A good message after the rejects: nothing after them is lost.
    let late = import_readings(start, 4, 3_000_000);
    publisher.publish(
        &format!("meters/{g}/json"),
        json_payload(&meter_id(3), &late),
    );
    publisher.wait_acked();

    let total = 3 + rejects.len() as u64 + 1;
    svc.wait_acked(total, Duration::from_secs(30));
    let mut expected: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, _, reason) in &rejects {
        *expected.entry(reason).or_default() += 1.0;
    }
    for (reason, n) in expected {
        let got = svc.metric(&format!(
            "meterstand_ingest_rejected_total{{reason=\"{reason}\"}}"
        ));
        assert_eq!(got, Some(n), "rejects for {reason}");
    }
    // A duplicate counts once per tier the reading lies on (a local midnight is also a day entry).
    let cal = meterstand_model::Calendar::amsterdam();
    let dup_entries: usize = json_readings
        .iter()
        .map(|r| cal.tiers_of(r.register, r.time).iter().count())
        .sum();
    assert_eq!(
        svc.metric("meterstand_store_duplicates_total"),
        Some(dup_entries as f64)
    );
    assert_eq!(
        svc.metric("meterstand_store_readings_stored_total{tier=\"interval\"}")
            .map(|v| v >= 20.0),
        Some(true)
    );
    svc.stop();

    let p = dirs.pseudonymiser();
    let store = dirs.open_store();
    let read = |e: &Ean| {
        store
            .readings(p.ean(e), Tier::Interval, Timestamp::MIN, Timestamp::MAX)
            .expect("read")
    };
    assert_eq!(read(&ean(1)), json_readings);
    assert_eq!(read(&ean(2)), bin_readings);
    assert_eq!(read(&good), late);
    drop(store);

    // No plaintext identifier at rest: not in the data directory, not in the logs.
    let mut needles: Vec<Vec<u8>> = [ean(1), ean(2), good]
        .iter()
        .map(|e| e.expose().as_bytes().to_vec())
        .collect();
    needles.extend((1..=3).map(|n| meter_id(n).into_bytes()));
    needles.push(bad_ean.into_bytes());
    let mut files = files_below(&dirs.data);
    files.push(dirs.log.clone());
    assert!(files.len() > 3, "data directory and log exist");
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{} holds a plaintext identifier",
                file.display()
            );
        }
    }
    assert!(
        std::fs::metadata(&dirs.log)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "the service logged something"
    );
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_stores_each_reading_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let url = broker.url();
    let mut publisher = Publisher::connect(broker.port, "ledger-publisher");
    let seed = Seed::new("sigkill_at_random_moments");
    let mut rng = seed.rng(1);
    // Ledger: 200 connections × 100 quarter-hours = 20,000 readings, 10 per message.
    let start = quarters_ago(150);
    let mut ledger: BTreeMap<u64, Vec<Reading>> = BTreeMap::new();
    let mut messages = Vec::new();
    for c in 0..200u64 {
        let readings = import_readings(start, 100, 10_000 * c);
        for chunk in readings.chunks(10) {
            messages.push((
                format!("meters/{}/json", ean(100 + c).expose()),
                json_payload(&meter_id(c), chunk),
            ));
        }
        ledger.insert(c, readings);
    }
    // Publish in slices while the service is killed and restarted.
    let slices: Vec<_> = messages
        .chunks(messages.len() / 4 + 1)
        .map(|s| s.to_vec())
        .collect();
    for slice in slices {
        let svc = Spawned::start(
            &dirs,
            &url,
            &[("METERSTAND__INGEST__BATCH_MAX_MESSAGES", "50")],
        );
        for (topic, payload) in slice {
            publisher.publish(&topic, payload);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(50..600)));
        svc.kill();
    }
    publisher.wait_acked();
    // A last run drains what the broker kept for our persistent session.
    let svc = Spawned::start(&dirs, &url, &[]);
    svc.drain(&mut publisher, Duration::from_secs(120));
    svc.stop();

    let p = dirs.pseudonymiser();
    let store = dirs.open_store();
    let mut total = 0;
    for (c, readings) in &ledger {
        let stored = store
            .readings(
                p.ean(&ean(100 + c)),
                Tier::Interval,
                Timestamp::MIN,
                Timestamp::MAX,
            )
            .expect("read");
        let unique: BTreeSet<_> = stored.iter().map(|r| (r.register, r.time)).collect();
        assert_eq!(unique.len(), stored.len(), "each reading stored once");
        assert_eq!(
            &stored, readings,
            "connection {c} has every published reading, with its value"
        );
        total += stored.len();
    }
    assert_eq!(total, 20_000);
}

#[test]
fn broker_restart_mid_stream_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let svc = InProcess::start(&dirs, &broker.url(), &[]);
    let start = quarters_ago(60);
    let all = import_readings(start, 48, 5_000);
    {
        let mut publisher = Publisher::connect(broker.port, "restart-publisher-1");
        for chunk in all[..24].chunks(4) {
            publisher.publish(
                &format!("meters/{}/json", ean(7).expose()),
                json_payload(&meter_id(7), chunk),
            );
        }
        publisher.wait_acked();
    }
    // Graceful stop: mosquitto saves its persistence file. While it is away the service says so.
    broker.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while svc.client.get("/readyz").map(|(status, _)| status) != Some(503) {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still ready with the broker gone"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, body) = svc.client.get("/readyz").expect("readyz");
    assert!(
        body.contains("\"broker_receiving\":false") && body.contains("\"store_open\":true"),
        "{body}"
    );
    assert!(!svc.connected());
    broker.start_again();
    let mut publisher = Publisher::connect(broker.port, "restart-publisher-2");
    for chunk in all[24..].chunks(4) {
        publisher.publish(
            &format!("meters/{}/json", ean(7).expose()),
            json_payload(&meter_id(7), chunk),
        );
    }
    publisher.wait_acked();
    // The service reconnects on its own and takes the rest from its persistent session.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = svc.stored().interval;
        if stored >= 48 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {stored} of 48 readings stored after the broker restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        svc.metric("meterstand_mqtt_reconnects_total")
            .unwrap_or(0.0)
            >= 1.0,
        "the restart was seen"
    );
    svc.stop();
    let store = dirs.open_store();
    let stored = store
        .readings(
            dirs.pseudonymiser().ean(&ean(7)),
            Tier::Interval,
            Timestamp::MIN,
            Timestamp::MAX,
        )
        .expect("read");
    assert_eq!(stored, all);
}

/// Ready means receiving: connected is not enough while the broker has not granted the
/// subscriptions at QoS 1 (what is published before the SUBACK is not delivered to us; at
/// QoS 0 it is delivered without acknowledgement and can be lost). A broker that grants QoS
/// 0 only leaves the service connected and `/readyz` at 503, saying why in the log.
#[test]
fn readyz_waits_for_the_broker_to_grant_the_subscriptions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_with(&tmp.path().join("mosquitto"), "max_qos 0");
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let svc = Spawned::spawn(&dirs, &broker.url(), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = || {
        std::fs::read_to_string(&dirs.log)
            .unwrap_or_default()
            .contains("broker refused a subscription")
    };
    while svc.metric("meterstand_mqtt_connected") != Some(1.0) || !refused() {
        assert!(
            Instant::now() < deadline,
            "the service neither connected nor saw its subscriptions refused: {}\n{}",
            std::fs::read_to_string(&dirs.log).unwrap_or_default(),
            std::fs::read_to_string(broker.log()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = svc.http("GET", "/readyz", None, None).expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"broker_receiving\":false") && body.contains("\"store_open\":true"),
        "{body}"
    );
    svc.stop();
}

/// "Stay failed", end to end: when the store stops taking writes (a fault armed in the child
/// process, as a failing disk would), ingest gives up after its retries and the process ends
/// with a non-zero code saying why: its supervisor restarts it, instead of a service that
/// answers `/healthz` and ingests nothing.
#[test]
fn a_store_that_cannot_write_ends_the_process_with_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let fault = [(meterstand_store_rocks::FAULT_ENV, "group_write")];
    let mut svc = Spawned::start(&dirs, &broker.url(), &fault);
    assert_eq!(
        svc.http("GET", "/healthz", None, None).map(|r| r.0),
        Some(200)
    );
    let mut publisher = Publisher::connect(broker.port, "failing-store-publisher");
    publisher.publish(
        &format!("meters/{}/json", ean(900).expose()),
        json_payload(&meter_id(900), &import_readings(quarters_ago(40), 4, 1_000)),
    );
    publisher.wait_acked();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = svc.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the service still runs although it cannot store"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "exit status {status}");
    assert!(
        svc.http("GET", "/healthz", None, None).is_none(),
        "nothing answers for the dead process"
    );
    let log = std::fs::read_to_string(&dirs.log).expect("log");
    assert!(
        log.contains("store write failed; retrying") && log.contains("ingest died"),
        "{log}"
    );
    // Nothing was acknowledged: the broker keeps the message for the next run.
    let svc = Spawned::start(&dirs, &broker.url(), &[]);
    svc.wait_acked(1, Duration::from_secs(30));
    svc.stop();
    let stored = dirs
        .open_store()
        .readings(
            dirs.pseudonymiser().ean(&ean(900)),
            Tier::Interval,
            Timestamp::MIN,
            Timestamp::MAX,
        )
        .expect("read");
    assert_eq!(stored.len(), 4, "redelivered and stored after the restart");
}

//! The crash test, after RocksDB's: a continuous QoS 1 publisher keeps a ledger of what the
//! broker acknowledged while the service (a child process) is SIGKILLed at seeded random
//! moments and restarted, at least ten times: once during the retention sweep and once
//! while an erasure is in flight. After a final restart and drain every acknowledged
//! message is stored exactly once (or expired and swept), the erased subject has no
//! interval or day reading, and no file of the data directory (SST, WAL, MANIFEST) holds
//! the erased pseudonym's bytes.
//!
//! The service acknowledges to the broker only after a durable write, and the broker keeps
//! unacknowledged messages for the persistent session, so nothing acknowledged to the
//! publisher may be lost, whatever the moment of the kill.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use jiff::Timestamp;
use meterstand_model::{Calendar, Ean, Reading, Register, Tier};
use meterstand_store::ReadingStore;
use meterstand_testkit::files_containing_any_form;
use rand::Rng;

const CONNECTIONS: u64 = 60;
/// Fresh quarter-hours per connection, ending an hour ago: within the 1-day retention.
const FRESH_QUARTERS: i64 = 76;
/// Old quarter-hours per connection, two days ago: stored under the default retention, then
/// expired by the 1-day retention of every later run, for the sweep to remove.
const OLD_QUARTERS: i64 = 32;
const KILLS: usize = 12;

fn ean(n: u64) -> Ean {
    ean_from(4, n)
}

/// The subject whose erasure is interrupted.
const SUBJECT: u64 = 0;

#[derive(Clone)]
struct Message {
    connection: u64,
    topic: String,
    payload: Vec<u8>,
    readings: Vec<Reading>,
}

fn message(c: u64, readings: Vec<Reading>) -> Message {
    Message {
        connection: c,
        topic: format!("meters/{}/json", ean(c).expose()),
        payload: json_payload(&meter_id(c), &readings),
        readings,
    }
}

/// Readings of connection `c` at `quarters` quarter-hours from `start`; the subject's skip
/// month boundaries (month readings are kept through an erasure, for fiscal retention).
fn readings(c: u64, start: Timestamp, quarters: i64, cal: &Calendar) -> Vec<Reading> {
    (0..quarters)
        .map(|q| Reading {
            register: Register::ImportT1,
            time: Timestamp::from_second(start.as_second() + q * 900).expect("time"),
            value: 1_000_000 + c * 100_000 + q as u64 * 10,
        })
        .filter(|r| c != SUBJECT || !cal.tiers_of(r.register, r.time).contains(Tier::Month))
        .collect()
}

/// What a run of the service logged (the log file is shared by all runs).
fn log_since(dirs: &ServiceDirs, offset: u64) -> String {
    let all = std::fs::read(&dirs.log).unwrap_or_default();
    String::from_utf8_lossy(&all[(offset as usize).min(all.len())..]).into_owned()
}

fn log_len(dirs: &ServiceDirs) -> u64 {
    std::fs::metadata(&dirs.log).map(|m| m.len()).unwrap_or(0)
}

fn sst_files(dirs: &ServiceDirs) -> std::collections::BTreeSet<std::path::PathBuf> {
    files_below(&dirs.data)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect()
}

/// How the interrupted erasure is finished.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Erasure {
    /// As a privacy officer without a receipt would: ask again after the restart.
    ClientRetries,
    /// Not at all: the service must have finished it at start (an erasure journal).
    RedoneAtStart,
}

#[test]
fn sigkill_at_random_with_a_ledger_keeps_every_acked_message_once() {
    crash_test(Erasure::ClientRetries);
}

#[test]
fn an_erasure_interrupted_by_sigkill_is_redone_at_start() {
    crash_test(Erasure::RedoneAtStart);
}

fn crash_test(mode: Erasure) {
    let seed = Seed::new("crash_test");
    let mut rng = seed.rng(7);
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let url = broker.url();
    let cal = Calendar::amsterdam();
    let batch = ("METERSTAND__INGEST__BATCH_MAX_MESSAGES", "50");
    let sweep = ("METERSTAND__RETENTION__SWEEP_INTERVAL", "1s");
    let short = [
        batch,
        sweep,
        ("METERSTAND__RETENTION__INTERVAL", "1day"),
        ("METERSTAND__RETENTION__DAY", "1day"),
    ];

    let fresh_start = quarters_ago(FRESH_QUARTERS + 4);
    let old_start = quarters_ago(192);
    let mut old = Vec::new();
    for c in 0..CONNECTIONS {
        let r = readings(c, old_start, OLD_QUARTERS, &cal);
        old.extend(r.chunks(8).map(|chunk| message(c, chunk.to_vec())));
    }
    // One reading per message, connections interleaved, in time order.
    let mut fresh = Vec::new();
    let per_connection: Vec<Vec<Reading>> = (0..CONNECTIONS)
        .map(|c| readings(c, fresh_start, FRESH_QUARTERS, &cal))
        .collect();
    for q in 0..FRESH_QUARTERS as usize {
        for (c, r) in per_connection.iter().enumerate() {
            if let Some(r) = r.get(q) {
                fresh.push(message(c as u64, vec![*r]));
            }
        }
    }

    // Run 1, default retention: the old readings are stored.
    let mut kills = 0;
    let svc = Spawned::start(&dirs, &url, &[batch, sweep]);
    let mut publisher = Publisher::connect(broker.port, "crash-publisher");
    let mut ledger: BTreeMap<u64, Message> = BTreeMap::new();
    for m in &old {
        let id = publisher.publish(&m.topic, m.payload.clone());
        ledger.insert(id, m.clone());
    }
    publisher.wait_acked();
    svc.wait_acked(old.len() as u64, Duration::from_secs(60));

    // From here on a publisher publishes the fresh readings continuously, across the kills.
    let publishing = Arc::new(AtomicBool::new(true));
    let fresh_for_thread = fresh.clone();
    let running = publishing.clone();
    let mut pace = seed.rng(8);
    let publisher_thread = std::thread::spawn(move || {
        let mut ids = Vec::new();
        for chunk in fresh_for_thread.chunks(5) {
            for m in chunk {
                ids.push((publisher.publish(&m.topic, m.payload.clone()), m.clone()));
            }
            std::thread::sleep(Duration::from_millis(pace.random_range(5..30)));
        }
        publisher.wait_acked();
        running.store(false, Ordering::SeqCst);
        (publisher.acked(), ids)
    });
    std::thread::sleep(Duration::from_millis(rng.random_range(50..500)));
    svc.kill();
    kills += 1;

    // Run 2: the 1-day retention makes the old readings expired; the sweep runs at start.
    // It is held between its first tier's deletions and the rest (a crash-test pause, like
    // RocksDB's kill points) and killed there: a sweep cut in the middle.
    let before = log_len(&dirs);
    let paused = tmp.path().join("sweep-paused");
    let marker = paused.display().to_string();
    let mut in_sweep = short.to_vec();
    in_sweep.push((meterstand_store_rocks::SWEEP_PAUSE_ENV, marker.as_str()));
    let svc = Spawned::spawn(&dirs, &url, &in_sweep);
    meterstand_testkit::eventually(
        "the first sweep under the short retention reaching its pause",
        Duration::from_secs(60),
        || paused.exists(),
    );
    svc.kill();
    kills += 1;
    let log = log_since(&dirs, before);
    assert!(
        log.contains("crash-test pause") && !log.contains("retention sweep removed readings"),
        "the kill did not land inside the sweep:\n{log}"
    );
    eprintln!("kill {kills}: inside the first sweep, after its interval tier's deletions");

    // Random kills; one of them while an erasure of SUBJECT is in flight.
    let erasure_at = rng.random_range(kills + 1..KILLS - 1);
    let mut receipt: Option<(u16, String)> = None;
    let mut erasure_note = String::new();
    while kills < KILLS {
        let svc = Spawned::start(&dirs, &url, &short);
        std::thread::sleep(Duration::from_millis(rng.random_range(100..1200)));
        if kills + 1 == erasure_at {
            let files = sst_files(&dirs);
            let api = svc.api;
            let path = format!("/v1/subjects/{}", ean(SUBJECT).expose());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let client = Client::new(api);
                let _ =
                    tx.send(client.request("DELETE", &path, Some(&token("privacy_officer")), None));
            });
            // Kill when the erasure shows on disk (its flush writes new SST files), or when it
            // answered, whichever comes first.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(answer) = rx.try_recv() {
                    erasure_note = "the erasure answered before the kill".into();
                    receipt = answer;
                    break;
                }
                if sst_files(&dirs).difference(&files).next().is_some() {
                    erasure_note = "killed while the erasure was flushing and compacting".into();
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the erasure neither answered nor flushed"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            svc.kill();
            if receipt.is_none() {
                receipt = rx.recv_timeout(Duration::from_millis(100)).ok().flatten();
            }
            kills += 1;
            eprintln!("kill {kills}: {erasure_note} (receipt: {receipt:?})");
            continue;
        }
        svc.kill();
        kills += 1;
    }
    let (acked, ids) = publisher_thread.join().expect("publisher");
    assert!(!publishing.load(Ordering::SeqCst));
    for (id, m) in ids {
        ledger.insert(id, m);
    }
    assert_eq!(
        acked.len(),
        ledger.len(),
        "the broker acknowledged every message"
    );

    // The final run drains what the broker kept for the persistent session.
    let svc = Spawned::start(&dirs, &url, &short);
    svc.drain(
        &mut Publisher::connect(broker.port, "crash-drain"),
        Duration::from_secs(120),
    );
    // The erasure: whole, or redone at start. A client without a receipt asks again.
    let export = |svc: &Spawned| {
        let (status, body) = svc
            .http(
                "GET",
                &format!("/v1/subjects/{}/export", ean(SUBJECT).expose()),
                Some(&token("privacy_officer")),
                None,
            )
            .expect("export");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let n = |tier: &str| v["readings"][tier].as_array().map_or(0, Vec::len);
        (n("interval"), n("day"))
    };
    let left = export(&svc);
    eprintln!("after the final restart the erased subject has {left:?} interval/day readings");
    if mode == Erasure::ClientRetries && receipt.as_ref().map(|r| r.0) != Some(200) {
        let (status, body) = svc
            .http(
                "DELETE",
                &format!("/v1/subjects/{}", ean(SUBJECT).expose()),
                Some(&token("privacy_officer")),
                None,
            )
            .expect("erase again");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(export(&svc), (0, 0), "the erased subject has readings");
    svc.stop();

    // Every acknowledged message stored exactly once, the expired ones swept.
    let p = dirs.pseudonymiser();
    let store = dirs.open_store();
    let mut expected: BTreeMap<u64, Vec<Reading>> = BTreeMap::new();
    for m in ledger.values() {
        if m.readings[0].time >= fresh_start && m.connection != SUBJECT {
            expected
                .entry(m.connection)
                .or_default()
                .extend(m.readings.iter().copied());
        }
    }
    let mut total = 0;
    for c in 0..CONNECTIONS {
        let pseudonym = p.ean(&ean(c));
        let stored = store
            .readings(pseudonym, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
            .expect("read");
        let mut want = expected.remove(&c).unwrap_or_default();
        want.sort_by_key(|r| (r.time, r.register));
        assert_eq!(
            stored, want,
            "connection {c}: acked readings, each once, none expired"
        );
        let day = store
            .readings(pseudonym, Tier::Day, Timestamp::MIN, fresh_start)
            .expect("read");
        assert!(
            day.is_empty(),
            "connection {c}: expired day readings were not swept: {day:?}"
        );
        total += stored.len();
    }
    assert_eq!(
        total,
        (CONNECTIONS as usize - 1) * FRESH_QUARTERS as usize,
        "every fresh reading of the other connections"
    );
    drop(store);

    // No byte of the erased pseudonym left in any file of the data directory (RocksDB's
    // info LOG included), raw or spelled as hex in either case.
    let erased = p.ean(&ean(SUBJECT)).to_bytes();
    let holding = files_containing_any_form(&dirs.data, &erased[2..]);
    assert!(
        holding.is_empty(),
        "the erased pseudonym's bytes are still in {holding:?} ({erasure_note})"
    );
    eprintln!("{kills} kills (one inside a sweep); {erasure_note}");
}

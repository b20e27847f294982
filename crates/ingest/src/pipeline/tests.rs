//! The pipeline driven in-process: a recording acker, a fake writer whose writes can be
//! failed, and paused tokio time, so batching by size and by delay is exact and fast.

use std::sync::Mutex;
use std::sync::atomic::AtomicU32;

use meterstand_codec::Limits;
use meterstand_model::{ConsentLevel, Ean, MeterId, Register, Tier};
use meterstand_pseudonym::KeyRing;
use meterstand_store::{ManualClock, MemStore, ReadingStore, RetentionPolicy};
use tokio::time::Instant as TokioInstant;

use super::*;
use crate::IngestHandle;

/// Acks as the broker would see them: message numbers, in the order queued.
#[derive(Clone, Default)]
struct RecordingAcker(Arc<Mutex<Vec<u64>>>);

impl RecordingAcker {
    fn acked(&self) -> Vec<u64> {
        self.0.lock().expect("lock").clone()
    }
}

impl Acker for RecordingAcker {
    type Token = u64;
    fn ack(&self, token: &u64) -> Result<(), AckError> {
        self.0.lock().expect("lock").push(*token);
        Ok(())
    }
}

/// Records each attempt; fails the next `fail_next` attempts, and every attempt holding a
/// reading with the `poison` value.
#[derive(Default)]
struct FakeWriter {
    /// Per attempt: the reading values it held, in order, and whether it succeeded.
    attempts: Mutex<Vec<(Vec<u64>, bool)>>,
    /// `Debug` of every item each attempt held, to compare a retry with its first attempt.
    items: Mutex<Vec<Vec<String>>>,
    fail_next: AtomicU32,
    poison: Option<u64>,
}

impl FakeWriter {
    fn attempts(&self) -> Vec<(Vec<u64>, bool)> {
        self.attempts.lock().expect("lock").clone()
    }
}

impl BatchWriter for FakeWriter {
    async fn write(&self, items: Vec<IngestItem>) -> Result<WriteOutcome, StoreError> {
        let values: Vec<u64> = items
            .iter()
            .flat_map(|i| i.readings.iter().map(|r| r.reading.value))
            .collect();
        let fail = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
            || self.poison.is_some_and(|p| values.contains(&p));
        self.items
            .lock()
            .expect("lock")
            .push(items.iter().map(|i| format!("{i:?}")).collect());
        self.attempts.lock().expect("lock").push((values, !fail));
        if fail {
            Err(StoreError::engine(
                "writing a batch",
                std::io::Error::other("injected"),
            ))
        } else {
            Ok(WriteOutcome::default())
        }
    }
}

fn pseudonymiser() -> Arc<Pseudonymiser> {
    Arc::new(Pseudonymiser::new(&KeyRing::from_keys([(1, [7u8; 32])])))
}

fn config(batch_max_messages: usize, batch_max_delay: Duration) -> IngestConfig {
    let mut c = IngestConfig::new(crate::BrokerUrl::mqtt("127.0.0.1", 1883));
    c.batch_max_messages = batch_max_messages;
    c.batch_max_delay = batch_max_delay;
    c.write_retries = 2;
    c
}

fn ean(i: u64) -> Ean {
    Ean::from_body(87_100_000_000_000_000 + i).expect("ean")
}

/// Message `i`: one reading with value `i` Wh at a past quarter-hour.
fn message(i: u64) -> Received<u64> {
    let payload = format!(
        r#"{{"meter":"E0031003262764316","readings":[{{"obis":"1-0:1.8.1","time":"2025-01-01T10:15:00Z","value":"{}.{:03}","unit":"kWh"}}]}}"#,
        i / 1000,
        i % 1000
    );
    raw(
        i,
        &format!("meters/{}/json", ean(i).expose()),
        payload.into_bytes(),
    )
}

fn raw(token: u64, topic: &str, payload: Vec<u8>) -> Received<u64> {
    Received {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::from(payload),
        received: Instant::now(),
        token,
    }
}

struct Harness {
    tx: mpsc::Sender<Received<u64>>,
    acker: RecordingAcker,
    status: Arc<IngestStatus>,
    shutdown: CancellationToken,
    handle: IngestHandle,
}

fn start<W: BatchWriter>(config: IngestConfig, writer: Arc<W>) -> Harness {
    let (tx, rx) = mpsc::channel(1024);
    let acker = RecordingAcker::default();
    let status = Arc::new(IngestStatus::default());
    let shutdown = CancellationToken::new();
    let ctx = Arc::new(Context {
        config,
        pseudonymiser: pseudonymiser(),
        status: status.clone(),
    });
    let task = tokio::spawn(run(ctx, writer, acker.clone(), rx, shutdown.clone()));
    Harness {
        tx,
        acker,
        status,
        shutdown,
        handle: IngestHandle::from_task(task),
    }
}

/// Waits (in paused time: advances) until `done` holds; fails after a virtual minute.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..60_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(start_paused = true)]
async fn acks_every_message_in_arrival_order() {
    let writer = Arc::new(FakeWriter::default());
    let h = start(config(3, Duration::from_millis(20)), writer.clone());
    for i in 0..10 {
        let m = if i % 4 == 1 {
            // A reject is acknowledged in its place, with its batch.
            raw(i, "meters/not-an-ean/json", b"{}".to_vec())
        } else {
            message(i)
        };
        h.tx.send(m).await.expect("send");
    }
    until("10 acks", || h.acker.acked().len() == 10).await;
    assert_eq!(h.acker.acked(), (0..10).collect::<Vec<_>>());
    let written: Vec<u64> = writer
        .attempts()
        .into_iter()
        .flat_map(|(v, ok)| {
            assert!(ok);
            v
        })
        .collect();
    assert_eq!(written, vec![0, 2, 3, 4, 6, 7, 8]);
    assert_eq!(h.status.rejected.load(Ordering::Relaxed), 3);
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_batch_decoded_in_two_halves_keeps_arrival_order() {
    // Large enough to be split between two decoding threads.
    let n = (super::DECODE_SPLIT_MIN * 3) as u64;
    let writer = Arc::new(FakeWriter::default());
    let h = start(
        config(n as usize, Duration::from_secs(3600)),
        writer.clone(),
    );
    for i in 0..n {
        let m = if i % 7 == 3 {
            raw(i, "meters/not-an-ean/json", b"{}".to_vec())
        } else {
            message(i)
        };
        h.tx.send(m).await.expect("send");
    }
    until("every ack", || h.acker.acked().len() == n as usize).await;
    assert_eq!(h.acker.acked(), (0..n).collect::<Vec<_>>());
    let attempts = writer.attempts();
    assert_eq!(attempts.len(), 1, "one batch");
    assert_eq!(
        attempts[0].0,
        (0..n).filter(|i| i % 7 != 3).collect::<Vec<_>>(),
        "items in arrival order across both halves"
    );
    assert_eq!(
        h.status.rejected.load(Ordering::Relaxed),
        (0..n).filter(|i| i % 7 == 3).count() as u64
    );
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_batch_closes_at_its_share_of_the_byte_budget() {
    let writer = Arc::new(FakeWriter::default());
    let size = message(0).payload.len();
    // Room for three messages per batch, by bytes; by count and time, for all twelve.
    let mut c = config(1000, Duration::from_secs(3600));
    c.max_unacked_bytes = super::BATCHES_IN_BYTE_BUDGET * 3 * size;
    let h = start(c, writer.clone());
    for i in 0..12 {
        // One at a time, so that each batch sees its messages arrive.
        h.tx.send(message(i)).await.expect("send");
        tokio::task::yield_now().await;
    }
    until("12 acks", || h.acker.acked().len() == 12).await;
    let batches: Vec<usize> = writer.attempts().iter().map(|(v, _)| v.len()).collect();
    assert!(
        batches.iter().all(|&n| n <= 3) && batches.len() >= 4,
        "batches of at most three messages' bytes: {batches:?}"
    );
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_is_written_without_waiting_for_the_delay() {
    let writer = Arc::new(FakeWriter::default());
    let delay = Duration::from_secs(3600);
    let h = start(config(4, delay), writer.clone());
    let t0 = TokioInstant::now();
    for i in 0..4 {
        h.tx.send(message(i)).await.expect("send");
    }
    until("4 acks", || h.acker.acked().len() == 4).await;
    assert!(t0.elapsed() < delay, "closed by size, not by delay");
    assert_eq!(writer.attempts(), vec![(vec![0, 1, 2, 3], true)]);
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_is_written_after_the_delay() {
    let writer = Arc::new(FakeWriter::default());
    let delay = Duration::from_millis(20);
    let h = start(config(100, delay), writer.clone());
    let t0 = TokioInstant::now();
    h.tx.send(message(1)).await.expect("send");
    h.tx.send(message(2)).await.expect("send");
    until("2 acks", || h.acker.acked().len() == 2).await;
    assert!(
        t0.elapsed() >= delay,
        "held for the delay: {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() < delay * 2,
        "not much longer: {:?}",
        t0.elapsed()
    );
    assert_eq!(writer.attempts(), vec![(vec![1, 2], true)]);
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn shutdown_writes_and_acks_what_was_received() {
    let writer = Arc::new(FakeWriter::default());
    // Neither the size nor the delay would close this batch.
    let h = start(config(100, Duration::from_secs(3600)), writer.clone());
    for i in 0..5 {
        h.tx.send(message(i)).await.expect("send");
    }
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
    assert_eq!(h.acker.acked(), vec![0, 1, 2, 3, 4]);
    let written: Vec<u64> = writer.attempts().into_iter().flat_map(|(v, _)| v).collect();
    assert_eq!(written, vec![0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_writes_the_same_items_again() {
    let writer = Arc::new(FakeWriter::default());
    writer.fail_next.store(1, Ordering::SeqCst);
    let h = start(config(3, Duration::from_millis(5)), writer.clone());
    for i in 0..3 {
        h.tx.send(message(i)).await.expect("send");
    }
    until("3 acks", || h.acker.acked().len() == 3).await;
    assert_eq!(
        writer.attempts(),
        vec![(vec![0, 1, 2], false), (vec![0, 1, 2], true)]
    );
    // The retry decoded the batch again (the first attempt took the only copy of its
    // items) and got exactly the same items.
    let items = writer.items.lock().expect("lock").clone();
    assert_eq!(items[0], items[1]);
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn nothing_is_acked_after_a_failed_batch_and_the_handle_fails() {
    // Batch 1 (0..3) is stored; batch 2 (3..6) holds the poison and never is; batch 3
    // (6..9) may be written but must not be acknowledged before batch 2.
    let writer = Arc::new(FakeWriter {
        poison: Some(4),
        ..FakeWriter::default()
    });
    let h = start(config(3, Duration::from_millis(5)), writer.clone());
    for i in 0..3 {
        h.tx.send(message(i)).await.expect("send");
    }
    until("first batch acked", || h.acker.acked().len() == 3).await;
    for i in 3..9 {
        h.tx.send(message(i)).await.expect("send");
    }
    let result = h.handle.await;
    match result {
        Err(IngestError::Write { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected a write failure, got {other:?}"),
    }
    assert_eq!(h.acker.acked(), vec![0, 1, 2]);
    let failed = writer
        .attempts()
        .iter()
        .filter(|(v, ok)| !ok && v.contains(&4))
        .count();
    assert_eq!(failed, 3, "first attempt and two retries");
    // The session side sees the pipeline gone.
    assert!(h.tx.send(message(9)).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_ends_ingest_with_an_error() {
    let clock = Arc::new(ManualClock::new("2025-01-02T00:00:00Z".parse().expect("t")));
    let store = Arc::new(MemStore::with_policy(
        clock,
        ConsentLevel::Interval,
        RetentionPolicy::default(),
    ));
    store.fail_next_writes(u32::MAX);
    let h = start(
        config(10, Duration::from_millis(5)),
        Arc::new(StoreWriter(store.clone())),
    );
    h.tx.send(message(1)).await.expect("send");
    let e = h.handle.await.expect_err("ingest dies");
    assert!(matches!(e, IngestError::Write { .. }), "{e}");
    assert!(h.acker.acked().is_empty(), "unacked: the broker redelivers");
    assert!(!store.knows(pseudonymiser().ean(&ean(1))).expect("knows"));
}

#[tokio::test(start_paused = true)]
async fn a_store_failure_that_passes_is_retried_into_the_memstore() {
    let clock = Arc::new(ManualClock::new("2025-01-02T00:00:00Z".parse().expect("t")));
    let store = Arc::new(MemStore::with_policy(
        clock,
        ConsentLevel::Interval,
        RetentionPolicy::default(),
    ));
    store.fail_next_writes(1);
    let h = start(
        config(10, Duration::from_millis(5)),
        Arc::new(StoreWriter(store.clone())),
    );
    h.tx.send(message(1)).await.expect("send");
    until("ack", || h.acker.acked() == vec![1]).await;
    let p = pseudonymiser().ean(&ean(1));
    let from = "2025-01-01T00:00:00Z".parse().expect("t");
    let to = "2025-01-02T00:00:00Z".parse().expect("t");
    let stored = store.readings(p, Tier::Interval, from, to).expect("read");
    assert_eq!(stored.len(), 1);
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

fn telegram(i: u64, time: &str) -> Received<u64> {
    let meter: MeterId = "E0031003262764316".parse().expect("meter");
    let t: Timestamp = time.parse().expect("time");
    let text = p1::encode_dsmr5(&meter, t, &[(Register::ImportT1, 1_000 + i)], None);
    raw(
        i,
        &format!("meters/{}/p1", ean(i).expose()),
        text.into_bytes(),
    )
}

#[tokio::test(start_paused = true)]
async fn p1_on_a_boundary_is_stored_and_between_boundaries_is_acked_not_rejected() {
    let writer = Arc::new(FakeWriter::default());
    let mut c = config(10, Duration::from_millis(5));
    c.p1_boundary_window = Duration::from_secs(5);
    let h = start(c, writer.clone());
    let before = metrics::P1_BETWEEN_BOUNDARIES.get();
    // 3 s after a boundary: inside the window. 7 s after: outside this (configured) window,
    // though inside the default one.
    h.tx.send(telegram(1, "2025-01-01T10:15:03Z"))
        .await
        .expect("send");
    h.tx.send(telegram(2, "2025-01-01T10:15:07Z"))
        .await
        .expect("send");
    until("2 acks", || h.acker.acked().len() == 2).await;
    assert_eq!(h.acker.acked(), vec![1, 2]);
    assert_eq!(writer.attempts(), vec![(vec![1_001], true)]);
    assert_eq!(h.status.rejected.load(Ordering::Relaxed), 0);
    assert!(metrics::P1_BETWEEN_BOUNDARIES.get() > before);
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

#[tokio::test(start_paused = true)]
async fn an_oversize_payload_is_a_counted_reject() {
    let writer = Arc::new(FakeWriter::default());
    let mut c = config(10, Duration::from_millis(5));
    c.limits = Limits {
        max_payload_bytes: 1024,
        ..Limits::default()
    };
    let h = start(c, writer.clone());
    let oversize = metrics::REJECTED.with_label_values(&["oversize"]);
    let before = oversize.get();
    let topic = format!("meters/{}/json", ean(1).expose());
    h.tx.send(raw(1, &topic, vec![b' '; 4096]))
        .await
        .expect("send");
    h.tx.send(message(2)).await.expect("send");
    until("2 acks", || h.acker.acked().len() == 2).await;
    assert!(oversize.get() > before);
    assert_eq!(writer.attempts(), vec![(vec![2], true)]);
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

/// A JSON message of one import (tariff 1) reading in Wh on `{prefix}/{ean}/{kind}`.
fn reading_on(token: u64, kind: &str, time: &str, wh: u64) -> Received<u64> {
    let payload = format!(
        r#"{{"meter":"E0031003262764316","readings":[{{"obis":"1-0:1.8.1","time":"{time}","value":"{}.{:03}","unit":"kWh"}}]}}"#,
        wh / 1000,
        wh % 1000
    );
    raw(
        token,
        &format!("meters/{}/{kind}", ean(7).expose()),
        payload.into_bytes(),
    )
}

/// The decimal forms of a value that must never reach the audit log: Wh as stored, kWh as
/// published (with and without the unit).
fn value_forms(wh: u64) -> Vec<String> {
    let kwh = format!("{}.{:03}", wh / 1000, wh % 1000);
    vec![wh.to_string(), format!("{kwh} kWh"), kwh]
}

/// Fails if any form of any of `values` is in the raw bytes of the file at `path`.
fn assert_no_values_in(path: &std::path::Path, values: &[u64]) {
    let bytes = std::fs::read(path).expect("audit log");
    for form in values.iter().flat_map(|v| value_forms(*v)) {
        assert!(
            !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
            "the value {form:?} is in the audit log: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

/// The correction lines of an audit log, as written: canonical JSON (keys sorted, no
/// spaces), so their parts can be matched as text.
fn correction_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("audit log")
        .lines()
        .filter(|l| l.contains(r#""action":"correction""#))
        .map(str::to_string)
        .collect()
}

/// Fails unless `line` holds every one of `parts`.
fn assert_holds(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "{part} missing in {line}");
    }
}

/// A store and an audit log beside it, and a pipeline writing to both.
struct Audited {
    store: Arc<MemStore>,
    dir: tempfile::TempDir,
}

impl Audited {
    fn new() -> Audited {
        let clock = Arc::new(ManualClock::new("2025-01-02T00:00:00Z".parse().expect("t")));
        Audited {
            store: Arc::new(MemStore::with_policy(
                clock,
                ConsentLevel::Interval,
                RetentionPolicy::default(),
            )),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn audit_path(&self) -> std::path::PathBuf {
        self.dir.path().join("audit.log")
    }

    /// A pipeline over the store, with the audit log (re)opened as the service opens it.
    fn start(&self) -> Harness {
        let mut c = config(10, Duration::from_millis(5));
        c.audit = Some(meterstand_audit::AuditLog::open(&self.audit_path()).expect("audit log"));
        c.corrections = true;
        start(c, Arc::new(StoreWriter(self.store.clone())))
    }

    /// Makes every later append of the open log fail: a byte written behind its back is
    /// another writer, and the log refuses to chain onto it (`AuditError::Changed`). A
    /// reopen cuts the stray byte off as a torn line, as after a crash.
    fn break_audit_log(&self) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.audit_path())
            .expect("open audit log");
        file.write_all(b"x").expect("write");
        file.sync_all().expect("sync");
    }

    fn stored(&self, tier: Tier, time: &str) -> Vec<u64> {
        let p = pseudonymiser().ean(&ean(7));
        let t: Timestamp = time.parse().expect("t");
        let end = Timestamp::from_second(t.as_second() + 1).expect("t");
        self.store
            .readings(p, tier, t, end)
            .expect("read")
            .iter()
            .map(|r| r.value)
            .collect()
    }
}

/// A correction of an interval reading at local midnight of 1 January (a day and a month
/// boundary): every tier follows, the conflict counter does not move (a later plain reading
/// with another value is the only conflict), and the one audit line names the pseudonym,
/// register, time and tiers, never the EAN and never the old or the new value (not in any
/// form, anywhere in the file's bytes).
#[tokio::test(start_paused = true)]
async fn a_correction_at_a_day_boundary_replaces_every_tier_and_is_audited_without_values() {
    let a = Audited::new();
    let h = a.start();
    let corrected_before = metrics::CORRECTED_READINGS.get();
    let midnight = "2024-12-31T23:00:00Z";
    let (old, new, later) = (12_345_678, 12_345_987, 12_346_001);
    h.tx.send(reading_on(1, "json", midnight, old))
        .await
        .expect("send");
    until("ack 1", || h.acker.acked().len() == 1).await;
    h.tx.send(reading_on(2, "correction/json", midnight, new))
        .await
        .expect("send");
    until("ack 2", || h.acker.acked().len() == 2).await;
    assert_eq!(h.status.totals().conflicts, 0);
    assert_eq!(h.status.totals().corrected, 3);
    h.tx.send(reading_on(3, "json", midnight, later))
        .await
        .expect("send");
    until("ack 3", || h.acker.acked().len() == 3).await;
    assert_eq!(h.acker.acked(), vec![1, 2, 3]);
    let totals = h.status.totals();
    assert_eq!((totals.corrected, totals.conflicts), (3, 3), "{totals:?}");
    assert!(metrics::CORRECTED_READINGS.get() > corrected_before);

    for tier in Tier::ALL {
        assert_eq!(a.stored(tier, midnight), vec![new], "{tier:?}");
    }
    let p = pseudonymiser().ean(&ean(7));
    let export = a.store.export(&[p]).expect("export");
    assert_eq!(export.corrected.len(), 3);

    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
    let path = a.audit_path();
    // Not the old, the new or the later value, in any form, anywhere in the file.
    assert_no_values_in(&path, &[old, new, later]);
    let text = std::fs::read_to_string(&path).expect("audit log");
    let lines = correction_lines(&path);
    assert_eq!(lines.len(), 1, "one line per corrected reading: {text}");
    assert_holds(
        &lines[0],
        &[
            &format!(r#""subjects":["{p}"]"#),
            // Exactly these parameters: who and what, no value.
            &format!(
                r#""params":{{"register":"1-0:1.8.1","tiers":"interval,day,month","time":"{midnight}"}}"#
            ),
            r#""rows":3,"#,
            // The publisher role the broker's ACL grants the correction topics.
            r#""actor":{"component":"mqtt/corrections","kind":"system"}"#,
        ],
    );
    assert!(!text.contains(ean(7).expose()), "the EAN is in {text}");
    assert!(
        !text.contains("E0031003262764316"),
        "the meter id is in {text}"
    );
    let report = meterstand_audit::verify(&path, None).expect("verify");
    assert_eq!((report.lines, report.problem_count), (1, 0));
}

/// A correction is stored, but its audit line cannot be written: it is not acknowledged
/// (the broker redelivers it), ingest stops with an audit error, and the failure is counted.
#[tokio::test(start_paused = true)]
async fn a_correction_whose_audit_line_cannot_be_written_is_not_acked() {
    let a = Audited::new();
    let h = a.start();
    let midnight = "2024-12-31T23:00:00Z";
    h.tx.send(reading_on(1, "json", midnight, 12_345_678))
        .await
        .expect("send");
    until("ack 1", || h.acker.acked().len() == 1).await;
    a.break_audit_log();
    let failures_before = metrics::CORRECTION_AUDIT_FAILURES.get();
    h.tx.send(reading_on(2, "correction/json", midnight, 12_345_987))
        .await
        .expect("send");
    // Acknowledged, ingest would run on: a virtual minute is a failure.
    until("ingest to stop, the correction unacknowledged", || {
        h.handle.is_finished()
    })
    .await;
    let result = h.handle.await;
    match result {
        Err(IngestError::Audit {
            lines, attempts, ..
        }) => {
            assert_eq!(lines, 1);
            assert_eq!(attempts, 3, "first attempt and two retries");
        }
        other => panic!("expected an audit failure, got {other:?}"),
    }
    assert_eq!(
        h.acker.acked(),
        vec![1],
        "the correction is not acknowledged"
    );
    assert!(metrics::CORRECTION_AUDIT_FAILURES.get() > failures_before);
    // Stored (the write came first), but not acknowledged: the redelivery is a duplicate.
    assert_eq!(a.stored(Tier::Interval, midnight), vec![12_345_987]);
    assert!(correction_lines(&a.audit_path()).is_empty());
    assert!(h.tx.send(reading_on(3, "json", midnight, 1)).await.is_err());
}

/// The redelivery of a correction whose audit line failed finds the corrected value stored
/// (a duplicate: the store replaces nothing) and still writes the line, then acknowledges.
#[tokio::test(start_paused = true)]
async fn a_redelivered_correction_writes_the_audit_line_it_missed() {
    let a = Audited::new();
    let midnight = "2024-12-31T23:00:00Z";
    let (old, new) = (12_345_678, 12_345_987);
    let first = a.start();
    first
        .tx
        .send(reading_on(1, "json", midnight, old))
        .await
        .expect("send");
    until("ack 1", || first.acker.acked().len() == 1).await;
    a.break_audit_log();
    first
        .tx
        .send(reading_on(2, "correction/json", midnight, new))
        .await
        .expect("send");
    until("ingest to stop on the audit failure", || {
        first.handle.is_finished()
    })
    .await;
    assert!(matches!(first.handle.await, Err(IngestError::Audit { .. })));
    assert_eq!(first.acker.acked(), vec![1]);

    // The next session: the log reopened (the stray byte cut off and recorded), the
    // correction redelivered.
    let second = a.start();
    second
        .tx
        .send(reading_on(2, "correction/json", midnight, new))
        .await
        .expect("send");
    until("the redelivery acked", || second.acker.acked() == vec![2]).await;
    assert_eq!(second.status.totals().corrected, 0, "a duplicate now");
    second.shutdown.cancel();
    second.handle.await.expect("clean shutdown");

    let path = a.audit_path();
    let lines = correction_lines(&path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let p = pseudonymiser().ean(&ean(7));
    assert_holds(
        &lines[0],
        &[
            &format!(r#""subjects":["{p}"]"#),
            &format!(
                r#""params":{{"register":"1-0:1.8.1","tiers":"interval,day,month","time":"{midnight}"}}"#
            ),
            // Nothing replaced by the redelivery: the first delivery did that.
            r#""rows":0,"#,
        ],
    );
    assert_no_values_in(&path, &[old, new]);
    let report = meterstand_audit::verify(&path, None).expect("verify");
    assert!(report.is_ok(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_p1_correction_topic_is_a_counted_reject() {
    let writer = Arc::new(FakeWriter::default());
    let h = start(config(10, Duration::from_millis(5)), writer.clone());
    let bad_topic = metrics::REJECTED.with_label_values(&["bad_topic"]);
    let before = bad_topic.get();
    let topic = format!("meters/{}/correction/p1", ean(1).expose());
    h.tx.send(raw(1, &topic, b"/x".to_vec()))
        .await
        .expect("send");
    until("ack", || h.acker.acked().len() == 1).await;
    assert!(bad_topic.get() > before);
    assert!(writer.attempts().is_empty());
    h.shutdown.cancel();
    h.handle.await.expect("clean shutdown");
}

mod corrections;

//! End-to-end ingest through a real Mosquitto on loopback, durable and acknowledged:
//! `ingest_readings_per_sec_single` (one reading per message), `ingest_readings_per_sec_batched`
//! (96 per message), and on the same queued messages `mqtt_drain_messages_per_sec` of a
//! subscriber that only acknowledges; the `_over_drain_ratio` figures are the medians of the
//! per-round ratios (each round drains, then ingests, the same messages). Messages are queued in the broker for a persistent
//! session first, so each figure measures delivery, not the publisher.
//!
//! `ingest_p1_telegrams_per_sec`: DSMR 5 telegrams (four electricity registers and gas, about
//! 900 bytes) from 10,000 dongles on `meters/{ean}/p1`, against `mqtt_drain_messages_per_sec_p1`
//! of the same telegrams. Each dongle sends ten, one on a quarter-hour boundary (within the
//! boundary window: four electricity readings and the hour's gas reading are stored) and nine
//! between boundaries (decoded, checked and counted, nothing stored), as a dongle sending
//! every 90 s would.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use meterstand_codec::p1;
use meterstand_ingest::{Ingest, IngestStatus};
use meterstand_model::{MeterId, Reading, Register};
use meterstand_pseudonym::{KeyRing, Pseudonymiser};
use meterstand_store::SystemClock;
use meterstand_store_rocks::RocksStore;
use meterstand_testkit::fleet::json_payload;
use meterstand_testkit::{Publisher, ean_from, quarters_ago};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use tokio_util::sync::CancellationToken;

/// What a run publishes: single readings, days of quarter-hours, or P1 telegrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Single,
    Batched,
    P1,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Single => "single",
            Kind::Batched => "batched",
            Kind::P1 => "p1",
        }
    }

    fn filter(self) -> &'static str {
        match self {
            Kind::P1 => "meters/+/p1",
            _ => "meters/+/json",
        }
    }
}

/// 10,000 dongles × 10 telegrams (topic, payload, readings it stores). The boundary is a
/// whole hour three hours ago, so the boundary telegram's gas reading (captured on the hour)
/// is stored too; the others carry gas captured on 5-minute marks, which are not kept.
fn p1_messages() -> Vec<(String, Vec<u8>, u64)> {
    let now = Timestamp::now().as_second();
    let boundary = now - now.rem_euclid(3600) - 3 * 3600;
    let mut rng = meterstand_model::sim::SimRng::new(2027);
    let mut out = Vec::with_capacity(100_000);
    for c in 0..10_000u64 {
        let ean = ean_from(0, 200_000 + c);
        let meter: MeterId = format!("E00{:014}", 31_003_262_764_316 + c * 7_919)
            .parse()
            .expect("valid meter id");
        // Registers in Wh: night and day tariff import, solar export on some roofs.
        let mut registers = [
            1_000_000 + c * 7_919,
            800_000 + c * 6_007,
            if c % 3 == 0 { 200_000 + c * 17 } else { 0 },
            if c % 3 == 0 { 150_000 + c * 13 } else { 0 },
        ];
        let gas = 2_000_000 + c * 3_001;
        for j in 0..10i64 {
            // One telegram 0..9 s after the boundary, then every 90 s.
            let at = boundary + j * 90 + (c % 10) as i64;
            for (i, r) in registers.iter_mut().enumerate() {
                if i < 2 || c % 3 == 0 {
                    *r += rng.below(if i < 2 { 12 } else { 6 });
                }
            }
            let electricity = [
                (Register::ImportT1, registers[0]),
                (Register::ImportT2, registers[1]),
                (Register::ExportT1, registers[2]),
                (Register::ExportT2, registers[3]),
            ];
            let gas_at = at - at.rem_euclid(300);
            let telegram = p1::encode_dsmr5(
                &meter,
                Timestamp::from_second(at).expect("in range"),
                &electricity,
                Some((
                    Timestamp::from_second(gas_at).expect("in range"),
                    gas + j as u64,
                )),
            );
            out.push((
                format!("meters/{}/p1", ean.expose()),
                telegram.into_bytes(),
                if j == 0 { 5 } else { 0 },
            ));
        }
    }
    out
}

fn messages(kind: Kind) -> Vec<(String, Vec<u8>, u64)> {
    let mut out = Vec::new();
    if kind == Kind::P1 {
        return p1_messages();
    }
    if kind == Kind::Single {
        let start = quarters_ago(200);
        for i in 0..100_000u64 {
            let c = i % 10_000;
            let q = (i / 10_000) as i64;
            let ean = ean_from(0, c);
            let r = Reading {
                register: Register::ImportT1,
                time: Timestamp::from_second(start.as_second() + q * 900).expect("ok"),
                value: 1_000 + i,
            };
            out.push((
                format!("meters/{}/json", ean.expose()),
                json_payload("E0000000000000001", &[r]),
                1,
            ));
        }
    } else {
        // The workload: 1,000 connections × 90 days (8.64 M readings) a round, long
        // enough that the pipeline's filling and draining weigh little (12 days a round, as
        // before 2026-11-28, read 15–20 % faster). METERSTAND_BENCH_DAYS sets it.
        let days: u64 = std::env::var("METERSTAND_BENCH_DAYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(90);
        let start = quarters_ago(96 * days as i64);
        // Household increments by hour of day, with noise (E1A-like: 20–60 Wh a quarter at
        // night, up to 400 Wh in the evening): not constant steps, which encode unrealistically
        // well.
        let mut registers: Vec<u64> = (0..1_000u64).map(|c| 1_000_000 + c * 7_919).collect();
        let mut rng = meterstand_model::sim::SimRng::new(2026);
        // METERSTAND_BENCH_CONSTANT_STEPS=1: the +30 Wh steps the figures before 2026-11-28
        // were measured with (they encode unrealistically well), for comparing with them.
        let constant_steps = std::env::var_os("METERSTAND_BENCH_CONSTANT_STEPS").is_some();
        for i in 0..days * 1_000 {
            let c = i % 1_000;
            let day = (i / 1_000) as i64;
            let ean = ean_from(0, 100_000 + c);
            let readings: Vec<Reading> = (0..96)
                .map(|q| {
                    let hour = (q / 4) as u64;
                    let (low, high) = match hour {
                        0..=6 => (20, 60),
                        7..=9 => (60, 200),
                        10..=16 => (40, 150),
                        17..=22 => (150, 400),
                        _ => (60, 120),
                    };
                    let slot = &mut registers[c as usize];
                    *slot += if constant_steps {
                        30
                    } else {
                        low + rng.below(high - low + 1)
                    };
                    Reading {
                        register: Register::ImportT1,
                        time: Timestamp::from_second(start.as_second() + (day * 96 + q) * 900)
                            .expect("ok"),
                        value: *slot,
                    }
                })
                .collect();
            out.push((
                format!("meters/{}/json", ean.expose()),
                json_payload("E0000000000000001", &readings),
                96,
            ));
        }
    }
    out
}

fn queue(port: u16, msgs: &[(String, Vec<u8>, u64)], id: &str) {
    let mut p = Publisher::connect(port, id);
    for (t, payload, _) in msgs {
        p.publish(t, payload.clone());
    }
    p.wait_acked();
}

fn drain(rt: &tokio::runtime::Runtime, port: u16, client_id: &str, n: usize) -> f64 {
    rt.block_on(async {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_manual_acks(true);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let mut got = 0;
        let mut started = None;
        // Acks that did not fit the request channel wait here; the poll loop never blocks.
        let mut pending = std::collections::VecDeque::new();
        while got < n || !pending.is_empty() {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    started.get_or_insert_with(Instant::now);
                    pending.push_back(p);
                    got += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("drain: {e} after {got} of {n}"),
            }
            while let Some(p) = pending.front() {
                if client.try_ack(p).is_err() {
                    break;
                }
                pending.pop_front();
            }
        }
        let rate = n as f64 / started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(1.0);
        // Acks may still fill the request channel: keep polling while the disconnect queues.
        let disconnect = tokio::spawn(async move { client.disconnect().await });
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match el.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let _ = disconnect.await;
        rate
    })
}

/// What one ingest round took: wall time, the ingest process's peak RSS (MiB), and the CPU
/// seconds used by that process and by the broker.
struct Round {
    took: Duration,
    peak: f64,
    cpu: f64,
    broker_cpu: f64,
}

/// Set in the environment of a child process of this bench that runs one ingest round
/// (`port client_id messages readings broker_pid`) and prints its `Round` on stdout: ingest
/// in a process of its own, so that its peak RSS is its own (in the bench's process, the
/// queued messages and the drain client's freed buffers made RSS growth read anywhere
/// from 50 to 160 MiB for the same round).
const CHILD: &str = "METERSTAND_BENCH_INGEST_ROUND";

/// Runs one ingest round in a child process.
fn ingest_in_child(
    broker: &meterstand_testkit::Mosquitto,
    client_id: &str,
    msgs: usize,
    readings: u64,
) -> Round {
    let broker_pid = broker.pid().unwrap_or(0);
    let out = std::process::Command::new(std::env::current_exe().expect("this bench's path"))
        .env(
            CHILD,
            format!("{} {client_id} {msgs} {readings} {broker_pid}", broker.port),
        )
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("ingest round in a child process");
    assert!(out.status.success(), "ingest round failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    assert_eq!(f.len(), 4, "child printed {text:?}");
    Round {
        took: Duration::from_secs_f64(f[0]),
        peak: f[1],
        cpu: f[2],
        broker_cpu: f[3],
    }
}

/// The child's side of `ingest_in_child`.
fn ingest_round_child(spec: &str) {
    let f: Vec<&str> = spec.split_whitespace().collect();
    let [port, client_id, msgs, readings, broker_pid] = f[..] else {
        panic!("{CHILD}: expected port client_id messages readings broker_pid");
    };
    let rt = meterstand_benches::runtime();
    let round = ingest(
        &rt,
        port.parse().expect("port"),
        broker_pid,
        client_id,
        msgs.parse().expect("messages"),
        readings.parse().expect("readings"),
    );
    drop(rt);
    println!(
        "{} {} {} {}",
        round.took.as_secs_f64(),
        round.peak,
        round.cpu,
        round.broker_cpu
    );
}

fn ingest(
    rt: &tokio::runtime::Runtime,
    port: u16,
    broker_pid: &str,
    client_id: &str,
    msgs: usize,
    readings: u64,
) -> Round {
    let cpu = || meterstand_testkit::bench::cpu_seconds("self");
    let broker_cpu = || meterstand_testkit::bench::cpu_seconds(broker_pid);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = meterstand_benches::store_config(dir.path());
    let mut ic = meterstand_benches::ingest_config(port, client_id, &config);
    let store = Arc::new(RocksStore::open(config, Arc::new(SystemClock)).expect("open"));
    let p = Arc::new(Pseudonymiser::new(&KeyRing::from_keys([(1, [5u8; 32])])));
    // METERSTAND_BENCH_PROTOCOL=3.1.1 ingests over MQTT 3.1.1, as the drain client does.
    if std::env::var("METERSTAND_BENCH_PROTOCOL").as_deref() == Ok("3.1.1") {
        ic.mqtt_version = meterstand_ingest::MqttVersion::V311;
    }
    if let Some(n) = std::env::var("METERSTAND_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        ic.batch_max_messages = n;
    }
    if let Some(n) = std::env::var("METERSTAND_BENCH_MAX_UNACKED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        ic.max_unacked = n;
    }
    // METERSTAND_BENCH_MAX_UNACKED_KIB: ingest's byte budget, instead of its share of the store's.
    if let Some(kib) = std::env::var("METERSTAND_BENCH_MAX_UNACKED_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        ic.max_unacked_bytes = kib << 10;
    }
    let status = Arc::new(IngestStatus::default());
    let stop = CancellationToken::new();
    // The clock runs from the start of the session (connect and subscribe take a few ms on
    // loopback) until the last message is acknowledged: starting it at the first decoded
    // message, as before 2026-11-28, left out receiving the first batch.
    let (cpu_before, broker_before) = (cpu(), broker_cpu());
    let threads_before = meterstand_testkit::bench::thread_cpu_seconds();
    let started = Instant::now();
    let handle = rt.spawn(Ingest::run(
        ic,
        store.clone(),
        p,
        status.clone(),
        stop.clone(),
    ));
    let rate = rt.block_on(async {
        let mut last_report = Instant::now();
        while status.acked.load(Ordering::Relaxed) < msgs as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "ingest: {} processed, {} acked, {} unacked, connected {}",
                    status.messages.load(Ordering::Relaxed),
                    status.acked.load(Ordering::Relaxed),
                    meterstand_ingest::metrics::UNACKED.get(),
                    status.connected.load(Ordering::Relaxed)
                );
            }
        }
        started.elapsed()
    });
    let (cpu_used, broker_used) = (cpu() - cpu_before, broker_cpu() - broker_before);
    // Where ingest's CPU went, by thread name (for profiling; not a figure).
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    for (tid, name, now) in meterstand_testkit::bench::thread_cpu_seconds() {
        let before = threads_before
            .iter()
            .find(|(t, _, _)| *t == tid)
            .map_or(0.0, |(_, _, c)| *c);
        *by_name.entry(name).or_default() += now - before;
    }
    let by_name: Vec<String> = by_name
        .iter()
        .filter(|(_, cpu)| **cpu > 0.0)
        .map(|(name, cpu)| format!("{name} {:.0} ms/M", cpu * 1e9 / readings as f64))
        .collect();
    eprintln!("ingest CPU by thread: {}", by_name.join(", "));
    stop.cancel();
    let _ = rt.block_on(handle);
    let stored = status.totals().stored.total();
    assert!(stored >= readings, "stored {stored} of {readings}");
    drop(store);
    Round {
        took: rate,
        peak: meterstand_testkit::bench::peak_rss_mib(),
        cpu: cpu_used,
        broker_cpu: broker_used,
    }
}

/// `n` per second of `elapsed`.
fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// Rounds per kind; this shared VM's loopback and broker speed vary by up to 2x between
/// rounds, so the medians of five are compared.
const ROUNDS: usize = 5;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(spec) = std::env::var(CHILD) {
        return ingest_round_child(&spec);
    }
    let rt = meterstand_benches::runtime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = meterstand_benches::broker(&tmp.path().join("mosquitto"));
    // METERSTAND_BENCH_ONLY=single|batched|p1 runs one kind (for profiling it).
    let only = std::env::var("METERSTAND_BENCH_ONLY").ok();
    for kind in [Kind::Single, Kind::Batched, Kind::P1] {
        if only.as_deref().is_some_and(|o| o != kind.name()) {
            continue;
        }
        let name = kind.name();
        let msgs = messages(kind);
        let readings: u64 = msgs.iter().map(|m| m.2).sum();
        // Loopback and two shared cores drift: alternate drain and ingest over the same queued
        // messages, ROUNDS rounds, and compare medians.
        // The same two persistent sessions every round: an offline session of an earlier round
        // would keep collecting copies and slow the broker down.
        let (mut drains, mut ingests, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cpus, mut broker_cpus) = (Vec::new(), Vec::new());
        let mut peak: f64 = 0.0;
        let drain_id = format!("bench-drain-{name}");
        let ingest_id = format!("bench-ingest-{name}");
        meterstand_benches::prepare_session(&rt, broker.port, &drain_id, kind.filter());
        meterstand_benches::prepare_session(&rt, broker.port, &ingest_id, kind.filter());
        for round in 0..ROUNDS {
            eprintln!("{name} round {round}: queueing {} messages", msgs.len());
            queue(broker.port, &msgs, &format!("bench-pub-{name}-{round}"));
            let broker_pid = broker
                .pid()
                .map_or_else(|| "self".into(), |p| p.to_string());
            let broker_before = meterstand_testkit::bench::cpu_seconds(&broker_pid);
            drains.push(drain(&rt, broker.port, &drain_id, msgs.len()));
            eprintln!(
                "{name} round {round}: broker CPU while draining {:.0} ms per million readings",
                (meterstand_testkit::bench::cpu_seconds(&broker_pid) - broker_before) * 1e9
                    / readings as f64
            );
            let Round {
                took,
                peak: round_peak,
                cpu,
                broker_cpu,
            } = ingest_in_child(&broker, &ingest_id, msgs.len(), readings);
            peak = peak.max(round_peak);
            // Per million readings stored.
            cpus.push(cpu * 1e9 / readings as f64);
            broker_cpus.push(broker_cpu * 1e9 / readings as f64);
            ingests.push(took);
            // Drain and ingest of one round run back to back, under the same conditions:
            // their ratio drifts far less than either rate.
            ratios.push(per_sec(msgs.len() as u64, took) / drains[round]);
            eprintln!(
                "{name} round {round}: drain {:.0} messages/s, ingest {:.0} messages/s ({:.0} readings/s), peak RSS {round_peak:.0} MiB",
                drains[round],
                per_sec(msgs.len() as u64, took),
                per_sec(readings, took)
            );
        }
        meterstand_benches::end_session(&rt, broker.port, &drain_id);
        meterstand_benches::end_session(&rt, broker.port, &ingest_id);
        let drain_rate = median(&mut drains);
        ingests.sort();
        let took = ingests[ingests.len() / 2];
        let (message_rate, reading_rate) =
            (per_sec(msgs.len() as u64, took), per_sec(readings, took));
        let ratio = median(&mut ratios);
        println!("mqtt_drain_messages_per_sec_{name} {drain_rate:.0} messages/s");
        // The ingest process's peak (runtime, broker client, pipeline and a fresh store),
        // over the rounds.
        println!("ingest_peak_rss_mib_{name} {peak:.0} MiB");
        // CPU per million readings stored (medians): ingest's process and the broker's. On a
        // shared 2-core machine these drift less than rates, so they show what a change cost.
        println!(
            "ingest_cpu_ms_per_million_readings_{name} {:.0} ms",
            median(&mut cpus)
        );
        println!(
            "broker_cpu_ms_per_million_readings_{name} {:.0} ms",
            median(&mut broker_cpus)
        );
        match kind {
            Kind::Single => {
                println!("ingest_readings_per_sec_{name} {reading_rate:.0} readings/s");
                println!("mqtt_drain_messages_per_sec {drain_rate:.0} messages/s");
                println!("ingest_single_over_drain_ratio {ratio:.2} x");
            }
            Kind::Batched => {
                println!("ingest_readings_per_sec_{name} {reading_rate:.0} readings/s");
            }
            Kind::P1 => {
                println!("ingest_p1_telegrams_per_sec {message_rate:.0} telegrams/s");
                println!(
                    "ingest_p1_over_drain_ratio {:.2} x",
                    message_rate / drain_rate
                );
            }
        }
    }
}

//! Behaviour of the RocksDB store through its public trait.

use std::sync::Arc;

use jiff::Timestamp;
use meterstand_model::{
    Calendar, Connection, ConsentLevel, Reading, Register, RegisterKind, Tier, TieredReading,
};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::{
    AggregateQuery, Compression, GroupBy, IngestItem, ManualClock, ReadingStore, ReadingWriter,
    RocksStore, StoreConfig,
};

fn ts(s: &str) -> Timestamp {
    s.parse().expect("valid timestamp")
}

fn pseudo(n: u8) -> Pseudonym {
    Pseudonym {
        version: 1,
        hash: [n; 16],
    }
}

fn open(dir: &std::path::Path, clock: &ManualClock) -> RocksStore {
    let mut config = StoreConfig::new(dir);
    // Uncompressed, so that tests can search the raw files for bytes.
    config.compression = Compression::None;
    RocksStore::open(config, Arc::new(clock.clone())).expect("open store")
}

fn tiered(register: Register, time: Timestamp, value: u64) -> TieredReading {
    let tiers = Calendar::amsterdam().tiers_of(register, time);
    TieredReading {
        reading: Reading {
            register,
            time,
            value,
        },
        tiers,
    }
}

/// Quarter-hour import readings (both tariffs) from `start`, `n` of them, rising steadily.
fn quarter_hours(start: Timestamp, n: i64, base: u64, step: u64) -> Vec<TieredReading> {
    let mut out = Vec::new();
    for i in 0..n {
        let t = Timestamp::from_second(start.as_second() + i * 900).expect("in range");
        out.push(tiered(Register::ImportT1, t, base + i as u64 * step));
        out.push(tiered(Register::ImportT2, t, base * 2 + i as u64 * step));
    }
    out
}

fn item(p: Pseudonym, readings: Vec<TieredReading>) -> IngestItem {
    IngestItem {
        connection: p,
        previous: Vec::new(),
        meter: Pseudonym {
            version: 1,
            hash: [0xee; 16],
        },
        readings,
    }
}

fn connection(consent: ConsentLevel, postcode: &str) -> Connection {
    Connection {
        consent,
        postcode4: Some(postcode.parse().expect("postcode")),
        profile: Some("E1A".parse().expect("profile")),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn consent_gate_keeps_only_what_consent_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = open(dir.path(), &clock);
    let standard = pseudo(1);
    let daily = pseudo(2);
    let off = pseudo(3);
    store
        .put_connection(daily, connection(ConsentLevel::Daily, "1234"))
        .expect("put");
    store
        .put_connection(off, connection(ConsentLevel::Off, "1234"))
        .expect("put");
    // 2026-11-30T23:00Z is local midnight on 1 December: month + day + interval.
    let readings = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
    let rt = rt();
    let out = rt
        .block_on(store.write(vec![
            item(standard, readings.clone()),
            item(daily, readings.clone()),
            item(off, readings),
        ]))
        .expect("write");
    // Per connection: 16 interval entries, 2 day, 2 month.
    assert_eq!(
        out.stored.month, 4,
        "standard and daily keep the month readings"
    );
    assert_eq!(out.stored.day, 2, "only daily keeps day readings");
    assert_eq!(out.stored.interval, 0);
    assert_eq!(out.dropped_by_consent.interval, 48);
    assert_eq!(out.dropped_by_consent.day, 4);
    assert_eq!(out.dropped_by_consent.month, 2);
    let all = (Timestamp::MIN, Timestamp::MAX);
    assert!(
        store
            .readings(standard, Tier::Interval, all.0, all.1)
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store
            .readings(standard, Tier::Month, all.0, all.1)
            .expect("read")
            .len(),
        2
    );
    assert_eq!(
        store
            .readings(daily, Tier::Day, all.0, all.1)
            .expect("read")
            .len(),
        2
    );
    assert!(store.export(&[off]).expect("export").interval.is_empty());
}

#[test]
fn duplicates_are_idempotent_and_conflicts_keep_the_first_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = open(dir.path(), &clock);
    let p = pseudo(4);
    store
        .put_connection(p, connection(ConsentLevel::Interval, "1234"))
        .expect("put");
    let t = ts("2026-11-26T10:15:00Z");
    let rt = rt();
    let first = rt
        .block_on(store.write(vec![item(p, vec![tiered(Register::ImportT1, t, 500)])]))
        .expect("write");
    assert_eq!(first.stored.interval, 1);
    let again = rt
        .block_on(store.write(vec![item(p, vec![tiered(Register::ImportT1, t, 500)])]))
        .expect("write");
    assert_eq!(
        (again.stored.interval, again.duplicates, again.conflicts),
        (0, 1, 0)
    );
    let conflict = rt
        .block_on(store.write(vec![item(p, vec![tiered(Register::ImportT1, t, 999)])]))
        .expect("write");
    assert_eq!(
        (
            conflict.stored.interval,
            conflict.duplicates,
            conflict.conflicts
        ),
        (0, 0, 1)
    );
    let stored = store
        .readings(p, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
        .expect("read");
    assert_eq!(
        stored,
        vec![Reading {
            register: Register::ImportT1,
            time: t,
            value: 500
        }]
    );
}

#[test]
fn data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let p = pseudo(5);
    {
        let store = open(dir.path(), &clock);
        store
            .put_connection(p, connection(ConsentLevel::Interval, "4321"))
            .expect("put");
        rt().block_on(store.write(vec![item(
            p,
            quarter_hours(ts("2026-11-26T10:00:00Z"), 4, 10, 1),
        )]))
        .expect("write");
        store.close().expect("close");
    }
    let store = open(dir.path(), &clock);
    assert_eq!(
        store.connection(p).map(|c| c.consent),
        Some(ConsentLevel::Interval)
    );
    assert_eq!(
        store
            .readings(p, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
            .expect("read")
            .len(),
        8
    );
}

#[test]
fn retention_removes_exactly_what_is_past_the_horizon() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Choose the horizon (quarter-aligned) and derive `now` = horizon + 13 × 30.44 days.
    let horizon_ts = ts("2026-11-20T00:00:00Z");
    let horizon = horizon_ts.as_second();
    let now = Timestamp::from_second(horizon + 13 * 2_630_016).expect("in range");
    let clock = ManualClock::new(ts("2026-11-21T00:00:00Z"));
    let store = open(dir.path(), &clock);
    let p = pseudo(6);
    store
        .put_connection(p, connection(ConsentLevel::Interval, "1234"))
        .expect("put");
    // Readings from 2 hours before to 2 hours after the horizon.
    let start = Timestamp::from_second(horizon - 7200).expect("in range");
    let readings: Vec<TieredReading> = (0..16)
        .map(|i| {
            tiered(
                Register::ImportT1,
                Timestamp::from_second(start.as_second() + i * 900).expect("ok"),
                100 + i as u64,
            )
        })
        .collect();
    rt().block_on(store.write(vec![item(p, readings)]))
        .expect("write");
    assert_eq!(
        store
            .readings(p, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
            .expect("read")
            .len(),
        16
    );

    clock.set(now);
    let removed = store.sweep_retention().expect("sweep");
    assert_eq!(
        removed.interval, 8,
        "the 8 quarter-hours before the horizon go"
    );
    let left = store
        .readings(p, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
        .expect("read");
    assert_eq!(left.len(), 8);
    assert_eq!(
        left[0].time, horizon_ts,
        "the reading exactly on the horizon is kept"
    );
    // A second sweep finds nothing more, and the removal is physical after compaction.
    assert_eq!(store.sweep_retention().expect("sweep").interval, 0);
    store.compact_all().expect("compact");
    assert_eq!(
        store
            .readings(p, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
            .expect("read")
            .len(),
        8
    );

    // Readings already past retention are refused at the door.
    let old = tiered(
        Register::ImportT1,
        Timestamp::from_second(horizon - 900).expect("ok"),
        1,
    );
    let out = rt()
        .block_on(store.write(vec![item(p, vec![old])]))
        .expect("write");
    assert_eq!((out.stored.interval, out.expired.interval), (0, 1));
}

#[test]
fn reads_hide_expired_readings_before_the_sweep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-11-26T12:00:00Z"));
    let store = open(dir.path(), &clock);
    let p = pseudo(7);
    store
        .put_connection(p, connection(ConsentLevel::Interval, "1234"))
        .expect("put");
    rt().block_on(store.write(vec![item(
        p,
        quarter_hours(ts("2026-11-26T10:00:00Z"), 4, 10, 1),
    )]))
    .expect("write");
    clock.set(ts("2028-01-01T00:00:00Z"));
    assert!(
        store
            .readings(p, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
            .expect("read")
            .is_empty()
    );
}

fn files_contain(dir: &std::path::Path, needle: &[u8], only_sst: bool) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if only_sst && path.extension().is_none_or(|e| e != "sst") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(path.display().to_string());
        }
    }
    hits
}

#[test]
fn erasure_removes_physically_keeps_held_month_readings_and_returns_a_receipt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = open(dir.path(), &clock);
    let victim = pseudo(8);
    let other = pseudo(9);
    for p in [victim, other] {
        store
            .put_connection(p, connection(ConsentLevel::Interval, "1234"))
            .expect("put");
    }
    let readings = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
    rt().block_on(store.write(vec![item(victim, readings.clone()), item(other, readings)]))
        .expect("write");
    store.compact_all().expect("flush to SST files");
    let needle = victim.to_bytes();
    assert!(
        !files_contain(dir.path(), &needle, true).is_empty(),
        "before erasure the SST files hold the pseudonym"
    );

    let receipt = store.erase(&[victim]).expect("erase");
    assert_eq!(receipt.deleted.interval, 16);
    assert_eq!(receipt.deleted.day, 2);
    assert_eq!(receipt.deleted.month, 0);
    assert_eq!(receipt.connection, 1);
    assert_eq!(receipt.meters, 1);
    assert_eq!(receipt.kept.len(), 1);
    assert_eq!(receipt.kept[0].tier, Tier::Month);
    assert_eq!(receipt.kept[0].count, 2);
    assert!(receipt.kept[0].reason.contains("Art. 52 AWR"));
    assert!(receipt.kept[0].until > ts("2033-11-01T00:00:00Z"));

    let export = store.export(&[victim]).expect("export");
    assert!(
        export.interval.is_empty()
            && export.day.is_empty()
            && export.connection.is_none()
            && export.meters.is_empty()
    );
    assert_eq!(export.month.len(), 2);
    // Every SST file of the erased tiers: no key with the pseudonym's bytes.
    for tier in [Tier::Interval, Tier::Day] {
        let files = store.sst_files(tier).expect("live files");
        assert!(
            !files.is_empty(),
            "the other connection keeps {tier:?} files alive"
        );
        for file in files {
            let bytes = std::fs::read(&file).expect("read sst");
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} still holds the pseudonym",
                file.display()
            );
        }
    }
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(
        store.export(&[other]).expect("export").interval.len(),
        16,
        "other connections untouched"
    );
    let month_only = store
        .readings(victim, Tier::Month, Timestamp::MIN, Timestamp::MAX)
        .expect("read");
    assert_eq!(month_only.len(), 2);
}

#[test]
fn full_erasure_without_holds_leaves_no_pseudonym_bytes_in_any_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let mut config = StoreConfig::new(dir.path());
    config.compression = Compression::None;
    config.retention.erasure_hold = meterstand_model::TierSet::EMPTY;
    let store = RocksStore::open(config, Arc::new(clock)).expect("open");
    let victim = pseudo(10);
    let other = pseudo(11);
    for p in [victim, other] {
        store
            .put_connection(p, connection(ConsentLevel::Interval, "1234"))
            .expect("put");
    }
    let readings = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
    rt().block_on(store.write(vec![item(victim, readings.clone()), item(other, readings)]))
        .expect("write");
    store.compact_all().expect("compact");
    let needle = victim.to_bytes();
    assert!(!files_contain(dir.path(), &needle, true).is_empty());
    let receipt = store.erase(&[victim]).expect("erase");
    assert_eq!(receipt.deleted.month, 2);
    assert!(receipt.kept.is_empty());
    let sst_hits = files_contain(dir.path(), &needle, true);
    assert!(
        sst_hits.is_empty(),
        "SST files still holding the pseudonym: {sst_hits:?}"
    );
    let wal_hits: Vec<String> = files_contain(dir.path(), &needle, false)
        .into_iter()
        .filter(|p| p.ends_with(".log"))
        .collect();
    assert!(
        wal_hits.is_empty(),
        "WAL files still holding the pseudonym: {wal_hits:?}"
    );
    assert!(
        !files_contain(dir.path(), &other.to_bytes(), true).is_empty(),
        "the other connection stays"
    );
}

#[test]
fn a_connection_record_moves_to_the_current_key_when_its_ean_is_seen_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let old = pseudo(30);
    let new = Pseudonym {
        version: 2,
        hash: [31; 16],
    };
    {
        let store = open(dir.path(), &clock);
        store
            .put_connection(old, connection(ConsentLevel::Interval, "1234"))
            .expect("put");
        // After a rotation ingest sends the current pseudonym and the older ones.
        let mut it = item(new, quarter_hours(ts("2026-11-30T22:00:00Z"), 4, 1000, 50));
        it.previous = vec![old];
        let outcome = rt().block_on(store.write(vec![it])).expect("write");
        // Interval readings are kept: the consent came along (the default is standard).
        assert_eq!(outcome.stored.interval, 8);
        assert_eq!(outcome.dropped_by_consent.total(), 0);
        assert_eq!(
            store.connection(new).map(|c| c.consent),
            Some(ConsentLevel::Interval)
        );
        assert!(store.connection(old).is_none());
        store.close().expect("close");
    }
    let store = open(dir.path(), &clock);
    assert_eq!(
        store
            .connection(new)
            .and_then(|c| c.postcode4)
            .map(|p| p.get()),
        Some(1234),
        "the move is durable"
    );
    assert!(store.connection(old).is_none());
}

#[test]
fn lowering_consent_removes_tiers_no_longer_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = open(dir.path(), &clock);
    let p = pseudo(12);
    store
        .put_connection(p, connection(ConsentLevel::Interval, "1234"))
        .expect("put");
    rt().block_on(store.write(vec![item(
        p,
        quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50),
    )]))
    .expect("write");
    let receipt = store
        .put_connection(p, connection(ConsentLevel::Standard, "1234"))
        .expect("lower");
    assert_eq!(
        (
            receipt.deleted.interval,
            receipt.deleted.day,
            receipt.deleted.month
        ),
        (16, 2, 0)
    );
    let export = store.export(&[p]).expect("export");
    assert!(export.interval.is_empty() && export.day.is_empty());
    assert_eq!(export.month.len(), 2);
    assert_eq!(
        export.connection.map(|c| c.consent),
        Some(ConsentLevel::Standard)
    );
    // Raising consent again removes nothing.
    let receipt = store
        .put_connection(p, connection(ConsentLevel::Interval, "1234"))
        .expect("raise");
    assert_eq!(receipt.deleted.total(), 0);
    // A new reading in a block whose readings were removed does not bring them back.
    rt().block_on(store.write(vec![item(
        p,
        quarter_hours(ts("2026-11-30T22:00:00Z"), 1, 1000, 50),
    )]))
    .expect("write again");
    let export = store.export(&[p]).expect("export");
    assert_eq!(export.interval.len(), 2, "one reading, two registers");
}

#[test]
fn series_and_aggregates_come_from_boundary_differences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = open(dir.path(), &clock);
    let cal = Calendar::amsterdam();
    // Day readings at local midnights of 24..27 November (UTC 23:00 the day before).
    let days: Vec<Timestamp> = (23..=26)
        .map(|d| ts(&format!("2026-11-{d}T23:00:00Z")))
        .collect();
    let mut items = Vec::new();
    for n in 0..12u8 {
        let p = pseudo(100 + n);
        let postcode = if n < 10 { "1234" } else { "5678" };
        store
            .put_connection(p, connection(ConsentLevel::Daily, postcode))
            .expect("put");
        let mut readings = Vec::new();
        for (i, t) in days.iter().enumerate() {
            // Connection 0 misses the reading of the 26th: it cannot contribute to the 25th or 26th.
            if n == 0 && i == 2 {
                continue;
            }
            readings.push(tiered(
                Register::ImportT1,
                *t,
                10_000 + i as u64 * (1000 + u64::from(n)),
            ));
            readings.push(tiered(Register::ImportT2, *t, 20_000 + i as u64 * 500));
        }
        assert!(readings.iter().all(|r| r.tiers.contains(Tier::Day)));
        items.push(item(p, readings));
    }
    rt().block_on(store.write(items)).expect("write");

    let series = store
        .series(
            pseudo(101),
            RegisterKind::Import,
            Tier::Day,
            days[0],
            days[3],
        )
        .expect("series");
    assert_eq!(series.len(), 3);
    assert_eq!(series[0].period_start, days[0]);
    assert_eq!(series[0].consumption, 1001 + 500);
    let gappy = store
        .series(
            pseudo(100),
            RegisterKind::Import,
            Tier::Day,
            days[0],
            days[3],
        )
        .expect("series");
    assert_eq!(
        gappy.len(),
        1,
        "only the first day has both boundary readings"
    );
    assert_eq!(
        cal.next_boundary(Tier::Day, Register::ImportT1, days[0]),
        days[1]
    );

    let cells = store
        .aggregate(&AggregateQuery {
            kind: RegisterKind::Import,
            tier: Tier::Day,
            from: days[0],
            to: days[3],
            group_by: GroupBy {
                postcode4: true,
                profile: false,
            },
        })
        .expect("aggregate");
    let cell = |day: usize, postcode: u16| {
        cells
            .iter()
            .find(|c| {
                c.period_start == days[day] && c.group.postcode4.map(|p| p.get()) == Some(postcode)
            })
            .cloned()
    };
    let first = cell(0, 1234).expect("cell");
    assert_eq!(first.connections, 10);
    assert_eq!(
        first.consumption,
        (0..10).map(|n| 1000 + n + 500).sum::<u64>()
    );
    assert_eq!(
        cell(1, 1234).expect("cell").connections,
        9,
        "the gappy connection is not counted"
    );
    assert_eq!(cell(0, 5678).expect("cell").connections, 2);
    assert!(
        cell(0, 5678).expect("cell").group.profile.is_none(),
        "profile is not grouped unless asked"
    );
}

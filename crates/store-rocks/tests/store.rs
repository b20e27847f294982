//! The RocksDB engine: the backend-independent conformance suite, then what only a store
//! on disk can show — durability across reopen, and erased bytes gone from every file.

use std::sync::Arc;

use jiff::Timestamp;
use meterstand_model::{ConsentLevel, Register, Tier, TierSet};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::conformance::{
    Backend, block_on, connection, correction, item, pseudo, put, quarter_hours, tiered, ts,
};
use meterstand_store::{ManualClock, ReadingStore, ReadingWriter};
use meterstand_store_rocks::{Compression, FaultPoint, RocksStore, StoreConfig, layout};
use meterstand_testkit::{Trace, files_containing_any_form};

/// A store in its own temporary directory, uncompressed so tests can search its files.
struct Rocks {
    dir: tempfile::TempDir,
    hold: TierSet,
}

impl Rocks {
    fn new() -> Rocks {
        Rocks {
            dir: tempfile::tempdir().expect("tempdir"),
            hold: TierSet::EMPTY.with(Tier::Month),
        }
    }
}

impl Backend for Rocks {
    type Store = RocksStore;
    fn open(&mut self, clock: &ManualClock) -> RocksStore {
        let mut config = StoreConfig::new(self.dir.path());
        config.compression = Compression::None;
        config.retention.erasure_hold = self.hold;
        RocksStore::open(config, Arc::new(clock.clone())).expect("open store")
    }
}

meterstand_store::conformance_tests!(Rocks::new());

/// Files of the data directory whose bytes contain `needle` (SST files only, or all).
fn files_containing(dir: &std::path::Path, needle: &[u8], only_sst: bool) -> Vec<String> {
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

/// Every trace of the erased pseudonym `p` in the data directory: every file below it (SST,
/// WAL, MANIFEST, OPTIONS, RocksDB's info `LOG` and `LOG.old.*`), searched for the bytes raw,
/// as lowercase hex and as uppercase hex (how the info LOG prints keys). The needles: the
/// pseudonym's bytes (`Pseudonym::to_bytes`), its hash alone (the hex of `v1-<hex>`), and the
/// key prefixes built from it (every register's block keys, every tier's correction records).
fn erased_traces(dir: &std::path::Path, p: Pseudonym) -> Vec<(String, Trace)> {
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("pseudonym".into(), p.to_bytes().to_vec()),
        ("pseudonym hash".into(), p.hash.to_vec()),
    ];
    for register in Register::ALL {
        needles.push((
            format!("{register:?} block key prefix"),
            layout::register_prefix(p, register).to_vec(),
        ));
    }
    for tier in Tier::ALL {
        needles.push((
            format!("{tier:?} correction key prefix"),
            layout::correction_tier_range(p, tier).0,
        ));
    }
    needles
        .into_iter()
        .flat_map(|(what, needle)| {
            files_containing_any_form(dir, &needle)
                .into_iter()
                .map(move |trace| (what.clone(), trace))
        })
        .collect()
}

#[test]
fn data_survives_reopen() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let p = pseudo(5);
    {
        let store = rocks.open(&clock);
        put(&store, p, connection(ConsentLevel::Interval, "4321"));
        block_on(store.write(vec![item(
            p,
            quarter_hours(ts("2026-11-26T10:00:00Z"), 4, 10, 1),
        )]))
        .expect("write");
        store.close().expect("close");
    }
    let store = rocks.open(&clock);
    assert_eq!(
        store.connection(p).expect("read").map(|c| c.consent),
        Some(ConsentLevel::Interval)
    );
    let stored = store
        .readings(p, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
        .expect("read");
    assert_eq!(stored.len(), 8);
}

#[test]
fn a_clean_close_leaves_no_data_in_the_wal() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let p = pseudo(6);
    let store = rocks.open(&clock);
    put(&store, p, connection(ConsentLevel::Interval, "4321"));
    block_on(store.write(vec![item(
        p,
        quarter_hours(ts("2026-11-26T10:00:00Z"), 4, 10, 1),
    )]))
    .expect("write");
    store.close().expect("close");
    let in_wal: Vec<String> = files_containing(rocks.dir.path(), &p.to_bytes(), false)
        .into_iter()
        .filter(|f| f.ends_with(".log"))
        .collect();
    assert!(
        in_wal.is_empty(),
        "WAL files still hold data after close: {in_wal:?}"
    );
}

#[test]
fn erased_bytes_are_gone_from_sst_files_and_the_held_tier_stays() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = rocks.open(&clock);
    let (victim, other) = (pseudo(8), pseudo(9));
    for p in [victim, other] {
        put(&store, p, connection(ConsentLevel::Interval, "1234"));
    }
    let readings = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
    block_on(store.write(vec![item(victim, readings.clone()), item(other, readings)]))
        .expect("write");
    store.compact_all().expect("flush to SST files");
    let needle = victim.to_bytes();
    assert!(!files_containing(rocks.dir.path(), &needle, true).is_empty());
    store.erase(&[victim]).expect("erase");
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
    let store = rocks.open(&clock);
    assert_eq!(store.export(&[other]).expect("export").interval.len(), 16);
    let month = store
        .readings(victim, Tier::Month, Timestamp::MIN, Timestamp::MAX)
        .expect("read");
    assert_eq!(month.len(), 2, "the fiscal hold keeps month readings");
}

/// The default hold keeps month readings; another connection's month reading keeps the
/// month memtable busy. After erasure no file at all — SST, WAL, MANIFEST, the info LOG and
/// its old copies — holds the erased pseudonym's bytes, raw or as hex in either case.
#[test]
fn erasure_under_the_default_hold_leaves_no_pseudonym_bytes_in_any_file() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = rocks.open(&clock);
    let (victim, other) = (pseudo(10), pseudo(11));
    for p in [victim, other] {
        put(&store, p, connection(ConsentLevel::Interval, "1234"));
    }
    // The other connection: a month-boundary reading (local midnight on 1 December).
    block_on(store.write(vec![item(
        other,
        vec![tiered(Register::ImportT1, ts("2026-11-30T23:00:00Z"), 7)],
    )]))
    .expect("write month");
    // Some files with both connections' bounds, then the victim's quarter-hours.
    store.compact_all().expect("compact");
    block_on(store.write(vec![item(
        victim,
        quarter_hours(ts("2026-11-26T10:00:00Z"), 8, 1000, 50),
    )]))
    .expect("write victim");
    store.compact_all().expect("compact");
    block_on(store.write(vec![item(
        victim,
        quarter_hours(ts("2026-11-27T10:00:00Z"), 8, 2000, 50),
    )]))
    .expect("write victim again");
    // A correction record (in its own column family) must go too.
    let corrected = block_on(store.write(vec![correction(
        victim,
        vec![tiered(Register::ImportT1, ts("2026-11-27T10:00:00Z"), 1)],
    )]))
    .expect("write a correction");
    assert_eq!(corrected.corrected, 1);
    let needle = victim.to_bytes();
    assert!(!files_containing(rocks.dir.path(), &needle, false).is_empty());
    store.erase(&[victim]).expect("erase");
    let traces = erased_traces(rocks.dir.path(), victim);
    assert!(
        traces.is_empty(),
        "files still holding the erased pseudonym (raw or hex): {traces:#?}"
    );
    assert!(
        !files_containing(rocks.dir.path(), &other.to_bytes(), false).is_empty(),
        "the other connection stays"
    );
}

#[test]
fn full_erasure_without_holds_leaves_no_pseudonym_bytes_in_any_file() {
    let mut rocks = Rocks::new();
    rocks.hold = TierSet::EMPTY;
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = rocks.open(&clock);
    let (victim, other) = (pseudo(12), pseudo(13));
    for p in [victim, other] {
        put(&store, p, connection(ConsentLevel::Interval, "1234"));
    }
    let readings = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
    block_on(store.write(vec![item(victim, readings.clone()), item(other, readings)]))
        .expect("write");
    // Corrected in every tier: correction records of the month tier too.
    let corrected = block_on(store.write(vec![correction(
        victim,
        vec![tiered(Register::ImportT1, ts("2026-11-30T23:00:00Z"), 1)],
    )]))
    .expect("write a correction");
    assert_eq!(corrected.corrected, 3);
    store.compact_all().expect("compact");
    let receipt = store.erase(&[victim]).expect("erase");
    assert_eq!(receipt.deleted.month, 2);
    assert!(receipt.kept.is_empty());
    let traces = erased_traces(rocks.dir.path(), victim);
    assert!(
        traces.is_empty(),
        "files still holding the pseudonym (raw or hex): {traces:#?}"
    );
}

#[test]
fn a_moved_connection_record_is_durable() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let old = pseudo(30);
    let new = Pseudonym {
        version: 2,
        hash: [31; 16],
    };
    {
        let store = rocks.open(&clock);
        put(&store, old, connection(ConsentLevel::Interval, "1234"));
        let mut it = item(new, quarter_hours(ts("2026-11-30T22:00:00Z"), 4, 1000, 50));
        it.previous = vec![old];
        block_on(store.write(vec![it])).expect("write");
        store.close().expect("close");
    }
    let store = rocks.open(&clock);
    let moved = store.connection(new).expect("read");
    assert_eq!(moved.and_then(|c| c.postcode4).map(|p| p.get()), Some(1234));
    assert!(store.connection(old).expect("read").is_none());
}

/// A group that fails after moving a connection record to the current key in memory (the
/// batch that carries the move to disk is not written) puts it back: memory and disk agree,
/// and the retry moves it for real.
#[test]
fn a_failed_group_undoes_its_moved_connection_records() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let old = pseudo(32);
    let new = Pseudonym {
        version: 2,
        hash: [33; 16],
    };
    {
        let store = rocks.open(&clock);
        put(&store, old, connection(ConsentLevel::Interval, "1234"));
        let mut it = item(new, quarter_hours(ts("2026-11-30T22:00:00Z"), 4, 1000, 50));
        it.previous = vec![old];
        store.inject_fault(FaultPoint::GroupWrite, 1);
        assert!(block_on(store.write(vec![it.clone()])).is_err());
        assert!(
            store.connection(old).expect("read").is_some(),
            "back under the old key"
        );
        assert!(store.connection(new).expect("read").is_none());
        let retry = block_on(store.write(vec![it])).expect("retry");
        assert_eq!(retry.stored.interval, 8);
        assert!(store.connection(new).expect("read").is_some());
        assert!(store.connection(old).expect("read").is_none());
        store.close().expect("close");
    }
    // On disk as in memory: the record moved once, by the retry.
    let store = rocks.open(&clock);
    assert!(store.connection(new).expect("read").is_some());
    assert!(store.connection(old).expect("read").is_none());
}

/// The registry of connections lives in memory (the gate reads it for every reading): it is
/// charged to `store.memory`, so the block cache shrinks as the fleet grows, at registration
/// and again when a reopened store loads it.
#[test]
fn the_registry_of_connections_is_charged_to_the_memory_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let open = || {
        let mut config = StoreConfig::new(dir.path());
        config.memory = 32 << 20;
        RocksStore::open(config, Arc::new(clock.clone())).expect("open store")
    };
    let share = 20 << 20; // five eighths of the budget
    let fleet = 3_000u32;
    let registered = {
        let store = open();
        assert_eq!(
            store.block_cache_capacity(),
            share,
            "nothing registered yet"
        );
        for i in 0..fleet {
            let mut hash = [0u8; 16];
            hash[..4].copy_from_slice(&i.to_le_bytes());
            let p = Pseudonym { version: 1, hash };
            put(&store, p, connection(ConsentLevel::Interval, "1234"));
        }
        let registered = store.block_cache_capacity();
        // At least the records themselves (18-byte pseudonym and the record, one slot each).
        assert!(
            share - registered >= fleet as usize * 20,
            "the cache gave up {} bytes for {fleet} connections",
            share - registered
        );
        store.close().expect("close");
        registered
    };
    let store = open();
    assert_eq!(
        store.block_cache_capacity(),
        registered,
        "charged again at open"
    );
}

/// The day tier's block read fails once, after the interval blocks were merged into the
/// writer's cache. The retry must store the interval readings, not count them duplicates.
#[test]
fn a_failed_group_leaves_no_poisoned_cache() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let p = pseudo(20);
    {
        let store = rocks.open(&clock);
        put(&store, p, connection(ConsentLevel::Interval, "1234"));
        // Crosses local midnight: interval and day readings in one batch.
        let batch = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
        store.inject_fault(FaultPoint::BlockRead(Tier::Day), 1);
        assert!(block_on(store.write(vec![item(p, batch.clone())])).is_err());
        let retry = block_on(store.write(vec![item(p, batch)])).expect("retry");
        assert_eq!(
            retry.stored.interval, 16,
            "every interval reading stored on retry"
        );
        assert_eq!(retry.duplicates, 0);
        assert_eq!(store.sweep_retention().expect("sweep").total(), 0);
        store.close().expect("close");
    }
    let store = rocks.open(&clock);
    let stored = store
        .readings(p, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
        .expect("read");
    assert_eq!(stored.len(), 16);
}

fn open_journalled(
    dir: &std::path::Path,
    journal: &std::path::Path,
    clock: &ManualClock,
) -> RocksStore {
    let mut config = StoreConfig::new(dir);
    config.compression = Compression::None;
    config.journal = Some(journal.to_path_buf());
    RocksStore::open(config, Arc::new(clock.clone())).expect("open store")
}

/// Backup, erase X, lower Y's consent, restore the backup: the journal replays both, so
/// the restore neither resurrects X nor gives Y's withdrawn tiers back.
#[test]
fn a_restored_backup_gets_later_erasures_and_consent_changes_replayed() {
    let root = tempfile::tempdir().expect("tempdir");
    let (data, backup, journal) = (
        root.path().join("data"),
        root.path().join("backup"),
        root.path().join("journal").join("subjects.jsonl"),
    );
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let (x, y) = (pseudo(60), pseudo(61));
    {
        let store = open_journalled(&data, &journal, &clock);
        for p in [x, y] {
            put(&store, p, connection(ConsentLevel::Interval, "1234"));
        }
        let readings = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
        block_on(store.write(vec![item(x, readings.clone()), item(y, readings)])).expect("write");
        store.backup(&backup, 7).expect("backup");
        store.erase(&[x]).expect("erase x");
        store
            .put_connection(&[y], connection(ConsentLevel::Standard, "1234"))
            .expect("lower y");
        store.close().expect("close");
    }
    // The restore: the backup in place of the data directory, opened with the journal.
    let restored = open_journalled(&backup, &journal, &clock);
    assert_eq!(restored.replayed().len(), 2, "{:?}", restored.replayed());
    let x_left = restored.export(&[x]).expect("export");
    assert!(x_left.interval.is_empty() && x_left.day.is_empty() && x_left.connection.is_none());
    let y_left = restored.export(&[y]).expect("export");
    assert!(y_left.interval.is_empty() && y_left.day.is_empty());
    assert_eq!(y_left.month.len(), 2);
    assert_eq!(
        y_left.connection.map(|c| c.consent),
        Some(ConsentLevel::Standard)
    );
    // Nothing more to replay the next time.
    drop(restored);
    assert!(
        open_journalled(&backup, &journal, &clock)
            .replayed()
            .is_empty()
    );
}

/// An erasure journalled but cut short before the store carried it out (a crash) is
/// redone when the store opens.
#[test]
fn an_interrupted_erasure_is_redone_at_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let (data, journal) = (root.path().join("data"), root.path().join("subjects.jsonl"));
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let x = pseudo(62);
    {
        let store = open_journalled(&data, &journal, &clock);
        put(&store, x, connection(ConsentLevel::Interval, "1234"));
        block_on(store.write(vec![item(
            x,
            quarter_hours(ts("2026-11-26T10:00:00Z"), 8, 1000, 50),
        )]))
        .expect("write");
        store.close().expect("close");
    }
    // What a crash between the journal append and the erasure leaves behind: the entry
    // after the last one (a consent change, #1), synced, not carried out.
    use std::io::Write;
    let entry = meterstand_store::journal::JournalEntry {
        seq: 2,
        time: "2026-12-02T00:00:00Z".into(),
        op: meterstand_store::journal::JournalOp::erase(&[x]),
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .expect("journal");
    writeln!(file, "{}", serde_json::to_string(&entry).expect("json")).expect("append");
    let store = open_journalled(&data, &journal, &clock);
    assert_eq!(store.replayed().len(), 1);
    assert!(store.export(&[x]).expect("export").interval.is_empty());
}

/// A stored block that cannot be decoded does not fail its batch forever: the readings
/// bound for it are quarantined and counted, the rest of the batch and later batches flow.
#[test]
fn an_undecodable_block_quarantines_its_readings_and_the_rest_flows() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = rocks.open(&clock);
    let (p, q) = (pseudo(70), pseudo(71));
    for c in [p, q] {
        put(&store, c, connection(ConsentLevel::Interval, "1234"));
    }
    block_on(store.write(vec![item(
        p,
        quarter_hours(ts("2026-11-26T10:00:00Z"), 2, 1000, 50),
    )]))
    .expect("first write");
    // Flush the writer's cache (a sweep clears it), then make p's block undecodable.
    store.sweep_retention().expect("sweep");
    store.inject_fault(FaultPoint::BlockDecode(Tier::Interval), 1);
    let out = block_on(store.write(vec![
        item(p, quarter_hours(ts("2026-11-26T10:30:00Z"), 1, 1200, 50)),
        item(q, quarter_hours(ts("2026-11-26T10:00:00Z"), 2, 1000, 50)),
    ]))
    .expect("the batch is not failed");
    assert_eq!(
        out.quarantined, 1,
        "p's reading for the bad block is set aside"
    );
    assert_eq!(
        out.stored.interval,
        4 + 1,
        "q's readings and p's other register flow"
    );
    let later = block_on(store.write(vec![item(
        q,
        quarter_hours(ts("2026-11-26T11:00:00Z"), 1, 1200, 50),
    )]))
    .expect("later batch");
    assert_eq!(later.stored.interval, 2);
}

/// The sweep seeks past each series' live blocks instead of reading them: across several
/// pseudonyms and registers, with several expired day-blocks per series and one straddling
/// the horizon, it must still remove exactly the readings before the horizon and nothing
/// after it, in every series.
#[test]
fn the_sweep_removes_every_expired_block_of_every_series_and_nothing_live() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-11-10T00:00:00Z"));
    let store = rocks.open(&clock);
    let pseudonyms: Vec<Pseudonym> = (80..86).map(pseudo).collect();
    // Six days of quarter-hours for each, two registers (six interval blocks per series).
    let start = ts("2026-11-01T00:00:00Z");
    for &p in &pseudonyms {
        put(&store, p, connection(ConsentLevel::Interval, "1234"));
        let mut readings = Vec::new();
        for q in 0..6 * 96i64 {
            let t = Timestamp::from_second(start.as_second() + q * 900).expect("in range");
            for register in [Register::ImportT1, Register::ExportT1] {
                let mut r = tiered(register, t, 1_000 + q as u64);
                r.tiers = TierSet::EMPTY.with(Tier::Interval);
                readings.push(r);
            }
        }
        block_on(store.write(vec![item(p, readings)])).expect("write");
    }
    // The interval horizon at 2026-11-03T06:00Z: two whole day-blocks and a quarter of the
    // third expire in every series.
    let horizon = ts("2026-11-03T06:00:00Z").as_second();
    clock.set(Timestamp::from_second(horizon + 13 * 2_630_016).expect("in range"));
    let removed = store.sweep_retention().expect("sweep");
    let expired_per_series = (2 * 96 + 24) as u64;
    assert_eq!(
        removed.interval,
        expired_per_series * 2 * pseudonyms.len() as u64
    );
    for &p in &pseudonyms {
        let left = store
            .readings(p, Tier::Interval, Timestamp::MIN, Timestamp::MAX)
            .expect("read");
        assert_eq!(left.len(), 2 * (6 * 96 - expired_per_series as usize));
        assert!(left.iter().all(|r| r.time.as_second() >= horizon));
    }
    assert_eq!(store.sweep_retention().expect("sweep").interval, 0);
}

/// A full day of quarter-hours is not kept in the writer's cache (no new reading can join
/// it): a redelivery of that day is still counted as duplicates, a correction still
/// replaces its value, and both are read from the store, not assumed.
#[test]
fn a_full_day_out_of_the_writers_cache_still_meets_duplicates_and_corrections() {
    let mut rocks = Rocks::new();
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let p = pseudo(21);
    let store = rocks.open(&clock);
    put(&store, p, connection(ConsentLevel::Interval, "1234"));
    // One UTC day: a full interval block for each of the two registers.
    let day = quarter_hours(ts("2026-11-30T00:00:00Z"), 96, 1000, 50);
    let first = block_on(store.write(vec![item(p, day.clone())])).expect("write");
    assert_eq!(first.stored.interval, 192);
    let again = block_on(store.write(vec![item(p, day.clone())])).expect("redelivery");
    assert_eq!(again.stored.total(), 0, "{again:?}");
    assert_eq!(again.duplicates, first.stored.total(), "{again:?}");
    assert_eq!(again.conflicts, 0);
    let noon = ts("2026-11-30T12:00:00Z");
    let fixed = block_on(store.write(vec![correction(
        p,
        vec![tiered(Register::ImportT1, noon, 7_777)],
    )]))
    .expect("correction");
    assert_eq!(fixed.corrected, 1, "{fixed:?}");
    let stored = store
        .readings(p, Tier::Interval, noon, ts("2026-11-30T12:15:00Z"))
        .expect("read");
    let values: Vec<u64> = stored
        .iter()
        .filter(|r| r.register == Register::ImportT1)
        .map(|r| r.value)
        .collect();
    assert_eq!(values, [7_777]);
    // And a conflicting value (not a correction) is a conflict, not a new reading.
    let clash = block_on(store.write(vec![item(p, vec![tiered(Register::ImportT2, noon, 1)])]))
        .expect("conflict");
    assert_eq!((clash.conflicts, clash.stored.total()), (1, 0), "{clash:?}");
}

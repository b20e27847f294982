//! Statistics over the RocksDB engine across restarts: the units writes mark survive a
//! close, so a restart in the middle of a backlog picks up where it stopped and freezes
//! each period once; the subject journal is pruned by backup rotation and says when it no
//! longer reaches back to a backup.

use std::sync::Arc;
use std::time::Duration;

use meterstand_model::{Calendar, ConsentLevel, RegisterKind, Tier};
use meterstand_store::conformance::{block_on, connection, item, pseudo, put, quarter_hours, ts};
use meterstand_store::freeze::{FreezeConfig, run};
use meterstand_store::journal::SubjectJournal;
use meterstand_store::{Clock, ManualClock, ReadingStore, ReadingWriter};
use meterstand_store_rocks::{Compression, RocksStore, StoreConfig};

fn open(
    dir: &std::path::Path,
    journal: Option<&std::path::Path>,
    clock: &ManualClock,
) -> RocksStore {
    let mut config = StoreConfig::new(dir);
    config.compression = Compression::None;
    config.journal = journal.map(std::path::Path::to_path_buf);
    RocksStore::open(config, Arc::new(clock.clone())).expect("open store")
}

#[test]
fn a_restart_in_the_middle_of_a_backlog_freezes_each_period_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(ts("2026-11-30T00:00:00Z"));
    let cal = Calendar::amsterdam();
    // Sixty days of quarter-hours of four households, loaded at once (a migration).
    let first = ts("2026-09-30T22:00:00Z");
    let days = 60;
    {
        let store = open(root.path(), None, &clock);
        let mut items = Vec::new();
        for n in 0..4u8 {
            let p = pseudo(20 + n);
            put(&store, p, connection(ConsentLevel::Interval, "1234"));
            items.push(item(
                p,
                quarter_hours(first, days * 96 + 1, 900, 5 + u64::from(n)),
            ));
        }
        block_on(store.write(items)).expect("write");
        store.close().expect("close");
    }
    clock.set(ts("2026-12-03T00:00:00Z"));
    let cfg = FreezeConfig {
        k: 3,
        budget: Duration::ZERO,
        ..FreezeConfig::default()
    };
    let mut computed = 0;
    // A few slices, each in a store opened anew: what one left pending, the next finds.
    for _ in 0..3 {
        let store = open(root.path(), None, &clock);
        let r = run(&store, &cal, &cfg, clock.now()).expect("run");
        assert_eq!(r.units, 1, "a zero budget still computes one unit: {r:?}");
        computed += r.units;
        store.close().expect("close");
    }
    let store = open(root.path(), None, &clock);
    let before = store.pending_periods().expect("pending").len() as u64;
    let r = run(
        &store,
        &cal,
        &FreezeConfig {
            budget: Duration::from_secs(3600),
            ..cfg
        },
        clock.now(),
    )
    .expect("run");
    assert_eq!(r.units, before - r.pending, "{r:?}");
    computed += r.units;
    let frozen = store
        .statistics(
            Tier::Day,
            RegisterKind::Import,
            first,
            ts("2026-12-01T00:00:00Z"),
        )
        .expect("read");
    // Every complete local day, each once, with all four households (the partial last
    // day is frozen without rows: nobody has both its boundaries).
    let published: Vec<_> = frozen.iter().filter(|p| !p.rows.is_empty()).collect();
    assert_eq!(published.len(), days as usize - 1, "{}", frozen.len());
    assert!(published.iter().all(|p| p.rows[0].connections == 4));
    assert!(computed >= days as u64);
    // Nothing is computed twice: a run now finds nothing due.
    assert_eq!(run(&store, &cal, &cfg, clock.now()).expect("run").units, 0);
}

#[test]
fn backups_rotate_and_prune_the_journal_to_what_the_kept_ones_need() {
    let root = tempfile::tempdir().expect("tempdir");
    let (data, backups, journal) = (
        root.path().join("data"),
        root.path().join("backups"),
        root.path().join("journal").join("subjects.jsonl"),
    );
    std::fs::create_dir_all(&backups).expect("dir");
    let clock = ManualClock::new(ts("2026-12-01T00:00:00Z"));
    let store = open(&data, Some(&journal), &clock);
    let mut seqs = Vec::new();
    for n in 0..4u8 {
        put(
            &store,
            pseudo(40 + n),
            connection(ConsentLevel::Daily, "1234"),
        );
        store.erase(&[pseudo(40 + n)]).expect("erase");
        clock.set(ts(&format!("2026-12-0{}T00:00:00Z", n + 2)));
        let info = store
            .backup(&backups.join(format!("b{n}")), 2)
            .expect("backup");
        seqs.push(info.journal_seq);
    }
    assert_eq!(seqs, vec![2, 4, 6, 8], "two entries per round");
    let kept: Vec<String> = std::fs::read_dir(&backups)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let contents = SubjectJournal::read(&journal).expect("journal");
    assert_eq!(
        contents.pruned_through, 6,
        "the oldest kept backup had applied #6"
    );
    assert_eq!(
        contents.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![7, 8]
    );
    // The journal reaches back to the kept backups, not to the removed ones.
    assert_eq!(contents.gap(6, 8), None);
    assert!(contents.gap(4, 8).is_some());
    // No entry names a postcode, a profile or a consent level's attributes.
    let text = std::fs::read_to_string(&journal).expect("journal");
    assert!(!text.contains("1234") && !text.contains("E1A"), "{text}");
}

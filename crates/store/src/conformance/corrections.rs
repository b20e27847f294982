//! Conformance: corrections from the metering company.

use super::statistics::frozen;
use super::*;

/// A correction at a day and month boundary (local midnight on 1 December) replaces the
/// reading in the interval, day and month tiers: counted as corrected (not as a conflict),
/// listed with old and new value, read back everywhere, marked in the export with the time
/// of the correction. A correction for a time not stored is stored like a reading; one with
/// the stored value is a duplicate; a plain conflicting reading afterwards keeps the
/// corrected value.
pub fn corrections_replace_the_reading_in_every_tier(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let (p, other) = (pseudo(60), pseudo(61));
    for q in [p, other] {
        put(&store, q, connection(ConsentLevel::Interval, "1234"));
    }
    let readings = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
    block_on(store.write(vec![item(p, readings.clone()), item(other, readings)])).expect("write");
    let midnight = ts("2026-11-30T23:00:00Z");
    let stored_value = 1000 + 4 * 50;
    clock.set(ts("2026-12-02T10:00:00Z"));
    let out = block_on(store.write(vec![correction(
        p,
        vec![
            tiered(Register::ImportT1, midnight, 1234),
            // Not stored yet: stored like a reading.
            tiered(Register::ImportT1, ts("2026-12-01T01:00:00Z"), 1500),
        ],
    )]))
    .expect("write");
    assert_eq!(out.corrected, 3, "{out:?}");
    assert_eq!(out.conflicts, 0, "{out:?}");
    assert_eq!(out.stored.interval, 1, "{out:?}");
    assert_eq!(out.late, 0);
    let mut tiers: Vec<Tier> = out.corrections.iter().map(|c| c.tier).collect();
    tiers.sort();
    assert_eq!(tiers, vec![Tier::Interval, Tier::Day, Tier::Month]);
    for c in &out.corrections {
        assert_eq!(
            (c.connection, c.register, c.time, c.old, c.new),
            (p, Register::ImportT1, midnight, stored_value, 1234)
        );
    }
    for tier in Tier::ALL {
        let at = store
            .readings(p, tier, midnight, ts("2026-11-30T23:15:00Z"))
            .expect("read");
        let t1: Vec<u64> = at
            .iter()
            .filter(|r| r.register == Register::ImportT1)
            .map(|r| r.value)
            .collect();
        assert_eq!(t1, vec![1234], "{tier:?}");
        let untouched = store
            .readings(other, tier, midnight, ts("2026-11-30T23:15:00Z"))
            .expect("read");
        assert_eq!(untouched[0].value, stored_value, "{tier:?}");
    }
    let export = store.export(&[p]).expect("export");
    for tier in Tier::ALL {
        for r in export.tier(tier) {
            let want = (r.register == Register::ImportT1 && r.time == midnight)
                .then(|| ts("2026-12-02T10:00:00Z"));
            assert_eq!(export.corrected_at(tier, r), want, "{tier:?} {r:?}");
        }
    }
    assert_eq!(export.corrected.len(), 3);
    assert!(store.export(&[other]).expect("export").corrected.is_empty());
    // The same correction again is a duplicate; a plain reading cannot undo it.
    let again = block_on(store.write(vec![
        correction(p, vec![tiered(Register::ImportT1, midnight, 1234)]),
        item(p, vec![tiered(Register::ImportT1, midnight, stored_value)]),
    ]))
    .expect("write");
    assert_eq!(
        (again.corrected, again.duplicates, again.conflicts),
        (0, 3, 3)
    );
    assert!(again.corrections.is_empty());
    assert_eq!(all(&store, p, Tier::Month)[0].value, 1234);
}

/// Consent still gates corrections, and a correction of a period whose statistics are
/// frozen is counted as late and leaves the frozen statistics as they are.
pub fn corrections_are_gated_and_late_for_frozen_periods(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let (p, standard) = (pseudo(62), pseudo(63));
    put(&store, p, connection(ConsentLevel::Interval, "1234"));
    put(&store, standard, connection(ConsentLevel::Standard, "1234"));
    let t = ts("2026-11-23T23:00:00Z");
    block_on(store.write(vec![
        item(p, vec![tiered(Register::ImportT1, t, 5)]),
        item(standard, vec![tiered(Register::ImportT1, t, 5)]),
    ]))
    .expect("write");
    let frozen_period = frozen(Tier::Day, "2026-11-23T23:00:00Z", 1);
    store
        .freeze(std::slice::from_ref(&frozen_period), None)
        .expect("freeze");
    let out = block_on(store.write(vec![
        correction(p, vec![tiered(Register::ImportT1, t, 7)]),
        correction(standard, vec![tiered(Register::ImportT1, t, 7)]),
    ]))
    .expect("write");
    // p: interval and day replaced, both late (they bound the frozen day). standard:
    // interval and day dropped by consent (nothing of them is stored).
    assert_eq!(out.corrected, 2, "{out:?}");
    assert_eq!(out.late, 2, "{out:?}");
    assert_eq!(out.dropped_by_consent.interval, 1);
    assert_eq!(out.dropped_by_consent.day, 1);
    assert_eq!(all(&store, p, Tier::Interval)[0].value, 7);
    assert!(all(&store, standard, Tier::Interval).is_empty());
    let stats = store
        .statistics(
            Tier::Day,
            RegisterKind::Import,
            ts("2026-11-23T00:00:00Z"),
            ts("2026-11-25T00:00:00Z"),
        )
        .expect("statistics");
    assert_eq!(
        stats,
        vec![frozen_period],
        "frozen statistics do not change"
    );
}

/// Erasure removes correction marks with the readings; held month readings keep theirs.
/// Retention removes them with the readings they mark.
pub fn corrections_marks_go_with_their_readings(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let p = pseudo(64);
    put(&store, p, connection(ConsentLevel::Interval, "1234"));
    let midnight = ts("2026-11-30T23:00:00Z");
    block_on(store.write(vec![item(p, vec![tiered(Register::ImportT1, midnight, 5)])]))
        .expect("write");
    block_on(store.write(vec![correction(
        p,
        vec![tiered(Register::ImportT1, midnight, 6)],
    )]))
    .expect("write");
    assert_eq!(store.export(&[p]).expect("export").corrected.len(), 3);
    store.erase(&[p]).expect("erase");
    let export = store.export(&[p]).expect("export");
    assert_eq!(export.month.len(), 1);
    assert_eq!(
        export.corrected.keys().map(|k| k.0).collect::<Vec<_>>(),
        vec![Tier::Month],
        "the held month reading keeps its mark"
    );
    clock.set(ts("2034-01-01T00:00:00Z"));
    store.sweep_retention().expect("sweep");
    assert!(store.export(&[p]).expect("export").corrected.is_empty());
}

//! Conformance: frozen statistics and late readings.

use super::*;

pub(super) fn frozen(tier: Tier, start: &str, consumption: u64) -> FrozenPeriod {
    use meterstand_statistics::{Area, ProfileCover, Row};
    FrozenPeriod {
        key: PeriodKey {
            tier,
            kind: RegisterKind::Import,
            period_start: ts(start),
        },
        rows: vec![
            Row {
                area: Area::Postcode4("1234".parse().expect("postcode")),
                profile: ProfileCover::Profile("E1A".parse().expect("profile")),
                connections: 10,
                consumption,
            },
            Row {
                area: Area::Remainder,
                profile: ProfileCover::Any,
                connections: 12,
                consumption: consumption * 2,
            },
        ],
    }
}

/// A frozen period is stored once and never overwritten; reads return periods in order
/// with their rows as frozen; an empty period (fleet below k) is frozen too.
pub fn statistics_are_frozen_once_and_read_back(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let a = frozen(Tier::Day, "2026-11-23T23:00:00Z", 100);
    let c = frozen(Tier::Day, "2026-11-24T23:00:00Z", 300);
    let empty = FrozenPeriod {
        rows: Vec::new(),
        ..frozen(Tier::Day, "2026-11-25T23:00:00Z", 0)
    };
    assert!(!store.is_frozen(a.key).expect("read"));
    assert_eq!(
        store
            .freeze(&[c.clone(), a.clone(), empty.clone()], None)
            .expect("freeze"),
        3
    );
    assert!(store.is_frozen(a.key).expect("read"));
    let mut changed = a.clone();
    changed.rows[0].consumption = 999;
    assert_eq!(
        store.freeze(&[changed], None).expect("freeze"),
        0,
        "never overwritten"
    );
    let read = store
        .statistics(
            Tier::Day,
            RegisterKind::Import,
            ts("2026-11-23T23:00:00Z"),
            ts("2026-11-26T00:00:00Z"),
        )
        .expect("read");
    assert_eq!(read, vec![a.clone(), c.clone(), empty]);
    let one = store
        .statistics(
            Tier::Day,
            RegisterKind::Import,
            ts("2026-11-24T00:00:00Z"),
            ts("2026-11-25T00:00:00Z"),
        )
        .expect("read");
    assert_eq!(one, vec![c]);
    assert!(
        store
            .statistics(
                Tier::Day,
                RegisterKind::Gas,
                ts("2026-11-01T00:00:00Z"),
                ts("2026-12-01T00:00:00Z")
            )
            .expect("read")
            .is_empty(),
        "other register kinds are separate"
    );
}

/// Statistics outlive erasure and the readings' retention, and go after their own.
pub fn statistics_outlive_erasure_and_have_their_own_retention(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let p = pseudo(77);
    put(&store, p, connection(ConsentLevel::Interval, "1234"));
    block_on(store.write(vec![item(
        p,
        quarter_hours(ts("2026-11-23T23:00:00Z"), 8, 10, 1),
    )]))
    .expect("write");
    let a = frozen(Tier::Interval, "2026-11-23T23:00:00Z", 100);
    store
        .freeze(std::slice::from_ref(&a), None)
        .expect("freeze");
    store.erase(&[p]).expect("erase");
    let read = |store: &dyn ReadingStore| {
        store
            .statistics(
                Tier::Interval,
                RegisterKind::Import,
                ts("2026-11-23T00:00:00Z"),
                ts("2026-11-25T00:00:00Z"),
            )
            .expect("read")
    };
    assert_eq!(read(&store), vec![a.clone()]);
    // Past interval retention (13 months): the statistic stays.
    clock.set(ts("2028-06-01T00:00:00Z"));
    store.sweep_retention().expect("sweep");
    assert_eq!(read(&store), vec![a]);
    // Past ten years: gone.
    clock.set(ts("2036-12-01T00:00:00Z"));
    store.sweep_retention().expect("sweep");
    assert!(read(&store).is_empty());
}

/// A reading newly stored for a period whose statistics are frozen is counted as late.
pub fn readings_for_frozen_periods_are_counted_as_late(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let p = pseudo(78);
    put(&store, p, connection(ConsentLevel::Interval, "1234"));
    store
        .freeze(&[frozen(Tier::Day, "2026-11-23T23:00:00Z", 1)], None)
        .expect("freeze");
    let outcome = block_on(store.write(vec![item(
        p,
        vec![
            tiered(Register::ImportT1, ts("2026-11-23T23:00:00Z"), 5),
            tiered(Register::ImportT1, ts("2026-11-30T12:00:00Z"), 9),
        ],
    )]))
    .expect("write");
    // The first reading is an interval and a day boundary of the frozen day: both its
    // entries are late. The second feeds a day that is not frozen.
    assert_eq!(outcome.late, 2, "{outcome:?}");
    let again = block_on(store.write(vec![item(
        p,
        vec![tiered(Register::ImportT1, ts("2026-11-23T23:00:00Z"), 5)],
    )]))
    .expect("write");
    assert_eq!(again.late, 0, "a duplicate is not late");
}

/// Erased connections are members only to be refused: their held readings are open to no
/// analysis.
pub fn erased_connections_are_not_members(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let day = ts("2026-11-23T23:00:00Z");
    for n in [90u8, 91] {
        put(
            &store,
            pseudo(n),
            connection(ConsentLevel::Standard, "1234"),
        );
        block_on(store.write(vec![item(
            pseudo(n),
            vec![tiered(Register::ImportT1, ts("2026-10-31T23:00:00Z"), 5)],
        )]))
        .expect("write");
    }
    let _ = day;
    store.erase(&[pseudo(90)]).expect("erase");
    let mut seen = Vec::new();
    store
        .members(
            Tier::Month,
            RegisterKind::Import,
            &[ts("2026-10-31T23:00:00Z"), ts("2026-11-30T23:00:00Z")],
            &mut |m| {
                if crate::open_to_analysis(&m, Tier::Month, ts("2026-10-31T23:00:00Z")) {
                    seen.push(m.pseudonym)
                }
            },
        )
        .expect("members");
    assert_eq!(
        seen,
        vec![pseudo(91)],
        "the held month reading of the erased one is open to no analysis"
    );
}

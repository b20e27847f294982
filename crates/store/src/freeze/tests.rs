use std::sync::Arc;

use meterstand_model::ConsentLevel;

use super::*;
use crate::conformance::{block_on, connection, item, pseudo, put, quarter_hours, tiered, ts};
use crate::{ManualClock, MemStore, ReadingWriter};
use meterstand_model::Register;

fn cfg() -> FreezeConfig {
    FreezeConfig {
        k: 3,
        ..FreezeConfig::default()
    }
}

fn now(clock: &ManualClock) -> Timestamp {
    crate::Clock::now(clock)
}

/// Four interval-consent connections with a full local day of quarter-hours starting
/// at `start` (UTC 23:00 the day before, in winter).
fn fleet_on(store: &MemStore, start: Timestamp) {
    let mut items = Vec::new();
    for n in 0..4u8 {
        let p = pseudo(10 + n);
        put(store, p, connection(ConsentLevel::Interval, "1234"));
        items.push(item(p, quarter_hours(start, 97, 1000, 10 + u64::from(n))));
    }
    block_on(store.write(items)).expect("write");
}

fn fleet(store: &MemStore) {
    fleet_on(store, ts("2026-11-23T23:00:00Z"));
}

fn day_rows(store: &MemStore, start: &str) -> Vec<FrozenPeriod> {
    let start = ts(start);
    let end = Timestamp::from_second(start.as_second() + 86_400).expect("ts");
    store
        .statistics(Tier::Day, RegisterKind::Import, start, end)
        .expect("read")
}

#[test]
fn a_day_is_frozen_with_its_quarter_hours_only_after_settle() {
    let clock = ManualClock::new(ts("2026-11-24T23:30:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    fleet(&store);
    let cal = Calendar::amsterdam();
    clock.set(ts("2026-11-26T22:59:00Z"));
    let r = run(&store, &cal, &cfg(), now(&clock)).expect("run");
    assert_eq!(r.periods, 0, "48h after the day's end have not passed yet");
    assert!(r.pending > 0, "{r:?}");
    clock.set(ts("2026-11-26T23:00:00Z"));
    let r = run(&store, &cal, &cfg(), now(&clock)).expect("run");
    assert_eq!(r.periods, 97, "the day and its 96 quarter-hours: {r:?}");
    let day = day_rows(&store, "2026-11-23T23:00:00Z");
    assert_eq!(day.len(), 1);
    assert_eq!(day[0].rows[0].connections, 4);
    let quarters = store
        .statistics(
            Tier::Interval,
            RegisterKind::Import,
            ts("2026-11-23T23:00:00Z"),
            ts("2026-11-24T23:00:00Z"),
        )
        .expect("read");
    assert_eq!(quarters.len(), 96);
    let sum: u64 = quarters.iter().map(|q| q.rows[0].consumption).sum();
    assert_eq!(sum, day[0].rows[0].consumption, "the granularities add up");
    // Again: nothing new.
    assert_eq!(
        run(&store, &cal, &cfg(), now(&clock)).expect("run").periods,
        0
    );
}

#[test]
fn a_day_loaded_fifteen_days_late_is_published() {
    // Loaded on 9 December, fifteen days after it ended: no look-back window hides it.
    let clock = ManualClock::new(ts("2026-12-09T23:00:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    fleet(&store);
    let cal = Calendar::amsterdam();
    let r = run(&store, &cal, &cfg(), now(&clock)).expect("run");
    assert_eq!(r.periods, 0, "just written: not quiet yet");
    clock.set(ts("2026-12-09T23:10:00Z"));
    let r = run(&store, &cal, &cfg(), now(&clock)).expect("run");
    assert_eq!(r.periods, 97, "{r:?}");
    assert_eq!(
        day_rows(&store, "2026-11-23T23:00:00Z")[0].rows[0].connections,
        4
    );
    assert_eq!(r.pending, 0, "nothing else waits: {r:?}");
}

#[test]
fn a_period_that_keeps_receiving_writes_waits_until_it_is_quiet() {
    let clock = ManualClock::new(ts("2026-12-01T00:00:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    let cal = Calendar::amsterdam();
    let start = ts("2026-11-23T23:00:00Z");
    let later = |secs: i64| Timestamp::from_second(now(&clock).as_second() + secs).expect("ts");
    // Every 9 minutes one more connection's day arrives: never 10 quiet minutes.
    for n in 0..6u8 {
        let p = pseudo(60 + n);
        put(&store, p, connection(ConsentLevel::Interval, "1234"));
        block_on(store.write(vec![item(p, quarter_hours(start, 97, 1000, 7))])).expect("write");
        let r = run(&store, &cal, &cfg(), now(&clock)).expect("run");
        assert_eq!(r.periods, 0, "still being written into ({n}): {r:?}");
        clock.set(later(540));
    }
    clock.set(later(60));
    let r = run(&store, &cal, &cfg(), now(&clock)).expect("run");
    assert_eq!(r.periods, 97, "{r:?}");
    assert_eq!(
        day_rows(&store, "2026-11-23T23:00:00Z")[0].rows[0].connections,
        6
    );
}

#[test]
fn thirteen_months_of_backfill_are_published_once_each_within_budgets() {
    // A supplier's first day: 13 months of quarter-hours for a small fleet. Each call
    // may compute for a moment only; call after call the backlog drains, and every day
    // is frozen exactly once (a "restart" between calls changes nothing: the markers
    // are the store's).
    let clock = ManualClock::new(ts("2026-12-01T00:00:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    let cal = Calendar::amsterdam();
    // Local 5 November 2025 to 29 November 2026: inside the interval tier's 13 months.
    let first = ts("2025-11-04T23:00:00Z");
    let days = 390;
    let mut items = Vec::new();
    for n in 0..3u8 {
        let p = pseudo(80 + n);
        put(&store, p, connection(ConsentLevel::Interval, "1234"));
        items.push(item(
            p,
            quarter_hours(first, days * 96 + 1, 5_000, 3 + u64::from(n)),
        ));
    }
    block_on(store.write(items)).expect("write");
    // Settled: 48 hours after the last day's end.
    clock.set(ts("2026-12-02T01:00:00Z"));
    let marked = store.pending_periods().expect("pending").len() as u64;
    let sliced = FreezeConfig {
        budget: Duration::from_millis(1),
        ..cfg()
    };
    let mut units = 0;
    let mut calls = 0;
    let waiting = loop {
        let r = run(&store, &cal, &sliced, now(&clock)).expect("run");
        units += r.units;
        calls += 1;
        if r.due_left == 0 {
            break r.pending;
        }
        assert!(calls < 10_000, "the backlog drains");
    };
    assert!(calls > 1, "a millisecond does not hold 13 months");
    let periods = store
        .statistics(
            Tier::Day,
            RegisterKind::Import,
            first,
            ts("2026-12-01T00:00:00Z"),
        )
        .expect("read");
    // Every local day of it (daylight saving time twice: 92 and 100 quarter-hours).
    assert_eq!(periods.len(), days as usize);
    assert!(periods.iter().all(|p| p.rows[0].connections == 3));
    // Each marked day and month computed once; what waits is not settled yet (30
    // November and its month).
    assert_eq!(units + waiting, marked);
    assert_eq!(waiting, 2);
}

#[test]
fn frozen_statistics_do_not_change_and_late_readings_are_counted() {
    let clock = ManualClock::new(ts("2026-11-24T23:30:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    fleet(&store);
    clock.set(ts("2026-11-27T00:00:00Z"));
    let cal = Calendar::amsterdam();
    run(&store, &cal, &cfg(), now(&clock)).expect("run");
    let read = || day_rows(&store, "2026-11-23T23:00:00Z");
    let before = read();
    assert_eq!(before.len(), 1);
    store.erase(&[pseudo(10)]).expect("erase");
    store.set_objection(&[pseudo(11)], true).expect("object");
    put(
        &store,
        pseudo(30),
        connection(ConsentLevel::Interval, "1234"),
    );
    let late = item(
        pseudo(30),
        vec![tiered(Register::ImportT1, ts("2026-11-24T12:00:00Z"), 5)],
    );
    let outcome = block_on(store.write(vec![late])).expect("write");
    assert_eq!(outcome.late, 1, "{outcome:?}");
    clock.set(ts("2026-11-28T00:00:00Z"));
    run(&store, &cal, &cfg(), now(&clock)).expect("run");
    assert_eq!(read(), before);
}

#[test]
fn objecting_and_erased_connections_leave_later_statistics() {
    let clock = ManualClock::new(ts("2026-11-27T00:00:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    fleet(&store);
    store.set_objection(&[pseudo(11)], true).expect("object");
    store.erase(&[pseudo(12)]).expect("erase");
    clock.set(ts("2026-11-27T01:00:00Z"));
    run(&store, &Calendar::amsterdam(), &cfg(), now(&clock)).expect("run");
    let day = day_rows(&store, "2026-11-23T23:00:00Z");
    assert!(
        day[0].rows.is_empty(),
        "2 left, below k = 3: no rows: {day:?}"
    );
}

#[test]
fn a_routine_crm_update_does_not_bring_an_objector_back() {
    let clock = ManualClock::new(ts("2026-11-27T00:00:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    fleet(&store);
    store.set_objection(&[pseudo(11)], true).expect("object");
    // The CRM's next routine update of the same row, without any objection field.
    put(
        &store,
        pseudo(11),
        connection(ConsentLevel::Interval, "1234"),
    );
    clock.set(ts("2026-11-27T01:00:00Z"));
    run(&store, &Calendar::amsterdam(), &cfg(), now(&clock)).expect("run");
    assert_eq!(
        day_rows(&store, "2026-11-23T23:00:00Z")[0].rows[0].connections,
        3,
        "the objector is not counted"
    );
}

#[test]
fn months_count_only_connections_without_day_readings() {
    let clock = ManualClock::new(ts("2026-12-03T23:00:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    let (a, b) = (ts("2026-10-31T23:00:00Z"), ts("2026-11-30T23:00:00Z"));
    let mut items = Vec::new();
    for n in 0..5u8 {
        let p = pseudo(40 + n);
        let consent = if n < 3 {
            ConsentLevel::Standard
        } else {
            ConsentLevel::Daily
        };
        put(&store, p, connection(consent, "1234"));
        let mut readings = Vec::new();
        for (t, v) in [(a, 1000), (b, 2000 + u64::from(n))] {
            readings.push(tiered(Register::ImportT1, t, v));
            readings.push(tiered(Register::ImportT2, t, v));
        }
        items.push(item(p, readings));
    }
    block_on(store.write(items)).expect("write");
    clock.set(ts("2026-12-03T23:30:00Z"));
    let r = run(&store, &Calendar::amsterdam(), &cfg(), now(&clock)).expect("run");
    assert!(r.periods >= 1);
    let month = store
        .statistics(Tier::Month, RegisterKind::Import, a, b)
        .expect("read");
    assert_eq!(month.len(), 1);
    assert_eq!(month[0].rows[0].connections, 3, "{month:?}");
}

#[test]
fn held_month_readings_serve_billing_only() {
    // Six standard-consent connections with October's two month readings; one goes to
    // consent off (its month readings are held for billing), one is erased and
    // registered again: neither counts in October, before or after.
    let clock = ManualClock::new(ts("2026-11-05T00:00:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    let (a, b) = (ts("2026-09-30T22:00:00Z"), ts("2026-10-31T23:00:00Z"));
    let mut items = Vec::new();
    for n in 0..6u8 {
        let p = pseudo(120 + n);
        put(&store, p, connection(ConsentLevel::Standard, "1234"));
        let readings = [(a, 1000), (b, 1500 + u64::from(n))]
            .into_iter()
            .flat_map(|(t, v)| {
                [
                    tiered(Register::ImportT1, t, v),
                    tiered(Register::ImportT2, t, v),
                ]
            })
            .collect();
        items.push(item(p, readings));
    }
    block_on(store.write(items)).expect("write");
    put(&store, pseudo(120), connection(ConsentLevel::Off, "1234"));
    store.erase(&[pseudo(121)]).expect("erase");
    put(
        &store,
        pseudo(121),
        connection(ConsentLevel::Standard, "1234"),
    );
    clock.set(ts("2026-11-05T01:00:00Z"));
    run(&store, &Calendar::amsterdam(), &cfg(), now(&clock)).expect("run");
    let month = store
        .statistics(Tier::Month, RegisterKind::Import, a, b)
        .expect("read");
    assert_eq!(month[0].rows[0].connections, 4, "{month:?}");
}

#[test]
fn history_of_a_rotated_key_counts_only_under_its_record() {
    // v1 readings whose record moved to v2: v1 has no record and counts nowhere.
    let clock = ManualClock::new(ts("2026-11-27T00:00:00Z"));
    let store = MemStore::new(Arc::new(clock.clone()));
    fleet(&store);
    let old = pseudo(13);
    let new = Pseudonym { version: 2, ..old };
    let mut seen = item(
        new,
        vec![tiered(Register::ImportT1, ts("2026-11-26T12:00:00Z"), 1)],
    );
    seen.previous = vec![old];
    block_on(store.write(vec![seen])).expect("write");
    clock.set(ts("2026-11-27T01:00:00Z"));
    run(&store, &Calendar::amsterdam(), &cfg(), now(&clock)).expect("run");
    assert_eq!(
        day_rows(&store, "2026-11-23T23:00:00Z")[0].rows[0].connections,
        3
    );
}

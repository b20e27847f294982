//! Behaviour every backend must show, as functions over a [`Backend`] fixture: the store
//! crate runs them against [`crate::MemStore`], the RocksDB crate against its engine, so
//! the in-memory store the API and ingest tests rely on cannot drift from the real one.
//! Test support only (feature `conformance`); panics are assertions.
#![allow(clippy::missing_panics_doc)]

use jiff::Timestamp;
use meterstand_model::{
    Calendar, Connection, ConsentLevel, Reading, Register, RegisterKind, Tier, TieredReading,
};
use meterstand_pseudonym::Pseudonym;

use crate::{
    FrozenPeriod, IngestItem, ManualClock, PeriodKey, ReadingStore, ReadingWriter, open_to_analysis,
};

mod corrections;
mod statistics;
mod subjects;

pub use corrections::*;
pub use statistics::*;
pub use subjects::*;

/// Opens a store of the backend under test, on the clock given.
pub trait Backend {
    type Store: ReadingWriter;
    fn open(&mut self, clock: &ManualClock) -> Self::Store;
}

pub fn ts(s: &str) -> Timestamp {
    s.parse().expect("valid timestamp")
}

pub fn pseudo(n: u8) -> Pseudonym {
    Pseudonym {
        version: 1,
        hash: [n; 16],
    }
}

pub fn tiered(register: Register, time: Timestamp, value: u64) -> TieredReading {
    TieredReading {
        reading: Reading {
            register,
            time,
            value,
        },
        tiers: Calendar::amsterdam().tiers_of(register, time),
    }
}

/// Quarter-hour import readings (both tariffs) from `start`, `n` of them, rising steadily.
pub fn quarter_hours(start: Timestamp, n: i64, base: u64, step: u64) -> Vec<TieredReading> {
    let mut out = Vec::new();
    for i in 0..n {
        let t = Timestamp::from_second(start.as_second() + i * 900).expect("in range");
        out.push(tiered(Register::ImportT1, t, base + i as u64 * step));
        out.push(tiered(Register::ImportT2, t, base * 2 + i as u64 * step));
    }
    out
}

pub fn item(p: Pseudonym, readings: Vec<TieredReading>) -> IngestItem {
    IngestItem {
        connection: p,
        previous: Vec::new(),
        meter: Pseudonym {
            version: 1,
            hash: [0xee; 16],
        },
        readings,
        correction: false,
    }
}

/// `item`, from the correction topic.
pub fn correction(p: Pseudonym, readings: Vec<TieredReading>) -> IngestItem {
    IngestItem {
        correction: true,
        ..item(p, readings)
    }
}

pub fn connection(consent: ConsentLevel, postcode: &str) -> Connection {
    Connection {
        consent,
        postcode4: Some(postcode.parse().expect("postcode")),
        profile: Some("E1A".parse().expect("profile")),
    }
}

/// Runs a store future to completion on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

pub fn put<S: ReadingStore>(store: &S, p: Pseudonym, c: Connection) {
    store.put_connection(&[p], c).expect("put connection");
}

fn all<S: ReadingStore>(store: &S, p: Pseudonym, tier: Tier) -> Vec<Reading> {
    store
        .readings(p, tier, Timestamp::MIN, Timestamp::MAX)
        .expect("read")
}

pub fn consent_gate_keeps_only_what_consent_allows(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let (standard, daily, off) = (pseudo(1), pseudo(2), pseudo(3));
    put(&store, daily, connection(ConsentLevel::Daily, "1234"));
    put(&store, off, connection(ConsentLevel::Off, "1234"));
    // 2026-11-30T23:00Z is local midnight on 1 December: month + day + interval.
    let readings = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
    let out = block_on(store.write(vec![
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
    assert!(all(&store, standard, Tier::Interval).is_empty());
    assert_eq!(all(&store, standard, Tier::Month).len(), 2);
    assert_eq!(all(&store, daily, Tier::Day).len(), 2);
    let export = store.export(&[off]).expect("export");
    assert!(export.interval.is_empty() && export.day.is_empty() && export.month.is_empty());
}

pub fn duplicates_are_idempotent_and_conflicts_keep_the_first_value(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let p = pseudo(4);
    put(&store, p, connection(ConsentLevel::Interval, "1234"));
    let t = ts("2026-11-26T10:15:00Z");
    let write = |v| {
        block_on(store.write(vec![item(p, vec![tiered(Register::ImportT1, t, v)])])).expect("write")
    };
    assert_eq!(write(500).stored.interval, 1);
    let again = write(500);
    assert_eq!(
        (again.stored.interval, again.duplicates, again.conflicts),
        (0, 1, 0)
    );
    let conflict = write(999);
    assert_eq!(
        (
            conflict.stored.interval,
            conflict.duplicates,
            conflict.conflicts
        ),
        (0, 0, 1)
    );
    assert_eq!(
        all(&store, p, Tier::Interval),
        vec![Reading {
            register: Register::ImportT1,
            time: t,
            value: 500
        }]
    );
}

pub fn retention_removes_exactly_what_is_past_the_horizon(mut b: impl Backend) {
    // Choose the horizon (quarter-aligned) and derive `now` = horizon + 13 × 30.44 days.
    let horizon_ts = ts("2026-11-20T00:00:00Z");
    let horizon = horizon_ts.as_second();
    let now = Timestamp::from_second(horizon + 13 * 2_630_016).expect("in range");
    let clock = ManualClock::new(ts("2026-11-21T00:00:00Z"));
    let store = b.open(&clock);
    let p = pseudo(6);
    put(&store, p, connection(ConsentLevel::Interval, "1234"));
    // Readings from 2 hours before to 2 hours after the horizon.
    let start = horizon - 7200;
    let readings: Vec<TieredReading> = (0..16)
        .map(|i| {
            let t = Timestamp::from_second(start + i * 900).expect("ok");
            tiered(Register::ImportT1, t, 100 + i as u64)
        })
        .collect();
    block_on(store.write(vec![item(p, readings)])).expect("write");
    assert_eq!(all(&store, p, Tier::Interval).len(), 16);

    clock.set(now);
    let removed = store.sweep_retention().expect("sweep");
    assert_eq!(
        removed.interval, 8,
        "the 8 quarter-hours before the horizon go"
    );
    let left = all(&store, p, Tier::Interval);
    assert_eq!(left.len(), 8);
    assert_eq!(
        left[0].time, horizon_ts,
        "the reading exactly on the horizon is kept"
    );
    assert_eq!(store.sweep_retention().expect("sweep").interval, 0);

    // Readings already past retention are refused at the door.
    let old = tiered(
        Register::ImportT1,
        Timestamp::from_second(horizon - 900).expect("ok"),
        1,
    );
    let out = block_on(store.write(vec![item(p, vec![old])])).expect("write");
    assert_eq!((out.stored.interval, out.expired.interval), (0, 1));
}

pub fn reads_hide_expired_readings_before_the_sweep(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-11-26T12:00:00Z"));
    let store = b.open(&clock);
    let p = pseudo(7);
    put(&store, p, connection(ConsentLevel::Interval, "1234"));
    block_on(store.write(vec![item(
        p,
        quarter_hours(ts("2026-11-26T10:00:00Z"), 4, 10, 1),
    )]))
    .expect("write");
    clock.set(ts("2028-01-01T00:00:00Z"));
    assert!(all(&store, p, Tier::Interval).is_empty());
}

pub fn erasure_keeps_held_month_readings_and_returns_a_receipt(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let (victim, other) = (pseudo(8), pseudo(9));
    for p in [victim, other] {
        put(&store, p, connection(ConsentLevel::Interval, "1234"));
    }
    let readings = quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50);
    block_on(store.write(vec![item(victim, readings.clone()), item(other, readings)]))
        .expect("write");
    let receipt = store.erase(&[victim]).expect("erase");
    assert_eq!(
        (
            receipt.deleted.interval,
            receipt.deleted.day,
            receipt.deleted.month
        ),
        (16, 2, 0)
    );
    assert_eq!((receipt.connection, receipt.meters), (1, 1));
    assert_eq!(receipt.kept.len(), 1);
    assert_eq!(
        (receipt.kept[0].tier, receipt.kept[0].count),
        (Tier::Month, 2)
    );
    assert!(receipt.kept[0].reason.contains("Art. 52 AWR"));
    assert!(receipt.kept[0].until > ts("2033-11-01T00:00:00Z"));
    let export = store.export(&[victim]).expect("export");
    assert!(export.interval.is_empty() && export.day.is_empty());
    assert!(export.connection.is_none() && export.meters.is_empty());
    assert_eq!(export.month.len(), 2);
    assert_eq!(store.export(&[other]).expect("export").interval.len(), 16);
}

/// An erased subject stays out: with consent `off` before the erasure, a later month
/// reading is not stored under `consent.default`; a new CRM registration lifts it.
pub fn erasure_leaves_a_tombstone_that_gates_like_off(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let p = pseudo(40);
    put(&store, p, connection(ConsentLevel::Off, "1234"));
    store.erase(&[p]).expect("erase");
    // Local midnight on 1 December: a month reading, which `standard` would keep.
    let month = vec![tiered(Register::ImportT1, ts("2026-11-30T23:00:00Z"), 5)];
    let out = block_on(store.write(vec![item(p, month.clone())])).expect("write");
    assert_eq!(out.stored.total(), 0, "nothing stored after erasure");
    let export = store.export(&[p]).expect("export");
    assert!(export.connection.is_none() && export.tier(Tier::Month).is_empty());
    assert!(export.state.erased, "the export says it was erased");
    put(&store, p, connection(ConsentLevel::Standard, "1234"));
    let out = block_on(store.write(vec![item(p, month)])).expect("write");
    assert_eq!(
        out.stored.month, 1,
        "a new registration lifts the tombstone"
    );
}

pub fn a_connection_record_moves_to_the_current_key_when_its_ean_is_seen_again(
    mut b: impl Backend,
) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let old = pseudo(30);
    let new = Pseudonym {
        version: 2,
        hash: [31; 16],
    };
    put(&store, old, connection(ConsentLevel::Interval, "1234"));
    // After a rotation ingest sends the current pseudonym and the older ones.
    let mut it = item(new, quarter_hours(ts("2026-11-30T22:00:00Z"), 4, 1000, 50));
    it.previous = vec![old];
    let outcome = block_on(store.write(vec![it])).expect("write");
    // Interval readings are kept: the consent came along (the default is standard).
    assert_eq!(outcome.stored.interval, 8);
    assert_eq!(outcome.dropped_by_consent.total(), 0);
    let moved = store.connection(new).expect("read");
    assert_eq!(moved.map(|c| c.consent), Some(ConsentLevel::Interval));
    assert!(store.connection(old).expect("read").is_none());
}

pub fn lowering_consent_removes_tiers_no_longer_allowed(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let p = pseudo(12);
    put(&store, p, connection(ConsentLevel::Interval, "1234"));
    block_on(store.write(vec![item(
        p,
        quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50),
    )]))
    .expect("write");
    let receipt = store
        .put_connection(&[p], connection(ConsentLevel::Standard, "1234"))
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
        .put_connection(&[p], connection(ConsentLevel::Interval, "1234"))
        .expect("raise");
    assert_eq!(receipt.deleted.total(), 0);
    // A new reading in a block whose readings were removed does not bring them back.
    block_on(store.write(vec![item(
        p,
        quarter_hours(ts("2026-11-30T22:00:00Z"), 1, 1000, 50),
    )]))
    .expect("write again");
    assert_eq!(store.export(&[p]).expect("export").interval.len(), 2);
}

/// After a key rotation the readings stored under the old pseudonym go too when consent
/// is lowered, and the old connection record does not outlive the new one.
pub fn lowering_consent_reaches_older_key_versions(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    let old = pseudo(50);
    let new = Pseudonym {
        version: 2,
        hash: [51; 16],
    };
    put(&store, old, connection(ConsentLevel::Interval, "1234"));
    block_on(store.write(vec![item(
        old,
        quarter_hours(ts("2026-11-30T22:00:00Z"), 8, 1000, 50),
    )]))
    .expect("write");
    let receipt = store
        .put_connection(&[new, old], connection(ConsentLevel::Standard, "1234"))
        .expect("lower");
    assert_eq!((receipt.deleted.interval, receipt.deleted.day), (16, 2));
    let export = store.export(&[new, old]).expect("export");
    assert!(export.interval.is_empty() && export.day.is_empty());
    assert_eq!(export.month.len(), 2, "billing readings stay");
    assert!(store.connection(old).expect("read").is_none());
    assert_eq!(
        store.connection(new).expect("read").map(|c| c.consent),
        Some(ConsentLevel::Standard)
    );
}

pub fn series_and_members_come_from_boundary_differences(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    // Day readings at local midnights of 24..27 November (UTC 23:00 the day before).
    let days: Vec<Timestamp> = (23..=26)
        .map(|d| ts(&format!("2026-11-{d}T23:00:00Z")))
        .collect();
    let mut items = Vec::new();
    for n in 0..12u8 {
        let p = pseudo(100 + n);
        let postcode = if n < 10 { "1234" } else { "5678" };
        put(&store, p, connection(ConsentLevel::Daily, postcode));
        let mut readings = Vec::new();
        for (i, t) in days.iter().enumerate() {
            // Connection 0 misses the reading of the 26th: it cannot contribute to the 25th or 26th.
            if n == 0 && i == 2 {
                continue;
            }
            let i = i as u64;
            readings.push(tiered(
                Register::ImportT1,
                *t,
                10_000 + i * (1000 + u64::from(n)),
            ));
            readings.push(tiered(Register::ImportT2, *t, 20_000 + i * 500));
        }
        items.push(item(p, readings));
    }
    block_on(store.write(items)).expect("write");

    // Per period: (connections, consumption) of the members in postcode 1234, and the
    // members of 5678.
    let cells = |postcode: &str| -> Vec<(u64, u64)> {
        let mut out = vec![(0u64, 0u64); 3];
        store
            .members(Tier::Day, RegisterKind::Import, &days, &mut |m| {
                if m.connection
                    .and_then(|c| c.postcode4)
                    .map(|p| p.to_string())
                    != Some(postcode.to_string())
                {
                    return;
                }
                for (k, c) in m.values.contributions(3) {
                    out[k].0 += 1;
                    out[k].1 += c;
                }
            })
            .expect("members");
        out
    };
    let first = cells("1234")[0];
    assert_eq!(first.0, 10);
    assert_eq!(first.1, (0..10).map(|n| 1000 + n + 500).sum::<u64>());
    assert_eq!(cells("1234")[1].0, 9, "the gappy connection is not counted");
    assert_eq!(cells("5678")[0].0, 2);
}

/// The audit log's anchor: none at first, then the last one recorded, replaced whole (the
/// oldest kept seq may move forward while the head does, docs/design.md "Audit log").
pub fn the_audit_anchor_is_the_last_one_recorded(mut b: impl Backend) {
    let clock = ManualClock::new(ts("2026-12-02T00:00:00Z"));
    let store = b.open(&clock);
    assert_eq!(store.audit_anchor().expect("read"), None);
    let first = crate::AuditAnchor {
        lines: 44,
        hash: [0xa4; 32],
        first: 0,
    };
    store.set_audit_anchor(&first).expect("write");
    assert_eq!(store.audit_anchor().expect("read"), Some(first));
    let later = crate::AuditAnchor {
        lines: 45,
        hash: [0x5b; 32],
        first: 12,
    };
    store.set_audit_anchor(&later).expect("write");
    assert_eq!(store.audit_anchor().expect("read"), Some(later));
    assert_eq!(
        crate::AuditAnchor::from_bytes(&later.to_bytes()),
        Some(later)
    );
    assert_eq!(crate::AuditAnchor::from_bytes(&later.to_bytes()[1..]), None);
}

/// Declares one `#[test]` per conformance function for a backend fixture expression.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!(@each $fixture;
            consent_gate_keeps_only_what_consent_allows,
            duplicates_are_idempotent_and_conflicts_keep_the_first_value,
            retention_removes_exactly_what_is_past_the_horizon,
            reads_hide_expired_readings_before_the_sweep,
            erasure_keeps_held_month_readings_and_returns_a_receipt,
            erasure_leaves_a_tombstone_that_gates_like_off,
            a_connection_record_moves_to_the_current_key_when_its_ean_is_seen_again,
            lowering_consent_removes_tiers_no_longer_allowed,
            lowering_consent_reaches_older_key_versions,
            series_and_members_come_from_boundary_differences,
            an_objection_holds_until_the_privacy_officer_withdraws_it,
            one_state_holds_across_three_key_versions,
            statistics_are_frozen_once_and_read_back,
            statistics_outlive_erasure_and_have_their_own_retention,
            readings_for_frozen_periods_are_counted_as_late,
            erased_connections_are_not_members,
            corrections_replace_the_reading_in_every_tier,
            corrections_are_gated_and_late_for_frozen_periods,
            corrections_marks_go_with_their_readings,
            the_audit_anchor_is_the_last_one_recorded,
        );
    };
    (@each $fixture:expr; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::conformance::$name($fixture);
            }
        )*
    };
}

#[cfg(test)]
mod mem {
    use std::sync::Arc;

    use super::Backend;
    use crate::{ManualClock, MemStore};

    struct Mem;
    impl Backend for Mem {
        type Store = MemStore;
        fn open(&mut self, clock: &ManualClock) -> MemStore {
            MemStore::new(Arc::new(clock.clone()))
        }
    }

    crate::conformance_tests!(Mem);
}

//! Store metrics, registered in the process-wide Prometheus registry. Every labelled series
//! is touched at start-up so it is exported as 0 before the first event.

use std::sync::LazyLock;

use meterstand_model::Tier;
use meterstand_telemetry::metric::{counter, counter_vec, gauge, gauge_vec, histogram};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

pub static STORED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_store_readings_stored_total",
        "Readings newly stored, per tier.",
        &["tier"],
    )
});
pub static DROPPED_BY_CONSENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_store_dropped_by_consent_total",
        "Readings the connection's consent does not allow, per tier (never stored).",
        &["tier"],
    )
});
pub static EXPIRED_ON_ARRIVAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_store_expired_on_arrival_total",
        "Readings already past their tier's retention when they arrived, per tier.",
        &["tier"],
    )
});
pub static DUPLICATES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_store_duplicates_total",
        "Readings already stored with the same value.",
    )
});
pub static CONFLICTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_store_conflicts_total",
        "Readings already stored with a different value; the first is kept.",
    )
});
pub static RETENTION_DELETED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_retention_deleted_total",
        "Readings removed by retention, per tier.",
        &["tier"],
    )
});
pub static ERASED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_store_erased_readings_total",
        "Readings removed by erasure or consent withdrawal, per tier.",
        &["tier"],
    )
});
pub static ERASURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_store_erasures_total",
        "Erasure requests carried out.",
    )
});
pub static EXPORTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_store_exports_total",
        "Subject exports carried out.",
    )
});
pub static QUARANTINED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_store_quarantined_readings_total",
        "Readings bound for a block that cannot be decoded, set aside in the quarantine column family instead of failing their batch.",
    )
});
pub static REKEYED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_store_rekeyed_connections_total",
        "Connection records moved to the current key version when their EAN was seen again.",
    )
});

pub static FROZEN_PERIODS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_statistics_frozen_periods_total",
        "Statistics periods frozen (a day with its quarter-hours counts each period).",
    )
});
pub static LATE_READINGS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_statistics_late_readings_total",
        "Tier entries newly stored for a period whose statistics were already frozen (not applied to them).",
    )
});

pub static PENDING_PERIODS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_statistics_pending_periods",
        "Days and months written into and not frozen yet (waiting for settle or quiet, or in a backlog).",
    )
});
pub static OLDEST_PENDING_SECONDS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_statistics_oldest_pending_age_seconds",
        "Seconds since the end of the oldest period waiting to be frozen (history loaded late makes it large).",
    )
});
pub static OVERDUE_SECONDS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_statistics_overdue_seconds",
        "Seconds the most overdue period has been due (settled and quiet) without being frozen.",
    )
});

pub static BACKUPS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_store_backups_total",
        "Consistent store checkpoints taken.",
    )
});

pub static WRITE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "meterstand_store_write_seconds",
        "Time of one durable group commit (gate, merge, synced write).",
        0.0001,
        2.0,
        16,
    )
});
pub static GROUP_READINGS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "meterstand_store_group_commit_readings",
        "Readings per durable group commit.",
        1.0,
        4.0,
        10,
    )
});
pub static SIZE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterstand_store_size_bytes",
        "Size of the SST files per tier.",
        &["tier"],
    )
});
pub static PENDING_COMPACTION_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterstand_store_pending_compaction_bytes",
        "RocksDB's estimate of bytes compaction still has to rewrite, per tier.",
        &["tier"],
    )
});

/// Creates every series so that it is exported from the start.
pub fn init() {
    for tier in Tier::ALL {
        let t = tier.as_str();
        STORED.with_label_values(&[t]);
        DROPPED_BY_CONSENT.with_label_values(&[t]);
        EXPIRED_ON_ARRIVAL.with_label_values(&[t]);
        RETENTION_DELETED.with_label_values(&[t]);
        ERASED.with_label_values(&[t]);
        SIZE_BYTES.with_label_values(&[t]);
        PENDING_COMPACTION_BYTES.with_label_values(&[t]);
    }
    for c in [
        &DUPLICATES,
        &CONFLICTS,
        &ERASURES,
        &EXPORTS,
        &BACKUPS,
        &REKEYED,
        &QUARANTINED,
        &FROZEN_PERIODS,
        &LATE_READINGS,
    ] {
        LazyLock::force(c);
    }
    for g in [&PENDING_PERIODS, &OLDEST_PENDING_SECONDS, &OVERDUE_SECONDS] {
        LazyLock::force(g);
    }
    LazyLock::force(&WRITE_SECONDS);
    LazyLock::force(&GROUP_READINGS);
}

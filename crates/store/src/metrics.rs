//! Store metrics, registered in the process-wide Prometheus registry. Every labelled series
//! is touched at start-up so it is exported as 0 before the first event.

use std::sync::LazyLock;

use meterstand_model::Tier;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, register_histogram,
    register_int_counter, register_int_counter_vec, register_int_gauge_vec,
};

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(Opts::new(name, help), labels).unwrap_or_else(|_| {
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"))
    })
}

fn counter(name: &str, help: &str) -> IntCounter {
    register_int_counter!(name, help).unwrap_or_else(|_| {
        IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"))
    })
}

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
pub static WRITE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "meterstand_store_write_seconds",
        "Time of one durable group commit (gate, merge, synced write).",
    )
    .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap_or_default());
    register_histogram!(opts.clone())
        .unwrap_or_else(|_| Histogram::with_opts(opts).unwrap_or_else(|e| panic!("{e}")))
});
pub static GROUP_READINGS: LazyLock<Histogram> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "meterstand_store_group_commit_readings",
        "Readings per durable group commit.",
    )
    .buckets(prometheus::exponential_buckets(1.0, 4.0, 10).unwrap_or_default());
    register_histogram!(opts.clone())
        .unwrap_or_else(|_| Histogram::with_opts(opts).unwrap_or_else(|e| panic!("{e}")))
});
pub static SIZE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "meterstand_store_size_bytes",
        "Size of the SST files per tier.",
    );
    register_int_gauge_vec!(opts.clone(), &["tier"])
        .unwrap_or_else(|_| IntGaugeVec::new(opts, &["tier"]).unwrap_or_else(|e| panic!("{e}")))
});
pub static PENDING_COMPACTION_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "meterstand_store_pending_compaction_bytes",
        "RocksDB's estimate of bytes compaction still has to rewrite, per tier.",
    );
    register_int_gauge_vec!(opts.clone(), &["tier"])
        .unwrap_or_else(|_| IntGaugeVec::new(opts, &["tier"]).unwrap_or_else(|e| panic!("{e}")))
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
    LazyLock::force(&DUPLICATES);
    LazyLock::force(&CONFLICTS);
    LazyLock::force(&ERASURES);
    LazyLock::force(&EXPORTS);
    LazyLock::force(&WRITE_SECONDS);
    LazyLock::force(&GROUP_READINGS);
}

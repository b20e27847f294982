//! Ingest metrics, in the process-wide Prometheus registry; every series exists from start-up.

use std::sync::LazyLock;

use meterstand_codec::Reject;
use meterstand_telemetry::metric::{counter, counter_vec, gauge, histogram};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

pub static MESSAGES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_ingest_messages_total",
        "MQTT messages received.",
    )
});
pub static READINGS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_ingest_readings_total",
        "Readings in accepted messages.",
    )
});
pub static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_ingest_rejected_total",
        "Messages rejected, by reason.",
        &["reason"],
    )
});
pub static BATCH_MESSAGES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "meterstand_ingest_batch_messages",
        "Messages per ingest batch.",
        1.0,
        2.0,
        14,
    )
});
pub static PUBLISH_TO_ACK: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "meterstand_ingest_receive_to_ack_seconds",
        "Time from receiving a message to acknowledging it after the durable write.",
        0.0005,
        2.0,
        16,
    )
});
pub static LAG: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "meterstand_ingest_reading_lag_seconds",
        "Time from a reading's timestamp to it being durably stored.",
        1.0,
        4.0,
        12,
    )
});
pub static ACKS_WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_mqtt_acks_waiting",
        "Acks of durably written messages waiting for room in the MQTT connection (a broker sending past our window).",
    )
});
pub static UNACKED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_ingest_unacked_messages",
        "Messages received and not yet acknowledged.",
    )
});
pub static CONNECTED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_mqtt_connected",
        "1 while connected to the MQTT broker.",
    )
});
pub static RECONNECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_mqtt_reconnects_total",
        "Connection losses to the MQTT broker.",
    )
});

pub static CONNECTION_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_mqtt_connection_errors_total",
        "Failed connection attempts and lost connections to the MQTT broker.",
    )
});
pub static P1_BETWEEN_BOUNDARIES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_ingest_p1_between_boundaries_total",
        "P1 telegrams captured outside every boundary window: no electricity reading stored.",
    )
});
pub static WRITE_RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_ingest_write_retries_total",
        "Store writes retried after a failure.",
    )
});

pub static CORRECTED_READINGS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_ingest_corrected_readings_total",
        "Readings whose stored value a correction replaced (one per reading, however many tiers).",
    )
});
pub static CORRECTION_AUDIT_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_ingest_correction_audit_failures_total",
        "Correction audit lines that could not be written (their batch is not acknowledged and ingest stops).",
    )
});

pub fn init() {
    for r in Reject::ALL {
        REJECTED.with_label_values(&[r.reason()]);
    }
    for m in [
        &MESSAGES,
        &READINGS,
        &RECONNECTS,
        &CONNECTION_ERRORS,
        &P1_BETWEEN_BOUNDARIES,
        &WRITE_RETRIES,
        &CORRECTED_READINGS,
        &CORRECTION_AUDIT_FAILURES,
    ] {
        LazyLock::force(m);
    }
    for h in [&BATCH_MESSAGES, &PUBLISH_TO_ACK, &LAG] {
        LazyLock::force(h);
    }
    LazyLock::force(&UNACKED);
    LazyLock::force(&ACKS_WAITING);
    LazyLock::force(&CONNECTED);
}

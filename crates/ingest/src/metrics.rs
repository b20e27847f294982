//! Ingest metrics, in the process-wide Prometheus registry; every series exists from start-up.

use std::sync::LazyLock;

use meterstand_codec::Reject;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    // A second registration (several pipelines in one test process) keeps the first one.
    let _ = prometheus::register(Box::new(metric.clone()));
    metric
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

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
    register(
        IntCounterVec::new(
            Opts::new(
                "meterstand_ingest_rejected_total",
                "Messages rejected, by reason.",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}")),
    )
});
pub static BATCH_MESSAGES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "meterstand_ingest_batch_messages",
        "Messages per ingest batch.",
        prometheus::exponential_buckets(1.0, 2.0, 14).unwrap_or_default(),
    )
});
pub static PUBLISH_TO_ACK: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "meterstand_ingest_receive_to_ack_seconds",
        "Time from receiving a message to acknowledging it after the durable write.",
        prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap_or_default(),
    )
});
pub static LAG: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "meterstand_ingest_reading_lag_seconds",
        "Time from a reading's timestamp to it being durably stored.",
        prometheus::exponential_buckets(1.0, 4.0, 12).unwrap_or_default(),
    )
});
pub static UNACKED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "meterstand_ingest_unacked_messages",
            "Messages received and not yet acknowledged.",
        )
        .unwrap_or_else(|e| panic!("{e}")),
    )
});
pub static CONNECTED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "meterstand_mqtt_connected",
            "1 while connected to the MQTT broker.",
        )
        .unwrap_or_else(|e| panic!("{e}")),
    )
});
pub static RECONNECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_mqtt_reconnects_total",
        "Connection losses to the MQTT broker.",
    )
});

pub fn init() {
    for r in Reject::ALL {
        REJECTED.with_label_values(&[r.reason()]);
    }
    for m in [&MESSAGES, &READINGS, &RECONNECTS] {
        LazyLock::force(m);
    }
    for h in [&BATCH_MESSAGES, &PUBLISH_TO_ACK, &LAG] {
        LazyLock::force(h);
    }
    LazyLock::force(&UNACKED);
    LazyLock::force(&CONNECTED);
}

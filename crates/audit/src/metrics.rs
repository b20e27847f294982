//! The chain's two gauges, in the process-wide registry: set by the service
//! (`meterstand`'s `audit::anchor`), defined here beside what they describe.

use std::sync::LazyLock;

use meterstand_telemetry::metric::gauge;
use prometheus::IntGauge;

/// The sequence number of the last line, as anchored in the store (-1: empty log).
pub static HEAD_SEQUENCE: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_audit_head_sequence",
        "Sequence number of the audit log's last line as anchored in the store (-1: empty log).",
    )
});

/// 1 while the log verifies and reaches the anchored head, else 0.
pub static CHAIN_INTACT: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_audit_chain_intact",
        "1 while the audit log verifies and reaches the head anchored in the store; 0 when lines are missing or edited, or a recorded gap is not acknowledged.",
    )
});

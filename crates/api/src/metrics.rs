//! API metrics. Routes are the matched templates (`/v1/series/{pseudonym}`), never raw paths,
//! so no identifier becomes a label.

use std::sync::LazyLock;

use meterstand_telemetry::metric::{counter_vec, histogram_vec};
use prometheus::{HistogramVec, IntCounterVec};

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_api_requests_total",
        "HTTP requests answered, by route template, method and status.",
        &["route", "method", "status"],
    )
});

pub static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "meterstand_api_request_duration_seconds",
        "Time to answer an HTTP request, by route template.",
        &["route"],
        (0.0005, 2.0, 16),
    )
});

pub static AUDIT_ENTRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_api_audit_entries_total",
        "Audit log lines written, by action and outcome.",
        &["action", "outcome"],
    )
});

/// Every route with its method, for exporting each series from the start.
pub const ROUTES: [(&str, &str); 10] = [
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
    ("/openapi.json", "GET"),
    ("/v1/aggregates", "GET"),
    ("/v1/series/{pseudonym}", "GET"),
    ("/v1/connections/{ean}", "PUT"),
    ("/v1/subjects/{ean}/export", "GET"),
    ("/v1/subjects/{ean}", "DELETE"),
    ("/v1/backups", "POST"),
];
const STATUSES: [&str; 9] = [
    "200", "400", "401", "403", "404", "413", "415", "500", "503",
];
pub const AUDIT_ACTIONS: [&str; 3] = ["connection.put", "subject.export", "subject.erase"];
pub const AUDIT_OUTCOMES: [&str; 5] = ["ok", "denied", "invalid", "not_found", "error"];

/// Registers every series at zero.
pub fn init() {
    for (route, method) in ROUTES {
        for status in STATUSES {
            REQUESTS.with_label_values(&[route, method, status]);
        }
        DURATION.with_label_values(&[route]);
    }
    for action in AUDIT_ACTIONS {
        for outcome in AUDIT_OUTCOMES {
            AUDIT_ENTRIES.with_label_values(&[action, outcome]);
        }
    }
}

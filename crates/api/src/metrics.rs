//! API metrics. Every label is bounded: routes are the matched templates
//! (`/v1/subjects/{ean}/export`) or `unmatched`, never raw paths; methods are the known ones or
//! `other`; refusal reasons and audit actions are fixed sets; token labels are configured
//! token ids (few, chosen by the operator, never the secret).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::LazyLock;

use axum::http::Method;
use meterstand_telemetry::metric::{counter, counter_vec, gauge, gauge_vec, histogram_vec};
use parking_lot::Mutex;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

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

pub static AUTH_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_api_auth_refused_total",
        "Calls refused with 401 or 403, by reason: no_token, unknown_token, wrong_role.",
        &["reason"],
    )
});

pub static SUBJECT_OPERATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_api_subject_operations_total",
        "Successful calls that read or changed one subject's data, by token id and operation.",
        &["token", "operation"],
    )
});

pub static ROWS_RETURNED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_api_rows_returned_total",
        "Rows returned to analyst calls, by token id.",
        &["token"],
    )
});

pub static TOKEN_NEW_ADDRESS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterstand_api_token_new_address_total",
        "Calls with a token from a client address it was not used from since start (or since \
         the address was forgotten: a bounded number is remembered per token), by token id.",
        &["token"],
    )
});

pub static HTTP_CONNECTIONS_OPEN: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_http_connections_open",
        "HTTP connections open now (at most api.max_connections).",
    )
});

pub static HTTP_CONNECTIONS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_http_connections_refused_total",
        "Connections closed at once on arrival: api.max_connections were open, all serving a request.",
    )
});

pub static HTTP_CONNECTIONS_EVICTED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_http_connections_evicted_total",
        "Idle connections (no request yet, or between requests) closed at once to make room for a \
         new one when api.max_connections were open.",
    )
});

pub static TOKEN_TABLE_GENERATION: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterstand_token_table_generation",
        "Token tables this process has run: 1 from the start, one more at every reload that \
         replaced the table (in full, or reduced after a failed reload).",
    )
});

pub static TOKEN_TABLE_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterstand_token_table_info",
        "1 for the fingerprint of the token table in force (a hash of its ids, roles and token \
         hashes; `meterstand token revoke` compares it with the file it wrote).",
        &["fingerprint"],
    )
});

pub static TOKEN_RELOAD_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "meterstand_token_reload_failures_total",
        "Token table reloads (SIGHUP) whose config could not be read or was invalid: only tokens \
         still in the file were kept, none added.",
    )
});

/// Publishes the table now in force: its generation and its fingerprint, alone.
pub fn token_table_loaded(generation: u64, fingerprint: &str) {
    TOKEN_TABLE_GENERATION.set(i64::try_from(generation).unwrap_or(i64::MAX));
    TOKEN_TABLE_INFO.reset();
    TOKEN_TABLE_INFO.with_label_values(&[fingerprint]).set(1);
}

const STATUSES: [&str; 11] = [
    "200", "400", "401", "403", "404", "408", "410", "413", "415", "500", "503",
];
pub const AUDIT_OUTCOMES: [&str; 5] = ["ok", "denied", "invalid", "not_found", "error"];
pub const REFUSAL_REASONS: [&str; 3] = ["no_token", "unknown_token", "wrong_role"];
/// The method as a label: one of the methods HTTP defines, or `other`, so that a client
/// sending made-up methods cannot create series.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Registers every series at zero.
pub fn init() {
    for route in &crate::routes::ROUTES {
        for status in STATUSES {
            REQUESTS.with_label_values(&[route.path, route.method.as_str(), status]);
        }
        DURATION.with_label_values(&[route.path]);
    }
    let audited = crate::routes::actions();
    for action in audited
        .iter()
        .chain([&meterstand_audit::action::AUTH_REFUSED])
    {
        for outcome in AUDIT_OUTCOMES {
            AUDIT_ENTRIES.with_label_values(&[action, outcome]);
        }
    }
    for reason in REFUSAL_REASONS {
        AUTH_REFUSED.with_label_values(&[reason]);
    }
    LazyLock::force(&HTTP_CONNECTIONS_OPEN);
    LazyLock::force(&HTTP_CONNECTIONS_REFUSED);
    LazyLock::force(&HTTP_CONNECTIONS_EVICTED);
    LazyLock::force(&TOKEN_RELOAD_FAILURES);
}

/// Registers the per-token series of `id` at zero, so that alert rules on `increase()` see
/// the first event.
pub fn init_token(id: &str) {
    for operation in crate::routes::subject_operations() {
        SUBJECT_OPERATIONS.with_label_values(&[id, operation]);
    }
    ROWS_RETURNED.with_label_values(&[id]);
    TOKEN_NEW_ADDRESS.with_label_values(&[id]);
}

/// The client addresses each token was used from, at most `per_token` each (the oldest is
/// forgotten first), so memory stays bounded however many addresses a stolen token is tried
/// from.
#[derive(Debug)]
pub(crate) struct AddressBook {
    per_token: usize,
    seen: Mutex<HashMap<String, VecDeque<IpAddr>>>,
}

impl AddressBook {
    pub(crate) fn new(per_token: usize) -> AddressBook {
        AddressBook {
            per_token: per_token.max(1),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records a use of `token` from `address`; true (and counted) if the address is new.
    pub(crate) fn note(&self, token: &str, address: IpAddr) -> bool {
        let mut seen = self.seen.lock();
        let addresses = match seen.get_mut(token) {
            Some(a) => a,
            None => seen.entry(token.to_string()).or_default(),
        };
        if addresses.contains(&address) {
            return false;
        }
        if addresses.len() >= self.per_token {
            addresses.pop_front();
        }
        addresses.push_back(address);
        drop(seen);
        TOKEN_NEW_ADDRESS.with_label_values(&[token]).inc();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        for m in ["FOO", "BREW", "get"] {
            let method = Method::from_bytes(m.as_bytes()).expect("method");
            assert_eq!(method_label(&method), "other", "{m}");
        }
        assert_eq!(method_label(&Method::PUT), "PUT");
    }

    #[test]
    fn the_address_book_remembers_a_bounded_number_per_token() {
        let book = AddressBook::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let c: IpAddr = "10.0.0.3".parse().expect("ip");
        assert!(book.note("t-book", a));
        assert!(!book.note("t-book", a));
        assert!(book.note("t-book", b));
        assert!(book.note("t-book", c));
        assert_eq!(book.seen.lock()["t-book"].len(), 2);
        // `a` was forgotten: it counts as new again.
        assert!(book.note("t-book", a));
        assert!(book.note("other-token", a));
    }
}

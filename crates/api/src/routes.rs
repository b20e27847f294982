//! The route table: every route's path, method, who may call it, what its audit line says
//! and whether it counts as a subject operation. It drives the router ([`crate::router`]),
//! the access check and audit layer (`audit.rs`) and the metrics' label sets
//! (`metrics.rs`), so a route is added in one place.

use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use meterstand_audit::action;

use crate::auth::Role;
use crate::{ApiState, handlers};

/// Action of an authenticated `/metrics` scrape (not among the audit crate's fixed names:
/// it reads no personal data, but who scrapes is worth knowing).
pub const METRICS_READ: &str = "metrics.read";

/// Action of `PUT` and `DELETE /v1/subjects/{ean}/objection` (the privacy officer records or
/// withdraws an objection); the line's `objection` parameter says which.
pub const SUBJECT_OBJECTION: &str = "subject.objection";

/// Who may call a route. Checked before the handler runs: a caller without a known token
/// gets 401, a known token of another role 403.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    Anyone,
    Roles(&'static [Role]),
    /// `/metrics`: the operator, or anyone when `api.metrics_require_token` is off.
    Metrics,
}

pub struct Route {
    pub path: &'static str,
    pub method: Method,
    pub access: Access,
    /// What the route's audit line says was done; `None`: not audited (it touches no data).
    pub action: Option<&'static str>,
    /// Counted per token in `meterstand_api_subject_operations_total` when it succeeds.
    pub subject_operation: bool,
    /// The handler, routed for the method this entry declares (and no other), so the
    /// table's method and the router's cannot disagree.
    handler: fn(MethodFilter) -> MethodRouter<ApiState>,
}

const ANALYST: Access = Access::Roles(&[Role::Analyst]);
const PRIVACY_OFFICER: Access = Access::Roles(&[Role::PrivacyOfficer]);

pub static ROUTES: [Route; 14] = [
    Route {
        path: "/healthz",
        method: Method::GET,
        access: Access::Anyone,
        action: None,
        subject_operation: false,
        handler: |m| on(m, crate::healthz),
    },
    Route {
        path: "/readyz",
        method: Method::GET,
        access: Access::Anyone,
        action: None,
        subject_operation: false,
        handler: |m| on(m, crate::readyz),
    },
    Route {
        path: "/metrics",
        method: Method::GET,
        access: Access::Metrics,
        action: Some(METRICS_READ),
        subject_operation: false,
        handler: |m| on(m, crate::metrics_endpoint),
    },
    Route {
        path: "/openapi.json",
        method: Method::GET,
        access: Access::Anyone,
        action: None,
        subject_operation: false,
        handler: |m| on(m, crate::openapi),
    },
    Route {
        path: "/v1/statistics",
        method: Method::GET,
        access: ANALYST,
        action: Some(action::STATISTICS_READ),
        subject_operation: false,
        handler: |m| on(m, handlers::statistics),
    },
    // Retired (410): still checked, audited and counted as what was asked for, so that
    // whoever still calls them shows.
    Route {
        path: "/v1/aggregates",
        method: Method::GET,
        access: ANALYST,
        action: Some(action::AGGREGATES_READ),
        subject_operation: false,
        handler: |m| on(m, handlers::aggregates),
    },
    Route {
        path: "/v1/series",
        method: Method::GET,
        access: Access::Roles(&Role::ALL),
        action: Some(action::SERIES_LIST),
        subject_operation: false,
        handler: |m| on(m, handlers::series),
    },
    Route {
        path: "/v1/series/{id}",
        method: Method::GET,
        access: Access::Roles(&Role::ALL),
        action: Some(action::SERIES_READ),
        subject_operation: false,
        handler: |m| on(m, handlers::series),
    },
    Route {
        path: "/v1/connections/{ean}",
        method: Method::PUT,
        access: Access::Roles(&[Role::Crm]),
        action: Some(action::CONNECTION_PUT),
        subject_operation: true,
        handler: |m| on(m, handlers::put_connection),
    },
    Route {
        path: "/v1/subjects/{ean}/export",
        method: Method::GET,
        access: PRIVACY_OFFICER,
        action: Some(action::SUBJECT_EXPORT),
        subject_operation: true,
        handler: |m| on(m, handlers::export),
    },
    Route {
        path: "/v1/subjects/{ean}",
        method: Method::DELETE,
        access: PRIVACY_OFFICER,
        action: Some(action::SUBJECT_ERASE),
        subject_operation: true,
        handler: |m| on(m, handlers::erase),
    },
    Route {
        path: "/v1/subjects/{ean}/objection",
        method: Method::PUT,
        access: PRIVACY_OFFICER,
        action: Some(SUBJECT_OBJECTION),
        subject_operation: true,
        handler: |m| on(m, handlers::object),
    },
    Route {
        path: "/v1/subjects/{ean}/objection",
        method: Method::DELETE,
        access: PRIVACY_OFFICER,
        action: Some(SUBJECT_OBJECTION),
        subject_operation: true,
        handler: |m| on(m, handlers::withdraw_objection),
    },
    Route {
        path: "/v1/backups",
        method: Method::POST,
        access: Access::Roles(&[Role::Operator]),
        action: Some(action::BACKUP_CREATE),
        subject_operation: false,
        handler: |m| on(m, handlers::backup),
    },
];

/// The route of a matched path template and method. HEAD is the GET route's: axum answers
/// HEAD with the GET handler, so it must meet the GET route's access check and audit.
pub fn find(path: &str, method: &Method) -> Option<&'static Route> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    ROUTES
        .iter()
        .find(|r| r.path == path && r.method == *method)
}

/// Every route of the table, its methods on one path merged; each handler answers only the
/// method its entry declares (and HEAD for GET).
pub(crate) fn router() -> axum::Router<ApiState> {
    ROUTES.iter().fold(axum::Router::new(), |router, r| {
        let filter = MethodFilter::try_from(r.method.clone())
            .expect("the route table lists standard methods only");
        router.route(r.path, (r.handler)(filter))
    })
}

/// The audit actions of the routes `pick` chooses, each once.
fn distinct_actions(pick: impl Fn(&Route) -> bool) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for a in ROUTES.iter().filter(|r| pick(r)).filter_map(|r| r.action) {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Every audit action of the table, each once.
pub fn actions() -> Vec<&'static str> {
    distinct_actions(|_| true)
}

/// The actions counted per token in `meterstand_api_subject_operations_total`.
pub fn subject_operations() -> Vec<&'static str> {
    distinct_actions(|r| r.subject_operation)
}

//! Every call is audited: the layer here wraps each route, looks the bearer token up once,
//! lets the handler note what it touched in a [`CallRecord`], and after the handler writes one
//! line to the hash-chained log of `meterstand-audit`: token id and role (never the token),
//! matched route template (never the path: it may hold an EAN), validated parameters,
//! pseudonymous subjects, rows, status and client address. A refused call (401, 403) is an
//! `auth.refused` line, with the token's id where the token is known but its role is wrong.
//! If the line cannot be written, the caller gets a 500: no unaudited answer leaves.
//!
//! Audited: every `/v1` call, every 401 or 403, and `/metrics` when a known token is
//! presented. Not audited: health, readiness, `/openapi.json` and unmatched paths without a
//! refusal (they touch no data).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meterstand_audit::{Actor, AuditEntry, action};
use meterstand_pseudonym::Pseudonym;
use parking_lot::Mutex;

use crate::ApiState;
use crate::auth::{Caller, Credential};
use crate::error::ApiError;
use crate::metrics;

/// Action of an authenticated `/metrics` scrape (not among the crate's fixed names: it reads
/// no personal data, but who scrapes is worth knowing).
pub const METRICS_READ: &str = "metrics.read";

/// Action of `PUT` and `DELETE /v1/subjects/{ean}/objection` (the privacy officer records or
/// withdraws an objection); the line's `objection` parameter says which.
pub const SUBJECT_OBJECTION: &str = "subject.objection";

/// What a handler read or changed, filled in as it goes and written by the audit layer.
#[derive(Debug, Clone, Default)]
pub struct CallRecord(Arc<Mutex<Noted>>);

#[derive(Debug, Default)]
struct Noted {
    params: Vec<(&'static str, String)>,
    subjects: Vec<Pseudonym>,
    rows: Option<u64>,
}

impl CallRecord {
    /// A parameter after validation, in its normalised form; never a raw input string.
    pub(crate) fn param(&self, name: &'static str, value: impl Into<String>) {
        self.0.lock().params.push((name, value.into()));
    }

    /// Pseudonyms of the subjects whose data the call read or changed.
    pub(crate) fn subjects(&self, pseudonyms: &[Pseudonym]) {
        self.0.lock().subjects.extend_from_slice(pseudonyms);
    }

    pub(crate) fn rows(&self, rows: u64) {
        self.0.lock().rows = Some(rows);
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CallRecord {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<CallRecord, Self::Rejection> {
        // Outside the audit layer (never in this router) notes go nowhere.
        Ok(parts
            .extensions
            .get::<CallRecord>()
            .cloned()
            .unwrap_or_default())
    }
}

/// The action a route stands for.
fn action_of(route: &str) -> Option<&'static str> {
    Some(match route {
        "/v1/statistics" => action::STATISTICS_READ,
        "/v1/aggregates" => action::AGGREGATES_READ,
        // Retired (410), still audited as what was asked for, like `/v1/aggregates`.
        "/v1/series" => action::SERIES_LIST,
        "/v1/series/{id}" => action::SERIES_READ,
        "/v1/connections/{ean}" => action::CONNECTION_PUT,
        "/v1/subjects/{ean}/export" => action::SUBJECT_EXPORT,
        "/v1/subjects/{ean}" => action::SUBJECT_ERASE,
        "/v1/subjects/{ean}/objection" => SUBJECT_OBJECTION,
        "/v1/backups" => action::BACKUP_CREATE,
        "/metrics" => METRICS_READ,
        _ => return None,
    })
}

/// The audit layer (see the module documentation).
pub(crate) async fn audit_calls(
    State(st): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let caller = Caller::from_headers(req.headers(), &st.tokens());
    let record = CallRecord::default();
    req.extensions_mut().insert(caller.clone());
    req.extensions_mut().insert(record.clone());

    let response = next.run(req).await;

    let status = response.status();
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if refused {
        let reason = match (&caller.0, status) {
            (Credential::None, _) => "no_token",
            (Credential::Unknown, _) => "unknown_token",
            (Credential::Known(_), StatusCode::FORBIDDEN) => "wrong_role",
            // A known token refused with 401 does not happen; count it as unknown.
            (Credential::Known(_), _) => "unknown_token",
        };
        metrics::AUTH_REFUSED.with_label_values(&[reason]).inc();
    }
    let action = route.as_deref().and_then(action_of);
    let Some(action) = action else {
        return response;
    };
    let identity = caller.identity();
    if !refused && identity.is_none() {
        // An answer to no one in particular (e.g. `/metrics` with tokens not required).
        return response;
    }
    let route = route.unwrap_or_default();
    let actor = match identity {
        Some(i) => Actor::token(i.id.clone(), i.role.as_str()),
        None => Actor::Unauthenticated,
    };
    let mut entry = if refused {
        AuditEntry::refused(actor, route.as_str(), status.as_u16())
    } else {
        let noted = std::mem::take(&mut *record.0.lock());
        let mut entry = AuditEntry::call(actor, action, route.as_str(), status.as_u16());
        for (name, value) in noted.params {
            entry = entry.with_param(name, value);
        }
        for p in &noted.subjects {
            entry = entry.with_subject(p.to_string());
        }
        if let Some(rows) = noted.rows {
            entry.rows = Some(rows);
        }
        entry
    };
    if let Some(addr) = remote {
        entry = entry.with_remote(addr.to_string());
    }
    let outcome = entry.outcome.as_str();
    let entry_action = if refused {
        action::AUTH_REFUSED
    } else {
        action
    };
    let subjects = entry.subjects.len();
    let rows = entry.rows;

    let log = st.audit_log().clone();
    let written = tokio::task::spawn_blocking(move || log.append(&entry)).await;
    match written {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            // The error names fields, never their values (see meterstand-audit).
            tracing::error!(error = %e, action = entry_action, "cannot write the audit log");
            return ApiError::internal().into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, action = entry_action, "audit task failed");
            return ApiError::internal().into_response();
        }
    }
    metrics::AUDIT_ENTRIES
        .with_label_values(&[entry_action, outcome])
        .inc();

    if let Some(identity) = identity {
        if let Some(addr) = remote {
            st.addresses().note(&identity.id, addr.ip());
        }
        if status.is_success() {
            if subjects > 0 && metrics::SUBJECT_OPERATION_NAMES.contains(&action) {
                metrics::SUBJECT_OPERATIONS
                    .with_label_values(&[identity.id.as_str(), action])
                    .inc();
            }
            if let (Some(rows), action::STATISTICS_READ) = (rows, action) {
                metrics::ROWS_RETURNED
                    .with_label_values(&[identity.id.as_str()])
                    .inc_by(rows);
            }
        }
    }
    response
}

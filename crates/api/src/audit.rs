//! Every call is checked and audited: the layer here wraps each route, looks the bearer token
//! up once, refuses a caller the route table (`routes.rs`) does not allow, lets the handler
//! note what it touched in a [`CallRecord`], and after the handler writes one
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
use crate::auth::{Caller, Credential, Identity, Role};
use crate::error::ApiError;
use crate::metrics;
use crate::routes::{self, Access, Route};

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

/// The route table's access rule for `route`, applied to `caller`: `Err` with the 401 or
/// 403 to answer instead of running the handler.
fn check_access(st: &ApiState, route: Option<&Route>, caller: &Caller) -> Result<(), ApiError> {
    let allowed: &[Role] = match route.map(|r| r.access) {
        None | Some(Access::Anyone) => return Ok(()),
        Some(Access::Metrics) if !st.config().metrics_require_token => return Ok(()),
        Some(Access::Metrics) => &[Role::Operator],
        Some(Access::Roles(roles)) => roles,
    };
    caller.require(allowed).map(|_| ())
}

/// The audit layer (see the module documentation).
pub(crate) async fn audit_calls(
    State(st): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    let route = matched.and_then(|m| routes::find(m, req.method()));
    if matched.is_some() && route.is_none() {
        // A known path with a method the table does not list: refused here, whatever the
        // router would do with it, so nothing outside the table reaches a handler.
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let caller = Caller::from_headers(req.headers(), &st.tokens());
    let record = CallRecord::default();
    req.extensions_mut().insert(caller.clone());
    req.extensions_mut().insert(record.clone());

    let response = match check_access(&st, route, &caller) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    };

    let status = response.status();
    let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if refused {
        count_refusal(&caller, status);
    }
    let Some(route) = route.filter(|r| r.action.is_some()) else {
        return response;
    };
    let identity = caller.identity();
    if !refused && identity.is_none() {
        // An answer to no one in particular (e.g. `/metrics` with tokens not required).
        return response;
    }
    let entry = entry_for(route, identity, &record, status, remote);
    let (subjects, rows) = (entry.subjects.len(), entry.rows);
    if let Err(failed) = write(&st, entry).await {
        return failed;
    }
    if let Some(identity) = identity {
        if let Some(addr) = remote {
            st.addresses().note(&identity.id, addr.ip());
        }
        if status.is_success() {
            count_success(route, identity, subjects, rows);
        }
    }
    response
}

fn count_refusal(caller: &Caller, status: StatusCode) {
    let reason = match (&caller.0, status) {
        (Credential::None, _) => "no_token",
        (Credential::Unknown, _) => "unknown_token",
        (Credential::Known(_), StatusCode::FORBIDDEN) => "wrong_role",
        // A known token refused with 401 does not happen; count it as unknown.
        (Credential::Known(_), _) => "unknown_token",
    };
    metrics::AUTH_REFUSED.with_label_values(&[reason]).inc();
}

/// The call's line: a refusal, or the route's action with what the handler noted.
fn entry_for(
    route: &Route,
    identity: Option<&Identity>,
    record: &CallRecord,
    status: StatusCode,
    remote: Option<SocketAddr>,
) -> AuditEntry {
    let actor = match identity {
        Some(i) => Actor::token(i.id.clone(), i.role.as_str()),
        None => Actor::Unauthenticated,
    };
    let mut entry = match route.action {
        Some(action) if !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            let noted = std::mem::take(&mut *record.0.lock());
            let mut entry = AuditEntry::call(actor, action, route.path, status.as_u16());
            for (name, value) in noted.params {
                entry = entry.with_param(name, value);
            }
            for p in &noted.subjects {
                entry = entry.with_subject(p.to_string());
            }
            entry.rows = noted.rows;
            entry
        }
        _ => AuditEntry::refused(actor, route.path, status.as_u16()),
    };
    if let Some(addr) = remote {
        entry = entry.with_remote(addr.to_string());
    }
    entry
}

/// Appends `entry` on a blocking thread; the 500 to answer instead when it cannot be
/// written (no unaudited answer leaves).
async fn write(st: &ApiState, entry: AuditEntry) -> Result<(), Response> {
    let action = entry.action.clone();
    let outcome = entry.outcome.as_str();
    let log = st.audit_log().clone();
    match tokio::task::spawn_blocking(move || log.append(&entry)).await {
        Ok(Ok(_)) => {
            metrics::AUDIT_ENTRIES
                .with_label_values(&[action.as_str(), outcome])
                .inc();
            Ok(())
        }
        Ok(Err(e)) => {
            // The error names fields, never their values (see meterstand-audit).
            tracing::error!(error = %e, action, "cannot write the audit log");
            Err(ApiError::internal().into_response())
        }
        Err(e) => {
            tracing::error!(error = %e, action, "audit task failed");
            Err(ApiError::internal().into_response())
        }
    }
}

/// The per-token counters of a successful call.
fn count_success(route: &Route, identity: &Identity, subjects: usize, rows: Option<u64>) {
    let Some(action) = route.action else {
        return;
    };
    if subjects > 0 && route.subject_operation {
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

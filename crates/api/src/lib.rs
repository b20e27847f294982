//! The HTTP API (DESIGN §4): analyst aggregates with k-anonymity and pseudonymous series,
//! CRM connection registration, privacy-officer export and erasure, health, readiness,
//! metrics and `/openapi.json`. Bearer tokens carry roles; privacy-officer and CRM calls are
//! audited. Entry point `serve(listener, state, shutdown)` so tests bind `127.0.0.1:0`.

mod audit;
mod auth;
pub mod dto;
mod error;
mod handlers;
mod kanon;
pub mod metrics;
mod openapi;
mod params;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use meterstand_model::Calendar;
use meterstand_pseudonym::{Pseudonym, Pseudonymiser};
use meterstand_store::ReadingStore;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use audit::{AuditEntry, AuditLog};
pub use auth::{Caller, Identity, Role, TokenError, TokenTable, hash_token, parse_hash};
pub use error::{ApiError, ErrorBody};
pub use openapi::openapi_json;
pub use params::MaxRange;

/// What the server reads to answer readiness.
pub trait Readiness: Send + Sync + 'static {
    fn store_open(&self) -> bool;
    fn broker_connected(&self) -> bool;
    /// Called before `/metrics` renders, to refresh gauges that are sampled, not counted.
    fn refresh_gauges(&self) {}
}

/// Limits and privacy settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Aggregate cells with fewer contributing connections are suppressed.
    pub min_group_size: u32,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// `/v1` requests served at once; more are refused with 503, not queued.
    pub max_concurrent: usize,
    pub max_range: MaxRange,
    /// Whether `/metrics` needs an `operator` token.
    pub metrics_require_token: bool,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            min_group_size: 10,
            max_body_bytes: 16 * 1024,
            max_concurrent: 64,
            max_range: MaxRange::default(),
            metrics_require_token: true,
        }
    }
}

/// Everything the server needs.
#[allow(missing_debug_implementations)]
pub struct ApiParts {
    pub readiness: Arc<dyn Readiness>,
    pub backend: Arc<dyn ReadingStore>,
    pub pseudonymiser: Arc<Pseudonymiser>,
    pub tokens: TokenTable,
    pub audit: AuditLog,
    pub calendar: Calendar,
    pub config: ApiConfig,
}

#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    parts: ApiParts,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

impl ApiState {
    pub fn new(parts: ApiParts) -> ApiState {
        let permits = Arc::new(Semaphore::new(parts.config.max_concurrent.max(1)));
        metrics::init();
        ApiState {
            inner: Arc::new(Inner { parts, permits }),
        }
    }

    pub(crate) fn tokens(&self) -> &TokenTable {
        &self.inner.parts.tokens
    }
    pub(crate) fn calendar(&self) -> &Calendar {
        &self.inner.parts.calendar
    }
    pub(crate) fn config(&self) -> &ApiConfig {
        &self.inner.parts.config
    }
    pub(crate) fn pseudonymiser(&self) -> &Pseudonymiser {
        &self.inner.parts.pseudonymiser
    }

    /// Runs store work on a blocking thread.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ReadingStore) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let backend = self.inner.parts.backend.clone();
        tokio::task::spawn_blocking(move || f(backend.as_ref()))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "store task failed");
                ApiError::internal()
            })
    }

    /// Appends the audit line for a privacy-officer or CRM call and passes its result on. If
    /// the line cannot be written, the caller gets a 500: an unaudited answer is not given.
    pub(crate) async fn audit(
        &self,
        caller: &Caller,
        action: &'static str,
        pseudonym: Option<Pseudonym>,
        result: Result<Response, ApiError>,
    ) -> Result<Response, ApiError> {
        let status = match &result {
            Ok(r) => r.status(),
            Err(e) => e.status,
        };
        let outcome = match status.as_u16() {
            200..=299 => "ok",
            401 | 403 => "denied",
            404 => "not_found",
            400..=499 => "invalid",
            _ => "error",
        };
        let entry = AuditEntry {
            time: jiff::Timestamp::now().to_string(),
            role: caller.0.as_ref().map(|i| i.role.as_str()),
            token_id: caller.0.as_ref().map(|i| i.id.clone()),
            action,
            pseudonym: pseudonym.map(|p| p.to_string()),
            outcome,
            status: status.as_u16(),
        };
        let log = self.inner.parts.audit.clone();
        let written = tokio::task::spawn_blocking(move || log.append(&entry)).await;
        match written {
            Ok(Ok(())) => {
                metrics::AUDIT_ENTRIES
                    .with_label_values(&[action, outcome])
                    .inc();
                result
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, action, "cannot write the audit log");
                Err(ApiError::internal())
            }
            Err(e) => {
                tracing::error!(error = %e, action, "audit task failed");
                Err(ApiError::internal())
            }
        }
    }
}

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/aggregates", get(handlers::aggregates))
        .route("/v1/series/{pseudonym}", get(handlers::series))
        .route("/v1/connections/{ean}", put(handlers::put_connection))
        .route("/v1/subjects/{ean}/export", get(handlers::export))
        .route("/v1/subjects/{ean}", delete(handlers::erase))
        .route("/v1/backups", post(handlers::backup))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_concurrency,
        ))
        .layer(DefaultBodyLimit::max(state.config().max_body_bytes));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .route("/openapi.json", get(openapi))
        .merge(v1)
        .fallback(not_found)
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Counts and times every request by route template and status.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::DURATION
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    metrics::REQUESTS
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    response
}

/// Refuses `/v1` requests beyond `max_concurrent` at once with a JSON 503 instead of queueing
/// them without bound.
async fn limit_concurrency(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let Ok(_permit) = st.inner.permits.clone().try_acquire_owned() else {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests at once; retry shortly",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operator",
    responses((status = 200, description = "The process is alive")))]
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the store is open and the broker connected.
#[utoipa::path(get, path = "/readyz", tag = "operator",
    responses((status = 200, description = "Ready"), (status = 503, description = "Store closed or broker disconnected")))]
async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let readiness = &state.inner.parts.readiness;
    let store = readiness.store_open();
    let broker = readiness.broker_connected();
    let status = if store && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(
            serde_json::json!({"store_open": store, "broker_connected": broker, "ready": store && broker}),
        ),
    )
}

/// Prometheus exposition; needs an `operator` token unless `api.metrics_require_token` is off.
#[utoipa::path(get, path = "/metrics", tag = "operator",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not operator", body = ErrorBody),
    ))]
async fn metrics_endpoint(State(state): State<ApiState>, caller: Caller) -> Response {
    if state.config().metrics_require_token
        && let Err(e) = caller.require(&[Role::Operator])
    {
        return e.into_response();
    }
    let readiness = state.inner.parts.readiness.clone();
    let _ = tokio::task::spawn_blocking(move || readiness.refresh_gauges()).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        meterstand_telemetry::render_metrics(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operator",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API")))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

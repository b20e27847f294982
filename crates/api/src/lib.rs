//! The HTTP API (DESIGN §4, §6, §7): analyst statistics (frozen, k-anonymous across queries;
//! analysts read aggregates only), CRM connection registration, privacy-officer export,
//! erasure and objection, backups, health, readiness, metrics and `/openapi.json`. Bearer
//! tokens carry roles; the token table can be replaced at runtime. Every call is audited in the hash-chained log of `meterstand-audit`.
//! Slow clients cannot starve the rest: headers and bodies have time limits, bodies are read
//! only after the role check and outside the concurrency limit. Entry point
//! `serve(listener, state, shutdown)` so tests bind `127.0.0.1:0`. See `DESIGN.md` beside this
//! crate.

mod audit;
mod auth;
pub mod dto;
mod error;
mod handlers;
mod input;
pub mod metrics;
mod openapi;
mod params;
mod parquet;
mod routes;
mod server;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use meterstand_model::Calendar;
use meterstand_pseudonym::Pseudonymiser;
use meterstand_store::ReadingStore;
use parking_lot::RwLock;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use audit::CallRecord;
pub use auth::{
    Caller, Credential, Identity, Role, TokenError, TokenTable, hash_token, parse_hash,
};
pub use error::{ApiError, ErrorBody};
pub use meterstand_audit::{AuditEntry, AuditError, AuditLog};
pub use openapi::openapi_json;
pub use params::MaxRange;
pub use routes::{METRICS_READ, SUBJECT_OBJECTION};
pub use server::{serve, serve_tls, serve_with};
pub use tls::{Tls, TlsError, TlsFiles};

/// What the server reads to answer readiness.
pub trait Readiness: Send + Sync + 'static {
    fn store_open(&self) -> bool;
    /// Connected to the broker with every subscription acknowledged.
    fn broker_receiving(&self) -> bool;
    /// Called before `/metrics` renders, to refresh gauges that are sampled, not counted.
    fn refresh_gauges(&self) {}
}

/// Limits and privacy settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `k`: every statistics row counts at least this many connections (the freeze job
    /// applies it; the API reports it).
    pub min_group_size: u32,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// `/v1` requests served at once; more are refused with 503, not queued. A request holds
    /// its place only while it is served, not while its body arrives.
    pub max_concurrent: usize,
    pub max_range: MaxRange,
    /// Whether `/metrics` needs an `operator` token.
    pub metrics_require_token: bool,
    /// A connection that has not sent a complete request head within this time is closed.
    pub header_timeout: Duration,
    /// A request body that has not fully arrived within this time (counted from when the
    /// handler starts reading it) is refused with 408.
    pub body_timeout: Duration,
    /// Client addresses remembered per token for
    /// `meterstand_api_token_new_address_total`; the oldest is forgotten first.
    pub addresses_per_token: usize,
    /// Connections open at once (`api.max_connections`, resolved by the service from its
    /// file limit): a new one beyond it displaces the oldest idle one, or is closed at once
    /// when all are serving a request (see `server.rs`).
    pub max_connections: usize,
    /// Backups are children of this directory, named by the request (`[backup] dir`).
    pub backup_dir: std::path::PathBuf,
    /// How many backups are kept (`[backup] keep`): the oldest go first, and the subject
    /// journal is pruned of what no kept backup needs.
    pub backup_keep: usize,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            min_group_size: 10,
            max_body_bytes: 16 * 1024,
            max_concurrent: 64,
            max_range: MaxRange::default(),
            metrics_require_token: true,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            backup_dir: std::path::PathBuf::from("/var/backups/meterstand"),
            backup_keep: 7,
            addresses_per_token: 64,
        }
    }
}

/// Everything the server needs.
#[allow(missing_debug_implementations)]
pub struct ApiParts {
    pub readiness: Arc<dyn Readiness>,
    pub backend: Arc<dyn ReadingStore>,
    pub pseudonymiser: Arc<Pseudonymiser>,
    /// The initial token table; see [`ApiState::replace_tokens`].
    pub tokens: TokenTable,
    /// The hash-chained audit log (`meterstand_audit::AuditLog`, opened once per file).
    pub audit: AuditLog,
    pub calendar: Calendar,
    pub config: ApiConfig,
}

/// The shared state of the server. Cheap to clone; clones share everything, so a clone kept
/// by the binary can replace the token table of a running server.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    readiness: Arc<dyn Readiness>,
    backend: Arc<dyn ReadingStore>,
    pseudonymiser: Arc<Pseudonymiser>,
    tokens: RwLock<Arc<TokenTable>>,
    /// Token tables run so far (`meterstand_token_table_generation`).
    generation: std::sync::atomic::AtomicU64,
    audit: AuditLog,
    calendar: Calendar,
    config: ApiConfig,
    permits: Arc<Semaphore>,
    addresses: metrics::AddressBook,
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
        parts.tokens.ids().for_each(metrics::init_token);
        metrics::token_table_loaded(1, &parts.tokens.fingerprint());
        ApiState {
            inner: Arc::new(Inner {
                readiness: parts.readiness,
                backend: parts.backend,
                pseudonymiser: parts.pseudonymiser,
                tokens: RwLock::new(Arc::new(parts.tokens)),
                generation: std::sync::atomic::AtomicU64::new(1),
                audit: parts.audit,
                calendar: parts.calendar,
                addresses: metrics::AddressBook::new(parts.config.addresses_per_token),
                config: parts.config,
                permits,
            }),
        }
    }

    /// Replaces the token table of the running server (e.g. re-read on SIGHUP). Requests
    /// that start afterwards see only the new table: a revoked token is refused at once.
    /// Returns the new table's generation (1 is the table the server started with).
    pub fn replace_tokens(&self, tokens: TokenTable) -> u64 {
        tokens.ids().for_each(metrics::init_token);
        let count = tokens.ids().count();
        let fingerprint = tokens.fingerprint();
        let mut current = self.inner.tokens.write();
        *current = Arc::new(tokens);
        let generation = self
            .inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        // Published while the new table is in force and before the write lock is released,
        // so that whoever reads this fingerprint is refused a token outside it.
        metrics::token_table_loaded(generation, &fingerprint);
        drop(current);
        tracing::info!(tokens = count, generation, %fingerprint, "api token table replaced");
        generation
    }

    /// The current token table.
    pub fn tokens(&self) -> Arc<TokenTable> {
        self.inner.tokens.read().clone()
    }

    pub(crate) fn calendar(&self) -> &Calendar {
        &self.inner.calendar
    }
    pub(crate) fn config(&self) -> &ApiConfig {
        &self.inner.config
    }
    pub(crate) fn pseudonymiser(&self) -> &Pseudonymiser {
        &self.inner.pseudonymiser
    }
    /// The audit log every call is written to (the binary writes its operator lines, such
    /// as token reloads, to the same chain).
    pub fn audit_log(&self) -> &AuditLog {
        &self.inner.audit
    }
    pub(crate) fn addresses(&self) -> &metrics::AddressBook {
        &self.inner.addresses
    }

    /// A place among the `max_concurrent` requests served at once, or a 503. Taken after the
    /// role check and after the body arrived, so slow or refused clients hold none.
    pub(crate) fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.inner
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded())
    }

    /// Reads the body after the role check: size-limited, time-limited.
    pub(crate) async fn body(
        &self,
        headers: &axum::http::HeaderMap,
        body: axum::body::Body,
    ) -> Result<axum::body::Bytes, ApiError> {
        input::read_body(
            headers,
            body,
            self.config().max_body_bytes,
            self.config().body_timeout,
        )
        .await
    }

    /// Runs store work on a blocking thread.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ReadingStore) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let backend = self.inner.backend.clone();
        tokio::task::spawn_blocking(move || f(backend.as_ref()))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "store task failed");
                ApiError::internal()
            })
    }
}

pub fn router(state: ApiState) -> Router {
    routes::router()
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            audit::audit_calls,
        ))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Counts and times every request by route template, method and status; all three labels
/// are bounded (see [`metrics`]).
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = metrics::method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::DURATION
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    metrics::REQUESTS
        .with_label_values(&[&route, method, response.status().as_str()])
        .inc();
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operator",
    responses((status = 200, description = "The process is alive")))]
pub(crate) async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the store is open, the broker connected and every subscription acknowledged.
#[utoipa::path(get, path = "/readyz", tag = "operator",
    responses((status = 200, description = "Ready"), (status = 503, description = "Store closed, broker disconnected or not yet subscribed")))]
pub(crate) async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let readiness = &state.inner.readiness;
    let store = readiness.store_open();
    let broker = readiness.broker_receiving();
    let status = if store && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(
            serde_json::json!({"store_open": store, "broker_receiving": broker, "ready": store && broker}),
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
        (status = 500, description = "The audit line could not be written", body = ErrorBody),
    ))]
pub(crate) async fn metrics_endpoint(State(state): State<ApiState>) -> Response {
    // Who may read it is checked before (routes.rs, `Access::Metrics`).
    let readiness = state.inner.readiness.clone();
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
pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

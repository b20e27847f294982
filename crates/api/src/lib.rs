//! The HTTP server: `/healthz`, `/readyz` and `/metrics` (the analyst, CRM and
//! privacy-officer endpoints are built on the same router). Entry point `serve(listener,
//! state, shutdown)` so tests bind `127.0.0.1:0` and stop it at will.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the server reads to answer readiness.
pub trait Readiness: Send + Sync + 'static {
    fn store_open(&self) -> bool;
    fn broker_connected(&self) -> bool;
    /// Called before `/metrics` renders, to refresh gauges that are sampled, not counted.
    fn refresh_gauges(&self) {}
}

#[derive(Clone)]
pub struct ApiState {
    pub readiness: Arc<dyn Readiness>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let store = state.readiness.store_open();
    let broker = state.readiness.broker_connected();
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

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let readiness = state.readiness.clone();
    let _ = tokio::task::spawn_blocking(move || readiness.refresh_gauges()).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        meterstand_telemetry::render_metrics(),
    )
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

//! The admin HTTP server: `/livez`, `/readyz` and `/metrics`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State as AxumState, http::StatusCode, response::IntoResponse, routing::get};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the HTTP side reads. Shares the metrics with the controller.
#[derive(Clone, Default)]
pub struct State {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// True once the controller's watches have synced, and, under leader
    /// election, while the process is a healthy standby watching the Lease.
    pub ready: Arc<AtomicBool>,
    /// Set while the injection webhook has no certificate to serve with:
    /// the replica is not ready until it has.
    pub webhook_pending: Arc<AtomicBool>,
}

/// The admin routes.
pub fn router(state: State) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(AxumState(state): AxumState<State>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) && !state.webhook_pending.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(AxumState(state): AxumState<State>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Serves the admin routes on `addr` until `shutdown` is cancelled.
pub async fn serve(addr: SocketAddr, state: State, shutdown: CancellationToken) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "admin server listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
        .await
}

//! The HTTP side port: liveness and readiness for Kubernetes probes (and, later, the OAuth
//! callback and /metrics). Kept off the gRPC port so probes need no gRPC client.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokenvend_core::store::Store;

pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(store)
}

/// Ready when the store answers. (A replica with a dead database still serves cached tokens;
/// readiness reports the database so operators see it.)
async fn ready(State(store): State<Arc<dyn Store>>) -> (StatusCode, &'static str) {
    match store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
    }
}

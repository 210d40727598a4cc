//! The HTTP side port: liveness and readiness for Kubernetes probes, and the OAuth
//! callback the end user's browser is redirected to. Kept off the gRPC port so probes and
//! browsers need no gRPC client.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Query, State},
    http::StatusCode,
    response::Html,
    routing::get,
};
use serde::Deserialize;
use tokenvend_core::{
    grants::{CALLBACK_PATH, Grants},
    store::Store,
};
use tonic::Code;

use crate::{shutdown::Lifecycle, status::to_status};

#[derive(Clone)]
struct AppState {
    store: Arc<dyn Store>,
    grants: Arc<Grants>,
    lifecycle: Lifecycle,
}

pub fn router(store: Arc<dyn Store>, grants: Arc<Grants>, lifecycle: Lifecycle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route(CALLBACK_PATH, get(callback))
        .with_state(AppState {
            store,
            grants,
            lifecycle,
        })
}

/// Ready while the process serves; 503 once shutdown has begun, so load balancers stop
/// sending. A database outage does not make a replica unready: its cached tokens are still
/// good, and failing readiness on every replica at once would turn a database outage into a
/// total one. The body says how the database is doing.
async fn ready(State(app): State<AppState>) -> (StatusCode, &'static str) {
    if app.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store unavailable");
            (
                StatusCode::OK,
                "ready (database unavailable: serving cached tokens)\n",
            )
        }
    }
}

#[derive(Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Where the provider sends the end user's browser after the login: `?code=&state=` on
/// success, `?error=&state=` when the user (or the provider) said no.
async fn callback(
    State(app): State<AppState>,
    Query(q): Query<CallbackParams>,
) -> (StatusCode, Html<String>) {
    match (q.error, q.code, q.state) {
        (Some(error), _, state) => {
            if let Some(state) = state {
                // The flow is over either way: its state must not be usable again.
                if let Err(e) = app.grants.abandon(&state).await {
                    tracing::debug!(error = %e, "callback with error for an unusable state");
                }
            }
            let detail = q.error_description.unwrap_or_default();
            tracing::info!(oauth_error = %error, "authorization not granted at the provider");
            (
                StatusCode::BAD_REQUEST,
                page(
                    "Authorization was not granted",
                    &format!("The provider reported: {error}. {detail}"),
                ),
            )
        }
        (None, Some(code), Some(state)) => match app.grants.complete(&state, &code).await {
            Ok(g) => (
                StatusCode::OK,
                page(
                    "Authorization complete",
                    &format!(
                        "tokenvend now holds the grant of {} at {} for tenant {}. You can close this window.",
                        g.record.subject, g.provider, g.tenant
                    ),
                ),
            ),
            Err(e) => {
                let status = to_status(&e);
                let code = match status.code() {
                    Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound => {
                        StatusCode::BAD_REQUEST
                    }
                    Code::Unavailable => StatusCode::BAD_GATEWAY,
                    Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (code, page("Authorization failed", status.message()))
            }
        },
        _ => (
            StatusCode::BAD_REQUEST,
            page(
                "Authorization failed",
                "The callback needs the code and state parameters the provider adds.",
            ),
        ),
    }
}

fn page(title: &str, message: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{m}</p></body></html>\n",
        t = escape(title),
        m = escape(message)
    ))
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

//! The HTTP side port: liveness and readiness for Kubernetes probes, and the OAuth
//! callback the end user's browser is redirected to. Kept off the gRPC port so probes and
//! browsers need no gRPC client.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{
        HeaderName, HeaderValue, StatusCode,
        header::{
            CACHE_CONTROL, CONTENT_SECURITY_POLICY, PRAGMA, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
        },
    },
    middleware,
    response::IntoResponse,
    response::{Html, Response},
    routing::get,
};
use serde::Deserialize;
use tokenvend_core::{
    grants::{CALLBACK_PATH, Grants},
    store::Store,
};
use tonic::Code;

use crate::metrics::Metrics;
use crate::{shutdown::Lifecycle, status::to_status};

#[derive(Clone)]
struct AppState {
    store: Arc<dyn Store>,
    grants: Arc<Grants>,
    lifecycle: Lifecycle,
    metrics: Option<Arc<Metrics>>,
}

pub fn router(
    store: Arc<dyn Store>,
    grants: Arc<Grants>,
    lifecycle: Lifecycle,
    metrics: Option<Arc<Metrics>>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .route(
            CALLBACK_PATH,
            get(callback).layer(middleware::map_response(callback_headers)),
        )
        .with_state(AppState {
            store,
            grants,
            lifecycle,
            metrics,
        })
}

/// Prometheus text exposition format 0.0.4.
async fn scrape(State(state): State<AppState>) -> axum::response::Response {
    match &state.metrics {
        Some(metrics) => (
            [(
                http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics.render(),
        )
            .into_response(),
        None => (
            http::StatusCode::NOT_FOUND,
            "metrics are off (TOKENVEND_METRICS=false)\n",
        )
            .into_response(),
    }
}

/// On every callback page, whatever produced it. The page names a tenant and an end user,
/// so no cache may keep it; it is static text, so it may run nothing, load nothing and be
/// framed by no one (clickjacking); and its URL carries the code and state, so no link
/// may take it along as a Referer.
const CALLBACK_HEADERS: [(HeaderName, &str); 5] = [
    (CACHE_CONTROL, "no-store"),
    (PRAGMA, "no-cache"),
    (
        CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (REFERRER_POLICY, "no-referrer"),
];

async fn callback_headers(mut response: Response) -> Response {
    for (name, value) in CALLBACK_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
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

/// `error_description` is deliberately not read: it is whatever text the party that sent
/// the browser here chose, and would be shown under our name.
#[derive(Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The `error` parameter if it is an RFC 6749 error code (§4.1.2.1: `%x20-21 / %x23-5B /
/// %x5D-7E`) of a sane length, else "unknown": only a code is shown or logged.
fn oauth_error_code(raw: &str) -> &str {
    let valid = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e));
    if valid { raw } else { "unknown" }
}

/// Where the provider sends the end user's browser after the login: `?code=&state=` on
/// success, `?error=&state=` when the user (or the provider) said no.
async fn callback(
    State(app): State<AppState>,
    query: Result<Query<CallbackParams>, QueryRejection>,
) -> (StatusCode, Html<String>) {
    let Ok(Query(q)) = query else {
        return (
            StatusCode::BAD_REQUEST,
            page(
                "Authorization failed",
                "The callback's query string could not be read.",
            ),
        );
    };
    match (q.error, q.code, q.state) {
        (Some(error), _, state) => {
            if let Some(state) = state {
                // The flow is over either way: its state must not be usable again.
                if let Err(e) = app.grants.abandon(&state).await {
                    tracing::debug!(error = %e, "callback with error for an unusable state");
                }
            }
            let code = oauth_error_code(&error);
            tracing::info!(
                oauth_error = code,
                "authorization not granted at the provider"
            );
            (
                StatusCode::BAD_REQUEST,
                page(
                    "Authorization was not granted",
                    &format!(
                        "The provider reported the error code {code}. Nothing was stored; you can close this window."
                    ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rfc6749_error_codes_are_shown() {
        for ok in [
            "access_denied",
            "temporarily_unavailable",
            "a b!",
            "<i>",
            &"x".repeat(64),
        ] {
            assert_eq!(oauth_error_code(ok), ok);
        }
        for bad in [
            "",
            "quo\"te",
            "back\\slash",
            "tab\there",
            "caf\u{e9}",
            &"x".repeat(65),
        ] {
            assert_eq!(oauth_error_code(bad), "unknown", "{bad:?}");
        }
    }
}

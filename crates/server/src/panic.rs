//! A panic must cost one call, never a connection or the process.
//!
//! Without a guard, a panic in a handler unwinds into hyper's connection task: the task
//! dies and takes the whole connection, with every other call multiplexed on it, down
//! with it. The layers here catch the unwind around each request and answer that one
//! request with an error, so the connection (and its other calls) carry on.
//!
//! The answer says nothing about the panic: its message may hold request data. The panic
//! hook ([`install_hook`]) logs the message and location instead, as one `tracing` line.

use std::any::Any;

use tower_http::catch_panic::CatchPanicLayer;

/// What a caller sees for a call that panicked (gRPC `INTERNAL`).
pub const GRPC_MESSAGE: &str = "internal error (details in the server logs)";

/// What an HTTP client sees for a request that panicked (status 500).
pub const HTTP_BODY: &str = "internal error (details in the server logs)\n";

type Handler<B> = fn(Box<dyn Any + Send + 'static>) -> http::Response<B>;

/// The layer for the tonic server: a panic becomes a trailers-only gRPC answer (HTTP 200,
/// `grpc-status: 13`, [`GRPC_MESSAGE`]).
pub type GrpcPanicLayer = CatchPanicLayer<Handler<tonic::body::Body>>;

/// The layer for the axum side port: a panic becomes a plain 500.
pub type HttpPanicLayer = CatchPanicLayer<Handler<axum::body::Body>>;

pub fn grpc_layer() -> GrpcPanicLayer {
    CatchPanicLayer::custom(grpc_answer as Handler<tonic::body::Body>)
}

pub fn http_layer() -> HttpPanicLayer {
    CatchPanicLayer::custom(http_answer as Handler<axum::body::Body>)
}

// The payload is dropped unread: the hook has logged it already (with its location, which
// the payload does not carry).
fn grpc_answer(_payload: Box<dyn Any + Send + 'static>) -> http::Response<tonic::body::Body> {
    // `into_http` builds the trailers-only form: content-type, grpc-status and the
    // percent-encoded grpc-message as headers, an empty body.
    tonic::Status::internal(GRPC_MESSAGE).into_http()
}

fn http_answer(_payload: Box<dyn Any + Send + 'static>) -> http::Response<axum::body::Body> {
    let mut res = http::Response::new(axum::body::Body::from(HTTP_BODY));
    *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Replaces the default panic hook (which prints to stderr, outside the log format) with
/// one `ERROR` event, target `panic`, holding the message, the location and the thread;
/// the backtrace too when `RUST_BACKTRACE` asks for one. Logged in the panicking thread,
/// so the event carries the current span (the tenant and provider of a GetToken).
///
/// Call it after the subscriber is installed: before that the event would go nowhere.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload_as_str()
            .unwrap_or("(the panic payload is not a string)");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("<unnamed>");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(target: "panic", %location, thread, %backtrace, "panicked: {message}");
        } else {
            tracing::error!(target: "panic", %location, thread, "panicked: {message}");
        }
    }));
}

//! Structured logs through `tracing` (human-readable by default, JSON for log pipelines) and,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the
//! same spans exported over OTLP. Without an endpoint no OpenTelemetry layer is installed at
//! all: nothing is exported and the request path pays nothing for it.
//!
//! Everything else follows the standard `OTEL_*` variables, read by the OpenTelemetry SDK
//! itself: `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or `http/protobuf`, the specification's
//! default), `…_HEADERS`, `…_TIMEOUT`, `…_COMPRESSION`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_BSP_*`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource, runtime,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets, fmt, prelude::*};

use crate::config::LogFormat;

/// Our crates: only their spans are exported (the libraries' own spans and events, e.g.
/// sqlx's statement log, would be noise in a trace and cost on every query).
const OWN_CRATES: [&str; 3] = ["tokenvend_server", "tokenvend_core", "tokenvend_store"];

/// What `init` set up; `shutdown` flushes the spans not yet exported.
#[must_use = "call shutdown() before exiting so the last spans are exported"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (the gRPC layer only builds its server span then).
    pub fn tracing_enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// Exports what is buffered, bounded by the exporter's own timeout.
    pub async fn shutdown(self) {
        if let Some(tracer) = self.tracer {
            // The SDK's shutdown blocks until the batch task has exported: off the runtime's
            // worker threads, which that task needs.
            let done = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
            if let Ok(Err(e)) = done {
                eprintln!("tokenvend: exporting the last spans failed: {e}");
            }
        }
    }
}

/// Whether the standard variables ask for trace export.
pub fn otlp_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
}

/// The protocol from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`;
/// a value we cannot serve is a start-up error naming the variable, not a silent fallback.
fn otlp_protocol() -> anyhow::Result<Protocol> {
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(v) = std::env::var(var) {
            return match v.trim().to_ascii_lowercase().as_str() {
                "grpc" => Ok(Protocol::Grpc),
                "http/protobuf" => Ok(Protocol::HttpBinary),
                other => Err(anyhow::anyhow!(
                    "invalid {var} {other:?}: expected \"grpc\" or \"http/protobuf\""
                )),
            };
        }
    }
    Ok(Protocol::HttpBinary)
}

/// Checks the OpenTelemetry settings without starting anything (for `check-config`).
pub fn check() -> anyhow::Result<Option<(String, &'static str)>> {
    let Some(endpoint) = otlp_endpoint() else {
        return Ok(None);
    };
    let protocol = match otlp_protocol()? {
        Protocol::Grpc => "grpc",
        _ => "http/protobuf",
    };
    Ok(Some((endpoint, protocol)))
}

fn tracer_provider() -> anyhow::Result<Option<SdkTracerProvider>> {
    if otlp_endpoint().is_none() {
        return Ok(None);
    }
    // The builders read the endpoint, headers, timeout and compression from the OTEL_*
    // variables themselves.
    let exporter = match otlp_protocol()? {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(Protocol::Grpc)
            .build()?,
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()?,
    };
    let resource = Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "tokenvend".to_owned()),
        )
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter, runtime::Tokio).build())
            .with_resource(resource)
            .build(),
    ))
}

pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid TOKENVEND_LOG filter {filter:?}: {e}"))?;
    let fmt_layer = match format {
        LogFormat::Human => fmt::layer()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let tracer = tracer_provider()?;
    // The log filter applies to the log lines only: exported spans do not depend on it.
    let otel_layer = tracer.as_ref().map(|provider| {
        let targets = OWN_CRATES
            .iter()
            .fold(Targets::new(), |t, c| t.with_target(*c, LevelFilter::INFO));
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tokenvend"))
            .with_filter(targets)
    });
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(otel_layer)
        .try_init()?;
    Ok(Telemetry { tracer })
}

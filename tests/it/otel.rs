//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a GetToken exports its server span
//! — child of the caller's W3C `traceparent` — and the spans of the miss path (fetch, lease,
//! store, provider request) to an OTLP receiver run by the test, over gRPC and over HTTP;
//! the log lines of the call carry the trace id; no secret or token reaches a span.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::response::IntoResponse;

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::{Span, span::SpanKind},
};
use prost::Message;
use serde_json::json;
use std::sync::Mutex;
use tokio_stream::wrappers::TcpListenerStream;

use crate::support::{CallOpts, Server, setup_connection, token_answer, token_provider, token_url};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const SECRET: &str = "otel-planted-client-secret-7d1e";
const TOKEN: &str = "otel-planted-access-token-93ab";

/// Every span the receiver got, with its service name.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut spans = Vec::new();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        self.0.lock().unwrap().extend(spans);
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace_id)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

struct Grpc(Received);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// An OTLP/gRPC receiver; its endpoint URL.
async fn grpc_receiver(received: Received) -> String {
    let (l, addr) = listener().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(received)))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    format!("http://{addr}")
}

/// An OTLP/HTTP (protobuf) receiver; its base URL (the exporter appends `/v1/traces`).
async fn http_receiver(received: Received) -> String {
    let (l, addr) = listener().await;
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        received.add(req);
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                            .into_response()
                    }
                    Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// Whether `span` descends from `ancestor` within `spans`.
fn descends(spans: &[Span], span: &Span, ancestor: &Span) -> bool {
    let mut at = span;
    for _ in 0..32 {
        if at.parent_span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == at.parent_span_id) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    false
}

async fn exported_trace(protocol: &str) {
    let received = Received::default();
    let endpoint = match protocol {
        "grpc" => grpc_receiver(received.clone()).await,
        _ => http_receiver(received.clone()).await,
    };
    let provider = token_provider(token_answer(TOKEN), 1).await;
    let server = Server::with_env(vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
        ("OTEL_SERVICE_NAME", "tokenvend-e2e".into()),
        // Export at once rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ("TOKENVEND_LOG", "info".into()),
    ])
    .await;
    let c = server.client().await;
    setup_connection(&c, "acme", "p", &token_url(&provider), SECRET, json!({})).await;

    let traced = CallOpts {
        metadata: vec![("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))],
        ..Default::default()
    };
    let token = c
        .call_opts(
            "TokenService/GetToken",
            json!({"tenant": "acme", "provider": "p"}),
            traced.clone(),
        )
        .await
        .unwrap();
    assert_eq!(token["access_token"], TOKEN);

    // The batch exporter sends within OTEL_BSP_SCHEDULE_DELAY; wait for the whole miss path.
    let wanted = [
        "tokenvend.v1.TokenService/GetToken",
        "get_token",
        "fetch_token",
        "refresh_lease",
        "provider.request",
        "store.get_connection",
        "store.try_lease",
        "store.finish_lease",
    ];
    let mut spans = Vec::new();
    crate::support::wait_until(
        Duration::from_secs(20),
        "the GetToken trace at the OTLP receiver",
        async || {
            spans = received.of_trace(TRACE_ID);
            wanted.iter().all(|w| !named(&spans, w).is_empty())
        },
    )
    .await;

    let server_span = named(&spans, "tokenvend.v1.TokenService/GetToken")[0];
    assert_eq!(
        hex(&server_span.parent_span_id),
        PARENT_SPAN_ID,
        "the caller's traceparent is the parent"
    );
    assert_eq!(server_span.kind, SpanKind::Server as i32);
    assert_eq!(attr(server_span, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attr(server_span, "rpc.service").as_deref(),
        Some("tokenvend.v1.TokenService")
    );
    assert_eq!(attr(server_span, "rpc.method").as_deref(), Some("GetToken"));
    assert_eq!(
        attr(server_span, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    let handler = named(&spans, "get_token")[0];
    assert_eq!(attr(handler, "tenant").as_deref(), Some("acme"));
    assert_eq!(attr(handler, "provider").as_deref(), Some("p"));
    assert_eq!(attr(handler, "outcome").as_deref(), Some("miss"));
    let fetch = named(&spans, "fetch_token")[0];
    assert_eq!(attr(fetch, "template").as_deref(), Some("generic"));
    assert_eq!(attr(fetch, "outcome").as_deref(), Some("ok"));
    let request = named(&spans, "provider.request")[0];
    assert_eq!(request.kind, SpanKind::Client as i32);
    assert_eq!(attr(request, "outcome").as_deref(), Some("ok"));
    assert_eq!(
        attr(request, "grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(
        attr(named(&spans, "store.try_lease")[0], "db.system").as_deref(),
        Some("sqlite")
    );
    for name in &wanted[1..] {
        for s in named(&spans, name) {
            assert!(
                descends(&spans, s, server_span),
                "{name} is not under the server span"
            );
        }
    }
    let service = received
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|(_, s)| hex(&s.trace_id) == TRACE_ID)
        .map(|(svc, _)| svc.clone());
    assert_eq!(service.as_deref(), Some("tokenvend-e2e"));

    // The provider got no trace context: the connection did not opt in.
    let asked = provider.received_requests().await.unwrap();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].headers.get("traceparent").is_none());
    // A connection that opts in sends the provider request's context onward.
    let opted = token_provider(token_answer(TOKEN), 1).await;
    setup_connection(
        &c,
        "acme",
        "q",
        &token_url(&opted),
        SECRET,
        json!({"propagate_trace_context": true}),
    )
    .await;
    c.call_opts(
        "TokenService/GetToken",
        json!({"tenant": "acme", "provider": "q"}),
        traced.clone(),
    )
    .await
    .unwrap();
    let asked = opted.received_requests().await.unwrap();
    let sent = asked[0]
        .headers
        .get("traceparent")
        .expect("a traceparent for the opted-in provider")
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[1], TRACE_ID, "{sent}");
    assert_ne!(
        parts[2], PARENT_SPAN_ID,
        "the provider request's own span: {sent}"
    );
    crate::support::wait_until(
        Duration::from_secs(20),
        "the provider request span named in the sent traceparent",
        async || {
            received
                .of_trace(TRACE_ID)
                .iter()
                .any(|s| s.name == "provider.request" && hex(&s.span_id) == parts[2])
        },
    )
    .await;

    // A call without traceparent starts a trace of its own (a root server span).
    c.call(
        "TokenService/GetToken",
        json!({"tenant": "acme", "provider": "p"}),
    )
    .await
    .unwrap();
    crate::support::wait_until(
        Duration::from_secs(20),
        "the root trace of a call without traceparent",
        async || {
            received.0.lock().unwrap().iter().any(|(_, s)| {
                s.name == "tokenvend.v1.TokenService/GetToken"
                    && s.parent_span_id.is_empty()
                    && hex(&s.trace_id) != TRACE_ID
            })
        },
    )
    .await;

    // The log lines of the call carry its trace id.
    let out = server.output();
    assert!(
        out.lines()
            .any(|l| l.contains("fetched a token from the provider") && l.contains(TRACE_ID)),
        "no log line of the call with its trace id:\n{out}"
    );
    // Nothing secret in any span, event or attribute.
    let all = format!("{:?}", received.0.lock().unwrap());
    for planted in [SECRET, TOKEN] {
        assert!(!all.contains(planted), "{planted} exported in a span");
        assert!(!out.contains(planted), "{planted} logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_becomes_the_parent_of_the_exported_spans_over_otlp_grpc() {
    exported_trace("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_becomes_the_parent_of_the_exported_spans_over_otlp_http() {
    exported_trace("http/protobuf").await;
}

#[tokio::test]
async fn an_unknown_otlp_protocol_fails_start_up_naming_the_variable() {
    let out = crate::support::refused_start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
    ]);
    assert!(
        out.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && out.contains("carrier-pigeon"),
        "{out}"
    );
}

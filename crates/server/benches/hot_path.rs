//! The server's share of a cached GetToken, in process, with allocations counted: the auth
//! layer (bearer key → principal) and the TokenService handler on a warm cache. Run with
//! `cargo bench -p tokenvend-server --bench hot_path`.
//!
//! What is not here: HTTP/2 framing, the gRPC codec and the network (tonic and hyper);
//! `scripts/bench-grpc` measures the whole call against grpcfloor.

use std::{convert::Infallible, sync::Arc};

use divan::{AllocProfiler, Bencher, black_box};
use futures::FutureExt;
use secrecy::SecretString;
use time::macros::datetime;
use tokenvend_core::{
    access::Authorizer,
    audit::Auditor,
    cache::CachedToken,
    clock::SystemClock,
    ids::{ProviderId, Subject, TenantId, TokenKey},
    testing::{UnreachableStore, warm_vendor},
};
use tokenvend_proto::v1::{
    GetTokenRequest,
    token_service_server::{TokenService, TokenServiceServer},
};
use tokenvend_server::{
    auth::{AuthLayer, Caller},
    grpc::token::TokenApi,
    limits::{Limits, Rate},
    metrics::Metrics,
};
use tower::{Layer, Service};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

const KEY: &str = "bench-bootstrap-admin-key-0123456789abcdef0123456789abcdef012345";

fn main() {
    divan::main();
}

fn api(metrics: bool) -> (TokenApi, Arc<Authorizer>) {
    let key = TokenKey {
        tenant: TenantId::parse("acme").unwrap(),
        provider: ProviderId::parse("p").unwrap(),
        subject: Subject::client(),
    };
    let token = Arc::new(CachedToken::new(
        SecretString::from("t".repeat(200)),
        Some(datetime!(2035-01-01 0:00 UTC)),
        vec!["read".into()],
        None,
        true,
        None,
    ));
    let vendor = Arc::new(warm_vendor(&key, token, Arc::new(SystemClock)));
    let (auditor, _writer) = Auditor::new(Arc::new(UnreachableStore), Arc::new(SystemClock));
    let limits = Arc::new(Limits::new(
        Rate {
            per_second: 50,
            burst: 200,
        },
        Default::default(),
    ));
    let metrics = metrics.then(|| Arc::new(Metrics::new(vendor.cache().clone())));
    let authorizer = Arc::new(Authorizer::new(Some(KEY), Arc::new(SystemClock)));
    let watch = tokenvend_server::grpc::watch::WatchDeps {
        authorizer: authorizer.clone(),
        stop: tokio_util::sync::CancellationToken::new(),
    };
    (
        TokenApi::new(vendor, auditor, limits, metrics, watch),
        authorizer,
    )
}

fn request(authorizer: &Authorizer) -> tonic::Request<GetTokenRequest> {
    let mut req = tonic::Request::new(GetTokenRequest {
        tenant: "acme".into(),
        provider: "p".into(),
        min_ttl_seconds: None,
        subject: String::new(),
    });
    req.extensions_mut().insert(Caller {
        principal: authorizer.authenticate_key(KEY).unwrap(),
        peer: None,
    });
    req
}

/// The handler on a hit: validation, the permission check, the cache, the response.
#[divan::bench(args = [false, true])]
fn get_token_handler_hit(b: Bencher, metrics: bool) {
    let (api, authorizer) = api(metrics);
    b.with_inputs(|| request(&authorizer))
        .bench_local_values(|req| {
            let answer = api
                .get_token(req)
                .now_or_never()
                .expect("a hit never waits");
            black_box(answer.expect("a token"))
        });
}

/// A service that answers at once, having checked that the caller was put on the request.
#[derive(Clone)]
struct Answer;

impl Service<http::Request<()>> for Answer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<()>) -> Self::Future {
        assert!(req.extensions().get::<Caller>().is_some());
        std::future::ready(Ok(http::Response::new(tonic::body::Body::empty())))
    }
}

/// The auth layer in front of a service that answers at once: key → principal, the
/// caller put on the request.
#[divan::bench]
fn auth_layer(b: Bencher) {
    let (api, authorizer) = api(false);
    drop(api);
    let (auditor, _writer) = Auditor::new(Arc::new(UnreachableStore), Arc::new(SystemClock));
    let limits = Arc::new(Limits::new(
        Rate {
            per_second: 50,
            burst: 200,
        },
        Default::default(),
    ));
    let mut service = AuthLayer::new(authorizer, auditor, limits).layer(Answer);
    b.with_inputs(|| {
        http::Request::builder()
            .uri("/tokenvend.v1.TokenService/GetToken")
            .header("authorization", format!("Bearer {KEY}"))
            .body(())
            .unwrap()
    })
    .bench_local_values(|req| black_box(service.call(req).now_or_never().unwrap().unwrap()));
}

/// A gRPC request as it leaves hyper: the framed message in the body, the caller on it.
fn grpc_request(authorizer: &Authorizer) -> http::Request<tonic::body::Body> {
    use prost::Message;
    let msg = GetTokenRequest {
        tenant: "acme".into(),
        provider: "p".into(),
        min_ttl_seconds: None,
        subject: String::new(),
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/tokenvend.v1.TokenService/GetToken")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(framed),
        )))
        .unwrap();
    req.extensions_mut().insert(Caller {
        principal: authorizer.authenticate_key(KEY).unwrap(),
        peer: None,
    });
    req
}

fn answer_of<S>(service: &mut S, req: http::Request<tonic::body::Body>) -> bytes::Bytes
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    let res = service
        .call(req)
        .now_or_never()
        .expect("a hit never waits")
        .unwrap();
    res.into_body()
        .collect()
        .now_or_never()
        .expect("the answer is ready")
        .unwrap()
        .to_bytes()
}

/// The GetToken service as tonic runs it, with the gRPC codec (request decoded, the
/// pre-encoded answer framed), called directly.
#[divan::bench]
fn grpc_service_direct(b: Bencher) {
    let (api, authorizer) = api(true);
    let mut service = TokenServiceServer::new(api);
    b.with_inputs(|| grpc_request(&authorizer))
        .bench_local_values(|req| black_box(answer_of(&mut service, req)));
}

/// The same through tonic's router (`Routes`, path routing by axum) with the services the
/// server registers beside it, as `Server::builder().add_service(..)` runs it.
#[divan::bench]
fn grpc_service_routed(b: Bencher) {
    let (api, authorizer) = api(true);
    let (_, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tokenvend_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let mut service = tonic::service::Routes::new(TokenServiceServer::new(api))
        .add_service(health)
        .add_service(reflection)
        .prepare();
    b.with_inputs(|| grpc_request(&authorizer))
        .bench_local_values(|req| black_box(answer_of(&mut service, req)));
}

/// The same through the server's `FastPath`: GetToken straight to its service, everything
/// else through the router above.
#[divan::bench]
fn grpc_service_fast_path(b: Bencher) {
    let (api, authorizer) = api(true);
    let (_, health) = tonic_health::server::health_reporter();
    let token = TokenServiceServer::new(api);
    let routes = tonic::service::Routes::new(token.clone()).add_service(health);
    let mut service = tokenvend_server::grpc::fast_path::FastPath::new(token, routes);
    b.with_inputs(|| grpc_request(&authorizer))
        .bench_local_values(|req| black_box(answer_of(&mut service, req)));
}

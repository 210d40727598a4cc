//! A panic in a handler costs that one call: the gRPC caller gets `INTERNAL` with a fixed
//! message and its connection keeps carrying calls; an HTTP client gets a 500.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Router, body::Body, routing::get};
use prost::Message;
use tokenvend_proto::v1::{
    GetTokenRequest, GetTokenResponse, InvalidateTokenRequest, InvalidateTokenResponse,
    token_service_client::TokenServiceClient,
    token_service_server::{TokenService, TokenServiceServer},
};
use tokenvend_server::panic::{GRPC_MESSAGE, HTTP_BODY, grpc_layer, http_layer};
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic::{Code, Request, Response, Status};
use tower::{Layer, ServiceExt};

/// Panics for tenant `panic`, answers otherwise.
struct Panicky;

#[tonic::async_trait]
impl TokenService for Panicky {
    async fn get_token(
        &self,
        req: Request<GetTokenRequest>,
    ) -> Result<Response<GetTokenResponse>, Status> {
        if req.get_ref().tenant == "panic" {
            panic!("a handler bug, with request data: {}", req.get_ref().tenant);
        }
        Ok(Response::new(GetTokenResponse::new(
            format!("token-for-{}", req.get_ref().tenant),
            "Bearer".into(),
            None,
            vec![],
        )))
    }

    async fn invalidate_token(
        &self,
        _: Request<InvalidateTokenRequest>,
    ) -> Result<Response<InvalidateTokenResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type WatchTokenStream = tokio_stream::Empty<Result<GetTokenResponse, Status>>;

    async fn watch_token(
        &self,
        _: Request<GetTokenRequest>,
    ) -> Result<Response<Self::WatchTokenStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

fn get_token(tenant: &str) -> GetTokenRequest {
    GetTokenRequest {
        tenant: tenant.into(),
        provider: "p".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_panicking_call_answers_internal_and_the_connection_carries_on() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let incoming = TcpListenerStream::new(listener).map({
        let accepted = accepted.clone();
        move |conn| {
            accepted.fetch_add(1, Ordering::SeqCst);
            conn
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(grpc_layer())
            .add_service(TokenServiceServer::new(Panicky))
            .serve_with_incoming(incoming),
    );

    let mut client = TokenServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for round in 0..2 {
        let err = client.get_token(get_token("panic")).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal, "round {round}: {err:?}");
        assert_eq!(err.message(), GRPC_MESSAGE, "round {round}");
        // The same channel: the connection survived the panic.
        let ok = client.get_token(get_token("acme")).await.unwrap();
        assert_eq!(ok.into_inner().access_token, "token-for-acme");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "every call went over the first connection"
    );
}

#[tokio::test]
async fn the_panic_answer_is_a_trailers_only_grpc_response() {
    let svc = grpc_layer().layer(TokenServiceServer::new(Panicky));
    let msg = get_token("panic").encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&msg);
    let req = http::Request::post("/tokenvend.v1.TokenService/GetToken")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Body::from(framed)))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    let h = res.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "13");
    let message = h["grpc-message"].to_str().unwrap();
    assert_eq!(message.replace("%20", " "), GRPC_MESSAGE);
    // Trailers-only: nothing in the body, not even a frame header.
    let body = axum::body::to_bytes(Body::new(res.into_body()), 1024)
        .await
        .unwrap();
    assert!(body.is_empty(), "{body:?}");
}

async fn boom() -> &'static str {
    panic!("a route bug")
}

#[tokio::test]
async fn a_panicking_route_answers_500() {
    let app = Router::new()
        .route("/boom", get(boom))
        .route("/ok", get(|| async { "ok" }))
        .layer(http_layer());
    let res = app
        .clone()
        .oneshot(http::Request::get("/boom").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    assert_eq!(body, HTTP_BODY);
    let res = app
        .oneshot(http::Request::get("/ok").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
}

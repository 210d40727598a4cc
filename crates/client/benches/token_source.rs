//! `TokenHandle::token()` on a hit: the calling service's whole cost of a token once its
//! stream has pushed one. Run with `cargo bench -p tokenvend-client --bench token_source`.
//!
//! An in-process tokenvend stand-in answers WatchToken with one token valid for an hour.

use std::{sync::OnceLock, time::Duration};

use divan::Bencher;
use futures::FutureExt;
use tokenvend_client::{Config, TokenHandle, TokenSource};
use tokenvend_proto::v1::{
    GetTokenRequest, GetTokenResponse, InvalidateTokenRequest, InvalidateTokenResponse,
    token_service_server::{TokenService, TokenServiceServer},
};
use tonic::{Request, Response, Status};

fn main() {
    divan::main();
}

struct OneToken;

#[allow(clippy::disallowed_methods)] // no tokenvend clock in a client's bench
fn answer() -> GetTokenResponse {
    let expires = std::time::SystemTime::now() + Duration::from_secs(3600);
    let secs = expires
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    GetTokenResponse::new(
        "bench-token".into(),
        "Bearer".into(),
        Some(prost_types::Timestamp {
            seconds: secs as i64,
            nanos: 0,
        }),
        vec![],
    )
}

#[tonic::async_trait]
impl TokenService for OneToken {
    async fn get_token(
        &self,
        _: Request<GetTokenRequest>,
    ) -> Result<Response<GetTokenResponse>, Status> {
        Ok(Response::new(answer()))
    }

    async fn invalidate_token(
        &self,
        _: Request<InvalidateTokenRequest>,
    ) -> Result<Response<InvalidateTokenResponse>, Status> {
        Err(Status::unimplemented("bench"))
    }

    type WatchTokenStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<GetTokenResponse, Status>> + Send>>;

    async fn watch_token(
        &self,
        _: Request<GetTokenRequest>,
    ) -> Result<Response<Self::WatchTokenStream>, Status> {
        let s = futures::stream::once(async { Ok(answer()) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(s)))
    }
}

use futures::StreamExt;

/// A handle whose stream has delivered its token (the runtime lives in its own thread).
fn handle() -> &'static TokenHandle {
    static HANDLE: OnceLock<TokenHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(TokenServiceServer::new(OneToken))
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                            listener,
                        )),
                );
                let source = TokenSource::new(Config {
                    endpoints: vec![format!("http://{addr}")],
                    api_key: Some("tvk_bench".into()),
                    min_ttl: Duration::from_secs(60),
                })
                .unwrap();
                let handle = source.handle("acme", "enode", "");
                while handle.cached().is_none() {
                    let t = handle.token().await.unwrap();
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle.changed(&t)).await;
                }
                tx.send(handle).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap()
    })
}

/// One caller thread, then several at once on the same handle.
#[divan::bench(threads = [1, 2, 4], sample_count = 200, sample_size = 2000)]
fn token_hit(b: Bencher) {
    let h = handle();
    b.bench(|| h.token().now_or_never().unwrap().unwrap());
}

//! `TokenSource` against an in-process stand-in for tokenvend whose answers the tests choose:
//! what comes from memory, what from GetToken, and that min_ttl always holds.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokenvend_client::{Config, TokenSource};
use tokenvend_proto::v1::{
    GetTokenRequest, GetTokenResponse, InvalidateTokenRequest, InvalidateTokenResponse,
    token_service_server::{TokenService, TokenServiceServer},
};
use tonic::{Request, Response, Status};

#[allow(clippy::disallowed_methods)] // the client's own clock: no tokenvend clock here
fn expiring_in(secs: u64) -> Option<prost_types::Timestamp> {
    let at = std::time::SystemTime::now() + Duration::from_secs(secs);
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
    Some(prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: 0,
    })
}

/// Pushes `from-stream` (living `stream_secs`) on WatchToken; answers GetToken with
/// `from-get`, living an hour; counts GetTokens, and WatchTokens of provider `p`.
#[derive(Clone)]
struct StandIn {
    stream_secs: u64,
    gets: Arc<AtomicUsize>,
    watches: Arc<AtomicUsize>,
    seen_key: Arc<std::sync::Mutex<Option<String>>>,
}

#[tonic::async_trait]
impl TokenService for StandIn {
    async fn get_token(
        &self,
        req: Request<GetTokenRequest>,
    ) -> Result<Response<GetTokenResponse>, Status> {
        assert_eq!(req.get_ref().min_ttl_seconds, Some(60));
        self.gets.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(GetTokenResponse::new(
            "from-get".into(),
            "Bearer".into(),
            expiring_in(3600),
            vec![],
        )))
    }

    async fn invalidate_token(
        &self,
        _: Request<InvalidateTokenRequest>,
    ) -> Result<Response<InvalidateTokenResponse>, Status> {
        Ok(Response::new(InvalidateTokenResponse { invalidated: true }))
    }

    type WatchTokenStream = Pin<Box<dyn Stream<Item = Result<GetTokenResponse, Status>> + Send>>;

    async fn watch_token(
        &self,
        req: Request<GetTokenRequest>,
    ) -> Result<Response<Self::WatchTokenStream>, Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        *self.seen_key.lock().unwrap() = auth;
        if req.get_ref().provider == "p" {
            self.watches.fetch_add(1, Ordering::SeqCst);
        }
        let token = GetTokenResponse::new(
            "from-stream".into(),
            "Bearer".into(),
            expiring_in(self.stream_secs),
            vec![],
        );
        let s = futures::stream::once(async move { Ok(token) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(s)))
    }
}

async fn serve(stand_in: StandIn) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TokenServiceServer::new(stand_in))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

fn stand_in(stream_secs: u64) -> StandIn {
    StandIn {
        stream_secs,
        gets: Arc::default(),
        watches: Arc::default(),
        seen_key: Arc::default(),
    }
}

fn source(endpoint: String) -> TokenSource {
    TokenSource::new(Config {
        endpoints: vec![endpoint],
        api_key: Some("tvk_test_key".into()),
        min_ttl: Duration::from_secs(60),
    })
    .unwrap()
}

/// Once the stream has pushed a token, `token()` answers from memory: no more calls.
#[tokio::test]
async fn a_pushed_token_is_answered_from_memory() {
    let s = stand_in(3600);
    let source = source(serve(s.clone()).await);
    // A token of another key (GetToken's), to wait for this key's first push against.
    let other = source.token("acme", "q", "").await.unwrap();
    let handle = source.handle("acme", "p", "");
    let token = handle.changed(&other).await;
    assert_eq!(token.access_token(), "from-stream");
    let gets = s.gets.load(Ordering::SeqCst);
    for _ in 0..1000 {
        assert_eq!(handle.token().await.unwrap().access_token(), "from-stream");
    }
    assert_eq!(
        s.gets.load(Ordering::SeqCst),
        gets,
        "no GetToken once pushed"
    );
    // The same key again: the same stream, no new one (nor a call).
    assert_eq!(s.watches.load(Ordering::SeqCst), 1, "one stream for p");
    let again = source.handle("acme", "p", "");
    assert_eq!(again.token().await.unwrap().access_token(), "from-stream");
    assert_eq!(s.watches.load(Ordering::SeqCst), 1);
    assert_eq!(s.gets.load(Ordering::SeqCst), gets);
    assert_eq!(
        s.seen_key.lock().unwrap().as_deref(),
        Some("Bearer tvk_test_key")
    );
    assert!(!format!("{token:?}").contains("from-stream"));
}

/// A pushed token that would live less than min_ttl is never handed out: GetToken is asked.
#[tokio::test]
async fn a_token_below_min_ttl_is_never_handed_out() {
    let s = stand_in(30);
    let source = source(serve(s.clone()).await);
    // A token of another key (GetToken's), to wait for this key's first push against.
    let other = source.token("acme", "q", "").await.unwrap();
    assert_eq!(other.access_token(), "from-get");
    let handle = source.handle("acme", "p", "");
    let pushed = handle.changed(&other).await;
    assert_eq!(pushed.access_token(), "from-stream");
    assert!(handle.cached().is_none(), "30 s left < min_ttl 60 s");
    let before = s.gets.load(Ordering::SeqCst);
    let t = handle.token().await.unwrap();
    assert_eq!(t.access_token(), "from-get");
    assert_eq!(s.gets.load(Ordering::SeqCst), before + 1);
}

/// Nothing listening: a typed error, not a hang or a panic; the stream keeps retrying.
#[tokio::test]
async fn an_unreachable_tokenvend_is_an_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let source = source(format!("http://{addr}"));
    let err = source
        .token("acme", "p", "")
        .await
        .expect_err("nothing there");
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(
        TokenSource::new(Config {
            endpoints: vec![],
            api_key: None,
            min_ttl: Duration::from_secs(60),
        })
        .is_err()
    );
}

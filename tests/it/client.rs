//! tokenvend-client against the real binary: the token from memory, pushed replacements,
//! a replica lost under it, and a provider's 401 reported.

use std::time::Duration;

use serde_json::json;
use tokenvend_client::{Config, TokenSource};

use crate::{support::*, watch::fleet};

/// The first replica is killed (`kill -9`) under a client watching through it: `token()`
/// keeps answering the valid token from memory, the stream resumes on the second replica,
/// and a replacement made there reaches the client.
#[tokio::test]
async fn a_killed_replica_costs_the_client_nothing() {
    let (mut servers, _admin, _mock, asked) = fleet(3600, vec![no_invalidate_limit()]).await;
    let source = TokenSource::new(Config {
        endpoints: vec![servers[0].grpc.clone(), servers[1].grpc.clone()],
        api_key: Some(ADMIN_KEY.into()),
        min_ttl: Duration::from_secs(60),
    })
    .unwrap();
    let handle = source.handle("acme", "p", "");
    let first = handle.token().await.expect("a token");
    assert_eq!(first.access_token(), "tok-1");

    servers[0].kill().await;
    for _ in 0..100 {
        let t = handle.token().await.expect("answered from memory");
        assert_eq!(t.access_token(), "tok-1");
    }

    // A replacement made on the surviving replica reaches the client through a stream,
    // which can only be open there now.
    let other = servers[1].client().await;
    let r = other
        .call(
            "TokenService/InvalidateToken",
            json!({"tenant": "acme", "provider": "p", "access_token": "tok-1"}),
        )
        .await
        .unwrap();
    assert_eq!(r["invalidated"], true);
    let pushed = tokio::time::timeout(Duration::from_secs(30), handle.changed(&first))
        .await
        .expect("the replacement pushed within 30 s");
    assert_eq!(pushed.access_token(), "tok-2");
    assert_eq!(handle.token().await.unwrap().access_token(), "tok-2");
    assert_eq!(asked.get(), 2);
}

/// A provider's 401: `invalidate` drops the token here and at tokenvend; the next
/// `token()` is the replacement, and the replacement was fetched once.
#[tokio::test]
async fn invalidate_gets_a_new_token() {
    let (servers, _admin, _mock, asked) = fleet(3600, vec![no_invalidate_limit()]).await;
    let source = TokenSource::new(Config {
        endpoints: vec![servers[1].grpc.clone()],
        api_key: Some(ADMIN_KEY.into()),
        min_ttl: Duration::from_secs(60),
    })
    .unwrap();
    let handle = source.handle("acme", "p", "");
    let first = handle.token().await.unwrap();
    assert_eq!(first.access_token(), "tok-1");
    assert!(handle.invalidate(first.access_token()).await.unwrap());
    let next = handle.token().await.unwrap();
    assert_eq!(next.access_token(), "tok-2");
    // A second report of the dead token changes nothing.
    assert!(!handle.invalidate(first.access_token()).await.unwrap());
    assert_eq!(handle.token().await.unwrap().access_token(), "tok-2");
    assert_eq!(asked.get(), 2);
    assert!(
        !format!("{next:?}").contains("tok-2"),
        "Debug shows the token"
    );
}

/// Refusals come back typed: an unknown key is UNAUTHENTICATED, not a hang.
#[tokio::test]
async fn a_refused_key_is_an_error_not_a_token() {
    let (servers, _admin, _mock, _asked) = fleet(3600, vec![]).await;
    let source = TokenSource::new(Config {
        endpoints: vec![servers[0].grpc.clone()],
        api_key: Some("tvk_unknown_key".into()),
        min_ttl: Duration::from_secs(60),
    })
    .unwrap();
    let err = source.token("acme", "p", "").await.expect_err("refused");
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err}");
}

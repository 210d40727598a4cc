//! WatchToken: the token pushed to every watcher, on every replica, when it is replaced.

use std::time::Duration;

use serde_json::json;
use tokenvend_proto::v1::{
    GetTokenRequest, GetTokenResponse, token_service_client::TokenServiceClient,
};
use tonic::{Code, Status, Streaming, transport::Channel};

use crate::support::*;

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// A WatchToken stream on a new connection to `addr` for acme/p, as `key`.
pub async fn watch(
    addr: &str,
    key: &str,
    min_ttl: i64,
) -> Result<Streaming<GetTokenResponse>, Status> {
    watch_over(connect(addr).await, key, min_ttl).await
}

/// A WatchToken stream on `channel` (an HTTP/2 connection carries many) for acme/p.
async fn watch_over(
    channel: Channel,
    key: &str,
    min_ttl: i64,
) -> Result<Streaming<GetTokenResponse>, Status> {
    let mut req = tonic::Request::new(GetTokenRequest {
        tenant: "acme".into(),
        provider: "p".into(),
        min_ttl_seconds: Some(min_ttl),
        subject: String::new(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    TokenServiceClient::new(channel)
        .watch_token(req)
        .await
        .map(|r| r.into_inner())
}

/// The stream's next message, or the status that ended it (OK if it just ended).
pub async fn next(s: &mut Streaming<GetTokenResponse>) -> Result<GetTokenResponse, Status> {
    tokio::time::timeout(Duration::from_secs(30), s.message())
        .await
        .expect("a message or the end of the stream within 30 s")
        .and_then(|m| m.ok_or_else(|| Status::ok("the stream ended without a status")))
}

fn expiry(t: &GetTokenResponse) -> time::OffsetDateTime {
    let ts = t.expires_at.as_ref().expect("an expiry");
    time::OffsetDateTime::from_unix_timestamp(ts.seconds).unwrap()
        + time::Duration::nanoseconds(ts.nanos.into())
}

/// Two replicas on PostgreSQL, tenant acme with connection p to a provider answering
/// `tok-1`, `tok-2`, … each living `lifetime` seconds; its request count.
pub async fn fleet(
    lifetime: u64,
    env: Vec<(&'static str, String)>,
) -> (Vec<Server>, Client, MockServer, Asked) {
    let (mock, asked) = numbered_provider(move |n| {
        answer(json!({"access_token": format!("tok-{n}"), "expires_in": lifetime}))
    })
    .await;
    let url = tokenvend_testkit::postgres::PgCluster::shared().fresh_database();
    let servers = Server::replicas(2, &url, env).await;
    let admin = servers[0].client().await;
    setup_connection(
        &admin,
        "acme",
        "p",
        &token_url(&mock),
        "s3cret-watch",
        json!({}),
    )
    .await;
    (servers, admin, mock, asked)
}

use wiremock::MockServer;

/// Refresh-ahead renews a watched token (nobody calls GetToken) and every watcher, on
/// either replica, gets the new one before the old one falls below its `min_ttl` — with
/// one provider request per token fleet-wide.
#[tokio::test]
async fn a_renewed_token_reaches_watchers_on_every_replica_before_their_min_ttl() {
    let env = vec![
        ("TOKENVEND_DEFAULT_MIN_TTL", "1s".to_owned()),
        ("TOKENVEND_REFRESH_TICK", "100ms".to_owned()),
    ];
    let (servers, _admin, _mock, asked) = fleet(10, env).await;
    let min_ttl = 3;
    let mut streams = Vec::new();
    for s in &servers {
        for _ in 0..2 {
            streams.push(
                watch(&s.grpc, ADMIN_KEY, min_ttl)
                    .await
                    .expect("WatchToken"),
            );
        }
    }
    let mut first = Vec::new();
    for s in &mut streams {
        first.push(next(s).await.expect("the current token at once"));
    }
    assert!(first.iter().all(|t| t.access_token == "tok-1"), "{first:?}");
    assert_eq!(asked.get(), 1, "one provider request for the first token");
    let deadline = expiry(&first[0]) - time::Duration::seconds(min_ttl);
    for s in &mut streams {
        let renewed = next(s).await.expect("the renewed token");
        let at = now();
        assert_eq!(renewed.access_token, "tok-2");
        assert!(
            at < deadline,
            "pushed at {at}, after the old token fell below min_ttl ({deadline})"
        );
        assert!(expiry(&renewed) > expiry(&first[0]));
    }
    assert_eq!(
        asked.get(),
        2,
        "one provider request for the renewal, fleet-wide"
    );
    no_secret_in_output(&servers);
}

/// A caller reporting the token dead on one replica: every watcher on both gets the
/// replacement, fetched once.
#[tokio::test]
async fn an_invalidation_reaches_every_watcher() {
    let (servers, _admin, _mock, asked) = fleet(3600, vec![no_invalidate_limit()]).await;
    let mut streams = Vec::new();
    for s in &servers {
        streams.push(watch(&s.grpc, ADMIN_KEY, 60).await.expect("WatchToken"));
    }
    for s in &mut streams {
        assert_eq!(next(s).await.unwrap().access_token, "tok-1");
    }
    let reporter = servers[1].client().await;
    let r = reporter
        .call(
            "TokenService/InvalidateToken",
            json!({"tenant": "acme", "provider": "p", "access_token": "tok-1"}),
        )
        .await
        .unwrap();
    assert_eq!(r["invalidated"], true);
    for s in &mut streams {
        assert_eq!(next(s).await.unwrap().access_token, "tok-2");
    }
    assert_eq!(asked.get(), 2, "the replacement fetched once");
    no_secret_in_output(&servers);
}

/// Neither the client secret nor a token in anything the replicas printed (debug level).
fn no_secret_in_output(servers: &[Server]) {
    for s in servers {
        let out = s.output();
        for secret in ["s3cret-watch", "tok-1", "tok-2"] {
            assert!(!out.contains(secret), "{secret} in the output:\n{out}");
        }
    }
}

async fn caller_key(admin: &Client, name: &str) -> (String, String) {
    admin
        .call(
            "AdminService/CreatePrincipal",
            json!({"principal": name, "role": "ROLE_CALLER"}),
        )
        .await
        .unwrap();
    admin
        .call(
            "AdminService/GrantPermission",
            json!({"principal": name, "tenant": "acme", "provider": "p"}),
        )
        .await
        .unwrap();
    let created = admin
        .call("AdminService/CreateApiKey", json!({"principal": name}))
        .await
        .unwrap();
    (
        created["api_key"].as_str().unwrap().to_owned(),
        created["key_id"].as_str().unwrap().to_owned(),
    )
}

/// A stream for `key` on `addr`, once the key and its permission have reached that replica
/// (through the change feed, from the replica where they were made: until then it refuses,
/// as GetToken would).
async fn opened(addr: &str, key: &str) -> Streaming<GetTokenResponse> {
    let mut opened = None;
    wait_until(
        Duration::from_secs(10),
        "the key and grant reach the replica",
        async || {
            opened = watch(addr, key, 60).await.ok();
            opened.is_some()
        },
    )
    .await;
    opened.unwrap()
}

/// Streams follow the caller's access: a removed permission ends them with
/// PERMISSION_DENIED, a revoked key with UNAUTHENTICATED — on the replica where the change
/// was made and on the other one. Watching needs the same permission as GetToken.
#[tokio::test]
async fn revoking_a_key_or_a_permission_ends_its_streams() {
    let (servers, admin, _mock, _asked) = fleet(3600, vec![]).await;
    let (key, key_id) = caller_key(&admin, "billing").await;

    let mut streams = Vec::new();
    for s in &servers {
        let mut stream = opened(&s.grpc, &key).await;
        assert_eq!(next(&mut stream).await.unwrap().access_token, "tok-1");
        streams.push(stream);
    }
    admin
        .call(
            "AdminService/RevokePermission",
            json!({"principal": "billing", "tenant": "acme", "provider": "p"}),
        )
        .await
        .unwrap();
    for s in &mut streams {
        let end = next(s).await.expect_err("the stream ends");
        assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    }
    let refused = watch(&servers[1].grpc, &key, 60)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied);

    admin
        .call(
            "AdminService/GrantPermission",
            json!({"principal": "billing", "tenant": "acme", "provider": "*"}),
        )
        .await
        .unwrap();
    let mut streams = Vec::new();
    for s in &servers {
        let mut stream = opened(&s.grpc, &key).await;
        assert_eq!(next(&mut stream).await.unwrap().access_token, "tok-1");
        streams.push(stream);
    }
    admin
        .call("AdminService/RevokeApiKey", json!({"key_id": key_id}))
        .await
        .unwrap();
    for s in &mut streams {
        let end = next(s).await.expect_err("the stream ends");
        assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
        assert!(end.message().contains("revoked"), "{end:?}");
    }
    for s in &servers {
        assert!(!s.output().contains(&key), "the API key in the output");
    }
}

/// A provider outage while the token is valid does not end the stream; a definitive
/// error does (the connection deleted: NOT_FOUND).
#[tokio::test]
async fn an_outage_keeps_the_stream_a_deleted_connection_ends_it() {
    let (servers, admin, mock, asked) = fleet(3600, vec![no_invalidate_limit()]).await;
    let mut stream = watch(&servers[0].grpc, ADMIN_KEY, 60).await.unwrap();
    assert_eq!(next(&mut stream).await.unwrap().access_token, "tok-1");
    // The provider goes down, and the token is reported dead: the watcher cannot get a new
    // one, but keeps its stream.
    mock.reset().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .mount(&mock)
        .await;
    let c = servers[0].client().await;
    c.call(
        "TokenService/InvalidateToken",
        json!({"tenant": "acme", "provider": "p", "access_token": "tok-1"}),
    )
    .await
    .unwrap();
    // The watcher's renewal attempt reaches the provider and fails…
    wait_until(
        Duration::from_secs(10),
        "the watcher asked the provider",
        async || !mock.received_requests().await.unwrap().is_empty(),
    )
    .await;
    assert_eq!(asked.get(), 1);
    // One line an operator can act on.
    wait_until(
        Duration::from_secs(10),
        "the renewal failure is logged",
        async || {
            servers[0]
                .output()
                .contains("a watched token could not be renewed")
        },
    )
    .await;
    // …and the stream is still open: the next event is the deletion's NOT_FOUND.
    admin
        .call(
            "AdminService/DeleteConnection",
            json!({"tenant": "acme", "provider": "p"}),
        )
        .await
        .unwrap();
    let end = next(&mut stream).await.expect_err("the stream ends");
    assert_eq!(end.code(), Code::NotFound, "{end:?}");
}

/// Draining ends the streams with UNAVAILABLE (clients reconnect elsewhere) and the
/// replica exits without waiting out its drain deadline.
#[tokio::test]
async fn shutdown_ends_streams_with_unavailable() {
    let env = vec![
        ("TOKENVEND_SHUTDOWN_DELAY", "0s".to_owned()),
        ("TOKENVEND_SHUTDOWN_TIMEOUT", "60s".to_owned()),
    ];
    let (mut servers, _admin, _mock, _asked) = fleet(3600, env).await;
    let mut stream = watch(&servers[0].grpc, ADMIN_KEY, 60).await.unwrap();
    assert_eq!(next(&mut stream).await.unwrap().access_token, "tok-1");
    servers[0].proc.signal(libc::SIGTERM);
    let end = next(&mut stream).await.expect_err("the stream ends");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("reconnect"), "{end:?}");
    // Well within the 60 s drain deadline: nothing waits for the stream.
    servers[0]
        .proc
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits");
    let out = servers[0].output();
    assert!(out.contains("drained: every call finished"), "{out}");
    // The other replica carries on.
    let mut other = watch(&servers[1].grpc, ADMIN_KEY, 60).await.unwrap();
    assert_eq!(next(&mut other).await.unwrap().access_token, "tok-1");
}

/// 10 000 streams on one replica: each costs a bounded few KiB (the stream holds one token,
/// not a queue), and one replacement reaches all of them, fetched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_with_bounded_memory() {
    const STREAMS: usize = 10_000;
    const PER_CONNECTION: usize = 100;
    let (mock, asked) = numbered_provider(|n| {
        answer(json!({"access_token": format!("tok-{n}"), "expires_in": 3600}))
    })
    .await;
    let server = Server::with_env(vec![
        no_invalidate_limit(),
        ("TOKENVEND_LOG", "info".into()),
    ])
    .await;
    let admin = server.client().await;
    setup_connection(
        &admin,
        "acme",
        "p",
        &token_url(&mock),
        "s3cret-many",
        json!({}),
    )
    .await;
    let pid = server.proc.pid();

    let mut channels = Vec::new();
    let mut streams = Vec::with_capacity(STREAMS);
    // The first connection and stream before measuring: the token, the caches, the pools.
    let mut first = watch(&server.grpc, ADMIN_KEY, 60).await.unwrap();
    assert_eq!(next(&mut first).await.unwrap().access_token, "tok-1");
    let before = rss_kib(pid);
    for i in 0..STREAMS {
        if i % PER_CONNECTION == 0 {
            channels.push(connect(&server.grpc).await);
        }
        let mut s = watch_over(channels.last().unwrap().clone(), ADMIN_KEY, 60)
            .await
            .unwrap();
        assert_eq!(next(&mut s).await.unwrap().access_token, "tok-1");
        streams.push(s);
    }
    let open = rss_kib(pid);
    let per_stream = (open.saturating_sub(before)) as f64 / STREAMS as f64;
    eprintln!("{STREAMS} streams: {before} KiB -> {open} KiB, {per_stream:.1} KiB each");
    assert!(
        per_stream < 16.0,
        "{per_stream:.1} KiB per open stream ({before} KiB -> {open} KiB)"
    );

    admin
        .call(
            "TokenService/InvalidateToken",
            json!({"tenant": "acme", "provider": "p", "access_token": "tok-1"}),
        )
        .await
        .unwrap();
    for s in &mut streams {
        assert_eq!(next(s).await.unwrap().access_token, "tok-2");
    }
    assert_eq!(asked.get(), 2, "one fetch for 10 000 watchers");
    let after = rss_kib(pid);
    assert!(
        after.saturating_sub(before) as f64 / (STREAMS as f64) < 16.0,
        "after the push: {before} KiB -> {after} KiB"
    );
}

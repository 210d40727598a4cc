//! Several replicas on one PostgreSQL: one provider request per refresh fleet-wide, refresh
//! tokens never presented twice, a replica killed mid-refresh, and database outages.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use serde_json::json;
use tokenvend_testkit::postgres::PgCluster;
use tonic::Code;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::support::{
    CallOpts, Client, Opts, Server, answer, authorize, expires_at, grant_connection,
    grant_provider, health, no_invalidate_limit, now, numbered_provider, public_url, reason,
    refresh_tokens_presented, report, rotated, setup_connection, token_answer, token_provider,
    token_url, user, wait_for_refresh, wait_until,
};

async fn clients(servers: &[Server], per_server: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for s in servers {
        for _ in 0..per_server {
            out.push(s.client().await);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_one_provider_request_for_a_cold_key() {
    let answer = token_answer("fleet-token").set_delay(Duration::from_millis(500));
    let provider = token_provider(answer, 1).await;
    let url = PgCluster::shared().fresh_database();
    let servers = Server::replicas(3, &url, vec![public_url()]).await;
    let admin = servers[0].client().await;
    setup_connection(&admin, "acme", "p", &token_url(&provider), "s", json!({})).await;
    let clients = clients(&servers, 3).await;
    let calls = (0..1000).map(|i| {
        let c = clients[i % clients.len()].clone();
        async move { c.get_token("acme", "p").await }
    });
    for r in join_all(calls).await {
        assert_eq!(r.expect("GetToken")["access_token"], "fleet-token");
    }
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
    // See stampede.rs: a fresh cooperative budget before the MockServer's blocking drop.
    tokio::task::yield_now().await;
    drop(provider);
}

async fn authorized(c: &Client, mock: &MockServer, subject: &str) {
    grant_connection(c, mock, None).await;
    authorize(c, subject).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_stampede_across_replicas_presents_the_refresh_token_once() {
    let mock = grant_provider(|n| rotated(n).set_delay(Duration::from_millis(300))).await;
    let servers = Server::grant_replicas(3).await;
    let admin = servers[0].client().await;
    authorized(&admin, &mock, "alice").await;
    let clients = clients(&servers, 2).await;
    for round in 1..=2 {
        let dead = if round == 1 {
            "at-0".to_owned()
        } else {
            format!("at-{}", round - 1)
        };
        // Reported on every replica, as callers everywhere would: the change feed carries an
        // invalidation to the other replicas within milliseconds, but asynchronously, and
        // the stampede below must not race it. The first report drops it in the store.
        let mut invalidated = Vec::new();
        for c in clients.iter().step_by(2) {
            let inv = report(c, "alice", &dead).await.unwrap();
            invalidated.push(inv["invalidated"] == true);
        }
        assert!(invalidated[0], "the first report drops the token");
        let calls = (0..300).map(|i| {
            let c = clients[i % clients.len()].clone();
            async move { c.user_token("alice").await }
        });
        for r in join_all(calls).await {
            assert_eq!(r.expect("GetToken")["access_token"], format!("at-{round}"));
        }
    }
    // Each refresh token was presented exactly once: rt-0, then the rotated rt-1.
    assert_eq!(refresh_tokens_presented(&mock).await, ["rt-0", "rt-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_refresh_loses_nothing() {
    // The provider consumes the refresh token on the first request and holds its answer;
    // the refresh token is then spent, so presenting it again is invalid_grant. It notes
    // when each refresh arrives.
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = arrivals.clone();
    let mock = grant_provider(move |n| {
        noted.lock().unwrap().push(tokio::time::Instant::now());
        if n == 1 {
            ResponseTemplate::new(200)
                .set_body_json(
                    json!({"access_token": "at-1", "expires_in": 3600, "refresh_token": "rt-1"}),
                )
                .set_delay(Duration::from_secs(60))
        } else {
            ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"}))
        }
    })
    .await;
    let url = PgCluster::shared().fresh_database();
    // A lease shorter than the refresh attempt's deadline (provider timeout 1 s + 3 s): the
    // takeover waits for the attempt, not only for the lease.
    let lease_ttl = Duration::from_secs(2);
    let attempt_deadline = Duration::from_secs(4);
    let env = vec![
        public_url(),
        ("TOKENVEND_PROVIDER_TIMEOUT", "1s".into()),
        ("TOKENVEND_LEASE_TTL", "2s".into()),
        no_invalidate_limit(),
    ];
    let mut servers = Server::replicas(2, &url, env).await;
    let a = servers[0].client().await;
    let b = servers[1].client().await;
    authorized(&a, &mock, "alice").await;
    report(&a, "alice", "at-0").await.unwrap();

    // Replica A takes the lease and sends the refresh; the provider holds it.
    let held = {
        let a = a.clone();
        tokio::spawn(async move { a.user_token("alice").await })
    };
    wait_for_refresh(&mock).await;
    assert_eq!(
        refresh_tokens_presented(&mock).await,
        ["rt-0"],
        "A's refresh reached the provider"
    );
    // kill -9 A while the provider holds the answer.
    servers[0].kill().await;
    let _ = held.await;

    // Replica B answers once A's attempt deadline has passed: A's refresh token may have
    // been consumed, so B tries it once, gets invalid_grant, and flags the grant.
    let err = b
        .call_opts(
            "TokenService/GetToken",
            user("alice"),
            CallOpts {
                timeout: Some(lease_ttl + attempt_deadline + Duration::from_secs(10)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_deref()),
        (Code::FailedPrecondition, Some("REAUTHORIZATION_REQUIRED")),
        "{err:?}"
    );
    assert!(
        servers[1].output().contains("never finished"),
        "B knew the earlier attempt was unfinished"
    );
    // Never retried: asking again answers from the grant's status, not the provider.
    let err = b.user_token("alice").await.unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("REAUTHORIZATION_REQUIRED"));
    assert_eq!(
        refresh_tokens_presented(&mock).await,
        ["rt-0", "rt-0"],
        "presented once by A, once by B, never again"
    );
    // Never in flight twice: B presented it only after A's attempt could no longer be.
    let arrivals = arrivals.lock().unwrap().clone();
    assert!(
        arrivals[1] - arrivals[0] >= attempt_deadline,
        "B sent the refresh token {:?} after A",
        arrivals[1] - arrivals[0]
    );
    drop(servers.remove(0));
}

/// Asks for `provider`'s token every 100 ms until it fails (its provider is down): every
/// token served is still valid; returns the final error and how many were served.
async fn until_unavailable(c: &Client, provider: &str) -> (tonic::Status, usize) {
    let req = json!({"tenant": "acme", "provider": provider, "min_ttl_seconds": 1});
    let mut served_while_down = 0;
    loop {
        match c.call("TokenService/GetToken", req.clone()).await {
            Ok(t) => {
                // Whatever happens at the provider, a served token is never expired.
                assert!(
                    expires_at(&t) > now(),
                    "{provider}: served an expired token"
                );
                served_while_down += 1;
            }
            Err(e) => return (e, served_while_down),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A provider that issues one 4 s token, then answers every request with `then`.
async fn one_short_token_then(then: ResponseTemplate) -> MockServer {
    let (mock, _) = numbered_provider(move |n| match n {
        1 => answer(json!({"access_token": "short", "expires_in": 4})),
        _ => then.clone(),
    })
    .await;
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outages_serve_valid_tokens_never_expired_ones() {
    // Each provider issues one 4 s token, then fails: 500, hanging, connection refused.
    let failing = one_short_token_then(ResponseTemplate::new(500)).await;
    let hanging =
        one_short_token_then(ResponseTemplate::new(200).set_delay(Duration::from_secs(60))).await;
    // (wiremock keeps its ports open in a pool, so the refusing provider is a bare socket.)
    let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing_url = format!("http://{}/token", refusing.local_addr().unwrap());
    let one_token = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = refusing.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let _ = sock.read(&mut buf).await.unwrap();
        let body = r#"{"access_token":"short","expires_in":4}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await.unwrap();
        // The listener is dropped here: from now on the port refuses connections.
    });

    let server = Server::start(Opts {
        env: vec![
            ("TOKENVEND_PROVIDER_TIMEOUT", "1s".into()),
            ("TOKENVEND_LEASE_TTL", "6s".into()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let c = server.client().await;
    for (name, url) in [
        ("failing", token_url(&failing)),
        ("hanging", token_url(&hanging)),
        ("refusing", refusing_url),
    ] {
        setup_connection(&c, "acme", name, &url, "s", json!({})).await;
        c.call(
            "TokenService/GetToken",
            json!({"tenant": "acme", "provider": name, "min_ttl_seconds": 1}),
        )
        .await
        .unwrap();
    }
    one_token.await.unwrap();

    // From here on every provider fails: every token served was served while it was down.
    let (f, h, r) = tokio::join!(
        until_unavailable(&c, "failing"),
        until_unavailable(&c, "hanging"),
        until_unavailable(&c, "refusing"),
    );
    for (name, (err, served)) in [("failing", f), ("hanging", h), ("refusing", r)] {
        assert_eq!(err.code(), Code::Unavailable, "{name}: {err:?}");
        assert!(
            served > 0,
            "{name}: the still-valid token was served while the provider failed"
        );
    }
}

#[tokio::test]
async fn definitive_errors_and_dead_providers_are_not_hammered() {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/bad-secret"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&mock)
        .await;
    let down = token_provider(ResponseTemplate::new(503), ..).await;
    let server = Server::start(Opts::default()).await.unwrap();
    let c = server.client().await;
    setup_connection(
        &c,
        "acme",
        "bad",
        &format!("{}/bad-secret", mock.uri()),
        "wrong",
        json!({}),
    )
    .await;
    setup_connection(&c, "acme", "down", &token_url(&down), "s", json!({})).await;

    // A hundred callers with a bad secret: one request; the rest get the remembered answer.
    let calls = (0..100).map(|_| c.get_token("acme", "bad"));
    for r in join_all(calls).await {
        let e = r.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_deref()),
            (Code::FailedPrecondition, Some("INVALID_CLIENT"))
        );
    }
    for _ in 0..10 {
        c.get_token("acme", "bad").await.unwrap_err();
    }
    assert_eq!(mock.received_requests().await.unwrap().len(), 1);
    // Fixing the connection forgets the remembered error at once.
    setup_connection(
        &c,
        "acme",
        "bad",
        &format!("{}/bad-secret", mock.uri()),
        "still-wrong",
        json!({}),
    )
    .await;
    c.get_token("acme", "bad").await.unwrap_err();
    assert_eq!(mock.received_requests().await.unwrap().len(), 2);

    // A provider answering 503: each fetch tries 3 times; after 5 failed fetches the
    // circuit opens and calls fail fast without reaching it.
    for _ in 0..5 {
        let e = c.get_token("acme", "down").await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
    }
    assert_eq!(down.received_requests().await.unwrap().len(), 15);
    let e = c.get_token("acme", "down").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("consecutive"), "{}", e.message());
    assert!(crate::support::retry_info(&e).is_some());
    assert_eq!(down.received_requests().await.unwrap().len(), 15);
}

/// Polls the health service (the server's own watcher runs every second) until `service`
/// reports `want`; bounded.
async fn await_health(c: &Client, service: &str, want: &str) {
    wait_until(
        Duration::from_secs(10),
        &format!("{service} becomes {want}"),
        async || health(c, service).await == want,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_keeps_cached_tokens_flowing() {
    let provider = token_provider(token_answer("cached"), ..).await;
    let pg = Arc::new(PgCluster::start().unwrap());
    let url = pg.fresh_database();
    let server = Server::start(Opts {
        database_url: Some(url),
        ..Default::default()
    })
    .await
    .unwrap();
    let c = server.client().await;
    setup_connection(&c, "acme", "p", &token_url(&provider), "s", json!({})).await;
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "cached"
    );

    pg.stop().unwrap();
    await_health(&c, "tokenvend.v1.AdminService", "NOT_SERVING").await;
    assert_eq!(health(&c, "").await, "SERVING");
    assert_eq!(health(&c, "tokenvend.v1.TokenService").await, "SERVING");
    // Cache hits keep being served; administration says the store is unavailable.
    for _ in 0..20 {
        assert_eq!(
            c.get_token("acme", "p").await.unwrap()["access_token"],
            "cached"
        );
    }
    let e = c
        .call("AdminService/ListTenants", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_deref()),
        (Code::Unavailable, Some("STORAGE_UNAVAILABLE"))
    );
    let ready = reqwest::get(format!("{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "readiness must not take the replica out"
    );

    pg.start_server().unwrap();
    await_health(&c, "tokenvend.v1.AdminService", "SERVING").await;
    let tenants = c.call("AdminService/ListTenants", json!({})).await.unwrap();
    assert_eq!(tenants["tenants"][0]["tenant"], "acme");
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "cached"
    );
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
}

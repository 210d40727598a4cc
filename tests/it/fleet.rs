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
    CallOpts, Client, Opts, Server, authorize, get_token_req, grant_connection, grant_provider,
    reason, refresh_tokens_presented, user,
};

async fn replicas(n: usize, url: &str, env: Vec<(&'static str, String)>) -> Vec<Server> {
    let mut servers = Vec::new();
    for _ in 0..n {
        let mut env = env.clone();
        env.push((
            "TOKENVEND_PUBLIC_URL",
            "https://tokenvend.example.com".into(),
        ));
        servers.push(
            Server::start(Opts {
                database_url: Some(url.to_owned()),
                env,
                ..Default::default()
            })
            .await
            .unwrap(),
        );
    }
    servers
}

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
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "fleet-token", "expires_in": 3600}))
                .set_delay(Duration::from_millis(500)),
        )
        .expect(1)
        .mount(&provider)
        .await;
    let url = PgCluster::shared().fresh_database();
    let servers = replicas(3, &url, vec![]).await;
    let admin = servers[0].client().await;
    crate::support::setup_connection(
        &admin,
        "acme",
        "p",
        &format!("{}/token", provider.uri()),
        "s",
        json!({}),
    )
    .await;
    let clients = clients(&servers, 3).await;
    let calls = (0..1000).map(|i| {
        let c = clients[i % clients.len()].clone();
        async move {
            c.call("TokenService/GetToken", get_token_req("acme", "p"))
                .await
        }
    });
    for r in join_all(calls).await {
        assert_eq!(r.expect("GetToken")["access_token"], "fleet-token");
    }
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
}

async fn authorized(c: &Client, mock: &MockServer, subject: &str) {
    grant_connection(c, mock, None).await;
    authorize(c, subject).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_stampede_across_replicas_presents_the_refresh_token_once() {
    let mock = grant_provider(|n| {
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": format!("at-{n}"), "expires_in": 3600, "refresh_token": format!("rt-{n}")}))
            .set_delay(Duration::from_millis(300))
    })
    .await;
    let url = PgCluster::shared().fresh_database();
    let servers = replicas(
        3,
        &url,
        vec![("TOKENVEND_INVALIDATE_MIN_INTERVAL", "0s".into())],
    )
    .await;
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
            let inv = c
                .call("TokenService/InvalidateToken", json!({"tenant": "acme", "provider": "p", "subject": "alice", "access_token": dead}))
                .await
                .unwrap();
            invalidated.push(inv["invalidated"] == true);
        }
        assert!(invalidated[0], "the first report drops the token");
        let calls = (0..300).map(|i| {
            let c = clients[i % clients.len()].clone();
            async move { c.call("TokenService/GetToken", user("alice")).await }
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
        ("TOKENVEND_PROVIDER_TIMEOUT", "1s".into()),
        ("TOKENVEND_LEASE_TTL", "2s".into()),
        ("TOKENVEND_INVALIDATE_MIN_INTERVAL", "0s".into()),
    ];
    let mut servers = replicas(2, &url, env).await;
    let a = servers[0].client().await;
    let b = servers[1].client().await;
    authorized(&a, &mock, "alice").await;
    a.call(
        "TokenService/InvalidateToken",
        json!({"tenant": "acme", "provider": "p", "subject": "alice", "access_token": "at-0"}),
    )
    .await
    .unwrap();

    // Replica A takes the lease and sends the refresh; the provider holds it.
    let held = {
        let a = a.clone();
        tokio::spawn(async move { a.call("TokenService/GetToken", user("alice")).await })
    };
    for _ in 0..200 {
        if !refresh_tokens_presented(&mock).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        refresh_tokens_presented(&mock).await,
        ["rt-0"],
        "A's refresh reached the provider"
    );
    // kill -9 A while the provider holds the answer.
    servers[0].proc.signal(libc::SIGKILL);
    servers[0]
        .proc
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap();
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
    let err = b
        .call("TokenService/GetToken", user("alice"))
        .await
        .unwrap_err();
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
                let exp = time::OffsetDateTime::parse(
                    t["expires_at"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap();
                let now = tokenvend_core::clock::Clock::now(&tokenvend_core::clock::SystemClock);
                assert!(exp > now, "{provider}: served an expired token");
                served_while_down += 1;
            }
            Err(e) => return (e, served_while_down),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outages_serve_valid_tokens_never_expired_ones() {
    // Each provider issues one 4 s token, then fails: 500, hanging, connection refused.
    let first = || {
        ResponseTemplate::new(200).set_body_json(json!({"access_token": "short", "expires_in": 4}))
    };
    let failing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(first())
        .up_to_n_times(1)
        .mount(&failing)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&failing)
        .await;
    let hanging = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(first())
        .up_to_n_times(1)
        .mount(&hanging)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(60)))
        .mount(&hanging)
        .await;
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
        ("failing", format!("{}/token", failing.uri())),
        ("hanging", format!("{}/token", hanging.uri())),
        ("refusing", refusing_url),
    ] {
        crate::support::setup_connection(&c, "acme", name, &url, "s", json!({})).await;
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
    let down = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&down)
        .await;
    let server = Server::start(Opts::default()).await.unwrap();
    let c = server.client().await;
    crate::support::setup_connection(
        &c,
        "acme",
        "bad",
        &format!("{}/bad-secret", mock.uri()),
        "wrong",
        json!({}),
    )
    .await;
    crate::support::setup_connection(
        &c,
        "acme",
        "down",
        &format!("{}/token", down.uri()),
        "s",
        json!({}),
    )
    .await;

    // A hundred callers with a bad secret: one request; the rest get the remembered answer.
    let calls = (0..100).map(|_| c.call("TokenService/GetToken", get_token_req("acme", "bad")));
    for r in join_all(calls).await {
        let e = r.unwrap_err();
        assert_eq!(
            (e.code(), reason(&e).as_deref()),
            (Code::FailedPrecondition, Some("INVALID_CLIENT"))
        );
    }
    for _ in 0..10 {
        c.call("TokenService/GetToken", get_token_req("acme", "bad"))
            .await
            .unwrap_err();
    }
    assert_eq!(mock.received_requests().await.unwrap().len(), 1);
    // Fixing the connection forgets the remembered error at once.
    crate::support::setup_connection(
        &c,
        "acme",
        "bad",
        &format!("{}/bad-secret", mock.uri()),
        "still-wrong",
        json!({}),
    )
    .await;
    c.call("TokenService/GetToken", get_token_req("acme", "bad"))
        .await
        .unwrap_err();
    assert_eq!(mock.received_requests().await.unwrap().len(), 2);

    // A provider answering 503: each fetch tries 3 times; after 5 failed fetches the
    // circuit opens and calls fail fast without reaching it.
    for _ in 0..5 {
        let e = c
            .call("TokenService/GetToken", get_token_req("acme", "down"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
    }
    assert_eq!(down.received_requests().await.unwrap().len(), 15);
    let e = c
        .call("TokenService/GetToken", get_token_req("acme", "down"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("consecutive"), "{}", e.message());
    assert!(crate::support::retry_info(&e).is_some());
    assert_eq!(down.received_requests().await.unwrap().len(), 15);
}

async fn health(c: &Client, service: &str) -> String {
    c.call("grpc.health.v1.Health/Check", json!({"service": service}))
        .await
        .unwrap()["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls the health service (the server's own watcher runs every second) until `service`
/// reports `want`; bounded.
async fn await_health(c: &Client, service: &str, want: &str) {
    for _ in 0..100 {
        if health(c, service).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} never became {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_keeps_cached_tokens_flowing() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "cached", "expires_in": 3600})),
        )
        .mount(&provider)
        .await;
    let pg = Arc::new(PgCluster::start().unwrap());
    let url = pg.fresh_database();
    let server = Server::start(Opts {
        database_url: Some(url),
        ..Default::default()
    })
    .await
    .unwrap();
    let c = server.client().await;
    crate::support::setup_connection(
        &c,
        "acme",
        "p",
        &format!("{}/token", provider.uri()),
        "s",
        json!({}),
    )
    .await;
    assert_eq!(
        c.call("TokenService/GetToken", get_token_req("acme", "p"))
            .await
            .unwrap()["access_token"],
        "cached"
    );

    pg.stop().unwrap();
    await_health(&c, "tokenvend.v1.AdminService", "NOT_SERVING").await;
    assert_eq!(health(&c, "").await, "SERVING");
    assert_eq!(health(&c, "tokenvend.v1.TokenService").await, "SERVING");
    // Cache hits keep being served; administration says the store is unavailable.
    for _ in 0..20 {
        assert_eq!(
            c.call("TokenService/GetToken", get_token_req("acme", "p"))
                .await
                .unwrap()["access_token"],
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
        c.call("TokenService/GetToken", get_token_req("acme", "p"))
            .await
            .unwrap()["access_token"],
        "cached"
    );
    assert_eq!(provider.received_requests().await.unwrap().len(), 1);
}

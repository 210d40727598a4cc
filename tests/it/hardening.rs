//! Hostile provider answers, killed lease holders and revocations racing refreshes: each
//! costs at most one clear error, never a poisoned key, a lost caller or an orphan token.

use std::time::Duration;

use serde_json::json;
use tokenvend_testkit::postgres::PgCluster;
use tonic::Code;
use wiremock::ResponseTemplate;

use crate::support::{
    CallOpts, Opts, Server, authorize, expires_at, get_token_req, grant_connection, grant_provider,
    now, numbered_provider, reason, refresh_tokens_presented, refused_start, report, rotated,
    setup_connection, token_answer, user, wait_for_refresh, wait_until,
};

/// Regression (issue 8.1 and 8.2), through the real binary: a lifetime of 1e20 used to panic
/// inside the single-flight task and poison the key (every later call CANCELLED, the
/// provider never asked again); a token with CR/LF used to be handed to callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_cost_one_clear_error_and_never_poison_the_key() {
    let (provider, asked) = numbered_provider(|n| match n {
        1 => ResponseTemplate::new(200)
            .set_body_string(r#"{"access_token":"A\r\nX-Injected: 1","expires_in":60}"#)
            .insert_header("content-type", "application/json"),
        2 => ResponseTemplate::new(200)
            .set_body_string(r#"{"access_token":"huge","expires_in":1e20}"#)
            .insert_header("content-type", "application/json"),
        _ => ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": format!("fine-{n}"), "expires_in": 3600})),
    })
    .await;
    // Remember nothing: each call below reaches the provider.
    let server = Server::with_env(vec![("TOKENVEND_NEGATIVE_CACHE_TTL", "0s".into())]).await;
    let c = server.client().await;
    setup_connection(&c, "acme", "inject", &provider.uri(), "s", json!({})).await;
    let err = c.get_token("acme", "inject").await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_deref()),
        (Code::FailedPrecondition, Some("PROVIDER_BAD_RESPONSE")),
        "{err:?}"
    );
    assert!(err.message().contains("visible ASCII"), "{}", err.message());
    assert!(!err.message().contains("X-Injected"));

    // 1e20 seconds is clamped to a year, not a panic.
    let t = c
        .get_token("acme", "inject")
        .await
        .expect("a clamped lifetime is served");
    assert_eq!(t["access_token"], "huge");
    let left = expires_at(&t) - now();
    assert!(
        left <= time::Duration::days(366) && left > time::Duration::days(365),
        "{left}"
    );
    assert_eq!(asked.get(), 2);
    assert!(!server.output().contains("panicked"), "{}", server.output());
}

/// Regression (issue 8.8): expiry counted from when the answer arrived, not from when the
/// request was sent, so a slow provider's token was believed to live longer than it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_counts_from_when_the_request_was_sent() {
    let (provider, _) = numbered_provider(|_| {
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": "slow", "expires_in": 100}))
            .set_delay(Duration::from_millis(1500))
    })
    .await;
    let server = Server::start(Opts::default()).await.unwrap();
    let c = server.client().await;
    setup_connection(&c, "acme", "slow", &provider.uri(), "s", json!({})).await;
    let before = now();
    let t = c.get_token("acme", "slow").await.unwrap();
    let after = now();
    let expires = expires_at(&t);
    // Sent after `before`, answered 1.5 s later, before `after`: counted from the send,
    // the expiry is at least a second earlier than `after + expires_in`.
    assert!(
        expires >= before + time::Duration::seconds(100),
        "{expires}"
    );
    assert!(
        expires <= after + time::Duration::seconds(99),
        "expires_at {expires} counts from the answer's arrival (after = {after})"
    );
}

/// Start-up refuses timing settings under which a caller could never be served.
#[tokio::test]
async fn start_up_refuses_timings_a_waiter_cannot_outlast() {
    for (var, value, expect) in [
        (
            "TOKENVEND_DEFAULT_MIN_TTL",
            "0s",
            "TOKENVEND_DEFAULT_MIN_TTL",
        ),
        ("TOKENVEND_MAX_WAIT", "10s", "TOKENVEND_MAX_WAIT"),
        ("TOKENVEND_LEASE_TTL", "60s", "TOKENVEND_MAX_WAIT"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().to_str().unwrap();
        let stderr = refused_start(&[("TOKENVEND_DATA_DIR", dir), (var, value)]);
        assert!(stderr.contains(expect), "{var}={value}: {stderr}");
    }
}

/// Issue 8.3: `kill -9` of the replica holding a key's lease while the provider holds its
/// answer. With the old 45 s lease and 30 s MAX_WAIT every waiter failed; now the dead
/// holder's lease lapses within TOKENVEND_LEASE_TTL (5 s) and a caller on another replica
/// whose deadline allows it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lease_holder_is_taken_over_and_waiters_are_served() {
    let (provider, asked) = numbered_provider(|n| {
        let answer = token_answer(&format!("cc-{n}"));
        if n == 1 {
            answer.set_delay(Duration::from_secs(60))
        } else {
            answer
        }
    })
    .await;
    let url = PgCluster::shared().fresh_database();
    let mut servers = Server::replicas(2, &url, vec![]).await;
    let ca = servers[0].client().await;
    let cb = servers[1].client().await;
    setup_connection(&ca, "acme", "p", &provider.uri(), "s", json!({})).await;

    // A takes the lease and asks the provider, which holds the answer.
    let held = {
        let ca = ca.clone();
        tokio::spawn(async move { ca.get_token("acme", "p").await })
    };
    wait_until(
        Duration::from_secs(10),
        "A's request reached the provider",
        async || asked.get() >= 1,
    )
    .await;
    assert_eq!(asked.get(), 1, "A's request reached the provider");
    // B's caller is already waiting on A's lease when A dies.
    let waiter = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let r = cb
            .call_opts(
                "TokenService/GetToken",
                get_token_req("acme", "p"),
                CallOpts {
                    timeout: Some(Duration::from_secs(60)),
                    ..Default::default()
                },
            )
            .await;
        (r, started.elapsed())
    });
    servers[0].kill().await;
    let _ = held.await;
    let (r, waited) = waiter.await.unwrap();
    let t = r.expect("the waiter is served after the takeover");
    assert_eq!(t["access_token"], "cc-2");
    assert_eq!(asked.get(), 2, "one request by A, one by B");
    // Generous bound (the lease TTL is 5 s): the old code made this caller wait out
    // TOKENVEND_MAX_WAIT (30 s) and fail.
    assert!(waited < Duration::from_secs(25), "waited {waited:?}");
}

/// Issue 8.4: `RevokeGrant` while a refresh of that grant is in flight on another replica.
/// The refresh used to write an orphan token that was served until it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_during_its_refresh_is_never_served_again() {
    let mock = grant_provider(|n| rotated(n).set_delay(Duration::from_millis(1500))).await;
    let servers = Server::grant_replicas(2).await;
    let ca = servers[0].client().await;
    let cb = servers[1].client().await;
    grant_connection(&ca, &mock, None).await;
    authorize(&ca, "alice").await;
    // at-0 is reported dead: the next GetToken refreshes.
    report(&ca, "alice", "at-0").await.unwrap();
    let refreshing = {
        let ca = ca.clone();
        tokio::spawn(async move { ca.user_token("alice").await })
    };
    wait_for_refresh(&mock).await;
    assert_eq!(refresh_tokens_presented(&mock).await, ["rt-0"]);
    // Revoked on the other replica while the provider holds the refresh answer.
    cb.call("AdminService/RevokeGrant", user("alice"))
        .await
        .expect("RevokeGrant");
    let r = refreshing.await.unwrap();
    assert!(
        r.as_ref().is_err_and(|e| e.code() == Code::NotFound),
        "the refresh that lost the race is not served: {r:?}"
    );
    for c in [&ca, &cb] {
        let err = c.user_token("alice").await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_deref()),
            (Code::NotFound, Some("GRANT_NOT_FOUND")),
            "{err:?}"
        );
    }
    assert_eq!(refresh_tokens_presented(&mock).await, ["rt-0"]);
}

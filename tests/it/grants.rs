//! End-user grants against precise mocks: refresh refused (re-authorization, never looped),
//! refresh without rotation, refresh never re-sent after an unknown outcome, revocation
//! failures (nothing half-deleted unless forced), and the invalidation limit.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use serde_json::json;
use tonic::Code;
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{method, path},
};

use crate::support::{
    Client, Opts, Server, authorize, form, grant_connection, grant_provider, no_invalidate_limit,
    public_url, reason, report, requests_with_grant, retry_info, setup_connection, tok_provider,
    token_url, user,
};

/// A server that knows its public URL, with tenant `acme` and connection `p` to `mock`.
async fn setup(
    mock: &MockServer,
    revocation: Option<&str>,
    mut env: Vec<(&'static str, String)>,
) -> (Server, Client) {
    env.push(public_url());
    let server = Server::with_env(env).await;
    let c = server.client().await;
    grant_connection(&c, mock, revocation).await;
    (server, c)
}

#[tokio::test]
async fn refused_refresh_needs_reauthorization_and_is_not_retried() {
    let mock = grant_provider(|_| {
        ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"}))
    })
    .await;
    let (_s, c) = setup(&mock, None, vec![no_invalidate_limit()]).await;
    authorize(&c, "alice").await;
    report(&c, "alice", "at-0").await.unwrap();
    for _ in 0..3 {
        let err = c.user_token("alice").await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_deref()),
            (Code::FailedPrecondition, Some("REAUTHORIZATION_REQUIRED"))
        );
        assert!(
            err.message().contains("StartAuthorization"),
            "{}",
            err.message()
        );
    }
    assert_eq!(
        requests_with_grant(&mock, "refresh_token").await.len(),
        1,
        "never looped"
    );
    let g = c
        .call("AdminService/GetGrant", user("alice"))
        .await
        .unwrap();
    assert_eq!(g["status"], "reauthorization_required");
    // Authorizing again makes it usable.
    let again = authorize(&c, "alice").await;
    assert_eq!(again["status"], "active");
    assert_eq!(c.user_token("alice").await.unwrap()["access_token"], "at-0");
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_refresh_token() {
    let mock = grant_provider(|n| {
        ResponseTemplate::new(200)
            .set_body_json(json!({"access_token": format!("at-{n}"), "expires_in": 3600}))
    })
    .await;
    let (_s, c) = setup(&mock, None, vec![no_invalidate_limit()]).await;
    authorize(&c, "alice").await;
    let mut current = "at-0".to_owned();
    for n in 1..=2 {
        report(&c, "alice", &current).await.unwrap();
        current = c.user_token("alice").await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(current, format!("at-{n}"));
    }
    for r in requests_with_grant(&mock, "refresh_token").await {
        assert_eq!(form(&r)["refresh_token"], "rt-0");
    }
}

#[tokio::test]
async fn a_refresh_with_unknown_outcome_is_not_sent_again() {
    let mock = grant_provider(|_| ResponseTemplate::new(500)).await;
    let (_s, c) = setup(&mock, None, vec![no_invalidate_limit()]).await;
    authorize(&c, "alice").await;
    report(&c, "alice", "at-0").await.unwrap();
    let err = c.user_token("alice").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(retry_info(&err).is_some());
    // Client credentials would have been tried 3 times; a refresh token only once.
    assert_eq!(requests_with_grant(&mock, "refresh_token").await.len(), 1);
    // The grant is still active: a 500 says nothing about the refresh token.
    let g = c
        .call("AdminService/GetGrant", user("alice"))
        .await
        .unwrap();
    assert_eq!(g["status"], "active");
}

#[tokio::test]
async fn revocation_failures_delete_nothing_unless_forced() {
    let mock = grant_provider(|_| ResponseTemplate::new(500)).await;
    let revocations = Arc::new(AtomicUsize::new(0));
    let count = revocations.clone();
    // The revocation endpoint is down for its first 2 calls, then works.
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(move |_: &Request| {
            if count.fetch_add(1, Ordering::SeqCst) < 2 {
                ResponseTemplate::new(503)
            } else {
                ResponseTemplate::new(200)
            }
        })
        .mount(&mock)
        .await;
    let (_s, c) = setup(&mock, Some("/revoke"), vec![]).await;
    for s in ["alice", "bob", "carol"] {
        authorize(&c, s).await;
    }
    let list = c
        .call(
            "AdminService/ListConnectionGrants",
            json!({"tenant": "acme", "provider": "p"}),
        )
        .await
        .unwrap();
    assert_eq!(list["grants"].as_array().unwrap().len(), 3);

    // RevokeGrant while the provider fails: an error, the grant stays.
    let err = c
        .call("AdminService/RevokeGrant", user("alice"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("set force"), "{}", err.message());
    c.call("AdminService/GetGrant", user("alice"))
        .await
        .unwrap();
    // Forced: deleted locally, and the answer says the provider did not confirm.
    let forced = c
        .call(
            "AdminService/RevokeGrant",
            json!({"tenant": "acme", "provider": "p", "subject": "alice", "force": true}),
        )
        .await
        .unwrap();
    assert_eq!(forced["revoked_at_provider"], false);
    assert!(
        forced["warning"]
            .as_str()
            .unwrap()
            .contains("deleted locally only")
    );
    let err = c
        .call("AdminService/GetGrant", user("alice"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // DeleteConnection revokes the remaining grants first (the provider works again now).
    let deleted = c
        .call(
            "AdminService/DeleteConnection",
            json!({"tenant": "acme", "provider": "p"}),
        )
        .await
        .unwrap();
    assert_eq!(deleted["grants_revoked"], 2);
    assert_eq!(deleted["grants_deleted_locally"], 0);
    assert_eq!(revocations.load(Ordering::SeqCst), 4);
    let err = c
        .call(
            "AdminService/GetConnection",
            json!({"tenant": "acme", "provider": "p"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn delete_connection_keeps_everything_when_revocation_fails() {
    let mock = grant_provider(|_| ResponseTemplate::new(500)).await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&mock)
        .await;
    let (_s, c) = setup(&mock, Some("/revoke"), vec![]).await;
    authorize(&c, "alice").await;
    let err = c
        .call(
            "AdminService/DeleteConnection",
            json!({"tenant": "acme", "provider": "p"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    c.call(
        "AdminService/GetConnection",
        json!({"tenant": "acme", "provider": "p"}),
    )
    .await
    .unwrap();
    c.call("AdminService/GetGrant", user("alice"))
        .await
        .unwrap();
    let forced = c
        .call(
            "AdminService/DeleteConnection",
            json!({"tenant": "acme", "provider": "p", "force": true}),
        )
        .await
        .unwrap();
    assert_eq!(forced["grants_deleted_locally"], 1);
    assert!(!forced["warning"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn invalidation_triggered_refreshes_are_limited_per_key() {
    let (mock, _) = tok_provider().await;
    let server = Server::start(Opts::default()).await.unwrap();
    let c = server.client().await;
    setup_connection(&c, "acme", "p", &token_url(&mock), "s", json!({})).await;
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "tok-1"
    );
    let inv = |t: &'static str| {
        c.call(
            "TokenService/InvalidateToken",
            json!({"tenant": "acme", "provider": "p", "access_token": t}),
        )
    };
    assert_eq!(inv("tok-1").await.unwrap()["invalidated"], true);
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "tok-2"
    );
    // The fresh token reported dead at once: refused with RetryInfo (default interval 10 s).
    let err = inv("tok-2").await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_deref()),
        (Code::ResourceExhausted, Some("RATE_LIMITED"))
    );
    assert!(retry_info(&err).is_some());
    // Reports about the old token are still harmless no-ops.
    assert_eq!(inv("tok-1").await.unwrap()["invalidated"], false);
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "tok-2"
    );
    assert_eq!(mock.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_expired_authorization_cannot_be_completed() {
    let mock = grant_provider(|_| ResponseTemplate::new(500)).await;
    let (_s, c) = setup(
        &mock,
        None,
        vec![("TOKENVEND_AUTHORIZATION_TTL", "0s".into())],
    )
    .await;
    let started = c
        .call("AdminService/StartAuthorization", user("late"))
        .await
        .unwrap();
    let err = c
        .call(
            "AdminService/CompleteAuthorization",
            json!({"state": started["state"], "code": "the-code"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("expired"), "{}", err.message());
    assert!(
        requests_with_grant(&mock, "authorization_code")
            .await
            .is_empty(),
        "no exchange attempted"
    );
    let err = c
        .call("AdminService/GetGrant", user("late"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

//! GetConnection's refresh state: what an operator looks at when a tenant's tokens stop
//! coming — last refresh, next planned refresh, consecutive failures, last error class.

use serde_json::{Value, json};
use time::OffsetDateTime;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::support::{Server, now, setup_connection, token_answer, token_url};

fn at(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        v.as_str().expect("a timestamp"),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

async fn state(c: &crate::support::Client) -> Value {
    c.call(
        "AdminService/GetConnection",
        json!({"tenant": "acme", "provider": "p"}),
    )
    .await
    .unwrap()["refresh_state"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_connection_shows_failures_their_class_and_the_refreshes() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_client"})))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(token_answer("fresh-token"))
        .with_priority(2)
        .mount(&provider)
        .await;
    // Definitive errors are not remembered, so each GetToken asks the provider.
    let server = Server::with_env(vec![("TOKENVEND_NEGATIVE_CACHE_TTL", "0s".into())]).await;
    let c = server.client().await;
    setup_connection(&c, "acme", "p", &token_url(&provider), "s3cret", json!({})).await;

    let s = state(&c).await;
    assert_eq!(s["consecutive_failures"], "0", "{s}");
    assert_eq!(s["last_error_class"], "", "{s}");
    assert!(s["last_refresh_time"].is_null(), "{s}");
    assert!(s["next_refresh_time"].is_null(), "{s}");

    let before = now();
    for n in 1..=2 {
        let e = c.get_token("acme", "p").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        let s = state(&c).await;
        assert_eq!(s["consecutive_failures"], n.to_string(), "{s}");
        assert_eq!(s["last_error_class"], "oauth_error", "{s}");
        assert!(
            at(&s["last_error_time"]) >= before - time::Duration::seconds(1),
            "{s}"
        );
        assert!(s["last_refresh_time"].is_null(), "{s}");
    }

    let token = c.get_token("acme", "p").await.unwrap();
    assert_eq!(token["access_token"], "fresh-token");
    c.get_token("acme", "p").await.unwrap(); // in use: refresh-ahead will renew it
    let s = state(&c).await;
    assert_eq!(
        s["consecutive_failures"], "0",
        "a success resets the count: {s}"
    );
    assert_eq!(
        s["last_error_class"], "oauth_error",
        "the last failure stays visible: {s}"
    );
    let refreshed = at(&s["last_refresh_time"]);
    assert!(refreshed >= before - time::Duration::seconds(1), "{s}");
    let next = at(&s["next_refresh_time"]);
    let expires = crate::support::expires_at(&token);
    assert!(
        next > refreshed + time::Duration::seconds(1700) && next < expires,
        "renewed in the second half of its hour, before it expires: {s}"
    );

    // Lists stay one query: no refresh state there.
    let list = c
        .call("AdminService/ListConnections", json!({"tenant": "acme"}))
        .await
        .unwrap();
    assert!(list["connections"][0]["refresh_state"].is_null(), "{list}");
    assert_eq!(provider.received_requests().await.unwrap().len(), 3);
}

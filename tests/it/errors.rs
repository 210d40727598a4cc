//! Every error path a caller or operator can meet, with its status, reason and message —
//! and a planted secret and token that must never show up in any of it.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path},
};

use crate::support::{CallOpts, Server, get_token_req, reason, retry_info, setup_connection};

const SECRET: &str = "planted-client-secret-Zq81x";
const TOKEN: &str = "planted-access-token-Kp27w";

async fn mount(provider: &MockServer, p: &str, resp: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(p))
        .respond_with(resp)
        .mount(provider)
        .await;
}

fn json_body(status: u16, v: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(v)
}

async fn requests_to(provider: &MockServer, p: &str) -> usize {
    provider
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == p)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths_map_to_statuses_and_never_leak_secrets() {
    let provider = MockServer::start().await;
    mount(&provider, "/ok", json_body(200, json!({"access_token": TOKEN, "expires_in": 3600, "token_type": "bearer", "scope": "read write"}))).await;
    mount(&provider, "/invalid-client", json_body(401, json!({"error": "invalid_client", "error_description": format!("client secret {SECRET} is wrong")}))).await;
    mount(&provider, "/forbidden", ResponseTemplate::new(403)).await;
    mount(
        &provider,
        "/server-error",
        ResponseTemplate::new(500).set_body_string("<html>oops</html>"),
    )
    .await;
    mount(
        &provider,
        "/busy",
        ResponseTemplate::new(429).insert_header("retry-after", "1"),
    )
    .await;
    mount(
        &provider,
        "/html",
        ResponseTemplate::new(200).set_body_raw("<html>login</html>", "text/html"),
    )
    .await;
    mount(
        &provider,
        "/error-200",
        json_body(200, json!({"error": "invalid_scope"})),
    )
    .await;
    mount(
        &provider,
        "/no-token",
        json_body(200, json!({"token_type": "bearer"})),
    )
    .await;
    mount(
        &provider,
        "/redirect",
        ResponseTemplate::new(302)
            .insert_header("location", format!("{}/elsewhere", provider.uri())),
    )
    .await;
    mount(
        &provider,
        "/elsewhere",
        json_body(200, json!({"access_token": "redirected"})),
    )
    .await;
    mount(
        &provider,
        "/short",
        json_body(
            200,
            json!({"access_token": "short-lived", "expires_in": 30}),
        ),
    )
    .await;
    mount(
        &provider,
        "/huge",
        ResponseTemplate::new(200)
            .set_body_string(format!("{{\"access_token\":\"{}\"}}", "x".repeat(100_000))),
    )
    .await;
    mount(
        &provider,
        "/hang",
        ResponseTemplate::new(200).set_delay(Duration::from_secs(60)),
    )
    .await;

    let server = Server::with_env(vec![("TOKENVEND_PROVIDER_TIMEOUT", "1s".into())]).await;
    let c = server.client().await;
    let mut admin_output = String::new();
    for p in [
        "ok",
        "invalid-client",
        "forbidden",
        "server-error",
        "busy",
        "html",
        "error-200",
        "no-token",
        "redirect",
        "short",
        "huge",
        "hang",
    ] {
        let v = setup_connection(
            &c,
            "acme",
            p,
            &format!("{}/{p}", provider.uri()),
            SECRET,
            json!({"scopes": ["read", "write"]}),
        )
        .await;
        assert_eq!(v["credential_kind"], "client_secret");
        assert_eq!(v["version"], "1"); // int64 is a string in proto JSON
        admin_output.push_str(&v.to_string());
    }
    let closed = tokenvend_testkit::free_port();
    setup_connection(
        &c,
        "acme",
        "refused",
        &format!("http://127.0.0.1:{closed}/token"),
        SECRET,
        json!({}),
    )
    .await;

    // Success first: the planted token comes back, normalised.
    let ok = c.get_token("acme", "ok").await.unwrap();
    assert_eq!(ok["access_token"], TOKEN);
    assert_eq!(ok["token_type"], "Bearer");
    assert_eq!(ok["scopes"], json!(["read", "write"]));
    assert!(ok["expires_at"].as_str().unwrap().starts_with("20"));

    let mut messages = Vec::new();
    let mut expect = async |provider_slug: &str, code: Code, why: &str| {
        let err = c.get_token("acme", provider_slug).await.unwrap_err();
        assert_eq!(err.code(), code, "{provider_slug}: {err:?}");
        assert_eq!(
            reason(&err).as_deref(),
            Some(why),
            "{provider_slug}: {err:?}"
        );
        messages.push(err.message().to_owned());
        err
    };
    let e = expect("invalid-client", Code::FailedPrecondition, "INVALID_CLIENT").await;
    assert!(e.message().contains("invalid_client"), "{}", e.message());
    use tonic_types::StatusExt;
    let info = e.get_details_error_info().unwrap();
    assert_eq!(info.domain, "tokenvend");
    assert_eq!(
        info.metadata.get("oauth_error").map(String::as_str),
        Some("invalid_client")
    );
    let e = expect("forbidden", Code::FailedPrecondition, "PROVIDER_REJECTED").await;
    assert!(
        e.message().contains("rejected the client credentials"),
        "{}",
        e.message()
    );
    let e = expect("server-error", Code::Unavailable, "PROVIDER_UNAVAILABLE").await;
    assert!(retry_info(&e).is_some(), "UNAVAILABLE carries RetryInfo");
    expect("busy", Code::Unavailable, "PROVIDER_UNAVAILABLE").await;
    expect("html", Code::FailedPrecondition, "PROVIDER_BAD_RESPONSE").await;
    expect("error-200", Code::FailedPrecondition, "INVALID_SCOPE").await;
    expect(
        "no-token",
        Code::FailedPrecondition,
        "PROVIDER_BAD_RESPONSE",
    )
    .await;
    expect(
        "redirect",
        Code::FailedPrecondition,
        "PROVIDER_BAD_RESPONSE",
    )
    .await;
    expect("huge", Code::FailedPrecondition, "PROVIDER_BAD_RESPONSE").await;
    expect("refused", Code::Unavailable, "PROVIDER_UNAVAILABLE").await;
    let e = expect("hang", Code::Unavailable, "PROVIDER_UNAVAILABLE").await;
    assert!(e.message().contains("no answer within"), "{}", e.message());
    // 30 s tokens can never satisfy the 60 s default: one provider call, then no more.
    expect("short", Code::FailedPrecondition, "MIN_TTL_UNSATISFIABLE").await;
    expect("short", Code::FailedPrecondition, "MIN_TTL_UNSATISFIABLE").await;
    assert_eq!(requests_to(&provider, "/short").await, 1);
    // ...while a caller content with 10 s gets the token.
    let short = c
        .call(
            "TokenService/GetToken",
            json!({"tenant": "acme", "provider": "short", "min_ttl_seconds": 10}),
        )
        .await
        .unwrap();
    assert_eq!(short["access_token"], "short-lived");

    // Retry budget: transient failures are tried 3 times, definitive ones once.
    assert_eq!(requests_to(&provider, "/server-error").await, 3);
    assert_eq!(requests_to(&provider, "/invalid-client").await, 1);
    assert_eq!(requests_to(&provider, "/forbidden").await, 1);
    // A redirect is never followed (it would carry the credentials elsewhere).
    assert_eq!(requests_to(&provider, "/elsewhere").await, 0);

    // The caller's deadline: DEADLINE_EXCEEDED (not CANCELLED), well before the provider timeout.
    mount(
        &provider,
        "/hang2",
        ResponseTemplate::new(200).set_delay(Duration::from_secs(60)),
    )
    .await;
    setup_connection(
        &c,
        "acme",
        "hang2",
        &format!("{}/hang2", provider.uri()),
        SECRET,
        json!({}),
    )
    .await;
    let err = c
        .call_opts(
            "TokenService/GetToken",
            get_token_req("acme", "hang2"),
            CallOpts {
                timeout: Some(Duration::from_millis(300)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    messages.push(err.message().to_owned());

    // Unknown names, bad input.
    let err = c.get_token("nobody", "ok").await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_deref()),
        (Code::NotFound, Some("TENANT_NOT_FOUND"))
    );
    let err = c.get_token("acme", "nothing").await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_deref()),
        (Code::NotFound, Some("CONNECTION_NOT_FOUND"))
    );
    let err = c.get_token("Not_A_Slug", "ok").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("tenant:"), "{}", err.message());
    let err = c
        .call(
            "TokenService/GetToken",
            json!({"tenant": "acme", "provider": "ok", "min_ttl_seconds": -1}),
        )
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("min_ttl_seconds:"),
        "{}",
        err.message()
    );
    let err = c
        .call("AdminService/CreateTenant", json!({"tenant": "acme"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    for (req, field) in [
        (
            json!({"tenant": "acme", "provider": "x", "token_url": "not a url", "client_id": "c"}),
            "token_url",
        ),
        (
            json!({"tenant": "acme", "provider": "x", "client_id": "c"}),
            "token_url",
        ),
        (
            json!({"tenant": "acme", "provider": "x", "token_url": "https://a.example/t"}),
            "client_id",
        ),
        (
            json!({"tenant": "acme", "provider": "x", "token_url": "https://a.example/t", "client_id": "c", "template": "nope"}),
            "template",
        ),
        (
            json!({"tenant": "acme", "provider": "x", "token_url": "https://a.example/t", "client_id": "c", "extra_params": {"client_secret": "x"}}),
            "extra_params",
        ),
        (
            json!({"tenant": "acme", "provider": "x", "token_url": "https://a.example/t", "client_id": "c", "client_secret": SECRET, "api_key": "k"}),
            "api_key",
        ),
        (
            json!({"tenant": "acme", "provider": "BAD", "token_url": "https://a.example/t", "client_id": "c"}),
            "provider",
        ),
    ] {
        let err = c.put_connection(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{req}: {}",
            err.message()
        );
        messages.push(err.message().to_owned());
    }
    // ...and nothing was written by the refused requests.
    let err = c
        .call(
            "AdminService/GetConnection",
            json!({"tenant": "acme", "provider": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c.put_connection(json!({"tenant": "ghost", "provider": "x", "token_url": "https://a.example/t", "client_id": "c"})).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_deref()),
        (Code::NotFound, Some("TENANT_NOT_FOUND"))
    );

    // Admin reads show a fingerprint, never the secret.
    let got = c
        .call(
            "AdminService/GetConnection",
            json!({"tenant": "acme", "provider": "ok"}),
        )
        .await
        .unwrap();
    assert_eq!(got["secret_fingerprint"].as_str().unwrap().len(), 16);
    admin_output.push_str(&got.to_string());
    admin_output.push_str(
        &c.call("AdminService/ListConnections", json!({"tenant": "acme"}))
            .await
            .unwrap()
            .to_string(),
    );

    // The planted secret and token: nowhere in errors, admin answers or the server's output.
    server.proc.signal(libc::SIGTERM);
    let mut proc = server.proc;
    proc.wait_exit(Duration::from_secs(20)).await.unwrap();
    let logs = proc.output();
    assert!(
        logs.contains("fetched a token from the provider"),
        "debug logs were captured"
    );
    for (what, text) in [
        ("error messages", messages.join("\n")),
        ("admin responses", admin_output),
        ("server output", logs),
    ] {
        assert!(!text.contains(SECRET), "client secret leaked into {what}");
        assert!(!text.contains(TOKEN), "access token leaked into {what}");
    }
}

#[tokio::test]
async fn production_policy_refuses_internal_and_plain_http_endpoints() {
    let (_server, c) =
        Server::with_acme(vec![("TOKENVEND_ALLOW_INSECURE_ENDPOINTS", "false".into())]).await;
    for url in [
        "http://auth.example.com/token",
        "https://127.0.0.1/token",
        "https://10.0.0.8/token",
        "https://169.254.169.254/x",
        "https://localhost/token",
    ] {
        let err = c
            .put_connection(json!({"tenant": "acme", "provider": "p", "token_url": url, "client_id": "c", "client_secret": "s"}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{url}");
        assert!(
            err.message().starts_with("token_url:"),
            "{url}: {}",
            err.message()
        );
    }
    let ok = c
        .put_connection(json!({"tenant": "acme", "provider": "p", "token_url": "https://auth.example.com/token", "client_id": "c", "client_secret": "s"}))
        .await
        .unwrap();
    assert_eq!(ok["effective_token_url"], "https://auth.example.com/token");
    assert_eq!(ok["effective_client_auth"], "CLIENT_AUTH_BASIC");
}

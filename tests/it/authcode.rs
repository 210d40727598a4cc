//! The authorization-code + PKCE flow end to end, against a real authorization server that
//! checks the verifier (oidc-provider): start, the browser's redirects, the HTTP callback,
//! refresh with rotation (each refresh token presented once), revocation, and the ways it
//! can go wrong.

use serde_json::{Value, json};
use tokenvend_testkit::oidc::OidcServer;
use tonic::Code;

use crate::support::{
    Client, Server, grant_connection, grant_provider, no_invalidate_limit, public_url, reason, user,
};

struct Setup {
    oidc: OidcServer,
    server: Server,
    c: Client,
}

async fn setup() -> Setup {
    let http_port = tokenvend_testkit::free_port();
    let public = format!("http://127.0.0.1:{http_port}");
    let oidc = OidcServer::start(json!({
        "clients": [{
            "client_id": "web", "client_secret": "web-client-secret-Qx1",
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "redirect_uris": [format!("{public}/oauth/callback")],
            "token_endpoint_auth_method": "client_secret_post"
        }],
        "scopes": ["read", "write"],
        "access_token_ttl": 3600
    }))
    .await
    .unwrap();
    let (server, c) = Server::with_acme(vec![
        ("TOKENVEND_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
        ("TOKENVEND_PUBLIC_URL", public),
        no_invalidate_limit(),
    ])
    .await;
    c.put_connection(json!({"tenant": "acme", "provider": "oidc",
               "token_url": format!("{}/token", oidc.issuer),
               "authorize_url": format!("{}/auth", oidc.issuer),
               "revocation_url": format!("{}/token/revocation", oidc.issuer),
               "client_id": "web", "client_secret": "web-client-secret-Qx1",
               "client_auth": "CLIENT_AUTH_POST", "scopes": ["read"]}))
        .await
        .unwrap();
    Setup { oidc, server, c }
}

/// What the end user's browser does: follow the redirects (keeping cookies) through the
/// provider's login and consent to tokenvend's callback. Returns (status, page).
async fn browser(authorization_url: &str, login_hint: &str) -> (u16, String) {
    let mut url = url::Url::parse(authorization_url).unwrap();
    url.query_pairs_mut().append_pair("login_hint", login_hint);
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let resp = browser.get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn start(c: &Client, subject: &str) -> Value {
    c.call("AdminService/StartAuthorization", oidc_user(subject))
        .await
        .unwrap()
}

/// An end user of connection `oidc`, as GetToken, GetGrant, RevokeGrant and
/// StartAuthorization name one.
fn oidc_user(subject: &str) -> Value {
    json!({"tenant": "acme", "provider": "oidc", "subject": subject})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_flow_refresh_rotation_and_revocation() {
    let Setup { oidc, server, c } = setup().await;

    let started = start(&c, "alice").await;
    let auth_url = started["authorization_url"].as_str().unwrap();
    let parsed = url::Url::parse(auth_url).unwrap();
    let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["state"], started["state"].as_str().unwrap());
    assert_eq!(q["scope"], "read");
    assert!(!auth_url.contains("code_verifier"));

    let (status, page) = browser(auth_url, "alice").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Authorization complete"), "{page}");

    let grant = c
        .call("AdminService/GetGrant", oidc_user("alice"))
        .await
        .unwrap();
    assert_eq!(grant["status"], "active");
    assert_eq!(grant["has_refresh_token"], true);
    assert!(
        !grant.to_string().contains("token\":\""),
        "no token in admin answers: {grant}"
    );

    // The token from the code exchange is served; no refresh yet.
    let t1 = c
        .call("TokenService/GetToken", oidc_user("alice"))
        .await
        .unwrap();
    assert_eq!(t1["scopes"], json!(["read"]));
    let stats = oidc.stats().await.unwrap();
    assert_eq!(stats["grants"]["authorization_code"], 1);
    assert_eq!(stats["grants"].get("refresh_token"), None);

    // The replayed callback (same state) is refused and changes nothing.
    let callback = format!(
        "{}/oauth/callback?code=whatever&state={}",
        server.http,
        started["state"].as_str().unwrap()
    );
    let replay = reqwest::get(&callback).await.unwrap();
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.unwrap().contains("already used"));

    // Reported dead → refreshed; a stampede on it → one refresh; twice, so the rotated
    // refresh token must have been stored (presenting the old one again would fail).
    let mut previous = t1["access_token"].as_str().unwrap().to_owned();
    for round in 1..=2 {
        let inv = c
            .call("TokenService/InvalidateToken", json!({"tenant": "acme", "provider": "oidc", "subject": "alice", "access_token": previous}))
            .await
            .unwrap();
        assert_eq!(inv["invalidated"], true);
        let calls = (0..50).map(|_| {
            let c = c.clone();
            async move { c.call("TokenService/GetToken", oidc_user("alice")).await }
        });
        let results = futures::future::join_all(calls).await;
        let fresh = results[0].as_ref().unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        for r in &results {
            assert_eq!(r.as_ref().unwrap()["access_token"], fresh.as_str());
        }
        assert_ne!(fresh, previous);
        let stats = oidc.stats().await.unwrap();
        assert_eq!(stats["grants"]["refresh_token"], round, "{stats}");
        previous = fresh;
    }
    let stats = oidc.stats().await.unwrap();
    for (_, times) in stats["refresh_tokens_presented"].as_object().unwrap() {
        assert_eq!(times, 1, "a refresh token was presented twice: {stats}");
    }

    // Client-credentials GetToken (no subject) is a different grant this client lacks.
    let err = c
        .call(
            "TokenService/GetToken",
            json!({"tenant": "acme", "provider": "oidc"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Revocation at the provider, then the grant is gone.
    let revoked = c
        .call("AdminService/RevokeGrant", oidc_user("alice"))
        .await
        .unwrap();
    assert_eq!(revoked["revoked_at_provider"], true);
    assert_eq!(oidc.stats().await.unwrap()["revocations"], 1);
    let err = c
        .call("TokenService/GetToken", oidc_user("alice"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_deref()),
        (Code::NotFound, Some("GRANT_NOT_FOUND"))
    );
    let err = c
        .call("AdminService/GetGrant", oidc_user("alice"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Nothing secret in the logs.
    let logs = server.output();
    assert!(!logs.contains("web-client-secret-Qx1"));
    assert!(!logs.contains(previous.as_str()));
    assert!(
        !logs.contains(started["state"].as_str().unwrap()),
        "the state is a bearer credential for the callback"
    );
}

#[tokio::test]
async fn refused_expired_and_unknown_flows_store_nothing() {
    let Setup {
        oidc: _oidc,
        server,
        c,
    } = setup().await;

    // The user declines at the provider: the callback says so, no grant.
    let started = start(&c, "bob").await;
    let (status, page) = browser(started["authorization_url"].as_str().unwrap(), "deny").await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("access_denied"), "{page}");
    let err = c
        .call("AdminService/GetGrant", oidc_user("bob"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // ...and that state cannot be completed afterwards.
    let err = c
        .call(
            "AdminService/CompleteAuthorization",
            json!({"state": started["state"], "code": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // An unknown state, through the RPC and through the callback.
    let err = c
        .call(
            "AdminService/CompleteAuthorization",
            json!({"state": "forged-state", "code": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("state:"), "{}", err.message());
    let r = reqwest::get(format!(
        "{}/oauth/callback?code=x&state=forged",
        server.http
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::get(format!("{}/oauth/callback", server.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A code the provider does not know (or that expired): its invalid_grant, nothing stored.
    let started = start(&c, "carol").await;
    let err = c
        .call(
            "AdminService/CompleteAuthorization",
            json!({"state": started["state"], "code": "not-a-real-code"}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_deref()),
        (Code::FailedPrecondition, Some("INVALID_GRANT"))
    );
    let err = c
        .call("AdminService/GetGrant", oidc_user("carol"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Bad input for StartAuthorization.
    for (req, field) in [
        (
            json!({"tenant": "acme", "provider": "oidc", "subject": ""}),
            "subject",
        ),
        (
            json!({"tenant": "acme", "provider": "oidc", "subject": "x", "scopes": ["a b"]}),
            "scopes",
        ),
    ] {
        let err = c
            .call("AdminService/StartAuthorization", req)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{}",
            err.message()
        );
    }
    let err = c
        .call(
            "AdminService/StartAuthorization",
            json!({"tenant": "acme", "provider": "nope", "subject": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// Every callback page carries headers that keep it out of caches, frames and Referers,
/// and shows no text the provider (or whoever sent the browser) chose: only an RFC 6749
/// error code, escaped, and never `error_description`.
#[tokio::test]
async fn callback_pages_are_private_and_show_no_provider_text() {
    const PLANTED: &str = "planted-description-Vw3";
    let provider = grant_provider(|_| wiremock::ResponseTemplate::new(500)).await;
    let server = Server::with_env(vec![public_url()]).await;
    let c = server.client().await;
    grant_connection(&c, &provider, None).await;
    let start = |subject: &'static str| {
        let c = c.clone();
        async move {
            c.call("AdminService/StartAuthorization", user(subject))
                .await
                .unwrap()["state"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let callback = |pairs: &[(&str, &str)]| {
        let mut url = url::Url::parse(&format!("{}/oauth/callback", server.http)).unwrap();
        url.query_pairs_mut().extend_pairs(pairs);
        async move {
            let r = reqwest::get(url.as_str()).await.unwrap();
            let h = r.headers();
            assert_eq!(h["cache-control"], "no-store", "{url}");
            assert_eq!(h["pragma"], "no-cache", "{url}");
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(
                csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
                "{url}: {csp}"
            );
            assert_eq!(h["x-content-type-options"], "nosniff", "{url}");
            assert_eq!(h["referrer-policy"], "no-referrer", "{url}");
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    let state = start("dave").await;
    let (status, page) = callback(&[("code", "the-code"), ("state", &state)]).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("tokenvend now holds the grant of dave at p for tenant acme"),
        "{page}"
    );

    let state = start("erin").await;
    let description = format!("<script>alert(1)</script>Call +1 555 0100, {PLANTED}");
    let (status, page) = callback(&[
        ("error", "access_denied"),
        ("error_description", &description),
        ("state", &state),
    ])
    .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("error code access_denied"), "{page}");
    assert!(
        !page.contains(PLANTED) && !page.contains("<script") && !page.contains("555"),
        "{page}"
    );

    // A code outside RFC 6749's charset, or too long, is not echoed; one inside it is
    // escaped (its charset includes < and >).
    let long = "x".repeat(65);
    for bad in [
        "planted\"code",
        "planted\\code",
        "planted\u{e9}code",
        long.as_str(),
    ] {
        let (status, page) = callback(&[("error", bad), ("error_description", PLANTED)]).await;
        assert_eq!(status, 400, "{page}");
        assert!(page.contains("error code unknown"), "{bad}: {page}");
        assert!(
            !page.contains("planted") && !page.contains(&long),
            "{bad}: {page}"
        );
    }
    let (_, page) = callback(&[("error", "<i>denied</i>")]).await;
    assert!(
        page.contains("error code &lt;i&gt;denied&lt;/i&gt;"),
        "{page}"
    );
    assert!(!page.contains("<i>"), "{page}");

    // Refused state, missing parameters, an unreadable query: same headers.
    let (status, _) = callback(&[("code", "x"), ("state", "forged")]).await;
    assert_eq!(status, 400);
    let (status, _) = callback(&[]).await;
    assert_eq!(status, 400);
    let (status, page) = callback(&[("code", "a"), ("code", "b"), ("state", "s")]).await;
    assert_eq!(status, 400, "{page}");

    // The log names the error code, never the description.
    let logs = server.output();
    assert!(logs.contains("access_denied"));
    assert!(
        !logs.contains(PLANTED),
        "the error_description reached the log"
    );
}

//! Conformance with the four seed providers' documented requests and responses: method,
//! path (with its trailing slash), Authorization, Content-Type and Accept headers, the exact
//! set of form fields, and the documented response parsed — against precise mock endpoints.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Value, json};
use tonic::Code;
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{header, method, path},
};

use crate::support::{Client, Server, no_invalidate_limit, public_url, reason};

fn form(r: &Request) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(&r.body).into_owned().collect()
}

fn keys(f: &BTreeMap<String, String>) -> Vec<&str> {
    f.keys().map(String::as_str).collect()
}

fn hdr<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The headers every token request carries, and whether Basic auth was used.
fn assert_common(r: &Request, basic: Option<(&str, &str)>) {
    assert_eq!(r.method.as_str(), "POST");
    assert_eq!(
        hdr(r, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(hdr(r, "accept"), Some("application/json"));
    match basic {
        Some((id, secret)) => {
            let expected =
                base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
            assert_eq!(
                hdr(r, "authorization"),
                Some(format!("Basic {expected}").as_str())
            );
        }
        None => assert_eq!(hdr(r, "authorization"), None, "no Authorization header"),
    }
}

async fn server() -> (Server, Client) {
    Server::with_acme(vec![public_url(), no_invalidate_limit()]).await
}

async fn put(c: &Client, req: Value) -> Value {
    c.put_connection(req).await.expect("PutConnection")
}

#[tokio::test]
async fn catalog_lists_templates_and_resolves_documented_urls() {
    let (_server, c) = server().await;
    let list = c
        .call("AdminService/ListTemplates", json!({}))
        .await
        .unwrap();
    let names: Vec<_> = list["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["generic", "edrv", "depotfinity", "evenergy", "enode"]
    );
    let depot = list["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "depotfinity")
        .unwrap();
    assert_eq!(depot["params"][0]["name"], "region");
    assert_eq!(depot["params"][0]["required"], true);

    let cases = [
        (
            json!({"template": "depotfinity", "template_params": {"region": "eu"}}),
            [
                "https://clientapp-auth.eu.depot.emobility.io/oauth2/token",
                "",
                "",
            ],
            "CLIENT_AUTH_BASIC",
        ),
        (
            json!({"template": "evenergy"}),
            [
                "https://api.ev.energy/o/token",
                "https://api.ev.energy/o/authorize/",
                "https://api.ev.energy/o/revoke_token/",
            ],
            "CLIENT_AUTH_BASIC",
        ),
        (
            json!({"template": "enode", "template_params": {"environment": "sandbox"}}),
            ["https://oauth.sandbox.enode.io/oauth2/token", "", ""],
            "CLIENT_AUTH_BASIC",
        ),
        (
            json!({"template": "enode", "template_params": {"environment": "production"}}),
            ["https://oauth.production.enode.io/oauth2/token", "", ""],
            "CLIENT_AUTH_BASIC",
        ),
        (
            json!({"template": "edrv", "token_url": "https://auth.edrv.example/oauth/token"}),
            ["https://auth.edrv.example/oauth/token", "", ""],
            "CLIENT_AUTH_POST",
        ),
    ];
    for (i, (extra, urls, auth)) in cases.into_iter().enumerate() {
        let mut req = json!({"tenant": "acme", "provider": format!("p{i}"), "client_id": "id", "client_secret": "s"});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let v = put(&c, req).await;
        assert_eq!(v["effective_token_url"], urls[0], "{v}");
        assert_eq!(v["effective_authorize_url"], urls[1], "{v}");
        assert_eq!(v["effective_revocation_url"], urls[2], "{v}");
        assert_eq!(v["effective_client_auth"], auth, "{v}");
    }

    // Bad template input: precise errors, nothing written.
    for (req, msg) in [
        (
            json!({"template": "depotfinity"}),
            "requires parameter \"region\"",
        ),
        (
            json!({"template": "depotfinity", "template_params": {"region": "eu.evil.example"}}),
            "region must match",
        ),
        (
            json!({"template": "depotfinity", "template_params": {"region": "eu", "colour": "red"}}),
            "no parameter \"colour\"",
        ),
        (
            json!({"template": "enode", "template_params": {"environment": "staging"}}),
            "one of: sandbox, production",
        ),
        (
            json!({"template": "edrv"}),
            "token_url: is required for template \"edrv\"",
        ),
        (json!({"template": "nope"}), "unknown template"),
    ] {
        let mut r =
            json!({"tenant": "acme", "provider": "bad", "client_id": "id", "client_secret": "s"});
        r.as_object_mut()
            .unwrap()
            .extend(req.as_object().unwrap().clone());
        let err = c.put_connection(r).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(msg), "{msg}: {}", err.message());
    }
    let err = c
        .call(
            "AdminService/GetConnection",
            json!({"tenant": "acme", "provider": "bad"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn edrv_form_body_audience_expiry_report_and_static_api_key() {
    let (_server, c) = server().await;
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "YOUR_ACCESS_TOKEN", "expires_in": 86400, "token_type": "Bearer", "scope": "read:x write:y"
        })))
        .mount(&mock)
        .await;
    put(
        &c,
        json!({"tenant": "acme", "provider": "edrv", "template": "edrv",
                   "token_url": format!("{}/oauth/token", mock.uri()),
                   "client_id": "S4BTj2Kx8Oe75y64J2QeQ2j2oR1CeDRV", "client_secret": "edrv-secret",
                   "audience": "https://api.edrv.io"}),
    )
    .await;
    let t = c.get_token("acme", "edrv").await.unwrap();
    assert_eq!(t["access_token"], "YOUR_ACCESS_TOKEN");
    assert_eq!(t["scopes"], json!(["read:x", "write:y"]));
    let reqs = mock.received_requests().await.unwrap();
    assert_common(&reqs[0], None);
    let f = form(&reqs[0]);
    assert_eq!(
        keys(&f),
        ["audience", "client_id", "client_secret", "grant_type"]
    );
    assert_eq!(f["grant_type"], "client_credentials");
    assert_eq!(f["client_id"], "S4BTj2Kx8Oe75y64J2QeQ2j2oR1CeDRV");
    assert_eq!(f["client_secret"], "edrv-secret");
    assert_eq!(f["audience"], "https://api.edrv.io");

    // eDRV answered a call with 401 {"ok":false,"message":"jwt expired"}: the caller reports
    // the token, and the next GetToken fetches a new one (one request, however many report).
    for expected in [true, false] {
        let inv = c
            .call(
                "TokenService/InvalidateToken",
                json!({"tenant": "acme", "provider": "edrv", "access_token": "YOUR_ACCESS_TOKEN"}),
            )
            .await
            .unwrap();
        assert_eq!(inv["invalidated"], expected);
    }
    c.get_token("acme", "edrv").await.unwrap();
    assert_eq!(mock.received_requests().await.unwrap().len(), 2);

    // The documented request always has the audience field, even empty.
    put(&c, json!({"tenant": "acme", "provider": "edrv2", "template": "edrv",
                   "token_url": format!("{}/oauth/token", mock.uri()), "client_id": "id", "client_secret": "s"})).await;
    c.get_token("acme", "edrv2").await.unwrap();
    let f = form(&mock.received_requests().await.unwrap()[2]);
    assert_eq!(f.get("audience").map(String::as_str), Some(""));

    // eDRV's recommended static API key: returned as is, no expiry, no provider call.
    let v = put(&c, json!({"tenant": "acme", "provider": "edrv-key", "template": "edrv", "api_key": "edrv-static-key-123"})).await;
    assert_eq!(v["credential_kind"], "api_key");
    assert!(!v.to_string().contains("edrv-static-key-123"));
    let t = c.get_token("acme", "edrv-key").await.unwrap();
    assert_eq!(t["access_token"], "edrv-static-key-123");
    assert_eq!(t["expires_at"], Value::Null);
    assert_eq!(mock.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn depotfinity_basic_auth_and_403() {
    let (_server, c) = server().await;
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .and(header("authorization", "Basic ZGVwb3QtaWQ6ZGVwb3Qtc2VjcmV0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "eyJ0eXAiOiUSJ9.eyJpc3MiOiJdGlhbHMifQ.MJpcxLfyOt", "expires_in": 3600, "token_type": "Bearer"
        })))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(403))
        .mount(&mock)
        .await;
    let base = json!({"tenant": "acme", "provider": "depot", "template": "depotfinity",
                      "template_params": {"region": "eu"}, "token_url": format!("{}/oauth2/token", mock.uri()),
                      "client_id": "depot-id", "client_secret": "depot-secret"});
    put(&c, base.clone()).await;
    let t = c.get_token("acme", "depot").await.unwrap();
    assert_eq!(
        t["access_token"],
        "eyJ0eXAiOiUSJ9.eyJpc3MiOiJdGlhbHMifQ.MJpcxLfyOt"
    );
    let reqs = mock.received_requests().await.unwrap();
    assert_common(&reqs[0], Some(("depot-id", "depot-secret")));
    assert_eq!(reqs[0].url.path(), "/oauth2/token");
    assert_eq!(keys(&form(&reqs[0])), ["grant_type"]);

    // A bad request is answered 403: the provider rejected the credentials.
    let mut bad = base;
    bad["client_secret"] = json!("wrong");
    put(&c, bad).await;
    let err = c.get_token("acme", "depot").await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_deref()),
        (Code::FailedPrecondition, Some("PROVIDER_REJECTED"))
    );
    assert!(
        err.message().contains("rejected the client credentials"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn evenergy_client_credentials_code_refresh_and_revocation() {
    let (_server, c) = server().await;
    let mock = MockServer::start().await;
    // The documented client-credentials answer, trailing comma and all.
    Mock::given(method("POST"))
        .and(path("/o/token"))
        .and(header("authorization", "Basic ZXYtaWQ6ZXYtc2VjcmV0"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{ "access_token": "sUfQGMmfIrfrrUhcdMBrz1rrQzD2l8", "expires_in": 36000, "token_type": "Bearer", "scope": "charging_session:read vehicle:read", }"#,
            "application/json",
        ))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/o/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "ELf3uR6tEyRFaL1mLVFmsAEfNZLpso", "expires_in": 36000, "token_type": "Bearer",
            "scope": "charging_session:read vehicle:read", "refresh_token": "EgYR8vafiT0CgurFrU9yajj89K2z2n"
        })))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/o/revoke_token/"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/o/revoke_token"))
        .respond_with(ResponseTemplate::new(405))
        .mount(&mock)
        .await;

    put(
        &c,
        json!({"tenant": "acme", "provider": "ev", "template": "evenergy",
                   "token_url": format!("{}/o/token", mock.uri()),
                   "revocation_url": format!("{}/o/revoke_token/", mock.uri()),
                   "client_id": "ev-id", "client_secret": "ev-secret",
                   "scopes": ["charging_session:read", "vehicle:read"]}),
    )
    .await;

    // Client credentials: Basic, and the trailing-comma response parses.
    let t = c.get_token("acme", "ev").await.unwrap();
    assert_eq!(t["access_token"], "sUfQGMmfIrfrrUhcdMBrz1rrQzD2l8");
    assert_eq!(
        t["scopes"],
        json!(["charging_session:read", "vehicle:read"])
    );
    let reqs = mock.received_requests().await.unwrap();
    assert_common(&reqs[0], Some(("ev-id", "ev-secret")));
    assert_eq!(keys(&form(&reqs[0])), ["grant_type", "scope"]);

    // Authorization code with PKCE: the authorize URL is ev.energy's, with its trailing slash.
    let started = c
        .call(
            "AdminService/StartAuthorization",
            json!({"tenant": "acme", "provider": "ev", "subject": "driver-1"}),
        )
        .await
        .unwrap();
    let auth = url::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
    assert_eq!(
        format!("{}{}", auth.origin().ascii_serialization(), auth.path()),
        "https://api.ev.energy/o/authorize/"
    );
    let q: BTreeMap<String, String> = auth.query_pairs().into_owned().collect();
    assert_eq!(
        q["redirect_uri"],
        "https://tokenvend.example.com/oauth/callback"
    );
    assert_eq!(q["client_id"], "ev-id");
    let grant = c
        .call(
            "AdminService/CompleteAuthorization",
            json!({"state": started["state"], "code": "i8u3oRHEXajKcwzPgmujDbtMvDpaDs"}),
        )
        .await
        .unwrap();
    assert_eq!(grant["subject"], "driver-1");
    assert_eq!(grant["has_refresh_token"], true);
    let reqs = mock.received_requests().await.unwrap();
    let exchange = &reqs[1];
    assert_common(exchange, None);
    let f = form(exchange);
    assert_eq!(
        keys(&f),
        [
            "client_id",
            "client_secret",
            "code",
            "code_verifier",
            "grant_type",
            "redirect_uri"
        ]
    );
    assert_eq!(f["grant_type"], "authorization_code");
    assert_eq!(f["code"], "i8u3oRHEXajKcwzPgmujDbtMvDpaDs");
    assert_eq!(
        f["redirect_uri"],
        "https://tokenvend.example.com/oauth/callback"
    );
    // The verifier matches the challenge sent to the browser, and is RFC 7636-sized.
    assert_eq!(f["code_verifier"].len(), 43);
    use sha2::Digest;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(f["code_verifier"].as_bytes()));
    assert_eq!(q["code_challenge"], challenge);

    // The end user's token; reported dead → refresh with the id and secret in the body.
    let t = c
        .call(
            "TokenService/GetToken",
            json!({"tenant": "acme", "provider": "ev", "subject": "driver-1"}),
        )
        .await
        .unwrap();
    assert_eq!(t["access_token"], "ELf3uR6tEyRFaL1mLVFmsAEfNZLpso");
    c.call("TokenService/InvalidateToken", json!({"tenant": "acme", "provider": "ev", "subject": "driver-1", "access_token": "ELf3uR6tEyRFaL1mLVFmsAEfNZLpso"}))
        .await
        .unwrap();
    c.call(
        "TokenService/GetToken",
        json!({"tenant": "acme", "provider": "ev", "subject": "driver-1"}),
    )
    .await
    .unwrap();
    let reqs = mock.received_requests().await.unwrap();
    let refresh = &reqs[2];
    assert_common(refresh, None);
    let f = form(refresh);
    assert_eq!(
        keys(&f),
        ["client_id", "client_secret", "grant_type", "refresh_token"]
    );
    assert_eq!(f["refresh_token"], "EgYR8vafiT0CgurFrU9yajj89K2z2n");

    // Revocation at /o/revoke_token/ (with the slash), form body: client_id, client_secret, token.
    let r = c
        .call(
            "AdminService/RevokeGrant",
            json!({"tenant": "acme", "provider": "ev", "subject": "driver-1"}),
        )
        .await
        .unwrap();
    assert_eq!(r["revoked_at_provider"], true);
    let reqs = mock.received_requests().await.unwrap();
    let revoke = &reqs[3];
    assert_eq!(revoke.url.path(), "/o/revoke_token/");
    assert_common(revoke, None);
    let f = form(revoke);
    assert_eq!(keys(&f), ["client_id", "client_secret", "token"]);
    assert_eq!(f["token"], "EgYR8vafiT0CgurFrU9yajj89K2z2n");
}

#[tokio::test]
async fn enode_lowercase_bearer_empty_scope_and_single_secret_rotation() {
    let (_server, c) = server().await;
    let mock = MockServer::start().await;
    // Enode: one active secret. Only the current one works.
    let current = std::sync::Arc::new(std::sync::Mutex::new("enode-secret-1".to_owned()));
    let cur = current.clone();
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(move |r: &Request| {
            let expected = base64::engine::general_purpose::STANDARD.encode(format!("enode-id:{}", cur.lock().unwrap()));
            if hdr(r, "authorization") == Some(format!("Basic {expected}").as_str()) {
                ResponseTemplate::new(200).set_body_json(json!({"access_token": "enode-token", "expires_in": 3599, "scope": "", "token_type": "bearer"}))
            } else {
                ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"}))
            }
        })
        .mount(&mock)
        .await;
    let v = put(
        &c,
        json!({"tenant": "acme", "provider": "enode", "template": "enode",
                           "template_params": {"environment": "sandbox"},
                           "token_url": format!("{}/oauth2/token", mock.uri()),
                           "client_id": "enode-id", "client_secret": "enode-secret-1"}),
    )
    .await;
    let t = c.get_token("acme", "enode").await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scopes"], json!([]));
    let reqs = mock.received_requests().await.unwrap();
    assert_common(&reqs[0], Some(("enode-id", "enode-secret-1")));
    assert_eq!(keys(&form(&reqs[0])), ["grant_type"]);

    // The operator regenerates the secret at Enode: the old one is dead at once.
    *current.lock().unwrap() = "enode-secret-2".to_owned();
    // A wrong new secret is refused and the stored one stays.
    let err = c
        .call(
            "AdminService/RotateClientSecret",
            json!({"tenant": "acme", "provider": "enode", "client_secret": "typo"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("the old one stays"),
        "{}",
        err.message()
    );
    let same = c
        .call(
            "AdminService/GetConnection",
            json!({"tenant": "acme", "provider": "enode"}),
        )
        .await
        .unwrap();
    assert_eq!(same["secret_fingerprint"], v["secret_fingerprint"]);
    assert_eq!(same["version"], v["version"]);
    // The right one is verified with a token request and replaces the old one.
    let rotated = c
        .call(
            "AdminService/RotateClientSecret",
            json!({"tenant": "acme", "provider": "enode", "client_secret": "enode-secret-2"}),
        )
        .await
        .unwrap();
    assert_ne!(rotated["secret_fingerprint"], v["secret_fingerprint"]);
    assert_eq!(rotated["version"], "2");
    assert!(!rotated.to_string().contains("enode-secret-2"));
    // Cached tokens from before the rotation are dropped; the next fetch uses the new secret.
    c.get_token("acme", "enode").await.unwrap();
    let last = mock.received_requests().await.unwrap().pop().unwrap();
    assert_common(&last, Some(("enode-id", "enode-secret-2")));
}

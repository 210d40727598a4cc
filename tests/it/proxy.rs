//! Provider calls and proxies: the environment's proxy variables are ignored (a proxy
//! resolves the target itself, past the address guard), and only the operator's
//! TOKENVEND_PROVIDER_PROXY is used.

use serde_json::json;
use tokenvend_testkit::proxy::{CountingProxy, PROXY_TOKEN};

use crate::support::{Opts, Server, answer, setup_connection, token_provider, token_url};

/// HTTP_PROXY and friends point at a counting proxy that would answer with a token of its
/// own: the token must come from the provider, and the proxy must see no connection.
#[tokio::test]
async fn environment_proxy_variables_are_ignored() {
    let proxy = CountingProxy::start().await.unwrap();
    let provider = token_provider(
        answer(json!({"access_token": "from-the-provider", "token_type": "Bearer", "expires_in": 3600})),
        1,
    )
    .await;
    let env = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .map(|k| (k, proxy.url("127.0.0.1")));
    let server = Server::with_env(env.to_vec()).await;
    let c = server.client().await;
    setup_connection(&c, "acme", "p", &token_url(&provider), "s3cret", json!({})).await;

    let token = c.get_token("acme", "p").await.unwrap();
    assert_eq!(token["access_token"], "from-the-provider");
    assert_eq!(proxy.accepted(), 0, "the environment's proxy was used");
}

/// With TOKENVEND_PROVIDER_PROXY the provider call goes through that proxy (which answers
/// itself; nothing listens at the token URL).
#[tokio::test]
async fn configured_provider_proxy_carries_provider_calls() {
    let proxy = CountingProxy::start().await.unwrap();
    let server = Server::with_env(vec![("TOKENVEND_PROVIDER_PROXY", proxy.url("localhost"))]).await;
    assert!(
        server
            .output()
            .contains("provider calls go through the configured proxy")
    );
    let c = server.client().await;
    setup_connection(
        &c,
        "acme",
        "p",
        "http://127.0.0.1:9/token",
        "s3cret",
        json!({}),
    )
    .await;

    let token = c.get_token("acme", "p").await.unwrap();
    assert_eq!(token["access_token"], PROXY_TOKEN);
    assert_eq!(proxy.accepted(), 1);
}

/// A proxy setting that is not an http(s) URL stops the start, naming the setting and not
/// repeating the value (it may carry credentials).
#[tokio::test]
async fn unusable_provider_proxy_stops_the_start() {
    for bad in [
        "socks5://user:planted-proxy-pw@10.0.0.1:1080",
        "planted-proxy-pw:3128",
    ] {
        let out = Server::refused(Opts {
            env: vec![("TOKENVEND_PROVIDER_PROXY", bad.into())],
            ..Default::default()
        })
        .await;
        assert!(
            out.contains(
                "TOKENVEND_PROVIDER_PROXY (--provider-proxy) must be an http:// or https:// URL"
            ),
            "{out}"
        );
        assert!(!out.contains("planted-proxy-pw"), "{out}");
    }
}

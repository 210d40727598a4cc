//! The README's walkthrough against a real OAuth 2.0 server (oidc-provider): tenant,
//! client-credentials connection (Basic and form-body client auth), GetToken, answered
//! from memory the second time — on SQLite and on PostgreSQL.

use serde_json::json;
use tokenvend_testkit::{oidc::OidcServer, postgres::PgCluster};

use crate::support::{Opts, Server};

async fn walkthrough(opts: Opts) {
    let oidc = OidcServer::start(json!({
        "clients": [
            {"client_id": "cc-basic", "client_secret": "basic-secret-1", "grant_types": ["client_credentials"],
             "response_types": [], "redirect_uris": [], "token_endpoint_auth_method": "client_secret_basic",
             "scope": "read write"},
            {"client_id": "cc-post", "client_secret": "post-secret-2", "grant_types": ["client_credentials"],
             "response_types": [], "redirect_uris": [], "token_endpoint_auth_method": "client_secret_post"}
        ],
        "scopes": ["read", "write"],
        "access_token_ttl": 3600
    }))
    .await
    .unwrap();
    let server = Server::start(opts).await.unwrap();
    let c = server.client().await;
    c.call(
        "AdminService/CreateTenant",
        json!({"tenant": "acme", "display_name": "Acme"}),
    )
    .await
    .unwrap();
    let put = c
        .put_connection(
            json!({"tenant": "acme", "provider": "basic", "token_url": oidc.token_url(),
                   "client_id": "cc-basic", "client_secret": "basic-secret-1",
                   "client_auth": "CLIENT_AUTH_BASIC", "scopes": ["read", "write"]}),
        )
        .await
        .unwrap();
    assert_eq!(put["effective_token_url"], oidc.token_url());
    assert!(!put.to_string().contains("basic-secret-1"));
    c.put_connection(json!({"tenant": "acme", "provider": "post", "token_url": oidc.token_url(),
               "client_id": "cc-post", "client_secret": "post-secret-2", "client_auth": "CLIENT_AUTH_POST"}),
    )
    .await
    .unwrap();

    let t1 = c.get_token("acme", "basic").await.unwrap();
    assert_eq!(t1["token_type"], "Bearer");
    assert_eq!(t1["scopes"], json!(["read", "write"]));
    assert!(t1["access_token"].as_str().unwrap().len() >= 20);
    let again = c.get_token("acme", "basic").await.unwrap();
    assert_eq!(
        again["access_token"], t1["access_token"],
        "answered from memory"
    );
    let post = c.get_token("acme", "post").await.unwrap();
    assert_ne!(post["access_token"], t1["access_token"]);

    let stats = oidc.stats().await.unwrap();
    assert_eq!(stats["grants"]["client_credentials"], 2, "{stats}");

    // A wrong secret is the provider's invalid_client, as FAILED_PRECONDITION.
    c.put_connection(
        json!({"tenant": "acme", "provider": "basic", "token_url": oidc.token_url(),
               "client_id": "cc-basic", "client_secret": "not-the-secret"}),
    )
    .await
    .unwrap();
    let err = c.get_token("acme", "basic").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        crate::support::reason(&err).as_deref(),
        Some("INVALID_CLIENT")
    );
}

#[tokio::test]
async fn walkthrough_on_sqlite() {
    walkthrough(Opts::default()).await;
}

#[tokio::test]
async fn walkthrough_on_postgres() {
    walkthrough(Opts {
        database_url: Some(PgCluster::shared().fresh_database()),
        ..Default::default()
    })
    .await;
}

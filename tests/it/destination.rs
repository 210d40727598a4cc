//! A write-only secret stays with its destination: whoever may call `PutConnection` cannot
//! repoint a connection at a server of its choice and have tokenvend send it the stored
//! secret. Counted at the provider and at the would-be thief.

use serde_json::json;
use tonic::Code;

use crate::support::{Server, form, reason, token_answer, token_provider, token_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repointing_a_connection_needs_its_secret_again() {
    let provider = token_provider(token_answer("real"), 1..).await;
    let thief = token_provider(token_answer("stolen"), 1).await;
    let (_server, c) = Server::with_acme(vec![]).await;
    c.put_connection(
        json!({"tenant": "acme", "provider": "p", "token_url": token_url(&provider),
                            "client_id": "id", "client_secret": "the-stored-secret",
                            "client_auth": "CLIENT_AUTH_POST"}),
    )
    .await
    .unwrap();

    // Each setting that decides where or how the secret goes, changed without the secret.
    for (field, value) in [
        ("token_url", json!(token_url(&thief))),
        ("client_id", json!("other-id")),
        ("client_auth", json!("CLIENT_AUTH_BASIC")),
        ("revocation_url", json!(format!("{}/revoke", thief.uri()))),
        ("template", json!("enode")),
    ] {
        let mut req = json!({"tenant": "acme", "provider": "p", "token_url": token_url(&provider),
                             "client_id": "id", "client_auth": "CLIENT_AUTH_POST"});
        req[field] = value;
        if field == "template" {
            req["template_params"] = json!({"environment": "sandbox"});
        }
        let err = c.put_connection(req).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_deref()),
            (Code::InvalidArgument, Some("INVALID_ARGUMENT")),
            "{field}: {err:?}"
        );
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "names the field: {}",
            err.message()
        );
    }
    // Nothing changed: the token still comes from the real provider, with the stored secret.
    let t = c.get_token("acme", "p").await.unwrap();
    assert_eq!(t["access_token"], "real");
    // Settings that do not move the secret may change without it.
    c.put_connection(
        json!({"tenant": "acme", "provider": "p", "token_url": token_url(&provider),
                            "client_id": "id", "client_auth": "CLIENT_AUTH_POST",
                            "scopes": ["read"]}),
    )
    .await
    .expect("a scope change keeps the secret");

    // Repointing with a secret given again is allowed; the thief then gets that one only.
    c.put_connection(
        json!({"tenant": "acme", "provider": "p", "token_url": token_url(&thief),
                            "client_id": "id", "client_secret": "a-new-secret",
                            "client_auth": "CLIENT_AUTH_POST"}),
    )
    .await
    .unwrap();
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "stolen"
    );
    let sent: Vec<String> = thief
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| form(r)["client_secret"].clone())
        .collect();
    assert_eq!(
        sent,
        ["a-new-secret"],
        "the stored secret never left for it"
    );
}

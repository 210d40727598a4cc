//! Callers and what they may do: API keys, roles, permissions on (tenant, provider) pairs,
//! their propagation to every replica, rate limits, and the audit log — through the real
//! binary, as a calling service and an operator would meet them.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;

use crate::support::{
    CallOpts, Client, Server, reason, retry_info, setup_connection, token_answer, token_provider,
    token_url, wait_until,
};

/// Creates principal `name` with `role` and its permissions; returns a new API key.
async fn caller(admin: &Client, name: &str, role: &str, grants: &[(&str, &str)]) -> String {
    admin
        .call(
            "AdminService/CreatePrincipal",
            json!({"principal": name, "role": role, "description": format!("the {name} service")}),
        )
        .await
        .expect("CreatePrincipal");
    for (tenant, provider) in grants {
        admin
            .call(
                "AdminService/GrantPermission",
                json!({"principal": name, "tenant": tenant, "provider": provider}),
            )
            .await
            .expect("GrantPermission");
    }
    new_key(admin, name, None).await
}

async fn new_key(admin: &Client, principal: &str, expires_at: Option<String>) -> String {
    let mut req = json!({"principal": principal});
    if let Some(at) = expires_at {
        req["expires_at"] = json!(at);
    }
    let created = admin
        .call("AdminService/CreateApiKey", req)
        .await
        .expect("CreateApiKey");
    let key = created["api_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("tvk_{}_", created["key_id"].as_str().unwrap())));
    key
}

async fn as_caller(server: &Server, key: &str) -> Client {
    Client::connect(&server.grpc, Some(key)).await.unwrap()
}

async fn audit(admin: &Client, filter: Value) -> Vec<Value> {
    admin
        .call("AdminService/ListAuditEvents", filter)
        .await
        .unwrap()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_gets_exactly_the_pairs_it_was_granted() {
    let provider = token_provider(token_answer("acme-token"), 1..).await;
    let (server, admin) = Server::with_acme(vec![]).await;
    setup_connection(
        &admin,
        "acme",
        "p",
        &token_url(&provider),
        "planted-client-secret-1",
        json!({}),
    )
    .await;
    setup_connection(
        &admin,
        "globex",
        "p",
        &token_url(&provider),
        "planted-client-secret-2",
        json!({}),
    )
    .await;
    let key = caller(&admin, "billing", "ROLE_CALLER", &[("acme", "p")]).await;
    let billing = as_caller(&server, &key).await;

    assert_eq!(
        billing.get_token("acme", "p").await.unwrap()["access_token"],
        "acme-token"
    );

    // Not granted: a connection that does not exist, another tenant's (existing) connection,
    // and a tenant that does not exist — one and the same answer.
    let mut refusals = Vec::new();
    for (tenant, provider) in [("acme", "q"), ("globex", "p"), ("initech", "p")] {
        let err = billing.get_token(tenant, provider).await.unwrap_err();
        refusals.push((err.code(), reason(&err), err.message().to_owned()));
    }
    assert_eq!(refusals[0].0, Code::PermissionDenied, "{refusals:?}");
    assert_eq!(refusals[0].1.as_deref(), Some("PERMISSION_DENIED"));
    assert!(refusals.iter().all(|r| *r == refusals[0]), "{refusals:?}");
    let err = billing
        .call(
            "TokenService/InvalidateToken",
            json!({"tenant": "globex", "provider": "p", "access_token": "x"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A caller key is no admin key.
    for (method, req) in [
        ("AdminService/ListTenants", json!({})),
        ("AdminService/CreateTenant", json!({"tenant": "x"})),
    ] {
        let err = billing.call(method, req).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{method}");
    }
    // No key, a wrong key, a forged key with a real key id: UNAUTHENTICATED.
    let forged = format!("{}A", &key[..key.len() - 1]);
    for k in [None, Some("nonsense"), Some(forged.as_str())] {
        let opts = CallOpts {
            no_key: k.is_none(),
            key: k.map(str::to_owned),
            ..Default::default()
        };
        let err = billing
            .call_opts(
                "TokenService/GetToken",
                json!({"tenant": "acme", "provider": "p"}),
                opts,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{k:?}");
    }
    // Reflection and health need no key (the client above was built through reflection).
    let anonymous = Client::connect(&server.grpc, None).await.unwrap();
    assert_eq!(crate::support::health(&anonymous, "").await, "SERVING");

    // `*` opens every provider of a tenant, at once on this replica.
    admin
        .call(
            "AdminService/GrantPermission",
            json!({"principal": "billing", "tenant": "globex", "provider": "*"}),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the new permission applies",
        async || billing.get_token("globex", "p").await.is_ok(),
    )
    .await;

    // Permissions are for callers; admins need none, and unknown names are named.
    let err = admin
        .call(
            "AdminService/GrantPermission",
            json!({"principal": "billing", "tenant": "initech", "provider": "*"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = admin
        .call(
            "AdminService/CreatePrincipal",
            json!({"principal": "x", "role": "ROLE_UNSPECIFIED"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("role"), "{}", err.message());

    // The listings never show a key.
    let keys = admin
        .call("AdminService/ListApiKeys", json!({"principal": "billing"}))
        .await
        .unwrap();
    assert_eq!(keys["api_keys"].as_array().unwrap().len(), 1);
    assert!(!keys.to_string().contains(&key));
    let perms = admin
        .call(
            "AdminService/ListPermissions",
            json!({"principal": "billing"}),
        )
        .await
        .unwrap();
    assert_eq!(
        perms["permissions"],
        json!([{"principal": "billing", "tenant": "acme", "provider": "p"},
               {"principal": "billing", "tenant": "globex", "provider": "*"}])
    );

    // The audit log: who changed what, who was refused, from where.
    let events = audit(&admin, json!({"principal": "billing"})).await;
    let denied: Vec<(&str, &str, &str)> = events
        .iter()
        .filter(|e| e["outcome"] == "PERMISSION_DENIED")
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["tenant"].as_str().unwrap_or(""),
                e["provider"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for expected in [
        ("GetToken", "acme", "q"),
        ("GetToken", "globex", "p"),
        ("GetToken", "initech", "p"),
        ("InvalidateToken", "globex", "p"),
        ("ListTenants", "", ""),
        ("CreateTenant", "", ""),
    ] {
        assert!(denied.contains(&expected), "{expected:?} in {denied:?}");
    }
    assert!(
        events
            .iter()
            .all(|e| e["peer"].as_str().unwrap().starts_with("127.0.0.1:"))
    );
    let unauthenticated = audit(&admin, json!({})).await;
    assert!(
        unauthenticated
            .iter()
            .filter(|e| e["outcome"] == "UNAUTHENTICATED" && e["action"] == "GetToken")
            .count()
            >= 3
    );
    let changes = audit(&admin, json!({"principal": "bootstrap"})).await;
    let actions: Vec<(&str, &str)> = changes
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("CreateTenant", "OK"),
        ("PutConnection", "OK"),
        ("CreatePrincipal", "OK"),
        ("CreateApiKey", "OK"),
        ("GrantPermission", "OK"),
        ("GrantPermission", "NOT_FOUND"),
        ("CreatePrincipal", "INVALID_ARGUMENT"),
    ] {
        assert!(actions.contains(&expected), "{expected:?} in {actions:?}");
    }
    // Reads are not audited; newest first.
    assert!(!actions.iter().any(|(a, _)| a.starts_with("List")));
    assert_eq!(actions[0], ("CreatePrincipal", "INVALID_ARGUMENT"));
    let acme = audit(&admin, json!({"tenant": "acme"})).await;
    assert!(acme.iter().all(|e| e["tenant"] == "acme"));

    // Planted secrets: nowhere in the logs, the audit log or the admin answers.
    let everything = format!(
        "{}{}{}",
        server.output(),
        serde_json::to_string(&audit(&admin, json!({"page_size": 1000})).await).unwrap(),
        admin
            .call("AdminService/ListConnections", json!({"tenant": "acme"}))
            .await
            .unwrap()
    );
    for secret in [
        key.as_str(),
        "planted-client-secret-1",
        "planted-client-secret-2",
        "acme-token",
    ] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_expiry_reach_every_replica() {
    let url = tokenvend_testkit::postgres::PgCluster::shared().fresh_database();
    let provider = token_provider(token_answer("t"), 1..).await;
    let replicas = Server::replicas(2, &url, vec![]).await;
    let (a, b) = (replicas[0].client().await, &replicas[1]);
    setup_connection(&a, "acme", "p", &token_url(&provider), "s", json!({})).await;
    let key = caller(&a, "billing", "ROLE_CALLER", &[("acme", "p")]).await;
    let expiring = new_key(
        &a,
        "billing",
        Some(
            (crate::support::now() + time::Duration::seconds(4))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
        ),
    )
    .await;
    let on_b = as_caller(b, &key).await;
    let expiring_on_b = as_caller(b, &expiring).await;
    // Made on A, known on B through the change feed.
    wait_until(Duration::from_secs(5), "B knows the new keys", async || {
        on_b.get_token("acme", "p").await.is_ok()
            && expiring_on_b.get_token("acme", "p").await.is_ok()
    })
    .await;

    // Expiry needs no notification: B refuses the key once its time has passed.
    wait_until(Duration::from_secs(15), "B refuses the expired key", async || {
        matches!(expiring_on_b.get_token("acme", "p").await, Err(s) if s.code() == Code::Unauthenticated
            && s.message().contains("expired"))
    })
    .await;

    // A permission revoked on A: B refuses that pair, within the feed's latency.
    a.call(
        "AdminService/RevokePermission",
        json!({"principal": "billing", "tenant": "acme", "provider": "p"}),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(5), "B applies the revoked permission", async || {
        matches!(on_b.get_token("acme", "p").await, Err(s) if s.code() == Code::PermissionDenied)
    })
    .await;

    // A key revoked on A: B refuses it.
    a.call(
        "AdminService/GrantPermission",
        json!({"principal": "billing", "tenant": "acme", "provider": "p"}),
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(5),
        "B applies the new permission",
        async || on_b.get_token("acme", "p").await.is_ok(),
    )
    .await;
    let key_id = key.split('_').nth(1).unwrap();
    a.call("AdminService/RevokeApiKey", json!({"key_id": key_id}))
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "B refuses the revoked key", async || {
        matches!(on_b.get_token("acme", "p").await, Err(s) if s.code() == Code::Unauthenticated)
    })
    .await;
    // And A too, of course.
    let on_a = as_caller(&replicas[0], &key).await;
    assert_eq!(
        on_a.get_token("acme", "p").await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // Deleting the principal takes every key it had.
    let other = new_key(&a, "billing", None).await;
    let other_on_b = as_caller(b, &other).await;
    wait_until(
        Duration::from_secs(5),
        "B knows the other key",
        async || other_on_b.get_token("acme", "p").await.is_ok(),
    )
    .await;
    let deleted = a
        .call(
            "AdminService/DeletePrincipal",
            json!({"principal": "billing"}),
        )
        .await
        .unwrap();
    // The expired key is still stored (listed, refused): it goes too.
    assert_eq!(deleted["revoked_api_keys"], "2");
    wait_until(Duration::from_secs(5), "B refuses the deleted principal's key", async || {
        matches!(other_on_b.get_token("acme", "p").await, Err(s) if s.code() == Code::Unauthenticated)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_spare_cache_hits_and_say_when_to_retry() {
    let provider = token_provider(token_answer("t"), 1..).await;
    let (server, admin) = Server::with_acme(vec![
        ("TOKENVEND_RATE_LIMIT", "1".into()),
        ("TOKENVEND_RATE_LIMIT_BURST", "2".into()),
        // The operator's own key stays unlimited for the set-up.
        ("TOKENVEND_RATE_LIMITS", "bootstrap=0".into()),
    ])
    .await;
    for p in ["p1", "p2", "p3"] {
        setup_connection(&admin, "acme", p, &token_url(&provider), "s", json!({})).await;
    }
    let key = caller(&admin, "billing", "ROLE_CALLER", &[("acme", "*")]).await;
    let billing = as_caller(&server, &key).await;
    // Two misses use the burst...
    billing.get_token("acme", "p1").await.unwrap();
    billing.get_token("acme", "p2").await.unwrap();
    // ...hits cost nothing, however many...
    for _ in 0..50 {
        billing.get_token("acme", "p1").await.unwrap();
    }
    // ...and the third miss must wait.
    let err = billing.get_token("acme", "p3").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("RATE_LIMITED"));
    let wait = retry_info(&err).expect("RetryInfo");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    // Another principal has its own budget.
    let other = caller(&admin, "analytics", "ROLE_CALLER", &[("acme", "*")]).await;
    as_caller(&server, &other)
        .await
        .get_token("acme", "p3")
        .await
        .unwrap();
    assert!(
        server.output().contains("rate limit reached"),
        "one line for the operator"
    );
}

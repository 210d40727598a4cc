//! Concurrency claims, counted at the provider.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::support::{
    Client, Opts, Server, answer, setup_connection, token_answer, token_provider, token_url,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_cold_callers_cause_one_provider_request() {
    let held_back =
        answer(json!({"access_token": "tok-stampede", "expires_in": 3600, "token_type": "bearer"}))
            // Held back long enough that the callers pile up on the cold key.
            .set_delay(Duration::from_millis(500));
    let provider = token_provider(held_back, 1).await;
    let server = Server::start(Opts::default()).await.unwrap();
    let admin = server.client().await;
    let url = token_url(&provider);
    setup_connection(&admin, "acme", "stampede", &url, "s3cret", json!({})).await;

    // Several HTTP/2 connections, as several calling services would have.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.client().await);
    }
    let calls = (0..1000).map(|i| {
        let c: Client = clients[i % clients.len()].clone();
        async move { c.get_token("acme", "stampede").await }
    });
    let results = join_all(calls).await;
    for r in &results {
        let r = r.as_ref().expect("GetToken");
        assert_eq!(r["access_token"], "tok-stampede");
        assert_eq!(r["token_type"], "Bearer");
    }
    assert_eq!(results.len(), 1000);
    let requests = provider.received_requests().await.unwrap();
    assert_eq!(
        requests.len(),
        1,
        "the provider saw {} token requests",
        requests.len()
    );
    // Dropping a MockServer verifies it by blocking on a tokio lock from inside this task:
    // with the task's cooperative budget spent by the thousand calls above it can spin
    // forever (seen once in CI). A yield gives the task a fresh budget first.
    tokio::task::yield_now().await;
    drop(provider);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_provider_does_not_block_other_keys() {
    // Key A's provider accepts the connection and never answers.
    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held_addr = held.local_addr().unwrap();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = held.accept().await {
            open.push(sock);
            let _ = accepted_tx.send(());
        }
    });
    let provider_b = token_provider(token_answer("tok-b"), 1).await;

    let server = Server::start(Opts::default()).await.unwrap();
    let c = server.client().await;
    setup_connection(
        &c,
        "acme",
        "held",
        &format!("http://{held_addr}/token"),
        "s",
        json!({}),
    )
    .await;
    setup_connection(&c, "acme", "free", &token_url(&provider_b), "s", json!({})).await;

    let a = {
        let c = c.clone();
        tokio::spawn(async move { c.get_token("acme", "held").await })
    };
    // A's fetch is under way once its provider has a connection.
    tokio::time::timeout(Duration::from_secs(10), accepted_rx.recv())
        .await
        .expect("A reached its provider");
    let b = tokio::time::timeout(Duration::from_secs(10), c.get_token("acme", "free"))
        .await
        .expect("B must not wait for A")
        .expect("B succeeds");
    assert_eq!(b["access_token"], "tok-b");
    assert!(!a.is_finished(), "A is still held by its provider");
    a.abort();
}

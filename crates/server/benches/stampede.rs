//! Cold-key stampedes against 1 and 3 real `tokenvend` replicas on one PostgreSQL:
//! how long callers wait and how many requests reach the provider.
//!
//! `cargo bench -p tokenvend-server --bench stampede` (needs what `scripts/test` needs).
//! The provider is a mock that answers after 100 ms, like a nearby token endpoint.
//! `STAMPEDE_CALLERS` (default 1000) and `STAMPEDE_REPLICAS` (default `1,3`) change the
//! load, e.g. `STAMPEDE_CALLERS=10000 STAMPEDE_REPLICAS=1` for issue 12's 10 000 callers.

#[allow(dead_code)]
#[path = "../../../tests/it/support.rs"]
mod support;

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use tokenvend_testkit::postgres::PgCluster;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

fn callers() -> usize {
    std::env::var("STAMPEDE_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn replica_counts() -> Vec<usize> {
    std::env::var("STAMPEDE_REPLICAS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 3])
}
const ROUNDS: usize = 5;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let callers = callers();
    rt.block_on(async {
        let provider = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": "bench-token", "expires_in": 3600}))
                    .set_delay(Duration::from_millis(100)),
            )
            .mount(&provider)
            .await;
        let url = PgCluster::shared().fresh_database();
        println!("| replicas | callers per round | rounds | upstream requests per round | p50 wait | p99 wait | max wait |");
        println!("|---|---|---|---|---|---|---|");
        let mut servers = Vec::new();
        for replicas in replica_counts() {
            while servers.len() < replicas {
                servers.push(
                    support::Server::start(support::Opts {
                        database_url: Some(url.clone()),
                        env: vec![("TOKENVEND_LOG", "warn,tokenvend_server::app=info".into())],
                        ..Default::default()
                    })
                    .await
                    .expect("start tokenvend"),
                );
            }
            let admin = servers[0].client().await;
            let _ = admin.call("AdminService/CreateTenant", json!({"tenant": "bench"})).await;
            let mut clients = Vec::new();
            for s in &servers[..replicas] {
                for _ in 0..4 {
                    clients.push(s.client().await);
                }
            }
            let mut waits = Vec::new();
            let mut upstream = Vec::new();
            for round in 0..ROUNDS {
                let provider_slug = format!("r{replicas}-{round}");
                let path = format!("/{provider_slug}");
                support::setup_connection(&admin, "bench", &provider_slug, &format!("{}{path}", provider.uri()), "s", json!({})).await;
                let calls = (0..callers).map(|i| {
                    let c = clients[i % clients.len()].clone();
                    let req = support::get_token_req("bench", &provider_slug);
                    async move {
                        let start = tokio::time::Instant::now();
                        c.call("TokenService/GetToken", req).await.expect("GetToken");
                        start.elapsed()
                    }
                });
                waits.extend(join_all(calls).await);
                let n = provider
                    .received_requests()
                    .await
                    .unwrap()
                    .iter()
                    .filter(|r| r.url.path() == path)
                    .count();
                upstream.push(n);
            }
            waits.sort();
            println!(
                "| {replicas} | {callers} | {ROUNDS} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
                upstream.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
                percentile(&waits, 0.5).as_secs_f64() * 1e3,
                percentile(&waits, 0.99).as_secs_f64() * 1e3,
                waits.last().unwrap().as_secs_f64() * 1e3,
            );
        }
    });
}

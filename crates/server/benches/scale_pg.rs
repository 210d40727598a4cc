//! tokenvend with a thousand and with a million connections in PostgreSQL: start-up to
//! SERVING, RSS, and a cached GetToken's latency must not depend on the size of the store.
//! (`scripts/bench-scale` measures the same on the embedded SQLite store.)
//!
//! `cargo bench -p tokenvend-server --bench scale_pg` (needs what `scripts/test` needs).
//! `SCALE_SIZES` (default `1000,1000000`) changes the sizes.
//!
//! For each size: a fresh database; tokenvend creates tenant `acme` and connection `p`
//! through the API and stops; the connection row is cloned in SQL until the store holds
//! SIZE connections (the clones are never used); tokenvend starts again and is measured.

#[allow(dead_code)]
#[path = "../../../tests/it/support.rs"]
mod support;

use std::{process::Command, time::Duration};

use serde_json::json;
use support::{ADMIN_KEY, Opts, Server, health, rss_kib, setup_connection};
use tokenvend_proto::v1::{GetTokenRequest, token_service_client::TokenServiceClient};
use tokenvend_testkit::postgres::PgCluster;
use tokio::time::Instant;
use tonic::transport::Channel;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

fn sizes() -> Vec<usize> {
    std::env::var("SCALE_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 1_000_000])
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let provider = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": "bench-token", "expires_in": 3600})),
            )
            .mount(&provider)
            .await;
        println!("| connections in PostgreSQL | start-up to SERVING | RSS after start / after load | cached GetToken, 1 call at a time: mean, p99 |");
        println!("|---|---|---|---|");
        for size in sizes() {
            let url = PgCluster::shared().fresh_database();
            let opts = || Opts {
                database_url: Some(url.clone()),
                env: vec![("TOKENVEND_LOG", "info".to_owned())],
                ..Default::default()
            };
            let mut first = Server::start(opts()).await.expect("starts");
            let admin = first.client().await;
            setup_connection(&admin, "acme", "p", &format!("{}/token", provider.uri()), "s3cret", json!({})).await;
            first.proc.signal(libc::SIGKILL);
            first.proc.wait_exit(Duration::from_secs(10)).await.expect("exits");
            psql(
                &url,
                &format!(
                    "INSERT INTO connections (id, tenant_id, provider, version, settings, client_secret, api_key, \
                     secret_fingerprint, created_at, updated_at) \
                     SELECT gen_random_uuid(), c.tenant_id, 'gen-' || n, c.version, c.settings, c.client_secret, \
                     c.api_key, c.secret_fingerprint, c.created_at, c.updated_at \
                     FROM connections c, generate_series(1, {}) n WHERE c.provider = 'p'",
                    size - 1
                ),
            );
            psql(&url, "VACUUM ANALYZE connections");
            let count = psql(&url, "SELECT count(*) FROM connections");
            assert_eq!(count, size.to_string());

            let started = Instant::now();
            let server = Server::start(opts()).await.expect("starts");
            let c = server.client().await;
            while health(&c, "").await != "SERVING" {
                tokio::task::yield_now().await;
            }
            let startup = started.elapsed();
            let rss_start = rss_kib(server.proc.pid());

            let channel = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
            let mut client = TokenServiceClient::new(channel);
            let request = || {
                let mut r = tonic::Request::new(GetTokenRequest {
                    tenant: "acme".into(),
                    provider: "p".into(),
                    min_ttl_seconds: None,
                    subject: String::new(),
                });
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {ADMIN_KEY}").parse().unwrap());
                r
            };
            client.get_token(request()).await.expect("the first token");
            let mut took = Vec::with_capacity(20_000);
            for _ in 0..20_000 {
                let t = Instant::now();
                client.get_token(request()).await.expect("a hit");
                took.push(t.elapsed());
            }
            took.sort();
            let mean = took.iter().sum::<Duration>() / took.len() as u32;
            let rss_load = rss_kib(server.proc.pid());
            println!(
                "| {size} | {} ms | {:.1} / {:.1} MiB | {:.0} µs, {:.0} µs |",
                startup.as_millis(),
                rss_start as f64 / 1024.0,
                rss_load as f64 / 1024.0,
                mean.as_secs_f64() * 1e6,
                percentile(&took, 0.99).as_secs_f64() * 1e6,
            );
        }
    });
}

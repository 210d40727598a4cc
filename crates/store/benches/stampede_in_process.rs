//! Cold-key stampedes on `Vendor` itself, without gRPC: how long callers wait beyond the
//! provider's own latency, and how many requests reach it. Issue 12's targets are 10 000
//! callers on one key in one process (SQLite and PostgreSQL), and 1 000 callers spread over
//! 3 replicas sharing one PostgreSQL; the gRPC version of the same
//! (`crates/server/benches/stampede.rs`) adds the cost of 10 000 calls through one
//! 2-core machine.
//!
//! `cargo bench -p tokenvend-store --bench stampede_in_process` (needs PostgreSQL's binaries,
//! as the store tests do). The provider is a mock that answers after 100 ms.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use secrecy::SecretString;
use tokenvend_core::{
    Deps,
    admin::{Admin, PutConnection},
    cache::TokenCache,
    clock::SystemClock,
    config::VendorConfig,
    connection::ConnectionSettings,
    crypto::{Envelope, KeyRing},
    endpoint::EndpointPolicy,
    events::Notifier,
    grants::{Grants, GrantsConfig},
    ids::{ConnectionKey, ProviderId, Subject, TenantId, TokenKey},
    oauth::{TokenClient, TokenClientConfig},
    store::Store,
    vend::Vendor,
};
use tokenvend_testkit::postgres::PgCluster;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

const PROVIDER_LATENCY: Duration = Duration::from_millis(100);
const ROUNDS: usize = 5;
const POLICY: EndpointPolicy = EndpointPolicy {
    allow_insecure: true,
};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn deps(store: Arc<dyn Store>, ring: &str, replica: &str) -> Deps {
    Deps {
        envelope: Arc::new(Envelope::new(KeyRing::parse(ring).unwrap(), store.clone())),
        store,
        cache: Arc::new(TokenCache::new()),
        client: TokenClient::new(TokenClientConfig {
            allow_insecure: true,
            ..Default::default()
        })
        .unwrap(),
        clock: Arc::new(SystemClock),
        notifier: Notifier::new(replica),
    }
}

/// One row: `replicas` vendors (each its own store pool, cache and change feed) on the
/// database at `url`, `callers` concurrent cold calls per round spread over them.
async fn stampede(label: &str, url: &str, replicas: usize, callers: usize, provider: &MockServer) {
    let ring = KeyRing::generate_entry("k1").to_string();
    let mut vendors = Vec::new();
    let mut admin = None;
    for r in 0..replicas {
        let store = tokenvend_store::open(url, true).await.expect("open store");
        let d = deps(store, &ring, &format!("replica-{r}"));
        if admin.is_none() {
            let grants = Arc::new(Grants::new(
                d.clone(),
                GrantsConfig {
                    public_url: None,
                    authorization_ttl: Duration::from_secs(600),
                    policy: POLICY,
                },
            ));
            admin = Some(Admin::new(d.clone(), POLICY, grants));
        }
        let vendor = Arc::new(Vendor::new(
            d,
            VendorConfig {
                policy: POLICY,
                ..Default::default()
            },
        ));
        tokio::spawn({
            let v = vendor.clone();
            async move { v.apply_events().await }
        });
        vendors.push(vendor);
    }
    let admin = admin.unwrap();
    let tenant = TenantId::parse(format!("t-{label}-{replicas}")).unwrap();
    admin
        .create_tenant(tenant.clone(), String::new())
        .await
        .unwrap();
    let mut waits = Vec::with_capacity(callers * ROUNDS);
    let mut upstream = Vec::new();
    for round in 0..ROUNDS {
        let provider_id = ProviderId::parse(format!("r{round}")).unwrap();
        let path = format!("/{label}-{replicas}-{round}");
        admin
            .put_connection(PutConnection {
                key: ConnectionKey {
                    tenant: tenant.clone(),
                    provider: provider_id.clone(),
                },
                settings: ConnectionSettings {
                    token_url: format!("{}{path}", provider.uri()),
                    client_id: "bench".into(),
                    ..Default::default()
                },
                client_secret: Some(SecretString::from("s")),
                api_key: None,
            })
            .await
            .unwrap();
        let key = TokenKey {
            tenant: tenant.clone(),
            provider: provider_id,
            subject: Subject::client(),
        };
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let vendor = vendors[i % replicas].clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let start = tokio::time::Instant::now();
                    vendor.get_token(key, None, None).await.expect("GetToken");
                    start.elapsed()
                })
            })
            .collect();
        waits.extend(join_all(tasks).await.into_iter().map(|r| r.unwrap()));
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
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p99 = percentile(&waits, 0.99);
    println!(
        "| {label} | {replicas} | {callers} | {ROUNDS} | {} | {:.1} ms | {:.1} ms | {:.1} ms | +{:.1} ms |",
        upstream
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        ms(percentile(&waits, 0.5)),
        ms(p99),
        ms(*waits.last().unwrap()),
        ms(p99.saturating_sub(PROVIDER_LATENCY)),
    );
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
                    .set_body_json(
                        serde_json::json!({"access_token": "bench-token", "expires_in": 3600}),
                    )
                    .set_delay(PROVIDER_LATENCY),
            )
            .mount(&provider)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite://{}/bench.db", dir.path().display());
        let postgres = PgCluster::shared().fresh_database();
        println!(
            "| store | replicas | callers per round | rounds | upstream requests per round | p50 wait | p99 wait | max wait | p99 − provider |"
        );
        println!("|---|---:|---:|---:|---|---|---|---|---|");
        stampede("sqlite", &sqlite, 1, 10_000, &provider).await;
        stampede("postgres", &postgres, 1, 10_000, &provider).await;
        stampede("postgres", &postgres, 3, 1_000, &provider).await;
    });
}

//! WatchToken at scale, against real `tokenvend` replicas on one PostgreSQL:
//!
//! 1. memory: 10 000 open streams on one replica (RSS before and after, per stream);
//! 2. fleet push: a refresh on replica A, until the new token reaches a watcher on B;
//! 3. CPU: 1 000 watching clients vs the same clients polling GetToken.
//!
//! `cargo bench -p tokenvend-server --bench watch` (needs what `scripts/test` needs).
//! `WATCH_STREAMS` (default 10000), `WATCH_CLIENTS` (1000), `WATCH_SECONDS` (10).

#[allow(dead_code)]
#[path = "../../../tests/it/support.rs"]
mod support;

use std::time::Duration;

use tokio::time::Instant;

use serde_json::json;
use support::{ADMIN_KEY, Server, rss_kib, setup_connection};
use tokenvend_proto::v1::{
    GetTokenRequest, GetTokenResponse, token_service_client::TokenServiceClient,
};
use tokenvend_testkit::postgres::PgCluster;
use tonic::{Streaming, transport::Channel};
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(min_ttl: i64) -> tonic::Request<GetTokenRequest> {
    let mut req = tonic::Request::new(GetTokenRequest {
        tenant: "acme".into(),
        provider: "p".into(),
        min_ttl_seconds: Some(min_ttl),
        subject: String::new(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    req
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn open(c: &Channel, min_ttl: i64) -> Streaming<GetTokenResponse> {
    let mut s = TokenServiceClient::new(c.clone())
        .watch_token(request(min_ttl))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().expect("the current token");
    s
}

/// User + system CPU of the process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let provider = MockServer::start().await;
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = issued.clone();
        Mock::given(method("POST"))
            .respond_with(move |_: &wiremock::Request| {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                ResponseTemplate::new(200).set_body_json(
                    json!({"access_token": format!("tok-{n}"), "expires_in": 3600 + 10 * n}),
                )
            })
            .mount(&provider)
            .await;
        let url = PgCluster::shared().fresh_database();
        let env = vec![
            ("TOKENVEND_LOG", "info".to_owned()),
            ("TOKENVEND_INVALIDATE_MIN_INTERVAL", "0s".to_owned()),
        ];
        let servers = Server::replicas(2, &url, env).await;
        let admin = servers[0].client().await;
        setup_connection(&admin, "acme", "p", &format!("{}/token", provider.uri()), "s3cret", json!({})).await;
        let pid_a = servers[0].proc.pid();

        // 1. Memory per stream.
        let streams = env_or("WATCH_STREAMS", 10_000);
        // A first stream, so the token and the connection are there before measuring.
        let warm = channel(&servers[0].grpc).await;
        let _first = open(&warm, 60).await;
        let before = rss_kib(pid_a);
        let per_connection = 100;
        let mut open_streams = Vec::with_capacity(streams);
        let mut channels = Vec::new();
        for i in 0..streams {
            if i % per_connection == 0 {
                channels.push(channel(&servers[0].grpc).await);
            }
            open_streams.push(open(channels.last().unwrap(), 60).await);
        }
        let after = rss_kib(pid_a);
        println!(
            "streams: {streams} over {} connections; RSS {before} KiB -> {after} KiB: {:.1} KiB per stream (connection share included)",
            channels.len(),
            (after - before) as f64 / streams as f64
        );
        drop(open_streams);
        drop(channels);

        // 2. A refresh on replica A reaching a watcher on B. Each provider token lives 10 s
        // longer than the one before; a GetToken on A asking for more than the current one
        // has left makes A (and only A: B's watcher is content with 60 s) fetch a new one.
        let b = channel(&servers[1].grpc).await;
        let mut on_b = open(&b, 60).await;
        let a = channel(&servers[0].grpc).await;
        let mut took = Vec::new();
        for _ in 0..20 {
            let n = issued.load(std::sync::atomic::Ordering::SeqCst) as i64;
            let started = Instant::now();
            let fresh = TokenServiceClient::new(a.clone())
                .get_token(request(3600 + 10 * n))
                .await
                .unwrap()
                .into_inner();
            let refreshed = started.elapsed();
            loop {
                let m = on_b.message().await.unwrap().unwrap();
                if m.access_token == fresh.access_token {
                    break;
                }
            }
            took.push(started.elapsed().saturating_sub(refreshed));
        }
        took.sort();
        println!(
            "refresh on A (its answer) -> the new token on B's stream: p50 {:?}, max {:?} ({} rounds)",
            took[took.len() / 2],
            took[took.len() - 1],
            took.len()
        );

        // 3. CPU: watchers vs pollers.
        let clients = env_or("WATCH_CLIENTS", 1000);
        let seconds = env_or("WATCH_SECONDS", 10) as u64;
        let mut channels = Vec::new();
        let mut watchers = Vec::new();
        for i in 0..clients {
            if i % per_connection == 0 {
                channels.push(channel(&servers[0].grpc).await);
            }
            watchers.push(open(channels.last().unwrap(), 60).await);
        }
        let cpu0 = cpu_secs(pid_a);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let watching = cpu_secs(pid_a) - cpu0;
        drop(watchers);
        println!("{clients} watching clients, {seconds} s: tokenvend CPU {watching:.2} s");

        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let c = channels[i % channels.len()].clone();
            let done = done.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut client = TokenServiceClient::new(c);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    if client.get_token(request(60)).await.is_ok() {
                        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        let cpu0 = cpu_secs(pid_a);
        let calls0 = calls.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let polling = cpu_secs(pid_a) - cpu0;
        let made = calls.load(std::sync::atomic::Ordering::Relaxed) - calls0;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        println!(
            "{clients} polling clients at 100 rps each (asked {} rps, got {:.0} rps), {seconds} s: tokenvend CPU {polling:.2} s",
            clients * 100,
            made as f64 / seconds as f64
        );
        println!("provider requests in all: {}", issued.load(std::sync::atomic::Ordering::SeqCst));
    });
}

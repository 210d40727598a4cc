//! Graceful shutdown on SIGTERM: not serving (health, readiness, new calls refused) while the
//! listeners stay open, then draining the calls in flight, then exit 0; the same under load
//! (every call answered OK or refused as shutting down); and the drain deadline, past which
//! calls are cut and the process exits anyway.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tonic::{Code, Status, Streaming, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};
use wiremock::MockServer;

use crate::support::{
    Client, Server, health, setup_connection, token_answer, token_provider, token_url, wait_until,
};

/// TOKENVEND_SHUTDOWN_DELAY in the first test: the window in which phase 1 is observed.
const DELAY: Duration = Duration::from_secs(3);
/// How long the provider takes to answer the call in flight: it outlasts the delay, so the
/// call is still running when the drain starts.
const PROVIDER_DELAY: Duration = Duration::from_secs(6);

async fn slow_provider(delay: Duration) -> MockServer {
    token_provider(token_answer("slow-token").set_delay(delay), ..).await
}

/// A client of `server` with connection `p` to `provider`, and a GetToken on it that has
/// reached the (slow) provider.
async fn call_in_flight(
    server: &Server,
    provider: &MockServer,
) -> (Client, JoinHandle<Result<Value, Status>>) {
    let c = server.client().await;
    setup_connection(&c, "acme", "p", &token_url(provider), "s", json!({})).await;
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.get_token("acme", "p").await }
    });
    wait_until(
        Duration::from_secs(5),
        "the provider received the call in flight",
        async || !provider.received_requests().await.unwrap().is_empty(),
    )
    .await;
    (c, in_flight)
}

fn grpc_port(server: &Server) -> std::net::SocketAddr {
    server
        .grpc
        .trim_start_matches("http://")
        .parse()
        .expect("gRPC address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_new_calls_then_drains_the_calls_in_flight() {
    let provider = slow_provider(PROVIDER_DELAY).await;
    let mut server = Server::with_env(vec![
        ("TOKENVEND_SHUTDOWN_DELAY", format!("{}s", DELAY.as_secs())),
        ("TOKENVEND_SHUTDOWN_TIMEOUT", "20s".into()),
    ])
    .await;
    let (c, in_flight) = call_in_flight(&server, &provider).await;
    // A health watcher, as gRPC clients with health checking keep open.
    let channel = Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "tokenvend.v1.TokenService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let next = async |watch: &mut Streaming<HealthCheckResponse>| {
        tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a health update")
            .unwrap()
            .map(|m| m.status())
    };
    assert_eq!(next(&mut watch).await, Some(ServingStatus::Serving));

    server.proc.signal(libc::SIGTERM);
    // Phase 1, observed through the log line that says it has begun.
    server
        .proc
        .wait_for_output("not serving", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(next(&mut watch).await, Some(ServingStatus::NotServing));
    for service in ["", "tokenvend.v1.TokenService", "tokenvend.v1.AdminService"] {
        assert_eq!(health(&c, service).await, "NOT_SERVING", "{service:?}");
    }
    let ready = reqwest::get(format!("{}/readyz", server.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    // A new call is refused with a status that tells the caller to go elsewhere...
    let refused = c.get_token("acme", "p").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused.message(),
        "tokenvend is shutting down; retry on another replica"
    );
    // ...before it is authenticated, too.
    let anonymous = Client::connect(&server.grpc, None).await.unwrap();
    let refused = anonymous
        .call("AdminService/ListTenants", json!({}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        provider.received_requests().await.unwrap().len(),
        1,
        "refused calls never reach the provider"
    );
    assert!(
        !in_flight.is_finished(),
        "phase 1 must have been observed while the first call was in flight; \
         raise PROVIDER_DELAY if this machine is that slow"
    );

    // Phase 2: the listener closes while the call in flight carries on.
    server
        .proc
        .wait_for_output("draining", Duration::from_secs(10))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(2),
        "the gRPC listener is closed once draining",
        async || {
            tokio::net::TcpStream::connect(grpc_port(&server))
                .await
                .is_err()
        },
    )
    .await;
    // The watch ends (cleanly) rather than holding the drain open until its deadline.
    assert_eq!(next(&mut watch).await, None);
    let token = in_flight
        .await
        .unwrap()
        .expect("the call in flight completes");
    assert_eq!(token["access_token"], "slow-token");

    let status = server
        .proc
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let out = server.output();
    let phases = [
        "SIGTERM received: shutting down",
        "not serving",
        // The GetToken and the health watch.
        "draining 2 calls in flight",
        "drained: every call finished",
        "released refresh leases held by this replica",
        "shut down cleanly",
    ];
    let mut from = 0;
    for phase in phases {
        let at = out[from..]
            .find(phase)
            .unwrap_or_else(|| panic!("no {phase:?} after the previous phase in:\n{out}"));
        from += at + phase.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_drain_deadline_are_cut_and_the_process_exits() {
    let provider = slow_provider(Duration::from_secs(60)).await;
    let mut server = Server::with_env(vec![
        ("TOKENVEND_SHUTDOWN_DELAY", "0s".into()),
        ("TOKENVEND_SHUTDOWN_TIMEOUT", "1s".into()),
        // The provider must not time the call out before the drain deadline cuts it.
        ("TOKENVEND_PROVIDER_TIMEOUT", "20s".into()),
        ("TOKENVEND_MAX_WAIT", "60s".into()),
    ])
    .await;
    let (_c, in_flight) = call_in_flight(&server, &provider).await;

    server.proc.signal(libc::SIGTERM);
    let status = server
        .proc
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let out = server.output();
    let cut = out
        .lines()
        .filter(|l| l.contains("drain deadline"))
        .collect::<Vec<_>>();
    assert_eq!(cut.len(), 1, "{out}");
    assert!(cut[0].contains("WARN"), "{}", cut[0]);
    assert!(
        cut[0].contains("cutting 1 calls still in flight"),
        "{}",
        cut[0]
    );
    assert!(out.contains("released refresh leases held by this replica"));
    assert!(out.contains("shut down with 1 calls cut"), "{out}");
    assert!(
        in_flight.await.unwrap().is_err(),
        "the cut call fails on the caller's side"
    );
}

/// How a looping caller of [`sigterm_under_load_answers_every_call_ok_or_shutting_down`]
/// ended: its answered calls, then the first refusal (or whatever else ended it).
struct Caller {
    ok: usize,
    end: Result<(), Status>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answers_every_call_ok_or_shutting_down() {
    /// Callers looping on a cached token, over CONNECTIONS HTTP/2 connections.
    const CALLERS: usize = 32;
    const CONNECTIONS: usize = 8;
    /// Cold keys whose fetch is held by the provider when the signal arrives.
    const COLD: usize = 4;
    let hot = token_provider(token_answer("hot-token"), 1).await;
    let cold = slow_provider(PROVIDER_DELAY).await;
    let mut server = Server::with_env(vec![
        ("TOKENVEND_SHUTDOWN_DELAY", format!("{}s", DELAY.as_secs())),
        ("TOKENVEND_SHUTDOWN_TIMEOUT", "20s".into()),
    ])
    .await;
    let admin = server.client().await;
    setup_connection(&admin, "acme", "hot", &token_url(&hot), "s", json!({})).await;
    for i in 0..COLD {
        let p = format!("cold-{i}");
        setup_connection(&admin, "acme", &p, &token_url(&cold), "s", json!({})).await;
    }
    admin
        .get_token("acme", "hot")
        .await
        .expect("warm the cache");
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(server.client().await);
    }
    let channel = Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let next = async |watch: &mut Streaming<HealthCheckResponse>| {
        tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a health update")
            .unwrap()
            .map(|m| m.status())
    };
    assert_eq!(next(&mut watch).await, Some(ServingStatus::Serving));

    // Misses in flight: each cold key's fetch has reached the (slow) provider.
    let in_flight: Vec<_> = (0..COLD)
        .map(|i| {
            let c = clients[i % CONNECTIONS].clone();
            tokio::spawn(async move { c.get_token("acme", &format!("cold-{i}")).await })
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "every cold key's fetch reached the provider",
        async || cold.received_requests().await.unwrap().len() == COLD,
    )
    .await;

    // Hits in a loop, each caller until its first error (a caller refused goes elsewhere);
    // bounded in count and time.
    let answered: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CALLERS).map(|_| AtomicUsize::new(0)).collect());
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let c = clients[i % CONNECTIONS].clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                let mut ok = 0;
                while tokio::time::Instant::now() < deadline && ok < 1_000_000 {
                    match c.get_token("acme", "hot").await {
                        Ok(t) => {
                            assert_eq!(t["access_token"], "hot-token");
                            ok += 1;
                            answered[i].fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => return Caller { ok, end: Err(e) },
                    }
                }
                Caller { ok, end: Ok(()) }
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(20),
        "every caller is under way",
        async || answered.iter().all(|n| n.load(Ordering::SeqCst) >= 10),
    )
    .await;

    server.proc.signal(libc::SIGTERM);
    // Health says NOT_SERVING while the listener still accepts connections.
    assert_eq!(next(&mut watch).await, Some(ServingStatus::NotServing));
    assert!(
        tokio::net::TcpStream::connect(grpc_port(&server))
            .await
            .is_ok(),
        "the listener is still open when health turns NOT_SERVING"
    );
    let unfinished = in_flight.iter().filter(|h| !h.is_finished()).count();
    assert_eq!(
        unfinished, COLD,
        "the misses must still be in flight at NOT_SERVING; raise PROVIDER_DELAY if this \
         machine is that slow"
    );

    // Every caller: its calls answered OK, then the clear, retryable refusal — no reset, no
    // transport error for a call made while the listeners were open.
    for (i, caller) in join_all(callers).await.into_iter().enumerate() {
        let Caller { ok, end } = caller.unwrap();
        let refused = end.expect_err("every caller is refused once shutdown has begun");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_eq!(
            refused.message(),
            "tokenvend is shutting down; retry on another replica",
            "{refused:?}"
        );
        assert!(ok >= 10, "each caller was answered before the signal");
        assert_eq!(ok, answered[i].load(Ordering::SeqCst));
    }

    // Then the listener closes; the misses in flight finish with their tokens.
    server
        .proc
        .wait_for_output("draining", Duration::from_secs(10))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(2),
        "the gRPC listener is closed once draining",
        async || {
            tokio::net::TcpStream::connect(grpc_port(&server))
                .await
                .is_err()
        },
    )
    .await;
    assert_eq!(
        next(&mut watch).await,
        None,
        "the watch ends with the drain"
    );
    for call in join_all(in_flight).await {
        let token = call
            .unwrap()
            .expect("a call in flight at SIGTERM completes");
        assert_eq!(token["access_token"], "slow-token");
    }
    assert_eq!(cold.received_requests().await.unwrap().len(), COLD);

    let status = server
        .proc
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let out = server.output();
    let phases = [
        "SIGTERM received: shutting down",
        "not serving",
        // The misses and the health watch; every looping caller had been answered.
        &format!("draining {} calls in flight", COLD + 1),
        "drained: every call finished",
        "shut down cleanly",
    ];
    let mut from = 0;
    for phase in phases {
        let at = out[from..]
            .find(phase)
            .unwrap_or_else(|| panic!("no {phase:?} after the previous phase in:\n{out}"));
        from += at + phase.len();
    }
}

//! Graceful shutdown on SIGTERM: not serving (health, readiness, new calls refused) while the
//! listeners stay open, then draining the calls in flight, then exit 0; and the drain
//! deadline, past which calls are cut and the process exits anyway.

use std::time::Duration;

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

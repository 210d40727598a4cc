//! Discovery the way grpcurl does it: reflection (v1 and v1alpha) and health, without a key.

use serde_json::json;
use tonic::Code;
use tonic_reflection::pb::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::support::{CallOpts, Client, Opts, Server};

#[tokio::test]
async fn reflection_health_and_auth() {
    let server = Server::start(Opts::default()).await.unwrap();
    // No API key at all: reflection still answers.
    let anon = Client::connect(&server.grpc, None).await.unwrap();
    let services = anon.services();
    for s in [
        "tokenvend.v1.TokenService",
        "tokenvend.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|x| x == s),
            "{s} missing from {services:?}"
        );
    }

    // v1alpha too (Python and Node reflection clients speak only that).
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut alpha = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let resp = alpha
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("no list")
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "tokenvend.v1.TokenService")
    );

    // Health needs no key either.
    for service in ["", "tokenvend.v1.TokenService", "tokenvend.v1.AdminService"] {
        let h = anon
            .call("grpc.health.v1.Health/Check", json!({"service": service}))
            .await
            .unwrap();
        assert_eq!(h["status"], "SERVING", "{service}");
    }

    // Every API call needs the key.
    for opts in [
        CallOpts {
            no_key: true,
            ..Default::default()
        },
        CallOpts {
            key: Some("wrong-key-wrong-key".into()),
            ..Default::default()
        },
    ] {
        for (m, req) in [
            ("AdminService/ListTenants", json!({})),
            (
                "TokenService/GetToken",
                json!({"tenant": "acme", "provider": "x"}),
            ),
        ] {
            let err = anon.call_opts(m, req, opts.clone()).await.unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated, "{m}");
        }
    }
    // The HTTP side port answers probes.
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let r = reqwest::get(format!("{}{path}", server.http))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), body);
    }

    let ok = server
        .client()
        .await
        .call("AdminService/ListTenants", json!({}))
        .await
        .unwrap();
    assert_eq!(ok["tenants"], json!([]));
}

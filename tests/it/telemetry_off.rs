//! Telemetry that is off costs nothing and shows nothing: without `OTEL_EXPORTER_OTLP_ENDPOINT`
//! no server span is built (no trace id on the call's log lines); with
//! `TOKENVEND_METRICS=false` there is no `/metrics` and calls still work.

use serde_json::json;

use crate::support::{Server, setup_connection, token_answer, token_provider, token_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_otlp_endpoint_no_server_span_and_with_metrics_off_no_metrics() {
    let provider = token_provider(token_answer("quiet-token"), 1).await;
    let server = Server::with_env(vec![("TOKENVEND_METRICS", "false".into())]).await;
    let c = server.client().await;
    setup_connection(&c, "acme", "p", &token_url(&provider), "s3cret", json!({})).await;
    for _ in 0..2 {
        let t = c.get_token("acme", "p").await.unwrap();
        assert_eq!(t["access_token"], "quiet-token");
    }
    let scrape = reqwest::get(format!("{}/metrics", server.http))
        .await
        .unwrap();
    assert_eq!(scrape.status(), 404);
    assert!(
        scrape
            .text()
            .await
            .unwrap()
            .contains("TOKENVEND_METRICS=false")
    );

    // The miss logged inside the call (debug level in tests) carries the handler's span but
    // no server span and no trace id: the RPC layer passed the call straight through.
    let out = server.output();
    let line = out
        .lines()
        .find(|l| l.contains("fetched a token from the provider"))
        .unwrap_or_else(|| panic!("no fetch log line in:\n{out}"));
    assert!(line.contains("get_token"), "{line}");
    assert!(
        !line.contains("trace_id") && !line.contains("rpc{"),
        "{line}"
    );
}

//! `/metrics` scraped end to end: the real binary, GetToken hits, misses (one fetch that
//! callers join) and provider errors, then the exposition read as Prometheus reads it — the
//! README's metric names and types, counts equal to what the test did, only the documented
//! labels, and no tenant, provider, client id, secret or token anywhere in it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::watch,
};
use tonic::Code;
use wiremock::ResponseTemplate;

use crate::support::{Server, reason, setup_connection, token_provider, token_url, wait_until};

const README: &str = include_str!("../../README.md");

/// Everything the test plants, each containing `zz` (which nothing in an exposition does).
const TENANT: &str = "tenant-zz-secretive";
const GOOD: &str = "prov-zz-good";
const BAD: &str = "prov-zz-bad";
const DOWN: &str = "prov-zz-down";
const CLIENT_ID: &str = "client-zz-secretive-id";
const EDRV_CLIENT_ID: &str = "client-zz-edrv-id";
const SECRET: &str = "secret-zz-planted-client-secret";
const TOKEN: &str = "token-zz-planted-access-token";

/// Callers that join the first caller's fetch.
const JOINERS: usize = 5;
/// GetTokens answered from memory afterwards.
const HITS: usize = 7;

/// A token endpoint that holds every answer until the test opens its gate, so callers can
/// pile onto one fetch and be seen waiting there; it counts the requests it received.
struct GatedProvider {
    url: String,
    asked: Arc<AtomicUsize>,
    open: watch::Sender<bool>,
}

impl GatedProvider {
    async fn start() -> GatedProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let asked = Arc::new(AtomicUsize::new(0));
        let (open, gate) = watch::channel(false);
        let counter = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (asked, mut gate) = (counter.clone(), gate.clone());
                tokio::spawn(async move {
                    if read_request(&mut sock).await.is_none() {
                        return;
                    }
                    asked.fetch_add(1, Ordering::SeqCst);
                    if gate.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let body =
                        json!({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})
                            .to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                });
            }
        });
        GatedProvider { url, asked, open }
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP/1.1 request (head and a `content-length` body); `None` if the peer left.
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return Some(buf);
            }
        }
    }
}

/// One scrape: the content type and the samples by metric name and labels.
struct Scrape {
    content_type: String,
    text: String,
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
    /// `# TYPE` lines: metric family → type.
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// The sample `name{labels}`; every sample the test reads must exist.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = (
            name.to_owned(),
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        *self
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no sample {key:?} in\n{}", self.text))
    }

    fn get_token(&self, outcome: &str) -> f64 {
        self.get(
            "tokenvend_get_token_duration_seconds_count",
            &[("outcome", outcome)],
        )
    }

    fn provider(&self, metric: &str, template: &str, outcome: &str) -> f64 {
        self.get(
            metric,
            &[
                ("grant_type", "client_credentials"),
                ("outcome", outcome),
                ("template", template),
            ],
        )
    }
}

async fn scrape(server: &Server) -> Scrape {
    let resp = reqwest::get(format!("{}/metrics", server.http))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let text = resp.text().await.unwrap();
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .strip_suffix('}')
                    .unwrap()
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(
            samples.insert((name, labels), value).is_none(),
            "duplicate {line}"
        );
    }
    Scrape {
        content_type,
        text,
        samples,
        types,
    }
}

/// The README's metrics table (section "Metrics"): name → type.
fn documented() -> BTreeMap<String, String> {
    let section = README
        .split_once("### Metrics")
        .expect("README has a Metrics section")
        .1;
    let section = section.split_once("\n#").map_or(section, |(s, _)| s);
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells
                .get(1)?
                .strip_prefix("`tokenvend_")?
                .strip_suffix('`')?;
            Some((format!("tokenvend_{name}"), cells[2].to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_hits_misses_joins_and_provider_errors_and_name_no_tenant() {
    let good = GatedProvider::start().await;
    // invalid_client: definitive, one request, then the negative cache answers.
    let bad = token_provider(
        ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_client"})),
        1,
    )
    .await;
    // 500: transient, tried 3 times (the retry budget), each attempt counted.
    let down = token_provider(ResponseTemplate::new(500), 3).await;

    let server = Server::with_env(vec![]).await;
    let c = server.client().await;
    let ours = json!({"client_id": CLIENT_ID});
    setup_connection(&c, TENANT, GOOD, &good.url, SECRET, ours.clone()).await;
    // A catalog template, so the template label is seen to be the template's name.
    setup_connection(
        &c,
        TENANT,
        BAD,
        &token_url(&bad),
        SECRET,
        json!({"template": "edrv", "client_id": EDRV_CLIENT_ID, "audience": "aud-zz"}),
    )
    .await;
    setup_connection(&c, TENANT, DOWN, &token_url(&down), SECRET, ours).await;

    let before = scrape(&server).await;
    for outcome in ["hit", "miss", "error"] {
        assert_eq!(before.get_token(outcome), 0.0, "{outcome}");
    }
    assert_eq!(before.get("tokenvend_singleflight_joined_total", &[]), 0.0);
    assert_eq!(before.get("tokenvend_cached_tokens", &[]), 0.0);

    // Misses: one caller starts the fetch, JOINERS join it while the provider holds it.
    let first = tokio::spawn({
        let c = c.clone();
        async move { c.get_token(TENANT, GOOD).await }
    });
    wait_until(
        Duration::from_secs(10),
        "the first caller's fetch reached the provider",
        async || good.asked() == 1,
    )
    .await;
    let joiners: Vec<_> = (0..JOINERS)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get_token(TENANT, GOOD).await })
        })
        .collect();
    wait_until(
        Duration::from_secs(10),
        "every joiner is waiting on the fetch",
        async || {
            scrape(&server)
                .await
                .get("tokenvend_singleflight_joined_total", &[])
                == JOINERS as f64
        },
    )
    .await;
    good.open.send(true).unwrap();
    let mut answers = vec![first.await.unwrap()];
    answers.extend(join_all(joiners).await.into_iter().map(Result::unwrap));
    for a in &answers {
        assert_eq!(a.as_ref().expect("GetToken")["access_token"], TOKEN);
    }
    assert_eq!(good.asked(), 1, "one fetch for all {} callers", JOINERS + 1);

    // Hits: answered from memory.
    for _ in 0..HITS {
        assert_eq!(
            c.get_token(TENANT, GOOD).await.unwrap()["access_token"],
            TOKEN
        );
    }
    // Errors: invalid_client twice (the second from the negative cache), a 500 once.
    for _ in 0..2 {
        let e = c.get_token(TENANT, BAD).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert_eq!(reason(&e).as_deref(), Some("INVALID_CLIENT"));
    }
    let e = c.get_token(TENANT, DOWN).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    let m = scrape(&server).await;
    assert!(
        m.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        m.content_type
    );
    // The documented families, with their types, and nothing else.
    let documented = documented();
    assert_eq!(documented.len(), 9, "{documented:?}");
    assert_eq!(
        m.types, documented,
        "the exposition's families vs the README's"
    );

    // GetToken by outcome: exactly what the test did.
    assert_eq!(m.get_token("miss"), (1 + JOINERS) as f64);
    assert_eq!(m.get_token("hit"), HITS as f64);
    assert_eq!(m.get_token("error"), 3.0);
    let buckets_of_all = m.get(
        "tokenvend_get_token_duration_seconds_bucket",
        &[("le", "+Inf"), ("outcome", "hit")],
    );
    assert_eq!(buckets_of_all, HITS as f64);
    assert_eq!(
        m.get("tokenvend_singleflight_joined_total", &[]),
        JOINERS as f64
    );
    assert_eq!(m.get("tokenvend_cached_tokens", &[]), 1.0);

    // Provider requests by template and outcome, each attempt counted, with durations.
    for metric in [
        "tokenvend_provider_requests_total",
        "tokenvend_provider_request_duration_seconds_count",
    ] {
        assert_eq!(m.provider(metric, "generic", "ok"), 1.0, "{metric}");
        assert_eq!(m.provider(metric, "edrv", "oauth_error"), 1.0, "{metric}");
        assert_eq!(
            m.provider(metric, "generic", "unavailable"),
            3.0,
            "{metric}"
        );
    }
    let provider_series: Vec<_> = m
        .samples
        .keys()
        .filter(|(n, _)| n == "tokenvend_provider_requests_total")
        .collect();
    assert_eq!(provider_series.len(), 3, "{provider_series:?}");
    assert_eq!(
        m.get("tokenvend_refresh_ahead_total", &[("outcome", "refreshed")]),
        0.0
    );
    assert_eq!(
        m.get("tokenvend_refresh_ahead_total", &[("outcome", "failed")]),
        0.0
    );
    assert_eq!(m.get("tokenvend_lease_wait_seconds_count", &[]), 0.0);

    // Labels: the documented names, with values from fixed sets or template names.
    let allowed: BTreeMap<&str, BTreeSet<&str>> = [
        (
            "outcome",
            [
                "hit",
                "miss",
                "error",
                "ok",
                "oauth_error",
                "unavailable",
                "refreshed",
                "failed",
            ]
            .into_iter()
            .collect(),
        ),
        ("template", ["generic", "edrv"].into_iter().collect()),
        ("grant_type", ["client_credentials"].into_iter().collect()),
    ]
    .into();
    for (name, labels) in m.samples.keys() {
        for (k, v) in labels {
            if k == "le" {
                assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "{name} le={v}");
                continue;
            }
            assert!(
                allowed
                    .get(k.as_str())
                    .is_some_and(|vs| vs.contains(v.as_str())),
                "{name}: label {k}={v:?} is not one of the documented ones"
            );
        }
    }
    // Nothing the callers or the operator named.
    for planted in [
        TENANT,
        GOOD,
        BAD,
        DOWN,
        CLIENT_ID,
        EDRV_CLIENT_ID,
        SECRET,
        TOKEN,
        "aud-zz",
        "zz",
    ] {
        assert!(
            !m.text.contains(planted),
            "{planted} in the exposition:\n{}",
            m.text
        );
    }
}

//! Master key rotation end to end on PostgreSQL: a new key first in the ring, `tokenvend
//! rewrap` while the service answers, then the old key removed — and a ring that still lacks
//! a needed key refused at start-up with what it would lose.

use std::time::Duration;

use serde_json::json;
use tokenvend_testkit::postgres::PgCluster;

use crate::support::{Opts, Server, tok_provider, token_url};

const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K2: &str = "k2:HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=";

fn on(url: &str, keys: String) -> Opts {
    Opts {
        database_url: Some(url.to_owned()),
        env: vec![
            ("TOKENVEND_MASTER_KEYS", keys),
            // Only the explicit `tokenvend rewrap` below re-wraps.
            ("TOKENVEND_REWRAP_INTERVAL", "0s".into()),
        ],
        ..Default::default()
    }
}

fn rewrap(url: &str, keys: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokenvend"))
        .arg("rewrap")
        .env_clear()
        .env("TOKENVEND_DATABASE_URL", url)
        .env("TOKENVEND_MASTER_KEYS", keys)
        .output()
        .expect("tokenvend rewrap runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_the_master_key_online_then_remove_the_old_one() {
    let (provider, asked) = tok_provider().await;
    let url = PgCluster::shared().fresh_database();
    let first = Server::start(on(&url, K1.into())).await.unwrap();
    let c = first.client().await;
    c.call("AdminService/CreateTenant", json!({"tenant": "acme"}))
        .await
        .unwrap();
    c.put_connection(
        json!({"tenant": "acme", "provider": "p", "token_url": token_url(&provider),
                            "client_id": "id", "client_secret": "s3cret"}),
    )
    .await
    .unwrap();
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "tok-1"
    );
    drop(c);
    drop(first);

    // Without k1, its data would be unreadable: refused, saying what k1 still wraps.
    let refused = Server::refused(on(&url, K2.into())).await;
    assert!(
        refused.contains("\"k1\" still wraps") && refused.contains("tokenvend rewrap"),
        "{refused}"
    );

    // k2 first, k1 kept: serves; `tokenvend rewrap` runs while callers keep calling.
    let both = Server::start(on(&url, format!("{K2},{K1}"))).await.unwrap();
    let c = both.client().await;
    let callers = {
        let c = c.clone();
        let url = token_url(&provider);
        tokio::spawn(async move {
            let mut served = 0;
            for i in 0..50 {
                c.get_token("acme", "p")
                    .await
                    .expect("GetToken during the re-wrap");
                // A scope change keeps the stored secret; the next GetToken decrypts it to
                // fetch under the new settings, while the re-wrap runs.
                c.put_connection(json!({"tenant": "acme", "provider": "p",
                                        "token_url": url, "client_id": "id",
                                        "scopes": [format!("s{i}")]}))
                    .await
                    .expect("PutConnection during the re-wrap");
                served += 1;
            }
            served
        })
    };
    let out = rewrap(&url, &format!("{K2},{K1}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("under master key \"k2\""), "{stdout}");
    assert!(stdout.contains("0 could not be read"), "{stdout}");
    assert_eq!(
        callers.await.unwrap(),
        50,
        "no call failed during the re-wrap"
    );
    // Resumable and idempotent: a second pass has nothing left to do.
    let again = rewrap(&url, &format!("{K2},{K1}"));
    assert!(String::from_utf8_lossy(&again.stdout).contains("re-wrapped 0 data key(s)"));
    drop(c);
    drop(both);

    // k1 removed: starts, and the stored secret and token still decrypt.
    let before = asked.get();
    let last = Server::start(on(&url, K2.into())).await.unwrap();
    let c = last.client().await;
    let t = c.get_token("acme", "p").await.unwrap();
    assert!(t["access_token"].as_str().unwrap().starts_with("tok-"));
    tokio::time::timeout(Duration::from_secs(30), async {
        // The connection's secret (wrapped under k1's data key before) decrypts too.
        c.call(
            "AdminService/RotateClientSecret",
            json!({"tenant": "acme", "provider": "p", "client_secret": "s3cret-2"}),
        )
        .await
        .expect("RotateClientSecret reads the connection")
    })
    .await
    .unwrap();
    assert!(
        asked.get() > before,
        "the rotation's check reached the provider"
    );
}

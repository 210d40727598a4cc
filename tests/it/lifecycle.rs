//! Process lifecycle: restarts, the embedded database lock, graceful shutdown, connection
//! changes, and PostgreSQL as the shared store.

use std::time::Duration;

use serde_json::json;
use tokenvend_testkit::postgres::PgCluster;

use crate::support::{Opts, Server, refused_start, setup_connection, tok_provider, token_url};

const SECRET: &str = "at-rest-secret-Hq3v9";

#[tokio::test]
async fn restart_serves_the_stored_token_and_keeps_secrets_encrypted() {
    let (provider, count) = tok_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let opts = || Opts {
        data_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };

    let mut first = Server::start(opts()).await.unwrap();
    let c = first.client().await;
    setup_connection(&c, "acme", "p", &token_url(&provider), SECRET, json!({})).await;
    let t1 = c.get_token("acme", "p").await.unwrap();
    assert_eq!(t1["access_token"], "tok-1");
    // answered from memory the second time
    let again = c.get_token("acme", "p").await.unwrap();
    assert_eq!(again, t1);
    assert_eq!(count.get(), 1);

    // A second process on the same embedded database is refused, clearly.
    let err = Server::refused(opts()).await;
    assert!(err.contains("in use by another tokenvend process"), "{err}");

    // Graceful shutdown on SIGTERM.
    first.proc.signal(libc::SIGTERM);
    let status = first.proc.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(first.output().contains("shut down cleanly"));

    // The database files hold neither the secret nor the token in clear.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for planted in [SECRET.as_bytes(), b"tok-1"] {
            assert!(
                !bytes.windows(planted.len()).any(|w| w == planted),
                "plaintext at rest"
            );
        }
    }

    // After a restart the stored token is served without asking the provider again.
    let second = Server::start(opts()).await.unwrap();
    let t2 = second.client().await.get_token("acme", "p").await.unwrap();
    assert_eq!(t2["access_token"], "tok-1");
    assert_eq!(t2["expires_at"], t1["expires_at"]);
    assert_eq!(count.get(), 1);
}

#[tokio::test]
async fn connection_changes_are_never_answered_with_an_old_token() {
    let (provider, count) = tok_provider().await;
    let server = Server::start(Opts::default()).await.unwrap();
    let c = server.client().await;
    let url = token_url(&provider);
    setup_connection(&c, "acme", "p", &url, SECRET, json!({"scopes": ["a"]})).await;
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "tok-1"
    );

    // New settings: the next GetToken fetches under them.
    let v2 = c.put_connection(json!({"tenant": "acme", "provider": "p", "token_url": url, "client_id": "client-1", "scopes": ["a", "b"]})).await.unwrap();
    assert_eq!(v2["version"], "2");
    let t = c.get_token("acme", "p").await.unwrap();
    assert_eq!(t["access_token"], "tok-2");
    let form =
        String::from_utf8(provider.received_requests().await.unwrap()[1].body.clone()).unwrap();
    assert!(form.contains("scope=a+b"), "{form}");
    assert_eq!(count.get(), 2);

    // InvalidateToken: an old token is a no-op, the current one is dropped once.
    let stale = c
        .call(
            "TokenService/InvalidateToken",
            json!({"tenant": "acme", "provider": "p", "access_token": "tok-1"}),
        )
        .await
        .unwrap();
    assert_eq!(stale["invalidated"], false);
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "tok-2"
    );
    for expected in [true, false] {
        let r = c
            .call(
                "TokenService/InvalidateToken",
                json!({"tenant": "acme", "provider": "p", "access_token": "tok-2"}),
            )
            .await
            .unwrap();
        assert_eq!(r["invalidated"], expected);
    }
    assert_eq!(
        c.get_token("acme", "p").await.unwrap()["access_token"],
        "tok-3"
    );

    // Deleting the connection (or the tenant) drops its tokens.
    c.call(
        "AdminService/DeleteConnection",
        json!({"tenant": "acme", "provider": "p"}),
    )
    .await
    .unwrap();
    let err = c.get_token("acme", "p").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    c.call("AdminService/DeleteTenant", json!({"tenant": "acme"}))
        .await
        .unwrap();
    let err = c
        .call("AdminService/GetTenant", json!({"tenant": "acme"}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn postgres_backend_shares_tokens_between_processes() {
    let (provider, count) = tok_provider().await;
    let url = PgCluster::shared().fresh_database();
    let servers = Server::replicas(2, &url, vec![]).await;
    let (a, b) = (&servers[0], &servers[1]);
    assert!(
        a.output().contains("database=\"postgres\""),
        "{}",
        a.output()
    );
    let ca = a.client().await;
    setup_connection(&ca, "acme", "p", &token_url(&provider), SECRET, json!({})).await;
    let ta = ca.get_token("acme", "p").await.unwrap();
    assert_eq!(ta["access_token"], "tok-1");
    // The other process finds the stored token instead of asking the provider.
    let tb = b.client().await.get_token("acme", "p").await.unwrap();
    assert_eq!(tb["access_token"], "tok-1");
    assert_eq!(count.get(), 1);

    // Tenants and pagination over the shared database.
    let cb = b.client().await;
    for t in ["t1", "t2", "t3"] {
        cb.call(
            "AdminService/CreateTenant",
            json!({"tenant": t, "display_name": t.to_uppercase()}),
        )
        .await
        .unwrap();
    }
    let p1 = cb
        .call("AdminService/ListTenants", json!({"page_size": 2}))
        .await
        .unwrap();
    assert_eq!(p1["tenants"].as_array().unwrap().len(), 2);
    let p2 = cb
        .call(
            "AdminService/ListTenants",
            json!({"page_size": 2, "page_token": p1["next_page_token"]}),
        )
        .await
        .unwrap();
    let names: Vec<_> = p1["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["tenants"].as_array().unwrap())
        .map(|t| t["tenant"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["acme", "t1", "t2", "t3"]);
    assert_eq!(p2["next_page_token"], "");
}

#[tokio::test]
async fn migrate_command_and_json_logs() {
    // `tokenvend migrate` brings a database up to date and exits.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/m.db", dir.path().display());
    // Secrets never as flags (they would show in `ps`): the database URL is refused there…
    let flag = std::process::Command::new(env!("CARGO_BIN_EXE_tokenvend"))
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(!flag.status.success());
    assert!(!dir.path().join("m.db").exists());
    // …and read from a file named by TOKENVEND_DATABASE_URL_FILE (a mounted Secret).
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenvend"))
        .arg("migrate")
        .env_clear()
        .env("TOKENVEND_DATABASE_URL_FILE", &url_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("m.db").exists());
    // Both at once is ambiguous: refused, naming both.
    let both = std::process::Command::new(env!("CARGO_BIN_EXE_tokenvend"))
        .arg("migrate")
        .env_clear()
        .env("TOKENVEND_DATABASE_URL", &url)
        .env("TOKENVEND_DATABASE_URL_FILE", &url_file)
        .output()
        .unwrap();
    assert!(!both.status.success());
    assert!(
        String::from_utf8_lossy(&both.stderr)
            .contains("set TOKENVEND_DATABASE_URL or TOKENVEND_DATABASE_URL_FILE, not both")
    );
    // PostgreSQL without a master key is refused: secrets must not get a development key.
    let pg = PgCluster::shared().fresh_database();
    let stderr = refused_start(&[("TOKENVEND_DATABASE_URL", &pg)]);
    assert!(
        stderr.contains("TOKENVEND_MASTER_KEYS is required"),
        "{stderr}"
    );

    // JSON logs: one object per line, with the span's fields.
    let (provider, _) = tok_provider().await;
    let server = Server::with_env(vec![("TOKENVEND_LOG_FORMAT", "json".into())]).await;
    let c = server.client().await;
    setup_connection(&c, "acme", "p", &token_url(&provider), SECRET, json!({})).await;
    c.get_token("acme", "p").await.unwrap();
    let out = server.output();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let fetched = lines
        .iter()
        .find(|l| l["message"] == "fetched a token from the provider")
        .expect("the fetch is logged");
    // The fields of the enclosing spans (the fetch's tenant and provider) come along.
    let spans = fetched["spans"].as_array().expect("the span list");
    assert!(
        spans
            .iter()
            .any(|s| s["tenant"] == "acme" && s["provider"] == "p"),
        "{fetched}"
    );
    assert!(!out.contains(SECRET));
}

#[tokio::test]
async fn settings_from_a_config_file_with_the_environment_winning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokenvend.env");
    std::fs::write(
        &file,
        "# settings for this instance\nTOKENVEND_BOOTSTRAP_ADMIN_KEY=key-from-the-config-file\nTOKENVEND_LOG_FORMAT=json\n",
    )
    .unwrap();
    let server = Server::with_env(vec![
        ("TOKENVEND_CONFIG", file.display().to_string()),
        // The harness sets the bootstrap key in the environment: it wins over the file.
        ("TOKENVEND_LOG", "info".into()),
    ])
    .await;
    // The file's log format applied (the harness does not set one)...
    assert!(
        server.output().lines().all(|l| l.starts_with('{')),
        "{}",
        server.output()
    );
    // ...and the environment's admin key beat the file's.
    let from_file = crate::support::Client::connect(&server.grpc, Some("key-from-the-config-file"))
        .await
        .unwrap();
    let err = from_file
        .call("AdminService/ListTenants", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    server
        .client()
        .await
        .call("AdminService/ListTenants", json!({}))
        .await
        .unwrap();

    // A missing file is a clear start-up error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenvend"))
        .args(["--config", "/nonexistent/tokenvend.env", "keygen"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

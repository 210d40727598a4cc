//! `tokenvend check-config` and `tokenvend version`, run as an operator or a CI job would:
//! the effective configuration with where each value came from, secrets never shown, and
//! one line naming the setting when the configuration would not start.

use std::process::{Command, Output};

const BOOTSTRAP: &str = "planted-bootstrap-key-0b7e41";
const DB_PASSWORD: &str = "planted-db-password-5c2a";
const PROXY_PASSWORD: &str = "planted-proxy-password-91fd";

fn tokenvend(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokenvend"))
        .args(args)
        .env_clear()
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .expect("run tokenvend")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_configuration_with_sources_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenvend.env"),
        "TOKENVEND_REFRESH_TICK=2s\nTOKENVEND_LOG=debug\n",
    )
    .unwrap();
    let db = format!("postgres://tokenvend:{DB_PASSWORD}@db.internal:5432/tokenvend");
    let proxy = format!("http://egress:{PROXY_PASSWORD}@proxy.internal:3128");
    let out = tokenvend(
        &[
            "--config",
            "tokenvend.env",
            "check-config",
            "--max-wait",
            "45s",
        ],
        &[
            ("TOKENVEND_LOG", "warn"),
            ("TOKENVEND_BOOTSTRAP_ADMIN_KEY", BOOTSTRAP),
            ("TOKENVEND_DATABASE_URL", &db),
            ("TOKENVEND_MASTER_KEYS", &crate::support::master_keys()),
            ("TOKENVEND_PROVIDER_PROXY", &proxy),
        ],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    for expected in [
        "TOKENVEND_MAX_WAIT=45s  # flag",
        "TOKENVEND_LOG=warn  # environment",
        "TOKENVEND_REFRESH_TICK=2s  # config file",
        "TOKENVEND_GRPC_ADDR=0.0.0.0:50051  # default",
        "TOKENVEND_DATABASE_URL=[set]  # secret",
        "TOKENVEND_MASTER_KEYS=[set]  # secret",
        "TOKENVEND_BOOTSTRAP_ADMIN_KEY=[set]  # secret",
        "TOKENVEND_PROVIDER_PROXY=[redacted] (host proxy.internal)  # environment",
        "OTEL_EXPORTER_OTLP_ENDPOINT=  # unset: no traces exported",
        "# configuration OK",
    ] {
        assert!(lines.contains(&expected), "no {expected:?} in:\n{stdout}");
    }
    for secret in [BOOTSTRAP, DB_PASSWORD, PROXY_PASSWORD, "AAECAwQFBgcICQoL"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} shown"
        );
    }
    // Nothing was opened or created: it only checked.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn check_config_and_serve_refuse_a_bad_setting_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("TOKENVEND_MAX_WAIT", "1s")], "TOKENVEND_MAX_WAIT"),
        (&[("TOKENVEND_LEASE_TTL", "soon")], "TOKENVEND_LEASE_TTL"),
        (
            &[("TOKENVEND_BOOTSTRAP_ADMIN_KEY", "short")],
            "TOKENVEND_BOOTSTRAP_ADMIN_KEY",
        ),
        (
            &[("TOKENVEND_MASTER_KEYS", "k1:not-base64")],
            "TOKENVEND_MASTER_KEYS",
        ),
        (
            &[("TOKENVEND_DATABASE_URL", "mysql://u:p@h/db")],
            "TOKENVEND_DATABASE_URL",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "smoke-signals"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ];
    for (env, setting) in cases {
        for command in ["check-config", "serve"] {
            let mut env = env.to_vec();
            env.extend([
                ("TOKENVEND_GRPC_ADDR", "127.0.0.1:0"),
                ("TOKENVEND_HTTP_ADDR", "127.0.0.1:0"),
            ]);
            let out = tokenvend(&[command], &env, dir.path());
            let (stdout, stderr) = text(&out);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{command} with {env:?}:\n{stdout}\n{stderr}"
            );
            let naming: Vec<&str> = stderr.lines().filter(|l| l.contains(setting)).collect();
            assert!(
                !naming.is_empty(),
                "{command}: no line naming {setting}:\n{stderr}"
            );
            assert!(
                !stdout.contains("# configuration OK"),
                "{command} with {env:?}"
            );
        }
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing created on refusal"
    );
}

#[test]
fn version_prints_the_package_version_and_the_git_revision() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokenvend(&["version"], &[], dir.path());
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    let line = stdout.trim();
    let rest = line
        .strip_prefix(&format!("tokenvend {} (git ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected version line {line:?}"));
    assert!(
        rest == "unknown" || (rest.len() >= 7 && rest.chars().all(|c| c.is_ascii_hexdigit())),
        "revision {rest:?}"
    );
}

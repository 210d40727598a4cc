//! The real OAuth 2.0 authorization server for tests: `tests/oidc/server.mjs` on
//! `oidc-provider`, installed with `npm ci` by the test command.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use crate::process::Proc;

pub struct OidcServer {
    pub issuer: String,
    proc: Proc,
    _config: tempfile::NamedTempFile,
}

fn dir() -> PathBuf {
    crate::repo_root().join("tests/oidc")
}

impl OidcServer {
    /// Starts the server with `config` (see tests/oidc/README.md for its format).
    pub async fn start(config: serde_json::Value) -> Result<OidcServer> {
        let dir = dir();
        if !dir.join("node_modules/oidc-provider").exists() {
            bail!(
                "oidc-provider is not installed: run `npm ci --prefix tests/oidc` \
                 (the README's test command does this)"
            );
        }
        let cfg = tempfile::NamedTempFile::new()?;
        std::fs::write(cfg.path(), serde_json::to_vec(&config)?)?;
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.mjs"))
            .args(["--port", "0", "--config"])
            .arg(cfg.path())
            .current_dir(&dir);
        let mut proc = Proc::spawn(cmd, "oidc-provider")?;
        let line = proc
            .wait_for_output("listening ", Duration::from_secs(30))
            .await
            .context("oidc-provider did not start")?;
        let issuer = line
            .split_whitespace()
            .nth(1)
            .context("no address in the listening line")?
            .to_owned();
        Ok(OidcServer {
            issuer,
            proc,
            _config: cfg,
        })
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// Request counters kept by the server (`GET /__stats`).
    pub async fn stats(&self) -> Result<serde_json::Value> {
        let resp = reqwest::get(format!("{}/__stats", self.issuer))
            .await?
            .error_for_status()?;
        Ok(resp.json().await?)
    }

    pub fn output(&self) -> String {
        self.proc.output()
    }
}

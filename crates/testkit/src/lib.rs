//! Test harness shared by the store and end-to-end tests: real peers, started here.
//!
//! - [`postgres`]: a PostgreSQL cluster from the machine's own binaries (initdb/pg_ctl in a
//!   temp dir, as the `postgres` user when running as root), a fresh database per test.
//! - [`oidc`]: a real OAuth 2.0 authorization server (the `oidc-provider` npm package).
//! - [`process`]: child processes that die with the test and whose output can be grepped.
//! - [`proxy`]: a forward proxy that counts its connections.

pub mod oidc;
pub mod postgres;
pub mod process;
pub mod proxy;

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// The repository root (this crate lives in crates/testkit).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

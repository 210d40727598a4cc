//! A real PostgreSQL server per test binary, started from the local binaries.
//!
//! Nothing is skipped silently: without the binaries the harness panics with the command
//! that installs them. A watchdog process stops the cluster and removes its directory once
//! the test binary exits, however it exits.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::{Context, Result, bail};

pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
static DB_SEQ: AtomicUsize = AtomicUsize::new(0);

fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("TOKENVEND_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.exists() {
                let real = initdb.canonicalize().unwrap_or(initdb);
                return Ok(real.parent().expect("bin dir").to_owned());
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().context(
        "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them with \
         `apt-get install -y postgresql` (or set TOKENVEND_PG_BIN to their directory); \
         the store and end-to-end tests need a real PostgreSQL server",
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PgCluster {
    /// The cluster shared by all tests of this binary, started on first use.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(|| PgCluster::start().expect("start PostgreSQL for the tests"))
    }

    /// Starts a new cluster (tests that stop and restart the server want their own).
    pub fn start() -> Result<PgCluster> {
        let bin = find_bin_dir()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("tokenvend-pg-")
            .tempdir_in("/tmp")?
            .keep();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?
                .success();
            if !ok {
                bail!(
                    "chown of {} to the postgres user failed (is there a postgres user?)",
                    dir.display()
                );
            }
        }
        let cluster = PgCluster {
            dir,
            bin,
            port: crate::free_port(),
            as_postgres,
        };
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        cluster.start_server()?;
        cluster.spawn_watchdog()?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts (or restarts after [`stop`](Self::stop)) the server; returns when it accepts connections.
    pub fn start_server(&self) -> Result<()> {
        let opts = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB",
            self.dir.display(),
            self.port
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Stops the server (fast shutdown: connections are cut), leaving the data in place.
    pub fn stop(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            bail!(
                "{tool} failed: {}\n{}\n{}\nserver.log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Stops the cluster and removes its files once this process is gone.
    fn spawn_watchdog(&self) -> Result<()> {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            stop = if self.as_postgres {
                format!(
                    "runuser -u postgres -- {}",
                    self.bin.join("pg_ctl").display()
                )
            } else {
                self.bin.join("pg_ctl").display().to_string()
            },
            data = self.data_dir().display(),
            dir = self.dir.display(),
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning the PostgreSQL watchdog")?;
        Ok(())
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database; returns its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DB_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let out = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(format!("CREATE DATABASE {name}"))
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

//! SQLite: the embedded default, for one process. Timestamps are stored as Unix
//! microseconds so SQL compares them numerically. Write transactions start with
//! `BEGIN IMMEDIATE`: a deferred transaction that reads and then writes can fail with
//! SQLITE_BUSY when another connection wrote in between, and busy_timeout does not help. A
//! lock file next to the database keeps a second process out (two writers would each keep
//! their own cache and refresh on their own). This file holds only what is SQLite's own and
//! its dialect (see `dialect.rs`); the queries are in `sql.rs`.

use std::{fs::File, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Sqlite,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow},
};
use time::OffsetDateTime;
use tokenvend_core::store::{Published, StoreError};

use crate::{
    OpenError,
    dialect::{Db, Exec, Rewrite, Tx, driver_glue},
    sql::SqlStore,
};

/// The database's clock in Unix microseconds (leases use it, as on PostgreSQL).
const NOW_US: &str = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)";

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

fn from_micros(v: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1000)
        .map_err(|e| crate::corrupt("timestamp", e))
}

pub struct SqliteStore;

impl SqliteStore {
    pub async fn open(url: &str, migrate: bool) -> Result<SqlStore, OpenError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| OpenError::Connect(e.to_string()))?
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let path = opts.get_filename().to_owned();
        let in_memory = path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:");
        let lock = if in_memory {
            None
        } else {
            Some(Arc::new(take_lock(&path)?))
        };
        let pool = SqlitePoolOptions::new()
            // In-memory databases exist per connection: keep exactly one.
            .max_connections(if in_memory { 1 } else { 8 })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(OpenError::connect)?;
        if migrate {
            crate::migrate(&sqlx::migrate!("../../migrations/sqlite"), &pool).await?;
        }
        let conns = Conns::new(
            pool,
            Rewrite {
                now: NOW_US,
                placeholder: |n| format!("?{n}"),
                micros: |p| p.to_owned(),
                for_update: "",
            },
        );
        Ok(SqlStore::new(SqliteDb { conns, _lock: lock }))
    }
}

fn take_lock(db: &std::path::Path) -> Result<File, OpenError> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            OpenError::Connect(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    let mut lock_path = PathBuf::from(db);
    lock_path.as_mut_os_string().push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| OpenError::Connect(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked(db.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => Err(OpenError::Connect(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

driver_glue! {
    db: Sqlite,
    row: SqliteRow,
    time: i64,
    time_in: micros,
    time_out: from_micros,
}

/// SQLite's side of the dialect.
struct SqliteDb {
    /// One process: the change feed goes straight back to this process's subscribers.
    conns: Conns,
    /// Held (and locked) for the life of the store.
    _lock: Option<Arc<File>>,
}

#[async_trait]
impl Db for SqliteDb {
    fn system(&self) -> &'static str {
        "sqlite"
    }

    fn pool(&self) -> Box<dyn Exec> {
        self.conns.exec()
    }
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let tx = (self.conns.pool.begin_with("BEGIN IMMEDIATE").await).map_err(crate::db_err)?;
        Ok(self.conns.tx(tx))
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Published> {
        self.conns.events.subscribe()
    }
    async fn publish(&self, event: &Published) -> Result<(), StoreError> {
        let _ = self.conns.events.send(event.clone());
        Ok(())
    }
}

#[async_trait]
impl Tx for TxExec {
    /// Kept until the commit, so a change that rolled back is never announced.
    async fn notify(&mut self, event: &Published) -> Result<(), StoreError> {
        self.pending.push(event.clone());
        Ok(())
    }
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.commit_and_announce().await
    }
}

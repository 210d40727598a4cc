//! Storage adapters behind `tokenvend_core::store::Store`: PostgreSQL for production (many
//! replicas, shared state) and SQLite for the embedded default (one process). The SQL lives
//! here and nowhere else; both adapters pass the same test suite (`tests/it`).

mod access;
mod dialect;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;

pub use postgres::PgStore;
pub use sql::SqlStore;
pub use sqlite::SqliteStore;
use tokenvend_core::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("unsupported database URL scheme {0:?}: use postgres://… or sqlite://…")]
    Scheme(String),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error(
        "the SQLite database {0} is in use by another tokenvend process (embedded mode runs one replica; use PostgreSQL for more)"
    )]
    Locked(String),
}

impl OpenError {
    fn connect(e: sqlx::Error) -> Self {
        OpenError::Connect(e.to_string())
    }
}

/// Brings the schema up to date with the backend's own migrations.
async fn migrate<'a, A>(migrator: &sqlx::migrate::Migrator, pool: A) -> Result<(), OpenError>
where
    A: sqlx::Acquire<'a>,
    <A::Connection as std::ops::Deref>::Target: sqlx::migrate::Migrate,
{
    migrator
        .run(pool)
        .await
        .map_err(|e| OpenError::Migrate(e.to_string()))
}

/// Opens the store named by `url` and, if `migrate` is set, brings its schema up to date.
pub async fn open(url: &str, migrate: bool) -> Result<Arc<dyn Store>, OpenError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(url, migrate).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url, migrate).await?))
    } else {
        let scheme = url.split(':').next().unwrap_or_default().to_owned();
        Err(OpenError::Scheme(scheme))
    }
}

/// Maps driver errors to the port's vocabulary; constraint kinds become domain outcomes.
fn db_err(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error() {
        match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => return StoreError::AlreadyExists,
            sqlx::error::ErrorKind::ForeignKeyViolation => return StoreError::MissingParent,
            _ => {}
        }
    }
    StoreError::Database(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

//! PostgreSQL: the production store, shared by every replica. This file holds only what is
//! PostgreSQL's own — connecting, migrating, LISTEN — and its dialect (see `dialect.rs`);
//! the queries are in `sql.rs`.

use async_trait::async_trait;
use sqlx::{
    PgPool, Postgres,
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
};
use tokenvend_core::store::{Published, StoreError, StoreEvent};

use crate::{
    OpenError,
    dialect::{Db, Exec, Rewrite, Tx, args, driver_glue},
    sql::SqlStore,
};

/// The NOTIFY channel every replica listens on.
const CHANNEL: &str = "tokenvend_events";

pub struct PgStore;

impl PgStore {
    pub async fn open(url: &str, migrate: bool) -> Result<SqlStore, OpenError> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| OpenError::Connect(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(opts.application_name("tokenvend"))
            .await
            .map_err(OpenError::connect)?;
        if migrate {
            // Takes an advisory lock: replicas starting together migrate once.
            crate::migrate(&sqlx::migrate!("../../migrations/postgres"), &pool).await?;
        }
        let conns = Conns::new(
            pool,
            Rewrite {
                now: "now()",
                placeholder: |n| format!("${n}"),
                micros: |p| format!("({p} * interval '1 microsecond')"),
                for_update: "FOR UPDATE",
            },
        );
        tokio::spawn(listen(conns.pool.clone(), conns.events.clone()));
        Ok(SqlStore::new(PgDb(conns)))
    }
}

/// LISTENs on one dedicated connection (session mode: behind PgBouncer in transaction mode
/// this receives nothing, and waiters fall back to polling) and fans notifications out.
/// Whenever the stream may have had a gap — on every (re)connect — it says `Resync`.
async fn listen(pool: PgPool, tx: tokio::sync::broadcast::Sender<Published>) {
    let resync = || Published {
        origin: String::new(),
        event: StoreEvent::Resync,
    };
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the LISTEN connection; retrying in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying in 1 s");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        // Only now, listening again, can we say what may have been missed. (Not when the
        // connection drops: during a database outage nothing can change unseen, and the
        // cached tokens must keep being served.)
        let _ = tx.send(resync());
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => match serde_json::from_str::<Published>(n.payload()) {
                    Ok(p) => {
                        let _ = tx.send(p);
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring an unreadable notification"),
                },
                Ok(None) => {
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                    break;
                }
            }
        }
    }
}

driver_glue! {
    db: Postgres,
    row: PgRow,
    time: time::OffsetDateTime,
    time_in: |t| t,
    time_out: Ok,
}

/// PostgreSQL's side of the dialect.
struct PgDb(Conns);

fn payload(event: &Published) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|e| crate::corrupt("event", e))
}

#[async_trait]
impl Db for PgDb {
    fn system(&self) -> &'static str {
        "postgresql"
    }

    fn pool(&self) -> Box<dyn Exec> {
        self.0.exec()
    }
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        Ok(self.0.tx(self.0.pool.begin().await.map_err(crate::db_err)?))
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Published> {
        self.0.events.subscribe()
    }
    async fn publish(&self, event: &Published) -> Result<(), StoreError> {
        self.pool()
            .execute("SELECT pg_notify($1, $2)", args![CHANNEL, payload(event)?])
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Tx for TxExec {
    /// NOTIFY inside the transaction: delivered to every listener exactly when the change
    /// commits, never for a change that rolled back.
    async fn notify(&mut self, event: &Published) -> Result<(), StoreError> {
        self.execute("SELECT pg_notify($1, $2)", args![CHANNEL, payload(event)?])
            .await
            .map(|_| ())
    }
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.commit_and_announce().await
    }
}

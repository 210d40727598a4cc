//! The one small layer where PostgreSQL and SQLite differ, so that every query in `sql.rs`
//! is written once.
//!
//! Shared SQL uses PostgreSQL's `$1, $2, …` placeholders and three tokens:
//! `{now}` (the database's clock), `{micros:$N}` (parameter N as a duration in
//! microseconds, to add to `{now}`) and `{for_update}` (row lock inside a transaction). Each
//! dialect rewrites a statement once, on its first use, and caches the result:
//!
//! | | PostgreSQL | SQLite |
//! |---|---|---|
//! | placeholders | `$N` | `?N` (SQLite reads `$N` as a *named* parameter numbered by first appearance) |
//! | time values | `timestamptz` | `INTEGER` Unix microseconds (compared numerically) |
//! | `{now}` | `now()` | `julianday('now')` in microseconds |
//! | `{micros:$N}` | `$N * interval '1 microsecond'` | `?N` |
//! | `{for_update}` | `FOR UPDATE` | nothing: write transactions begin `IMMEDIATE` |
//! | events | `pg_notify` inside the transaction | an in-process broadcast after the commit |
//!
//! Values travel as [`Arg`] and come back through [`Row`], so the shared code names no
//! driver type; the glue between them and sqlx is generated for both drivers by
//! `driver_glue!` below from one definition.

use std::{collections::HashMap, sync::Mutex};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokenvend_core::store::{Published, StoreError};
use uuid::Uuid;

/// A bound parameter.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    Uuid(Uuid),
    Int(Option<i64>),
    Bool(bool),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Time(Option<OffsetDateTime>),
}

macro_rules! arg_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for Arg { fn from($v: $t) -> Self { $e } })*
    };
}

arg_from! {
    Uuid => |v| Arg::Uuid(v),
    i64 => |v| Arg::Int(Some(v)),
    Option<i64> => |v| Arg::Int(v),
    bool => |v| Arg::Bool(v),
    &str => |v| Arg::Text(Some(v.to_owned())),
    String => |v| Arg::Text(Some(v)),
    Option<&str> => |v| Arg::Text(v.map(str::to_owned)),
    &[u8] => |v| Arg::Bytes(Some(v.to_vec())),
    Option<&[u8]> => |v| Arg::Bytes(v.map(<[u8]>::to_vec)),
    &Option<Vec<u8>> => |v| Arg::Bytes(v.clone()),
    OffsetDateTime => |v| Arg::Time(Some(v)),
    Option<OffsetDateTime> => |v| Arg::Time(v),
}

/// `args![a, b, c]`: the parameters `$1, $2, $3` of a statement.
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$($crate::dialect::Arg::from($a)),*] };
}
pub(crate) use args;

/// A result row, read by column name.
pub(crate) trait Row: Send {
    fn uuid(&self, col: &str) -> Result<Uuid, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn opt_time(&self, col: &str) -> Result<Option<OffsetDateTime>, StoreError>;

    fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.opt_int(col)?.ok_or_else(|| null(col))
    }
    fn text(&self, col: &str) -> Result<String, StoreError> {
        self.opt_text(col)?.ok_or_else(|| null(col))
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        self.opt_bytes(col)?.ok_or_else(|| null(col))
    }
    fn time(&self, col: &str) -> Result<OffsetDateTime, StoreError> {
        self.opt_time(col)?.ok_or_else(|| null(col))
    }
}

fn null(col: &str) -> StoreError {
    crate::corrupt(col, "unexpected NULL")
}

pub(crate) type Rows = Vec<Box<dyn Row>>;

/// Running statements: on the pool (`Db`) or inside a transaction (`Tx`).
#[async_trait]
pub(crate) trait Exec: Send {
    /// Rows affected.
    async fn execute(&mut self, sql: &'static str, args: Vec<Arg>) -> Result<u64, StoreError>;
    async fn fetch_optional(
        &mut self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Option<Box<dyn Row>>, StoreError>;
    async fn fetch_all(&mut self, sql: &'static str, args: Vec<Arg>) -> Result<Rows, StoreError>;
}

/// A database: a pool of connections, and its change feed.
#[async_trait]
pub(crate) trait Db: Send + Sync + 'static {
    /// The OpenTelemetry `db.system` name (span attribute).
    fn system(&self) -> &'static str;
    /// A handle that runs single statements on the pool (cheap: a pool clone).
    fn pool(&self) -> Box<dyn Exec>;
    /// A write transaction (SQLite: `BEGIN IMMEDIATE`, so a read-then-write cannot fail
    /// with SQLITE_BUSY half-way).
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError>;
    /// Changes published by any replica (see `Store::subscribe`).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Published>;
    /// Tells every replica about a change outside any transaction.
    async fn publish(&self, event: &Published) -> Result<(), StoreError>;
}

/// Statements inside a transaction; dropped without `commit`, it rolls back.
#[async_trait]
pub(crate) trait Tx: Exec {
    /// Announces `event` exactly when (and only if) this transaction commits.
    async fn notify(&mut self, event: &Published) -> Result<(), StoreError>;
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// What a dialect says about the SQL text.
pub(crate) struct Rewrite {
    pub now: &'static str,
    /// How parameter N is written (`$N` or `?N`).
    pub placeholder: fn(&str) -> String,
    /// How `{micros:$N}` is written, given the placeholder.
    pub micros: fn(&str) -> String,
    pub for_update: &'static str,
}

/// Statements as the dialect writes them, rewritten once each (the set is finite: every
/// statement is a literal in `sql.rs`).
pub(crate) struct Statements {
    rewrite: Rewrite,
    cache: Mutex<HashMap<&'static str, &'static str>>,
}

impl Statements {
    pub fn new(rewrite: Rewrite) -> Self {
        Self {
            rewrite,
            cache: Mutex::default(),
        }
    }

    pub fn get(&self, shared: &'static str) -> &'static str {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(shared)
            .or_insert_with(|| Box::leak(self.rewrite(shared).into_boxed_str()))
    }

    fn rewrite(&self, sql: &str) -> String {
        let r = &self.rewrite;
        let mut out = String::with_capacity(sql.len() + 32);
        let mut rest = sql;
        while let Some(i) = rest.find(['$', '{']) {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(tail) = rest.strip_prefix('$') {
                let digits =
                    tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                out.push_str(&(r.placeholder)(&tail[..digits]));
                rest = &tail[digits..];
            } else if let Some(tail) = rest.strip_prefix("{now}") {
                out.push_str(r.now);
                rest = tail;
            } else if let Some(tail) = rest.strip_prefix("{for_update}") {
                out.push_str(r.for_update);
                rest = tail;
            } else if let Some(tail) = rest.strip_prefix("{micros:$") {
                let end = tail.find('}').expect("unterminated {micros:$N}");
                out.push_str(&(r.micros)(&(r.placeholder)(&tail[..end])));
                rest = &tail[end + 1..];
            } else {
                out.push('{');
                rest = &rest[1..];
            }
        }
        out.push_str(rest);
        out
    }
}

/// The sqlx glue of one driver: binding [`Arg`]s, reading [`Row`]s, and running statements
/// on the pool (`PoolExec`) or in a transaction (`TxExec`). Generated for both drivers from
/// this one definition; only the time representation differs (`$time_in` / `$time_out`).
macro_rules! driver_glue {
    (
        db: $db:ty,
        row: $row:ty,
        time: $time:ty,
        time_in: $time_in:expr,
        time_out: $time_out:expr $(,)?
    ) => {
        fn bind<'q>(
            mut q: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
            args: Vec<$crate::dialect::Arg>,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
            use $crate::dialect::Arg;
            for a in args {
                q = match a {
                    Arg::Uuid(v) => q.bind(v),
                    Arg::Int(v) => q.bind(v),
                    Arg::Bool(v) => q.bind(v),
                    Arg::Text(v) => q.bind(v),
                    Arg::Bytes(v) => q.bind(v),
                    Arg::Time(v) => q.bind(v.map($time_in)),
                };
            }
            q
        }

        impl $crate::dialect::Row for $row {
            fn uuid(&self, col: &str) -> Result<uuid::Uuid, tokenvend_core::store::StoreError> {
                sqlx::Row::try_get(self, col).map_err($crate::db_err)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, tokenvend_core::store::StoreError> {
                sqlx::Row::try_get(self, col).map_err($crate::db_err)
            }
            fn opt_text(
                &self,
                col: &str,
            ) -> Result<Option<String>, tokenvend_core::store::StoreError> {
                sqlx::Row::try_get(self, col).map_err($crate::db_err)
            }
            fn opt_bytes(
                &self,
                col: &str,
            ) -> Result<Option<Vec<u8>>, tokenvend_core::store::StoreError> {
                sqlx::Row::try_get(self, col).map_err($crate::db_err)
            }
            fn opt_time(
                &self,
                col: &str,
            ) -> Result<Option<time::OffsetDateTime>, tokenvend_core::store::StoreError> {
                let v: Option<$time> = sqlx::Row::try_get(self, col).map_err($crate::db_err)?;
                v.map($time_out).transpose()
            }
        }

        fn boxed(rows: Vec<$row>) -> $crate::dialect::Rows {
            rows.into_iter()
                .map(|r| Box::new(r) as Box<dyn $crate::dialect::Row>)
                .collect()
        }

        /// Statements on the pool.
        struct PoolExec {
            pool: sqlx::Pool<$db>,
            stmts: std::sync::Arc<$crate::dialect::Statements>,
        }

        /// Statements in a transaction, and the events it announces when it commits.
        struct TxExec {
            tx: sqlx::Transaction<'static, $db>,
            stmts: std::sync::Arc<$crate::dialect::Statements>,
            events: tokio::sync::broadcast::Sender<tokenvend_core::store::Published>,
            pending: Vec<tokenvend_core::store::Published>,
        }

        /// A pool, its change feed and its rewritten statements: what both the pool's and a
        /// transaction's statements need.
        struct Conns {
            pool: sqlx::Pool<$db>,
            events: tokio::sync::broadcast::Sender<tokenvend_core::store::Published>,
            stmts: std::sync::Arc<$crate::dialect::Statements>,
        }

        impl Conns {
            fn new(pool: sqlx::Pool<$db>, rewrite: $crate::dialect::Rewrite) -> Self {
                let (events, _) = tokio::sync::broadcast::channel(1024);
                Self {
                    pool,
                    events,
                    stmts: std::sync::Arc::new($crate::dialect::Statements::new(rewrite)),
                }
            }

            fn exec(&self) -> Box<dyn $crate::dialect::Exec> {
                Box::new(PoolExec {
                    pool: self.pool.clone(),
                    stmts: self.stmts.clone(),
                })
            }

            fn tx(&self, tx: sqlx::Transaction<'static, $db>) -> Box<dyn $crate::dialect::Tx> {
                Box::new(TxExec {
                    tx,
                    stmts: self.stmts.clone(),
                    events: self.events.clone(),
                    pending: Vec::new(),
                })
            }
        }

        impl TxExec {
            /// Commits, then hands the events kept for this moment to this process's
            /// subscribers (SQLite's whole change feed; PostgreSQL announces in the
            /// transaction itself and keeps none).
            async fn commit_and_announce(self) -> Result<(), tokenvend_core::store::StoreError> {
                let TxExec {
                    tx,
                    events,
                    pending,
                    ..
                } = self;
                tx.commit().await.map_err($crate::db_err)?;
                for event in pending {
                    let _ = events.send(event);
                }
                Ok(())
            }
        }

        $crate::dialect::exec_impl!(PoolExec, $db, |s| &s.pool);
        $crate::dialect::exec_impl!(TxExec, $db, |s| &mut *s.tx);
    };
}

/// `Exec` for a holder of `stmts` whose executor is `$exec(self)`.
macro_rules! exec_impl {
    ($holder:ty, $db:ty, |$s:ident| $exec:expr) => {
        #[async_trait::async_trait]
        impl $crate::dialect::Exec for $holder {
            async fn execute(
                &mut self,
                sql: &'static str,
                args: Vec<$crate::dialect::Arg>,
            ) -> Result<u64, tokenvend_core::store::StoreError> {
                let $s = self;
                let q = bind(sqlx::query($s.stmts.get(sql)), args);
                Ok(q.execute($exec)
                    .await
                    .map_err($crate::db_err)?
                    .rows_affected())
            }
            async fn fetch_optional(
                &mut self,
                sql: &'static str,
                args: Vec<$crate::dialect::Arg>,
            ) -> Result<Option<Box<dyn $crate::dialect::Row>>, tokenvend_core::store::StoreError>
            {
                let $s = self;
                let q = bind(sqlx::query($s.stmts.get(sql)), args);
                Ok(q.fetch_optional($exec)
                    .await
                    .map_err($crate::db_err)?
                    .map(|r| Box::new(r) as Box<dyn $crate::dialect::Row>))
            }
            async fn fetch_all(
                &mut self,
                sql: &'static str,
                args: Vec<$crate::dialect::Arg>,
            ) -> Result<$crate::dialect::Rows, tokenvend_core::store::StoreError> {
                let $s = self;
                let q = bind(sqlx::query($s.stmts.get(sql)), args);
                Ok(boxed(q.fetch_all($exec).await.map_err($crate::db_err)?))
            }
        }
    };
}
pub(crate) use driver_glue;
pub(crate) use exec_impl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_rewritten_per_dialect() {
        let sqlite = Statements::new(Rewrite {
            now: "NOW_US",
            placeholder: |n| format!("?{n}"),
            micros: |p| p.to_owned(),
            for_update: "",
        });
        assert_eq!(
            sqlite.get("UPDATE t SET a = $2, u = {now} + {micros:$3} WHERE id = $1 {for_update}"),
            "UPDATE t SET a = ?2, u = NOW_US + ?3 WHERE id = ?1 "
        );
        let pg = Statements::new(Rewrite {
            now: "now()",
            placeholder: |n| format!("${n}"),
            micros: |p| format!("{p} * interval '1 microsecond'"),
            for_update: "FOR UPDATE",
        });
        assert_eq!(
            pg.get("SELECT {now} + {micros:$10} FROM t WHERE a = $1 {for_update}"),
            "SELECT now() + $10 * interval '1 microsecond' FROM t WHERE a = $1 FOR UPDATE"
        );
        // the same text twice is the same rewritten statement
        let a = pg.get("SELECT 1");
        assert!(std::ptr::eq(a, pg.get("SELECT 1")));
    }
}

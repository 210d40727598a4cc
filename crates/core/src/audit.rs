//! The audit log: every administrative change and every refused call, with who, what, on
//! which tenant/provider/subject, the outcome and the peer — never a secret or a token.
//!
//! Each event is one structured log line (target `audit`) at once and a row in the
//! database soon after: a background writer inserts them in batches, so a refused call
//! never waits for the database and a flood of refused calls cannot become a flood of
//! transactions. Changes wait for room in the queue (never dropped); refusals are dropped
//! when it is full, counted, and the count logged.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{
    clock::Clock,
    store::{AuditRecord, Store},
};

/// Queued events before refusals start being dropped.
const QUEUE: usize = 10_000;
/// Rows per insert.
const BATCH: usize = 200;
/// Rows per purge statement.
const PURGE_BATCH: u32 = 10_000;
/// Log lines for refusals per second; beyond, they are counted and the count logged, so a
/// scan with bad keys cannot flood the logs (the rows are still stored while the queue has
/// room).
const REFUSAL_LINES_PER_SECOND: u64 = 20;

/// What happened, before it is stamped with an id and a time.
#[derive(Clone, Debug, Default)]
pub struct AuditEntry {
    pub principal: String,
    pub action: String,
    pub tenant: String,
    pub provider: String,
    pub subject: String,
    pub outcome: &'static str,
    pub peer: String,
}

#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Queued>,
    clock: Arc<dyn Clock>,
    dropped: Arc<AtomicU64>,
    lines: Arc<LineBudget>,
}

/// An event on its way to the table; a change waits for `stored`.
type Queued = (AuditRecord, Option<oneshot::Sender<()>>);

/// Refusal log lines in the current second, and those suppressed since the last summary.
#[derive(Default)]
struct LineBudget {
    second: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl LineBudget {
    fn take(&self, now: OffsetDateTime) -> bool {
        let second = now.unix_timestamp().max(0) as u64;
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.used.store(0, Ordering::Relaxed);
            let n = self.suppressed.swap(0, Ordering::Relaxed);
            if n > 0 {
                tracing::warn!(target: "audit", suppressed = n, "{n} refused calls were not logged one by one (too many); they are in the audit log");
            }
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < REFUSAL_LINES_PER_SECOND {
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

impl Auditor {
    /// The auditor and its writer, to be spawned.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = write(store, rx, dropped.clone());
        (
            Self {
                tx,
                clock,
                dropped,
                lines: Arc::default(),
            },
            writer,
        )
    }

    fn stamp(&self, e: AuditEntry, log: bool) -> AuditRecord {
        let time = self.clock.now();
        let record = AuditRecord {
            id: v7(time),
            time,
            principal: e.principal,
            action: e.action,
            tenant: e.tenant,
            provider: e.provider,
            subject: e.subject,
            outcome: e.outcome.to_owned(),
            peer: e.peer,
        };
        if !log {
            return record;
        }
        tracing::info!(
            target: "audit",
            principal = %record.principal,
            action = %record.action,
            tenant = %record.tenant,
            provider = %record.provider,
            subject = %record.subject,
            outcome = %record.outcome,
            peer = %record.peer,
            "audit"
        );
        record
    }

    /// An administrative change: waits for room in the queue rather than lose it, and for
    /// its row.
    pub async fn change(&self, e: AuditEntry) {
        let record = self.stamp(e, true);
        let (stored, written) = oneshot::channel();
        if self.tx.send((record, Some(stored))).await.is_err() {
            tracing::error!(target: "audit", "the audit writer has stopped; event kept in the log line only");
            return;
        }
        // The change is answered once its row is written (or the write failed, logged), so
        // whoever saw the answer finds the event — and every event queued before it.
        let _ = written.await;
    }

    /// A refused call: never waits; dropped (and counted) when the queue is full.
    pub fn refusal(&self, e: AuditEntry) {
        let log = self.lines.take(self.clock.now());
        let record = self.stamp(e, log);
        if self.tx.try_send((record, None)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A UUID v7 from our clock, so ids sort as the events' times do (the listing's order).
fn v7(time: OffsetDateTime) -> Uuid {
    let nanos = time.unix_timestamp_nanos().max(0) as u128;
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (nanos / 1_000_000_000) as u64,
        (nanos % 1_000_000_000) as u32,
    );
    Uuid::new_v7(ts)
}

async fn write(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Queued>, dropped: Arc<AtomicU64>) {
    let mut queued = Vec::with_capacity(BATCH);
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut queued, BATCH).await > 0 {
        let mut acks = Vec::new();
        for (record, ack) in queued.drain(..) {
            batch.push(record);
            acks.extend(ack);
        }
        let n = dropped.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::warn!(target: "audit", dropped = n, "audit queue full: {n} refused calls were logged but not stored");
        }
        if let Err(e) = store.insert_audit_events(&batch).await {
            // Each event already has its log line; the rows are lost with this batch.
            tracing::error!(target: "audit", error = %e, events = batch.len(), "could not store audit events");
        }
        batch.clear();
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Deletes events older than `retention`, every `every`, until the process ends.
pub async fn purge(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Ok(keep) = time::Duration::try_from(retention) else {
            return;
        };
        let before = clock.now() - keep;
        let mut total = 0u64;
        loop {
            match store.purge_audit_events(before, PURGE_BATCH).await {
                Ok(n) => {
                    total += n;
                    if n < u64::from(PURGE_BATCH) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not purge old audit events; retrying later");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(events = total, "purged audit events past their retention");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_lines_are_capped_per_second() {
        let budget = LineBudget::default();
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let logged = (0..100).filter(|_| budget.take(t)).count() as u64;
        assert_eq!(logged, REFUSAL_LINES_PER_SECOND);
        assert_eq!(
            budget.suppressed.load(Ordering::Relaxed),
            100 - REFUSAL_LINES_PER_SECOND
        );
        // The next second starts afresh (and reports what was suppressed).
        assert!(budget.take(t + time::Duration::seconds(1)));
        assert_eq!(budget.suppressed.load(Ordering::Relaxed), 0);
    }
}

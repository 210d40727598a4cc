//! Change notifications between replicas, and the in-process waiters they wake.
//!
//! Every replica publishes what others must hear (connection changed, token invalidated,
//! a refresh lease ended) through the store (PostgreSQL NOTIFY; in-process for SQLite), and
//! applies what it receives to its memory. Waiters for a key held by another replica's lease
//! are woken by `LeaseEnded`, and poll in case a notification is lost.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::{
    cache::TokenCache,
    ids::{ConnectionKey, ProviderId, Subject, TenantId, TokenKey},
    store::{Published, Store, StoreEvent},
};

/// Builds the events this replica's changes publish. The store sends each one in the same
/// transaction as the change it announces (PostgreSQL `pg_notify`), so a committed change
/// is never announced late or lost while a replica listens, and a replica that was not
/// listening resyncs when it listens again.
#[derive(Clone)]
pub struct Notifier {
    replica: Arc<str>,
}

impl Notifier {
    pub fn new(replica: impl Into<Arc<str>>) -> Self {
        Self {
            replica: replica.into(),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn event(&self, event: StoreEvent) -> Published {
        Published {
            origin: self.replica.to_string(),
            event,
        }
    }

    pub fn connection_changed(&self, key: &ConnectionKey) -> Published {
        self.event(StoreEvent::ConnectionChanged {
            tenant: key.tenant.to_string(),
            provider: key.provider.to_string(),
        })
    }

    /// A principal, API key or permission changed.
    pub fn access_changed(&self) -> Published {
        self.event(StoreEvent::AccessChanged)
    }

    pub fn token_invalidated(&self, key: &TokenKey) -> Published {
        self.event(StoreEvent::TokenInvalidated {
            tenant: key.tenant.to_string(),
            provider: key.provider.to_string(),
            subject: key.subject.to_string(),
        })
    }

    pub fn lease_ended(&self, key: &TokenKey) -> Published {
        self.event(StoreEvent::LeaseEnded {
            tenant: key.tenant.to_string(),
            provider: key.provider.to_string(),
            subject: key.subject.to_string(),
        })
    }
}

/// Tasks waiting for another replica's refresh of a key. An entry lives only while a task
/// holds its handle, so the map costs what is being waited on now, not every key ever used.
#[derive(Default)]
pub struct Waiters {
    keys: Arc<DashMap<TokenKey, Arc<Notify>>>,
}

/// A task's interest in one key's wake-ups; dropping the last one removes the key's entry.
pub struct WaitHandle {
    notify: Option<Arc<Notify>>,
    key: TokenKey,
    keys: Arc<DashMap<TokenKey, Arc<Notify>>>,
}

impl std::ops::Deref for WaitHandle {
    type Target = Notify;
    fn deref(&self) -> &Notify {
        self.notify.as_deref().expect("present until drop")
    }
}

impl Drop for WaitHandle {
    fn drop(&mut self) {
        drop(self.notify.take());
        // Under the shard lock: a concurrent `handle` either cloned before (count > 1, the
        // entry stays) or comes after and makes a new entry.
        self.keys
            .remove_if(&self.key, |_, n| Arc::strong_count(n) == 1);
    }
}

impl Waiters {
    /// The key's wake-up handle. Register interest (`Notify::notified` + `enable`) *before*
    /// checking the store, so a lease that ends in between still wakes the waiter.
    pub fn handle(&self, key: &TokenKey) -> WaitHandle {
        let notify = self.keys.entry(key.clone()).or_default().clone();
        WaitHandle {
            notify: Some(notify),
            key: key.clone(),
            keys: self.keys.clone(),
        }
    }

    pub fn wake(&self, key: &TokenKey) {
        if let Some(n) = self.keys.get(key) {
            n.notify_waiters();
        }
    }

    pub fn wake_all(&self) {
        for n in self.keys.iter() {
            n.notify_waiters();
        }
    }

    /// Keys with a waiting task.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn token_key(tenant: &str, provider: &str, subject: &str) -> Option<TokenKey> {
    Some(TokenKey {
        tenant: TenantId::parse(tenant).ok()?,
        provider: ProviderId::parse(provider).ok()?,
        subject: Subject::parse(subject).ok()?,
    })
}

/// Applies every replica's changes to this replica's memory until the store's feed ends.
pub async fn apply_events(
    store: Arc<dyn Store>,
    replica: Arc<str>,
    cache: Arc<TokenCache>,
    waiters: Arc<Waiters>,
    on_remote_lease_end: impl Fn(TokenKey),
) {
    let mut rx = store.subscribe();
    loop {
        let published = match rx.recv().await {
            Ok(p) => p,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "change feed lagged; dropping cached tokens");
                Published {
                    origin: String::new(),
                    event: StoreEvent::Resync,
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let own = published.origin == *replica;
        match published.event {
            StoreEvent::LeaseEnded {
                tenant,
                provider,
                subject,
            } => {
                if let Some(k) = token_key(&tenant, &provider, &subject) {
                    waiters.wake(&k);
                    if !own {
                        on_remote_lease_end(k);
                    }
                }
            }
            StoreEvent::TokenInvalidated {
                tenant,
                provider,
                subject,
            } => {
                if !own && let Some(k) = token_key(&tenant, &provider, &subject) {
                    cache.remove(&k);
                }
            }
            StoreEvent::ConnectionChanged { tenant, provider } => {
                if !own
                    && let (Ok(tenant), Ok(provider)) =
                        (TenantId::parse(tenant), ProviderId::parse(provider))
                {
                    cache.retire_connection(&ConnectionKey { tenant, provider });
                }
            }
            // The authorization decision follows these itself (`access::Authorizer::follow`).
            StoreEvent::AccessChanged => {}
            StoreEvent::Resync => {
                // Anything may have changed unseen: reload from the store on the next use.
                cache.retire_all();
                waiters.wake_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> TokenKey {
        TokenKey {
            tenant: TenantId::parse("acme").unwrap(),
            provider: ProviderId::parse(p).unwrap(),
            subject: Subject::client(),
        }
    }

    #[tokio::test]
    async fn a_key_is_remembered_only_while_someone_waits_on_it() {
        let waiters = Waiters::default();
        let a = waiters.handle(&key("p"));
        let b = waiters.handle(&key("p"));
        let other = waiters.handle(&key("q"));
        assert_eq!(waiters.len(), 2);
        // both handles share one Notify: a wake reaches b
        {
            let woken = b.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            waiters.wake(&key("p"));
            woken.await;
        }
        drop(a);
        assert_eq!(waiters.len(), 2, "b still waits on p");
        drop(b);
        assert_eq!(waiters.len(), 1, "p forgotten with its last waiter");
        drop(other);
        assert!(waiters.is_empty());
        for i in 0..10_000 {
            drop(waiters.handle(&key(&format!("k{i}"))));
        }
        assert!(
            waiters.is_empty(),
            "keys waited on once cost nothing afterwards"
        );
    }
}

//! The keys someone watches (`WatchToken`), each with a change signal the cache raises
//! whenever the key's token is replaced or dropped. See `watch` for the watchers.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use dashmap::DashMap;
use tokio::sync::watch;

use crate::ids::{ConnectionKey, TokenKey};

type Hasher = foldhash::fast::RandomState;
type Keys = Arc<DashMap<TokenKey, Arc<KeyState>, Hasher>>;

/// One watched key: its change signal, and when a failure to renew it was last logged (every
/// watcher of the key sees the same failure; the log gets one line, not one per watcher).
struct KeyState {
    tx: watch::Sender<()>,
    warned_at: AtomicI64,
}

/// The keys someone watches, each with a change signal. An entry lives only while a
/// [`Subscription`] to it does, so the map costs what is watched now.
#[derive(Default)]
pub struct Watched {
    keys: Keys,
}

impl Watched {
    pub fn subscribe(&self, key: &TokenKey) -> Subscription {
        let state = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(KeyState {
                    tx: watch::channel(()).0,
                    warned_at: AtomicI64::new(i64::MIN),
                })
            })
            .clone();
        Subscription {
            rx: Some(state.tx.subscribe()),
            state,
            key: key.clone(),
            keys: self.keys.clone(),
        }
    }

    /// Whether anyone watches `key` (refresh-ahead renews a watched token even unused).
    pub fn contains(&self, key: &TokenKey) -> bool {
        !self.keys.is_empty() && self.keys.contains_key(key)
    }

    /// The key's token changed or went away.
    pub fn changed(&self, key: &TokenKey) {
        if self.keys.is_empty() {
            return;
        }
        if let Some(state) = self.keys.get(key) {
            state.tx.send_replace(());
        }
    }

    pub fn connection_changed(&self, conn: &ConnectionKey) {
        for entry in self.keys.iter() {
            let k = entry.key();
            if k.tenant == conn.tenant && k.provider == conn.provider {
                entry.value().tx.send_replace(());
            }
        }
    }

    pub fn all_changed(&self) {
        for entry in self.keys.iter() {
            entry.value().tx.send_replace(());
        }
    }

    /// Keys watched.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One watcher's interest in a key; dropping the last one removes the key's entry.
pub struct Subscription {
    rx: Option<watch::Receiver<()>>,
    state: Arc<KeyState>,
    key: TokenKey,
    keys: Keys,
}

impl Subscription {
    fn rx(&mut self) -> &mut watch::Receiver<()> {
        self.rx.as_mut().expect("present until drop")
    }

    /// Takes note of the changes so far: only a later one wakes [`Subscription::changed`].
    pub fn mark_seen(&mut self) {
        self.rx().borrow_and_update();
    }

    /// Whether this watcher is the one to log the key's renewal failure now (at most once
    /// per `every_secs` per key, whatever the number of watchers).
    pub fn should_log(&self, now_unix: i64, every_secs: i64) -> bool {
        let last = self.state.warned_at.load(Ordering::Relaxed);
        now_unix.saturating_sub(last) >= every_secs
            && self
                .state
                .warned_at
                .compare_exchange(last, now_unix, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Waits for a change after the last [`Subscription::mark_seen`].
    pub async fn changed(&mut self) {
        if self.rx().changed().await.is_err() {
            // The sender lives in the map while this subscription does.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        // Under the shard lock: a concurrent `subscribe` either subscribed before (the
        // count is not 0, the entry stays) or comes after and makes a new entry.
        self.keys
            .remove_if(&self.key, |_, state| state.tx.receiver_count() == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ProviderId, Subject, TenantId};

    fn key(p: &str) -> TokenKey {
        TokenKey {
            tenant: TenantId::parse("acme").unwrap(),
            provider: ProviderId::parse(p).unwrap(),
            subject: Subject::client(),
        }
    }

    /// Many watchers of one key failing at once: one of them logs, once per interval.
    #[test]
    fn one_log_line_per_key_per_interval_however_many_watchers() {
        let watched = Watched::default();
        let subs: Vec<_> = (0..100).map(|_| watched.subscribe(&key("p"))).collect();
        let other = watched.subscribe(&key("q"));
        let logged = subs.iter().filter(|s| s.should_log(1_000, 30)).count();
        assert_eq!(logged, 1);
        assert!(other.should_log(1_000, 30), "another key has its own line");
        assert_eq!(subs.iter().filter(|s| s.should_log(1_029, 30)).count(), 0);
        assert_eq!(subs.iter().filter(|s| s.should_log(1_030, 30)).count(), 1);
        assert_eq!(watched.len(), 2);
        drop(subs);
        drop(other);
        assert!(watched.is_empty());
    }
}

//! The keys someone watches (`WatchToken`), each with a change signal the cache raises
//! whenever the key's token is replaced or dropped. See `watch` for the watchers.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::ids::{ConnectionKey, TokenKey};

type Hasher = foldhash::fast::RandomState;
type Keys = Arc<DashMap<TokenKey, watch::Sender<()>, Hasher>>;

/// The keys someone watches, each with a change signal. An entry lives only while a
/// [`Subscription`] to it does, so the map costs what is watched now.
#[derive(Default)]
pub struct Watched {
    keys: Keys,
}

impl Watched {
    pub fn subscribe(&self, key: &TokenKey) -> Subscription {
        let rx = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Subscription {
            rx: Some(rx),
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
        if let Some(tx) = self.keys.get(key) {
            tx.send_replace(());
        }
    }

    pub fn connection_changed(&self, conn: &ConnectionKey) {
        for entry in self.keys.iter() {
            let k = entry.key();
            if k.tenant == conn.tenant && k.provider == conn.provider {
                entry.value().send_replace(());
            }
        }
    }

    pub fn all_changed(&self) {
        for entry in self.keys.iter() {
            entry.value().send_replace(());
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
            .remove_if(&self.key, |_, tx| tx.receiver_count() == 0);
    }
}

//! Push: `WatchToken` hands a key's token to its watchers whenever it is replaced.
//!
//! The cache tells [`Watched`] about every change of a watched key (a new token stored by
//! this replica, one reloaded from the shared store after another replica's refresh, a
//! token dropped by an invalidation or a connection change). A [`TokenWatch`] wakes on
//! that, asks the vendor for the key's token as `GetToken` would, and yields it if it is
//! not the one it yielded last. It also wakes on its own before the last token falls below
//! the watcher's `min_ttl`, in case nothing renewed it (the refresh-ahead point is set for
//! the server's default `min_ttl`, a watcher may ask for more).

use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::{
    cache::CachedToken,
    error::{Error, Result},
    ids::{ConnectionKey, TokenKey},
    vend::Vendor,
};

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

/// The longest a watcher waits before asking again after a transient failure.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// One watcher's view of a key: [`TokenWatch::next`] yields the current token first, then
/// each replacement.
pub struct TokenWatch {
    vendor: Arc<Vendor>,
    key: TokenKey,
    min_ttl: Duration,
    subscription: Subscription,
    last: Option<Arc<CachedToken>>,
    backoff: Duration,
}

impl TokenWatch {
    pub(crate) fn new(vendor: Arc<Vendor>, key: TokenKey, min_ttl: Duration) -> Self {
        let subscription = vendor.cache().watched().subscribe(&key);
        Self {
            vendor,
            key,
            min_ttl,
            subscription,
            last: None,
            backoff: Duration::ZERO,
        }
    }

    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// The next token to hand the watcher: the current one on the first call, then the
    /// one that replaces it. Ends (an error) only on a definitive failure, or a transient
    /// one once the last token yielded has expired. Cancel-safe.
    pub async fn next(&mut self) -> Result<Arc<CachedToken>> {
        let clock = self.vendor.clock().clone();
        loop {
            // Changes from here on wake the wait below, whatever the lookup sees.
            self.subscription.mark_seen();
            let now = clock.now();
            let demand = self.demand(now);
            let wait_until = match self
                .vendor
                .get_token(self.key.clone(), Some(demand), None)
                .await
            {
                Ok(token) => {
                    self.backoff = Duration::ZERO;
                    if !self.last.as_ref().is_some_and(|l| same(l, &token)) {
                        self.last = Some(token.clone());
                        return Ok(token);
                    }
                    self.check_at(clock.now())
                }
                Err(e) if e.is_transient() && self.last_is_valid(clock.now()) => {
                    self.backoff = (self.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                    tracing::warn!(
                        tenant = %self.key.tenant,
                        provider = %self.key.provider,
                        error = %e,
                        retry_in = ?self.backoff,
                        "a watched token could not be renewed; its watchers keep the current one while it lasts"
                    );
                    clock.now() + self.backoff
                }
                Err(e) => return Err(e),
            };
            let wait: Duration = (wait_until - clock.now()).try_into().unwrap_or_default();
            tokio::select! {
                () = self.subscription.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn last_is_valid(&self, now: OffsetDateTime) -> bool {
        self.last
            .as_ref()
            .is_some_and(|t| t.expires_at.is_none_or(|at| now < at))
    }

    /// When the watcher must look again without being told: a little before the last
    /// token falls below `min_ttl` (renewal point), then at that point itself.
    fn check_at(&self, now: OffsetDateTime) -> OffsetDateTime {
        let Some(last) = &self.last else {
            return now;
        };
        let Some(expires_at) = last.expires_at else {
            // A static API key: only a change replaces it.
            return now + time::Duration::days(365);
        };
        let hard = expires_at - self.min_ttl;
        let soft = hard - margin(last);
        if now < soft { soft } else { hard }
    }

    /// What to ask of the vendor now: `min_ttl` until the renewal point of the last
    /// token, then more life than it has left (only a newer token will do), but never
    /// more than a fresh token can have.
    fn demand(&self, now: OffsetDateTime) -> Duration {
        let Some(last) = &self.last else {
            return self.min_ttl;
        };
        let (Some(expires_at), Some(lifetime)) = (last.expires_at, last.issued_lifetime) else {
            return self.min_ttl;
        };
        if now < expires_at - self.min_ttl - margin(last) {
            return self.min_ttl;
        }
        let left: Duration = (expires_at - now).try_into().unwrap_or_default();
        (left + Duration::from_secs(1))
            .min(lifetime.mul_f64(0.9))
            .max(self.min_ttl)
    }
}

/// How long before a watcher's `min_ttl` point it asks for a newer token itself: a tenth
/// of the token's life, between 1 and 30 seconds.
fn margin(token: &CachedToken) -> time::Duration {
    let life = token.issued_lifetime.unwrap_or_default();
    let m = (life / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
    time::Duration::try_from(m).unwrap_or(time::Duration::SECOND)
}

/// The same token (a reload of the same token from the store is no news to a watcher).
fn same(a: &Arc<CachedToken>, b: &Arc<CachedToken>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.expires_at == b.expires_at
            && a.access_token.expose_secret() == b.access_token.expose_secret())
}

impl Error {
    /// Whether asking again later may succeed: the provider or the store was unavailable,
    /// or a wait or limit ran out. A watch outlives these while its token is valid.
    pub fn is_transient(&self) -> bool {
        match self.root() {
            Error::Provider(p) => p.is_transient(),
            Error::Store(crate::store::StoreError::Database(_))
            | Error::DeadlineExceeded(_)
            | Error::RateLimited { .. }
            | Error::Aborted(_) => true,
            _ => false,
        }
    }
}

//! Push: `WatchToken` hands a key's token to its watchers whenever it is replaced.
//!
//! The cache tells `watched::Watched` about every change of a watched key (a new token stored by
//! this replica, one reloaded from the shared store after another replica's refresh, a
//! token dropped by an invalidation or a connection change). A [`TokenWatch`] wakes on
//! that, asks the vendor for the key's token as `GetToken` would, and yields it if it is
//! not the one it yielded last. It also wakes on its own before the last token falls below
//! the watcher's `min_ttl`, in case nothing renewed it (the refresh-ahead point is set for
//! the server's default `min_ttl`, a watcher may ask for more).

use std::{sync::Arc, time::Duration};

use secrecy::ExposeSecret;
use time::OffsetDateTime;

use crate::{
    cache::CachedToken, error::Result, ids::TokenKey, vend::Vendor, watched::Subscription,
};

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
    /// A watch on `key`: its current token, then each replacement, each valid for at least
    /// `min_ttl` (None: the server default). While it lives the key counts as in use for
    /// refresh-ahead.
    pub fn new(vendor: &Arc<Vendor>, key: TokenKey, min_ttl: Option<Duration>) -> Self {
        let subscription = vendor.cache().watched().subscribe(&key);
        Self {
            vendor: vendor.clone(),
            key,
            min_ttl: vendor.min_ttl(min_ttl),
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
                    // Every watcher of the key sees the same failure: one line per key
                    // per half minute, the rest at debug.
                    if self
                        .subscription
                        .should_log(clock.now().unix_timestamp(), 30)
                    {
                        tracing::warn!(
                            tenant = %self.key.tenant,
                            provider = %self.key.provider,
                            error = %e,
                            class = e.class(),
                            "a watched token could not be renewed; its watchers keep the current one while it lasts and retry"
                        );
                    } else {
                        tracing::debug!(tenant = %self.key.tenant, provider = %self.key.provider, class = e.class(), retry_in = ?self.backoff, "watched token not renewed");
                    }
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

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use futures::FutureExt;
    use secrecy::{ExposeSecret, SecretString};
    use time::macros::datetime;

    use super::TokenWatch;
    use crate::{
        cache::CachedToken,
        clock::{Clock, ManualClock},
        ids::{ProviderId, Subject, TenantId, TokenKey},
        testing::warm_vendor,
    };

    fn token(name: &str, clock: &ManualClock) -> Arc<CachedToken> {
        Arc::new(CachedToken::new(
            SecretString::from(name.to_owned()),
            Some(clock.now() + time::Duration::seconds(1000)),
            vec![],
            Some(Duration::from_secs(1000)),
            true,
            Some(clock.now() + time::Duration::seconds(800)),
        ))
    }

    /// The current token at once, then the one that replaces it in the cache — without a
    /// store call (the store here panics on use) — and the key counts as watched only
    /// while the watch lives.
    #[tokio::test]
    async fn a_watch_yields_the_current_token_then_its_replacement() {
        let key = TokenKey {
            tenant: TenantId::parse("acme").unwrap(),
            provider: ProviderId::parse("p").unwrap(),
            subject: Subject::client(),
        };
        let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
        let vendor = Arc::new(warm_vendor(
            &key,
            token("t1", &clock),
            Arc::new(clock.clone()),
        ));
        let mut watch = TokenWatch::new(&vendor, key.clone(), Some(Duration::from_secs(60)));
        assert!(vendor.cache().watched().contains(&key));
        let first = watch.next().now_or_never().expect("ready").unwrap();
        assert_eq!(first.access_token.expose_secret(), "t1");
        // Nothing new: the watch waits.
        let mut next = Box::pin(watch.next());
        assert!((&mut next).now_or_never().is_none());
        let cache = vendor.cache();
        assert!(cache.insert_if_current(
            key.clone(),
            token("t2", &clock),
            cache.epoch(&key.connection())
        ));
        let second = next.await.unwrap();
        assert_eq!(second.access_token.expose_secret(), "t2");
        drop(watch);
        assert!(
            !vendor.cache().watched().contains(&key),
            "forgotten with its last watcher"
        );
    }
}

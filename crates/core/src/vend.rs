//! `GetToken` from the cache down to the provider call. Read top to bottom:
//! [`Vendor::get_token`] (hot path) → [`Vendor::join_fetch`] (single-flight in this
//! process) → `refresh::fetch` (shared store, fleet-wide lease, provider) →
//! `TokenClient::fetch`.

use std::{sync::Arc, time::Duration};

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::{
    Deps,
    cache::{CachedToken, TokenCache},
    config::{MIN_TTL_FLOOR, VendorConfig},
    connection::load_connection_of,
    error::{Error, Result},
    events::Waiters,
    flight::{SingleFlight, Waited},
    ids::TokenKey,
    refresh::{Refresher, fetch, reload_stored},
};

pub struct Vendor {
    /// The fetch path's dependencies; shared so a fetch task can outlive its caller.
    inner: Arc<Refresher>,
    flights: SingleFlight<TokenKey, Arc<CachedToken>, Error>,
    /// When each key was last invalidated, for `invalidate_min_interval`.
    invalidated_at: RecentInvalidations,
}

/// When each key was last invalidated. An entry older than the minimum interval means
/// nothing; they are swept whenever the map has doubled since the last sweep, so it holds
/// about the keys invalidated within one interval, not every key ever invalidated, at an
/// amortised constant cost per invalidation.
#[derive(Default)]
struct RecentInvalidations {
    at: dashmap::DashMap<TokenKey, OffsetDateTime>,
    sweep_at: std::sync::atomic::AtomicUsize,
}

impl RecentInvalidations {
    /// Below this many entries there is no sweep at all.
    const SWEEP_MIN: usize = 1024;

    fn last(&self, key: &TokenKey) -> Option<OffsetDateTime> {
        self.at.get(key).map(|t| *t)
    }

    fn record(&self, key: TokenKey, now: OffsetDateTime, interval: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.at.insert(key, now);
        if self.at.len() >= self.sweep_at.load(Relaxed).max(Self::SWEEP_MIN) {
            self.at.retain(|_, t| now - *t < interval);
            self.sweep_at.store(self.at.len() * 2, Relaxed);
        }
    }
}

impl Vendor {
    pub fn new(deps: Deps, config: VendorConfig) -> Self {
        Self {
            inner: Arc::new(Refresher {
                store: deps.store,
                envelope: deps.envelope,
                cache: deps.cache,
                client: deps.client,
                clock: deps.clock,
                config,
                notifier: deps.notifier,
                waiters: Arc::new(Waiters::default()),
            }),
            flights: SingleFlight::new(),
            invalidated_at: RecentInvalidations::default(),
        }
    }

    pub fn config(&self) -> &VendorConfig {
        &self.inner.config
    }

    pub fn clock(&self) -> &Arc<dyn crate::clock::Clock> {
        &self.inner.clock
    }

    /// A token for `key` valid for at least `min_ttl` (None: the server default), waiting at
    /// most `wait` (capped by `max_wait`).
    pub async fn get_token(
        &self,
        key: TokenKey,
        min_ttl: Option<Duration>,
        wait: Option<Duration>,
    ) -> Result<Arc<CachedToken>> {
        if let Some(token) = self.cached(&key, min_ttl)? {
            return Ok(token);
        }
        let min_ttl = self.min_ttl(min_ttl);
        let wait = wait
            .unwrap_or(self.inner.config.max_wait)
            .min(self.inner.config.max_wait);
        let deadline = tokio::time::Instant::now() + wait;
        // A shared fetch started for a laxer caller may return a token too short for this
        // one; then one more fetch, and if even a token straight from the provider is too
        // short, the request cannot be met.
        for attempt in 0..2 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Not a use for the refresher: only later hits show the key is in use.
            let token = self.join_fetch(&key, min_ttl, left, wait).await?;
            if token.valid_for(self.inner.clock.now(), min_ttl) {
                return Ok(token);
            }
            if token.fresh_from_provider || attempt == 1 {
                let lifetime = token.issued_lifetime.unwrap_or_default();
                return Err(unsatisfiable(min_ttl, lifetime));
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    /// The `min_ttl` a request asking for `asked` gets (the default, never below the floor).
    pub fn min_ttl(&self, asked: Option<Duration>) -> Duration {
        asked
            .filter(|d| !d.is_zero())
            .unwrap_or(self.inner.config.default_min_ttl)
            .max(MIN_TTL_FLOOR)
    }

    /// The hot path alone: the cached token if it lives long enough, without waiting or
    /// touching the store. `None` means `get_token` would have to fetch (callers use this
    /// to apply limits to misses only).
    pub fn cached(
        &self,
        key: &TokenKey,
        min_ttl: Option<Duration>,
    ) -> Result<Option<Arc<CachedToken>>> {
        let min_ttl = self.min_ttl(min_ttl);
        // One map read, one Arc clone, no await before the answer.
        let now = self.inner.clock.now();
        if let Some(token) = self.inner.cache.get(key) {
            if token.touch(now) {
                // Parked as idle when it came due; in use again, so renew it now.
                self.inner.cache.reschedule(now, key.clone(), &token);
            }
            if token.valid_for(now, min_ttl) {
                return Ok(Some(token));
            }
            if let Some(lifetime) = token.issued_lifetime.filter(|l| *l < min_ttl) {
                return Err(unsatisfiable(min_ttl, lifetime));
            }
        }
        Ok(None)
    }

    /// Whether a caller missing the cache now would join a fetch already running for `key`
    /// (and so cost nothing more), rather than start one.
    pub fn is_fetching(&self, key: &TokenKey) -> bool {
        self.flights.is_running(key)
    }

    async fn join_fetch(
        &self,
        key: &TokenKey,
        min_ttl: Duration,
        left: Duration,
        wait: Duration,
    ) -> Result<Arc<CachedToken>> {
        let inner = self.inner.clone();
        let task_key = key.clone();
        if self.flights.is_running(key) {
            self.inner.client.observer().singleflight_joined();
        }
        // The cache-miss path, one per key however many callers wait for it.
        let span = tracing::info_span!(
            "fetch_token",
            tenant = %key.tenant,
            provider = %key.provider,
            template = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let result = self
            .flights
            .run(key.clone(), left, move || {
                async move {
                    let fetched = fetch(&inner, task_key, min_ttl).await;
                    let outcome = fetched.as_ref().map_or_else(Error::class, |_| "ok");
                    tracing::Span::current().record("outcome", outcome);
                    fetched
                }
                .instrument(span)
            })
            .await;
        match result {
            Ok(token) => Ok(token),
            Err(Waited::Failed(e)) => Err(Error::Shared(e)),
            Err(Waited::TimedOut) => Err(Error::DeadlineExceeded(wait)),
            Err(Waited::Panicked) => Err(Error::Internal(
                "the token fetch failed unexpectedly (logged); the next call tries again".into(),
            )),
        }
    }

    /// A caller reports that the provider rejected `reported`. It is dropped — in the shared
    /// store and in memory, here and on every replica — only if it is still the current
    /// token, so a thousand reports of one dead token cause one refresh, and a report about
    /// an older token changes nothing.
    pub async fn invalidate(&self, key: TokenKey, reported: &[u8]) -> Result<bool> {
        let digest = Sha256::digest(reported);
        let conn = load_connection_of(self.inner.store.as_ref(), &key.connection()).await?;
        let now = self.inner.clock.now();
        if let Some(last) = self.invalidated_at.last(&key) {
            let since = now - last;
            let interval = self.inner.config.invalidate_min_interval;
            if since < interval {
                // Only a report about the current token would cause a refresh.
                let current = self
                    .inner
                    .store
                    .load_token(conn.id, key.subject.as_str())
                    .await?
                    .is_some_and(|t| t.token_sha256 == digest.as_slice());
                if current {
                    return Err(Error::RateLimited {
                        what: "this token was already invalidated moments ago and its replacement is reported dead too; check the caller",
                        retry_after: (interval - since).try_into().unwrap_or(interval),
                    });
                }
                return Ok(false);
            }
        }
        let in_store = self
            .inner
            .store
            .invalidate_token(
                conn.id,
                key.subject.as_str(),
                &digest,
                &self.inner.notifier.token_invalidated(&key),
            )
            .await?;
        let in_memory = self.inner.cache.remove_if(&key, |t| {
            t.expires_at.is_some()
                && Sha256::digest(t.access_token.expose_secret().as_bytes()) == digest
        });
        if in_store || in_memory {
            tracing::info!(tenant = %key.tenant, provider = %key.provider, "token invalidated by a caller");
            let interval = self.inner.config.invalidate_min_interval;
            self.invalidated_at.record(key, now, interval);
        }
        Ok(in_store || in_memory)
    }

    /// Releases every refresh lease this replica holds (at shutdown, after draining), so
    /// other replicas take over at once instead of after `lease_ttl`. Refresh attempts in
    /// flight stay recorded until their deadline.
    pub async fn release_leases(&self) -> Result<u64> {
        Ok(self
            .inner
            .store
            .release_leases(self.inner.notifier.replica())
            .await?)
    }

    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.inner.cache
    }

    /// Applies other replicas' changes to memory (until the store's feed closes). A token
    /// another replica renewed is loaded from the store at once if someone here watches
    /// its key, so the watchers get it without asking.
    pub async fn apply_events(&self) {
        let inner = self.inner.clone();
        let on_remote_lease_end = move |key: TokenKey| {
            if inner.cache.watched().contains(&key) {
                let inner = inner.clone();
                tokio::spawn(async move { reload_stored(&inner, key).await });
            }
        };
        crate::events::apply_events(
            self.inner.store.clone(),
            self.inner.notifier.replica().into(),
            self.inner.cache.clone(),
            self.inner.waiters.clone(),
            on_remote_lease_end,
        )
        .await;
    }

    /// Starts a background renewal of every cached token that is due (see
    /// `VendorConfig::refresh_point`) and was used since it was fetched; idle ones are
    /// parked, left to expire unless a hit brings them back. Returns the renewals started,
    /// at most `limit` (bounded concurrency); what is left stays due for the next call.
    /// The cost is per due token: idle tokens not yet due are never looked at.
    pub fn refresh_due(self: &Arc<Self>, limit: usize) -> Vec<tokio::task::JoinHandle<()>> {
        let now = self.inner.clock.now();
        let mut started = Vec::new();
        while started.len() < limit {
            let Some((key, token)) = self.inner.cache.pop_due(now) else {
                break;
            };
            let (Some(_), Some(expires_at)) = (token.refresh_at, token.expires_at) else {
                continue;
            };
            if now >= expires_at {
                continue;
            }
            let fetched_at = expires_at - token.issued_lifetime.unwrap_or_default();
            // A watched key is in use: its watchers want the renewal pushed to them.
            let in_use = token.used_since(fetched_at) || self.inner.cache.watched().contains(&key);
            if !in_use {
                token.park();
                // A hit between the check and the park did not see the flag: look again.
                if !(token.used_since(fetched_at) && token.unpark()) {
                    continue;
                }
            }
            // Demand more life than the current token has left: only a newer one will do.
            let left: Duration = (expires_at - now).try_into().unwrap_or_default();
            let min_ttl = left + Duration::from_secs(1);
            let this = self.clone();
            started.push(tokio::spawn(async move {
                let r = this
                    .join_fetch(&key, min_ttl, this.inner.config.max_wait, this.inner.config.max_wait)
                    .await;
                // The renewed token starts unused: if nobody asks for it before its own
                // refresh point, it is parked and left to expire.
                let observer = this.inner.client.observer();
                match r {
                    Ok(_) => {
                        observer.refresh_ahead("refreshed");
                        tracing::debug!(tenant = %key.tenant, provider = %key.provider, "renewed ahead of expiry");
                    }
                    Err(e) => {
                        observer.refresh_ahead("failed");
                        tracing::warn!(tenant = %key.tenant, provider = %key.provider, error = %e, "renewal ahead of expiry failed; the current token is served while it lasts");
                        // Try again shortly while the old token is still the one served.
                        let cache = &this.inner.cache;
                        if cache.get(&key).is_some_and(|t| Arc::ptr_eq(&t, &token)) {
                            let at = this.inner.clock.now() + RENEWAL_RETRY;
                            cache.reschedule(at, key.clone(), &token);
                        }
                    }
                }
            }));
        }
        started
    }

    /// The refresh-ahead loop: every `tick`, renew what is due, at most `concurrency` at once.
    pub async fn refresh_ahead(self: Arc<Self>, tick: Duration, concurrency: usize) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            for handle in self.refresh_due(concurrency) {
                let _ = handle.await;
            }
        }
    }
}

/// How soon a failed renewal ahead of expiry is tried again (a definitive provider error is
/// then answered from the negative cache, without a provider call).
const RENEWAL_RETRY: time::Duration = time::Duration::seconds(1);

fn unsatisfiable(min_ttl: Duration, lifetime: Duration) -> Error {
    Error::MinTtlUnsatisfiable {
        requested_secs: min_ttl.as_secs() as i64,
        lifetime_secs: lifetime.as_secs() as i64,
    }
}
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::FutureExt;
    use secrecy::{ExposeSecret, SecretString};
    use time::macros::datetime;

    use crate::{
        cache::CachedToken,
        clock::{Clock, ManualClock},
        error::Error,
        ids::{ProviderId, Subject, TenantId, TokenKey},
        testing::warm_vendor,
    };

    fn key(p: &str) -> TokenKey {
        TokenKey {
            tenant: TenantId::parse("acme").unwrap(),
            provider: ProviderId::parse(p).unwrap(),
            subject: Subject::client(),
        }
    }

    #[test]
    fn recent_invalidations_forget_what_is_older_than_the_interval() {
        let recent = super::RecentInvalidations::default();
        let interval = std::time::Duration::from_secs(10);
        let t0 = datetime!(2026-01-01 0:00 UTC);
        for i in 0..5000 {
            recent.record(key(&format!("old{i}")), t0, interval);
        }
        assert_eq!(recent.at.len(), 5000, "all within the interval: kept");
        let t1 = t0 + time::Duration::seconds(11);
        for i in 0..5000 {
            recent.record(key(&format!("new{i}")), t1, interval);
        }
        assert_eq!(
            recent.at.len(),
            5000,
            "the entries past the interval are swept once the map doubled"
        );
        assert!(recent.last(&key("old0")).is_none());
        assert_eq!(recent.last(&key("new0")), Some(t1));
    }

    /// A token living 1000 s from now, due for renewal at 800 s.
    fn due_at_800s(clock: &ManualClock) -> Arc<CachedToken> {
        Arc::new(CachedToken::new(
            SecretString::from("t"),
            Some(clock.now() + time::Duration::seconds(1000)),
            vec![],
            Some(std::time::Duration::from_secs(1000)),
            true,
            Some(clock.now() + time::Duration::seconds(800)),
        ))
    }

    /// A token that comes due unused is parked, not renewed and not looked at again each
    /// tick; the next hit puts it back on the schedule, due at once.
    #[tokio::test]
    async fn an_idle_token_is_parked_at_its_due_time_and_a_hit_brings_it_back() {
        let k = key("p");
        let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
        let vendor = Arc::new(warm_vendor(
            &k,
            due_at_800s(&clock),
            Arc::new(clock.clone()),
        ));
        assert_eq!(vendor.cache().scheduled(), 1);
        assert!(vendor.refresh_due(8).is_empty(), "not due yet");
        assert_eq!(vendor.cache().scheduled(), 1);
        clock.advance(time::Duration::seconds(850));
        // Due but never used since it was fetched: parked. (A renewal would reach the store,
        // which panics here.)
        assert!(vendor.refresh_due(8).is_empty());
        assert_eq!(vendor.cache().scheduled(), 0, "taken off the schedule");
        assert!(vendor.refresh_due(8).is_empty());
        // A hit: back on the schedule, due now.
        assert!(vendor.cached(&k, None).unwrap().is_some());
        assert_eq!(vendor.cache().scheduled(), 1);
        let (due, _) = vendor.cache().pop_due(clock.now()).expect("due at once");
        assert_eq!(due, k);
        // Further hits do not add entries.
        assert!(vendor.cached(&k, None).unwrap().is_some());
        clock.advance(time::Duration::seconds(1));
        assert!(vendor.cached(&k, None).unwrap().is_some());
        assert_eq!(vendor.cache().scheduled(), 0);
    }

    /// A watched token is in use for refresh-ahead even if no GetToken touched it: it is
    /// renewed at its due time, not parked.
    #[tokio::test]
    async fn a_watched_token_is_renewed_even_unused() {
        let k = key("p");
        let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
        let vendor = Arc::new(warm_vendor(
            &k,
            due_at_800s(&clock),
            Arc::new(clock.clone()),
        ));
        let watching = vendor.cache().watched().subscribe(&k);
        clock.advance(time::Duration::seconds(850));
        let started = vendor.refresh_due(8);
        // The renewal itself would reach the store (which panics here): not awaited.
        for h in &started {
            h.abort();
        }
        assert_eq!(started.len(), 1, "renewed, not parked");
        drop(watching);
    }

    #[test]
    fn a_hit_answers_without_awaiting_or_touching_the_store() {
        let key = TokenKey {
            tenant: TenantId::parse("acme").unwrap(),
            provider: ProviderId::parse("p").unwrap(),
            subject: Subject::client(),
        };
        let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
        let token = Arc::new(CachedToken::new(
            SecretString::from("t"),
            Some(clock.now() + time::Duration::seconds(100)),
            vec![],
            Some(std::time::Duration::from_secs(100)),
            true,
            None,
        ));
        let vendor = warm_vendor(&key, token, Arc::new(clock.clone()));
        // Polled once: Ready. The store behind it panics on any use.
        let got = vendor
            .get_token(key.clone(), None, None)
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(got.access_token.expose_secret(), "t");
        // A min_ttl beyond the provider's whole token lifetime: refused without a fetch.
        let err = vendor
            .get_token(key.clone(), Some(std::time::Duration::from_secs(200)), None)
            .now_or_never()
            .unwrap()
            .unwrap_err();
        assert!(matches!(
            err,
            Error::MinTtlUnsatisfiable {
                requested_secs: 200,
                lifetime_secs: 100
            }
        ));
    }
}

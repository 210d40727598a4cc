//! The in-memory token cache: the hot path of `GetToken`.
//!
//! A hit is one sharded map read (a std read lock held for a hash lookup, never across an
//! await) and an `Arc` clone. Connection changes must never be answered with a token fetched
//! under the old settings, so each connection has an epoch: a fetch records the epoch when
//! it starts and may only insert while it is unchanged; a change bumps the epoch and drops
//! the connection's tokens, under the same lock, so no in-flight fetch can slip in between.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use dashmap::DashMap;
use secrecy::SecretString;
use time::OffsetDateTime;

use crate::{
    ids::{ConnectionKey, Subject, TokenKey},
    schedule::Schedule,
    watched::Watched,
};

/// A token ready to hand out. Shared by every caller through an `Arc`.
pub struct CachedToken {
    pub access_token: SecretString,
    /// `None` for a static API key, which never expires.
    pub expires_at: Option<OffsetDateTime>,
    pub scopes: Vec<String>,
    /// The whole lifetime the provider granted when it issued this token: a caller asking
    /// for a longer `min_ttl` cannot be satisfied by any fresh token either.
    pub issued_lifetime: Option<Duration>,
    /// Whether this token came from the provider during the fetch that produced it (as
    /// opposed to the shared store), so "still too short" means "unsatisfiable".
    pub fresh_from_provider: bool,
    /// When the background refresher should renew it (None: never, e.g. a static key).
    pub refresh_at: Option<OffsetDateTime>,
    /// Unix seconds of the last cache hit: the refresher renews only tokens in use.
    last_used: AtomicI64,
    /// Set by the refresher when the token came due unused and was left to expire; the next
    /// hit puts it back on the schedule (see [`CachedToken::touch`]).
    parked: AtomicBool,
    /// The answer to a GetToken for this token, encoded by the server on first use and
    /// served to every later caller as is. Opaque here: the wire format is the server's.
    wire: OnceLock<Bytes>,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    pub fn new(
        access_token: SecretString,
        expires_at: Option<OffsetDateTime>,
        scopes: Vec<String>,
        issued_lifetime: Option<Duration>,
        fresh_from_provider: bool,
        refresh_at: Option<OffsetDateTime>,
    ) -> Self {
        Self {
            access_token,
            expires_at,
            scopes,
            issued_lifetime,
            fresh_from_provider,
            refresh_at,
            last_used: AtomicI64::new(i64::MIN),
            parked: AtomicBool::new(false),
            wire: OnceLock::new(),
        }
    }

    /// Records a use. The hot path: a relaxed load, and a store only when the second
    /// changed, so concurrent hits on one key share the cache line instead of bouncing it.
    /// True when the refresher had parked the token as idle: the caller puts it back on the
    /// schedule (once; the flag is cleared here).
    #[inline]
    #[must_use]
    pub fn touch(&self, now: OffsetDateTime) -> bool {
        let secs = now.unix_timestamp();
        if self.last_used.load(Ordering::Relaxed) != secs {
            self.last_used.store(secs, Ordering::Relaxed);
            return self.parked.load(Ordering::Relaxed)
                && self.parked.swap(false, Ordering::AcqRel);
        }
        false
    }

    /// The refresher found the token due but unused: it leaves the schedule until a hit.
    pub fn park(&self) {
        self.parked.store(true, Ordering::Release);
    }

    /// Takes the token off the parked list again; true if it was parked (and so nobody else
    /// rescheduled it in between).
    pub fn unpark(&self) -> bool {
        self.parked.swap(false, Ordering::AcqRel)
    }

    /// The encoded answer for this token: `encode` runs once, on the first call.
    #[inline]
    pub fn wire(&self, encode: impl FnOnce(&CachedToken) -> Bytes) -> Bytes {
        self.wire.get_or_init(|| encode(self)).clone()
    }

    /// Whether the token was used at or after `since`.
    pub fn used_since(&self, since: OffsetDateTime) -> bool {
        self.last_used.load(Ordering::Relaxed) >= since.unix_timestamp()
    }

    /// True when the token stays valid for at least `min_ttl` after `now`.
    pub fn valid_for(&self, now: OffsetDateTime, min_ttl: Duration) -> bool {
        match self.expires_at {
            None => true,
            Some(exp) => exp - now >= min_ttl,
        }
    }
}

/// What a fetch remembers before it reads a connection's settings: the connection's epoch
/// and the cache-wide one (bumped by `retire_all`, which must also fence connections that
/// had no entry yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    all: u64,
    connection: u64,
}

/// foldhash, seeded per map: a hit hashes three strings, and SipHash cost most of it.
type Hasher = foldhash::fast::RandomState;

/// How many locks serialise inserts with retirements (by connection hash).
const STRIPES: usize = 64;

pub struct TokenCache {
    tokens: DashMap<TokenKey, Arc<CachedToken>, Hasher>,
    /// Epochs of the connections ever retired; a connection without an entry is at 0, so
    /// the map costs nothing per cached connection.
    epochs: DashMap<ConnectionKey, u64, Hasher>,
    /// An insert holds its connection's stripe shared from its epoch check to its insert, a
    /// retirement holds it exclusively while it bumps the epoch and drops the tokens: no
    /// insert can fall in between, and no lock exists per connection.
    stripes: [std::sync::RwLock<()>; STRIPES],
    /// Renewal ahead of expiry, by due time.
    schedule: Schedule<CachedToken>,
    /// Bumped by `retire_all`. A std `RwLock`, not an atomic: an insert holds it shared from
    /// its check to its insert, so a `retire_all` (exclusive) can never fall in between.
    /// Never held across an await; the hit path does not touch it.
    all: std::sync::RwLock<u64>,
    /// Keys with `WatchToken` streams, told about every change of their token.
    watched: Watched,
    /// The end users (subjects) each connection has had tokens cached for, so a retirement
    /// drops exactly the connection's keys instead of scanning the whole cache (it comes
    /// with every connection change and every completed authorization, on every replica).
    /// Client-credentials tokens need no entry: their key is the connection's with subject
    /// `""`. Written under the connection's stripe, like the tokens.
    subjects: DashMap<ConnectionKey, foldhash::HashSet<Subject>, Hasher>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            tokens: DashMap::default(),
            epochs: DashMap::default(),
            stripes: std::array::from_fn(|_| std::sync::RwLock::new(())),
            schedule: Schedule::default(),
            all: std::sync::RwLock::new(0),
            watched: Watched::default(),
            subjects: DashMap::default(),
        }
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The hot path.
    #[inline]
    pub fn get(&self, key: &TokenKey) -> Option<Arc<CachedToken>> {
        self.tokens.get(key).map(|e| e.value().clone())
    }

    /// The connection's current epoch; a fetch remembers it before reading settings.
    pub fn epoch(&self, conn: &ConnectionKey) -> Epoch {
        let all = *self.all.read().unwrap_or_else(|p| p.into_inner());
        Epoch {
            all,
            connection: self.epochs.get(conn).map(|e| *e).unwrap_or(0),
        }
    }

    fn stripe(&self, conn: &ConnectionKey) -> &std::sync::RwLock<()> {
        use std::hash::BuildHasher;
        &self.stripes[self.epochs.hasher().hash_one(conn) as usize % STRIPES]
    }

    /// Inserts unless the connection (or the whole cache) was retired since `epoch` was
    /// read. Returns whether it did.
    pub fn insert_if_current(&self, key: TokenKey, token: Arc<CachedToken>, epoch: Epoch) -> bool {
        let all = self.all.read().unwrap_or_else(|p| p.into_inner());
        if *all != epoch.all {
            return false;
        }
        let conn = key.connection();
        let stripe = self.stripe(&conn).read().unwrap_or_else(|p| p.into_inner());
        if self.epochs.get(&conn).map_or(0, |e| *e) != epoch.connection {
            return false;
        }
        if let Some(at) = token.refresh_at {
            self.schedule.add(at, key.clone(), &token);
        }
        if !key.subject.is_client() {
            self.subjects
                .entry(conn)
                .or_default()
                .insert(key.subject.clone());
        }
        self.tokens.insert(key.clone(), token);
        drop(stripe);
        drop(all);
        self.watched.changed(&key);
        true
    }

    /// The keys watched (`WatchToken`), told about every change made here.
    pub fn watched(&self) -> &Watched {
        &self.watched
    }

    /// Drops the connection's tokens and fences off fetches that started before.
    pub fn retire_connection(&self, conn: &ConnectionKey) {
        let stripe = self.stripe(conn).write().unwrap_or_else(|p| p.into_inner());
        *self.epochs.entry(conn.clone()).or_insert(0) += 1;
        let mut key = TokenKey {
            tenant: conn.tenant.clone(),
            provider: conn.provider.clone(),
            subject: Subject::client(),
        };
        self.tokens.remove(&key);
        if let Some((_, subjects)) = self.subjects.remove(conn) {
            for subject in subjects {
                key.subject = subject;
                self.tokens.remove(&key);
            }
        }
        drop(stripe);
        self.watched.connection_changed(conn);
    }

    /// The next cached token due for renewal at `now`, taken off the schedule. Entries whose
    /// token was since replaced or dropped are skipped (and so forgotten).
    pub fn pop_due(&self, now: OffsetDateTime) -> Option<(TokenKey, Arc<CachedToken>)> {
        while let Some((key, weak)) = self.schedule.pop_due(now) {
            let Some(token) = weak.upgrade() else {
                continue;
            };
            if self
                .get(&key)
                .is_some_and(|current| Arc::ptr_eq(&current, &token))
            {
                return Some((key, token));
            }
        }
        None
    }

    /// Puts a token back on the schedule, due at `at` (a parked token that is in use again).
    pub fn reschedule(&self, at: OffsetDateTime, key: TokenKey, token: &Arc<CachedToken>) {
        self.schedule.add(at, key, token);
    }

    /// Schedule entries waiting, stale ones included (for tests and the scale bench).
    pub fn scheduled(&self) -> usize {
        self.schedule.len()
    }

    /// Forgets everything (the change feed had a gap): tokens reload from the store, and
    /// fetches that started before cannot insert.
    pub fn retire_all(&self) {
        let mut all = self.all.write().unwrap_or_else(|p| p.into_inner());
        *all += 1;
        self.tokens.clear();
        self.subjects.clear();
        drop(all);
        self.watched.all_changed();
    }

    /// Drops one token (e.g. after a new authorization or a refused refresh).
    pub fn remove(&self, key: &TokenKey) {
        if self.tokens.remove(key).is_some() {
            self.watched.changed(key);
        }
    }

    /// Drops one token (e.g. reported dead), unless it was already replaced.
    pub fn remove_if(&self, key: &TokenKey, pred: impl FnOnce(&CachedToken) -> bool) -> bool {
        let removed = self.tokens.remove_if(key, |_, v| pred(v)).is_some();
        if removed {
            self.watched.changed(key);
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::{
        clock::{Clock, ManualClock},
        ids::{ProviderId, Subject, TenantId},
    };

    fn key(p: &str) -> TokenKey {
        TokenKey {
            tenant: TenantId::parse("acme").unwrap(),
            provider: ProviderId::parse(p).unwrap(),
            subject: Subject::client(),
        }
    }

    fn token(exp: OffsetDateTime) -> Arc<CachedToken> {
        Arc::new(CachedToken::new(
            SecretString::from("t"),
            Some(exp),
            vec![],
            None,
            true,
            None,
        ))
    }

    #[test]
    fn expiry_follows_the_injected_clock() {
        let clock = ManualClock::new(datetime!(2026-01-01 0:00 UTC));
        let cache = TokenCache::new();
        let k = key("p");
        let e = cache.epoch(&k.connection());
        assert!(cache.insert_if_current(
            k.clone(),
            token(clock.now() + time::Duration::seconds(120)),
            e
        ));
        let min_ttl = Duration::from_secs(60);
        assert!(cache.get(&k).unwrap().valid_for(clock.now(), min_ttl));
        clock.advance(time::Duration::seconds(60));
        assert!(cache.get(&k).unwrap().valid_for(clock.now(), min_ttl)); // exactly 60 s left
        clock.advance(time::Duration::seconds(1));
        assert!(!cache.get(&k).unwrap().valid_for(clock.now(), min_ttl));
        assert!(
            cache
                .get(&k)
                .unwrap()
                .valid_for(clock.now(), Duration::ZERO)
        );
        clock.advance(time::Duration::seconds(60));
        assert!(
            !cache
                .get(&k)
                .unwrap()
                .valid_for(clock.now(), Duration::ZERO)
        );
    }

    #[test]
    fn retire_fences_in_flight_inserts() {
        let cache = TokenCache::new();
        let (a, b) = (key("a"), key("b"));
        let exp = datetime!(2030-01-01 0:00 UTC);
        let ea = cache.epoch(&a.connection());
        cache.insert_if_current(a.clone(), token(exp), ea);
        cache.insert_if_current(b.clone(), token(exp), cache.epoch(&b.connection()));
        cache.retire_connection(&a.connection());
        assert!(cache.get(&a).is_none());
        assert!(
            cache.get(&b).is_some(),
            "other connections keep their tokens"
        );
        // a fetch that read settings before the change cannot insert its token
        assert!(!cache.insert_if_current(a.clone(), token(exp), ea));
        assert!(cache.get(&a).is_none());
        assert!(cache.insert_if_current(a.clone(), token(exp), cache.epoch(&a.connection())));
    }

    /// A retirement drops the connection's client-credentials token and every end user's,
    /// and nothing of another connection — found through the subject index, not a scan.
    #[test]
    fn retire_drops_every_subject_of_the_connection_and_nothing_else() {
        let cache = TokenCache::new();
        let exp = datetime!(2030-01-01 0:00 UTC);
        let user = |p: &str, s: &str| TokenKey {
            subject: Subject::parse(s).unwrap(),
            ..key(p)
        };
        let keys = [
            key("a"),
            user("a", "u1"),
            user("a", "u2"),
            key("b"),
            user("b", "u1"),
        ];
        for k in &keys {
            assert!(cache.insert_if_current(k.clone(), token(exp), cache.epoch(&k.connection())));
        }
        // A user token dropped on its own (reported dead) leaves a stale index entry: harmless.
        cache.remove(&user("a", "u2"));
        cache.retire_connection(&key("a").connection());
        for k in &keys[..3] {
            assert!(cache.get(k).is_none(), "{k:?} kept");
        }
        for k in &keys[3..] {
            assert!(cache.get(k).is_some(), "{k:?} dropped");
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.subjects.get(&key("a").connection()).is_none());
        assert_eq!(cache.subjects.get(&key("b").connection()).unwrap().len(), 1);
        cache.retire_all();
        assert!(cache.subjects.is_empty());
    }

    /// The refresher's tick takes what is due and nothing else: a hundred thousand idle
    /// tokens not yet due are neither returned nor taken off the schedule.
    #[test]
    fn due_tokens_come_off_the_schedule_without_visiting_idle_ones() {
        let cache = TokenCache::new();
        let t0 = datetime!(2026-01-01 0:00 UTC);
        let scheduled = |p: &str, due: OffsetDateTime| {
            let k = key(p);
            let t = Arc::new(CachedToken::new(
                SecretString::from("t"),
                Some(due + time::Duration::hours(1)),
                vec![],
                None,
                true,
                Some(due),
            ));
            assert!(cache.insert_if_current(k.clone(), t, cache.epoch(&k.connection())));
        };
        for i in 0..100_000 {
            scheduled(&format!("idle{i}"), t0 + time::Duration::hours(1));
        }
        for i in 0..10 {
            scheduled(&format!("due{i}"), t0 + time::Duration::seconds(i));
        }
        // a replaced token's entry is stale and skipped
        scheduled("due0", t0 + time::Duration::hours(2));
        assert_eq!(cache.scheduled(), 100_011);
        let now = t0 + time::Duration::seconds(30);
        let mut due = Vec::new();
        while let Some((k, _)) = cache.pop_due(now) {
            due.push(k.provider.to_string());
        }
        let want: Vec<String> = (1..10).map(|i| format!("due{i}")).collect();
        assert_eq!(due, want, "in due order, the replaced one skipped");
        assert_eq!(
            cache.scheduled(),
            100_001,
            "the idle ones and the replacement stay"
        );
    }

    /// Regression (issue 8.5): `retire_all` bumped only the epochs of connections seen
    /// before, so a fetch for a never-cached connection that started before a resync could
    /// still insert what it read before the gap.
    #[test]
    fn retire_all_fences_connections_never_seen() {
        let cache = TokenCache::new();
        let k = key("fresh");
        let before = cache.epoch(&k.connection());
        cache.retire_all();
        assert!(!cache.insert_if_current(k.clone(), token(datetime!(2030-01-01 0:00 UTC)), before));
        assert!(cache.get(&k).is_none());
        let after = cache.epoch(&k.connection());
        assert!(cache.insert_if_current(k.clone(), token(datetime!(2030-01-01 0:00 UTC)), after));
    }
}

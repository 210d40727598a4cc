//! When each cached token is due for renewal ahead of expiry, ordered by due time.
//!
//! The refresher used to copy and scan the whole cache every tick, so a tick cost grew with
//! every idle key ever cached. Here a tick takes only the entries whose time has come: a
//! pop from a binary heap, `O(log n)` per due entry, nothing per idle entry. Entries are not
//! removed when their token is replaced or dropped (that would cost the insert path a
//! lookup); they hold only a `Weak` and are recognised as stale when they come due, so each
//! cached token costs at most one entry for as long as it lives.

use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    sync::{Arc, Mutex, Weak},
};

use time::OffsetDateTime;

use crate::ids::TokenKey;

/// One token's due time, in Unix milliseconds (a renewal a millisecond early or late does
/// not matter; the jittered refresh point spreads them by seconds anyway).
struct Due<T> {
    at_ms: i64,
    key: TokenKey,
    token: Weak<T>,
}

// Ordered by due time only, earliest first out of the (max-)heap.
impl<T> Ord for Due<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at_ms.cmp(&self.at_ms)
    }
}
impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Self) -> bool {
        self.at_ms == other.at_ms
    }
}
impl<T> Eq for Due<T> {}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A binary heap in one vector: an entry costs its key and 16 bytes, with no per-entry node
/// as an ordered tree would have (see `tests/footprint.rs` for what a cached token costs).
pub struct Schedule<T> {
    /// A std mutex held for one push or one pop, never across an await; the hit path does
    /// not take it.
    due: Mutex<BinaryHeap<Due<T>>>,
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Self {
            due: Mutex::new(BinaryHeap::new()),
        }
    }
}

/// Generic over what is scheduled (the cache's `CachedToken`), so this module needs nothing
/// from the cache that uses it.
impl<T> Schedule<T> {
    /// Remembers that `token` (cached under `key`) is due at `at`.
    pub fn add(&self, at: OffsetDateTime, key: TokenKey, token: &Arc<T>) {
        self.lock().push(Due {
            at_ms: millis(at),
            key,
            token: Arc::downgrade(token),
        });
    }

    /// The earliest entry due at or before `now`, removed; `None` when nothing is due.
    /// The token may since have been dropped or replaced: the caller checks.
    pub fn pop_due(&self, now: OffsetDateTime) -> Option<(TokenKey, Weak<T>)> {
        let mut due = self.lock();
        if due.peek()?.at_ms > millis(now) {
            return None;
        }
        let Due { key, token, .. } = due.pop()?;
        // Give memory back after a burst (e.g. a resync that dropped most tokens).
        let len = due.len();
        if due.capacity() > 64 && len < due.capacity() / 4 {
            due.shrink_to(len * 2);
        }
        Some((key, token))
    }

    /// Entries waiting, stale ones included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Due<T>>> {
        // A panic while holding it cannot leave the heap half-changed (one push or pop).
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use time::macros::datetime;

    use super::*;
    use crate::{
        cache::CachedToken,
        ids::{ProviderId, Subject, TenantId},
    };

    fn key(p: &str) -> TokenKey {
        TokenKey {
            tenant: TenantId::parse("acme").unwrap(),
            provider: ProviderId::parse(p).unwrap(),
            subject: Subject::client(),
        }
    }

    fn token() -> Arc<CachedToken> {
        Arc::new(CachedToken::new(
            SecretString::from("t"),
            None,
            vec![],
            None,
            true,
            None,
        ))
    }

    #[test]
    fn pops_in_due_order_and_only_what_is_due() {
        let s = Schedule::<CachedToken>::default();
        let t0 = datetime!(2026-01-01 0:00 UTC);
        let (a, b, c) = (token(), token(), token());
        s.add(t0 + time::Duration::seconds(30), key("late"), &c);
        s.add(t0 + time::Duration::seconds(10), key("first"), &a);
        s.add(t0 + time::Duration::seconds(10), key("second"), &b);
        assert!(s.pop_due(t0).is_none(), "nothing is due yet");
        let now = t0 + time::Duration::seconds(20);
        let (k1, _) = s.pop_due(now).unwrap();
        let (k2, _) = s.pop_due(now).unwrap();
        // the two due at the same instant, in either order
        let mut got = [k1.provider.to_string(), k2.provider.to_string()];
        got.sort();
        assert_eq!(got, ["first", "second"]);
        assert!(s.pop_due(now).is_none());
        assert_eq!(s.len(), 1, "the later entry stays");
    }

    #[test]
    fn an_entry_does_not_keep_its_token_alive() {
        let s = Schedule::<CachedToken>::default();
        let t0 = datetime!(2026-01-01 0:00 UTC);
        let t = token();
        s.add(t0, key("p"), &t);
        drop(t);
        let (_, weak) = s.pop_due(t0).unwrap();
        assert!(weak.upgrade().is_none());
    }
}

//! The timing settings of token vending: lifetimes, waits, leases and refresh-ahead. One
//! place, because the hot path (`vend`), the refresh logic (`refresh`) and start-up checks
//! all depend on the same numbers and on the relations between them.

use std::time::Duration;

use time::OffsetDateTime;

use crate::endpoint::EndpointPolicy;

#[derive(Clone, Debug)]
pub struct VendorConfig {
    /// Used when a caller sets no `min_ttl_seconds` (or 0).
    pub default_min_ttl: Duration,
    /// Upper bound on any caller's wait, whatever its deadline.
    pub max_wait: Duration,
    /// At most one invalidation-triggered refresh per key in this interval (eDRV asks not
    /// to request tokens excessively; a caller misreporting a good token must not make us).
    pub invalidate_min_interval: Duration,
    pub policy: EndpointPolicy,
    /// How long a key's refresh lease lives without a heartbeat. The holder renews it every
    /// third of this while it works, so a holder that died is taken over within it.
    pub lease_ttl: Duration,
    /// Timeout of one provider request; a refresh attempt's deadline is this plus margins.
    pub request_timeout: Duration,
    /// How long a definitive provider error is answered again without asking.
    pub negative_ttl: Duration,
    /// How often a waiter re-checks when no notification arrives.
    pub poll_interval: Duration,
    /// Tokens are renewed in the background at this fraction of their lifetime, drawn
    /// uniformly per token so a fleet does not refresh in lockstep.
    pub refresh_at: (f64, f64),
}

impl Default for VendorConfig {
    fn default() -> Self {
        Self {
            default_min_ttl: Duration::from_secs(60),
            max_wait: Duration::from_secs(30),
            invalidate_min_interval: Duration::from_secs(10),
            policy: EndpointPolicy::default(),
            lease_ttl: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(10),
            poll_interval: Duration::from_millis(250),
            refresh_at: (0.75, 0.85),
        }
    }
}

/// The shortest `min_ttl` ever applied: a token with no time left (`exp == now`) is not
/// valid, whatever a caller or `TOKENVEND_DEFAULT_MIN_TTL` says.
pub const MIN_TTL_FLOOR: Duration = Duration::from_secs(1);

impl VendorConfig {
    /// How often a lease holder renews its lease: three renewals fit in one `lease_ttl`, so
    /// one slow or lost renewal does not lose a live holder's lease.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lease_ttl / 3).max(Duration::from_millis(10))
    }

    /// A refresh attempt's own deadline, recorded in the store before the request is sent:
    /// the request's timeout, plus a margin for the mark's round trip and clock steps. No
    /// other replica may take the key's lease (and resolve the attempt) before it passes.
    pub fn attempt_ttl(&self) -> Duration {
        self.request_timeout + Duration::from_secs(3)
    }

    /// The longest a waiter may have to wait for a takeover when the holder dies mid-way:
    /// its lease (or refresh attempt) lapses, the next poll notices, and the new holder's
    /// request runs to its timeout. A `max_wait` shorter than this can never outlast one.
    pub fn worst_takeover(&self) -> Duration {
        self.lease_ttl.max(self.attempt_ttl()) + self.poll_interval + self.request_timeout
    }

    /// When to renew a token fetched at `fetched_at` that lives `lifetime`: at a jittered
    /// fraction of its life, but early enough that callers asking for the default
    /// `min_ttl` keep being served from memory, and never in its first half.
    pub fn refresh_point(&self, fetched_at: OffsetDateTime, lifetime: Duration) -> OffsetDateTime {
        let (lo, hi) = self.refresh_at;
        let fraction = lo + rand::random::<f64>() * (hi - lo).max(0.0);
        let by_fraction = lifetime.mul_f64(fraction);
        let before_min_ttl = lifetime.saturating_sub(self.default_min_ttl * 2);
        let at = by_fraction.min(before_min_ttl).max(lifetime / 2);
        fetched_at + at
    }
}

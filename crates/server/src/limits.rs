//! Per-principal rate limits on the calls that cost something: every AdminService call and
//! every TokenService call the cache cannot answer (it may reach the database or a
//! provider). Cache hits are never limited: one costs less than the limiter's own
//! bookkeeping would save, and a service that restarts and asks for all its tokens at once
//! must not be refused the ones already cached.

use std::{collections::HashMap, num::NonZeroU32, sync::Arc, time::Duration};

use dashmap::DashMap;
use governor::{
    DefaultDirectRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

/// A rate and a burst, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let per_second = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.max(self.per_second))?;
        Some(Quota::per_second(per_second).allow_burst(burst))
    }
}

/// `name=rate[:burst],…` (`TOKENVEND_RATE_LIMITS`); rate 0 means unlimited.
pub fn parse_overrides(spec: &str) -> Result<HashMap<String, Rate>, String> {
    let mut out = HashMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, rate) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?} is not principal=rate[:burst]"))?;
        let (per_second, burst) = match rate.split_once(':') {
            Some((r, b)) => (r, Some(b)),
            None => (rate, None),
        };
        let per_second: u32 = per_second
            .trim()
            .parse()
            .map_err(|_| format!("{entry:?}: the rate must be a whole number per second"))?;
        let burst = match burst {
            Some(b) => b
                .trim()
                .parse()
                .map_err(|_| format!("{entry:?}: the burst must be a whole number"))?,
            None => per_second.saturating_mul(4),
        };
        out.insert(name.trim().to_owned(), Rate { per_second, burst });
    }
    Ok(out)
}

pub struct Limits {
    default: Rate,
    overrides: HashMap<String, Rate>,
    limiters: DashMap<String, Option<Arc<DefaultDirectRateLimiter>>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("default", &self.default)
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(default: Rate, overrides: HashMap<String, Rate>) -> Self {
        Self {
            default,
            overrides,
            limiters: DashMap::new(),
        }
    }

    /// Takes one unit of `principal`'s budget; `Err(wait)` when it is spent.
    pub fn check(&self, principal: &str) -> Result<(), Duration> {
        let limiter = match self.limiters.get(principal) {
            Some(l) => l.clone(),
            None => self
                .limiters
                .entry(principal.to_owned())
                .or_insert_with(|| {
                    let rate = self
                        .overrides
                        .get(principal)
                        .copied()
                        .unwrap_or(self.default);
                    rate.quota().map(|q| Arc::new(RateLimiter::direct(q)))
                })
                .clone(),
        };
        match limiter {
            None => Ok(()),
            Some(l) => l
                .check()
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_principal() {
        let limits = Limits::new(
            Rate {
                per_second: 1,
                burst: 3,
            },
            parse_overrides("ops=0, batch=2:2").unwrap(),
        );
        for _ in 0..3 {
            assert!(limits.check("billing").is_ok());
        }
        let wait = limits.check("billing").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Others have their own budget; 0 is unlimited.
        assert!(limits.check("analytics").is_ok());
        for _ in 0..1000 {
            assert!(limits.check("ops").is_ok());
        }
        assert!(limits.check("batch").is_ok() && limits.check("batch").is_ok());
        assert!(limits.check("batch").is_err());
    }

    #[test]
    fn overrides_parse_or_say_why_not() {
        let o = parse_overrides("a=5,b=7:9").unwrap();
        assert_eq!(
            o["a"],
            Rate {
                per_second: 5,
                burst: 20
            }
        );
        assert_eq!(
            o["b"],
            Rate {
                per_second: 7,
                burst: 9
            }
        );
        assert!(parse_overrides("a").unwrap_err().contains("principal=rate"));
        assert!(parse_overrides("a=x").unwrap_err().contains("rate"));
        assert!(parse_overrides("").unwrap().is_empty());
    }
}

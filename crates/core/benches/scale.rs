//! The cache at a thousand and at a million keys: a hit, and a refresh-ahead tick, must cost
//! the same. Run with `cargo bench -p tokenvend-core --bench scale`.
//!
//! (What a cached token costs in memory is counted exactly by `tests/footprint.rs`.)

use std::sync::{Arc, OnceLock};

use divan::{Bencher, black_box};
use secrecy::SecretString;
use time::{OffsetDateTime, macros::datetime};
use tokenvend_core::{
    cache::{CachedToken, TokenCache},
    ids::{ProviderId, Subject, TenantId, TokenKey},
};

fn main() {
    divan::main();
}

const SIZES: [usize; 2] = [1_000, 1_000_000];
const T0: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);

fn key(i: usize) -> TokenKey {
    TokenKey {
        tenant: TenantId::parse(format!("tenant-{i:07}")).unwrap(),
        provider: ProviderId::parse("enode").unwrap(),
        subject: Subject::client(),
    }
}

fn token(refresh_at: OffsetDateTime) -> Arc<CachedToken> {
    Arc::new(CachedToken::new(
        SecretString::from("x".repeat(800)),
        Some(refresh_at + time::Duration::minutes(15)),
        vec!["read".into()],
        Some(std::time::Duration::from_secs(3600)),
        true,
        Some(refresh_at),
    ))
}

/// A cache of `n` idle tokens, all due in an hour; built once per size and shared by the
/// benches (a million takes a second or two).
fn idle_cache(n: usize) -> &'static TokenCache {
    static CACHES: [OnceLock<TokenCache>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = &CACHES[SIZES.iter().position(|s| *s == n).unwrap()];
    slot.get_or_init(|| {
        let cache = TokenCache::new();
        for i in 0..n {
            let k = key(i);
            cache.insert_if_current(
                k.clone(),
                token(T0 + time::Duration::hours(1)),
                cache.epoch(&k.connection()),
            );
        }
        cache
    })
}

/// A hit: the map lookup and the `Arc` clone.
#[divan::bench(args = SIZES)]
fn hit(b: Bencher, n: usize) {
    let cache = idle_cache(n);
    let k = key(n / 2);
    b.bench(|| black_box(cache.get(black_box(&k))));
}

/// A refresh-ahead tick when nothing is due (the usual tick).
#[divan::bench(args = SIZES)]
fn tick_nothing_due(b: Bencher, n: usize) {
    let cache = idle_cache(n);
    b.bench(|| black_box(cache.pop_due(black_box(T0))));
}

/// A tick that takes 10 000 due tokens off the schedule, beside `n` idle ones. The
/// 10 000 are put back on the schedule before each run, outside the timing.
#[divan::bench(args = SIZES, sample_count = 20, sample_size = 1)]
fn tick_10k_due(b: Bencher, n: usize) {
    let cache = idle_cache(n);
    let due: Vec<(TokenKey, Arc<CachedToken>)> = (0..10_000)
        .map(|i| {
            let k = key(n + i);
            let t = token(T0);
            cache.insert_if_current(k.clone(), t.clone(), cache.epoch(&k.connection()));
            (k, t)
        })
        .collect();
    // the inserts scheduled them once; take those off before the first run
    while cache.pop_due(T0).is_some() {}
    b.with_inputs(|| {
        for (k, t) in &due {
            cache.reschedule(T0, k.clone(), t);
        }
    })
    .bench_local_values(|()| {
        let mut taken = 0;
        while let Some(e) = cache.pop_due(T0) {
            black_box(e);
            taken += 1;
        }
        assert_eq!(taken, 10_000);
    });
}

/// A connection change (PutConnection, a completed authorization — on every replica) beside
/// `n` cached tokens of other connections: the connection's tokens are dropped by key, not
/// by scanning the cache. The dropped token is put back before each run, outside the timing.
#[divan::bench(args = SIZES)]
fn retire_connection(b: Bencher, n: usize) {
    let cache = idle_cache(n);
    let k = key(n + 20_000);
    b.with_inputs(|| {
        cache.insert_if_current(
            k.clone(),
            token(T0 + time::Duration::hours(1)),
            cache.epoch(&k.connection()),
        );
    })
    .bench_local_values(|()| cache.retire_connection(black_box(&k.connection())));
}

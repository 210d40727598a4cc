//! The GetToken hot path: a cache hit. Run with
//! `cargo bench -p tokenvend-core --bench cache_hit --features test-util`.
//!
//! `Vendor::get_token` is polled exactly once (`now_or_never`): a hit must complete without
//! awaiting anything, and the store behind it panics if touched.

use std::sync::Arc;

use divan::{Bencher, black_box};
use futures::FutureExt;
use secrecy::SecretString;
use time::macros::datetime;
use tokenvend_core::{
    cache::{CachedToken, TokenCache},
    clock::{ManualClock, SystemClock},
    ids::{ProviderId, Subject, TenantId, TokenKey},
    testing::warm_vendor,
};

fn main() {
    divan::main();
}

fn key(i: usize) -> TokenKey {
    TokenKey {
        tenant: TenantId::parse(format!("tenant-{i}")).unwrap(),
        provider: ProviderId::parse("enode").unwrap(),
        subject: Subject::client(),
    }
}

fn token() -> Arc<CachedToken> {
    Arc::new(CachedToken::new(
        SecretString::from("x".repeat(800)),
        Some(datetime!(2030-01-01 0:00 UTC)),
        vec!["read".into()],
        None,
        true,
        None,
    ))
}

/// The map lookup alone, in a cache of 10 000 keys.
#[divan::bench]
fn cache_get(b: Bencher) {
    let cache = TokenCache::new();
    for i in 0..10_000 {
        let k = key(i);
        cache.insert_if_current(k.clone(), token(), cache.epoch(&k.connection()));
    }
    let k = key(4242);
    b.bench(|| black_box(cache.get(black_box(&k))));
}

/// The whole domain call on a hit: key moved in (as the handler does), freshness check
/// against the clock, Arc clone out.
#[divan::bench]
fn vendor_get_token_hit(b: Bencher) {
    let k = key(1);
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 0:00 UTC)));
    let vendor = warm_vendor(&k, token(), clock);
    b.with_inputs(|| k.clone()).bench_local_values(|k| {
        vendor
            .get_token(k, None, None)
            .now_or_never()
            .expect("a hit completes without awaiting")
            .expect("hit")
    });
}

/// Same with the real system clock (one `clock_gettime`).
#[divan::bench]
fn vendor_get_token_hit_system_clock(b: Bencher) {
    let k = key(1);
    let vendor = warm_vendor(&k, token(), Arc::new(SystemClock));
    b.with_inputs(|| k.clone()).bench_local_values(|k| {
        vendor
            .get_token(k, None, None)
            .now_or_never()
            .unwrap()
            .unwrap()
    });
}

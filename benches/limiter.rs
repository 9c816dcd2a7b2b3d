//! Limiter decision cost over 100 k users (1 M draws, Zipf exponent 1.0), beside governor's
//! keyed `check_key` on the same keys in the same run.
//!
//! `cargo bench --bench limiter`. Both limiters get the same key sequence and a quota of
//! 600 per minute. surgeguard's limiter is given event time (1 ms per 100 decisions);
//! governor reads its own clock (quanta) as it does in production use. governor is measured
//! with its default keyed store (DashMap, concurrent) and with its HashMap store (a mutex around
//! a std HashMap), the closest to surgeguard's single-owner map.

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use governor::{Quota as GQuota, RateLimiter};
use surgeguard::apps::scenario::zipf_keys;
use surgeguard::core::limiter::{Limiter, Quota};
use surgeguard::wire::time::Millis;

const USERS: u32 = 100_000;
const DRAWS: usize = 1_000_000;

fn bench(c: &mut Criterion) {
    let ids: Vec<String> = (0..USERS).map(|i| format!("user-{i:06}")).collect();
    let keys = zipf_keys(USERS, DRAWS, 1.0, 42);
    let distinct = {
        let mut seen = vec![false; USERS as usize];
        keys.iter().for_each(|&k| seen[k as usize] = true);
        seen.iter().filter(|s| **s).count()
    };
    eprintln!("{DRAWS} draws over {distinct} distinct users of {USERS}");
    let quota = Quota { limit: 600, grace_allowance: 60, grace_window_ms: 3_600_000 };

    let mut g = c.benchmark_group("limiter_decision_zipf_100k");
    g.throughput(Throughput::Elements(DRAWS as u64));

    let mut ours = Limiter::new(60, 3600);
    ours.reserve(USERS as usize);
    let mut now = 1_796_029_200_000i64;
    g.bench_function("surgeguard_check", |b| {
        b.iter(|| {
            for (i, &k) in keys.iter().enumerate() {
                if i % 100 == 0 {
                    now += 1;
                }
                black_box(ours.check(&ids[k as usize], 0, Millis(now), 1, quota));
            }
        })
    });

    let per_minute = GQuota::per_minute(NonZeroU32::new(600).expect("non-zero"));
    let dashmap = RateLimiter::keyed(per_minute);
    g.bench_function("governor_keyed_dashmap_check_key", |b| {
        b.iter(|| {
            for &k in &keys {
                let _ = black_box(dashmap.check_key(&ids[k as usize]));
            }
        })
    });

    let hashmap = RateLimiter::hashmap(per_minute);
    g.bench_function("governor_keyed_hashmap_check_key", |b| {
        b.iter(|| {
            for &k in &keys {
                let _ = black_box(hashmap.check_key(&ids[k as usize]));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);

//! The demo's simulated backend: the seed's system, responding to the load it is given.
//!
//! An API with a cache in front of an upstream AI provider that allows 1000 calls per minute,
//! and a 200-connection database pool. A request that misses the cache calls the AI provider
//! while holding a database connection; when the provider answers `rate_limit`, the application
//! retries (holding the connection longer) and the cache stops being refilled, so more requests
//! miss: the cache-miss avalanche. When the connections needed exceed the pool, work queues up;
//! a request that would wait more than the gateway timeout times out. The gateway can limit the
//! provider calls of a second (`ai_budget`: none while the breaker is open, the probes while it is
//! half-open); a cache miss beyond the budget is served from the fallback plan, degraded but
//! answered, holding a connection only briefly.
//!
//! Pure and deterministic: one `step` per simulated second, randomness from a seeded generator.

use std::collections::VecDeque;

use compact_str::CompactString;

use crate::forecast::rng::SplitMix64;
use crate::wire::events::{ErrorClass, OutcomeEvent, TelemetrySample};
use crate::wire::time::Millis;

/// The seed's limits.
pub const AI_CALLS_PER_MINUTE: u32 = 1000;
pub const DB_POOL: u32 = 200;
/// Gateway timeout: a request waiting longer for a connection fails.
const TIMEOUT_S: f64 = 10.0;

/// One request the gateway let through.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub id: CompactString,
}

/// What happened in one simulated second.
#[derive(Debug, Clone, Default)]
pub struct Second {
    pub ok: u32,
    /// Of `ok`, answered from the fallback plan (degraded but answered).
    pub degraded: u32,
    pub failed: u32,
    pub timed_out: u32,
    /// AI provider calls, for surgeguard's breaker.
    pub outcomes: Vec<OutcomeEvent>,
    /// Host telemetry (every 5 s), for surgeguard's health view.
    pub telemetry: Vec<TelemetrySample>,
}

pub struct Backend {
    rng: SplitMix64,
    ai_window: VecDeque<u32>,
    hit_rate: f64,
    /// Connection-seconds of work waiting for the pool.
    backlog: f64,
    seconds: u64,
}

impl Backend {
    pub fn new(seed: u64) -> Self {
        Backend { rng: SplitMix64::new(seed ^ 0xBAC0), ai_window: VecDeque::from(vec![0; 60]), hit_rate: 0.6, backlog: 0.0, seconds: 0 }
    }

    /// Serves one second's admitted requests at event time `t`, making at most `ai_budget`
    /// provider calls (None: no limit).
    pub fn step(&mut self, t: Millis, admitted: &[Admitted], ai_budget: Option<u32>) -> Second {
        let mut budget = ai_budget.unwrap_or(u32::MAX);
        let mut s = Second::default();
        let mut ai_used: u32 = self.ai_window.iter().sum();
        let mut ai_now = 0u32;
        let mut ai_failures = 0u32;
        let mut ai_calls = 0u32;
        // Connection-seconds each request needs, and whether it failed before the pool mattered.
        let mut work: Vec<(f64, bool, bool)> = Vec::with_capacity(admitted.len());
        for a in admitted {
            if self.rng.unit() < self.hit_rate {
                work.push((0.05, false, false));
                continue;
            }
            if budget == 0 {
                // The fallback plan: a cached similar answer, rules or a template.
                work.push((0.05, false, true));
                continue;
            }
            // Cache miss: call the provider, retrying up to twice on rate_limit.
            let mut held = 0.05;
            let mut failed = true;
            for attempt in 0..3 {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                ai_calls += 1;
                let offset = (self.rng.unit() * 900.0) as i64 + attempt * 1000;
                if ai_used < AI_CALLS_PER_MINUTE {
                    ai_used += 1;
                    ai_now += 1;
                    let latency = 700.0 + self.rng.unit() * 400.0;
                    held += latency / 1000.0;
                    s.outcomes.push(outcome(t.plus_ms(offset), true, None, latency, &a.id));
                    failed = false;
                    break;
                }
                held += 2.0; // the error, then a backoff before the retry, holding the connection
                ai_failures += 1;
                s.outcomes.push(outcome(t.plus_ms(offset), false, Some(ErrorClass::RateLimit), 40.0, &a.id));
            }
            work.push((held, failed, false));
        }
        self.ai_window.pop_front();
        self.ai_window.push_back(ai_now);
        // The cache refills only from successful provider calls.
        let healthy = ai_calls == 0 || ai_failures * 5 < ai_calls;
        let target = if healthy { 0.6 } else { 0.2 };
        self.hit_rate += 0.05 * (target - self.hit_rate);

        // The pool: work beyond its capacity queues; a request that would wait longer than the
        // timeout fails (and its work is dropped).
        let needed: f64 = work.iter().map(|w| w.0).sum();
        let capacity = f64::from(DB_POOL);
        let total = self.backlog + needed;
        let wait = (total - capacity).max(0.0) / capacity;
        let late_share = if wait > TIMEOUT_S { 1.0 - TIMEOUT_S / wait } else { 0.0 };
        for (_, failed, fallback) in &work {
            if self.rng.unit() < late_share {
                s.timed_out += 1;
            } else if *failed {
                s.failed += 1;
            } else {
                s.ok += 1;
                s.degraded += u32::from(*fallback);
            }
        }
        self.backlog = ((total - capacity) * (1.0 - late_share)).max(0.0);

        if self.seconds % 5 == 0 {
            let pool_use = (needed.min(capacity) + self.backlog.min(capacity)).min(capacity) / capacity;
            let pressure = (admitted.len() as f64 / 80.0).min(1.0);
            for (host, max) in [("host-a", 66u32), ("host-b", 67), ("host-c", 67)] {
                let jitter = self.rng.unit() * 0.03;
                s.telemetry.push(TelemetrySample {
                    ts: t,
                    source: host.into(),
                    cpu: (0.15 + 0.6 * pressure + 0.2 * pool_use + jitter).min(0.99),
                    memory: (0.3 + 0.3 * pressure + jitter).min(0.99),
                    db_connections_in_use: ((f64::from(max) * pool_use).round() as u32).min(max),
                    db_connections_max: max,
                    queue_depth: Some((self.backlog.min(1000.0)) as u64),
                    queue_capacity: Some(1000),
                });
            }
        }
        self.seconds += 1;
        s
    }
}

fn outcome(ts: Millis, ok: bool, error: Option<ErrorClass>, latency_ms: f64, request_id: &str) -> OutcomeEvent {
    OutcomeEvent { ts, dependency: "ai_primary".into(), ok, error, latency_ms: latency_ms.round(), request_id: Some(request_id.into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(n: usize) -> Vec<Admitted> {
        (0..n).map(|i| Admitted { id: compact_str::format_compact!("r{i}") }).collect()
    }

    #[test]
    fn light_load_is_served() {
        let mut b = Backend::new(1);
        let mut ok = 0;
        for t in 0..120 {
            let s = b.step(Millis::from_secs(t), &admitted(12), None);
            ok += s.ok;
            assert_eq!(s.timed_out, 0);
        }
        assert_eq!(ok, 120 * 12);
    }

    #[test]
    fn heavy_load_without_protection_collapses() {
        let mut b = Backend::new(1);
        let (mut last_ok, mut timed_out) = (0, 0);
        for t in 0..600 {
            let s = b.step(Millis::from_secs(t), &admitted(75), None);
            last_ok = s.ok;
            timed_out += s.timed_out;
        }
        assert!(last_ok * 4 < 75, "still serving {last_ok} of 75 after 10 minutes of overload");
        assert!(timed_out > 0, "the pool never ran out");
    }

    #[test]
    fn the_same_load_without_provider_calls_is_served() {
        let mut b = Backend::new(1);
        for t in 0..600 {
            let s = b.step(Millis::from_secs(t), &admitted(75), Some(0));
            assert_eq!(s.ok, 75);
            assert!(s.degraded > 0 && s.outcomes.is_empty());
        }
    }

    #[test]
    fn a_probe_budget_bounds_the_provider_calls() {
        let mut b = Backend::new(1);
        let s = b.step(Millis::from_secs(0), &admitted(75), Some(5));
        assert_eq!(s.outcomes.len(), 5);
    }
}

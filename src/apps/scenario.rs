//! Deterministic synthetic inputs: the seed's Monday-morning surge for replay tests and the
//! README, and Zipf-distributed user keys for benchmarks. Pure: the same seed gives the same
//! events on every machine (a small SplitMix64 generator is used instead of a crate so fixture
//! bytes cannot change under a dependency upgrade).
//!
//! The surge is open-loop: demand does not react to surgeguard's decisions (the embedded demo's
//! closed-loop backend is a separate piece). Concurrent users go 50 → 150 → 300 over 15 minutes
//! after a 5-minute quiet start, and stay at 300 for 5 more minutes. Users are 70 % free, 25 % pro
//! and 5 % enterprise; one in ten is a heavy user at 90 requests per minute (the others make 6).
//! The upstream AI API answers `rate_limit` beyond 1000 requests per minute and slows down with
//! load; three hosts report CPU, memory and a 200-connection database pool every 5 seconds.

use compact_str::CompactString;

use crate::forecast::rng::SplitMix64;
use crate::wire::events::{ErrorClass, InputEvent, OutcomeEvent, RequestEvent, TelemetrySample};
use crate::wire::time::Millis;

/// Shape of a surge scenario.
#[derive(Debug, Clone)]
pub struct Surge {
    pub seed: u64,
    pub start: Millis,
    /// Multiplies every user count (1 = the seed's 50 → 300).
    pub scale: u32,
    /// Whether to emit outcome and telemetry events (requests only when false).
    pub backend: bool,
}

impl Default for Surge {
    fn default() -> Self {
        // Monday 2026-11-30 09:00:00Z.
        Surge { seed: 7, start: Millis(1_796_029_200_000), scale: 1, backend: true }
    }
}

fn concurrent_users(minute: f64) -> f64 {
    match minute {
        m if m < 5.0 => 50.0,
        m if m < 10.0 => 50.0 + (m - 5.0) * 20.0,
        m if m < 15.0 => 150.0 + (m - 10.0) * 30.0,
        _ => 300.0,
    }
}

/// The surge's demand, one simulated second at a time: the users active at that second and the
/// requests they make. `monday_surge` and the embedded demo both draw requests from it.
pub struct Demand {
    rng: SplitMix64,
    users: Vec<(CompactString, &'static str, f64)>,
    scale: u32,
    start: Millis,
    request_no: u64,
}

impl Demand {
    /// Length of the surge scenario, in seconds.
    pub const SECONDS: i64 = 20 * 60;

    pub fn new(seed: u64, scale: u32, start: Millis) -> Self {
        let mut rng = SplitMix64::new(seed);
        let users = (0..300 * scale as usize)
            .map(|i| {
                let tier = match rng.below(100) {
                    0..=69 => "free",
                    70..=94 => "pro",
                    _ => "enterprise",
                };
                let rpm = if rng.below(10) == 0 { 90.0 } else { 6.0 };
                (compact_str::format_compact!("user-{i:05}"), tier, rpm)
            })
            .collect();
        Demand { rng, users, scale, start, request_no: 0 }
    }

    /// Concurrent users at `second` after the start.
    pub fn active_users(&self, second: i64) -> usize {
        (concurrent_users(second as f64 / 60.0) * f64::from(self.scale)) as usize
    }

    /// The requests of one second, in generation order (not sorted by time within the second).
    pub fn second(&mut self, second: i64) -> Vec<RequestEvent> {
        let active = self.active_users(second);
        let mut out = Vec::new();
        for (user, tier, rpm) in self.users.iter().take(active) {
            let per_second = rpm / 60.0;
            let mut n = per_second.floor() as u32;
            if self.rng.unit() < per_second.fract() {
                n += 1;
            }
            for _ in 0..n {
                self.request_no += 1;
                let ts = self.start.plus_ms(second * 1000 + self.rng.below(1000) as i64);
                let request_type = match self.rng.below(10) {
                    0 => "critical_business",
                    1 => "batch",
                    _ => "standard",
                };
                out.push(RequestEvent {
                    id: compact_str::format_compact!("req-{:08}", self.request_no),
                    ts,
                    user_id: user.clone(),
                    tier: (*tier).into(),
                    request_type: request_type.into(),
                    cost: 1,
                });
            }
        }
        out
    }
}

/// The surge's events, sorted by event time (ties in generation order).
pub fn monday_surge(s: &Surge) -> Vec<InputEvent> {
    let mut demand = Demand::new(s.seed, s.scale, s.start);
    let mut rng = SplitMix64::new(s.seed ^ 0x5EED_BAC0);
    let mut events: Vec<(i64, u64, InputEvent)> = Vec::new();
    let mut seq = 0u64;
    let mut push = |events: &mut Vec<(i64, u64, InputEvent)>, e: InputEvent| {
        seq += 1;
        events.push((e.ts().0, seq, e));
    };
    // Requests per second over the last minute, for the simulated backend.
    let mut recent = std::collections::VecDeque::from(vec![0u32; 60]);
    for second in 0..Demand::SECONDS {
        let load_rpm: u32 = recent.iter().sum();
        let upstream_limit = 1000.0 * s.scale as f64;
        let requests = demand.second(second);
        for r in requests.iter().filter(|r| s.backend && r.request_type != "batch") {
            let over = (f64::from(load_rpm) / upstream_limit).max(0.0);
            let latency = 180.0 + 400.0 * over * over + rng.unit() * 60.0;
            let error = if over > 1.0 && rng.unit() < 1.0 - 1.0 / over {
                Some(ErrorClass::RateLimit)
            } else if rng.unit() < 0.002 + 0.03 * (over - 0.8).max(0.0) {
                Some(if rng.below(2) == 0 { ErrorClass::Timeout } else { ErrorClass::ServerError })
            } else {
                None
            };
            push(
                &mut events,
                InputEvent::Outcome(OutcomeEvent {
                    ts: r.ts.plus_ms(latency as i64),
                    dependency: "ai_primary".into(),
                    ok: error.is_none(),
                    error,
                    latency_ms: latency.round(),
                    request_id: Some(r.id.clone()),
                }),
            );
        }
        recent.pop_front();
        recent.push_back(requests.len() as u32);
        for r in requests {
            push(&mut events, InputEvent::Request(r));
        }
        if s.backend && second % 5 == 0 {
            let pressure = f64::from(load_rpm) / (2000.0 * s.scale as f64);
            for (h, max) in [("host-a", 66u32), ("host-b", 67), ("host-c", 67)] {
                let jitter = rng.unit() * 0.04;
                let in_use = ((f64::from(max) * (0.15 + 0.8 * pressure + jitter)).round() as u32).min(max);
                push(
                    &mut events,
                    InputEvent::Telemetry(TelemetrySample {
                        ts: s.start.plus_ms(second * 1000),
                        source: h.into(),
                        cpu: (0.2 + 0.7 * pressure + jitter).min(0.99),
                        memory: (0.35 + 0.3 * pressure + jitter).min(0.99),
                        db_connections_in_use: in_use,
                        db_connections_max: max,
                        queue_depth: Some(((500.0 * (pressure - 0.5).max(0.0)) as u64).min(1000)),
                        queue_capacity: Some(1000),
                    }),
                );
            }
        }
    }
    events.sort_by_key(|(ts, seq, _)| (*ts, *seq));
    events.into_iter().map(|(_, _, e)| e).collect()
}

/// `count` user indices in 0..users drawn from a Zipf-like distribution with `exponent`
/// (rank r has weight 1/r^exponent), shuffled so that hot keys are not the low numbers.
pub fn zipf_keys(users: u32, count: usize, exponent: f64, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    let mut cdf = Vec::with_capacity(users as usize);
    let mut total = 0.0;
    for r in 1..=users {
        total += 1.0 / f64::from(r).powf(exponent);
        cdf.push(total);
    }
    let mut perm: Vec<u32> = (0..users).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    (0..count)
        .map(|_| {
            let x = rng.unit() * total;
            let rank = cdf.partition_point(|&c| c < x).min(users as usize - 1);
            perm[rank]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_is_deterministic_sorted_and_grows() {
        let a = monday_surge(&Surge::default());
        let b = monday_surge(&Surge::default());
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].ts() <= w[1].ts()));
        let start = Surge::default().start.0;
        let per_minute = |m: i64| a.iter().filter(|e| matches!(e, InputEvent::Request(_)) && (e.ts().0 - start) / 60_000 == m).count();
        let (quiet, peak) = (per_minute(2), per_minute(17));
        assert!(peak > 3 * quiet, "quiet {quiet}/min, peak {peak}/min");
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let keys = zipf_keys(1000, 100_000, 1.1, 3);
        assert!(keys.iter().all(|&k| k < 1000));
        let mut counts = vec![0u32; 1000];
        keys.iter().for_each(|&k| counts[k as usize] += 1);
        counts.sort_unstable_by(|a, b| b.cmp(a));
        assert!(counts[0] > 50 * counts[500].max(1), "{} vs {}", counts[0], counts[500]);
    }
}

//! The health view: folds telemetry from many sources into one picture of the system.
//!
//! It keeps the latest sample per source and drops a source whose newest sample is older than
//! `health.stale_after_s` (event time), so a dead host stops skewing the view. CPU and memory are
//! combined by mean or max (config); database pools and queues are summed across sources (in
//! 128 bits: no sum of 64-bit depths wraps). Sources are kept in name order so the floating-point
//! folds are the same on every run. At most `health.max_sources` are kept: a new source beyond it
//! takes the place of the one whose latest sample is the oldest.

use std::collections::BTreeMap;

use crate::config::{Aggregate, HealthConfig};
use crate::wire::events::TelemetrySample;
use crate::wire::time::Millis;

/// System health as the adaptive limits see it. All utilisations are in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Health {
    pub cpu: f64,
    pub memory: f64,
    pub db: f64,
    pub queue: f64,
    pub sources: usize,
}

impl Health {
    /// max(cpu, memory): what the resource multiplier looks at.
    pub fn resource(&self) -> f64 {
        self.cpu.max(self.memory)
    }

    /// The worst utilisation of all: what load severity looks at.
    pub fn worst(&self) -> f64 {
        self.resource().max(self.db).max(self.queue)
    }
}

#[derive(Debug, Clone)]
pub struct HealthView {
    stale_after_ms: i64,
    aggregate: Aggregate,
    sources: BTreeMap<String, TelemetrySample>,
    max_sources: usize,
    /// Sources dropped for a new one at `max_sources`.
    pub displaced: u64,
    current: Health,
    /// No source goes stale before this time (a lower bound, so `expire` can skip the scan).
    next_expiry_ms: i64,
}

impl HealthView {
    pub fn new(cfg: &HealthConfig) -> Self {
        HealthView {
            stale_after_ms: i64::from(cfg.stale_after_s) * 1000,
            aggregate: cfg.cpu_memory_aggregate,
            sources: BTreeMap::new(),
            max_sources: cfg.max_sources.max(1) as usize,
            displaced: 0,
            current: Health::default(),
            next_expiry_ms: i64::MAX,
        }
    }

    pub fn current(&self) -> Health {
        self.current
    }

    /// Takes a sample (older samples than a source's latest are ignored); returns whether the
    /// view changed.
    pub fn on_sample(&mut self, sample: TelemetrySample) -> bool {
        self.next_expiry_ms = self.next_expiry_ms.min(sample.ts.0.saturating_add(self.stale_after_ms));
        match self.sources.get_mut(&sample.source) {
            Some(prev) if prev.ts > sample.ts => return false,
            Some(prev) => *prev = sample,
            None => {
                if self.sources.len() >= self.max_sources {
                    self.displace_oldest();
                }
                self.sources.insert(sample.source.clone(), sample);
            }
        }
        self.recompute()
    }

    /// Drops sources gone stale by `now`; returns whether the view changed.
    pub fn expire(&mut self, now: Millis) -> bool {
        if now.0 <= self.next_expiry_ms {
            return false;
        }
        let before = self.sources.len();
        let horizon = now.0 - self.stale_after_ms;
        self.sources.retain(|_, s| s.ts.0 >= horizon);
        self.next_expiry_ms = self.sources.values().map(|s| s.ts.0.saturating_add(self.stale_after_ms)).min().unwrap_or(i64::MAX);
        before != self.sources.len() && self.recompute()
    }

    /// The number of sources in the view.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Drops the source whose latest sample is the oldest (the first in name order among equals).
    fn displace_oldest(&mut self) {
        let oldest = self.sources.iter().min_by_key(|(_, s)| s.ts).map(|(name, _)| name.clone());
        if let Some(name) = oldest {
            self.sources.remove(&name);
            self.displaced += 1;
        }
    }

    fn recompute(&mut self) -> bool {
        let n = self.sources.len();
        let mut h = Health { sources: n, ..Health::default() };
        if n > 0 {
            let (mut db_used, mut db_max, mut q_depth, mut q_cap) = (0u64, 0u64, 0u128, 0u128);
            for s in self.sources.values() {
                match self.aggregate {
                    Aggregate::Mean => {
                        h.cpu += s.cpu / n as f64;
                        h.memory += s.memory / n as f64;
                    }
                    Aggregate::Max => {
                        h.cpu = h.cpu.max(s.cpu);
                        h.memory = h.memory.max(s.memory);
                    }
                }
                db_used += u64::from(s.db_connections_in_use);
                db_max += u64::from(s.db_connections_max);
                if let (Some(d), Some(c)) = (s.queue_depth, s.queue_capacity) {
                    q_depth += u128::from(d);
                    q_cap += u128::from(c);
                }
            }
            h.cpu = h.cpu.clamp(0.0, 1.0);
            h.memory = h.memory.clamp(0.0, 1.0);
            h.db = if db_max > 0 { db_used as f64 / db_max as f64 } else { 0.0 };
            h.queue = if q_cap > 0 { q_depth as f64 / q_cap as f64 } else { 0.0 };
        }
        let changed = h != self.current;
        self.current = h;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(source: &str, secs: i64, cpu: f64, db: u32) -> TelemetrySample {
        TelemetrySample {
            ts: Millis::from_secs(secs),
            source: source.into(),
            cpu,
            memory: 0.2,
            db_connections_in_use: db,
            db_connections_max: 100,
            queue_depth: None,
            queue_capacity: None,
        }
    }

    #[test]
    fn latest_sample_per_source_is_folded() {
        let mut v = HealthView::new(&HealthConfig::default());
        assert!(v.on_sample(sample("a", 10, 0.4, 50)));
        assert!(v.on_sample(sample("b", 10, 0.8, 150 - 100)));
        let h = v.current();
        assert!((h.cpu - 0.6).abs() < 1e-12);
        assert!((h.db - 0.5).abs() < 1e-12);
        // A late, older sample from `a` does not replace its newer one.
        assert!(!v.on_sample(sample("a", 5, 0.0, 0)));
        assert!(v.on_sample(sample("a", 11, 0.8, 50)));
        assert!((v.current().cpu - 0.8).abs() < 1e-12);
    }

    #[test]
    fn stale_sources_are_dropped() {
        let mut v = HealthView::new(&HealthConfig { stale_after_s: 30, cpu_memory_aggregate: Aggregate::Max, ..HealthConfig::default() });
        v.on_sample(sample("a", 0, 0.95, 10));
        v.on_sample(sample("b", 20, 0.10, 10));
        assert_eq!(v.current().cpu, 0.95);
        assert!(!v.expire(Millis::from_secs(30)));
        assert!(v.expire(Millis::from_secs(31)));
        assert_eq!(v.current().sources, 1);
        assert_eq!(v.current().cpu, 0.10);
        assert!(v.expire(Millis::from_secs(60)));
        assert_eq!(v.current(), Health::default());
    }

    #[test]
    fn queues_count_only_sources_that_report_them() {
        let mut v = HealthView::new(&HealthConfig::default());
        let mut s = sample("a", 0, 0.1, 0);
        s.queue_depth = Some(90);
        s.queue_capacity = Some(100);
        v.on_sample(s);
        v.on_sample(sample("b", 0, 0.1, 0));
        assert!((v.current().queue - 0.9).abs() < 1e-12);
        assert!((v.current().worst() - 0.9).abs() < 1e-12);
    }

    #[test]
    fn huge_queues_sum_without_wrapping() {
        // Two samples whose depths and capacities wrap a u64 sum: the review saw "queue 1.11 full".
        let mut v = HealthView::new(&HealthConfig::default());
        for (name, depth, cap) in [("a", u64::MAX / 2, u64::MAX / 2 + 10), ("b", u64::MAX / 4, u64::MAX)] {
            let mut s = sample(name, 0, 0.1, 0);
            (s.queue_depth, s.queue_capacity) = (Some(depth), Some(cap));
            v.on_sample(s);
        }
        let q = v.current().queue;
        assert!(q > 0.49 && q < 0.51, "{q}");
    }

    #[test]
    fn beyond_the_cap_a_new_source_displaces_the_stalest() {
        let mut v = HealthView::new(&HealthConfig { max_sources: 3, ..HealthConfig::default() });
        for (name, secs) in [("a", 5), ("b", 1), ("c", 9)] {
            v.on_sample(sample(name, secs, 0.1, 0));
        }
        // `b`'s latest sample is the oldest: it goes.
        v.on_sample(sample("d", 10, 0.9, 0));
        assert_eq!((v.len(), v.displaced), (3, 1));
        assert_eq!(v.current().sources, 3);
        // A known source's new sample displaces nobody.
        v.on_sample(sample("a", 11, 0.1, 0));
        assert_eq!((v.len(), v.displaced), (3, 1));
        let mut many = HealthView::new(&HealthConfig { max_sources: 100, ..HealthConfig::default() });
        for i in 0..10_000 {
            many.on_sample(sample(&format!("host-{i}"), i, 0.5, 0));
        }
        assert_eq!((many.len(), many.displaced), (100, 9_900));
    }
}

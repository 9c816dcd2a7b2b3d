//! The health view: folds telemetry from many sources into one picture of the system.
//!
//! It keeps the latest sample per source and drops a source whose newest sample is older than
//! `health.stale_after_s` (event time), so a dead host stops skewing the view. CPU and memory are
//! combined by mean or max (config); database pools and queues are summed across sources.
//! Sources are kept in name order so the floating-point folds are the same on every run.

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

    fn recompute(&mut self) -> bool {
        let n = self.sources.len();
        let mut h = Health { sources: n, ..Health::default() };
        if n > 0 {
            let (mut db_used, mut db_max, mut q_depth, mut q_cap) = (0u64, 0u64, 0u64, 0u64);
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
                    q_depth += d;
                    q_cap += c;
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
        let mut v = HealthView::new(&HealthConfig { stale_after_s: 30, cpu_memory_aggregate: Aggregate::Max });
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
}

//! Adaptive limits: every `tier/request_type` limit as baseline × resource × db × api × queue ×
//! predicted, clamped to [minimum_guaranteed, maximum_burst], and the load severity the throttle
//! table keys on. Emits a `LimitUpdate` for each key whose adjusted limit changes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::{AdaptiveConfig, Config, Step};
use crate::core::health::Health;
use crate::wire::outputs::{BreakerStateKind, LimitUpdate, LoadSeverity, Multipliers};
use crate::wire::time::Millis;

/// Which keys a recomputation publishes besides those whose limit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Force {
    Changed,
    Key(usize),
    All,
}

/// One `tier/request_type` limit.
#[derive(Debug, Clone)]
pub struct KeyLimit {
    pub key: Arc<str>,
    pub baseline: u32,
    pub minimum: u32,
    pub maximum: u32,
    pub adjusted: u32,
    /// The adjusted limit in units per `limiter.window_s` (equal to `adjusted` for 60 s).
    pub window_limit: u32,
    /// The `RateLimit-Policy` value for the adjusted limit, e.g. `600;w=60`.
    pub policy: Arc<str>,
    pub grace_allowance: u32,
    pub grace_window_ms: i64,
    /// The reason and event time of the key's last published update (for `current`).
    pub reason: Arc<str>,
    pub changed: Millis,
}

pub struct AdaptiveLimits {
    cfg: AdaptiveConfig,
    window_s: u32,
    request_types: usize,
    keys: Vec<KeyLimit>,
    health: Health,
    breakers: BTreeMap<Arc<str>, BreakerStateKind>,
    predicted: f64,
    multipliers: Multipliers,
    severity: LoadSeverity,
    /// Operators' temporary overrides per key (same index as `keys`): the limit in requests per
    /// minute and when it ends (event time).
    overrides: Vec<Option<(u32, Millis)>>,
}

/// The multiplier of the highest step whose threshold `utilisation` exceeds, else 1.
pub fn step_multiplier(steps: &[Step], utilisation: f64) -> f64 {
    steps.iter().filter(|s| utilisation > s.above).max_by(|a, b| a.above.total_cmp(&b.above)).map_or(1.0, |s| s.multiplier)
}

fn scaled(value: u32, share: f64) -> u32 {
    (f64::from(value) * share).round().clamp(0.0, f64::from(u32::MAX)) as u32
}

impl AdaptiveLimits {
    /// `tiers` and `request_types` give the index order used by `limit`.
    pub fn new(cfg: &Config, tiers: &[&str], request_types: &[&str]) -> Self {
        let mut keys = Vec::with_capacity(tiers.len() * request_types.len());
        for tier in tiers {
            let t = &cfg.tiers[*tier];
            for rt in request_types {
                let share = cfg.request_types[*rt].share;
                let baseline = scaled(t.baseline_rpm, share).max(1);
                let maximum = scaled(t.maximum_burst, share).max(1);
                let minimum = scaled(t.minimum_guaranteed, share).min(maximum);
                let adjusted = baseline.clamp(minimum, maximum);
                keys.push(KeyLimit {
                    key: format!("{tier}/{rt}").into(),
                    baseline,
                    minimum,
                    maximum,
                    adjusted,
                    window_limit: per_window(adjusted, cfg.limiter.window_s),
                    policy: policy(per_window(adjusted, cfg.limiter.window_s), cfg.limiter.window_s),
                    grace_allowance: scaled(t.grace_allowance, share),
                    grace_window_ms: i64::from(t.grace_window_s) * 1000,
                    reason: Arc::from("initial"),
                    changed: Millis(0),
                });
            }
        }
        AdaptiveLimits {
            cfg: cfg.adaptive.clone(),
            window_s: cfg.limiter.window_s,
            request_types: request_types.len(),
            keys,
            health: Health::default(),
            breakers: BTreeMap::new(),
            predicted: 1.0,
            multipliers: Multipliers::NEUTRAL,
            severity: LoadSeverity::Normal,
            overrides: vec![None; tiers.len() * request_types.len()],
        }
    }

    /// The index of the key `tier/request_type`.
    pub fn key_index(&self, key: &str) -> Option<usize> {
        self.keys.iter().position(|k| *k.key == *key)
    }

    /// An operator's override of key `i`: `rpm` requests per minute until `until` (event time),
    /// whatever the multipliers say; `None` ends it. The key's update is published either way.
    pub fn set_override(&mut self, i: usize, value: Option<(u32, Millis)>, now: Millis, out: &mut Vec<LimitUpdate>) {
        if let Some(slot) = self.overrides.get_mut(i) {
            *slot = value.map(|(rpm, until)| (rpm.max(1), until));
            self.recompute_forcing(now, Force::Key(i), out);
        }
    }

    /// Ends the overrides whose time is up at `now` (publishing their keys' limits).
    pub fn expire_overrides(&mut self, now: Millis, out: &mut Vec<LimitUpdate>) {
        for i in 0..self.overrides.len() {
            if self.overrides[i].is_some_and(|(_, until)| until <= now) {
                self.overrides[i] = None;
                self.recompute_forcing(now, Force::Key(i), out);
            }
        }
    }

    /// A reloaded config (same tiers and request types, in the same order): new baselines,
    /// ranges, grace allowances and multiplier steps, applied at once; every key is published.
    pub fn reconfigure(&mut self, cfg: &Config, tiers: &[&str], request_types: &[&str], now: Millis, out: &mut Vec<LimitUpdate>) {
        let fresh = AdaptiveLimits::new(cfg, tiers, request_types);
        for (k, f) in self.keys.iter_mut().zip(fresh.keys) {
            k.baseline = f.baseline;
            k.minimum = f.minimum;
            k.maximum = f.maximum;
            k.grace_allowance = f.grace_allowance;
            k.grace_window_ms = f.grace_window_ms;
        }
        self.cfg = cfg.adaptive.clone();
        self.recompute_forcing(now, Force::All, out);
    }

    /// The override of key `i`, if any.
    #[cfg(test)]
    pub fn override_of(&self, i: usize) -> Option<(u32, Millis)> {
        self.overrides.get(i).copied().flatten()
    }

    pub fn limit(&self, tier: usize, request_type: usize) -> &KeyLimit {
        &self.keys[tier * self.request_types + request_type]
    }

    pub fn severity(&self) -> LoadSeverity {
        self.severity
    }

    /// The first event's time: the limits published then (reason `initial`) date from it.
    pub fn started(&mut self, now: Millis) {
        for k in self.keys.iter_mut().filter(|k| k.changed == Millis(0)) {
            k.changed = now;
        }
    }

    /// Every key's limit as last published: its reason and the event time it changed.
    pub fn current(&self, out: &mut Vec<LimitUpdate>) {
        for k in &self.keys {
            out.push(self.update(k, k.changed, k.reason.to_string()));
        }
    }

    /// A `LimitUpdate` for every key, as of now (published once at start).
    pub fn snapshot(&self, now: Millis, reason: &str, out: &mut Vec<LimitUpdate>) {
        for (k, over) in self.keys.iter().zip(&self.overrides) {
            let reason = match over {
                Some((rpm, until)) => override_reason(*rpm, *until),
                None => reason.to_string(),
            };
            out.push(self.update(k, now, reason));
        }
    }

    pub fn on_health(&mut self, health: Health, now: Millis, out: &mut Vec<LimitUpdate>) {
        self.health = health;
        self.recompute(now, out);
    }

    pub fn on_breaker(&mut self, dependency: Arc<str>, state: BreakerStateKind, now: Millis, out: &mut Vec<LimitUpdate>) {
        self.breakers.insert(dependency, state);
        self.recompute(now, out);
    }

    /// Sets the predicted-demand multiplier (1.0 = no predictive cut).
    pub fn set_predicted(&mut self, multiplier: f64, now: Millis, out: &mut Vec<LimitUpdate>) {
        self.predicted = multiplier;
        self.recompute(now, out);
    }

    fn api_multiplier(&self) -> (f64, Option<(Arc<str>, BreakerStateKind)>) {
        let a = &self.cfg.api;
        let mut worst: (f64, Option<(Arc<str>, BreakerStateKind)>) = (f64::INFINITY, None);
        for (dep, state) in &self.breakers {
            let m = match state {
                BreakerStateKind::Closed => a.closed,
                BreakerStateKind::HalfOpen => a.half_open,
                BreakerStateKind::Open => a.open,
                BreakerStateKind::ForcedOpen => a.forced_open,
                BreakerStateKind::Disabled => a.disabled,
                BreakerStateKind::MetricsOnly => a.metrics_only,
            };
            if m < worst.0 {
                worst = (m, Some((dep.clone(), *state)));
            }
        }
        match worst {
            // Only a departure from neutral is worth a reason.
            (m, cause) if m.is_finite() => (m, cause.filter(|_| m != 1.0)),
            _ => (1.0, None),
        }
    }

    fn recompute(&mut self, now: Millis, out: &mut Vec<LimitUpdate>) {
        self.recompute_forcing(now, Force::Changed, out);
    }

    /// As `recompute`, publishing key `force` even if its limit did not change.
    fn recompute_forcing(&mut self, now: Millis, force: Force, out: &mut Vec<LimitUpdate>) {
        let h = self.health;
        let (api, api_cause) = self.api_multiplier();
        let m = Multipliers {
            resource: step_multiplier(&self.cfg.resource, h.resource()),
            db: step_multiplier(&self.cfg.db, h.db),
            api,
            queue: step_multiplier(&self.cfg.queue, h.queue),
            predicted: self.predicted,
        };
        let worst = h.worst();
        let previous_severity = self.severity;
        self.severity = if worst > self.cfg.severity_critical {
            LoadSeverity::Critical
        } else if worst > self.cfg.severity_high {
            LoadSeverity::High
        } else {
            LoadSeverity::Normal
        };
        let mut reason = String::new();
        let mut note = |text: std::fmt::Arguments| {
            if !reason.is_empty() {
                reason.push_str("; ");
            }
            let _ = reason.write_fmt(text);
        };
        if m.resource != 1.0 {
            note(format_args!("resource ×{} (cpu/memory {:.2})", m.resource, h.resource()));
        }
        if m.db != 1.0 {
            note(format_args!("db ×{} (pool {:.2} used)", m.db, h.db));
        }
        if let Some((dep, state)) = api_cause {
            note(format_args!("api ×{} ({dep} breaker {})", m.api, state.as_str()));
        }
        if m.queue != 1.0 {
            note(format_args!("queue ×{} (queue {:.2} full)", m.queue, h.queue));
        }
        if m.predicted != 1.0 {
            note(format_args!("predicted ×{:.3} (demand spike forecast)", m.predicted));
        }
        if reason.is_empty() {
            reason.push_str("healthy");
        }
        self.multipliers = m;
        let factor = m.product();
        let window_s = self.window_s;
        for i in 0..self.keys.len() {
            let over = self.overrides[i];
            let k = &mut self.keys[i];
            let adjusted = match over {
                // An operator's override stands as given (not clamped to the tier's range).
                Some((rpm, _)) => rpm,
                None => (f64::from(k.baseline) * factor).round().clamp(f64::from(k.minimum), f64::from(k.maximum)) as u32,
            };
            // Severity is part of every update: publish all keys when it changes, so the
            // compacted limits topic never shows a stale one.
            if adjusted != k.adjusted || self.severity != previous_severity || force == Force::Key(i) || force == Force::All {
                k.adjusted = adjusted;
                k.window_limit = per_window(adjusted, window_s);
                k.policy = policy(k.window_limit, window_s);
                let reason = match over {
                    Some((rpm, until)) => override_reason(rpm, until),
                    None => reason.clone(),
                };
                k.reason = Arc::from(reason.as_str());
                k.changed = now;
                let k = &self.keys[i];
                out.push(self.update(k, now, reason));
            }
        }
    }

    fn update(&self, k: &KeyLimit, now: Millis, reason: String) -> LimitUpdate {
        LimitUpdate {
            key: k.key.clone(),
            ts: now,
            baseline_rpm: k.baseline,
            adjusted_rpm: k.adjusted,
            minimum_guaranteed: k.minimum,
            maximum_burst: k.maximum,
            multipliers: self.multipliers,
            severity: self.severity,
            reason,
        }
    }
}

/// Converts requests per minute into units per window (at least 1).
fn per_window(rpm: u32, window_s: u32) -> u32 {
    ((u64::from(rpm) * u64::from(window_s) + 30) / 60).clamp(1, u64::from(u32::MAX)) as u32
}

fn override_reason(rpm: u32, until: Millis) -> String {
    format!("admin override {rpm}/min until {until}")
}

fn policy(limit: u32, window_s: u32) -> Arc<str> {
    format!("{limit};w={window_s}").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdaptiveLimits {
        AdaptiveLimits::new(&Config::default(), &["enterprise", "free", "pro"], &["batch", "critical_business", "standard"])
    }

    fn health(cpu: f64, db: f64) -> Health {
        Health { cpu, memory: 0.1, db, queue: 0.0, sources: 1 }
    }

    #[test]
    fn seed_resource_multiplier_thresholds() {
        let steps = AdaptiveConfig::default().resource;
        for (u, m) in [(0.95, 0.3), (0.91, 0.3), (0.9, 0.6), (0.85, 0.6), (0.8, 0.8), (0.75, 0.8), (0.7, 1.0), (0.1, 1.0)] {
            assert_eq!(step_multiplier(&steps, u), m, "utilisation {u}");
        }
    }

    #[test]
    fn adjusted_is_baseline_times_product_clamped() {
        let mut a = limits();
        let mut out = Vec::new();
        // pro/standard: baseline 600, min 100, max 1200. cpu 0.85 → ×0.6 → 360.
        a.on_health(health(0.85, 0.0), Millis(1), &mut out);
        assert_eq!(a.limit(2, 2).adjusted, 360);
        assert_eq!(a.severity(), LoadSeverity::High);
        // cpu 0.95 (×0.3) and db 0.95 (×0.4): 600 × 0.12 = 72 → clamped up to 100.
        a.on_health(health(0.95, 0.95), Millis(2), &mut out);
        assert_eq!(a.limit(2, 2).adjusted, 100);
        assert_eq!(a.severity(), LoadSeverity::Critical);
        // A forecast boost is clamped to maximum_burst.
        a.on_health(health(0.1, 0.0), Millis(3), &mut out);
        a.set_predicted(5.0, Millis(4), &mut out);
        assert_eq!(a.limit(2, 2).adjusted, 1200);
        // batch has half the share: 300 × ... max 600.
        assert_eq!(a.limit(2, 0).adjusted, 600);
    }

    #[test]
    fn updates_only_for_changed_keys_and_api_takes_the_worst_breaker() {
        let mut a = limits();
        let mut out = Vec::new();
        a.on_health(health(0.1, 0.0), Millis(1), &mut out);
        assert!(out.is_empty(), "healthy is the starting point: {out:?}");
        a.on_breaker("ai_primary".into(), BreakerStateKind::HalfOpen, Millis(2), &mut out);
        a.on_breaker("ai_secondary".into(), BreakerStateKind::Open, Millis(3), &mut out);
        let last = out.last().unwrap();
        assert_eq!(last.multipliers.api, 0.5);
        assert!(last.reason.contains("ai_secondary breaker open"), "{}", last.reason);
        out.clear();
        a.on_breaker("ai_secondary".into(), BreakerStateKind::Open, Millis(4), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn api_multipliers_above_one_apply_too() {
        let mut cfg = Config::default();
        cfg.adaptive.api.closed = 1.5;
        let mut a = AdaptiveLimits::new(&cfg, &["pro"], &["standard"]);
        let mut out = Vec::new();
        a.on_breaker("ai_primary".into(), BreakerStateKind::Closed, Millis(1), &mut out);
        assert_eq!(a.limit(0, 0).adjusted, 900);
        a.on_breaker("ai_secondary".into(), BreakerStateKind::HalfOpen, Millis(2), &mut out);
        assert_eq!(a.limit(0, 0).adjusted, 420);
    }

    #[test]
    fn a_severity_change_alone_publishes_every_key() {
        let mut a = limits();
        let mut out = Vec::new();
        a.on_health(Health { cpu: 0.1, memory: 0.1, db: 0.79, queue: 0.0, sources: 1 }, Millis(1), &mut out);
        out.clear();
        // db 0.79 → 0.89: the db multiplier stays ×0.7, severity goes normal → high.
        a.on_health(Health { cpu: 0.1, memory: 0.1, db: 0.89, queue: 0.0, sources: 1 }, Millis(2), &mut out);
        assert_eq!(out.len(), 9);
        assert!(out.iter().all(|u| u.severity == LoadSeverity::High));
    }

    #[test]
    fn an_override_holds_until_its_time_then_the_multipliers_apply_again() {
        let cfg = crate::config::Config::default();
        let tiers: Vec<&str> = cfg.tiers.keys().map(String::as_str).collect();
        let rts: Vec<&str> = cfg.request_types.keys().map(String::as_str).collect();
        let mut a = AdaptiveLimits::new(&cfg, &tiers, &rts);
        let i = a.key_index("free/standard").expect("key");
        let before = a.keys[i].adjusted;
        let mut out = Vec::new();
        a.set_override(i, Some((7, Millis(10_000))), Millis(1_000), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].adjusted_rpm, &*out[0].key), (7, "free/standard"));
        assert!(out[0].reason.starts_with("admin override 7/min until"), "{}", out[0].reason);
        // Health changes do not move an overridden key.
        out.clear();
        a.on_breaker("ai".into(), BreakerStateKind::Open, Millis(2_000), &mut out);
        assert!(out.iter().all(|u| &*u.key != "free/standard"), "{out:?}");
        assert_eq!(a.keys[i].adjusted, 7);
        let mut snap = Vec::new();
        a.snapshot(Millis(3_000), "current", &mut snap);
        assert!(snap.iter().any(|u| &*u.key == "free/standard" && u.reason.starts_with("admin override")));
        // Not yet over at 9.999 s; over at 10 s, back to the multipliers (the open breaker).
        out.clear();
        a.expire_overrides(Millis(9_999), &mut out);
        assert!(out.is_empty());
        a.expire_overrides(Millis(10_000), &mut out);
        assert_eq!(out.len(), 1);
        assert_ne!(out[0].adjusted_rpm, 7);
        assert!(out[0].adjusted_rpm < before, "the open breaker's multiplier applies: {out:?}");
        assert_eq!(a.override_of(i), None);
        // Clearing early publishes the key too.
        a.set_override(i, Some((3, Millis(60_000))), Millis(11_000), &mut out);
        out.clear();
        a.set_override(i, None, Millis(12_000), &mut out);
        assert_eq!(out.len(), 1);
        assert_ne!(out[0].adjusted_rpm, 3);
    }

    #[test]
    fn policy_follows_the_adjusted_limit() {
        let mut a = limits();
        assert_eq!(&*a.limit(2, 2).policy, "600;w=60");
        a.on_health(health(0.85, 0.0), Millis(1), &mut Vec::new());
        assert_eq!(&*a.limit(2, 2).policy, "360;w=60");
    }
}

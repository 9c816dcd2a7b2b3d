//! All breakers of a processor, keyed by dependency: routes outcomes and timers to each
//! `Breaker`, and turns transitions into `BreakerState` outputs carrying the fallback plan. When
//! a breaker changes state, the open breakers that list it as an alternative get their plan
//! re-published (with `previous` equal to `state`: a new plan, not a transition), so the compacted
//! breakers topic never points gateways at an alternative that stopped taking calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, FallbackConfig};
use crate::core::breaker::{Breaker, Transition};
use crate::core::fallback;
use crate::wire::events::OutcomeEvent;
use crate::wire::outputs::{BreakerState, BreakerStateKind, FallbackStep};
use crate::wire::time::Millis;

struct Entry {
    breaker: Breaker,
    alternatives: Vec<Arc<str>>,
    plan: Vec<FallbackStep>,
    /// The state before the latest transition (the current one until there is a transition).
    previous: BreakerStateKind,
}

pub struct Breakers {
    cfg: Arc<Config>,
    fallback: FallbackConfig,
    entries: BTreeMap<Arc<str>, Entry>,
}

impl Breakers {
    pub fn new(cfg: Arc<Config>) -> Self {
        let mut b = Breakers { fallback: cfg.fallback.clone(), cfg, entries: BTreeMap::new() };
        let names: Vec<String> = b.cfg.dependencies.keys().cloned().collect();
        for name in names {
            b.entry(&name);
        }
        b
    }

    fn entry(&mut self, dependency: &str) -> &mut Entry {
        if !self.entries.contains_key(dependency) {
            let alternatives =
                self.cfg.dependencies.get(dependency).map(|d| d.alternatives.iter().map(|a| Arc::<str>::from(a.as_str())).collect()).unwrap_or_default();
            let breaker = Breaker::new(self.cfg.breaker_for(dependency));
            let previous = breaker.state();
            let entry = Entry { breaker, alternatives, plan: Vec::new(), previous };
            self.entries.insert(dependency.into(), entry);
        }
        // Present: inserted just above if it was missing.
        self.entries.get_mut(dependency).expect("entry inserted above")
    }

    /// A reloaded config: every breaker takes its new thresholds.
    pub fn reconfigure(&mut self, cfg: Arc<Config>) {
        for (name, e) in &mut self.entries {
            e.breaker.reconfigure(cfg.breaker_for(name));
        }
        self.cfg = cfg;
    }

    /// The failure weight at which `dependency`'s breaker trips.
    pub fn weight_threshold(&self, dependency: &str) -> f64 {
        self.cfg.breaker_for(dependency).weight_threshold
    }

    pub fn state(&self, dependency: &str) -> Option<BreakerStateKind> {
        self.entries.get(dependency).map(|e| e.breaker.state())
    }

    /// Records an outcome; appends the resulting `BreakerState`s to `out`.
    pub fn on_outcome(&mut self, ev: &OutcomeEvent, out: &mut Vec<BreakerState>) {
        let transitions = self.entry(&ev.dependency).breaker.on_outcome(ev.ts, ev.ok, ev.error, ev.latency_ms);
        for t in transitions.into_iter().flatten() {
            self.publish(&ev.dependency, t, out);
        }
    }

    /// Fires the timers due by `now` (open → half-open).
    pub fn advance(&mut self, now: Millis, out: &mut Vec<BreakerState>) {
        let due: Vec<(Arc<str>, Transition)> = self.entries.iter_mut().filter_map(|(name, e)| e.breaker.advance(now).map(|t| (name.clone(), t))).collect();
        for (name, t) in due {
            self.publish(&name, t, out);
        }
    }

    /// Applies an admin action (force_open, disable, metrics_only, reset) at `now`.
    pub fn admin(&mut self, dependency: &str, action: impl FnOnce(&mut Breaker, Millis) -> Option<Transition>, now: Millis, out: &mut Vec<BreakerState>) {
        if let Some(t) = action(&mut self.entry(dependency).breaker, now) {
            self.publish(dependency, t, out);
        }
    }

    fn resolve(&self, name: &str) -> Vec<FallbackStep> {
        let Some(e) = self.entries.get(name) else { return Vec::new() };
        if !e.breaker.state().needs_fallback() {
            return Vec::new();
        }
        fallback::plan(&self.fallback, &e.alternatives, |alt| self.state(alt).unwrap_or(BreakerStateKind::Closed))
    }

    /// Every breaker's current state as of `now`, as a re-publication (`previous` equal to
    /// `state`): what a new publisher writes so the compacted breakers topic is whole.
    pub fn snapshot(&self, now: Millis, out: &mut Vec<BreakerState>) {
        for (name, e) in &self.entries {
            out.extend(self.state_record(name, e.breaker.state(), now));
        }
    }

    /// Every breaker's state as of `now` for a reader (the API): `previous` is the state before
    /// its latest transition, `opened_at`/`retry_at` say when for an open breaker.
    pub fn current(&self, now: Millis, out: &mut Vec<BreakerState>) {
        for (name, e) in &self.entries {
            out.extend(self.state_record(name, e.previous, now));
        }
    }

    fn state_record(&self, name: &Arc<str>, from: BreakerStateKind, at: Millis) -> Option<BreakerState> {
        let e = self.entries.get(name)?;
        let m = e.breaker.metrics();
        Some(BreakerState {
            dependency: name.clone(),
            ts: at,
            state: e.breaker.state(),
            previous: from,
            failure_weight: m.failure_weight,
            failure_rate: m.failure_rate,
            slow_call_rate: m.slow_call_rate,
            calls: m.calls,
            opened_at: e.breaker.opened_at(),
            retry_at: e.breaker.retry_at(),
            half_open_probes: e.breaker.half_open_probes(),
            fallback: e.plan.clone(),
        })
    }

    fn publish(&mut self, dependency: &str, t: Transition, out: &mut Vec<BreakerState>) {
        let Some((name, _)) = self.entries.get_key_value(dependency) else { return };
        let name = name.clone();
        let plan = self.resolve(&name);
        if let Some(e) = self.entries.get_mut(&name) {
            e.plan = plan;
            e.previous = t.from;
        }
        out.extend(self.state_record(&name, t.from, t.at));
        // Dependents whose plan names this dependency.
        let dependents: Vec<Arc<str>> = self.entries.iter().filter(|(_, e)| e.alternatives.iter().any(|a| **a == *name)).map(|(n, _)| n.clone()).collect();
        for dep in dependents {
            let plan = self.resolve(&dep);
            let Some(e) = self.entries.get_mut(&dep) else { continue };
            if e.plan != plan {
                e.plan = plan;
                let state = e.breaker.state();
                out.extend(self.state_record(&dep, state, t.at));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerConfig;
    use crate::wire::events::ErrorClass;
    use BreakerStateKind::*;

    fn fail(dep: &str, s: i64) -> OutcomeEvent {
        OutcomeEvent { ts: Millis::from_secs(s), dependency: dep.into(), ok: false, error: Some(ErrorClass::ServerError), latency_ms: 5.0, request_id: None }
    }

    fn cfg() -> Arc<Config> {
        let mut c = Config::default();
        c.breaker = BreakerConfig { weight_threshold: 5.0, ..BreakerConfig::default() };
        c.resolved_breakers = c.dependencies.keys().map(|k| (k.clone(), c.breaker.clone())).collect();
        Arc::new(c)
    }

    /// The breakers with ai_primary tripped at 1 s, and its trip.
    fn primary_tripped() -> (Breakers, BreakerState) {
        let mut b = Breakers::new(cfg());
        let mut out = Vec::new();
        b.on_outcome(&fail("ai_primary", 1), &mut out);
        b.on_outcome(&fail("ai_primary", 1), &mut out);
        let tripped = out.pop().expect("a trip");
        (b, tripped)
    }

    #[test]
    fn a_snapshot_republishes_every_breaker_as_it_is() {
        let (b, tripped) = primary_tripped();
        let mut snap = Vec::new();
        b.snapshot(Millis::from_secs(2), &mut snap);
        assert_eq!(snap.len(), cfg().dependencies.len());
        assert!(snap.iter().all(|s| s.previous == s.state && s.ts == Millis::from_secs(2)));
        let primary = snap.iter().find(|s| &*s.dependency == "ai_primary").expect("ai_primary");
        assert_eq!((primary.state, &primary.fallback), (Open, &tripped.fallback));
    }

    #[test]
    fn the_current_view_names_the_state_before_the_latest_transition() {
        let (mut b, _) = primary_tripped();
        let (mut out, mut now) = (Vec::new(), Vec::new());
        b.current(Millis::from_secs(2), &mut now);
        assert_eq!(now.len(), cfg().dependencies.len());
        let of = |v: &[BreakerState], d: &str| v.iter().find(|s| &*s.dependency == d).map(|s| (s.previous, s.state, s.ts));
        assert_eq!(of(&now, "ai_primary"), Some((Closed, Open, Millis::from_secs(2))));
        assert_eq!(of(&now, "database"), Some((Closed, Closed, Millis::from_secs(2))));
        // Half-open once the wait is over: the state before it is open.
        b.advance(Millis::from_secs(40), &mut out);
        now.clear();
        b.current(Millis::from_secs(40), &mut now);
        assert_eq!(of(&now, "ai_primary"), Some((Open, HalfOpen, Millis::from_secs(40))));
    }

    #[test]
    fn a_trip_publishes_state_with_a_plan_naming_the_closed_alternative() {
        let mut b = Breakers::new(cfg());
        let mut out = Vec::new();
        b.on_outcome(&fail("ai_primary", 1), &mut out);
        assert!(out.is_empty());
        b.on_outcome(&fail("ai_primary", 1), &mut out);
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!((s.state, s.previous), (Open, Closed));
        assert_eq!(s.retry_at, Some(Millis::from_secs(31)));
        assert_eq!(s.fallback[0], FallbackStep::Alternative { dependency: "ai_secondary".into() });
    }

    #[test]
    fn an_alternative_opening_republishes_the_dependents_plan() {
        let mut b = Breakers::new(cfg());
        let mut out = Vec::new();
        for dep in ["ai_primary", "ai_primary", "ai_secondary", "ai_secondary"] {
            b.on_outcome(&fail(dep, 1), &mut out);
        }
        // primary opens (plan: secondary), secondary opens (plan: primary is open → none),
        // then primary's plan is re-published without the secondary.
        let kinds: Vec<_> = out.iter().map(|s| (&*s.dependency, s.previous, s.state)).collect();
        assert_eq!(kinds, vec![("ai_primary", Closed, Open), ("ai_secondary", Closed, Open), ("ai_primary", Open, Open)]);
        assert_eq!(out[2].fallback[0], FallbackStep::Cache { min_similarity: 0.7, min_quality: 0.6 });
    }

    #[test]
    fn timers_fire_on_advance() {
        let mut b = Breakers::new(cfg());
        let mut out = Vec::new();
        b.on_outcome(&fail("database", 0), &mut out);
        b.on_outcome(&fail("database", 0), &mut out);
        out.clear();
        b.advance(Millis::from_secs(29), &mut out);
        assert!(out.is_empty());
        b.advance(Millis::from_secs(45), &mut out);
        assert_eq!((out[0].state, out[0].ts), (HalfOpen, Millis::from_secs(30)));
    }

    #[test]
    fn unconfigured_dependencies_get_the_default_breaker() {
        let mut b = Breakers::new(cfg());
        let mut out = Vec::new();
        b.on_outcome(&fail("payments", 0), &mut out);
        b.on_outcome(&fail("payments", 0), &mut out);
        assert_eq!(b.state("payments"), Some(Open));
        assert_eq!(out[0].fallback.len(), 3, "no alternatives: cache, rules, template");
    }
}

//! All breakers of a processor, keyed by dependency: routes outcomes and timers to each
//! `Breaker`, and turns transitions into `BreakerState` outputs carrying the fallback plan. When
//! a breaker changes state, the open breakers that list it as an alternative get their plan
//! re-published (with `previous` equal to `state`: a new plan, not a transition), so the compacted
//! breakers topic never points gateways at an alternative that stopped taking calls.

use std::collections::{BTreeMap, BTreeSet};
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
    /// When its timer is due (`Breaker::next_timer`), as filed in `Breakers::timers`.
    timer: Option<Millis>,
    /// A learned dependency (not in `[dependencies]`): when it was last heard of, as filed in
    /// `Breakers::idle`.
    learned: Option<Millis>,
}

/// Every breaker, and the indexes that keep the work per event independent of how many there
/// are: an outcome touches its own breaker, time touches only the breakers whose timer is due,
/// and the idle learned ones are found oldest first.
pub struct Breakers {
    cfg: Arc<Config>,
    fallback: FallbackConfig,
    entries: BTreeMap<Arc<str>, Entry>,
    /// (due, dependency) of every running timer.
    timers: BTreeSet<(Millis, Arc<str>)>,
    /// (last heard of, dependency) of every learned dependency.
    idle: BTreeSet<(Millis, Arc<str>)>,
    /// Outcomes of a new learned dependency refused at the cap (`learned_dependencies.max`).
    pub refused: u64,
    /// Learned dependencies dropped as idle.
    pub dropped: u64,
}

impl Breakers {
    pub fn new(cfg: Arc<Config>) -> Self {
        let mut b =
            Breakers { fallback: cfg.fallback.clone(), cfg, entries: BTreeMap::new(), timers: BTreeSet::new(), idle: BTreeSet::new(), refused: 0, dropped: 0 };
        let names: Vec<String> = b.cfg.dependencies.keys().cloned().collect();
        for name in names {
            b.insert(&name, None);
        }
        b
    }

    /// The number of breakers (configured and learned).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The number of learned dependencies' breakers.
    pub fn learned(&self) -> usize {
        self.idle.len()
    }

    fn insert(&mut self, dependency: &str, learned: Option<Millis>) {
        let alternatives =
            self.cfg.dependencies.get(dependency).map(|d| d.alternatives.iter().map(|a| Arc::<str>::from(a.as_str())).collect()).unwrap_or_default();
        let breaker = Breaker::new(self.cfg.breaker_for(dependency));
        let previous = breaker.state();
        let name: Arc<str> = dependency.into();
        if let Some(at) = learned {
            self.idle.insert((at, name.clone()));
        }
        self.entries.insert(name, Entry { breaker, alternatives, plan: Vec::new(), previous, timer: None, learned });
    }

    /// The entry of `dependency` heard of at `at`, learned if it is new; none when it is new
    /// and `learned_dependencies.max` are known already (`force`: an admin action, which may
    /// go beyond).
    fn entry(&mut self, dependency: &str, at: Millis, force: bool) -> Option<(Arc<str>, &mut Entry)> {
        if !self.entries.contains_key(dependency) {
            if !force && self.idle.len() >= self.cfg.learned_dependencies.max as usize {
                self.refused += 1;
                return None;
            }
            self.insert(dependency, Some(at));
        }
        let (name, e) = self.entries.get_key_value(dependency)?;
        let name = name.clone();
        if let Some(seen) = e.learned
            && seen < at
        {
            self.idle.remove(&(seen, name.clone()));
            self.idle.insert((at, name.clone()));
        }
        let e = self.entries.get_mut(dependency)?;
        if e.learned.is_some_and(|seen| seen < at) {
            e.learned = Some(at);
        }
        Some((name, e))
    }

    /// Files `name`'s timer again after its breaker changed.
    fn retime(&mut self, name: &Arc<str>) {
        let Some(e) = self.entries.get_mut(name) else { return };
        let next = e.breaker.next_timer();
        if next == e.timer {
            return;
        }
        if let Some(old) = e.timer.take() {
            self.timers.remove(&(old, name.clone()));
        }
        if let Some(due) = next {
            self.timers.insert((due, name.clone()));
        }
        e.timer = next;
    }

    /// A reloaded config: every breaker takes its new thresholds.
    pub fn reconfigure(&mut self, cfg: Arc<Config>) {
        for (name, e) in &mut self.entries {
            e.breaker.reconfigure(cfg.breaker_for(name));
        }
        self.cfg = cfg;
        let names: Vec<Arc<str>> = self.entries.keys().cloned().collect();
        for name in &names {
            self.retime(name);
        }
    }

    /// The failure weight at which `dependency`'s breaker trips.
    pub fn weight_threshold(&self, dependency: &str) -> f64 {
        self.cfg.breaker_for(dependency).weight_threshold
    }

    pub fn state(&self, dependency: &str) -> Option<BreakerStateKind> {
        self.entries.get(dependency).map(|e| e.breaker.state())
    }

    /// Records an outcome; appends the resulting `BreakerState`s to `out`. Returns false when it
    /// was refused: a new learned dependency at the cap.
    pub fn on_outcome(&mut self, ev: &OutcomeEvent, out: &mut Vec<BreakerState>) -> bool {
        let Some((name, e)) = self.entry(&ev.dependency, ev.ts, false) else { return false };
        let transitions = e.breaker.on_outcome(ev.ts, ev.ok, ev.error, ev.latency_ms);
        self.retime(&name);
        for t in transitions.into_iter().flatten() {
            self.publish(&name, t, out);
        }
        true
    }

    /// Fires the timers due by `now` (open → half-open, half-open → open after its wait), each
    /// breaker's first only (as `Breaker::advance`), in dependency order; then drops the learned
    /// dependencies idle for `learned_dependencies.evict_idle_after_s` whose breaker is closed.
    pub fn advance(&mut self, now: Millis, out: &mut Vec<BreakerState>) {
        let mut due: Vec<Arc<str>> = self.timers.iter().take_while(|(at, _)| *at <= now).map(|(_, name)| name.clone()).collect();
        due.sort();
        for name in due {
            let Some(e) = self.entries.get_mut(&name) else { continue };
            let t = e.breaker.advance(now);
            self.retime(&name);
            if let Some(t) = t {
                self.publish(&name, t, out);
            }
        }
        self.drop_idle(now);
    }

    fn drop_idle(&mut self, now: Millis) {
        let idle_ms = i64::from(self.cfg.learned_dependencies.evict_idle_after_s) * 1000;
        while let Some((seen, name)) = self.idle.first().cloned() {
            if seen.plus_ms(idle_ms) > now {
                break;
            }
            self.idle.remove(&(seen, name.clone()));
            let closed = self.entries.get(&name).is_some_and(|e| e.breaker.state() == BreakerStateKind::Closed);
            if closed {
                self.entries.remove(&name);
                self.dropped += 1;
            } else if let Some(e) = self.entries.get_mut(&name) {
                // Open, forced or disabled: kept, and looked at again an idle span later.
                e.learned = Some(now);
                self.idle.insert((now, name));
            }
        }
    }

    /// Applies an admin action (force_open, disable, metrics_only, reset) at `now`.
    pub fn admin(&mut self, dependency: &str, action: impl FnOnce(&mut Breaker, Millis) -> Option<Transition>, now: Millis, out: &mut Vec<BreakerState>) {
        let Some((name, e)) = self.entry(dependency, now, true) else { return };
        let t = action(&mut e.breaker, now);
        self.retime(&name);
        if let Some(t) = t {
            self.publish(&name, t, out);
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
        // Dependents whose plan names this dependency: configured ones only (a learned
        // dependency has no alternatives), so a transition costs no walk over every breaker.
        let dependents: Vec<Arc<str>> = self
            .cfg
            .dependencies
            .iter()
            .filter(|(_, d)| d.alternatives.iter().any(|a| **a == *name))
            .filter_map(|(n, _)| self.entries.get_key_value(n.as_str()).map(|(k, _)| k.clone()))
            .collect();
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

    fn ok(dep: &str, s: i64) -> OutcomeEvent {
        OutcomeEvent { ok: true, error: None, ..fail(dep, s) }
    }

    fn with_learned(max: u32, idle_s: u32) -> Arc<Config> {
        let mut c = (*cfg()).clone();
        c.learned_dependencies = crate::config::LearnedDependenciesConfig { max, evict_idle_after_s: idle_s };
        Arc::new(c)
    }

    #[test]
    fn learned_dependencies_are_capped_and_idle_ones_dropped() {
        let mut b = Breakers::new(with_learned(3, 100));
        let mut out = Vec::new();
        for (i, dep) in ["l1", "l2", "l3"].iter().enumerate() {
            assert!(b.on_outcome(&ok(dep, i as i64), &mut out));
        }
        assert_eq!((b.learned(), b.len()), (3, 3 + cfg().dependencies.len()));
        // A fourth is refused; known and configured ones still count.
        assert!(!b.on_outcome(&ok("l4", 5), &mut out));
        assert!(b.on_outcome(&ok("l1", 50), &mut out) && b.on_outcome(&fail("ai_primary", 5), &mut out));
        assert_eq!((b.refused, b.state("l4")), (1, None));
        // l3 trips (open): idle or not, it stays while open.
        for _ in 0..2 {
            b.on_outcome(&fail("l3", 60), &mut out);
        }
        assert_eq!(b.state("l3"), Some(Open));
        // At 105 s l2 (last heard of at 1 s) is idle and closed: dropped; l1 (50 s) is not yet.
        b.advance(Millis::from_secs(105), &mut out);
        assert_eq!((b.state("l2"), b.state("l1").is_some(), b.dropped), (None, true, 1));
        assert!(b.on_outcome(&ok("l4", 106), &mut out), "room again");
        // An admin action may name a new one beyond the cap.
        b.admin("l5", Breaker::force_open, Millis::from_secs(107), &mut out);
        assert_eq!(b.state("l5"), Some(ForcedOpen));
        // Configured dependencies are never dropped.
        b.advance(Millis::from_secs(100_000), &mut out);
        assert!(cfg().dependencies.keys().all(|d| b.state(d).is_some()));
    }

    #[test]
    fn time_touches_only_the_breakers_whose_timer_is_due() {
        // 100 000 learned dependencies, each heard of once; two trip. Moving time on fires the
        // two timers: the rest are not looked at (the timer index), and the fallback plans of
        // the configured ones are resolved without a walk over every breaker.
        let mut b = Breakers::new(with_learned(200_000, 86_400));
        let mut out = Vec::new();
        for i in 0..100_000 {
            b.on_outcome(&ok(&format!("dep-{i}"), 1), &mut out);
        }
        for dep in ["dep-7", "dep-99999"] {
            for _ in 0..2 {
                b.on_outcome(&fail(dep, 2), &mut out);
            }
        }
        assert_eq!(b.timers.len(), 2);
        out.clear();
        for s in 3..10_003 {
            b.advance(Millis::from_secs(s), &mut out);
        }
        let half_open: Vec<_> = out.iter().filter(|s| s.state == HalfOpen).map(|s| s.dependency.to_string()).collect();
        assert_eq!(half_open, ["dep-7", "dep-99999"]);
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

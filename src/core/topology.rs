//! The processor topology: one input event in, its outputs out, driven only by event time.
//! Live Kafka, the embedded demo and replay all feed this same struct; only sources and sinks
//! differ.
//!
//! Order of work for each event: the first event publishes every limit (reason `initial`); an
//! event later than any before it moves time forward (stale telemetry sources drop out, breaker
//! timers fire, finished minutes close and their alert rules run, idle users are swept); then the
//! event itself goes to its processor: requests → limiter → decisions; outcomes → breakers →
//! breaker states (→ adaptive limits, → alerts); admin actions → breakers (the same way);
//! telemetry → health → adaptive limits. With a demand model (`with_predictor`), requests are also
//! counted per model step, and each step boundary publishes a prediction; a forecast spike cuts
//! the limits (the `predicted` multiplier) and fires the proactive alert.

use std::sync::Arc;

use crate::config::{Config, TooFarAhead};
use crate::core::adaptive::AdaptiveLimits;
use crate::core::breaker::Breaker;
use crate::core::breakers::Breakers;
use crate::core::health::HealthView;
use crate::core::limiter::{ImportError, Limiter, SavedState};
use crate::core::monitor::Monitor;
use crate::core::predictor::{Predictor, Step};
use crate::core::strategy::StrategyTable;
use crate::core::usage::{Closed, PartitionUsage, UsageFold, cell_ms};
pub use crate::core::watermarks::Admit;
use crate::core::watermarks::Watermarks;
use crate::wire::events::{AdminAction, AdminEvent, InputEvent, InputTopic, OutcomeEvent, TelemetrySample};
use crate::wire::outputs::{BreakerState, Output};
use crate::wire::time::Millis;

mod event_time;
mod requests;
mod usage;

pub use event_time::{InputPartition, TooFarAheadError};
pub use requests::{Counted, QuotaState, UserQuota};
pub use usage::Views;

/// What the topology has done, for metrics and summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub outcomes: u64,
    pub telemetry: u64,
    pub admin: u64,
    pub allowed: u64,
    pub graced: u64,
    pub throttled: u64,
    pub unknown_tier: u64,
    pub limit_updates: u64,
    pub breaker_states: u64,
    pub alerts: u64,
    pub evicted_users: u64,
    pub predictions: u64,
    /// Events more than `event_time.allowed_lateness_s` behind the watermark (processed).
    pub late: u64,
    /// Events stamped more than `event_time.max_future_skew_s` ahead (refused or clamped).
    pub too_far_ahead: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("request type `{0}` is not configured")]
    UnknownRequestType(String),
    #[error(transparent)]
    Import(#[from] ImportError),
}

pub struct Topology {
    tiers: Vec<Arc<str>>,
    request_types: Vec<Arc<str>>,
    default_tier: usize,
    default_request_type: usize,
    strategies: StrategyTable,
    /// Per-user state, one limiter per input partition of the requests topic (replay uses
    /// partition 0), so a partition's state can be restored and dropped as it moves between
    /// instances.
    limiters: Vec<Option<Limiter>>,
    window_s: u32,
    evict_idle_after_s: u32,
    max_keys_per_partition: usize,
    limits: AdaptiveLimits,
    health: HealthView,
    breakers: Breakers,
    monitor: Monitor,
    /// The latest event time processed: timers fire on it.
    watermark: Option<Millis>,
    /// Each input partition's event time, and the watermark over them (`watermarks.rs`): an
    /// event too far ahead is refused before it moves anything.
    inputs: Watermarks<InputPartition>,
    /// What the caller knows time has reached besides the events (`run`: the wall clock).
    time_floor: Option<Millis>,
    too_far_ahead: TooFarAhead,
    sweep_every_ms: i64,
    next_sweep: Millis,
    counters: Counters,
    scratch_breakers: Vec<BreakerState>,
    /// The configured dependencies: only their breakers move the api multiplier (an outcome for
    /// any other name gets a breaker and published states, but must not cut every limit).
    upstream: Vec<Arc<str>>,
    predictor: Option<Predictor>,
    /// Per requests partition, the decisions counted per cell of event time (`usage.rs`), and
    /// the fold of every partition's cells the monitor and the predictor take.
    usage: Vec<Option<PartitionUsage>>,
    fold: UsageFold,
    publishes_usage: bool,
    scratch_closed: Vec<Closed>,
    /// Live: the global views' outputs, each with the fold position it came at, for the shell
    /// to publish (leader) or keep (follower); otherwise they go with the event's outputs.
    fold_outputs: Option<Vec<(Millis, Output)>>,
    spike_factor: f64,
    scratch_steps: Vec<Step>,
    /// The latest alerts (at most `RECENT_ALERTS`) and each scope's latest prediction, for the
    /// HTTP API.
    recent_alerts: std::collections::VecDeque<crate::wire::outputs::Alert>,
    predictions: std::collections::BTreeMap<String, crate::wire::outputs::Prediction>,
    /// Per scope, how the one-step-ahead forecasts did.
    prediction_errors: std::collections::BTreeMap<String, PredictionError>,
}

/// One scope's forecast error so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PredictionError {
    /// Actual minus predicted, requests per minute, for the latest step observed.
    pub last: f64,
    pub abs_sum: f64,
    pub steps: u64,
}

impl PredictionError {
    pub fn mean_absolute(&self) -> f64 {
        if self.steps == 0 { 0.0 } else { self.abs_sum / self.steps as f64 }
    }
}

/// How many of the latest alerts the topology keeps for queries.
pub const RECENT_ALERTS: usize = 1000;

fn index_of(names: &[Arc<str>], name: &str) -> Option<usize> {
    names.iter().position(|n| **n == *name)
}

impl Topology {
    /// Builds the processors from a validated config.
    pub fn new(cfg: Arc<Config>) -> Self {
        let tiers: Vec<Arc<str>> = cfg.tiers.keys().map(|k| Arc::from(k.as_str())).collect();
        let request_types: Vec<Arc<str>> = cfg.request_types.keys().map(|k| Arc::from(k.as_str())).collect();
        let tier_names: Vec<&str> = tiers.iter().map(|s| &**s).collect();
        let rt_names: Vec<&str> = request_types.iter().map(|s| &**s).collect();
        Topology {
            default_tier: index_of(&tiers, &cfg.limiter.default_tier).unwrap_or(0),
            default_request_type: index_of(&request_types, &cfg.limiter.default_request_type).unwrap_or(0),
            strategies: StrategyTable::compile(&cfg.throttle, &tier_names, &rt_names),
            limiters: Vec::new(),
            window_s: cfg.limiter.window_s,
            evict_idle_after_s: cfg.limiter.evict_idle_after_s,
            max_keys_per_partition: cfg.limiter.max_keys_per_partition as usize,
            limits: AdaptiveLimits::new(&cfg, &tier_names, &rt_names),
            health: HealthView::new(&cfg.health),
            breakers: Breakers::new(cfg.clone()),
            monitor: Monitor::new(&cfg.monitor, &cfg.alerts),
            watermark: None,
            inputs: Watermarks::new(event_time::watermark_config(&cfg.event_time)),
            time_floor: None,
            too_far_ahead: cfg.event_time.too_far_ahead,
            sweep_every_ms: i64::from(cfg.limiter.sweep_every_s) * 1000,
            next_sweep: Millis(i64::MIN),
            counters: Counters::default(),
            scratch_breakers: Vec::new(),
            upstream: cfg.dependencies.keys().map(|k| Arc::from(k.as_str())).collect(),
            predictor: None,
            usage: Vec::new(),
            fold: UsageFold::new(cell_ms(None), i64::from(cfg.monitor.lateness_s) * 1000),
            publishes_usage: false,
            scratch_closed: Vec::new(),
            fold_outputs: None,
            spike_factor: cfg.prediction.spike_factor,
            scratch_steps: Vec::new(),
            recent_alerts: std::collections::VecDeque::new(),
            predictions: std::collections::BTreeMap::new(),
            prediction_errors: std::collections::BTreeMap::new(),
            tiers,
            request_types,
        }
    }

    /// A reloaded config (`config::reload::needs_restart` found nothing that needs a restart):
    /// tier limits, the throttle table, breaker thresholds and alert rules change now; every
    /// limit is published again (as of the latest event time).
    pub fn reconfigure(&mut self, cfg: Arc<Config>, out: &mut Vec<Output>) {
        let tier_names: Vec<&str> = self.tiers.iter().map(|s| &**s).collect();
        let rt_names: Vec<&str> = self.request_types.iter().map(|s| &**s).collect();
        self.strategies = StrategyTable::compile(&cfg.throttle, &tier_names, &rt_names);
        self.monitor.set_rules(&cfg.alerts);
        let mut updates = Vec::new();
        let now = self.watermark.unwrap_or(Millis(0));
        self.limits.reconfigure(&cfg, &tier_names, &rt_names, now, &mut updates);
        self.breakers.reconfigure(cfg);
        // Before the first event nothing is published: the first event publishes every limit.
        if self.watermark.is_some() {
            self.push_limits(updates, out);
        }
    }

    /// Adds predictive limits (see `predictor.rs`); the shell loads and seeds the predictor.
    /// Usage cells then divide its step as well as the minute.
    pub fn with_predictor(mut self, predictor: Option<Predictor>) -> Self {
        let step = predictor.as_ref().map(Predictor::step_ms);
        self.fold = UsageFold::new(cell_ms(step), self.fold.lateness_ms());
        self.predictor = predictor;
        self
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn tracked_users(&self) -> usize {
        self.limiters.iter().flatten().map(Limiter::len).sum()
    }

    /// Keys the limiters dropped at their cap (`limiter.max_keys_per_partition`).
    pub fn displaced_users(&self) -> u64 {
        self.limiters.iter().flatten().map(|l| l.displaced).sum()
    }

    /// Breakers: (all, learned, outcomes refused at the learned cap, learned dropped as idle).
    pub fn breaker_counts(&self) -> (usize, usize, u64, u64) {
        (self.breakers.len(), self.breakers.learned(), self.breakers.refused, self.breakers.dropped)
    }

    /// Telemetry sources in the health view, and how many were displaced at its cap.
    pub fn health_sources(&self) -> (usize, u64) {
        (self.health.len(), self.health.displaced)
    }

    fn limiter(&mut self, partition: i32) -> &mut Limiter {
        let i = usize::try_from(partition).unwrap_or(0);
        if self.limiters.len() <= i {
            self.limiters.resize_with(i + 1, || None);
        }
        let (window_s, evict, cap) = (self.window_s, self.evict_idle_after_s, self.max_keys_per_partition);
        self.limiters[i].get_or_insert_with(|| Limiter::new(window_s, evict).with_cap(cap))
    }

    /// One user's limiter state in `partition` for a request type, for the changelog.
    pub fn saved_state(&self, partition: i32, user_id: &str, request_type: &str) -> Option<SavedState> {
        let rt = index_of(&self.request_types, request_type)?;
        let limiter = self.limiters.get(usize::try_from(partition).ok()?)?.as_ref()?;
        limiter.export(user_id, rt as u16)
    }

    /// Puts back one user's state in `partition` from the changelog.
    pub fn restore(&mut self, partition: i32, user_id: &str, request_type: &str, saved: &SavedState) -> Result<(), RestoreError> {
        let rt = index_of(&self.request_types, request_type).ok_or_else(|| RestoreError::UnknownRequestType(request_type.chars().take(64).collect()))?;
        Ok(self.limiter(partition).import(user_id, rt as u16, saved)?)
    }

    /// The configured request types.
    pub fn request_types(&self) -> &[Arc<str>] {
        &self.request_types
    }

    /// Forgets the state of a partition this instance no longer owns.
    pub fn drop_partition(&mut self, partition: i32) {
        self.inputs.revoke((InputTopic::Requests, partition));
        self.drop_usage(partition);
        if let Some(slot) = usize::try_from(partition).ok().and_then(|i| self.limiters.get_mut(i)) {
            *slot = None;
        }
    }

    /// Every current limit, as last published: the reason and event time of its last change
    /// (empty before the first event).
    pub fn limits_now(&self) -> Vec<crate::wire::outputs::LimitUpdate> {
        let mut out = Vec::new();
        if self.watermark.is_some() {
            self.limits.current(&mut out);
        }
        out
    }

    /// Whether `dependency` has a breaker (configured, or named by an outcome).
    pub fn has_breaker(&self, dependency: &str) -> bool {
        self.breakers.state(dependency).is_some()
    }

    /// Whether `dependency` is one of the configured dependencies.
    pub fn is_upstream(&self, dependency: &str) -> bool {
        self.upstream.iter().any(|d| **d == *dependency)
    }

    /// Every breaker's state, as of the latest event time.
    pub fn breakers_now(&self) -> Vec<BreakerState> {
        let mut out = Vec::new();
        if let Some(now) = self.watermark {
            self.breakers.current(now, &mut out);
        }
        out
    }

    /// The latest alerts in the order raised (a minute's rules are stamped with the minute's
    /// end, so `ts` is not quite in order), those at or after `since` when given.
    pub fn alerts_since(&self, since: Option<Millis>) -> Vec<crate::wire::outputs::Alert> {
        self.recent_alerts.iter().filter(|a| since.is_none_or(|s| a.ts >= s)).cloned().collect()
    }

    /// Each scope's one-step-ahead forecast error so far.
    pub fn prediction_errors(&self) -> impl Iterator<Item = (&str, &PredictionError)> {
        self.prediction_errors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Each scope's latest prediction.
    pub fn latest_predictions(&self) -> Vec<crate::wire::outputs::Prediction> {
        self.predictions.values().cloned().collect()
    }

    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// The latest event time seen.
    pub fn watermark(&self) -> Option<Millis> {
        self.watermark
    }

    /// Processes one event, appending its outputs to `out` (requests count in partition 0), with
    /// no check of its time: for tests and simulations whose input is in order.
    pub fn process(&mut self, event: InputEvent, out: &mut Vec<Output>) {
        self.process_in(0, event, Counted::No, out);
    }

    /// Processes one event whose requests count in the limiter of `partition`. A request the
    /// partition's restored state already counted (`Counted::Already`) is decided without being
    /// counted again.
    pub fn process_in(&mut self, partition: i32, event: InputEvent, counted: Counted, out: &mut Vec<Output>) {
        let ts = event.ts();
        self.advance(ts, out);
        match event {
            InputEvent::Request(r) => self.on_request(partition, counted, r, out),
            InputEvent::Outcome(o) => self.on_outcome(o, out),
            InputEvent::Telemetry(t) => self.on_telemetry(t, out),
            InputEvent::Admin(a) => self.on_admin(a, out),
        }
    }

    /// Every current limit (with `reason`) and every breaker's state as of the latest event
    /// time: what a new publisher of the control side writes so the compacted topics are whole
    /// (nothing before the first event, whose outputs include every limit anyway).
    pub fn snapshot(&self, reason: &str, out: &mut Vec<Output>) {
        let Some(now) = self.watermark else { return };
        let mut updates = Vec::new();
        self.limits.snapshot(now, reason, &mut updates);
        out.extend(updates.into_iter().map(Output::Limit));
        let mut states = Vec::new();
        self.breakers.snapshot(now, &mut states);
        out.extend(states.into_iter().map(Output::Breaker));
    }

    /// End of input: closes every usage cell and the monitor's open minutes (replay and backtest
    /// call this; a live service does not).
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        self.finish_usage(out);
        let mut alerts = Vec::new();
        self.monitor.finish(&mut alerts);
        self.push_alerts(alerts, out);
    }

    /// Moves the predictor to `now` (counting `requests` there, if any) and publishes what its
    /// step boundaries produced: predictions, the predicted multiplier, the proactive alert.
    fn predict(&mut self, now: Millis, requests: Option<f64>, out: &mut Vec<Output>) {
        let Some(p) = self.predictor.as_mut() else { return };
        let mut steps = std::mem::take(&mut self.scratch_steps);
        match requests {
            Some(n) => p.on_requests(now, n, &mut steps),
            None => p.advance(now, &mut steps),
        }
        for step in steps.drain(..) {
            if let (Some(o), Some(p)) = (step.observed, self.predictor.as_ref()) {
                let e = self.prediction_errors.entry(p.scope().to_string()).or_default();
                e.last = o.actual - o.predicted;
                e.abs_sum += (o.actual - o.predicted).abs();
                e.steps += 1;
            }
            if let Some(m) = step.multiplier {
                let mut updates = Vec::new();
                self.limits.set_predicted(m, step.at, &mut updates);
                self.push_limits(updates, out);
            }
            if let (Some(spike), Some(pred)) = (step.spike, step.prediction.as_ref()) {
                let mut alerts = Vec::new();
                self.monitor.on_predicted_spike(pred, self.spike_factor, spike.until, &mut alerts);
                self.push_alerts(alerts, out);
            }
            if let Some(pred) = step.prediction {
                self.counters.predictions += 1;
                self.predictions.insert(pred.scope.clone(), pred.clone());
                out.push(Output::Prediction(pred));
            }
        }
        self.scratch_steps = steps;
    }

    fn push_limits(&mut self, updates: Vec<crate::wire::outputs::LimitUpdate>, out: &mut Vec<Output>) {
        self.counters.limit_updates += updates.len() as u64;
        out.extend(updates.into_iter().map(Output::Limit));
    }

    fn push_alerts(&mut self, alerts: Vec<crate::wire::outputs::Alert>, out: &mut Vec<Output>) {
        self.counters.alerts += alerts.len() as u64;
        for a in &alerts {
            if self.recent_alerts.len() >= RECENT_ALERTS {
                self.recent_alerts.pop_front();
            }
            self.recent_alerts.push_back(a.clone());
        }
        out.extend(alerts.into_iter().map(Output::Alert));
    }

    fn on_outcome(&mut self, ev: OutcomeEvent, out: &mut Vec<Output>) {
        self.counters.outcomes += 1;
        let mut states = std::mem::take(&mut self.scratch_breakers);
        if !self.breakers.on_outcome(&ev, &mut states) {
            let mut alerts = Vec::new();
            let cap = self.breakers.learned();
            let what = "outcomes naming a new dependency are not tracked (no breaker)";
            self.monitor.on_table_full("learned_dependencies.max", what, ev.ts, cap, &mut alerts);
            self.push_alerts(alerts, out);
        }
        self.breaker_states(&mut states, out);
        self.scratch_breakers = states;
    }

    /// Publishes breaker states and lets the adaptive limits and the monitor react to them.
    fn breaker_states(&mut self, states: &mut Vec<BreakerState>, out: &mut Vec<Output>) {
        for s in states.drain(..) {
            let mut updates = Vec::new();
            if self.upstream.contains(&s.dependency) {
                self.limits.on_breaker(s.dependency.clone(), s.state, s.ts, &mut updates);
            }
            let mut alerts = Vec::new();
            let weight_threshold = self.breakers.weight_threshold(&s.dependency);
            self.monitor.on_breaker(&s, weight_threshold, &mut alerts);
            self.counters.breaker_states += 1;
            out.push(Output::Breaker(s));
            self.push_limits(updates, out);
            self.push_alerts(alerts, out);
        }
    }

    fn on_admin(&mut self, ev: AdminEvent, out: &mut Vec<Output>) {
        self.counters.admin += 1;
        let action = match ev.action {
            AdminAction::ForceOpen => Breaker::force_open,
            AdminAction::Disable => Breaker::disable,
            AdminAction::MetricsOnly => Breaker::metrics_only,
            AdminAction::Reset => Breaker::reset,
            AdminAction::OverrideLimit | AdminAction::ClearOverride => {
                // An unknown key changes nothing (the event names a tier or request type this
                // config does not have).
                let Some(i) = ev.key.as_deref().and_then(|k| self.limits.key_index(k)) else {
                    tracing::warn!(key = ?ev.key, "admin: no such limit, ignored");
                    return;
                };
                let value = match (ev.action, ev.rpm, ev.until) {
                    // An override already over (by the event's time, or the later event time a
                    // catch-up has reached) is no override.
                    (AdminAction::OverrideLimit, Some(rpm), Some(until)) if until > self.watermark.map_or(ev.ts, |w| w.max(ev.ts)) => Some((rpm, until)),
                    _ => None,
                };
                let mut updates = Vec::new();
                self.limits.set_override(i, value, ev.ts, &mut updates);
                self.push_limits(updates, out);
                return;
            }
        };
        let mut states = std::mem::take(&mut self.scratch_breakers);
        self.breakers.admin(&ev.dependency, action, ev.ts, &mut states);
        self.breaker_states(&mut states, out);
        self.scratch_breakers = states;
    }

    fn on_telemetry(&mut self, ev: TelemetrySample, out: &mut Vec<Output>) {
        self.counters.telemetry += 1;
        let ts = ev.ts;
        let displaced = self.health.displaced;
        if self.health.on_sample(ev) {
            self.health_changed(ts, out);
        }
        if self.health.displaced > displaced {
            let mut alerts = Vec::new();
            let cap = self.health.len();
            self.monitor.on_table_full(
                "health.max_sources",
                "a new telemetry source displaced the one whose latest sample was the oldest",
                ts,
                cap,
                &mut alerts,
            );
            self.push_alerts(alerts, out);
        }
        self.monitor.on_load(ts, self.health.current().worst());
    }

    fn health_changed(&mut self, now: Millis, out: &mut Vec<Output>) {
        let mut updates = Vec::new();
        self.limits.on_health(self.health.current(), now, &mut updates);
        self.push_limits(updates, out);
    }
}

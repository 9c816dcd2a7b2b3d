//! The monitor: per-minute metrics of the limiter's work and the alert rules over them.
//!
//! Minutes are event-time minutes. Decisions come as closed usage cells (`usage.rs`: every requests
//! partition's, whichever instance decided them), load from telemetry; a minute closes when the
//! usage fold's time passes its end, and its rules are evaluated then (alerts are stamped with
//! the minute's end, so they do not depend on when or where they were evaluated). Each rule has a
//! cool-down: it does not fire again within `cooldown_s` of firing, however long its condition
//! lasts. Breaker trips fire at once, with a cool-down per dependency.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::config::{AlertsConfig, MonitorConfig};
use crate::core::usage::Cell;
use crate::wire::outputs::{Alert, AlertSeverity, BreakerState, BreakerStateKind, Decision, FallbackStep, Prediction};
use crate::wire::time::Millis;

const MINUTE_MS: i64 = 60_000;

/// Metrics of one closed minute.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct MinuteMetrics {
    /// Start of the minute.
    pub minute: Millis,
    pub decisions: u64,
    pub allowed: u64,
    pub graced: u64,
    pub throttled: u64,
    /// Mean seconds of the strategies given to throttled requests.
    pub mean_throttle_delay_s: f64,
    /// Decisions per tier.
    pub tiers: BTreeMap<Arc<str>, u64>,
    /// Mean share of their grace allowance used by users that drew on grace or were throttled.
    pub grace_usage: f64,
    /// Mean of the worst utilisation reported during the minute.
    pub load: f64,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Open {
    m: MinuteMetrics,
    throttle_s: u64,
    grace_ppm: u64,
    grace_n: u64,
    load_sum: f64,
    load_n: u64,
}

/// The most minutes held open (usage and load ahead of the minutes closed).
const MAX_OPEN_MINUTES: usize = 1440;
/// Cool-downs kept before those over are forgotten (they are keyed by dependency for
/// breaker_tripped).
const MAX_COOLDOWNS: usize = 1000;

/// What a monitor holds, to hand over (`Topology::views`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MonitorState {
    open: Vec<Open>,
    closed_to: Option<Millis>,
    last_load: f64,
    history: Vec<MinuteMetrics>,
    last_fired: Vec<(String, String, Millis)>,
}

pub struct Monitor {
    rules: AlertsConfig,
    window: usize,
    /// Minutes not closed yet, by start: their usage (from the fold) and their load.
    open: BTreeMap<i64, Open>,
    /// The start of the first minute not closed (none before the first).
    closed_to: Option<Millis>,
    last_load: f64,
    history: VecDeque<MinuteMetrics>,
    last_fired: BTreeMap<(String, String), Millis>,
}

impl Monitor {
    /// New alert rules from a reloaded config; the minute's counts and the cool-downs stay.
    pub fn set_rules(&mut self, rules: &AlertsConfig) {
        self.rules = rules.clone();
    }

    pub fn new(monitor: &MonitorConfig, rules: &AlertsConfig) -> Self {
        Monitor {
            rules: rules.clone(),
            window: monitor.correlation_window_minutes as usize,
            open: BTreeMap::new(),
            closed_to: None,
            last_load: 0.0,
            history: VecDeque::new(),
            last_fired: BTreeMap::new(),
        }
    }

    /// Its open minutes, history and cool-downs, to hand over.
    pub fn state(&self) -> MonitorState {
        MonitorState {
            open: self.open.values().cloned().collect(),
            closed_to: self.closed_to,
            last_load: self.last_load,
            history: self.history.iter().cloned().collect(),
            last_fired: self.last_fired.iter().map(|((r, k), t)| (r.clone(), k.clone(), *t)).collect(),
        }
    }

    /// Takes over another instance's minutes and cool-downs (bounded as its own).
    pub fn take_over(&mut self, s: &MonitorState) {
        self.open = s.open.iter().take(MAX_OPEN_MINUTES).map(|o| (o.m.minute.0, o.clone())).collect();
        self.closed_to = s.closed_to;
        self.last_load = s.last_load;
        self.history = s.history.iter().rev().take(self.window).rev().cloned().collect();
        self.last_fired = s.last_fired.iter().take(MAX_COOLDOWNS).map(|(r, k, t)| ((r.clone(), k.clone()), *t)).collect();
    }

    /// Closed minutes, oldest first (at most the correlation window).
    pub fn history(&self) -> impl Iterator<Item = &MinuteMetrics> {
        self.history.iter()
    }

    fn minute_of(ts: Millis) -> Millis {
        Millis(ts.0.div_euclid(MINUTE_MS) * MINUTE_MS)
    }

    /// The open minute of `ts`: its own, or the first still open when its own has closed.
    fn open_at(&mut self, ts: Millis) -> Option<&mut Open> {
        let minute = Self::minute_of(ts).max(self.closed_to.unwrap_or(Millis(i64::MIN)));
        if self.open.len() >= MAX_OPEN_MINUTES && !self.open.contains_key(&minute.0) {
            return None;
        }
        Some(self.open.entry(minute.0).or_insert_with(|| Open { m: MinuteMetrics { minute, ..Default::default() }, ..Default::default() }))
    }

    /// Counts one decision (tests; the topology counts decisions into usage cells and gives the
    /// monitor closed cells, `on_usage`).
    pub fn on_decision(&mut self, d: &Decision, grace_used: Option<f64>) {
        let mut c = Cell::default();
        c.count(d, grace_used);
        self.on_usage(d.ts, &c);
    }

    /// Counts a closed usage cell (every partition's decisions from `start`, in its minute).
    pub fn on_usage(&mut self, start: Millis, c: &Cell) {
        let Some(o) = self.open_at(start) else { return };
        o.m.decisions += c.decisions;
        o.m.allowed += c.allowed;
        o.m.graced += c.graced;
        o.m.throttled += c.throttled;
        for (tier, n) in &c.tiers {
            *o.m.tiers.entry(tier.clone()).or_insert(0) += n;
        }
        o.throttle_s += c.throttle_s;
        o.grace_ppm += c.grace_ppm;
        o.grace_n += c.grace_n;
    }

    /// Notes the system's worst utilisation at `ts`.
    pub fn on_load(&mut self, ts: Millis, worst_utilisation: f64) {
        self.last_load = worst_utilisation;
        let Some(o) = self.open_at(ts) else { return };
        o.load_sum += worst_utilisation;
        o.load_n += 1;
    }

    /// A breaker state was published: a trip fires `breaker_tripped`, its value the failure
    /// weight in the window against the breaker's `weight_threshold` (a trip by failure or
    /// slow-call rate can come below it; the message gives the rates).
    pub fn on_breaker(&mut self, s: &BreakerState, weight_threshold: f64, out: &mut Vec<Alert>) {
        let rule = self.rules.breaker_tripped.clone();
        let tripped = s.state == BreakerStateKind::Open && s.previous != BreakerStateKind::Open;
        if !rule.enabled || !tripped || !self.cool(&("breaker_tripped".into(), s.dependency.to_string()), rule.cooldown_s, s.ts) {
            return;
        }
        let plan: Vec<String> = s
            .fallback
            .iter()
            .map(|f| match f {
                FallbackStep::Alternative { dependency } => format!("{dependency}"),
                FallbackStep::Cache { .. } => "cache".into(),
                FallbackStep::Rules => "rules".into(),
                FallbackStep::Template => "template".into(),
            })
            .collect();
        let retry = s.retry_at.map_or_else(|| "on reset".to_string(), |t| t.to_string());
        out.push(Alert {
            ts: s.ts,
            rule: "breaker_tripped",
            severity: rule.severity,
            title: format!("Circuit breaker for {} opened", s.dependency),
            message: format!(
                "{} failed: failure rate {:.0}%, slow calls {:.0}%, failure weight {} over {} calls; probes again at {retry}",
                s.dependency,
                s.failure_rate * 100.0,
                s.slow_call_rate * 100.0,
                s.failure_weight,
                s.calls
            ),
            suggested_action: format!(
                "Calls to {} go to the fallback plan ({}); check the dependency's health and status page",
                s.dependency,
                plan.join(" → ")
            ),
            value: s.failure_weight,
            threshold: weight_threshold,
        });
    }

    /// A table keyed by input reached its cap (`table`: which, `what`: what the cap did): fires
    /// `table_full`, with a cool-down per table.
    pub fn on_table_full(&mut self, table: &'static str, what: &str, at: Millis, cap: usize, out: &mut Vec<Alert>) {
        let rule = self.rules.table_full.clone();
        if !rule.enabled || !self.cool(&("table_full".into(), table.into()), rule.cooldown_s, at) {
            return;
        }
        out.push(Alert {
            ts: at,
            rule: "table_full",
            severity: rule.severity,
            title: format!("{table} is full ({cap})"),
            message: format!("{table} reached its cap of {cap}: {what}"),
            suggested_action: format!(
                "Check the inputs for names that should not be there (a client sending ids as names, garbage), or raise the cap (see `{table}` in docs/configuration.md)"
            ),
            value: cap as f64,
            threshold: cap as f64,
        });
    }

    /// The predictor started a cut ahead of a forecast spike: fires `predicted_spike`, the
    /// proactive alert (with its own cool-down per scope).
    pub fn on_predicted_spike(&mut self, p: &Prediction, spike_threshold: f64, until: Millis, out: &mut Vec<Alert>) {
        let rule = self.rules.predicted_spike.clone();
        if !rule.enabled || !self.cool(&("predicted_spike".into(), p.scope.clone()), rule.cooldown_s, p.ts) {
            return;
        }
        out.push(Alert {
            ts: p.ts,
            rule: "predicted_spike",
            severity: rule.severity,
            title: format!("Demand spike forecast: {:.1}× the baseline in the next {} minutes", p.spike_factor, p.horizon_minutes),
            message: format!(
                "{} forecasts {:.0} requests/min ({:.0}–{:.0}) against a baseline of {:.0}/min, above {spike_threshold}× with probability {:.2}",
                p.model, p.predicted, p.lower, p.upper, p.baseline, p.confidence
            ),
            suggested_action: format!(
                "Limits are cut to {:.0}% until {until}; scale the backends or warm caches ahead of it, or raise the limits if the capacity is there",
                100.0 / p.spike_factor
            ),
            value: p.spike_factor,
            threshold: spike_threshold,
        });
    }

    /// Whether the rule may fire at `now`; records the firing if so.
    fn cool(&mut self, key: &(String, String), cooldown_s: u32, now: Millis) -> bool {
        if let Some(last) = self.last_fired.get(key) {
            if now.0 - last.0 < i64::from(cooldown_s) * 1000 {
                return false;
            }
        }
        // Keyed by dependency for breaker_tripped: bounded by forgetting what no cool-down holds
        // any more.
        if self.last_fired.len() >= MAX_COOLDOWNS {
            let longest = i64::from(self.rules.longest_cooldown_s()) * 1000;
            self.last_fired.retain(|_, last| now.0 - last.0 < longest);
        }
        self.last_fired.insert(key.clone(), now);
        true
    }

    /// Moves the monitor's time to `now` (the usage fold's: every partition's decisions before
    /// it are counted), closing the minutes that end by then and evaluating their rules. Quiet
    /// minutes in between (no decisions, no load) count as minutes without throttling at the
    /// last known load, and are not evaluated themselves.
    pub fn advance(&mut self, now: Millis, out: &mut Vec<Alert>) {
        let minute = Self::minute_of(now);
        if self.closed_to.is_some_and(|c| c >= minute) {
            return;
        }
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= minute.0 {
                break;
            }
            let o = entry.remove();
            self.quiet_until(o.m.minute);
            self.close_minute(o, out);
        }
        self.quiet_until(minute);
        self.closed_to = Some(minute);
    }

    /// Quiet minutes from the first not closed up to `minute` go to the history.
    fn quiet_until(&mut self, minute: Millis) {
        if let Some(from) = self.closed_to {
            let gap = ((minute.0 - from.0) / MINUTE_MS).clamp(0, self.window as i64);
            for i in 0..gap {
                let start = Millis(minute.0 - (gap - i) * MINUTE_MS);
                self.push_history(MinuteMetrics { minute: start, load: self.last_load, ..Default::default() });
            }
        }
        self.closed_to = Some(minute);
    }

    /// Closes one minute and runs its rules.
    fn close_minute(&mut self, o: Open, out: &mut Vec<Alert>) {
        let closed = self.close(o);
        let end = closed.minute.plus_ms(MINUTE_MS);
        self.push_history(closed);
        self.closed_to = Some(end);
        self.evaluate(end, out);
    }

    /// End of input (a replay or backtest ran out): closes the open minutes so their alerts are
    /// not lost. A live service never calls this; its minutes close as time moves on.
    pub fn finish(&mut self, out: &mut Vec<Alert>) {
        while let Some((_, o)) = self.open.pop_first() {
            self.quiet_until(o.m.minute);
            self.close_minute(o, out);
        }
    }

    fn close(&mut self, o: Open) -> MinuteMetrics {
        let mut m = o.m;
        m.mean_throttle_delay_s = if m.throttled > 0 { o.throttle_s as f64 / m.throttled as f64 } else { 0.0 };
        m.grace_usage = if o.grace_n > 0 { o.grace_ppm as f64 / 1e6 / o.grace_n as f64 } else { 0.0 };
        m.load = if o.load_n > 0 { o.load_sum / o.load_n as f64 } else { self.last_load };
        m
    }

    fn push_history(&mut self, m: MinuteMetrics) {
        self.history.push_back(m);
        while self.history.len() > self.window {
            self.history.pop_front();
        }
    }

    fn evaluate(&mut self, end: Millis, out: &mut Vec<Alert>) {
        let Some(last) = self.history.iter().rev().find(|m| m.minute.plus_ms(MINUTE_MS) == end).cloned() else { return };
        let r = self.rules.throttling.clone();
        if r.enabled && last.throttled as f64 > r.threshold && self.cool(&("throttling".into(), String::new()), r.cooldown_s, end) {
            out.push(Alert {
                ts: end,
                rule: "throttling",
                severity: r.severity,
                title: "High throttling rate".into(),
                message: format!("{} requests throttled in the minute from {} (mean delay {:.1} s)", last.throttled, last.minute, last.mean_throttle_delay_s),
                suggested_action: "Check whether the surge is legitimate; raise tier limits or add capacity if it is".into(),
                value: last.throttled as f64,
                threshold: r.threshold,
            });
        }
        let r = self.rules.grace_usage.clone();
        if r.enabled && last.grace_usage > r.threshold && self.cool(&("grace_usage".into(), String::new()), r.cooldown_s, end) {
            out.push(Alert {
                ts: end,
                rule: "grace_usage",
                severity: r.severity,
                title: "Grace allowances running out".into(),
                message: format!("Users over their limit have used {:.0}% of their grace allowance on average", last.grace_usage * 100.0),
                suggested_action: "Users are consistently over their limits: review the tier baselines or contact the heaviest users".into(),
                value: last.grace_usage,
                threshold: r.threshold,
            });
        }
        let r = self.rules.throttle_load_correlation.clone();
        let throttled: u64 = self.history.iter().map(|m| m.throttled).sum();
        if r.enabled && self.history.len() >= 3 && throttled >= u64::from(r.min_throttled) {
            let xs: Vec<f64> = self.history.iter().map(|m| m.throttled as f64).collect();
            let ys: Vec<f64> = self.history.iter().map(|m| m.load).collect();
            if let Some(corr) = pearson(&xs, &ys) {
                if corr < r.threshold && self.cool(&("throttle_load_correlation".into(), String::new()), r.cooldown_s, end) {
                    out.push(Alert {
                        ts: end,
                        rule: "throttle_load_correlation",
                        severity: r.severity,
                        title: "Throttling does not follow system load".into(),
                        message: format!("Correlation between throttled requests and load over the last {} minutes is {corr:.2}", self.history.len()),
                        suggested_action: "Limits may be too tight for the real capacity: review tier baselines and the adaptive thresholds".into(),
                        value: corr,
                        threshold: r.threshold,
                    });
                }
            }
        }
    }
}

/// Pearson correlation; `None` when either series is constant.
pub fn pearson(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return None;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (xs[i] - mx, ys[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx <= f64::EPSILON || syy <= f64::EPSILON {
        return None;
    }
    Some(sxy / (sxx.sqrt() * syy.sqrt()))
}

impl AlertSeverity {
    pub fn name(self) -> &'static str {
        match self {
            AlertSeverity::Info => "info",
            AlertSeverity::Warning => "warning",
            AlertSeverity::Medium => "medium",
            AlertSeverity::High => "high",
            AlertSeverity::Critical => "critical",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::outputs::DecisionKind;

    fn decision(ts: Millis, kind: DecisionKind) -> Decision {
        crate::wire::outputs::test_decision(ts, kind)
    }

    fn monitor() -> Monitor {
        Monitor::new(&MonitorConfig::default(), &AlertsConfig::default())
    }

    fn minute(m: i64) -> Millis {
        Millis(m * MINUTE_MS)
    }

    #[test]
    fn a_predicted_spike_alerts_once_per_cooldown_and_scope() {
        let mut m = Monitor::new(&MonitorConfig::default(), &AlertsConfig::default());
        let p = |minute: i64, scope: &str| Prediction {
            ts: Millis(minute * MINUTE_MS),
            scope: scope.into(),
            horizon_start: Millis(minute * MINUTE_MS),
            horizon_minutes: 60,
            predicted: 600.0,
            lower: 500.0,
            upper: 700.0,
            baseline: 100.0,
            spike_factor: 6.0,
            confidence: 0.97,
            model: "poisson-5m".into(),
        };
        let mut out = Vec::new();
        m.on_predicted_spike(&p(0, "global"), 2.0, Millis(60 * MINUTE_MS), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].rule, out[0].severity, out[0].value, out[0].threshold), ("predicted_spike", AlertSeverity::High, 6.0, 2.0));
        assert!(out[0].title.contains("6.0×") && out[0].suggested_action.contains("17%"), "{:?}", out[0]);
        // Within the hour's cool-down: quiet; another scope has its own.
        m.on_predicted_spike(&p(59, "global"), 2.0, Millis(120 * MINUTE_MS), &mut out);
        m.on_predicted_spike(&p(59, "checkout"), 2.0, Millis(120 * MINUTE_MS), &mut out);
        assert_eq!(out.len(), 2);
        m.on_predicted_spike(&p(60, "global"), 2.0, Millis(120 * MINUTE_MS), &mut out);
        assert_eq!(out.len(), 3);
        // A shorter cool-down lets the second one through.
        let mut rules = AlertsConfig::default();
        rules.predicted_spike.cooldown_s = 600;
        let mut m = Monitor::new(&MonitorConfig::default(), &rules);
        let mut out = Vec::new();
        m.on_predicted_spike(&p(0, "global"), 2.0, Millis(0), &mut out);
        m.on_predicted_spike(&p(30, "global"), 2.0, Millis(0), &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn throttling_over_100_per_minute_warns_once_per_cooldown() {
        let mut mon = monitor();
        let mut alerts = Vec::new();
        for m in 0..10 {
            for i in 0..101 {
                mon.on_decision(&decision(minute(m).plus_ms(i), DecisionKind::Throttle), None);
            }
            mon.advance(minute(m + 1), &mut alerts);
        }
        let throttling: Vec<_> = alerts.iter().filter(|a| a.rule == "throttling").collect();
        // Fires at the end of minute 0 (t=1 min) and again once 300 s have passed (t=6 min).
        assert_eq!(throttling.iter().map(|a| a.ts).collect::<Vec<_>>(), vec![minute(1), minute(6)]);
        assert_eq!(throttling[0].severity, AlertSeverity::Warning);
        assert_eq!(throttling[0].value, 101.0);
        let last = mon.history().last().unwrap();
        assert_eq!((last.throttled, last.mean_throttle_delay_s), (101, 2.0));
    }

    #[test]
    fn a_long_gap_does_not_lose_the_closed_minutes_alerts() {
        let mut mon = monitor();
        let mut alerts = Vec::new();
        for i in 0..105 {
            mon.on_decision(&decision(minute(0).plus_ms(i), DecisionKind::Throttle), None);
        }
        mon.advance(minute(20).plus_ms(30_000), &mut alerts);
        assert_eq!(alerts.iter().map(|a| (a.rule, a.ts)).collect::<Vec<_>>(), vec![("throttling", minute(1))]);
    }

    #[test]
    fn finish_closes_the_last_minute() {
        let mut mon = monitor();
        let mut alerts = Vec::new();
        for i in 0..101 {
            mon.on_decision(&decision(minute(3).plus_ms(i), DecisionKind::Throttle), None);
        }
        mon.finish(&mut alerts);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].ts, minute(4));
    }

    #[test]
    fn a_monitor_that_takes_over_anothers_state_alerts_as_it_does() {
        let minutes = |mon: &mut Monitor, from: i64, to: i64, alerts: &mut Vec<Alert>| {
            for m in from..to {
                mon.on_load(minute(m), 0.1 * (m % 5) as f64);
                for i in 0..(if m % 3 == 0 { 150 } else { 20 }) {
                    mon.on_decision(&decision(minute(m).plus_ms(i), DecisionKind::Throttle), Some(0.9));
                }
                mon.advance(minute(m + 1), alerts);
            }
        };
        let mut a = monitor();
        let mut alerts = Vec::new();
        minutes(&mut a, 0, 7, &mut alerts);
        let state: MonitorState = serde_json::from_str(&serde_json::to_string(&a.state()).expect("json")).expect("state");
        let mut b = monitor();
        b.take_over(&state);
        let (mut after_a, mut after_b) = (Vec::new(), Vec::new());
        minutes(&mut a, 7, 30, &mut after_a);
        minutes(&mut b, 7, 30, &mut after_b);
        assert!(!after_a.is_empty());
        assert_eq!(after_b, after_a, "cool-downs and the window went over");
        assert_eq!(b.history().collect::<Vec<_>>(), a.history().collect::<Vec<_>>());
    }

    #[test]
    fn exactly_100_does_not_warn() {
        let mut mon = monitor();
        let mut alerts = Vec::new();
        for i in 0..100 {
            mon.on_decision(&decision(minute(0).plus_ms(i), DecisionKind::Throttle), None);
        }
        mon.advance(minute(1), &mut alerts);
        assert!(alerts.is_empty());
    }

    #[test]
    fn grace_usage_above_80_percent_is_high() {
        let mut mon = monitor();
        let mut alerts = Vec::new();
        mon.on_decision(&decision(minute(0), DecisionKind::AllowWithGrace), Some(0.9));
        mon.on_decision(&decision(minute(0), DecisionKind::AllowWithGrace), Some(0.8));
        mon.advance(minute(1), &mut alerts);
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].rule, alerts[0].severity), ("grace_usage", AlertSeverity::High));
        assert!((alerts[0].value - 0.85).abs() < 1e-12);
    }

    #[test]
    fn throttling_unrelated_to_load_raises_medium() {
        let mut mon = monitor();
        let mut alerts = Vec::new();
        // Load rises steadily while throttling alternates: no correlation.
        for m in 0..6i64 {
            mon.on_load(minute(m), 0.1 * m as f64);
            let n = if m % 2 == 0 { 60 } else { 0 };
            for i in 0..n {
                mon.on_decision(&decision(minute(m).plus_ms(i), DecisionKind::Throttle), None);
            }
            mon.advance(minute(m + 1), &mut alerts);
        }
        let corr: Vec<_> = alerts.iter().filter(|a| a.rule == "throttle_load_correlation").collect();
        assert_eq!(corr.len(), 1, "{alerts:?}");
        assert_eq!(corr[0].severity, AlertSeverity::Medium);
        assert!(corr[0].value < 0.3);
    }

    #[test]
    fn throttling_that_follows_load_is_fine() {
        let mut mon = monitor();
        let mut alerts = Vec::new();
        for m in 0..6i64 {
            mon.on_load(minute(m), 0.15 * m as f64);
            for i in 0..(m * 20) {
                mon.on_decision(&decision(minute(m).plus_ms(i), DecisionKind::Throttle), None);
            }
            mon.advance(minute(m + 1), &mut alerts);
        }
        assert!(alerts.iter().all(|a| a.rule != "throttle_load_correlation"), "{alerts:?}");
    }

    #[test]
    fn pearson_basics() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), None);
    }
}

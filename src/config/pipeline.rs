//! The pipeline configuration: one serde struct per component, every default written out here and
//! in `pipelines/default.toml` (a test holds the two equal). Loading and validation live in
//! `load.rs`; the state machines receive the validated values.
//!
//! Equality and serialisation are derived only for tests, so that in a normal build a field that
//! no code reads is a compile error (`dead_code` is denied in lib.rs): there is no dead config.

use std::collections::BTreeMap;

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

pub use crate::config::service::{ApiConfig, Guarantee, KafkaConfig, TopicPartitions, TopicsConfig};
use crate::wire::limits::InputLimits;
use crate::wire::outputs::{AlertSeverity, LoadSeverity};

/// The whole pipeline configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub limiter: LimiterConfig,
    /// Customer tiers by name. Giving this table replaces the default tiers.
    pub tiers: BTreeMap<String, TierConfig>,
    /// Request types by name. Giving this table replaces the default request types.
    pub request_types: BTreeMap<String, RequestTypeConfig>,
    /// The throttling strategy table, first matching rule wins.
    pub throttle: Vec<ThrottleRule>,
    pub health: HealthConfig,
    pub adaptive: AdaptiveConfig,
    /// Breaker settings for every dependency; `dependencies.NAME.breaker` overrides any of them.
    pub breaker: BreakerConfig,
    pub dependencies: BTreeMap<String, DependencyConfig>,
    /// Breakers for dependencies not in `dependencies`, learned from outcomes: how many, how long.
    pub learned_dependencies: LearnedDependenciesConfig,
    pub fallback: FallbackConfig,
    pub monitor: MonitorConfig,
    pub alerts: AlertsConfig,
    pub prediction: PredictionConfig,
    pub event_time: EventTimeConfig,
    /// How large an input record and each of its text fields may be.
    pub limits: InputLimits,
    pub api: ApiConfig,
    pub topics: TopicsConfig,
    pub kafka: KafkaConfig,
    /// Each configured dependency's breaker: `[breaker]` with its overrides applied (built at load).
    #[serde(skip)]
    pub resolved_breakers: BTreeMap<String, BreakerConfig>,
}

impl Config {
    /// The breaker settings of a dependency; unconfigured dependencies get `[breaker]`.
    pub fn breaker_for(&self, dependency: &str) -> &BreakerConfig {
        self.resolved_breakers.get(dependency).unwrap_or(&self.breaker)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct LimiterConfig {
    /// The quota window every limit is counted over, in seconds (limits are "per minute").
    pub window_s: u32,
    /// Tier applied to requests naming a tier that is not configured.
    pub default_tier: String,
    /// Request type applied to requests naming a type that is not configured.
    pub default_request_type: String,
    /// A user idle this long (event time) is forgotten. Must cover the window and every grace
    /// window, so forgetting never hands out quota early.
    pub evict_idle_after_s: u32,
    /// How often (event time) idle users are swept.
    pub sweep_every_s: u32,
    /// The most (user, request type) keys one requests partition's limiter tracks: a new key at
    /// the cap first displaces the least recently seen eighth.
    pub max_keys_per_partition: u32,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            window_s: 60,
            default_tier: "free".into(),
            default_request_type: "standard".into(),
            // An hour: the longest default grace window.
            evict_idle_after_s: 3600,
            sweep_every_s: 60,
            max_keys_per_partition: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Requests per minute when the system is healthy.
    pub baseline_rpm: u32,
    /// The adjusted limit never goes below this.
    pub minimum_guaranteed: u32,
    /// The adjusted limit never goes above this.
    pub maximum_burst: u32,
    /// Extra requests a user may make over the limit, once per grace window.
    pub grace_allowance: u32,
    /// The window the grace allowance is counted over, in seconds.
    pub grace_window_s: u32,
}

fn tier(baseline_rpm: u32, minimum_guaranteed: u32, maximum_burst: u32, grace_allowance: u32) -> TierConfig {
    TierConfig { baseline_rpm, minimum_guaranteed, maximum_burst, grace_allowance, grace_window_s: 3600 }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub struct RequestTypeConfig {
    /// The share of the tier's limits this request type gets (baseline, minimum and maximum alike).
    pub share: f64,
}

/// What a throttled request is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    Delay,
    RejectWithBackoff,
    QueueWithTimeout,
}

/// One row of the throttling table. Empty `tiers` / `request_types` match any.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub struct ThrottleRule {
    pub severity: LoadSeverity,
    #[serde(default)]
    pub tiers: Vec<String>,
    #[serde(default)]
    pub request_types: Vec<String>,
    pub strategy: StrategyKind,
    pub seconds: u32,
}

fn rule(severity: LoadSeverity, tiers: &[&str], request_types: &[&str], strategy: StrategyKind, seconds: u32) -> ThrottleRule {
    ThrottleRule {
        severity,
        tiers: tiers.iter().map(|s| s.to_string()).collect(),
        request_types: request_types.iter().map(|s| s.to_string()).collect(),
        strategy,
        seconds,
    }
}

/// The seed's table: critical load → enterprise delay 5 s, others reject with 30 s backoff;
/// high load → critical-business requests delay 2 s, others queue with a 10 s timeout;
/// normal load → delay 1 s.
fn default_throttle() -> Vec<ThrottleRule> {
    use LoadSeverity::*;
    use StrategyKind::*;
    vec![
        rule(Critical, &["enterprise"], &[], Delay, 5),
        rule(Critical, &[], &[], RejectWithBackoff, 30),
        rule(High, &[], &["critical_business"], Delay, 2),
        rule(High, &[], &[], QueueWithTimeout, 10),
        rule(Normal, &[], &[], Delay, 1),
    ]
}

/// How the CPU and memory of several sources are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    Mean,
    Max,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A source with no sample for this long (event time) is dropped from the view.
    pub stale_after_s: u32,
    /// How CPU and memory of several sources combine. Pools and queues are summed.
    pub cpu_memory_aggregate: Aggregate,
    /// The most sources in the view: a new one beyond it takes the place of the source whose
    /// latest sample is the oldest.
    pub max_sources: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { stale_after_s: 30, cpu_memory_aggregate: Aggregate::Mean, max_sources: 10_000 }
    }
}

/// Breakers of dependencies learned from outcomes (not in `[dependencies]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct LearnedDependenciesConfig {
    /// The most learned dependencies with a breaker; an outcome naming a new one beyond it is not
    /// tracked (counted, and the `table_full` alert fires).
    pub max: u32,
    /// A learned dependency whose breaker is closed and that no outcome named for this long
    /// (event time) is dropped.
    pub evict_idle_after_s: u32,
}

impl Default for LearnedDependenciesConfig {
    fn default() -> Self {
        LearnedDependenciesConfig { max: 1000, evict_idle_after_s: 3600 }
    }
}

/// One step of a multiplier table: above `above` utilisation, apply `multiplier`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub above: f64,
    pub multiplier: f64,
}

fn steps(pairs: &[(f64, f64)]) -> Vec<Step> {
    pairs.iter().map(|&(above, multiplier)| Step { above, multiplier }).collect()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    /// Load is `high` when the worst utilisation (CPU, memory, DB pool, queue) exceeds this.
    pub severity_high: f64,
    /// Load is `critical` above this.
    pub severity_critical: f64,
    /// Multiplier by max(cpu, memory); the highest step exceeded applies (seed: >0.9 → 0.3,
    /// >0.8 → 0.6, >0.7 → 0.8, else 1.0).
    pub resource: Vec<Step>,
    /// Multiplier by database pool utilisation.
    pub db: Vec<Step>,
    /// Multiplier by queue utilisation.
    pub queue: Vec<Step>,
    /// Multiplier by the upstream breakers' states; the lowest over all dependencies applies.
    pub api: ApiMultipliers,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            severity_high: 0.8,
            severity_critical: 0.9,
            resource: steps(&[(0.9, 0.3), (0.8, 0.6), (0.7, 0.8)]),
            db: steps(&[(0.9, 0.4), (0.75, 0.7)]),
            queue: steps(&[(0.9, 0.5), (0.7, 0.8)]),
            api: ApiMultipliers::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct ApiMultipliers {
    pub closed: f64,
    pub half_open: f64,
    pub open: f64,
    pub forced_open: f64,
    pub disabled: f64,
    pub metrics_only: f64,
}

impl Default for ApiMultipliers {
    fn default() -> Self {
        ApiMultipliers { closed: 1.0, half_open: 0.7, open: 0.5, forced_open: 0.5, disabled: 1.0, metrics_only: 1.0 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// The sliding window failures are counted over, in seconds (one bucket per second).
    pub window_s: u32,
    /// Trip when the summed failure weight in the window reaches this (seed rule).
    pub weight_threshold: f64,
    /// Trip when failures / calls ≥ this, once `minimum_calls` calls are in the window.
    pub failure_rate_threshold: f64,
    /// Trip when slow calls / calls ≥ this, once `minimum_calls` calls are in the window.
    pub slow_call_rate_threshold: f64,
    /// A call slower than this counts as slow.
    pub slow_call_duration_ms: u32,
    /// No rate decision below this many calls in the window (Resilience4j `minimumNumberOfCalls`).
    pub minimum_calls: u32,
    /// Calls let through in half-open before deciding (Resilience4j
    /// `permittedNumberOfCallsInHalfOpenState`).
    pub half_open_probes: u32,
    /// Half-open gives up on probes that have not all reported after this long and reopens
    /// (Resilience4j `maxWaitDurationInHalfOpenState`); 0 waits for them however long it takes.
    pub max_wait_in_half_open_s: u32,
    /// Time in open before half-open, after the first trip.
    pub recovery_timeout_s: u32,
    /// Each trip straight from half-open multiplies the open time by this.
    pub backoff_multiplier: f64,
    /// The open time never exceeds this.
    pub max_recovery_timeout_s: u32,
    /// Failure weight by error class (seed: timeout 2.0, rate_limit 1.5, server_error 2.5,
    /// other 0.5). A class of weight 0 is not a failure (client errors are the caller's).
    pub weights: ErrorWeights,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window_s: 60,
            weight_threshold: 10.0,
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 0.8,
            slow_call_duration_ms: 5000,
            minimum_calls: 20,
            half_open_probes: 5,
            max_wait_in_half_open_s: 0,
            recovery_timeout_s: 30,
            backoff_multiplier: 2.0,
            max_recovery_timeout_s: 300,
            weights: ErrorWeights::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct ErrorWeights {
    pub timeout: f64,
    pub rate_limit: f64,
    pub server_error: f64,
    pub client_error: f64,
    pub other: f64,
}

impl Default for ErrorWeights {
    fn default() -> Self {
        ErrorWeights { timeout: 2.0, rate_limit: 1.5, server_error: 2.5, client_error: 0.0, other: 0.5 }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub struct DependencyConfig {
    /// Other dependencies that can serve the same calls, in order of preference.
    #[serde(default)]
    pub alternatives: Vec<String>,
    /// Overrides of any `[breaker]` key for this dependency (merged at load time).
    #[serde(default)]
    pub breaker: toml::Table,
}

fn default_dependencies() -> BTreeMap<String, DependencyConfig> {
    let dep = |alts: &[&str]| DependencyConfig { alternatives: alts.iter().map(|s| s.to_string()).collect(), breaker: toml::Table::new() };
    BTreeMap::from([("ai_primary".to_string(), dep(&["ai_secondary"])), ("ai_secondary".to_string(), dep(&["ai_primary"])), ("database".to_string(), dep(&[]))])
}

/// A kind of fallback step, for ordering the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
#[serde(rename_all = "snake_case")]
pub enum FallbackKind {
    Alternative,
    Cache,
    Rules,
    Template,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// The order of the plan (seed: alternative provider, cache, rules, template).
    pub order: Vec<FallbackKind>,
    /// A cached response is served only for requests at least this similar (seed: 0.7).
    pub cache_min_similarity: f64,
    /// ... and only if its quality score exceeds this (seed: 0.6).
    pub cache_min_quality: f64,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        use FallbackKind::*;
        FallbackConfig { order: vec![Alternative, Cache, Rules, Template], cache_min_similarity: 0.7, cache_min_quality: 0.6 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Minutes of history the throttling/load correlation is computed over.
    pub correlation_window_minutes: u32,
    /// Seconds a request still counts in its own minute after its requests partition's time has
    /// passed the minute's end; minutes (and predictor steps) close once every requests
    /// partition is this far past them.
    pub lateness_s: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig { correlation_window_minutes: 15, lateness_s: 5 }
    }
}

/// A threshold rule evaluated on each closed minute.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    pub enabled: bool,
    pub threshold: f64,
    pub severity: AlertSeverity,
    /// The rule does not fire again within this many seconds of firing.
    pub cooldown_s: u32,
}

/// A rule that fires on an event (per subject, e.g. per dependency).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    pub enabled: bool,
    pub severity: AlertSeverity,
    pub cooldown_s: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Throttled requests in a minute above `threshold` (seed: 100/min, warning).
    pub throttling: ThresholdRule,
    /// Mean share of the grace allowance used by users drawing on grace (seed: 0.8, high).
    pub grace_usage: ThresholdRule,
    /// Throttling not explained by load: correlation below `threshold` (seed: 0.3, medium).
    pub throttle_load_correlation: CorrelationRule,
    /// A breaker opened.
    pub breaker_tripped: EventRule,
    /// The demand model forecasts a spike: the proactive alert that comes with the predictive cut.
    pub predicted_spike: EventRule,
    /// A table keyed by input reached its cap: learned dependencies, telemetry sources.
    pub table_full: EventRule,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields)]
pub struct CorrelationRule {
    pub enabled: bool,
    pub threshold: f64,
    pub severity: AlertSeverity,
    pub cooldown_s: u32,
    /// Evaluate only when at least this many throttles happened in the correlation window.
    pub min_throttled: u32,
}

impl AlertsConfig {
    /// The longest cool-down of any rule.
    pub fn longest_cooldown_s(&self) -> u32 {
        [
            self.throttling.cooldown_s,
            self.grace_usage.cooldown_s,
            self.throttle_load_correlation.cooldown_s,
            self.breaker_tripped.cooldown_s,
            self.predicted_spike.cooldown_s,
            self.table_full.cooldown_s,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            throttling: ThresholdRule { enabled: true, threshold: 100.0, severity: AlertSeverity::Warning, cooldown_s: 300 },
            grace_usage: ThresholdRule { enabled: true, threshold: 0.8, severity: AlertSeverity::High, cooldown_s: 300 },
            throttle_load_correlation: CorrelationRule { enabled: true, threshold: 0.3, severity: AlertSeverity::Medium, cooldown_s: 900, min_throttled: 100 },
            breaker_tripped: EventRule { enabled: true, severity: AlertSeverity::High, cooldown_s: 60 },
            table_full: EventRule { enabled: true, severity: AlertSeverity::Medium, cooldown_s: 3600 },
            predicted_spike: EventRule { enabled: true, severity: AlertSeverity::High, cooldown_s: 3600 },
        }
    }
}

/// Predictive limits: a demand model (`surgeguard fit`) forecasts the next horizon at each of its
/// steps from the request stream's counts, and a forecast spike cuts every limit ahead of it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct PredictionConfig {
    /// The model file; empty turns prediction off.
    pub model: String,
    /// Recent history to start from (a directory, file or glob, as `fit --history` reads); empty
    /// starts with no counts, and forecasts begin once the stream has filled the model's longest
    /// lag (a week for the default features).
    pub history: String,
    /// What `history` holds: `events` (one row per request, a `ts` column) or `series` (`ts,value`
    /// rows of counts per step).
    pub history_kind: HistoryKind,
    /// The key of published predictions.
    pub scope: String,
    /// A forecast is a spike when its mean over the horizon exceeds this × the baseline…
    pub spike_factor: f64,
    /// …with at least this probability under the model's predictive distribution.
    pub min_confidence: f64,
    /// The coverage of the published interval (lower, upper).
    pub coverage: f64,
    /// A request counts in its own step until event time has passed the step's end by this
    /// much; later ones are not counted (requests partitions are read in turns, so event time
    /// runs a little ahead of some of them).
    pub allowed_lateness_s: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    Events,
    Series,
}

impl Default for PredictionConfig {
    fn default() -> Self {
        PredictionConfig {
            model: String::new(),
            history: String::new(),
            history_kind: HistoryKind::Events,
            scope: "global".into(),
            spike_factor: 2.0,
            min_confidence: 0.8,
            coverage: 0.95,
            allowed_lateness_s: 60,
        }
    }
}

/// How event time is kept from one input's clock (`core/watermarks.rs`), in replay, the demo and
/// `run` alike.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct EventTimeConfig {
    /// An event stamped more than this many seconds ahead of the pipeline's time (the latest
    /// event time taken, its own partition's, and in `run` the wall clock) does not move time:
    /// `too_far_ahead` says what happens to it. 0 turns the check off.
    pub max_future_skew_s: u32,
    /// `dead_letter`: the event goes to the DLQ (replay: skipped) with the reason; `clamp`: it is
    /// processed at the pipeline's time instead of its own.
    pub too_far_ahead: TooFarAhead,
    /// An event more than this many seconds behind the pipeline's time (the latest event time
    /// taken) is late: it is processed, at its own time for its user's or dependency's
    /// state, never moving the pipeline's time back, and counted.
    pub allowed_lateness_s: u32,
}

impl Default for EventTimeConfig {
    fn default() -> Self {
        EventTimeConfig { max_future_skew_s: 300, too_far_ahead: TooFarAhead::DeadLetter, allowed_lateness_s: 60 }
    }
}

/// What happens to an event stamped too far ahead.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(rename_all = "snake_case")]
pub enum TooFarAhead {
    DeadLetter,
    Clamp,
}

impl Default for Config {
    fn default() -> Self {
        let request_types = BTreeMap::from([
            ("standard".to_string(), RequestTypeConfig { share: 1.0 }),
            ("critical_business".to_string(), RequestTypeConfig { share: 1.0 }),
            ("batch".to_string(), RequestTypeConfig { share: 0.5 }),
        ]);
        Config {
            limiter: LimiterConfig::default(),
            tiers: BTreeMap::from([
                ("free".to_string(), tier(60, 10, 120, 10)),
                ("pro".to_string(), tier(600, 100, 1200, 60)),
                ("enterprise".to_string(), tier(3000, 1000, 6000, 300)),
            ]),
            request_types,
            throttle: default_throttle(),
            health: HealthConfig::default(),
            adaptive: AdaptiveConfig::default(),
            breaker: BreakerConfig::default(),
            dependencies: default_dependencies(),
            learned_dependencies: LearnedDependenciesConfig::default(),
            fallback: FallbackConfig::default(),
            monitor: MonitorConfig::default(),
            alerts: AlertsConfig::default(),
            prediction: PredictionConfig::default(),
            event_time: EventTimeConfig::default(),
            limits: InputLimits::default(),
            api: ApiConfig::default(),
            topics: TopicsConfig::default(),
            kafka: KafkaConfig::default(),
            resolved_breakers: default_dependencies().into_keys().map(|name| (name, BreakerConfig::default())).collect(),
        }
    }
}

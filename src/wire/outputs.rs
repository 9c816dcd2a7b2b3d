//! Output records: the wire contract of the topics surgeguard writes (docs/topics.md; docs/design.md, "Wire contract").
//!
//! Field order here is the JSON field order; serialisation is deterministic (no maps with random
//! order, floats written shortest-round-trip), so a replay of the same input is byte-identical.

use std::sync::Arc;

use compact_str::CompactString;

use serde::{Deserialize, Serialize};

use crate::wire::time::Millis;

/// How loaded the protected system is, from the health view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadSeverity {
    #[default]
    Normal,
    High,
    Critical,
}

impl LoadSeverity {
    pub fn name(self) -> &'static str {
        match self {
            LoadSeverity::Normal => "normal",
            LoadSeverity::High => "high",
            LoadSeverity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Allow,
    AllowWithGrace,
    Throttle,
}

impl DecisionKind {
    /// Every kind, in declaration order (`kind as usize` is its index here).
    pub const ALL: [DecisionKind; 3] = [DecisionKind::Allow, DecisionKind::AllowWithGrace, DecisionKind::Throttle];
}

/// What a gateway should do with a throttled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Delay { seconds: u32 },
    RejectWithBackoff { seconds: u32 },
    QueueWithTimeout { seconds: u32 },
}

impl Strategy {
    pub fn seconds(self) -> u32 {
        match self {
            Strategy::Delay { seconds } | Strategy::RejectWithBackoff { seconds } | Strategy::QueueWithTimeout { seconds } => seconds,
        }
    }
}

/// One limiter decision, keyed by `user_id` on `surgeguard.decisions`.
///
/// `limit`, `remaining`, `reset_s` and `policy` are the IETF RateLimit fields
/// (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Limit`, `RateLimit-Remaining`,
/// `RateLimit-Reset` and `RateLimit-Policy`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub request_id: CompactString,
    pub ts: Millis,
    pub user_id: CompactString,
    pub tier: Arc<str>,
    pub request_type: Arc<str>,
    pub decision: DecisionKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    pub limit: u32,
    pub remaining: u32,
    pub reset_s: u64,
    pub policy: Arc<str>,
    pub severity: LoadSeverity,
    /// The tier the request named when it was not configured (the default tier was applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_tier: Option<CompactString>,
    /// The request type the request named when it was not configured (the default was applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_request_type: Option<CompactString>,
}

/// The factors applied to a baseline limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Multipliers {
    pub resource: f64,
    pub db: f64,
    pub api: f64,
    pub queue: f64,
    pub predicted: f64,
}

impl Multipliers {
    pub const NEUTRAL: Multipliers = Multipliers { resource: 1.0, db: 1.0, api: 1.0, queue: 1.0, predicted: 1.0 };

    pub fn product(&self) -> f64 {
        self.resource * self.db * self.api * self.queue * self.predicted
    }
}

/// The current limit of one `tier/request_type`, keyed by `key` on the compacted `surgeguard.limits`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitUpdate {
    pub key: Arc<str>,
    pub ts: Millis,
    pub baseline_rpm: u32,
    pub adjusted_rpm: u32,
    pub minimum_guaranteed: u32,
    pub maximum_burst: u32,
    pub multipliers: Multipliers,
    pub severity: LoadSeverity,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerStateKind {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
    MetricsOnly,
}

impl BreakerStateKind {
    pub const ALL: [BreakerStateKind; 6] = [
        BreakerStateKind::Closed,
        BreakerStateKind::Open,
        BreakerStateKind::HalfOpen,
        BreakerStateKind::ForcedOpen,
        BreakerStateKind::Disabled,
        BreakerStateKind::MetricsOnly,
    ];

    /// The name on the wire (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerStateKind::Closed => "closed",
            BreakerStateKind::Open => "open",
            BreakerStateKind::HalfOpen => "half_open",
            BreakerStateKind::ForcedOpen => "forced_open",
            BreakerStateKind::Disabled => "disabled",
            BreakerStateKind::MetricsOnly => "metrics_only",
        }
    }
    /// Whether calls to the dependency should be routed to its fallback plan.
    pub fn needs_fallback(self) -> bool {
        matches!(self, BreakerStateKind::Open | BreakerStateKind::ForcedOpen | BreakerStateKind::HalfOpen)
    }
}

/// One step of the fallback plan for a dependency whose breaker does not let calls through.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FallbackStep {
    /// Call this other dependency instead; its breaker is closed.
    Alternative { dependency: Arc<str> },
    /// Serve a cached response to a similar request.
    Cache { min_similarity: f64, min_quality: f64 },
    /// Answer from rules.
    Rules,
    /// Answer from a static template.
    Template,
}

/// A breaker's state, keyed by `dependency` on the compacted `surgeguard.breakers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerState {
    pub dependency: Arc<str>,
    pub ts: Millis,
    pub state: BreakerStateKind,
    pub previous: BreakerStateKind,
    pub failure_weight: f64,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub calls: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Millis>,
    /// In half-open: how many trial calls gateways may let through before the breaker decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
    pub fallback: Vec<FallbackStep>,
}

/// A demand forecast, keyed by `scope` on `surgeguard.predictions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub ts: Millis,
    pub scope: String,
    pub horizon_start: Millis,
    pub horizon_minutes: u32,
    pub predicted: f64,
    pub lower: f64,
    pub upper: f64,
    pub baseline: f64,
    pub spike_factor: f64,
    pub confidence: f64,
    pub model: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    Info,
    Warning,
    Medium,
    High,
    Critical,
}

/// An alert, keyed by `rule` on `surgeguard.alerts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub ts: Millis,
    pub rule: &'static str,
    pub severity: AlertSeverity,
    pub title: String,
    pub message: String,
    pub suggested_action: String,
    pub value: f64,
    pub threshold: f64,
}

/// Any output, tagged by the topic it goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Decision(Decision),
    Limit(LimitUpdate),
    Breaker(BreakerState),
    Prediction(Prediction),
    Alert(Alert),
}

impl Output {
    /// The short topic names (the part after `surgeguard.`), indexed by [`Output::kind`].
    pub const TOPICS: [&'static str; 5] = ["decisions", "limits", "breakers", "predictions", "alerts"];

    /// The output's index in [`Output::TOPICS`].
    pub fn kind(&self) -> usize {
        match self {
            Output::Decision(_) => 0,
            Output::Limit(_) => 1,
            Output::Breaker(_) => 2,
            Output::Prediction(_) => 3,
            Output::Alert(_) => 4,
        }
    }

    /// The short topic name (the part after `surgeguard.`).
    pub fn topic(&self) -> &'static str {
        Self::TOPICS[self.kind()]
    }

    /// The Kafka message key docs/topics.md assigns to this output.
    pub fn key(&self) -> &str {
        match self {
            Output::Decision(d) => &d.user_id,
            Output::Limit(l) => &l.key,
            Output::Breaker(b) => &b.dependency,
            Output::Prediction(p) => &p.scope,
            Output::Alert(a) => a.rule,
        }
    }
}

/// A pro-tier decision of `kind` at `ts` for the tests of what consumes decisions (a throttle
/// carries a 2 s delay).
#[cfg(test)]
pub(crate) fn test_decision(ts: crate::wire::time::Millis, kind: DecisionKind) -> Decision {
    Decision {
        request_id: "r".into(),
        ts,
        user_id: "u".into(),
        tier: "pro".into(),
        request_type: "standard".into(),
        decision: kind,
        strategy: (kind == DecisionKind::Throttle).then_some(Strategy::Delay { seconds: 2 }),
        limit: 10,
        remaining: 0,
        reset_s: 1,
        policy: "10;w=60".into(),
        severity: LoadSeverity::Normal,
        unknown_tier: None,
        unknown_request_type: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_wire_form() {
        let s = serde_json::to_string(&Strategy::RejectWithBackoff { seconds: 30 }).unwrap();
        assert_eq!(s, r#"{"reject_with_backoff":{"seconds":30}}"#);
    }

    #[test]
    fn tagged_line_has_topic_first() {
        let alert = Output::Alert(Alert {
            ts: Millis(0),
            rule: "breaker_tripped",
            severity: AlertSeverity::High,
            title: "t".into(),
            message: "m".into(),
            suggested_action: "a".into(),
            value: 1.0,
            threshold: 1.0,
        });
        let mut buf = Vec::new();
        alert.write_tagged_line(&mut buf).unwrap();
        let line = String::from_utf8(buf).unwrap();
        assert!(line.starts_with(r#"{"topic":"alerts","ts":"1970-01-01T00:00:00.000Z","rule""#), "{line}");
        assert!(line.ends_with("}\n"));
    }
}

//! Input events, as the rest of the crate sees them after decoding (see `decode.rs`).
//!
//! These are validated, owned values: a `RequestEvent` here always has a cost ≥ 1, a
//! `TelemetrySample` always has utilisations in 0..=1. Producers write the JSON forms described in
//! docs/topics.md; unknown fields are ignored so producers can add fields without breaking us.

use compact_str::CompactString;

use crate::wire::time::Millis;
use serde::{Deserialize, Serialize};

/// One API request, keyed by `user_id` on `surgeguard.requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestEvent {
    pub id: CompactString,
    pub ts: Millis,
    pub user_id: CompactString,
    pub tier: CompactString,
    pub request_type: CompactString,
    /// Weight of the request in quota units (default 1).
    pub cost: u32,
}

/// Why an upstream call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Timeout,
    RateLimit,
    ServerError,
    ClientError,
    Other,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 5] = [ErrorClass::Timeout, ErrorClass::RateLimit, ErrorClass::ServerError, ErrorClass::ClientError, ErrorClass::Other];

    /// The class with this wire name (`timeout`, `rate_limit`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "timeout" => ErrorClass::Timeout,
            "rate_limit" => ErrorClass::RateLimit,
            "server_error" => ErrorClass::ServerError,
            "client_error" => ErrorClass::ClientError,
            "other" => ErrorClass::Other,
            _ => return None,
        })
    }
}

/// The outcome of one call to a dependency, keyed by `dependency` on `surgeguard.outcomes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeEvent {
    pub ts: Millis,
    pub dependency: CompactString,
    pub ok: bool,
    /// Set when `ok` is false (a failure without a class counts as `other`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorClass>,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<CompactString>,
}

/// A host's resource sample, keyed by `source` on `surgeguard.telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetrySample {
    pub ts: Millis,
    pub source: String,
    pub cpu: f64,
    pub memory: f64,
    pub db_connections_in_use: u32,
    pub db_connections_max: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<u64>,
}

/// What an operator does to a dependency's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAction {
    /// Refuse every call until reset.
    ForceOpen,
    /// Let every call through and stop recording.
    Disable,
    /// Record and report, never open.
    MetricsOnly,
    /// Back to closed with an empty window and no backoff.
    Reset,
    /// A temporary limit for one `tier/request_type` key (`key`, `rpm`, `until`).
    OverrideLimit,
    /// Ends a key's override before its time (`key`).
    ClearOverride,
}

impl AdminAction {
    /// Whether the action is on a limit (keyed by `key`) rather than a breaker (by `dependency`).
    pub fn on_limit(self) -> bool {
        matches!(self, AdminAction::OverrideLimit | AdminAction::ClearOverride)
    }
}

/// An operator's action, keyed by `dependency` (breaker actions) or `key` (limit overrides) on
/// `surgeguard.admin`. Admin actions are events like any other, so a replay of the log
/// reproduces them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminEvent {
    pub ts: Millis,
    /// The breaker acted on (empty for limit actions).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dependency: String,
    pub action: AdminAction,
    /// The limit acted on, `tier/request_type` (limit actions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The override's limit in requests per minute (override_limit only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// When the override ends (override_limit only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<Millis>,
    /// Who did it, for the audit trail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// Any input event, tagged by the topic it came from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputEvent {
    Request(RequestEvent),
    Outcome(OutcomeEvent),
    Telemetry(TelemetrySample),
    Admin(AdminEvent),
}

impl InputEvent {
    /// The input topic's short name.
    pub fn topic(&self) -> InputTopic {
        match self {
            InputEvent::Request(_) => InputTopic::Requests,
            InputEvent::Outcome(_) => InputTopic::Outcomes,
            InputEvent::Telemetry(_) => InputTopic::Telemetry,
            InputEvent::Admin(_) => InputTopic::Admin,
        }
    }

    /// Appends the replay form: the event's JSON with a leading `"topic"` field, then a newline.
    pub fn write_tagged_line(&self, buf: &mut Vec<u8>) -> serde_json::Result<()> {
        buf.extend_from_slice(b"{\"topic\":\"");
        buf.extend_from_slice(self.topic().name().as_bytes());
        buf.push(b'"');
        let start = buf.len();
        match self {
            InputEvent::Request(e) => serde_json::to_writer(&mut *buf, e)?,
            InputEvent::Outcome(e) => serde_json::to_writer(&mut *buf, e)?,
            InputEvent::Telemetry(e) => serde_json::to_writer(&mut *buf, e)?,
            InputEvent::Admin(e) => serde_json::to_writer(&mut *buf, e)?,
        }
        buf[start] = b','; // the event's own `{` becomes the `,` after the topic
        buf.push(b'\n');
        Ok(())
    }

    pub fn ts(&self) -> Millis {
        match self {
            InputEvent::Request(e) => e.ts,
            InputEvent::Outcome(e) => e.ts,
            InputEvent::Telemetry(e) => e.ts,
            InputEvent::Admin(e) => e.ts,
        }
    }

    /// Restamps the event (an event too far ahead, processed at the pipeline's time).
    pub fn set_ts(&mut self, ts: Millis) {
        match self {
            InputEvent::Request(e) => e.ts = ts,
            InputEvent::Outcome(e) => e.ts = ts,
            InputEvent::Telemetry(e) => e.ts = ts,
            InputEvent::Admin(e) => e.ts = ts,
        }
    }
}

/// The input topics, by their short names (the part after `surgeguard.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputTopic {
    Requests,
    Outcomes,
    Telemetry,
    Admin,
}

impl InputTopic {
    pub const ALL: [InputTopic; 4] = [InputTopic::Requests, InputTopic::Outcomes, InputTopic::Telemetry, InputTopic::Admin];

    /// The input topic a short name (`requests`, …) names.
    pub fn from_name(name: &str) -> Option<InputTopic> {
        InputTopic::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            InputTopic::Requests => "requests",
            InputTopic::Outcomes => "outcomes",
            InputTopic::Telemetry => "telemetry",
            InputTopic::Admin => "admin",
        }
    }
}

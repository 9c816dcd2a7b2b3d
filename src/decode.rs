//! Bytes → typed input events, as pure functions. Never panics: every failure is a `DecodeError`
//! naming the field and what was expected, which the shell sends to the DLQ (or, in replay,
//! reports with the line number).

use std::borrow::Cow;

use serde::Deserialize;

use crate::events::{
    AdminAction, AdminEvent, ErrorClass, InputEvent, InputTopic, OutcomeEvent, RequestEvent, TelemetrySample,
};
use crate::time::{Millis, TimeError};

/// Why an input could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("input is not valid UTF-8 at byte {0}")]
    NotUtf8(usize),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Valid JSON with a field of the wrong type, a missing field or an unknown enum value.
    #[error("field `{field}`: {reason}")]
    Field { field: String, reason: String },
    #[error("field `ts`: {0}")]
    Time(#[from] TimeError),
    #[error("field `topic`: expected one of requests, outcomes, telemetry, admin, got `{0}`")]
    UnknownTopic(String),
}

impl DecodeError {
    /// A short stable name for the error kind, used in DLQ headers and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::NotUtf8(_) => "not_utf8",
            DecodeError::Json(_) => "invalid_json",
            DecodeError::Invalid { .. } | DecodeError::Field { .. } => "invalid_field",
            DecodeError::Time(_) => "invalid_timestamp",
            DecodeError::UnknownTopic(_) => "unknown_topic",
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid { field, reason: reason.into() }
}

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))
}

/// Parses already-validated text (serde_json's `StrRead` does not validate strings again).
fn json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|e| explain::<T>(text, e))
}

/// Names the field behind a serde_json error when the JSON itself was valid, by parsing again
/// with the path tracked (on the error path only, so decoding stays fast).
fn explain<'a, T: Deserialize<'a>>(text: &'a str, e: serde_json::Error) -> DecodeError {
    if !e.is_data() {
        return DecodeError::Json(e.to_string());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let Err(pe) = serde_path_to_error::deserialize::<_, T>(&mut de) else { return DecodeError::Json(e.to_string()) };
    let path = pe.path().to_string();
    let full = pe.into_inner().to_string();
    let reason = full.split(" at line ").next().unwrap_or(&full).to_string();
    if path.is_empty() || path == "." {
        if let Some(name) = reason.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            return DecodeError::Field { field: name.to_string(), reason: "missing".into() };
        }
        return DecodeError::Json(full);
    }
    DecodeError::Field { field: path, reason }
}

fn non_empty(field: &'static str, value: Cow<'_, str>) -> Result<String, DecodeError> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    Ok(value.into_owned())
}

fn unit_interval(field: &'static str, v: f64) -> Result<f64, DecodeError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(field, format!("utilisation must be within 0..1, got {v}")))
    }
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    tier: Cow<'a, str>,
    #[serde(borrow)]
    request_type: Cow<'a, str>,
    cost: Option<f64>,
}

/// Decodes a `RequestEvent` from JSON bytes.
pub fn decode_request(bytes: &[u8]) -> Result<RequestEvent, DecodeError> {
    decode_request_str(utf8(bytes)?)
}

fn decode_request_str(text: &str) -> Result<RequestEvent, DecodeError> {
    let raw: RawRequest = json(text)?;
    let cost = match raw.cost {
        None => 1,
        Some(c) if c < 0.0 => return Err(invalid("cost", format!("must not be negative, got {c}"))),
        Some(c) if c.fract() != 0.0 || c < 1.0 || c > u32::MAX as f64 => {
            return Err(invalid("cost", format!("expected a whole number ≥ 1, got {c}")));
        }
        Some(c) => c as u32,
    };
    Ok(RequestEvent {
        ts: Millis::parse_rfc3339(&raw.ts)?,
        id: non_empty("id", raw.id)?,
        user_id: non_empty("user_id", raw.user_id)?,
        tier: non_empty("tier", raw.tier)?,
        request_type: non_empty("request_type", raw.request_type)?,
        cost,
    })
}

#[derive(Deserialize)]
struct RawOutcome<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    dependency: Cow<'a, str>,
    ok: bool,
    error: Option<ErrorClass>,
    latency_ms: f64,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
}

/// Decodes an `OutcomeEvent` from JSON bytes.
pub fn decode_outcome(bytes: &[u8]) -> Result<OutcomeEvent, DecodeError> {
    decode_outcome_str(utf8(bytes)?)
}

fn decode_outcome_str(text: &str) -> Result<OutcomeEvent, DecodeError> {
    let raw: RawOutcome = json(text)?;
    if raw.ok && raw.error.is_some() {
        return Err(invalid("error", "must be absent when `ok` is true"));
    }
    if !(raw.latency_ms >= 0.0) {
        return Err(invalid("latency_ms", format!("must be ≥ 0, got {}", raw.latency_ms)));
    }
    Ok(OutcomeEvent {
        ts: Millis::parse_rfc3339(&raw.ts)?,
        dependency: non_empty("dependency", raw.dependency)?,
        ok: raw.ok,
        error: if raw.ok { None } else { Some(raw.error.unwrap_or(ErrorClass::Other)) },
        latency_ms: raw.latency_ms,
        request_id: raw.request_id.map(Cow::into_owned),
    })
}

#[derive(Deserialize)]
struct RawTelemetry<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    cpu: f64,
    memory: f64,
    db_connections_in_use: u32,
    db_connections_max: u32,
    queue_depth: Option<u64>,
    queue_capacity: Option<u64>,
}

/// Decodes a `TelemetrySample` from JSON bytes.
pub fn decode_telemetry(bytes: &[u8]) -> Result<TelemetrySample, DecodeError> {
    decode_telemetry_str(utf8(bytes)?)
}

fn decode_telemetry_str(text: &str) -> Result<TelemetrySample, DecodeError> {
    let raw: RawTelemetry = json(text)?;
    if raw.db_connections_max == 0 {
        return Err(invalid("db_connections_max", "must be ≥ 1"));
    }
    if raw.db_connections_in_use > raw.db_connections_max {
        return Err(invalid(
            "db_connections_in_use",
            format!(
                "{} exceeds db_connections_max {}",
                raw.db_connections_in_use, raw.db_connections_max
            ),
        ));
    }
    match (raw.queue_depth, raw.queue_capacity) {
        (_, Some(0)) => return Err(invalid("queue_capacity", "must be ≥ 1")),
        (Some(_), None) => return Err(invalid("queue_capacity", "required with queue_depth")),
        (None, Some(_)) => return Err(invalid("queue_depth", "required with queue_capacity")),
        (Some(d), Some(c)) if d > c => {
            return Err(invalid("queue_depth", format!("{d} exceeds queue_capacity {c}")));
        }
        _ => {}
    }
    Ok(TelemetrySample {
        ts: Millis::parse_rfc3339(&raw.ts)?,
        source: non_empty("source", raw.source)?,
        cpu: unit_interval("cpu", raw.cpu)?,
        memory: unit_interval("memory", raw.memory)?,
        db_connections_in_use: raw.db_connections_in_use,
        db_connections_max: raw.db_connections_max,
        queue_depth: raw.queue_depth,
        queue_capacity: raw.queue_capacity,
    })
}

#[derive(Deserialize)]
struct RawAdmin<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    dependency: Cow<'a, str>,
    action: AdminAction,
    #[serde(borrow)]
    actor: Option<Cow<'a, str>>,
}

/// Decodes an `AdminEvent` from JSON bytes.
pub fn decode_admin(bytes: &[u8]) -> Result<AdminEvent, DecodeError> {
    decode_admin_str(utf8(bytes)?)
}

fn decode_admin_str(text: &str) -> Result<AdminEvent, DecodeError> {
    let raw: RawAdmin = json(text)?;
    Ok(AdminEvent {
        ts: Millis::parse_rfc3339(&raw.ts)?,
        dependency: non_empty("dependency", raw.dependency)?,
        action: raw.action,
        actor: raw.actor.map(Cow::into_owned),
    })
}

/// Decodes the value of a message from the given input topic.
pub fn decode(topic: InputTopic, bytes: &[u8]) -> Result<InputEvent, DecodeError> {
    decode_str(topic, utf8(bytes)?)
}

fn decode_str(topic: InputTopic, text: &str) -> Result<InputEvent, DecodeError> {
    Ok(match topic {
        InputTopic::Requests => InputEvent::Request(decode_request_str(text)?),
        InputTopic::Outcomes => InputEvent::Outcome(decode_outcome_str(text)?),
        InputTopic::Telemetry => InputEvent::Telemetry(decode_telemetry_str(text)?),
        InputTopic::Admin => InputEvent::Admin(decode_admin_str(text)?),
    })
}

#[derive(Deserialize)]
struct TopicOnly<'a> {
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
}

/// Decodes one replay line: the event's own fields plus a `topic` field naming its input topic
/// by its short name (`requests`, `outcomes`, `telemetry`).
pub fn decode_tagged(bytes: &[u8]) -> Result<InputEvent, DecodeError> {
    decode_tagged_with(bytes, |name| match name {
        "requests" => Some(InputTopic::Requests),
        "outcomes" => Some(InputTopic::Outcomes),
        "telemetry" => Some(InputTopic::Telemetry),
        "admin" => Some(InputTopic::Admin),
        _ => None,
    })
}

/// As `decode_tagged`, with `resolve` mapping topic names to input topics.
pub fn decode_tagged_with(bytes: &[u8], resolve: impl Fn(&str) -> Option<InputTopic>) -> Result<InputEvent, DecodeError> {
    let text = utf8(bytes)?;
    // Fast path for lines that start with the topic, as surgeguard writes them: no first parse.
    if let Some(t) = leading_topic(text).and_then(&resolve) {
        return decode_str(t, text);
    }
    let tag: TopicOnly = json(text)?;
    let topic = match tag.topic.as_deref() {
        Some(name) => match resolve(name) {
            Some(t) => t,
            None => return Err(DecodeError::UnknownTopic(name.chars().take(64).collect())),
        },
        None => return Err(invalid("topic", "missing (expected requests, outcomes, telemetry or admin)")),
    };
    decode_str(topic, text)
}

/// The topic name of a line starting `{"topic":"NAME",` with no escapes in NAME. The typed
/// decoder then parses the whole line, so a malformed rest is still refused.
fn leading_topic(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("{\"topic\":\"")?;
    let end = rest.find('"')?;
    let name = &rest[..end];
    (!name.contains('\\') && rest[end + 1..].starts_with(',')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = r#"{"id":"r1","ts":"2026-11-29T09:00:00Z","user_id":"u1","tier":"pro","request_type":"standard"}"#;

    #[test]
    fn request_defaults_cost_to_one() {
        let r = decode_request(REQ.as_bytes()).unwrap();
        assert_eq!(r.cost, 1);
        assert_eq!(r.user_id, "u1");
        assert_eq!(r.ts.to_string(), "2026-11-29T09:00:00.000Z");
    }

    #[test]
    fn request_errors_name_the_field() {
        let cases = [
            (r#"{"id":"r1""#, "invalid JSON"),
            (r#"{"id":"r1","ts":"2026-11-29T09:00:00Z","tier":"pro","request_type":"s"}"#, "user_id"),
            (r#"{"id":"r1","ts":"29/11/2026","user_id":"u","tier":"pro","request_type":"s"}"#, "RFC 3339"),
            (r#"{"id":"r1","ts":"2026-11-29T09:00:00Z","user_id":"u","tier":"pro","request_type":"s","cost":-2}"#, "negative"),
            (r#"{"id":"r1","ts":"2026-11-29T09:00:00Z","user_id":"u","tier":"pro","request_type":"s","cost":1.5}"#, "whole number"),
            (r#"{"id":"r1","ts":"2026-11-29T09:00:00Z","user_id":"","tier":"pro","request_type":"s"}"#, "user_id"),
        ];
        for (input, needle) in cases {
            let err = decode_request(input.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(needle), "{input} -> {err}");
        }
    }

    #[test]
    fn outcome_error_classes() {
        let ok = decode_outcome(br#"{"ts":"2026-11-29T09:00:00Z","dependency":"ai","ok":false,"error":"rate_limit","latency_ms":12}"#).unwrap();
        assert_eq!(ok.error, Some(ErrorClass::RateLimit));
        let unclassified = decode_outcome(br#"{"ts":"2026-11-29T09:00:00Z","dependency":"ai","ok":false,"latency_ms":1}"#).unwrap();
        assert_eq!(unclassified.error, Some(ErrorClass::Other));
        let err = decode_outcome(br#"{"ts":"2026-11-29T09:00:00Z","dependency":"ai","ok":false,"error":"meltdown","latency_ms":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `meltdown`"), "{err}");
        let err = decode_outcome(br#"{"ts":"2026-11-29T09:00:00Z","dependency":"ai","ok":true,"error":"timeout","latency_ms":1}"#).unwrap_err();
        assert!(err.to_string().contains("`error`"), "{err}");
    }

    #[test]
    fn type_errors_and_missing_fields_name_the_field() {
        let e = decode_telemetry(br#"{"ts":"2026-11-29T09:00:00Z","source":"h1","cpu":"high","memory":0.5,"db_connections_in_use":1,"db_connections_max":2}"#).unwrap_err();
        assert_eq!(e.kind(), "invalid_field");
        assert!(e.to_string().starts_with("field `cpu`: invalid type: string \"high\""), "{e}");
        let e = decode_outcome(br#"{"ts":"2026-11-29T09:00:00Z","dependency":"ai","ok":false,"error":"meltdown","latency_ms":1}"#).unwrap_err();
        assert!(e.to_string().starts_with("field `error`: unknown variant `meltdown`"), "{e}");
        let e = decode_request(br#"{"id":"r1","ts":"2026-11-29T09:00:00Z","tier":"pro","request_type":"s"}"#).unwrap_err();
        assert_eq!(e.to_string(), "field `user_id`: missing");
        let e = decode_telemetry(br#"{"ts":"2026-11-29T09:00:00Z","source":"h1","cpu":0.1,"memory":0.5,"db_connections_in_use":1,"db_connections_max":2,"queue_depth":3}"#).unwrap_err();
        assert!(e.to_string().contains("queue_capacity"), "{e}");
    }

    #[test]
    fn telemetry_utilisation_must_be_in_unit_interval() {
        let base = |cpu: &str| format!(r#"{{"ts":"2026-11-29T09:00:00Z","source":"h1","cpu":{cpu},"memory":0.5,"db_connections_in_use":10,"db_connections_max":200}}"#);
        assert!(decode_telemetry(base("0.95").as_bytes()).is_ok());
        let err = decode_telemetry(base("1.5").as_bytes()).unwrap_err().to_string();
        assert!(err.contains("`cpu`") && err.contains("0..1"), "{err}");
        let err = decode_telemetry(base("-0.1").as_bytes()).unwrap_err().to_string();
        assert!(err.contains("`cpu`"), "{err}");
        let err = decode_telemetry(br#"{"ts":"2026-11-29T09:00:00Z","source":"h1","cpu":0.1,"memory":0.5,"db_connections_in_use":201,"db_connections_max":200}"#).unwrap_err();
        assert!(err.to_string().contains("db_connections_in_use"), "{err}");
    }

    #[test]
    fn admin_actions() {
        let a = decode_admin(br#"{"ts":"2026-11-29T09:00:00Z","dependency":"ai","action":"force_open","actor":"ops"}"#).unwrap();
        assert_eq!((a.action, a.actor.as_deref()), (AdminAction::ForceOpen, Some("ops")));
        let err = decode_admin(br#"{"ts":"2026-11-29T09:00:00Z","dependency":"ai","action":"explode"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `explode`"), "{err}");
    }

    #[test]
    fn tagged_lines_dispatch_on_topic() {
        let line = REQ.replacen('{', r#"{"topic":"requests","#, 1);
        assert!(matches!(decode_tagged(line.as_bytes()), Ok(InputEvent::Request(_))));
        let line = REQ.replacen('{', r#"{"topic":"orders","#, 1);
        assert!(matches!(decode_tagged(line.as_bytes()), Err(DecodeError::UnknownTopic(_))));
        assert!(decode_tagged(REQ.as_bytes()).unwrap_err().to_string().contains("topic"));
        assert!(matches!(decode_tagged(b"\xff\xfe"), Err(DecodeError::NotUtf8(0))));
    }
}

//! Bytes → typed input events, as pure functions. Never panics: every failure is a `DecodeError`
//! naming the field and what was expected, which the shell sends to the DLQ (or, in replay,
//! reports with the line number).

use std::borrow::Cow;

use compact_str::CompactString;
use serde::Deserialize;

use crate::wire::events::{AdminAction, AdminEvent, ErrorClass, InputEvent, InputTopic, OutcomeEvent, RequestEvent, TelemetrySample};
use crate::wire::flat_json::{self, Scalar};
use crate::wire::limits::{InputLimits, MAX_REASON_BYTES, shorten};
use crate::wire::time::{Millis, TimeError};

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
    /// Over one of `InputLimits` (`what`: the record, or a field's name).
    #[error("{what} is {len} bytes, over the limit of {max} (limits.{key})")]
    TooLarge { what: &'static str, len: usize, max: u32, key: &'static str },
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
            DecodeError::TooLarge { .. } => "too_large",
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid { field, reason: short(reason.into()) }
}

/// An error text quoting the input, cut to `MAX_REASON_BYTES`.
fn short(text: String) -> String {
    match shorten(&text, MAX_REASON_BYTES) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(cut) => cut,
    }
}

/// Refuses a record over `limits.record_bytes` before it is parsed.
fn record(text: &str, limits: &InputLimits) -> Result<(), DecodeError> {
    within("the record", text, limits.record_bytes, "record_bytes")
}

/// Refuses a field over its limit.
fn within(what: &'static str, value: &str, max: u32, key: &'static str) -> Result<(), DecodeError> {
    if value.len() > max as usize { Err(DecodeError::TooLarge { what, len: value.len(), max, key }) } else { Ok(()) }
}

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    // SIMD validation (AVX2 or SSE4.2, detected at run time); std's on failure, for the position.
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(_) => std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8(e.valid_up_to())),
    }
}

/// Parses already-validated text (serde_json's `StrRead` does not validate strings again).
fn json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|e| explain::<T>(text, e))
}

/// Names the field behind a serde_json error when the JSON itself was valid, by parsing again
/// with the path tracked (on the error path only, so decoding stays fast).
fn explain<'a, T: Deserialize<'a>>(text: &'a str, e: serde_json::Error) -> DecodeError {
    if !e.is_data() {
        return DecodeError::Json(short(e.to_string()));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let Err(pe) = serde_path_to_error::deserialize::<_, T>(&mut de) else { return DecodeError::Json(short(e.to_string())) };
    let path = short(pe.path().to_string());
    let full = short(pe.into_inner().to_string());
    let reason = full.split(" at line ").next().unwrap_or(&full).to_string();
    if path.is_empty() || path == "." {
        if let Some(name) = reason.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            return DecodeError::Field { field: name.to_string(), reason: "missing".into() };
        }
        return DecodeError::Json(full);
    }
    DecodeError::Field { field: path, reason }
}

/// A required text field: not empty, and within `max` bytes (`limits.{key}`).
fn non_empty<'a, T: From<Cow<'a, str>>>(field: &'static str, value: Cow<'a, str>, max: u32, key: &'static str) -> Result<T, DecodeError> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    within(field, &value, max, key)?;
    Ok(T::from(value))
}

fn unit_interval(field: &'static str, v: f64) -> Result<f64, DecodeError> {
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(invalid(field, format!("utilisation must be within 0..1, got {v}"))) }
}

/// Sets a field the fast path read, refusing a second occurrence (serde refuses duplicate fields).
fn set_once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

/// An optional field's value: `null` is `None`, as serde reads it.
fn nullable<'a, T>(v: Scalar<'a>, read: impl FnOnce(Scalar<'a>) -> Option<T>) -> Option<Option<T>> {
    if v == Scalar::Null { Some(None) } else { read(v).map(Some) }
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RawRequest<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    /// Optional only for `decode_request_at`.
    #[serde(borrow)]
    ts: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    tier: Cow<'a, str>,
    #[serde(borrow)]
    request_type: Cow<'a, str>,
    cost: Option<f64>,
}

/// Decodes a `RequestEvent` from JSON bytes.
/// Decodes a `RequestEvent` from JSON bytes, within the default `InputLimits`.
pub fn decode_request(bytes: &[u8]) -> Result<RequestEvent, DecodeError> {
    decode_request_str(utf8(bytes)?, None, &InputLimits::DEFAULT)
}

/// Decodes a `RequestEvent` whose `ts` may be left out (`POST /v1/decide`): `received` then.
pub fn decode_request_at(bytes: &[u8], received: Millis, limits: &InputLimits) -> Result<RequestEvent, DecodeError> {
    decode_request_str(utf8(bytes)?, Some(received), limits)
}

impl<'a> RawRequest<'a> {
    /// The fast path (see `flat_json`); `None` sends the text to serde_json.
    fn flat(text: &'a str) -> Option<Self> {
        let (mut id, mut ts, mut user_id, mut tier, mut request_type, mut cost) = (None, None, None, None, None, None);
        flat_json::fields(text, |key, v| match key {
            "id" => set_once(&mut id, v.str()),
            "ts" => set_once(&mut ts, v.str()),
            "user_id" => set_once(&mut user_id, v.str()),
            "tier" => set_once(&mut tier, v.str()),
            "request_type" => set_once(&mut request_type, v.str()),
            "cost" => set_once(&mut cost, nullable(v, Scalar::f64)),
            _ => Some(()),
        })?;
        Some(RawRequest {
            id: Cow::Borrowed(id?),
            ts: ts.map(Cow::Borrowed),
            user_id: Cow::Borrowed(user_id?),
            tier: Cow::Borrowed(tier?),
            request_type: Cow::Borrowed(request_type?),
            cost: cost.flatten(),
        })
    }
}

fn decode_request_str(text: &str, received: Option<Millis>, limits: &InputLimits) -> Result<RequestEvent, DecodeError> {
    record(text, limits)?;
    let raw = match RawRequest::flat(text) {
        Some(raw) => raw,
        None => json(text)?,
    };
    let cost = match raw.cost {
        None => 1,
        Some(c) if c < 0.0 => return Err(invalid("cost", format!("must not be negative, got {c}"))),
        Some(c) if c.fract() != 0.0 || c < 1.0 || c > u32::MAX as f64 => {
            return Err(invalid("cost", format!("expected a whole number ≥ 1, got {c}")));
        }
        Some(c) => c as u32,
    };
    let ts = match (&raw.ts, received) {
        (Some(ts), _) => Millis::parse_rfc3339(ts)?,
        (None, Some(received)) => received,
        (None, None) => return Err(DecodeError::Field { field: "ts".into(), reason: "missing".into() }),
    };
    Ok(RequestEvent {
        ts,
        id: non_empty("id", raw.id, limits.id_bytes, "id_bytes")?,
        user_id: non_empty("user_id", raw.user_id, limits.user_id_bytes, "user_id_bytes")?,
        tier: non_empty("tier", raw.tier, limits.name_bytes, "name_bytes")?,
        request_type: non_empty("request_type", raw.request_type, limits.name_bytes, "name_bytes")?,
        cost,
    })
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
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
    decode_outcome_str(utf8(bytes)?, &InputLimits::DEFAULT)
}

impl<'a> RawOutcome<'a> {
    /// The fast path (see `flat_json`); `None` sends the text to serde_json.
    fn flat(text: &'a str) -> Option<Self> {
        let (mut ts, mut dependency, mut ok, mut error, mut latency_ms, mut request_id) = (None, None, None, None, None, None);
        flat_json::fields(text, |key, v| match key {
            "ts" => set_once(&mut ts, v.str()),
            "dependency" => set_once(&mut dependency, v.str()),
            "ok" => set_once(&mut ok, v.bool()),
            "error" => set_once(&mut error, nullable(v, |v| v.str().and_then(ErrorClass::from_name))),
            "latency_ms" => set_once(&mut latency_ms, v.f64()),
            "request_id" => set_once(&mut request_id, nullable(v, Scalar::str)),
            _ => Some(()),
        })?;
        Some(RawOutcome {
            ts: Cow::Borrowed(ts?),
            dependency: Cow::Borrowed(dependency?),
            ok: ok?,
            error: error.flatten(),
            latency_ms: latency_ms?,
            request_id: request_id.flatten().map(Cow::Borrowed),
        })
    }
}

fn decode_outcome_str(text: &str, limits: &InputLimits) -> Result<OutcomeEvent, DecodeError> {
    record(text, limits)?;
    let raw = match RawOutcome::flat(text) {
        Some(raw) => raw,
        None => json(text)?,
    };
    if raw.ok && raw.error.is_some() {
        return Err(invalid("error", "must be absent when `ok` is true"));
    }
    if !(raw.latency_ms >= 0.0) {
        return Err(invalid("latency_ms", format!("must be ≥ 0, got {}", raw.latency_ms)));
    }
    if let Some(id) = &raw.request_id {
        within("request_id", id, limits.id_bytes, "id_bytes")?;
    }
    Ok(OutcomeEvent {
        ts: Millis::parse_rfc3339(&raw.ts)?,
        dependency: non_empty("dependency", raw.dependency, limits.name_bytes, "name_bytes")?,
        ok: raw.ok,
        error: if raw.ok { None } else { Some(raw.error.unwrap_or(ErrorClass::Other)) },
        latency_ms: raw.latency_ms,
        request_id: raw.request_id.map(CompactString::from),
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
    decode_telemetry_str(utf8(bytes)?, &InputLimits::DEFAULT)
}

fn decode_telemetry_str(text: &str, limits: &InputLimits) -> Result<TelemetrySample, DecodeError> {
    record(text, limits)?;
    let raw: RawTelemetry = json(text)?;
    if raw.db_connections_max == 0 {
        return Err(invalid("db_connections_max", "must be ≥ 1"));
    }
    if raw.db_connections_in_use > raw.db_connections_max {
        return Err(invalid("db_connections_in_use", format!("{} exceeds db_connections_max {}", raw.db_connections_in_use, raw.db_connections_max)));
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
        source: non_empty("source", raw.source, limits.name_bytes, "name_bytes")?,
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
    #[serde(borrow, default)]
    dependency: Option<Cow<'a, str>>,
    action: AdminAction,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(default)]
    rpm: Option<f64>,
    #[serde(borrow, default)]
    until: Option<Cow<'a, str>>,
    #[serde(borrow)]
    actor: Option<Cow<'a, str>>,
}

/// Decodes an `AdminEvent` from JSON bytes.
pub fn decode_admin(bytes: &[u8]) -> Result<AdminEvent, DecodeError> {
    decode_admin_str(utf8(bytes)?, &InputLimits::DEFAULT)
}

fn decode_admin_str(text: &str, limits: &InputLimits) -> Result<AdminEvent, DecodeError> {
    record(text, limits)?;
    let raw: RawAdmin = json(text)?;
    let ts = Millis::parse_rfc3339(&raw.ts)?;
    if let Some(actor) = &raw.actor {
        within("actor", actor, limits.text_bytes, "text_bytes")?;
    }
    let missing = |field: &'static str| invalid(field, format!("required by action {:?}", raw.action));
    if !raw.action.on_limit() {
        let dependency = raw.dependency.ok_or_else(|| missing("dependency"))?;
        return Ok(AdminEvent {
            ts,
            dependency: non_empty("dependency", dependency, limits.name_bytes, "name_bytes")?,
            action: raw.action,
            key: None,
            rpm: None,
            until: None,
            actor: raw.actor.map(Cow::into_owned),
        });
    }
    let key: String = non_empty("key", raw.key.ok_or_else(|| missing("key"))?, limits.name_bytes * 2 + 1, "name_bytes")?;
    if !key.contains('/') {
        return Err(invalid("key", format!("expected tier/request_type, got `{key}`")));
    }
    let (rpm, until) = match raw.action {
        AdminAction::OverrideLimit => {
            let rpm = match raw.rpm.ok_or_else(|| missing("rpm"))? {
                r if r.fract() == 0.0 && (1.0..=f64::from(u32::MAX)).contains(&r) => r as u32,
                r => return Err(invalid("rpm", format!("expected a whole number ≥ 1, got {r}"))),
            };
            let until = Millis::parse_rfc3339(&raw.until.ok_or_else(|| missing("until"))?)?;
            (Some(rpm), Some(until))
        }
        _ => (None, None),
    };
    Ok(AdminEvent { ts, dependency: String::new(), action: raw.action, key: Some(key), rpm, until, actor: raw.actor.map(Cow::into_owned) })
}

/// Decodes the value of a message from the given input topic.
pub fn decode(topic: InputTopic, bytes: &[u8], limits: &InputLimits) -> Result<InputEvent, DecodeError> {
    decode_str(topic, utf8(bytes)?, limits)
}

fn decode_str(topic: InputTopic, text: &str, limits: &InputLimits) -> Result<InputEvent, DecodeError> {
    Ok(match topic {
        InputTopic::Requests => InputEvent::Request(decode_request_str(text, None, limits)?),
        InputTopic::Outcomes => InputEvent::Outcome(decode_outcome_str(text, limits)?),
        InputTopic::Telemetry => InputEvent::Telemetry(decode_telemetry_str(text, limits)?),
        InputTopic::Admin => InputEvent::Admin(decode_admin_str(text, limits)?),
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
    decode_tagged_with(bytes, InputTopic::from_name, &InputLimits::DEFAULT)
}

/// As `decode_tagged`, with `resolve` mapping topic names to input topics.
pub fn decode_tagged_with(bytes: &[u8], resolve: impl Fn(&str) -> Option<InputTopic>, limits: &InputLimits) -> Result<InputEvent, DecodeError> {
    let text = utf8(bytes)?;
    record(text, limits)?;
    // Fast path for lines that start with the topic, as surgeguard writes them: no first parse.
    if let Some(t) = leading_topic(text).and_then(&resolve) {
        return decode_str(t, text, limits);
    }
    let tag: TopicOnly = json(text)?;
    let topic = match tag.topic.as_deref() {
        Some(name) => match resolve(name) {
            Some(t) => t,
            None => return Err(DecodeError::UnknownTopic(name.chars().take(64).collect())),
        },
        None => return Err(invalid("topic", "missing (expected requests, outcomes, telemetry or admin)")),
    };
    decode_str(topic, text, limits)
}

/// The topic name of a line starting `{"topic":"NAME",` with no escapes in NAME. The typed
/// decoder then parses the whole line, so a malformed rest is still refused.
fn leading_topic(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("{\"topic\":\"")?;
    let end = rest.bytes().position(|b| b == b'"' || b == b'\\')?;
    (rest.as_bytes()[end..].starts_with(b"\",")).then(|| &rest[..end])
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
    fn inputs_over_the_limits_are_refused_naming_the_limit() {
        let limits = InputLimits { record_bytes: 4096, id_bytes: 8, user_id_bytes: 16, name_bytes: 12, text_bytes: 5 };
        let req = |id: &str, user: &str, tier: &str| {
            format!(r#"{{"id":"{id}","ts":"2026-11-29T09:00:00Z","user_id":"{user}","tier":"{tier}","request_type":"standard"}}"#)
        };
        let too_large = |text: String, topic: InputTopic| match decode(topic, text.as_bytes(), &limits) {
            Err(e @ DecodeError::TooLarge { .. }) => {
                assert_eq!(e.kind(), "too_large");
                e.to_string()
            }
            other => panic!("{text:.80}: {other:?}"),
        };
        assert!(decode(InputTopic::Requests, req("12345678", &"u".repeat(16), "free").as_bytes(), &limits).is_ok(), "at the limits");
        assert_eq!(too_large(req("123456789", "u", "free"), InputTopic::Requests), "id is 9 bytes, over the limit of 8 (limits.id_bytes)");
        assert!(too_large(req("r", &"u".repeat(17), "free"), InputTopic::Requests).starts_with("user_id is 17 bytes"));
        assert!(too_large(req("r", "u", &"t".repeat(13)), InputTopic::Requests).starts_with("tier is 13 bytes"));
        // Multi-byte characters count in bytes.
        assert!(too_large(req("r", &"é".repeat(9), "free"), InputTopic::Requests).starts_with("user_id is 18 bytes"));
        // The whole record, before it is parsed (here not even JSON).
        assert_eq!(too_large("x".repeat(5000), InputTopic::Requests), "the record is 5000 bytes, over the limit of 4096 (limits.record_bytes)");
        let outcome = |dep: &str, id: &str| format!(r#"{{"ts":"2026-11-29T09:00:00Z","dependency":"{dep}","ok":true,"latency_ms":1,"request_id":"{id}"}}"#);
        assert!(too_large(outcome(&"d".repeat(13), "r"), InputTopic::Outcomes).starts_with("dependency is 13"));
        assert!(too_large(outcome("d", &"r".repeat(9)), InputTopic::Outcomes).starts_with("request_id is 9"));
        let sample =
            format!(r#"{{"ts":"2026-11-29T09:00:00Z","source":"{}","cpu":0.1,"memory":0.1,"db_connections_in_use":1,"db_connections_max":2}}"#, "s".repeat(13));
        assert!(too_large(sample, InputTopic::Telemetry).starts_with("source is 13"));
        let admin = r#"{"ts":"2026-11-29T09:00:00Z","dependency":"ai","action":"force_open","actor":"someone"}"#;
        assert!(too_large(admin.to_string(), InputTopic::Admin).starts_with("actor is 7"));
        let tagged = format!(r#"{{"topic":"requests","pad":"{}"}}"#, "p".repeat(5000));
        assert!(matches!(decode_tagged_with(tagged.as_bytes(), InputTopic::from_name, &limits), Err(DecodeError::TooLarge { what: "the record", .. })));
    }

    #[test]
    fn error_texts_quoting_the_input_are_cut() {
        let huge = "x".repeat(50_000);
        for line in [
            format!(r#"{{"id":"r","ts":"2026-11-29T09:00:00Z","user_id":"u","tier":"free","request_type":"standard","cost":"{huge}"}}"#),
            format!(r#"{{"id":"r","ts":"{huge}","user_id":"u","tier":"free","request_type":"standard"}}"#),
            format!(r#"{{"id":{huge}}}"#),
            format!(r#"{{"ts":"2026-11-29T09:00:00Z","action":"override_limit","key":"{}","rpm":5,"until":"2026-11-29T10:00:00Z"}}"#, "k".repeat(200)),
        ] {
            let topic = if line.contains("action") { InputTopic::Admin } else { InputTopic::Requests };
            let e = decode(topic, line.as_bytes(), &InputLimits::DEFAULT).unwrap_err();
            assert!(e.to_string().len() < MAX_REASON_BYTES + 64, "{} bytes: {e:.100}", e.to_string().len());
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
        let e = decode_telemetry(br#"{"ts":"2026-11-29T09:00:00Z","source":"h1","cpu":"high","memory":0.5,"db_connections_in_use":1,"db_connections_max":2}"#)
            .unwrap_err();
        assert_eq!(e.kind(), "invalid_field");
        assert!(e.to_string().starts_with("field `cpu`: invalid type: string \"high\""), "{e}");
        let e = decode_outcome(br#"{"ts":"2026-11-29T09:00:00Z","dependency":"ai","ok":false,"error":"meltdown","latency_ms":1}"#).unwrap_err();
        assert!(e.to_string().starts_with("field `error`: unknown variant `meltdown`"), "{e}");
        let e = decode_request(br#"{"id":"r1","ts":"2026-11-29T09:00:00Z","tier":"pro","request_type":"s"}"#).unwrap_err();
        assert_eq!(e.to_string(), "field `user_id`: missing");
        let e = decode_telemetry(
            br#"{"ts":"2026-11-29T09:00:00Z","source":"h1","cpu":0.1,"memory":0.5,"db_connections_in_use":1,"db_connections_max":2,"queue_depth":3}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("queue_capacity"), "{e}");
    }

    #[test]
    fn telemetry_utilisation_must_be_in_unit_interval() {
        let base = |cpu: &str| {
            format!(r#"{{"ts":"2026-11-29T09:00:00Z","source":"h1","cpu":{cpu},"memory":0.5,"db_connections_in_use":10,"db_connections_max":200}}"#)
        };
        assert!(decode_telemetry(base("0.95").as_bytes()).is_ok());
        let err = decode_telemetry(base("1.5").as_bytes()).unwrap_err().to_string();
        assert!(err.contains("`cpu`") && err.contains("0..1"), "{err}");
        let err = decode_telemetry(base("-0.1").as_bytes()).unwrap_err().to_string();
        assert!(err.contains("`cpu`"), "{err}");
        let err =
            decode_telemetry(br#"{"ts":"2026-11-29T09:00:00Z","source":"h1","cpu":0.1,"memory":0.5,"db_connections_in_use":201,"db_connections_max":200}"#)
                .unwrap_err();
        assert!(err.to_string().contains("db_connections_in_use"), "{err}");
    }

    #[test]
    fn admin_limit_overrides() {
        let a = decode_admin(
            br#"{"ts":"2026-11-29T09:00:00Z","action":"override_limit","key":"free/standard","rpm":5,"until":"2026-11-29T10:00:00Z","actor":"ops"}"#,
        )
        .unwrap();
        assert_eq!((a.action, a.key.as_deref(), a.rpm, a.dependency.as_str()), (AdminAction::OverrideLimit, Some("free/standard"), Some(5), ""));
        assert_eq!(a.until, Some(Millis::parse_rfc3339("2026-11-29T10:00:00Z").unwrap()));
        let c = decode_admin(br#"{"ts":"2026-11-29T09:00:00Z","action":"clear_override","key":"free/standard"}"#).unwrap();
        assert_eq!((c.action, c.rpm, c.until), (AdminAction::ClearOverride, None, None));
        for (bad, field) in [
            (r#"{"ts":"2026-11-29T09:00:00Z","action":"override_limit","rpm":5,"until":"2026-11-29T10:00:00Z"}"#, "key"),
            (r#"{"ts":"2026-11-29T09:00:00Z","action":"override_limit","key":"free","rpm":5,"until":"2026-11-29T10:00:00Z"}"#, "key"),
            (r#"{"ts":"2026-11-29T09:00:00Z","action":"override_limit","key":"free/standard","rpm":0,"until":"2026-11-29T10:00:00Z"}"#, "rpm"),
            (r#"{"ts":"2026-11-29T09:00:00Z","action":"override_limit","key":"free/standard","rpm":2.5,"until":"2026-11-29T10:00:00Z"}"#, "rpm"),
            (r#"{"ts":"2026-11-29T09:00:00Z","action":"override_limit","key":"free/standard","rpm":5}"#, "until"),
            (r#"{"ts":"2026-11-29T09:00:00Z","action":"force_open"}"#, "dependency"),
        ] {
            match decode_admin(bad.as_bytes()) {
                Err(DecodeError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // The encoder writes what the decoder reads back.
        let back = decode_admin(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(back, a);
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

    /// A JSON value as text: mostly what producers write, sometimes what only serde_json reads.
    fn value_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            "[a-z0-9_-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            any::<String>().prop_map(|s| serde_json::to_string(&s).expect("a string serialises")),
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,18})?([eE][+-]?[0-9]{1,3})?",
            "[-+.0-9eE]{1,6}",
            Just("true".to_string()),
            Just("false".to_string()),
            Just("null".to_string()),
            Just("{\"x\":1}".to_string()),
            Just("[1,2]".to_string()),
            prop::sample::select(vec!["timeout", "rate_limit", "server_error", "other", "Timeout"]).prop_map(|s| format!("\"{s}\"")),
            Just("\"2026-11-29T09:00:00.123Z\"".to_string()),
        ]
    }

    /// A value of the type a field wants, most of the time.
    fn typed_value(kind: char) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let typed = match kind {
            's' => prop_oneof![
                "[a-z0-9_-]{1,12}".prop_map(|s| format!("\"{s}\"")),
                Just("\"2026-11-29T09:00:00.123Z\"".to_string()),
                Just("\"timeout\"".to_string()),
            ]
            .boxed(),
            'e' => prop::sample::select(vec!["timeout", "rate_limit", "server_error", "client_error", "other", "null"])
                .prop_map(|s| if s == "null" { s.to_string() } else { format!("\"{s}\"") })
                .boxed(),
            'n' => "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,18})?([eE][+-]?[0-9]{1,3})?".boxed(),
            _ => prop::sample::select(vec!["true".to_string(), "false".to_string()]).boxed(),
        };
        prop_oneof![4 => typed, 1 => value_text()]
    }

    /// A flat object with each of these fields (name, kind: s/n/b, e for an error class) in some order, some extra or
    /// repeated fields, with or without spaces.
    fn object_text(keys: &'static [(&'static str, char)]) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let present: Vec<_> = keys.iter().map(|&(k, kind)| (Just(k), typed_value(kind))).collect();
        let names: Vec<&'static str> = keys.iter().map(|&(k, _)| k).chain(["topic", "extra"]).collect();
        let extra = prop::collection::vec((prop::sample::select(names), value_text()), 0..3);
        let keep = prop::collection::vec(prop::bool::weighted(0.95), keys.len());
        (present, extra, keep, any::<bool>())
            .prop_flat_map(|(present, extra, keep, spaced)| {
                let fields: Vec<(&str, String)> = present.into_iter().zip(keep).filter_map(|(f, k)| k.then_some(f)).chain(extra).collect();
                (Just(fields).prop_shuffle(), Just(spaced))
            })
            .prop_map(|(fields, spaced)| {
                let sep = if spaced { " , " } else { "," };
                let colon = if spaced { " : " } else { ":" };
                let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\"{colon}{v}")).collect();
                format!("{{{}}}", body.join(sep))
            })
    }

    const REQUEST_FIELDS: &[(&str, char)] = &[("id", 's'), ("ts", 's'), ("user_id", 's'), ("tier", 's'), ("request_type", 's'), ("cost", 'n')];
    const OUTCOME_FIELDS: &[(&str, char)] = &[("ts", 's'), ("dependency", 's'), ("ok", 'b'), ("error", 'e'), ("latency_ms", 'n'), ("request_id", 's')];

    /// The generators reach the fast path often, so the properties below test something.
    #[test]
    fn generated_objects_often_take_the_fast_path() {
        use proptest::strategy::{Strategy, ValueTree};
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut requests, mut outcomes) = (0, 0);
        for _ in 0..500 {
            let r = object_text(REQUEST_FIELDS).new_tree(&mut runner).expect("generates").current();
            requests += usize::from(RawRequest::flat(&r).is_some());
            let o = object_text(OUTCOME_FIELDS).new_tree(&mut runner).expect("generates").current();
            outcomes += usize::from(RawOutcome::flat(&o).is_some());
        }
        assert!(requests > 40 && outcomes > 40, "fast path taken for {requests} requests, {outcomes} outcomes of 500");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whenever the fast path answers, it reads exactly what serde_json reads.
        #[test]
        fn fast_path_reads_requests_as_serde_does(text in object_text(REQUEST_FIELDS)) {
            if let Some(fast) = RawRequest::flat(&text) {
                let slow: Result<RawRequest, _> = serde_json::from_str(&text);
                proptest::prop_assert_eq!(Some(fast), slow.ok(), "{}", text);
            }
        }

        #[test]
        fn fast_path_reads_outcomes_as_serde_does(text in object_text(OUTCOME_FIELDS)) {
            if let Some(fast) = RawOutcome::flat(&text) {
                let slow: Result<RawOutcome, _> = serde_json::from_str(&text);
                proptest::prop_assert_eq!(Some(fast), slow.ok(), "{}", text);
            }
        }
    }

    #[test]
    fn plain_lines_take_the_fast_path() {
        let line = REQ.replacen('{', r#"{"topic":"requests","#, 1);
        assert!(RawRequest::flat(&line).is_some());
        let outcome = r#"{"topic":"outcomes","ts":"2026-11-30T09:00:00.196Z","dependency":"ai_primary","ok":false,"error":"timeout","latency_ms":181.5,"request_id":"req-1"}"#;
        assert!(RawOutcome::flat(outcome).is_some());
        // Escapes go to serde_json, which unescapes them.
        let escaped = REQ.replace(r#""u1""#, r#""u\u00311""#);
        assert!(RawRequest::flat(&escaped).is_none());
        assert_eq!(decode_request(escaped.as_bytes()).unwrap().user_id, "u11");
    }
}

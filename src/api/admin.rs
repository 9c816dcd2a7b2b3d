//! The API's admin endpoints: force a breaker open, disable it, put it in metrics-only mode or
//! reset it; override a limit for a while, or end the override. Each action is published as an
//! `AdminEvent` on the admin topic and answered once the broker has it (202): every instance
//! applies it when it reads it, as it does any control event, so they all agree, and a replay of
//! the log reproduces it. Each is logged with its actor.
//!
//! Access: a bearer token from the environment variable `api.admin_token_env`, compared in
//! constant time; without a token the admin endpoints are off (403).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::api::state::{Admin, ApiState, Problem, body, lock, require_json, wall_clock};
use crate::wire::events::{AdminAction, AdminEvent};

/// The longest override accepted.
const MAX_OVERRIDE_S: u64 = 7 * 86_400;

/// Checks the bearer token: 401 without one, 403 for a wrong one or when admin is off.
fn authorise<'a>(s: &'a ApiState, headers: &HeaderMap) -> Result<&'a Admin, Problem> {
    let Some(admin) = s.admin.as_deref() else {
        return Err(Problem::new(StatusCode::FORBIDDEN, "Forbidden", format!("the admin endpoints are off: no token in ${}", s.admin_token_env)));
    };
    // The scheme is case-insensitive (RFC 9110).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(given) = given else {
        return Err(Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", "expected `Authorization: Bearer TOKEN`").bearer());
    };
    if same_token(given.as_bytes(), admin.token.as_bytes()) { Ok(admin) } else { Err(Problem::new(StatusCode::FORBIDDEN, "Forbidden", "wrong token")) }
}

/// Whether `given` is `token`, in time that depends on `given`'s length only: every byte of it
/// is compared (against the token's bytes, cycled), so neither where they first differ nor the
/// token's length shows. `token` is never empty (an empty one turns admin off).
fn same_token(given: &[u8], token: &[u8]) -> bool {
    if token.is_empty() {
        return false;
    }
    let mut eq = (given.len() as u64).ct_eq(&(token.len() as u64));
    for (i, b) in given.iter().enumerate() {
        eq &= b.ct_eq(&token[i % token.len()]);
    }
    bool::from(eq)
}

fn actor(headers: &HeaderMap) -> String {
    let who = headers.get("x-actor").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    format!("api:{}", who.unwrap_or("admin")).chars().take(128).collect()
}

/// Publishes `ev` keyed `key` and waits for the broker's acknowledgement.
async fn publish(admin: &Admin, key: &str, ev: &AdminEvent) -> Result<Response, Problem> {
    let payload = serde_json::to_vec(ev).map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", e.to_string()))?;
    let record = FutureRecord::to(&admin.topic).key(key).payload(&payload);
    match admin.producer.send(record, Duration::from_secs(10)).await {
        Ok(delivery) => {
            tracing::info!(actor = ?ev.actor, action = ?ev.action, dependency = %ev.dependency, key = ?ev.key, rpm = ?ev.rpm, until = ?ev.until, partition = delivery.partition, offset = delivery.offset, "admin action published");
            let body = serde_json::json!({ "event": ev, "topic": admin.topic, "partition": delivery.partition, "offset": delivery.offset });
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        // The one answer that carries a client's text: no secret of the config goes out with it.
        Err((e, _)) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            format!("the admin event was not published: {}", crate::config::secrets::redact_known(&e.to_string())),
        )),
    }
}

/// The time an admin action takes effect: the pipeline's event time, or the wall clock if later.
/// With it, whether `dependency` has a breaker (configured, or seen in an outcome).
async fn now(s: &ApiState, dependency: Option<&str>) -> Result<(crate::wire::time::Millis, bool), Problem> {
    let sh = lock(&s.shared).await?;
    let t = sh.topology.watermark().map_or_else(wall_clock, |w| w.max(wall_clock()));
    let known = dependency.is_some_and(|d| s.dependencies.iter().any(|c| c == d) || sh.topology.has_breaker(d));
    Ok((t, known))
}

/// `POST /v1/admin/breakers/{dependency}/{action}`: action one of force_open, disable,
/// metrics_only, reset.
pub async fn breaker(State(s): State<ApiState>, Path((dependency, action)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, Problem> {
    let admin = authorise(&s, &headers)?;
    let action = match action.as_str() {
        "force_open" => AdminAction::ForceOpen,
        "disable" => AdminAction::Disable,
        "metrics_only" => AdminAction::MetricsOnly,
        "reset" => AdminAction::Reset,
        other => {
            return Err(Problem::new(StatusCode::NOT_FOUND, "Not Found", format!("no breaker action `{other}` (force_open, disable, metrics_only, reset)")));
        }
    };
    let (ts, known) = now(&s, Some(&dependency)).await?;
    if !known {
        return Err(Problem::new(StatusCode::NOT_FOUND, "Not Found", format!("no breaker for `{dependency}` (configured: {:?})", s.dependencies)));
    }
    let ev = AdminEvent { ts, dependency: dependency.clone(), action, key: None, rpm: None, until: None, actor: Some(actor(&headers)) };
    publish(admin, &dependency, &ev).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    /// The limit, requests per minute.
    rpm: u32,
    /// How long it holds, seconds.
    ttl_s: u64,
}

/// `PUT /v1/admin/limits/{tier}/{request_type}/override` with `{"rpm": N, "ttl_s": S}` as
/// `application/json` (415 otherwise, once the token is checked).
pub async fn set_override(
    State(s): State<ApiState>,
    Path((tier, request_type)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let admin = authorise(&s, &headers)?;
    require_json(&headers)?;
    let raw = body(raw)?;
    let b: OverrideBody = serde_json::from_slice(&raw)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "Bad Request", format!("expected {{\"rpm\": N, \"ttl_s\": S}}: {e}")))?;
    if b.rpm == 0 || b.ttl_s == 0 || b.ttl_s > MAX_OVERRIDE_S {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            format!("expected rpm ≥ 1 and ttl_s in 1..={MAX_OVERRIDE_S}, got rpm {} and ttl_s {}", b.rpm, b.ttl_s),
        ));
    }
    let key = limit_key(&s, &tier, &request_type)?;
    let (ts, _) = now(&s, None).await?;
    let until = ts.plus_ms(b.ttl_s as i64 * 1000);
    let ev = AdminEvent {
        ts,
        dependency: String::new(),
        action: AdminAction::OverrideLimit,
        key: Some(key.clone()),
        rpm: Some(b.rpm),
        until: Some(until),
        actor: Some(actor(&headers)),
    };
    publish(admin, &key, &ev).await
}

/// `DELETE /v1/admin/limits/{tier}/{request_type}/override`.
pub async fn clear_override(State(s): State<ApiState>, Path((tier, request_type)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, Problem> {
    let admin = authorise(&s, &headers)?;
    let key = limit_key(&s, &tier, &request_type)?;
    let (ts, _) = now(&s, None).await?;
    let ev = AdminEvent {
        ts,
        dependency: String::new(),
        action: AdminAction::ClearOverride,
        key: Some(key.clone()),
        rpm: None,
        until: None,
        actor: Some(actor(&headers)),
    };
    publish(admin, &key, &ev).await
}

fn limit_key(s: &ApiState, tier: &str, request_type: &str) -> Result<String, Problem> {
    let key = format!("{tier}/{request_type}");
    if s.limit_keys.contains(&key) { Ok(key) } else { Err(Problem::new(StatusCode::NOT_FOUND, "Not Found", format!("no limit `{key}` in the config"))) }
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(same_token(b"s3cret", b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret!", b"s3cres", b"S3cret", b"s3crets3cret"] {
            assert!(!same_token(wrong, b"s3cret"), "{}", String::from_utf8_lossy(wrong));
        }
        assert!(!same_token(b"", b""));
    }
}

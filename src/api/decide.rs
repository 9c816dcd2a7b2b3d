//! The API's per-user endpoints: `POST /v1/decide` (a synchronous decision from the limiter the
//! stream uses), `GET /v1/users/{user_id}` (a user's quota) and `GET /v1/assignment` (which
//! requests partitions this instance owns, for callers that route users to their instance).
//!
//! A user's state lives in the limiter of the requests partition the user's key hashes to
//! (`api.partitioner`, the producers' partitioner). Only the instance that owns that partition
//! can answer; the others answer 421 Misdirected Request with the partition, so a caller routes
//! with `/v1/assignment`. A decision counts in the state like a streamed request: it goes to the
//! changelog with the next flush, and its outputs (the `Decision`, any timer outputs) are
//! published by the main loop (`ApiState::wake`). A request id decided shortly before is answered
//! with its first decision and not counted again (`idempotency.rs`).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::state::{ApiState, JsonContent, Problem, body, lock, path, query, wall_clock};
use crate::core::idempotency::Seen;
use crate::wire::outputs::{Decision, DecisionKind, Output};

/// The most outputs the API queues for the main loop before it answers 503.
const MAX_QUEUED: usize = 100_000;

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// On an answer repeated for a request id decided before (`idempotency.rs`).
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The IETF draft's fields (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy:
/// "free/chat";q=600;w=60` and `RateLimit: "free/chat";r=12;t=30`, one list member per quota.
fn ratelimit_headers(quotas: impl Iterator<Item = (String, u32, u32, u64, u32)>) -> HeaderMap {
    let (mut policy, mut current) = (String::new(), String::new());
    for (name, q, r, t, w) in quotas {
        // Names are tier and request-type names from the config: sf-string safe once quotes
        // and backslashes are escaped.
        let name = name.replace('\\', "\\\\").replace('"', "\\\"");
        if !policy.is_empty() {
            policy.push_str(", ");
            current.push_str(", ");
        }
        policy.push_str(&format!("\"{name}\";q={q};w={w}"));
        current.push_str(&format!("\"{name}\";r={r};t={t}"));
    }
    let mut h = HeaderMap::new();
    if let (Ok(p), Ok(c)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&current)) {
        h.insert(RATELIMIT_POLICY, p);
        h.insert(RATELIMIT, c);
    }
    h
}

/// The partition holding `user_id`, or the problem to answer when this instance does not own it.
fn partition_of(s: &ApiState, sh: &crate::kafka::shared::Shared, user_id: &str) -> Result<i32, Problem> {
    let n = i32::try_from(sh.requests_partitions).unwrap_or(0);
    let Some(p) = s.partitioner.partition(user_id.as_bytes(), n) else {
        return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Not Ready", "the requests topic's partitions are not known yet"));
    };
    if !sh.owns(p) {
        let owned = sh.owned_partitions();
        return Err(Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            "Misdirected Request",
            format!("user `{user_id}` is in requests partition {p} ({} partitioner, {n} partitions), which this instance does not own (it owns {owned:?}); ask the instance whose GET /v1/assignment lists {p}", s.partitioner.as_str()),
        )
        .with("partition", p.into())
        .with("owned", serde_json::json!(owned)));
    }
    Ok(p)
}

/// `POST /v1/decide`: a RequestEvent (the requests topic's schema) in, its Decision out: 200 for
/// allow and allow_with_grace, 429 with `Retry-After` for throttle, RateLimit fields on both.
/// The body must say it is JSON (415 otherwise; `JsonContent`).
pub async fn decide(State(s): State<ApiState>, _: JsonContent, raw: Result<Bytes, BytesRejection>) -> Result<Response, Problem> {
    let raw = body(raw)?;
    let received = wall_clock();
    let ev =
        crate::wire::decode::decode_request_at(&raw, received, &s.limits).map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "Bad Request", e.to_string()))?;
    let (decision, first) = {
        let mut sh = lock(&s.shared).await?;
        // Checked under the lock: shutdown clears it, then takes the lock to publish what the
        // API queued, so nothing is queued after that.
        if !s.ready.load(Ordering::SeqCst) {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not Ready",
                "partitions are being assigned or restored, or the service is stopping; try again",
            ));
        }
        if sh.api_outputs.len() >= MAX_QUEUED {
            return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Busy", "decisions are waiting to be published (is the broker down?); try again"));
        }
        let p = partition_of(&s, &sh, &ev.user_id)?;
        // The decision is made at the request's own time (receive time when the body has none),
        // which joins the stream's: it never moves the pipeline's event time (every timer,
        // eviction and override runs on it), and a time too far from it is refused.
        let stream = sh.topology.watermark();
        let off_ms = ev.ts.0.saturating_sub(stream.unwrap_or(received).0);
        if off_ms.unsigned_abs() > s.max_clock_skew_ms {
            let (against, at) = match stream {
                Some(w) => ("the stream's event time", w),
                None => ("the time it was received (the stream has no event time yet)", received),
            };
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unprocessable Entity",
                format!(
                    "ts {} is {:.0} s {} {against} ({at}); api.max_clock_skew_s allows {} s: send the request's time, or leave ts out to decide it now",
                    ev.ts,
                    off_ms.unsigned_abs() as f64 / 1000.0,
                    if off_ms > 0 { "ahead of" } else { "behind" },
                    s.max_clock_skew_ms / 1000,
                ),
            )
            .with("stream_time", serde_json::json!(stream.map(|w| w.to_string()))));
        }
        let now = stream.map_or(ev.ts, |w| w.max(ev.ts));
        match sh.api_recent.seen(&ev, now) {
            Seen::New => {}
            Seen::Again(d) => {
                let mut response = decision_response(d, s.window_s);
                drop(sh);
                s.metrics.api_replayed.inc();
                response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                return Ok(response);
            }
            Seen::Conflict => {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Unprocessable Entity",
                    format!("request id `{}` of user `{}` was decided for another tier, request type or cost; a new request needs a new id", ev.id, ev.user_id),
                ));
            }
        }
        let asked = ev.clone();
        let mut outs = Vec::with_capacity(2);
        sh.topology.decide(p, ev, &mut outs);
        let Some(d) = outs.iter().rev().find_map(|o| match o {
            Output::Decision(d) => Some(d.clone()),
            _ => None,
        }) else {
            return Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", "the limiter gave no decision"));
        };
        sh.api_recent.remember(&asked, &d, now);
        let through = sh.counted_through(&s.requests_topic, p, &d.user_id, &d.request_type);
        sh.changelog.note_untracked(p, through, &d.user_id, &d.request_type);
        // One wake-up per batch: the main loop takes everything queued when it wakes.
        let first = sh.api_outputs.is_empty();
        sh.api_outputs.extend(outs);
        (d, first)
    };
    if first {
        s.wake.notify_one();
    }
    Ok(decision_response(&decision, s.window_s))
}

fn decision_response(d: &Decision, window_s: u32) -> Response {
    let name = format!("{}/{}", d.tier, d.request_type);
    let mut headers = ratelimit_headers(std::iter::once((name, d.limit, d.remaining, d.reset_s, window_s)));
    let status = match d.decision {
        DecisionKind::Allow | DecisionKind::AllowWithGrace => StatusCode::OK,
        DecisionKind::Throttle => {
            let after = d.strategy.map_or(d.reset_s, |st| u64::from(st.seconds())).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(after));
            StatusCode::TOO_MANY_REQUESTS
        }
    };
    // The same writer as the decisions topic's records (the bytes serde_json would write).
    let mut body = Vec::with_capacity(320);
    if let Err(e) = crate::wire::encode::write_decision(&mut body, d) {
        return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", format!("encoding the decision: {e}")).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (status, headers, body).into_response()
}

#[derive(Deserialize)]
pub struct UserQuery {
    tier: Option<String>,
    request_type: Option<String>,
}

/// `GET /v1/users/{user_id}[?tier=&request_type=]`: the user's quota per request type (or the
/// one asked for) in the tier asked for (the default tier if none: a user's tier comes with each
/// request, the limiter does not keep it), as of the latest event time, with RateLimit fields.
pub async fn user(
    State(s): State<ApiState>,
    user_id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    q: Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let (user_id, q) = (path(user_id)?, query(q)?);
    if user_id.is_empty() {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "Bad Request", "empty user id"));
    }
    let quota = {
        let sh = lock(&s.shared).await?;
        let p = partition_of(&s, &sh, &user_id)?;
        if let Some(rt) = q.request_type.as_deref()
            && !sh.topology.request_types().iter().any(|t| **t == *rt)
        {
            return Err(Problem::new(StatusCode::NOT_FOUND, "Not Found", format!("no request type `{rt}` in the config")));
        }
        let now = sh.topology.watermark().unwrap_or_else(wall_clock);
        let tier = q.tier.as_deref().unwrap_or(&s.default_tier);
        sh.topology.user_quota(p, &user_id, tier, q.request_type.as_deref(), now)
    };
    let headers = ratelimit_headers(quota.quotas.iter().map(|x| (format!("{}/{}", quota.tier, x.request_type), x.limit, x.remaining, x.reset_s, x.window_s)));
    Ok((headers, Json(quota)).into_response())
}

/// `GET /v1/assignment`: the requests partitions this instance owns, how users map to them, and
/// whether it is ready.
pub async fn assignment(State(s): State<ApiState>) -> Result<Response, Problem> {
    let sh = lock(&s.shared).await?;
    Ok(Json(serde_json::json!({
        "requests_topic": s.requests_topic,
        "partitions": sh.requests_partitions,
        "partitioner": s.partitioner.as_str(),
        "owned": sh.owned_partitions(),
        "ready": s.ready.load(Ordering::SeqCst),
    }))
    .into_response())
}

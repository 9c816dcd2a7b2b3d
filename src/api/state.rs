//! What every HTTP handler shares: the state they read (`ApiState`), RFC 9457 problems, the
//! pipeline lock with its short wait, the request body with its type and limit, and the wall
//! clock.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::extract::rejection::BytesRejection;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rdkafka::producer::FutureProducer;

use crate::kafka::metrics::Metrics;
use crate::kafka::shared::Shared;

/// What the handlers read. axum clones it for every request, so every field is a counted
/// reference or a copy (owned strings and lists here cost seventeen allocations per request
/// with the default config).
#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<Mutex<Shared>>,
    pub metrics: Arc<Metrics>,
    /// Set once the instance has its partitions and their restored state.
    pub ready: Arc<AtomicBool>,
    /// Wakes the main loop to publish the API's decisions (`Shared::api_outputs`).
    pub wake: Arc<tokio::sync::Notify>,
    /// The admin endpoints' token and producer (none: admin is off).
    pub admin: Option<Arc<Admin>>,
    pub admin_token_env: Arc<str>,
    pub partitioner: crate::kafka::partitioner::Partitioner,
    pub requests_topic: Arc<str>,
    pub default_tier: Arc<str>,
    pub window_s: u32,
    /// `api.max_clock_skew_s` in milliseconds.
    pub max_clock_skew_ms: u64,
    /// How large a decided request's fields may be.
    pub limits: crate::wire::limits::InputLimits,
    /// The configured dependencies and limit keys (`tier/request_type`).
    pub dependencies: Arc<[String]>,
    pub limit_keys: Arc<[String]>,
}

impl ApiState {
    pub fn new(cfg: &crate::config::Config, shared: Arc<Mutex<Shared>>, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Self {
        ApiState {
            shared,
            metrics,
            ready,
            wake: Arc::new(tokio::sync::Notify::new()),
            admin: None,
            admin_token_env: cfg.api.admin_token_env.as_str().into(),
            partitioner: cfg.api.partitioner,
            requests_topic: cfg.topics.requests.as_str().into(),
            default_tier: cfg.limiter.default_tier.as_str().into(),
            window_s: cfg.limiter.window_s,
            max_clock_skew_ms: u64::from(cfg.api.max_clock_skew_s) * 1000,
            limits: cfg.limits,
            dependencies: cfg.dependencies.keys().cloned().collect(),
            limit_keys: cfg.tiers.keys().flat_map(|t| cfg.request_types.keys().map(move |rt| format!("{t}/{rt}"))).collect(),
        }
    }
}

/// What the admin endpoints need: the token and a producer for the admin topic.
pub struct Admin {
    pub token: String,
    pub producer: FutureProducer,
    pub topic: String,
}

/// An RFC 9457 problem.
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
    /// Extension members.
    extra: serde_json::Map<String, serde_json::Value>,
    /// Ask for a bearer token (401).
    bearer: bool,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem { status, title, detail: detail.into(), extra: serde_json::Map::new(), bearer: false }
    }

    /// Adds an extension member.
    pub(crate) fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// Adds `WWW-Authenticate: Bearer`.
    pub(crate) fn bearer(mut self) -> Self {
        self.bearer = true;
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "type": "about:blank", "title": self.title, "status": self.status.as_u16(), "detail": self.detail });
        if let Some(obj) = body.as_object_mut() {
            obj.extend(self.extra);
        }
        let mut r = (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response();
        if self.bearer {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer realm=\"surgeguard admin\""));
        }
        r
    }
}

/// The pipeline's state, waiting a little while it is busy (a partition's state being restored
/// holds it for longer: then 503). The main loop holds it for one message at a time, so a short
/// wait is first spent yielding (a sleep would cost a millisecond at least).
pub(crate) async fn lock(shared: &Mutex<Shared>) -> Result<MutexGuard<'_, Shared>, Problem> {
    let started = Instant::now();
    let mut tries = 0u32;
    loop {
        // (The guard never lives across the await: the handlers' futures must be Send.)
        match shared.try_lock() {
            Ok(g) => return Ok(g),
            Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
        tries += 1;
        if tries < 200 {
            tokio::task::yield_now().await;
            continue;
        }
        if started.elapsed() >= Duration::from_secs(2) {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "the pipeline's state is held by a rebalance (a restore, or a flush and commit); try again",
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The body, or a problem naming why it was refused (413 beyond `api.max_body_bytes`).
pub(crate) fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    body.map_err(|r| {
        let status = r.status();
        let title = if status == StatusCode::PAYLOAD_TOO_LARGE { "Payload Too Large" } else { "Bad Request" };
        Problem::new(status, title, r.body_text())
    })
}

/// An extractor: the request says its body is JSON (`Content-Type: application/json`, any
/// parameters), else 415. A page on another origin can send a cross-site request without asking
/// (a "simple" one) only with a form's types or `text/plain`; with this type the browser asks
/// first (a CORS preflight), and this API never answers yes. It stands before the body
/// extractor, so a refused body is not read.
pub(crate) struct JsonContent;

impl<S: Send + Sync> FromRequestParts<S> for JsonContent {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        require_json(&parts.headers).map(|()| JsonContent)
    }
}

/// `JsonContent`'s check, for handlers that have the headers already.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let got = match (types.next(), types.next()) {
        (Some(t), None) if is_json(t.as_bytes()) => return Ok(()),
        (None, _) => "none".to_string(),
        (Some(t), None) => format!("`{}`", String::from_utf8_lossy(t.as_bytes()).chars().take(100).collect::<String>()),
        (Some(_), Some(_)) => "more than one".to_string(),
    };
    Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type", format!("expected `Content-Type: application/json`, got {got}")))
}

/// Whether a `Content-Type` value is `application/json`, whatever its parameters (`;
/// charset=utf-8`); type and subtype are case-insensitive (RFC 9110, 8.3.1).
fn is_json(value: &[u8]) -> bool {
    let media_type = value.iter().position(|&b| b == b';').map_or(value, |end| &value[..end]);
    media_type.trim_ascii().eq_ignore_ascii_case(b"application/json")
}

/// A query string that did not parse, as a problem (axum's own rejection is plain text).
pub(crate) fn query<T>(q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, Problem> {
    q.map(|axum::extract::Query(v)| v).map_err(|r| Problem::new(StatusCode::BAD_REQUEST, "Bad Request", r.body_text()))
}

/// Path parameters that did not parse, as a problem.
pub(crate) fn path<T>(p: Result<axum::extract::Path<T>, axum::extract::rejection::PathRejection>) -> Result<T, Problem> {
    p.map(|axum::extract::Path(v)| v).map_err(|r| Problem::new(StatusCode::BAD_REQUEST, "Bad Request", r.body_text()))
}

pub(crate) use crate::kafka::clock::wall_clock;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_bodies_are_taken() {
        for ok in ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8", " application/json ", "application/json ; x=y"] {
            assert!(is_json(ok.as_bytes()), "{ok}");
        }
        let simple = ["", "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"];
        let near = ["application/jsonx", "application/problem+json", "application/json5", "application", "json"];
        for refused in simple.into_iter().chain(near) {
            assert!(!is_json(refused.as_bytes()), "{refused}");
        }
        let mut headers = HeaderMap::new();
        assert!(require_json(&headers).is_err(), "no type");
        headers.insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json; charset=utf-8"));
        assert!(require_json(&headers).is_ok());
        headers.append(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("text/plain"));
        assert!(require_json(&headers).is_err(), "two types");
    }
}

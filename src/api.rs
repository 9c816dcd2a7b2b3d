//! The HTTP API of `surgeguard run` (and of the demo, which runs the same path): the current
//! limits, breaker states, alerts and predictions as JSON, Prometheus metrics, health and
//! readiness. Handlers read the state the pipeline keeps (`rebalance::Shared`); errors are
//! `application/problem+json` (RFC 9457).
//!
//! The per-user endpoints are in `api_decide.rs`, the admin endpoints in `api_admin.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use crate::api_metrics::Metrics;
use crate::rebalance::Shared;
use crate::time::Millis;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<Mutex<Shared>>,
    pub metrics: Arc<Metrics>,
    /// Set once the instance has its partitions and their restored state.
    pub ready: Arc<AtomicBool>,
    /// Wakes the main loop to publish the API's decisions (`Shared::api_outputs`).
    pub wake: Arc<tokio::sync::Notify>,
    /// The admin endpoints' token and producer (none: admin is off).
    pub admin: Option<Arc<crate::api_admin::Admin>>,
    pub admin_token_env: String,
    pub partitioner: crate::partitioner::Partitioner,
    pub requests_topic: String,
    pub default_tier: String,
    pub window_s: u32,
    /// The configured dependencies and limit keys (`tier/request_type`).
    pub dependencies: Vec<String>,
    pub limit_keys: Vec<String>,
}

impl ApiState {
    pub fn new(cfg: &crate::config::Config, shared: Arc<Mutex<Shared>>, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Self {
        ApiState {
            shared,
            metrics,
            ready,
            wake: Arc::new(tokio::sync::Notify::new()),
            admin: None,
            admin_token_env: cfg.api.admin_token_env.clone(),
            partitioner: cfg.api.partitioner,
            requests_topic: cfg.topics.requests.clone(),
            default_tier: cfg.limiter.default_tier.clone(),
            window_s: cfg.limiter.window_s,
            dependencies: cfg.dependencies.keys().cloned().collect(),
            limit_keys: cfg.tiers.keys().flat_map(|t| cfg.request_types.keys().map(move |rt| format!("{t}/{rt}"))).collect(),
        }
    }
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
            return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Busy", "the pipeline's state is held by a rebalance (a restore, or a flush and commit); try again"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every route and its methods. `/openapi.json` documents exactly these (a unit test compares
/// them, and tests/api_openapi.rs calls each on a running service).
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["get"]),
    ("/openapi.json", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/v1/limits", &["get"]),
    ("/v1/limits/{tier}/{request_type}", &["get"]),
    ("/v1/breakers", &["get"]),
    ("/v1/breakers/{dependency}", &["get"]),
    ("/v1/alerts", &["get"]),
    ("/v1/predictions", &["get"]),
    ("/v1/users/{user_id}", &["get"]),
    ("/v1/decide", &["post"]),
    ("/v1/assignment", &["get"]),
    ("/v1/admin/breakers/{dependency}/{action}", &["post"]),
    ("/v1/admin/limits/{tier}/{request_type}/override", &["put", "delete"]),
];

/// The handlers of one route of `ROUTES`.
fn handlers(path: &str) -> MethodRouter<ApiState> {
    use crate::{api_admin, api_decide};
    match path {
        "/" => get(dashboard),
        "/openapi.json" => get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        "/healthz" => get(|| async { "ok\n" }),
        "/readyz" => get(readyz),
        "/metrics" => get(metrics),
        "/v1/limits" => get(limits),
        "/v1/limits/{tier}/{request_type}" => get(limit),
        "/v1/breakers" => get(breakers),
        "/v1/breakers/{dependency}" => get(breaker),
        "/v1/alerts" => get(alerts),
        "/v1/predictions" => get(predictions),
        "/v1/users/{user_id}" => get(api_decide::user),
        "/v1/decide" => post(api_decide::decide),
        "/v1/assignment" => get(api_decide::assignment),
        "/v1/admin/breakers/{dependency}/{action}" => post(api_admin::breaker),
        "/v1/admin/limits/{tier}/{request_type}/override" => put(api_admin::set_override).delete(api_admin::clear_override),
        _ => unreachable!("every path of ROUTES has handlers: {path}"),
    }
}

/// The OpenAPI 3.1 document of the API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The dashboard: one page, its script and styles inline, reading the endpoints above.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing but this origin: the page loads nothing from elsewhere.
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |r, (path, _)| r.route(path, handlers(path)))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "Not Found", "no such endpoint") })
        .method_not_allowed_fallback(|| async { Problem::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", "this endpoint does not take that method") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Not Ready", "partitions not assigned or their state not yet restored").into_response()
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    s.metrics.ready.set(i64::from(s.ready.load(Ordering::SeqCst)));
    let text = match lock(&s.shared).await {
        Ok(sh) => s.metrics.render(Some(&sh.topology)),
        // The counters still; the gauges read from the state as last scraped.
        Err(_) => s.metrics.render(None),
    };
    ([(header::CONTENT_TYPE, s.metrics.content_type())], text).into_response()
}

async fn limits(State(s): State<ApiState>) -> Result<Response, Problem> {
    let sh = lock(&s.shared).await?;
    Ok(Json(sh.topology.limits_now()).into_response())
}

async fn limit(State(s): State<ApiState>, Path((tier, request_type)): Path<(String, String)>) -> Result<Response, Problem> {
    let key = format!("{tier}/{request_type}");
    let sh = lock(&s.shared).await?;
    match sh.topology.limits_now().into_iter().find(|l| *l.key == *key) {
        Some(l) => Ok(Json(l).into_response()),
        None => Err(Problem::new(StatusCode::NOT_FOUND, "Not Found", format!("no limit `{key}` (tiers and request types are those of the config; none before the first event)"))),
    }
}

async fn breakers(State(s): State<ApiState>) -> Result<Response, Problem> {
    let sh = lock(&s.shared).await?;
    Ok(Json(sh.topology.breakers_now()).into_response())
}

async fn breaker(State(s): State<ApiState>, Path(dependency): Path<String>) -> Result<Response, Problem> {
    let sh = lock(&s.shared).await?;
    match sh.topology.breakers_now().into_iter().find(|b| *b.dependency == *dependency) {
        Some(b) => Ok(Json(b).into_response()),
        None => Err(Problem::new(StatusCode::NOT_FOUND, "Not Found", format!("no breaker for `{dependency}`"))),
    }
}

#[derive(Deserialize)]
struct Since {
    since: Option<String>,
}

async fn alerts(State(s): State<ApiState>, Query(q): Query<Since>) -> Result<Response, Problem> {
    let since = match q.since.as_deref() {
        None => None,
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| Millis(d.timestamp_millis()))
                .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "Bad Request", format!("since={t:?}: expected an RFC 3339 time ({e})")))?,
        ),
    };
    let sh = lock(&s.shared).await?;
    Ok(Json(sh.topology.alerts_since(since)).into_response())
}

async fn predictions(State(s): State<ApiState>) -> Result<Response, Problem> {
    let sh = lock(&s.shared).await?;
    Ok(Json(sh.topology.latest_predictions()).into_response())
}

/// Serves `router(state)` on `listener` until `shutdown` completes.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState, max_body_bytes: usize, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(state, max_body_bytes)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "OpenAPI 3.1");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in paths {
            for method in ops.as_object().expect("operations").keys().filter(|k| *k != "parameters") {
                documented.push((path.clone(), method.clone()));
                let op = &ops[method];
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}: responses");
                assert!(op["operationId"].is_string() && op["summary"].is_string(), "{method} {path}: operationId and summary");
                // Every path parameter is declared.
                for name in path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))) {
                    let declared = op["parameters"].as_array().into_iter().flatten().chain(ops["parameters"].as_array().into_iter().flatten()).any(|p| p["name"] == name && p["in"] == "path");
                    assert!(declared, "{method} {path}: parameter {name}");
                }
            }
        }
        let mut routed: Vec<(String, String)> = ROUTES.iter().flat_map(|(p, ms)| ms.iter().map(move |m| (p.to_string(), m.to_string()))).collect();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
        // Every $ref resolves.
        let text = OPENAPI;
        for r in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').expect("closing quote")];
            assert!(doc["components"]["schemas"][name].is_object(), "missing schema {name}");
        }
    }
}

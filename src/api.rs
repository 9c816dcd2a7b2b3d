//! The HTTP API of `surgeguard run` (and of the demo, which runs the same path): the current
//! limits, breaker states, alerts and predictions as JSON, Prometheus metrics, health and
//! readiness. Handlers read the state the pipeline keeps (`rebalance::Shared`); errors are
//! `application/problem+json` (RFC 9457).
//!
//! Built so far: the read endpoints, `/metrics`, `/healthz`, `/readyz`. Not yet: per-user quota
//! state, `POST /v1/decide`, the admin endpoints, `/openapi.json`, the dashboard, hot reload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
}

/// An RFC 9457 problem.
pub struct Problem {
    status: StatusCode,
    title: &'static str,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem { status, title, detail: detail.into() }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "type": "about:blank", "title": self.title, "status": self.status.as_u16(), "detail": self.detail });
        (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
    }
}

/// The pipeline's state, waiting a little while it is busy (a partition's state being restored
/// holds it for longer: then 503).
async fn lock(shared: &Mutex<Shared>) -> Result<MutexGuard<'_, Shared>, Problem> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        // (The guard never lives across the await: the handlers' futures must be Send.)
        match shared.try_lock() {
            Ok(g) => return Ok(g),
            Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
        if Instant::now() >= deadline {
            return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Busy", "the pipeline's state is held by a rebalance (a restore, or a flush and commit); try again"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/limits", get(limits))
        .route("/v1/limits/{tier}/{request_type}", get(limit))
        .route("/v1/breakers", get(breakers))
        .route("/v1/breakers/{dependency}", get(breaker))
        .route("/v1/alerts", get(alerts))
        .route("/v1/predictions", get(predictions))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "Not Found", "no such endpoint") })
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
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

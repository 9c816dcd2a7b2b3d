//! The HTTP API of `surgeguard run` (and of the demo, which runs the same path): the current
//! limits, breaker states, alerts and predictions as JSON, Prometheus metrics, health and
//! readiness. Handlers read the state the pipeline keeps (`kafka::shared::Shared`); errors are
//! `application/problem+json` (RFC 9457).
//!
//! The per-user endpoints are in `decide.rs`, the admin endpoints in `admin.rs`, what they all
//! share in `state.rs`.

use std::sync::atomic::Ordering;

use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

pub use crate::api::listener::Limits;
use crate::api::listener::{Capped, HeadClock, in_service};
use crate::api::state::lock;
pub use crate::api::state::{ApiState, Problem};
use crate::wire::time::Millis;

/// Every route and its methods. `/openapi.json` documents exactly these (a unit test compares
/// them, and tests/api_decide.rs calls each on a running service).
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
    use crate::api::{admin, decide};
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
        "/v1/users/{user_id}" => get(decide::user),
        "/v1/decide" => post(decide::decide),
        "/v1/assignment" => get(decide::assignment),
        "/v1/admin/breakers/{dependency}/{action}" => post(admin::breaker),
        "/v1/admin/limits/{tier}/{request_type}/override" => put(admin::set_override).delete(admin::clear_override),
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
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
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
        Ok(sh) => s.metrics.render(Some(&sh)),
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
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "Not Found",
            format!("no limit `{key}` (tiers and request types are those of the config; none before the first event)"),
        )),
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

async fn alerts(State(s): State<ApiState>, q: Result<Query<Since>, axum::extract::rejection::QueryRejection>) -> Result<Response, Problem> {
    let q = crate::api::state::query(q)?;
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

/// Serves `router(state)` on `listener` until `shutdown` completes, with the default connection
/// limits (`listener.rs`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    max_body_bytes: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state, max_body_bytes), Limits::default(), shutdown).await
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes: then no new
/// connection is accepted, each open one closes once the request it is serving is answered, and
/// this returns when they all have (axum's graceful shutdown, as before the limits).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn(in_service)).into_make_service_with_connect_info::<HeadClock>();
    axum::serve(Capped::new(listener, limits), app).with_graceful_shutdown(shutdown).await
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
                    let declared = op["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .chain(ops["parameters"].as_array().into_iter().flatten())
                        .any(|p| p["name"] == name && p["in"] == "path");
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

//! Operations: counts, the OpenAPI document, Prometheus metrics and the health probes.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald::Stats;
use serde_json::{json, Value};

use super::{ApiError, AppState};

/// The OpenAPI 3 document of the API.
pub(crate) const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /v1/stats`: counts by status.
pub(crate) async fn stats(State(app): State<AppState>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(app.herald().stats().await?))
}

/// `GET /v1/openapi.json`.
pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let handle = app.0.metrics.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process before the server's, so it has no metrics to show",
        )
    })?;
    handle.run_upkeep();
    let text = handle.render();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the server takes work (not shutting down, and the store answers).
pub(crate) async fn readyz(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    if app.is_closing() {
        return Err(ApiError::shutting_down());
    }
    app.herald().stats().await?;
    Ok(Json(json!({ "status": "ready" })))
}

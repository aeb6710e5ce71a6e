//! The HTTP API: the routes under `/v1`, `/metrics`, `/healthz` and `/readyz`, and the layers
//! around them (body limit, timeout, authentication, JSON errors).

mod auth;
mod cloudevents;
mod cron;
mod error;
mod events;
mod pull;
mod requests;
mod subscriptions;
mod system;
mod time;
mod webhook;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use bytes::Bytes;
use herald::Herald;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tower_http::timeout::TimeoutLayer;

use crate::config::Config;
pub(crate) use cron::start as start_crons;
pub(crate) use error::ApiError;
pub(crate) use subscriptions::{restore as restore_subscriptions, Registry};
pub(crate) use webhook::client as webhook_client;

/// What every handler shares.
#[derive(Clone, Debug)]
pub(crate) struct AppState(pub(crate) Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) herald: Herald,
    pub(crate) config: Config,
    /// Set when shutdown starts: `/readyz` fails and new work gets 503.
    pub(crate) closing: AtomicBool,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) subscriptions: Registry,
    /// The cron schedules made through the API.
    pub(crate) crons: cron::CronRegistry,
    /// The client webhooks are sent with.
    pub(crate) http: webhook::Client,
    /// The dashboard's recent past, sampled each second.
    pub(crate) history: crate::dashboard::History,
}

impl AppState {
    pub(crate) fn new(
        herald: Herald,
        config: Config,
        metrics: Option<PrometheusHandle>,
        http: webhook::Client,
    ) -> Self {
        // With a durable store, API-made subscriptions and schedules are kept in the data directory
        // across restarts (beside the embedded store's file; on Redis or PostgreSQL, per server).
        let keep = config.store.is_durable();
        if keep {
            if let Err(e) = std::fs::create_dir_all(&config.data) {
                tracing::error!(dir = %config.data.display(), error = %e, "herald: cannot create the data directory; API-made subscriptions will be lost at restart");
            }
        }
        let saved = keep.then(|| config.data.join("subscriptions.json"));
        let saved_crons = keep.then(|| config.data.join("cron.json"));
        let state = AppState(Arc::new(Shared {
            herald,
            config,
            closing: AtomicBool::new(false),
            metrics,
            subscriptions: Registry::new(saved),
            crons: cron::CronRegistry::new(saved_crons),
            http,
            history: crate::dashboard::History::default(),
        }));
        crate::dashboard::spawn_sampler(&state);
        state
    }

    pub(crate) fn herald(&self) -> &Herald {
        &self.0.herald
    }

    pub(crate) fn config(&self) -> &Config {
        &self.0.config
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.0.closing.load(Ordering::SeqCst)
    }

    pub(crate) fn close(&self) {
        self.0.closing.store(true, Ordering::SeqCst);
    }

    /// Fails with 503 when shutting down, and with 429 when the store holds `max_pending`
    /// unfinished deliveries: an HTTP publish answers at once instead of waiting for room.
    pub(crate) fn check_room(&self) -> Result<(), ApiError> {
        if self.is_closing() {
            return Err(ApiError::shutting_down());
        }
        let max = self.0.config.max_pending;
        match self.herald().store().backlog() {
            Some(n) if n >= max => Err(ApiError::full(max)),
            _ => Ok(()),
        }
    }
}

/// A request body parsed as JSON, with our errors (400, 413) instead of axum's.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = RawBody::from_request(req, state).await?.0;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body, or says what is wrong with it.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid("the body is empty: send a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("the body is not valid for this call: {e}")))
}

/// The raw request body, within the body limit.
pub(crate) struct RawBody(pub(crate) Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(state.config().body_limit)
            } else {
                ApiError::invalid(format!("the body could not be read: {}", r.body_text()))
            }
        })
    }
}

/// Every route of the API: its method, path and handler. The router is built from this table,
/// and a test checks that the OpenAPI document describes each one.
pub(crate) fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::POST, "/v1/events", post(events::publish)),
        (Method::GET, "/v1/events", get(events::list)),
        (Method::GET, "/v1/events/{id}", get(events::detail)),
        (Method::POST, "/v1/events/{id}/cancel", post(events::cancel)),
        (Method::POST, "/v1/requests", post(requests::request)),
        (Method::POST, "/v1/deliveries/{id}/retry", post(events::retry)),
        (Method::GET, "/v1/subscriptions", get(subscriptions::list)),
        (Method::POST, "/v1/subscriptions", post(subscriptions::create)),
        (Method::GET, "/v1/subscriptions/{name}", get(subscriptions::detail)),
        (
            Method::DELETE,
            "/v1/subscriptions/{name}",
            axum::routing::delete(subscriptions::delete),
        ),
        (
            Method::POST,
            "/v1/subscriptions/{name}/pause",
            post(subscriptions::pause),
        ),
        (
            Method::POST,
            "/v1/subscriptions/{name}/resume",
            post(subscriptions::resume),
        ),
        (Method::POST, "/v1/subscriptions/{name}/claim", post(pull::claim)),
        (Method::POST, "/v1/subscriptions/{name}/ack", post(pull::ack)),
        (Method::POST, "/v1/subscriptions/{name}/nack", post(pull::nack)),
        (Method::POST, "/v1/subscriptions/{name}/extend", post(pull::extend)),
        (Method::GET, "/v1/cron", get(cron::list)),
        (Method::POST, "/v1/cron", post(cron::create)),
        (Method::GET, "/v1/cron/{name}", get(cron::detail)),
        (Method::DELETE, "/v1/cron/{name}", axum::routing::delete(cron::delete)),
        (Method::POST, "/v1/cron/{name}/pause", post(cron::pause)),
        (Method::POST, "/v1/cron/{name}/resume", post(cron::resume)),
        (Method::GET, "/v1/stats", get(system::stats)),
        (Method::GET, "/v1/stats/history", get(crate::dashboard::history)),
        (Method::GET, "/v1/stats/stream", get(crate::dashboard::stream)),
        (Method::GET, "/v1/openapi.json", get(system::openapi)),
        (Method::GET, "/metrics", get(system::metrics)),
        (Method::GET, "/healthz", get(system::healthz)),
        (Method::GET, "/readyz", get(system::readyz)),
    ]
}

/// Paths open without a token: probes must work without credentials, and the dashboard's page
/// must load to ask for a token.
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

/// The application: every route with its layers.
pub(crate) fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    let timeout = state.config().request_timeout;
    router
        .merge(crate::dashboard::pages())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(DefaultBodyLimit::max(state.config().body_limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {method} {}: see /v1/openapi.json for the API",
        uri.path()
    ))
}

async fn method_not_allowed() -> ApiError {
    ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// Turns error responses that are not already JSON (from layers and extractors) into the API's
/// JSON error shape, so that clients parse one shape.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (parts, _) = response.into_parts();
    let mut rewritten = ApiError::from_status(status).into_response();
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, v.clone());
        }
    }
    rewritten
}

/// Counts requests by method, route and status, and times them by route:
/// `herald_http_requests_total` and `herald_http_request_seconds`.
async fn record_request(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    // The route's template, not the path, keeps the label set small; `:id` rather than `{id}`,
    // which some Prometheus parsers mishandle inside label values.
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || "unmatched".to_owned(),
        |p| p.as_str().replace('{', ":").replace('}', ""),
    );
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("herald_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("herald_http_request_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    response
}

pub(crate) fn is_open_path(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || crate::dashboard::is_page(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::system::OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap().split('.').next(), Some("3"));
        let paths = doc["paths"].as_object().unwrap();
        let mut described = 0;
        for (method, path, _) in super::routes() {
            let op = paths
                .get(path)
                .and_then(|p| p.get(method.as_str().to_lowercase()))
                .unwrap_or_else(|| panic!("{method} {path} is not in openapi.json"));
            assert!(op.get("responses").is_some(), "{method} {path} has no responses");
            described += 1;
        }
        let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(
            documented, described,
            "openapi.json documents a route the router does not have"
        );
    }
}

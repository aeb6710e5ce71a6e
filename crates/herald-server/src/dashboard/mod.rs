//! The web dashboard at `/`: a small hand-written page (HTML, CSS, vanilla JS, charts drawn as
//! SVG) compiled into the binary, that works through the `/v1` API like any other client. The
//! server adds two calls for it: `GET /v1/stats/history` (the last 15 minutes, a point a second)
//! and `GET /v1/stats/stream` (the same points live, as Server-Sent Events).
//!
//! The page and its assets load without a token; every API call it makes needs one when the
//! server has tokens (the page asks for it on a 401 and keeps it in `sessionStorage`). The stream
//! is read with `fetch`, not `EventSource`, so that it too sends the `Authorization` header.

mod history;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;

use crate::api::{ApiError, AppState};
pub(crate) use history::{spawn_sampler, History};

/// A file of the page: its path, media type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../assets/dashboard/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/dashboard/app.js"),
    },
    Asset {
        path: "/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/dashboard/app.css"),
    },
    Asset {
        path: "/assets/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../assets/dashboard/favicon.svg"),
    },
];

/// Everything the page loads comes from this server; nothing inline, nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the page's files (served without a token).
pub(crate) fn is_page(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The page and its assets: `GET /` and `GET /assets/{file}`.
pub(crate) fn pages() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { serve("/") }))
        .route("/assets/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    serve(&format!("/assets/{file}"))
}

fn serve(path: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return ApiError::not_found(format!("no dashboard file {path}")).into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidate every time: a new binary serves a new page at the same paths.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

/// `GET /v1/stats/history`: the last 15 minutes, a point a second, oldest first.
pub(crate) async fn history(State(app): State<AppState>) -> Json<history::HistoryView> {
    Json(app.0.history.view())
}

/// `GET /v1/stats/stream`: Server-Sent Events, a `sample` event (a point with the counts) each
/// second; the stream ends when the server shuts down.
pub(crate) async fn stream(State(app): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = app.0.history.subscribe();
    let samples = futures_util::stream::unfold((live, true), |(mut live, first)| async move {
        // The newest sample at once, then each new one.
        if !first && live.changed().await.is_err() {
            return None;
        }
        let now = live.borrow_and_update().clone();
        if now.closed {
            return None;
        }
        let event = match now.sample {
            Some(sample) => Event::default()
                .event("sample")
                .json_data(&*sample)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "herald: a dashboard sample could not be encoded");
                    Event::default().comment("skipped")
                }),
            None => Event::default().comment("no sample yet"),
        };
        Some((Ok(event), (live, false)))
    });
    Sse::new(samples).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

//! Bearer-token authentication: when the server has tokens, every path but the probes needs
//! `Authorization: Bearer <token>` with one of them.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{is_open_path, ApiError, AppState};

/// Compares in time independent of where the strings differ, so that response times do not
/// reveal a token's prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn require_token(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let tokens = &app.config().tokens;
    if tokens.is_empty() || is_open_path(request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let allowed = presented.is_some_and(|p| tokens.iter().any(|t| same(t.as_bytes(), p.as_bytes())));
    if allowed {
        return next.run(request).await;
    }
    let message = if presented.is_some() {
        "the bearer token is not one of the server's tokens: check --token / HERALD_TOKENS"
    } else {
        "this server requires `Authorization: Bearer <token>` with one of its tokens"
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"herald\""),
    );
    response
}

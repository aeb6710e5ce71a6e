//! API errors: every failure is JSON `{"error": {"code", "message"}}` with a status that says
//! whose fault it is, and a message that says what to do.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald::{PublishError, RequestError, StoreError};
use serde::Serialize;

/// A failed API call, ready to be sent.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed or invalid.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404: no such event, delivery or subscription.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the thing exists but is not in a state that allows this.
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 413: the body is over the limit.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes: split the batch, or raise body_limit"),
        )
    }

    /// 429: the queue is full.
    pub(crate) fn full(max_pending: u64) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "the queue is full ({max_pending} deliveries unfinished): retry after the Retry-After delay, \
                     or raise max_pending"
                ),
            )
        }
    }

    /// 503: the server is shutting down.
    pub(crate) fn shutting_down() -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down and takes no new work: retry against another instance or after it restarts",
            )
        }
    }

    /// 500: something failed on the server's side.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A status with no body of its own (from a layer: 405, 408, 413, ...) as a JSON error.
    pub(crate) fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                status,
                "payload_too_large",
                "the request body is over the limit: split the batch, or raise body_limit",
            ),
            StatusCode::REQUEST_TIMEOUT => Self::new(
                status,
                "timeout",
                "the request took longer than the server's request_timeout_ms: ask for less, or raise it",
            ),
            StatusCode::METHOD_NOT_ALLOWED => Self::new(
                status,
                "method_not_allowed",
                "this path does not take this method: see /v1/openapi.json",
            ),
            StatusCode::UNAUTHORIZED => Self::new(
                status,
                "unauthorized",
                "send `Authorization: Bearer <token>` with one of the server's tokens",
            ),
            s if s.is_client_error() => Self::new(s, "invalid_request", s.canonical_reason().unwrap_or("bad request")),
            s => Self::new(s, "internal", s.canonical_reason().unwrap_or("server error")),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => ApiError {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("{e}: retry shortly"),
                )
            },
            StoreError::Unsupported(_) => Self::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported",
                format!("{e}: use a store that supports it"),
            ),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Topic(e) => Self::invalid(e.to_string()),
            PublishError::Priority(e) => Self::invalid(e.to_string()),
            PublishError::Encode(e) => Self::invalid(format!("the payload could not be encoded: {e}")),
            PublishError::Full { max_pending } => Self::full(max_pending),
            PublishError::ShuttingDown => Self::shutting_down(),
            PublishError::Store(e) => e.into(),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Publish(e) => e.into(),
            RequestError::NoHandler(_) => Self::new(StatusCode::NOT_FOUND, "no_handler", e.to_string()),
            RequestError::Timeout(_) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("{e}: raise timeout_ms, or check the subscription's handler"),
            ),
            RequestError::Failed(_) => Self::new(StatusCode::BAD_GATEWAY, "handler_failed", e.to_string()),
            RequestError::Decode(_) => Self::new(StatusCode::BAD_GATEWAY, "reply_not_json", e.to_string()),
            RequestError::ShuttingDown => Self::shutting_down(),
            RequestError::Store(e) => e.into(),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<herald::Error> for ApiError {
    fn from(e: herald::Error) -> Self {
        match e {
            herald::Error::Publish(e) => e.into(),
            herald::Error::Request(e) => e.into(),
            herald::Error::Store(e) => e.into(),
            herald::Error::Topic(e) => Self::invalid(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

//! Request/reply over HTTP: publish a request and hold the HTTP request open until the handler's
//! reply, up to a timeout that stays inside the server's own request timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::events::{priority, topic};
use super::{ApiError, AppState, JsonBody};

/// The body of `POST /v1/requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestInput {
    topic: String,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    timeout_ms: Option<u64>,
    priority: Option<u64>,
    key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    source: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Reply {
    reply: Box<RawValue>,
}

/// How long a request waits when the client does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /v1/requests`: `{"reply": ...}` once a handler answers.
pub(crate) async fn request(
    State(app): State<AppState>,
    JsonBody(input): JsonBody<RequestInput>,
) -> Result<Json<Reply>, ApiError> {
    topic("topic", &input.topic)?;
    // The reply must come before the HTTP timeout layer gives up on the whole request.
    let longest = app.config().request_timeout.saturating_sub(Duration::from_millis(100));
    let timeout = match input.timeout_ms {
        Some(0) => return Err(ApiError::invalid("timeout_ms must be at least 1")),
        Some(ms) if Duration::from_millis(ms) > longest => {
            return Err(ApiError::invalid(format!(
                "timeout_ms {ms} is longer than this server allows ({} ms, under its request_timeout_ms)",
                longest.as_millis()
            )))
        }
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_TIMEOUT.min(longest),
    };
    app.check_room()?;
    let payload = input.payload.as_deref().unwrap_or(RawValue::NULL);
    let mut r = app
        .herald()
        .request::<RawValue, Box<RawValue>>(&input.topic, payload)
        .timeout(timeout);
    if let Some(p) = input.priority {
        r = r.priority(priority("priority", p)?);
    }
    if let Some(k) = input.key {
        r = r.key(k);
    }
    if let Some(s) = input.source {
        r = r.source(s);
    }
    for (k, v) in input.headers {
        r = r.header(k, v);
    }
    let reply = r.await?;
    Ok(Json(Reply { reply }))
}

//! Times in requests: RFC 3339 in UTC (`2026-11-25T18:53:24.512Z`) or milliseconds since the Unix
//! epoch. Responses always use RFC 3339.

use herald::Timestamp;
use serde_json::Value;

use super::ApiError;

/// Parses a time given as text: RFC 3339 (UTC, `Z`) or epoch milliseconds.
pub(crate) fn parse_text(field: &str, text: &str) -> Result<Timestamp, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Timestamp::from_millis(ms));
    }
    humantime::parse_rfc3339(text).map(Timestamp::from).map_err(|e| {
        ApiError::invalid(format!(
            "{field} '{text}' is not a time ({e}): use RFC 3339 in UTC such as 2026-11-25T18:53:24Z, or milliseconds \
             since the Unix epoch"
        ))
    })
}

/// Parses a time given as a JSON value: a string (see [`parse_text`]) or a number of epoch
/// milliseconds.
pub(crate) fn parse_value(field: &str, value: &Value) -> Result<Timestamp, ApiError> {
    match value {
        Value::String(s) => parse_text(field, s),
        Value::Number(n) => n.as_i64().map(Timestamp::from_millis).ok_or_else(|| {
            ApiError::invalid(format!(
                "{field} {n} is not a whole number of milliseconds since the Unix epoch"
            ))
        }),
        other => Err(ApiError::invalid(format!(
            "{field} is {other}: use an RFC 3339 string or milliseconds since the Unix epoch"
        ))),
    }
}

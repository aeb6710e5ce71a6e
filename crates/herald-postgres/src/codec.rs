//! How herald's values are written to and read from rows: ids as `uuid`, times as `bigint`
//! milliseconds, statuses as the codes of [`schema::status`](crate::schema::status), patterns as
//! the regular expressions the publish statement routes by.

use bytes::Bytes;
use herald_core::{
    AttemptOutcome, DeliveryStatus, Event, EventId, EventParts, Headers, Pattern, Priority, StoreError, Timestamp,
    Topic,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::schema::{outcome, status};

/// The event columns every read selects (over `events e`), in the order [`event_from_row`] reads
/// them.
pub(crate) const EVENT_COLUMNS: &str = "e.seq, e.id, e.topic, e.payload, e.content_type, e.source, e.headers, \
     e.priority, e.published_at, e.deliver_at, e.expires_at, e.key, e.reply_to";

/// Maps a PostgreSQL error onto the store's errors: anything is the store being unavailable
/// (the server down, a connection lost, a statement refused), which a caller may retry.
pub(crate) fn store_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::unavailable(e)
}

/// Whether a statement failed only because it collided with another (a deadlock or a
/// serialization failure): run again, it goes through.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// The regular expression (PostgreSQL `~`) that matches the topics `pattern` matches. Literal
/// segments hold only `[a-z0-9_-]`, none of them special in a regular expression.
pub(crate) fn pattern_regex(pattern: &Pattern) -> String {
    let parts: Vec<&str> = pattern
        .as_str()
        .split('.')
        .map(|s| match s {
            "*" => "[^.]+",
            ">" => ".+",
            literal => literal,
        })
        .collect();
    format!("^{}$", parts.join("\\."))
}

pub(crate) fn delivery_status(code: i16) -> Result<DeliveryStatus, StoreError> {
    Ok(match code {
        status::SCHEDULED => DeliveryStatus::Scheduled,
        status::PENDING => DeliveryStatus::Pending,
        status::ACTIVE => DeliveryStatus::Active,
        status::RETRYING => DeliveryStatus::Retrying,
        status::SUCCEEDED => DeliveryStatus::Succeeded,
        status::DEAD => DeliveryStatus::Dead,
        status::CANCELLED => DeliveryStatus::Cancelled,
        status::EXPIRED => DeliveryStatus::Expired,
        other => return Err(corrupt(format!("unknown delivery status code {other}"))),
    })
}

/// The status a delivery shows at `now`: a scheduled or retrying delivery whose time has come is
/// pending, whether or not a claim has moved it yet.
pub(crate) fn shown_status(code: i16, due: Timestamp, now: Timestamp) -> Result<DeliveryStatus, StoreError> {
    if (code == status::SCHEDULED || code == status::RETRYING) && due <= now {
        return Ok(DeliveryStatus::Pending);
    }
    delivery_status(code)
}

pub(crate) fn attempt_outcome(code: Option<i16>) -> Result<Option<AttemptOutcome>, StoreError> {
    Ok(match code {
        None => None,
        Some(outcome::SUCCEEDED) => Some(AttemptOutcome::Succeeded),
        Some(outcome::FAILED) => Some(AttemptOutcome::Failed),
        Some(outcome::DEAD) => Some(AttemptOutcome::Dead),
        Some(outcome::LEASE_EXPIRED) => Some(AttemptOutcome::LeaseExpired),
        Some(4) => Some(AttemptOutcome::Released),
        Some(other) => return Err(corrupt(format!("unknown attempt outcome code {other}"))),
    })
}

/// Headers as a JSON array of `[key, value]` pairs; `None` when there are none.
pub(crate) fn headers_text(h: &Headers) -> Option<String> {
    if h.is_empty() {
        return None;
    }
    serde_json::to_string(h).ok()
}

pub(crate) fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| corrupt(format!("column {i}: {e}")))
}

/// Reads an event selected with [`EVENT_COLUMNS`] starting at column `at` (the `seq`); returns
/// its `seq` and the event.
pub(crate) fn event_from_row(row: &Row, at: usize) -> Result<(i64, Event), StoreError> {
    let seq: i64 = get(row, at)?;
    let id: Uuid = get(row, at + 1)?;
    let topic_text: &str = get(row, at + 2)?;
    let topic = Topic::new(topic_text).map_err(corrupt)?;
    let payload: Vec<u8> = get(row, at + 3)?;
    let mut parts = EventParts::new(topic, Bytes::from(payload));
    parts.id = EventId::from_uuid(id);
    parts.content_type = get(row, at + 4)?;
    parts.source = get(row, at + 5)?;
    if let Some(text) = get::<Option<&str>>(row, at + 6)? {
        parts.headers = serde_json::from_str(text).map_err(|e| corrupt(format!("headers: {e}")))?;
    }
    let priority: i16 = get(row, at + 7)?;
    parts.priority = u8::try_from(priority)
        .ok()
        .and_then(|p| Priority::new(p).ok())
        .ok_or_else(|| corrupt(format!("priority {priority} is out of range")))?;
    parts.published_at = ts(get(row, at + 8)?);
    parts.deliver_at = ts(get(row, at + 9)?);
    parts.expires_at = get::<Option<i64>>(row, at + 10)?.map(ts);
    parts.key = get(row, at + 11)?;
    parts.reply_to = get(row, at + 12)?;
    Ok((seq, Event::from_parts(parts)))
}

pub(crate) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    get(row, i)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn patterns_become_anchored_regexes() {
        let re = |p: &str| pattern_regex(&Pattern::new(p).unwrap());
        assert_eq!(re("order.paid"), "^order\\.paid$");
        assert_eq!(re("order.*"), "^order\\.[^.]+$");
        assert_eq!(re("order.>"), "^order\\..+$");
        assert_eq!(re(">"), "^.+$");
        assert_eq!(re("*.created"), "^[^.]+\\.created$");
    }
}

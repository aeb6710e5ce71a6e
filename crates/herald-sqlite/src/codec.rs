//! How herald's values are written to and read from SQLite rows: ids as 16-byte blobs, times as
//! milliseconds, statuses as the codes of [`schema::status`](crate::schema::status).

use bytes::Bytes;
use herald_core::{
    AttemptOutcome, DeliveryId, DeliveryStatus, Event, EventId, EventParts, EventStatus, Headers, Priority, StoreError,
    Timestamp, Topic,
};
use rusqlite::types::Type;
use rusqlite::{ErrorCode, Row};
use uuid::Uuid;

use crate::schema::{outcome, status};

/// The event columns every read selects, in the order [`event_from_row`] reads them.
pub(crate) const EVENT_COLUMNS: &str =
    "seq, id, topic, payload, content_type, source, headers, priority, published_at, deliver_at, expires_at, key, reply_to";

/// Maps a SQLite error onto the store's errors: a damaged file is corrupt, anything else is the
/// store being unavailable (a full disk, an I/O error), which a caller may retry.
pub(crate) fn store_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(format!("the SQLite file is damaged: {e}"))
        }
        _ => StoreError::unavailable(e),
    }
}

/// A conversion error for a column that holds something herald never writes.
pub(crate) fn bad_column(index: usize, what: impl Into<String>) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, Type::Blob, what.into().into())
}

pub(crate) fn uuid_from(bytes: &[u8], index: usize) -> rusqlite::Result<Uuid> {
    Uuid::from_slice(bytes).map_err(|e| bad_column(index, format!("not a 16-byte id: {e}")))
}

pub(crate) fn event_id(row: &Row<'_>, index: usize) -> rusqlite::Result<EventId> {
    let bytes: Vec<u8> = row.get(index)?;
    uuid_from(&bytes, index).map(EventId::from_uuid)
}

pub(crate) fn delivery_id(row: &Row<'_>, index: usize) -> rusqlite::Result<DeliveryId> {
    let bytes: Vec<u8> = row.get(index)?;
    uuid_from(&bytes, index).map(DeliveryId::from_uuid)
}

pub(crate) fn ts(row: &Row<'_>, index: usize) -> rusqlite::Result<Timestamp> {
    row.get::<_, i64>(index).map(Timestamp::from_millis)
}

pub(crate) fn ts_opt(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(index)?.map(Timestamp::from_millis))
}

/// The code of an event status: the code of the delivery status it rolls up from.
pub(crate) fn event_status_code(s: EventStatus) -> i64 {
    match s {
        EventStatus::Unrouted => status::UNROUTED,
        EventStatus::Scheduled => status::SCHEDULED,
        EventStatus::Pending => status::PENDING,
        EventStatus::Active => status::ACTIVE,
        EventStatus::Retrying => status::RETRYING,
        EventStatus::Succeeded => status::SUCCEEDED,
        EventStatus::Dead => status::DEAD,
        EventStatus::Cancelled => status::CANCELLED,
        EventStatus::Expired => status::EXPIRED,
        _ => -1,
    }
}

pub(crate) fn delivery_status(code: i64, index: usize) -> rusqlite::Result<DeliveryStatus> {
    Ok(match code {
        status::SCHEDULED => DeliveryStatus::Scheduled,
        status::PENDING => DeliveryStatus::Pending,
        status::ACTIVE => DeliveryStatus::Active,
        status::RETRYING => DeliveryStatus::Retrying,
        status::SUCCEEDED => DeliveryStatus::Succeeded,
        status::DEAD => DeliveryStatus::Dead,
        status::CANCELLED => DeliveryStatus::Cancelled,
        status::EXPIRED => DeliveryStatus::Expired,
        other => return Err(bad_column(index, format!("unknown delivery status code {other}"))),
    })
}

/// The status a delivery shows at `now`: a scheduled or retrying delivery whose time has come is
/// pending, whether or not a claim has moved it yet.
pub(crate) fn shown_status(
    code: i64,
    due: Timestamp,
    now: Timestamp,
    index: usize,
) -> rusqlite::Result<DeliveryStatus> {
    if (code == status::SCHEDULED || code == status::RETRYING) && due <= now {
        return Ok(DeliveryStatus::Pending);
    }
    delivery_status(code, index)
}

pub(crate) fn attempt_outcome(code: Option<i64>, index: usize) -> rusqlite::Result<Option<AttemptOutcome>> {
    Ok(match code {
        None => None,
        Some(outcome::SUCCEEDED) => Some(AttemptOutcome::Succeeded),
        Some(outcome::FAILED) => Some(AttemptOutcome::Failed),
        Some(outcome::DEAD) => Some(AttemptOutcome::Dead),
        Some(outcome::LEASE_EXPIRED) => Some(AttemptOutcome::LeaseExpired),
        Some(outcome::RELEASED) => Some(AttemptOutcome::Released),
        Some(other) => return Err(bad_column(index, format!("unknown attempt outcome code {other}"))),
    })
}

/// Headers as a JSON array of `[key, value]` pairs; `None` when there are none.
pub(crate) fn headers_text(h: &Headers) -> Option<String> {
    if h.is_empty() {
        return None;
    }
    serde_json::to_string(h).ok()
}

/// Reads an event written with the columns of [`EVENT_COLUMNS`], starting at column `at` + 1 (column
/// `at` is the row's `seq`).
pub(crate) fn event_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Event> {
    let id = event_id(row, at + 1)?;
    let topic_text: String = row.get(at + 2)?;
    let topic = Topic::new(&topic_text).map_err(|e| bad_column(at + 2, e.to_string()))?;
    let payload: Vec<u8> = row.get(at + 3)?;
    let mut parts = EventParts::new(topic, Bytes::from(payload));
    parts.id = id;
    parts.content_type = row.get(at + 4)?;
    parts.source = row.get(at + 5)?;
    if let Some(text) = row.get::<_, Option<String>>(at + 6)? {
        parts.headers = serde_json::from_str(&text).map_err(|e| bad_column(at + 6, format!("headers: {e}")))?;
    }
    let priority: u8 = row.get(at + 7)?;
    parts.priority = Priority::new(priority).map_err(|e| bad_column(at + 7, e.to_string()))?;
    parts.published_at = ts(row, at + 8)?;
    parts.deliver_at = ts(row, at + 9)?;
    parts.expires_at = ts_opt(row, at + 10)?;
    parts.key = row.get(at + 11)?;
    parts.reply_to = row.get(at + 12)?;
    Ok(Event::from_parts(parts))
}

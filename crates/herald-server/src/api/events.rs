//! Events: publish (one, a batch, or CloudEvents), query the history, one event's detail, cancel;
//! and retrying a dead delivery.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use herald::{
    Attempt, AttemptOutcome, Cancelled, DeliveryId, DeliveryRecord, DeliveryStatus, Event, EventId, EventRecord,
    EventStatus, Message, Priority, Requeued, Topic, JSON,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{cloudevents, parse_json, time, ApiError, AppState, RawBody};

/// One event to publish, as clients send it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventInput {
    topic: String,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
    delay_ms: Option<u64>,
    at: Option<Value>,
    priority: Option<u64>,
    key: Option<String>,
    ttl_ms: Option<u64>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchInput {
    events: Vec<EventInput>,
}

/// A priority from a request: 0..=10.
pub(crate) fn priority(field: &str, p: u64) -> Result<Priority, ApiError> {
    u8::try_from(p).ok().and_then(|p| Priority::new(p).ok()).ok_or_else(|| {
        ApiError::invalid(format!(
            "{field} {p} is out of range: use 0..=10 (low 1, normal 5, high 8)"
        ))
    })
}

/// Checks a topic before anything is stored, naming the field it came from.
pub(crate) fn topic(field: &str, name: &str) -> Result<(), ApiError> {
    Topic::new(name)
        .map(drop)
        .map_err(|e| ApiError::invalid(format!("{field}: {e}")))
}

impl EventInput {
    /// The message to publish; `at` names the event in errors (`events[3]`).
    fn into_message(self, at: &str) -> Result<Message, ApiError> {
        topic(&format!("{at}.topic"), &self.topic)?;
        let payload = self.payload.as_deref().map_or("null", RawValue::get);
        let mut m = Message::bytes(self.topic, Bytes::copy_from_slice(payload.as_bytes()), JSON);
        match (self.delay_ms, &self.at) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "{at} has both delay_ms and at: give one of them"
                )))
            }
            (Some(ms), None) => m = m.delay(Duration::from_millis(ms)),
            (None, Some(t)) => m = m.at(time::parse_value(&format!("{at}.at"), t)?),
            (None, None) => {}
        }
        if let Some(p) = self.priority {
            m = m.priority(priority(&format!("{at}.priority"), p)?);
        }
        if let Some(k) = self.key {
            m = m.key(k);
        }
        if let Some(ttl) = self.ttl_ms {
            m = m.ttl(Duration::from_millis(ttl));
        }
        if let Some(s) = self.source {
            m = m.source(s);
        }
        for (k, v) in self.headers {
            m = m.header(k, v);
        }
        Ok(m)
    }
}

/// What a publish body holds: one event or a batch.
enum Publishing {
    One(Box<Message>),
    Batch(Vec<Message>),
}

fn parse_publish(headers: &HeaderMap, body: &[u8]) -> Result<Publishing, ApiError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with(cloudevents::STRUCTURED) {
        return cloudevents::structured(body).map(|m| Publishing::One(Box::new(m)));
    }
    if content_type.starts_with(cloudevents::BATCH) {
        return cloudevents::batch(body).map(Publishing::Batch);
    }
    if headers.contains_key(cloudevents::BINARY_MARKER) {
        return cloudevents::binary(headers, body).map(|m| Publishing::One(Box::new(m)));
    }
    // One event is the common case: try it first, and look for a batch only if that fails.
    let one_error = match serde_json::from_slice::<EventInput>(body) {
        Ok(one) => return one.into_message("the event").map(|m| Publishing::One(Box::new(m))),
        Err(e) => e,
    };
    // Top-level keys only (values stay unparsed) tell a batch from a malformed event.
    let keys: HashMap<String, &RawValue> = parse_json(body)?;
    if !keys.contains_key("events") {
        return Err(if body.iter().all(u8::is_ascii_whitespace) {
            ApiError::invalid("the body is empty: send a JSON object")
        } else {
            ApiError::invalid(format!("the body is not a valid event: {one_error}"))
        });
    }
    let batch: BatchInput = parse_json(body)?;
    if batch.events.is_empty() {
        return Err(ApiError::invalid("events is empty: send at least one event"));
    }
    let messages = batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.into_message(&format!("events[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Publishing::Batch(messages))
}

/// `POST /v1/events`: `{"id"}` for one event, `{"ids"}` for a batch.
pub(crate) async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Json<Value>, ApiError> {
    let publishing = parse_publish(&headers, &body.0)?;
    app.check_room()?;
    match publishing {
        Publishing::One(m) => {
            let id = app.herald().try_publish_message(*m).await?;
            Ok(Json(json!({ "id": id })))
        }
        Publishing::Batch(ms) => {
            let ids = app.herald().try_publish_batch(ms).await?;
            Ok(Json(json!({ "ids": ids })))
        }
    }
}

/// An event's own fields, as the API shows them.
#[derive(Debug, Serialize)]
pub(crate) struct EventBody {
    id: EventId,
    topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    content_type: String,
    source: Option<String>,
    key: Option<String>,
    priority: u8,
    headers: BTreeMap<String, String>,
    published_at: String,
    deliver_at: String,
    expires_at: Option<String>,
}

/// An event with its status and deliveries, as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct EventView {
    #[serde(flatten)]
    event: EventBody,
    status: EventStatus,
    deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Serialize)]
struct DeliveryView {
    id: DeliveryId,
    subscription: String,
    status: DeliveryStatus,
    attempt_count: u32,
    due: String,
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptView>>,
}

#[derive(Debug, Serialize)]
struct AttemptView {
    number: u32,
    started_at: String,
    finished_at: Option<String>,
    outcome: Option<AttemptOutcome>,
    error: Option<String>,
}

/// Whether a media type is JSON (`application/json`, `application/*+json`).
pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence == JSON || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl EventBody {
    /// The fields of `e`: a JSON payload as JSON, any other as base64.
    pub(crate) fn new(e: &Event) -> Self {
        let json_payload = is_json(e.content_type())
            .then(|| std::str::from_utf8(e.payload()).ok())
            .flatten()
            .and_then(|s| RawValue::from_string(s.to_owned()).ok());
        let payload_base64 = json_payload
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(e.payload()));
        EventBody {
            id: e.id(),
            topic: e.topic().as_str().to_owned(),
            payload: json_payload,
            payload_base64,
            content_type: e.content_type().to_owned(),
            source: e.source().map(str::to_owned),
            key: e.key().map(str::to_owned),
            priority: e.priority().get(),
            headers: e.headers().iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            published_at: e.published_at().to_string(),
            deliver_at: e.deliver_at().to_string(),
            expires_at: e.expires_at().map(|t| t.to_string()),
        }
    }
}

impl EventView {
    /// The view of a record; `with_attempts` for the detail of one event.
    pub(crate) fn new(record: &EventRecord, with_attempts: bool) -> Self {
        EventView {
            event: EventBody::new(&record.event),
            status: record.status,
            deliveries: record
                .deliveries
                .iter()
                .map(|d| DeliveryView::new(d, with_attempts))
                .collect(),
        }
    }
}

impl DeliveryView {
    fn new(d: &DeliveryRecord, with_attempts: bool) -> Self {
        DeliveryView {
            id: d.id,
            subscription: d.subscription.as_str().to_owned(),
            status: d.status,
            attempt_count: d.attempt_count,
            due: d.due.to_string(),
            last_error: d.last_error.clone(),
            attempts: with_attempts.then(|| d.attempts.iter().map(AttemptView::new).collect()),
        }
    }
}

impl AttemptView {
    fn new(a: &Attempt) -> Self {
        AttemptView {
            number: a.number,
            started_at: a.started_at.to_string(),
            finished_at: a.finished_at.map(|t| t.to_string()),
            outcome: a.outcome,
            error: a.error.clone(),
        }
    }
}

/// The filters of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    topic: Option<String>,
    status: Option<String>,
    subscription: Option<String>,
    since: Option<String>,
    until: Option<String>,
    key: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// An event id from a path or a query.
pub(crate) fn event_id(text: &str) -> Result<EventId, ApiError> {
    EventId::from_str(text).map_err(|_| {
        ApiError::invalid(format!(
            "'{text}' is not an event id: ids are UUIDs, as POST /v1/events returns them"
        ))
    })
}

/// `GET /v1/events`: newest first, `{"items", "next"}`; pass `next` as `after` for the next page.
pub(crate) async fn list(
    State(app): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let Query(p) = params.map_err(|r| ApiError::invalid(format!("{}: see /v1/openapi.json", r.body_text())))?;
    let mut q = app.herald().events();
    if let Some(t) = &p.topic {
        q = q.topic(t);
    }
    if let Some(s) = &p.status {
        q = q.status(EventStatus::from_str(s).map_err(|e| ApiError::invalid(e.to_string()))?);
    }
    if let Some(s) = &p.subscription {
        q = q.subscription(s);
    }
    if let Some(t) = &p.since {
        q = q.since(time::parse_text("since", t)?);
    }
    if let Some(t) = &p.until {
        q = q.until(time::parse_text("until", t)?);
    }
    if let Some(k) = p.key {
        q = q.key(k);
    }
    if let Some(l) = &p.limit {
        let n = l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=herald::PageRequest::MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "limit '{l}' is invalid: use 1..={}",
                    herald::PageRequest::MAX_LIMIT
                ))
            })?;
        q = q.limit(n);
    }
    if let Some(a) = &p.after {
        q = q.after(event_id(a)?);
    }
    let page = q.await?;
    Ok(Json(EventPage {
        items: page.items.iter().map(|r| EventView::new(r, false)).collect(),
        next: page.next,
    }))
}

/// One page of `GET /v1/events`.
#[derive(Debug, Serialize)]
pub(crate) struct EventPage {
    items: Vec<EventView>,
    next: Option<EventId>,
}

/// `GET /v1/events/{id}`: the event with its deliveries and their attempts.
pub(crate) async fn detail(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<EventView>, ApiError> {
    let id = event_id(&id)?;
    match app.herald().get(id).await? {
        Some(record) => Ok(Json(EventView::new(&record, true))),
        None => Err(ApiError::not_found(format!(
            "no event {id}: it never existed here, or retention removed it"
        ))),
    }
}

/// `POST /v1/events/{id}/cancel`: ends every delivery that has not started.
pub(crate) async fn cancel(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = event_id(&id)?;
    match app.herald().cancel(id).await? {
        Cancelled::Ended(n) => Ok(Json(json!({ "id": id, "cancelled": n }))),
        Cancelled::TooLate => Err(ApiError::conflict(
            "too_late",
            format!("event {id} cannot be cancelled: every delivery has already started or finished"),
        )),
        Cancelled::NotFound => Err(ApiError::not_found(format!("no event {id}"))),
        other => Err(ApiError::internal(format!("unexpected cancel result {other:?}"))),
    }
}

/// `POST /v1/deliveries/{id}/retry`: a dead delivery becomes pending again.
pub(crate) async fn retry(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = DeliveryId::from_str(&id).map_err(|_| {
        ApiError::invalid(format!(
            "'{id}' is not a delivery id: take one from an event's deliveries (GET /v1/events/{{id}})"
        ))
    })?;
    if app.is_closing() {
        return Err(ApiError::shutting_down());
    }
    match app.herald().retry(id).await? {
        Requeued::Requeued => Ok(Json(json!({ "id": id, "status": DeliveryStatus::Pending }))),
        Requeued::NotDead(status) => Err(ApiError::conflict(
            "not_dead",
            format!("delivery {id} is {status}, not dead: only dead deliveries can be retried"),
        )),
        Requeued::NotFound => Err(ApiError::not_found(format!("no delivery {id}"))),
        other => Err(ApiError::internal(format!("unexpected retry result {other:?}"))),
    }
}

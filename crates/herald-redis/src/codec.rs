//! How herald's values are written to Redis and read back: an event is a hash with one field per
//! part (payload as raw bytes, times as milliseconds, headers as JSON), ids are UUIDs in simple
//! (32 hex digits) form so that they sort as text in publication order, and attempts are
//! `number|started|finished|outcome|error` strings.

use bytes::Bytes;
use herald_core::{
    Attempt, AttemptOutcome, DeliveryId, DeliveryRecord, DeliveryStatus, Event, EventId, EventParts, EventRecord,
    Priority, StoreError, SubscriptionName, Timestamp, Topic,
};
use redis::Value;
use uuid::Uuid;

/// A store error for data that herald never writes.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("unexpected data in Redis: {what}"))
}

pub(crate) fn event_key(id: EventId) -> String {
    id.as_uuid().simple().to_string()
}

pub(crate) fn delivery_key(id: DeliveryId) -> String {
    id.as_uuid().simple().to_string()
}

pub(crate) fn parse_uuid(text: &[u8]) -> Result<Uuid, StoreError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| corrupt(format!("not an id: {}", String::from_utf8_lossy(text))))
}

/// The field/value pairs of an event's hash.
pub(crate) fn event_fields(e: &Event) -> Vec<(&'static str, Vec<u8>)> {
    let mut f: Vec<(&'static str, Vec<u8>)> = Vec::with_capacity(12);
    f.push(("top", e.topic().as_str().as_bytes().to_vec()));
    f.push(("pay", e.payload().to_vec()));
    f.push(("pr", e.priority().get().to_string().into_bytes()));
    f.push(("pub", e.published_at().as_millis().to_string().into_bytes()));
    f.push(("dl", e.deliver_at().as_millis().to_string().into_bytes()));
    if let Some(t) = e.expires_at() {
        f.push(("ex", t.as_millis().to_string().into_bytes()));
    }
    if e.content_type() != herald_core::JSON {
        f.push(("ct", e.content_type().as_bytes().to_vec()));
    }
    if let Some(s) = e.source() {
        f.push(("src", s.as_bytes().to_vec()));
    }
    if !e.headers().is_empty() {
        if let Ok(h) = serde_json::to_vec(e.headers()) {
            f.push(("hd", h));
        }
    }
    if let Some(k) = e.key() {
        f.push(("key", k.as_bytes().to_vec()));
    }
    if let Some(r) = e.reply_to() {
        f.push(("rt", r.as_bytes().to_vec()));
    }
    f
}

fn text(v: Vec<u8>, field: &str) -> Result<String, StoreError> {
    String::from_utf8(v).map_err(|_| corrupt(format!("event field '{field}' is not UTF-8")))
}

fn millis(v: &[u8], field: &str) -> Result<Timestamp, StoreError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map(Timestamp::from_millis)
        .ok_or_else(|| corrupt(format!("field '{field}' is not a time")))
}

/// Rebuilds an event from the flat field/value list of its hash.
pub(crate) fn event_from_hash(id: EventId, hash: Value) -> Result<Event, StoreError> {
    let items = array(hash)?;
    let mut topic = None;
    let mut payload = Bytes::new();
    let mut parts_fields: Vec<(String, Vec<u8>)> = Vec::new();
    let mut iter = items.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        let k = text(bytes(k)?, "name")?;
        let v = bytes(v)?;
        match k.as_str() {
            "top" => topic = Some(Topic::new(&text(v, "top")?).map_err(corrupt)?),
            "pay" => payload = Bytes::from(v),
            _ => parts_fields.push((k, v)),
        }
    }
    let topic = topic.ok_or_else(|| corrupt(format!("event {id} has no topic")))?;
    let mut p = EventParts::new(topic, payload);
    p.id = id;
    for (k, v) in parts_fields {
        match k.as_str() {
            "pr" => {
                let n = std::str::from_utf8(&v).ok().and_then(|s| s.parse::<u8>().ok());
                p.priority = n
                    .and_then(|n| Priority::new(n).ok())
                    .ok_or_else(|| corrupt("a priority"))?;
            }
            "pub" => p.published_at = millis(&v, "pub")?,
            "dl" => p.deliver_at = millis(&v, "dl")?,
            "ex" => p.expires_at = Some(millis(&v, "ex")?),
            "ct" => p.content_type = Some(text(v, "ct")?),
            "src" => p.source = Some(text(v, "src")?),
            "hd" => p.headers = serde_json::from_slice(&v).map_err(|e| corrupt(format!("headers: {e}")))?,
            "key" => p.key = Some(text(v, "key")?),
            "rt" => p.reply_to = Some(text(v, "rt")?),
            _ => {}
        }
    }
    Ok(Event::from_parts(p))
}

pub(crate) fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt(format!("expected a list, got {other:?}"))),
    }
}

pub(crate) fn bytes(v: Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(corrupt(format!("expected a string, got {other:?}"))),
    }
}

pub(crate) fn opt_bytes(v: Value) -> Result<Option<Vec<u8>>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        other => bytes(other).map(Some),
    }
}

fn text_lossy(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

pub(crate) fn string(v: Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(v)?).map_err(|_| corrupt("a string that is not UTF-8"))
}

pub(crate) fn int(v: Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(n) => Ok(n),
        other => {
            let s = string(other)?;
            s.parse::<i64>()
                .map_err(|_| corrupt(format!("expected a number, got '{s}'")))
        }
    }
}

pub(crate) fn status(s: &str) -> Result<DeliveryStatus, StoreError> {
    s.parse::<DeliveryStatus>().map_err(corrupt)
}

fn outcome(s: &str) -> Result<Option<AttemptOutcome>, StoreError> {
    Ok(Some(match s {
        "" => return Ok(None),
        "succeeded" => AttemptOutcome::Succeeded,
        "failed" => AttemptOutcome::Failed,
        "dead" => AttemptOutcome::Dead,
        "released" => AttemptOutcome::Released,
        "lease_expired" => AttemptOutcome::LeaseExpired,
        other => return Err(corrupt(format!("unknown attempt outcome '{other}'"))),
    }))
}

fn attempt(v: Value) -> Result<Attempt, StoreError> {
    let line = string(v)?;
    let mut parts = line.splitn(5, '|');
    let mut next = || parts.next().unwrap_or("");
    let (n, started, finished, out, err) = (next(), next(), next(), next(), next());
    let number = n.parse::<u32>().map_err(|_| corrupt(format!("attempt '{line}'")))?;
    let started = millis(started.as_bytes(), "attempt start")?;
    let mut a = Attempt::started(number, started);
    if !finished.is_empty() {
        a.finished_at = Some(millis(finished.as_bytes(), "attempt end")?);
    }
    a.outcome = outcome(out)?;
    if !err.is_empty() {
        a.error = Some(err.to_owned());
    }
    Ok(a)
}

/// An event record from one entry of the `READ` script. A scheduled or retrying delivery whose
/// time has come shows as pending, whether or not a claim has moved it yet.
pub(crate) fn record(v: Value, now: Timestamp, with_attempts: bool) -> Result<EventRecord, StoreError> {
    let mut it = array(v)?.into_iter();
    let (Some(eid), Some(hash), Some(ds)) = (it.next(), it.next(), it.next()) else {
        return Err(corrupt("a short event record"));
    };
    let id = EventId::from_uuid(parse_uuid(&bytes(eid)?)?);
    let event = event_from_hash(id, hash)?;
    let mut deliveries = Vec::new();
    for d in array(ds)? {
        let mut f = array(d)?.into_iter();
        let mut next = || f.next().unwrap_or(Value::Nil);
        let (did, sub, st, att, due, err, rep) = (next(), next(), next(), next(), next(), next(), next());
        let (ts, tf, to, te, attempts) = (next(), next(), next(), next(), next());
        let did = DeliveryId::from_uuid(parse_uuid(&bytes(did)?)?);
        let sub = SubscriptionName::new(&string(sub)?).map_err(corrupt)?;
        let due = Timestamp::from_millis(int(due)?);
        let mut status = status(&string(st)?)?;
        if matches!(status, DeliveryStatus::Scheduled | DeliveryStatus::Retrying) && due <= now {
            status = DeliveryStatus::Pending;
        }
        let mut r = DeliveryRecord::new(did, sub, status, due);
        r.attempt_count = u32::try_from(int(att)?).unwrap_or(0);
        r.last_error = opt_bytes(err)?.map(|b| String::from_utf8_lossy(&b).into_owned());
        r.reply = opt_bytes(rep)?.map(Bytes::from);
        r.attempts = array(attempts)?.into_iter().map(attempt).collect::<Result<_, _>>()?;
        // The latest attempt lives on the delivery; the list holds those before it.
        let field = |v: Value| -> Result<String, StoreError> { Ok(opt_bytes(v)?.map(text_lossy).unwrap_or_default()) };
        let (ts, tf, to, te) = (field(ts)?, field(tf)?, field(to)?, field(te)?);
        if with_attempts && !ts.is_empty() {
            let mut a = Attempt::started(r.attempt_count, millis(ts.as_bytes(), "ts")?);
            if !tf.is_empty() {
                a.finished_at = Some(millis(tf.as_bytes(), "tf")?);
            }
            a.outcome = outcome(&to)?;
            if !te.is_empty() {
                a.error = Some(te);
            }
            r.attempts.push(a);
        }
        deliveries.push(r);
    }
    Ok(EventRecord::new(event, deliveries))
}

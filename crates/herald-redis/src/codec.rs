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

/// The field/value pairs of an event's hash: the event itself as one value (see [`encode`]), and
/// its idempotency key on its own, for `purge`.
pub(crate) fn event_fields(e: &Event) -> Vec<(&'static str, Vec<u8>)> {
    let mut f = vec![("b", encode(e))];
    if let Some(k) = e.key() {
        f.push(("key", k.as_bytes().to_vec()));
    }
    f
}

const VERSION: u8 = 1;
const HAS_EXPIRY: u8 = 1;
const HAS_CONTENT_TYPE: u8 = 2;
const HAS_SOURCE: u8 = 4;
const HAS_HEADERS: u8 = 8;
const HAS_KEY: u8 = 16;
const HAS_REPLY_TO: u8 = 32;

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// An event (all but its id, which names the key) as bytes: a version, a flags byte for the
/// optional parts, then topic, payload, priority, published and due times, and the optional parts
/// that are set; strings and bytes length-prefixed (u32), times as i64 milliseconds, little-endian.
pub(crate) fn encode(e: &Event) -> Vec<u8> {
    let headers = (!e.headers().is_empty())
        .then(|| serde_json::to_vec(e.headers()).ok())
        .flatten();
    let content_type = (e.content_type() != herald_core::JSON).then(|| e.content_type());
    let mut flags = 0;
    for (set, bit) in [
        (e.expires_at().is_some(), HAS_EXPIRY),
        (content_type.is_some(), HAS_CONTENT_TYPE),
        (e.source().is_some(), HAS_SOURCE),
        (headers.is_some(), HAS_HEADERS),
        (e.key().is_some(), HAS_KEY),
        (e.reply_to().is_some(), HAS_REPLY_TO),
    ] {
        if set {
            flags |= bit;
        }
    }
    let mut buf = Vec::with_capacity(64 + e.payload().len());
    buf.push(VERSION);
    buf.push(flags);
    put(&mut buf, e.topic().as_str().as_bytes());
    put(&mut buf, e.payload());
    buf.push(e.priority().get());
    buf.extend_from_slice(&e.published_at().as_millis().to_le_bytes());
    buf.extend_from_slice(&e.deliver_at().as_millis().to_le_bytes());
    if let Some(t) = e.expires_at() {
        buf.extend_from_slice(&t.as_millis().to_le_bytes());
    }
    for s in [content_type, e.source()].into_iter().flatten() {
        put(&mut buf, s.as_bytes());
    }
    if let Some(h) = &headers {
        put(&mut buf, h);
    }
    for s in [e.key(), e.reply_to()].into_iter().flatten() {
        put(&mut buf, s.as_bytes());
    }
    buf
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("a truncated event"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn time(&mut self) -> Result<Timestamp, StoreError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(Timestamp::from_millis(i64::from_le_bytes(b)))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        let n = usize::try_from(u32::from_le_bytes(b)).map_err(corrupt)?;
        self.take(n)
    }

    fn text(&mut self) -> Result<String, StoreError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| corrupt("an event string that is not UTF-8"))
    }
}

/// The event `encode` wrote, with its id.
pub(crate) fn decode(id: EventId, v: Value) -> Result<Event, StoreError> {
    let raw = bytes(v)?;
    let mut r = Reader(&raw);
    if r.byte()? != VERSION {
        return Err(corrupt(format!(
            "event {id} was written by another version of herald-redis"
        )));
    }
    let flags = r.byte()?;
    let topic = Topic::new(&r.text()?).map_err(corrupt)?;
    let payload = Bytes::copy_from_slice(r.bytes()?);
    let mut p = EventParts::new(topic, payload);
    p.id = id;
    p.priority = Priority::new(r.byte()?).map_err(corrupt)?;
    p.published_at = r.time()?;
    p.deliver_at = r.time()?;
    if flags & HAS_EXPIRY != 0 {
        p.expires_at = Some(r.time()?);
    }
    if flags & HAS_CONTENT_TYPE != 0 {
        p.content_type = Some(r.text()?);
    }
    if flags & HAS_SOURCE != 0 {
        p.source = Some(r.text()?);
    }
    if flags & HAS_HEADERS != 0 {
        p.headers = serde_json::from_slice(r.bytes()?).map_err(|e| corrupt(format!("headers: {e}")))?;
    }
    if flags & HAS_KEY != 0 {
        p.key = Some(r.text()?);
    }
    if flags & HAS_REPLY_TO != 0 {
        p.reply_to = Some(r.text()?);
    }
    Ok(Event::from_parts(p))
}

fn millis(v: &[u8], field: &str) -> Result<Timestamp, StoreError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map(Timestamp::from_millis)
        .ok_or_else(|| corrupt(format!("field '{field}' is not a time")))
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
    let event = decode(id, hash)?;
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

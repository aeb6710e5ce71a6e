//! Events: what a publisher sends, as every handler and store sees it.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::Timestamp;
use crate::topic::Topic;

/// A UUIDv7: 48 bits of Unix milliseconds, a 12-bit sequence that keeps ids monotonic within the
/// process, and 62 random bits from a thread-local generator. (`Uuid::now_v7` asks the operating
/// system for randomness on every call, which showed up as a tenth of the bus's time.)
fn new_v7() -> Uuid {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    v7_at(now_ms)
}

/// A UUIDv7 for the Unix milliseconds `now_ms` (as a [`Clock`](crate::Clock) read it: the
/// runtime and the stores have just read theirs, and a clock read is a measurable part of an id).
fn v7_at(now_ms: u64) -> Uuid {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now_ms = now_ms & ((1 << 48) - 1);
    let mut prev = LAST.load(Ordering::Relaxed);
    let stamp = loop {
        let next = (now_ms << 12).max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(p) => prev = p,
        }
    };
    let (ms, seq) = (stamp >> 12, stamp & 0xfff);
    let high = (ms << 16) | 0x7000 | seq;
    let low = (fastrand::u64(..) >> 2) | 0x8000_0000_0000_0000;
    Uuid::from_u64_pair(high, low)
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        // The order of the bytes, compared as one big-endian integer: two instructions instead
        // of a byte loop, and ids are compared in every index lookup.
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.0.as_u128().cmp(&other.0.as_u128())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl $name {
            /// A new time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                $name(new_v7())
            }

            /// The id from its UUID.
            pub const fn from_uuid(id: Uuid) -> Self {
                $name(id)
            }

            /// The id as a UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

uuid_id! {
    /// An event's id: a UUIDv7, so ids sort in publication order.
    ///
    /// ```
    /// use herald_core::EventId;
    /// let a = EventId::new();
    /// let b = EventId::new();
    /// assert!(a < b);
    /// assert_eq!(a.to_string().parse::<EventId>().unwrap(), a);
    /// ```
    EventId
}

uuid_id! {
    /// A delivery's id: one event handed to one subscription.
    DeliveryId
}

impl EventId {
    /// A new time-ordered id for the time `now` (read from a herald [`Clock`](crate::Clock) just
    /// before), without reading the wall clock again.
    pub(crate) fn new_at(now: Timestamp) -> Self {
        EventId(v7_at(u64::try_from(now.as_millis()).unwrap_or(0)))
    }
}

impl DeliveryId {
    /// An id for a delivery of the event `event`: the event's time and sequence with random bits
    /// of its own (unique as any UUIDv7 is, and made without the process-wide sequence, a line
    /// that every publishing thread writes).
    pub(crate) fn for_event(event: EventId) -> Self {
        let (high, _) = event.0.as_u64_pair();
        let low = (fastrand::u64(..) >> 2) | 0x8000_0000_0000_0000;
        DeliveryId(Uuid::from_u64_pair(high, low))
    }
}

/// How urgent an event is: among due deliveries of a subscription, higher priorities run first.
///
/// Any value in `0..=10`; the named levels are those of the seed systems.
///
/// ```
/// use herald_core::Priority;
/// assert!(Priority::CRITICAL > Priority::HIGH);
/// assert_eq!(Priority::new(7).unwrap().get(), 7);
/// assert!(Priority::new(11).is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

/// A priority outside `0..=10`.
///
/// ```
/// use herald_core::{Priority, PriorityError};
/// assert_eq!(Priority::new(12), Err(PriorityError(12)));
/// assert_eq!(Priority::try_from(8), Ok(Priority::HIGH));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("priority {0} is out of range: use 0..=10 (low 1, normal 5, high 8, critical 10)")]
pub struct PriorityError(pub u8);

impl Priority {
    /// The lowest priority, 0.
    pub const MIN: Priority = Priority(0);
    /// Low: 1.
    pub const LOW: Priority = Priority(1);
    /// Normal: 5, the default.
    pub const NORMAL: Priority = Priority(5);
    /// High: 8.
    pub const HIGH: Priority = Priority(8);
    /// Critical: 10, the highest.
    pub const CRITICAL: Priority = Priority(10);

    /// A priority from `0..=10`.
    pub const fn new(p: u8) -> Result<Self, PriorityError> {
        if p <= 10 {
            Ok(Priority(p))
        } else {
            Err(PriorityError(p))
        }
    }

    /// Its value in `0..=10`.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

impl TryFrom<u8> for Priority {
    type Error = PriorityError;
    fn try_from(p: u8) -> Result<Self, PriorityError> {
        Priority::new(p)
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

/// String headers carried with an event: trace context, user metadata. Keys are unique.
///
/// ```
/// use herald_core::Headers;
/// let mut h = Headers::new();
/// h.insert("traceparent", "00-abc-def-01");
/// h.insert("tenant", "acme");
/// assert_eq!(h.get("tenant"), Some("acme"));
/// assert_eq!(h.len(), 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every header in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.insert(k, v);
        }
        h
    }
}

/// Encodes `value` as JSON into an allocation of exactly its size: serialising into a fresh `Vec`
/// leaves spare capacity that a payload would carry for as long as it is stored.
pub(crate) fn encode_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Bytes, serde_json::Error> {
    encode_json_with(value, Bytes::copy_from_slice)
}

/// [`encode_json`] into an event's body: a short one is kept in the event itself.
pub(crate) fn encode_json_body<T: serde::Serialize + ?Sized>(value: &T) -> Result<Body, serde_json::Error> {
    encode_json_with(value, Body::copy_from)
}

fn encode_json_with<T: serde::Serialize + ?Sized, B>(
    value: &T,
    keep: impl FnOnce(&[u8]) -> B,
) -> Result<B, serde_json::Error> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut buf = buf
            .try_borrow_mut()
            .map_err(|_| <serde_json::Error as serde::ser::Error>::custom("re-entrant serialisation"))?;
        buf.clear();
        serde_json::to_writer(&mut *buf, value)?;
        let bytes = keep(&buf);
        if buf.capacity() > 64 * 1024 {
            // Do not keep a huge buffer alive because of one large payload.
            *buf = Vec::new();
        }
        Ok(bytes)
    })
}

/// The content type of a payload when none is given.
pub const JSON: &str = "application/json";

/// The longest payload kept inside its event (see [`Body`]).
const INLINE_BODY: usize = 23;

/// An event's payload: up to 23 bytes in the event itself, as most payloads of an event bus are
/// (an id, a small record); more in shared `Bytes`. An inline payload costs no allocation to
/// publish and none to free when the event goes: together a twentieth of a quick event's
/// instructions, and a cache line fewer to move between cores.
#[derive(Clone)]
pub(crate) enum Body {
    Inline { len: u8, bytes: [u8; INLINE_BODY] },
    Shared(Bytes),
}

impl Body {
    /// `bytes`, inline if they fit.
    pub(crate) fn copy_from(bytes: &[u8]) -> Self {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE_BODY => {
                let mut inline = [0; INLINE_BODY];
                inline[..bytes.len()].copy_from_slice(bytes);
                Body::Inline { len, bytes: inline }
            }
            _ => Body::Shared(Bytes::copy_from_slice(bytes)),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Body::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Body::Shared(b) => b,
        }
    }

    fn to_bytes(&self) -> Bytes {
        match self {
            Body::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            Body::Shared(b) => b.clone(),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Body({} bytes)", self.as_slice().len())
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::Shared(b)
    }
}

/// An event, as handlers and stores see it. Cheap to clone (its fields are shared).
///
/// Build one through [`Herald::publish`](crate::Herald::publish); stores rebuild one with
/// [`Event::from_parts`].
///
/// ```
/// use herald_core::{Event, EventParts, Topic};
/// let event = Event::from_parts(EventParts::new(Topic::new("order.paid")?, r#"{"id":7}"#));
/// assert_eq!(event.topic().as_str(), "order.paid");
/// assert_eq!(event.content_type(), "application/json");
/// # Ok::<(), herald_core::TopicError>(())
/// ```
#[derive(Clone)]
pub struct Event(Arc<EventData>);

/// An event's fields, shared by its clones: a claim, a handler's context and the handler each hold
/// one, and a clone costs a reference count instead of copying 100 bytes and promoting the payload.
#[derive(Clone)]
struct EventData {
    id: EventId,
    topic: Topic,
    payload: Body,
    published_at: Timestamp,
    /// `deliver_at` as milliseconds after `published_at`, or `FAR` when that does not fit (over 24
    /// days either way): the time is then in `extra`. Four bytes instead of eight keep the event
    /// within 104 bytes, which puts its allocation in glibc's fast bins (chunks up to 128 bytes):
    /// events are freed in the order they were made, long after, and a larger chunk went through
    /// the unsorted bin and coalescing, 120 instructions more per event (and 16 bytes more).
    delay: i32,
    // `Timestamp::MAX` for never: half the size of an `Option`, and every stored event carries it.
    expires_at: Timestamp,
    priority: Priority,
    // What most events lack lives behind one pointer, so a scheduled event stays small in memory.
    extra: Option<Arc<Extra>>,
    fresh: Fresh,
}

/// Set on an event whose id the runtime has just made and no store has seen yet (see
/// [`Event::take_fresh`]); a copy of the fields is never fresh.
#[derive(Default)]
struct Fresh(std::sync::atomic::AtomicBool);

impl Clone for Fresh {
    fn clone(&self) -> Self {
        Fresh::default()
    }
}

/// `EventData::delay` of an event whose due time is in `Extra::deliver_at`.
const FAR: i32 = i32::MIN;

#[derive(Clone, Default, PartialEq, Eq)]
struct Extra {
    /// The due time of an event due more than 24 days from (or before) its publication.
    deliver_at: Option<Timestamp>,
    content_type: Option<String>,
    source: Option<String>,
    key: Option<String>,
    // Shared with the runtime that sends requests: a request copies no node name.
    reply_to: Option<Arc<str>>,
    headers: Headers,
}

/// A `reply_to` (a runtime's node name) as the extra fields of an event that has no others, so
/// that the requests of one runtime share one allocation for them.
#[derive(Clone)]
pub(crate) struct ReplyTo(Arc<Extra>);

impl ReplyTo {
    pub(crate) fn new(node: Arc<str>) -> Self {
        ReplyTo(Arc::new(Extra {
            reply_to: Some(node),
            ..Extra::default()
        }))
    }
}

impl fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.reply_to, f)
    }
}

/// Every field of an [`Event`], public: for stores that write events out and read them back.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventParts {
    /// The event's id.
    pub id: EventId,
    /// Its topic.
    pub topic: Topic,
    /// Its payload bytes.
    pub payload: Bytes,
    /// The payload's media type; `None` means JSON.
    pub content_type: Option<String>,
    /// Who published it (CloudEvents `source`).
    pub source: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// Its priority.
    pub priority: Priority,
    /// When it was published.
    pub published_at: Timestamp,
    /// When it is due; `published_at` for an immediate event.
    pub deliver_at: Timestamp,
    /// When it expires unhandled, if ever.
    pub expires_at: Option<Timestamp>,
    /// Its idempotency key.
    pub key: Option<String>,
    /// Where a reply goes: set on requests.
    pub reply_to: Option<String>,
}

impl EventParts {
    /// An immediate event of normal priority with a fresh id, published at the system time now.
    pub fn new(topic: Topic, payload: impl Into<Bytes>) -> Self {
        let now = Timestamp::now_system();
        EventParts {
            id: EventId::new(),
            topic,
            payload: payload.into(),
            content_type: None,
            source: None,
            headers: Headers::new(),
            priority: Priority::NORMAL,
            published_at: now,
            deliver_at: now,
            expires_at: None,
            key: None,
            reply_to: None,
        }
    }
}

impl Event {
    /// Builds an event from its parts.
    pub fn from_parts(mut p: EventParts) -> Self {
        let reply_to = p.reply_to.take().map(|r| ReplyTo::new(Arc::from(r)));
        Self::from_parts_replying(p, reply_to.as_ref(), false, None)
    }

    /// [`from_parts`](Self::from_parts) with a shared `reply_to` (`p.reply_to` is ignored) and,
    /// if given, `body` for the payload (`p.payload` is ignored then).
    /// `fresh`: the runtime has just made the id, so no store holds an event with it.
    pub(crate) fn from_parts_replying(
        p: EventParts,
        reply_to: Option<&ReplyTo>,
        fresh: bool,
        body: Option<Body>,
    ) -> Self {
        let content_type = p.content_type.filter(|c| c != JSON);
        let delay = i32::try_from(p.deliver_at.millis_since(p.published_at))
            .ok()
            .filter(|&d| d != FAR);
        // Most events have none of these: no `Extra` to build, compare and drop then.
        let plain =
            delay.is_some() && content_type.is_none() && p.source.is_none() && p.key.is_none() && p.headers.is_empty();
        let extra = match (plain, reply_to) {
            (true, None) => None,
            // A request with nothing else: the runtime's one `Extra` for its requests.
            (true, Some(r)) => Some(r.0.clone()),
            (false, r) => Some(Arc::new(Extra {
                deliver_at: delay.is_none().then_some(p.deliver_at),
                content_type,
                source: p.source,
                key: p.key,
                reply_to: r.and_then(|r| r.0.reply_to.clone()),
                headers: p.headers,
            })),
        };
        Event(Arc::new(EventData {
            id: p.id,
            topic: p.topic,
            payload: body.unwrap_or_else(|| Body::from(p.payload)),
            published_at: p.published_at,
            delay: delay.unwrap_or(FAR),
            expires_at: p.expires_at.unwrap_or(Timestamp::MAX),
            priority: p.priority,
            extra,
            fresh: Fresh(std::sync::atomic::AtomicBool::new(fresh)),
        }))
    }

    /// Whether the runtime made this event's id just now and no store has taken it yet: a store
    /// then needs no search for an earlier event with the same id.
    pub(crate) fn is_fresh(&self) -> bool {
        self.0.fresh.0.load(Ordering::Relaxed)
    }

    /// [`is_fresh`](Self::is_fresh), and from now on not fresh: the store taking the event calls
    /// it, so that the same event published again is checked like any other.
    pub(crate) fn take_fresh(&self) -> bool {
        let fresh = self.is_fresh();
        if fresh {
            self.0.fresh.0.store(false, Ordering::Relaxed);
        }
        fresh
    }

    /// Its parts.
    pub fn into_parts(self) -> EventParts {
        let deliver_at = self.deliver_at();
        let data = Arc::unwrap_or_clone(self.0);
        let extra = data.extra.map(Arc::unwrap_or_clone).unwrap_or_default();
        EventParts {
            id: data.id,
            topic: data.topic,
            payload: data.payload.to_bytes(),
            content_type: extra.content_type,
            source: extra.source,
            headers: extra.headers,
            priority: data.priority,
            published_at: data.published_at,
            deliver_at,
            expires_at: (data.expires_at != Timestamp::MAX).then_some(data.expires_at),
            key: extra.key,
            reply_to: extra.reply_to.map(|r| r.to_string()),
        }
    }

    /// The event's id.
    pub fn id(&self) -> EventId {
        self.0.id
    }

    /// Its topic.
    pub fn topic(&self) -> &Topic {
        &self.0.topic
    }

    /// Its payload bytes.
    ///
    /// ```
    /// use herald_core::{Event, EventParts, Topic};
    /// let event = Event::from_parts(EventParts::new(Topic::new("order.paid")?, r#"{"id":7}"#));
    /// assert_eq!(event.payload(), br#"{"id":7}"#);
    /// # Ok::<(), herald_core::TopicError>(())
    /// ```
    pub fn payload(&self) -> &[u8] {
        self.0.payload.as_slice()
    }

    /// Its payload as `Bytes`: shared with the event when it is longer than 23 bytes, a copy when
    /// the event keeps it inline.
    ///
    /// ```
    /// use herald_core::{Event, EventParts, Topic};
    /// let event = Event::from_parts(EventParts::new(Topic::new("report.ready")?, vec![7u8; 100]));
    /// let body: bytes::Bytes = event.payload_bytes();
    /// assert_eq!(&body[..], event.payload());
    /// # Ok::<(), herald_core::TopicError>(())
    /// ```
    pub fn payload_bytes(&self) -> Bytes {
        self.0.payload.to_bytes()
    }

    /// The payload's media type (`application/json` unless the publisher said otherwise).
    pub fn content_type(&self) -> &str {
        self.0
            .extra
            .as_ref()
            .and_then(|e| e.content_type.as_deref())
            .unwrap_or(JSON)
    }

    /// Who published it, if the publisher said.
    pub fn source(&self) -> Option<&str> {
        self.0.extra.as_ref().and_then(|e| e.source.as_deref())
    }

    /// Its headers.
    pub fn headers(&self) -> &Headers {
        static EMPTY: Headers = Headers::new();
        self.0.extra.as_ref().map_or(&EMPTY, |e| &e.headers)
    }

    /// Its priority.
    pub fn priority(&self) -> Priority {
        self.0.priority
    }

    /// When it was published.
    pub fn published_at(&self) -> Timestamp {
        self.0.published_at
    }

    /// When it is due.
    pub fn deliver_at(&self) -> Timestamp {
        match self.0.delay {
            FAR => self
                .0
                .extra
                .as_ref()
                .and_then(|e| e.deliver_at)
                .unwrap_or(self.0.published_at),
            delay => Timestamp::from_millis(self.0.published_at.as_millis().saturating_add(i64::from(delay))),
        }
    }

    /// When it expires unhandled, if ever.
    pub fn expires_at(&self) -> Option<Timestamp> {
        (self.0.expires_at != Timestamp::MAX).then_some(self.0.expires_at)
    }

    /// Whether it has expired at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.0.expires_at <= now
    }

    /// Its idempotency key.
    pub fn key(&self) -> Option<&str> {
        self.0.extra.as_ref().and_then(|e| e.key.as_deref())
    }

    /// Where a reply goes; set on requests.
    pub fn reply_to(&self) -> Option<&str> {
        self.0.extra.as_ref().and_then(|e| e.reply_to.as_deref())
    }

    /// Decodes the JSON payload.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.0.payload.as_slice())
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.0.id)
            .field("topic", &self.0.topic)
            .field("payload_len", &self.0.payload.as_slice().len())
            .field("priority", &self.0.priority)
            .field("deliver_at", &self.deliver_at())
            .field("expires_at", &self.expires_at())
            .field("key", &self.key())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
            && self.0.topic == other.0.topic
            && self.0.payload.as_slice() == other.0.payload.as_slice()
            && self.0.published_at == other.0.published_at
            && self.deliver_at() == other.deliver_at()
            && self.0.expires_at == other.0.expires_at
            && self.0.priority == other.0.priority
            && self.0.extra.as_deref().unwrap_or(&Extra::default())
                == other.0.extra.as_deref().unwrap_or(&Extra::default())
    }
}

impl Eq for Event {}

/// A hasher for maps keyed by ids ([`EventId`], [`DeliveryId`]): their bytes are already random
/// (62 random bits in every id herald makes), so folding them with a per-process seed is as good
/// as SipHash here at a tenth of the cost. Ids chosen by a client are mixed with the seed it cannot
/// see.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdHashState {
    seed: u64,
}

impl Default for IdHashState {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        IdHashState {
            seed: *SEED.get_or_init(|| fastrand::u64(..) | 1),
        }
    }
}

impl std::hash::BuildHasher for IdHashState {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.seed)
    }
}

/// See [`IdHashState`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write(&n.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        let h = self.0;
        (h ^ (h >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event's allocation stays in glibc's fast bins (see `EventData::delay`).
    #[test]
    fn an_event_fits_a_fast_bin_chunk() {
        assert!(
            std::mem::size_of::<EventData>() + 2 * std::mem::size_of::<usize>() <= 120,
            "EventData is {} bytes",
            std::mem::size_of::<EventData>()
        );
    }

    /// Due times more than 24 days from publication (either way) live outside the event's own
    /// fields; every due time reads back as given.
    #[test]
    fn due_times_near_and_far_read_back() {
        let published = Timestamp::from_millis(1_700_000_000_000);
        let day = 86_400_000i64;
        for offset in [
            0,
            1,
            -1,
            24 * day,
            25 * day,
            -25 * day,
            400 * day,
            i64::from(i32::MIN),
            i64::from(i32::MAX),
        ] {
            let mut p = EventParts::new(Topic::new("t.x").unwrap(), "1");
            p.published_at = published;
            p.deliver_at = Timestamp::from_millis(published.as_millis() + offset);
            let e = Event::from_parts(p.clone());
            assert_eq!(e.deliver_at(), p.deliver_at, "offset {offset} ms");
            assert_eq!(e.clone().into_parts(), p, "offset {offset} ms");
            assert_eq!(e, Event::from_parts(p), "offset {offset} ms");
        }
        let mut p = EventParts::new(Topic::new("t.x").unwrap(), "1");
        (p.published_at, p.deliver_at) = (Timestamp::EPOCH, Timestamp::MAX);
        assert_eq!(Event::from_parts(p).deliver_at(), Timestamp::MAX);
    }

    #[test]
    fn ids_are_version_7_and_strictly_increasing() {
        let ids: Vec<EventId> = (0..10_000).map(|_| EventId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let u = ids[0].as_uuid();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let (secs, _) = u.get_timestamp().map(|t| t.to_unix()).unwrap_or_default();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(now.abs_diff(secs) < 5, "the timestamp is the wall clock");
    }

    #[test]
    fn ids_made_at_a_clock_reading_carry_it_and_stay_increasing() {
        let clock = crate::Clock::new();
        let a = EventId::new_at(clock.now());
        let b = EventId::new();
        let c = EventId::new_at(clock.now());
        assert!(a < b && b < c, "ids from both sources keep one order");
        let (secs, _) = c.as_uuid().get_timestamp().map(|t| t.to_unix()).unwrap_or_default();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(now.abs_diff(secs) < 5, "the timestamp is the clock's wall-clock time");
    }
}

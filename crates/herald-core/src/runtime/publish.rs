//! Publishing: the message builder, backpressure, and request/reply.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::pool::{Job, Slot};
use super::subscribe::LocalSub;
use super::worker::{self, RanHere};
use super::{Answer, Herald, Inner};
use crate::error::{PublishError, RequestError};
use crate::event::{encode_json_body, Body, Event, EventId, EventParts, Headers, Priority, ReplyTo};
use crate::store::{CancelAs, ImmediateStore, PublishClaim, Published, Verdict};
use crate::time::Timestamp;
use crate::topic::Topic;

#[derive(Clone, Copy, Debug)]
enum When {
    Now,
    After(Duration),
    At(Timestamp),
}

/// An event to publish, with its options: the unit of [`Herald::publish_batch`].
///
/// Errors (an invalid topic, a payload that does not encode) are kept and reported when the
/// message is published, so options chain without `?` at every step.
///
/// ```
/// use herald_core::{Message, Priority};
/// use std::time::Duration;
///
/// let m = Message::json("order.paid", &serde_json::json!({"order": 7}))
///     .priority(Priority::HIGH)
///     .delay(Duration::from_secs(30))
///     .ttl(Duration::from_secs(600))
///     .key("order-7-paid")
///     .header("tenant", "acme");
/// ```
#[derive(Clone, Debug)]
#[must_use = "a message does nothing until it is published"]
pub struct Message {
    topic: MessageTopic,
    payload: Result<Body, String>,
    content_type: Option<String>,
    priority: Priority,
    when: When,
    ttl: Option<Duration>,
    key: Option<String>,
    source: Option<String>,
    headers: Headers,
    pub(crate) id: Option<EventId>,
    pub(crate) reply_to: Option<ReplyTo>,
}

/// A message's topic: as given (up to 23 bytes without an allocation: a batch of messages made
/// with `Message::json` allocated and freed a name each), or already interned by the runtime that
/// publishes it.
#[derive(Clone)]
enum MessageTopic {
    Name(smol_str::SmolStr),
    Interned(Topic, metrics::Counter),
}

impl MessageTopic {
    fn as_str(&self) -> &str {
        match self {
            MessageTopic::Name(name) => name,
            MessageTopic::Interned(topic, _) => topic.as_str(),
        }
    }
}

impl std::fmt::Debug for MessageTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Message {
    /// A message whose payload is `payload` encoded as JSON.
    pub fn json<T: Serialize + ?Sized>(topic: impl AsRef<str>, payload: &T) -> Self {
        Self::json_to(MessageTopic::Name(smol_str::SmolStr::new(topic)), payload)
    }

    fn json_to<T: Serialize + ?Sized>(topic: MessageTopic, payload: &T) -> Self {
        let payload = encode_json_body(payload).map_err(|e| e.to_string());
        Self::with_payload(topic, payload, None)
    }

    /// A message with raw payload bytes of the given media type.
    pub fn bytes(topic: impl AsRef<str>, payload: impl Into<Bytes>, content_type: impl Into<String>) -> Self {
        Self::with_payload(
            MessageTopic::Name(smol_str::SmolStr::new(topic)),
            Ok(Body::from(payload.into())),
            Some(content_type.into()),
        )
    }

    fn with_payload(topic: MessageTopic, payload: Result<Body, String>, content_type: Option<String>) -> Self {
        Message {
            topic,
            payload,
            content_type,
            priority: Priority::NORMAL,
            when: When::Now,
            ttl: None,
            key: None,
            source: None,
            headers: Headers::new(),
            id: None,
            reply_to: None,
        }
    }

    /// Due `d` from now instead of at once.
    pub fn delay(mut self, d: Duration) -> Self {
        self.when = When::After(d);
        self
    }

    /// Due at `t` (a [`Timestamp`] or a `SystemTime`); a time in the past is due at once.
    pub fn at(mut self, t: impl Into<Timestamp>) -> Self {
        self.when = When::At(t.into());
        self
    }

    /// Its priority (default: [`Priority::NORMAL`]). Among due deliveries of one subscription,
    /// higher priority is claimed first, then earlier due time. A subscription whose handlers
    /// take under a millisecond claims deliveries ahead (16 or more at a time, within its
    /// concurrency limit), so a delivery published after such a claim may wait behind those
    /// quick ones.
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }

    /// Its idempotency key: while an event with this key is kept in the store, publishing another
    /// with the same key stores nothing and returns the first event's id.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Expires unhandled if no attempt has started within `ttl` of its due time.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key, value);
        self
    }

    /// Who publishes it (CloudEvents `source`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    fn into_event(self, inner: &Inner, now: Timestamp) -> Result<(Event, metrics::Counter), PublishError> {
        let (topic, published) = match self.topic {
            MessageTopic::Interned(topic, counter) => (topic, counter),
            MessageTopic::Name(name) => inner.intern(name.as_str())?,
        };
        let payload = self
            .payload
            .map_err(|e| PublishError::Encode(serde::ser::Error::custom(e)))?;
        let deliver_at = match self.when {
            When::Now => now,
            When::After(d) => now + d,
            When::At(t) => t.max(now),
        };
        // An id the runtime makes is new to every store; one the caller gives may not be.
        let fresh = self.id.is_none();
        let parts = EventParts {
            id: self.id.unwrap_or_else(|| EventId::new_at(now)),
            topic,
            // The body goes in whole below.
            payload: Bytes::new(),
            content_type: self.content_type,
            source: self.source,
            headers: self.headers,
            priority: self.priority,
            published_at: now,
            deliver_at,
            expires_at: self.ttl.map(|ttl| deliver_at + ttl),
            key: self.key,
            reply_to: None,
        };
        Ok((
            Event::from_parts_replying(parts, self.reply_to.as_ref(), fresh, Some(payload)),
            published,
        ))
    }
}

thread_local! {
    /// The topic this thread last published to, with the id of the runtime that interned it: a
    /// run of publishes to one topic (the common case) is interned without the shared map, whose
    /// lock every publishing thread takes.
    static LAST_TOPIC: std::cell::RefCell<Option<(u64, Topic, metrics::Counter)>> = const { std::cell::RefCell::new(None) };
}

/// Whether a publish waits for room, fails when there is none, or ignores the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Room {
    Wait,
    Fail,
    Ignore,
}

impl Inner {
    /// The topic of a message published through this runtime, interned at once so that the message
    /// carries no copy of the name. An invalid name is kept as given, for the publish to report.
    fn message_topic(&self, name: &str) -> MessageTopic {
        match self.intern(name) {
            Ok((topic, counter)) => MessageTopic::Interned(topic, counter),
            Err(_) => MessageTopic::Name(smol_str::SmolStr::new(name)),
        }
    }

    /// The interned topic for `name` and its publish counter. Interning shares one allocation
    /// per topic among all the events that carry it.
    fn intern(&self, name: &str) -> Result<(Topic, metrics::Counter), PublishError> {
        let last = LAST_TOPIC.with(|last| {
            let last = last.try_borrow().ok()?;
            let (runtime, topic, counter) = last.as_ref()?;
            (*runtime == self.id && topic.as_str() == name).then(|| (topic.clone(), counter.clone()))
        });
        if let Some(hit) = last {
            return Ok(hit);
        }
        let (topic, counter) = self.intern_shared(name)?;
        LAST_TOPIC.with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some((self.id, topic.clone(), counter.clone()));
            }
        });
        Ok((topic, counter))
    }

    /// `intern` through the runtime's map of topics.
    fn intern_shared(&self, name: &str) -> Result<(Topic, metrics::Counter), PublishError> {
        if let Some((t, c)) = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get_key_value(name)
        {
            return Ok((t.clone(), c.clone()));
        }
        let topic = Topic::new(name)?;
        let counter = self.metrics.published(&topic);
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        if topics.len() >= 10_000 {
            topics.clear();
        }
        topics.insert(topic.clone(), counter.clone());
        Ok((topic, counter))
    }

    /// Whether a publish may go ahead at once; `reserve` waits (or fails) when it may not.
    fn has_room(&self, room: Room) -> Result<bool, PublishError> {
        if room != Room::Ignore && self.closing.load(Ordering::Relaxed) {
            return Err(PublishError::ShuttingDown);
        }
        let Some(max) = self.max_pending.filter(|_| room != Room::Ignore) else {
            return Ok(true);
        };
        Ok(self.store.backlog().is_none_or(|n| n < max))
    }

    async fn reserve(&self, room: Room) -> Result<(), PublishError> {
        if self.has_room(room)? {
            return Ok(());
        }
        let Some(max) = self.max_pending else {
            return Ok(());
        };
        let _waiting = super::RoomWaiter::new(self);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.store.backlog() {
                Some(n) if n >= max => {}
                _ => return Ok(()),
            }
            if room == Room::Fail {
                return Err(PublishError::Full { max_pending: max });
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.stop_claiming.cancelled() => return Err(PublishError::ShuttingDown),
            }
        }
    }

    pub(crate) async fn publish_many(
        &self,
        messages: Vec<Message>,
        room: Room,
    ) -> Result<Vec<Published>, PublishError> {
        // A unit of the cooperative budget per message, as for as many publishes (see
        // `PublishFuture`): one per batch let a task publishing batches in a loop keep its thread
        // for 128 of them, and the workers wait for it.
        for _ in 0..messages.len() {
            tokio::task::consume_budget().await;
        }
        self.reserve(room).await?;
        let now = self.clock.now();
        let mut events = Vec::with_capacity(messages.len());
        let mut counters = Vec::with_capacity(messages.len());
        for m in messages {
            let (event, counter) = m.into_event(self, now)?;
            events.push(event);
            counters.push(counter);
        }
        let due_now = events.iter().any(|e| e.deliver_at() <= now);
        let span = tracing::debug_span!("herald.publish", count = events.len());
        let published = self.store.publish(events).instrument(span).await?;
        let mut routed = false;
        for (p, c) in published.iter().zip(&counters) {
            if let Published::Stored { deliveries, .. } = p {
                c.increment(1);
                routed |= *deliveries > 0;
            }
        }
        if due_now && routed {
            // Straight to the pool rather than through the store's wakeup and the timer.
            self.notify_due();
        }
        Ok(published)
    }

    /// One message: what `publish_many` does for a batch of one, without its vectors.
    pub(crate) async fn publish_one(&self, message: Message, room: Room) -> Result<Published, PublishError> {
        if !self.has_room(room)? {
            // Rare: boxed, so that its future does not make every publish's larger.
            Box::pin(self.reserve(room)).await?;
        }
        match self.store.immediate() {
            // No future at all: the store answers at once.
            Some(store) => self.publish_now(store, message),
            None => {
                let now = self.clock.now();
                let (event, counter) = message.into_event(self, now)?;
                self.store_later(event, counter, now).await
            }
        }
    }

    /// `publish_one` through an immediate store, once there is room.
    fn publish_now(&self, store: &dyn ImmediateStore, message: Message) -> Result<Published, PublishError> {
        let now = self.clock.now();
        let (event, counter) = message.into_event(self, now)?;
        self.store_now(store, event, counter, now)
    }

    /// Stores an event made at `now` in an immediate store.
    fn store_now(
        &self,
        store: &dyn ImmediateStore,
        event: Event,
        counter: metrics::Counter,
        now: Timestamp,
    ) -> Result<Published, PublishError> {
        let due_now = event.deliver_at() <= now;
        let span = tracing::debug_span!("herald.publish", count = 1);
        let in_span = span.enter();
        // A delivery due now goes to this runtime's pool (`stored`): the timer need not hear of it.
        let published = store.publish_one_now(event, now, self.own_listener)?;
        drop(in_span);
        self.stored(published, counter, due_now);
        Ok(published)
    }

    /// Stores an event made at `now` through the store's future.
    async fn store_later(
        &self,
        event: Event,
        counter: metrics::Counter,
        now: Timestamp,
    ) -> Result<Published, PublishError> {
        let due_now = event.deliver_at() <= now;
        let span = tracing::debug_span!("herald.publish", count = 1);
        let published = if span.is_disabled() {
            self.store.publish_one(event).await?
        } else {
            self.store.publish_one(event).instrument(span).await?
        };
        self.stored(published, counter, due_now);
        Ok(published)
    }

    /// Counts a stored event and hands a delivery that is due to the pool.
    fn stored(&self, published: Published, counter: metrics::Counter, due_now: bool) {
        if let Published::Stored { deliveries, .. } = published {
            counter.increment(1);
            if due_now && deliveries > 0 {
                // Straight to the pool rather than through the store's wakeup and the timer.
                self.notify_due();
            }
        }
    }
}

macro_rules! message_options {
    () => {
        /// Due `d` from now instead of at once.
        pub fn delay(mut self, d: Duration) -> Self {
            self.message = self.message.delay(d);
            self
        }

        /// Due at `t` (a [`Timestamp`] or a `SystemTime`); a time in the past is due at once.
        pub fn at(mut self, t: impl Into<Timestamp>) -> Self {
            self.message = self.message.at(t);
            self
        }

        /// Its priority (default: [`Priority::NORMAL`]).
        pub fn priority(mut self, p: Priority) -> Self {
            self.message = self.message.priority(p);
            self
        }

        /// Its idempotency key: see [`Message::key`].
        pub fn key(mut self, key: impl Into<String>) -> Self {
            self.message = self.message.key(key);
            self
        }

        /// Sets a header.
        pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
            self.message = self.message.header(key, value);
            self
        }

        /// Who publishes it (CloudEvents `source`).
        pub fn source(mut self, source: impl Into<String>) -> Self {
            self.message = self.message.source(source);
            self
        }
    };
}

/// A publish in the making: options chain, `.await` publishes and returns the event's id.
///
/// Made by [`Herald::publish`] and [`Herald::try_publish`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Herald, Priority};
/// use std::time::Duration;
///
/// let herald = Herald::builder().build().await?;
/// let id = herald
///     .publish("invoice.remind", &"inv-42")
///     .delay(Duration::from_secs(3600))
///     .priority(Priority::HIGH)
///     .key("remind-inv-42") // a second publish with this key returns this id
///     .ttl(Duration::from_secs(600))
///     .header("tenant", "acme")
///     .await?;
/// let again = herald.publish("invoice.remind", &"inv-42").key("remind-inv-42").await?;
/// assert_eq!(again, id);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "nothing is published until the publish is awaited"]
pub struct Publish<'a> {
    herald: &'a Herald,
    message: Message,
    room: Room,
}

impl Publish<'_> {
    message_options!();

    /// Expires unhandled if no attempt has started within `ttl` of its due time.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.message = self.message.ttl(ttl);
        self
    }
}

impl<'a> IntoFuture for Publish<'a> {
    type Output = Result<EventId, PublishError>;
    type IntoFuture = PublishFuture<'a>;

    fn into_future(self) -> Self::IntoFuture {
        PublishFuture {
            state: PublishState::Start(self),
        }
    }
}

/// The future of a [`Publish`]: resolves to the event's id once it is stored.
///
/// Nothing is published before it is first polled. With a store that answers at once (the
/// [`MemoryStore`](crate::MemoryStore)) and room for the event, the publish is done in that first
/// poll, with nothing allocated for the future itself; otherwise it goes through the store's
/// future.
///
/// A publish spends a unit of tokio's [cooperative budget](tokio::task::coop), as a send on a
/// tokio channel does: a task that publishes in a loop yields its thread now and then (every 128
/// publishes by default), so that the workers, the timer and other tasks on that thread run
/// meanwhile. `publish_batch` spends a unit per message, `request` one.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::Herald;
/// use std::future::IntoFuture;
///
/// let herald = Herald::builder().build().await?;
/// let publishing = herald.publish("order.paid", &7).into_future();
/// assert_eq!(herald.events().topic("order.paid").await?.items.len(), 0, "not yet");
/// let id = publishing.await?;
/// assert_eq!(herald.events().topic("order.paid").await?.items[0].event.id(), id);
/// # Ok(()) }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct PublishFuture<'a> {
    state: PublishState<'a>,
}

// Large on purpose: the message is in the future, so that the common publish allocates nothing.
#[allow(clippy::large_enum_variant)]
enum PublishState<'a> {
    Start(Publish<'a>),
    Waiting(Pin<Box<dyn Future<Output = Result<EventId, PublishError>> + Send + 'a>>),
    Done,
}

impl std::fmt::Debug for PublishFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishFuture").finish_non_exhaustive()
    }
}

impl Future for PublishFuture<'_> {
    type Output = Result<EventId, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.state, PublishState::Done) {
                PublishState::Start(publish) => {
                    // A publish spends a unit of tokio's cooperative budget, as a send on a tokio
                    // channel does: with a store that answers at once, a task publishing in a loop
                    // would otherwise never give its thread up, and the workers that run what it
                    // publishes would wait for the whole loop to end.
                    let Poll::Ready(coop) = tokio::task::coop::poll_proceed(cx) else {
                        this.state = PublishState::Start(publish);
                        return Poll::Pending;
                    };
                    coop.made_progress();
                    let Publish { herald, message, room } = publish;
                    let inner = &herald.inner;
                    if let Some(store) = inner.store.immediate() {
                        match inner.has_room(room) {
                            Err(e) => return Poll::Ready(Err(e)),
                            Ok(true) => return Poll::Ready(inner.publish_now(store, message).map(|p| p.id())),
                            Ok(false) => {}
                        }
                    }
                    let publish = inner.publish_one(message, room);
                    this.state = PublishState::Waiting(Box::pin(futures_util::FutureExt::map(publish, |published| {
                        published.map(|p| p.id())
                    })));
                }
                PublishState::Waiting(mut publish) => {
                    let polled = publish.as_mut().poll(cx);
                    if polled.is_pending() {
                        this.state = PublishState::Waiting(publish);
                    }
                    return polled;
                }
                PublishState::Done => panic!("a PublishFuture polled after it completed"),
            }
        }
    }
}

impl Herald {
    /// Publishes `payload` (encoded as JSON) to `topic` and returns the event's id once stored.
    /// Chain options before awaiting; past `max_pending` unfinished deliveries it waits for room.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
    /// use herald_core::{Herald, Priority};
    /// use std::time::Duration;
    /// let herald = Herald::builder().build().await?;
    /// let id = herald.publish("order.paid", &serde_json::json!({"order": 7})).await?;
    /// let later = herald
    ///     .publish("invoice.remind", &"order 7")
    ///     .delay(Duration::from_secs(3600))
    ///     .priority(Priority::LOW)
    ///     .key("remind-7")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, payload: &T) -> Publish<'_> {
        Publish {
            herald: self,
            message: Message::json_to(self.inner.message_topic(topic), payload),
            room: Room::Wait,
        }
    }

    /// Like [`publish`](Herald::publish), but fails with [`PublishError::Full`] instead of
    /// waiting when `max_pending` deliveries are unfinished.
    pub fn try_publish<T: Serialize + ?Sized>(&self, topic: &str, payload: &T) -> Publish<'_> {
        Publish {
            herald: self,
            message: Message::json_to(self.inner.message_topic(topic), payload),
            room: Room::Fail,
        }
    }

    /// Publishes a prepared [`Message`].
    pub fn publish_message(&self, message: Message) -> Publish<'_> {
        Publish {
            herald: self,
            message,
            room: Room::Wait,
        }
    }

    /// Like [`publish_message`](Herald::publish_message), but fails with [`PublishError::Full`]
    /// instead of waiting for room.
    pub fn try_publish_message(&self, message: Message) -> Publish<'_> {
        Publish {
            herald: self,
            message,
            room: Room::Fail,
        }
    }

    /// Like [`publish_batch`](Herald::publish_batch), but fails with [`PublishError::Full`] instead
    /// of waiting for room (an HTTP API answers 429 at once this way).
    pub async fn try_publish_batch(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<EventId>, PublishError> {
        let published = self
            .inner
            .publish_many(messages.into_iter().collect(), Room::Fail)
            .await?;
        Ok(published.iter().map(Published::id).collect())
    }

    /// Publishes many messages in one store call; returns their ids in order. Nothing is stored
    /// if any message is invalid.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
    /// use herald_core::{Herald, Message};
    /// let herald = Herald::builder().build().await?;
    /// let ids = herald
    ///     .publish_batch((0..3).map(|i| Message::json("order.paid", &i)))
    ///     .await?;
    /// assert_eq!(ids.len(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn publish_batch(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<EventId>, PublishError> {
        let published = self
            .inner
            .publish_many(messages.into_iter().collect(), Room::Wait)
            .await?;
        Ok(published.iter().map(Published::id).collect())
    }

    /// Publishes a request and awaits the handler's reply, decoded as `R`, within a timeout
    /// (default 30 s). A request that times out expires: no handler will start on it later.
    ///
    /// When the handler is in this runtime, its subscription has room in its `concurrency` limit
    /// and nothing of it is due before the request, the requesting task runs the attempt itself,
    /// as a worker would (same timeout, panic isolation, history and metrics): a handler that
    /// answers without waiting is answered at once, with no worker woken. Such attempts count
    /// against the subscription's limit, not against the runtime's `workers`. A handler that
    /// waits goes on in a task of its own if the requester stops waiting.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
    /// use herald_core::{Herald, HandlerError, Context};
    /// use std::time::Duration;
    /// let herald = Herald::builder().build().await?;
    /// herald
    ///     .subscribe("doubler", "math.double")
    ///     .handle(|n: u64, _ctx: Context| async move { Ok::<_, HandlerError>(n * 2) })
    ///     .await?;
    /// let answer: u64 = herald.request("math.double", &21).timeout(Duration::from_secs(1)).await?;
    /// assert_eq!(answer, 42);
    /// # Ok(()) }
    /// ```
    pub fn request<T: Serialize + ?Sized, R: DeserializeOwned>(&self, topic: &str, payload: &T) -> Request<'_, R> {
        Request {
            herald: self,
            message: Message::json_to(self.inner.message_topic(topic), payload),
            timeout: Duration::from_secs(30),
            _reply: PhantomData,
        }
    }
}

/// A request in the making: `.await` publishes it and waits for the reply. Made by
/// [`Herald::request`]; it takes the options of a [`Publish`] (but `ttl`: the timeout is its TTL).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Herald, Priority, RequestError};
/// use std::time::Duration;
///
/// let herald = Herald::builder().build().await?;
/// herald
///     .subscribe("slowpoke", "report.render")
///     .handle(|_: u32, _ctx| async {
///         tokio::time::sleep(Duration::from_secs(60)).await;
///         Ok("done")
///     })
///     .await?;
/// let reply = herald
///     .request::<_, String>("report.render", &7)
///     .priority(Priority::HIGH)
///     .timeout(Duration::from_millis(50))
///     .await;
/// // Timed out: the request is expired and will not be handled later.
/// assert!(matches!(reply, Err(RequestError::Timeout(_))));
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "nothing is sent until the request is awaited"]
pub struct Request<'a, R> {
    herald: &'a Herald,
    message: Message,
    timeout: Duration,
    _reply: PhantomData<fn() -> R>,
}

impl<R> Request<'_, R> {
    message_options!();

    /// How long to wait for the reply (default: 30 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
}

impl<'a, R: DeserializeOwned + 'a> IntoFuture for Request<'a, R> {
    type Output = Result<R, RequestError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            // A quick handler may answer in this task without a wait: a unit of the cooperative
            // budget per request, as per publish (see `PublishFuture`).
            tokio::task::consume_budget().await;
            let inner = &self.herald.inner;
            if !inner.has_room(Room::Wait)? {
                Box::pin(inner.reserve(Room::Wait)).await?;
            }
            // Set in place: the message is large, and each builder call would move it.
            let mut message = self.message;
            message.ttl = Some(self.timeout);
            message.reply_to = Some(inner.reply_to.clone());
            // One clock read for the event's times, its id, the deadline and the attempt's start.
            let started = tokio::time::Instant::now();
            let deadline = started + self.timeout;
            let now = inner.clock.reading_at(started);
            let (mut event, counter) = message.into_event(inner, now)?;
            let id = event.id();
            let here = match inner.store.immediate() {
                Some(store) if event.deliver_at() <= now => inner.claim_here(event.topic()).map(|sub| (store, sub)),
                _ => None,
            };
            if let Some((store, sub)) = here {
                let claim = store.publish_claim_now(event, now, inner.own_listener, &sub.name, sub.lease);
                let claim = claim
                    .inspect_err(|_| sub.demand.release(1))
                    .map_err(PublishError::from)?;
                let (published, claimed) = match claim {
                    PublishClaim::Claimed(published, claimed) => (published, claimed),
                    PublishClaim::Stored(_) => {
                        // A duplicate (of a key): nothing runs it for this request.
                        sub.demand.release(1);
                        let answer = inner.wait_for(id);
                        return finish(inner, answer, id, deadline, self.timeout).await;
                    }
                    PublishClaim::Declined(declined) => {
                        sub.demand.release(1);
                        event = declined;
                        return request_through_pool(inner, event, counter, now, deadline, self.timeout).await;
                    }
                };
                counter.increment(1);
                if matches!(published, Published::Stored { deliveries, .. } if deliveries > 1) {
                    // Deliveries for other subscriptions are due.
                    inner.notify_due();
                }
                inner.in_flight.start(1);
                let job = Job {
                    claimed,
                    slot: Slot::new(sub),
                };
                let answer = match worker::run_here(inner, job, started).await {
                    RanHere::Ended(Some(done)) => match &done.outcome.verdict {
                        Verdict::Succeeded { reply } => {
                            // Decoded before the reply goes to the store with the outcome; nothing
                            // is awaited after (the reply type need not be `Send`).
                            let reply = reply.as_deref().unwrap_or_default();
                            let decoded = serde_json::from_slice(reply).map_err(RequestError::Decode);
                            let rest = worker::record_here(inner, store, done, true);
                            debug_assert!(rest.is_none(), "only a death has more to do");
                            return decoded;
                        }
                        Verdict::Dead { reason } => {
                            let failed = RequestError::Failed(reason.clone());
                            if let Some(death) = worker::record_here(inner, store, done, true) {
                                death.await;
                            }
                            return Err(failed);
                        }
                        _ => {
                            // It failed and is retried: its answer comes from a later attempt,
                            // which cannot start before the outcome is recorded.
                            let answer = inner.wait_for(id);
                            if let Some(death) = worker::record_here(inner, store, done, false) {
                                death.await;
                            }
                            answer
                        }
                    },
                    // The lease went to another claim (the handler outlived it without waiting):
                    // that attempt answers.
                    RanHere::Ended(None) => inner.wait_for(id),
                    RanHere::Waiting(rest) => {
                        let answer = inner.wait_for(id);
                        inner.background.spawn(rest);
                        answer
                    }
                };
                return finish(inner, answer, id, deadline, self.timeout).await;
            }
            request_through_pool(inner, event, counter, now, deadline, self.timeout).await
        })
    }
}

/// A request that this runtime's workers (or another's) answer: the waiter, then the event.
async fn request_through_pool<R: DeserializeOwned>(
    inner: &Inner,
    event: Event,
    counter: metrics::Counter,
    now: Timestamp,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<R, RequestError> {
    let id = event.id();
    let topic = event.topic().clone();
    // The waiter first: a worker may answer as soon as the event is stored.
    let answer = inner.wait_for(id);
    let stored = match inner.store.immediate() {
        Some(store) => inner.store_now(store, event, counter, now),
        None => inner.store_later(event, counter, now).await,
    };
    let published = match stored {
        Ok(published) => published,
        Err(e) => {
            inner.replies.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(e.into());
        }
    };
    if let Published::Stored { deliveries: 0, .. } = published {
        inner.replies.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        return Err(RequestError::NoHandler(topic));
    }
    finish(inner, answer, id, deadline, timeout).await
}

/// Waits for the answer to the request `id` (whose waiter `answer` is), until `deadline`.
async fn finish<R: DeserializeOwned>(
    inner: &Inner,
    answer: oneshot::Receiver<Answer>,
    id: EventId,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<R, RequestError> {
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(Answer::Reply(bytes))) => serde_json::from_slice(&bytes).map_err(RequestError::Decode),
        Ok(Ok(Answer::Failed(reason))) => Err(RequestError::Failed(reason)),
        Ok(Err(_)) => Err(RequestError::ShuttingDown),
        Err(_) => {
            inner.replies.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            // The event's TTL already keeps a later claim from starting it; ending it now makes
            // its status say so at once.
            inner.store.cancel(id, CancelAs::Expired).await?;
            inner.metrics.expired.increment(1);
            inner.made_room();
            Err(RequestError::Timeout(timeout))
        }
    }
}

/// The subscriptions of the runtime a thread last sent a request through (see `claim_here`).
struct RequestSubs {
    /// The runtime's id.
    runtime: u64,
    /// The version of its list this copy was taken at.
    version: u64,
    /// Weak, so that a thread does not keep a subscription (and what its handler holds) alive
    /// after its runtime let go of it.
    subs: Vec<Weak<LocalSub>>,
    /// The last topic looked up and the subscription it matched first, if one did: a run of
    /// requests to one topic (interned: compared by address) matches its patterns once.
    last: Option<(Topic, Option<usize>)>,
}

thread_local! {
    static REQUEST_SUBS: std::cell::RefCell<Option<RequestSubs>> = const { std::cell::RefCell::new(None) };
}

impl Inner {
    /// A waiter for the answer to the request `id`.
    fn wait_for(&self, id: EventId) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.replies.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        rx
    }

    /// The local subscription whose handler the requester may run itself for a request to `topic`
    /// (the first whose pattern matches), if it is running, with a unit of its limit reserved for
    /// the attempt (the caller gives it back if it does not run it).
    fn claim_here(&self, topic: &Topic) -> Option<Arc<LocalSub>> {
        if self.claims_stopped.load(Ordering::Relaxed) {
            return None;
        }
        let sub = REQUEST_SUBS.with(|cached| {
            let mut cached = cached.try_borrow_mut().ok()?;
            let version = self.subs.version.load(Ordering::Acquire);
            let c = match &mut *cached {
                Some(c) if c.runtime == self.id && c.version == version => c,
                stale => {
                    // The version first, as in `Subs::copy`.
                    let list = self.subs.snapshot();
                    stale.insert(RequestSubs {
                        runtime: self.id,
                        version,
                        subs: list.iter().map(Arc::downgrade).collect(),
                        last: None,
                    })
                }
            };
            let found = match &c.last {
                Some((last, found)) if last == topic => *found,
                _ => {
                    let found = c
                        .subs
                        .iter()
                        .position(|s| s.upgrade().is_some_and(|s| s.pattern.matches(topic)));
                    c.last = Some((topic.clone(), found));
                    found
                }
            };
            c.subs.get(found?)?.upgrade()
        })?;
        if sub.paused.load(Ordering::Relaxed) || sub.unsubscribed.load(Ordering::Relaxed) {
            return None;
        }
        if sub.demand.reserve(1) == 0 {
            return None;
        }
        Some(sub)
    }
}

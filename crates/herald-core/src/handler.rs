//! Handlers: what a subscription runs for each delivery, the context it gets and the errors it
//! returns.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::event::{DeliveryId, Event, EventId, Headers};
use crate::time::Timestamp;
use crate::topic::{SubscriptionName, Topic};

/// A failed attempt, as a handler reports it.
///
/// Any `std::error::Error` converts into one with `?`, as a failure worth retrying. Use
/// [`HandlerError::permanent`] for a failure no retry can fix: the delivery goes straight to the
/// dead-letter set with the reason.
///
/// ```
/// use herald_core::HandlerError;
///
/// fn parse(input: &str) -> Result<u32, HandlerError> {
///     let n: u32 = input.parse()?; // a retryable failure
///     if n == 0 {
///         return Err(HandlerError::permanent("zero is not a valid order number"));
///     }
///     Ok(n)
/// }
/// assert!(parse("x").unwrap_err().is_retryable());
/// assert!(!parse("0").unwrap_err().is_retryable());
/// ```
pub struct HandlerError {
    kind: Kind,
    error: Box<dyn std::error::Error + Send + Sync>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Retryable,
    Permanent,
}

#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl HandlerError {
    /// A failure worth retrying, from any error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError {
            kind: Kind::Retryable,
            error: error.into(),
        }
    }

    /// A failure worth retrying, from a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new(Message(message.to_string()))
    }

    /// A failure no retry can fix: the delivery dies at once with this reason.
    pub fn permanent(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError {
            kind: Kind::Permanent,
            error: error.into(),
        }
    }

    /// Whether the delivery should be tried again (if attempts are left).
    pub fn is_retryable(&self) -> bool {
        self.kind == Kind::Retryable
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.error
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::new(e)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)?;
        let mut source = self.error.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("error", &self.error)
            .finish()
    }
}

/// What a handler knows about the delivery it is handling.
///
/// ```
/// use herald_core::{Context, HandlerError};
/// async fn handle(order: serde_json::Value, ctx: Context) -> Result<(), HandlerError> {
///     println!("attempt {} of event {} on {}", ctx.attempt(), ctx.event_id(), ctx.topic());
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Context {
    event: Event,
    delivery: DeliveryId,
    subscription: SubscriptionName,
    attempt: u32,
    due: Timestamp,
    deadline: Option<Instant>,
}

impl Context {
    pub(crate) fn new(
        event: Event,
        delivery: DeliveryId,
        subscription: SubscriptionName,
        attempt: u32,
        due: Timestamp,
        deadline: Option<Instant>,
    ) -> Self {
        Context {
            event,
            delivery,
            subscription,
            attempt,
            due,
            deadline,
        }
    }

    /// The event's id.
    pub fn event_id(&self) -> EventId {
        self.event.id()
    }

    /// The delivery's id.
    pub fn delivery_id(&self) -> DeliveryId {
        self.delivery
    }

    /// The event's topic.
    pub fn topic(&self) -> &Topic {
        self.event.topic()
    }

    /// The subscription handling it.
    pub fn subscription(&self) -> &SubscriptionName {
        &self.subscription
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The event's headers.
    pub fn headers(&self) -> &Headers {
        self.event.headers()
    }

    /// When the delivery was due.
    pub fn due(&self) -> Timestamp {
        self.due
    }

    /// When this attempt times out, if the subscription has a timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the attempt times out.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The whole event, payload included.
    pub fn event(&self) -> &Event {
        &self.event
    }
}

/// What an attempt produced: a reply (for requests) or an error.
pub(crate) type AttemptResult = Result<Option<Bytes>, HandlerError>;

/// A type-erased handler, as the runtime stores it.
pub(crate) type BoxHandler = Arc<dyn Fn(Event, Context) -> BoxFuture<'static, AttemptResult> + Send + Sync>;

fn encode_reply<R: Serialize>(reply: R, wants_reply: bool) -> AttemptResult {
    if !wants_reply {
        return Ok(None);
    }
    match crate::event::encode_json(&reply) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) => Err(HandlerError::permanent(Message(format!(
            "the reply could not be encoded as JSON: {e}"
        )))),
    }
}

/// Erases a typed JSON handler. A payload that does not decode into `T` fails permanently.
pub(crate) fn typed<T, R, F, Fut>(f: F) -> BoxHandler
where
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(T, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    Arc::new(move |event: Event, ctx: Context| {
        let decoded = serde_json::from_slice::<T>(event.payload());
        match decoded {
            Ok(value) => {
                // Whether to encode the reply, rather than a second context kept for that.
                let wants_reply = ctx.event.reply_to().is_some();
                let fut = f(value, ctx);
                Box::pin(async move { encode_reply(fut.await?, wants_reply) }) as BoxFuture<'static, AttemptResult>
            }
            Err(e) => {
                let reason = format!("payload does not decode as {}: {e}", std::any::type_name::<T>());
                Box::pin(async move { Err(HandlerError::permanent(Message(reason))) })
            }
        }
    })
}

/// Erases a handler of raw events.
pub(crate) fn raw<R, F, Fut>(f: F) -> BoxHandler
where
    R: Serialize + Send + 'static,
    F: Fn(Event, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    Arc::new(move |event: Event, ctx: Context| {
        let wants_reply = ctx.event.reply_to().is_some();
        let fut = f(event, ctx);
        Box::pin(async move { encode_reply(fut.await?, wants_reply) }) as BoxFuture<'static, AttemptResult>
    })
}

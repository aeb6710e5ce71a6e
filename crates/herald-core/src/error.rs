//! Errors: one enum per operation, each convertible into the umbrella [`Error`].

use std::time::Duration;

use crate::event::PriorityError;
use crate::store::StoreError;
use crate::topic::{SubscriptionName, Topic, TopicError};

/// Publishing failed; nothing was stored.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Herald, PublishError};
///
/// let herald = Herald::builder().max_pending(1).build().await?;
/// herald.subscribe("mailer", "mail.>").handle(|_: String, _ctx| async { Ok(()) }).await?;
///
/// // A bad topic is refused before anything is stored.
/// let bad = herald.publish("Mail Sent", &"x").await;
/// assert!(matches!(bad, Err(PublishError::Topic(_))));
///
/// // With `max_pending` deliveries unfinished, `try_publish` fails at once (`publish` would wait).
/// herald.publish("mail.send", &"first").delay(std::time::Duration::from_secs(60)).await?;
/// match herald.try_publish("mail.send", &"second").await {
///     Err(PublishError::Full { max_pending }) => assert_eq!(max_pending, 1),
///     other => panic!("expected Full, got {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic is not a valid name.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The priority is out of range.
    #[error(transparent)]
    Priority(#[from] PriorityError),
    /// The payload could not be encoded as JSON.
    #[error("the payload could not be encoded as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// `try_publish` found the queue full (`max_pending` deliveries unfinished).
    #[error("the queue is full: {max_pending} deliveries are unfinished; wait and retry, use `publish` to wait for room, or raise `max_pending`")]
    Full {
        /// The configured limit.
        max_pending: u64,
    },
    /// The runtime is shutting down and takes no new events.
    #[error("herald is shutting down and takes no new events")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Subscribing failed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Herald, SubscribeError};
///
/// let herald = Herald::builder().build().await?;
/// herald.subscribe("billing", "order.paid").handle(|_: u64, _ctx| async { Ok(()) }).await?;
/// let again = herald.subscribe("billing", "order.*").handle(|_: u64, _ctx| async { Ok(()) }).await;
/// assert!(matches!(again, Err(SubscribeError::Duplicate(_))));
/// let bad = herald.subscribe("audit", "order.>.x").handle(|_: u64, _ctx| async { Ok(()) }).await;
/// assert!(matches!(bad, Err(SubscribeError::Invalid(_))));
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The name or pattern is invalid.
    #[error(transparent)]
    Invalid(#[from] TopicError),
    /// A subscription with this name already runs in this process.
    #[error("a subscription named '{0}' is already running here: give each subscription a unique name")]
    Duplicate(SubscriptionName),
    /// The options do not make sense together.
    #[error("invalid subscription options: {0}")]
    Options(&'static str),
    /// The runtime is shutting down.
    #[error("herald is shutting down and takes no new subscriptions")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request got no reply.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Herald, HandlerError, RequestError};
/// use std::time::Duration;
///
/// let herald = Herald::builder().build().await?;
/// let nobody = herald.request::<_, u64>("price.quote", &7).await;
/// assert!(matches!(nobody, Err(RequestError::NoHandler(_))));
///
/// herald
///     .subscribe("quoter", "price.quote")
///     .max_attempts(1)
///     .handle(|_: u64, _ctx| async { Err::<u64, _>(HandlerError::permanent("no price list")) })
///     .await?;
/// match herald.request::<_, u64>("price.quote", &7).timeout(Duration::from_secs(1)).await {
///     Err(RequestError::Failed(reason)) => assert!(reason.contains("no price list")),
///     other => panic!("expected Failed, got {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// No subscription matches the topic, so nothing could answer.
    #[error("no subscription handles topic '{0}', so nothing can answer the request")]
    NoHandler(Topic),
    /// No reply came within the timeout; the request is expired and will not be handled later.
    #[error("no reply within {0:?}; the request has expired and will not be handled")]
    Timeout(Duration),
    /// The handler failed for good.
    #[error("the handler failed: {0}")]
    Failed(String),
    /// The reply did not decode into the expected type.
    #[error("the reply does not decode as the expected type: {0}")]
    Decode(#[source] serde_json::Error),
    /// The runtime shut down before a reply came.
    #[error("herald shut down before the reply came")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Any herald error: every operation's error converts into it, so `?` works across them.
///
/// ```
/// use herald_core::{Error, Herald};
///
/// async fn setup() -> Result<Herald, Error> {
///     let herald = Herald::builder().build().await?; // Error::Config
///     herald.subscribe("audit", "order.>").handle(|_: String, _ctx| async { Ok(()) }).await?; // SubscribeError
///     herald.publish("order.placed", &"o-1").await?; // PublishError
///     Ok(herald)
/// }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async { setup().await.unwrap() });
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Subscribing failed.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// A request got no reply.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A name was invalid.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// Building the runtime failed.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// A cron schedule was refused or could not be changed.
    #[cfg(feature = "cron")]
    #[error(transparent)]
    Cron(#[from] crate::cron::CronError),
}

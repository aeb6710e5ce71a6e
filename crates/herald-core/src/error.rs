//! Errors: one enum per operation, each convertible into the umbrella [`Error`].

use std::time::Duration;

use crate::event::PriorityError;
use crate::store::StoreError;
use crate::topic::{SubscriptionName, Topic, TopicError};

/// Publishing failed; nothing was stored.
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

/// Any herald error.
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

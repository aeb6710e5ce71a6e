//! herald-core: events, topics, the [`Store`] trait, the runtime and the in-memory store.
//!
//! Depend on the `herald` facade crate instead; it re-exports all of this.

mod error;
mod event;
mod handler;
mod metrics;
mod retry;
mod runtime;
pub mod store;
mod time;
mod topic;

pub use error::{Error, PublishError, RequestError, SubscribeError};
pub use event::{DeliveryId, Event, EventId, EventParts, Headers, Priority, PriorityError, JSON};
pub use handler::{Context, HandlerError};
pub use retry::Backoff;
pub use runtime::{
    DeadLetter, EventsQuery, Herald, HeraldBuilder, Lifecycle, Message, Publish, Request, ShutdownReport, Subscription,
    SubscriptionBuilder, DEAD_LETTER_TOPIC, SHUTDOWN_TOPIC, STARTUP_TOPIC,
};
pub use store::*;
pub use time::{Clock, Timestamp};
pub use topic::{Pattern, SubscriptionName, Topic, TopicError, MAX_TOPIC_LEN};

//! herald-core: events, topics, the [`Store`] trait, the runtime and the in-memory store.
//!
//! Depend on the `herald` facade crate instead; it re-exports all of this.
#![cfg_attr(feature = "cron", doc = include_str!("cron/docs.md"))]

#[cfg(feature = "cron")]
pub mod cron;
mod error;
mod event;
mod handler;
mod home;
mod metrics;
mod retry;
mod runtime;
pub mod store;
mod time;
mod topic;

#[cfg(feature = "cron")]
pub use cron::{
    cron_key, CronBuilder, CronError, CronHandle, CronInfo, CronRun, CronSpec, CronTaskChanged, CronTaskExecuted,
    CronTaskFailed, CronTick, Missed, CRON_CREATED_TOPIC, CRON_DELETED_TOPIC, CRON_EXECUTED_TOPIC, CRON_FAILED_TOPIC,
    CRON_HEADER, CRON_TICK_HEADER, CRON_UPDATED_TOPIC, NEXT_FIRES,
};
pub use error::{Error, PublishError, RequestError, SubscribeError};
pub use event::{DeliveryId, Event, EventId, EventParts, Headers, Priority, PriorityError, JSON};
pub use handler::{Context, HandlerError};
pub use retry::Backoff;
pub use runtime::{
    DeadLetter, EventsQuery, Herald, HeraldBuilder, Lifecycle, Message, Publish, PublishFuture, Request,
    ShutdownReport, Subscription, SubscriptionBuilder, DEAD_LETTER_TOPIC, SHUTDOWN_TOPIC, STARTUP_TOPIC,
};
pub use store::*;
pub use time::{Clock, Timestamp};
pub use topic::{Pattern, SubscriptionName, Topic, TopicError, MAX_TOPIC_LEN};

//! History queries: a builder over [`EventFilter`] and [`PageRequest`].

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use super::Herald;
use crate::error::Error;
use crate::event::EventId;
use crate::store::{EventFilter, EventRecord, EventStatus, Page, PageRequest};
use crate::time::Timestamp;
use crate::topic::{Pattern, SubscriptionName, TopicError};

/// A query of the event history in the making: filters chain, `.await` returns one page, newest
/// first. Made by [`Herald::events`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Herald, EventStatus};
/// let herald = Herald::builder().build().await?;
/// herald.publish("order.paid", &1).await?;
/// let page = herald.events().topic("order.>").limit(20).await?;
/// for record in &page.items {
///     println!("{} {} {}", record.event.id(), record.event.topic(), record.status);
/// }
/// let dead = herald.events().status(EventStatus::Dead).await?;
/// if let Some(cursor) = page.next {
///     let _older = herald.events().topic("order.>").limit(20).after(cursor).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a query does nothing until it is awaited"]
pub struct EventsQuery<'a> {
    herald: &'a Herald,
    filter: EventFilter,
    page: PageRequest,
    error: Option<TopicError>,
}

impl EventsQuery<'_> {
    /// Events whose topic matches `pattern` (`order.*`, `order.>`).
    pub fn topic(mut self, pattern: &str) -> Self {
        match Pattern::new(pattern) {
            Ok(p) => self.filter.topic = Some(p),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Events in this status (with [`subscription`](Self::subscription): whose delivery to it is).
    pub fn status(mut self, status: EventStatus) -> Self {
        self.filter.status = Some(status);
        self
    }

    /// Events delivered to this subscription.
    pub fn subscription(mut self, name: &str) -> Self {
        match SubscriptionName::new(name) {
            Ok(n) => self.filter.subscription = Some(n),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Published at or after `t`.
    pub fn since(mut self, t: impl Into<Timestamp>) -> Self {
        self.filter.since = Some(t.into());
        self
    }

    /// Published before `t`.
    pub fn until(mut self, t: impl Into<Timestamp>) -> Self {
        self.filter.until = Some(t.into());
        self
    }

    /// With this idempotency key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.filter.key = Some(key.into());
        self
    }

    /// At most `n` events (default 50, at most 1000).
    pub fn limit(mut self, n: u32) -> Self {
        self.page.limit = n.clamp(1, PageRequest::MAX_LIMIT);
        self
    }

    /// The page after this cursor (a page's `next`).
    pub fn after(mut self, cursor: EventId) -> Self {
        self.page.after = Some(cursor);
        self
    }
}

impl<'a> IntoFuture for EventsQuery<'a> {
    type Output = Result<Page<EventRecord>, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            if let Some(e) = self.error {
                return Err(e.into());
            }
            Ok(self.herald.inner.store.query(&self.filter, self.page).await?)
        })
    }
}

impl Herald {
    /// Queries the event history; see [`EventsQuery`].
    pub fn events(&self) -> EventsQuery<'_> {
        EventsQuery {
            herald: self,
            filter: EventFilter::default(),
            page: PageRequest::default(),
            error: None,
        }
    }

    /// The dead-letter set: events with a dead delivery, newest first.
    pub fn dead_letters(&self) -> EventsQuery<'_> {
        self.events().status(EventStatus::Dead)
    }
}

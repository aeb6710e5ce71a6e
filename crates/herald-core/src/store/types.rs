//! The values that cross the [`Store`](super::Store) boundary.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::{DeliveryId, Event, EventId};
use crate::time::Timestamp;
use crate::topic::{Pattern, SubscriptionName, Topic};

/// What a store knows of a subscription: its name and the pattern it routes by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// Its unique name.
    pub name: SubscriptionName,
    /// The topics it receives.
    pub pattern: Pattern,
}

/// What a store can do; the conformance suite checks that a store refuses the rest cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Whether what `publish` reported stored survives a crash of the process.
    pub durable: bool,
    /// Whether several processes can share the store.
    pub shared: bool,
}

impl Capabilities {
    /// An in-process, non-durable store.
    pub const fn in_memory() -> Self {
        Capabilities {
            durable: false,
            shared: false,
        }
    }

    /// A durable store, shared between processes or not.
    pub const fn durable(shared: bool) -> Self {
        Capabilities { durable: true, shared }
    }
}

/// What became of one published event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// Stored with this many deliveries (0: unrouted).
    Stored {
        /// The event's id.
        id: EventId,
        /// How many subscriptions matched.
        deliveries: u32,
    },
    /// Its idempotency key is held by a live event: nothing was stored.
    Duplicate {
        /// The id of the event that holds the key.
        id: EventId,
    },
}

impl Published {
    /// The id of the stored event, or of the one that already held the key.
    pub fn id(&self) -> EventId {
        match *self {
            Published::Stored { id, .. } | Published::Duplicate { id } => id,
        }
    }
}

/// The right to record an attempt's outcome: a delivery and the token of the claim that leased it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The leased delivery.
    pub delivery: DeliveryId,
    /// The claim's fencing token; a newer claim of the same delivery has a different one.
    pub token: u64,
}

/// A delivery handed to a worker.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Claimed {
    /// The lease to complete it with.
    pub lease: Lease,
    /// When the lease runs out unless extended.
    pub lease_until: Timestamp,
    /// The subscription it is for.
    pub subscription: SubscriptionName,
    /// The event.
    pub event: Event,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// When it was due: lateness is the attempt's start minus this.
    pub due: Timestamp,
}

impl Claimed {
    /// A claimed delivery, as a store builds one.
    pub fn new(
        lease: Lease,
        lease_until: Timestamp,
        subscription: SubscriptionName,
        event: Event,
        attempt: u32,
        due: Timestamp,
    ) -> Self {
        Claimed {
            lease,
            lease_until,
            subscription,
            event,
            attempt,
            due,
        }
    }
}

/// The outcome of one attempt, as the runtime reports it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The lease the attempt ran under.
    pub lease: Lease,
    /// When the attempt ended.
    pub finished_at: Timestamp,
    /// What happened.
    pub verdict: Verdict,
}

/// What happened in an attempt, and so what becomes of its delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The handler succeeded; `reply` answers a request.
    Succeeded {
        /// The reply, for requests.
        reply: Option<Bytes>,
    },
    /// The attempt failed; try again at `at`.
    Retry {
        /// When the next attempt is due.
        at: Timestamp,
        /// Why this one failed.
        error: String,
    },
    /// The attempt failed for good; the delivery is dead.
    Dead {
        /// Why.
        reason: String,
    },
    /// The attempt never started (shutdown): the delivery is pending again and the attempt is
    /// not counted.
    Released,
}

/// Whether a store recorded an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// Recorded.
    Applied,
    /// Refused: the lease had been lost, and another claim owns the delivery now.
    Stale,
}

/// The status [`Store::cancel`](super::Store::cancel) ends deliveries with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelAs {
    /// Cancelled on request.
    Cancelled,
    /// Expired: a request that timed out.
    Expired,
}

/// What [`Store::cancel`](super::Store::cancel) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancelled {
    /// This many deliveries were ended.
    Ended(u32),
    /// Every delivery had already started or finished: nothing was ended.
    TooLate,
    /// No such event.
    NotFound,
}

/// What [`Store::requeue`](super::Store::requeue) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Requeued {
    /// The dead delivery is pending again.
    Requeued,
    /// The delivery is not dead: nothing changed.
    NotDead(DeliveryStatus),
    /// No such delivery.
    NotFound,
}

macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every status.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// Its lowercase name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, UnknownStatus> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(UnknownStatus(s.to_owned())),
                }
            }
        }
    };
}

/// A status name that is not one of herald's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown status '{0}': use scheduled, pending, active, retrying, succeeded, dead, cancelled, expired or unrouted"
)]
pub struct UnknownStatus(pub String);

status_enum! {
    /// Where a delivery is in its life.
    DeliveryStatus {
        /// Due later.
        Scheduled = "scheduled",
        /// Due, waiting for a worker.
        Pending = "pending",
        /// Leased by a worker, being handled.
        Active = "active",
        /// Failed; the next attempt is scheduled.
        Retrying = "retrying",
        /// Handled.
        Succeeded = "succeeded",
        /// Failed for good: in the dead-letter set.
        Dead = "dead",
        /// Cancelled before it ran.
        Cancelled = "cancelled",
        /// Expired before it ran.
        Expired = "expired",
    }
}

impl DeliveryStatus {
    /// Whether nothing more will happen to it (short of a manual retry).
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Succeeded | DeliveryStatus::Dead | DeliveryStatus::Cancelled | DeliveryStatus::Expired
        )
    }
}

status_enum! {
    /// Where an event is: the roll-up of its deliveries' statuses.
    EventStatus {
        /// Every open delivery is due later.
        Scheduled = "scheduled",
        /// A delivery is due and waiting.
        Pending = "pending",
        /// A delivery is being handled.
        Active = "active",
        /// A delivery failed and waits for its next attempt.
        Retrying = "retrying",
        /// Every delivery succeeded.
        Succeeded = "succeeded",
        /// Every delivery finished and at least one is dead.
        Dead = "dead",
        /// Every delivery finished and at least one was cancelled (none dead).
        Cancelled = "cancelled",
        /// Every delivery finished and at least one expired (none dead or cancelled).
        Expired = "expired",
        /// No subscription matched its topic.
        Unrouted = "unrouted",
    }
}

impl EventStatus {
    /// The roll-up of the statuses of an event's deliveries.
    ///
    /// An event is as busy as its busiest open delivery (active, then retrying, pending,
    /// scheduled); once all are finished it is dead if any is dead, else cancelled, else expired,
    /// else succeeded. No deliveries at all: unrouted.
    pub fn roll_up(statuses: impl IntoIterator<Item = DeliveryStatus>) -> EventStatus {
        let rank = |s: DeliveryStatus| match s {
            DeliveryStatus::Active => 8,
            DeliveryStatus::Retrying => 7,
            DeliveryStatus::Pending => 6,
            DeliveryStatus::Scheduled => 5,
            DeliveryStatus::Dead => 4,
            DeliveryStatus::Cancelled => 3,
            DeliveryStatus::Expired => 2,
            DeliveryStatus::Succeeded => 1,
        };
        match statuses.into_iter().max_by_key(|s| rank(*s)) {
            None => EventStatus::Unrouted,
            Some(s) => EventStatus::from(s),
        }
    }

    /// Whether nothing more will happen to the event (short of a manual retry).
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            EventStatus::Succeeded
                | EventStatus::Dead
                | EventStatus::Cancelled
                | EventStatus::Expired
                | EventStatus::Unrouted
        )
    }
}

impl From<DeliveryStatus> for EventStatus {
    fn from(s: DeliveryStatus) -> Self {
        match s {
            DeliveryStatus::Scheduled => EventStatus::Scheduled,
            DeliveryStatus::Pending => EventStatus::Pending,
            DeliveryStatus::Active => EventStatus::Active,
            DeliveryStatus::Retrying => EventStatus::Retrying,
            DeliveryStatus::Succeeded => EventStatus::Succeeded,
            DeliveryStatus::Dead => EventStatus::Dead,
            DeliveryStatus::Cancelled => EventStatus::Cancelled,
            DeliveryStatus::Expired => EventStatus::Expired,
        }
    }
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// The handler succeeded.
    Succeeded,
    /// It failed and will be retried.
    Failed,
    /// It failed and the delivery died.
    Dead,
    /// It never ran (released at shutdown).
    Released,
    /// Its lease ran out before an outcome was recorded (the worker died or stalled).
    LeaseExpired,
}

/// One attempt of a delivery: see [`EventRecord`] for reading them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Attempt {
    /// Which attempt, from 1.
    pub number: u32,
    /// When it was claimed.
    pub started_at: Timestamp,
    /// When its outcome was recorded; `None` while it runs.
    pub finished_at: Option<Timestamp>,
    /// How it ended; `None` while it runs.
    pub outcome: Option<AttemptOutcome>,
    /// The error, for failed attempts.
    pub error: Option<String>,
}

impl Attempt {
    /// An attempt that started at `started_at` and has not ended.
    pub fn started(number: u32, started_at: Timestamp) -> Self {
        Attempt {
            number,
            started_at,
            finished_at: None,
            outcome: None,
            error: None,
        }
    }
}

/// A delivery and its history: see [`EventRecord`] for reading them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeliveryRecord {
    /// Its id.
    pub id: DeliveryId,
    /// The subscription it is for.
    pub subscription: SubscriptionName,
    /// Its status.
    pub status: DeliveryStatus,
    /// How many attempts have started.
    pub attempt_count: u32,
    /// When it is (or was last) due.
    pub due: Timestamp,
    /// The last error, or the reason it died.
    pub last_error: Option<String>,
    /// The handler's reply, for requests.
    #[serde(skip)]
    pub reply: Option<Bytes>,
    /// Every attempt, oldest first (empty in [`query`](super::Store::query) results).
    pub attempts: Vec<Attempt>,
}

impl DeliveryRecord {
    /// A delivery record, as a store builds one.
    pub fn new(id: DeliveryId, subscription: SubscriptionName, status: DeliveryStatus, due: Timestamp) -> Self {
        DeliveryRecord {
            id,
            subscription,
            status,
            attempt_count: 0,
            due,
            last_error: None,
            reply: None,
            attempts: Vec::new(),
        }
    }
}

/// An event with its deliveries (one per matching subscription) and each delivery's attempts, as
/// [`Herald::get`](crate::Herald::get) and [`Herald::events`](crate::Herald::events) return it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{AttemptOutcome, Backoff, DeliveryStatus, EventStatus, HandlerError, Herald};
/// use std::time::Duration;
///
/// let herald = Herald::builder().build().await?;
/// herald
///     .subscribe("flaky", "job.run")
///     .backoff(Backoff::fixed(Duration::from_millis(10)))
///     .handle(|_: u32, ctx| async move {
///         if ctx.attempt() == 1 { Err(HandlerError::msg("warming up")) } else { Ok(()) }
///     })
///     .await?;
/// let id = herald.publish("job.run", &1).await?;
/// tokio::time::sleep(Duration::from_secs(1)).await;
///
/// let record = herald.get(id).await?.expect("kept by retention");
/// assert_eq!(record.status, EventStatus::Succeeded);
/// let delivery = &record.deliveries[0];
/// assert_eq!((delivery.subscription.as_str(), delivery.status), ("flaky", DeliveryStatus::Succeeded));
/// let outcomes: Vec<_> = delivery.attempts.iter().map(|a| (a.number, a.outcome, a.error.as_deref())).collect();
/// assert_eq!(outcomes, [
///     (1, Some(AttemptOutcome::Failed), Some("warming up")),
///     (2, Some(AttemptOutcome::Succeeded), None),
/// ]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventRecord {
    /// The event.
    pub event: Event,
    /// The roll-up of its deliveries' statuses.
    pub status: EventStatus,
    /// One per matching subscription.
    pub deliveries: Vec<DeliveryRecord>,
}

impl EventRecord {
    /// A record whose status is rolled up from `deliveries`.
    pub fn new(event: Event, deliveries: Vec<DeliveryRecord>) -> Self {
        let status = EventStatus::roll_up(deliveries.iter().map(|d| d.status));
        EventRecord {
            event,
            status,
            deliveries,
        }
    }
}

/// Which events a query returns. Every field narrows it; the default matches everything.
///
/// ```
/// use herald_core::{EventFilter, EventStatus, Pattern};
/// let f = EventFilter { topic: Some(Pattern::new("order.>")?), status: Some(EventStatus::Dead), ..Default::default() };
/// # Ok::<(), herald_core::TopicError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Topics matching this pattern.
    pub topic: Option<Pattern>,
    /// Events in this status; with `subscription`, events whose delivery to it is in this
    /// status (the event status names map onto delivery statuses; `unrouted` has none).
    pub status: Option<EventStatus>,
    /// Events with a delivery to this subscription.
    pub subscription: Option<SubscriptionName>,
    /// Published at or after this time.
    pub since: Option<Timestamp>,
    /// Published before this time.
    pub until: Option<Timestamp>,
    /// With this idempotency key.
    pub key: Option<String>,
}

impl EventFilter {
    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &EventRecord) -> bool {
        let e = &record.event;
        if self.topic.as_ref().is_some_and(|p| !p.matches(e.topic())) {
            return false;
        }
        if self.since.is_some_and(|t| e.published_at() < t) || self.until.is_some_and(|t| e.published_at() >= t) {
            return false;
        }
        if self.key.as_deref().is_some_and(|k| e.key() != Some(k)) {
            return false;
        }
        match (&self.subscription, self.status) {
            (Some(sub), status) => record
                .deliveries
                .iter()
                .any(|d| &d.subscription == sub && status.is_none_or(|s| EventStatus::from(d.status) == s)),
            (None, Some(status)) => record.status == status,
            (None, None) => true,
        }
    }

    /// Whether `topic` passes the topic part of the filter.
    pub fn matches_topic(&self, topic: &Topic) -> bool {
        self.topic.as_ref().is_none_or(|p| p.matches(topic))
    }
}

/// Which page of results: up to `limit` items after the cursor `after` (the last id of the
/// previous page; `None` for the first page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// The last id of the previous page.
    pub after: Option<EventId>,
    /// The most items to return (at least 1, at most [`PageRequest::MAX_LIMIT`]).
    pub limit: u32,
}

impl PageRequest {
    /// The largest page.
    pub const MAX_LIMIT: u32 = 1000;

    /// The first page of `limit` items.
    pub fn first(limit: u32) -> Self {
        PageRequest {
            after: None,
            limit: limit.clamp(1, Self::MAX_LIMIT),
        }
    }

    /// The page after the item with id `after`.
    pub fn after(after: EventId, limit: u32) -> Self {
        PageRequest {
            after: Some(after),
            limit: limit.clamp(1, Self::MAX_LIMIT),
        }
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest::first(50)
    }
}

/// One page of results, and the cursor of the next one.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::Herald;
///
/// let herald = Herald::builder().build().await?;
/// for n in 0..25 {
///     herald.publish("audit.login", &n).await?;
/// }
/// // Keyset pages: each page's `next` is the cursor of the one after it.
/// let (mut seen, mut cursor) = (0, None);
/// loop {
///     let mut query = herald.events().topic("audit.*").limit(10);
///     if let Some(after) = cursor {
///         query = query.after(after);
///     }
///     let page = query.await?;
///     seen += page.items.len();
///     match page.next {
///         Some(next) => cursor = Some(next),
///         None => break,
///     }
/// }
/// assert_eq!(seen, 25);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The cursor of the next page; `None` on the last page.
    pub next: Option<EventId>,
}

impl<T> Page<T> {
    /// A page.
    pub fn new(items: Vec<T>, next: Option<EventId>) -> Self {
        Page { items, next }
    }
}

impl Page<EventRecord> {
    /// A page from up to `limit + 1` records read in page order: the one past `limit` is not
    /// returned, it only tells that there is a next page (whose cursor is the last id kept).
    pub fn from_lookahead(mut items: Vec<EventRecord>, limit: usize) -> Self {
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(|r| r.event.id()) } else { None };
        Page { items, next }
    }
}

/// Counts by status, from [`Herald::stats`](crate::Herald::stats).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{DeliveryStatus, Herald};
/// use std::time::Duration;
///
/// let herald = Herald::builder().system_events(false).build().await?;
/// herald.subscribe("a", "order.*").handle(|_: u32, _ctx| async { Ok(()) }).await?;
/// herald.subscribe("b", "order.paid").handle(|_: u32, _ctx| async { Ok(()) }).await?;
/// herald.publish("order.paid", &1).delay(Duration::from_secs(60)).await?;
/// herald.publish("user.created", &2).await?;
///
/// let stats = herald.stats().await?;
/// assert_eq!((stats.events, stats.unrouted), (2, 1));
/// assert_eq!(stats.deliveries.get(DeliveryStatus::Scheduled), 2);
/// assert_eq!(stats.deliveries.open(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Events stored.
    pub events: u64,
    /// Events that matched no subscription.
    pub unrouted: u64,
    /// Deliveries by status.
    pub deliveries: StatusCounts,
}

/// A count per delivery status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusCounts {
    /// Scheduled.
    pub scheduled: u64,
    /// Pending.
    pub pending: u64,
    /// Active.
    pub active: u64,
    /// Retrying.
    pub retrying: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Dead.
    pub dead: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Expired.
    pub expired: u64,
}

impl StatusCounts {
    /// The count for `status`.
    pub fn get(&self, status: DeliveryStatus) -> u64 {
        let mut copy = *self;
        *copy.slot_mut(status)
    }

    /// The count for `status`, to change.
    pub fn slot_mut(&mut self, status: DeliveryStatus) -> &mut u64 {
        match status {
            DeliveryStatus::Scheduled => &mut self.scheduled,
            DeliveryStatus::Pending => &mut self.pending,
            DeliveryStatus::Active => &mut self.active,
            DeliveryStatus::Retrying => &mut self.retrying,
            DeliveryStatus::Succeeded => &mut self.succeeded,
            DeliveryStatus::Dead => &mut self.dead,
            DeliveryStatus::Cancelled => &mut self.cancelled,
            DeliveryStatus::Expired => &mut self.expired,
        }
    }

    /// Deliveries not finished.
    pub fn open(&self) -> u64 {
        self.scheduled + self.pending + self.active + self.retrying
    }
}

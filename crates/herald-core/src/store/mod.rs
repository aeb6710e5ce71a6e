//! The [`Store`] contract: where events, deliveries and their history live.
//!
//! Every call is batch-shaped so that a backend can group-commit. A store keeps no handlers: it
//! fans events out to declared subscriptions, hands due deliveries out under leases, and records
//! what the runtime reports. The same conformance suite (`herald-testkit`) runs against every store.

mod memory;
mod types;
mod wakeup;

pub use memory::{MemoryStore, MemoryStoreBuilder};
pub use types::*;
pub use wakeup::{ListenerKey, WakeupHub};

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::event::{DeliveryId, Event, EventId};
use crate::time::{Clock, Timestamp};
use crate::topic::SubscriptionName;

/// A store failed. Stores map their own errors onto these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be reached or failed; the operation may be retried.
    #[error("the store is unavailable: {message}")]
    Unavailable {
        /// What went wrong, for people.
        message: String,
        /// The backend's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The store does not support this operation.
    #[error("this store does not support {0}")]
    Unsupported(&'static str),
    /// A subscription was used before it was declared.
    #[error("subscription '{0}' is not declared in the store: declare it before claiming")]
    UnknownSubscription(SubscriptionName),
    /// The data in the store is not what this version of herald expects.
    #[error("the store's data is corrupt or from an incompatible version: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// An [`Unavailable`](StoreError::Unavailable) error wrapping a backend error.
    pub fn unavailable(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable {
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// Something changed in the store that a runtime may want to act on, from any node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wakeup {
    /// A delivery is due at this time (now or later): published, retried, released or requeued.
    Due(Timestamp),
    /// A request (the event with this id) has its answer: a reply or a final failure.
    Answered(EventId),
    /// Notifications were lost (a lagging listener, a reconnect): re-check everything.
    Lagged,
}

/// The hot calls of a store that never waits (one in this process, such as [`MemoryStore`]), made
/// without a future: the runtime uses them, through [`Store::immediate`], instead of boxing a
/// future per call. Each does what the [`Store`] method of the same name does. Where a call takes
/// `now`, it is the time by the store's [`clock`](Store::clock) as the caller just read it (the
/// runtime has always read it for the same step: the store does not read it again).
///
/// ```
/// use herald_core::{Event, EventParts, MemoryStore, Published, Store, Topic};
///
/// let store = MemoryStore::new();
/// let direct = store.immediate().ok_or("the memory store never waits")?;
/// let event = Event::from_parts(EventParts::new(Topic::new("order.paid")?, "7"));
/// let id = event.id();
/// let now = store.clock().now();
/// assert_eq!(direct.publish_one_now(event, now, None)?, Published::Stored { id, deliveries: 0 });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait ImmediateStore: Send + Sync {
    /// Whether the part of the store that this thread publishes into may have ready deliveries;
    /// `true` (the default) for a store without such parts. A worker that finds nothing ready
    /// here yields a few times before it claims, so that what this thread's publishers publish is
    /// claimed on this thread and not by the others.
    ///
    /// ```
    /// use herald_core::{MemoryStore, Store};
    ///
    /// let store = MemoryStore::new();
    /// assert!(!store.immediate().is_some_and(|s| s.ready_here()), "nothing published yet");
    /// ```
    fn ready_here(&self) -> bool {
        true
    }

    /// [`Store::wakeups`], with the key that names this listener to
    /// [`publish_one_now`](Self::publish_one_now).
    ///
    /// ```
    /// use herald_core::{MemoryStore, Store};
    ///
    /// let store = MemoryStore::new();
    /// let direct = store.immediate().ok_or("the memory store never waits")?;
    /// let (key, wakeups) = direct.wakeups_keyed();
    /// # drop((key, wakeups));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn wakeups_keyed(&self) -> (ListenerKey, BoxStream<'static, Wakeup>);

    /// [`Store::publish_one`]. `handled_by` names the caller's own listener (from
    /// [`wakeups_keyed`](Self::wakeups_keyed)) when the caller hands a delivery that is due at once
    /// to its workers itself: the store does not wake that listener for it (every other listener
    /// still hears of it).
    fn publish_one_now(
        &self,
        event: Event,
        now: Timestamp,
        handled_by: Option<ListenerKey>,
    ) -> Result<Published, StoreError>;

    /// [`publish_one_now`](Self::publish_one_now) of an event that the caller would run at once
    /// for the subscription `claim_for`, if it may: the event's delivery for `claim_for` is claimed
    /// in the same step, under a lease of `lease`, when nothing of that subscription is due before
    /// it (the runtime does this for a request whose handler is in its process, which the
    /// requester then runs itself). When something is due, nothing is stored and the event comes
    /// back ([`PublishClaim::Declined`]), to be published like any other.
    ///
    /// The default declines every event.
    ///
    /// ```
    /// use herald_core::{Event, EventParts, MemoryStore, Pattern, PublishClaim, Store, SubscriptionName, SubscriptionSpec, Topic};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let name = SubscriptionName::new("render")?;
    /// store.declare(&SubscriptionSpec { name: name.clone(), pattern: Pattern::new("invoice.*")? }).await?;
    /// let direct = store.immediate().ok_or("the memory store never waits")?;
    /// // Due now by the store's clock (the system clock may read a millisecond ahead of it).
    /// let now = store.clock().now();
    /// let mut parts = EventParts::new(Topic::new("invoice.render")?, "7");
    /// (parts.published_at, parts.deliver_at) = (now, now);
    /// let event = Event::from_parts(parts);
    /// match direct.publish_claim_now(event, now, None, &name, Duration::from_secs(30))? {
    ///     PublishClaim::Claimed(_, claimed) => assert_eq!(claimed.attempt, 1),
    ///     other => panic!("nothing was due before it: {other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    fn publish_claim_now(
        &self,
        event: Event,
        now: Timestamp,
        handled_by: Option<ListenerKey>,
        claim_for: &SubscriptionName,
        lease: Duration,
    ) -> Result<PublishClaim, StoreError> {
        let _ = (now, handled_by, claim_for, lease);
        Ok(PublishClaim::Declined(event))
    }

    /// [`Store::claim`], appending the claimed deliveries to `into` (a buffer the caller reuses:
    /// a claim's vector of 16 or more deliveries is a large allocation).
    fn claim_now(
        &self,
        subscription: &SubscriptionName,
        max: usize,
        lease: Duration,
        into: &mut Vec<Claimed>,
    ) -> Result<(), StoreError>;

    /// [`Store::complete_one`]. With `answered_here`, the caller hands a request's answer to its
    /// waiter itself (the waiter is in the caller's runtime, so in no other), and the store
    /// announces the answer to no listener: [`Wakeup::Answered`] is for requesters elsewhere.
    fn complete_one_now(&self, outcome: Outcome, answered_here: bool, now: Timestamp)
        -> Result<Completion, StoreError>;

    /// [`Store::complete`]: [`complete_one_now`](Self::complete_one_now) for each outcome, with
    /// its `answered_here`, in one step. Takes every outcome out of `outcomes`, whose room the
    /// caller keeps for its next batch.
    fn complete_now(&self, outcomes: &mut Vec<(Outcome, bool)>, now: Timestamp) -> Result<Vec<Completion>, StoreError>;
}

/// What [`ImmediateStore::publish_claim_now`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishClaim {
    /// Stored, and its delivery for the subscription claimed for the caller to run.
    Claimed(Published, Claimed),
    /// Stored, nothing claimed (a duplicate, say).
    Stored(Published),
    /// Not stored: something of the subscription is due before it (or it cannot be claimed for
    /// it). Publish it like any other.
    Declined(Event),
}

/// Where events, deliveries and history live. See the [module docs](self).
///
/// Implementations must be safe to share between tasks and, for durable stores, between processes:
/// every method is atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The clock the store judges due times and leases by. The runtime sleeps by it.
    fn clock(&self) -> Clock;

    /// This store's calls that complete without waiting, if it has them (see [`ImmediateStore`]).
    /// The default: none, every call goes through its future.
    fn immediate(&self) -> Option<&dyn ImmediateStore> {
        None
    }

    /// What this store can do.
    fn capabilities(&self) -> Capabilities;

    /// Declares (or redeclares, with a new pattern) a subscription: later publishes whose topic
    /// matches its pattern get a delivery for it.
    async fn declare(&self, subscription: &SubscriptionSpec) -> Result<(), StoreError>;

    /// Stops routing new events to a subscription and cancels its unfinished deliveries (those
    /// being handled too: their outcomes are then refused as stale). Returns how many were
    /// cancelled; an unknown name cancels nothing. History stays.
    ///
    /// The default refuses with [`StoreError::Unsupported`].
    async fn remove_subscription(&self, subscription: &SubscriptionName) -> Result<u64, StoreError> {
        let _ = subscription;
        Err(StoreError::Unsupported("removing a subscription"))
    }

    /// Stores events, fans each out to the matching subscriptions and returns, in order, what
    /// became of each. Durable before it returns. An event whose key is held by a live event is
    /// not stored: its entry is [`Published::Duplicate`] with the first event's id.
    async fn publish(&self, events: Vec<Event>) -> Result<Vec<Published>, StoreError>;

    /// Stores one event: [`publish`](Store::publish) of a batch of one, which a store may answer
    /// without the batch's vectors. The default calls `publish`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use herald_core::{Event, EventParts, MemoryStore, Published, Store, Topic};
    /// let store = MemoryStore::new();
    /// let event = Event::from_parts(EventParts::new(Topic::new("order.paid")?, "7"));
    /// let id = event.id();
    /// // No subscription is declared: the event is stored unrouted.
    /// assert_eq!(store.publish_one(event).await?, Published::Stored { id, deliveries: 0 });
    /// # Ok(()) }
    /// ```
    async fn publish_one(&self, event: Event) -> Result<Published, StoreError> {
        self.publish(vec![event])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("the store returned no result for a published event".into()))
    }

    /// Leases up to `max` deliveries of `subscription` that are due (or whose lease ran out), by
    /// priority (highest first) then due time. Deliveries of expired events are marked
    /// [`DeliveryStatus::Expired`] instead of being handed out.
    async fn claim(
        &self,
        subscription: &SubscriptionName,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Pushes the leases out to `lease` from now. Returns, per lease, whether it was still held.
    ///
    /// A lease is held until another claim takes the delivery: a lease whose time ran out but that
    /// no claim has taken yet is still held, and extending it revives it. (The same rule fences
    /// [`complete`](Store::complete).)
    async fn extend(&self, leases: &[Lease], lease: Duration) -> Result<Vec<bool>, StoreError>;

    /// Records the outcomes of attempts. Each is fenced by its lease token: an outcome whose lease
    /// was lost (expired and claimed again) is refused as [`Completion::Stale`].
    ///
    /// When a claim takes a delivery whose lease ran out, the store records the abandoned attempt
    /// as [`AttemptOutcome::LeaseExpired`], finished at the time of that claim.
    async fn complete(&self, outcomes: Vec<Outcome>) -> Result<Vec<Completion>, StoreError>;

    /// Records one outcome: [`complete`](Store::complete) of a batch of one, which a store may
    /// answer without the batch's vectors. The default calls `complete`.
    async fn complete_one(&self, outcome: Outcome) -> Result<Completion, StoreError> {
        self.complete(vec![outcome])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("the store returned no result for an outcome".into()))
    }

    /// Ends every delivery of the event that has not started (scheduled, pending or retrying) with
    /// the given status (cancelled or expired).
    async fn cancel(&self, id: EventId, end: CancelAs) -> Result<Cancelled, StoreError>;

    /// Makes a dead delivery pending again, due now, with its attempt history kept.
    async fn requeue(&self, id: DeliveryId) -> Result<Requeued, StoreError>;

    /// The earliest time strictly after `after` at which a delivery of one of `subscriptions`
    /// becomes due or a lease of theirs runs out. Names the store does not know are ignored.
    async fn next_due(
        &self,
        subscriptions: &[SubscriptionName],
        after: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError>;

    /// Changes from any node that a runtime may act on. Each call returns a new listener.
    fn wakeups(&self) -> BoxStream<'static, Wakeup>;

    /// Events matching `filter`, newest first, one page at a time. The deliveries in the results
    /// carry no attempt history (see [`get`](Store::get)).
    async fn query(&self, filter: &EventFilter, page: PageRequest) -> Result<Page<EventRecord>, StoreError>;

    /// One event with its deliveries and their attempts.
    async fn get(&self, id: EventId) -> Result<Option<EventRecord>, StoreError>;

    /// Counts by status.
    async fn stats(&self) -> Result<Stats, StoreError>;

    /// Deletes finished events (every delivery succeeded, dead, cancelled or expired, or none
    /// routed) that finished before `before`. Returns how many went.
    async fn purge(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// How many deliveries are not finished, if the store can tell cheaply. The runtime's
    /// backpressure (`max_pending`) uses it; `None` turns backpressure off for this store.
    fn backlog(&self) -> Option<u64>;
}

//! The runtime: publishing, dispatch to handlers, the timer, request/reply and shutdown.
//!
//! One [`Herald`] per process shares one [`Store`]. A pool of worker tasks claims due deliveries
//! for the local subscriptions (each within its concurrency limit), runs them under their
//! subscription's timeout and records the outcomes; one timer sleeps until the earliest due time
//! the store knows of.

mod pool;
mod publish;
mod query;
mod subscribe;
mod timer;
mod worker;

#[cfg(feature = "cron")]
pub(crate) use publish::Room;
pub use publish::{Message, Publish, PublishFuture, Request};
pub use query::EventsQuery;
pub use subscribe::{Subscription, SubscriptionBuilder};

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::event::{DeliveryId, EventId};
use crate::metrics::Metrics;
use crate::store::{CancelAs, Cancelled, EventRecord, MemoryStore, Requeued, Stats, Store, StoreError};
use crate::time::{Clock, Timestamp};
use crate::topic::{SubscriptionName, Topic};

use subscribe::LocalSub;

/// A value on cache lines of its own (two: the adjacent-line prefetcher pairs them), so that
/// writes to it do not take from other cores the lines of what they read beside it.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The topic herald publishes to when a delivery dies; the payload is a [`DeadLetter`].
pub const DEAD_LETTER_TOPIC: &str = "herald.event.dead";
/// The topic herald publishes to when it starts; the payload is a [`Lifecycle`].
pub const STARTUP_TOPIC: &str = "system.startup";
/// The topic herald publishes to when it starts shutting down; the payload is a [`Lifecycle`].
pub const SHUTDOWN_TOPIC: &str = "system.shutdown";

/// The payload of a `herald.event.dead` event: a delivery died.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Context, DeadLetter, HandlerError, Herald, DEAD_LETTER_TOPIC};
/// let herald = Herald::builder().build().await?;
/// herald
///     .subscribe("alerts", DEAD_LETTER_TOPIC)
///     .handle(|dead: DeadLetter, _ctx: Context| async move {
///         eprintln!("{} on {} died after {} attempts: {}", dead.event_id, dead.subscription, dead.attempts, dead.reason);
///         Ok::<_, HandlerError>(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The event whose delivery died.
    pub event_id: EventId,
    /// The delivery.
    pub delivery_id: DeliveryId,
    /// The event's topic.
    pub topic: Topic,
    /// The subscription that gave up.
    pub subscription: SubscriptionName,
    /// How many attempts were made.
    pub attempts: u32,
    /// Why it died.
    pub reason: String,
}

/// The payload of `system.startup` and `system.shutdown`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Herald, Lifecycle, SHUTDOWN_TOPIC, STARTUP_TOPIC};
///
/// let herald = Herald::builder().node("api-1").build().await?;
/// herald
///     .subscribe("lifecycle-log", "system.*")
///     .handle(|life: Lifecycle, ctx| async move {
///         println!("{} on {} at {}", ctx.topic(), life.node, life.at);
///         Ok(())
///     })
///     .await?;
/// assert_eq!((STARTUP_TOPIC, SHUTDOWN_TOPIC), ("system.startup", "system.shutdown"));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Lifecycle {
    /// The node (process) that started or is stopping.
    pub node: String,
    /// When.
    pub at: Timestamp,
}

/// What [`Herald::shutdown`] left behind.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::Herald;
/// use std::time::Duration;
///
/// let herald = Herald::builder().build().await?;
/// herald.subscribe("slow", "report.build").handle(|_: u32, _ctx| async { Ok(()) }).await?;
/// herald.publish("report.build", &1).delay(Duration::from_secs(3600)).await?;
/// let report = herald.shutdown(Duration::from_secs(5)).await;
/// assert_eq!(report.interrupted, 0, "no attempt was cut short");
/// assert_eq!(report.unfinished, Some(1), "the delayed event never ran");
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Attempts that finished during the drain.
    pub drained: usize,
    /// Attempts still running at the deadline: they were stopped and their deliveries released,
    /// to run again (in a durable store: on the next start or another node).
    pub interrupted: usize,
    /// Deliveries not finished in the store when the runtime stopped, if the store can tell.
    pub unfinished: Option<u64>,
}

/// Configures and starts a [`Herald`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Herald, MemoryStore};
/// use std::time::Duration;
///
/// let herald = Herald::builder()
///     .store(MemoryStore::new())
///     .workers(32)
///     .max_pending(50_000)
///     .build()
///     .await?;
/// herald.shutdown(Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct HeraldBuilder {
    store: Option<Arc<dyn Store>>,
    store_error: Option<StoreError>,
    connect: Option<BoxFuture<'static, Result<Arc<dyn Store>, StoreError>>>,
    workers: usize,
    max_pending: Option<u64>,
    lease: Duration,
    system_events: bool,
    retention: Option<Duration>,
    node: Option<String>,
}

impl fmt::Debug for HeraldBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeraldBuilder")
            .field("store", &self.store)
            .field("workers", &self.workers)
            .field("max_pending", &self.max_pending)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl HeraldBuilder {
    /// The store (default: a new [`MemoryStore`]).
    pub fn store(mut self, store: impl Store) -> Self {
        self.connect = None;
        self.store = Some(Arc::new(store));
        self
    }

    /// A store that may have failed to open: the error is reported by [`build`](Self::build), so
    /// that builder methods of store crates (such as `.sqlite(path)`) can chain.
    pub fn try_store<S: Store>(mut self, store: Result<S, StoreError>) -> Self {
        match store {
            Ok(s) => self.store = Some(Arc::new(s)),
            Err(e) => self.store_error = Some(e),
        }
        self
    }

    /// A store reached over the network: `build()` awaits `connecting` and reports its error.
    /// Store crates use it for their builder methods (`.redis(url)`, `.postgres(url)`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
    /// use herald_core::{Herald, MemoryStore, StoreError};
    ///
    /// async fn connect() -> Result<MemoryStore, StoreError> {
    ///     Ok(MemoryStore::new())
    /// }
    ///
    /// let herald = Herald::builder().connect(connect()).build().await?;
    /// # herald.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
    /// ```
    pub fn connect<S, F>(mut self, connecting: F) -> Self
    where
        S: Store,
        F: std::future::Future<Output = Result<S, StoreError>> + Send + 'static,
    {
        self.store = None;
        self.connect = Some(Box::pin(async move {
            connecting.await.map(|s| Arc::new(s) as Arc<dyn Store>)
        }));
        self
    }

    /// A store already shared.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// How many handlers may run at once across all subscriptions (default: 64). Each
    /// subscription's own `concurrency` limit applies inside this one. (A request may also be run
    /// by the task that sent it, see [`Herald::request`]: that attempt counts against its
    /// subscription's limit only.)
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// How many unfinished deliveries (scheduled ones included) the store may hold before
    /// `publish` waits and `try_publish` fails with `Full` (default: 100,000). Stores that cannot
    /// count cheaply (see [`Store::backlog`]) are not bounded. The [`MemoryStore`] counts exactly
    /// up to 64 unfinished deliveries per shard and, above that, to within 16 or a sixty-fourth
    /// (whichever is more) per shard, so a large bound may be passed by that much.
    pub fn max_pending(mut self, n: u64) -> Self {
        self.max_pending = Some(n);
        self
    }

    /// Publishes never wait for room.
    pub fn unbounded(mut self) -> Self {
        self.max_pending = None;
        self
    }

    /// The default lease of a claimed delivery (default: 30 s). A worker extends it while the
    /// handler runs; if the worker dies, the delivery comes back when it runs out.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// Whether to publish `system.startup`, `system.shutdown` and `herald.event.dead` (default: on).
    pub fn system_events(mut self, on: bool) -> Self {
        self.system_events = on;
        self
    }

    /// Deletes finished events older than this from the store, checked every minute (default:
    /// off; the memory store has its own bound, see [`MemoryStore::builder`]).
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = Some(d);
        self
    }

    /// This process's name in leases and lifecycle events (default: `pid-<pid>-<random>`).
    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.node = Some(name.into());
        self
    }

    /// Starts the runtime: the timer, maintenance, and `system.startup`.
    pub async fn build(self) -> Result<Herald, Error> {
        if let Some(e) = self.store_error {
            return Err(Error::Store(e));
        }
        if self.workers == 0 {
            return Err(Error::Config("workers must be at least 1"));
        }
        if self.lease < Duration::from_millis(10) {
            return Err(Error::Config("the lease must be at least 10 ms"));
        }
        let store = match (self.store, self.connect) {
            (Some(store), _) => store,
            (None, Some(connecting)) => connecting.await?,
            (None, None) => Arc::new(MemoryStore::new()),
        };
        let clock = store.clock();
        let node = self
            .node
            .unwrap_or_else(|| format!("pid-{}-{:08x}", std::process::id(), fastrand::u32(..)))
            .into();
        let node: Arc<str> = node;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        // With a store that never waits, the timer's listener is named, so that a publish whose
        // deliveries this runtime hands to its workers itself does not wake the timer for them too.
        let (own_listener, wakeups) = match store.immediate() {
            Some(direct) => {
                let (key, wakeups) = direct.wakeups_keyed();
                (Some(key), wakeups)
            }
            None => (None, store.wakeups()),
        };
        let inner = Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            reply_to: crate::event::ReplyTo::new(node.clone()),
            wakeups: Mutex::new(Some(wakeups)),
            own_listener,
            store,
            clock,
            node,
            worker_count: self.workers,
            max_pending: self.max_pending,
            lease: self.lease,
            system_events: self.system_events,
            retention: self.retention,
            subs: Subs::default(),
            replies: Mutex::new(HashMap::default()),
            topics: RwLock::new(HashMap::default()),
            room: Notify::new(),
            room_waiters: std::sync::atomic::AtomicUsize::new(0),
            timer_refresh: Notify::new(),
            closing: AtomicBool::new(false),
            stop_claiming: CancellationToken::new(),
            claims_stopped: AtomicBool::new(false),
            hard_stop: CancellationToken::new(),
            stopped: CancellationToken::new(),
            has_stopped: AtomicBool::new(false),
            in_flight: worker::InFlight::default(),
            pool: pool::Pool::new(tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers())),
            background: TaskTracker::new(),
            shutdown: OnceCell::new(),
            metrics: Metrics::new(),
            #[cfg(feature = "cron")]
            crons: crate::cron::Registry::default(),
        });
        // The pool is `workers` long-lived tasks that claim for themselves (see `pool`): a task
        // per attempt cost a third of a no-op handler's time, and a dispatcher and a completer
        // between publisher and worker cost two task wakeups per delivery.
        for _ in 0..self.workers {
            inner.background.spawn(pool::work(inner.clone()));
        }
        inner.background.spawn(timer::run(inner.clone()));
        inner.background.spawn(maintain(inner.clone()));
        let herald = Herald { inner };
        if herald.inner.system_events {
            herald.inner.publish_lifecycle(STARTUP_TOPIC).await?;
        }
        Ok(herald)
    }
}

/// What a reply waiter receives.
pub(crate) enum Answer {
    Reply(Bytes),
    Failed(String),
}

pub(crate) struct Inner {
    /// Unique among the runtimes of the process (a key of per-thread caches).
    pub(crate) id: u64,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Clock,
    pub(crate) node: Arc<str>,
    /// The node as the `reply_to` of this runtime's requests, one allocation shared by all.
    pub(crate) reply_to: crate::event::ReplyTo,
    pub(crate) worker_count: usize,
    pub(crate) max_pending: Option<u64>,
    pub(crate) lease: Duration,
    pub(crate) system_events: bool,
    retention: Option<Duration>,
    pub(crate) subs: Subs,
    pub(crate) replies: Mutex<HashMap<EventId, oneshot::Sender<Answer>, crate::event::IdHashState>>,
    /// Interned topics (see `Inner::intern`); hashed like ids, with a per-process seed (a lookup
    /// took 310 instructions with SipHash, 190 with this), and bounded, so a flood of names cannot
    /// grow it.
    pub(crate) topics: RwLock<HashMap<Topic, metrics::Counter, crate::event::IdHashState>>,
    /// Signalled when deliveries finish, for publishers waiting for room.
    pub(crate) room: Notify,
    /// How many publishers (or shutdown) wait on `room`.
    pub(crate) room_waiters: std::sync::atomic::AtomicUsize,
    /// Signalled when the timer should ask the store again (a new subscription).
    pub(crate) timer_refresh: Notify,
    pub(crate) closing: AtomicBool,
    pub(crate) stop_claiming: CancellationToken,
    /// Set with `stop_claiming`: what the pool reads before each claim (reading a
    /// `CancellationToken` takes its lock).
    pub(crate) claims_stopped: AtomicBool,
    pub(crate) hard_stop: CancellationToken,
    pub(crate) stopped: CancellationToken,
    /// Set before `stopped` is cancelled: what an idle worker reads.
    pub(crate) has_stopped: AtomicBool,
    pub(crate) wakeups: Mutex<Option<futures_util::stream::BoxStream<'static, crate::store::Wakeup>>>,
    /// The key of the timer's listener among the store's, when the store is immediate (see
    /// `ImmediateStore::publish_one_now`).
    pub(crate) own_listener: Option<crate::store::ListenerKey>,
    /// Claimed deliveries not yet finished (queued for a worker or running).
    pub(crate) in_flight: worker::InFlight,
    /// The workers' shared queue, idle list and outcome combining.
    pub(crate) pool: pool::Pool,
    pub(crate) background: TaskTracker,
    shutdown: OnceCell<ShutdownReport>,
    pub(crate) metrics: Metrics,
    /// Cron schedules; their tick tasks stop with `stop_claiming` and run on `background`.
    #[cfg(feature = "cron")]
    pub(crate) crons: crate::cron::Registry,
}

impl Inner {
    /// Marks every local subscription as having due work and wakes an idle worker to claim.
    pub(crate) fn notify_due(&self) {
        // Through this thread's copy of the marks, checked against the list's version: the list's
        // lock, even to read, writes a line that every publishing thread writes.
        let marked = DUE_MARKS.with(|cached| {
            let mut cached = cached.try_borrow_mut().ok()?;
            let version = self.subs.version.load(Ordering::Acquire);
            let marks = match &mut *cached {
                Some((runtime, seen, marks)) if *runtime == self.id && *seen == version => marks,
                stale => {
                    // The version first, as in `Subs::copy`; a subscription added later starts
                    // marked due.
                    let marks = self.subs.snapshot().iter().map(|s| s.demand.due.clone()).collect();
                    &mut stale.insert((self.id, version, marks)).2
                }
            };
            for due in marks.iter() {
                mark(due);
            }
            Some(())
        });
        if marked.is_none() {
            for sub in self.subs.snapshot().iter() {
                mark(&sub.demand.due);
            }
        }
        self.pool.wake();
    }

    /// Tells publishers waiting for room that deliveries finished. Cheap when nobody waits.
    pub(crate) fn made_room(&self) {
        if self.room_waiters.load(Ordering::Relaxed) > 0 {
            self.room.notify_waiters();
        }
    }

    pub(crate) fn subs_snapshot(&self) -> Arc<[Arc<LocalSub>]> {
        self.subs.snapshot()
    }

    pub(crate) fn answer(&self, id: EventId, answer: Answer) {
        let waiter = self.replies.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Some(tx) = waiter {
            // The requester may have timed out and gone: nothing to do then.
            let _ = tx.send(answer);
        }
    }

    pub(crate) fn has_waiter(&self, id: EventId) -> bool {
        self.replies.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&id)
    }

    async fn publish_lifecycle(&self, topic: &'static str) -> Result<EventId, Error> {
        let payload = Lifecycle {
            node: self.node.to_string(),
            at: self.clock.now(),
        };
        let id = self
            .publish_one(Message::json(topic, &payload), publish::Room::Ignore)
            .await?;
        Ok(id.id())
    }

    /// Waits until every delivery of `id` is finished, or until `deadline`.
    async fn wait_finished(&self, id: EventId, deadline: Instant) {
        let _waiting = RoomWaiter::new(self);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.store.get(id).await {
                Ok(Some(rec)) if !rec.status.is_finished() => {}
                _ => return,
            }
            tokio::select! {
                _ = &mut room => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// Sets a subscription's due mark. A mark already set stays set until a worker clears it before
/// its claim, and that claim comes after this publish (see `pool::next`): it is not written again,
/// which would take its line from the workers that read it.
fn mark(due: &AtomicBool) {
    if !due.load(Ordering::SeqCst) {
        due.store(true, Ordering::SeqCst);
    }
}

/// Marks due, per thread: the runtime's id, the version of its subscription list, and the due
/// marks of its subscriptions (see `Inner::notify_due`).
type DueMarks = Option<(u64, u64, Box<[Arc<AtomicBool>]>)>;

thread_local! {
    static DUE_MARKS: std::cell::RefCell<DueMarks> = const { std::cell::RefCell::new(None) };
}

/// Counts a waiter on `room` for as long as it lives.
pub(crate) struct RoomWaiter<'a>(&'a Inner);

impl<'a> RoomWaiter<'a> {
    pub(crate) fn new(inner: &'a Inner) -> Self {
        inner.room_waiters.fetch_add(1, Ordering::SeqCst);
        RoomWaiter(inner)
    }
}

impl Drop for RoomWaiter<'_> {
    fn drop(&mut self) {
        self.0.room_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The event bus: publish, subscribe, request, query, shut down. Cheap to clone; every clone is
/// the same runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Herald, HandlerError, Context};
/// use serde::{Deserialize, Serialize};
/// use std::time::Duration;
///
/// #[derive(Serialize, Deserialize)]
/// struct OrderPaid { order: u64 }
///
/// let herald = Herald::builder().build().await?;
/// herald
///     .subscribe("billing", "order.paid")
///     .max_attempts(5)
///     .handle(|paid: OrderPaid, ctx: Context| async move {
///         println!("order {} paid (attempt {})", paid.order, ctx.attempt());
///         Ok::<_, HandlerError>(())
///     })
///     .await?;
/// let id = herald.publish("order.paid", &OrderPaid { order: 7 }).await?;
/// let later = herald.publish("order.paid", &OrderPaid { order: 8 }).delay(Duration::from_secs(60)).await?;
/// herald.cancel(later).await?;
/// herald.shutdown(Duration::from_secs(5)).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Herald {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Herald {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Herald")
            .field("node", &self.inner.node)
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

impl Herald {
    /// Configures a runtime.
    pub fn builder() -> HeraldBuilder {
        HeraldBuilder {
            store: None,
            store_error: None,
            connect: None,
            workers: 64,
            max_pending: Some(100_000),
            lease: Duration::from_secs(30),
            system_events: true,
            retention: None,
            node: None,
        }
    }

    /// The store this runtime uses.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The clock due times are judged by.
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// This process's name in leases and lifecycle events.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Cancels every delivery of the event that has not started. Deliveries already running
    /// finish.
    pub async fn cancel(&self, id: EventId) -> Result<Cancelled, StoreError> {
        let out = self.inner.store.cancel(id, CancelAs::Cancelled).await?;
        if let Cancelled::Ended(n) = out {
            self.inner.metrics.cancelled.increment(u64::from(n));
            self.inner.made_room();
        }
        Ok(out)
    }

    /// Requeues a dead delivery: it becomes pending, due now, for one more attempt (its history is
    /// kept and its attempt count goes on from where it stopped).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
    /// use herald_core::{Herald, Requeued};
    /// let herald = Herald::builder().build().await?;
    /// for record in herald.dead_letters().limit(100).await?.items {
    ///     for delivery in record.deliveries.iter().filter(|d| d.status == herald_core::DeliveryStatus::Dead) {
    ///         assert_eq!(herald.retry(delivery.id).await?, Requeued::Requeued);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn retry(&self, delivery: DeliveryId) -> Result<Requeued, StoreError> {
        self.inner.store.requeue(delivery).await
    }

    /// One event with its deliveries and their attempts.
    pub async fn get(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        self.inner.store.get(id).await
    }

    /// Counts by status.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        self.inner.store.stats().await
    }

    /// Stops the runtime: publishes `system.shutdown` (and waits for its handlers), stops claiming,
    /// lets running attempts finish until `within` has passed, then stops the rest and releases
    /// their deliveries. Calling it again returns the first report.
    pub async fn shutdown(&self, within: Duration) -> ShutdownReport {
        let inner = &self.inner;
        *inner
            .shutdown
            .get_or_init(|| async {
                let deadline = Instant::now() + within;
                inner.closing.store(true, Ordering::SeqCst);
                if inner.system_events {
                    if let Ok(id) = inner.publish_lifecycle(SHUTDOWN_TOPIC).await {
                        inner.wait_finished(id, deadline).await;
                    }
                }
                inner.claims_stopped.store(true, Ordering::SeqCst);
                inner.stop_claiming.cancel();
                let before = inner.in_flight.count();
                let drained_in_time = tokio::select! {
                    _ = inner.in_flight.idle() => true,
                    _ = tokio::time::sleep_until(deadline) => false,
                };
                let interrupted = if drained_in_time { 0 } else { inner.in_flight.count() };
                inner.hard_stop.cancel();
                inner.in_flight.idle().await;
                inner.has_stopped.store(true, Ordering::SeqCst);
                inner.stopped.cancel();
                inner.pool.stop();
                inner.background.close();
                inner.background.wait().await;
                // Requests still waiting get `ShuttingDown`.
                inner.replies.lock().unwrap_or_else(|p| p.into_inner()).clear();
                ShutdownReport {
                    drained: before.saturating_sub(interrupted),
                    interrupted,
                    unfinished: inner.store.backlog(),
                }
            })
            .await
    }
}

/// The subscriptions running in this process, with a version that every change bumps: each
/// worker keeps a copy (`SubsCopy`) and reads only the version, where a lock, even a read lock,
/// would write to a line that every worker and publisher touches.
#[derive(Default)]
pub(crate) struct Subs {
    pub(crate) list: RwLock<Arc<[Arc<LocalSub>]>>,
    version: std::sync::atomic::AtomicU64,
}

/// A worker's copy of the subscription list and the version it was taken at.
pub(crate) struct SubsCopy {
    version: u64,
    list: Arc<[Arc<LocalSub>]>,
}

impl Subs {
    pub(crate) fn snapshot(&self) -> Arc<[Arc<LocalSub>]> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn copy(&self) -> SubsCopy {
        // The version first: a change after it is read makes the copy look stale, never current.
        let version = self.version.load(Ordering::Acquire);
        SubsCopy {
            version,
            list: self.snapshot(),
        }
    }

    /// `copy`'s list, brought up to date first if the list changed since it was taken.
    pub(crate) fn current<'a>(&self, copy: &'a mut SubsCopy) -> &'a [Arc<LocalSub>] {
        if copy.version != self.version.load(Ordering::Acquire) {
            *copy = self.copy();
        }
        &copy.list
    }

    /// Adds `sub` unless one of the same name is there (then it is given back).
    pub(crate) fn add(&self, sub: Arc<LocalSub>) -> Result<(), Arc<LocalSub>> {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        if list.iter().any(|s| s.name == sub.name) {
            return Err(sub);
        }
        *list = list.iter().cloned().chain(std::iter::once(sub)).collect();
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Removes `sub`.
    pub(crate) fn remove(&self, sub: &Arc<LocalSub>) {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        *list = list.iter().filter(|s| !Arc::ptr_eq(s, sub)).cloned().collect();
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// Periodic upkeep: status gauges and, when configured, retention.
async fn maintain(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = Instant::now();
    loop {
        tokio::select! {
            _ = inner.stopped.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(stats) = inner.store.stats().await {
            inner.metrics.record_stats(&stats);
        }
        if let Some(keep) = inner.retention {
            if last_purge.elapsed() >= Duration::from_secs(60) {
                last_purge = Instant::now();
                let before = Timestamp::from_millis(
                    inner
                        .clock
                        .now()
                        .as_millis()
                        .saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX)),
                );
                if let Err(e) = inner.store.purge(before).await {
                    tracing::warn!(error = %e, "herald: retention purge failed; will try again");
                }
            }
        }
    }
}

//! Subscriptions: their policy, the builder that declares them, and the handle that pauses them.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::pool::Demand;
use super::Herald;
use crate::error::SubscribeError;
use crate::event::Event;
use crate::handler::{self, BoxHandler, Context, HandlerError};
use crate::metrics::SubMetrics;
use crate::retry::Backoff;
use crate::store::SubscriptionSpec;
use crate::topic::{Pattern, SubscriptionName, TopicError};

/// How a subscription treats failures and load.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) timeout: Option<Duration>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) lease: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 5,
            backoff: Backoff::default(),
            timeout: Some(Duration::from_secs(30)),
            concurrency: None,
            lease: None,
        }
    }
}

/// A running subscription, as the runtime holds it.
pub(crate) struct LocalSub {
    pub(crate) name: SubscriptionName,
    pub(crate) pattern: Pattern,
    pub(crate) policy: Policy,
    pub(crate) lease: Duration,
    pub(crate) handler: BoxHandler,
    /// Its limit, its running count and whether it has due work, for the pool.
    pub(crate) demand: Demand,
    pub(crate) paused: AtomicBool,
    pub(crate) stop: CancellationToken,
    /// Set with `stop` by `unsubscribe`: what the pool reads before each claim (reading a
    /// `CancellationToken` takes its lock).
    pub(crate) unsubscribed: AtomicBool,
    pub(crate) metrics: SubMetrics,
}

impl fmt::Debug for LocalSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSub")
            .field("name", &self.name)
            .field("pattern", &self.pattern)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Declares a subscription: a unique name, a pattern and a policy, then a handler.
///
/// Made by [`Herald::subscribe`]. Defaults: 5 attempts, exponential backoff from 1 s up to 10
/// minutes with full jitter, a 30 s timeout per attempt, no concurrency limit of its own (the
/// runtime's `workers` bound applies), the runtime's lease.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Backoff, Context, HandlerError, Herald};
/// use std::time::Duration;
///
/// let herald = Herald::builder().build().await?;
/// herald
///     .subscribe("shipping", "order.paid")
///     .max_attempts(8)
///     .backoff(Backoff::exponential(Duration::from_millis(500)).cap(Duration::from_secs(60)))
///     .timeout(Duration::from_secs(10))
///     .concurrency(4) // at most 4 of its handlers at once
///     .handle(|order: u64, ctx: Context| async move {
///         println!("shipping order {order}, attempt {}", ctx.attempt());
///         Ok::<_, HandlerError>(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a subscription does nothing until a handler is given and awaited"]
pub struct SubscriptionBuilder<'a> {
    herald: &'a Herald,
    name: Result<SubscriptionName, TopicError>,
    pattern: Result<Pattern, TopicError>,
    policy: Policy,
}

impl fmt::Debug for SubscriptionBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionBuilder")
            .field("name", &self.name)
            .field("pattern", &self.pattern)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SubscriptionBuilder<'_> {
    /// How many attempts a delivery gets before it is dead (default: 5; at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.policy.max_attempts = n;
        self
    }

    /// How long to wait between attempts (default: exponential from 1 s, capped at 10 min,
    /// full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy.backoff = backoff;
        self
    }

    /// How long one attempt may run before it counts as failed (default: 30 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.policy.timeout = Some(d);
        self
    }

    /// Lets attempts run as long as they take.
    pub fn no_timeout(mut self) -> Self {
        self.policy.timeout = None;
        self
    }

    /// At most `n` of this subscription's handlers run at once (default: no limit of its own).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.policy.concurrency = Some(n);
        self
    }

    /// The lease of this subscription's claims (default: the runtime's).
    pub fn lease(mut self, d: Duration) -> Self {
        self.policy.lease = Some(d);
        self
    }

    #[doc = include_str!("../docs/handlers.md")]
    pub async fn handle<T, R, F, Fut>(self, handler: F) -> Result<Subscription, SubscribeError>
    where
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(T, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.start(handler::typed(handler)).await
    }

    /// Runs `handler` for each delivery with the raw [`Event`] (any content type).
    pub async fn handle_event<R, F, Fut>(self, handler: F) -> Result<Subscription, SubscribeError>
    where
        R: Serialize + Send + 'static,
        F: Fn(Event, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.start(handler::raw(handler)).await
    }

    async fn start(self, handler: BoxHandler) -> Result<Subscription, SubscribeError> {
        let inner = &self.herald.inner;
        let name = self.name?;
        let pattern = self.pattern?;
        let policy = self.policy;
        if policy.max_attempts == 0 {
            return Err(SubscribeError::Options("max_attempts must be at least 1"));
        }
        if policy.concurrency == Some(0) {
            return Err(SubscribeError::Options("concurrency must be at least 1"));
        }
        if policy.timeout.is_some_and(|t| t.is_zero()) {
            return Err(SubscribeError::Options(
                "the timeout must be longer than zero; use no_timeout() for none",
            ));
        }
        if inner.closing.load(Ordering::Relaxed) {
            return Err(SubscribeError::ShuttingDown);
        }
        if inner.subs_snapshot().iter().any(|s| s.name == name) {
            return Err(SubscribeError::Duplicate(name));
        }
        inner
            .store
            .declare(&SubscriptionSpec {
                name: name.clone(),
                pattern: pattern.clone(),
            })
            .await?;
        let sub = Arc::new(LocalSub {
            metrics: inner.metrics.subscription(&name),
            lease: policy.lease.unwrap_or(inner.lease),
            demand: Demand::new(policy.concurrency.unwrap_or(inner.worker_count), inner.pool.lanes()),
            name: name.clone(),
            pattern,
            policy,
            handler,
            paused: AtomicBool::new(false),
            stop: inner.stop_claiming.child_token(),
            unsubscribed: AtomicBool::new(false),
        });
        if inner.subs.add(sub.clone()).is_err() {
            return Err(SubscribeError::Duplicate(name));
        }
        // Deliveries may be waiting in the store already: the pool looks at once.
        inner.pool.wake();
        inner.timer_refresh.notify_one();
        Ok(Subscription {
            herald: self.herald.clone(),
            sub,
        })
    }
}

impl Herald {
    /// Starts declaring a subscription named `name` (unique in this process; in a shared store,
    /// every process that uses the name shares its deliveries) to topics matching `pattern`.
    ///
    /// See [`SubscriptionBuilder::handle`] for an example.
    pub fn subscribe(&self, name: &str, pattern: &str) -> SubscriptionBuilder<'_> {
        SubscriptionBuilder {
            herald: self,
            name: SubscriptionName::new(name),
            pattern: Pattern::new(pattern),
            policy: Policy::default(),
        }
    }

    /// The running subscription named `name`, to pause, resume or stop it.
    pub fn subscription(&self, name: &str) -> Option<Subscription> {
        self.subscriptions().into_iter().find(|s| s.name().as_str() == name)
    }

    /// Every subscription running in this process.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.inner
            .subs_snapshot()
            .iter()
            .map(|sub| Subscription {
                herald: self.clone(),
                sub: sub.clone(),
            })
            .collect()
    }
}

/// A running subscription: pause and resume it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
/// use herald_core::{Context, HandlerError, Herald};
/// let herald = Herald::builder().build().await?;
/// let sub = herald
///     .subscribe("exports", "report.ready")
///     .handle(|_: serde_json::Value, _ctx: Context| async { Ok::<_, HandlerError>(()) })
///     .await?;
/// sub.pause(); // deliveries wait in the store
/// assert!(sub.is_paused());
/// sub.resume(); // and run again
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Subscription {
    herald: Herald,
    sub: Arc<LocalSub>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.sub.name)
            .field("pattern", &self.sub.pattern)
            .field("paused", &self.is_paused())
            .finish()
    }
}

impl Subscription {
    /// Its name.
    pub fn name(&self) -> &SubscriptionName {
        &self.sub.name
    }

    /// Its pattern.
    pub fn pattern(&self) -> &Pattern {
        &self.sub.pattern
    }

    /// Stops starting new attempts; running ones finish. Deliveries keep arriving and wait.
    pub fn pause(&self) {
        self.sub.paused.store(true, Ordering::SeqCst);
    }

    /// Starts attempts again.
    pub fn resume(&self) {
        self.sub.paused.store(false, Ordering::SeqCst);
        self.sub.demand.due.store(true, Ordering::SeqCst);
        self.herald.inner.pool.wake();
    }

    /// Whether it is paused.
    pub fn is_paused(&self) -> bool {
        self.sub.paused.load(Ordering::SeqCst)
    }

    /// Stops the subscription for good: no new attempts start here, the store stops routing
    /// events to it and cancels its unfinished deliveries (attempts already running finish, but
    /// their outcomes are no longer recorded). Returns how many deliveries were cancelled.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), herald_core::Error> {
    /// use herald_core::{Context, HandlerError, Herald};
    /// let herald = Herald::builder().build().await?;
    /// let sub = herald
    ///     .subscribe("audit", "order.>")
    ///     .handle(|_: serde_json::Value, _ctx: Context| async { Ok::<_, HandlerError>(()) })
    ///     .await?;
    /// sub.unsubscribe().await?;
    /// assert!(herald.subscription("audit").is_none());
    /// # Ok(()) }
    /// ```
    pub async fn unsubscribe(self) -> Result<u64, crate::store::StoreError> {
        let inner = &self.herald.inner;
        self.sub.unsubscribed.store(true, Ordering::SeqCst);
        self.sub.stop.cancel();
        inner.subs.remove(&self.sub);
        let cancelled = inner.store.remove_subscription(&self.sub.name).await?;
        inner.made_room();
        Ok(cancelled)
    }
}

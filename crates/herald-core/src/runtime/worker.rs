//! One attempt: runs the handler under its timeout with panics caught, keeps the lease alive,
//! and records the outcome.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::pool::{Job, Slot};
use super::publish::{Message, Room};
use super::subscribe::LocalSub;
use super::{Answer, DeadLetter, Herald, Inner, DEAD_LETTER_TOPIC};
use crate::event::EventId;
use crate::handler::{AttemptResult, Context};
use crate::store::{Claimed, Completion, ImmediateStore, Lease, Outcome, StoreError, Verdict};
use crate::time::Timestamp;

/// How an attempt ended, before it is judged against the policy.
enum Ended {
    Returned(AttemptResult),
    Panicked(String),
    TimedOut(Duration),
    Interrupted,
    LeaseLost,
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}

/// Counts claimed deliveries not yet finished, so that shutdown can wait for them.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
    /// Whether anyone waits in `idle()` (only shutdown does): otherwise reaching zero, which
    /// happens after most bursts, would take `Notify`'s lock for nobody.
    watched: std::sync::atomic::AtomicBool,
}

impl InFlight {
    /// `n` deliveries were claimed.
    pub(crate) fn start(&self, n: usize) {
        if n > 0 {
            self.count.fetch_add(n, Ordering::SeqCst);
        }
    }

    pub(crate) fn finish(&self) {
        self.finish_many(1);
    }

    /// `n` deliveries finished (one write for all: the count is on a line every worker writes).
    pub(crate) fn finish_many(&self, n: usize) {
        if n > 0 && self.count.fetch_sub(n, Ordering::SeqCst) == n && self.watched.load(Ordering::SeqCst) {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once nothing is in flight.
    pub(crate) async fn idle(&self) {
        // Before the count is read: a `finish` that sees it unset has already brought the count
        // to what the read below sees.
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// The span of one attempt.
fn attempt_span(job: &Job) -> tracing::Span {
    tracing::info_span!(
        "herald.attempt",
        subscription = %job.slot.sub.name,
        topic = %job.claimed.event.topic(),
        event_id = %job.claimed.event.id(),
        attempt = job.claimed.attempt,
    )
}

/// Runs one claimed delivery; returns its outcome for the pool to record, or `None` when the
/// lease went to another claim (the delivery is then finished here).
///
/// `deferred` holds the outcomes its worker has kept back (see `pool::work`): they are recorded
/// before the attempt waits for anything.
///
/// `now`: the clock as the worker's last attempt ended, if nothing has run in between (the
/// attempt starts then, without a clock read); set to when this one ended.
pub(crate) async fn run(
    inner: &Arc<Inner>,
    job: Job,
    deferred: &mut Vec<Finished>,
    now: &mut Option<(Instant, Timestamp)>,
) -> Option<Finished> {
    let span = attempt_span(&job);
    // Without a subscriber that wants the span, the attempt is not wrapped: wrapping moves its
    // (large) future once more.
    let finished = if span.is_disabled() {
        attempt(inner, job, deferred, now).await
    } else {
        attempt(inner, job, deferred, now).instrument(span).await
    };
    if finished.is_none() {
        inner.in_flight.finish();
    }
    finished
}

async fn attempt(
    inner: &Arc<Inner>,
    job: Job,
    deferred: &mut Vec<Finished>,
    now: &mut Option<(Instant, Timestamp)>,
) -> Option<Finished> {
    let Job { claimed, slot } = job;
    // Borrowed, not cloned: every worker clones and drops the same count otherwise.
    let sub = &*slot.sub;
    // One clock read for the start (the tokio instant gives the timestamp too), or none when the
    // worker's last attempt ended just now.
    let (started, started_at) = now.take().unwrap_or_else(|| {
        let started = Instant::now();
        (started, inner.clock.reading_at(started))
    });
    // Claimed ahead of a free worker, it may have waited in the queue: a lease more than half
    // spent is renewed before the handler starts, and a lease lost meanwhile gives the delivery up
    // to the claim that took it.
    let half_lease = i64::try_from(sub.lease.as_millis() / 2).unwrap_or(i64::MAX);
    if claimed.lease_until.millis_since(started_at) < half_lease {
        // The renewal may wait for the store: what was kept back is recorded first.
        Box::pin(super::pool::record_all(inner, deferred)).await;
        if !Box::pin(renew(inner, sub, &claimed)).await {
            return None;
        }
    }
    let (deadline, handling) = begin(sub, &claimed, started, started_at);
    let ended = match handling {
        Err(ended) => ended,
        Ok(mut fut) => {
            // A handler that finishes in its first poll needs no timer: registering one (and
            // removing it) is a measurable part of a quick handler's cost. Nor does it need the
            // supervision's future, boxed for the handlers that wait.
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await {
                Poll::Ready(r) => returned(r),
                Poll::Pending => {
                    inner.pool.hand_over();
                    // The handler waits: what was kept back is recorded first, not after it.
                    if !deferred.is_empty() {
                        Box::pin(super::pool::record_all(inner, deferred)).await;
                    }
                    Box::pin(supervise(inner, sub, &claimed, fut, started, deadline)).await
                }
            }
        }
    };
    conclude(inner, &slot, claimed, ended, started, now)
}

/// The start of an attempt: its lateness, its context, and the handler called (its future, or
/// how it ended if calling it panicked). Returns the attempt's deadline too.
#[inline(always)]
fn begin(
    sub: &LocalSub,
    claimed: &Claimed,
    started: Instant,
    started_at: crate::time::Timestamp,
) -> (Option<Instant>, Result<Handling, Ended>) {
    let late_ms = started_at.millis_since(claimed.due).max(0);
    sub.metrics.lateness.record(late_ms as f64 / 1000.0);
    let deadline = sub.policy.timeout.map(|t| started + t);
    let ctx = Context::new(
        claimed.event.clone(),
        claimed.lease.delivery,
        claimed.subscription.clone(),
        claimed.attempt,
        claimed.due,
        deadline,
    );
    let handling = match std::panic::catch_unwind(AssertUnwindSafe(|| (sub.handler)(claimed.event.clone(), ctx))) {
        Err(panic) => Err(Ended::Panicked(panic_message(&*panic))),
        Ok(fut) => Ok(AssertUnwindSafe(fut).catch_unwind()),
    };
    (deadline, handling)
}

/// The end of an attempt: frees its slot, records its metrics and judges it. `None` when the lease
/// went to another claim, which owns the outcome.
/// `now` is set to when it ended.
#[inline(always)]
fn conclude(
    inner: &Inner,
    slot: &Slot,
    claimed: Claimed,
    ended: Ended,
    started: Instant,
    now: &mut Option<(Instant, Timestamp)>,
) -> Option<Finished> {
    slot.free();
    let sub = &*slot.sub;
    let ended_at = Instant::now();
    let finished_at = inner.clock.reading_at(ended_at);
    *now = Some((ended_at, finished_at));
    let took = ended_at.saturating_duration_since(started);
    sub.metrics.handle_time.record(took.as_secs_f64());
    // Written only when it changes: every worker reads it, and a write takes the line from them.
    let quick = took < super::pool::QUICK;
    if sub.demand.quick.load(Ordering::Relaxed) != quick {
        sub.demand.quick.store(quick, Ordering::Relaxed);
    }

    let verdict = judge(sub, &claimed, ended, finished_at);
    match &verdict {
        Some(Verdict::Succeeded { .. }) => sub.metrics.succeeded.increment(1),
        Some(Verdict::Retry { error, at }) => {
            sub.metrics.failed.increment(1);
            sub.metrics.retried.increment(1);
            tracing::debug!(%error, retry_at = %at, "herald: attempt failed; retrying later");
        }
        Some(Verdict::Dead { reason }) => {
            sub.metrics.failed.increment(1);
            sub.metrics.dead.increment(1);
            tracing::warn!(%reason, "herald: delivery is dead");
        }
        _ => {}
    }
    let verdict = verdict?;
    let outcome = Outcome {
        lease: claimed.lease,
        finished_at,
        verdict,
    };
    Some(Finished { claimed, outcome })
}

/// How an attempt that its requester runs (see `Request`) went in its first poll.
pub(crate) enum RanHere {
    /// The attempt ended; `None` when its lease went to another claim (it is then finished).
    Ended(Option<Finished>),
    /// The handler waits: the rest of the attempt, to run on a task of its own (it records the
    /// outcome and answers the requester through the runtime's waiters, as a worker would).
    Waiting(BoxFuture<'static, ()>),
}

/// Runs a request's attempt in the requester's task up to the handler's first wait: a quick
/// handler ends there, with no task woken and no timer set.
/// `started` is when the delivery was claimed, an instant ago: the attempt's start.
pub(crate) async fn run_here(inner: &Arc<Inner>, job: Job, started: Instant) -> RanHere {
    let span = attempt_span(&job);
    let ran = if span.is_disabled() {
        first_poll(inner, job, started, span).await
    } else {
        first_poll(inner, job, started, span.clone()).instrument(span).await
    };
    if let RanHere::Ended(None) = ran {
        inner.in_flight.finish();
    }
    ran
}

async fn first_poll(inner: &Arc<Inner>, job: Job, started: Instant, span: tracing::Span) -> RanHere {
    let Job { claimed, slot } = job;
    let started_at = inner.clock.reading_at(started);
    let (deadline, handling) = begin(&slot.sub, &claimed, started, started_at);
    let ended = match handling {
        Err(ended) => ended,
        Ok(mut fut) => match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await {
            Poll::Ready(r) => returned(r),
            Poll::Pending => {
                let inner = inner.clone();
                let rest = async move {
                    let ended = supervise(&inner, &slot.sub, &claimed, fut, started, deadline).await;
                    let finished = conclude(&inner, &slot, claimed, ended, started, &mut None);
                    freed(&inner, &slot.sub);
                    match finished {
                        Some(done) => super::pool::record_one(&inner, done).await,
                        None => inner.in_flight.finish(),
                    }
                };
                return RanHere::Waiting(Box::pin(rest.instrument(span)));
            }
        },
    };
    let finished = conclude(inner, &slot, claimed, ended, started, &mut None);
    freed(inner, &slot.sub);
    RanHere::Ended(finished)
}

/// A unit of `sub`'s limit was given back outside the pool: a worker is woken if the subscription
/// has due work (a worker that gives one back looks for more itself).
fn freed(inner: &Inner, sub: &LocalSub) {
    if sub.demand.due.load(Ordering::SeqCst) {
        inner.pool.wake();
    }
}

/// Records in `store` the outcome of an attempt its requester ran. `answered`: the requester has
/// its answer from the outcome itself (it waits for no other). Returns what is left to await when
/// the delivery died: the announcement of its death (it counts as in flight until then).
pub(crate) fn record_here<'a>(
    inner: &'a Inner,
    store: &dyn ImmediateStore,
    done: Finished,
    answered: bool,
) -> Option<BoxFuture<'a, ()>> {
    let Finished { claimed, outcome } = done;
    let dead = match &outcome.verdict {
        Verdict::Dead { reason } => Some(reason.clone()),
        _ => None,
    };
    let now = outcome.finished_at;
    match store.complete_one_now(outcome, answered, now) {
        Ok(Completion::Applied) => {
            if let Some(reason) = dead {
                let notice = DeadLetter {
                    event_id: claimed.event.id(),
                    delivery_id: claimed.lease.delivery,
                    topic: claimed.event.topic().clone(),
                    subscription: claimed.subscription,
                    attempts: claimed.attempt,
                    reason,
                };
                return Some(Box::pin(async move {
                    announce_death(inner, &claimed.event, notice).await;
                    inner.in_flight.finish();
                    inner.made_room();
                }));
            }
        }
        Ok(_) => tracing::debug!("herald: outcome refused: the lease was lost to another claim"),
        Err(e) => {
            tracing::error!(error = %e, "herald: could not record an outcome; the delivery will run again after its lease");
        }
    }
    inner.in_flight.finish();
    inner.made_room();
    None
}

/// An attempt's outcome on its way to the store.
pub(crate) struct Finished {
    pub(crate) claimed: Claimed,
    pub(crate) outcome: Outcome,
}

/// What follows a recorded outcome: answers a local requester and, for a death, announces it.
/// Only a death has anything to await, so the rest is done here and the (rare) announcement is
/// returned for the caller to box and await: the pool's futures stay small, which matters because
/// each is moved at every `.await`.
pub(crate) fn after_recorded(inner: &Inner, done: Finished) -> Option<BoxFuture<'_, ()>> {
    let Finished { claimed, outcome } = done;
    let event = claimed.event;
    if event.reply_to().is_some() {
        match &outcome.verdict {
            Verdict::Succeeded { reply } => inner.answer(event.id(), Answer::Reply(reply.clone().unwrap_or_default())),
            Verdict::Dead { reason } => inner.answer(event.id(), Answer::Failed(reason.clone())),
            _ => {}
        }
    }
    let Verdict::Dead { reason } = outcome.verdict else {
        return None;
    };
    let notice = DeadLetter {
        event_id: event.id(),
        delivery_id: claimed.lease.delivery,
        topic: event.topic().clone(),
        subscription: claimed.subscription,
        attempts: claimed.attempt,
        reason,
    };
    Some(Box::pin(async move { announce_death(inner, &event, notice).await }))
}

/// Publishes `herald.event.dead` for a delivery of `event` that died (and `cron.task.failed` when
/// it was a cron tick's).
async fn announce_death(inner: &Inner, event: &crate::event::Event, notice: DeadLetter) {
    // Deaths of herald's own events are not announced, so a failing dead-letter handler cannot
    // feed itself.
    if !inner.system_events || notice.topic.as_str().starts_with("herald.") {
        return;
    }
    #[cfg(feature = "cron")]
    Box::pin(crate::cron::tick_died(inner, event, &notice)).await;
    #[cfg(not(feature = "cron"))]
    let _ = event;
    // Boxed: the publish future is large and rare.
    let publish = Box::pin(inner.publish_one(Message::json(DEAD_LETTER_TOPIC, &notice), Room::Ignore));
    if let Err(e) = publish.await {
        tracing::warn!(error = %e, "herald: could not publish the dead-letter notice");
    }
}

impl Herald {
    /// Records what became of a delivery claimed outside this runtime's workers: by a consumer
    /// that called [`Store::claim`](crate::Store::claim) itself, such as the server's pull
    /// consumers over HTTP. `event` is the claimed delivery's event.
    ///
    /// It does what the runtime does for its own handlers: records the outcome fenced by the
    /// lease token ([`Completion::Stale`] when the lease was lost), announces a death on
    /// `herald.event.dead`, and wakes publishers waiting for room. A request's waiter learns its
    /// answer from the store.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use herald_core::{Completion, Herald, Pattern, SubscriptionName, SubscriptionSpec, Verdict};
    /// use std::time::Duration;
    ///
    /// let herald = Herald::builder().build().await?;
    /// // A subscription without a handler in this process: something else claims for it.
    /// let name = SubscriptionName::new("remote")?;
    /// let spec = SubscriptionSpec { name: name.clone(), pattern: Pattern::new("job.*")? };
    /// herald.store().declare(&spec).await?;
    /// let id = herald.publish("job.run", &7).await?;
    ///
    /// let claimed = herald.store().claim(&name, 1, Duration::from_secs(30)).await?;
    /// let done = herald.settle(id, claimed[0].lease, Verdict::Succeeded { reply: None }).await?;
    /// assert_eq!(done, Completion::Applied);
    /// # Ok(()) }
    /// ```
    pub async fn settle(&self, event: EventId, lease: Lease, verdict: Verdict) -> Result<Completion, StoreError> {
        let inner = &self.inner;
        let dead = match &verdict {
            Verdict::Dead { reason } => Some(reason.clone()),
            _ => None,
        };
        let outcome = Outcome {
            lease,
            finished_at: inner.clock.now(),
            verdict,
        };
        let done = inner
            .store
            .complete(vec![outcome])
            .await?
            .pop()
            .unwrap_or(Completion::Stale);
        if done != Completion::Applied {
            return Ok(done);
        }
        inner.made_room();
        if let Some(reason) = dead {
            // Deaths outside the runtime are rare: read the event back for the notice.
            let record = inner.store.get(event).await?;
            let found = record.as_ref().and_then(|r| {
                r.deliveries
                    .iter()
                    .find(|d| d.id == lease.delivery)
                    .map(|d| (&r.event, r.event.topic().clone(), d))
            });
            if let Some((dead_event, topic, delivery)) = found {
                let notice = DeadLetter {
                    event_id: event,
                    delivery_id: lease.delivery,
                    topic,
                    subscription: delivery.subscription.clone(),
                    attempts: delivery.attempt_count,
                    reason,
                };
                announce_death(inner, dead_event, notice).await;
            }
        }
        Ok(done)
    }
}

/// Extends the lease of a delivery about to start; `false` when another claim took it.
async fn renew(inner: &Inner, sub: &LocalSub, claimed: &Claimed) -> bool {
    match inner.store.extend(&[claimed.lease], sub.lease).await {
        Ok(held) => held.first() != Some(&false),
        Err(e) => {
            // As while a handler runs: the attempt goes on, and the outcome is fenced anyway.
            tracing::warn!(error = %e, "herald: could not extend a lease; starting the attempt all the same");
            true
        }
    }
}

/// A handler's future, its panics caught.
type Handling = futures_util::future::CatchUnwind<AssertUnwindSafe<BoxFuture<'static, AttemptResult>>>;

/// How the handler's future ended.
fn returned(r: Result<AttemptResult, Box<dyn Any + Send>>) -> Ended {
    match r {
        Ok(result) => Ended::Returned(result),
        Err(panic) => Ended::Panicked(panic_message(&*panic)),
    }
}

/// Drives a handler that did not finish in its first poll: catches its panic, applies the
/// timeout, extends the lease while it runs, and stops it at a hard shutdown.
async fn supervise(
    inner: &Inner,
    sub: &LocalSub,
    claimed: &Claimed,
    mut fut: Handling,
    started: Instant,
    deadline: Option<Instant>,
) -> Ended {
    let timeout = sub.policy.timeout;
    let lease = sub.lease;
    let mut extend_at = started + lease / 2;
    // One timer for both the timeout and the next lease extension.
    let wake_at = |extend_at: Instant| deadline.map_or(extend_at, |d| d.min(extend_at));
    let sleep = tokio::time::sleep_until(wake_at(extend_at));
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            r = &mut fut => return returned(r),
            _ = inner.hard_stop.cancelled() => return Ended::Interrupted,
            _ = &mut sleep => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ended::TimedOut(timeout.unwrap_or_default());
                }
                match inner.store.extend(&[claimed.lease], lease).await {
                    Ok(held) if held.first() == Some(&false) => return Ended::LeaseLost,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "herald: could not extend a lease; trying again"),
                }
                extend_at = Instant::now() + lease / 2;
                sleep.as_mut().reset(wake_at(extend_at));
            }
        }
    }
}

/// What becomes of the delivery; `None` when the lease was lost and the outcome is not ours.
fn judge(sub: &LocalSub, claimed: &Claimed, ended: Ended, now: crate::time::Timestamp) -> Option<Verdict> {
    let failure = match ended {
        Ended::Returned(Ok(reply)) => return Some(Verdict::Succeeded { reply }),
        Ended::Returned(Err(e)) if !e.is_retryable() => return Some(Verdict::Dead { reason: e.to_string() }),
        Ended::Returned(Err(e)) => e.to_string(),
        Ended::Panicked(msg) => format!("the handler panicked: {msg}"),
        Ended::TimedOut(t) => format!("the attempt timed out after {t:?}"),
        Ended::Interrupted => return Some(Verdict::Released),
        Ended::LeaseLost => return None,
    };
    let max = sub.policy.max_attempts;
    if claimed.attempt >= max {
        return Some(Verdict::Dead {
            reason: format!(
                "gave up after {} attempt{}: {failure}",
                claimed.attempt,
                if claimed.attempt == 1 { "" } else { "s" }
            ),
        });
    }
    Some(Verdict::Retry {
        at: now + sub.policy.backoff.delay(claimed.attempt),
        error: failure,
    })
}

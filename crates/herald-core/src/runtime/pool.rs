//! The worker pool: `workers` long-lived tasks that claim for themselves.
//!
//! A worker with nothing to run takes a claimed delivery from its thread's queue or, when that
//! is empty, claims for a subscription that has due work and free capacity: as many deliveries as
//! there are idle workers plus itself (at least `AHEAD` when the subscription's handler is quick),
//! the first for itself and the rest queued for the idle workers, which it wakes. Wakes coalesce:
//! until a worker looks for work, one wake stands for all. Outcomes are recorded by combining: a
//! worker that finishes while no record is under way records its own outcome, then every one that
//! arrived meanwhile in one store call (one transaction, one fsync in a durable store); the others
//! hand theirs over and go on.
//!
//! Each thread of the runtime has its own lane: a queue and a combiner (see `Lane`). With the
//! memory store, whose shards are placed by thread in the same way, the deliveries a thread
//! publishes are claimed, run and recorded on that thread; on two cores that took a fifth off
//! the bus's throughput case, as a handoff between threads costs more than a quick delivery.
//!
//! There is no dispatcher and no completer task: a delivery goes from a publisher's wakeup to the
//! worker that runs it, and from the worker to the store, without another task in between.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::subscribe::LocalSub;
use super::worker::{self, Finished};
use super::{Inner, Padded, SubsCopy};
use crate::store::{Claimed, Completion, Outcome};
use crate::time::Timestamp;

/// The most deliveries one claim asks for.
const MAX_BATCH: usize = 64;

/// How many deliveries a claim asks for at least when the subscription's handler is quick (see
/// `Demand::quick`): without it, busy workers claim one delivery each, and a claim costs more than
/// a quick handler.
const AHEAD: usize = 16;

/// A handler is quick when its last attempt took less than this: `AHEAD` of them queued start
/// within a few milliseconds.
pub(crate) const QUICK: Duration = Duration::from_millis(1);

/// The shortest lease under which a claim asks for more than the idle workers can start at once.
const AHEAD_MIN_LEASE: Duration = Duration::from_millis(500);

/// A claimed delivery waiting for a worker, with the slot it holds in its subscription's limit.
pub(crate) struct Job {
    pub(crate) claimed: Claimed,
    pub(crate) slot: Slot,
}

/// One unit of a subscription's concurrency, held from the claim until the attempt ends (or the
/// slot is dropped); it also names the subscription.
pub(crate) struct Slot {
    pub(crate) sub: Arc<LocalSub>,
    held: Cell<bool>,
}

impl Slot {
    pub(crate) fn new(sub: Arc<LocalSub>) -> Self {
        Slot {
            sub,
            held: Cell::new(true),
        }
    }

    /// Gives the unit back, keeping the subscription: the attempt has ended, and what follows
    /// (recording its outcome) goes on with the subscription at hand.
    pub(crate) fn free(&self) {
        if self.held.replace(false) {
            self.sub.demand.free_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free();
    }
}

/// What a subscription needs for the pool to claim for it.
#[derive(Debug)]
pub(crate) struct Demand {
    /// How many of its attempts may run at once.
    pub(crate) limit: usize,
    /// Units of the limit taken: its deliveries claimed and not finished, plus the units freed
    /// into `freed` and not yet taken back from there. Never less than what runs, so the limit
    /// holds.
    running: AtomicUsize,
    /// Units freed by finished attempts, one counter per runtime thread: a finishing attempt adds
    /// to its own thread's line instead of writing the line of `running`, which the other
    /// threads' attempts and claims write too. A claim that the limit would cut short takes them
    /// back first (see `reserve`).
    freed: Box<[Padded<AtomicUsize>]>,
    /// Something may be due: set by wakeups, cleared by the claim that found nothing more.
    /// Shared: publishers keep copies of every subscription's mark (see `Inner::notify_due`).
    pub(crate) due: Arc<AtomicBool>,
    /// A worker is claiming for it: one claim at a time per subscription.
    pub(crate) claiming: AtomicBool,
    /// Consecutive failed claims, for the backoff.
    pub(crate) failures: AtomicU32,
    /// Its last attempt took less than `QUICK`: a claim may then ask for `AHEAD` deliveries even
    /// when fewer workers are idle, the rest queued for whichever worker is free first.
    pub(crate) quick: AtomicBool,
}

impl Demand {
    /// The demand of a subscription allowed `limit` attempts at once, in a runtime of `threads`
    /// threads.
    pub(crate) fn new(limit: usize, threads: usize) -> Self {
        Demand {
            limit: limit.max(1),
            running: AtomicUsize::new(0),
            freed: (0..threads.max(1)).map(|_| Padded(AtomicUsize::new(0))).collect(),
            due: Arc::new(AtomicBool::new(true)),
            claiming: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            quick: AtomicBool::new(false),
        }
    }

    /// Takes up to `n` units of the limit; returns how many it took.
    pub(crate) fn reserve(&self, n: usize) -> usize {
        let mut current = self.running.load(Ordering::Acquire);
        let mut collected = false;
        loop {
            let take = n.min(self.limit.saturating_sub(current));
            if take < n && !collected {
                // The limit binds: take back the units finished attempts freed, then look again.
                collected = true;
                let freed: usize = self.freed.iter().map(|f| f.swap(0, Ordering::AcqRel)).sum();
                if freed > 0 {
                    current = self.running.fetch_sub(freed, Ordering::AcqRel) - freed;
                    continue;
                }
            }
            if take == 0 {
                return 0;
            }
            match self
                .running
                .compare_exchange_weak(current, current + take, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return take,
                Err(seen) => current = seen,
            }
        }
    }

    /// Gives back `n` units not used (of a claim that got fewer deliveries than it reserved).
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            self.running.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Gives back the unit of an attempt that ended, on this thread's line.
    fn free_one(&self) {
        self.freed[crate::home::place(self.freed.len())].fetch_add(1, Ordering::Release);
    }
}

/// The pool's shared state.
pub(crate) struct Pool {
    /// One per thread of the runtime (see `Lane`).
    lanes: Box<[Padded<Lane>]>,
    /// Idle workers wait here.
    idle: Notify,
    /// How many workers wait on `idle`.
    idle_count: AtomicUsize,
    /// A wake was sent and no worker has looked for work since: another would add nothing, as
    /// the worker that looks claims for the idle workers too (see `wake`).
    waking: AtomicBool,
    /// Where the next search for a subscription to claim for starts (round robin).
    cursor: AtomicUsize,
    /// How many threads the runtime that runs the workers has (see `next`).
    threads: usize,
}

/// What the workers running on one thread share: the deliveries claimed there and not yet
/// started, and the outcomes waiting to be recorded. A thread's lane is its number (see
/// `crate::home`) modulo the lane count, as its shard of the memory store is, so that a delivery
/// a thread publishes is normally claimed, run and recorded on it; a worker takes from another
/// lane only when its own is empty and it found nothing to claim.
#[derive(Default)]
struct Lane {
    queue: Mutex<VecDeque<Job>>,
    outcomes: Combining,
}

impl Lane {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The outcomes waiting for the worker that records (see `record`).
#[derive(Default)]
struct Combining {
    pending: Mutex<Vec<Finished>>,
    /// How many are in `pending`, read without its lock.
    len: AtomicUsize,
    /// A worker is recording: it takes what is pending before it stops.
    recording: AtomicBool,
}

impl Pool {
    /// The pool of a runtime with this many threads.
    pub(crate) fn new(threads: usize) -> Self {
        Pool {
            lanes: (0..threads.max(1)).map(|_| Padded(Lane::default())).collect(),
            idle: Notify::new(),
            idle_count: AtomicUsize::new(0),
            waking: AtomicBool::new(false),
            cursor: AtomicUsize::new(0),
            threads,
        }
    }

    /// How many threads the pool keeps a lane for.
    pub(crate) fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The lane of the thread this runs on.
    fn lane(&self) -> &Lane {
        &self.lanes[crate::home::place(self.lanes.len())]
    }

    /// The next delivery queued in this thread's lane.
    fn pop_local(&self) -> Option<Job> {
        self.lane().queue().pop_front()
    }

    /// A delivery queued in another thread's lane, for a worker with nothing else to do.
    fn steal(&self) -> Option<Job> {
        let n = self.lanes.len();
        if n == 1 {
            return None;
        }
        let start = crate::home::number();
        (1..n).find_map(|k| self.lanes[(start + k) % n].queue().pop_front())
    }

    /// Wakes every idle worker to see that the runtime has stopped (`Inner::stopped` is
    /// cancelled before this is called).
    pub(crate) fn stop(&self) {
        self.idle.notify_waiters();
    }

    /// Wakes an idle worker: something may be due.
    ///
    /// Wakes coalesce: until a worker looks for work (`next` clears `waking` before it reads the
    /// due marks), one wake stands for all, since that worker claims for the idle workers too and
    /// wakes them. A burst of publishes thus wakes one worker, not one per publish.
    /// A worker whose handler is about to wait wakes another for the deliveries left in the
    /// queue (fewer workers than queued deliveries may have been woken for them, see `next`).
    pub(crate) fn hand_over(&self) {
        if self.lanes.iter().any(|l| !l.queue().is_empty()) {
            self.idle.notify_one();
        }
    }

    pub(crate) fn wake(&self) {
        // Read before it is swapped: a wake already sent is the common case in a burst, and a
        // read leaves the line shared with the workers.
        if !self.waking.load(Ordering::SeqCst) && !self.waking.swap(true, Ordering::SeqCst) {
            self.idle.notify_one();
        }
    }
}

enum Next {
    Run(Job),
    /// Nothing now; look again at once (a claim failed and waited, or came back empty while more
    /// may be due).
    Again,
    Idle,
}

/// How many times a worker that finds nothing ready in its thread's part of the store yields
/// before it claims from another thread's.
const HOME_YIELDS: u32 = 3;

/// How many outcomes a worker keeps back at most while it goes on to the next queued delivery.
const DEFER_MAX: usize = 32;

/// One worker: runs attempts until the runtime has stopped.
///
/// A worker that finishes an attempt while deliveries wait in the queue keeps the outcome back
/// and runs the next one; it records what it kept back in one store call when the queue is empty,
/// when it has kept `DEFER_MAX`, or before an attempt that has to wait (`worker::attempt` flushes
/// them before it waits for a handler or the store): an outcome is held back only across work that
/// runs without waiting, so recording in batches delays nothing by more than a few quick
/// attempts, and a batch of outcomes is one store call (one lock, or one transaction) instead of
/// one each.
pub(crate) async fn work(inner: Arc<Inner>) {
    // Sized for the largest claim up front, outside the store's lock: growing it inside the lock
    // could make that the allocation on which the allocator does its deferred work.
    let mut claimed = Vec::with_capacity(MAX_BATCH);
    let mut deferred = Vec::new();
    // This worker's copy of the subscription list (see `Subs`).
    let mut subs = inner.subs.copy();
    let mut yielded_for_home = 0;
    loop {
        // With the memory store nothing below has to wait while work is due, so without this a
        // worker would keep its thread and starve the timer and the publishers (seen as 100 ms
        // lateness spikes): it yields once tokio's cooperative budget is spent.
        tokio::task::consume_budget().await;
        match next(&inner, &mut claimed, &mut subs, &mut yielded_for_home).await {
            Next::Run(job) => {
                let mut job = job;
                // When the last attempt ended, while nothing else has run since: the next one
                // starts then (a clock read is a measurable part of a quick attempt).
                let mut now = None;
                loop {
                    // Awaited here rather than through a helper: every level of `async fn` moves
                    // the future below it once more.
                    if let Some(finished) = worker::run(&inner, job, &mut deferred, &mut now).await {
                        deferred.push(finished);
                    }
                    if deferred.len() >= DEFER_MAX {
                        break;
                    }
                    let Some(queued) = inner.pool.pop_local() else { break };
                    job = queued;
                    if yielded(tokio::task::consume_budget()).await {
                        now = None;
                    }
                }
                record_all(&inner, &mut deferred).await;
                continue;
            }
            Next::Again => continue,
            Next::Idle => {}
        }
        // Only now does the worker wait on `idle`: a wake sent while it looked for work (when no
        // worker waits) is kept by `Notify` as a permit, which this wait takes at once. A busy
        // worker is not among the waiters, so a wake goes to one that is idle.
        let idle = inner.pool.idle.notified();
        tokio::pin!(idle);
        // Registered before the stop is checked: the stop wakes every registered waiter (see
        // `Pool::stop`), which costs less than a cancellation future polled at every idle wait.
        idle.as_mut().enable();
        if inner.has_stopped.load(Ordering::SeqCst) {
            return;
        }
        inner.pool.idle_count.fetch_add(1, Ordering::AcqRel);
        idle.await;
        inner.pool.idle_count.fetch_sub(1, Ordering::AcqRel);
        if inner.has_stopped.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// Awaits `fut`; returns whether it gave the thread up (returned `Pending`) on the way.
async fn yielded(fut: impl std::future::Future<Output = ()>) -> bool {
    let mut fut = std::pin::pin!(fut);
    let mut gave_up = false;
    std::future::poll_fn(|cx| {
        let poll = fut.as_mut().poll(cx);
        gave_up |= poll.is_pending();
        poll
    })
    .await;
    gave_up
}

/// The next delivery to run: a queued one, or the first of a new claim.
/// `claimed` is the worker's buffer for what a claim returns, kept between claims.
/// `subs` is the worker's copy of the subscription list.
/// `yielded_for_home`: the worker's last look found nothing here and yielded (see below).
async fn next(inner: &Arc<Inner>, claimed: &mut Vec<Claimed>, subs: &mut SubsCopy, yielded_for_home: &mut u32) -> Next {
    if let Some(job) = inner.pool.pop_local() {
        return Next::Run(job);
    }
    // Nothing ready in this thread's part of the store: yield (up to `HOME_YIELDS` times) before
    // claiming, so that this thread's publishers run first, rather than take what another thread
    // published (and leave its workers to take this thread's next publishes). Then it claims
    // wherever there is work.
    if *yielded_for_home < HOME_YIELDS && inner.store.immediate().is_some_and(|s| !s.ready_here()) {
        *yielded_for_home += 1;
        tokio::task::yield_now().await;
        return Next::Again;
    }
    *yielded_for_home = 0;
    if inner.claims_stopped.load(Ordering::SeqCst) {
        return inner.pool.steal().map_or(Next::Idle, Next::Run);
    }
    // Before the due marks are read: a wake for a mark set after this is sent again.
    if inner.pool.waking.load(Ordering::SeqCst) {
        inner.pool.waking.store(false, Ordering::SeqCst);
    }
    let Some((sub, want)) = pick(inner, subs) else {
        // Nothing to claim: help another thread's lane.
        return inner.pool.steal().map_or(Next::Idle, Next::Run);
    };
    // Cleared before the claim: a wakeup that lands while it runs sets it again.
    sub.demand.due.store(false, Ordering::SeqCst);
    claimed.clear();
    let result = match inner.store.immediate() {
        Some(store) => store.claim_now(&sub.name, want, sub.lease, claimed),
        None => inner
            .store
            .claim(&sub.name, want, sub.lease)
            .await
            .map(|c| *claimed = c),
    };
    sub.demand.claiming.store(false, Ordering::Release);
    match result {
        Ok(()) => {
            // Written only when it changes, like the other flags every worker reads.
            if sub.demand.failures.load(Ordering::Relaxed) != 0 {
                sub.demand.failures.store(0, Ordering::Relaxed);
            }
        }
        Err(e) => {
            sub.demand.release(want);
            let failures = sub.demand.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            let wait = Duration::from_millis(50u64.saturating_mul(1 << failures.min(7)));
            tracing::warn!(subscription = %sub.name, error = %e, ?wait, "herald: claim failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = sub.stop.cancelled() => return Next::Again,
            }
            sub.demand.due.store(true, Ordering::SeqCst);
            return Next::Again;
        }
    }
    if claimed.len() == want {
        // A full batch: there may be more.
        sub.demand.due.store(true, Ordering::SeqCst);
    }
    sub.demand.release(want - claimed.len());
    inner.in_flight.start(claimed.len());
    let mut drained = claimed.drain(..);
    let Some(first) = drained.next() else {
        return Next::Again;
    };
    let mut queued = 0;
    if drained.len() > 0 {
        let mut queue = inner.pool.lane().queue();
        for claimed in drained {
            queue.push_back(Job {
                claimed,
                slot: Slot::new(sub.clone()),
            });
            queued += 1;
        }
    }
    let sub_quick = sub.demand.quick.load(Ordering::Relaxed);
    // The first job takes the subscription this claim was made for: one count fewer to move.
    let first = Job {
        claimed: first,
        slot: Slot::new(sub),
    };
    // Each queued delivery of a slow handler gets a worker of its own. Quick ones go to as many
    // workers as the runtime has threads: a woken worker costs more than a quick delivery, and
    // the workers that run them take the next from the queue themselves (a worker whose handler
    // turns out to wait wakes another for what is left, see `Pool::hand_over`).
    let wake = if sub_quick {
        queued.min(inner.pool.threads.max(1))
    } else {
        queued
    };
    for _ in 0..wake {
        inner.pool.idle.notify_one();
    }
    if queued == 0 && inner.pool.idle_count.load(Ordering::Acquire) > 0 && any_due(inner, subs) {
        // Another subscription may be waiting for a claim, and a worker is free to make it.
        inner.pool.idle.notify_one();
    }
    Next::Run(first)
}

/// A subscription with due work and free capacity that no one is claiming for, taken for a claim
/// of the returned size; round robin among them.
fn pick(inner: &Inner, subs: &mut SubsCopy) -> Option<(Arc<LocalSub>, usize)> {
    let subs = inner.subs.current(subs);
    let n = subs.len();
    if n == 0 {
        return None;
    }
    // With one subscription there is no turn to take (and the cursor is a write every worker's
    // claim would make to one line).
    let start = if n == 1 {
        0
    } else {
        inner.pool.cursor.fetch_add(1, Ordering::Relaxed)
    };
    let for_idle = inner.pool.idle_count.load(Ordering::Acquire) + 1;
    for i in 0..n {
        let sub = &subs[(start + i) % n];
        let d = &sub.demand;
        // Claiming ahead: a delivery queued behind a handler that turned slow may wait, so the
        // worker that starts it renews a half-spent lease first (see `worker::attempt`).
        let want = if d.quick.load(Ordering::Relaxed) && sub.lease >= AHEAD_MIN_LEASE {
            for_idle.max(AHEAD)
        } else {
            for_idle
        }
        .min(MAX_BATCH);
        if !d.due.load(Ordering::SeqCst) || sub.paused.load(Ordering::SeqCst) || sub.unsubscribed.load(Ordering::SeqCst)
        {
            continue;
        }
        if d.claiming.swap(true, Ordering::AcqRel) {
            continue;
        }
        let got = d.reserve(want);
        if got == 0 {
            // At its limit: a finishing attempt of its own looks again.
            d.claiming.store(false, Ordering::Release);
            continue;
        }
        return Some((sub.clone(), got));
    }
    None
}

fn any_due(inner: &Inner, subs: &mut SubsCopy) -> bool {
    inner
        .subs
        .current(subs)
        .iter()
        .any(|s| s.demand.due.load(Ordering::Relaxed) && !s.paused.load(Ordering::Relaxed))
}

/// Records `outcomes` (leaving the vector empty), combining: the first worker to arrive records
/// every outcome that arrives until it is done; the others leave theirs and go on.
///
/// A worker that finds no one recording records its own outcomes without taking a lock (the
/// common case when handlers are quick). One that finds someone recording leaves its outcomes in
/// `pending`, then tries once more to become the recorder: the recorder clears `recording` before
/// it reads `len` for the last time, so either it sees them or this worker takes over.
pub(crate) async fn record_all(inner: &Arc<Inner>, outcomes: &mut Vec<Finished>) {
    if outcomes.is_empty() {
        return;
    }
    let c = &inner.pool.lane().outcomes;
    if !c.recording.swap(true, Ordering::SeqCst) {
        // Its own outcomes go first, a lone one without a batch to gather it in.
        record_batch(inner, outcomes).await;
    } else {
        {
            let mut pending = c.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.append(outcomes);
            c.len.store(pending.len(), Ordering::SeqCst);
        }
        if c.recording.swap(true, Ordering::SeqCst) {
            return;
        }
    }
    let mut batch = Vec::new();
    loop {
        if c.len.load(Ordering::SeqCst) > 0 {
            {
                let mut pending = c.pending.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut *pending, &mut batch);
                c.len.store(0, Ordering::SeqCst);
            }
            record_batch(inner, &mut batch).await;
            continue;
        }
        c.recording.store(false, Ordering::SeqCst);
        // An outcome left after the read above is recorded by whoever takes `recording` now.
        if c.len.load(Ordering::SeqCst) == 0 || c.recording.swap(true, Ordering::SeqCst) {
            if batch.capacity() > 0 {
                // Hand the (empty) allocation back for the next batch, when its slot is empty.
                if let Ok(mut pending) = c.pending.try_lock() {
                    if pending.capacity() < batch.capacity() && pending.is_empty() {
                        *pending = batch;
                    }
                }
            }
            return;
        }
    }
}

/// One outcome: its store call, then what follows it.
pub(crate) async fn record_one(inner: &Inner, done: Finished) {
    let result = match inner.store.immediate() {
        Some(store) => {
            // A requester waiting in this runtime is answered below: no one else needs to hear of
            // the answer, and the timer would only wake to find no waiter.
            let event = &done.claimed.event;
            let answered_here = event.reply_to().is_some() && inner.has_waiter(event.id());
            // The attempt's end was read from the store's clock an instant ago.
            store.complete_one_now(done.outcome.clone(), answered_here, done.outcome.finished_at)
        }
        None => inner.store.complete_one(done.outcome.clone()).await,
    };
    match result {
        Ok(Completion::Applied) => {
            if let Some(death) = worker::after_recorded(inner, done) {
                death.await;
            }
        }
        Ok(_) => tracing::debug!("herald: outcome refused: the lease was lost to another claim"),
        Err(e) => {
            // The lease runs out and the delivery is attempted again: at-least-once.
            tracing::error!(error = %e, "herald: could not record an outcome; the delivery will run again after its lease");
        }
    }
    inner.in_flight.finish();
    inner.made_room();
}

thread_local! {
    /// The outcomes `record_batch` hands to an immediate store.
    static OUTCOMES: Cell<Vec<(Outcome, bool)>> = const { Cell::new(Vec::new()) };
}

/// One store call for the whole batch, then what follows each recorded outcome. Leaves `batch`
/// empty.
async fn record_batch(inner: &Inner, batch: &mut Vec<Finished>) {
    if batch.len() == 1 {
        if let Some(one) = batch.pop() {
            record_one(inner, one).await;
        }
        return;
    }
    let results = match inner.store.immediate() {
        Some(store) => {
            // As in `record_one`: a local requester is answered below, and each end was read from
            // the store's clock an instant ago.
            let now = batch
                .iter()
                .map(|f| f.outcome.finished_at)
                .max()
                .unwrap_or(Timestamp::EPOCH);
            // A list kept from batch to batch: a new one for every batch took more than a
            // kilobyte, which made glibc consolidate its small free chunks each time.
            let mut outcomes = OUTCOMES.take();
            outcomes.extend(batch.iter().map(|f| {
                let event = &f.claimed.event;
                let answered_here = event.reply_to().is_some() && inner.has_waiter(event.id());
                (f.outcome.clone(), answered_here)
            }));
            let results = store.complete_now(&mut outcomes, now);
            outcomes.clear();
            OUTCOMES.set(outcomes);
            results
        }
        None => {
            let outcomes = batch.iter().map(|f| f.outcome.clone()).collect();
            inner.store.complete(outcomes).await
        }
    };
    let results = results.unwrap_or_else(|e| {
        // The leases run out and the deliveries are attempted again: at-least-once.
        tracing::error!(error = %e, count = batch.len(), "herald: could not record outcomes; the deliveries will run again after their leases");
        Vec::new()
    });
    // Deaths are announced after the loop, so that no `Finished` is held across an await (each
    // `.await` in this future moves it); a delivery counts as in flight until its death is
    // announced.
    let mut deaths = Vec::new();
    let mut finished = 0;
    for (i, done) in batch.drain(..).enumerate() {
        match results.get(i) {
            Some(Completion::Applied) => {
                if let Some(death) = worker::after_recorded(inner, done) {
                    deaths.push(death);
                    continue;
                }
            }
            Some(_) => tracing::debug!("herald: outcome refused: the lease was lost to another claim"),
            None => {}
        }
        finished += 1;
    }
    inner.in_flight.finish_many(finished);
    for death in deaths {
        death.await;
        inner.in_flight.finish();
    }
    inner.made_room();
}

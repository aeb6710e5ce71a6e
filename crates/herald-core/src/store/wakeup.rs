//! A coalescing fan-out of [`Wakeup`]s, for stores whose changes all happen in this process.
//!
//! A broadcast channel wakes a listener once per publish. Here each listener keeps only two due
//! times it has not seen yet: the earliest of those already due when sent, and the earliest of
//! those still ahead (plus the answered requests), so a burst of publishes wakes it once, and a
//! time ahead is never hidden behind one that is due now (a timer told only "due now" would sleep
//! past it).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use futures_util::stream::{self, BoxStream};
use tokio::sync::Notify;

use super::Wakeup;
use crate::event::EventId;
use crate::time::{Clock, Timestamp};

#[derive(Debug)]
struct Listener {
    /// The earliest due time that was due when sent.
    due_now: AtomicI64,
    /// The earliest due time that was still ahead when sent.
    ahead: AtomicI64,
    answered: Mutex<VecDeque<EventId>>,
    lagged: AtomicBool,
    closed: AtomicBool,
    notify: Notify,
}

/// Hands [`Wakeup`]s to every listener, coalescing due times.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use futures_util::StreamExt;
/// use herald_core::{Timestamp, Wakeup, store::WakeupHub};
///
/// let hub = WakeupHub::new();
/// let mut listener = hub.subscribe();
/// let now = Timestamp::now_system();
/// hub.send(Wakeup::Due(now + std::time::Duration::from_secs(20)));
/// hub.send(Wakeup::Due(now + std::time::Duration::from_secs(10)));
/// hub.send(Wakeup::Due(now));
/// // What is due now first, then the earliest time ahead; later times ahead are coalesced into it.
/// assert_eq!(listener.next().await, Some(Wakeup::Due(now)));
/// assert_eq!(listener.next().await, Some(Wakeup::Due(now + std::time::Duration::from_secs(10))));
/// # }
/// ```
pub struct WakeupHub {
    /// Read by every send; written only to add a listener or drop those that are gone.
    listeners: RwLock<Vec<(ListenerKey, Weak<Listener>)>>,
    /// The key of the only listener, or `NOT_SOLE`: a send that leaves it out has no one to tell,
    /// and skips the lock (one runtime on its own store, publishing).
    sole: AtomicU64,
    next_key: AtomicU64,
    clock: Clock,
}

/// Names one listener of a [`WakeupHub`] (see [`WakeupHub::subscribe_keyed`]), so that a sender can
/// leave it out of a wakeup it has already acted on ([`WakeupHub::send_except`]).
///
/// ```
/// use herald_core::{store::WakeupHub, Clock, Wakeup};
///
/// let clock = Clock::new();
/// let hub = WakeupHub::with_clock(clock);
/// let (key, _wakeups) = hub.subscribe_keyed();
/// // This caller already handles what is due now: the hub tells every listener but `key`.
/// let now = clock.now();
/// hub.send_except(Wakeup::Due(now), now, Some(key));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey(u64);

/// `WakeupHub::sole` when there is not exactly one listener (keys count up from 0).
const NOT_SOLE: u64 = u64::MAX;

/// What `WakeupHub::sole` is for this list of listeners.
fn sole_of(listeners: &[(ListenerKey, Weak<Listener>)]) -> u64 {
    match listeners {
        [(key, _)] => key.0,
        _ => NOT_SOLE,
    }
}

impl Default for WakeupHub {
    fn default() -> Self {
        Self::with_clock(Clock::new())
    }
}

impl fmt::Debug for WakeupHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeupHub").finish_non_exhaustive()
    }
}

impl WakeupHub {
    /// A hub with no listeners, telling "due now" from "ahead" by the wall clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub that tells "due now" from "ahead" by `clock`: give it the store's clock.
    ///
    /// ```
    /// use herald_core::{store::WakeupHub, Clock};
    ///
    /// let hub = WakeupHub::with_clock(Clock::new());
    /// # drop(hub);
    /// ```
    pub fn with_clock(clock: Clock) -> Self {
        WakeupHub {
            listeners: RwLock::new(Vec::new()),
            sole: AtomicU64::new(NOT_SOLE),
            next_key: AtomicU64::new(0),
            clock,
        }
    }

    /// Tells every listener.
    pub fn send(&self, wakeup: Wakeup) {
        self.send_at(wakeup, self.clock.now());
    }

    /// Tells every listener, with the time now as the caller just read it from the hub's clock (a
    /// store that read it for the change it announces), so the hub does not read it again.
    ///
    /// A listener that has not yet taken an earlier time of the same kind is not woken again: it
    /// takes the earliest of them when it wakes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use futures_util::StreamExt;
    /// use herald_core::{store::WakeupHub, Clock, Wakeup};
    ///
    /// let clock = Clock::new();
    /// let hub = WakeupHub::with_clock(clock);
    /// let mut listener = hub.subscribe();
    /// let now = clock.now();
    /// hub.send_at(Wakeup::Due(now), now);
    /// assert_eq!(listener.next().await, Some(Wakeup::Due(now)));
    /// # }
    /// ```
    pub fn send_at(&self, wakeup: Wakeup, now: Timestamp) {
        self.send_except(wakeup, now, None);
    }

    /// [`send_at`](Self::send_at), leaving out the listener `except`: the one whose owner has
    /// already acted on this wakeup (a runtime that handed what it published to its own workers
    /// need not be woken to do it again).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use futures_util::{FutureExt, StreamExt};
    /// use herald_core::{store::WakeupHub, Clock, Wakeup};
    ///
    /// let clock = Clock::new();
    /// let hub = WakeupHub::with_clock(clock);
    /// let (mine, mut own) = hub.subscribe_keyed();
    /// let mut other = hub.subscribe();
    /// let now = clock.now();
    /// hub.send_except(Wakeup::Due(now), now, Some(mine));
    /// assert_eq!(other.next().await, Some(Wakeup::Due(now)));
    /// assert!(own.next().now_or_never().is_none());
    /// # }
    /// ```
    pub fn send_except(&self, wakeup: Wakeup, now: Timestamp, except: Option<ListenerKey>) {
        if except.is_some_and(|k| self.sole.load(Ordering::Acquire) == k.0) {
            return;
        }
        let mut gone = false;
        for (key, weak) in self.listeners.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if Some(*key) == except {
                continue;
            }
            let Some(l) = weak.upgrade() else {
                gone = true;
                continue;
            };
            // Whether the listener is already due to look: it was woken for something it has not
            // taken yet, and will see this with it.
            let pending = match wakeup {
                Wakeup::Due(t) => {
                    let slot = if t <= now { &l.due_now } else { &l.ahead };
                    slot.fetch_min(t.as_millis(), Ordering::AcqRel) != i64::MAX
                }
                Wakeup::Answered(id) => {
                    let mut answered = l.answered.lock().unwrap_or_else(|p| p.into_inner());
                    answered.push_back(id);
                    answered.len() > 1
                }
                Wakeup::Lagged => l.lagged.swap(true, Ordering::AcqRel),
            };
            if !pending {
                l.notify.notify_one();
            }
        }
        if gone {
            let mut listeners = self.listeners.write().unwrap_or_else(|p| p.into_inner());
            listeners.retain(|(_, weak)| weak.strong_count() > 0);
            self.sole.store(sole_of(&listeners), Ordering::Release);
        }
    }

    /// A new listener: a stream of what was sent after this call.
    pub fn subscribe(&self) -> BoxStream<'static, Wakeup> {
        self.subscribe_keyed().1
    }

    /// [`subscribe`](Self::subscribe), with the key that names the new listener to
    /// [`send_except`](Self::send_except).
    ///
    /// ```
    /// use herald_core::store::WakeupHub;
    ///
    /// let hub = WakeupHub::new();
    /// let (first, _) = hub.subscribe_keyed();
    /// let (second, _) = hub.subscribe_keyed();
    /// assert_ne!(first, second);
    /// ```
    pub fn subscribe_keyed(&self) -> (ListenerKey, BoxStream<'static, Wakeup>) {
        let key = ListenerKey(self.next_key.fetch_add(1, Ordering::Relaxed));
        let listener = Arc::new(Listener {
            due_now: AtomicI64::new(i64::MAX),
            ahead: AtomicI64::new(i64::MAX),
            answered: Mutex::new(VecDeque::new()),
            lagged: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let mut listeners = self.listeners.write().unwrap_or_else(|p| p.into_inner());
        listeners.push((key, Arc::downgrade(&listener)));
        self.sole.store(sole_of(&listeners), Ordering::Release);
        drop(listeners);
        let stream = Box::pin(stream::unfold(listener, |l| async move {
            let w = l.next().await?;
            Some((w, l))
        }));
        (key, stream)
    }
}

impl Listener {
    async fn next(&self) -> Option<Wakeup> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(id) = self.answered.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
                return Some(Wakeup::Answered(id));
            }
            if self.lagged.swap(false, Ordering::AcqRel) {
                return Some(Wakeup::Lagged);
            }
            for slot in [&self.due_now, &self.ahead] {
                let t = slot.swap(i64::MAX, Ordering::AcqRel);
                if t != i64::MAX {
                    return Some(Wakeup::Due(Timestamp::from_millis(t)));
                }
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }
}

impl Drop for WakeupHub {
    fn drop(&mut self) {
        for l in self
            .listeners
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(_, weak)| weak.upgrade())
        {
            l.closed.store(true, Ordering::Release);
            l.notify.notify_one();
        }
    }
}

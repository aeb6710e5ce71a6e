//! A coalescing fan-out of [`Wakeup`]s, for stores whose changes all happen in this process.
//!
//! A broadcast channel wakes a listener once per publish. Here each listener keeps only the
//! earliest due time it has not seen yet (plus the answered requests), so a burst of publishes
//! wakes it once.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures_util::stream::{self, BoxStream};
use tokio::sync::Notify;

use super::Wakeup;
use crate::event::EventId;
use crate::time::Timestamp;

#[derive(Debug)]
struct Listener {
    earliest: AtomicI64,
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
/// hub.send(Wakeup::Due(Timestamp::from_millis(20)));
/// hub.send(Wakeup::Due(Timestamp::from_millis(10)));
/// assert_eq!(listener.next().await, Some(Wakeup::Due(Timestamp::from_millis(10))));
/// # }
/// ```
#[derive(Default)]
pub struct WakeupHub {
    listeners: Mutex<Vec<Weak<Listener>>>,
}

impl fmt::Debug for WakeupHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeupHub").finish_non_exhaustive()
    }
}

impl WakeupHub {
    /// A hub with no listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells every listener.
    pub fn send(&self, wakeup: Wakeup) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.retain(|weak| {
            let Some(l) = weak.upgrade() else { return false };
            match wakeup {
                Wakeup::Due(t) => {
                    l.earliest.fetch_min(t.as_millis(), Ordering::AcqRel);
                }
                Wakeup::Answered(id) => l.answered.lock().unwrap_or_else(|p| p.into_inner()).push_back(id),
                Wakeup::Lagged => l.lagged.store(true, Ordering::Release),
            }
            l.notify.notify_one();
            true
        });
    }

    /// A new listener: a stream of what was sent after this call.
    pub fn subscribe(&self) -> BoxStream<'static, Wakeup> {
        let listener = Arc::new(Listener {
            earliest: AtomicI64::new(i64::MAX),
            answered: Mutex::new(VecDeque::new()),
            lagged: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        });
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&listener));
        Box::pin(stream::unfold(listener, |l| async move {
            let w = l.next().await?;
            Some((w, l))
        }))
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
            let t = self.earliest.swap(i64::MAX, Ordering::AcqRel);
            if t != i64::MAX {
                return Some(Wakeup::Due(Timestamp::from_millis(t)));
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
            .filter_map(Weak::upgrade)
        {
            l.closed.store(true, Ordering::Release);
            l.notify.notify_one();
        }
    }
}
